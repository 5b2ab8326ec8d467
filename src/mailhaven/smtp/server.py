"""SMTP listeners: aiosmtpd's `SMTP` protocol on our own event loop (no threaded Controller).

Owns: one `Connection` (an aiosmtpd `SMTP` subclass) per TCP connection: connection limits
(ctx.limits; `421 4.7.0` when over, and for a session evicted to make room on a full listener:
submission before AUTH, the MX while it waits for its client's next command), session tracking for
graceful stop (ctx.sessions), idle and command timeouts, the line deadline (a line complete within
line_timeout of its first byte) and the session deadline (login_timeout: submission until AUTH, the
MX between the steps of a transaction) (`421 4.4.2`), the listen backlog, the bad-command limit
(`421 4.7.0`, disconnect), enhanced status codes on aiosmtpd's own replies (replies.enhance),
exceptions -> replies (replies.reply_for), reading the message (the DATA block, and BDAT's chunks
for CHUNKING, RFC 3030: read in pieces, bounded; the checks are body.py's), and the AUTH command's
place in the dialogue plus its bounded line reads (the exchange itself is the role's:
submission.py, authenticator.py). The listener factories `create_mx_server` and
`create_submission_server` pick the role's handler (inbound.py, submission.py).
Does not own: envelope rules (hooks.py), the roles (inbound.py, submission.py), reply texts
(replies.py).

Why a subclass: aiosmtpd 1.4.6 replies without enhanced codes, accepts `MAIL FROM:<a@b`, reads DATA
without a bare-LF check and with its own reply texts, has a fixed budget of 5 unknown commands and
shares `command_size_limits` between instances. We override the few methods concerned
(`push`, `smtp_DATA`, `smtp_AUTH`, `connection_made`/`lost`, `handle_exception`, `_timeout_cb`)
and keep the rest (command loop, STARTTLS, require_starttls, auth_required, HELO/EHLO/MAIL/RCPT
syntax) as aiosmtpd has it. aiosmtpd's own AUTH checks TLS by its STARTTLS state only, so on an
implicit-TLS listener (465) it would refuse every login; ours asks the session.
Pinned to aiosmtpd >=1.4.6,<2: `_reader`, `_reset_timeout`, `_smtp_methods`, `_timeout_handle`
and `_handler_coroutine` are aiosmtpd internals used here (tests cover each one).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from aiosmtpd.smtp import SMTP, TLSSetupException, syntax

from mailhaven import lineproto, metrics, proxyaccept, seams
from mailhaven import log as mlog
from mailhaven.config import Config, ListenerConfig
from mailhaven.errors import ConfigError, MailError
from mailhaven.message.dsn import NO_MAIL_DSN, NO_RCPT_DSN
from mailhaven.smtp import dsnparams
from mailhaven.smtp import replies as R
from mailhaven.smtp.body import ChunkBody, DataBlock
from mailhaven.smtp.hooks import BaseHandler, ClientSession, ShortDir, Transaction, split_path
from mailhaven.tls import tls_summary

logger = logging.getLogger("mailhaven.smtp")

COMMAND_LINE_LIMIT = 512  # RFC 5321 §4.5.3.1.4 (aiosmtpd adds room for SIZE= and SMTPUTF8 after EHLO)
DSN_MAIL_ROOM = len(" RET=HDRS ENVID=") + 100 + len(" REQUIRETLS")
DSN_RCPT_ROOM = len(" NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=") + 500
CHUNK_PIECE = 64 * 1024  # a BDAT chunk is read in pieces of at most this many octets
# RFC 3030 §2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]; chunk-size = 1*DIGIT. More than 18
# digits cannot be a size we accept anyway (and would make int() slow on hostile input).
_BDAT_ARG = re.compile(r"([0-9]{1,18})(?: +(LAST))?", re.IGNORECASE)
TLS_HANDSHAKE_TIMEOUT = 30.0  # seconds for the STARTTLS handshake (or idle_timeout / smtp.command_timeout if less)
IDENT = "ESMTP Mailhaven"  # RFC 5321 §4.3.1 greeting: "220 <hostname> ESMTP ..."; no version shown

HandlerFactory = Callable[[Any, Config, str], BaseHandler]
_Asked = TypeVar("_Asked")  # what one command's DSN parameters ask (dsnparams.take_mail, take_rcpt)


_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")  # RFC 5321 §4.1.2 esmtp-keyword


def _esmtp_value_ok(value: str) -> bool:
    """RFC 5321 §4.1.2 esmtp-value: 1*(%d33-60 / %d62-126), plus UTF-8 (RFC 6531 §3.3)."""
    return bool(value) and all(("!" <= ch <= "~" and ch != "=") or (not ch.isascii() and ch.isprintable())
                               for ch in value)


def parse_esmtp_params(params: list[str]) -> dict[str, str | bool] | None:
    """RFC 5321 §4.1.2 mail-parameters / rcpt-parameters: {keyword: value or True}, or None when one
    parameter is not `esmtp-keyword ["=" esmtp-value]` (then 501; a well-formed unknown one is left
    for the caller to refuse with 555)."""
    result: dict[str, str | bool] = {}
    for param in params:
        keyword, eq, value = param.partition("=")
        if not _ESMTP_KEYWORD.fullmatch(keyword) or (eq and not _esmtp_value_ok(value)):
            return None
        result[keyword] = value if eq else True
    return result


_XTEXT = re.compile(r"^(?:[!-*,-<>-~]|\+[0-9A-F]{2})+$")  # RFC 3461 §4 xtext


def drop_auth_parameter(arg: str) -> str:
    """The MAIL argument without its AUTH= parameter. RFC 4954 §5: a server offering AUTH must
    accept `AUTH=<>` or `AUTH=xtext`; we ignore its value (we trust no other server's claim about
    who submitted the message), and aiosmtpd would refuse it as unknown (555). A malformed one
    stays, so aiosmtpd refuses it."""
    keyword, sep, rest = arg.partition(":")
    if not sep:
        return arg
    try:
        path, params = split_path(rest)
    except ValueError:
        return arg
    kept = []
    for param in params.split():
        name, eq, value = param.partition("=")
        if name.upper() == "AUTH" and eq and (value == "<>" or _XTEXT.match(value)):
            continue
        kept.append(param)
    if len(kept) == len(params.split()):
        return arg  # nothing dropped: the argument as the client sent it
    return f"{keyword}:{path}" + ("".join(" " + p for p in kept))


_SYNTAX_ATTRS = ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__")


class _Commands(dict[str, Any]):
    """aiosmtpd's verb table; unknown verbs get our handler (counted as bad commands) instead of
    aiosmtpd's fixed budget of five. Each command runs with `busy` set (a graceful stop waits for
    it), `started()` called before it and `done()` after it; with metrics on, inside
    `time_command(proto, VERB)` (command_duration_seconds)."""

    def __init__(self, methods: dict[str, Any], unknown: Callable[[str], Any], meter: metrics.Metrics,
                 proto: str, started: Callable[[], None], done: Callable[[], None]) -> None:
        super().__init__(methods)
        self._unknown = unknown
        self._meter = meter
        self._proto = proto
        self._started = started
        self._done = done
        self.busy = False

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            return self._unknown(key)
        method = self[key]
        meter, proto = self._meter, self._proto

        async def run(arg: str | None) -> None:
            self.busy = True
            self._started()
            try:
                if meter.enabled:
                    with meter.time_command(proto, key):
                        await method(arg)
                else:
                    await method(arg)
            finally:
                self.busy = False
                self._done()

        for attr in _SYNTAX_ATTRS:  # HELP reads the @syntax attributes through get()
            if hasattr(method, attr):
                setattr(run, attr, getattr(method, attr))
        return run


class Connection(proxyaccept.ProxiedPeer, ShortDir, SMTP):
    """One SMTP connection. Config, listener settings and TLS context are read when it starts."""

    def __init__(self, ctx: seams.Context, name: str, lc: ListenerConfig, handler_factory: HandlerFactory) -> None:
        cfg: Config = ctx.config
        self.ctx = ctx
        self.cfg = cfg
        self.listener_name = name
        self.lc = cfg.listeners.get(name, lc)
        # aiosmtpd reads these two in __init__: the StreamReader limit and a per-instance size table
        # (aiosmtpd's class-level table is shared by every connection).
        self.line_length_limit = cfg.smtp.max_line_length
        self.command_size_limits = collections.defaultdict(lambda: COMMAND_LINE_LIMIT)
        handler = handler_factory(ctx, cfg, name)
        tls_ctx: ssl.SSLContext | None = ctx.tls if self.lc.tls == "starttls" else None
        super().__init__(
            handler,
            data_size_limit=cfg.smtp.max_message_size,  # SIZE in EHLO and the MAIL SIZE= check (RFC 1870)
            enable_SMTPUTF8=True,  # RFC 6531
            decode_data=False,  # keep bytes; advertises 8BITMIME (RFC 6152)
            hostname=cfg.hostname,
            ident=IDENT,
            tls_context=tls_ctx,
            # RFC 3207 §4: a public MX must not require TLS; submission does (handler decides).
            require_starttls=handler.starttls_required,
            timeout=self.lc.idle_timeout,
            auth_required=handler.offers_auth,  # aiosmtpd: 530 5.7.0 for MAIL/RCPT before AUTH
            auth_require_tls=True,  # (aiosmtpd's AUTH is replaced by smtp_AUTH below)
            loop=asyncio.get_running_loop(),
        )
        self.handler: BaseHandler = handler
        if not handler.offers_auth:
            self._smtp_methods.pop("AUTH", None)
        self.meter = metrics.of(ctx)
        self._commands = _Commands(self._smtp_methods, self._unknown_command, self.meter,
                                   "submission" if handler.offers_auth else "smtp", self._command_started,
                                   self._command_done)
        self._smtp_methods = self._commands
        self._metered = False
        self.ip = ""
        self._started = False
        self._refused = False
        self._counted = False
        self._tracked: asyncio.BaseTransport | None = None
        self._greeted = False
        self._raw_250 = False  # HELO/EHLO replies carry no enhanced code (RFC 2034 §3)
        self._errors = 0
        self._closing = False
        self._chunks: tuple[Transaction, ChunkBody] | None = None  # BDAT content so far, of that transaction
        self._continued: list[str] = []
        self._stopping = False
        self._stop_watch: asyncio.Task[None] | None = None
        self._line_since: float | None = None  # when the first byte of an incomplete line came
        self._session_deadline: float | None = None  # login_timeout: submission until AUTH, MX per step
        self._watch_timer: asyncio.TimerHandle | None = None  # the line and session deadlines
        self._watch_at = 0.0

    # -- connection lifetime ---------------------------------------------------------------------

    def _create_session(self) -> ClientSession:
        return ClientSession(self.loop)

    def _create_envelope(self) -> Transaction:
        return Transaction()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._started:  # after STARTTLS aiosmtpd calls us again with the TLS transport
            self._line_since = None  # aiosmtpd dropped the plaintext input (RFC 3207 §4.2)
            super().connection_made(transport)
            self._fill_session(transport)
            return
        self._started = True
        peer = self.peer_address(transport)  # the PROXY header's client on a proxy_protocol listener
        self.ip = peer[0] if peer else "unknown"
        # Log context for this connection's task (created below by aiosmtpd, inheriting it).
        mlog.cid_var.set(mlog.new_cid())
        mlog.proto_var.set(self.listener_name)
        mlog.remote_var.set(self.ip)
        limits = getattr(self.ctx, "limits", None)
        if limits is not None:
            refused = limits.admit(self.listener_name, self.ip, self.lc)  # logs the refusal (rate-limited)
            if refused is not None:
                self._refused = True
                self.meter.connection_refused(self.listener_name, refused)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write((R.too_many_connections(self.cfg.hostname) + "\r\n").encode())
                transport.close()
                return
            self._counted = True
            limits.evictable(self.listener_name, self)
        self._session_deadline = self.loop.time() + self.lc.login_timeout
        self._arm_watch()
        self.meter.connection_opened(self.listener_name)
        self._metered = True
        sessions = getattr(self.ctx, "sessions", None)
        if sessions is not None:
            sessions.add(transport)
            self._tracked = transport
        stopping = getattr(self.ctx, "stopping", None)
        if isinstance(stopping, asyncio.Event):
            self._stop_watch = asyncio.get_running_loop().create_task(self._watch_stop(stopping))
        super().connection_made(transport)
        self._fill_session(transport)

    async def _watch_stop(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._stopping = True
        self._goodbye_if_stopping()

    def _goodbye_if_stopping(self) -> None:
        """On a graceful stop: 421 and close between transactions (idle clients do not hold the
        stop until its deadline); a command running or a transaction begun (MAIL given, DATA not
        yet ended) is let finish, and this runs again after each command."""
        if not self._stopping or self._closing or self._commands.busy:
            return
        txn = self.envelope
        if isinstance(txn, Transaction) and txn.mail_from:
            return
        transport: Any = self.transport
        if transport is None or transport.is_closing():
            return
        logger.info("server stopping: closing an idle session (client %s)", self.ip)
        transport.write((R.shutting_down(self.cfg.hostname) + "\r\n").encode())
        self._close_now()

    # -- deadlines and eviction (a slow client cannot fill the listener) ------------------------------

    def _command_started(self) -> None:
        if not self.handler.offers_auth and self._counted:
            self.ctx.limits.not_evictable(self.listener_name, self)  # the MX: busy, not waiting

    def _command_done(self) -> None:
        if not self.handler.offers_auth and self._counted and not self._closing:
            self.ctx.limits.evictable(self.listener_name, self)  # waits for its client again: the youngest
        if self._session_deadline is not None and self.loop.time() >= self._session_deadline:
            self._time_out("session deadline (login_timeout)")  # it passed while the command ran
            return
        self._goodbye_if_stopping()

    def _progress(self) -> None:
        """The MX: a step of a transaction (accepted MAIL or RCPT, the end of DATA) gives the client
        login_timeout again for the next one. (The timer, set for the old deadline, re-arms itself.)"""
        if not self.handler.offers_auth:
            self._session_deadline = self.loop.time() + self.lc.login_timeout

    def _next_check(self, now: float) -> float | None:
        times = []
        if self._line_since is not None:
            times.append(self._line_since + self.lc.line_timeout)
        if self._session_deadline is not None and self._session_deadline > now:
            times.append(self._session_deadline)  # once passed, a running command ends first (_command_done)
        return min(times, default=None)

    def _arm_watch(self) -> None:
        """One timer per connection for both deadlines, moved only when one comes earlier."""
        at = self._next_check(self.loop.time())
        if at is None or (self._watch_timer is not None and at >= self._watch_at):
            return
        if self._watch_timer is not None:
            self._watch_timer.cancel()
        self._watch_timer = self.loop.call_at(at, self._watch)
        self._watch_at = at

    def _watch(self) -> None:
        self._watch_timer = None
        transport: Any = self.transport
        if self._closing or transport is None or transport.is_closing():
            return
        now = self.loop.time()
        if self._line_since is not None and now >= self._line_since + self.lc.line_timeout:
            if transport.is_reading():
                self._time_out("line deadline (line_timeout)")
                return
            self._line_since = now  # we stopped reading (input backlog), not the client: a new count
        if self._session_deadline is not None and now >= self._session_deadline and not self._commands.busy:
            self._time_out("session deadline (login_timeout)")
            return
        self._arm_watch()

    def _time_out(self, why: str) -> None:
        """421 4.4.2 and close (RFC 5321 §4.5.3.2), a transaction begun is discarded."""
        transport: Any = self.transport
        if self._closing or transport is None or transport.is_closing():
            return
        logger.info("timeout (client %s): %s", self.ip, why)
        transport.write((R.timeout(self.cfg.hostname) + "\r\n").encode())
        self._close_now()

    def evict(self) -> None:
        """limits.Evictable: the listener is full and this session is the oldest that may make room
        (submission: not logged in; MX: waiting for its client's next command). 421 4.7.0, close,
        and the slot is given back now."""
        if not self._counted:
            return
        self._counted = False
        limits = self.ctx.limits
        limits.not_evictable(self.listener_name, self)
        limits.connection_closed(self.listener_name, self.ip)
        transport: Any = self.transport
        if self._closing or transport is None or transport.is_closing():
            return
        logger.info("evicted: listener %s is full (client %s)", self.listener_name, self.ip)
        self.meter.connection_evicted(self.listener_name)
        transport.write((R.too_many_connections(self.cfg.hostname) + "\r\n").encode())
        self._close_now()

    def _fill_session(self, transport: asyncio.BaseTransport) -> None:
        session = self.session
        assert isinstance(session, ClientSession)
        session.ip = self.ip
        if self.client_address is not None:
            # aiosmtpd set the proxy's (peername, a tuple, though it annotates str); its log lines show it
            session.peer = self.client_address  # type: ignore[assignment]
        session.tls = tls_summary(transport.get_extra_info("ssl_object"))

    def _release(self) -> None:
        """Give back the connection slot and the session entry, once (connection_lost, or the end of
        the session task when asyncio never calls connection_lost, e.g. a failed STARTTLS)."""
        if self._metered:
            self._metered = False
            self.meter.connection_closed(self.listener_name)
        if self._counted:
            self._counted = False
            self.ctx.limits.not_evictable(self.listener_name, self)
            self.ctx.limits.connection_closed(self.listener_name, self.ip)
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        if self._tracked is not None:
            self.ctx.sessions.discard(self._tracked)
            self._tracked = None
        if self._stop_watch is not None:
            self._stop_watch.cancel()
            self._stop_watch = None

    async def _handle_client(self) -> None:
        try:
            await super()._handle_client()
        finally:
            self._release()
            transport: Any = self.transport
            if transport is not None and not transport.is_closing():
                transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self._release()
        self._log_unfinished()
        if isinstance(self.envelope, Transaction):
            self.envelope.discard()
        lookup = getattr(self.session, "reputation", None)  # the MX's DNS list lookup (smtp/inbound.py)
        if lookup is not None and not lookup.done():
            lookup.cancel()
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # The line deadline counts from the first byte of the line still incomplete.
        nl = data.rfind(b"\n")
        if nl == len(data) - 1:
            self._line_since = None
        elif nl >= 0 or self._line_since is None:
            self._line_since = self.loop.time()
            self._arm_watch()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        # aiosmtpd just closes; RFC 5321 §4.5.3.2 timeouts deserve a 421 first.
        transport: Any = self.transport
        if transport is not None and not transport.is_closing():
            transport.write((R.timeout(self.cfg.hostname) + "\r\n").encode())
        logger.info("timeout (client %s)", self.ip)
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _set_post_data_state(self) -> None:
        self._log_unfinished()
        if isinstance(self.envelope, Transaction):
            self.envelope.discard()
        super()._set_post_data_state()  # type: ignore[no-untyped-call]

    def _log_unfinished(self) -> None:
        """A transaction that ended without DATA (RSET, new EHLO, disconnect) still gets its line."""
        txn, session = self.envelope, self.session
        if isinstance(txn, Transaction) and isinstance(session, ClientSession) and txn.mail_from \
                and not txn.logged:
            self.handler.log_transaction(session, txn, "no data", None, None)

    def _close_now(self) -> None:
        """Close after the reply just pushed (aiosmtpd's QUIT does the same)."""
        self._closing = True
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- replies --------------------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        line = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        code = R.code_of(line)
        if not self._greeted:
            self._greeted = True  # the 220 greeting is exempt (RFC 2034 §3)
        elif not (self._raw_250 and code == 250):
            line = R.enhance(line)
        close = False
        if code >= 500 and not self._closing:
            self._errors += 1
            if self._errors > self.cfg.smtp.max_bad_commands:
                logger.info("too many errors (client %s)", self.ip)
                line, close = R.too_many_errors(self.cfg.hostname), True
        if line[3:4] == "-" and not close:
            self._continued.append(line)  # a multi-line reply (EHLO) goes out in one write with its
            return                        # last line: one segment, not one per line
        if self._continued:
            line = "\r\n".join([*self._continued, line])
            self._continued.clear()
        await super().push(line)
        if close:
            self._close_now()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, MailError):
            return R.reply_for(error)
        if isinstance(error, TLSSetupException):
            logger.info("TLS handshake failed (client %s): %s", self.ip, error.__cause__ or error)
            return R.reply_for(error)
        logger.exception("smtp command failed (client %s)", self.ip)
        return R.reply_for(error)

    # -- commands -------------------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Only split "<path> PARAMS": hooks.py parses the path itself (message.address), more
        strictly than aiosmtpd's parse with the email package's header parser, which cost ~0.3 ms of
        CPU per MAIL and RCPT. A path that does not split goes to the hook whole, which refuses it
        with our own reply (501 5.1.7 / 5.1.3)."""
        if not arg:
            return "", ""
        try:
            return split_path(arg)
        except ValueError:
            return arg, ""

    def _getparams(self, params: Any) -> dict[str, str | bool] | None:
        # aiosmtpd takes only isalnum() keywords; RFC 5321 §4.1.2 allows "-" inside them.
        return parse_esmtp_params(list(params))

    def _unknown_command(self, verb: str) -> Callable[[str | None], Any]:
        async def unknown(arg: str | None) -> None:
            await self.push(R.UNKNOWN_COMMAND)

        return unknown

    @syntax("HELO hostname")  # HELP lists the verb (aiosmtpd reads the decorator)
    async def smtp_HELO(self, hostname: str) -> None:
        self._raw_250 = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._raw_250 = False

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self.command_size_limits.clear()  # aiosmtpd grows the MAIL limit on every EHLO
        self._raw_250 = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._raw_250 = False
        # DSN (RFC 3461 §5: room for its parameters): " RET=HDRS ENVID=<100>", " NOTIFY=... ORCPT=<500>".
        self.command_size_limits["MAIL"] += DSN_MAIL_ROOM
        self.command_size_limits["RCPT"] += DSN_RCPT_ROOM

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        assert isinstance(self.session, ClientSession)
        self.session.last_arg = arg  # hooks.py parses the raw path itself
        if arg is not None and self.handler.offers_auth:
            arg = drop_auth_parameter(arg)
        taken = await self._take_dsn(arg, dsnparams.take_mail, NO_MAIL_DSN)
        if taken is None:
            return
        arg, mail_dsn = taken
        if mail_dsn.requiretls and self.session.tls is None:
            await self.push(R.REQUIRETLS_WITHOUT_TLS)
            return
        await super().smtp_MAIL(arg)
        txn = self.envelope
        if isinstance(txn, Transaction) and txn.mail_from:
            if txn.dsn is NO_MAIL_DSN:
                txn.dsn = mail_dsn
            self._progress()

    async def _take_dsn(self, arg: str | None, take: Callable[[str], tuple[str, _Asked]],
                        default: _Asked) -> tuple[str | None, _Asked] | None:
        """`arg` without its DSN parameters (RFC 3461; after EHLO only) and what they ask; None once
        their 501 was sent."""
        assert isinstance(self.session, ClientSession)
        if arg is None or not self.session.extended_smtp:
            return arg, default
        try:
            return take(arg)
        except dsnparams.DsnSyntax as e:
            await self.push(e.reply)
            return None

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        assert isinstance(self.session, ClientSession)
        self.session.last_arg = arg
        taken = await self._take_dsn(arg, dsnparams.take_rcpt, NO_RCPT_DSN)
        if taken is None:
            return
        arg, rcpt_dsn = taken
        txn = self.envelope
        before = len(txn.recipients) if isinstance(txn, Transaction) else 0
        await super().smtp_RCPT(arg)
        if isinstance(txn, Transaction) and len(txn.recipients) > before:
            if rcpt_dsn != NO_RCPT_DSN:
                txn.rcpt_dsn.setdefault(str(txn.recipients[-1]), rcpt_dsn)
            self._progress()

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str | None) -> None:
        """RFC 3207. Inside TLS (after STARTTLS or on an implicit-TLS listener) a second one is
        refused and the session goes on (Postfix: 554 5.5.1); aiosmtpd would stack a second TLS
        layer. The handshake is bounded in time, and one that ended without a working TLS transport
        (the idle timer closed it: asyncio then resolves the waiter without an error and never calls
        connection_lost) is a failure, so the connection is closed and its slot given back."""
        session = self.session
        assert isinstance(session, ClientSession)
        if self._tls_protocol is not None or session.tls is not None:
            await self.push(R.TLS_ALREADY_ACTIVE)
            return
        try:
            async with asyncio.timeout(min(self.lc.idle_timeout, self.cfg.smtp.command_timeout, TLS_HANDSHAKE_TIMEOUT)):
                await super().smtp_STARTTLS(arg or "")
        except TimeoutError:
            raise TLSSetupException("TLS handshake timed out") from None
        transport: Any = self.transport
        if self._tls_protocol is not None and (transport is None or transport.is_closing()):
            raise TLSSetupException("connection closed during the TLS handshake")

    @syntax("AUTH <mechanism> [initial-response]")
    async def smtp_AUTH(self, arg: str | None) -> None:
        """RFC 4954 §4: after EHLO only; the role runs the exchange (handler.handle_auth)."""
        if await self.check_helo_needed("EHLO"):
            return
        session, txn = self.session, self.envelope
        assert isinstance(session, ClientSession) and isinstance(txn, Transaction)
        if not session.extended_smtp:
            await self.push(R.NEED_EHLO)  # AUTH is an ESMTP extension (RFC 4954 §3)
            return
        reply, close = await self.handler.handle_auth(self, session, txn, arg or "")
        if session.authenticated:  # no session deadline any more, and never evicted for a stranger
            self._session_deadline = None
            if self._counted:
                self.ctx.limits.not_evictable(self.listener_name, self)
        await self.push(reply)
        if close:
            self._close_now()

    async def read_auth_line(self) -> bytes | None:
        """One line of an AUTH exchange without its line end; None when it is longer than the reader
        limit (the rest of it is read and dropped, so the dialogue stays in step)."""
        too_long = False
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as e:
                await self._reader.read(max(1, e.consumed))
                too_long = True
                continue
            except asyncio.IncompleteReadError:
                raise ConnectionResetError from None
            return None if too_long else line.rstrip(b"\r\n")

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        txn = self.envelope
        session = self.session
        assert isinstance(txn, Transaction) and isinstance(session, ClientSession)
        if not txn.recipients:
            await self.push(R.NEED_RCPT if txn.mail_from else R.NEED_MAIL)
            return
        if arg:
            await self.push(R.DATA_SYNTAX)
            return
        if self._chunks is not None and self._chunks[0] is txn:
            await self.push(R.DATA_AFTER_BDAT)
            return
        await self.push(R.START_DATA)
        smtp = self.cfg.smtp
        block = DataBlock(smtp.max_message_size, smtp.max_line_length)
        command_timeout = smtp.command_timeout
        self._reset_timeout(command_timeout)
        clock = self.loop.time
        armed = clock()
        rearm_after = min(1.0, command_timeout / 4)
        while True:
            try:
                chunk = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as e:
                chunk = await self._reader.read(max(1, e.consumed))  # a piece of an over-long line
            except asyncio.IncompleteReadError:
                raise ConnectionResetError from None
            # Progress: the client may take command_timeout per line. Re-arming the timer costs a heap
            # operation, so do it at most every `rearm_after` seconds (the stall allowed stays within
            # command_timeout - rearm_after .. command_timeout).
            now = clock()
            if now - armed >= rearm_after:
                self._reset_timeout(command_timeout)
                armed = now
            if block.feed(chunk):
                break
        await self._end_message(block)

    async def _end_message(self, body: DataBlock | ChunkBody) -> None:
        """After the message's last octet (DATA's dot, BDAT LAST): its reply, the transaction ended."""
        txn, session = self.envelope, self.session
        assert isinstance(txn, Transaction) and isinstance(session, ClientSession)
        try:
            if body.problem is not None:
                reply = body.problem
                self.handler.log_transaction(session, txn, reply, body.size, None)
            else:
                reply = await self.handler.handle_message(session, txn, body.message())
            self.handler.count_result(reply)
        finally:
            self._set_post_data_state()
            self._reset_timeout()
            self._progress()
        await self._push_result(reply)

    async def _push_result(self, reply: str) -> None:
        """The reply to a message is not a bad command: it does not count towards the error limit."""
        self._closing, closing = True, self._closing
        try:
            await self.push(reply)
        finally:
            self._closing = closing

    @syntax("BDAT chunk-size [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:
        """CHUNKING (RFC 3030): the message in chunks of announced size, no dot-stuffing. A chunk is
        read in full even when the command is refused (§2: its octets are not commands), in pieces
        and bounded like DATA (ChunkBody); a chunk that makes the message fail ends the transaction
        with that reply at once (§4.2: the client sends no more chunks of a failed transaction)."""
        m = _BDAT_ARG.fullmatch(arg or "")
        if m is None:
            await self.push(R.BDAT_SYNTAX)  # the size is unknown, so nothing can be skipped
            return
        size, last = int(m[1]), m[2] is not None
        txn, session = self.envelope, self.session
        assert isinstance(txn, Transaction) and isinstance(session, ClientSession)
        refusal = self._bdat_refusal(session, txn)
        body: ChunkBody | None = None
        if refusal is None:
            if self._chunks is None or self._chunks[0] is not txn:
                smtp = self.cfg.smtp
                self._chunks = (txn, ChunkBody(smtp.max_message_size, smtp.max_line_length))
            body = self._chunks[1]
        await self._read_chunk(size, body)
        if refusal is not None:
            await self.push(refusal)
            return
        assert body is not None
        if last:
            body.finish()
        if last or body.problem is not None:
            self._chunks = None
            await self._end_message(body)
            return
        self._progress()
        await self.push(R.chunk_received(size))

    def _bdat_refusal(self, session: ClientSession, txn: Transaction) -> str | None:
        if not session.host_name:
            return R.NEED_HELO
        if self._auth_required and not session.authenticated:
            return R.AUTH_REQUIRED
        if not txn.recipients:
            return R.NEED_RCPT if txn.mail_from else R.NEED_MAIL
        return None

    async def _read_chunk(self, size: int, body: ChunkBody | None) -> None:
        """`size` octets into `body` (None: read and dropped), with command_timeout per piece."""
        command_timeout = self.cfg.smtp.command_timeout
        self._reset_timeout(command_timeout)
        left = size
        while left:
            piece = await self._reader.read(min(left, CHUNK_PIECE))
            if not piece:
                raise ConnectionResetError
            left -= len(piece)
            self._reset_timeout(command_timeout)
            if body is not None:
                body.feed(piece)


def _quiet_aiosmtpd() -> None:
    """aiosmtpd logs every command line at INFO on "mail.log"; our own log has one line per
    transaction, so keep its records for warnings (and DEBUG when our level is debug)."""
    lib = logging.getLogger("mail.log")
    if lib.level == logging.NOTSET:
        lib.setLevel(logging.DEBUG if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.WARNING)


async def create_server(ctx: seams.Context, name: str, lc: ListenerConfig, sock: socket.socket,
                        handler_factory: HandlerFactory) -> asyncio.AbstractServer:
    """Serve SMTP with the given role on an already bound, listening socket (a PROXY header first
    when lc.proxy_protocol: proxyaccept.py, not aiosmtpd's own PROXY support; it says why)."""
    ssl_ctx: ssl.SSLContext | None = None
    if lc.tls == "implicit":
        if ctx.tls is None:
            raise ConfigError(f"listeners.{name}.tls: \"implicit\" needs tls.cert and tls.key")
        ssl_ctx = ctx.tls
    _quiet_aiosmtpd()
    return await proxyaccept.create_server(name, lc, sock, lambda: Connection(ctx, name, lc, handler_factory),
                                           ssl_ctx, lineproto.backlog(lc))


async def create_mx_server(ctx: seams.Context, name: str, lc: ListenerConfig, sock: socket.socket) -> asyncio.AbstractServer:
    """The inbound MX (listener "mx"): app.py's listener factory."""
    from mailhaven.smtp.inbound import handler_factory

    return await create_server(ctx, name, lc, sock, handler_factory)


async def create_submission_server(ctx: seams.Context, name: str, lc: ListenerConfig,
                                   sock: socket.socket) -> asyncio.AbstractServer:
    """Submission (listeners "submission", STARTTLS, and "submissions", implicit TLS): app.py's
    listener factory."""
    from mailhaven.smtp.submission import handler_factory, listener_is_loopback

    cfg: Config = ctx.config
    if lc.tls == "none" or ctx.tls is None:
        if not (listener_is_loopback(cfg, name) and cfg.auth.allow_plaintext_loopback):
            logger.warning("listener %s has no TLS and is not a loopback dev listener: nobody can log in "
                           "to send mail there (set tls and tls.cert)", name)
    return await create_server(ctx, name, lc, sock, handler_factory)


__all__ = ["Connection", "DataBlock", "create_server", "create_mx_server", "create_submission_server",
           "COMMAND_LINE_LIMIT", "IDENT"]
