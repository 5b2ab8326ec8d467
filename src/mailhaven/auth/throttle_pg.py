"""Login failures in PostgreSQL ([storage] backend = "postgresql"), counted by every node.

Owns: the table `login_failure` (one row per client address, per (address, account) pair and per
account: failures within the window and the time of the last one), created and upgraded through
pg.Database.migrate ("login_failure", STEPS), and `PgLoginFailures`, the seams.LoginFailures over
it. auth/login.py asks `counts` as an attempt starts and passes them to its own throttle
(auth/throttle.py), which uses them instead of its own; it records with `failed` the
failures its throttle counted, and `succeeded` clears the pair (as the throttle does). So a guesser
spreading his attempts over the nodes behind a load balancer waits as if he had one node: the
semantics stay the throttle's (a delay, never a refusal; by address and by pair, never by account
alone: failures from other addresses never slow a user's own logins; the account's count raises the
alarm only, `failed` returns it).
Expiry: a count restarts from one when its last failure is older than the window (the same rule as
the throttle's); rows idle longer than the window are swept at most once a minute, one node at a
time, and at most MAX_ROWS are kept (the oldest dropped first). Concurrency: every write is one
upsert statement (INSERT ... ON CONFLICT DO UPDATE), so failures on two nodes at once both count.
Times are the node's clock (`clock`, time.time by default): the nodes' clocks must agree (NTP).
Does not own: the delays and attempts in flight (auth/throttle.py, per process), the password
fingerprints (per process: a stale password retried on two nodes counts once on each), the pool and
the error mapping (pg.py: DatabaseError; auth/login.py then goes on with its own counts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mailhaven import pg
from mailhaven.auth.throttle import MAX_TRACKED
from mailhaven.errors import DatabaseError

log = logging.getLogger("mailhaven.auth")

PART = "login_failure"  # its name in mailhaven_schema
STEPS = [
    # 1: kind 'i' (address; account ''), 'p' (pair), 'a' (account; ip ''). Times as epoch seconds.
    """
    CREATE TABLE login_failure (
        kind "char" NOT NULL, ip text NOT NULL, account text NOT NULL,
        failures integer NOT NULL, last double precision NOT NULL,
        PRIMARY KEY (kind, ip, account));
    CREATE INDEX login_failure_age ON login_failure (last);
    CREATE INDEX login_failure_account ON login_failure (account);
    """,
]
MAX_ROWS = MAX_TRACKED
SWEEP_EVERY = 60.0
SWEEP_LOCK = 0x4D48_4C46  # pg_try_advisory_xact_lock class "MHLF": one node sweeps at a time

# One statement for the three counts of a failure; a count older than the window restarts at one.
_FAILED = (
    "INSERT INTO login_failure AS f (kind, ip, account, failures, last) "
    "VALUES ('p', %(ip)s, %(account)s, 1, %(now)s), ('i', %(ip)s, '', 1, %(now)s), ('a', '', %(account)s, 1, %(now)s) "
    "ON CONFLICT (kind, ip, account) DO UPDATE SET "
    "failures = CASE WHEN f.last <= %(now)s - %(window)s THEN 1 ELSE f.failures + 1 END, last = %(now)s "
    "RETURNING kind, failures")


class PgLoginFailures:
    """The login failures of every node in `db`'s table (seams.LoginFailures); the table is made
    on first use. `db` is app.py's pool (it opens and closes it)."""

    def __init__(self, db: pg.Database, *, clock: Callable[[], float] = time.time, max_rows: int = MAX_ROWS) -> None:
        self.db = db
        self._clock = clock
        self.max_rows = max_rows
        self._ready = False
        self._swept = float("-inf")

    async def open(self) -> None:
        """Create or upgrade the table. Raises DatabaseError."""
        await self.db.migrate(PART, STEPS)
        self._ready = True

    async def counts(self, ip: str, account: str, window: float) -> tuple[int, int]:
        """(failures of the pair, failures of the address) within the window, every node's."""
        if not self._ready:
            await self.open()
        now = self._clock()
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT kind, failures FROM login_failure WHERE last > %s AND "
                "((kind = 'p' AND ip = %s AND account = %s) OR (kind = 'i' AND ip = %s AND account = ''))",
                (now - window, ip, account, ip))
            found = {str(k): int(n) for k, n in await cur.fetchall()}
        return found.get("p", 0), found.get("i", 0)

    async def failed(self, ip: str, account: str, window: float) -> int:
        """Count one failure of the pair, the address and the account; returns the account's
        failures within the window (every node's), for the alarm."""
        if not self._ready:
            await self.open()
        now = self._clock()
        async with self.db.connection() as conn:
            cur = await conn.execute(_FAILED, {"ip": ip, "account": account, "now": now, "window": window})
            found = {str(k): int(n) for k, n in await cur.fetchall()}
        await self._maybe_sweep(now, window)
        return found.get("a", 0)

    async def succeeded(self, ip: str, account: str) -> None:
        """A good login clears its pair (the address's failures only age out)."""
        if not self._ready:
            await self.open()
        async with self.db.connection() as conn:
            await conn.execute("DELETE FROM login_failure WHERE kind = 'p' AND ip = %s AND account = %s",
                               (ip, account))

    async def forget(self, ip: str, account: str) -> int:
        """`mailhaven auth unblock`: an address (`ip`, account "") with its pairs, or an account
        (`account`, ip "") with its pairs on every address and its alarm count. Returns the rows dropped."""
        if not self._ready:
            await self.open()
        async with self.db.connection() as conn:
            if ip:
                cur = await conn.execute("DELETE FROM login_failure WHERE ip = %s", (ip,))
            else:
                cur = await conn.execute("DELETE FROM login_failure WHERE account = %s", (account,))
            return cur.rowcount

    async def _maybe_sweep(self, now: float, window: float) -> None:
        if now - self._swept < SWEEP_EVERY:
            return
        try:
            await self.sweep_now(window)
        except DatabaseError as e:
            log.warning("login failures: expiry sweep failed (retried in %gs): %s", SWEEP_EVERY, e.detail)

    async def sweep_now(self, window: float) -> None:
        """Drop rows idle longer than the window, then the oldest beyond max_rows (unless another
        node is sweeping). Raises DatabaseError."""
        now = self._swept = self._clock()
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s::integer, 0)", (SWEEP_LOCK,))
            row = await cur.fetchone()
            if row is None or not row[0]:
                return
            await conn.execute("DELETE FROM login_failure WHERE last <= %s", (now - window,))
            cur = await conn.execute("SELECT count(*) FROM login_failure")
            row = await cur.fetchone()
            over = (int(row[0]) if row is not None else 0) - self.max_rows
            if over > 0:
                await conn.execute("DELETE FROM login_failure WHERE ctid IN "
                                   "(SELECT ctid FROM login_failure ORDER BY last LIMIT %s)", (over,))


__all__ = ["PgLoginFailures", "STEPS", "PART"]
