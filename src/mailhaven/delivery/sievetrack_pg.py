"""Delivery-time Sieve's per-user memory in PostgreSQL ([storage] backend = "postgresql"), shared by every node.

Owns: the table `sieve_memory` (user, key, expiry: what delivery/sievetrack.py keeps in each user's
`.tracker` file), created and upgraded through pg.Database.migrate ("sieve_memory", STEPS), and
`PgSieveMemory`, the seams.SieveMemory over it: the same keys with the same meaning, the same
bound per user (sievetrack.MAX_ENTRIES, the soonest to expire dropped first), expired keys never
answered and swept (at most once a minute as marks come; one node at a time).
Concurrency between nodes: `claim` is one INSERT ... ON CONFLICT DO UPDATE ... WHERE expired, so
of two deliveries to one user on two nodes at once exactly one gets the key (one vacation reply per
sender per period, RFC 5230 §4.2, whichever node delivers). Times are the node's clock (`clock`,
time.time by default), as in the file: the nodes' clocks must agree (NTP).
Does not own: what a key means (delivery/sieve.py), the pool and the error mapping (pg.py: every
database failure is errors.DatabaseError; delivery/sieve.py then sends no reply and logs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from mailhaven import pg
from mailhaven.delivery.sievetrack import MAX_ENTRIES
from mailhaven.errors import DatabaseError

log = logging.getLogger("mailhaven.sieve")

PART = "sieve_memory"  # its name in mailhaven_schema
STEPS = [
    # 1: one row per live key of a user; expiry as epoch seconds like the file.
    """
    CREATE TABLE sieve_memory (
        username text NOT NULL, key text NOT NULL, expires double precision NOT NULL,
        PRIMARY KEY (username, key));
    CREATE INDEX sieve_memory_expiry ON sieve_memory (expires);
    CREATE INDEX sieve_memory_user_expiry ON sieve_memory (username, expires);
    """,
]
SWEEP_EVERY = 60.0  # seconds between expiry sweeps of one node
SWEEP_LOCK = 0x4D48_5356  # pg_try_advisory_xact_lock class "MHSV": one node sweeps at a time


class PgSieveMemory:
    """Sieve's per-user memory in `db`'s table (seams.SieveMemory); the table is created on first
    use. `db` is app.py's pool (it opens and closes it)."""

    def __init__(self, db: pg.Database, *, clock: Callable[[], float] = time.time,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.db = db
        self._clock = clock
        self.max_entries = max_entries
        self._ready = False
        self._swept = float("-inf")

    async def open(self) -> None:
        """Create or upgrade the table. Raises DatabaseError."""
        await self.db.migrate(PART, STEPS)
        self._ready = True

    async def live(self, user: str) -> set[str]:
        """The user's keys not expired yet. Raises DatabaseError."""
        if not self._ready:
            await self.open()
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT key FROM sieve_memory WHERE username = %s AND expires > %s",
                                     (user, self._clock()))
            return {str(r[0]) for r in await cur.fetchall()}

    async def mark(self, user: str, keys: Sequence[tuple[str, float]]) -> None:
        """Each (key, seconds): live until now + seconds; committed when this returns."""
        if not keys:
            return
        if not self._ready:
            await self.open()
        now = self._clock()
        async with self.db.connection() as conn, conn.transaction():
            for key, seconds in sorted(keys):  # one order for every node: no deadlock between two marks
                await conn.execute(
                    "INSERT INTO sieve_memory (username, key, expires) VALUES (%s, %s, %s) "
                    "ON CONFLICT (username, key) DO UPDATE SET expires = EXCLUDED.expires",
                    (user, key, now + max(0.0, seconds)))
            await self._cap(conn, user)
        await self._maybe_sweep(now)

    async def claim(self, user: str, key: str, seconds: float) -> bool:
        """Mark `key` for `seconds` unless it is live already; True when this call marked it (check
        and mark are one statement: of two nodes at once, one gets True)."""
        if not self._ready:
            await self.open()
        now = self._clock()
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO sieve_memory (username, key, expires) VALUES (%s, %s, %s) "
                "ON CONFLICT (username, key) DO UPDATE SET expires = EXCLUDED.expires "
                "WHERE sieve_memory.expires <= %s RETURNING 1",
                (user, key, now + max(0.0, seconds), now))
            fresh = await cur.fetchone() is not None
            if fresh:
                await self._cap(conn, user)
        await self._maybe_sweep(now)
        return fresh

    async def _cap(self, conn: pg.Connection, user: str) -> None:
        """At most max_entries keys per user: the soonest to expire go first (as the file)."""
        await conn.execute(
            "DELETE FROM sieve_memory WHERE username = %s AND key IN (SELECT key FROM sieve_memory "
            "WHERE username = %s ORDER BY expires DESC, key OFFSET %s)", (user, user, self.max_entries))

    async def _maybe_sweep(self, now: float) -> None:
        if now - self._swept < SWEEP_EVERY:
            return
        try:
            await self.sweep_now()
        except DatabaseError as e:
            log.warning("sieve memory: expiry sweep failed (retried in %gs): %s", SWEEP_EVERY, e.detail)

    async def sweep_now(self) -> None:
        """Delete expired keys (unless another node is sweeping). Raises DatabaseError."""
        now = self._swept = self._clock()
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s::integer, 0)", (SWEEP_LOCK,))
            row = await cur.fetchone()
            if row is None or not row[0]:
                return
            await conn.execute("DELETE FROM sieve_memory WHERE expires <= %s", (now,))

    async def count(self) -> int:
        """Rows in the table, live or not yet swept (tests)."""
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM sieve_memory")
            row = await cur.fetchone()
            return int(row[0]) if row is not None else 0


__all__ = ["PgSieveMemory", "STEPS", "PART"]
