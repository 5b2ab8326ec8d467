"""SPF (RFC 7208): is the client IP allowed to send for the MAIL FROM (or HELO) domain?

Owns: running pyspf's check_host() off the event loop, with its DNS lookups sent to OUR configured
nameservers and timeout, and returning a typed SpfResult. Does not own: what to do with the result
(policy/pipeline.py).

Why a thread-local DNS hook: pyspf looks names up through one module-level function, `spf.DNSLookup`.
We install, once, a dispatcher that asks the blocking dnspython resolver stored in a thread-local
(`Resolver.sync_resolver()`: same nameservers, same timeout as the async resolver, kept per thread).
Each check sets that thread-local inside its worker thread, so concurrent checks with different
resolvers (tests, reloads) never see each other's, and pyspf never reads /etc/resolv.conf.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from dataclasses import dataclass
from typing import Any, Literal

import dns.exception
import dns.resolver
import spf

from mailhaven import seams

SpfStatus = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
_STATUSES = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


@dataclass(frozen=True)
class SpfResult:
    result: SpfStatus
    explanation: str
    domain: str  # the domain checked: MAIL FROM's, or HELO's for a null sender
    identity: Literal["mailfrom", "helo"] = "mailfrom"
    sender: str = ""  # the address checked (postmaster@HELO for a null sender)
    ip: str = ""
    helo: str = ""


_local = threading.local()
_original_lookup = spf.DNSLookup


def _lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20) -> list[tuple[Any, Any]]:
    """pyspf's DNSLookup contract: [((name, type), value), ...]; raise spf.TempError on DNS failure."""
    r: dns.resolver.Resolver | None = getattr(_local, "resolver", None)
    if r is None:
        return list(_original_lookup(name, qtype, strict, timeout))
    out: list[tuple[Any, Any]] = []
    try:
        answers = r.resolve(name, qtype, search=False, lifetime=min(timeout, r.lifetime))
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return out  # RFC 7208 §4.3/§5: no record; counted as a void lookup by pyspf
    except (dns.resolver.NoNameservers, dns.exception.Timeout, OSError) as e:
        raise spf.TempError(f"DNS {type(e).__name__}") from e  # RFC 7208 §2.6.6 temperror
    except dns.exception.DNSException as e:
        raise spf.TempError(f"DNS {type(e).__name__}") from e
    for rd in answers:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rd.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rd.preference, rd.exchange.to_text(omit_final_dot=True))))
        elif qtype == "PTR":
            out.append(((name, qtype), rd.target.to_text(omit_final_dot=True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), list(rd.strings)))
        elif qtype == "CNAME":
            out.append(((name, qtype), rd.target.to_text(omit_final_dot=True)))
    return out


spf.DNSLookup = _lookup


def _domain_of(sender: str) -> str:
    return sender.rpartition("@")[2].lower().rstrip(".")


def _check_sync(resolver: seams.Resolver, ip: str, sender: str, helo: str, timeout: float) -> tuple[str, str]:
    _local.resolver = resolver.sync_resolver()  # this worker thread's own
    try:
        # querytime: RFC 7208 §4.6.4 bounds the whole evaluation; 20 s recommended, ours is tighter.
        q = spf.query(i=ip, s=sender, h=helo, timeout=timeout, querytime=max(timeout * 4, timeout))
        result, _code, expl = q.check()
        return str(result), str(expl)
    finally:
        _local.resolver = None


async def check_host(resolver: seams.Resolver, ip: str, mail_from: str, helo: str) -> SpfResult:
    """Evaluate SPF for a client.

    mail_from: the MAIL FROM address ("" for the null sender <>); helo: the HELO/EHLO name.
    RFC 7208 §2.4: with a null MAIL FROM the identity checked is "postmaster@<HELO domain>", which
    makes this the HELO check of §2.3.
    """
    try:
        ip = str(ipaddress.ip_address(ip.split("%", 1)[0]))
    except ValueError:
        return SpfResult("permerror", "invalid client IP", "", ip=ip, helo=helo)
    helo_name = helo.strip().strip("[]")
    identity: Literal["mailfrom", "helo"]
    if mail_from:
        sender, identity = mail_from, "mailfrom"
    else:
        sender, identity = f"postmaster@{helo_name}", "helo"  # RFC 7208 §2.4
    domain = _domain_of(sender)
    if not domain or "." not in domain or _is_ip_literal(domain):
        # RFC 7208 §4.3: not a valid domain -> "none"
        return SpfResult("none", "no valid domain to check", domain, identity, sender, ip, helo)
    try:
        result, expl = await asyncio.to_thread(_check_sync, resolver, ip, sender, helo_name, resolver.timeout)
    except Exception as e:  # pyspf bug or unexpected input: not the sender's fault, try later
        return SpfResult("temperror", f"SPF evaluation error: {type(e).__name__}", domain, identity,
                         sender, ip, helo)
    status: SpfStatus = result if result in _STATUSES else "permerror"  # type: ignore[assignment]
    return SpfResult(status, expl, domain, identity, sender, ip, helo)


def _is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


__all__ = ["SpfResult", "SpfStatus", "check_host"]
