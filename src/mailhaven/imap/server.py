"""IMAP listeners (143 STARTTLS, 993 implicit TLS): the asyncio shell around `imap.session.Session`.

Owns: the framing loop (framing.Framer -> parser.parse_command -> session.execute), "+"
continuations for synchronising literals, the literal limit (small before login,
smtp.max_message_size after), a new framer at STARTTLS, closing after imap.max_bad_commands BAD
replies, the BYE for an idle timeout, a server stop and an internal error, and the one log line per
session end.
Does not own: what commands do (session.py), syntax (framing.py, parser.py), storage (store/), the
connection plumbing shared with POP3 (lineproto.py: buffering, flow control, idle timer, the
STARTTLS upgrade that drops every byte received before the handshake, connection limits, implicit
TLS on 993).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any

from mailhaven import lineproto, seams
from mailhaven import log as mhlog
from mailhaven.config import ListenerConfig
from mailhaven.imap.commands import ParseError
from mailhaven.imap.framing import NEED_DATA, Framer, Reject, SendContinuation
from mailhaven.imap.parser import parse_command
from mailhaven.imap.session import ServerStopping, Session, SessionEnd
from mailhaven.lineproto import LineConnection, Listener

log = logging.getLogger("mailhaven.imap")

PREAUTH_MAX_LITERAL = 8 * 1024  # literals before login: a user name or password, never a message


class _Connection(LineConnection):
    """One client; implements session.Shell."""

    PROTO = "imap"
    READ_HIGH_WATER = 256 * 1024  # stop reading from a client that has this much unprocessed input
    R_TOO_MANY_CONNECTIONS = b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
    R_INTERNAL = b"* BYE Internal error.\r\n"
    logger = log

    def __init__(self, listener: Listener) -> None:
        super().__init__(listener)
        self.tls_active = False
        self._cfg: Any = listener.ctx.config
        self.framer: Framer | None = None
        self.session: Session | None = None
        self._max_literal = PREAUTH_MAX_LITERAL

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
            data = await self.read()
            if data is None:
                raise ServerStopping
            if not data:
                return None
            framer.receive_data(data)

    async def start_tls(self) -> None:
        ctx_tls: ssl.SSLContext | None = getattr(self.ctx, "tls", None)
        assert ctx_tls is not None
        # RFC 3501 §6.2.1: anything pipelined after STARTTLS in plaintext is dropped (upgrade_tls
        # drops the buffered bytes, the new framer what it had).
        self.framer = self._new_framer()
        await self.upgrade_tls(ctx_tls)
        self.tls_active = True

    def authenticated(self) -> None:
        """After login the literal limit becomes the message size limit (APPEND), and the session
        has no login deadline and is never evicted."""
        self.logged_in()
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
        s = self.session
        if s is not None and s.sub is not None:
            s.sub.close()

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
        ctx = self.ctx
        tls_ctx: ssl.SSLContext | None = getattr(ctx, "tls", None)
        self._cfg = cfg
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
                data = await self.read()
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


async def create_server(ctx: seams.Context, name: str, lc: ListenerConfig, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve IMAP on an already bound, listening socket (app.py's listener factory contract)."""
    return await lineproto.create_server(ctx, name, lc, sock, _Connection)


__all__ = ["create_server"]
