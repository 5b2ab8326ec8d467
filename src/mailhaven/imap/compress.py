"""COMPRESS=DEFLATE (RFC 4978) for one connection: raw DEFLATE (RFC 1951, no zlib header) each way.

Owns: the two zlib streams, a Z_SYNC_FLUSH after every piece of output (so each response batch the
session hands out reaches the client whole, RFC 4978 §4), and bounded inflation: at most
MAX_INFLATE octets come out per call, the rest of the input waits (`pending`), so a small
"deflate bomb" never becomes a large buffer at once.
Does not own: when compression starts (session.py's StartCompress; server.py carries it out) or
the socket (server.py, lineproto.py).
"""

from __future__ import annotations

import zlib

MAX_INFLATE = 256 * 1024  # octets of plain input produced per inflate() call
LEVEL = 6  # zlib's default trade-off


class Deflate:
    """Compressor and decompressor of one connection (RFC 4978 §3: windowBits -15, raw deflate)."""

    def __init__(self) -> None:
        self._out = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
        self._in = zlib.decompressobj(-15)

    def deflate(self, data: bytes) -> bytes:
        """`data` compressed and sync-flushed: the client can decode all of it now."""
        return self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)

    def inflate(self, data: bytes) -> bytes:
        """Plain octets from compressed `data` (at most MAX_INFLATE; see `pending`). Raises
        zlib.error for a corrupt stream."""
        if self._in.unconsumed_tail:
            data = self._in.unconsumed_tail + data
        return self._in.decompress(data, MAX_INFLATE)

    @property
    def pending(self) -> bool:
        """Compressed input is left that `inflate(b"")` turns into more plain octets."""
        return bool(self._in.unconsumed_tail)


__all__ = ["Deflate", "MAX_INFLATE"]
