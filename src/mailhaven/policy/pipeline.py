"""The inbound sender-authentication verdict: SPF at MAIL FROM, DKIM + DMARC + decision at DATA.

Owns: the order of the checks, the decision table below (config `policy.*` actions), the SMTP reply
of a verdict, and the header fields added to accepted mail (Authentication-Results, Received-SPF).
Does not own: the SMTP dialogue (smtp/inbound.py calls `check_mail` at MAIL and `check_data` at
DATA and sends `verdict.reply`), removing forged Authentication-Results claiming our authserv-id
(RFC 8601 §5: message/trust.py, on every way into a mailbox), storing (store/).

Why nothing is rejected at MAIL: an SPF fail is rescued by an aligned DKIM pass (RFC 7489 §4.2),
which only DATA can show; so MAIL only computes and remembers the SpfResult. MAIL may also start
the DMARC record lookup of its own domain (`look_ahead`): when the From domain turns out to be the
same, DATA uses that answer instead of asking again; otherwise DATA asks for the From domain.

Decision at DATA (first match wins; "tempfail" never accepts a message we might have to drop):
1. no single RFC5322.From domain (RFC 7489 §6.6.1)             -> reject 550 5.7.1
   (no From field at all is not this case: dmarc=none, and the rules below decide)
2. DMARC temperror (record lookup or aligned DKIM key lookup)  -> tempfail 451 4.4.3
3. SPF temperror and no DMARC pass and no aligned DKIM pass      -> tempfail 451 4.4.3
4. the strongest of: DMARC fail with p=reject -> `policy.dmarc_reject` (default reject);
   p=quarantine -> `policy.dmarc_quarantine` (default junk); SPF fail with no aligned DKIM pass
   -> `policy.spf_fail` (default reject); DKIM failed (`dkim_failure`: signed, no signature
   passes, one is fail or permerror) -> `policy.dkim_fail` (default accept: RFC 6376 §6.3 treats
   a failed signature like none, and DMARC decides). "reject" is 550 5.7.1, "junk" is 250 into
   Junk; on a tie the earlier reason is given (DMARC's before SPF's before DKIM's).
5. DKIM temperror (a key lookup failed; no signature passes) where `policy.dkim_fail` is stronger
   than what rule 4 found                                         -> tempfail 451 4.4.3
   (a retry may pass or fail; with the default accept nothing waits on it)
6. otherwise the result of rule 4, or accept.
Policy applies to every client, loopback included, unless `policy.check_local` is false.

Dev mode (config `dev`) is the one exception: mail from a loopback client is not checked at all
(`unchecked_reason`), so no DNS query is sent and `serve --dev` works on a machine without DNS;
`unchecked` gives its Authentication-Results the "none" form with the reason (RFC 8601 §2.2).
Without dev mode a loopback client is checked like any other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mailhaven import seams
from mailhaven.config import PolicyConfig
from mailhaven.errors import DnsTempError, MailError, PolicyReject
from mailhaven.policy import arc, authresults, dkim, dmarc, spf
from mailhaven.policy.dkim import DkimResult
from mailhaven.policy.dmarc import AuthorError, DmarcResult, NoAuthor
from mailhaven.policy.spf import SpfResult

VerdictAction = Literal["accept", "junk", "reject", "tempfail"]
_RANK: dict[str, int] = {"accept": 0, "junk": 1, "reject": 2}


@dataclass(frozen=True)
class Verdict:
    action: VerdictAction
    reason: str
    code: int = 250
    enhanced: str = "2.0.0"

    @property
    def reply(self) -> str:
        """"NNN X.Y.Z text" for the SMTP DATA reply of a reject or tempfail."""
        return f"{self.code} {self.enhanced} {self.reason}"

    def error(self) -> MailError | None:
        """The MailError to raise for reject/tempfail (for smtp/replies.py); None otherwise."""
        if self.action == "reject":
            return PolicyReject(self.reason, code=self.code, enhanced=self.enhanced)
        if self.action == "tempfail":
            return DnsTempError(self.reason, code=self.code, enhanced=self.enhanced)
        return None


ACCEPT = Verdict("accept", "ok")


def _reject(reason: str) -> Verdict:
    return Verdict("reject", reason, 550, "5.7.1")  # RFC 7372 §3.2 / RFC 3463 5.7.1


def _tempfail(reason: str) -> Verdict:
    return Verdict("tempfail", reason, 451, "4.4.3")  # RFC 3463 §3.5: directory server failure


def _act(action: str, reason: str) -> Verdict:
    if action == "reject":
        return _reject(reason)
    if action == "junk":
        return Verdict("junk", reason)
    return Verdict("accept", reason)


@dataclass(frozen=True)
class Assessment:
    """Everything DATA needs: the verdict, the results and the header fields to prepend."""

    verdict: Verdict
    spf: SpfResult | None
    dkim: list[DkimResult]
    dmarc: DmarcResult
    headers: bytes  # Authentication-Results (+ Received-SPF), CRLF-terminated, to prepend
    from_domain: str = ""
    notes: list[str] = field(default_factory=list)
    arc: str = "none"  # the ARC chain's status (policy/arc.py), recorded as arc= (RFC 8617 §7.2)


def applies(policy: PolicyConfig, client_ip: str) -> bool:
    """Whether policy is enforced for this client (all clients unless policy.check_local is off)."""
    if policy.check_local:
        return True
    try:
        ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return True
    return not (ip.is_loopback or ip.is_private or ip.is_link_local)


DEV_LOOPBACK = "dev mode: loopback client, not checked"


def unchecked_reason(dev: bool, client_ip: str) -> str:
    """Why this client's mail gets no sender check and no DNS lookup at all, or "" when it is
    checked: only in dev mode, only for a loopback client (pure)."""
    if not dev:
        return ""
    try:
        ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return ""
    # An IPv4-mapped ::ffff:127.0.0.1 is loopback too (a dual-stack listener reports it so).
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return DEV_LOOPBACK if ip.is_loopback or (mapped is not None and mapped.is_loopback) else ""


def unchecked(authserv_id: str, reason: str) -> Assessment:
    """The Assessment of mail that is not checked (see `unchecked_reason`): accepted, no results,
    `Authentication-Results: ID; none (REASON)` (RFC 8601 §2.2: no authentication was performed),
    no Received-SPF. Sends no DNS query. Forged fields carrying our authserv-id are removed where
    every message is, by the local delivery agent (delivery/local.py, message/trust.py)."""
    return Assessment(ACCEPT, None, [], DmarcResult("none", reason=reason),
                      authresults.format_none(authserv_id, reason))


async def check_mail(resolver: seams.Resolver, client_ip: str, mail_from: str, helo: str) -> SpfResult:
    """At MAIL FROM: evaluate and return SPF (remember it for DATA). Never rejects by itself."""
    return await spf.check_host(resolver, client_ip, mail_from, helo)


def dmarc_ahead_domain(mail_from: str) -> str:
    """The domain whose DMARC record is worth looking up at MAIL FROM: the MAIL FROM domain, which
    is the RFC5322.From domain of most mail (that is what SPF alignment needs, RFC 7489 §3.1.2).
    "" for the null sender and address literals."""
    domain = dmarc.normalize_domain(mail_from.rpartition("@")[2]) if "@" in mail_from else ""
    return "" if domain.startswith("[") else domain


async def look_ahead(resolver: seams.Resolver, domain: str) -> dmarc.Found:
    """The DMARC discovery of `domain`, started at MAIL FROM so that DATA finds it done (the caller
    owns the task; check_data uses it only when the From domain is this domain). Never raises:
    anything but an answer is None, and DATA then looks the record up itself."""
    try:
        return await dmarc.find(resolver, domain)
    except Exception:  # noqa: BLE001 - a failed guess must never fail the transaction
        return None


@dataclass(frozen=True)
class DmarcAhead:
    """A running `look_ahead(resolver, domain)`, handed from MAIL FROM to check_data."""

    domain: str
    task: asyncio.Future[dmarc.Found]


def dkim_failure(dkim_results: Sequence[DkimResult]) -> Literal["", "fail", "temperror"]:
    """What `policy.dkim_fail` looks at (pure). "" when the message is unsigned or a signature
    passes; "temperror" when none passes and a key lookup failed temporarily (a retry may pass);
    "fail" when none passes and one is fail (RFC 6376 §6.1.3: hash or signature does not verify)
    or permerror (§6.1.1-6.1.2: broken signature, no key, bad key). neutral and policy results
    alone are not failures."""
    statuses = {r.result for r in dkim_results}
    if "pass" in statuses:
        return ""
    if "temperror" in statuses:
        return "temperror"
    if statuses & {"fail", "permerror"}:
        return "fail"
    return ""


def decide(policy: PolicyConfig, spf_result: SpfResult | None, dkim_results: Sequence[DkimResult],
           dmarc_result: DmarcResult, author_error: str = "") -> Verdict:
    """The decision table of the module docstring (pure)."""
    if author_error:
        return _reject(author_error)  # RFC 7489 §6.6.1
    from_domain = dmarc_result.domain
    dkim_aligned = bool(from_domain) and any(
        r.result == "pass" and dmarc.aligned(r.domain, from_domain, "r") for r in dkim_results)
    if dmarc_result.result == "temperror":
        return _tempfail("DNS error during policy check, try again later")
    spf_status = spf_result.result if spf_result else "none"
    if spf_status == "temperror" and dmarc_result.result != "pass" and not dkim_aligned:
        return _tempfail("DNS error during policy check, try again later")
    candidates: list[Verdict] = []
    if dmarc_result.result == "fail":
        if dmarc_result.policy == "reject":
            candidates.append(_act(policy.dmarc_reject,
                                   f"Message rejected by the DMARC policy of {from_domain}"))
        elif dmarc_result.policy == "quarantine":
            candidates.append(_act(policy.dmarc_quarantine,
                                   f"Message quarantined by the DMARC policy of {from_domain}"))
    if spf_status == "fail" and not dkim_aligned and spf_result is not None:
        candidates.append(_act(policy.spf_fail,
                               f"SPF check failed: {spf_result.domain} does not allow this sender"))
    dkim_status = dkim_failure(dkim_results)
    if dkim_status == "fail":
        # The reason names no d= value: it is the sender's text, not checked to be a host name.
        candidates.append(_act(policy.dkim_fail, "DKIM check failed: no signature of this message verifies"))
    strongest = max(candidates, key=lambda v: _RANK.get(v.action, 0), default=ACCEPT)
    if dkim_status == "temperror" and _RANK[policy.dkim_fail] > _RANK.get(strongest.action, 0):
        return _tempfail("DNS error during policy check, try again later")
    return strongest


# Header sections up to this size are parsed on the event loop (about 35 µs per KiB, less than a
# worker-thread round trip below a few KiB); bigger ones go to a thread (DESIGN: big parses).
INLINE_PARSE_LIMIT = 8 * 1024


def _parse(message: bytes) -> tuple[str, str]:
    """(author domain, why there is no usable one). No From field at all: ("", ""), see
    dmarc.NoAuthor."""
    try:
        return dmarc.author_domain(message), ""
    except NoAuthor:
        return "", ""
    except AuthorError as e:
        return "", str(e)


async def _find(resolver: seams.Resolver, author: str, ahead: DmarcAhead | None) -> dmarc.Found:
    if ahead is not None and ahead.domain == author:
        found = await ahead.task  # the same lookup, started at MAIL FROM
        if found is not None:
            return found
    return await dmarc.find(resolver, author)  # also asked again after a failed look-ahead


async def check_data(resolver: seams.Resolver, policy: PolicyConfig, authserv_id: str,
                     spf_result: SpfResult | None, message: bytes, *, enforce: bool = True,
                     rand: Callable[[], float] = random.random,
                     dmarc_ahead: DmarcAhead | None = None) -> Assessment:
    """At DATA: verify DKIM, evaluate DMARC, decide. `spf_result` is what check_mail returned
    (None if SPF was not checked). enforce=False (see `applies`) computes and records the
    results but always accepts. `dmarc_ahead`: the look-ahead started at MAIL FROM, if any.

    The DMARC record lookup needs only the From domain, so for signed mail it runs while DKIM is
    verified; unsigned mail (dkim.has_signature) costs no worker thread at all."""
    if authresults.header_end(message) <= INLINE_PARSE_LIMIT:
        author, author_err = _parse(message)
    else:
        author, author_err = await asyncio.to_thread(_parse, message)
    notes: list[str] = []
    found: dmarc.Found = None
    # ARC (RFC 8617 §5.2): verified alongside DKIM, only when the message carries a seal.
    arc_task = asyncio.ensure_future(arc.verify(resolver, message)) if arc.has_seal(message) else None
    if author_err or not author:
        dkim_results = await dkim.verify(resolver, message)
    elif dkim.has_signature(message):
        async with asyncio.TaskGroup() as tg:
            dkim_task = tg.create_task(dkim.verify(resolver, message))  # as received: signed as sent
            found_task = tg.create_task(_find(resolver, author, dmarc_ahead))
        dkim_results, found = dkim_task.result(), found_task.result()
    else:
        dkim_results, found = [], await _find(resolver, author, dmarc_ahead)
    if author_err:
        dmarc_result = DmarcResult("permerror", "none", "", reason=author_err)
    elif not author:
        dmarc_result = DmarcResult("none", "none", "", reason="message has no From header field")
    else:
        ids = dmarc.Identities(
            spf_result.result if spf_result else "none", spf_result.domain if spf_result else "",
            tuple(r.domain for r in dkim_results if r.result == "pass"),
            tuple(r.domain for r in dkim_results if r.result == "temperror"))
        dmarc_result = dmarc.conclude(found, author, ids, rand)
    verdict = decide(policy, spf_result, dkim_results, dmarc_result, author_err)
    if not enforce and verdict.action != "accept":
        notes.append(f"not enforced for this client: {verdict.action}: {verdict.reason}")
        verdict = ACCEPT
    arc_status = await arc_task if arc_task is not None else "none"
    headers = authresults.format_auth_results(authserv_id, spf_result, dkim_results, dmarc_result, arc_status)
    if spf_result is not None:
        headers += authresults.format_received_spf(authserv_id, spf_result.result, spf_result.ip,
                                                   spf_result.sender if spf_result.identity == "mailfrom"
                                                   else "", spf_result.helo, spf_result.identity)
    return Assessment(verdict, spf_result, dkim_results, dmarc_result, headers, author, notes, arc_status)


__all__ = ["Verdict", "Assessment", "ACCEPT", "DEV_LOOPBACK", "DmarcAhead", "applies", "check_mail", "check_data",
           "decide", "dkim_failure", "dmarc_ahead_domain", "look_ahead", "unchecked", "unchecked_reason"]
