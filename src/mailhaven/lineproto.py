"""The connection plumbing the IMAP and POP3 listeners share (a buffered asyncio.Protocol).

Owns: one task per connection and its skeleton (admission, the session, the reason it ended,
cleanup, release, the log line); input buffering with a high-water mark (pause_reading until the
task takes the input); EOF and half-close; write flow control (pause_writing / resume_writing);
the time bounds of reads (one timer per connection, not one per read): the idle timeout, the line
deadline (a line complete within line_timeout of its first byte, however slowly bytes trickle in)
and the login deadline (login_timeout from admission until the subclass calls `logged_in()`); the
idle timeout of a blocked write; the server-stopping wake-up; the STARTTLS/STLS upgrade that drops
every byte received before the handshake (a failed handshake is a disconnect, logged at INFO);
admission (connection limits, eviction of this session while it has not logged in, metrics,
ctx.sessions) and its release; an unexpected exception (logged with its traceback, a reply that
reveals nothing); the listener socket (`create_server` with the listen backlog, implicit TLS and
the PROXY protocol, through proxyaccept.py) and whether it is a loopback listener. The client
address (`self.ip`: admission, login throttling, logs) is the PROXY header's on a proxy_protocol
listener (`ProxiedPeer.peer_address`).
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
from mailhaven import metrics, proxyaccept, seams
from mailhaven.config import ListenerConfig

TLS_HANDSHAKE_TIMEOUT = proxyaccept.TLS_HANDSHAKE_TIMEOUT
BACKLOG = 511  # listen(2) backlog (as nginx and Redis use), or max_connections when smaller


def backlog(lc: ListenerConfig) -> int:
    """The listen backlog of a listener. asyncio's create_server calls listen() again with its own
    default (100) unless given this."""
    return min(BACKLOG, lc.max_connections)


class LineTimeout(TimeoutError):
    """A line of input was not complete within line_timeout of its first byte."""


class LoginTimeout(TimeoutError):
    """The session did not log in within login_timeout."""


class TlsHandshakeFailed(ConnectionError):
    """STARTTLS/STLS: the client did not complete a TLS handshake (garbage, a timeout, a reset)."""


def is_loopback(sock: socket.socket) -> bool:
    """Whether a listening socket is bound to a loopback address (plaintext login exception)."""
    try:
        host = sock.getsockname()[0]
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except (OSError, ValueError, IndexError):
        return False


class Listener:
    """What every connection of one listening socket shares."""

    def __init__(self, ctx: seams.Context, name: str, lc: ListenerConfig, loopback: bool) -> None:
        self.ctx = ctx
        self.name = name
        self.lc = lc
        self.loopback = loopback
        self.tasks: set[asyncio.Task[None]] = set()


class LineConnection(proxyaccept.ProxiedPeer, asyncio.Protocol):
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
        self.line_timeout = listener.lc.line_timeout
        self._line_since: float | None = None  # when the first byte of an incomplete line came
        self._login_deadline: float | None = None  # loop time; None once logged in
        self._timer_at = 0.0  # when _idle_timer fires
        self._counted = False  # holds a slot in ctx.limits
        self.evicted = False
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
                if self.evicted:
                    reason = "evicted"
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
        if isinstance(exc, TlsHandshakeFailed):
            return "TLS handshake failed"
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
        peer = self.peer_address(transport)  # the PROXY header's client on a proxy_protocol listener
        self.ip = peer[0] if peer else "?"
        task = asyncio.get_running_loop().create_task(self.serve(), name=f"{self.PROTO} {self.ip}")
        self.listener.tasks.add(task)
        task.add_done_callback(self.listener.tasks.discard)

    def data_received(self, data: bytes) -> None:
        # The line deadline counts from the first byte of the line still incomplete.
        nl = data.rfind(b"\n")
        if nl == len(data) - 1:
            self._line_since = None
        elif nl >= 0 or self._line_since is None:
            self._line_since = asyncio.get_running_loop().time()
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
        for `self.timeout` seconds, LineTimeout when a line is not complete `line_timeout` after
        its first byte, LoginTimeout at the login deadline."""
        if not self._rbuf:
            loop = asyncio.get_running_loop()
            self._idle_deadline = loop.time() + self.timeout
            deadline = self._deadline()
            if self._idle_timer is None or deadline < self._timer_at:
                if self._idle_timer is not None:
                    self._idle_timer.cancel()
                self._idle_timer = loop.call_at(deadline, self._idle_check)
                self._timer_at = deadline
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
            if self._line_since is not None:  # we stopped reading, not the client: a new count
                self._line_since = asyncio.get_running_loop().time()
        return data

    def _deadline(self) -> float:
        """The earliest of the idle, line and login deadlines."""
        deadline = self._idle_deadline
        if self._line_since is not None:
            deadline = min(deadline, self._line_since + self.line_timeout)
        if self._login_deadline is not None:
            deadline = min(deadline, self._login_deadline)
        return deadline

    def _expired(self, now: float) -> TimeoutError | None:
        if self._login_deadline is not None and now >= self._login_deadline:
            return LoginTimeout()
        if self._line_since is not None and now >= self._line_since + self.line_timeout:
            return LineTimeout()
        if now >= self._idle_deadline:
            return TimeoutError()
        return None

    def _idle_check(self) -> None:
        """The one timer of a connection: it is not re-armed per read (that cost a timer per
        command); when it fires early, because input came meanwhile, it is set for the new deadline
        (read() sets it earlier when a line or login deadline comes first)."""
        self._idle_timer = None
        wake = self._wake
        if wake is None or wake.done():
            return  # not waiting for input: the next read() arms it again
        loop = asyncio.get_running_loop()
        expired = self._expired(loop.time())
        if expired is not None:
            wake.set_exception(expired)
        else:
            self._timer_at = self._deadline()
            self._idle_timer = loop.call_at(self._timer_at, self._idle_check)

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
        self._line_since = None
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(self.transport, self, tls_ctx, server_side=True,
                                       ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, OSError) as e:  # not TLS, a timeout, a reset: the client's doing
            self.logger.info("%s TLS handshake failed (client %s): %s", self.PROTO, self.ip, e)
            raise TlsHandshakeFailed(str(e)) from None
        if new is None:
            self.logger.info("%s TLS handshake failed (client %s): connection lost", self.PROTO, self.ip)
            raise TlsHandshakeFailed("connection lost")
        self.transport = new
        self._reading_paused = False

    # -- admission and release -----------------------------------------------------------------------

    def listener_config(self) -> tuple[Any, ListenerConfig]:
        """(config, this listener's config), read per session: a reload may have replaced them."""
        cfg = self.ctx.config
        lc: ListenerConfig = cfg.listeners.get(self.listener.name, self.listener.lc)
        self.timeout = lc.idle_timeout
        self.line_timeout = lc.line_timeout
        return cfg, lc

    def admit(self, lc: ListenerConfig, refusal: bytes) -> bool:
        """Count the connection in (limits, metrics, ctx.sessions), start the login deadline, make
        the session evictable until it logs in, and watch for the server stopping. False: over a
        connection limit; `refusal` was written and the connection closed, and nothing is to be
        released."""
        ctx, name = self.ctx, self.listener.name
        assert self.transport is not None
        limits = getattr(ctx, "limits", None)
        if limits is not None:
            refused = limits.admit(name, self.ip, lc)
            if refused is not None:
                metrics.of(ctx).connection_refused(name, refused)
                self.transport.write(refusal)
                self.transport.close()
                return False
            self._counted = True
            limits.evictable(name, self)
        self._login_deadline = asyncio.get_running_loop().time() + lc.login_timeout
        self._admitted = self.transport
        metrics.of(ctx).connection_opened(name)
        sessions = getattr(ctx, "sessions", None)
        if sessions is not None:
            sessions.add(self.transport)
        stopping = getattr(ctx, "stopping", None)
        if isinstance(stopping, asyncio.Event):
            self._stop_watch = asyncio.get_running_loop().create_task(self._watch_stop(stopping))
        return True

    def logged_in(self) -> None:
        """The session authenticated: no login deadline any more, and never evicted."""
        self._login_deadline = None
        limits = getattr(self.ctx, "limits", None)
        if limits is not None:
            limits.not_evictable(self.listener.name, self)

    def evict(self) -> None:
        """limits.Evictable: a new connection needs this one's slot (the listener is full and this
        session has not logged in). The refusal reply, then close; the slot is given back now."""
        if self.evicted or not self._counted:
            return
        self.evicted = True
        self.write_last(self.R_TOO_MANY_CONNECTIONS)
        if self.transport is not None:
            self.transport.close()
        self._uncount()
        metrics.of(self.ctx).connection_evicted(self.listener.name)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            limits = self.ctx.limits
            limits.not_evictable(self.listener.name, self)
            limits.connection_closed(self.listener.name, self.ip)

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
        self._uncount()
        metrics.of(ctx).connection_closed(name)
        sessions = getattr(ctx, "sessions", None)
        if sessions is not None:
            sessions.discard(self._admitted)


async def create_server(ctx: seams.Context, name: str, lc: ListenerConfig, sock: socket.socket,
                        connection: Callable[[Listener], LineConnection]) -> asyncio.AbstractServer:
    """Serve `connection`s on an already bound, listening socket (app.py's listener factory
    contract); implicit TLS (lc.tls == "implicit") with ctx.tls; a PROXY header first when
    lc.proxy_protocol (proxyaccept.py)."""
    # Behind a proxy the clients are elsewhere: no plaintext-login exception for loopback.
    listener = Listener(ctx, name, lc, is_loopback(sock) and not lc.proxy_protocol)
    ssl_ctx = None
    if lc.tls == "implicit":
        if ctx.tls is None:
            raise ValueError(f"listeners.{name}: implicit TLS needs a certificate")
        ssl_ctx = ctx.tls
    return await proxyaccept.create_server(name, lc, sock, lambda: connection(listener), ssl_ctx, backlog(lc))


__all__ = ["BACKLOG", "LineConnection", "LineTimeout", "Listener", "LoginTimeout", "TLS_HANDSHAKE_TIMEOUT",
           "TlsHandshakeFailed", "backlog", "create_server", "is_loopback"]
