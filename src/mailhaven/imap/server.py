"""IMAP listeners (143 STARTTLS, 993 implicit TLS): the asyncio shell around `imap.session.Session`.

Owns: carrying out the session's events (session.py's docstring): writing its output with flow
control (deflated once COMPRESS is on, compress.py), reading input (inflated likewise) (and, while the session idles, waiting for input, a store change or a
timer), the STARTTLS handshake, the login deadline ending at LoggedIn; the BYE for an idle timeout,
a server stop and an internal error, and the one log line per session end.
Does not own: what commands do, replies, framing and limits on commands (session.py, framing.py,
parser.py), storage (store/), the connection plumbing shared with POP3 (lineproto.py: buffering,
flow control, idle timer, the STARTTLS upgrade that drops every byte received before the
handshake, connection limits, implicit TLS on 993).
Also sets the process's message cache budget from config `[imap] cache_bytes` (at start and, after a
reload, with the next session) and hands its figures to the metrics (msgcache.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import zlib
from typing import Any

from mailhaven import lineproto, metrics, seams
from mailhaven import log as mhlog
from mailhaven.config import ListenerConfig
from mailhaven.imap.compress import Deflate
from mailhaven.imap.msgcache import CACHE
from mailhaven.imap.session import Close, LoggedIn, Send, Session, StartCompress, StartTls, Wait
from mailhaven.lineproto import LineConnection, Listener
from mailhaven.store.changes import Subscription

log = logging.getLogger("mailhaven.imap")

PREAUTH_MAX_LITERAL = 8 * 1024  # literals before login: a user name or password, never a message


class ServerStopping(Exception):
    """The server is stopping: the session ends with a BYE."""


class _Connection(LineConnection):
    """One client: the session's events carried out."""

    PROTO = "imap"
    READ_HIGH_WATER = 256 * 1024  # stop reading from a client that has this much unprocessed input
    R_TOO_MANY_CONNECTIONS = b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
    R_INTERNAL = b"* BYE Internal error.\r\n"
    logger = log

    def __init__(self, listener: Listener) -> None:
        super().__init__(listener)
        self.session: Session | None = None
        self._reading: asyncio.Future[bytes | None] | None = None  # a read begun while idling
        self._deflate: Deflate | None = None  # RFC 4978 COMPRESS=DEFLATE, once started

    def ended_by(self, exc: Exception) -> str:
        if isinstance(exc, lineproto.LoginTimeout):
            self._bye("Login timed out.")
            return "login timeout"
        if isinstance(exc, lineproto.LineTimeout):
            self._bye("Command line not completed in time.")
            return "line timeout"
        if isinstance(exc, TimeoutError):
            self._bye("Disconnected for inactivity.")
            return "idle timeout"
        if isinstance(exc, ServerStopping):
            self._bye("Server shutting down.")
            return "server stopping"
        return super().ended_by(exc)

    def cleanup(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        if self.session is not None:
            self.session.close()

    def session_ended(self, reason: str, duration: float) -> None:
        s = self.session
        # A health probe (`mailhaven health`, check_imap, a load balancer): greeting, LOGOUT,
        # nothing else. Logged at DEBUG, so a container's HEALTHCHECK does not fill the log.
        probe = s is not None and s.commands == 1 and s.bad == 0 and reason == "logout" and not s.user
        mhlog.event(log, "imap session end", level=logging.DEBUG if probe else logging.INFO,
                    listener=self.listener.name, ip=self.ip,
                    user=(s.user if s else None) or "-", commands=s.commands if s else 0,
                    reason=reason, duration=duration)

    def _bye(self, text: str) -> None:
        with contextlib.suppress(Exception):
            self.write_last(f"* BYE {text}\r\n".encode("ascii"))

    async def run(self, cfg: Any, lc: ListenerConfig) -> str:
        if CACHE.max_bytes != cfg.imap.cache_bytes:  # a reload changed it
            CACHE.set_budget(cfg.imap.cache_bytes)
        tls_ctx: ssl.SSLContext | None = getattr(self.ctx, "tls", None)
        session = self.session = Session(
            self.ctx, listener=self.listener.name, ip=self.ip, loopback=self.listener.loopback,
            tls_active=lc.tls == "implicit", starttls_offered=lc.tls == "starttls" and tls_ctx is not None,
            config=cfg)
        await self.write(session.greeting())
        while True:
            ev = await session.next_event()
            if isinstance(ev, Send):
                await self.write(ev.data)
            elif isinstance(ev, Wait):
                data = await (self._read() if ev.changes is None else self._idle(ev.changes, ev.timeout))
                if data is None:
                    raise ServerStopping
                if data == b"" and ev.changes is None:
                    return "connection closed by client"
                session.receive_data(data)
            elif isinstance(ev, StartTls):
                assert tls_ctx is not None
                await self.upgrade_tls(tls_ctx)  # drops input received before the handshake
                session.tls_started()
            elif isinstance(ev, StartCompress):
                self._deflate = Deflate()  # the OK went out plain in the Send before
            elif isinstance(ev, LoggedIn):
                self.logged_in()
            elif isinstance(ev, Close):
                return ev.reason

    # -- COMPRESS=DEFLATE (RFC 4978): on top of TLS when both are on ---------------------------

    async def write(self, data: bytes) -> None:
        await super().write(data if self._deflate is None else self._deflate.deflate(data))

    def write_last(self, data: bytes) -> None:
        if self._deflate is not None:
            try:
                data = self._deflate.deflate(data)
            except Exception:  # noqa: BLE001 - last words are best effort
                return
        super().write_last(data)

    async def read(self) -> bytes | None:
        """lineproto's read(), inflated once COMPRESS is on: never b"" for a partial block (that is
        EOF), at most compress.MAX_INFLATE octets per call."""
        d = self._deflate
        if d is None:
            return await super().read()
        while True:
            data = b""
            if not d.pending:
                got = await super().read()
                if not got:
                    return got
                data = got
            try:
                plain = d.inflate(data)
            except zlib.error:
                raise ConnectionResetError("corrupt DEFLATE input") from None
            if plain:
                # the line deadline counts plain lines: lineproto saw only compressed octets
                if plain.endswith(b"\n"):
                    self._line_since = None
                return plain

    async def _read(self) -> bytes | None:
        reading, self._reading = self._reading, None
        return await reading if reading is not None else await self.read()

    async def _idle(self, changes: Subscription, wake_after: float | None) -> bytes | None:
        """Input, or b"" when a store change or the timer came first (the read goes on)."""
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.ensure_future(self.read())
        # One future that input, a store change or the timer completes: no task, no asyncio.wait
        # per wake (10,000 idling connections woken by one delivery allocate little; see
        # bench/bench_idle.py)
        loop = asyncio.get_running_loop()
        woken = loop.create_future() if changes.closed else changes.waiter()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        reading.add_done_callback(wake)
        timer = loop.call_later(wake_after, wake) if wake_after is not None else None
        try:
            await woken
        finally:
            reading.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
            woken.cancel()  # no-op once done; else the subscription forgets it
        if not reading.done():
            return b""
        self._reading = None
        data = reading.result()
        if data == b"":
            raise ConnectionResetError("client went away during IDLE")
        return data


async def create_server(ctx: seams.Context, name: str, lc: ListenerConfig, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve IMAP on an already bound, listening socket (app.py's listener factory contract)."""
    CACHE.set_budget(ctx.config.imap.cache_bytes)  # the process's message cache (msgcache.py)
    metrics.of(ctx).set_imap_cache_probe(CACHE.stats)
    return await lineproto.create_server(ctx, name, lc, sock, _Connection)


__all__ = ["create_server"]
