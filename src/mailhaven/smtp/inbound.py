"""The MX role: mail from the Internet to our own users (listener "mx", port 25).

Owns: what the MX accepts (RFC 5321 §3.6.2 / §4.1.1.3): recipients in our domains that resolve to
users (users, aliases, catch-all, sub-addresses through auth.users.Directory); everything else is
refused as relaying (550 5.7.1) whatever the HELO, MAIL FROM or client address; unknown local
users get 550 5.1.1. Postmaster (RFC 5321 §4.5.1): `<postmaster>` and postmaster@ each of our
domains (any case) are always accepted, for whoever `Directory.postmaster` names (the postmaster
alias; in an old users file without one, implicitly the domain's first user). Sender
authentication through mailhaven.policy (SPF at MAIL, DKIM + DMARC and the verdict at DATA),
content scanning at DATA when config [spam] names an rspamd (ctx.spam, policy/rspamd.py: the
verdict is decided before the 250, logged once as "spam verdict" and counted by action;
policy/spam.py says what each action means; without rspamd the embedded check, policy/embedded.py:
GTUBE refused 550 5.7.1), each recipient's sender block/allow list (policy/senderlists.py: a
blocked sender's mail goes to that recipient's Junk, an allowed one's to INBOX unless refused),
the trace fields we add (Received,
Authentication-Results, Received-SPF, X-Spam-Status/X-Spam-Score and what rspamd asks to add)
and durable delivery into every recipient's Maildir (INBOX, or Junk on a "junk" verdict) through
the local delivery agent (delivery/local.py: it resolves the recipients at RCPT, and at DATA writes
Return-Path and Delivered-To and removes forged trust fields) before the 250. In dev mode, mail
from a loopback client skips the sender checks and every DNS query (pipeline.unchecked_reason);
its Authentication-Results says so, except the DNS lists below.
Connection reputation at RCPT, after the recipient is known to be ours: the client is looked up in
config spam.dnsbl / spam.dnswl once per connection from MAIL FROM on (policy/dnsbl.py; asked for
every client but authenticated sessions and spam.dnsbl_skip networks, in dev mode too); a block
listing refuses each RCPT with 554 5.7.1 (Postfix's reject_rbl_client wording) whatever the allow
lists say; then greylisting when spam.greylist is on (policy/greylist.py; 451 4.7.1), skipped for
authenticated sessions, allow-listed clients and spam.greylist_skip networks. Each of these
verdicts is logged ("reputation verdict") and counted once per transaction.
Does not own: the SMTP dialogue and limits (server.py, hooks.py), the policy decision table
(policy/pipeline.py), the store.

A message with more than MAX_HOPS Received fields is refused (554 5.4.6, RFC 5321 §6.3 loop detection).
The MX never relays and never queues: a message is either in every recipient's Maildir (fsynced)
when we answer 250, or refused (5xx) / deferred (4xx) with nothing kept.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailhaven import log as mlog
from mailhaven import metrics, seams
from mailhaven import quota as quotamod
from mailhaven.config import Config
from mailhaven.delivery import forward, local
from mailhaven.delivery.reports import report_delivered
from mailhaven.errors import DnsTempError, OverQuota, PermFailure, TempFailure
from mailhaven.message import headers
from mailhaven.message.address import Address
from mailhaven.message.dsn import DsnRequest
from mailhaven.policy import dnsbl, embedded, greylist, pipeline, senderlists, spam
from mailhaven.policy.spf import SpfResult
from mailhaven.reports.dmarc_send import DmarcReporter
from mailhaven.reports.dmarc_xml import looks_like_report
from mailhaven.smtp import replies as R
from mailhaven.smtp.hooks import POSTMASTER, BaseHandler, ClientSession, Transaction
from mailhaven.smtp.submission import author_addresses
from mailhaven.store import names

logger = logging.getLogger("mailhaven.smtp.inbound")

JUNK = "Junk"
INBOX = "INBOX"
# RFC 5321 §6.3: a message that already has this many Received fields is looping; the RFC asks for a
# threshold of at least 100 (Postfix's hopcount_limit is 50).
MAX_HOPS = 100
# Sender-specified routing in a local part (RFC 5321 Appendix C: the "%-hack", bang paths).
_ROUTING = frozenset("@%!")
# Messages up to this size are checked by the embedded scanner on the event loop; larger ones in a thread.
INLINE_SCAN_LIMIT = 64 * 1024
# The users' sender list files, re-read when one changes. One for the process (a handler lives for one
# connection); keyed by the file's path, so servers with different data folders do not mix.
SENDER_LISTS = senderlists.Cache()


class InboundHandler(BaseHandler):
    role = "mx"
    offers_auth = False

    def _policy_deadline(self) -> float:
        """The most time sender checks may take for one command (DNS answers are bounded by
        dns.timeout each; this bounds a whole chain of them)."""
        return max(1.0, min(self.config.smtp.command_timeout, 60.0))

    async def check_sender(self, session: ClientSession, txn: Transaction, sender: Address | None) -> str | None:
        # RFC 7208 §2.4: SPF on MAIL FROM, or on the HELO identity for the null sender. Nothing is
        # refused here: an aligned DKIM pass at DATA can rescue an SPF fail (policy/pipeline.py), so
        # the check runs while RCPT and DATA go on, and DATA waits for its result. The DMARC record
        # of the MAIL FROM domain is looked up meanwhile too (used at DATA if it is the From domain).
        self._start_reputation(session)  # DNS lists, awaited at RCPT (asked in dev mode too)
        if pipeline.unchecked_reason(self.config.dev, session.ip):
            return None  # dev mode, loopback client: no sender checks, no DNS (see deliver)
        spf_task = txn.start(self._spf(session, sender))
        domain = pipeline.dmarc_ahead_domain(str(sender)) if sender is not None else ""
        ahead = pipeline.DmarcAhead(domain, txn.start(pipeline.look_ahead(self.ctx.resolver, domain))) \
            if domain else None
        txn.policy = _MailChecks(spf_task, ahead)
        return None

    async def _spf(self, session: ClientSession, sender: Address | None) -> SpfResult:
        mail_from = str(sender) if sender is not None else ""
        helo = session.host_name or ""
        try:
            return await asyncio.wait_for(
                pipeline.check_mail(self.ctx.resolver, session.ip, mail_from, helo), self._policy_deadline())
        except TimeoutError:
            domain = (mail_from or f"postmaster@{helo}").rpartition("@")[2].lower()
            return SpfResult("temperror", "SPF check timed out", domain,
                             "mailfrom" if mail_from else "helo", mail_from, session.ip, helo)

    async def check_recipient(self, session: ClientSession, txn: Transaction,
                              rcpt: Address | object) -> tuple[str, list[str] | None]:
        reply, users = await self._local_recipient(rcpt, txn)
        if users is None:
            return reply, None  # relaying and unknown users are refused before any DNS list is asked
        refusal = await self._reputation_gate(session, txn, str(rcpt) if isinstance(rcpt, Address) else "postmaster")
        if refusal is None and not await self._fits(txn, users):
            refusal = R.OVER_QUOTA_RCPT
        return (refusal, None) if refusal is not None else (reply, users)

    async def _fits(self, txn: Transaction, users: list[str]) -> bool:
        """Whether a message of the size MAIL FROM announced (SIZE=, RFC 1870 §6; 0 without it)
        fits every user's quota (quota.py; users without limits cost nothing)."""
        service = quotamod.of(self.ctx)
        if service is None:
            return True
        size = announced_size(txn.mail_options)
        for user in users:
            try:
                await service.check(user, size)
            except OverQuota:
                return False
        return True

    async def _local_recipient(self, rcpt: Address | object, txn: Transaction) -> tuple[str, list[str] | None]:
        directory = self.ctx.directory
        agent = local.agent_of(self.ctx)  # the resolution DATA delivers to (Transaction.resolved)
        if isinstance(rcpt, Address) and isinstance(agent.forwarder, forward.Forwarder):
            # A bounce to an SRS address we made (delivery/forward.py): verified here, so a forged or
            # expired one is refused before DATA (550 5.1.1), a valid one goes back to the sender.
            target = await agent.forwarder.bounce_target(rcpt)
            if target is not None:
                if not target:
                    return R.UNKNOWN_USER, None
                txn.forward[str(rcpt)] = (target,)
                return R.RCPT_OK, []
        if rcpt is POSTMASTER:
            # RFC 5321 §4.5.1: <postmaster> is the postmaster of our first domain.
            # Bare <postmaster> has no address to forward as: its local users only.
            users = list(agent.postmaster(next(iter(self.config.domains), ""), local_only=True).users)
            return (R.RCPT_OK, users) if users else (R.UNKNOWN_USER, None)
        assert isinstance(rcpt, Address)
        # No relaying, ever (RFC 5321 §3.6.2): only our domains; address literals are never ours
        # here, so <user@[127.0.0.1]> is refused like any other foreign destination. A local part
        # that routes on (user%host, host!user, "user@host") is refused too, even where a catch-all
        # or sub-address would take it: Postfix's reject_unauth_destination does the same
        # (allow_untrusted_routing = no), so no hop after us can be made to relay it.
        if rcpt.is_literal or not directory.is_local_domain(rcpt.domain) or not _ROUTING.isdisjoint(rcpt.local):
            return R.RELAY_DENIED, None
        # postmaster@ in any case (RFC 5321 §4.5.1) is always accepted, even without an alias
        found = agent.postmaster(rcpt.domain) if rcpt.local.lower() == "postmaster" else agent.resolve(rcpt)
        users = list(found.users)
        if found.forward:  # an alias with targets on other servers (delivery/forward.py)
            txn.forward[str(rcpt)] = found.forward
            return R.RCPT_OK, users
        if not users and found.programs:
            return R.RCPT_OK, []  # only programs: queued at DATA (delivery/program.py)
        if not users:
            return R.UNKNOWN_USER, None
        return R.RCPT_OK, users

    # -- connection reputation (policy/dnsbl.py) and greylisting (policy/greylist.py), at RCPT ------

    def _start_reputation(self, session: ClientSession) -> None:
        """Ask the DNS lists about the client once per connection (from MAIL FROM on, while SPF
        runs). Exempt: authenticated sessions and spam.dnsbl_skip networks; nothing else, dev mode
        and loopback included (RFC 5782 §5 keeps 127.0.0.1 off every list)."""
        spam_cfg = self.config.spam
        if session.reputation is not None or not (spam_cfg.dnsbl or spam_cfg.dnswl):
            return
        if session.user is not None or dnsbl.exempt(session.ip, spam_cfg.dnsbl_skip):
            return
        session.reputation = asyncio.get_running_loop().create_task(self._lookup_reputation(session.ip))

    async def _lookup_reputation(self, ip: str) -> dnsbl.Reputation:
        spam_cfg = self.config.spam
        checker = reputation_checker(self.ctx)
        rep = await checker.check(self.ctx.resolver, ip, spam_cfg.dnsbl, spam_cfg.dnswl)
        meter = metrics.of(self.ctx)
        for answer in rep.ignored:
            meter.dnsbl_ignored(answer.zone, answer.status)
            if checker.warn_due(answer.zone, answer.status):
                mlog.event(logger, "dns list answer ignored", level=logging.WARNING, list=answer.zone,
                           reason=answer.status, answer=",".join(answer.codes), ip=ip,
                           advice=dnsbl.ADVICE[answer.status])
        return rep

    async def _reputation_gate(self, session: ClientSession, txn: Transaction, rcpt: str) -> str | None:
        """The refusal of this RCPT by a DNS block list (554 5.7.1) or greylisting (451 4.7.1), or
        None. A block listing wins over an allow listing; an allow listing skips greylisting."""
        spam_cfg = self.config.spam
        self._start_reputation(session)
        rep = await asyncio.shield(session.reputation) if session.reputation is not None else None
        if rep is not None and rep.blocked:
            self._verdict(txn, "dnsbl_reject", ip=session.ip, list=rep.listed_at, rcpt=rcpt)
            return R.dnsbl_blocked(session.ip, rep.listed_at)
        if not spam_cfg.greylist or session.user is not None or dnsbl.exempt(session.ip, spam_cfg.greylist_skip):
            return None
        if rep is not None and rep.allowed:
            self._verdict(txn, "dnswl_pass", ip=session.ip, list=rep.allowed[0], rcpt=rcpt)
            return None
        t = greylist.triplet(session.ip, str(txn.sender) if txn.sender is not None else "", rcpt)
        try:
            decision = await greylist_of(self.ctx).check(t)
        except Exception:  # a broken greylist database must not stop the mail: it passes, loudly
            logger.exception("greylist check failed for %s; passing it", t)
            return None
        if decision.action == "defer":
            self._verdict(txn, "greylist_defer", ip=session.ip, triplet=str(t), why=decision.why)
            return R.greylisted(decision.wait)
        if decision.why == "retried":
            self._verdict(txn, "greylist_pass", ip=session.ip, triplet=str(t), why=decision.why)
        return None

    def _verdict(self, txn: Transaction, action: str, **fields: Any) -> None:
        """Log and count a reputation verdict, once per transaction and action."""
        if action in txn.verdicts:
            return
        txn.verdicts.add(action)
        mlog.event(logger, "reputation verdict", id=txn.queue_id, action=action, **fields)
        metrics.of(self.ctx).reputation_verdict(action)

    async def deliver(self, session: ClientSession, txn: Transaction, data: bytes) -> str:
        cfg = self.config
        if len(headers.field_values(data, "Received")) > MAX_HOPS:
            raise PermFailure("Too many hops, mail loop?", code=554, enhanced="5.4.6")  # RFC 3463 X.4.6
        looped = forward.looping(data, txn.resolved)
        if looped is not None:  # our Delivered-To came back (as Postfix local(8)): RFC 3463 X.4.6
            raise PermFailure(f"mail forwarding loop for {looped}", code=554, enhanced="5.4.6")
        unchecked = pipeline.unchecked_reason(cfg.dev, session.ip)
        scanner: spam.Scanner | None = getattr(self.ctx, "spam", None)  # None: no [spam] scanner
        # The client's verified name for the scanner, looked up while the sender checks run (not for
        # unchecked dev-mode loopback mail, which asks DNS nothing).
        hostname = txn.start(self._client_hostname(session.ip)) if scanner is not None and not unchecked else None
        if unchecked:
            assessment = pipeline.unchecked(cfg.authserv_id, unchecked)
        else:
            assessment = await self._assess(session, txn, data)
            _count_policy(self.ctx, assessment)
            reporter: DmarcReporter | None = getattr(self.ctx, "dmarc_reports", None)
            if reporter is not None and assessment.verdict.action != "tempfail":
                await reporter.observe(assessment, client_ip=session.ip, action=assessment.verdict.action,
                                       envelope_from=str(txn.sender) if txn.sender is not None else "")
        verdict = assessment.verdict
        error = verdict.error()
        if error is not None:
            # reject -> 550 5.7.1, tempfail -> 451 4.4.3 (replies.reply_for renders it)
            raise error
        # RFC 5321 §4.4 / §7.2: name the recipient only when there is one (the same address given
        # twice is still one recipient, as Postfix sees it).
        one = len({r.normalized() for r in txn.recipients}) == 1
        single = str(txn.recipients[0]) if one else None
        received = headers.received(
            helo=session.host_name or "", ip=session.ip, by=cfg.hostname,
            protocol=headers.protocol_name(esmtp=bool(session.extended_smtp), tls=session.tls is not None,
                                           auth=session.user is not None, smtputf8=txn.smtputf8),
            queue_id=txn.queue_id, recipient=single,
            when=datetime.datetime.now(datetime.UTC).astimezone(), tls=session.tls)
        # Content scanning, decided before the 250 too (no backscatter); the strongest action wins.
        # rspamd sees our Received on top, as a milter behind Postfix does.
        # Without rspamd the embedded check runs (GTUBE, policy/embedded.py). Each recipient's sender
        # block/allow list (policy/senderlists.py) is looked up first: it goes into the verdict when
        # every recipient's list says the same, and decides that recipient's folder in any case.
        lists = await self._list_decisions(txn, data)
        scan: spam.SpamVerdict | None = await self._scan(scanner, session, txn, received + data, hostname,
                                                         lists)
        if scan is not None:
            data = spam.remove_fields(data, spam.removals(scan))  # what rspamd asks to remove
        junk = verdict.action == "junk" or (scan is not None and spam.outcome(scan) == "junk")
        folder = JUNK if junk else INBOX
        trace = [
            received,
            assessment.headers,  # Authentication-Results (RFC 8601) + Received-SPF (RFC 7208 §9.1)
        ]
        if scan is not None:  # X-Spam-Status, X-Spam-Score, then what rspamd asks to add
            trace.append(spam.status_fields(scan) + spam.milter_fields(scan))
        # Durable in every Maildir before the 250 (one all-or-nothing store write, fsynced; StoreError),
        # to the users RCPT resolved, each once: the agent puts Return-Path and Delivered-To on top
        # (RFC 5321 §4.4, RFC 9228) and removes what arrived claiming to be ours
        # (Authentication-Results with our authserv-id, X-Spam-*, Return-Path) before our trace fields.
        per_user = {user: _folder(folder, lists.get(user)) for user in txn.users}  # sender lists
        reports_folder = cfg.reports.dmarc_folder
        if reports_folder and not junk and looks_like_report(data, headers.field_value(data, "Subject")):
            # Aggregate reports to our rua (records.py publishes postmaster@ each domain) get their own
            # folder, not the postmaster's INBOX.
            for r in txn.resolved:
                if r.address.partition("@")[0].lower() == "postmaster":
                    per_user.update(dict.fromkeys(r.users, reports_folder))
        agent = local.agent_of(self.ctx)
        sender = str(txn.sender) if txn.sender is not None else ""
        # Program targets (aliases "|/path args") never run here: they go into the queue, under this
        # transaction's id, after the mailbox copies and before the 250 (delivery/program.py).
        programs = [r for r in (agent.resolve(a) for a in txn.recipients) if r.programs]
        if programs and self.ctx.queue is None:
            raise TempFailure("the outbound queue is not running")
        try:
            await agent.deliver_all(txn.resolved, data, folder=per_user, trace=trace, sender=sender, spam=junk,
                                    dsn=DsnRequest(txn.dsn, txn.rcpt_dsn))
        except OverQuota:  # nothing stored anywhere; the MX refuses for good at DATA (552 5.2.2)
            raise PermFailure("Mailbox full (over quota)", code=552, enhanced="5.2.2") from None
        request = DsnRequest(txn.dsn, txn.rcpt_dsn)
        if programs:
            await agent.queue_programs(self.ctx.queue, programs, data, sender=sender, trace=trace,
                                       entry_id=txn.queue_id, dsn=request)
        if txn.rcpt_dsn:  # RFC 3461: success notices for the recipients that asked (NOTIFY=SUCCESS)
            await report_delivered(self.ctx, about=txn.queue_id, sender=sender, request=request,
                                   recipients=txn.resolved, original=b"".join(trace) + data, arrival=time.time())
        if verdict.action == "junk" or assessment.notes:
            logger.info("transaction %s: %s %s", txn.queue_id, verdict.action, verdict.reason)
        return R.accepted(txn.queue_id)

    async def _client_hostname(self, ip: str) -> str:
        """The client's forward-confirmed reverse DNS name, or "unknown" (as Postfix names it)."""
        try:
            async with asyncio.timeout(self._policy_deadline()):
                for name in (await self.ctx.resolver.ptr(ip))[:3]:
                    if ip in await self.ctx.resolver.addresses(name):
                        return str(name)
        except Exception:  # noqa: BLE001 - no name is an answer here: "unknown"
            pass
        return "unknown"

    async def _list_decisions(self, txn: Transaction, data: bytes) -> dict[str, senderlists.Decision]:
        """Each recipient's sender list decision (block, allow or None), from the envelope sender and
        the From: addresses (either parser's reading, smtp/submission.author_addresses), read off
        the loop. A list file that cannot be read counts as no list, and says so in the log."""
        root = Path(self.config.mail_root)
        sender = str(txn.sender) if txn.sender is not None else ""
        max_header = self.config.smtp.max_header_size

        def lookup() -> dict[str, senderlists.Decision]:
            senders = [sender] if sender else []
            senders += author_addresses(data, max_header) or []
            out: dict[str, senderlists.Decision] = {}
            for user in txn.users:
                try:
                    lists = SENDER_LISTS.get(senderlists.path_for(names.user_root(root, user)))
                except (OSError, senderlists.ListFileError, ValueError) as e:
                    mlog.event(logger, "sender list unreadable", level=logging.WARNING, user=user, error=str(e))
                    lists = senderlists.EMPTY
                out[user] = senderlists.decide(lists, senders)
            return out

        return await asyncio.to_thread(lookup)

    async def _scan(self, scanner: spam.Scanner | None, session: ClientSession, txn: Transaction, data: bytes,
                    hostname: asyncio.Task[str] | None,
                    lists: dict[str, senderlists.Decision] | None = None) -> spam.SpamVerdict:
        """The scanner's verdict (rspamd's, or without one the embedded check's), with the
        recipients' sender list decision when they all agree (senderlists.apply), logged once and
        counted by action; raises the refusal of a reject or tempfail verdict, and 451 4.7.1 when
        there is none and spam.on_error is "tempfail"."""
        t0 = time.monotonic()
        if scanner is None:
            name = embedded.SCANNER
            if len(data) > self.config.spam.max_scan_size:
                scan = spam.SpamVerdict("skipped", reason="larger than spam.max_scan_size")
            elif len(data) <= INLINE_SCAN_LIMIT:
                scan = embedded.scan(data)
            else:
                scan = await asyncio.to_thread(embedded.scan, data)
        else:
            name = "rspamd"
            request = spam.ScanRequest(
                ip=session.ip, helo=session.host_name or "", sender=str(txn.sender) if txn.sender is not None else "",
                recipients=tuple(str(r) for r in txn.recipients), queue_id=txn.queue_id,
                hostname=await hostname if hostname is not None else "unknown",
                deliver_to=txn.users[0] if len(txn.users) == 1 else "")
            try:
                scan = await scanner.scan(data, request)
            except spam.ScanError as e:
                scan = spam.unknown(str(e))
        decided = set((lists or {}).values())
        if len(decided) == 1:
            scan = senderlists.apply(scan, decided.pop())
        level = logging.WARNING if scan.action == "unknown" else logging.INFO
        mlog.event(logger, "spam verdict", level=level, id=txn.queue_id, scanner=name, action=scan.action,
                   score=f"{scan.score:.2f}" if scan.scanned else "", required=f"{scan.required:.2f}" if scan.scanned
                   else "", symbols=",".join(scan.symbols), reason=scan.reason,
                   lists=",".join(f"{u}:{d}" for u, d in (lists or {}).items() if d is not None),
                   ms=int((time.monotonic() - t0) * 1000))
        metrics.of(self.ctx).spam_verdict(scan.action)
        if scan.action == "unknown" and self.config.spam.on_error == "tempfail":
            raise TempFailure("Spam check not available, try again later", code=451, enhanced="4.7.1")
        refusal = spam.error_for(scan)
        if refusal is not None:
            raise refusal
        return scan


    async def _assess(self, session: ClientSession, txn: Transaction, data: bytes) -> pipeline.Assessment:
        """SPF (started at MAIL FROM), DKIM, DMARC and the verdict, within the policy deadline."""
        cfg = self.config
        checks: _MailChecks | None = txn.policy
        spf_result = await checks.spf if checks is not None else None
        enforce = pipeline.applies(cfg.policy, session.ip)
        try:
            return await asyncio.wait_for(
                pipeline.check_data(self.ctx.resolver, cfg.policy, cfg.authserv_id, spf_result, data,
                                    enforce=enforce, dmarc_ahead=checks.dmarc if checks is not None else None),
                self._policy_deadline())
        except TimeoutError:
            raise DnsTempError("Sender checks timed out, try again later") from None


