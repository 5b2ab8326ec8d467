"""Fixtures: the test DNS server (tests/dnsserver.py) and resolvers pointed at it.

- `dns_server`: a DnsServer with no records, started once per session and cleared before each test.
- `dns_nameserver`: "127.0.0.1:PORT", to put in config `dns.nameservers`.
- `resolver`: our mailhaven.dns.Resolver on that server with a short timeout (1 s), so temporary
  errors show up quickly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dnsserver import DnsServer


@pytest.fixture(scope="session")
def _dns_server_session() -> Iterator[DnsServer]:
    server = DnsServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dns_server(_dns_server_session: DnsServer) -> Iterator[DnsServer]:
    _dns_server_session.clear()
    yield _dns_server_session
    _dns_server_session.clear()


@pytest.fixture
def dns_nameserver(dns_server: DnsServer) -> str:
    return dns_server.nameserver


@pytest.fixture
def resolver(dns_nameserver: str):  # type: ignore[no-untyped-def]
    from mailhaven.dns.resolver import Resolver

    return Resolver([dns_nameserver], timeout=1.0)
