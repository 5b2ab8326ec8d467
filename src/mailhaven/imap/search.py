"""Evaluation of IMAP SEARCH criteria against one message (RFC 3501 §6.4.4), as Dovecot does it.

Owns: the meaning of each search key over a message's metadata and content: flags, sequence and
UID sets, sizes, internal and sent dates, header fields, BODY and TEXT. The criteria are the
`Search*` dataclasses of `imap/commands.py` (SearchAll, SearchFlag, SearchHeader, SearchText,
SearchDate, SearchSize, SearchSet, SearchNot, SearchOr, SearchAnd, SearchModseq, SearchWithin:
OLDER/YOUNGER of RFC 5032).

Does not own: parsing SEARCH (parser.py), rendering `* SEARCH` responses or CHARSET checks (session).

Messages are given through the small `SearchMessage` protocol so the session never reads a body
unless a key needs it: `header()` and `message()` are only called when a key asks for them
(`needs()` tells ahead of time which are needed for a whole tree).

Semantics (Dovecot 2.3 without full-text search; checked against a live Dovecot by
tests/integration/test_fetch_vs_dovecot.py, also on randomly damaged messages):
- Strings are substrings compared under `fold`: per character simple titlecase, then one level of
  Unicode decomposition, as Dovecot's i;unicode-casemap (RFC 5051) does.
- Header keys look at the top-level header only; values are unfolded and RFC 2047 encoded-words
  decoded to Unicode (raw 8-bit taken as UTF-8). An empty string matches any message that has
  the field (RFC 3501 §6.4.4 HEADER). FROM/TO/CC/BCC match the addresses as Dovecot rewrites
  them (`Name <local@domain>`, `<local@domain>`, `group: ...;`, names quoted unless one atom or
  holding an encoded-word, then decoded); SUBJECT has whitespace runs compressed; HEADER name
  matches the plain decoded value (see `header_kind`).
- BODY searches the decoded (base64 / quoted-printable, charset converted; us-ascii and unknown
  charsets read as UTF-8) bodies of every text/* and message/* leaf part (no Content-Type:
  text/plain). Like Dovecot's search it goes by the last Content-Type and the last readable
  Content-Transfer-Encoding of a part, skips parts in other encodings (x-uuencode) and reads
  base64 up to the first bad byte or the padding. TEXT searches the same plus every header block
  of every part (the message's and the MIME parts'), names and separators as written.
- BEFORE/ON/SINCE compare the internal date's calendar date in the server's time zone; SENT* compare
  the first Date: field's own calendar date (its zone ignored, RFC 3501 §6.4.4), read as strictly
  as Dovecot (`parse_date`); a message without a usable Date: counts as sent on 1 Jan 1970.
- SAVEDBEFORE/SAVEDON/SAVEDSINCE (RFC 8514) compare the save date (derived.py) as BEFORE/ON/SINCE
  the internal date; SAVEDATESUPPORTED matches every message; EMAILID (RFC 8474) compares the
  derived id, THREADID matches nothing (every THREADID is NIL).
- LARGER/SMALLER compare RFC822.SIZE strictly. Sequence and UID sets use SequenceSet.contains
  with "*" the largest number in use (RFC 3501 §6.4.8).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Protocol

from mailhaven.imap import commands as c
from mailhaven.imap import derived
from mailhaven.imap.fetchitems import GROUP_END, header_end, parse_address_list
from mailhaven.message import mime, textextract
from mailhaven.message.textextract import decode_base64 as decode_base64
from mailhaven.message.textextract import decode_header_value as decode_header_value
from mailhaven.message.textextract import fold as fold

# decode_base64, decode_header_value and fold live in message/textextract.py (shared with the
# full-text index, store/fts.py); they stay importable from here.

# --------------------------------------------------------------------------- input protocol


class SearchMessage(Protocol):
    """What the evaluator needs of one message. `header()`/`message()` may be slow (disk)."""

    @property
    def seq(self) -> int: ...

    @property
    def uid(self) -> int: ...

    @property
    def flags(self) -> Collection[str]: ...  # system flags with backslash, "\\Recent" if recent

    @property
    def internaldate(self) -> float: ...  # seconds since the epoch

    @property
    def size(self) -> int: ...  # RFC822.SIZE

    @property
    def modseq(self) -> int: ...  # RFC 7162 MODSEQ

    def header(self) -> bytes: ...  # the header block (may also be the whole message)

    def message(self) -> bytes: ...  # the whole message


@dataclass
class Message:
    """A ready-made SearchMessage over callables that load the bytes on first use."""

    seq: int
    uid: int
    flags: Collection[str]
    internaldate: float
    size: int
    load: Callable[[], bytes] | None = None
    modseq: int = 0
    header_bytes: bytes | None = None
    _data: bytes | None = field(default=None, repr=False)
    key: str = ""  # the Maildir key: EMAILID and the save date derive from it (derived.py)

    def message(self) -> bytes:
        if self._data is None:
            self._data = self.load() if self.load is not None else (self.header_bytes or b"")
        return self._data

    def header(self) -> bytes:
        if self.header_bytes is None:
            data = self.message()
            self.header_bytes = data[:header_end(data)]
        return self.header_bytes


@dataclass(frozen=True)
class SearchContext:
    """Mailbox-wide facts: the largest sequence number and UID (what "*" means, RFC 3501 §6.4.8)
    and the server's time zone for internal dates (None: the local zone)."""

    max_seq: int
    max_uid: int
    tz: tzinfo | None = None
    now: float = field(default_factory=time.time)  # for OLDER/YOUNGER (RFC 5032)


