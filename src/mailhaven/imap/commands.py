"""Typed IMAP client commands (RFC 3501 §6 plus MOVE, IDLE, NAMESPACE, ID, ENABLE, UNSELECT, SASL-IR).

Owns: the frozen dataclasses parser.py produces and ParseError. Pure data, no behaviour beyond
rendering a FETCH item's response name.
Does not own: the grammar (parser.py), what the commands do (session.py).

Conventions:
- Every command has `tag` and a class-level `VERB` (the state table's key; `verb` for Select/Examine).
- UID variants are the same class with `uid=True`.
- Mailbox names are Unicode (modified UTF-7 decoded); "INBOX" in any case is "INBOX".
- Flags are frozensets of str; system flags normalised ("\\Seen"), keywords as sent.
- Strings the client sent as astring/string are str (UTF-8 decoded); message data is bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import ClassVar, Literal

from mailhaven.imap.seqset import SequenceSet


class ParseError(Exception):
    """A command the server must refuse: the session answers `response()` (`tag BAD text` mostly).

    `kind` is "NO" for a well-formed but unsupported request (e.g. CHARSET [BADCHARSET]).
    `text` is safe to echo (ASCII, no CR/LF).
    `search_save`: the command was a SEARCH with RETURN (SAVE), so its failure empties "$" (RFC 5182 §2.1).
    """

    def __init__(self, tag: str, text: str, *, kind: Literal["BAD", "NO"] = "BAD",
                 code: str | None = None) -> None:
        super().__init__(text)
        self.tag = tag
        self.text = "".join(c if " " <= c <= "~" else "?" for c in text)[:200]
        self.kind: Literal["BAD", "NO"] = kind
        self.code = code
        self.search_save = False

    def response(self) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"{self.tag} {self.kind} {code}{self.text}\r\n".encode("ascii")


# --- shared value types --------------------------------------------------------------------------

ExtValue = str | tuple["ExtValue", ...]
"""RFC 4466 tagged-ext-val, loosely: an atom/number/string, or a parenthesised list of them."""


@dataclass(frozen=True)
class Command:
    tag: str
    VERB: ClassVar[str] = ""

    @property
    def verb(self) -> str:
        return self.VERB


# --- any state (RFC 3501 §6.1) -------------------------------------------------------------------

@dataclass(frozen=True)
class Capability(Command):
    VERB: ClassVar[str] = "CAPABILITY"


@dataclass(frozen=True)
class Noop(Command):
    VERB: ClassVar[str] = "NOOP"


@dataclass(frozen=True)
class Logout(Command):
    VERB: ClassVar[str] = "LOGOUT"


@dataclass(frozen=True)
class Id(Command):
    """RFC 2971: `params` None for NIL, else (field, value-or-None) pairs in order."""

    params: tuple[tuple[str, str | None], ...] | None
    VERB: ClassVar[str] = "ID"


# --- not authenticated (RFC 3501 §6.2) -----------------------------------------------------------

@dataclass(frozen=True)
class StartTls(Command):
    VERB: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True)
class Authenticate(Command):
    """`mechanism` upper-cased; `initial_response` (RFC 4959 SASL-IR) base64-decoded, b"" for "="."""

    mechanism: str
    initial_response: bytes | None = None
    VERB: ClassVar[str] = "AUTHENTICATE"


@dataclass(frozen=True)
class Login(Command):
    username: str
    password: str
    VERB: ClassVar[str] = "LOGIN"

    def __repr__(self) -> str:  # never log the password
        return f"Login(tag={self.tag!r}, username={self.username!r}, password='***')"


# --- authenticated (RFC 3501 §6.3) ---------------------------------------------------------------

@dataclass(frozen=True)
class Enable(Command):
    """RFC 5161; capability names upper-cased."""

    capabilities: tuple[str, ...]
    VERB: ClassVar[str] = "ENABLE"


@dataclass(frozen=True)
class SelectParam:
    """RFC 4466 select-param, e.g. CONDSTORE; `name` upper-cased."""

    name: str
    value: ExtValue | None = None


@dataclass(frozen=True)
class Qresync:
    """RFC 7162 §3.2.5 SELECT/EXAMINE (QRESYNC (uidvalidity modseq [known-uids [(seqs uids)]]))."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class Select(Command):
    """SELECT, or EXAMINE when `readonly`. `qresync` is the QRESYNC parameter, parsed (it is not
    in `params`)."""

    mailbox: str
    readonly: bool = False
    params: tuple[SelectParam, ...] = ()
    qresync: Qresync | None = None
    VERB: ClassVar[str] = "SELECT"

    @property
    def verb(self) -> str:
        return "EXAMINE" if self.readonly else "SELECT"


