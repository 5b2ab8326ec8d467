"""IMAP command parser (sans-IO): one framed command (framing.RawCommand) -> a typed Command.

Owns: the RFC 3501 §9 command grammar (plus MOVE RFC 6851, IDLE RFC 2177, NAMESPACE RFC 2342,
ID RFC 2971, ENABLE RFC 5161, UNSELECT RFC 3691, UID EXPUNGE RFC 4315, SASL-IR RFC 4959,
SEARCH RETURN RFC 4731, SEARCHRES RFC 5182 ("$" for a sequence set), WITHIN RFC 5032, SORT and
THREAD RFC 5256, SORT=DISPLAY RFC 5957, ESORT RFC 5267, CONTEXT RFC 5267 §4 (PARTIAL, UPDATE,
CANCELUPDATE), LITERAL+ RFC 7888 via the framer,
LIST-EXTENDED RFC 5258 with LIST-STATUS RFC 5819, CREATE (USE ...) RFC 6154 §3, the OBJECTID
RFC 8474 and SAVEDATE RFC 8514 search keys and fetch items, BINARY RFC 3516 (FETCH items,
literal8), MULTIAPPEND RFC 3502, UTF8=ACCEPT RFC 6855 (UTF8 APPEND data, UTF-8 mailbox names when
the session enabled it), COMPRESS RFC 4978). Every failure is a ParseError carrying the tag (or
"*") and a safe reason; nothing else
escapes (property-tested). Depth of parentheses and NOT/OR nesting is bounded (config.imap.max_nesting).
Does not own: framing (framing.py), state checks and semantics (session.py).

Leniencies (like Dovecot): bare LF line ends (framer), 8-bit UTF-8 inside quoted strings,
month names in any case, a 1-digit day without the leading space in date-time.

Use:
    cmd = parse_command(raw, max_nesting=cfg.imap.max_nesting)  # raises ParseError
    parse_bytes(b"a1 FETCH 1:* (FLAGS)\\r\\n")                      # tests/tools: frames, then parses
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Literal, NoReturn

from mailhaven.imap import utf7
from mailhaven.imap.commands import (
    FETCH_ATTRS,
    STATUS_ITEMS,
    AnyCommand,
    Append,
    AppendMessage,
    Authenticate,
    CancelUpdate,
    Capability,
    Check,
    Close,
    Compress,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    ExtValue,
    Fetch,
    FetchAttr,
    FetchBinary,
    FetchBody,
    FetchItem,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    ParseError,
    Qresync,
    Rename,
    Search,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModseq,
    SearchNot,
    SearchObjectId,
    SearchOr,
    SearchSaveDateSupported,
    SearchSet,
    SearchSize,
    SearchText,
    SearchWithin,
    Section,
    SectionText,
    Select,
    SelectParam,
    SetQuota,
    Sort,
    StartTls,
    Status,
    Store,
    Subscribe,
    Thread,
    Unselect,
    Unsubscribe,
)
from mailhaven.imap.framing import NEED_DATA, Framer, RawCommand, Reject, SendContinuation, tag_of
from mailhaven.imap.seqset import SequenceSet

DEFAULT_MAX_NESTING = 32
MAX_NUMBER = 2**32 - 1  # RFC 3501 §9 number: unsigned 32-bit
MAX_NUMBER64 = 2**63 - 1  # RFC 9051 §9 number64

# RFC 3501 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')
ATOM_CHARS = frozenset(c for c in range(0x21, 0x7F) if c not in _ATOM_SPECIALS)
ASTRING_CHARS = ATOM_CHARS | {ord("]")}  # RFC 3501 §9 ASTRING-CHAR = ATOM-CHAR / resp-specials
LIST_CHARS = ASTRING_CHARS | {ord("%"), ord("*")}  # RFC 3501 §9 list-char
TAG_CHARS = ASTRING_CHARS - {ord("+")}  # RFC 3501 §9 tag
_SEQ_CHARS = frozenset(b"0123456789:*,")
_DIGITS = frozenset(b"0123456789")
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_FETCH_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")
_SECTION_CHARS = _FETCH_NAME_CHARS
# RFC 5322 §3.6.8 field-name = 1*ftext, printable US-ASCII except ":".
_FIELD_NAME_CHARS = frozenset(c for c in range(0x21, 0x7F) if c != ord(":"))

SP, LPAREN, RPAREN, DQUOTE, BACKSLASH, DOLLAR, TILDE = 0x20, 0x28, 0x29, 0x22, 0x5C, 0x24, 0x7E
COLON = 0x3A
SAVED_RESULT = SequenceSet((), saved=True)  # RFC 5182 "$"

SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
CHARSETS = ("US-ASCII", "UTF-8")


class _Cursor:
    """Position in a RawCommand: line `seg`, offset `pos`; literal `seg` sits at the end of line `seg`."""

    def __init__(self, raw: RawCommand, tag: str, max_nesting: int, utf8: bool = False) -> None:
        self.utf8 = utf8  # RFC 6855 §3: UTF8=ACCEPT enabled, mailbox names are UTF-8
        self.lines = raw.lines
        self.literals = raw.literals
        self.seg = 0
        self.line = raw.lines[0] if raw.lines else b""
        self.pos = 0
        self.tag = tag
        self.max_nesting = max_nesting
        self.bad_name: str | None = None  # response code for the first name not in modified UTF-7

    # -- low level ------------------------------------------------------------------------------

    def fail(self, text: str) -> NoReturn:
        raise ParseError(self.tag, text)

    def peek(self) -> int | None:
        """The next octet of the current line, or None at its end (a literal or the command end)."""
        return self.line[self.pos] if self.pos < len(self.line) else None

    def at_literal(self) -> bool:
        return self.pos == len(self.line) and self.seg < len(self.literals)

    def at_end(self) -> bool:
        return self.pos == len(self.line) and self.seg >= len(self.literals)

    def take_literal(self) -> bytes:
        if not self.at_literal():
            self.fail("Expected a literal")
        data = self.literals[self.seg]
        self.seg += 1
        self.line = self.lines[self.seg] if self.seg < len(self.lines) else b""
        self.pos = 0
        return data

    def at_literal8(self) -> bool:
        """RFC 3516 §4.4 literal8 = "~{" number "}" CRLF *OCTET: the framer left the "~"."""
        return (self.seg < len(self.literals) and self.pos == len(self.line) - 1
                and self.line[self.pos] == TILDE)

    def literal_or_literal8(self) -> tuple[bytes, bool]:
        """A literal or literal8 (RFC 3516 §4.4): (octets, was it a literal8)."""
        if self.at_literal8():
            self.pos += 1
            return self.take_literal(), True
        if not self.at_literal():
            self.fail("Expected the message as a literal")
        return self.take_literal(), False

    def sp(self) -> None:
        if self.peek() != SP:
            self.fail("Expected a space" if not self.at_end() else "Missing arguments")
        self.pos += 1

    def take(self, char: int) -> bool:
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    def expect(self, char: int, what: str) -> None:
        if not self.take(char):
            self.fail(f"Expected {what}")

    def run(self, allowed: frozenset[int], limit: int = 1 << 30) -> bytes:
        """The longest run (maybe empty) of `allowed` octets, at most `limit` long."""
        start = self.pos
        line = self.line
        end = start
        n = len(line)
        while end < n and line[end] in allowed and end - start < limit:
            end += 1
        self.pos = end
        return line[start:end]

    def word(self) -> str:
        """An atom, upper-cased (command names, search keys, fetch items)."""
        token = self.run(ATOM_CHARS)
        if not token:
            self.fail("Expected an atom" if not self.at_end() else "Missing arguments")
        return token.decode("ascii").upper()

    def at_word(self, word: bytes) -> bool:
        """Is the next token exactly `word` (case-insensitive), ended by SP, ")" or the line end?"""
        end = self.pos + len(word)
        if self.line[self.pos:end].upper() != word:
            return False
        return end == len(self.line) or self.line[end] in (SP, RPAREN)

    def finish(self) -> None:
        if not self.at_end():
            self.fail("Unexpected extra arguments" if not self.at_literal() else "Unexpected literal")

    # -- strings --------------------------------------------------------------------------------

    def quoted(self) -> bytes:
        """RFC 3501 §9 quoted: DQUOTE *QUOTED-CHAR DQUOTE; only \\\\ and \\" escapes; 8-bit allowed."""
        self.expect(DQUOTE, "a quoted string")
        out = bytearray()
        line = self.line
        i = self.pos
        n = len(line)
        while True:
            if i >= n:
                self.fail("Unterminated quoted string")
            c = line[i]
            if c == DQUOTE:
                break
            if c == BACKSLASH:
                i += 1
                if i >= n or line[i] not in (DQUOTE, BACKSLASH):
                    self.fail("Invalid escape in quoted string")
                c = line[i]
            elif c in (0x00, 0x0A, 0x0D):  # RFC 3501 §9: TEXT-CHAR is any CHAR (%x01-7F) but CR and LF
                self.fail("CR, LF or NUL in quoted string")
            out.append(c)
            i += 1
        self.pos = i + 1
        return bytes(out)

    def string(self) -> bytes:
        """RFC 3501 §9 string = quoted / literal."""
        if self.at_literal():
            return self.take_literal()
        if self.peek() == DQUOTE:
            return self.quoted()
        self.fail("Expected a string")

    def astring(self) -> bytes:
        """RFC 3501 §9 astring = 1*ASTRING-CHAR / string."""
        if self.at_literal() or self.peek() == DQUOTE:
            return self.string()
        token = self.run(ASTRING_CHARS)
        if not token:
            self.fail("Expected a string" if not self.at_end() else "Missing arguments")
        return token

    def nstring(self) -> bytes | None:
        if self.at_word(b"NIL"):
            self.pos += 3
            return None
        return self.string()

    def text(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("Invalid UTF-8")

    def astring_text(self) -> str:
        return self.text(self.astring())

    def mailbox(self, *, wildcards: bool = False, inbox: bool = True, lenient: bool = False,
                invalid_code: str = "NONEXISTENT") -> str:
        """RFC 3501 §9 mailbox: "INBOX" (any case) or astring, modified UTF-7 decoded (§5.1.3).

        Modified UTF-7 is a convention (§5.1.3), not grammar: a name that breaks it is no syntax
        error. `lenient` (LIST/LSUB reference and pattern) keeps a broken shift as plain text, as
        Dovecot does; otherwise the command is answered NO [invalid_code] once it has parsed (see
        parse_command), as no mailbox can have such a name."""
        if wildcards and not (self.at_literal() or self.peek() == DQUOTE):
            raw = self.run(LIST_CHARS)
            if not raw:
                self.fail("Expected a mailbox pattern")
        else:
            raw = self.astring()
        if self.utf8:  # RFC 6855 §3: UTF-8, no modified UTF-7 ("&" is itself)
            name = self.text(raw)
            return "INBOX" if inbox and name.upper() == "INBOX" else name
        try:
            name = utf7.decode(raw)
        except ValueError:
            if lenient or wildcards:
                name = utf7.decode_lenient(self.text(raw))
            else:
                self.bad_name = self.bad_name or invalid_code
                name = raw.decode("latin-1")
        if inbox and name.upper() == "INBOX":
            return "INBOX"  # RFC 3501 §5.1: INBOX is case-insensitive
        return name

    # -- numbers, sets, dates -------------------------------------------------------------------

    def number(self, *, nz: bool = False, maximum: int = MAX_NUMBER) -> int:
        digits = self.run(_DIGITS, limit=len(str(maximum)) + 1)
        if not digits:
            self.fail("Expected a number")
        if len(digits) > len(str(maximum)) or int(digits) > maximum:
            self.fail("Number out of range")
        value = int(digits)
        if nz and value == 0:
            self.fail("Number must not be zero")  # RFC 3501 §9 nz-number
        return value

    def seqset(self) -> SequenceSet:
        if self.take(DOLLAR):  # RFC 5182 §2.1 seq-last-command: "$" alone
            return SAVED_RESULT
        token = self.run(_SEQ_CHARS)
        if not token:
            self.fail("Expected a sequence set" if not self.at_end() else "Missing arguments")
        try:
            return SequenceSet.parse(token.decode("ascii"))
        except ValueError as exc:
            self.fail(f"Invalid sequence set: {exc}")

    def date(self) -> date:
        """RFC 3501 §9 date = date-text / DQUOTE date-text DQUOTE; date-text = d[d]-Mon-yyyy."""
        quoted = self.take(DQUOTE)
        day = self.number(maximum=99)
        self.expect(ord("-"), "'-' in date")
        month = self._month()
        self.expect(ord("-"), "'-' in date")
        year = self._year()
        if quoted:
            self.expect(DQUOTE, "closing quote of date")
        try:
            return date(year, month, day)
        except ValueError:
            self.fail("Invalid date")

    def _month(self) -> int:
        name = self.line[self.pos : self.pos + 3].decode("ascii", "replace").lower()
        if name not in MONTHS:
            self.fail("Invalid month")
        self.pos += 3
        return MONTHS.index(name) + 1

    def _year(self) -> int:
        digits = self.run(_DIGITS, limit=5)
        if len(digits) != 4:
            self.fail("Invalid year")
        return int(digits)

    def _fixed(self, width: int, what: str) -> int:
        digits = self.run(_DIGITS, limit=width + 1)
        if len(digits) != width:
            self.fail(f"Invalid {what}")
        return int(digits)

    def date_time(self) -> datetime:
        """RFC 3501 §9 date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE."""
        self.expect(DQUOTE, "a quoted date-time")
        self.take(SP)  # date-day-fixed = (SP DIGIT) / 2DIGIT; a bare 1-digit day is accepted too
        day = self.number(maximum=99)
        self.expect(ord("-"), "'-' in date-time")
        month = self._month()
        self.expect(ord("-"), "'-' in date-time")
        year = self._year()
        self.expect(SP, "a space in date-time")
        hour = self._fixed(2, "hour")
        self.expect(ord(":"), "':' in time")
        minute = self._fixed(2, "minute")
        self.expect(ord(":"), "':' in time")
        second = self._fixed(2, "second")
        self.expect(SP, "a space in date-time")
        sign = self.peek()
        if sign not in (ord("+"), ord("-")):
            self.fail("Invalid time zone")
        self.pos += 1
        zone = self._fixed(4, "time zone")
        self.expect(DQUOTE, "closing quote of date-time")
        zh, zm = divmod(zone, 100)
        if zh > 23 or zm > 59:
            self.fail("Invalid time zone")
        offset = timedelta(hours=zh, minutes=zm)
        try:
            return datetime(year, month, day, hour, minute, second,
                            tzinfo=timezone(-offset if sign == ord("-") else offset))
        except ValueError:
            self.fail("Invalid date-time")

    # -- lists ----------------------------------------------------------------------------------

    def flag(self) -> str:
        """RFC 3501 §9 flag: system flags (case-insensitive, normalised) or a keyword atom."""
        if self.take(BACKSLASH):
            name = self.run(ATOM_CHARS)
            if not name:
                self.fail("Invalid flag")
            flag = SYSTEM_FLAGS.get("\\" + name.decode("ascii").lower())
            if flag is None:
                # \Recent cannot be set by clients (RFC 3501 §2.3.2); no flag-extensions are defined.
                self.fail(f"Invalid system flag \\{name.decode('ascii')[:40]}")
            return flag
        keyword = self.run(ATOM_CHARS)
        if not keyword:
            self.fail("Invalid flag")
        return keyword.decode("ascii")

    def flag_list(self) -> frozenset[str]:
        """RFC 3501 §9 flag-list = "(" [flag *(SP flag)] ")"."""
        self.expect(LPAREN, "'(' before flags")
        flags: set[str] = set()
        if not self.take(RPAREN):
            while True:
                flags.add(self.flag())
                if self.take(RPAREN):
                    break
                self.sp()
        return frozenset(flags)

    def ext_value(self, depth: int) -> ExtValue:
        """RFC 4466 tagged-ext-val, loosely: a token or a parenthesised list of them."""
        if depth > self.max_nesting:
            self.fail("Too deeply nested")
        if self.take(LPAREN):
            items: list[ExtValue] = []
            if not self.take(RPAREN):
                while True:
                    items.append(self.ext_value(depth + 1))
                    if self.take(RPAREN):
                        break
                    self.sp()
            return tuple(items)
        if self.peek() is not None and self.peek() in _SEQ_CHARS:
            return self.run(_SEQ_CHARS).decode("ascii")
        return self.astring_text()


# --- commands ------------------------------------------------------------------------------------

Handler = Callable[[_Cursor, str], AnyCommand]


def _no_args(cls: Callable[[str], AnyCommand]) -> Handler:
    def handler(cur: _Cursor, tag: str) -> AnyCommand:
        return cls(tag)

    return handler


def _authenticate(cur: _Cursor, tag: str) -> AnyCommand:
    cur.sp()
    mechanism = cur.word()
    initial: bytes | None = None
    if cur.peek() == SP:
        cur.sp()
        initial = decode_sasl(cur.run(_B64_CHARS), tag)
        if initial is None:
            cur.fail("Invalid initial response")
    return Authenticate(tag, mechanism, initial)


def decode_sasl(line: bytes, tag: str = "*") -> bytes | None:
    """A SASL response (RFC 3501 §6.2.2, RFC 4959 §3): "=" -> b"", "*" -> None (cancel), else base64.

    Raises ParseError on bad base64. The shell uses it for AUTHENTICATE continuation lines.
    """
    if line == b"*":
        return None
    if line == b"=":
        return b""
    if not line or len(line) % 4:
        raise ParseError(tag, "Invalid base64")
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(tag, "Invalid base64") from None


def _login(cur: _Cursor, tag: str) -> AnyCommand:
    cur.sp()
    user = cur.astring_text()
    cur.sp()
    password = cur.astring_text()
    return Login(tag, user, password)


def _select(readonly: bool) -> Handler:
    def handler(cur: _Cursor, tag: str) -> AnyCommand:
        cur.sp()
        mailbox = cur.mailbox()
        params: list[SelectParam] = []
        qresync: Qresync | None = None
        if cur.peek() == SP:
            cur.sp()
            cur.expect(LPAREN, "'(' before select parameters")  # RFC 4466 §2.1
            while True:
                name = cur.word()
                value: ExtValue | None = None
                if cur.peek() == SP and cur.pos + 1 < len(cur.line) and (
                        cur.line[cur.pos + 1] == LPAREN or cur.line[cur.pos + 1] in _SEQ_CHARS):
                    cur.sp()
                    value = cur.ext_value(1)
                if name == "QRESYNC":
                    if qresync is not None:
                        cur.fail("QRESYNC given twice")
                    qresync = _qresync(cur, value)
                else:
                    params.append(SelectParam(name, value))
                if cur.take(RPAREN):
                    break
                cur.sp()
        return Select(tag, mailbox, readonly, tuple(params), qresync)

    return handler


def _qresync_number(cur: _Cursor, value: ExtValue, maximum: int) -> int:
    if not isinstance(value, str) or not value.isdigit() or len(value) > 20 or not 0 < int(value) <= maximum:
        cur.fail("Invalid QRESYNC parameters")
    return int(value)


def _qresync_set(cur: _Cursor, value: ExtValue) -> SequenceSet:
    if not isinstance(value, str):
        cur.fail("Invalid QRESYNC parameters")
    try:
        return SequenceSet.parse(value)
    except ValueError:
        cur.fail("Invalid QRESYNC parameters")


def _qresync(cur: _Cursor, value: ExtValue | None) -> Qresync:
    """RFC 7162 §3.2.5: (uidvalidity mod-sequence-value [known-uids] [seq-match-data])."""
    if not isinstance(value, tuple) or not 2 <= len(value) <= 4:
        cur.fail("Invalid QRESYNC parameters")
    uidvalidity = _qresync_number(cur, value[0], MAX_NUMBER)
    modseq = _qresync_number(cur, value[1], MAX_NUMBER64)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    rest = list(value[2:])
    if rest and isinstance(rest[0], str):
        known = _qresync_set(cur, rest.pop(0))
    if rest:
        pair = rest.pop(0)
        if not isinstance(pair, tuple) or len(pair) != 2:
            cur.fail("Invalid QRESYNC parameters")
        match = (_qresync_set(cur, pair[0]), _qresync_set(cur, pair[1]))
    if rest:
        cur.fail("Invalid QRESYNC parameters")
    return Qresync(uidvalidity, modseq, known, match)


def _one_mailbox(cls: Callable[[str, str], AnyCommand], invalid_code: str = "NONEXISTENT") -> Handler:
    def handler(cur: _Cursor, tag: str) -> AnyCommand:
        cur.sp()
        return cls(tag, cur.mailbox(invalid_code=invalid_code))

    return handler


def _rename(cur: _Cursor, tag: str) -> AnyCommand:
    cur.sp()
    old = cur.mailbox()
    cur.sp()
    return Rename(tag, old, cur.mailbox(invalid_code="CANNOT"))


def _list(cls: Callable[[str, str, str], AnyCommand]) -> Handler:
    def handler(cur: _Cursor, tag: str) -> AnyCommand:
        cur.sp()
        reference = cur.mailbox(inbox=False, lenient=True)
        cur.sp()
        pattern = cur.mailbox(wildcards=True, inbox=False)  # RFC 3501 §9 list-mailbox
        return cls(tag, reference, pattern)

    return handler


LIST_SELECT_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})  # RFC 5258 §3.1, RFC 6154 §3
LIST_RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})  # RFC 5258 §3.2, RFC 6154 §3
MAX_LIST_PATTERNS = 64


