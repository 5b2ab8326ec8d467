"""policy/dnsbl.py: query names (RFC 5782 §2.1, §2.4), what answers mean (§2.3 and the
127.255.255.x refusal codes), and the cached lookup against the tests' real DNS server."""

from __future__ import annotations

import pytest

from mailhaven.dns.resolver import Resolver
from mailhaven.policy import dnsbl
from tests.dnsserver import DnsServer


def test_ipv4_octets_are_reversed() -> None:
    # RFC 5782 §2.1's own example
    assert dnsbl.query_name("192.0.2.99", "bad.example.com") == "99.2.0.192.bad.example.com"


def test_ipv6_nibbles_are_reversed() -> None:
    # RFC 5782 §2.4's own example
    assert dnsbl.query_name("2001:db8:1:2:3:4:567:89ab", "ugly.example.com") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com")


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4_and_zone_is_normalised() -> None:
    assert dnsbl.query_name("::ffff:192.0.2.99", "Zen.Spamhaus.Org.") == "99.2.0.192.zen.spamhaus.org"


def test_not_an_address_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        dnsbl.query_name("mail.example", "bl.test")


@pytest.mark.parametrize(("answer", "status"), [
    ([], "clear"),
    (["127.0.0.2"], "listed"),
    (["127.0.0.4", "127.0.0.10"], "listed"),
    (["127.255.255.254"], "refused"),  # Spamhaus: query through a public resolver
    (["127.255.255.255"], "refused"),  # Spamhaus: too many queries
    (["127.255.255.252"], "refused"),
    (["192.0.2.7"], "bogus"),  # a resolver that rewrites NXDOMAIN to an ad server
    (["127.255.255.254", "127.0.0.2"], "listed"),
])
def test_classify(answer: list[str], status: str) -> None:
    assert dnsbl.classify(answer) == status


def test_exempt_networks() -> None:
    assert dnsbl.exempt("192.0.2.7", ["192.0.2.0/24"])
    assert dnsbl.exempt("::ffff:192.0.2.7", ["192.0.2.0/24"])
    assert dnsbl.exempt("2001:db8::1", ["2001:db8::/32"])
    assert not dnsbl.exempt("192.0.3.7", ["192.0.2.0/24", "::/0"])
    assert not dnsbl.exempt("junk", ["0.0.0.0/0"])


async def test_lookup_is_cached_for_the_answers_ttl(dns_server: DnsServer) -> None:
    now = [1000.0]
    checker = dnsbl.Checker(clock=lambda: now[0])
    # The Checker's own cache on its fake clock: no resolver cache (real time) beneath it.
    resolver = Resolver([dns_server.nameserver], timeout=1.0, cache_size=0)
    dns_server.add("2.0.0.127.bl.test", "A", "127.0.0.2")  # the test server's TTL is 60 s
    rep = await checker.check(resolver, "127.0.0.2", ["bl.test"], [])
    assert rep.blocked == ("bl.test",) and rep.asked
    await checker.check(resolver, "127.0.0.2", ["bl.test"], [])
    now[0] += 59
    await checker.check(resolver, "127.0.0.2", ["bl.test"], [])
    assert dns_server.queried("2.0.0.127.bl.test", "A") == 1 and checker.queries == 1
    now[0] += 2  # past the TTL: asked again
    await checker.check(resolver, "127.0.0.2", ["bl.test"], [])
    assert dns_server.queried("2.0.0.127.bl.test", "A") == 2


async def test_negative_answers_are_cached_too(dns_server: DnsServer, resolver: Resolver) -> None:
    checker = dnsbl.Checker()
    for _ in range(3):
        rep = await checker.check(resolver, "192.0.2.1", ["bl.test"], [])
        assert rep.blocked == () and rep.ignored == ()
    assert dns_server.queried("1.2.0.192.bl.test") == 1


async def test_cache_is_bounded(dns_server: DnsServer, resolver: Resolver) -> None:
    checker = dnsbl.Checker(max_entries=5)
    for i in range(12):
        await checker.lookup(resolver, f"192.0.2.{i}", "bl.test")
    assert len(checker) == 5


async def test_ipv6_client_in_a_list_over_real_dns(dns_server: DnsServer, resolver: Resolver) -> None:
    ip = "2001:db8::25"
    dns_server.add(dnsbl.query_name(ip, "bl.test"), "A", "127.0.0.2")
    dns_server.add(dnsbl.query_name(ip, "wl.test"), "A", "127.0.10.0")
    rep = await dnsbl.Checker().check(resolver, ip, ["bl.test"], ["wl.test"])
    assert rep.blocked == ("bl.test",) and rep.allowed == ("wl.test",)


async def test_refusal_codes_bogus_answers_and_errors_are_ignored_not_listings(
        dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("9.2.0.192.refusing.test", "A", "127.255.255.254")
    dns_server.add("9.2.0.192.hijacked.test", "A", "198.51.100.80")
    dns_server.set_servfail("9.2.0.192.broken.test")
    rep = await dnsbl.Checker().check(resolver, "192.0.2.9", ["refusing.test", "hijacked.test", "broken.test"],
                                      [])
    assert rep.blocked == ()
    assert {(a.zone, a.status) for a in rep.ignored} == {
        ("refusing.test", "refused"), ("hijacked.test", "bogus"), ("broken.test", "error")}