@dataclass(frozen=True)
class Create(Command):
    """`use`: RFC 6154 §3 CREATE-SPECIAL-USE `(USE (\\Sent ...))`, the attributes as sent (a
    leading backslash, case kept), None when not given."""

    mailbox: str
    use: tuple[str, ...] | None = None
    VERB: ClassVar[str] = "CREATE"


@dataclass(frozen=True)
class Delete(Command):
    mailbox: str
    VERB: ClassVar[str] = "DELETE"


@dataclass(frozen=True)
class Rename(Command):
    old: str
    new: str
    VERB: ClassVar[str] = "RENAME"


@dataclass(frozen=True)
class Subscribe(Command):
    mailbox: str
    VERB: ClassVar[str] = "SUBSCRIBE"


@dataclass(frozen=True)
class Unsubscribe(Command):
    mailbox: str
    VERB: ClassVar[str] = "UNSUBSCRIBE"


@dataclass(frozen=True)
class List(Command):
    """`reference` and `pattern` decoded from modified UTF-7; wildcards "*" and "%" kept.

    LIST-EXTENDED (RFC 5258), each None when not given: `selection` the selection options
    (upper-cased: SUBSCRIBED REMOTE RECURSIVEMATCH SPECIAL-USE), `patterns` the pattern list form
    (`pattern` is then its first, or ""), `returns` the return options (SUBSCRIBED CHILDREN
    SPECIAL-USE, STATUS); `status` the items of RETURN (STATUS (...)) (RFC 5819), as Status.items."""

    reference: str
    pattern: str
    selection: frozenset[str] | None = None
    patterns: tuple[str, ...] | None = None
    returns: frozenset[str] | None = None
    status: tuple[str, ...] = ()
    VERB: ClassVar[str] = "LIST"

    @property
    def extended(self) -> bool:
        """RFC 5258 §3: any selection option, pattern list or RETURN makes it an extended LIST."""
        return self.selection is not None or self.patterns is not None or self.returns is not None

    @property
    def all_patterns(self) -> tuple[str, ...]:
        return self.patterns if self.patterns is not None else (self.pattern,)


@dataclass(frozen=True)
class Lsub(Command):
    reference: str
    pattern: str
    VERB: ClassVar[str] = "LSUB"


STATUS_ITEMS = frozenset({"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",  # RFC 3501 §6.3.10
                          "SIZE",  # RFC 8438
                          "DELETED",  # RFC 9051 §6.3.11
                          "DELETED-STORAGE",  # RFC 9208 §4.3 (QUOTA=RES-STORAGE)
                          "MAILBOXID",  # RFC 8474 §4.3
                          "HIGHESTMODSEQ"})  # RFC 7162


@dataclass(frozen=True)
class Status(Command):
    """`items` upper-cased, in the order asked, each one of STATUS_ITEMS."""

    mailbox: str
    items: tuple[str, ...]
    VERB: ClassVar[str] = "STATUS"


@dataclass(frozen=True)
class AppendMessage:
    """One message of an APPEND (RFC 3502 MULTIAPPEND sends several). `internal_date` is
    timezone-aware; `message` is the literal's octets as sent; `binary`: sent as a literal8
    (RFC 3516 §4.4 `~{n}`); `utf8`: sent as RFC 6855 §4 `UTF8 (~{n})`."""

    flags: frozenset[str]
    internal_date: datetime | None
    message: bytes
    binary: bool = False
    utf8: bool = False

    def __repr__(self) -> str:
        return (f"AppendMessage(flags={sorted(self.flags)!r}, internal_date={self.internal_date!r}, "
                f"message=<{len(self.message)} octets>, binary={self.binary}, utf8={self.utf8})")


@dataclass(frozen=True)
class Append(Command):
    """APPEND of one message or, with MULTIAPPEND (RFC 3502), several into one mailbox."""

    mailbox: str
    messages: tuple[AppendMessage, ...]
    VERB: ClassVar[str] = "APPEND"


@dataclass(frozen=True)
class Namespace(Command):
    VERB: ClassVar[str] = "NAMESPACE"


