"""Rendering of IMAP FETCH data items as wire bytes (RFC 3501 §6.4.5, §7.4.2).

Owns: ENVELOPE, BODYSTRUCTURE, BODY, BODY[section]<partial> extraction, RFC822.SIZE, INTERNALDATE
and FLAGS, byte for byte as Dovecot 2.3 renders them for the same message, so clients see no
difference when a Maildir moves between the two servers.

Does not own: the FETCH command parsing, response framing (`* n FETCH (...)`) or \\Seen handling.

Calling convention: every function takes the message bytes; bare LF is converted to CRLF
(`mime.to_crlf`) inside, since IMAP sizes count CRLF. A caller that parses once and passes `tree`
must parse `mime.to_crlf(msg)` and pass those same bytes. `envelope()` needs only the header
block, so a session can render ENVELOPE for a whole mailbox from cached headers.

Dovecot conventions kept here (each checked against a live Dovecot by
tests/integration/test_fetch_vs_dovecot.py, also on randomly damaged messages):
- ENVELOPE strings are the raw header text, not decoded. Subjects and display names go through
  `encode.human_string` (whitespace collapsed); date, message-id and in-reply-to have CR/LF removed
  (`mime.unfold_nolf`); NUL in them becomes U+FFFD. The last Date/Subject/Message-ID/In-Reply-To
  field wins; address fields accumulate all fields. Sender and Reply-To default to From
  (RFC 3501 §7.4.2).
- Addresses are parsed with Dovecot's recovery: missing parts are "MISSING_MAILBOX" /
  "MISSING_DOMAIN", a broken <angle-addr> has the domain "SYNTAX_ERROR", a broken route is
  "INVALID_ROUTE", and the list ends at the first address not followed by ",".
- BODYSTRUCTURE keeps the case of types and parameters as written (but message/rfc822 is always
  "message" "rfc822"); a missing Content-Type is "text" "plain" ("charset" "us-ascii"); text parts
  without a charset get "charset" "us-ascii" after their other parameters; a missing or garbled
  encoding is "7bit"; a multipart without parts shows one empty text/plain part.
- BODY[section] follows Dovecot's part resolution (`find_part`) and header filtering
  (`_header_data`); literals never carry NUL (sent as 0x80, like Dovecot).
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Protocol

from mailhaven.imap.encode import NIL, human_string, nlist, nstring, plist, string
from mailhaven.message import mime
from mailhaven.message.mime import Lexer, Part

# --------------------------------------------------------------------------- header access


def header_end(msg: bytes) -> int:
    """Offset just past the message header block (its empty line included when present)."""
    if msg.startswith(b"\r\n"):
        return 2
    if msg.startswith(b"\n"):
        return 1
    m = _HDR_END.search(msg)
    return len(msg) if m is None else m.end()


_HDR_END = re.compile(rb"\n\r?\n")


# --------------------------------------------------------------------------- addresses

@dataclass(slots=True, frozen=True)
class Address:
    """An ENVELOPE address (RFC 3501 §7.4.2): None renders as NIL. Group start: name, adl and host
    None with the group name in `mailbox`; group end: all four None (RFC 3501 §7.4.2)."""

    name: bytes | None
    adl: bytes | None
    mailbox: bytes | None
    host: bytes | None


GROUP_END = Address(None, None, None, None)
MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"
SYNTAX_ERROR = b"SYNTAX_ERROR"  # host of an address whose <angle-addr> is broken
INVALID_ROUTE = b"INVALID_ROUTE"  # adl of an address whose source route is broken

_PHRASE_ATOM = mime.ATEXT | frozenset(b".")
_DOT, _QUOTE, _LT, _GT, _AT, _COMMA, _COLON, _SEMI = b".", b'"', b"<", b">", b"@", b",", b":", b";"


class _AddressParser:
    """RFC 5322 §3.4 address-list parser that recovers from errors the way Dovecot does.

    Return codes follow Dovecot's rfc822 parser: -1 error, 0 end of input, 1 more input follows.
    A name-addr whose angle-addr is broken gets the domain "SYNTAX_ERROR"; missing parts become
    "MISSING_MAILBOX" / "MISSING_DOMAIN"; the list ends at the first address not followed by ",".
    """

    def __init__(self, value: bytes) -> None:
        self.lex = Lexer(value)
        self.out: list[Address] = []
        self.name: bytes | None = None
        self.route: bytes | None = None
        self.mailbox: bytes | None = None
        self.domain: bytes | None = None

    def _reset(self) -> None:
        self.name = self.route = self.mailbox = self.domain = None

    def _more(self) -> int:
        """Skip CFWS: 1 if input follows, 0 at the end, -1 after an unclosed comment."""
        lex = self.lex
        lex.unterminated = False
        if lex.skip_cfws():
            return 1
        return -1 if lex.unterminated else 0

    def _at(self, ch: bytes) -> bool:
        return self.lex.peek() == ch[0]

    # -- lexical pieces -------------------------------------------------------

    def _quoted(self) -> tuple[bytes, int]:
        lex = self.lex
        lex.unterminated = False
        text = lex.quoted_string()
        if lex.unterminated:
            return text, -1
        return text, self._more()

    def _phrase(self) -> tuple[bytes, int]:
        """RFC 5322 §3.2.5 phrase incl. obs-phrase ("." allowed): words joined by one space."""
        lex = self.lex
        if lex.at_end():
            return b"", 0
        if self._at(_DOT):
            return b"", -1
        words: list[bytes] = []
        while True:
            if self._at(_QUOTE):
                word, ret = self._quoted()
            else:
                word = lex.token(_PHRASE_ATOM)
                ret = -1 if not word else self._more()
            if ret < 0:
                return b" ".join(words), -1
            words.append(word)
            if ret == 0:
                return b" ".join(words), 0
            c = lex.peek()
            if c not in mime.ATEXT and c not in b'".':
                return b" ".join(words), 1

    def _dot_atom(self) -> tuple[bytes, int]:
        lex = self.lex
        parts = [lex.token(mime.ATEXT)]
        if not parts[0]:
            return b"", -1
        while True:
            ret = self._more()
            if ret <= 0:
                return b".".join(parts), ret
            if not self._at(_DOT):
                return b".".join(parts), 1
            lex.pos += 1
            ret = self._more()
            if ret <= 0:
                return b".".join(parts) + b".", -1  # a trailing dot: no domain (Dovecot)
            tok = lex.token(mime.ATEXT)
            if not tok:
                return b".".join(parts) + b".", -1
            parts.append(tok)

    def _domain(self) -> int:
        """"@" domain (RFC 5322 §3.4.1): dot-atom or a domain-literal kept with its brackets."""
        lex = self.lex
        lex.pos += 1  # "@"
        if not lex.skip_cfws():
            return 0
        if lex.peek() == 0x5B:  # "["
            close = lex.data.find(b"]", lex.pos)
            if close < 0:
                return -1
            self.domain = mime.unfold(lex.data[lex.pos:close + 1])
            lex.pos = close + 1
            return self._more()
        domain, ret = self._dot_atom()
        if ret >= 0:
            self.domain = domain
        return ret

    # -- grammar ---------------------------------------------------------------

    def _addr_spec(self, in_angle: bool = False) -> int:
        lex = self.lex
        lex.last_comment = None
        quoted = self._at(_QUOTE)
        if quoted:
            local, ret = self._quoted()
        else:
            # Dovecot takes dots anywhere in a local part ("a..b", ".a", "a.")
            local = lex.token(_PHRASE_ATOM)
            ret = -1 if not local else self._more()
        if ret >= 0:
            self.mailbox = local
        no_domain = True
        if ret != 0 and self._at(_AT):
            no_domain = False
            ret2 = self._domain()
            if ret2 <= 0:
                ret = ret2
        if lex.last_comment:
            if not in_angle:  # "u@h (Name)"; comments inside <...> do not name anyone
                self.name = lex.last_comment
        elif no_domain:
            # a local part without "@domain": if words follow, it was a display name
            more, _ = self._phrase()
            if more and self.mailbox is not None:
                self.name = self.mailbox + b" " + more
                self.mailbox = None
            elif quoted and self.mailbox and not more:
                self.name, self.mailbox = self.mailbox, None  # a lone "quoted name"
            ret = -1
        return ret

    def _route(self) -> bool:
        """obs-route (RFC 5322 §4.4) `@a,@b:` at the cursor; False (cursor after what was read)
        when it is broken, which Dovecot reports as the route "INVALID_ROUTE"."""
        lex = self.lex
        domains: list[bytes] = []
        while self._at(_AT):
            lex.pos += 1
            if not lex.skip_cfws():
                return False
            domain, ret = self._dot_atom()
            if ret < 0:
                return False
            domains.append(b"@" + domain)
            while ret > 0 and self._at(_COMMA):
                lex.pos += 1
                ret = self._more()
            if ret <= 0:
                return False
        if not self._at(_COLON):
            return False
        lex.pos += 1
        self.route = b",".join(domains)
        return True

    def _angle_addr(self) -> int:
        lex = self.lex
        lex.pos += 1  # "<"
        if not lex.skip_cfws():
            return -1
        if self._at(_AT):
            if not self._route():
                self.route = INVALID_ROUTE  # and go on with what follows, as Dovecot does
            if not lex.skip_cfws():
                return -1
        if self._at(_GT):  # "<>"
            lex.pos += 1
            return self._more()
        self._addr_spec(in_angle=True)  # a broken addr-spec still counts if ">" follows
        if not self._at(_GT):
            return -1
        lex.pos += 1
        return self._more()

    def _name_addr(self) -> int:
        if self._at(_LT):
            name, ret = b"", 1
        else:
            name, ret = self._phrase()
        if ret <= 0 or not self._at(_LT):
            return -1
        self.name = name or None
        if self._angle_addr() < 0:
            self.domain = SYNTAX_ERROR
        return 0 if self.lex.at_end() else 1

    def _mailbox(self) -> int:
        lex = self.lex
        start = lex.pos
        self._reset()
        ret = self._name_addr()
        if ret < 0:
            lex.pos = start
            self._reset()
            ret = self._addr_spec()
        self.out.append(Address(self.name or None, self.route, self.mailbox or MISSING_MAILBOX,
                                self.domain or MISSING_DOMAIN))
        return ret

    def _group(self) -> int:
        lex = self.lex
        name, ret = self._phrase()
        if ret <= 0 or not self._at(_COLON):
            return -1
        lex.pos += 1
        ret = self._more()
        self.out.append(Address(None, None, name, None))
        if ret > 0 and not self._at(_SEMI):
            while True:
                self._mailbox()
                if lex.at_end() or not self._at(_COMMA):
                    break
                lex.pos += 1
                if not lex.skip_cfws():
                    ret = -1
                    break
        if ret >= 0:
            if lex.at_end() or not self._at(_SEMI):
                ret = -1
            else:
                lex.pos += 1
                ret = self._more()
        self.out.append(GROUP_END)
        return 0 if ret == 0 else 1

    def parse(self) -> list[Address]:
        lex = self.lex
        if not lex.skip_cfws():
            return self.out
        while True:
            start = lex.pos
            if self._group() < 0:
                lex.pos = start
                self._mailbox()
            if lex.at_end() or not self._at(_COMMA):
                break
            lex.pos += 1
            lex.unterminated = False
            if not lex.skip_cfws():
                if lex.unterminated:  # "a@b, (unclosed comment": Dovecot adds an empty address
                    self.out.append(Address(None, None, MISSING_MAILBOX, MISSING_DOMAIN))
                break
        return self.out


_ATEXT_RE = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff-]+"
_DOT_ATOM_RE = _ATEXT_RE + rb"(?:\." + _ATEXT_RE + rb")*"
_SIMPLE_ADDR = re.compile(
    rb"[ \t]*(?:(?P<name>(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff.-]+[ \t]+)*)<(?P<l1>" + _DOT_ATOM_RE
    + rb")@(?P<d1>" + _DOT_ATOM_RE + rb")>|(?P<l2>" + _DOT_ATOM_RE + rb")@(?P<d2>" + _DOT_ATOM_RE
    + rb"))[ \t]*")
_NOT_SIMPLE = re.compile(rb'["(\\:;\[\r\n]')


def _simple_addresses(value: bytes) -> list[Address] | None:
    """Fast path for the common `a@b` / `Name Words <a@b>` lists; None when anything is unusual."""
    if _NOT_SIMPLE.search(value):
        return None
    out = []
    for piece in value.split(b","):
        m = _SIMPLE_ADDR.fullmatch(piece)
        if m is None:
            return None
        if m["l1"] is not None:
            name = b" ".join(m["name"].split()) if m["name"] else None
            out.append(Address(name or None, None, m["l1"], m["d1"]))
        else:
            out.append(Address(None, None, m["l2"], m["d2"]))
    return out


def parse_address_list(value: bytes) -> list[Address]:
    """Addresses in an address-list header value (RFC 5322 §3.4) as ENVELOPE wants them."""
    fast = _simple_addresses(value)
    if fast is not None:
        return fast
    return parse_address_list_slow(value)


def parse_address_list_slow(value: bytes) -> list[Address]:
    """The full parser behind `parse_address_list` (comments, groups, quoting, routes, errors)."""
    return _AddressParser(value).parse()


def _address_list(addrs: list[Address]) -> bytes:
    if not addrs:
        return NIL
    items = []
    for a in addrs:
        name = NIL if a.name is None else human_string(a.name)
        items.append(plist([name, nstring(a.adl), nstring(a.mailbox), nstring(a.host)]))
    return b"(" + b"".join(items) + b")"


# --------------------------------------------------------------------------- ENVELOPE

_ENV_FIELDS = {b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
               b"in-reply-to", b"message-id"}
_ADDR_FIELDS = (b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc")


def envelope(msg: bytes, part: Part | None = None) -> bytes:
    """ENVELOPE of `msg` (RFC 3501 §7.4.2), or of the header block at `part.header_start` (the
    encapsulated message of a message/rfc822 part). `msg` may be just the header bytes."""
    msg = mime.to_crlf(msg)
    if part is None:
        start, end = 0, header_end(msg)
    else:
        start, end = part.header_start, part.header_end
    return envelope_from_fields(mime.iter_fields(msg, start, end))


def envelope_from_fields(fields: Iterable[mime.Field]) -> bytes:
    single: dict[bytes, bytes] = {}
    addrs: dict[bytes, list[Address]] = {}
    for f in fields:
        name = f.name.lower()
        if name not in _ENV_FIELDS:
            continue
        if b"\x00" in f.value and name not in _ADDR_FIELDS:  # Dovecot stores NUL as U+FFFD
            f = mime.Field(f.name, f.value.replace(b"\x00", "\ufffd".encode()), f.start, f.end)
        if name in _ADDR_FIELDS:
            addrs.setdefault(name, []).extend(parse_address_list(f.value))
        else:
            single[name] = f.value  # the last field wins, as in Dovecot
    frm = addrs.get(b"from", [])
    sender = addrs.get(b"sender") or frm  # RFC 3501 §7.4.2: default to From
    reply_to = addrs.get(b"reply-to") or frm
    subject = single.get(b"subject")
    return plist([
        _nstring_nolf(single.get(b"date")),
        NIL if subject is None else human_string(subject),
        _address_list(frm),
        _address_list(sender),
        _address_list(reply_to),
        _address_list(addrs.get(b"to", [])),
        _address_list(addrs.get(b"cc", [])),
        _address_list(addrs.get(b"bcc", [])),
        _nstring_nolf(single.get(b"in-reply-to")),
        _nstring_nolf(single.get(b"message-id")),
    ])


def _nstring_nolf(value: bytes | None) -> bytes:
    return NIL if value is None else string(mime.unfold_nolf(value))


# --------------------------------------------------------------------------- BODYSTRUCTURE

_EMPTY_BODY = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'
_EMPTY_ENVELOPE = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def bodystructure(msg: bytes, extended: bool = True, tree: Part | None = None) -> bytes:
    """BODYSTRUCTURE (extended=True) or BODY (extended=False) of `msg` (RFC 3501 §7.4.2)."""
    if tree is None:
        msg = mime.to_crlf(msg)
        tree = mime.parse(msg)
    out: list[bytes] = []
    _write_part(msg, tree, extended, out)
    return b"".join(out)


def body(msg: bytes, tree: Part | None = None) -> bytes:
    """BODY: BODYSTRUCTURE without extension data (RFC 3501 §7.4.2)."""
    return bodystructure(msg, False, tree)


def _params(params: Sequence[tuple[bytes, bytes]]) -> bytes:
    if not params:
        return NIL
    return plist([b"%s %s" % (string(k), string(v)) for k, v in params])


def _write_part(msg: bytes, part: Part, ext: bool, out: list[bytes]) -> None:
    if part.is_multipart:
        out.append(b"(")
        if part.children:
            for child in part.children:
                _write_part(msg, child, ext, out)
        else:
            out.append(_EMPTY_BODY + (b" NIL NIL NIL NIL)" if ext else b")"))
        out.append(b" " + string(part.csubtype))
        if ext:
            out.append(b" " + _params(part.params))
            out.append(b" " + _disposition(part) + b" " + _language(part) + b" " + nstring(part.location))
        out.append(b")")
        return
    if part.ctype is None:
        ctype, subtype = b"text", b"plain"
    else:
        ctype, subtype = part.ctype, part.csubtype
    if part.is_message:
        ctype, subtype = b"message", b"rfc822"  # Dovecot writes these in lower case
    params = list(part.params)
    if part.is_text and part.param(b"charset") is None:
        params.append((b"charset", b"us-ascii"))
    out.append(b"(" + b" ".join([
        string(ctype), string(subtype), _params(params), nstring(part.content_id),
        nstring(part.description), string(part.encoding or b"7bit"), b"%d" % part.body_size,
    ]))
    if part.is_text:
        out.append(b" %d" % part.body_lines)
    elif part.is_message:
        if part.children:
            child = part.children[0]
            fields = mime.iter_fields(msg, child.header_start, child.header_end)
            out.append(b" " + envelope_from_fields(fields))
            out.append(b" ")
            _write_part(msg, child, ext, out)
        else:
            out.append(b" " + _EMPTY_ENVELOPE + b" " + _EMPTY_BODY + (b" NIL NIL NIL NIL)" if ext else b")"))
        out.append(b" %d" % part.body_lines)
    if ext:
        out.append(b" " + b" ".join([nstring(part.md5), _disposition(part), _language(part),
                                    nstring(part.location)]))
    out.append(b")")


def _disposition(part: Part) -> bytes:
    if part.disposition is None:
        return NIL
    return plist([string(part.disposition), _params(part.disposition_params)])


def _language(part: Part) -> bytes:
    if not part.language:
        return NIL
    return nlist([string(x) for x in part.language])


# --------------------------------------------------------------------------- BODY[section]

class InvalidSection(ValueError):
    """The section specification is not valid (the session answers BAD)."""


_SPECS = ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")


@dataclass(slots=True, frozen=True)
class Section:
    """A BODY[...] section (RFC 3501 §6.4.5): part path, text spec and header field names."""

    path: tuple[int, ...] = ()
    spec: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.spec not in _SPECS:
            raise InvalidSection(f"unknown section text {self.spec!r}")
        if self.spec == "MIME" and not self.path:
            raise InvalidSection("MIME needs a part number")  # RFC 3501 §6.4.5
        if self.spec.startswith("HEADER.FIELDS") and not self.fields:
            raise InvalidSection("HEADER.FIELDS needs field names")
        if any(n < 1 for n in self.path):
            raise InvalidSection("part numbers start at 1")

    def text(self) -> bytes:
        """The section as it appears in the response item name: `1.2.HEADER.FIELDS (FROM TO)`."""
        out = ".".join(str(n) for n in self.path)
        if self.spec:
            out = f"{out}.{self.spec}" if out else self.spec
        b = out.encode("ascii")
        if self.fields:
            b += b" (" + b" ".join(f.upper() for f in self.fields) + b")"
        return b


_SECTION_RE = re.compile(
    r"^(?P<path>\d+(?:\.\d+)*)?(?:(?(path)\.)(?P<spec>HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME))?"
    r"(?:\s*\((?P<fields>[^()]*)\))?$", re.IGNORECASE)


def parse_section(text: str) -> Section:
    """Parse section text such as `1.2.HEADER.FIELDS (From Subject)` (RFC 3501 §9 section-spec)."""
    m = _SECTION_RE.match(text.strip())
    if m is None:
        raise InvalidSection(f"bad section {text!r}")
    path = tuple(int(x) for x in m["path"].split(".")) if m["path"] else ()
    spec = (m["spec"] or "").upper()
    fields = tuple(f.encode("ascii") for f in (m["fields"] or "").split())
    if fields and not spec.startswith("HEADER.FIELDS"):
        raise InvalidSection(f"bad section {text!r}")
    return Section(path, spec, fields)


def section_item(section: Section, partial: tuple[int, int | None] | None = None) -> bytes:
    """The response item name: `BODY[<section>]` plus `<origin>` for a partial (RFC 3501 §7.4.2)."""
    name = b"BODY[" + section.text() + b"]"
    if partial is not None:
        name += b"<%d>" % partial[0]
    return name


def find_part(tree: Part, path: Sequence[int]) -> Part | None:
    """The part a section path names (RFC 3501 §6.4.5), resolved as Dovecot does.

    A non-multipart part answers to the number 1 once (so `2.1` is part 2 when part 2 is a leaf),
    and a message/rfc822 part followed by more numbers stands for its encapsulated message.
    """
    part: Part | None = tree
    stayed = False
    for i, num in enumerate(path):
        if part is None:
            return None
        if part.is_multipart:
            part = part.children[num - 1] if 1 <= num <= len(part.children) else None
            stayed = False
        elif num != 1 or stayed:
            return None
        else:
            stayed = True
        if part is not None and part.is_message and i + 1 < len(path):
            part = part.children[0] if part.children else None
            stayed = False
    return part


class SectionLike(Protocol):
    """commands.Section's shape: `part` numbers, `text` (None for the body), header `fields`."""

    @property
    def part(self) -> tuple[int, ...]: ...

    @property
    def text(self) -> str | None: ...

    @property
    def fields(self) -> tuple[str, ...]: ...