def _atom_list(cur: _Cursor) -> list[str]:
    """ "(" [atom *(SP atom)] ")", upper-cased (after the "(")."""
    out: list[str] = []
    while not cur.take(RPAREN):
        if out:
            cur.sp()
        out.append(cur.word())
        if len(out) > 16:
            cur.fail("Too many list options")
    return out


def _list_extended(cur: _Cursor, tag: str) -> AnyCommand:
    """RFC 5258 §6: "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts];
    RFC 5819 §2 return option STATUS (items). Errors as Dovecot 2.3 answers them (BAD)."""
    cur.sp()
    selection: frozenset[str] | None = None
    if cur.take(LPAREN):
        opts = _atom_list(cur)
        if any(o not in LIST_SELECT_OPTIONS for o in opts):
            cur.fail("Unknown select options")
        selection = frozenset(opts)
        if "RECURSIVEMATCH" in selection and not selection & {"SUBSCRIBED", "SPECIAL-USE"}:
            cur.fail("RECURSIVEMATCH must not be the only selection.")  # RFC 5258 §3.1
        cur.sp()
    reference = cur.mailbox(inbox=False, lenient=True)
    cur.sp()
    patterns: tuple[str, ...] | None = None
    if cur.take(LPAREN):  # RFC 5258 §6 patterns = "(" list-mailbox *(SP list-mailbox) ")"
        found: list[str] = []
        while not cur.take(RPAREN):
            if found:
                cur.sp()
            found.append(cur.mailbox(wildcards=True, inbox=False))
            if len(found) > MAX_LIST_PATTERNS:
                cur.fail("Too many patterns")
        patterns = tuple(found)
        pattern = found[0] if found else ""
    else:
        pattern = cur.mailbox(wildcards=True, inbox=False)
    returns: frozenset[str] | None = None
    status: tuple[str, ...] = ()
    if cur.peek() == SP:
        cur.sp()
        if not cur.at_word(b"RETURN"):
            cur.fail("Extra arguments.")
        cur.pos += len(b"RETURN")
        cur.sp()
        cur.expect(LPAREN, "'(' after RETURN")
        opts = []
        while not cur.take(RPAREN):
            if opts:
                cur.sp()
            opt = cur.word()
            if opt == "STATUS" and cur.peek() == SP and cur.line[cur.pos + 1:cur.pos + 2] == b"(":
                cur.sp()
                status = _status_items(cur, "Empty status list")  # RFC 5819 §2
            elif opt not in LIST_RETURN_OPTIONS:
                cur.fail("Unknown return options")
            opts.append(opt)
            if len(opts) > 16:
                cur.fail("Too many list options")
        returns = frozenset(opts)
    return List(tag, reference, pattern, selection, patterns, returns, status)