def _addresses_text(value: bytes) -> str:
    """Address header rewritten as Dovecot matches FROM/TO/CC/BCC: `Name <local@domain>`,
    `<local@domain>` without a name, `group: <a@b>, c <d@e>;`, then encoded-words decoded.

    A display name is written as it stands when it holds an encoded-word, bare when it is one
    atom, and quoted otherwise.
    """
    out = bytearray()
    need_sep = after_start = False
    for a in parse_address_list(value):
        if a == GROUP_END:
            out += b";"
            need_sep, after_start = True, False
            continue
        if need_sep:
            out += b", "
        elif after_start:
            out += b" "
        if a.host is None and a.mailbox is not None and a.adl is None and a.name is None:
            out += _display(a.mailbox) + b":"  # group start
            need_sep, after_start = False, True
            continue
        spec = (a.adl + b":" if a.adl else b"") + (a.mailbox or b"") + (b"@" + a.host if a.host else b"")
        out += (_display(a.name) + b" <" if a.name else b"<") + spec + b">"
        need_sep, after_start = True, False
    return decode_header_value(bytes(out))


def _display(name: bytes) -> bytes:
    return name if b"=?" in name else _maybe_quote(name)


def _maybe_quote(name: bytes) -> bytes:
    """A display name as Dovecot writes it for matching: bare when it is one atom, else quoted with
    '"', '\\' and "'" escaped by a backslash."""
    if all(ch in mime.ATEXT for ch in name):
        return name
    out = bytearray(b'"')
    for ch in name:
        if ch in b'"\\\'':
            out.append(0x5C)
        out.append(ch)
    out.append(0x22)
    return bytes(out)


class _Cache:
    """Per-message memo of the decoded forms the keys need."""

    __slots__ = ("msg", "_fields", "_full", "_tree", "_body", "_text")

    def __init__(self, msg: SearchMessage) -> None:
        self.msg = msg
        self._fields: list[mime.Field] | None = None
        self._full: bytes | None = None
        self._tree: mime.Part | None = None
        self._body: str | None = None
        self._text: str | None = None

    def fields(self) -> list[mime.Field]:
        if self._fields is None:
            hdr = mime.to_crlf(self.msg.header())
            end = header_end(hdr)
            self._fields = list(mime.iter_fields(hdr, 0, end))
        return self._fields

    def full(self) -> tuple[bytes, mime.Part]:
        if self._full is None or self._tree is None:
            self._full = mime.to_crlf(self.msg.message())
            self._tree = mime.parse(self._full)
        return self._full, self._tree

    def body_text(self) -> str:
        """Folded decoded text of every searchable leaf body, parts separated by NUL."""
        if self._body is None:
            self._body = textextract.body_text(*self.full())
        return self._body

    def header_text(self) -> str:
        """Folded `Name: value` lines (value decoded) of every header block of every part."""
        if self._text is None:
            self._text = textextract.header_text(*self.full())
        return self._text


# --------------------------------------------------------------------------- evaluation

_DEDICATED = {"From": "address", "To": "address", "Cc": "address", "Bcc": "address", "Subject": "subject"}