def announced_size(mail_options: list[str]) -> int:
    """The SIZE= of MAIL FROM (RFC 1870 §6, aiosmtpd checked its syntax and our limit); 0 if none."""
    for option in mail_options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit() and len(value) <= 15:
            return int(value)
    return 0


def _folder(message_folder: str, decision: senderlists.Decision) -> str:
    """One recipient's folder: a blocked sender's mail goes to Junk, an allowed sender's to INBOX
    (even when the scanner or the DMARC quarantine policy said Junk; refusals came before), anyone
    else's where the message's verdict says."""
    if decision == "block":
        return JUNK
    if decision == "allow":
        return INBOX
    return message_folder


def _count_policy(ctx: seams.Context, assessment: pipeline.Assessment) -> None:
    """policy_results_total: SPF (when checked), each DKIM signature (or "none"), DMARC."""
    meter = metrics.of(ctx)
    if not meter.enabled:
        return
    if assessment.spf is not None:
        meter.policy_result("spf", assessment.spf.result)
    for d in assessment.dkim or ():
        meter.policy_result("dkim", d.result)
    if not assessment.dkim:
        meter.policy_result("dkim", "none")
    meter.policy_result("dmarc", assessment.dmarc.result)


def reputation_checker(ctx: seams.Context) -> dnsbl.Checker:
    """The server's DNS list checker (its cache is shared by every connection)."""
    checker = getattr(ctx, "dnsbl", None)
    if not isinstance(checker, dnsbl.Checker):
        checker = dnsbl.Checker()
        ctx.dnsbl = checker
    return checker


def greylist_of(ctx: seams.Context) -> seams.Greylist:
    """The server's greylist (app.py opens it; built here for a context that has none)."""
    gl: seams.Greylist | None = getattr(ctx, "greylist", None)
    if gl is None:
        built = greylist.from_config(ctx.config)
        if built is None:
            raise RuntimeError("greylisting is off")
        gl = ctx.greylist = built
    return gl


@dataclass(frozen=True)
class _MailChecks:
    """What MAIL FROM started for DATA (both tasks owned by the transaction: Transaction.start)."""

    spf: asyncio.Task[SpfResult]
    dmarc: pipeline.DmarcAhead | None


def handler_factory(ctx: seams.Context, config: Config, listener: str) -> InboundHandler:
    return InboundHandler(ctx, config, listener)


__all__ = ["InboundHandler", "handler_factory"]
