"""The connection plumbing the IMAP and POP3 listeners share (a buffered asyncio.Protocol).

Owns: one task per connection and its skeleton (admission, the session, the reason it ended,
cleanup, release, the log line); input buffering with a high-water mark (pause_reading until the
task takes the input); EOF and half-close; write flow control (pause_writing / resume_writing);
the idle timeout of reads (one timer per connection, not one per read) and of a blocked write;
the server-stopping wake-up; the STARTTLS/STLS upgrade that drops every byte received before the
handshake; admission (connection limits, metrics, ctx.sessions) and its release; an unexpected
exception (logged with its traceback, a reply that reveals nothing); the listener socket
(`create_server`, implicit TLS) and whether it is a loopback listener.
Does not own: framing, syntax, replies or sessions (imap/server.py, pop3/server.py subclass
`LineConnection` and implement `run()`), the limits themselves (limits.py), TLS contexts (tls.py).

Why a plain asyncio.Protocol and not streams: at STARTTLS every byte received before the handshake
must be dropped (command injection, CVE-2011-0411 class); a StreamReader's buffer cannot be emptied.
The protocol callbacks only buffer and wake; the connection's task (`serve()`) does the work.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from mailhaven import log as mhlog
from mailhaven import metrics
from mailhaven.config import ListenerConfig

TLS_HANDSHAKE_TIMEOUT = 30.0


def is_loopback(sock: socket.socket) -> bool:
    """Whether a listening socket is bound to a loopback address (plaintext login exception)."""
    try:
        host = sock.getsockname()[0]
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except (OSError, ValueError, IndexError):
        return False


class Listener:
    """What every connection of one listening socket shares."""

    def __init__(self, ctx: Any, name: str, lc: ListenerConfig, loopback: bool) -> None:
        self.ctx = ctx
        self.name = name
        self.lc = lc
        self.loopback = loopback
        self.tasks: set[asyncio.Task[None]] = set()


class LineConnection(asyncio.Protocol):
    """One client. A subclass sets the class constants and implements `run()` (the session, in the
    connection's task), `session_ended()` (its log line) and, if it has any, `cleanup()`."""

    PROTO = "line"  # names the task and the log context
    READ_HIGH_WATER = 64 * 1024  # stop reading from a client that has this much unprocessed input
    R_TOO_MANY_CONNECTIONS = b""  # the refusal when a connection limit is reached
    R_INTERNAL = b""  # the last words after an unexpected exception
    logger = logging.getLogger("mailhaven")  # for the traceback of an internal error

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.ctx = listener.ctx
        self.transport: asyncio.Transport | None = None
        self.ip = "?"
        self.timeout = listener.lc.idle_timeout  # idle timeout of reads and blocked writes
        self._rbuf: list[bytes] = []
        self._rlen = 0
        self._reading_paused = False
        self._eof = False
        self._wake: asyncio.Future[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_deadline = 0.0
        self._writable = asyncio.Event()
        self._writable.set()
        self._stopping = False
        self._stop_watch: asyncio.Task[None] | None = None
        self._admitted: asyncio.Transport | None = None

    # -- the connection's task ---------------------------------------------------------------------

    async def serve(self) -> None:
        """The task: admission, `run()`, then cleanup, release and the session's log line."""
        with mhlog.context(proto=self.PROTO, remote=self.ip):
            cfg, lc = self.listener_config()
            if not self.admit(lc, self.R_TOO_MANY_CONNECTIONS):
                return
            started = time.monotonic()
            reason = "logout"
            try:
                reason = await self.run(cfg, lc)
            except Exception as e:
                reason = self.ended_by(e)
            finally:
                self.cleanup()
                self.release()
                self.session_ended(reason, round(time.monotonic() - started, 3))

    async def run(self, cfg: Any, lc: ListenerConfig) -> str:
        """The session; returns why it ended (for the log line)."""
        raise NotImplementedError

    def ended_by(self, exc: Exception) -> str:
        """Why the session ended, for an exception out of `run()` (called inside the except block).
        Network errors are a disconnect; anything else is logged with its traceback and the client
        gets R_INTERNAL, which reveals nothing."""
        if isinstance(exc, ConnectionError | ssl.SSLError | OSError):
            return f"disconnected ({type(exc).__name__})"
        self.logger.exception("%s session from %s failed", self.PROTO, self.ip)
        try:
            self.write_last(self.R_INTERNAL)
        except Exception:  # the transport may be broken too; the session is over anyway
            pass
        return "internal error"

    def cleanup(self) -> None:
        """The subclass's own end of session (locks, subscriptions), before the connection closes."""

    def session_ended(self, reason: str, duration: float) -> None:
        """The one log line per session."""

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        task = asyncio.get_running_loop().create_task(self.serve(), name=f"{self.PROTO} {self.ip}")
        self.listener.tasks.add(task)
        task.add_done_callback(self.listener.tasks.discard)

    def data_received(self, data: bytes) -> None:
        self._rbuf.append(data)
        self._rlen += len(data)
        if self._rlen > self.READ_HIGH_WATER and not self._reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wakeup()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wakeup()
        # Half-closed by the client ("QUIT"/"LOGOUT" then shutdown): keep our side open so the
        # replies to what it sent still go out; the task closes. (Over TLS asyncio closes anyway.)
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

    async def read(self) -> bytes | None:
        """Buffered input; b"" at EOF; None when the server is stopping. TimeoutError when idle
        for `self.timeout` seconds."""
        if not self._rbuf:
            loop = asyncio.get_running_loop()
            self._idle_deadline = loop.time() + self.timeout
            if self._idle_timer is None:
                self._idle_timer = loop.call_at(self._idle_deadline, self._idle_check)
            while not self._rbuf:
                if self._stopping:
                    return None
                if self._eof:
                    return b""
                self._wake = loop.create_future()
                try:
                    await self._wake  # woken by input, EOF, stopping, or _idle_check
                finally:
                    self._wake = None
        data = b"".join(self._rbuf)
        self._rbuf.clear()
        self._rlen = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def _idle_check(self) -> None:
        """The one idle timer of a connection: it is not re-armed per read (that cost a timer per
        command); when it fires early, because input came meanwhile, it is set for the new deadline."""
        self._idle_timer = None
        wake = self._wake
        if wake is None or wake.done():
            return  # not waiting for input: the next read() arms it again
        loop = asyncio.get_running_loop()
        if loop.time() >= self._idle_deadline:
            wake.set_exception(TimeoutError())
        else:
            self._idle_timer = loop.call_at(self._idle_deadline, self._idle_check)

    async def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.transport.write(data)
        if not self._writable.is_set():
            await asyncio.wait_for(self._writable.wait(), self.timeout)  # a client that does not read

    def write_last(self, data: bytes) -> None:
        """Last words (BYE, internal error): written if the connection is still open, never waits."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def upgrade_tls(self, tls_ctx: ssl.SSLContext) -> None:
        """STARTTLS / STLS, after the go-ahead reply was written: wait until it is on its way, drop
        every byte received before the handshake, then handshake (RFC 3501 §6.2.1, RFC 2595 §4;
        CVE-2011-0411: input pipelined after the command in plaintext is never acted on)."""
        if not self._writable.is_set():
            await asyncio.wait_for(self._writable.wait(), TLS_HANDSHAKE_TIMEOUT)
        self._rbuf.clear()
        self._rlen = 0
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        new = await loop.start_tls(self.transport, self, tls_ctx, server_side=True,
                                   ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        if new is None:
            raise ConnectionResetError("TLS handshake failed")
        self.transport = new
        self._reading_paused = False

    # -- admission and release -----------------------------------------------------------------------

    def listener_config(self) -> tuple[Any, ListenerConfig]:
        """(config, this listener's config), read per session: a reload may have replaced them."""
        cfg = self.ctx.config
        lc: ListenerConfig = cfg.listeners.get(self.listener.name, self.listener.lc)
        self.timeout = lc.idle_timeout
        return cfg, lc

    def admit(self, lc: ListenerConfig, refusal: bytes) -> bool:
        """Count the connection in (limits, metrics, ctx.sessions) and watch for the server
        stopping. False: over a connection limit; `refusal` was written and the connection closed,
        and nothing is to be released."""
        ctx, name = self.ctx, self.listener.name
        assert self.transport is not None
        limits = getattr(ctx, "limits", None)
        if limits is not None and not limits.connection_opened(name, self.ip, lc):
            self.transport.write(refusal)
            self.transport.close()
            return False
        self._admitted = self.transport
        metrics.of(ctx).connection_opened(name)
        sessions = getattr(ctx, "sessions", None)
        if sessions is not None:
            sessions.add(self.transport)
        stopping = getattr(ctx, "stopping", None)
        if isinstance(stopping, asyncio.Event):
            self._stop_watch = asyncio.get_running_loop().create_task(self._watch_stop(stopping))
        return True

    async def _watch_stop(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._stopping = True
        self._wakeup()

    def release(self) -> None:
        """The end of an admitted connection: stop the timers, close, count it out."""
        ctx, name = self.ctx, self.listener.name
        if self._stop_watch is not None:
            self._stop_watch.cancel()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.transport is not None:
            self.transport.close()
        limits = getattr(ctx, "limits", None)
        if limits is not None:
            limits.connection_closed(name, self.ip)
        metrics.of(ctx).connection_closed(name)
        sessions = getattr(ctx, "sessions", None)
        if sessions is not None:
            sessions.discard(self._admitted)


async def create_server(ctx: Any, name: str, lc: ListenerConfig, sock: socket.socket,
                        connection: Callable[[Listener], LineConnection]) -> asyncio.AbstractServer:
    """Serve `connection`s on an already bound, listening socket (app.py's listener factory
    contract); implicit TLS (lc.tls == "implicit") with ctx.tls."""
    loop = asyncio.get_running_loop()
    listener = Listener(ctx, name, lc, is_loopback(sock))
    ssl_ctx = None
    if lc.tls == "implicit":
        if ctx.tls is None:
            raise ValueError(f"listeners.{name}: implicit TLS needs a certificate")
        ssl_ctx = ctx.tls
    return await loop.create_server(lambda: connection(listener), sock=sock, ssl=ssl_ctx,
                                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if ssl_ctx else None)


__all__ = ["LineConnection", "Listener", "TLS_HANDSHAKE_TIMEOUT", "create_server", "is_loopback"]
