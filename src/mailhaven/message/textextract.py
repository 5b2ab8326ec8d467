"""The searchable text of a message: what IMAP SEARCH BODY and TEXT match, decoded and folded.

Owns: decoding as Dovecot 2.3's search reads a message (transfer encodings undone: lenient
base64, quoted-printable; charsets converted, us-ascii and unknown ones read as UTF-8; RFC 2047
encoded-words in header values), the comparator form `fold` (i;unicode-casemap, RFC 5051), and the
two texts a message is searched in: `body_text` (every text/* and message/* leaf body, decoded)
and `header_text` (every header block of every MIME part, so attachments' names in
Content-Type/Content-Disposition are in it). Both are folded; parts are separated by NUL.
Does not own: the meaning of SEARCH keys (imap/search.py), MIME structure (mime.py), the
full-text index (store/fts.py), which stores exactly these texts so its answers are a superset
of the scan's.

HTML parts are kept as written (tags included), as the scan matches them: reducing them to text
would make the index disagree with `SEARCH BODY` as Dovecot (without FTS) and the scan answer it.
Malformed input never raises: every decoder is lenient (bad bytes become U+FFFD).
"""

from __future__ import annotations

import base64
import codecs
import functools
import quopri
import re
import unicodedata
from dataclasses import dataclass

from mailhaven.message import mime


def fold(text: str) -> str:
    """Comparator form, as Dovecot's i;unicode-casemap (RFC 5051): each character mapped to its
    simple titlecase, then decomposed one level (canonical or compatibility mapping, not
    recursively: "Ǻ" becomes "Å" + U+0301, never a plain "A"); "ß" has no simple titlecase."""
    if text.isascii():
        return text.upper()
    out: list[str] = []
    for ch in text:
        if ch.isascii():
            out.append(ch.upper())
            continue
        t = ch.title()
        if len(t) != 1:
            t = ch
        d = _decomposition(t)
        if d is None:
            out.append(t)
        else:
            out.extend(d)
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _decomposition(ch: str) -> tuple[str, ...] | None:
    spec = unicodedata.decomposition(ch)
    if not spec:
        return None
    codes = spec.split()
    if codes[0].startswith("<"):
        codes = codes[1:]
    return tuple(chr(int(c, 16)) for c in codes) or None


_ENCODED_WORD = re.compile(rb"=\?([^?\s\x00]+)\?([bBqQ])\?([^?\s]*)\?=")


def _charset_decode(data: bytes, charset: str) -> str:
    """Text in `charset`; unknown charsets and US-ASCII are read as UTF-8 (as Dovecot does, so
    8-bit text mislabelled us-ascii still matches). Never raises."""
    name = charset.split("*", 1)[0].strip().lower()  # RFC 2231 §5 language suffix
    try:
        info = codecs.lookup(name)
        if info.name == "ascii" or not getattr(info, "_is_text_encoding", True):
            name = "utf-8"  # also refuse bytes-to-bytes codecs such as "base64" or "zlib"
    except (LookupError, ValueError, TypeError):
        name = "utf-8"
    try:
        return data.decode(name, "replace")
    except (LookupError, ValueError, TypeError):
        return data.decode("utf-8", "replace")


def decode_header_value(value: bytes) -> str:
    """Unfolded header value with RFC 2047 encoded-words decoded; other bytes taken as UTF-8."""
    value = mime.unfold(value)
    if b"=?" not in value:
        return value.decode("utf-8", "replace")
    out: list[str] = []
    pos = 0
    last_end = -1
    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos:m.start()]
        # RFC 2047 §6.2: whitespace between adjacent encoded-words is not displayed
        if not (last_end == m.start() - len(gap) and last_end >= 0 and gap.strip(b" \t") == b""):
            out.append(gap.decode("utf-8", "replace"))
        charset, enc, text = m.group(1).decode("ascii", "replace"), m.group(2), m.group(3)
        if enc in (b"b", b"B"):
            raw = decode_base64(text)  # lenient, as Dovecot: stops at a bad byte or the padding
        else:
            raw = quopri.decodestring(text.replace(b"_", b" "), header=True)
        out.append(_charset_decode(raw, charset))
        pos = last_end = m.end()
    out.append(value[pos:].decode("utf-8", "replace"))
    return "".join(out)


_B64_RUN = re.compile(rb"[A-Za-z0-9+/=\s]*")
_WS = re.compile(rb"\s+")
_IDENTITY_CTES = frozenset({b"", b"7bit", b"8bit", b"binary"})


