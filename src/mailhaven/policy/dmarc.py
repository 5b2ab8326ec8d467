"""DMARC (RFC 7489): does an authenticated identity align with the author's domain, and what does
the author's domain ask us to do when none does?

Owns: the record parser (§6.3, §6.4), policy discovery (§6.6.3: _dmarc.<From domain>, then
_dmarc.<organizational domain>), the organizational domain from the Public Suffix List bundled with
`publicsuffixlist` (§3.2; never downloaded at run time), identifier alignment (§3.1), pct sampling
(§6.6.4) and the RFC5322.From domain (§6.6.1). Does not own: SPF/DKIM evaluation (spf.py, dkim.py)
or the final action (pipeline.py).

RFC5322.From (§6.6.1): several From fields, or a From with no address or addresses in different
domains -> `AuthorError`; pipeline.py treats that as a DMARC permerror and rejects the message
(550 5.7.1), as §6.6.1 allows ("typically rejected"): a reader would see an author whose policy was
never applied. No From field at all -> `NoAuthor` (a subclass): no author is shown, so no domain's
policy is evaded; pipeline.py records dmarc=none and goes on, as Postfix and Dovecot deliver such
mail (bare test messages, some automated senders). Several addresses of the same domain are
evaluated as that one domain.

Parsing is lenient where the RFC lets it be: unknown tags are ignored (§6.3); a syntactically bad
optional tag (sp, adkim, aspf, pct, fo, ri, rf) falls back to its default; a missing or bad "p"
makes the record p=none if a valid "rua" is present (§6.6.3), else the record is ignored.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, Protocol

from publicsuffixlist import PublicSuffixList

from mailhaven.errors import DnsTempError

Policy = Literal["none", "quarantine", "reject"]
Alignment = Literal["r", "s"]
DmarcStatus = Literal["pass", "fail", "none", "temperror", "permerror"]

_POLICIES: tuple[Policy, ...] = ("none", "quarantine", "reject")


class TxtResolver(Protocol):
    async def txt(self, name: str) -> list[str]: ...


@dataclass(frozen=True)
class DmarcRecord:
    p: Policy
    sp: Policy
    adkim: Alignment = "r"
    aspf: Alignment = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    ri: int = 86400


@dataclass(frozen=True)
class DmarcResult:
    result: DmarcStatus
    policy: Policy = "none"  # what to apply: the published (s)p on fail, after pct; "none" otherwise
    domain: str = ""  # the RFC5322.From domain
    record_domain: str = ""  # where the record was found (From domain or organizational domain)
    published: Policy | None = None  # p or sp as published, before pct
    sampled_out: bool = False  # fail, but pct said to apply the next weaker policy (§6.6.4)
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""
    record: DmarcRecord | None = field(default=None, compare=False)  # what was found (aggregate reports)


class AuthorError(ValueError):
    """The message has no single RFC5322.From domain (RFC 7489 §6.6.1)."""


class NoAuthor(AuthorError):
    """The message has no From field at all (nothing to align with; see the module doc)."""


# --- record parsing (pure) -----------------------------------------------------------------------


def _policy(value: str) -> Policy | None:
    v = value.lower()
    for p in _POLICIES:
        if v == p:
            return p
    return None


def _uris(value: str) -> tuple[str, ...]:
    # RFC 7489 §6.4: dmarc-uri *(*WSP "," *WSP dmarc-uri); keep the ones that look like URIs.
    out = []
    for u in value.split(","):
        u = u.strip()
        scheme, sep, rest = u.partition(":")
        if sep and rest and scheme.isalpha():
            out.append(u)
    return tuple(out)


def parse_record(text: str) -> DmarcRecord | None:
    """A DMARC TXT record -> DmarcRecord, or None if it is not a valid DMARC record."""
    parts = [p.strip() for p in text.split(";")]
    if not parts:
        return None
    k, sep, v = parts[0].partition("=")
    if not sep or k.strip() != "v" or v.strip() != "DMARC1":  # RFC 7489 §6.4: v first, exact
        return None
    tags: dict[str, str] = {}
    for part in parts[1:]:
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep:
            continue  # not a tag: ignored like an unknown tag
        tags.setdefault(k.strip().lower(), v.strip())
    rua = _uris(tags.get("rua", ""))
    p = _policy(tags.get("p", ""))
    if p is None:
        if not rua:
            return None  # RFC 7489 §6.6.3: no valid p, no rua -> no DMARC record
        p = "none"  # RFC 7489 §6.6.3: act as p=none
    sp = _policy(tags.get("sp", "")) or p  # RFC 7489 §6.3: sp defaults to p
    adkim: Alignment = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf: Alignment = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    pct = 100
    pv = tags.get("pct", "100")
    if pv.isdigit() and 0 <= int(pv) <= 100:  # RFC 7489 §6.3: 0-100
        pct = int(pv)
    ri = 86400
    rv = tags.get("ri", "")
    if rv.isdigit() and len(rv) <= 10:
        ri = int(rv)
    return DmarcRecord(p=p, sp=sp, adkim=adkim, aspf=aspf, pct=pct, rua=rua,
                       ruf=_uris(tags.get("ruf", "")), fo=tags.get("fo", "0") or "0", ri=ri)


# --- organizational domain and alignment (pure) --------------------------------------------------


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package; never fetched


def _norm(domain: str) -> str:
    return domain.strip().lower().rstrip(".")


def normalize_domain(domain: str) -> str:
    """A domain as this module compares it (author_domain's form): lower case, no final dot."""
    return _norm(domain)


@lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label ("sub.example.co.uk" -> "example.co.uk")."""
    d = _norm(domain)
    if not d:
        return d
    try:
        org = _psl().privatesuffix(d)
    except (ValueError, UnicodeError):
        org = None
    return str(org) if org else d  # a public suffix itself (or odd input) is its own org domain


def aligned(a: str, b: str, mode: Alignment) -> bool:
    """RFC 7489 §3.1.1/§3.1.2: strict = same FQDN; relaxed = same organizational domain."""
    a, b = _norm(a), _norm(b)
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


# --- RFC5322.From (pure) -------------------------------------------------------------------------

_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def author_domain(message: bytes, max_header: int = 1024 * 1024) -> str:
    """The single RFC5322.From domain of message. Raises AuthorError (RFC 7489 §6.6.1)."""
    head = _header_block(message[: max_header + 4])
    msg = _HEADER_PARSER.parsebytes(head)
    froms = msg.get_all("From") or []
    if not froms:
        raise NoAuthor("message has no From header field")
    if len(froms) > 1:
        raise AuthorError("message has more than one From header field")  # RFC 5322 §3.6
    try:
        addrs = email.utils.getaddresses([str(froms[0])])
    except (RecursionError, ValueError, IndexError):  # the parser recurses once per nested comment
        raise AuthorError("From header field cannot be parsed") from None
    domains = {_norm(a.rpartition("@")[2]) for _, a in addrs if "@" in a}
    domains.discard("")
    if not domains:
        raise AuthorError("From header field has no address with a domain")
    if len(domains) > 1:
        raise AuthorError("From header field has addresses in several domains")
    return domains.pop()


def _header_block(message: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = message.find(sep)
        if i >= 0:
            return message[: i + len(sep)]
    return message


# --- evaluation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identities:
    """What SPF and DKIM authenticated, as DMARC needs it (RFC 7489 §4.2)."""

    spf_result: str  # "pass", "fail", ... (only "pass" counts)
    spf_domain: str  # MAIL FROM domain (HELO domain for the null sender)
    dkim_pass_domains: tuple[str, ...] = field(default=())  # d= of every DKIM "pass"
    dkim_temperror_domains: tuple[str, ...] = field(default=())


async def discover(resolver: TxtResolver, from_domain: str) -> tuple[DmarcRecord | None, str]:
    """RFC 7489 §6.6.3 policy discovery -> (record or None, domain where it was found).

    Raises DnsTempError when a lookup failed temporarily."""
    d = _norm(from_domain)
    candidates = [d]
    org = organizational_domain(d)
    if org != d:
        candidates.append(org)
    for dom in candidates:
        texts = await resolver.txt(f"_dmarc.{dom}")
        records = [r for r in (parse_record(t) for t in texts) if r is not None]
        if len(records) == 1:
            return records[0], dom
        if len(records) > 1:
            return None, dom  # RFC 7489 §6.6.3: several records -> no policy, and stop
    return None, ""


def _weaker(p: Policy) -> Policy:
    return "quarantine" if p == "reject" else "none"


def judge(record: DmarcRecord | None, record_domain: str, from_domain: str, ids: Identities,
          rand: Callable[[], float] = random.random) -> DmarcResult:
    """The pure part of evaluation, given the discovered record."""
    d = _norm(from_domain)
    if record is None:
        return DmarcResult("none", "none", d, reason="no DMARC record")
    spf_ok = ids.spf_result == "pass" and aligned(ids.spf_domain, d, record.aspf)  # RFC 7489 §3.1.2
    dkim_ok = any(aligned(x, d, record.adkim) for x in ids.dkim_pass_domains)  # RFC 7489 §3.1.1
    # RFC 7489 §6.3 "sp": applies to subdomains when the record came from the organizational domain.
    published = record.sp if record_domain != d else record.p
    if spf_ok or dkim_ok:
        return DmarcResult("pass", "none", d, record_domain, published, False, spf_ok, dkim_ok, record=record)
    if any(aligned(x, d, record.adkim) for x in ids.dkim_temperror_domains):
        return DmarcResult("temperror", "none", d, record_domain, published,
                           reason="aligned DKIM key lookup failed temporarily", record=record)
    policy = published
    sampled_out = False
    # RFC 7489 §6.6.4: apply to pct% of failing mail; the rest gets the next weaker policy.
    if policy != "none" and record.pct < 100 and rand() * 100 >= record.pct:
        policy, sampled_out = _weaker(policy), True
    return DmarcResult("fail", policy, d, record_domain, published, sampled_out, False, False,
                       reason="no aligned SPF or DKIM pass", record=record)


# What discovery found: (record or None, where), or None when a lookup failed temporarily.
Found = tuple[DmarcRecord | None, str] | None


async def find(resolver: TxtResolver, from_domain: str) -> Found:
    """`discover`, with a temporary DNS failure as None (so it can run beside DKIM verification,
    which it does not depend on: pipeline.py)."""
    try:
        return await discover(resolver, from_domain)
    except DnsTempError:
        return None


def conclude(found: Found, from_domain: str, ids: Identities,
             rand: Callable[[], float] = random.random) -> DmarcResult:
    """The DmarcResult of what `find` returned (pure)."""
    if found is None:
        return DmarcResult("temperror", "none", _norm(from_domain),
                           reason="DMARC record lookup failed temporarily")
    return judge(found[0], found[1], from_domain, ids, rand)


async def evaluate(resolver: TxtResolver, from_domain: str, spf_result: str, spf_domain: str,
                   dkim_pass_domains: Sequence[str], *, dkim_temperror_domains: Sequence[str] = (),
                   rand: Callable[[], float] = random.random) -> DmarcResult:
    """Discover the policy of from_domain and judge the authenticated identities against it."""
    ids = Identities(spf_result, spf_domain, tuple(dkim_pass_domains), tuple(dkim_temperror_domains))
    return conclude(await find(resolver, from_domain), from_domain, ids, rand)


__all__ = ["DmarcRecord", "DmarcResult", "AuthorError", "Identities", "parse_record",
           "organizational_domain", "aligned", "author_domain", "discover", "judge", "evaluate", "Found",
           "find", "conclude", "normalize_domain"]
