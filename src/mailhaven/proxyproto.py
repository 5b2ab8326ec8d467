"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2), sans-IO.

Owns: reading one header from bytes fed in any pieces (`HeaderReader.feed` → None while more is
needed, a `ProxyHeader`, or `ProxyError`); how many more octets may be read without going past the
header (`HeaderReader.wanted`, so a listener never reads the first byte of what follows it, e.g. a
TLS ClientHello); the bounds (a v1 line of at most 107 octets, §2.1; v2 address and TLV block of at
most MAX_V2_TLV octets beyond the addresses); encoding headers (tests, tools).
Does not own: sockets, timeouts, which peers may send a header (proxyaccept.py).

What a header means here: a v1 "TCP4"/"TCP6" line or a v2 PROXY command over AF_INET/AF_INET6 and
STREAM gives the client address and port; a v2 LOCAL command (§2.2: health checks of the proxy
itself), a v1 "UNKNOWN" line and a v2 PROXY command with AF_UNSPEC mean "use the connection's own
addresses" (`client` is None). Anything else (AF_UNIX, DGRAM, a bad version or command, addresses
that do not parse) is a ProxyError. v2 TLVs are bounded and skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # §2.1: the longest v1 line, CRLF included ("PROXY UNKNOWN ..." with two IPv6 addresses)
V1_MIN = 15  # "PROXY UNKNOWN\r\n": no header is shorter, so 15 octets may always be read first
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # §2.2
V2_HEADER = 16  # signature, version/command, family/protocol, length
MAX_V2_TLV = 4096  # octets of TLVs accepted after the address block (the format allows 65535)

_V2_ADDR_LEN = {0x1: 12, 0x2: 36, 0x3: 216}  # AF_INET, AF_INET6, AF_UNIX address blocks (§2.2)
_PORT_DIGITS = frozenset(b"0123456789")


class ProxyError(ValueError):
    """A malformed, unsupported or oversized header; the text says which (for the log line)."""


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed header. client/server: (address, port) of the proxied connection, or None when
    the connection's own addresses are to be used (v2 LOCAL, v1 UNKNOWN, v2 AF_UNSPEC)."""

    version: int
    client: tuple[str, int] | None
    server: tuple[str, int] | None = None


class HeaderReader:
    """Feed bytes until a header comes out. After it, `leftover` holds what followed it."""

    def __init__(self) -> None:
        self._buf = b""
        self.header: ProxyHeader | None = None
        self.leftover = b""

    def wanted(self) -> int:
        """Octets that may be read now without reading past the header (0 once it is complete)."""
        if self.header is not None:
            return 0
        buf = self._buf
        if len(buf) < V1_MIN:
            return V1_MIN - len(buf)
        if buf.startswith(V2_SIGNATURE):
            if len(buf) < V2_HEADER:
                return V2_HEADER - len(buf)
            return V2_HEADER + int.from_bytes(buf[14:16], "big") - len(buf)
        return 1 if buf.endswith(b"\r") else 2  # v1: the line ends at the first CRLF

    def feed(self, data: bytes) -> ProxyHeader | None:
        """Take more input: the header once complete (then `leftover`), None while more is needed.
        Raises ProxyError as soon as the input cannot be a valid header."""
        if self.header is not None:
            self.leftover += data
            return self.header
        buf = self._buf = self._buf + data
        n = min(len(buf), len(V2_SIGNATURE))
        if buf[:n] == V2_SIGNATURE[:n]:
            return self._v2(buf) if n == len(V2_SIGNATURE) else None
        n = min(len(buf), len(V1_PREFIX))
        if buf[:n] != V1_PREFIX[:n]:
            raise ProxyError("not a PROXY protocol header")
        end = buf.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buf) >= V1_MAX or b"\n" in buf:
                raise ProxyError(f"v1 header without CRLF in its first {V1_MAX} octets")
            return None
        return self._done(parse_v1(buf[:end]), buf[end + 2:])

    def _v2(self, buf: bytes) -> ProxyHeader | None:
        if len(buf) < V2_HEADER:
            return None
        ver_cmd, fam, length = struct.unpack("!BBH", buf[12:16])
        if ver_cmd >> 4 != 2:
            raise ProxyError(f"v2 header with version {ver_cmd >> 4}")
        if ver_cmd & 0xF not in (0, 1):
            raise ProxyError(f"v2 header with unknown command {ver_cmd & 0xF}")
        if length > _V2_ADDR_LEN.get(fam >> 4, 0) + MAX_V2_TLV:
            raise ProxyError(f"v2 header of {length} octets (more than {MAX_V2_TLV} of TLVs)")
        if len(buf) < V2_HEADER + length:
            return None
        block = buf[V2_HEADER:V2_HEADER + length]
        return self._done(parse_v2_block(ver_cmd & 0xF, fam, block), buf[V2_HEADER + length:])

    def _done(self, header: ProxyHeader, rest: bytes) -> ProxyHeader:
        self.header, self.leftover, self._buf = header, rest, b""
        return header