def _status(cur: _Cursor, tag: str) -> AnyCommand:
    cur.sp()
    mailbox = cur.mailbox()
    cur.sp()
    return Status(tag, mailbox, _status_items(cur))


def _status_items(cur: _Cursor, empty: str = "Expected an atom") -> tuple[str, ...]:
    """ "(" status-att *(SP status-att) ")": STATUS's items, and LIST's RETURN (STATUS (...))."""
    cur.expect(LPAREN, "'(' before status items")
    if cur.peek() == RPAREN:
        cur.fail(empty)
    items: list[str] = []
    while True:
        item = cur.word()
        if item not in STATUS_ITEMS:
            cur.fail(f"Unknown status item {item[:40]}")
        if item not in items:
            items.append(item)
        if cur.take(RPAREN):
            break
        cur.sp()
    return tuple(items)


def _create(cur: _Cursor, tag: str) -> AnyCommand:
    """CREATE mailbox [SP "(" "USE" SP "(" [use-attr *(SP use-attr)] ")" ")"] (RFC 6154 §6,
    create-param of RFC 4466 §2.2); other create parameters are BAD."""
    cur.sp()
    mailbox = cur.mailbox(invalid_code="CANNOT")
    if cur.peek() != SP:
        return Create(tag, mailbox)
    cur.sp()
    cur.expect(LPAREN, "'(' before create parameters")
    if cur.word() != "USE":
        cur.fail("Unknown CREATE parameter")
    cur.sp()
    cur.expect(LPAREN, "'(' before special-use attributes")
    uses: list[str] = []
    while not cur.take(RPAREN):
        if uses:
            cur.sp()
        if not cur.take(BACKSLASH):
            cur.fail("Invalid special-use attribute")
        name = cur.run(ATOM_CHARS)
        if not name:
            cur.fail("Invalid special-use attribute")
        uses.append("\\" + name.decode("ascii"))
        if len(uses) > 16:
            cur.fail("Too many special-use attributes")
    cur.expect(RPAREN, "')' after create parameters")
    return Create(tag, mailbox, tuple(uses))


