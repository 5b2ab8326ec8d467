"""The test DNS server speaks real DNS, and our Resolver maps its answers and failures correctly."""

from __future__ import annotations

import time

import dns.message
import dns.query
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhaven.dns.resolver import DomainNotFound, Resolver
from mailhaven.errors import DnsTempError
from tests.dnsserver import DnsServer


def _ask(server: DnsServer, name: str, rtype: str, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, "127.0.0.1", timeout=2, port=server.port)


def test_server_answers_udp_and_tcp_on_the_same_port(dns_server: DnsServer) -> None:
    dns_server.add("example.net", "A", "127.0.0.2")
    for tcp in (False, True):
        r = _ask(dns_server, "example.net", "A", tcp=tcp)
        assert r.rcode() == dns.rcode.NOERROR
        assert [rd.address for rd in r.answer[0]] == ["127.0.0.2"]
    assert [q[2] for q in dns_server.queries] == ["udp", "tcp"]


def test_unknown_name_is_nxdomain_and_known_name_without_type_is_nodata(dns_server: DnsServer) -> None:
    dns_server.add("example.net", "A", "127.0.0.2")
    assert _ask(dns_server, "nothere.example.net", "A").rcode() == dns.rcode.NXDOMAIN
    r = _ask(dns_server, "EXAMPLE.net.", "MX")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []


def test_servfail_is_answered_as_servfail(dns_server: DnsServer) -> None:
    dns_server.set_servfail("broken.example")
    assert _ask(dns_server, "broken.example", "TXT").rcode() == dns.rcode.SERVFAIL


async def test_resolver_reads_mx_txt_a_aaaa_ptr(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("example.net", "MX", "10 MX1.example.net.")
    dns_server.add("example.net", "MX", "20 mx2.example.net.")
    dns_server.add("example.net", "TXT", "v=spf1 -all")
    dns_server.add("mx1.example.net", "A", "127.0.0.2")
    dns_server.add("mx1.example.net", "AAAA", "::1")
    dns_server.add_ptr("127.0.0.2", "mx1.example.net")
    assert sorted(await resolver.mx("example.net")) == [(10, "mx1.example.net"), (20, "mx2.example.net")]
    assert await resolver.txt("example.net") == ["v=spf1 -all"]
    assert await resolver.a("mx1.example.net") == ["127.0.0.2"]
    assert await resolver.aaaa("mx1.example.net") == ["::1"]
    assert await resolver.addresses("mx1.example.net") == ["::1", "127.0.0.2"]
    assert await resolver.ptr("127.0.0.2") == ["mx1.example.net"]


async def test_resolver_returns_empty_for_nodata_and_nxdomain(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("example.net", "A", "127.0.0.2")
    assert await resolver.mx("example.net") == []
    assert await resolver.txt("example.net") == []
    assert await resolver.txt("nothere.example.net") == []
    assert await resolver.a("nothere.example.net") == []
    assert await resolver.ptr("127.0.0.9") == []


async def test_mx_of_nonexistent_domain_raises_domain_not_found(dns_server: DnsServer,
                                                                resolver: Resolver) -> None:
    with pytest.raises(DomainNotFound) as ei:
        await resolver.mx("nothere.example")
    assert (ei.value.code, ei.value.enhanced) == (550, "5.1.2")


async def test_null_mx_is_returned_as_dot(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("nomail.example", "MX", "0 .")
    assert await resolver.mx("nomail.example") == [(0, ".")]


async def test_servfail_raises_dns_temp_error(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_servfail("broken.example")
    for call in (resolver.mx, resolver.txt, resolver.a, resolver.addresses):
        with pytest.raises(DnsTempError) as ei:
            await call("broken.example")
        assert (ei.value.code, ei.value.enhanced) == (451, "4.4.3")


async def test_timeout_raises_dns_temp_error_quickly(dns_server: DnsServer, dns_nameserver: str) -> None:
    dns_server.set_timeout("slow.example")
    fast = Resolver([dns_nameserver], timeout=0.3)
    start = time.monotonic()
    with pytest.raises(DnsTempError):
        await fast.txt("slow.example")
    assert time.monotonic() - start < 1.5


async def test_unreachable_nameserver_raises_dns_temp_error() -> None:
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    with pytest.raises(DnsTempError):
        await Resolver([f"127.0.0.1:{port}"], timeout=0.5).a("example.net")


async def test_large_txt_is_fetched_over_tcp_after_truncation(dns_server: DnsServer,
                                                             resolver: Resolver) -> None:
    big = "v=spf1 " + " ".join(f"ip4:10.0.{i}.0/24" for i in range(120)) + " -all"
    assert len(big) > 1500
    dns_server.add("big.example", "TXT", big)
    assert await resolver.txt("big.example") == [big]
    assert [q[2] for q in dns_server.queries] == ["udp", "tcp"]


async def test_forced_truncation_falls_back_to_tcp(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("tc.example", "TXT", "short")
    dns_server.set_truncate("tc.example")
    assert await resolver.txt("tc.example") == ["short"]
    assert dns_server.queried("tc.example", "TXT") == 2


async def test_cname_is_followed(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("alias.example", "CNAME", "real.example.")
    dns_server.add("real.example", "A", "127.0.0.3")
    assert await resolver.a("alias.example") == ["127.0.0.3"]


async def test_zone_changes_are_seen_immediately_when_the_ttl_is_0(dns_server: DnsServer,
                                                                   resolver: Resolver) -> None:
    # The way for a test to change a record it has looked up already (the resolver caches by TTL:
    # tests/integration/test_dns_cache.py).
    dns_server.add("example.net", "TXT", "one", ttl=0)
    assert await resolver.txt("example.net") == ["one"]
    dns_server.clear()
    dns_server.add("example.net", "TXT", "two", ttl=0)
    assert await resolver.txt("example.net") == ["two"]


def test_sync_resolver_uses_the_same_nameserver(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("example.net", "A", "127.0.0.2")
    ans = resolver.sync_resolver().resolve("example.net", "A")
    assert [r.address for r in ans] == ["127.0.0.2"]


def test_from_config_reads_nameservers_and_timeout(dns_nameserver: str) -> None:
    from mailhaven.config import DnsConfig

    r = Resolver.from_config(DnsConfig(nameservers=[dns_nameserver], timeout=0.7))
    assert r.nameservers == [dns_nameserver] and r.timeout == 0.7


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=0, max_size=700))
async def test_any_txt_value_round_trips_through_the_server(dns_server: DnsServer, resolver: Resolver,
                                                           value: str) -> None:
    dns_server.clear()
    dns_server.add("rt.example", "TXT", value, ttl=0)  # changed in every example: not cached
    assert await resolver.txt("rt.example") == [value]