def as_section(section: Section | SectionLike | str) -> Section:
    """A Section from section text, a Section, or a parser `commands.Section`."""
    if isinstance(section, Section):
        return section
    if isinstance(section, str):
        return parse_section(section)
    return Section(tuple(section.part), section.text or "",
                   tuple(f.encode("utf-8", "surrogateescape") for f in section.fields))


def body_section(msg: bytes, section: Section | SectionLike | str,
                 partial: tuple[int, int | None] | None = None, tree: Part | None = None) -> bytes:
    """The raw data of BODY[section]<origin.octets> (RFC 3501 §6.4.5), without the literal framing.

    A section naming no existing part gives b"" (as Dovecot does), never an error; an invalid
    section raises InvalidSection.
    """
    section = as_section(section)
    msg = mime.to_crlf(msg)
    data = _section_data(msg, section, tree)
    if partial is not None:
        origin, count = partial
        data = data[origin:] if count is None else data[origin:origin + count]
    if b"\x00" in data:
        data = data.replace(b"\x00", b"\x80")  # RFC 3501 §9: no NUL in a literal (as Dovecot)
    return data


def _section_data(msg: bytes, section: Section, tree: Part | None) -> bytes:
    spec = section.spec
    if not section.path:
        if spec == "":
            return msg
        hend = header_end(msg)
        if spec == "TEXT":
            return msg[hend:]
        return _header_data(msg, 0, hend, section)
    if tree is None:
        tree = mime.parse(msg)
    part = find_part(tree, section.path)
    if part is None:
        return b""
    if spec == "":
        return msg[part.body_start:part.body_end]
    if spec == "MIME":
        return msg[part.header_start:part.header_end]
    # HEADER / HEADER.FIELDS / TEXT of a part: only a message/rfc822 part has them (RFC 3501 §6.4.5)
    if not part.is_message or not part.children:
        return b""
    child = part.children[0]
    if spec == "TEXT":
        return msg[child.body_start:child.body_end]
    return _header_data(msg, child.header_start, child.header_end, section, nested=True)