def _getquota(cur: _Cursor, tag: str) -> AnyCommand:
    cur.sp()
    return GetQuota(tag, cur.astring_text())  # RFC 9208 §6: quota-root-name = astring


def _setquota(cur: _Cursor, tag: str) -> AnyCommand:
    cur.sp()
    root = cur.astring_text()
    cur.sp()
    # RFC 9208 §6: setquota-list = "(" [setquota-resource *(SP setquota-resource)] ")";
    # setquota-resource = resource-name SP resource-limit (number64)
    cur.expect(LPAREN, "'(' before quota limits")
    limits: list[tuple[str, int]] = []
    if not cur.take(RPAREN):
        while True:
            name = cur.word()
            cur.sp()
            limits.append((name, cur.number(maximum=2**63 - 1)))
            if len(limits) > 32:
                cur.fail("Too many quota resources")
            if cur.take(RPAREN):
                break
            cur.sp()
    return SetQuota(tag, root, tuple(limits))


def _append(cur: _Cursor, tag: str) -> AnyCommand:
    """RFC 3501 §6.3.11 with RFC 3502 (several messages), RFC 3516 §4.4 (literal8) and RFC 6855 §4
    (UTF8): APPEND mailbox 1*(SP [flag-list SP] [date-time SP] append-data)."""
    cur.sp()
    mailbox = cur.mailbox()
    messages: list[AppendMessage] = []
    while True:
        cur.sp()
        messages.append(_append_message(cur))
        if cur.peek() != SP:
            break
    return Append(tag, mailbox, tuple(messages))


