"""Change notification between nodes through PostgreSQL LISTEN/NOTIFY (`[storage] backend = "postgresql"`).

Owns: carrying the store's change events (changes.py) from the ChangeHub of one Store to the
ChangeHubs of the Stores of every other node and worker process that shares the database and the
mail directory, so an IMAP IDLE session on node B hears about a delivery made through node A within
a second (DESIGN.md "Beyond one machine": "IDLE wakes through LISTEN/NOTIFY"). Does not own: the
events, the record format (bus.py's, reused), making cached folder state fresh (mailbox.py: an
event is only a hint to take a new snapshot), the connection pool (pg.py).

With PostgreSQL this replaces the datagram bus (bus.py) for the worker processes of one node too:
each Store is one peer on the channel, whatever machine it runs on. One transport means each event
arrives once (both would deliver every event twice to a sibling worker, and the workers of a node
have no reliable shared identity to filter by), and the hub has one relay.

Sending: publish() calls send(), which only adds the event's record to an outbox (an ordered set:
identical events of a burst once) and wakes the sender task; it never blocks the publisher. The
sender waits COALESCE seconds, packs the records into payloads of at most MAX_PAYLOAD octets and
sends each with `SELECT pg_notify(CHANNEL, payload)` on a pooled connection. When the outbox holds
more than MAX_OUTBOX records it is replaced by one "everything changed" record (an Overflow for
every subscriber of every receiver). When the database cannot be reached the records stay in the
outbox and are sent again after RETRY seconds (growing to MAX_BACKOFF).

Receiving: one connection of its own (pg.Database.connect, not from the pool: LISTEN belongs to a
session) runs `LISTEN mailhaven_store` and reads psycopg's notifies(), checking the connection
with `SELECT 1` every CHECK_EVERY seconds without a notification (a dead peer is noticed even
without a server's goodbye). When it fails it is made again with backoff (MIN_BACKOFF doubling to
MAX_BACKOFF); after a reconnect every subscriber gets an Overflow (events sent meanwhile were
lost: NOTIFY does not queue for a listener that is not there), so IDLE sessions re-snapshot.

Payload (text: PostgreSQL refuses NUL in a payload, and payloads must be under 8000 octets):
node id (NODE_LEN hex digits, random per PgBus) + " " + bus.py's datagram with TAB in place of
NUL (names never hold control characters, see bus.encode). A node ignores its own payloads
(PostgreSQL delivers a NOTIFY to every listener, the sender's session included). Anything else on
the channel that is not of this form (another client's garbage) is counted in `dropped` and
ignored: bus.decode validates every record.

All methods run on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets

from mailhaven.errors import DatabaseError
from mailhaven.pg import Connection, Database, reason
from mailhaven.store import bus
from mailhaven.store.changes import ChangeHub, Event

log = logging.getLogger(__name__)

CHANNEL = "mailhaven_store"
MAX_PAYLOAD = 7900  # octets; PostgreSQL's limit is 8000 (NOTIFY, "must be shorter than 8000 bytes")
NODE_LEN = 16
COALESCE = 0.005  # seconds of events sent together
MAX_OUTBOX = 10_000  # records waiting; beyond: one "everything changed" record
RETRY = 0.2  # seconds before sending again after a database error (doubles up to MAX_BACKOFF)
MIN_BACKOFF = 0.1  # seconds before the first reconnect of the listener
MAX_BACKOFF = 5.0
CHECK_EVERY = 15.0  # seconds without a notification before the listener checks its connection
START_WAIT = 5.0  # seconds start() waits for the first LISTEN (then it goes on in the background)
_EVERYTHING = b"o\0\0"
_NODE = re.compile(f"[0-9a-f]{{{NODE_LEN}}}")


def payloads(node: str, records: list[bus.Record]) -> list[str]:
    """The NOTIFY payloads carrying these records from `node` (each under MAX_PAYLOAD octets)."""
    limit = MAX_PAYLOAD - NODE_LEN - 1
    out = []
    for datagram, _n in bus.pack(records, limit):
        out.append(node + " " + datagram.replace(b"\0", b"\t").decode("utf-8"))
    return out


def parse(payload: str) -> tuple[str, list[Event | None]] | None:
    """(sender node, events; None: "everything changed") of a payload, or None when it is not one
    of ours."""
    node, sep, rest = payload.partition(" ")
    if not sep or not _NODE.fullmatch(node) or len(payload) > MAX_PAYLOAD:
        return None
    data = rest.encode("utf-8", "surrogatepass")
    if b"\0" in data:
        return None
    events = bus.decode(data.replace(b"\t", b"\0"))
    return (node, events) if events else None


def _record(event: Event) -> bus.Record | None:
    record = bus.encode(event)
    if record is None:
        return None
    try:
        record.decode("utf-8")  # a name with a lone surrogate is no PostgreSQL text
    except UnicodeDecodeError:
        return _EVERYTHING
    return record


class PgBus:
    """This Store's end of the LISTEN/NOTIFY channel on `database` (store.Peers)."""

    def __init__(self, database: Database, *, check_every: float = CHECK_EVERY) -> None:
        self.database = database
        self.node = secrets.token_hex(NODE_LEN // 2)
        self.check_every = check_every
        self.hub: ChangeHub | None = None
        self._outbox: dict[bus.Record, None] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._conn: Connection | None = None
        self.listening = asyncio.Event()  # set while LISTEN is in force
        self.received = 0  # events published from other nodes (for tests and metrics)
        self.dropped = 0  # payloads ignored as malformed
        self.sent = 0  # payloads sent
        self.connects = 0  # LISTEN connections made
        self.failures = 0  # LISTEN connections lost or not made

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, hub: ChangeHub) -> None:
        """Hook into the hub, start sending and listening; wait (at most START_WAIT seconds) until
        LISTEN is in force, so what other nodes send from now on is heard."""
        if self._tasks:
            return
        self.hub = hub
        hub.relay = self.send
        self._tasks = [asyncio.create_task(self._send_loop(), name="store-notify-send"),
                       asyncio.create_task(self._listen_loop(), name="store-notify-listen")]
        try:
            await asyncio.wait_for(self.listening.wait(), START_WAIT)
        except TimeoutError:
            log.warning("store notify: not listening yet; change events of other nodes wait for the database")

    async def close(self) -> None:
        """Send what is still waiting (best effort, within the database's timeout), stop listening."""
        if self.hub is not None and self.hub.relay == self.send:
            self.hub.relay = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._outbox:
            with contextlib.suppress(DatabaseError, TimeoutError):
                await asyncio.wait_for(self._flush(), self.database.timeout)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        self.listening.clear()

    # -- sending --------------------------------------------------------------------------------

    def send(self, event: Event) -> None:
        """Queue an event for every other node (sent within COALESCE seconds); never blocks."""
        if not self._tasks:
            return
        record = _record(event)
        if record is None:
            return
        self._outbox[record] = None
        if len(self._outbox) > MAX_OUTBOX:
            self._outbox = {_EVERYTHING: None}
        self._wake.set()

    async def _send_loop(self) -> None:
        delay = RETRY
        while True:
            await self._wake.wait()
            await asyncio.sleep(COALESCE)
            self._wake.clear()
            try:
                await self._flush()
            except DatabaseError as e:
                if delay == RETRY:  # one line per outage
                    log.warning("store notify: cannot send change events (trying again): %s", e.detail)
                self._wake.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
            else:
                if delay != RETRY:
                    log.info("store notify: sending change events again")
                delay = RETRY

    async def _flush(self) -> None:
        """Send the outbox; what could not be sent goes back into it (before what came meanwhile)."""
        if not self._outbox:
            return
        records, self._outbox = list(self._outbox), {}
        try:
            async with self.database.connection() as conn:
                for payload in payloads(self.node, records):
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                    self.sent += 1
        except BaseException:
            # Possibly some were sent: sending them again is harmless (a hint to re-snapshot).
            merged = dict.fromkeys(records)
            merged.update(self._outbox)
            self._outbox = {_EVERYTHING: None} if len(merged) > MAX_OUTBOX else merged
            raise

    # -- receiving ------------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = MIN_BACKOFF
        while True:
            began = loop.time()
            try:
                await self._listen()
            except Exception as e:  # DatabaseError, psycopg's errors, a timeout of the check
                self.failures += 1
                if loop.time() - began > MAX_BACKOFF:  # it worked for a while: try again quickly
                    delay = MIN_BACKOFF
                if self.listening.is_set() or self.failures == 1:  # one line per outage
                    log.warning("store notify: not listening for other nodes' change events (trying "
                                "again): %s", reason(e))
            self.listening.clear()
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _listen(self) -> None:
        """Listen until the connection fails (raises)."""
        conn = self._conn = await self.database.connect()
        await conn.execute(f"LISTEN {CHANNEL}")
        self.connects += 1
        self.listening.set()
        if self.failures and self.hub is not None:
            log.info("store notify: listening again; every session looks at its folders again")
            self.hub.overflow_all()  # what other nodes sent while we were away is lost
        while True:
            got = False
            async for n in conn.notifies(timeout=self.check_every):
                got = True
                self._on_payload(n.payload)
            if not got:  # quiet for a while: is the server still there?
                await asyncio.wait_for(conn.execute("SELECT 1"), self.database.timeout)

    def _on_payload(self, payload: str) -> None:
        parsed = parse(payload)
        if parsed is None:
            self.dropped += 1
            return
        node, events = parsed
        if node == self.node or self.hub is None:  # our own, already published here
            return
        self.received += self.hub.republish(events)


__all__ = ["CHANNEL", "MAX_PAYLOAD", "PgBus", "parse", "payloads"]
