"""ManageSieve listener: the asyncio shell around `managesieve.protocol.Session`.

Owns: the session loop (bytes -> Session -> events), carrying out its intents (logins through
auth/login.py, with the same throttling and log line as every protocol; script operations through
sieve_store.ScriptStore, off the event loop), the replies for a timeout, a server stop and an
internal error, and the one log line per session.
Does not own: ManageSieve syntax or replies (protocol.py), the files (sieve_store.py), the
connection plumbing shared with IMAP and POP3 (lineproto.py: buffering, timeouts, the STARTTLS
upgrade that drops input sent before the handshake, connection limits, implicit TLS).

Durability: PUTSCRIPT, SETACTIVE, DELETESCRIPT and RENAMESCRIPT are answered OK only after
sieve_store has fsynced the change.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from mailhaven import lineproto
from mailhaven import log as mhlog
from mailhaven.auth import login as logins
from mailhaven.config import ListenerConfig
from mailhaven.lineproto import LineConnection, Listener
from mailhaven.managesieve import protocol as P
from mailhaven.managesieve.protocol import Authenticate, Close, LoginFailed, Send, Session, StartTls, Storage
from mailhaven.sieve import EXTENSIONS, Limits, SieveSyntaxError
from mailhaven.sieve_store import ScriptError, ScriptStore, check_script

log = logging.getLogger("mailhaven.managesieve")

_TIMEOUTS = {lineproto.LoginTimeout: (P.R_LOGIN_TIMEOUT, "login timeout"),
             lineproto.LineTimeout: (P.R_LINE_TIMEOUT, "line timeout")}

# Storage intent -> the ScriptStore call that carries it out (blocking; run in a worker thread).
_OPS: dict[str, Callable[..., object]] = {
    "havespace": ScriptStore.have_space, "put": ScriptStore.put, "list": ScriptStore.listing,
    "get": ScriptStore.get, "setactive": ScriptStore.set_active, "delete": ScriptStore.delete,
    "rename": ScriptStore.rename,
}


def _run_op(store: ScriptStore, op: str, args: tuple[str | bytes | int, ...]) -> object:
    if op == "check":
        data = args[0]
        assert isinstance(data, bytes)
        check_script(data, store.max_size)
        return None
    return _OPS[op](store, *args)


class _Connection(LineConnection):
    PROTO = "managesieve"
    R_TOO_MANY_CONNECTIONS = b'BYE (TRYLATER) "Too many connections, try again later."\r\n'
    R_INTERNAL = P.R_INTERNAL
    logger = log

    def __init__(self, listener: Listener) -> None:
        super().__init__(listener)
        self.session: Session | None = None
        self.changes = 0  # script changes made (for the log line)

    def session_ended(self, reason: str, duration: float) -> None:
        s = self.session
        probe = s is not None and s.commands == 1 and s.logout_received and s.user is None
        mhlog.event(log, "managesieve session end", level=logging.DEBUG if probe else logging.INFO,
                    listener=self.listener.name, ip=self.ip, user=(s.user if s else None) or "-",
                    changes=self.changes, reason=reason, duration=duration)

    async def run(self, cfg: Any, lc: ListenerConfig) -> str:
        tls_ctx: ssl.SSLContext | None = getattr(self.ctx, "tls", None)
        session = self.session = Session(
            tls_active=lc.tls == "implicit",
            starttls_available=lc.tls == "starttls" and tls_ctx is not None,
            insecure_auth_allowed=self.listener.loopback and cfg.auth.allow_plaintext_loopback,
            sieve_extensions=sorted(EXTENSIONS), max_script_size=cfg.managesieve.max_script_size,
            max_redirects=Limits().max_redirects, max_bad_commands=cfg.managesieve.max_bad_commands)
        await self.write(session.greeting())
        while True:
            ev = session.next_event()
            if ev is None:
                try:
                    data = await self.read()
                except TimeoutError as e:
                    reply, why = _TIMEOUTS.get(type(e), (P.R_IDLE_TIMEOUT, "idle timeout"))
                    await self.write(session.abort(reply))
                    return why
                if data is None:
                    await self.write(session.abort(P.R_SHUTDOWN))
                    return "server stopping"
                if not data:
                    return "connection closed by client"
                session.receive_data(data)
            elif isinstance(ev, Send):
                await self.write(ev.data)
            elif isinstance(ev, Close):
                return "logout"
            elif isinstance(ev, LoginFailed):
                logins.of(self.ctx).refused("managesieve", self.ip, ev.login, ev.reason, ev.mechanism)
            elif isinstance(ev, Authenticate):
                await self._authenticate(session, ev)
            elif isinstance(ev, StartTls):
                assert tls_ctx is not None
                await self.upgrade_tls(tls_ctx)  # drops input sent before the handshake
                session.tls_started()
            elif isinstance(ev, Storage):
                await self._storage(session, ev, cfg)

    async def _authenticate(self, session: Session, ev: Authenticate) -> None:
        # auth/login.py: throttle (a delay, never a refusal), check, the one log line, metrics
        outcome = await logins.of(self.ctx).login("managesieve", self.ip, ev.login, ev.password, ev.mechanism)
        if outcome.user is None:
            session.auth_failed()
            return
        mhlog.set_user(outcome.user)
        session.auth_succeeded(outcome.user)
        self.logged_in()

    async def _storage(self, session: Session, ev: Storage, cfg: Any) -> None:
        assert session.user is not None
        ms = cfg.managesieve
        try:
            store = ScriptStore(cfg.mail_root, session.user, max_scripts=ms.max_scripts, max_size=ms.max_script_size)
            value = await asyncio.to_thread(_run_op, store, ev.op, ev.args)
        except (ScriptError, SieveSyntaxError) as e:  # the client's: NO with the reason
            session.storage_failed(e)
            return
        except Exception as e:
            log.exception("managesieve: %s failed for %s", ev.op, session.user)
            session.storage_failed(e)
            return
        if ev.op in ("put", "setactive", "delete", "rename"):
            self.changes += 1
        session.storage_done(value)


async def create_server(ctx: Any, name: str, lc: ListenerConfig, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve ManageSieve on an already bound, listening socket (app.py's listener factory contract)."""
    return await lineproto.create_server(ctx, name, lc, sock, _Connection)


__all__ = ["create_server"]