def _append_message(cur: _Cursor) -> AppendMessage:
    flags: frozenset[str] = frozenset()
    when: datetime | None = None
    if cur.peek() == LPAREN:
        flags = cur.flag_list()
        cur.sp()
    if cur.peek() == DQUOTE:
        when = cur.date_time()
        cur.sp()
    if cur.at_word(b"UTF8"):  # RFC 6855 §4: "UTF8" SP "(" literal8 ")"
        cur.pos += 4
        cur.sp()
        cur.expect(LPAREN, "'(' after UTF8")
        if not cur.at_literal8():
            cur.fail("Expected a literal8 after UTF8 (")
        message, _ = cur.literal_or_literal8()
        cur.expect(RPAREN, "')' after the UTF8 literal8")
        return AppendMessage(flags, when, message, binary=True, utf8=True)
    message, binary = cur.literal_or_literal8()
    return AppendMessage(flags, when, message, binary=binary)


def _compress(cur: _Cursor, tag: str) -> AnyCommand:
    cur.sp()  # RFC 4978 §3: COMPRESS SP algorithm (an atom)
    return Compress(tag, cur.word())


def _enable(cur: _Cursor, tag: str) -> AnyCommand:
    caps: list[str] = []
    cur.sp()
    while True:
        caps.append(cur.word())
        if cur.peek() != SP:
            break
        cur.sp()
    return Enable(tag, tuple(caps))


def _id(cur: _Cursor, tag: str) -> AnyCommand:
    cur.sp()
    if cur.at_word(b"NIL"):
        cur.pos += 3
        return Id(tag, None)
    cur.expect(LPAREN, "'(' or NIL")
    params: list[tuple[str, str | None]] = []
    if not cur.take(RPAREN):
        while True:
            if len(params) >= 30:
                cur.fail("Too many ID fields")  # RFC 2971 §3.3: at most 30 pairs
            key = cur.text(cur.string())
            cur.sp()
            value = cur.nstring()
            params.append((key, None if value is None else cur.text(value)))
            if cur.take(RPAREN):
                break
            cur.sp()
    return Id(tag, tuple(params))


def _expunge(cur: _Cursor, tag: str) -> AnyCommand:
    return Expunge(tag)


# SEARCH (RFC 3501 §6.4.4)

_FLAG_KEYS: dict[str, SearchFlag] = {
    "ANSWERED": SearchFlag("\\Answered"), "UNANSWERED": SearchFlag("\\Answered", False),
    "DELETED": SearchFlag("\\Deleted"), "UNDELETED": SearchFlag("\\Deleted", False),
    "DRAFT": SearchFlag("\\Draft"), "UNDRAFT": SearchFlag("\\Draft", False),
    "FLAGGED": SearchFlag("\\Flagged"), "UNFLAGGED": SearchFlag("\\Flagged", False),
    "SEEN": SearchFlag("\\Seen"), "UNSEEN": SearchFlag("\\Seen", False),
    "RECENT": SearchFlag("\\Recent"), "OLD": SearchFlag("\\Recent", False),
}
_HEADER_KEYS = {"FROM": "From", "TO": "To", "CC": "Cc", "BCC": "Bcc", "SUBJECT": "Subject"}
_DATE_KEYS: dict[str, tuple[Literal["before", "on", "since"], bool]] = {
    "BEFORE": ("before", False), "ON": ("on", False), "SINCE": ("since", False),
    "SENTBEFORE": ("before", True), "SENTON": ("on", True), "SENTSINCE": ("since", True),
}
_SAVED_KEYS: dict[str, Literal["before", "on", "since"]] = {  # RFC 8514 §4
    "SAVEDBEFORE": "before", "SAVEDON": "on", "SAVEDSINCE": "since",
}
_OBJECTID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")  # RFC 8474 §7

_KEYS_WITH_ARGS = frozenset({*_HEADER_KEYS, *_DATE_KEYS, *_SAVED_KEYS, "BODY", "TEXT", "KEYWORD", "UNKEYWORD",
                             "LARGER", "SMALLER", "HEADER", "UID", "NOT", "OR", "MODSEQ", "OLDER", "YOUNGER",
                             "EMAILID", "THREADID"})
_ENTRY_TYPES = frozenset({"priv", "shared", "all"})  # RFC 7162 §7 entry-type-req


def _search_key(cur: _Cursor, depth: int) -> SearchKey:
    if depth > cur.max_nesting:
        cur.fail("Search criteria too deeply nested")
    c = cur.peek()
    if c == LPAREN:
        cur.pos += 1
        keys = [_search_key(cur, depth + 1)]
        while not cur.take(RPAREN):
            cur.sp()
            keys.append(_search_key(cur, depth + 1))
        return SearchAnd(tuple(keys))
    if c is not None and (c in _SEQ_CHARS or c == DOLLAR):
        return SearchSet(cur.seqset())
    key = cur.word()
    if key in _FLAG_KEYS:
        return _FLAG_KEYS[key]
    if key == "ALL":
        return SearchAll()
    if key == "NEW":
        return SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False)))  # RFC 3501 §6.4.4
    if key == "SAVEDATESUPPORTED":  # RFC 8514 §4
        return SearchSaveDateSupported()
    if key not in _KEYS_WITH_ARGS:
        cur.fail(f"Unknown search key {key[:40]}")
    cur.sp()
    if key in _HEADER_KEYS:
        return SearchHeader(_HEADER_KEYS[key], cur.astring_text())
    if key in ("BODY", "TEXT"):
        return SearchText(cur.astring_text(), headers=key == "TEXT")
    if key in _DATE_KEYS:
        op, sent = _DATE_KEYS[key]
        return SearchDate(op, cur.date(), sent)
    if key in _SAVED_KEYS:
        return SearchDate(_SAVED_KEYS[key], cur.date(), saved=True)
    if key in ("EMAILID", "THREADID"):  # RFC 8474 §6: objectid = 1*255(ALPHA / DIGIT / "_" / "-")
        value = cur.run(_OBJECTID_CHARS, limit=256)
        if not 0 < len(value) <= 255:
            cur.fail("Invalid object id")
        return SearchObjectId("EMAILID" if key == "EMAILID" else "THREADID", value.decode("ascii"))
    if key in ("KEYWORD", "UNKEYWORD"):
        flag = cur.flag()
        return SearchFlag(flag, key == "KEYWORD")
    if key in ("LARGER", "SMALLER"):
        size = cur.number(maximum=MAX_NUMBER64)
        return SearchSize("larger" if key == "LARGER" else "smaller", size)
    if key == "HEADER":
        field = cur.astring()
        if not field or any(ch not in _FIELD_NAME_CHARS for ch in field):
            cur.fail("Invalid header field name")
        cur.sp()
        return SearchHeader(field.decode("ascii"), cur.astring_text(), "header")
    if key == "UID":
        return SearchSet(cur.seqset(), uid=True)
    if key == "MODSEQ":
        return _search_modseq(cur)
    if key in ("OLDER", "YOUNGER"):  # RFC 5032 §4: SP nz-number (seconds); 0 is BAD, as Dovecot
        return SearchWithin(key == "OLDER", cur.number(nz=True))
    if key == "NOT":
        return SearchNot(_search_key(cur, depth + 1))
    if key == "OR":
        left = _search_key(cur, depth + 1)
        cur.sp()
        return SearchOr(left, _search_key(cur, depth + 1))
    raise AssertionError(key)  # unreachable: every key in _KEYS_WITH_ARGS is handled above


