"""The resolver's answer cache (dns/resolver.py), against the test DNS server, counting the queries
that reach it: answers are kept for their TTL, negative ones for their SOA minimum, both at most
`cache_max_ttl`; the cache holds `cache_size` answers; pyspf in a worker thread and the async
lookups share it; `cache_size = 0` turns it off."""

from __future__ import annotations

import asyncio

import pytest

from mailhaven.dns.resolver import DomainNotFound, Resolver
from mailhaven.errors import DnsTempError
from mailhaven.policy import spf
from tests.dnsserver import DnsServer


def _resolver(server: DnsServer, cache_size: int = 5000, cache_max_ttl: float = 3600) -> Resolver:
    return Resolver([server.nameserver], timeout=1.0, cache_size=cache_size, cache_max_ttl=cache_max_ttl)


async def test_a_second_lookup_within_the_ttl_sends_no_query_and_after_it_one(dns_server: DnsServer) -> None:
    dns_server.add("example.net", "TXT", "v=spf1 -all", ttl=1)
    r = _resolver(dns_server)
    assert await r.txt("example.net") == ["v=spf1 -all"]
    assert await r.txt("example.net") == ["v=spf1 -all"]
    assert dns_server.queried("example.net", "TXT") == 1
    await asyncio.sleep(1.1)  # past the TTL
    assert await r.txt("example.net") == ["v=spf1 -all"]
    assert dns_server.queried("example.net", "TXT") == 2


async def test_each_name_and_type_is_cached_on_its_own(dns_server: DnsServer) -> None:
    dns_server.add("example.net", "TXT", "text")
    dns_server.add("example.net", "MX", "10 mx.example.net.")
    dns_server.add("other.example", "TXT", "other")
    r = _resolver(dns_server)
    for _ in range(2):
        assert await r.txt("example.net") == ["text"]
        assert await r.mx("example.net") == [(10, "mx.example.net")]
        assert await r.txt("other.example") == ["other"]
    assert [q[:2] for q in dns_server.queries] == [("example.net.", "TXT"), ("example.net.", "MX"),
                                                   ("other.example.", "TXT")]


async def test_nxdomain_is_cached_for_the_soa_minimum_and_for_every_type(dns_server: DnsServer) -> None:
    dns_server.set_soa("neg.test", minimum=1, ttl=60)  # RFC 2308 §5: min(SOA TTL, MINIMUM) = 1 s
    r = _resolver(dns_server)
    assert await r.txt("gone.neg.test") == []
    assert await r.txt("gone.neg.test") == []
    with pytest.raises(DomainNotFound):  # NXDOMAIN is about the name: no MX query either
        await r.mx("gone.neg.test")
    assert dns_server.queried("gone.neg.test") == 1
    await asyncio.sleep(1.1)
    dns_server.add("gone.neg.test", "TXT", "back")
    assert await r.txt("gone.neg.test") == ["back"]
    assert dns_server.queried("gone.neg.test") == 2


async def test_nodata_is_cached_for_the_soa_minimum(dns_server: DnsServer) -> None:
    dns_server.set_soa("example.net", minimum=30)
    dns_server.add("example.net", "TXT", "no mx here")
    r = _resolver(dns_server)
    assert await r.mx("example.net") == []
    assert await r.mx("example.net") == []
    assert await r.a_ttl("example.net") == ([], 30)
    addresses, ttl = await r.a_ttl("example.net")  # from the cache, a moment later
    assert addresses == [] and 29 <= ttl <= 30
    assert dns_server.queried("example.net", "MX") == 1 and dns_server.queried("example.net", "A") == 1


async def test_a_negative_answer_without_soa_is_not_cached(dns_server: DnsServer) -> None:
    # RFC 2308 §5: "Negative responses without SOA records SHOULD NOT be cached".
    r = _resolver(dns_server)
    assert await r.txt("new.example") == []
    dns_server.add("new.example", "TXT", "now here")
    assert await r.txt("new.example") == ["now here"]
    assert dns_server.queried("new.example") == 2


async def test_failures_are_not_cached(dns_server: DnsServer) -> None:
    dns_server.set_servfail("flaky.example")
    r = _resolver(dns_server)
    for _ in range(2):
        with pytest.raises(DnsTempError):
            await r.txt("flaky.example")
    assert dns_server.queried("flaky.example") == 2


