"""The queue with its envelopes in PostgreSQL ([storage] backend = "postgresql"), shared by every node.

Owns: the tables `queue_entry` (one row per entry: the envelope of queue/spool.py as JSON, its
next attempt, and the lease: which manager works on it until when) and `queue_corrupt` (rows whose
message file is missing or whose envelope does not parse, moved aside with the reason), created and
upgraded through pg.Database.migrate ("queue", STEPS); `PgSpool`, the second implementation of
spool.QueueSpool, with the claims of spool.ClaimingSpool.
Message files stay files, `<ID>.msg` in the queue directory (a path every node shares), written
exactly as the file spool writes them (spool.write_message: tmp -> fsync -> rename -> fsync the
directory). `add` inserts the row only once the file is durable, in its own transaction, and returns
(the caller may acknowledge) once that committed. `remove` deletes the row first (that ends the
entry), then the file. So at `load`: a message file without a row older than STALE_WRITE is an add
cut short (or a removal) and deleted; younger ones may be another node's add in progress and are
left alone; a row without its file is moved to `queue_corrupt` with a log line. The file spool's
entries (an `.env` beside the `.msg`, from before the switch) are left alone, with a warning.
Claims (DESIGN "Beyond one machine"): `claim` takes up to n due entries nobody holds (or whose
lease expired) with one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`, so concurrent
claimers on any node get disjoint sets; `renew` extends the leases a manager still holds; `release`
gives one back once its state is saved (a removed entry needs none: its row is gone). A node that dies mid-delivery keeps its
leases until they expire; then another claims the entries and delivers them again (at least once,
as after any crash). Lease times are the database's clock (`now()`), so the nodes' clocks do not
matter for them; `next_attempt` is the envelope's (the saving node's clock), compared with the
claiming node's: the nodes' clocks must agree (NTP), as for greylisting.
Does not own: scheduling and delivery (queue/manager.py), the pool and the error mapping (pg.py:
every database failure is errors.DatabaseError, a 451).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailhaven import pg
from mailhaven.errors import TempFailure
from mailhaven.message.dsn import DsnRequest
from mailhaven.queue.spool import STALE_WRITE, Entry, new_entry, write_message
from mailhaven.store import maildir

log = logging.getLogger("mailhaven.queue")

PART = "queue"  # its name in mailhaven_schema
STEPS = [
    # 1: entries, with the lease; rows set aside.
    """
    CREATE TABLE queue_entry (
        id text PRIMARY KEY, envelope jsonb NOT NULL, created double precision NOT NULL,
        next_attempt double precision NOT NULL, lease_owner text, lease_until timestamptz);
    CREATE INDEX queue_entry_due ON queue_entry (next_attempt);
    CREATE TABLE queue_corrupt (
        id text NOT NULL, envelope jsonb, reason text NOT NULL, moved timestamptz NOT NULL DEFAULT now());
    """,
]


def owner_name() -> str:
    """This manager's name in lease_owner: host, process, and a random part (two managers in one
    process are two owners)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _envelope(entry: Entry) -> str:
    return json.dumps(entry.to_json(), separators=(",", ":"), ensure_ascii=False)


def _entry(eid: str, envelope: Any) -> Entry:
    d = envelope if isinstance(envelope, dict) else json.loads(envelope)
    entry = Entry.from_json(d)
    if entry.id != eid:
        raise ValueError("id does not match the row")
    return entry