@dataclass(frozen=True)
class Compress(Command):
    """RFC 4978 §3: COMPRESS `mechanism` (upper-cased; DEFLATE is the one defined)."""

    mechanism: str
    VERB: ClassVar[str] = "COMPRESS"


@dataclass(frozen=True)
class Idle(Command):
    """RFC 2177: the shell then reads raw lines (Framer.next_line) until "DONE"."""

    VERB: ClassVar[str] = "IDLE"


# --- selected (RFC 3501 §6.4) --------------------------------------------------------------------

@dataclass(frozen=True)
class Check(Command):
    VERB: ClassVar[str] = "CHECK"


@dataclass(frozen=True)
class Close(Command):
    VERB: ClassVar[str] = "CLOSE"


@dataclass(frozen=True)
class Unselect(Command):
    """RFC 3691."""

    VERB: ClassVar[str] = "UNSELECT"


@dataclass(frozen=True)
class Expunge(Command):
    """EXPUNGE, or `UID EXPUNGE uids` (RFC 4315 §2.1) when `uids` is set."""

    uids: SequenceSet | None = None
    VERB: ClassVar[str] = "EXPUNGE"

    @property
    def uid(self) -> bool:
        return self.uids is not None


# SEARCH criteria (RFC 3501 §6.4.4) as a tree. The evaluator lives in search.py.

@dataclass(frozen=True)
class SearchAll:
    pass


@dataclass(frozen=True)
class SearchFlag:
    """Message has (`present`) or lacks a flag: ANSWERED/UNANSWERED ..., KEYWORD, RECENT/OLD."""

    flag: str
    present: bool = True


@dataclass(frozen=True)
class SearchHeader:
    """Header `field` (as sent, e.g. "Subject") contains `value` (case-insensitive substring).

    FROM/TO/CC/BCC/SUBJECT give the field names "From", "To", "Cc", "Bcc", "Subject".
    An empty value matches every message that has the field (RFC 3501 §6.4.4 HEADER).
    """

    field: str
    value: str
    # "header" for HEADER name value (Dovecot matches the plain decoded value there); "" for the
    # dedicated FROM/TO/CC/BCC/SUBJECT keys, whose matching search.header_kind derives from `field`.
    kind: Literal["", "header"] = ""


@dataclass(frozen=True)
class SearchText:
    """BODY (`headers` False: body only) or TEXT (`headers` True: header and body)."""

    value: str
    headers: bool


@dataclass(frozen=True)
class SearchDate:
    """Compares a date, ignoring time and zone: `op` before/on/since; `sent` = Date header
    (SENTBEFORE/SENTON/SENTSINCE) instead of the internal date."""

    op: Literal["before", "on", "since"]
    date: date
    sent: bool = False
    saved: bool = False  # RFC 8514 §4 SAVEDBEFORE/SAVEDON/SAVEDSINCE: the save date instead


@dataclass(frozen=True)
class SearchWithin:
    """RFC 5032 OLDER n (`older`) / YOUNGER n: the internal date at least n seconds ago / within
    the last n seconds."""

    older: bool
    seconds: int


@dataclass(frozen=True)
class SearchSize:
    """RFC822.SIZE larger (`op` "larger", strictly greater) or smaller (strictly less) than `size`."""

    op: Literal["larger", "smaller"]
    size: int


@dataclass(frozen=True)
class SearchSet:
    """Message sequence numbers (`uid` False) or UIDs in `set`."""

    set: SequenceSet
    uid: bool = False


@dataclass(frozen=True)
class SearchNot:
    key: SearchKey


@dataclass(frozen=True)
class SearchOr:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True)
class SearchAnd:
    """All of `keys` (a parenthesised group, the top-level list, or NEW = RECENT UNSEEN)."""

    keys: tuple[SearchKey, ...]