async def test_cache_max_ttl_bounds_positive_and_negative_answers(dns_server: DnsServer) -> None:
    dns_server.add("long.example", "TXT", "kept a day", ttl=86400)
    dns_server.set_soa("neg.test", minimum=3600)
    r = _resolver(dns_server, cache_max_ttl=1)
    assert await r.txt("long.example") == ["kept a day"]
    assert await r.txt("gone.neg.test") == []
    assert await r.txt("long.example") == ["kept a day"]
    assert await r.txt("gone.neg.test") == []
    assert dns_server.queried("long.example") == 1 and dns_server.queried("gone.neg.test") == 1
    await asyncio.sleep(1.1)
    assert await r.txt("long.example") == ["kept a day"]
    assert await r.txt("gone.neg.test") == []
    assert dns_server.queried("long.example") == 2 and dns_server.queried("gone.neg.test") == 2


async def test_a_ttl_from_the_cache_counts_the_time_spent_there(dns_server: DnsServer) -> None:
    dns_server.add("2.0.0.127.bl.test", "A", "127.0.0.2", ttl=60)
    r = _resolver(dns_server)
    assert await r.a_ttl("2.0.0.127.bl.test") == (["127.0.0.2"], 60)
    await asyncio.sleep(1.1)
    assert await r.a_ttl("2.0.0.127.bl.test") == (["127.0.0.2"], 59)
    assert dns_server.queried("2.0.0.127.bl.test") == 1


async def test_the_cache_holds_at_most_cache_size_answers_least_recently_used_out(dns_server: DnsServer) -> None:
    for name in ("a.example", "b.example", "c.example"):
        dns_server.add(name, "TXT", name)
    r = _resolver(dns_server, cache_size=2)
    for name in ("a.example", "b.example", "a.example", "c.example"):  # b is the least recently used
        assert await r.txt(name) == [name]
    assert r.cache is not None and len(r.cache.data) == 2
    assert await r.txt("a.example") == ["a.example"]
    assert await r.txt("c.example") == ["c.example"]
    assert await r.txt("b.example") == ["b.example"]
    assert [dns_server.queried(n) for n in ("a.example", "b.example", "c.example")] == [1, 2, 1]


async def test_an_answer_over_4096_octets_is_not_cached_one_under_it_is(dns_server: DnsServer) -> None:
    dns_server.add("big.example", "TXT", "x" * 4200)  # > 4096 octets on the wire (over TCP)
    dns_server.add("large.example", "TXT", "y" * 3500)
    r = _resolver(dns_server)
    for _ in range(2):
        assert await r.txt("big.example") == ["x" * 4200]
        assert await r.txt("large.example") == ["y" * 3500]

    def tcp_queries(name: str) -> int:
        return sum(1 for q in dns_server.queries if q[0] == name and q[2] == "tcp")

    assert tcp_queries("big.example.") == 2 and tcp_queries("large.example.") == 1


async def test_spf_in_a_worker_thread_uses_what_the_async_lookup_cached(dns_server: DnsServer) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    r = _resolver(dns_server)
    assert await r.txt("sender.test") == ["v=spf1 ip4:127.0.0.1 -all"]  # DMARC-style async lookup
    assert (await spf.check_host(r, "127.0.0.1", "a@sender.test", "client.sender.test")).result == "pass"
    assert (await spf.check_host(r, "127.0.0.1", "b@sender.test", "client.sender.test")).result == "pass"
    assert dns_server.queried("sender.test") == 1


async def test_the_async_lookup_uses_what_spf_cached_in_its_thread(dns_server: DnsServer) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 a:mta.sender.test -all")
    dns_server.add("mta.sender.test", "A", "127.0.0.1")
    r = _resolver(dns_server)
    assert (await spf.check_host(r, "127.0.0.1", "a@sender.test", "h")).result == "pass"
    assert await r.txt("sender.test") == ["v=spf1 a:mta.sender.test -all"]
    assert await r.a("mta.sender.test") == ["127.0.0.1"]
    assert dns_server.queried("sender.test") == 1 and dns_server.queried("mta.sender.test") == 1


async def test_cache_size_0_sends_every_lookup(dns_server: DnsServer) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.set_soa("neg.test", minimum=3600)
    r = _resolver(dns_server, cache_size=0)
    assert r.cache is None
    assert await r.txt("sender.test") == ["v=spf1 ip4:127.0.0.1 -all"]
    assert await r.txt("sender.test") == ["v=spf1 ip4:127.0.0.1 -all"]
    assert (await spf.check_host(r, "127.0.0.1", "a@sender.test", "h")).result == "pass"
    assert await r.txt("gone.neg.test") == [] and await r.txt("gone.neg.test") == []
    assert dns_server.queried("sender.test") == 3 and dns_server.queried("gone.neg.test") == 2
