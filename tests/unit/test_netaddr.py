"""netaddr.client_ip: one reading of a peer address for limits, DNS lists, greylisting and PROXY."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.netaddr import client_ip


def test_zone_ids_are_dropped_and_mapped_ipv4_is_ipv4() -> None:
    assert client_ip("192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")
    assert client_ip("::ffff:192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")
    assert client_ip("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    assert client_ip("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    for bad in ("", "example.org", "300.1.1.1", "%eth0"):
        with pytest.raises(ValueError):
            client_ip(bad)


@given(st.ip_addresses(v=4))
def test_every_ipv4_address_reads_the_same_plain_or_mapped(addr: ipaddress.IPv4Address) -> None:
    assert client_ip(str(addr)) == client_ip(f"::ffff:{addr}") == addr