def _header_data(msg: bytes, start: int, end: int, section: Section, nested: bool = False) -> bytes:
    if section.spec == "HEADER":
        return msg[start:end]
    # Header filtering as Dovecot does it. For the top-level header, HEADER.FIELDS always ends
    # with CRLF (the empty line, added when missing) and HEADER.FIELDS.NOT only when the header has
    # one. For the header of a message/rfc822 part that has no empty line, Dovecot's filter reads
    # on until the next empty line or the end of the message, past the part's end; we do the same
    # so the answers stay byte-identical.
    if nested and not mime.has_empty_line(msg, start, end):
        end = _next_empty_line_end(msg, start)
    eoh = mime.has_empty_line(msg, start, end)
    wanted = {f.lower() for f in section.fields}
    keep = section.spec == "HEADER.FIELDS"
    out = [msg[f.start:f.end] for f in mime.iter_fields(msg, start, end)
           if (f.name.lower() in wanted) == keep]
    if eoh or (keep and not nested):
        # a lone CR at the very end is completed to CRLF rather than doubled
        out.append(b"\n" if out and out[-1].endswith(b"\r") else b"\r\n")
    return b"".join(out)


def _next_empty_line_end(msg: bytes, start: int) -> int:
    """Offset just past the first empty line at or after line start `start`, or the end."""
    if msg.startswith(b"\r\n", start):
        return start + 2
    i = msg.find(b"\n\r\n", start)
    return len(msg) if i < 0 else i + 3


