"""Greylisting (config `spam.greylist`, off by default): the decision and its state.

Owns: the triplet of a RCPT (`triplet`: the client's network, /24 for IPv4 and /64 for IPv6 since
big senders retry from another address of their pool, the envelope sender and the recipient, both
lower-cased; the null sender is "<>"), the decision (`Greylist.check`): a triplet seen for the
first time is deferred, a retry sooner than `greylist_delay` after the first attempt is deferred
again, a retry after it passes, and from then on the client network is known and passes (any
sender, any recipient) until `greylist_expire` after its last passing RCPT (postgrey's max-age, its
default too), as the pure `decide`; and the state: its own SQLite file, `data_dir/greylist.sqlite`
(WAL), which survives restarts. The file is this module's alone (the per-user index files of
store/index.py are per mailbox and cannot hold server-wide state). With [storage] backend =
"postgresql" the same decisions are kept in the shared database instead (policy/greylist_pg.py);
`from_config` picks one, and the MX sees either through seams.Greylist.
Bounded: pending triplets older than `greylist_expire` and clients not seen for `greylist_expire`
are deleted (on opening, then at most once a minute as triplets are added), and at most
MAX_PENDING pending triplets and MAX_KNOWN known clients are kept (the oldest go first).
Every SQLite call runs in a worker thread (`asyncio.to_thread`), never on the event loop.
Does not own: who is never greylisted (smtp/inbound.py: authenticated sessions, clients on a
DNSWL, `greylist_skip` networks), the reply (smtp/replies.py GREYLISTED, 451 4.7.1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mailhaven import seams
from mailhaven.config import Config
from mailhaven.netaddr import client_ip

if TYPE_CHECKING:
    from mailhaven.pg import Database

MAX_PENDING = 1_000_000  # triplets waiting for their retry
MAX_KNOWN = 200_000  # client networks that passed
CLEANUP_EVERY = 60.0  # seconds between expiry sweeps while triplets are added
FILE_NAME = "greylist.sqlite"

Action = Literal["defer", "pass"]
Why = Literal["new", "early", "retried", "known"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    net TEXT NOT NULL, sender TEXT NOT NULL, rcpt TEXT NOT NULL, first_seen REAL NOT NULL,
    PRIMARY KEY (net, sender, rcpt)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_age ON pending (first_seen);
CREATE TABLE IF NOT EXISTS known (net TEXT PRIMARY KEY, last_seen REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS known_age ON known (last_seen);
"""


def client_net(ip: str) -> str:
    """The network a client is greylisted as: its /24 (IPv4) or /64 (IPv6); an IPv4-mapped IPv6
    address counts as IPv4. Raises ValueError for a non-address."""
    addr = client_ip(ip)
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


@dataclass(frozen=True)
class Triplet:
    net: str
    sender: str
    rcpt: str

    def __str__(self) -> str:
        return f"{self.net},{self.sender},{self.rcpt}"


def triplet(ip: str, sender: str, rcpt: str) -> Triplet:
    return Triplet(client_net(ip), sender.lower() or "<>", rcpt.lower())


@dataclass(frozen=True)
class Decision:
    action: Action
    why: Why
    wait: float = 0.0  # seconds until a retry passes (defer only)


def decide(now: float, known: float | None, pending: float | None, *, delay: float, expire: float) -> Decision:
    """The decision for one RCPT, from when its client network last passed (`known`) and when its
    triplet was first seen (`pending`), None when there is no such row. Each backend then records
    it the same way: "known" -> the network's last_seen = now; "new" -> the triplet's first_seen =
    now; "retried" -> the triplet is deleted and the network is known from now; "early" -> nothing."""
    if known is not None and now - known < expire:
        return Decision("pass", "known")
    if pending is None or now - pending >= expire or pending > now:
        # new, or so old it is forgotten (or from a clock that went back): start again
        return Decision("defer", "new", delay)
    waited = now - pending
    if waited < delay:
        return Decision("defer", "early", delay - waited)
    # The client retried after the delay, as a real MTA does: remember the client network.
    return Decision("pass", "retried")


