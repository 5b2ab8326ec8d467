"""POP3 listeners: the asyncio shell around `pop3.protocol.Session`.

Owns: the session loop (bytes -> Session -> events), the per-user maildrop lock (one POP3
session per mailbox in this process, for every POP3 listener), carrying out the session's intents
against the directory, limits and store (RETR bodies through readahead.py), the replies for an
idle timeout, a server stop and an internal error, and the one log line per session.
Does not own: POP3 syntax or replies (protocol.py), storage (store/), passwords (auth/), the
connection plumbing shared with IMAP (lineproto.py: buffering, flow control, idle timer, the STLS
upgrade that drops input sent before the handshake, connection limits, implicit TLS on 995).

Durability (RFC 1939 §6, STYLE rule 11): deletions are applied with the store's expunge, which removes
the files and fsyncs the folder, and only then is the final +OK written. A connection that drops
before QUIT deletes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

from mailhaven import lineproto, seams
from mailhaven import log as mhlog
from mailhaven.auth import login as logins
from mailhaven.config import ListenerConfig
from mailhaven.lineproto import LineConnection, Listener
from mailhaven.pop3 import protocol as P
from mailhaven.pop3.protocol import (
    Authenticate,
    Close,
    Commit,
    LoadMaildrop,
    LoginFailed,
    Retrieve,
    Send,
    Session,
    StartTls,
)
from mailhaven.pop3.readahead import READ_AHEAD_MESSAGES, READ_AHEAD_OCTETS, ReadAhead
from mailhaven.store.model import MessageNotFound

log = logging.getLogger("mailhaven.pop3")

SEEN = "\\Seen"
_TIMEOUTS = {lineproto.LoginTimeout: (P.R_LOGIN_TIMEOUT, "login timeout"),
             lineproto.LineTimeout: (P.R_LINE_TIMEOUT, "line timeout")}

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


class _Connection(LineConnection):
    """One client: the session's intents carried out against the directory, limits and store."""

    PROTO = "pop3"
    READ_HIGH_WATER = 64 * 1024  # stop reading from a client that has this much unprocessed input
    R_TOO_MANY_CONNECTIONS = b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n"
    R_INTERNAL = P.R_INTERNAL
    logger = log

    def __init__(self, listener: Listener) -> None:
        super().__init__(listener)
        # for the session log line
        self.session: Session | None = None
        self._locked: str | None = None
        self._mailbox: Any = None
        # Read-ahead: after RETR n, the next messages are read in batches while the client takes
        # in n (one worker-thread round trip per batch, not per message; bounded by READ_AHEAD_*).
        self._ahead: ReadAhead | None = None

    def cleanup(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        if self._locked is not None:
            _unlock(self.ctx.store, self._locked)

    def session_ended(self, reason: str, duration: float) -> None:
        s = self.session
        # A health probe (`mailhaven health`, check_pop, a load balancer): greeting, QUIT, nothing
        # else. Logged at DEBUG, so a container's HEALTHCHECK does not fill the log.
        probe = s is not None and s.commands == 1 and s.quit_received and s.user is None
        mhlog.event(log, "pop3 session end", level=logging.DEBUG if probe else logging.INFO,
                    listener=self.listener.name, ip=self.ip,
                    user=(s.user if s else None) or "-", retrieved=s.retrieved_count if s else 0,
                    deleted=s.deleted_count if s else 0, reason=reason, duration=duration)

    async def run(self, cfg: Any, lc: ListenerConfig) -> str:
        ctx = self.ctx
        tls_ctx: ssl.SSLContext | None = getattr(ctx, "tls", None)
        implicit = lc.tls == "implicit"
        session = self.session = Session(
            tls_active=implicit,
            stls_available=lc.tls == "starttls" and tls_ctx is not None,
            insecure_auth_allowed=self.listener.loopback and cfg.auth.allow_plaintext_loopback,
            max_bad_commands=cfg.pop3.max_bad_commands,
        )
        await self.write(session.greeting())
        while True:
            ev = session.next_event()
            if ev is None:
                try:
                    data = await self.read()
                except TimeoutError as e:
                    # RFC 1939 §3: autologout timer; no UPDATE, nothing deleted.
                    reply, why = _TIMEOUTS.get(type(e), (P.R_IDLE_TIMEOUT, "idle timeout"))
                    await self.write(session.abort(reply))
                    return why
                if data is None:
                    await self.write(session.abort(P.R_SHUTDOWN))
                    return "server stopping"
                if not data:
                    return "connection closed by client"  # no QUIT: no UPDATE
                session.receive_data(data)
            elif isinstance(ev, Send):
                await self.write(ev.data)
            elif isinstance(ev, Close):
                return "logout"
            elif isinstance(ev, LoginFailed):
                self._login_failed(ev.reason, ev.login, ev.mechanism)
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
        # RFC 2595 §4: the +OK has been queued; the upgrade drops input that came before it.
        await self.upgrade_tls(tls_ctx)
        session.tls_started()

    def _login_failed(self, reason: str, login: str, mechanism: str) -> None:
        """A login that ended before a password check (the protocol core said why): the one log
        line and metrics of every protocol (auth/login.py)."""
        logins.of(self.ctx).refused("pop3", self.ip, login, reason, mechanism)

    async def _authenticate(self, session: Session, ev: Authenticate) -> None:
        # auth/login.py: throttle (a delay, never a refusal), cache, check, the one log line, metrics
        outcome = await logins.of(self.ctx).login("pop3", self.ip, ev.login, ev.password, ev.mechanism)
        if outcome.user is None:
            session.auth_failed()
            return
        mhlog.set_user(outcome.user)
        session.auth_succeeded(outcome.user)
        self.logged_in()

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
        session.maildrop_loaded(snap.uidvalidity, snap.messages)  # MessageInfo has .uid, .pop3_size

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


async def create_server(ctx: seams.Context, name: str, lc: ListenerConfig, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve POP3 on an already bound, listening socket (app.py's listener factory contract)."""
    return await lineproto.create_server(ctx, name, lc, sock, _Connection)


__all__ = ["create_server"]