def _search_modseq(cur: _Cursor) -> SearchModseq:
    """RFC 7162 §3.1.5: MODSEQ [SP entry-name SP entry-type-req] SP mod-sequence-valzer."""
    entry: str | None = None
    entry_type: str | None = None
    if cur.peek() == DQUOTE or cur.at_literal():  # entry-name = DQUOTE "/flags/" attr-flag DQUOTE
        entry = cur.text(cur.string())
        cur.sp()
        entry_type = cur.word().lower()
        if entry_type not in _ENTRY_TYPES:
            cur.fail("Invalid MODSEQ type")
        cur.sp()
    return SearchModseq(cur.number(maximum=MAX_NUMBER64), entry, entry_type)


SEARCH_RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "UPDATE"})  # RFC 4731 §3, RFC 5182
# §2.4, RFC 5267 §4.3 (UPDATE); PARTIAL (RFC 5267 §4.4) takes a range; CONTEXT (RFC 5267 §4.2) is a no-op
# here, as in Dovecot 2.3 (every result is kept only while UPDATE asks for it)


def _search_return(cur: _Cursor) -> tuple[frozenset[str], tuple[int, int] | None]:
    """RFC 4731 §7: "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")" (after RETURN SP),
    with RFC 5267 §5's options: CONTEXT, UPDATE, PARTIAL SP partial-range. Returns (options, the
    PARTIAL range as (low, high), low <= high, or None)."""
    cur.expect(LPAREN, "(")
    opts: set[str] = set()
    partial: tuple[int, int] | None = None
    first = True
    while not cur.take(RPAREN):
        if not first:
            cur.sp()
        first = False
        opt = cur.word()
        if opt == "CONTEXT":
            continue
        if opt == "PARTIAL":
            if partial is not None:
                cur.fail("PARTIAL can be used only once.")
            cur.sp()
            partial = _partial_range(cur)
        elif opt not in SEARCH_RETURN_OPTIONS:
            cur.fail("Unknown SEARCH return option")
        elif opt == "UPDATE" and opt in opts:
            cur.fail("SEARCH return options have duplicate UPDATE.")
        opts.add(opt)
    if partial is not None and "ALL" in opts:  # as Dovecot 2.3
        cur.fail("PARTIAL conflicts with ALL")
    return frozenset(opts), partial


def _partial_range(cur: _Cursor) -> tuple[int, int]:
    """RFC 5267 §5 partial-range = nz-number ":" nz-number, either order (as Dovecot 2.3: no "*",
    no single number)."""
    low = cur.number(nz=True)
    cur.expect(COLON, "':' in the PARTIAL range")
    high = cur.number(nz=True)
    if cur.peek() not in (SP, RPAREN):
        cur.fail("PARTIAL range broken.")
    return (low, high) if low <= high else (high, low)


def _search(uid: bool) -> Handler:
    def handler(cur: _Cursor, tag: str) -> AnyCommand:
        cur.sp()
        returns: frozenset[str] | None = None
        if cur.at_word(b"RETURN"):  # RFC 4731 §7: before CHARSET
            cur.pos += len(b"RETURN")
            cur.sp()
            returns, partial = _search_return(cur)
            if "SAVE" in returns:  # RFC 5182 §2.1: a failed SEARCH ... SAVE empties "$"
                try:
                    return _search_rest(cur, tag, uid, returns, partial)
                except ParseError as e:
                    e.search_save = True
                    raise
            return _search_rest(cur, tag, uid, returns, partial)
        return _search_rest(cur, tag, uid, None, None)

    return handler


def _search_rest(cur: _Cursor, tag: str, uid: bool, returns: frozenset[str] | None,
                 partial: tuple[int, int] | None) -> Search:
    """SEARCH after its RETURN options: SP ["CHARSET" SP astring SP] search-key *(SP search-key)."""
    if returns is not None:
        cur.sp()
    charset: str | None = None
    if cur.at_word(b"CHARSET"):
        cur.pos += len(b"CHARSET")
        cur.sp()
        charset = cur.astring().decode("ascii", "replace").upper()
        if charset not in CHARSETS:
            # RFC 3501 §6.4.4: unsupported charset -> tagged NO [BADCHARSET (...)]
            raise ParseError(tag, "Unsupported charset", kind="NO",
                             code="BADCHARSET (" + " ".join(CHARSETS) + ")")
        cur.sp()
    keys = [_search_key(cur, 1)]
    while cur.peek() == SP:
        cur.sp()
        keys.append(_search_key(cur, 1))
    cur.finish()
    return Search(tag, SearchAnd(tuple(keys)), charset, uid, returns, partial)


def _cancelupdate(cur: _Cursor, tag: str) -> AnyCommand:
    """RFC 5267 §5: "CANCELUPDATE" 1*(SP quoted), the tags of updating searches."""
    tags: list[str] = []
    while not cur.at_end():
        cur.sp()
        tags.append(cur.text(cur.quoted()))
    if not tags:
        cur.fail("Invalid parameters.")
    return CancelUpdate(tag, tuple(tags))


# SORT (RFC 5256 §3, RFC 5957 §3)

SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})


