"""Fixtures: the test DNS server (tests/dnsserver.py) and resolvers pointed at it.

- `dns_server`: a DnsServer with no records, started once per session and cleared before each test.
- `dns_nameserver`: "127.0.0.1:PORT", to put in config `dns.nameservers`.
- `resolver`: our mailhaven.dns.Resolver on that server with a short timeout (1 s), so temporary
  errors show up quickly.
- `silent_nameserver`: a SilentNameserver: a UDP socket on 127.0.0.1 that never answers (a machine
  without working DNS); `.nameserver` for config, `.queries()` counts the datagrams sent to it.
"""

from __future__ import annotations

import socket
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


class SilentNameserver:
    """A bound UDP socket that reads nothing and answers nothing: every query to it times out."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self._seen = 0

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def queries(self) -> int:
        """How many datagrams (DNS queries) have arrived so far."""
        while True:
            try:
                self.sock.recv(65536)
            except BlockingIOError:
                return self._seen
            self._seen += 1


@pytest.fixture
def silent_nameserver() -> Iterator[SilentNameserver]:
    server = SilentNameserver()
    try:
        yield server
    finally:
        server.sock.close()