def header_kind(key: c.SearchHeader) -> str:
    """"address" (FROM/TO/CC/BCC), "subject" (SUBJECT) or "header" (HEADER name value).

    Dovecot gives the dedicated keys their own matching, but HEADER From/Subject match the plain
    decoded value. A `kind` attribute on the key wins; without one, the field names the parser
    produces for the dedicated keys ("From", "To", "Cc", "Bcc", "Subject") are taken to mean them.
    """
    kind = getattr(key, "kind", None)
    if isinstance(kind, str) and kind in ("address", "subject", "header"):
        return kind
    return _DEDICATED.get(key.field, "header")


def _header_match(cache: _Cache, key: c.SearchHeader) -> bool:
    lname = key.field.lower().encode("utf-8", "replace")
    kind = header_kind(key)
    needle = fold(key.value)
    for f in cache.fields():
        if f.name.lower() != lname:
            continue
        if not key.value:
            return True  # RFC 3501 §6.4.4 HEADER: empty string matches any message with the field
        if kind == "address":
            text = _addresses_text(f.value)
        else:
            text = decode_header_value(f.value)
            if kind == "subject":
                text = " ".join(text.split())  # Dovecot compresses whitespace for SUBJECT only
        if needle in fold(text):
            return True
    return False


def _local_date(ts: float, tz: tzinfo | None) -> date:
    if tz is None:
        return datetime.fromtimestamp(ts).date()
    return datetime.fromtimestamp(ts, tz).date()


