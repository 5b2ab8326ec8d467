"""IMAP listeners (143 STARTTLS, 993 implicit TLS): the asyncio shell around `imap.session.Session`.

Owns: sockets and TLS (STARTTLS upgrade dropping every byte received before the handshake, implicit
TLS), connection limits, the idle timeout, the framing loop (framing.Framer -> parser.parse_command ->
session.execute), "+" continuations for synchronising literals, the literal limit (small before login,
smtp.max_message_size after), closing after imap.max_bad_commands BAD replies, the server-stopping
BYE, and the one log line per session end.
Does not own: what commands do (session.py), syntax (framing.py, parser.py), storage (store/).

Why a plain asyncio.Protocol and not streams: at STARTTLS every byte received before the handshake
must be dropped (command injection, CVE-2011-0411 class); a StreamReader's buffer cannot be emptied.
The protocol callbacks only buffer and wake; one task per connection (`_main`) does the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from typing import Any

from mailhaven import log as mhlog
from mailhaven import metrics
from mailhaven.config import ListenerConfig
from mailhaven.imap.commands import ParseError
from mailhaven.imap.framing import NEED_DATA, Framer, Reject, SendContinuation
from mailhaven.imap.parser import parse_command
from mailhaven.imap.session import ServerStopping, Session, SessionEnd

log = logging.getLogger("mailhaven.imap")

READ_HIGH_WATER = 256 * 1024  # stop reading from a client that has this much unprocessed input
TLS_HANDSHAKE_TIMEOUT = 30.0
PREAUTH_MAX_LITERAL = 8 * 1024  # literals before login: a user name or password, never a message
R_TOO_MANY_CONNECTIONS = b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"


def _is_loopback(sock: socket.socket) -> bool:
    try:
        host = sock.getsockname()[0]
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except (OSError, ValueError, IndexError):
        return False


class _Listener:
    """What every connection of one listening socket shares."""

    def __init__(self, ctx: Any, name: str, lc: ListenerConfig, loopback: bool) -> None:
        self.ctx = ctx
        self.name = name
        self.lc = lc
        self.loopback = loopback
        self.tasks: set[asyncio.Task[None]] = set()


class _Connection(asyncio.Protocol):
    """One client; implements session.Shell."""

    def __init__(self, listener: _Listener) -> None:
        self.listener = listener
        self.ctx = listener.ctx
        self.transport: asyncio.Transport | None = None
        self._rbuf: list[bytes] = []
        self._rlen = 0
        self._reading_paused = False
        self._eof = False
        self._wake: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._stopping = False
        self.ip = "?"
        self.tls_active = False
        self.timeout = listener.lc.idle_timeout
        self._cfg: Any = listener.ctx.config
        self.framer: Framer | None = None
        self.session: Session | None = None
        self._max_literal = PREAUTH_MAX_LITERAL

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        task = asyncio.get_running_loop().create_task(self._main(), name=f"imap {self.ip}")
        self.listener.tasks.add(task)
        task.add_done_callback(self.listener.tasks.discard)

    def data_received(self, data: bytes) -> None:
        self._rbuf.append(data)
        self._rlen += len(data)
        if self._rlen > READ_HIGH_WATER and not self._reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wakeup()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wakeup()
        # Half-closed ("LOGOUT" then shutdown): keep our side open so the replies still go out.
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._writable.set()
        self._wakeup()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- I/O -------------------------------------------------------------------------------------------

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _read(self) -> bytes | None:
        """Buffered input; b"" at EOF; None when the server is stopping. TimeoutError when idle."""
        while not self._rbuf:
            if self._stopping:
                return None
            if self._eof:
                return b""
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._wake, self.timeout)
            finally:
                self._wake = None
        data = b"".join(self._rbuf)
        self._rbuf.clear()
        self._rlen = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.transport.write(data)
        if not self._writable.is_set():
            await asyncio.wait_for(self._writable.wait(), self.timeout)  # a client that does not read

    async def read_line(self) -> bytes | None:
        """A raw line for AUTHENTICATE / IDLE (Shell protocol)."""
        framer = self.framer
        assert framer is not None
        while True:
            got = framer.next_line()
            if isinstance(got, bytes):
                return got
            if isinstance(got, Reject):
                await self.write(got.response())
                raise ConnectionAbortedError(got.text)
            data = await self._read()
            if data is None:
                raise ServerStopping
            if not data:
                return None
            framer.receive_data(data)

    async def start_tls(self) -> None:
        ctx_tls: ssl.SSLContext | None = getattr(self.ctx, "tls", None)
        assert ctx_tls is not None and self.transport is not None
        if not self._writable.is_set():  # the OK must be on its way before the handshake
            await asyncio.wait_for(self._writable.wait(), TLS_HANDSHAKE_TIMEOUT)
        # RFC 3501 §6.2.1, CVE-2011-0411: anything pipelined after STARTTLS in plaintext is dropped.
        self._rbuf.clear()
        self._rlen = 0
        self.framer = self._new_framer()
        loop = asyncio.get_running_loop()
        new = await loop.start_tls(self.transport, self, ctx_tls, server_side=True,
                                   ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        if new is None:
            raise ConnectionResetError("TLS handshake failed")
        self.transport = new
        self._reading_paused = False
        self.tls_active = True

    def authenticated(self) -> None:
        """After login the literal limit becomes the message size limit (APPEND)."""
        self._max_literal = self._cfg.smtp.max_message_size
        framer = self.framer
        if framer is not None:
            framer.max_literal = self._max_literal
            if framer.max_buffer is not None:
                framer.max_buffer = self._cfg.imap.max_in_flight * framer.max_line + self._max_literal

    def _new_framer(self) -> Framer:
        imap = self._cfg.imap
        return Framer(max_line=imap.max_line_length, max_literal=self._max_literal,
                      max_in_flight=imap.max_in_flight)

    # -- the session ----------------------------------------------------------------------------------

    async def _main(self) -> None:
        with mhlog.context(proto="imap", remote=self.ip):
            await self._connection()

    async def _connection(self) -> None:
        ctx, name = self.ctx, self.listener.name
        self._cfg = cfg = ctx.config  # read per session: a reload may have replaced it
        lc: ListenerConfig = cfg.listeners.get(name, self.listener.lc)
        self.timeout = lc.idle_timeout
        limits = getattr(ctx, "limits", None)
        assert self.transport is not None
        transport = self.transport
        if limits is not None and not limits.connection_opened(name, self.ip, lc):
            transport.write(R_TOO_MANY_CONNECTIONS)
            transport.close()
            return
        metrics.of(ctx).connection_opened(name)
        sessions = getattr(ctx, "sessions", None)
        if sessions is not None:
            sessions.add(transport)
        stopping = getattr(ctx, "stopping", None)
        watch = None
        if isinstance(stopping, asyncio.Event):
            watch = asyncio.get_running_loop().create_task(self._watch_stop(stopping))
        started = time.monotonic()
        reason = "logout"
        try:
            reason = await self._serve(cfg, lc)
        except TimeoutError:
            reason = "idle timeout"
            with contextlib.suppress(Exception):
                await self._bye("Disconnected for inactivity.")
        except ServerStopping:
            reason = "server stopping"
            with contextlib.suppress(Exception):
                await self._bye("Server shutting down.")
        except (ConnectionError, ssl.SSLError, OSError) as e:
            reason = f"disconnected ({type(e).__name__})"
        except Exception:
            reason = "internal error"
            log.exception("imap session from %s failed", self.ip)
            with contextlib.suppress(Exception):
                await self._bye("Internal error.")
        finally:
            if watch is not None:
                watch.cancel()
            s = self.session
            if s is not None and s.sub is not None:
                s.sub.close()
            if self.transport is not None:
                self.transport.close()
            if limits is not None:
                limits.connection_closed(name, self.ip)
            metrics.of(ctx).connection_closed(name)
            if sessions is not None:
                sessions.discard(transport)
            mhlog.event(log, "imap session end", listener=name, ip=self.ip,
                        user=(s.user if s else None) or "-", commands=s.commands if s else 0,
                        reason=reason, duration=round(time.monotonic() - started, 3))

    async def _bye(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(f"* BYE {text}\r\n".encode("ascii"))

    async def _watch_stop(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._stopping = True
        self._wakeup()

    async def _serve(self, cfg: Any, lc: ListenerConfig) -> str:
        ctx = self.ctx
        tls_ctx: ssl.SSLContext | None = getattr(ctx, "tls", None)
        self.tls_active = lc.tls == "implicit"
        self.framer = self._new_framer()
        session = self.session = Session(
            ctx, self, listener=self.listener.name, ip=self.ip, loopback=self.listener.loopback,
            starttls_offered=lc.tls == "starttls" and tls_ctx is not None, config=cfg)
        await session.greet()
        max_bad = cfg.imap.max_bad_commands
        nesting = cfg.imap.max_nesting
        while True:
            framer = self.framer
            ev = framer.next_command()
            if ev is NEED_DATA:
                data = await self._read()
                if data is None:
                    raise ServerStopping
                if not data:
                    return "connection closed by client"
                framer.receive_data(data)
                continue
            if isinstance(ev, SendContinuation):
                await self.write(ev.LINE)  # RFC 3501 §7.5
                continue
            if isinstance(ev, Reject):
                await session.reject(ev.response())
                if ev.close:
                    return "protocol error"
            else:
                try:
                    cmd = parse_command(ev, max_nesting=nesting)
                except ParseError as e:
                    await session.reject(e.response())
                else:
                    try:
                        await session.execute(cmd)
                    except SessionEnd as e:
                        return str(e)
            if session.bad >= max_bad:
                await session.bye("Too many invalid IMAP commands.")
                return "too many bad commands"


async def create_server(ctx: Any, name: str, lc: ListenerConfig, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve IMAP on an already bound, listening socket (app.py's listener factory contract)."""
    loop = asyncio.get_running_loop()
    listener = _Listener(ctx, name, lc, _is_loopback(sock))
    ssl_ctx = None
    if lc.tls == "implicit":
        if ctx.tls is None:
            raise ValueError(f"listeners.{name}: implicit TLS needs a certificate")
        ssl_ctx = ctx.tls
    return await loop.create_server(lambda: _Connection(listener), sock=sock, ssl=ssl_ctx,
                                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if ssl_ctx else None)


__all__ = ["create_server"]