# --------------------------------------------------------------------------- simple items

def rfc822_size(msg: bytes) -> int:
    """RFC822.SIZE: octets with CRLF line ends (RFC 3501 §2.3.4)."""
    return len(msg) + msg.count(b"\n") - msg.count(b"\r\n")


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def internaldate(ts: float, tz: tzinfo | None = None) -> bytes:
    """INTERNALDATE as a quoted date-time: "17-Jul-1996 02:44:25 -0700" (RFC 3501 §9).

    `tz` None means the server's local time zone.
    """
    if tz is None:
        lt = time.localtime(ts)
        dt = datetime(*lt[:6], tzinfo=timezone(timedelta(seconds=lt.tm_gmtoff)))
    else:
        dt = datetime.fromtimestamp(ts, tz)
    off = dt.utcoffset() or timedelta(0)
    mins = int(off.total_seconds()) // 60
    sign = "-" if mins < 0 else "+"
    mins = abs(mins)
    return (f'"{dt.day:02d}-{_MONTHS[dt.month - 1]}-{dt.year:04d} {dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} '
            f'{sign}{mins // 60:02d}{mins % 60:02d}"').encode("ascii")


def flags(names: Iterable[str]) -> bytes:
    """A flag list `(\\Seen $Label)` (RFC 3501 §7.2.6)."""
    return plist([n.encode("utf-8") for n in names])