_NO_DATE = date(1970, 1, 1)  # Dovecot's sent date for a missing or unparsable Date: field
_MONTHS = {m: i for i, m in enumerate(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"), 1)}


def _atom(lex: mime.Lexer) -> bytes | None:
    """An atom and the CFWS after it; None when something else is at the cursor."""
    if lex.at_end():
        return b""
    tok = lex.token(mime.ATEXT)
    if not tok:
        return None
    lex.skip_cfws()
    if lex.unterminated:  # an unclosed comment is an error (Dovecot)
        return None
    return tok


def parse_date(value: bytes) -> date | None:
    """The calendar date written in a Date: value, read as strictly as Dovecot reads it:
    `[weekday ","] d[d] month [yy]yy h[h]:mm[:ss] [zone]` (RFC 5322 §3.3; a 3-letter first word
    must be a weekday followed by ","). The zone is not applied (RFC 3501 §6.4.4 SENT*)."""
    value = value.replace(b"\x00", "\ufffd".encode())  # as Dovecot stores it; CR/LF are spaces
    lex = mime.Lexer(value)
    lex.skip_cfws()
    tok = _atom(lex)
    if not tok:
        return None
    if len(tok) == 3:  # weekday
        if lex.peek() != 0x2C:
            return None
        lex.pos += 1
        lex.skip_cfws()
        tok = _atom(lex)
        if not tok:
            return None
    if not (1 <= len(tok) <= 2 and tok.isdigit()):
        return None
    day = int(tok)
    tok = _atom(lex)
    if not tok or len(tok) < 3 or tok[:3].lower() not in _MONTHS:
        return None
    month = _MONTHS[tok[:3].lower()]
    tok = _atom(lex)
    if not tok or len(tok) not in (2, 4) or not tok.isdigit():
        return None
    year = int(tok)
    if len(tok) == 2:
        year += 2000 if year < 70 else 1900
    elif year < 1900:
        return None
    tok = _atom(lex)  # hour
    if not tok or not (1 <= len(tok) <= 2) or not tok.isdigit():
        return None
    if lex.peek() not in (0x3A, 0x2E):  # ":" or "."
        return None
    lex.pos += 1
    lex.skip_cfws()
    tok = _atom(lex)  # minutes
    if tok is None or len(tok) != 2 or not tok.isdigit():
        return None
    if not lex.at_end() and lex.peek() in (0x3A, 0x2E):
        lex.pos += 1
        lex.skip_cfws()
        tok = _atom(lex)  # seconds
        if not tok or len(tok) != 2 or not tok.isdigit():
            return None
    if _atom(lex) is None:  # the zone, if any
        return None
    try:  # out-of-range days roll over as with timegm()
        return date(year, month, 1) + timedelta(days=day - 1)
    except (ValueError, OverflowError):
        return None


def _sent_date(cache: _Cache) -> date:
    """The calendar date of the first Date: field as written (RFC 3501 §6.4.4 SENT*)."""
    value = next((f.value for f in cache.fields() if f.name.lower() == b"date"), None)
    if value is None:
        return _NO_DATE
    return parse_date(value) or _NO_DATE


def _compare(op: str, have: date, want: date) -> bool:
    if op == "before":
        return have < want
    if op == "on":
        return have == want
    return have >= want  # since


def _eval(key: c.SearchKey, msg: SearchMessage, ctx: SearchContext, cache: _Cache) -> bool:
    if isinstance(key, c.SearchAnd):
        return all(_eval(k, msg, ctx, cache) for k in key.keys)
    if isinstance(key, c.SearchAll):
        return True
    if isinstance(key, c.SearchFlag):
        want = key.flag.lower()
        has = any(f.lower() == want for f in msg.flags)
        return has == key.present
    if isinstance(key, c.SearchSet):
        if key.uid:
            return key.set.contains(msg.uid, ctx.max_uid)
        return key.set.contains(msg.seq, ctx.max_seq)
    if isinstance(key, c.SearchModseq):
        return msg.modseq >= key.modseq  # RFC 7162 §3.1.5: "greater than or equal"
    if isinstance(key, c.SearchSize):
        return msg.size > key.size if key.op == "larger" else msg.size < key.size
    if isinstance(key, c.SearchNot):
        return not _eval(key.key, msg, ctx, cache)
    if isinstance(key, c.SearchOr):
        return _eval(key.left, msg, ctx, cache) or _eval(key.right, msg, ctx, cache)
    if isinstance(key, c.SearchDate):
        if key.sent:
            return _compare(key.op, _sent_date(cache), key.date)
        if key.saved:  # RFC 8514 §4: the save date, compared as the internal date is
            return _compare(key.op, _local_date(derived.save_date(_key_of(msg), msg.internaldate), ctx.tz), key.date)
        return _compare(key.op, _local_date(msg.internaldate, ctx.tz), key.date)
    if isinstance(key, c.SearchObjectId):  # RFC 8474 §6; THREADID is NIL for every message
        return key.kind == "EMAILID" and derived.email_id(_key_of(msg)) == key.value
    if isinstance(key, c.SearchSaveDateSupported):  # RFC 8514 §4: every mailbox keeps save dates
        return True
    if isinstance(key, c.SearchWithin):
        # RFC 5032 §3, as Dovecot 2.3: whole seconds; OLDER n includes exactly n seconds ago
        cutoff = int(ctx.now) - key.seconds
        return int(msg.internaldate) <= cutoff if key.older else int(msg.internaldate) >= cutoff
    if isinstance(key, c.SearchHeader):
        return _header_match(cache, key)
    if isinstance(key, c.SearchText):
        needle = fold(key.value)
        if needle in cache.body_text():
            return True
        return key.headers and needle in cache.header_text()
    raise TypeError(f"unknown search key {key!r}")


def _key_of(msg: SearchMessage) -> str:
    """The message's Maildir key (derived.py's input), "" when the message has none."""
    key = getattr(msg, "key", "")
    return key if isinstance(key, str) else ""


def evaluate(key: c.SearchKey, msg: SearchMessage, ctx: SearchContext) -> bool:
    """Does `msg` match the search key tree `key`?"""
    return _eval(key, msg, ctx, _Cache(msg))


def search(key: c.SearchKey, msgs: Iterable[SearchMessage], ctx: SearchContext) -> list[SearchMessage]:
    """The messages of `msgs` that match `key`, in order."""
    return [m for m in msgs if evaluate(key, m, ctx)]


def needs(key: c.SearchKey) -> frozenset[str]:
    """Which message data `key` may read: a subset of {"header", "body"} (body implies all bytes).

    With an empty set the session can answer from its index alone.
    """
    out: set[str] = set()
    stack: list[c.SearchKey] = [key]
    while stack:
        k = stack.pop()
        if isinstance(k, c.SearchAnd):
            stack.extend(k.keys)
        elif isinstance(k, c.SearchNot):
            stack.append(k.key)
        elif isinstance(k, c.SearchOr):
            stack.extend((k.left, k.right))
        elif isinstance(k, c.SearchHeader) or (isinstance(k, c.SearchDate) and k.sent):
            out.add("header")
        elif isinstance(k, c.SearchText):
            out.add("body")
    return frozenset(out)