def _port(text: bytes) -> int:
    # §2.1: a decimal port 0-65535 (no sign, no spaces, no leading zero except "0" itself)
    if not 1 <= len(text) <= 5 or not set(text) <= _PORT_DIGITS or (text[:1] == b"0" and len(text) > 1):
        raise ProxyError("v1 header with a bad port")
    port = int(text)
    if port > 65535:
        raise ProxyError("v1 header with a bad port")
    return port


def parse_v1(line: bytes) -> ProxyHeader:
    """The v1 line without its CRLF (`PROXY TCP4 src dst sport dport`, or `PROXY UNKNOWN ...`)."""
    parts = line.split(b" ")
    if parts[:2] == [b"PROXY", b"UNKNOWN"]:
        return ProxyHeader(1, None)  # §2.1: the rest of the line is to be ignored
    if len(parts) != 6 or parts[0] != b"PROXY" or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyError("malformed v1 header")
    cls = ipaddress.IPv4Address if parts[1] == b"TCP4" else ipaddress.IPv6Address
    try:
        src, dst = (str(cls(p.decode("ascii"))) for p in parts[2:4])
    except (ValueError, UnicodeDecodeError):
        raise ProxyError(f"v1 header with a bad {parts[1].decode()} address") from None
    return ProxyHeader(1, (src, _port(parts[4])), (dst, _port(parts[5])))


def parse_v2_block(command: int, fam: int, block: bytes) -> ProxyHeader:
    """The part of a v2 header after its 16 octets, for `command` (0 LOCAL, 1 PROXY)."""
    if command == 0:
        return ProxyHeader(2, None)  # §2.2 LOCAL: the proxy's own connection; the block is ignored
    family, transport = fam >> 4, fam & 0xF
    if family == 0:
        return ProxyHeader(2, None)  # §2.2 AF_UNSPEC: unknown protocol; use the real addresses
    if family not in (0x1, 0x2) or transport != 0x1:
        raise ProxyError(f"v2 header for an unsupported family/protocol 0x{fam:02x}")
    need = _V2_ADDR_LEN[family]
    if len(block) < need:
        raise ProxyError("v2 header shorter than its address block")
    n = 4 if family == 0x1 else 16
    cls = ipaddress.IPv4Address if family == 0x1 else ipaddress.IPv6Address
    src, dst = str(cls(block[:n])), str(cls(block[n:2 * n]))
    sport, dport = struct.unpack("!HH", block[2 * n:2 * n + 4])
    return ProxyHeader(2, (src, sport), (dst, dport))


def encode_v1(client: tuple[str, int] | None, server: tuple[str, int] | None = None) -> bytes:
    """A v1 header: TCP4/TCP6 for `client` (and `server`, default the same family's unspecified
    address, port 0), or UNKNOWN for None."""
    if client is None:
        return b"PROXY UNKNOWN\r\n"
    ip = ipaddress.ip_address(client[0])
    srv = server or (str(ip.__class__(0)), 0)
    fam = "TCP4" if ip.version == 4 else "TCP6"
    return f"PROXY {fam} {ip} {ipaddress.ip_address(srv[0])} {client[1]} {srv[1]}\r\n".encode("ascii")


def encode_v2(client: tuple[str, int] | None, server: tuple[str, int] | None = None,
              tlvs: bytes = b"") -> bytes:
    """A v2 header: PROXY over STREAM for `client`, or LOCAL for None; `tlvs` appended as is."""
    if client is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    ip = ipaddress.ip_address(client[0])
    srv = ipaddress.ip_address(server[0]) if server else ip.__class__(0)
    block = ip.packed + srv.packed + struct.pack("!HH", client[1], server[1] if server else 0) + tlvs
    fam = 0x11 if ip.version == 4 else 0x21
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, fam, len(block)) + block


__all__ = ["HeaderReader", "MAX_V2_TLV", "ProxyError", "ProxyHeader", "V1_MAX", "V2_SIGNATURE", "encode_v1",
           "encode_v2", "parse_v1", "parse_v2_block"]