def _sort(uid: bool) -> Handler:
    def handler(cur: _Cursor, tag: str) -> AnyCommand:
        """"SORT" [SP "RETURN" SP "(" options ")"] SP "(" sort-criterion *(SP sort-criterion) ")" SP
        charset 1*(SP search-key) (RFC 5256 §5, RETURN from RFC 5267 §3)."""
        cur.sp()
        returns: frozenset[str] | None = None
        partial: tuple[int, int] | None = None
        if cur.at_word(b"RETURN"):
            cur.pos += len(b"RETURN")
            cur.sp()
            returns, partial = _search_return(cur)
            cur.sp()
        cur.expect(LPAREN, "(")
        criteria: list[tuple[str, bool]] = []
        while True:
            key = cur.word()
            reverse = key == "REVERSE"
            if reverse:
                cur.sp()
                key = cur.word()
            if key not in SORT_KEYS:
                cur.fail("Unknown sort argument")
            criteria.append((key, reverse))
            if cur.take(RPAREN):
                break
            cur.sp()
        cur.sp()
        charset, keys = _charset_and_keys(cur, tag)
        return Sort(tag, tuple(criteria), charset, keys, uid, returns, partial)

    return handler


def _charset_and_keys(cur: _Cursor, tag: str) -> tuple[str, SearchAnd]:
    """search-charset 1*(SP search-key), as SORT and THREAD take them (RFC 5256 §5); an unknown
    charset is NO [BADCHARSET], as SEARCH answers it (RFC 5256 §3)."""
    charset = cur.astring().decode("ascii", "replace").upper()
    if charset not in CHARSETS:
        raise ParseError(tag, "Unsupported charset", kind="NO", code="BADCHARSET (" + " ".join(CHARSETS) + ")")
    cur.sp()
    keys = [_search_key(cur, 1)]
    while cur.peek() == SP:
        cur.sp()
        keys.append(_search_key(cur, 1))
    return charset, SearchAnd(tuple(keys))


# THREAD (RFC 5256 §3)

THREAD_ALGORITHMS = frozenset({"ORDEREDSUBJECT", "REFERENCES"})


def _thread(uid: bool) -> Handler:
    def handler(cur: _Cursor, tag: str) -> AnyCommand:
        """"THREAD" SP thread-alg SP search-charset 1*(SP search-key) (RFC 5256 §5)."""
        cur.sp()
        algorithm = cur.word()
        if algorithm not in THREAD_ALGORITHMS:
            cur.fail("Unknown thread algorithm.")
        cur.sp()
        charset, keys = _charset_and_keys(cur, tag)
        return Thread(tag, algorithm, charset, keys, uid)

    return handler


# FETCH (RFC 3501 §6.4.5)

_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SECTION_TEXTS: dict[str, SectionText] = {
    "HEADER": "HEADER", "HEADER.FIELDS": "HEADER.FIELDS", "HEADER.FIELDS.NOT": "HEADER.FIELDS.NOT",
    "TEXT": "TEXT", "MIME": "MIME",
}


def _section(cur: _Cursor) -> Section:
    """RFC 3501 §9 section-spec, between "[" and "]"."""
    token = cur.run(_SECTION_CHARS).decode("ascii")
    part: list[int] = []
    words = token.split(".") if token else []
    while words and words[0].isdigit():
        digits = words.pop(0)
        if len(digits) > 10 or int(digits) == 0 or int(digits) > MAX_NUMBER:
            cur.fail("Invalid section part number")  # section-part = nz-number *("." nz-number)
        part.append(int(digits))
    rest = ".".join(words).upper()
    if words and rest not in _SECTION_TEXTS:
        cur.fail("Invalid section")
    if rest == "MIME" and not part:
        cur.fail("MIME needs a part number")  # section-text "MIME" only after section-part
    fields: list[str] = []
    if rest in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        cur.sp()
        cur.expect(LPAREN, "'(' before header field names")
        while True:
            name = cur.astring()  # header-fld-name = astring
            if not name or any(ch not in _FIELD_NAME_CHARS for ch in name):
                cur.fail("Invalid header field name")
            fields.append(name.decode("ascii").upper())
            if cur.take(RPAREN):
                break
            cur.sp()
    return Section(tuple(part), _SECTION_TEXTS.get(rest), tuple(fields))


def _partial(cur: _Cursor) -> tuple[int, int] | None:
    """RFC 3501 §9 "<" number "." nz-number ">", or None."""
    if not cur.take(ord("<")):
        return None
    origin = cur.number()
    cur.expect(ord("."), "'.' in partial")
    length = cur.number(nz=True)
    cur.expect(ord(">"), "'>' after partial")
    return origin, length


def _binary_item(cur: _Cursor, name: str) -> FetchBinary:
    """RFC 3516 §4.2: BINARY[section-part]<partial>, BINARY.PEEK[...], BINARY.SIZE[section-part]."""
    cur.expect(ord("["), "'[' after " + name)
    token = cur.run(_SECTION_CHARS).decode("ascii")
    part: list[int] = []
    for digits in token.split(".") if token else []:
        if not digits.isdigit() or len(digits) > 10 or int(digits) == 0 or int(digits) > MAX_NUMBER:
            cur.fail("Invalid BINARY section")  # section-binary = "[" [section-part] "]"
        part.append(int(digits))
    cur.expect(ord("]"), "']' after section")
    if name == "BINARY.SIZE":
        return FetchBinary(tuple(part), size=True)
    return FetchBinary(tuple(part), _partial(cur), peek=name == "BINARY.PEEK")


def _fetch_item(cur: _Cursor) -> FetchItem:
    name = cur.run(_FETCH_NAME_CHARS).decode("ascii").upper()
    if not name:
        cur.fail("Expected a fetch item" if not cur.at_end() else "Missing arguments")
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        return _binary_item(cur, name)
    if name in ("BODY", "BODY.PEEK") and cur.take(ord("[")):
        section = _section(cur)
        cur.expect(ord("]"), "']' after section")
        return FetchBody(section, _partial(cur), peek=name == "BODY.PEEK")
    if name not in FETCH_ATTRS:
        cur.fail(f"Unknown fetch item {name[:40]}")
    return FetchAttr(name)


def _fetch(uid: bool) -> Handler:
    def handler(cur: _Cursor, tag: str) -> AnyCommand:
        cur.sp()
        seqs = cur.seqset()
        cur.sp()
        items: list[FetchItem] = []
        if cur.take(LPAREN):
            while True:
                items.append(_fetch_item(cur))
                if cur.take(RPAREN):
                    break
                cur.sp()
        else:
            for macro, expansion in _MACROS.items():
                if cur.at_word(macro.encode("ascii")):
                    cur.pos += len(macro)
                    items.extend(FetchAttr(n) for n in expansion)
                    break
            else:
                items.append(_fetch_item(cur))
        if uid and FetchAttr("UID") not in items:
            items.insert(0, FetchAttr("UID"))  # RFC 3501 §6.4.8: UID FETCH always returns UID
        changedsince: int | None = None
        vanished = False
        for name, value in _modifiers(cur, "FETCH"):
            if name == "CHANGEDSINCE" and value is not None:  # RFC 7162 §3.1.4.1 (0 accepted, as Dovecot)
                changedsince = value
            elif name == "VANISHED" and value is None:  # RFC 7162 §3.2.6
                vanished = True
            else:
                cur.fail("Unknown FETCH modifier")
        return Fetch(tag, seqs, tuple(items), uid, changedsince, vanished)

    return handler


