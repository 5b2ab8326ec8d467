"""The aiosmtpd handler shared by every SMTP role (the MX, inbound.py; submission, submission.py).

Owns: the envelope rules every role has in common: HELO/EHLO (the EHLO keyword list), MAIL FROM and
RCPT TO syntax (our own path parser, `message.address.parse_path`, not aiosmtpd's lenient one),
SMTPUTF8 checks, the recipient count limit, the header-section bounds check after DATA, and the
one log line per transaction. A role subclasses `BaseHandler` and fills in `check_sender`,
`check_recipient` and `deliver`; a role that takes logins also sets `offers_auth`, answers
`ehlo_auth_keyword` (the EHLO AUTH line) and `handle_auth` (the AUTH command), and may set
`starttls_required` (RFC 3207 §4: nothing but EHLO, STARTTLS, NOOP, QUIT before TLS).
Does not own: the socket, timeouts, DATA framing and limits (server.py), reply texts (replies.py).

aiosmtpd calls `handle_<VERB>(server, session, envelope, ...)`; a hook returns the reply line.
`session` is our `ClientSession`, `envelope` our `Transaction` (server.py creates both).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiosmtpd.smtp import Envelope, Session

from mailhaven import log as mlog
from mailhaven import metrics, seams
from mailhaven.config import Config
from mailhaven.delivery.local import unique_users
from mailhaven.errors import MailError
from mailhaven.message import headers
from mailhaven.message.address import Address, parse_path
from mailhaven.message.dsn import NO_MAIL_DSN, MailDsn, RcptDsn
from mailhaven.seams import Recipient
from mailhaven.smtp import replies as R

logger = logging.getLogger("mailhaven.smtp")
T = TypeVar("T")

# RFC 5321 §4.5.1: "postmaster" without a domain must be accepted as a recipient.
POSTMASTER = object()


class ClientSession(Session):
    """aiosmtpd's Session plus what we know about the client connection."""

    def __init__(self, loop: Any) -> None:
        super().__init__(loop)
        self.ip: str = ""
        self.tls: str | None = None  # "TLSv1.3 TLS_AES_256_GCM_SHA384" when TLS is active
        self.last_arg: str | None = None  # raw argument of the current MAIL/RCPT command
        self.user: str | None = None  # authenticated user (submission)
        self.reputation: asyncio.Task[Any] | None = None  # MX: the DNS list lookup (policy/dnsbl.py)


class Transaction(Envelope):
    """aiosmtpd's Envelope plus our typed view of one mail transaction (RFC 5321 §3.3)."""

    def __init__(self) -> None:
        super().__init__()
        self.queue_id = new_queue_id()
        self.sender: Address | None = None  # None = null reverse-path (or no MAIL yet)
        self.smtputf8 = False
        self.recipients: list[Address] = []
        # Each accepted recipient with the final users the delivery agent resolved it to at RCPT
        # (delivery/local.py); DATA delivers to exactly these, each user once.
        self.resolved: list[Recipient] = []
        # Recipient address -> where it is forwarded (aliases to other servers, bounces to our SRS
        # addresses: delivery/forward.py), as the role's check_recipient found it.
        self.forward: dict[str, tuple[str, ...]] = {}
        self.refused = 0  # recipients refused (logged)
        self.policy: Any = None  # role data from check_sender (MX: the task computing SPF)
        self.started = time.monotonic()
        self.logged = False
        self.tasks: list[asyncio.Task[Any]] = []  # work started for this transaction (owned by it)
        self.verdicts: set[str] = set()  # verdict kinds already logged and counted (once per transaction)
        # DSN requests (RFC 3461, smtp/dsnparams.py): MAIL's RET/ENVID, each recipient's NOTIFY/ORCPT
        # (by the address as accepted; a recipient without them is not listed).
        self.dsn: MailDsn = NO_MAIL_DSN
        self.rcpt_dsn: dict[str, RcptDsn] = {}

    @property
    def users(self) -> list[str]:
        """The final local users of the accepted recipients, each once, in order."""
        return unique_users(self.resolved)

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `coro` concurrently with the rest of the transaction; cancelled by `discard()`."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    def discard(self) -> None:
        """The transaction is over (DATA done, RSET, new HELO, disconnect): stop its work."""
        for task in self.tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved: never "exception was never retrieved"
        self.tasks.clear()


