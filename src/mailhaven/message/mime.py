"""MIME structure of a stored message, as offsets into its bytes (RFC 2045, 2046, 2183, 2231, 5322).

Owns: splitting a message (CRLF bytes) into a tree of `Part`s without copying any body: byte offsets
of each part's header and body, the parsed Content-* fields, body size in octets and lines, the
children of multipart/* parts and the encapsulated message of message/rfc822 parts. Also the small
RFC 5322 lexer (comments, quoted strings, tokens) that Content-* and address parsing need, and
header field iteration used by IMAP FETCH/SEARCH.

Does not own: decoding bodies or encoded-words (imap/search.py), IMAP rendering (imap/fetchitems.py).

Parsing follows Dovecot 2.3's message parser, because IMAP clients compare our answers with what
Dovecot gives for the same Maildir:
- A boundary line is any line starting with "--" + boundary (trailing text allowed); when several
  active boundaries match, the longest wins, the innermost on a tie. The CRLF before a boundary
  line belongs to the boundary (RFC 2046 §5.1.1), except after a line that itself ended a header.
- A missing close delimiter ends the multipart at the parent's next boundary or at the end of the
  message; a header block ends at its empty line or at a boundary line; a delimiter on the last
  line without a line end opens no part.
- Repeated Content-* fields, malformed types and parameters are read as `_apply_content_fields`,
  `parse_media_type` and `parse_params` describe; Content-* fields of a message header without
  MIME-Version or Content-Type are ignored.
- Limits: a multipart or message/rfc822 part at nesting level `MAX_DEPTH` becomes an opaque
  application/octet-stream leaf, and the `MAX_PARTS`-th part runs to the end of the message.
`parse()` never raises, whatever the input.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

MAX_DEPTH = 100  # nesting levels counting the message itself (Dovecot: max_nested_mime_parts)
MAX_PARTS = 10_000  # parts in one message (Dovecot: max_total_mime_parts)

Params = list[tuple[bytes, bytes]]


@dataclass(slots=True, eq=False)
class Part:
    """One MIME entity. Offsets index into the (CRLF-normalised) message bytes."""

    header_start: int
    header_end: int  # end of the header block, including its empty line when there is one
    body_start: int
    body_end: int
    body_lines: int = 0
    ctype: bytes | None = None  # media type as written (case kept); None: no Content-Type field
    csubtype: bytes = b""
    params: Params = field(default_factory=list)
    content_id: bytes | None = None
    description: bytes | None = None
    encoding: bytes | None = None  # Content-Transfer-Encoding token as written
    md5: bytes | None = None
    disposition: bytes | None = None
    disposition_params: Params = field(default_factory=list)
    language: list[bytes] | None = None
    location: bytes | None = None
    is_multipart: bool = False
    is_message: bool = False  # message/rfc822: children[0] is the encapsulated message
    is_text: bool = False
    children: list[Part] = field(default_factory=list)

    @property
    def body_size(self) -> int:
        return self.body_end - self.body_start

    def param(self, name: bytes) -> bytes | None:
        """The first Content-Type parameter `name` (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.params:
            if k.lower() == lname:
                return v
        return None


# --------------------------------------------------------------------------- line endings

_BARE_LF = re.compile(rb"(?<!\r)\n")


def to_crlf(msg: bytes) -> bytes:
    """`msg` with every bare LF turned into CRLF (IMAP sizes count CRLF; RFC 3501 §2.3.4)."""
    if msg.count(b"\n") == msg.count(b"\r\n"):
        return msg
    return _BARE_LF.sub(b"\r\n", msg)


# --------------------------------------------------------------------------- header fields

@dataclass(slots=True, frozen=True)
class Field:
    """One header field: `name` as written, `value` after the colon (leading WSP removed, folding
    CRLFs kept, final CRLF removed), `start`/`end` offsets of the whole field including its CRLF."""

    name: bytes
    value: bytes
    start: int
    end: int


def iter_fields(msg: bytes, start: int, end: int) -> Iterator[Field]:
    """The header fields in msg[start:end] (RFC 5322 §2.2, §2.2.3 folding)."""
    pos = start
    cur_start = -1
    while pos < end:
        nl = msg.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        first = msg[pos]
        if first in (0x20, 0x09) and cur_start >= 0:
            pos = line_end  # continuation line (RFC 5322 §2.2.3)
            continue
        if cur_start >= 0:
            f = _make_field(msg, cur_start, pos)
            if f is not None:
                yield f
        if msg[pos:line_end] in (b"\r\n", b"\n"):
            cur_start = -1  # the empty line ending the header
        else:
            cur_start = pos
        pos = line_end
    if cur_start >= 0:
        f = _make_field(msg, cur_start, end)
        if f is not None:
            yield f


def _make_field(msg: bytes, start: int, end: int) -> Field | None:
    raw = msg[start:end]
    colon = raw.find(b":")
    if colon < 0:
        return Field(b"", b"", start, end)  # no colon: a line without a name (Dovecot)
    name = raw[:colon].rstrip(b" \t")
    value = raw[colon + 1:]
    if value.endswith(b"\r\n"):
        value = value[:-2]
    elif value.endswith(b"\n"):
        value = value[:-1]
    return Field(name, value.lstrip(b" \t"), start, end)


def has_empty_line(msg: bytes, start: int, end: int) -> bool:
    """Does the header block msg[start:end] end with its empty line (RFC 5322 §2.1)?"""
    if end - start < 2 or msg[end - 2:end] != b"\r\n":
        return False
    return end - start == 2 or msg[end - 4:end - 2] == b"\r\n"


def header_values(msg: bytes, start: int, end: int, name: bytes) -> list[bytes]:
    """Values of every field called `name` (case-insensitive), in order."""
    lname = name.lower()
    return [f.value for f in iter_fields(msg, start, end) if f.name.lower() == lname]


_LINE_BREAK = re.compile(rb"[\r\n](?![ \t\r\n]|\Z)")


def unfold_nolf(value: bytes) -> bytes:
    """CR and LF removed as Dovecot writes header text into IMAP strings: a line break inside the
    text and not followed by whitespace (a bare CR within a line, say) becomes one space."""
    if b"\r" not in value and b"\n" not in value:
        return value
    return _LINE_BREAK.sub(b" ", value).replace(b"\r", b"").replace(b"\n", b"")


def unfold(value: bytes) -> bytes:
    """Remove the CR and LF bytes of folding, keeping the whitespace (RFC 5322 §2.2.3)."""
    if b"\n" in value or b"\r" in value:
        return value.replace(b"\r", b"").replace(b"\n", b"")
    return value


# --------------------------------------------------------------------------- RFC 5322 lexer

# RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
_TSPECIALS = frozenset(b'()<>@,;:\\"/[]?=')
TOKEN_CHARS = frozenset(c for c in range(0x21, 0x100) if c not in _TSPECIALS and c != 0x7F)
# RFC 5322 §3.2.3 atext, plus 8-bit (RFC 6532)
ATEXT = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~") | \
    frozenset(range(0x80, 0x100))


class Lexer:
    """A cursor over one header value for the RFC 5322 / RFC 2045 grammars."""

    __slots__ = ("data", "pos", "end", "last_comment", "unterminated")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.last_comment: bytes | None = None
        self.unterminated = False  # a quoted-string or comment ran to the end unclosed

    def at_end(self) -> bool:
        return self.pos >= self.end

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < self.end else -1

    def skip_cfws(self) -> bool:
        """Skip whitespace and (nested) comments (RFC 5322 §3.2.2). False at end of data."""
        data, end = self.data, self.end
        while self.pos < end:
            c = data[self.pos]
            if c in (0x20, 0x09, 0x0D, 0x0A):
                self.pos += 1
            elif c == 0x28:  # "("
                self._comment()
            else:
                return True
        return False

    def _comment(self) -> None:
        data, end = self.data, self.end
        depth = 0
        out = bytearray()
        kept = 0  # for an unclosed comment Dovecot keeps the text up to its last line end
        while self.pos < end:
            c = data[self.pos]
            self.pos += 1
            if c == 0x5C and self.pos < end:  # quoted-pair
                out.append(data[self.pos])
                self.pos += 1
                continue
            if c == 0x28:
                depth += 1
                if depth == 1:
                    continue
            elif c == 0x29:
                depth -= 1
                if depth == 0:
                    break
            if c == 0x0A:
                kept = len(out)
            elif c != 0x0D:
                out.append(c)
        else:
            self.unterminated = True  # the comment never closed
            del out[kept:]
        self.last_comment = bytes(out)

    def token(self, chars: frozenset[int] = TOKEN_CHARS) -> bytes:
        """The longest run of `chars` at the cursor (maybe empty)."""
        data, end = self.data, self.end
        start = self.pos
        p = start
        while p < end and data[p] in chars:
            p += 1
        self.pos = p
        return data[start:p]

    def quoted_string(self) -> bytes:
        """A quoted-string at the cursor, unquoted (RFC 5322 §3.2.4); folding CR/LF dropped."""
        data, end = self.data, self.end
        self.pos += 1  # opening quote
        out = bytearray()
        while self.pos < end:
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C and self.pos < end:
                out.append(data[self.pos])
                self.pos += 1
            elif c == 0x0A or (c == 0x0D and self.pos < end and data[self.pos] == 0x0A):
                pass  # folding; a lone CR stays (Dovecot)
            else:
                out.append(c)
        self.unterminated = True
        return bytes(out)

    def value(self) -> bytes:
        """A parameter value: quoted-string or token (RFC 2045 §5.1), and the CFWS after it.

        Like Dovecot, an unquoted value starting with "=" (a bare encoded-word, which RFC 2047 §5
        forbids here but mailers send) runs to the next ";" or whitespace.
        """
        c = self.peek()
        if c == 0x22:
            value = self.quoted_string()
            self.skip_cfws()
            return value
        if c == 0x3D:
            data, end = self.data, self.end
            start = p = self.pos
            while p < end and data[p] not in b"; \t\r\n":
                p += 1
            self.pos = p
            return data[start:p]
        value = self.token()
        self.skip_cfws()
        return value


def parse_params(lex: Lexer) -> Params:
    """`*(";" parameter)` after a Content-Type/Disposition value (RFC 2045 §5.1), with RFC 2231
    continuations merged.

    Recovery follows Dovecot: where a parameter cannot be read, skip one byte and look for the next
    ";" (so `name=a b; charset=x` still yields charset); a missing value is ""; an empty name is
    kept; a name without "=" is dropped together with the byte after it.
    """
    raw: Params = []
    data, end = lex.data, lex.end
    while lex.pos < end:
        if data[lex.pos] != 0x3B:  # ";"
            lex.pos += 1  # not a parameter: skip a byte and try again
            continue
        lex.pos += 1
        if not lex.skip_cfws():
            break
        key = lex.token()
        if not lex.skip_cfws():
            break
        if lex.peek() != 0x3D:  # "=" missing: Dovecot skips the byte it stopped at
            lex.pos += 1
            continue
        lex.pos += 1
        value = lex.value() if lex.skip_cfws() else b""
        if lex.unterminated:
            break  # an unclosed quoted string: Dovecot drops the parameter
        raw.append((key, value))
    return merge_rfc2231(raw)


def merge_rfc2231(raw: Params) -> Params:
    """Merge `name*0*=`, `name*1=` ... continuations (RFC 2231 §3, §4) into one `name*` parameter.

    The values are concatenated as written (not decoded); a name gets a trailing "*" when any piece
    was extended. With a gap in the numbering the pieces are kept as they were. Plain parameters keep
    their order and come first, merged ones follow sorted by name, as Dovecot reports them.
    """
    plain: Params = []
    pieces: list[tuple[bytes, int, bool, bytes]] = []
    for key, value in raw:
        star = key.find(b"*")
        if star < 0:
            plain.append((key, value))
            continue
        rest = key[star + 1:]
        idx = 0
        digits = 0
        while digits < len(rest) and 0x30 <= rest[digits] <= 0x39:
            idx = idx * 10 + rest[digits] - 0x30
            digits += 1
        rest = rest[digits:]
        if digits == 0 and rest == b"":
            rest = b"*"  # "name*=charset'lang'value": one extended piece (RFC 2231 §4)
        extended = rest == b"*"
        if rest not in (b"", b"*"):
            plain.append((key, value))
            continue
        pieces.append((key[:star], idx, extended, value))
    if not pieces:
        return plain
    pieces.sort(key=lambda p: (p[0].lower(), p[1]))
    out = plain
    i = 0
    while i < len(pieces):
        j = i
        base = pieces[i][0].lower()
        while j < len(pieces) and pieces[j][0].lower() == base:
            j += 1
        group = pieces[i:j]
        if all(p[1] == n for n, p in enumerate(group)):
            any_ext = any(p[2] for p in group)
            name = group[0][0] + (b"*" if any_ext else b"")
            out.append((name, b"".join(p[3] for p in group)))
        else:
            for name, idx, ext, value in group:
                out.append((b"%s*%d%s" % (name, idx, b"*" if ext else b""), value))
        i = j
    return out


# --------------------------------------------------------------------------- Content-* fields

def parse_media_type(value: bytes) -> tuple[bytes, bytes, Lexer | None]:
    """(type, subtype, lexer positioned at the parameters or None) of a Content-Type value.

    Broken values are read the way Dovecot reads them: a lone `text` is kept (subtype ""), but any
    other malformation (`text; x=y`, `text/`, `text/pl ain`, `text/@x`) gives type "" and no
    parameters (RFC 2045 §5.1 grammar otherwise).
    """
    lex = Lexer(value)
    lex.skip_cfws()
    ctype = lex.token()
    if not ctype:
        return b"", b"", None
    if not lex.skip_cfws():
        return ctype, b"", None  # a lone type (even before an unclosed comment)
    if lex.peek() != 0x2F:  # "/"
        return b"", b"", None
    lex.pos += 1
    if not lex.skip_cfws():
        return b"", b"", None
    subtype = lex.token()
    if lex.skip_cfws() and lex.peek() != 0x3B:  # anything but ";" after the subtype
        return b"", b"", None
    if not subtype or lex.unterminated:
        return b"", b"", None
    return ctype, subtype, lex


def _parse_content_type(part: Part, value: bytes) -> None:
    part.ctype, part.csubtype, lex = parse_media_type(value)
    if lex is not None:
        part.params = parse_params(lex)


def _parse_disposition(part: Part, value: bytes) -> None:
    lex = Lexer(value)
    lex.skip_cfws()
    part.disposition = lex.token()  # may be empty: Dovecot then reports ("" ...)
    part.disposition_params = []
    part.disposition_params = parse_params(lex)


def _parse_language(value: bytes) -> list[bytes]:
    lex = Lexer(value)
    langs: list[bytes] = []
    while lex.skip_cfws():
        tok = lex.token(ATEXT)
        if not tok:
            break
        langs.append(tok)
        if not lex.skip_cfws() or lex.peek() != 0x2C:  # ","
            break
        lex.pos += 1
    return langs


def _simple_value(value: bytes) -> bytes:
    value = unfold_nolf(value)  # trailing whitespace is kept, as Dovecot does
    if b"\x00" in value:
        value = value.replace(b"\x00", "\ufffd".encode())  # Dovecot stores NUL as U+FFFD
    return value


def _apply_content_fields(part: Part, msg: bytes, start: int, end: int, message: bool) -> None:
    """Fill the Content-* attributes from the header block, choosing among repeated fields as
    Dovecot does: the first Content-Type, -ID, -Description, -MD5 and -Location; the first
    readable Content-Transfer-Encoding and Content-Language; Content-Disposition fields are read
    until one carries parameters.

    The header of a message (the top level or one inside message/rfc822) is MIME only with a
    MIME-Version or Content-Type field (RFC 2045 §4); without either, Dovecot ignores every
    Content-* field there. Parts of a multipart are always MIME.
    """
    fields = list(iter_fields(msg, start, end))
    if message and not any(f.name.lower() in (b"mime-version", b"content-type") for f in fields):
        return
    seen: set[bytes] = set()
    for f in fields:
        name = f.name.lower()
        if not name.startswith(b"content-"):
            continue
        v = f.value
        if name == b"content-disposition":
            if not part.disposition_params:
                _parse_disposition(part, v)
            continue
        if name in seen:
            continue
        if name == b"content-transfer-encoding":
            lex = Lexer(v)
            lex.skip_cfws()
            token = lex.token()
            # anything after the token makes the field unreadable: then the next one counts
            if token and not lex.skip_cfws() and not lex.unterminated:
                part.encoding = token
                seen.add(name)
            continue
        if name == b"content-language":
            part.language = _parse_language(v) or None
            if part.language is not None:
                seen.add(name)
            continue
        seen.add(name)
        if name == b"content-type":
            _parse_content_type(part, v)
        elif name == b"content-id":
            part.content_id = _simple_value(v)
        elif name == b"content-description":
            part.description = _simple_value(v)
        elif name == b"content-md5":
            part.md5 = _simple_value(v)
        elif name == b"content-location":
            part.location = _simple_value(v)


# --------------------------------------------------------------------------- the parser

@dataclass(slots=True, frozen=True)
class _Hit:
    """A boundary line found while scanning: which active boundary, and whether it closes."""

    index: int
    close: bool
    line_start: int
    next_line: int
    # The CRLF before this boundary line ended a header that the boundary cut short: Dovecot then
    # counts it in the bodies of the parts that end here, not in the boundary.
    keep_crlf: bool = False
    # The boundary line came right after a header's empty line (see _Parser.part).
    after_blank: bool = False


class _Parser:
    __slots__ = ("msg", "n", "parts", "hit")

    def __init__(self, msg: bytes) -> None:
        self.msg = msg
        self.n = len(msg)
        self.parts = 0
        self.hit: _Hit | None = None

    # -- boundaries ---------------------------------------------------------

    def _match(self, ls: int, bounds: list[bytes]) -> _Hit | None:
        """Is the line at `ls` ("--..." known) a boundary line of one of `bounds`?"""
        msg = self.msg
        nl = msg.find(b"\n", ls)
        line_end = self.n if nl < 0 else nl
        best = -1
        best_len = -1
        for i in range(len(bounds) - 1, -1, -1):  # innermost first; longest match wins
            b = bounds[i]
            if len(b) > best_len and msg.startswith(b, ls + 2) and ls + 2 + len(b) <= line_end:
                best, best_len = i, len(b)
        if best < 0:
            return None
        after = ls + 2 + best_len
        close = msg.startswith(b"--", after) and after + 2 <= line_end
        return _Hit(best, close, ls, self.n if nl < 0 else nl + 1)

    def _scan(self, pos: int, bounds: list[bytes]) -> _Hit | None:
        """The first boundary line at or after line start `pos`."""
        if not bounds:
            return None
        msg = self.msg
        if msg.startswith(b"--", pos):
            h = self._match(pos, bounds)
            if h is not None:
                return h
        while True:
            i = msg.find(b"\n--", pos)
            if i < 0:
                return None
            h = self._match(i + 1, bounds)
            if h is not None:
                return h
            pos = i + 1

    def _end_before(self, hit: _Hit | None, floor: int) -> int:
        """Body end for a body running up to `hit`: the CRLF before the boundary is not ours."""
        if hit is None:
            return self.n
        end = hit.line_start
        if hit.keep_crlf:
            return max(end, floor)
        msg = self.msg
        if end >= 2 and msg[end - 2:end] == b"\r\n":
            end -= 2
        elif end >= 1 and msg[end - 1:end] == b"\n":
            end -= 1
        return max(end, floor)

    # -- headers ------------------------------------------------------------

    def _header_end(self, start: int, bounds: list[bytes]) -> tuple[int, int, _Hit | None]:
        """(end of the header block, start of the body, boundary that ended it or None)."""
        msg = self.msg
        pos = start
        while pos < self.n:
            blank = 2 if msg.startswith(b"\r\n", pos) else 1 if msg.startswith(b"\n", pos) else 0
            if blank:
                nxt = pos + blank
                if bounds and msg.startswith(b"--", nxt):
                    # an empty line right before a boundary is the boundary's CRLF, not a
                    # header terminator (RFC 2046 §5.1.1)
                    h = self._match(nxt, bounds)
                    if h is not None:
                        return pos, pos, dataclasses.replace(h, keep_crlf=True, after_blank=True)
                return nxt, nxt, None
            if bounds and msg.startswith(b"--", pos):
                h = self._match(pos, bounds)
                if h is not None:
                    end = self._end_before(h, start)
                    if pos > start:
                        h = dataclasses.replace(h, keep_crlf=True)
                    return end, end, h
            nl = msg.find(b"\n", pos)
            if nl < 0:
                return self.n, self.n, None
            pos = nl + 1
        return self.n, self.n, None

    # -- parts --------------------------------------------------------------

    def part(self, start: int, bounds: list[bytes], depth: int, digest: bool, message: bool = True) -> Part:
        """Parse the entity at `start` (`message`: a message header rather than a multipart's part);
        afterwards `self.hit` is the boundary line that ended it."""
        self.parts += 1
        if self.parts >= MAX_PARTS:
            bounds = []  # the last part allowed: like Dovecot, it runs to the end of the message
        header_end, body_start, hit = self._header_end(start, bounds)
        part = Part(start, header_end, body_start, body_start)
        _apply_content_fields(part, self.msg, start, header_end, message)
        if part.ctype is None:
            # RFC 2045 §5.2 default text/plain; RFC 2046 §5.1.5 message/rfc822 inside a digest
            ltype, lsub = (b"message", b"rfc822") if digest else (b"text", b"plain")
        else:
            ltype, lsub = part.ctype.lower(), part.csubtype.lower()
        part.is_text = ltype == b"text"
        part.is_multipart = ltype == b"multipart"
        part.is_message = ltype == b"message" and lsub == b"rfc822"
        if part.ctype is None and digest:
            part.ctype, part.csubtype = b"message", b"rfc822"
        nested_ok = depth < MAX_DEPTH - 1 and self.parts < MAX_PARTS
        if not nested_ok and (part.is_multipart or part.is_message):
            # too deep (or too many parts): like Dovecot, the part becomes an opaque
            # application/octet-stream leaf, keeping its parameters
            part.ctype, part.csubtype = b"application", b"octet-stream"
            part.is_multipart = part.is_message = False
        if hit is not None and hit.after_blank and part.is_multipart and nested_ok:
            # An empty line, then a boundary line: if the line is this multipart's own boundary
            # (it wins over an equal or shorter parent boundary), the empty line ends the header
            # and the body starts with that boundary; otherwise the part is cut (Dovecot).
            own = part.param(b"boundary")
            if own is not None:
                again = self._match(hit.line_start, [*bounds, own])
                if again is not None and again.index == len(bounds):
                    header_end = body_start = part.header_end = part.body_start = hit.line_start
                    part.body_end = body_start
                    hit = None
        if hit is not None:  # the header ran into a boundary: no body
            if part.is_message:  # ... but still an (empty) encapsulated message
                part.children.append(Part(body_start, body_start, body_start, body_start, is_text=True))
            self.hit = hit
            return part
        if part.is_multipart and nested_ok:
            boundary = part.param(b"boundary")
            floor = body_start
            if boundary is not None:  # even an empty one: then every "--" line is a boundary
                hit, floor = self._multipart(part, bounds, boundary, depth, lsub == b"digest")
            else:
                hit = self._scan(body_start, bounds)
            if part.children:  # never end before the last part (which keeps a close line's CRLF)
                floor = max(floor, part.children[-1].body_end)
            part.body_end = self._end_before(hit, floor)
        elif part.is_message and nested_ok:
            child = self.part(body_start, bounds, depth + 1, False)
            part.children.append(child)
            hit = self.hit
            part.body_end = max(self._end_before(hit, body_start), child.body_end)
        else:
            hit = self._scan(body_start, bounds)
            part.body_end = self._end_before(hit, body_start)
        part.body_lines = self.msg.count(b"\n", part.body_start, part.body_end)
        self.hit = hit
        return part

    def _multipart(self, part: Part, bounds: list[bytes], boundary: bytes, depth: int,
                   digest: bool) -> tuple[_Hit | None, int]:
        """Parse the children; return the boundary that ended the multipart and the lowest offset
        its body may end at: just after its last own delimiter line, which keeps its own CRLF."""
        inner = [*bounds, boundary]
        mine = len(bounds)
        hit = self._scan(part.body_start, inner)  # skip the preamble (RFC 2046 §5.1.1)
        floor = part.body_start
        while hit is not None and hit.index == mine and not hit.close:
            if not self.msg.endswith(b"\n", hit.line_start, hit.next_line):
                # a delimiter on the last line, without a line end, opens no part (Dovecot)
                return None, hit.next_line
            floor = hit.next_line
            child = self.part(hit.next_line, inner, depth + 1, digest, message=False)
            part.children.append(child)
            hit = self.hit
        if hit is not None and hit.index == mine:  # close delimiter: the epilogue follows
            floor = hit.next_line
            hit = self._scan(hit.next_line, bounds)
        return hit, floor


def parse(msg: bytes) -> Part:
    """The MIME tree of `msg` (CRLF-normalised bytes, see `to_crlf`). Never raises on any input."""
    return _Parser(msg).part(0, [], 0, False)


def walk(part: Part) -> Iterator[Part]:
    """`part` and all parts below it, depth first, in document order."""
    stack = [part]
    while stack:
        p = stack.pop()
        yield p
        stack.extend(reversed(p.children))
