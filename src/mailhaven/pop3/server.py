"""POP3 listeners: the asyncio shell around `pop3.protocol.Session`.

Owns: sockets and TLS (STLS upgrade, implicit TLS on 995), connection limits, idle timeout, the
per-user maildrop lock (one POP3 session per mailbox in this process, for every POP3 listener),
carrying out the session's intents against the directory, limits and store, and the one log line
per session.
Does not own: POP3 syntax or replies (protocol.py), storage (store/), passwords (auth/).

Why a plain asyncio.Protocol and not streams: at STLS every byte received before the handshake must
be dropped (command injection, CVE-2011-0411 class); a StreamReader's buffer cannot be emptied.

Durability (RFC 1939 §6, STYLE rule 11): deletions are applied with the store's expunge, which removes
the files and fsyncs the folder, and only then is the final +OK written. A connection that drops
before QUIT deletes nothing.
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
from mailhaven.pop3 import protocol as P
from mailhaven.pop3.protocol import (
    Authenticate,
    Close,
    Commit,
    LoadMaildrop,
    Retrieve,
    Send,
    Session,
    StartTls,
)
from mailhaven.pop3.readahead import READ_AHEAD_MESSAGES, READ_AHEAD_OCTETS, ReadAhead
from mailhaven.store.model import MessageNotFound

log = logging.getLogger("mailhaven.pop3")

READ_HIGH_WATER = 64 * 1024  # stop reading from a client that has this much unprocessed input
TLS_HANDSHAKE_TIMEOUT = 30.0
R_TOO_MANY_CONNECTIONS = b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n"
SEEN = "\\Seen"

# user -> holder, per store object: one POP3 session per maildrop (RFC 1939 §8 "exclusive-access lock").
_locks: dict[int, set[str]] = {}


def _lock(store: Any, user: str) -> bool:
    held = _locks.setdefault(id(store), set())
    if user in held:
        return False
    held.add(user)
    return True


def _unlock(store: Any, user: str) -> None:
    held = _locks.get(id(store))
    if held is not None:
        held.discard(user)
        if not held:
            del _locks[id(store)]


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
    """One client. The protocol callbacks only buffer and wake; `_main` (a task) does the work."""

    def __init__(self, listener: _Listener) -> None:
        self.listener = listener
        self.ctx = listener.ctx
        self.transport: asyncio.Transport | None = None
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
        # for the session log line
        self.ip = "?"
        self.session: Session | None = None
        self._locked: str | None = None
        self._mailbox: Any = None
        # Read-ahead: after RETR n, the next messages are read in batches while the client takes
        # in n (one worker-thread round trip per batch, not per message; bounded by READ_AHEAD_*).
        self._ahead: ReadAhead | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        task = asyncio.get_running_loop().create_task(self._main(), name=f"pop3 {self.ip}")
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
        # Half-closed by the client ("QUIT" then shutdown): keep our side open so the replies to
        # what it sent still go out; _main closes. (Over TLS asyncio ignores this and closes.)
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._writable.set()
        self._wakeup()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- I/O helpers ---------------------------------------------------------------------------------

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _read(self, idle: float) -> bytes | None:
        """Buffered input; b"" at EOF; None when the server is stopping. TimeoutError when idle."""
        if not self._rbuf:
            loop = asyncio.get_running_loop()
            self._idle_deadline = loop.time() + idle
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
            return  # not waiting for input: the next _read arms it again
        loop = asyncio.get_running_loop()
        if loop.time() >= self._idle_deadline:
            wake.set_exception(TimeoutError())
        else:
            self._idle_timer = loop.call_at(self._idle_deadline, self._idle_check)

    async def _write(self, data: bytes, idle: float) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError
        self.transport.write(data)
        if not self._writable.is_set():
            await asyncio.wait_for(self._writable.wait(), idle)  # a client that does not read

    # -- the session ----------------------------------------------------------------------------------

    async def _main(self) -> None:
        with mhlog.context(proto="pop3", remote=self.ip):
            await self._session()

    async def _session(self) -> None:
        ctx, name = self.ctx, self.listener.name
        cfg = ctx.config  # read per session: a reload may have replaced it
        lc: ListenerConfig = cfg.listeners.get(name, self.listener.lc)
        limits = getattr(ctx, "limits", None)
        assert self.transport is not None
        transport = self.transport
        if limits is not None and not limits.connection_opened(name, self.ip, lc):
            transport.write(R_TOO_MANY_CONNECTIONS)
            transport.close()
            return
        meter = metrics.of(ctx)
        meter.connection_opened(name)
        sessions = getattr(ctx, "sessions", None)
        if sessions is not None:
            sessions.add(transport)
        stopping = getattr(ctx, "stopping", None)
        if isinstance(stopping, asyncio.Event):
            self._stop_watch = asyncio.get_running_loop().create_task(self._watch_stop(stopping))
        started = time.monotonic()
        reason = "logout"
        try:
            reason = await self._serve(cfg, lc)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError) as e:
            reason = f"disconnected ({type(e).__name__})"
        except Exception:
            reason = "internal error"
            log.exception("pop3 session from %s failed", self.ip)
            with contextlib.suppress(Exception):
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(P.R_INTERNAL)
        finally:
            if self._stop_watch is not None:
                self._stop_watch.cancel()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            if self._ahead is not None:
                self._ahead.close()
            if self._locked is not None:
                _unlock(ctx.store, self._locked)
            if self.transport is not None:
                self.transport.close()
            if limits is not None:
                limits.connection_closed(name, self.ip)
            meter.connection_closed(name)
            if sessions is not None:
                sessions.discard(transport)
            s = self.session
            mhlog.event(log, "pop3 session end", listener=name, ip=self.ip,
                        user=(s.user if s else None) or "-", retrieved=s.retrieved_count if s else 0,
                        deleted=s.deleted_count if s else 0, reason=reason,
                        duration=round(time.monotonic() - started, 3))

    async def _watch_stop(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._stopping = True
        self._wakeup()

    async def _serve(self, cfg: Any, lc: ListenerConfig) -> str:
        ctx = self.ctx
        tls_ctx: ssl.SSLContext | None = getattr(ctx, "tls", None)
        implicit = lc.tls == "implicit"
        session = self.session = Session(
            tls_active=implicit,
            stls_available=lc.tls == "starttls" and tls_ctx is not None,
            insecure_auth_allowed=self.listener.loopback and cfg.auth.allow_plaintext_loopback,
            max_bad_commands=cfg.pop3.max_bad_commands,
        )
        timeout = lc.idle_timeout
        await self._write(session.greeting(), timeout)
        while True:
            ev = session.next_event()
            if ev is None:
                try:
                    data = await self._read(timeout)
                except TimeoutError:
                    # RFC 1939 §3: autologout timer; no UPDATE, nothing deleted.
                    await self._write(session.abort(P.R_IDLE_TIMEOUT), timeout)
                    return "idle timeout"
                if data is None:
                    await self._write(session.abort(P.R_SHUTDOWN), timeout)
                    return "server stopping"
                if not data:
                    return "connection closed by client"  # no QUIT: no UPDATE
                session.receive_data(data)
            elif isinstance(ev, Send):
                await self._write(ev.data, timeout)
            elif isinstance(ev, Close):
                return "logout"
            elif isinstance(ev, Authenticate):
                await self._authenticate(session, ev)
            elif isinstance(ev, LoadMaildrop):
                await self._load_maildrop(session, ev)
            elif isinstance(ev, Retrieve):
                await self._retrieve(session, ev)
            elif isinstance(ev, StartTls):
                assert tls_ctx is not None
                await self._start_tls(session, tls_ctx)
            elif isinstance(ev, Commit):
                await self._commit(session, ev)

    async def _start_tls(self, session: Session, tls_ctx: ssl.SSLContext) -> None:
        # RFC 2595 §4: the +OK has been queued; wait until it is on its way, then handshake.
        if not self._writable.is_set():
            await asyncio.wait_for(self._writable.wait(), TLS_HANDSHAKE_TIMEOUT)
        self._rbuf.clear()  # input that came before the handshake is never acted on
        self._rlen = 0
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        new = await loop.start_tls(self.transport, self, tls_ctx, server_side=True,
                                   ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        if new is None:
            raise ConnectionResetError
        self.transport = new
        self._reading_paused = False
        session.tls_started()

    async def _authenticate(self, session: Session, ev: Authenticate) -> None:
        ctx = self.ctx
        limits = getattr(ctx, "limits", None)
        if limits is not None and not await limits.before_auth(self.ip, ev.login):
            mhlog.event(log, "pop3 login refused (throttled)", login=ev.login)
            metrics.of(ctx).login("pop3", ok=False, reason="throttled")
            session.auth_throttled()
            return
        directory = getattr(ctx, "directory", None)
        user = await directory.authenticate(ev.login, ev.password) if directory is not None else None
        if user is None:
            if limits is not None:
                limits.auth_failed(self.ip, ev.login)
            mhlog.event(log, "pop3 login failed", login=ev.login)
            metrics.of(ctx).login("pop3", ok=False, reason="bad_credentials")
            session.auth_failed()
            return
        if limits is not None:
            limits.auth_succeeded(self.ip, ev.login)
        metrics.of(ctx).login("pop3", ok=True)
        # protocol.Authenticate does not say which command carried the password (USER/PASS or AUTH PLAIN)
        mhlog.event(log, "pop3 login ok", login=ev.login, user=user, mechanism=ev.mechanism)
        mhlog.set_user(user)
        session.auth_succeeded(user)

    async def _load_maildrop(self, session: Session, ev: LoadMaildrop) -> None:
        store = self.ctx.store
        if store is None:
            session.maildrop_failed()
            return
        if not _lock(store, ev.user):
            session.maildrop_in_use()
            return
        try:
            mailbox = await store.account(ev.user).mailbox("INBOX")
            snap = await mailbox.snapshot()  # RFC 1939 §8: the maildrop as of login
        except Exception:
            _unlock(store, ev.user)
            log.exception("pop3: cannot open INBOX of %s", ev.user)
            session.maildrop_failed()
            return
        self._locked = ev.user
        self._mailbox = mailbox
        self._ahead = ReadAhead(mailbox)
        session.maildrop_loaded(snap.uidvalidity, snap.messages)  # MessageInfo has .uid, .size

    async def _retrieve(self, session: Session, ev: Retrieve) -> None:
        ahead = self._ahead
        assert ahead is not None
        data = ahead.take(ev.uid)  # usually there: read in an earlier batch
        hit = data is not None
        if data is None:
            try:
                data = await ahead.get(ev.uid)
            except MessageNotFound:  # expunged by another client since login
                session.message_missing()
                return
        session.message_data(data)
        # RETR: the client is likely to ask for the next ones (TOP: a client looking at headers).
        if ev.lines is None and (not hit or ahead.running_low()):
            ahead.plan(session.following(ev.number, READ_AHEAD_MESSAGES, READ_AHEAD_OCTETS))

    async def _commit(self, session: Session, ev: Commit) -> None:
        mailbox = self._mailbox
        if self._ahead is not None:
            self._ahead.close()
        try:
            if ev.expunge:
                await mailbox.expunge(list(ev.expunge))  # durable (fsync) before the +OK below
        except Exception:
            log.exception("pop3: expunge failed for %s", session.user)
            session.commit_failed()
            return
        if ev.seen:
            try:
                await mailbox.store_flags(list(ev.seen), frozenset({SEEN}), "add")
            except Exception:  # \Seen is a courtesy; the session's outcome does not depend on it
                log.warning("pop3: could not set \\Seen for %s", session.user, exc_info=True)
        session.commit_done()


async def create_server(ctx: Any, name: str, lc: ListenerConfig, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve POP3 on an already bound, listening socket (app.py's listener factory contract)."""
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
