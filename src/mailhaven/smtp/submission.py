"""The submission role: mail from our own users' programs (listeners "submission", port 587 with
STARTTLS, and "submissions", port 465 with implicit TLS; RFC 6409, RFC 8314).

Owns: what submission accepts. Nothing before a login: MAIL, RCPT and DATA get `530 5.7.0
Authentication required`; on a STARTTLS listener nothing but EHLO/STARTTLS/NOOP/QUIT before TLS
(`530 5.7.0 Must issue a STARTTLS command first`, RFC 3207 §4), unless the listener is on loopback
with auth.allow_plaintext_loopback (dev). AUTH PLAIN/LOGIN (authenticator.py) once per session,
after EHLO, outside a transaction (RFC 4954 §4). The envelope sender and every address of the
From: header must be owned by the logged-in user (auth.users.Directory.owns: the user's own
address, its +tag addresses, aliases that lead to it), else `553 5.7.1` and one INFO log line
"send-as refused" with user, address and reason; the null sender is allowed
(RFC 8098 §3: MDNs are sent with it), From: still has to be owned then. Any recipient domain once
logged in (that is what submission is for), but our own domains' unknown users are refused at
RCPT (550 5.1.1, not after DATA) and address literals are refused (550 5.1.2: no delivery to raw
IPs, which would reach hosts we do not know). Sending limits per logged-in user over a sliding hour
(config [submission], counted in ctx.limits.sending, sendrate.py): recipients are counted at RCPT,
messages when queued; over a limit `451 4.7.1` (replies.send_rate_limited) at RCPT, at MAIL (the
message limit already reached) or at the end of DATA, one WARNING log line "send rate limit" (user,
limit, count, max) and mailhaven_send_rate_limited_total{limit}. The Received field (message/headers.py
received_submission: the client's address hidden unless smtp.redact_submitter = false), then
cleanup.enqueue: Message-ID and Date when missing, DKIM signatures for the From domain, local
recipients into the store and remote ones into the spool, fsynced; only then `250 2.0.0 Ok:
queued as ID` (STYLE rules 11 and 12). Before that, when config [spam] names an rspamd, the message
is scanned with the user named (`_scan`): rspamd's reject is `550 5.7.1`, nothing queued.
Does not own: the SMTP dialogue and limits (server.py, hooks.py), the SASL exchange and throttle
(authenticator.py), headers and signing and the queue (cleanup.py), who owns what (auth/users.py).

The From: header is read by two parsers (Python's email.utils, which our DMARC code uses too, and
the Dovecot-compatible one behind IMAP ENVELOPE); every address either of them sees must be owned,
so a header crafted to look owned to one reader and foreign to another is refused.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import ipaddress
import logging
import time
from typing import Any

from mailhaven import cleanup, metrics, seams
from mailhaven import log as mlog
from mailhaven.config import Config
from mailhaven.delivery import local
from mailhaven.errors import PolicyReject, TempFailure
from mailhaven.message import headers
from mailhaven.message.address import Address
from mailhaven.message.dsn import DsnRequest
from mailhaven.policy import spam
from mailhaven.queue.spool import new_id
from mailhaven.smtp import replies as R
from mailhaven.smtp.authenticator import Authenticator
from mailhaven.smtp.hooks import POSTMASTER, BaseHandler, ClientSession, Transaction

logger = logging.getLogger("mailhaven.smtp.submission")


def listener_is_loopback(config: Config, listener: str) -> bool:
    """A loopback listener, for the plaintext-login exception (not one behind a PROXY-protocol
    proxy: its clients are elsewhere)."""
    lc = config.listeners.get(listener)
    if lc is None or lc.proxy_protocol:
        return False
    try:
        return ipaddress.ip_address(lc.address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


MAX_AUTHOR_FIELD = 4096  # octets of an unfolded From: value we parse (a few dozen addresses)


def author_addresses(message: bytes, max_header: int) -> list[str] | None:
    """Every address of the message's single From: field as either parser reads it ("local@domain",
    in order, without repeats), or None when there is not exactly one From: field, it holds no
    address, is longer than MAX_AUTHOR_FIELD, or either parser fails or finds an address without a
    local part or domain. Bounded: Python's parser recurses per nested comment and slows down with
    the number of addresses, so hostile input stops at the size limit or a caught RecursionError."""
    values = headers.field_values(message, "From", limit=max_header)
    if len(values) != 1:
        return None  # RFC 5322 §3.6: exactly one From field
    value = values[0]
    if len(value.encode("utf-8")) > MAX_AUTHOR_FIELD:
        return None
    try:
        return _addresses(value)
    except (RecursionError, ValueError, IndexError):
        return None


def _addresses(value: str) -> list[str] | None:
    from mailhaven.imap.fetchitems import MISSING_DOMAIN, MISSING_MAILBOX, SYNTAX_ERROR, parse_address_list

    found: list[str] = []
    for _, addr in email.utils.getaddresses([value]):
        if not addr:
            # An empty group, or a field this Python refuses as ambiguous: patched interpreters
            # (CVE-2023-27043) answer ('', '') for "a@x <b@y>". Either way no single owned author.
            return None
        local, at, domain = addr.rpartition("@")
        if not at or not local or not domain:
            return None
        found.append(addr)
    for a in parse_address_list(value.encode("utf-8")):
        if a.host is None:
            continue  # group start or end (RFC 5322 §3.4)
        if a.mailbox in (None, MISSING_MAILBOX, b"") or a.host in (MISSING_DOMAIN, SYNTAX_ERROR, b""):
            return None
        assert a.mailbox is not None
        found.append(a.mailbox.decode("utf-8", "replace") + "@" + a.host.decode("utf-8", "replace"))
    return list(dict.fromkeys(found)) or None


def log_send_as_refused(user: str, address: str, reason: str) -> None:
    """One INFO line per refused send-as (the 553 5.7.1 of MAIL FROM or From:), as Postfix logs its
    reject_sender_login_mismatch: who tried, which address, and why."""
    mlog.event(logger, "send-as refused", user=user, address=address, reason=reason)


class SubmissionHandler(BaseHandler):
    role = "submission"
    offers_auth = True

    def __init__(self, ctx: seams.Context, config: Config, listener: str) -> None:
        super().__init__(ctx, config, listener)
        plaintext_ok = listener_is_loopback(config, listener) and config.auth.allow_plaintext_loopback
        self.auth = Authenticator(ctx, plaintext_ok=plaintext_ok)
        # RFC 3207 §4: on a STARTTLS listener, TLS first (unless clear-text logins are allowed here).
        self.starttls_required = not plaintext_ok

    # -- AUTH -----------------------------------------------------------------------------------------

    def ehlo_auth_keyword(self, session: ClientSession) -> str | None:
        if session.authenticated:
            return None  # RFC 4954 §4: a second AUTH is refused anyway
        return self.auth.keyword(session.tls is not None)

    async def handle_auth(self, io: Any, session: ClientSession, txn: Transaction, arg: str) -> tuple[str, bool]:
        if session.authenticated:
            return R.ALREADY_AUTHENTICATED, False  # RFC 4954 §4: 503 after a successful AUTH
        if txn.mail_from:
            return R.AUTH_IN_TRANSACTION, False  # RFC 4954 §4: 503 during a mail transaction
        outcome = await self.auth.run(io, ip=session.ip, tls_active=session.tls is not None, arg=arg)
        if outcome.user is not None:
            session.authenticated = True
            session.user = outcome.user
            mlog.set_user(outcome.user)
        return outcome.reply, outcome.close

    # -- envelope -------------------------------------------------------------------------------------

    async def check_sender(self, session: ClientSession, txn: Transaction, sender: Address | None) -> str | None:
        user = session.user
        if user is None or not session.authenticated:
            return R.AUTH_REQUIRED  # aiosmtpd checks this first; never reached without a login
        refusal = self._over_message_limit(user, 0)  # already at the hourly limit: say so before the upload
        if refusal is not None:
            return refusal
        if sender is None:
            return None  # RFC 8098 §3: MDNs use the null reverse-path; From: is checked at DATA
        if not self.ctx.directory.owns(user, sender):
            log_send_as_refused(user, str(sender), "envelope sender (MAIL FROM) not owned by the user")
            return R.sender_not_owned(str(sender), user)
        return None

    async def check_recipient(self, session: ClientSession, txn: Transaction,
                              rcpt: Address | object) -> tuple[str, list[str] | None]:
        agent = local.agent_of(self.ctx)  # the same alias expansion as every local delivery
        if rcpt is POSTMASTER:
            for domain in self.config.domains:  # RFC 5321 §4.5.1: our first domain's postmaster
                users = agent.resolve(f"postmaster@{domain}").users
                if users:
                    return R.RCPT_OK, list(users)
            return R.UNKNOWN_USER, None
        assert isinstance(rcpt, Address)
        if rcpt.is_literal:
            return R.LITERAL_RCPT, None
        found: list[str] = []  # remote: the queue delivers it
        if self.ctx.directory.is_local_domain(rcpt.domain):
            resolved = agent.resolve(rcpt)
            if not resolved.users and not resolved.forward and not resolved.programs:
                # forward: an alias to other servers; programs: cleanup queues them
                return R.UNKNOWN_USER, None
            found = list(resolved.users)
        refusal = self._take_recipient(session.user or "")
        if refusal is not None:
            return refusal, None
        return R.RCPT_OK, found

    # -- sending limits (config [submission], sendrate.py) ---------------------------------------------

    def _rate_refused(self, user: str, what: str, count: int, limit: int) -> str:
        """One log line and one count per refusal; the 451 4.7.1 reply."""
        mlog.event(logger, "send rate limit", level=logging.WARNING, user=user, limit=what, count=count,
                   max=limit, window="1h")
        metrics.of(self.ctx).send_rate_limited(what)
        return R.send_rate_limited(what, limit)

    def _take_recipient(self, user: str) -> str | None:
        """Count one recipient for `user` (as RCPT accepts it, as Postfix's
        smtpd_client_recipient_rate_limit counts), or the refusal when the hour's limit is reached."""
        limit = self.config.submission.max_recipients_per_hour
        ok, count = self.ctx.limits.sending.take("recipients", user, 1, limit)
        return None if ok else self._rate_refused(user, "recipients", count, limit)

    def _over_message_limit(self, user: str, n: int) -> str | None:
        """n = 0: the refusal when `user` already sent the hour's limit of messages (nothing counted);
        n = 1: count this message, or the refusal when it would go over."""
        limit = self.config.submission.max_messages_per_hour
        sending = self.ctx.limits.sending
        if n == 0:
            count = sending.count("messages", user)
            return self._rate_refused(user, "messages", count, limit) if limit and count >= limit else None
        ok, count = sending.take("messages", user, n, limit)
        return None if ok else self._rate_refused(user, "messages", count, limit)

    # -- after DATA -----------------------------------------------------------------------------------

    async def deliver(self, session: ClientSession, txn: Transaction, data: bytes) -> str:
        cfg = self.config
        user = session.user
        if user is None:
            return R.AUTH_REQUIRED
        # Off the loop: a hostile From: field of MAX_AUTHOR_FIELD octets costs tens of milliseconds.
        authors = await asyncio.to_thread(author_addresses, data, cfg.smtp.max_header_size)
        if authors is None:
            return R.NO_AUTHOR
        directory = self.ctx.directory
        for author in authors:
            if not directory.owns(user, author):
                log_send_as_refused(user, author, "From: header address not owned by the user")
                return R.author_not_owned(author, user)
        # Counted before the message is queued (no await in between, so parallel sessions of one user
        # cannot all slip under the limit); given back when it is not queued after all.
        refusal = self._over_message_limit(user, 1)
        if refusal is not None:
            return refusal
        try:
            return await self._queue(session, txn, data, user)
        except BaseException:
            self.ctx.limits.sending.add("messages", user, -1)
            raise

    async def _queue(self, session: ClientSession, txn: Transaction, data: bytes, user: str) -> str:
        cfg = self.config
        # The queue id is chosen here so the Received field, the 250 and the log all name it.
        txn.queue_id = new_id()
        trace = headers.received_submission(
            helo=session.host_name or "", ip=session.ip, by=cfg.hostname,
            protocol=headers.protocol_name(esmtp=bool(session.extended_smtp), tls=session.tls is not None,
                                           auth=True, smtputf8=txn.smtputf8),
            queue_id=txn.queue_id, when=datetime.datetime.now(datetime.UTC).astimezone(), tls=session.tls,
            redact=cfg.smtp.redact_submitter)
        # Date and Message-ID (RFC 6409 §8.3, §8.4) go in below our Received field, so the trace field
        # stays on top (RFC 5321 §4.4); cleanup then finds them present and adds nothing.
        message = headers.prepend([trace], cleanup.add_missing_headers(data, cfg.hostname, time.time()))
        sender = str(txn.sender) if txn.sender is not None else ""
        scanner: spam.Scanner | None = getattr(self.ctx, "spam", None)  # None: no [spam] scanner
        if scanner is not None:  # raises the refusal: nothing is queued
            await self._scan(scanner, session, txn, user, sender, message)
        # Durable before the 250 (cleanup fsyncs the store and the spool); MailError -> its reply.
        queue_id = await cleanup.enqueue(self.ctx, sender, [str(r) for r in txn.recipients], message,
                                         dkim=True, source="submission", queue_id=txn.queue_id,
                                         dsn=DsnRequest(txn.dsn, txn.rcpt_dsn))
        return R.queued(queue_id)

    async def _scan(self, scanner: spam.Scanner, session: ClientSession, txn: Transaction, user: str,
                    sender: str, message: bytes) -> None:
        """Outbound scanning (issue 12 item 7): rspamd sees the message with `User`, so its rules for
        authenticated senders apply (ratelimit, outbound checks), as behind Postfix's submission
        milter. reject -> 550 5.7.1 with rspamd's message, soft reject -> 451 4.7.1 (Postfix's milter
        tempfails it; rspamd's ratelimit says "slow down" that way); every other action is queued
        unchanged (no X-Spam-* on outgoing mail). No verdict: spam.on_error, as for the MX. One
        "spam verdict" line (direction=outbound), a WARNING when refused."""
        request = spam.ScanRequest(ip=session.ip, helo=session.host_name or "", sender=sender,
                                   recipients=tuple(str(r) for r in txn.recipients), queue_id=txn.queue_id,
                                   user=user)
        t0 = time.monotonic()
        try:
            scan = await scanner.scan(message, request)
        except spam.ScanError as e:
            scan = spam.unknown(str(e))
        refused = scan.action in ("reject", "soft reject", "unknown")
        mlog.event(logger, "spam verdict", level=logging.WARNING if refused else logging.INFO, id=txn.queue_id,
                   scanner="rspamd", direction="outbound", action=scan.action,
                   score=f"{scan.score:.2f}" if scan.scanned else "", required=f"{scan.required:.2f}" if scan.scanned
                   else "", symbols=",".join(scan.symbols), reason=scan.reason,
                   ms=int((time.monotonic() - t0) * 1000))
        metrics.of(self.ctx).spam_verdict(scan.action, direction="outbound")
        if scan.action == "unknown" and self.config.spam.on_error == "tempfail":
            raise TempFailure("Spam check not available, try again later", code=451, enhanced="4.7.1")
        if scan.action == "reject":
            raise PolicyReject(scan.message or spam.DEFAULT_REJECT, code=550, enhanced="5.7.1")  # RFC 3463 X.7.1
        if scan.action == "soft reject":
            raise TempFailure(scan.message or spam.DEFAULT_TEMPFAIL, code=451, enhanced="4.7.1")


def handler_factory(ctx: seams.Context, config: Config, listener: str) -> SubmissionHandler:
    return SubmissionHandler(ctx, config, listener)


__all__ = ["SubmissionHandler", "handler_factory", "author_addresses", "listener_is_loopback", "log_send_as_refused"]
