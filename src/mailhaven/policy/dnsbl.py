"""Connection reputation from DNS block lists and allow lists (RFC 5782), asked over our resolver.

Owns: the query name of a client address in a list (`query_name`: IPv4 octets reversed, RFC 5782
§2.1; IPv6 32 nibbles reversed, §2.4), what a list's answer means (`classify`: an address in
127.0.0.0/8 is a listing, §2.3; 127.255.255.0/24 is the "you query through an open or public
resolver / too many queries" code Spamhaus and others return instead of an answer, and anything
outside 127.0.0.0/8 is a resolver that rewrites NXDOMAIN: both are ignored, never a listing), the
lookups with a cache kept for the answer's TTL and bounded in size (`Checker`), and the
`Reputation` of one client (which block lists and which allow lists name it, which answers were
ignored and why).
Does not own: when to ask and what a listing does (smtp/inbound.py: 554 5.7.1 at RCPT for a block
list, no greylisting for an allow list), the reply text (smtp/replies.py), `doctor`'s test of
each list (doctor.py).

A list that cannot be asked (timeout, SERVFAIL) counts as "not listed" for that client, as
Postfix's reject_rbl_client does: a broken list must not stop the mail.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from mailhaven.netaddr import client_ip

Status = Literal["listed", "clear", "refused", "bogus", "error"]

LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")
# Spamhaus's return codes for queries it will not answer: 127.255.255.252 typo in the list name,
# .254 query through a public/open resolver, .255 excessive number of queries. Other lists use the
# same range. RFC 5782 §2.3 reserves 127.0.0.0/8 for answers; this /24 is never a listing.
REFUSED_NET = ipaddress.ip_network("127.255.255.0/24")
MAX_ENTRIES = 50_000  # cached answers (one per client address and list)
MAX_TTL = 3600  # longest an answer is kept, whatever its TTL
MIN_TTL = 10  # shortest (a TTL of 0 would ask again on every RCPT)
ERROR_TTL = 10  # a failed lookup is not asked again for this long (a dead list must not slow every RCPT)


WARN_EVERY = 600.0  # seconds between two warnings about the same list and reason
# What the log and `doctor` tell the admin about an ignored answer.
ADVICE: dict[str, str] = {
    "refused": "this list refuses queries through your resolver (open/public resolver): use a local resolver",
    "bogus": "your resolver answers outside 127.0.0.0/8 (it rewrites NXDOMAIN): use a resolver that does not",
    "error": "the list did not answer (timeout or server failure): check [dns] and the list name",
}


class ResolverLike(Protocol):
    async def a_ttl(self, name: str) -> tuple[list[str], int]: ...


def query_name(ip: str, zone: str) -> str:
    """The name to look up for client `ip` in list `zone` (raises ValueError for a non-address).

    RFC 5782 §2.1: IPv4 192.0.2.99 -> 99.2.0.192.zone; §2.4: IPv6 -> its 32 nibbles, least
    significant first, dot-separated. An IPv4-mapped IPv6 address (::ffff:192.0.2.99, what a
    dual-stack socket reports) is the IPv4 client it stands for."""
    addr = client_ip(ip)
    zone = zone.strip(".").lower()
    if isinstance(addr, ipaddress.IPv4Address):
        labels = reversed(str(addr).split("."))  # RFC 5782 §2.1
    else:
        labels = reversed(addr.exploded.replace(":", ""))  # RFC 5782 §2.4: nibbles, reversed
    return ".".join(labels) + "." + zone


def classify(addresses: Sequence[str]) -> Status:
    """What a list's A records for a client mean (RFC 5782 §2.3): "listed" when one is in
    127.0.0.0/8 outside 127.255.255.0/24; "refused" when the only 127/8 answers are the
    open-resolver codes; "bogus" when none is in 127/8 (a resolver rewriting NXDOMAIN to a web
    page's address); "clear" for no answer."""
    if not addresses:
        return "clear"
    inside: list[ipaddress.IPv4Address] = []
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv4Address) and ip in LOOPBACK_NET:
            inside.append(ip)
    if any(ip not in REFUSED_NET for ip in inside):
        return "listed"
    return "refused" if inside else "bogus"