class PgSpool:
    """Queue storage: envelopes in `db`, message files in `root` (spool.ClaimingSpool)."""

    def __init__(self, db: pg.Database, root: Path, *, owner: str | None = None, fsync: bool = True) -> None:
        self.db = db
        self.root = Path(root)
        self.owner = owner or owner_name()
        self.fsync = fsync
        self.partitions: list[Path] = []  # every node adds to the table: no hand-off directories
        self._locks: dict[str, asyncio.Lock] = {}
        self._ready = False

    @property
    def wake_path(self) -> Path:
        return self.root / "wake.sock"  # unused: no partitions

    def msg_path(self, entry_id: str) -> Path:
        return self.root / f"{entry_id}.msg"

    async def open(self) -> None:
        """Create or upgrade the tables and the directory. Raises DatabaseError, OSError."""
        await self.db.migrate(PART, STEPS)
        await asyncio.to_thread(maildir.make_dirs, self.root, fsync=self.fsync)
        self._ready = True

    # -- load --
    async def load(self) -> list[Entry]:
        """Every entry in the table, after cleaning what a crash left (see the module doc)."""
        if not self._ready:
            await self.open()
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT id, envelope FROM queue_entry ORDER BY created")
            rows = await cur.fetchall()
        # Listed after the rows: a file added since is not taken for missing.
        names = await asyncio.to_thread(os.listdir, self.root)
        files = {n[:-4] for n in names if n.endswith(".msg")}
        entries: list[Entry] = []
        for eid, envelope in rows:
            if eid not in files:
                await self._quarantine(eid, "no message file")
                continue
            try:
                entries.append(_entry(eid, envelope))
            except (ValueError, KeyError, TypeError) as e:
                await self._quarantine(eid, f"unreadable envelope ({e})")
        known = {str(r[0]) for r in rows}
        await asyncio.to_thread(self._clean_files, names, known)
        return entries

    def _clean_files(self, names: list[str], known: set[str]) -> None:
        """Delete message files without a row and temporary files, older than STALE_WRITE (a
        younger one may be another node's add in progress)."""
        changed = False
        envs = {n[:-4] for n in names if n.endswith(".env")}
        if envs:
            # The file spool's entries (queue/spool.py), from before the switch to PostgreSQL: not
            # delivered from here, but never deleted either.
            log.warning("queue: %d entr%s of the file queue in %s (.env files) are not delivered with "
                        "[storage] backend = \"postgresql\": drain the queue before switching",
                        len(envs), "y" if len(envs) == 1 else "ies", self.root)
        for n in names:
            orphan = n.endswith(".msg") and n[:-4] not in known and n[:-4] not in envs
            if (orphan or (n.startswith(".") and n.endswith(".tmp"))) and _older(self.root / n, STALE_WRITE):
                if orphan:
                    log.warning("queue: removing %s, a message file without an entry", n)
                with contextlib.suppress(OSError):
                    os.unlink(self.root / n)
                    changed = True
        if changed and self.fsync:
            maildir.fsync_dir(self.root)

    async def _quarantine(self, eid: str, why: str) -> None:
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT 1 FROM queue_entry WHERE id = %s FOR UPDATE", (eid,))
            if await cur.fetchone() is None:
                return  # removed meanwhile (its file goes after its row)
            if why == "no message file" and await asyncio.to_thread(self.msg_path(eid).exists):
                return
            await conn.execute("INSERT INTO queue_corrupt (id, envelope, reason) "
                               "SELECT id, envelope, %s FROM queue_entry WHERE id = %s", (why, eid))
            await conn.execute("DELETE FROM queue_entry WHERE id = %s", (eid,))
        log.error("queue entry %s: %s; moved to the queue_corrupt table", eid, why)

    # -- add --
    async def add(self, sender: str, recipients: list[str], data: bytes, *, source: str = "",
                  created: float | None = None, next_attempt: float | None = None,
                  entry_id: str | None = None, programs: Sequence[tuple[str, str, str]] = (),
                  dsn: DsnRequest | None = None) -> Entry:
        """Durably store a new entry (spool.new_entry's arguments): the message file (fsynced, with
        its directory), then the row (committed). Raises TempFailure (DatabaseError when the
        database fails), nothing left behind."""
        if not self._ready:
            await self.open()
        entry = new_entry(sender, recipients, len(data), source=source, created=created, next_attempt=next_attempt,
                          entry_id=entry_id, programs=programs, dsn=dsn)
        try:
            await asyncio.to_thread(write_message, self.root, entry.id, data, fsync=self.fsync)
        except OSError as e:
            log.error("queue: cannot store entry %s: %s", entry.id, e.strerror or e)
            raise TempFailure("the message could not be queued") from e
        try:
            async with self.db.connection() as conn:
                await conn.execute(
                    "INSERT INTO queue_entry (id, envelope, created, next_attempt) VALUES (%s, %s::jsonb, %s, %s)",
                    (entry.id, _envelope(entry), entry.created, entry.next_attempt))
        except BaseException:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.unlink, self.msg_path(entry.id))
            raise
        return entry

    async def import_entry(self, entry: Entry) -> bool:
        """Add the row of an entry of the file spool (queue/spool.py) whose message file is already
        at msg_path(entry.id), for `mailhaven storage migrate`: nothing when a row with its id
        exists. True when it was added. Raises DatabaseError."""
        if not self._ready:
            await self.open()
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO queue_entry (id, envelope, created, next_attempt) VALUES (%s, %s::jsonb, %s, %s)"
                " ON CONFLICT (id) DO NOTHING", (entry.id, _envelope(entry), entry.created, entry.next_attempt))
            return cur.rowcount == 1

    # -- update --
    async def save(self, entry: Entry) -> None:
        """Write the entry's current state into its row (serialised per entry). The lease is kept.
        A row removed meanwhile (by the operator) stays removed. Raises DatabaseError."""
        lock = self._locks.setdefault(entry.id, asyncio.Lock())
        async with lock, self.db.connection() as conn:
            await conn.execute("UPDATE queue_entry SET envelope = %s::jsonb, next_attempt = %s WHERE id = %s",
                               (_envelope(entry), entry.next_attempt, entry.id))

    async def read(self, entry_id: str) -> bytes:
        return await asyncio.to_thread(self.msg_path(entry_id).read_bytes)

    async def remove(self, entry_id: str) -> None:
        """Delete the entry: the row first (that ends it), then the message file."""
        lock = self._locks.setdefault(entry_id, asyncio.Lock())
        async with lock:
            async with self.db.connection() as conn:
                await conn.execute("DELETE FROM queue_entry WHERE id = %s", (entry_id,))
            await asyncio.to_thread(self._unlink, entry_id)
        self._locks.pop(entry_id, None)

    def _unlink(self, entry_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.msg_path(entry_id))
        if self.fsync:
            maildir.fsync_dir(self.root)

    # -- claims --
    async def claim(self, limit: int, lease: float, now: float) -> list[Entry]:
        """Take up to `limit` entries due at `now` (epoch seconds) that nobody holds, or whose lease
        expired, for `lease` seconds; earliest first. Concurrent claimers get disjoint sets. An
        unreadable envelope is moved to queue_corrupt. Raises DatabaseError."""
        if limit <= 0:
            return []
        if not self._ready:
            await self.open()
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE queue_entry SET lease_owner = %s, lease_until = now() + make_interval(secs => %s) "
                "WHERE id IN (SELECT id FROM queue_entry WHERE next_attempt <= %s "
                "AND (lease_until IS NULL OR lease_until < now()) ORDER BY next_attempt LIMIT %s "
                "FOR UPDATE SKIP LOCKED) RETURNING id, envelope",
                (self.owner, lease, now, limit))
            rows = await cur.fetchall()
        out: list[Entry] = []
        for eid, envelope in rows:
            try:
                out.append(_entry(eid, envelope))
            except (ValueError, KeyError, TypeError) as e:
                await self._quarantine(eid, f"unreadable envelope ({e})")
        out.sort(key=lambda e: e.next_attempt)
        return out

    async def renew(self, entry_ids: Sequence[str], lease: float) -> set[str]:
        """Extend this owner's leases on `entry_ids` to `lease` seconds from now; returns the ids
        still held (a lease that expired and was claimed by another is lost). Raises DatabaseError."""
        if not entry_ids:
            return set()
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE queue_entry SET lease_until = now() + make_interval(secs => %s) "
                "WHERE id = ANY(%s) AND lease_owner = %s RETURNING id", (lease, list(entry_ids), self.owner))
            return {str(r[0]) for r in await cur.fetchall()}

    async def release(self, entry_id: str) -> None:
        """Give the entry back (any node may claim it once due). Raises DatabaseError."""
        async with self.db.connection() as conn:
            await conn.execute("UPDATE queue_entry SET lease_owner = NULL, lease_until = NULL "
                               "WHERE id = %s AND lease_owner = %s", (entry_id, self.owner))

    async def scan_partitions(self) -> list[Entry]:
        return []

    # -- the operator's view (every node's entries) --
    async def snapshot(self, entry_id: str | None = None) -> list[tuple[Entry, bool]]:
        """Every entry in the table (or the one `entry_id`), with whether a node holds it right now
        (a live lease), read only: nothing claimed, cleaned or set aside. Raises DatabaseError."""
        if not self._ready:
            await self.open()
        where, args = ("WHERE id = %s", (entry_id,)) if entry_id is not None else ("", ())
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT id, envelope, lease_until IS NOT NULL AND lease_until >= now() FROM queue_entry {where} "
                "ORDER BY created", args)
            rows = await cur.fetchall()
        out: list[tuple[Entry, bool]] = []
        for eid, envelope, held in rows:
            with contextlib.suppress(ValueError, KeyError, TypeError):  # set aside when next claimed
                out.append((_entry(eid, envelope), bool(held)))
        return out

    async def reschedule(self, entry_id: str, when: float) -> bool:
        """Make an entry nobody holds due at `when` (`queue retry`); False when unknown or held (the
        node holding it is delivering it now). Raises DatabaseError."""
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE queue_entry SET next_attempt = %s, envelope = jsonb_set(envelope, '{next_attempt}', "
                "to_jsonb(%s::double precision)) WHERE id = %s AND (lease_until IS NULL OR lease_until < now()) "
                "RETURNING id", (when, when, entry_id))
            return await cur.fetchone() is not None

    async def corrupt(self) -> list[tuple[str, str]]:
        """(id, reason) of the rows set aside (for tests and `doctor`)."""
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT id, reason FROM queue_corrupt ORDER BY moved")
            return [(str(a), str(b)) for a, b in await cur.fetchall()]


def _older(path: Path, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except OSError:
        return False  # gone meanwhile: nothing to delete


__all__ = ["PgSpool", "STEPS", "PART", "owner_name"]
