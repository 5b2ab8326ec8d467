"""Greylisting state in PostgreSQL ([storage] backend = "postgresql"), shared by every node.

Owns: the tables `greylist_pending` (triplets waiting for their retry) and `greylist_known` (client
networks that passed), created and upgraded through pg.Database.migrate ("greylist", STEPS), and
`PgGreylist`, which keeps in them exactly what policy/greylist.Greylist keeps in its SQLite file:
the same decisions (greylist.decide), recorded the same way, the same expiry sweep (on opening,
then at most once a minute as checks come) and the same row caps (oldest first).
Concurrency between nodes: each check is one transaction that first takes a transaction-scoped
advisory lock on its client network, so the checks of one network are serialized across nodes as
SQLite serializes every check of one node (two nodes seeing a new triplet at once: one records it,
"new", the other then finds it, "early"; each defers once, neither fails), and every write is an
upsert (INSERT ... ON CONFLICT). One node sweeps at a time (pg_try_advisory_xact_lock); the others
skip their turn. A failed sweep is logged, never the check's failure: its decision is committed.
Times are the checking node's clock (`clock`, time.time by default), as with SQLite: the nodes'
clocks must agree (NTP).
Does not own: the decision (policy/greylist.py), the pool and the error mapping (pg.py: every
database failure is errors.DatabaseError, and the MX lets the RCPT pass), who is greylisted
(smtp/inbound.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mailhaven import pg
from mailhaven.errors import DatabaseError
from mailhaven.policy.greylist import CLEANUP_EVERY, MAX_KNOWN, MAX_PENDING, Decision, Triplet, decide

log = logging.getLogger("mailhaven.greylist")

PART = "greylist"  # its name in mailhaven_schema
STEPS = [
    # 1: the two tables of the SQLite file, times as epoch seconds like there.
    """
    CREATE TABLE greylist_pending (
        net text NOT NULL, sender text NOT NULL, rcpt text NOT NULL, first_seen double precision NOT NULL,
        PRIMARY KEY (net, sender, rcpt));
    CREATE INDEX greylist_pending_age ON greylist_pending (first_seen);
    CREATE TABLE greylist_known (net text PRIMARY KEY, last_seen double precision NOT NULL);
    CREATE INDEX greylist_known_age ON greylist_known (last_seen);
    """,
]
# pg_advisory_xact_lock(int4, int4) classes ("MHGL", "MHGM"): one network's checks; the sweep.
NET_LOCK = 0x4D48_474C
SWEEP_LOCK = 0x4D48_474D


class PgGreylist:
    """The greylisting state in `db`'s tables (seams.Greylist). `own_database`: open and close the
    pool with the greylist (a context app.py did not build); else app.py owns it."""

    def __init__(self, db: pg.Database, *, delay: float, expire: float, clock: Callable[[], float] = time.time,
                 max_pending: int = MAX_PENDING, max_known: int = MAX_KNOWN, own_database: bool = False) -> None:
        self.db = db
        self.delay, self.expire = delay, expire
        self._clock = clock
        self.max_pending, self.max_known = max_pending, max_known
        self._own = own_database
        self._ready = False
        self._swept = float("-inf")

    async def open(self) -> None:
        """Create or upgrade the tables, then sweep. Raises DatabaseError."""
        await self.db.migrate(PART, STEPS)
        self._ready = True
        await self.sweep_now()

    async def close(self) -> None:
        self._ready = False
        if self._own:
            await self.db.close()

    async def check(self, t: Triplet) -> Decision:
        """Decide for one RCPT and record it, in one transaction. Raises DatabaseError."""
        if not self._ready:
            await self.open()
        now = self._clock()
        async with self.db.connection() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s::integer, hashtext(%s))", (NET_LOCK, t.net))
                # A statement of its own after the lock: its snapshot sees what the last holder committed.
                cur = await conn.execute(
                    "SELECT (SELECT last_seen FROM greylist_known WHERE net = %s), (SELECT first_seen "
                    "FROM greylist_pending WHERE net = %s AND sender = %s AND rcpt = %s)",
                    (t.net, t.net, t.sender, t.rcpt))
                row = await cur.fetchone()
                assert row is not None  # one row, always
                d = decide(now, row[0], row[1], delay=self.delay, expire=self.expire)
                if d.why == "known":
                    await conn.execute("UPDATE greylist_known SET last_seen = %s WHERE net = %s", (now, t.net))
                elif d.why == "new":
                    await conn.execute(
                        "INSERT INTO greylist_pending (net, sender, rcpt, first_seen) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT (net, sender, rcpt) DO UPDATE SET first_seen = EXCLUDED.first_seen",
                        (t.net, t.sender, t.rcpt, now))
                elif d.why == "retried":
                    await conn.execute("DELETE FROM greylist_pending WHERE net = %s AND sender = %s AND rcpt = %s",
                                       (t.net, t.sender, t.rcpt))
                    await conn.execute(
                        "INSERT INTO greylist_known (net, last_seen) VALUES (%s, %s) "
                        "ON CONFLICT (net) DO UPDATE SET last_seen = EXCLUDED.last_seen", (t.net, now))
        if now - self._swept >= CLEANUP_EVERY:
            try:
                await self._sweep(now)
            except DatabaseError as e:
                log.warning("greylist: expiry sweep failed (retried in %gs): %s", CLEANUP_EVERY, e.detail)
        return d

    async def sweep_now(self) -> None:
        """Run the expiry sweep now (unless another node is running one). Raises DatabaseError."""
        await self._sweep(self._clock())

    async def _sweep(self, now: float) -> None:
        """Forget what is older than `expire`, then cap both tables (oldest first)."""
        self._swept = now
        cutoff = now - self.expire
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s::integer, 0)", (SWEEP_LOCK,))
            row = await cur.fetchone()
            if row is None or not row[0]:
                return  # another node is sweeping right now
            await conn.execute("DELETE FROM greylist_pending WHERE first_seen < %s", (cutoff,))
            await conn.execute("DELETE FROM greylist_known WHERE last_seen < %s", (cutoff,))
            # Oldest first, ties in byte order of the key (SQLite's BINARY collation, whatever the
            # database's own): what greylist.py's sweep drops too.
            for table, order, cap in (
                    ("greylist_pending", 'first_seen, net COLLATE "C", sender COLLATE "C", rcpt COLLATE "C"',
                     self.max_pending),
                    ("greylist_known", 'last_seen, net COLLATE "C"', self.max_known)):
                cur = await conn.execute(f"SELECT count(*) FROM {table}")
                row = await cur.fetchone()
                over = (int(row[0]) if row is not None else 0) - cap
                if over > 0:
                    await conn.execute(f"DELETE FROM {table} WHERE ctid IN "
                                       f"(SELECT ctid FROM {table} ORDER BY {order} LIMIT %s)", (over,))

    async def counts(self) -> tuple[int, int]:
        """(pending triplets, known clients) now (for tests and `doctor`)."""
        if not self._ready:
            await self.open()
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT (SELECT count(*) FROM greylist_pending), "
                                     "(SELECT count(*) FROM greylist_known)")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0]), int(row[1])


__all__ = ["PgGreylist", "STEPS", "PART"]
