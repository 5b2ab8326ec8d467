"""Open SMTP client connections to remote hosts, kept between transactions and reused.

Owns: the idle connections, keyed by (host name, address, port, policy) where the policy names
everything that was settled when the connection was opened (TLS level, verified or not, the AUTH
user): a connection is only ever reused for a transaction that would have opened the same one.
A connection goes back to the pool only when its last transaction ended cleanly (a final reply to
DATA, or every RCPT refused: the server is in its initial state, RFC 5321 §4.1.1.4), fewer than
`max_messages_per_connection` transactions went over it and `connection_idle_time` > 0. Taking
one checks it first with RSET (RFC 5321 §4.1.1.5, as Postfix does with cached sessions): a
connection that fails the check is closed and the next one tried, and with none left the caller
opens a new one. An idle connection is closed with QUIT after `connection_idle_time`; before a
new connection is opened, idle ones beyond `max_connections` (busy + idle) are closed, least
recently used first.
Does not own: opening connections or the dialogue (delivery/remote.py), how many transactions run
at once per destination and in all (queue/manager.py).

    pool = SmtpConnections()
    conn = await pool.take(key, rset_timeout)      # None: open one, then pool.opened(conn, max_connections)
    ... one transaction on conn.client ...
    await pool.give_back(conn, clean=True, max_messages=100, idle_time=5.0)
    await pool.close_all()                           # QUIT to every idle connection (shutdown)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import aiosmtplib

log = logging.getLogger("mailhaven.delivery")

Key = tuple[str, str, int, str]  # (host name, address, port, policy)
QUIT_TIMEOUT = 5.0


@dataclass(eq=False)
class Connection:
    client: aiosmtplib.SMTP
    key: Key
    tls: bool = False
    transactions: int = 0  # transactions started over it
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"{self.key[0]}[{self.key[1]}]:{self.key[2]}"


class SmtpConnections:
    def __init__(self) -> None:
        self._idle: OrderedDict[Connection, None] = OrderedDict()  # least recently used first
        self._busy = 0
        self._closing: set[asyncio.Task[None]] = set()
        self.opened_total = 0  # connections opened through this pool (metrics, tests)
        self.reused_total = 0  # transactions sent over a reused connection

    @property
    def open(self) -> int:
        """Connections open now, busy and idle."""
        return self._busy + len(self._idle)

    def idle(self, key: Key | None = None) -> int:
        return sum(1 for c in self._idle if key is None or c.key == key)

    async def take(self, key: Key, rset_timeout: float) -> Connection | None:
        """An idle connection for `key` that answers RSET with 250, else None."""
        while True:
            conn = next((c for c in reversed(self._idle) if c.key == key), None)  # most recent first
            if conn is None:
                return None
            self._unidle(conn)
            self._busy += 1
            if conn.client.is_connected:
                try:
                    resp = await conn.client.rset(timeout=rset_timeout)
                    if resp.code == 250:
                        self.reused_total += 1
                        return conn
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                    log.info("connection to %s not reusable (%s): opening another", conn.where,
                             type(e).__name__)
            self.discard(conn)

    def opened(self, conn: Connection, max_connections: int) -> None:
        """Count a connection the caller just opened; close idle ones beyond `max_connections`."""
        self._busy += 1
        self.opened_total += 1
        for _ in range(min(self.open - max_connections, len(self._idle))):
            oldest = next(iter(self._idle))
            self._unidle(oldest)
            self._busy += 1
            self._quit_later(oldest)

    async def give_back(self, conn: Connection, *, clean: bool, max_messages: int, idle_time: float) -> None:
        """The caller's transaction on `conn` is over: keep it for the next one, or QUIT."""
        if clean and conn.client.is_connected and conn.transactions < max_messages and idle_time > 0:
            self._busy -= 1
            self._idle[conn] = None
            conn._timer = asyncio.get_running_loop().call_later(idle_time, self._expire, conn)
            return
        if clean:
            try:
                await _quit(conn.client)
            finally:
                conn.client.close()
                self._busy -= 1
            return
        self.discard(conn)

    def closed(self, conn: Connection) -> None:
        """The caller closed a busy connection itself (after QUIT)."""
        self._busy -= 1

    def discard(self, conn: Connection) -> None:
        """A busy connection whose state is unknown (an error mid-transaction): close it, no QUIT."""
        self._busy -= 1
        conn.client.close()

    async def close_all(self) -> None:
        for conn in list(self._idle):
            self._unidle(conn)
            self._busy += 1
            self._quit_later(conn)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def abort_all(self) -> None:
        """Close every idle connection at once, without QUIT (the process is stopping hard)."""
        for conn in list(self._idle):
            self._unidle(conn)
            conn.client.close()

    def _expire(self, conn: Connection) -> None:
        if conn in self._idle:
            self._unidle(conn)
            self._busy += 1
            self._quit_later(conn)

    def _unidle(self, conn: Connection) -> None:
        del self._idle[conn]
        if conn._timer is not None:
            conn._timer.cancel()
            conn._timer = None

    def _quit_later(self, conn: Connection) -> None:
        async def run() -> None:
            try:
                await _quit(conn.client)
            finally:
                conn.client.close()
                self._busy -= 1

        task = asyncio.get_running_loop().create_task(run(), name=f"quit {conn.where}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _quit(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        await client.quit(timeout=QUIT_TIMEOUT)


__all__ = ["SmtpConnections", "Connection", "Key"]