def new_queue_id() -> str:
    """A short unique transaction id shown in the 250 reply, the Received field and the log."""
    return secrets.token_hex(6).upper()


def split_path(text: str) -> tuple[str, str]:
    """Split "<path> PARAMS" (after "FROM:"/"TO:") into the path and the parameter text.

    The path ends at the first ">" outside a quoted string (RFC 5321 §4.1.2 Quoted-string may hold
    ">" and spaces); a path without brackets ends at the first space. Raises ValueError when a
    bracketed path has no end (aiosmtpd would accept `<a@b`)."""
    text = text.lstrip(" ")
    if not text.startswith("<"):
        path, _, rest = text.partition(" ")
        return path, rest.strip(" ")
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            rest = text[i + 1:]
            if rest and not rest.startswith(" "):
                raise ValueError("text after path")
            return text[:i + 1], rest.strip(" ")
    raise ValueError("path must end with >")


def _printable(text: str) -> bool:
    """No control characters (a HELO name is a domain or address literal, RFC 5321 §4.1.1.1; we
    accept sloppy names, but not ones that could corrupt logs or headers)."""
    return all(" " <= ch != "\x7f" for ch in text)


def _strip_keyword(arg: str | None, keyword: str) -> str | None:
    if arg is None or arg[:len(keyword)].upper() != keyword:
        return None
    return arg[len(keyword):]


_DIR_CACHE: dict[type, list[str]] = {}


class ShortDir:
    """dir() lists only the smtp_*, auth_* and handle_* names (once per class).

    aiosmtpd builds its command, hook and AUTH tables for every connection from dir() and
    inspect.getmembers() of the protocol and of the handler; getmembers evaluates every attribute
    it lists. That was ~0.6 ms of CPU per connection, about a tenth of an inbound message's cost.
    hasattr/getattr are unaffected: this narrows only what dir() reports."""

    def __dir__(self) -> list[str]:
        cls = type(self)
        names = _DIR_CACHE.get(cls)
        if names is None:
            names = _DIR_CACHE[cls] = [n for n in object.__dir__(self)
                                       if n.startswith(("smtp_", "auth_", "handle_"))]
        return list(names)


