"""FETCH BINARY (RFC 3516): a message part with its Content-Transfer-Encoding removed.

Owns: reading a part's transfer encoding and decoding base64 and quoted-printable as Dovecot 2.3
does (blanks skipped in base64, QP with trailing whitespace dropped and `=` + whitespace as a soft
line break; anything that does not decode is InvalidData, NO [PARSE]), BINARY[part] of a leaf, of a
multipart or message/rfc822 part and of the whole message (BINARY[]): every leaf decoded, each
converted part's header getting `Content-Transfer-Encoding: binary` in place of its own, as
Dovecot's index-mail-binary.c), whether the answer needs literal8 (`~{n}`: the data was converted
or holds NUL, RFC 3516 §4.3, as Dovecot), BINARY.SIZE, the [UNKNOWN-CTE] failure (RFC 3516 §4.3),
and how a literal8 APPEND is stored (`storable`: binary parts base64-encoded, as Dovecot).
Does not own: the FETCH grammar (parser.py), rendering the item into the FETCH line and running
large decodes off the event loop (fetch.py: render_batch runs in a worker thread for big batches).

Pure functions over the CRLF message bytes the store returns; CPU work only.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailhaven.imap.fetchitems import find_part
from mailhaven.message import mime
from mailhaven.message.mime import Part

_PLAIN = frozenset({b"", b"binary"})  # what `cte` returns for parts sent as they are
_CONVERTED = frozenset({b"base64", b"quoted-printable"})
_QP_TRAILING = re.compile(rb"[ \t]+(?=\r?\n|\Z)")
_QP_BAD = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n|\Z)")
_CTE_BINARY = b"Content-Transfer-Encoding: binary\r\n"


class BinaryError(Exception):
    """BINARY cannot give this section. `lines`: the FETCH responses rendered before it
    (fetch.render_items and render_batch fill it in: they go out before the NO, as Dovecot's)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines: list[bytes] = []


class UnknownCte(BinaryError):
    """A part's Content-Transfer-Encoding is none BINARY can undo (RFC 3516 §4.3: NO [UNKNOWN-CTE])."""


class InvalidData(BinaryError):
    """A base64 or quoted-printable body that does not decode (Dovecot 2.3: NO [PARSE])."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """BINARY data of one section: `data` and whether it goes out as a literal8 (`binary`)."""

    data: bytes
    binary: bool


_KNOWN = {b"7bit": b"", b"8bit": b"", b"binary": b"binary", b"base64": b"base64",
          b"quoted-printable": b"quoted-printable"}


def cte(msg: bytes, part: Part) -> bytes:
    """The encoding BINARY undoes for `part`, read as Dovecot 2.3 does for it (not as for
    BODYSTRUCTURE): the last Content-Transfer-Encoding field of the part's header counts, whether
    or not the header is MIME; one token, then nothing but comments or a ";". b"" (7bit, 8bit or
    none), b"binary", b"base64" or b"quoted-printable"; raises UnknownCte for anything else."""
    value: bytes | None = None
    for f in mime.iter_fields(msg, part.header_start, part.header_end):
        if f.name.lower() == b"content-transfer-encoding":
            value = f.value
    if value is None:
        return b""
    lex = mime.Lexer(value)
    lex.skip_cfws()
    token = lex.token().lower()
    lex.skip_cfws()
    known = _KNOWN.get(token)
    if known is None or not (lex.at_end() or lex.peek() == 0x3B):
        raise UnknownCte(value.strip().decode("ascii", "replace")[:40])
    return known


def decode_base64(data: bytes) -> bytes:
    """Base64 body -> octets (RFC 2045 §6.8). Line breaks and blanks are skipped; anything else
    outside the alphabet, data after the padding or a truncated last quantum is InvalidData (as
    Dovecot 2.3, which answers NO [PARSE] or, for the truncation, drops the connection)."""
    try:
        return binascii.a2b_base64(data.translate(None, b" \t\r\n"), strict_mode=True)
    except binascii.Error:
        raise InvalidData("invalid base64") from None


def decode_qp(data: bytes) -> bytes:
    """Quoted-printable body -> octets (RFC 2045 §6.7): trailing whitespace on a line is dropped,
    `=` at the end of a line (whitespace may follow it) joins it with the next, `=XX` (either case)
    is an octet; any other `=` is InvalidData (as Dovecot 2.3)."""
    data = _QP_TRAILING.sub(b"", data)
    if _QP_BAD.search(data):
        raise InvalidData("invalid quoted-printable")
    return binascii.a2b_qp(data)


def _decode_body(msg: bytes, part: Part) -> tuple[bytes, bool]:
    """A leaf's body without its transfer encoding, and whether it was converted."""
    enc = cte(msg, part)
    body = msg[part.body_start:part.body_end]
    if enc in _PLAIN:
        return body, False
    if enc == b"base64":
        return decode_base64(body), True
    return decode_qp(body), True


def _header(msg: bytes, part: Part, out: list[bytes]) -> bool:
    """Part's header into `out`; when its CTE is converted, with that field replaced by
    `Content-Transfer-Encoding: binary` (before the empty line). Returns whether it was."""
    if cte(msg, part) not in _CONVERTED or part.children:  # (Dovecot: a message/rfc822 keeps its header)
        out.append(msg[part.header_start:part.header_end])
        return False
    for f in mime.iter_fields(msg, part.header_start, part.header_end):
        if f.name.lower() != b"content-transfer-encoding":
            out.append(msg[f.start:f.end])
    out.append(_CTE_BINARY)
    if mime.has_empty_line(msg, part.header_start, part.header_end):
        out.append(b"\r\n")
    return True


def _entity(msg: bytes, part: Part, with_header: bool, out: list[bytes]) -> bool:
    """Part (its header when `with_header`) with every leaf below it decoded, into `out`.
    Returns whether anything was converted."""
    converted = _header(msg, part, out) if with_header else False
    if part.children:  # multipart, or message/rfc822 with its encapsulated message
        pos = part.body_start
        for child in part.children:
            out.append(msg[pos:child.header_start])
            converted |= _entity(msg, child, True, out)
            pos = child.body_end
        out.append(msg[pos:part.body_end])
        return converted
    body, conv = _decode_body(msg, part)
    out.append(body)
    return converted or conv


def storable(msg: bytes) -> bytes:
    """A message APPENDed as a literal8 (RFC 3516 §4.4), ready for the store (which makes every line
    end CRLF): each leaf part with `Content-Transfer-Encoding: binary` gets its body base64-encoded
    (76-character lines) and that field says base64, so BINARY[part] gives back its exact octets
    (as Dovecot 2.3's istream-binary-converter)."""
    tree = mime.parse(msg)
    edits: list[tuple[int, int, bytes]] = []
    for part in mime.walk(tree):
        if part.children or part.is_multipart:
            continue
        try:
            if cte(msg, part) != b"binary":
                continue
        except UnknownCte:
            continue
        for f in mime.iter_fields(msg, part.header_start, part.header_end):
            if f.name.lower() == b"content-transfer-encoding":
                edits.append((f.start, f.end, b"Content-Transfer-Encoding: base64\r\n"))
        text = base64.b64encode(msg[part.body_start:part.body_end])
        edits.append((part.body_start, part.body_end, b"\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))))
    if not edits:
        return msg
    out: list[bytes] = []
    pos = 0
    for start, end, new in sorted(edits):
        out += (msg[pos:start], new)
        pos = end
    out.append(msg[pos:])
    return b"".join(out)


def check(msg: bytes, tree: Part) -> None:
    """Raise UnknownCte if any part of the message has an encoding BINARY cannot undo: Dovecot 2.3
    works BINARY.SIZE out over the whole message, so one such part fails it for every section."""
    for part in mime.walk(tree):
        cte(msg, part)


def size(msg: bytes, tree: Part, path: Sequence[int]) -> int:
    """BINARY.SIZE[path]: 0 for a part that does not exist; else the decoded size, worked out as
    Dovecot 2.3 does over the whole message (`check`). Raises UnknownCte."""
    if path and find_part(tree, path) is None:
        return 0
    check(msg, tree)
    return len(section(msg, tree, path).data)


def section(msg: bytes, tree: Part, path: Sequence[int]) -> Decoded:
    """BINARY[path] of `msg` (CRLF, the store's bytes) parsed as `tree` (mime.parse(msg)).

    BINARY[] is the whole message with every part decoded; a part that does not exist is empty
    (Dovecot: BINARY.SIZE 0). Raises UnknownCte or InvalidData."""
    out: list[bytes] = []
    if not path:
        converted = _entity(msg, tree, True, out)
    else:
        part = find_part(tree, path)
        if part is None:
            return Decoded(b"", False)
        converted = _entity(msg, part, False, out)
    data = b"".join(out)
    return Decoded(data, converted or b"\x00" in data)


__all__ = ["BinaryError", "Decoded", "InvalidData", "UnknownCte", "check", "cte", "decode_base64", "decode_qp",
           "section", "size", "storable"]
