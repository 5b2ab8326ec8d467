"""Properties of the PROXY protocol reader (proxyproto.py): any input gives a header, a need for
more, or ProxyError, never another exception; generated v1/v2 headers read back, in any pieces."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.proxyproto import V2_SIGNATURE, HeaderReader, ProxyError, ProxyHeader, encode_v1, encode_v2

ports = st.integers(0, 65535)
endpoints = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@given(st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"PROXY " + b),
                 st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b)),
       st.lists(st.integers(0, 400), max_size=5))
def test_any_input_is_a_header_more_needed_or_a_proxy_error(data: bytes, cuts: list[int]) -> None:
    r = HeaderReader()
    try:
        for piece in _pieces(data, cuts):
            header = r.feed(piece)
            if header is not None:
                assert header.version in (1, 2)
                if header.client is not None:
                    ipaddress.ip_address(header.client[0])
                    assert 0 <= header.client[1] <= 65535
                assert r.wanted() == 0
        assert r.wanted() >= 0
    except ProxyError:
        pass


@given(endpoints, ports, st.ip_addresses(v=4), ports, st.booleans(), st.binary(max_size=50),
       st.lists(st.integers(0, 200), max_size=4))
def test_generated_headers_read_back(client: ipaddress.IPv4Address | ipaddress.IPv6Address, cport: int,
                                     server4: ipaddress.IPv4Address, sport: int, v2: bool, after: bytes,
                                     cuts: list[int]) -> None:
    server = str(server4) if client.version == 4 else str(ipaddress.IPv6Address(int(server4)))
    header = (encode_v2 if v2 else encode_v1)((str(client), cport), (server, sport))
    r = HeaderReader()
    got = None
    for piece in _pieces(header + after, cuts):
        got = r.feed(piece) or got
    assert got == ProxyHeader(2 if v2 else 1, (str(client), cport), (server, sport))
    assert r.leftover == after


@given(st.one_of(endpoints.map(lambda ip: (str(ip), 1)), st.none()), st.booleans(), st.binary(min_size=1, max_size=40))
def test_wanted_never_reads_past_the_header(client: tuple[str, int] | None, v2: bool, after: bytes) -> None:
    header = encode_v2(client) if v2 else encode_v1(client)
    stream = header + after
    r = HeaderReader()
    pos = 0
    while True:
        n = r.wanted()
        assert n > 0
        if r.feed(stream[pos:pos + n]) is not None:
            pos += n
            break
        pos += n
    assert pos == len(header)
    assert r.leftover == b""
