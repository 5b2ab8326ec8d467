"""proxyproto.py: PROXY protocol v1 and v2 headers as HAProxy's proxy-protocol.txt defines them,
the bounds, and that `wanted()` never asks for an octet beyond the header."""

from __future__ import annotations

import struct

import pytest

from mailhaven.proxyproto import (
    MAX_V2_TLV,
    V2_SIGNATURE,
    HeaderReader,
    ProxyError,
    ProxyHeader,
    encode_v1,
    encode_v2,
)


def read(data: bytes) -> tuple[ProxyHeader | None, bytes]:
    r = HeaderReader()
    return r.feed(data), r.leftover


def test_v1_tcp4_gives_the_client_address_and_port_and_keeps_what_follows() -> None:
    header, rest = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 143\r\na1 CAPABILITY\r\n")
    assert header == ProxyHeader(1, ("192.0.2.7", 56324), ("198.51.100.1", 143))
    assert rest == b"a1 CAPABILITY\r\n"


def test_v1_tcp6_address_is_normalised() -> None:
    header, _ = read(b"PROXY TCP6 2001:DB8:0::1 2001:db8::2 1 65535\r\n")
    assert header == ProxyHeader(1, ("2001:db8::1", 1), ("2001:db8::2", 65535))


def test_v1_unknown_means_the_connection_own_address() -> None:
    assert read(b"PROXY UNKNOWN\r\n")[0] == ProxyHeader(1, None)
    assert read(b"PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n")[0] == ProxyHeader(1, None)


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",  # a port missing
    b"PROXY TCP4 192.0.2.7  198.51.100.1 1 2\r\n",  # two spaces
    b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",  # IPv6 in TCP4
    b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",  # IPv4 in TCP6
    b"PROXY TCP4 192.0.2.07 198.51.100.1 1 2\r\n",  # leading zero in an octet
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",  # port out of range
    b"PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n",  # leading zero in a port
    b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 2\r\n",
    b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",  # bare LF
    b"PROXY UNKNOWNX\r\n",
])
def test_v1_malformed_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ProxyError):
        read(line)


def test_v1_line_longer_than_107_octets_is_refused_without_waiting_for_its_end() -> None:
    r = HeaderReader()
    with pytest.raises(ProxyError, match="107"):
        r.feed(b"PROXY UNKNOWN " + b"x" * 93)  # 107 octets, no CRLF yet
    assert read(b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n")[0] == ProxyHeader(1, None)  # exactly 107


def test_something_else_than_a_header_is_refused_at_its_first_octets() -> None:
    r = HeaderReader()
    with pytest.raises(ProxyError, match="not a PROXY"):
        r.feed(b"a1 ")  # an IMAP client talking straight to a PROXY listener
    with pytest.raises(ProxyError):
        HeaderReader().feed(b"\x16\x03\x01")  # a TLS ClientHello


def test_v2_proxy_inet_and_inet6() -> None:
    assert read(encode_v2(("10.1.2.3", 40000), ("10.0.0.1", 993)))[0] == \
        ProxyHeader(2, ("10.1.2.3", 40000), ("10.0.0.1", 993))
    assert read(encode_v2(("2001:db8::5", 7), ("2001:db8::1", 143)))[0] == \
        ProxyHeader(2, ("2001:db8::5", 7), ("2001:db8::1", 143))


def test_v2_local_and_unspec_mean_the_connection_own_address() -> None:
    assert read(encode_v2(None))[0] == ProxyHeader(2, None)
    local_with_block = V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x11, 12) + bytes(12)
    assert read(local_with_block)[0] == ProxyHeader(2, None)
    unspec = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x00, 0)
    assert read(unspec)[0] == ProxyHeader(2, None)


def test_v2_tlvs_are_skipped_and_bounded() -> None:
    tlv = bytes([0x04]) + struct.pack("!H", 3) + b"abc"  # PP2_TYPE_NOOP
    header, rest = read(encode_v2(("192.0.2.9", 1), tlvs=tlv) + b"EHLO x\r\n")
    assert header is not None and header.client == ("192.0.2.9", 1)
    assert rest == b"EHLO x\r\n"
    read(encode_v2(("192.0.2.9", 1), tlvs=bytes(MAX_V2_TLV)))  # at the bound: accepted
    r = HeaderReader()
    with pytest.raises(ProxyError, match="TLVs"):  # refused from its 16 octets, not after 64 KiB
        r.feed(encode_v2(("192.0.2.9", 1), tlvs=bytes(MAX_V2_TLV + 1))[:16])


@pytest.mark.parametrize("ver_cmd, fam", [(0x11, 0x11), (0x22, 0x11), (0x21, 0x31), (0x21, 0x12), (0x21, 0x10)])
def test_v2_bad_version_command_or_unsupported_family_is_refused(ver_cmd: int, fam: int) -> None:
    block = bytes(216)
    with pytest.raises(ProxyError):
        read(V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, len(block)) + block)


def test_v2_length_shorter_than_the_address_block_is_refused() -> None:
    with pytest.raises(ProxyError, match="shorter"):
        read(V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 8) + bytes(8))


@pytest.mark.parametrize("header", [
    encode_v1(("192.0.2.7", 5)), encode_v1(("2001:db8::7", 5)), encode_v1(None),
    encode_v2(("192.0.2.7", 5)), encode_v2(("2001:db8::7", 5), tlvs=b"\x04\x00\x01z"), encode_v2(None),
])
def test_reading_only_what_wanted_allows_stops_exactly_at_the_end_of_the_header(header: bytes) -> None:
    stream = header + b"\x16\x03\x01 the ClientHello that must stay unread"
    r = HeaderReader()
    pos = 0
    result = None
    while result is None:
        n = r.wanted()
        assert n > 0
        result = r.feed(stream[pos:pos + n])
        pos += n
    assert pos == len(header)
    assert r.leftover == b"" and r.wanted() == 0
