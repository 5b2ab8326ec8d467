"""DNS lookups for the whole server, over dnspython's asyncio resolver, with one answer cache.

Owns: asking the configured nameservers (config `dns.nameservers`, `dns.timeout`) for MX, TXT, A,
AAAA and PTR, and the one mapping of DNS outcomes to our vocabulary:
- NXDOMAIN and NOERROR/NODATA -> an empty list (`mx()` alone raises `DomainNotFound` on NXDOMAIN,
  because delivery must tell "no such domain" from "no MX, use the implicit MX", RFC 5321 §5.1);
- SERVFAIL, REFUSED, timeout, network errors -> `errors.DnsTempError` (451 4.4.3).

Also owns the answer cache (config `dns.cache_size`, `dns.cache_max_ttl`): one dnspython
`LRUCache` per Resolver, bounded in entries, that every lookup of that Resolver goes through, the
async ones (MX for delivery, DMARC's TXT, DNSBL) and the sync twins' (pyspf, dkimpy, ARC) alike, so
an SPF check after a DMARC lookup of the same name sends no second query. The LRUCache takes a lock
around every get and put, so the event loop and worker threads share it safely. An answer is kept
for its TTL (the smallest TTL along a CNAME chain), at most `cache_max_ttl`; a negative answer
(NXDOMAIN, NODATA) for min(SOA TTL, SOA MINIMUM) of its authority section (RFC 2308 §5, computed by
dnspython), at most `cache_max_ttl` too, and not at all when it carries no SOA (RFC 2308 §5: "SHOULD
NOT be cached"; dnspython would keep it 300 s). Failures (SERVFAIL, timeouts) are never cached, nor
answers over MAX_CACHED_ANSWER octets, so memory stays bounded (about 4 KB per typical entry).
`cache_size = 0` turns the cache off: every lookup asks the nameservers. Each Resolver has its own
cache, so a reload (which builds a new Resolver, app.py) starts empty: the nameservers may have
changed and the old cache holds the old ones' answers, and a reload is the operator's way to make a
just-fixed record count at once; the price is one query per name in use, once.
A recursive resolver on the host (unbound) is still recommended: it validates DNSSEC and shares
its cache with the host; ours only saves the round trip and the parsing per message.

Also owns `sync_resolver()`: a blocking dnspython resolver with the same nameservers, timeout and
cache, for pyspf and dkimpy, which are synchronous libraries and run in a worker thread
(policy/spf.py, policy/dkim.py). They cannot await our asyncio resolver from inside that thread
without blocking on the event loop, so they get a sync twin built from the same config; the answers
are the same. The twin is built once per thread and kept (call it from the thread that uses it):
building one costs a gethostname() and a nameserver list each time, and a Resolver's settings never
change (a reload builds a new Resolver).
Does not own: policy decisions (policy/), next-hop ordering (dns/nexthop.py), the DNSBL verdict
cache (policy/dnsbl.py, which also keeps temporary errors for a while).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from mailhaven.config import DnsConfig, split_hostport
from mailhaven.errors import DnsTempError, PermFailure


class DomainNotFound(PermFailure):
    """Domain does not exist (NXDOMAIN)."""

    code, enhanced = 550, "5.1.2"  # RFC 3463 §3.2: bad destination system address


def _nameservers(specs: Sequence[str]) -> list[dns.nameserver.Nameserver]:
    out: list[dns.nameserver.Nameserver] = []
    for spec in specs:
        host, port = split_hostport(spec, 53)
        out.append(dns.nameserver.Do53Nameserver(host, port))
    return out


# Answers larger than this on the wire (octets) are not cached. Memory per entry: about 4 KB for a
# typical one (a 470-octet DKIM key answer, parsed, and its wire copy), 11 KB for a 3.9 KB one; so
# the cache stays within about cache_size * 11 KB even when a sender's zones serve huge TXT sets.
# Real answers are well under it: a 4096-bit DKIM key is ~800 octets, and large apex TXT sets fit.
MAX_CACHED_ANSWER = 4096


class _Cache(dns.resolver.LRUCache):
    """dnspython's bounded, thread-safe LRU answer cache, with our rules on the way in: no
    negative answer without an SOA (RFC 2308 §5), no answer over MAX_CACHED_ANSWER octets, and
    no answer kept longer than `max_ttl`."""

    def __init__(self, max_size: int, max_ttl: float) -> None:
        super().__init__(max_size)
        self.max_ttl = max_ttl

    def put(self, key: dns.resolver.CacheKey, value: dns.resolver.Answer) -> None:
        if value.rrset is None and not _soa(value.response):
            return
        if len(getattr(value.response, "wire", None) or b"") > MAX_CACHED_ANSWER:
            return
        # The Answer was made for this put by dnspython a moment ago; no one else holds it yet.
        value.expiration = min(value.expiration, time.time() + self.max_ttl)
        super().put(key, value)


def _configure(r: dns.resolver.BaseResolver, nameservers: Sequence[str], timeout: float,
               cache: _Cache | None) -> None:
    if nameservers:
        r.nameservers = _nameservers(nameservers)
    r.timeout = timeout  # per attempt
    r.lifetime = timeout  # whole query, all servers and retries
    r.cache = cache
    r.use_search_by_default = False


def _txt_joined(rdata: Any) -> str:
    # RFC 7208 §3.3 / RFC 6376 §3.6.2.2: the character-strings of one record are concatenated.
    return b"".join(rdata.strings).decode("utf-8", "replace")


class Resolver:
    """Async DNS resolver. `Resolver(["127.0.0.1:5353"], timeout=2.0)`; empty list = resolv.conf.

    cache_size: answers kept (0 = no cache); cache_max_ttl: longest any is kept, in seconds. The
    defaults are config [dns]'s."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 5.0, *,
                 cache_size: int = 5000, cache_max_ttl: float = 3600.0) -> None:
        self.nameservers = list(nameservers)
        self.timeout = timeout
        self.cache = _Cache(cache_size, cache_max_ttl) if cache_size > 0 else None
        self._r = dns.asyncresolver.Resolver(configure=not self.nameservers)
        _configure(self._r, self.nameservers, timeout, self.cache)
        self._local = threading.local()  # this Resolver's sync twin, one per thread
        self._ad: dns.asyncresolver.Resolver | None = None  # secure(): asks for DNSSEC status

    def _secure_resolver(self) -> dns.asyncresolver.Resolver:
        """A twin that sets AD and DO on its queries, with its own cache (an answer cached by the
        plain resolver carries no AD bit, so the two must not share one)."""
        if self._ad is None:
            r = dns.asyncresolver.Resolver(configure=not self.nameservers)
            cache = _Cache(self.cache.max_size, self.cache.max_ttl) if self.cache is not None else None
            _configure(r, self.nameservers, self.timeout, cache)
            r.use_edns(0, dns.flags.DO, 1232)
            r.flags = dns.flags.RD | dns.flags.AD  # RFC 6840 §5.7: ask for the AD bit
            self._ad = r
        return self._ad

    @classmethod
    def from_config(cls, cfg: DnsConfig) -> Resolver:
        return cls(cfg.nameservers, cfg.timeout, cache_size=cfg.cache_size, cache_max_ttl=cfg.cache_max_ttl)

    def sync_resolver(self) -> dns.resolver.Resolver:
        """A blocking dnspython resolver with the same nameservers, timeout and cache (for worker
        threads).

        The same object for every call from one thread (built on first use, never shared between
        threads), so call it inside the worker thread that resolves with it. The cache is shared
        with the async resolver and every other thread's twin."""
        r: dns.resolver.Resolver | None = getattr(self._local, "sync", None)
        if r is None:
            r = dns.resolver.Resolver(configure=not self.nameservers)
            _configure(r, self.nameservers, self.timeout, self.cache)
            self._local.sync = r
        return r

    async def _query(self, name: str | dns.name.Name, rdtype: str) -> dns.resolver.Answer | None:
        """The answer, None for NODATA/NXDOMAIN; raises DomainNotFound on NXDOMAIN if asked."""
        try:
            return await self._r.resolve(name, rdtype, search=False, raise_on_no_answer=True)
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NXDOMAIN:
            raise _NxDomain() from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as e:
            raise DnsTempError(f"DNS lookup of {_short(name)} {rdtype} failed temporarily") from e
        except dns.resolver.NoResolverConfiguration as e:
            raise DnsTempError("no DNS resolver configured") from e
        except dns.name.EmptyLabel as e:
            raise _NxDomain() from e
        except (dns.exception.DNSException, OSError) as e:
            if isinstance(e, dns.exception.SyntaxError | dns.name.LabelTooLong | dns.name.NameTooLong):
                raise _NxDomain() from e  # a name that cannot exist
            raise DnsTempError(f"DNS lookup of {_short(name)} {rdtype} failed temporarily") from e

    async def _records(self, name: str | dns.name.Name, rdtype: str) -> list[Any]:
        try:
            ans = await self._query(name, rdtype)
        except _NxDomain:
            return []
        return list(ans) if ans is not None else []

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        """[(preference, host)] with hosts lower-case without the final dot ("." stays "." for a
        null MX, RFC 7505). [] when the domain has no MX. Raises DomainNotFound, DnsTempError."""
        try:
            ans = await self._query(domain, "MX")
        except _NxDomain:
            raise DomainNotFound(f"domain {_short(domain)} does not exist") from None
        if ans is None:
            return []
        out = []
        for r in ans:
            host = r.exchange.to_text(omit_final_dot=True).lower() or "."
            out.append((int(r.preference), host))
        return out

    async def txt(self, name: str) -> list[str]:
        """One string per TXT record, its character-strings joined. [] if none."""
        return [_txt_joined(r) for r in await self._records(name, "TXT")]

    async def a(self, name: str) -> list[str]:
        return [r.address for r in await self._records(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [r.address for r in await self._records(name, "AAAA")]

    async def a_ttl(self, name: str) -> tuple[list[str], int]:
        """A records of name and how long the answer may be kept (seconds): the TTL of the answer,
        or for NXDOMAIN/NODATA the negative TTL of RFC 2308 §5 (min of the SOA's TTL and MINIMUM
        in the authority section), NEGATIVE_TTL when the server sent no SOA. An answer from our
        cache counts the time it has spent there (an NXDOMAIN from the cache gives its whole
        negative TTL again: dnspython keeps no expiry on the exception). For callers that cache
        (policy/dnsbl.py). Raises DnsTempError."""
        try:
            ans = await self._r.resolve(name, "A", search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as e:
            responses = list((e.kwargs.get("responses") or {}).values())
            return [], _negative_ttl(responses[0] if responses else None)
        except (dns.name.EmptyLabel, dns.exception.SyntaxError, dns.name.LabelTooLong, dns.name.NameTooLong):
            return [], NEGATIVE_TTL  # a name that cannot exist
        except (dns.exception.DNSException, OSError) as e:
            raise DnsTempError(f"DNS lookup of {_short(name)} A failed temporarily") from e
        if ans.rrset is None:
            return [], min(_negative_ttl(ans.response), _left(ans))
        return [r.address for r in ans.rrset], min(int(ans.rrset.ttl), _left(ans))

    async def addresses(self, name: str) -> list[str]:
        """IPv6 then IPv4 addresses of name. Raises DnsTempError only if both lookups failed
        temporarily or one failed and the other found nothing (an answer we cannot trust)."""
        results: list[str] = []
        errors: list[DnsTempError] = []
        for fn in (self.aaaa, self.a):
            try:
                results.extend(await fn(name))
            except DnsTempError as e:
                errors.append(e)
        if errors and not results:
            raise errors[0]
        return results

    def loopback_only(self) -> bool:
        """Whether every nameserver asked (configured, or from resolv.conf) is on this host: only
        then is the AD bit worth trusting (RFC 6698 §4.1 / RFC 7672 §2.1.1: a validating resolver
        on a trusted path; a remote resolver's AD bit can be forged on the way)."""
        import ipaddress

        try:
            return all(ipaddress.ip_address(ns if isinstance(ns, str) else str(getattr(ns, "address", ""))).is_loopback
                       for ns in self._r.nameservers)
        except ValueError:
            return False

    async def secure(self, name: str, rdtype: str) -> tuple[list[Any], bool]:
        """The records of `name` and whether the configured resolver said they are DNSSEC-validated
        (the AD bit, RFC 4035 §3.2.3). As Postfix does for DANE, AD is trusted from the configured
        nameservers only: they must be a validating resolver on a trusted path (localhost).
        ([], False) for NXDOMAIN and NODATA. Raises DnsTempError."""
        try:
            ans = await self._secure_resolver().resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.name.EmptyLabel, dns.exception.SyntaxError, dns.name.LabelTooLong,
                dns.name.NameTooLong):
            return [], False
        except (dns.exception.DNSException, OSError) as e:
            raise DnsTempError(f"DNS lookup of {_short(name)} {rdtype} failed temporarily") from e
        ad = bool(ans.response.flags & dns.flags.AD)
        return (list(ans.rrset) if ans.rrset is not None else []), ad

    async def ptr(self, ip: str) -> list[str]:
        """Host names of an IP address (reverse DNS), without the final dot. [] if none."""
        try:
            rev = dns.reversename.from_address(ip)
        except (dns.exception.SyntaxError, ValueError):
            return []
        return [r.target.to_text(omit_final_dot=True).lower() for r in await self._records(rev, "PTR")]


class _NxDomain(Exception):
    pass


NEGATIVE_TTL = 60  # seconds a negative answer without SOA is kept by callers that cache (a_ttl)


def _soa(response: Any) -> Any:
    """The SOA rrset in the authority section of a response, or None."""
    for rrset in getattr(response, "authority", None) or ():
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return rrset
    return None


def _negative_ttl(response: Any) -> int:
    """RFC 2308 §5: a negative answer is cached for min(SOA TTL, SOA MINIMUM) of its authority
    section; NEGATIVE_TTL when there is no SOA there."""
    soa = _soa(response)
    return NEGATIVE_TTL if soa is None else int(min(soa.ttl, soa[0].minimum))


def _left(ans: dns.resolver.Answer) -> int:
    """Whole seconds until the answer expires (from the cache or fresh, capped by the cache)."""
    return max(0, math.ceil(ans.expiration - time.time()))


def _short(name: str | dns.name.Name) -> str:
    text = str(name)
    return text[:100]


__all__ = ["Resolver", "DomainNotFound", "DnsTempError"]