class Greylist:
    """The greylisting state of the server in SQLite, in `path` (created when missing)."""

    def __init__(self, path: str | Path, *, delay: float, expire: float,
                 clock: Callable[[], float] = time.time, max_pending: int = MAX_PENDING,
                 max_known: int = MAX_KNOWN) -> None:
        self.path = Path(path)
        self.delay, self.expire = delay, expire
        self._clock = clock
        self.max_pending, self.max_known = max_pending, max_known
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._swept = float("-inf")

    # -- the async API (every SQLite call in a worker thread) ------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    async def check(self, t: Triplet) -> Decision:
        return await asyncio.to_thread(self.check_sync, t)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    # -- blocking implementation ---------------------------------------------------------------------

    def _open(self) -> None:
        with self._lock:
            if self._db is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # losing the last greylist entries on power loss is harmless
            db.executescript(_SCHEMA)
            self._db = db
            self._sweep(self._clock())

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def check_sync(self, t: Triplet) -> Decision:
        """Decide for one RCPT and record it (blocking: call from a worker thread)."""
        if self._db is None:
            self._open()
        with self._lock:
            db = self._db
            assert db is not None
            now = self._clock()
            db.execute("BEGIN IMMEDIATE")
            try:
                decision = self._decide(db, t, now)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if now - self._swept >= CLEANUP_EVERY:
                self._sweep(now)
            return decision

    def _decide(self, db: sqlite3.Connection, t: Triplet, now: float) -> Decision:
        key = (t.net, t.sender, t.rcpt)
        known, pending = db.execute(
            "SELECT (SELECT last_seen FROM known WHERE net = ?), "
            "(SELECT first_seen FROM pending WHERE net = ? AND sender = ? AND rcpt = ?)", (t.net, *key)).fetchone()
        d = decide(now, known, pending, delay=self.delay, expire=self.expire)
        if d.why == "known":
            db.execute("UPDATE known SET last_seen = ? WHERE net = ?", (now, t.net))
        elif d.why == "new":
            db.execute("INSERT OR REPLACE INTO pending (net, sender, rcpt, first_seen) VALUES (?, ?, ?, ?)",
                       (*key, now))
        elif d.why == "retried":
            db.execute("DELETE FROM pending WHERE net = ? AND sender = ? AND rcpt = ?", key)
            db.execute("INSERT OR REPLACE INTO known (net, last_seen) VALUES (?, ?)", (t.net, now))
        return d

    def _sweep(self, now: float) -> None:
        """Forget what is older than `expire`, then cap both tables (oldest first)."""
        db = self._db
        assert db is not None
        self._swept = now
        cutoff = now - self.expire
        db.execute("DELETE FROM pending WHERE first_seen < ?", (cutoff,))
        db.execute("DELETE FROM known WHERE last_seen < ?", (cutoff,))
        over = db.execute("SELECT count(*) FROM pending").fetchone()[0] - self.max_pending
        if over > 0:
            db.execute("DELETE FROM pending WHERE (net, sender, rcpt) IN (SELECT net, sender, rcpt FROM pending "
                       "ORDER BY first_seen, net, sender, rcpt LIMIT ?)", (over,))
        over = db.execute("SELECT count(*) FROM known").fetchone()[0] - self.max_known
        if over > 0:
            db.execute("DELETE FROM known WHERE net IN (SELECT net FROM known ORDER BY last_seen, net LIMIT ?)", (over,))

    async def counts(self) -> tuple[int, int]:
        """(pending triplets, known clients) now (for tests and `doctor`)."""
        return await asyncio.to_thread(self.counts_sync)

    async def sweep_now(self) -> None:
        """Run the expiry sweep now."""
        await asyncio.to_thread(self.sweep_now_sync)

    def counts_sync(self) -> tuple[int, int]:
        if self._db is None:
            self._open()
        with self._lock:
            db = self._db
            assert db is not None
            (pending,) = db.execute("SELECT count(*) FROM pending").fetchone()
            (known,) = db.execute("SELECT count(*) FROM known").fetchone()
            return int(pending), int(known)

    def sweep_now_sync(self) -> None:
        if self._db is None:
            self._open()
        with self._lock:
            self._sweep(self._clock())


def from_config(cfg: Config, database: Database | None = None) -> seams.Greylist | None:
    """The server's greylist when config spam.greylist is on (not opened yet), else None: in
    data_dir/greylist.sqlite, or with [storage] backend = "postgresql" in `database` (its own pool,
    opened with the greylist and closed with it, when none is given)."""
    if not cfg.spam.greylist:
        return None
    spam = cfg.spam
    if cfg.storage.backend == "postgresql":
        from mailhaven import pg
        from mailhaven.policy.greylist_pg import PgGreylist

        own = database is None
        db = pg.Database.from_config(cfg.storage) if database is None else database
        return PgGreylist(db, delay=spam.greylist_delay, expire=spam.greylist_expire, own_database=own)
    return Greylist(Path(cfg.data_dir) / FILE_NAME, delay=spam.greylist_delay, expire=spam.greylist_expire)


__all__ = ["Greylist", "Decision", "Triplet", "triplet", "client_net", "decide", "from_config", "FILE_NAME",
           "MAX_PENDING", "MAX_KNOWN"]