class BaseHandler(ShortDir):
    """Envelope rules common to all roles. One instance per connection (config read at connect)."""

    offers_auth = False  # submission sets True: AUTH is a command, and MAIL/RCPT/DATA need a login
    starttls_required = False  # True: 530 5.7.0 for anything but EHLO/STARTTLS/NOOP/QUIT before TLS
    role = "smtp"

    def __init__(self, ctx: seams.Context, config: Config, listener: str) -> None:
        self.ctx = ctx
        self.config = config
        self.listener = listener

    # -- what a role decides -----------------------------------------------------------------------

    async def check_sender(self, session: ClientSession, txn: Transaction, sender: Address | None) -> str | None:
        """None to accept MAIL FROM, else the refusal reply."""
        return None

    async def check_recipient(self, session: ClientSession, txn: Transaction,
                              rcpt: Address | object) -> tuple[str, list[str] | None]:
        """(reply, users): users None = refused with `reply`. `rcpt` may be POSTMASTER."""
        return R.RELAY_DENIED, None

    async def deliver(self, session: ClientSession, txn: Transaction, data: bytes) -> str:
        """Store or queue the message durably, then return the 250 reply. Raise MailError to refuse."""
        raise NotImplementedError

    def ehlo_auth_keyword(self, session: ClientSession) -> str | None:
        """The EHLO keyword for AUTH (RFC 4954 §3) in this session's state, or None to list none."""
        return None

    async def handle_auth(self, io: Any, session: ClientSession, txn: Transaction, arg: str) -> tuple[str, bool]:
        """The AUTH command (only where offers_auth): (reply, close the connection after it).
        `io` is the connection: `await io.push(line)`, `await io.read_auth_line()`."""
        return R.NOT_SUPPORTED, False

    # -- aiosmtpd hooks --------------------------------------------------------------------------------

    async def handle_HELO(self, server: Any, session: ClientSession, envelope: Transaction,
                          hostname: str) -> str:
        if not _printable(hostname):
            return R.BAD_HELO
        session.host_name = hostname
        return f"250 {self.config.hostname}"

    async def handle_EHLO(self, server: Any, session: ClientSession, envelope: Transaction,
                          hostname: str, responses: list[str]) -> list[str]:
        """aiosmtpd lists SIZE, 8BITMIME, SMTPUTF8, STARTTLS (and AUTH); we add PIPELINING (RFC 2920),
        ENHANCEDSTATUSCODES (RFC 2034), CHUNKING (RFC 3030, server.py's BDAT) and DSN (RFC 3461,
        dsnparams.py), replace aiosmtpd's AUTH line by the role's own (it knows
        about implicit TLS and loopback rules; aiosmtpd does not), and drop HELP."""
        if not _printable(hostname):
            return [R.BAD_HELO]
        session.host_name = hostname
        lines = [r[4:] for r in responses]
        greeting = lines[0]
        keywords = [k for k in lines[1:] if k != "HELP" and not k.startswith("AUTH")]
        auth = self.ehlo_auth_keyword(session) if self.offers_auth else None
        if auth:
            keywords.append(auth)
        keywords += ["PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
        if session.tls is not None:
            keywords.append("REQUIRETLS")  # RFC 8689 §4: offered only inside TLS
        out = [f"250-{greeting}"] + [f"250-{k}" for k in keywords]
        out[-1] = "250 " + out[-1][4:]
        return out

    async def handle_MAIL(self, server: Any, session: ClientSession, envelope: Transaction,
                          address: str, mail_options: list[str]) -> str:
        # aiosmtpd has checked HELO, nesting, BODY=, SIZE= against our limit, and the parameter
        # syntax; the address it parsed is too lenient, so parse the raw path ourselves.
        arg = _strip_keyword(session.last_arg, "FROM:")
        try:
            if arg is None:
                raise ValueError("no FROM:")
            path, _ = split_path(arg)
            sender = parse_path(path, allow_bare=True)
        except ValueError:
            return self.rejected(R.BAD_SENDER_SYNTAX)
        smtputf8 = "SMTPUTF8" in mail_options
        if not path.isascii() and not smtputf8:
            # RFC 6531 §3.2: without SMTPUTF8 the envelope is ASCII, domain included (Address.is_ascii
            # sees the local part only: the domain is already an A-label). Postfix: 553 5.6.7.
            return self.rejected(R.NEED_SMTPUTF8)
        envelope.smtputf8 = smtputf8
        refusal = await self.check_sender(session, envelope, sender)
        if refusal is not None:
            return self.rejected(refusal, "sender" if refusal.startswith("5") else None)
        envelope.sender = sender
        envelope.mail_from = str(sender) if sender is not None else "<>"
        envelope.mail_options.extend(mail_options)
        return R.SENDER_OK

    async def handle_RCPT(self, server: Any, session: ClientSession, envelope: Transaction,
                          address: str, rcpt_options: list[str]) -> str:
        if len(envelope.recipients) >= self.config.smtp.max_recipients:
            return self.rejected(R.TOO_MANY_RCPTS, "rate")  # RFC 5321 §4.5.3.1.10
        arg = _strip_keyword(session.last_arg, "TO:")
        rcpt: Address | object
        try:
            if arg is None:
                raise ValueError("no TO:")
            path, _ = split_path(arg)
            if path.lower() == "<postmaster>":
                rcpt = POSTMASTER  # RFC 5321 §4.5.1
            else:
                parsed = parse_path(path, allow_bare=True)
                if parsed is None:
                    raise ValueError("null path")
                if not path.isascii() and not envelope.smtputf8:  # RFC 6531 §3.2 (local part and domain)
                    envelope.refused += 1
                    return self.rejected(R.NEED_SMTPUTF8)
                rcpt = parsed
        except ValueError:
            envelope.refused += 1
            return self.rejected(R.BAD_RCPT_SYNTAX)
        reply, users = await self.check_recipient(session, envelope, rcpt)
        if users is None:
            envelope.refused += 1
            return self.rejected(reply, "relay" if reply == R.RELAY_DENIED else None)
        envelope.recipients.append(rcpt if isinstance(rcpt, Address) else Address("postmaster", users[0].rpartition("@")[2]))
        envelope.rcpt_tos.append(str(envelope.recipients[-1]))
        envelope.rcpt_options.extend(rcpt_options)
        forward = envelope.forward.get(str(rcpt), ())
        if users or forward:  # a remote recipient (submission) has none: the queue delivers it
            envelope.resolved.append(Recipient(str(envelope.recipients[-1]), tuple(users), forward))
        return reply

    def rejected(self, reply: str, reason: str | None = None) -> str:
        """Count a refusal in messages_rejected_total (reason from the reply unless given)."""
        metrics.of(self.ctx).message_rejected(self.listener, reason or R.reject_reason(reply))
        return reply

    def count_result(self, reply: str) -> None:
        """The end of DATA: messages_received_total on 2xx, else messages_rejected_total."""
        if reply.startswith("2"):
            metrics.of(self.ctx).message_received(self.listener)
        else:
            self.rejected(reply, "sender" if R.code_of(reply) == 553 else None)  # From: not owned

    # -- after DATA (called by server.py with the complete, size-checked message) --------------------

    async def handle_message(self, session: ClientSession, txn: Transaction, data: bytes) -> str:
        """Bounds-check the header section, hand the message to the role, log the transaction."""
        smtp = self.config.smtp
        problem = headers.check_header_section(data, smtp.max_header_count, smtp.max_header_size)
        if problem == "count":
            reply = R.TOO_MANY_HEADERS
        elif problem == "size":
            reply = R.HEADER_TOO_BIG
        else:
            try:
                reply = await self.deliver(session, txn, data)
            except MailError as e:
                reply = R.reply_for(e)
            except Exception:
                logger.exception("smtp delivery failed (transaction %s)", txn.queue_id)
                reply = R.INTERNAL
        self.log_transaction(session, txn, reply, len(data), headers.field_value(data, "Message-ID"))
        return reply

    def log_transaction(self, session: ClientSession, txn: Transaction, result: str, size: int | None,
                        message_id: str | None) -> None:
        """One line per transaction: client, TLS, envelope, size, result, Message-ID (never the body)."""
        if txn.logged:
            return
        txn.logged = True
        level = logging.INFO if result.startswith("2") else logging.WARNING if result[:1] == "4" else logging.INFO
        mlog.event(logger, "smtp transaction", level=level, role=self.role, id=txn.queue_id, client=session.ip,
                   helo=session.host_name or "", tls=session.tls or "no", user=session.user or "",
                   sender=txn.mail_from or "", rcpts=",".join(str(r) for r in txn.recipients),
                   refused=txn.refused, size=size if size is not None else "",
                   result=result, message_id=message_id or "",
                   ms=int((time.monotonic() - txn.started) * 1000))


__all__ = ["ShortDir", "BaseHandler", "ClientSession", "Transaction", "POSTMASTER", "split_path", "new_queue_id"]