@dataclass(frozen=True)
class ListAnswer:
    """One list's answer for one client."""

    zone: str
    status: Status
    codes: tuple[str, ...] = ()  # the A records (for the log), or the error text


@dataclass(frozen=True)
class Reputation:
    """What the configured lists say about one client."""

    ip: str
    blocked: tuple[str, ...] = ()  # block lists that list the client, in config order
    allowed: tuple[str, ...] = ()  # allow lists that list it
    ignored: tuple[ListAnswer, ...] = ()  # refused / bogus / error answers: not a listing
    asked: bool = False  # False: the client is exempt or no list is configured

    @property
    def listed_at(self) -> str:
        """The first block list naming the client ("" when none)."""
        return self.blocked[0] if self.blocked else ""


class Checker:
    """Asks the configured lists about client addresses; answers are cached for their TTL
    (bounded: at most `max_entries`, the oldest dropped first). One per server."""

    def __init__(self, *, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        self._cache: OrderedDict[str, tuple[float, ListAnswer]] = OrderedDict()
        self._max = max_entries
        self._clock = clock
        self.queries = 0  # lookups sent (not answered from the cache)
        self._warned: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def warn_due(self, zone: str, reason: str) -> bool:
        """True at most once per WARN_EVERY seconds for one list and reason (log flood guard)."""
        now = self._clock()
        key = (zone, reason)
        if now - self._warned.get(key, float("-inf")) < WARN_EVERY:
            return False
        if len(self._warned) > 1000:
            self._warned.clear()
        self._warned[key] = now
        return True

    async def lookup(self, resolver: ResolverLike, ip: str, zone: str) -> ListAnswer:
        """One list's answer for one client, from the cache when it is still fresh."""
        name = query_name(ip, zone)
        now = self._clock()
        hit = self._cache.get(name)
        if hit is not None:
            if hit[0] > now:
                return hit[1]
            del self._cache[name]
        self.queries += 1
        try:
            addresses, ttl = await resolver.a_ttl(name)
        except Exception as e:  # noqa: BLE001 - DnsTempError or worse: the list is not asked this time
            answer = ListAnswer(zone, "error", (str(e)[:200],))
            ttl = ERROR_TTL
        else:
            answer = ListAnswer(zone, classify(addresses), tuple(addresses[:8]))
            ttl = max(MIN_TTL, min(MAX_TTL, ttl))
        self._cache[name] = (self._clock() + ttl, answer)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return answer

    async def check(self, resolver: ResolverLike, ip: str, blocklists: Sequence[str],
                    allowlists: Sequence[str]) -> Reputation:
        """Ask every list about `ip` at once; the client's Reputation. Never raises for DNS."""
        try:
            query_name(ip, "x")
        except ValueError:
            return Reputation(ip)
        zones = [*blocklists, *allowlists]
        if not zones:
            return Reputation(ip)
        answers = await asyncio.gather(*(self.lookup(resolver, ip, z) for z in zones))
        block = answers[:len(blocklists)]
        allow = answers[len(blocklists):]
        return Reputation(
            ip,
            blocked=tuple(a.zone for a in block if a.status == "listed"),
            allowed=tuple(a.zone for a in allow if a.status == "listed"),
            ignored=tuple(a for a in answers if a.status in ("refused", "bogus", "error")),
            asked=True,
        )


def exempt(ip: str, networks: Sequence[str]) -> bool:
    """Whether `ip` is in one of `networks` (CIDR strings, validated by config.py). An
    IPv4-mapped IPv6 address is matched as the IPv4 address it stands for."""
    try:
        addr = client_ip(ip)
    except ValueError:
        return False
    for net in networks:
        network = ipaddress.ip_network(net, strict=False)
        if addr.version == network.version and addr in network:
            return True
    return False


__all__ = ["ADVICE", "Checker", "ListAnswer", "Reputation", "ResolverLike", "classify", "exempt", "query_name",
           "REFUSED_NET", "MAX_ENTRIES"]