def _modifiers(cur: _Cursor, verb: str) -> list[tuple[str, int | None]]:
    """RFC 4466 §2.2 / RFC 7162 §3.1: [SP "(" name [SP mod-sequence-valzer] *(SP ...) ")"] after a
    FETCH's items or a STORE's set: CHANGEDSINCE and UNCHANGEDSINCE with a number, VANISHED without
    one (value None); anything else is an unknown modifier."""
    if cur.peek() != SP or cur.line[cur.pos + 1:cur.pos + 2] != b"(":
        return []
    cur.pos += 2
    out: list[tuple[str, int | None]] = []
    while True:
        name = cur.word()
        if name not in ("CHANGEDSINCE", "UNCHANGEDSINCE", "VANISHED") or len(out) > 4:
            cur.fail(f"Unknown {verb} modifier")
        if name == "VANISHED":
            out.append((name, None))
        else:
            cur.sp()
            out.append((name, cur.number(maximum=MAX_NUMBER64)))
        if cur.take(RPAREN):
            return out
        cur.sp()


def _store(uid: bool) -> Handler:
    def handler(cur: _Cursor, tag: str) -> AnyCommand:
        cur.sp()
        seqs = cur.seqset()
        unchangedsince: int | None = None
        for name, value in _modifiers(cur, "STORE"):
            if name != "UNCHANGEDSINCE" or value is None:  # RFC 7162 §3.1.3
                cur.fail("Unknown STORE modifier")
            unchangedsince = value
        cur.sp()
        mode: Literal["add", "remove", "set"] = "set"
        if cur.take(ord("+")):
            mode = "add"
        elif cur.take(ord("-")):
            mode = "remove"
        what = cur.word()
        if what not in ("FLAGS", "FLAGS.SILENT"):
            cur.fail("Expected FLAGS, +FLAGS or -FLAGS")
        cur.sp()
        if cur.peek() == LPAREN:
            flags = cur.flag_list()
        else:  # RFC 3501 §9 store-att-flags: flag-list / (flag *(SP flag))
            found = {cur.flag()}
            while cur.peek() == SP:
                cur.sp()
                found.add(cur.flag())
            flags = frozenset(found)
        return Store(tag, seqs, mode, flags, what == "FLAGS.SILENT", uid, unchangedsince)

    return handler


def _copy_move(cls: type[Copy] | type[Move], uid: bool) -> Handler:
    def handler(cur: _Cursor, tag: str) -> AnyCommand:
        cur.sp()
        seqs = cur.seqset()
        cur.sp()
        return cls(tag, seqs, cur.mailbox(), uid)

    return handler


def _uid_expunge(cur: _Cursor, tag: str) -> AnyCommand:
    cur.sp()
    return Expunge(tag, cur.seqset())  # RFC 4315 §2.1


_UID_COMMANDS: dict[str, Handler] = {
    "FETCH": _fetch(True),
    "STORE": _store(True),
    "COPY": _copy_move(Copy, True),
    "MOVE": _copy_move(Move, True),
    "SEARCH": _search(True),
    "SORT": _sort(True),
    "THREAD": _thread(True),
    "EXPUNGE": _uid_expunge,
}


def _uid(cur: _Cursor, tag: str) -> AnyCommand:
    cur.sp()
    sub = cur.word()
    handler = _UID_COMMANDS.get(sub)
    if handler is None:
        cur.fail(f"Unknown UID command {sub[:40]}")
    return handler(cur, tag)


COMMANDS: dict[str, Handler] = {
    "CAPABILITY": _no_args(Capability),
    "NOOP": _no_args(Noop),
    "LOGOUT": _no_args(Logout),
    "STARTTLS": _no_args(StartTls),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "SELECT": _select(False),
    "EXAMINE": _select(True),
    "CREATE": _create,
    "DELETE": _one_mailbox(Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe, "CANNOT"),
    "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list_extended,
    "LSUB": _list(Lsub),
    "STATUS": _status,
    "APPEND": _append,
    "CHECK": _no_args(Check),
    "CLOSE": _no_args(Close),
    "EXPUNGE": _expunge,
    "SEARCH": _search(False),
    "SORT": _sort(False),
    "THREAD": _thread(False),
    "FETCH": _fetch(False),
    "STORE": _store(False),
    "COPY": _copy_move(Copy, False),
    "MOVE": _copy_move(Move, False),
    "UID": _uid,
    "IDLE": _no_args(Idle),
    "NAMESPACE": _no_args(Namespace),
    "ID": _id,
    "ENABLE": _enable,
    "UNSELECT": _no_args(Unselect),
    "CANCELUPDATE": _cancelupdate,  # RFC 5267 §4.3
    "GETQUOTA": _getquota,  # RFC 9208
    "GETQUOTAROOT": _one_mailbox(GetQuotaRoot),
    "SETQUOTA": _setquota,
    "COMPRESS": _compress,  # RFC 4978
}


def parse_command(raw: RawCommand, *, max_nesting: int = DEFAULT_MAX_NESTING, utf8: bool = False) -> AnyCommand:
    """Parse one framed command. Raises ParseError (and nothing else) when it is not valid.
    `utf8`: the session enabled UTF8=ACCEPT (RFC 6855), so mailbox names are UTF-8."""
    first = raw.lines[0] if raw.lines else b""
    tag = tag_of(first)
    if tag == "*":
        if not first.strip() and not raw.literals:
            raise ParseError("*", "Empty command")
        raise ParseError("*", "Invalid tag")
    cur = _Cursor(raw, tag, max_nesting, utf8)
    cur.pos = len(tag)
    cur.sp()
    name = cur.word()
    handler = COMMANDS.get(name)
    if handler is None:
        cur.fail("Unknown command")
    command = handler(cur, tag)
    cur.finish()
    if cur.bad_name is not None:  # well-formed, but names no mailbox that can exist (as Dovecot)
        raise ParseError(tag, "Mailbox name is not valid modified UTF-7", kind="NO", code=cur.bad_name)
    return command


def parse_bytes(data: bytes, *, max_nesting: int = DEFAULT_MAX_NESTING, utf8: bool = False) -> AnyCommand:
    """Frame and parse exactly one command given as wire bytes (CRLF added if missing). For tests
    and tools: no size limits beyond the data itself."""
    if not data.endswith(b"\n"):
        data += b"\r\n"
    framer = Framer(max_line=max(len(data), 16), max_literal=len(data))
    framer.receive_data(data)
    while True:
        event = framer.next_command()
        if isinstance(event, SendContinuation):
            continue
        if isinstance(event, Reject):
            raise ParseError(event.tag, event.text)
        if event is NEED_DATA:
            raise ParseError("*", "Incomplete command")
        assert isinstance(event, RawCommand)
        if framer.buffered:
            raise ParseError(event.tag, "More than one command")
        return parse_command(event, max_nesting=max_nesting, utf8=utf8)