@dataclass(frozen=True)
class SearchModseq:
    """RFC 7162 §3.1.5 MODSEQ [entry-name entry-type] n: the message's MODSEQ is at least `modseq`.
    `entry` ("/flags/\\Seen") and `entry_type` ("priv", "shared" or "all", lower-cased) are parsed
    and, as in Dovecot (one MODSEQ per message), do not change the result."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True)
class SearchObjectId:
    """RFC 8474 §6 EMAILID objectid / THREADID objectid (`kind` "EMAILID" or "THREADID")."""

    kind: Literal["EMAILID", "THREADID"]
    value: str


@dataclass(frozen=True)
class SearchSaveDateSupported:
    """RFC 8514 §4 SAVEDATESUPPORTED: every message, when the mailbox keeps save dates."""


SearchKey = (SearchAll | SearchFlag | SearchHeader | SearchText | SearchDate | SearchSize | SearchSet
             | SearchNot | SearchOr | SearchAnd | SearchModseq | SearchWithin | SearchObjectId
             | SearchSaveDateSupported)


def map_sets(key: SearchKey, fn: Callable[[SearchSet], SearchKey]) -> SearchKey:
    """`key` with every message-set key replaced by `fn(it)`, through AND, OR and NOT."""
    if isinstance(key, SearchSet):
        return fn(key)
    if isinstance(key, SearchAnd):
        return SearchAnd(tuple(map_sets(k, fn) for k in key.keys))
    if isinstance(key, SearchNot):
        return SearchNot(map_sets(key.key, fn))
    if isinstance(key, SearchOr):
        return SearchOr(map_sets(key.left, fn), map_sets(key.right, fn))
    return key


@dataclass(frozen=True)
class Search(Command):
    """`charset` upper-cased ("US-ASCII"/"UTF-8") or None; `criteria` is always a SearchAnd.
    `returns`: None for a plain SEARCH; the RETURN options upper-cased (RFC 4731 §3: MIN MAX ALL
    COUNT, RFC 5182 §2.4: SAVE, RFC 5267 §4.3: UPDATE, §4.4: PARTIAL with its range in `partial`)
    for an extended one, empty for `RETURN ()` (which the session
    answers as ALL)."""

    criteria: SearchAnd
    charset: str | None = None
    uid: bool = False
    returns: frozenset[str] | None = None
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 RETURN (PARTIAL low:high), low <= high
    VERB: ClassVar[str] = "SEARCH"


@dataclass(frozen=True)
class Sort(Command):
    """RFC 5256 SORT / UID SORT: `criteria` as (key, reverse) pairs (keys upper-cased: ARRIVAL CC
    DATE FROM SIZE SUBJECT TO, RFC 5957 DISPLAYFROM DISPLAYTO); `search` as SEARCH's criteria;
    `returns` as Search.returns (RFC 5267 §3 ESORT: SORT RETURN (...))."""

    criteria: tuple[tuple[str, bool], ...]
    charset: str
    search: SearchAnd
    uid: bool = False
    returns: frozenset[str] | None = None
    partial: tuple[int, int] | None = None  # as Search.partial
    VERB: ClassVar[str] = "SORT"


@dataclass(frozen=True)
class CancelUpdate(Command):
    """RFC 5267 §4.3 CANCELUPDATE: the tags of the updating searches to end."""

    tags: tuple[str, ...]
    VERB: ClassVar[str] = "CANCELUPDATE"


@dataclass(frozen=True)
class Thread(Command):
    """RFC 5256 THREAD / UID THREAD: `algorithm` upper-cased (ORDEREDSUBJECT or REFERENCES);
    `search` as SEARCH's criteria."""

    algorithm: str
    charset: str
    search: SearchAnd
    uid: bool = False
    VERB: ClassVar[str] = "THREAD"


# FETCH items (RFC 3501 §6.4.5)

SectionText = Literal["HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"]


@dataclass(frozen=True)
class Section:
    """BODY[section]: `part` (1.2.3 -> (1, 2, 3)), then `text` or None; `fields` upper-cased for
    HEADER.FIELDS[.NOT]. Section() is BODY[] (the whole message)."""

    part: tuple[int, ...] = ()
    text: SectionText | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        items = [str(p) for p in self.part]
        if self.text:
            items.append(self.text)
        out = ".".join(items)
        if self.fields:
            out += " (" + " ".join(self.fields) + ")"
        return out


@dataclass(frozen=True)
class FetchAttr:
    """A simple item: FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE UID RFC822
    RFC822.HEADER RFC822.TEXT, MODSEQ (RFC 7162 §3.1.4.1). (RFC822 and RFC822.TEXT set \\Seen; RFC822.HEADER does not.)"""

    name: str

    @property
    def response_name(self) -> str:
        return self.name


