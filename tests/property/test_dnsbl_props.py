"""Properties of RFC 5782 query names (policy/dnsbl.query_name)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.policy import dnsbl

zones = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}", fullmatch=True)


@given(st.ip_addresses(v=4), zones)
def test_ipv4_name_is_the_reversed_octets_then_the_zone(ip: ipaddress.IPv4Address, zone: str) -> None:
    name = dnsbl.query_name(str(ip), zone)
    labels = name.split(".")
    assert ".".join(labels[4:]) == zone
    assert ipaddress.ip_address(".".join(reversed(labels[:4]))) == ip  # RFC 5782 §2.1


@given(st.ip_addresses(v=6), zones)
def test_ipv6_name_is_32_nibbles_least_significant_first(ip: ipaddress.IPv6Address, zone: str) -> None:
    name = dnsbl.query_name(str(ip), zone)
    labels = name.split(".")
    if ip.ipv4_mapped is not None:  # looked up as the IPv4 client it stands for
        assert len(labels) == 4 + len(zone.split("."))
        return
    nibbles, rest = labels[:32], labels[32:]
    assert ".".join(rest) == zone
    assert all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles)  # RFC 5782 §2.4: lower-case hex
    assert int("".join(reversed(nibbles)), 16) == int(ip)


@given(st.lists(st.ip_addresses(v=4).map(str), max_size=4))
def test_classify_is_listed_exactly_when_an_answer_is_in_127_8_outside_the_refusal_codes(answers: list[str]) -> None:
    ips = [ipaddress.ip_address(a) for a in answers]
    listed = any(ip in dnsbl.LOOPBACK_NET and ip not in dnsbl.REFUSED_NET for ip in ips)
    assert (dnsbl.classify(answers) == "listed") == listed


@given(st.ip_addresses())
def test_greylist_network_holds_the_client_and_is_its_24_or_64(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    from mailhaven.policy.greylist import client_net

    net = ipaddress.ip_network(client_net(str(ip)))
    addr = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    assert addr in net
    assert net.prefixlen == (24 if addr.version == 4 else 64)