def decode_base64(data: bytes) -> bytes:
    """Base64 body text as Dovecot's decoder reads it: whitespace skipped, stopping at the first
    other byte outside the alphabet or at the padding; a trailing partial group is kept (RFC 2045
    §6.8 would skip stray bytes; Dovecot stops)."""
    m = _B64_RUN.match(data)
    chunk = _WS.sub(b"", m.group(0) if m else b"")
    eq = chunk.find(b"=")
    if eq >= 0:
        chunk = chunk[:eq]
    full = len(chunk) // 4 * 4
    out = base64.b64decode(chunk[:full])
    rest = chunk[full:]
    if len(rest) >= 2:
        out += base64.b64decode(rest + b"=" * (4 - len(rest)))
    return out


def _decode_body(data: bytes, encoding: bytes | None) -> bytes | None:
    """Decoded body bytes, or None for a transfer encoding Dovecot does not search (x-uuencode)."""
    enc = (encoding or b"").strip().lower()
    if enc in _IDENTITY_CTES:
        return data
    if enc == b"base64":
        return decode_base64(data)
    if enc == b"quoted-printable":
        return quopri.decodestring(data)
    return None


def _media_type(value: bytes) -> bytes:
    """`type/subtype` as Dovecot's content-type reader leaves it, however broken the field is."""
    ctype, subtype, _ = mime.parse_media_type(value)
    return ctype + b"/" + subtype if subtype else ctype


def _body_view(data: bytes, part: mime.Part) -> tuple[bool, bytes | None]:
    """(is the body searched, its transfer encoding) as Dovecot's search decides them: from the
    last Content-Type (text/* or message/*, or none at all) and the last Content-Transfer-Encoding.
    Only called for parts without children."""
    if part.is_multipart:
        return False, None  # a multipart's own text (a preamble without parts) is never searched
    searched = True  # no Content-Type at all: text/plain
    cte: bytes | None = None
    for f in mime.iter_fields(data, part.header_start, part.header_end):
        name = f.name.lower()
        if name == b"content-type":
            mtype = _media_type(f.value).lower()
            searched = mtype.startswith(b"text/") or mtype.startswith(b"message/")
        elif name == b"content-transfer-encoding":
            lex = mime.Lexer(f.value)
            lex.skip_cfws()
            cte = lex.token()
            if not cte or lex.skip_cfws():
                cte = b"x-unreadable"  # anything after the token: Dovecot does not decode (skips)
    return searched, cte


def body_text(data: bytes, tree: mime.Part) -> str:
    """Folded decoded text of every searchable leaf body of `data` (CRLF, parsed as `tree`),
    parts separated by NUL (RFC 3501 §6.4.4 BODY)."""
    chunks = []
    for p in mime.walk(tree):
        if p.children:
            continue
        searched, cte = _body_view(data, p)
        if not searched:
            continue
        raw = _decode_body(data[p.body_start:p.body_end], cte)
        if raw is None:
            continue
        charset = p.param(b"charset")
        text = _charset_decode(raw, charset.decode("ascii", "replace")) if charset \
            else raw.decode("utf-8", "replace")
        chunks.append(fold(text))
    return "\0".join(chunks)


def header_text(data: bytes, tree: mime.Part) -> str:
    """Folded `Name: value` lines (value decoded) of every header block of every part, blocks
    separated by NUL (what TEXT matches besides the bodies, RFC 3501 §6.4.4)."""
    chunks = []
    for p in mime.walk(tree):
        lines = []
        for f in mime.iter_fields(data, p.header_start, p.header_end):
            # name and separator as written ("Subject:\tx"), then the decoded value
            raw = data[f.start:f.end]
            colon = raw.find(b":")
            if colon < 0:
                prefix = raw.rstrip(b"\r\n")  # a line without a colon
            else:
                colon += 1
                while colon < len(raw) and raw[colon] in (0x20, 0x09):
                    colon += 1
                prefix = raw[:colon]
            lines.append(prefix.decode("utf-8", "replace") + decode_header_value(f.value))
        chunks.append(fold("\r\n".join(lines)))
    return "\0".join(chunks)


@dataclass(frozen=True)
class Text:
    """A message's searchable texts (folded); `truncated`: cut at the size limit asked for."""

    body: str
    headers: str
    truncated: bool = False


def extract(message: bytes, limit: int | None = None) -> Text:
    """The searchable texts of a whole message (any line endings), each cut to `limit` characters
    when given (then `truncated` is set). Never raises on malformed MIME."""
    data = mime.to_crlf(message)
    tree = mime.parse(data)
    body, headers = body_text(data, tree), header_text(data, tree)
    cut = False
    if limit is not None:
        if len(body) > limit:
            body, cut = body[:limit], True
        if len(headers) > limit:
            headers, cut = headers[:limit], True
    return Text(body, headers, cut)


__all__ = ["Text", "body_text", "decode_base64", "decode_header_value", "extract", "fold", "header_text"]