@dataclass(frozen=True)
class FetchBody:
    """BODY[section]<partial> or BODY.PEEK[...] (`peek`: do not set \\Seen).
    `partial` is (origin, length)."""

    section: Section
    partial: tuple[int, int] | None = None
    peek: bool = False

    @property
    def response_name(self) -> str:
        """The item name in the FETCH response: "BODY[1.HEADER]<0>" (RFC 3501 §7.4.2: origin only)."""
        origin = f"<{self.partial[0]}>" if self.partial else ""
        return f"BODY[{self.section}]{origin}"


@dataclass(frozen=True)
class FetchBinary:
    """RFC 3516 §4.2: BINARY[part]<partial>, BINARY.PEEK[part]<partial> (`peek`: no \\Seen) and
    BINARY.SIZE[part] (`size`). `part` is the section-part (1.2.3 -> (1, 2, 3)); () is the message."""

    part: tuple[int, ...] = ()
    partial: tuple[int, int] | None = None
    peek: bool = False
    size: bool = False

    @property
    def response_name(self) -> str:
        """"BINARY[1.2]<0>" or "BINARY.SIZE[1.2]" (RFC 3516 §4.3: origin only)."""
        section = ".".join(str(p) for p in self.part)
        if self.size:
            return f"BINARY.SIZE[{section}]"
        origin = f"<{self.partial[0]}>" if self.partial else ""
        return f"BINARY[{section}]{origin}"


FetchItem = FetchAttr | FetchBody | FetchBinary

FETCH_ATTRS = frozenset({"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE",
                         "UID", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ",
                         "EMAILID", "THREADID",  # RFC 8474 §5
                         "SAVEDATE"})  # RFC 8514 §3


@dataclass(frozen=True)
class Fetch(Command):
    """Macros ALL/FAST/FULL are expanded. With `uid`, FetchAttr("UID") is added (RFC 3501 §6.4.8)
    if absent. `changedsince`: the RFC 7162 §3.1.4.1 CHANGEDSINCE modifier (only messages whose
    MODSEQ is above it; MODSEQ is added to the items)."""

    set: SequenceSet
    items: tuple[FetchItem, ...]
    uid: bool = False
    changedsince: int | None = None
    vanished: bool = False  # RFC 7162 §3.2.6 the VANISHED modifier (UID FETCH with CHANGEDSINCE)
    VERB: ClassVar[str] = "FETCH"


@dataclass(frozen=True)
class Store(Command):
    """`mode` matches Mailbox.store_flags: "+FLAGS" add, "-FLAGS" remove, "FLAGS" set.
    `unchangedsince`: the RFC 7162 §3.1.3 UNCHANGEDSINCE modifier (0 allowed)."""

    set: SequenceSet
    mode: Literal["add", "remove", "set"]
    flags: frozenset[str]
    silent: bool = False
    uid: bool = False
    unchangedsince: int | None = None
    VERB: ClassVar[str] = "STORE"


@dataclass(frozen=True)
class Copy(Command):
    set: SequenceSet
    mailbox: str
    uid: bool = False
    VERB: ClassVar[str] = "COPY"


@dataclass(frozen=True)
class Move(Command):
    """RFC 6851."""

    set: SequenceSet
    mailbox: str
    uid: bool = False
    VERB: ClassVar[str] = "MOVE"


@dataclass(frozen=True)
class GetQuota(Command):
    """RFC 9208 §4.2 GETQUOTA quota-root."""

    root: str
    VERB: ClassVar[str] = "GETQUOTA"


@dataclass(frozen=True)
class GetQuotaRoot(Command):
    """RFC 9208 §4.3 GETQUOTAROOT mailbox."""

    mailbox: str
    VERB: ClassVar[str] = "GETQUOTAROOT"


@dataclass(frozen=True)
class SetQuota(Command):
    """RFC 9208 §4.1 SETQUOTA quota-root (resource limit ...); `limits` upper-cased names."""

    root: str
    limits: tuple[tuple[str, int], ...]
    VERB: ClassVar[str] = "SETQUOTA"


AnyCommand = (Capability | Noop | Logout | Id | StartTls | Authenticate | Login | Enable | Select
              | Create | Delete | Rename | Subscribe | Unsubscribe | List | Lsub | Status | Append
              | Namespace | Idle | Check | Close | Unselect | Expunge | Search | Sort | Thread | Fetch | Store | Copy
              | Move | GetQuota | GetQuotaRoot | SetQuota | Compress | CancelUpdate)
