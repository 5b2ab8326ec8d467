"""Property tests for IMAP framing and parsing: hostile input only ever gives ParseError/Reject,
fragmentation never changes the result, and rendered commands parse back to what was rendered."""

from __future__ import annotations

from datetime import date

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailhaven.imap.commands import (
    GetQuota,
    List,
    Login,
    ParseError,
    Search,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchNot,
    SearchOr,
    SearchSet,
    SearchSize,
    SearchText,
    Select,
    SetQuota,
)
from mailhaven.imap.framing import NEED_DATA, Framer, FramerEvent, RawCommand, Reject, SendContinuation
from mailhaven.imap.parser import parse_bytes, parse_command
from mailhaven.imap.seqset import SequenceSet
from mailhaven.imap.utf7 import decode as utf7_decode
from mailhaven.imap.utf7 import decode_lenient as utf7_decode_lenient
from mailhaven.imap.utf7 import encode as utf7_encode

VALID = [
    b"a1 CAPABILITY", b"a2 LOGIN {5}\r\nalice \"se\\\"cret\"", b"a3 SELECT \"INBOX\" (CONDSTORE)",
    b"a4 FETCH 1:*,3 (FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From {2}\r\nTo)]<0.1024> RFC822.SIZE)",
    b"a5 UID SEARCH CHARSET UTF-8 OR (FROM \"x\" NOT SEEN) NOT (1,3:5 SINCE 1-Feb-1994) LARGER 10",
    b"a6 APPEND INBOX (\\Seen $x) \" 1-Feb-1994 21:52:25 -0800\" {5+}\r\nhello",
    b"a7 STORE 1:3 +FLAGS.SILENT (\\Deleted)", b"a8 UID MOVE 4:* \"Tr&AOQ-sh\"",
    b"a9 ID (\"name\" \"x\" \"v\" NIL)", b"b1 LIST \"\" %/*", b"b2 STATUS x (MESSAGES UNSEEN)",
    b"b3 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==", b"b4 ENABLE CONDSTORE", b"b5 UID EXPUNGE 1:5",
    b"b6 SEARCH HEADER X-A {3}\r\nabc BODY y TEXT z SENTBEFORE \"2-Mar-2020\" UID 1:*",
    b"b7 RENAME a b", b"b8 FETCH 1 FULL", b"b9 COPY 1 x",
    b'c1 GETQUOTA ""', b"c2 GETQUOTAROOT INBOX", b'c3 SETQUOTA "" (STORAGE 512 MESSAGE 1000)',
    b"c4 SETQUOTA {0}\r\n ()",
]


def parse_or_error(data: bytes) -> None:
    try:
        parse_bytes(data)
    except ParseError as err:
        assert err.kind in ("BAD", "NO")
        assert err.response().endswith(b"\r\n") and b"\r\n" not in err.response()[:-2]


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_parse_error(data: bytes) -> None:
    parse_or_error(data)


@settings(max_examples=500)
@given(st.text(alphabet='a1 ()[]<>{}"\\*%:,.+-=~0123456789BODYPEEKHEADRFIXTUSNCHAM\r\n\x00\xff', max_size=120))
def test_imap_looking_noise_only_ever_raises_parse_error(text: str) -> None:
    parse_or_error(text.encode("utf-8"))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(b' ()[]<>{}"\\*:,.+-0123456789\r\nAZ\x00\x80'))
        if op == "insert":
            data.insert(pos, byte)
        elif op == "delete" and pos < len(data):
            del data[pos]
        elif op == "replace" and pos < len(data):
            data[pos] = byte
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@settings(max_examples=1500)
@given(mutated())
def test_mutations_of_valid_commands_only_ever_raise_parse_error(data: bytes) -> None:
    parse_or_error(data)


def test_valid_corpus_parses() -> None:
    for data in VALID:
        parse_bytes(data)


raw_commands = st.integers(0, 4).flatmap(lambda n: st.builds(
    RawCommand,
    st.tuples(*[st.binary(max_size=40)] * (n + 1)),
    st.tuples(*[st.binary(max_size=20)] * n)))


@settings(max_examples=500)
@given(raw_commands)
def test_arbitrary_raw_segments_only_ever_raise_parse_error(raw: RawCommand) -> None:
    try:
        parse_command(raw)
    except ParseError:
        pass


# --- framing ------------------------------------------------------------------------------------------

def run_framer(chunks: list[bytes], max_line: int = 200, max_literal: int = 100) -> list[FramerEvent]:
    framer = Framer(max_line=max_line, max_literal=max_literal, max_in_flight=8)
    events: list[FramerEvent] = []
    for chunk in chunks:
        framer.receive_data(chunk)
        while (event := framer.next_command()) is not NEED_DATA:
            events.append(event)
    return events


@st.composite
def fragmented(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


STREAM = b"\r\n".join(VALID) + b"\r\n" + b"c1 LOGIN {500}\r\nc2 NOOP " + b"x" * 300 + b"\nc3 NOOP\r\n"


@settings(max_examples=300)
@given(st.data())
def test_any_fragmentation_gives_the_same_events(data: st.DataObject) -> None:
    whole = run_framer([STREAM])
    assert whole[-3:] == [Reject("c1", "BAD", "Literal too big"), Reject("c2", "BAD", "Line too long"),
                          RawCommand((b"c3 NOOP",))]
    assert run_framer(data.draw(fragmented(STREAM))) == whole


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=60), max_size=10), st.integers(16, 100), st.integers(0, 50))
def test_framer_never_raises_and_stays_bounded(chunks: list[bytes], max_line: int, max_literal: int) -> None:
    framer = Framer(max_line=max_line, max_literal=max_literal, max_in_flight=2)
    for chunk in chunks:
        framer.receive_data(chunk)
        while (event := framer.next_command()) is not NEED_DATA:
            assert isinstance(event, RawCommand | SendContinuation | Reject)
            if isinstance(event, RawCommand):
                assert sum(len(line) for line in event.lines) <= max_line
                assert sum(len(lit) for lit in event.literals) <= max_literal
        assert framer.buffered <= max_literal + 2 * max_line + 60


# --- round trips: render a command, parse it back -----------------------------------------------------

def wire_string(value: str, style: str) -> bytes:
    raw = value.encode("utf-8")
    if style == "literal" or "\r" in value or "\n" in value or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        return b"{%d}\r\n" % len(raw) + raw
    if style == "atom" and value and all(0x21 <= b < 0x7F and b not in b'(){ %*"\\' for b in raw):
        return raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


styles = st.sampled_from(["atom", "quoted", "literal"])


@settings(max_examples=300)
@given(st.text(max_size=30), st.text(max_size=30), styles, styles)
def test_login_round_trip(user: str, password: str, s1: str, s2: str) -> None:
    assume("\x00" not in user + password)
    line = b"t LOGIN " + wire_string(user, s1) + b" " + wire_string(password, s2)
    assert parse_bytes(line + b"\r\n") == Login("t", user, password)


@settings(max_examples=300)
@given(st.text(min_size=1, max_size=30), styles)
def test_mailbox_round_trip_through_modified_utf7(name: str, style: str) -> None:
    assume(name.upper() != "INBOX")
    line = b"t SELECT " + wire_string(utf7_encode(name), style)
    assert parse_bytes(line + b"\r\n") == Select("t", name)


printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=30)


@settings(max_examples=300)
@given(printable, styles)
def test_a_printable_mailbox_name_is_decoded_or_answered_no_never_bad(wire: str, style: str) -> None:
    # RFC 3501 §5.1.3: modified UTF-7 is a convention; a name that breaks it is NO, not a syntax error.
    assume(wire.upper() != "INBOX")
    try:
        cmd = parse_bytes(b"t SELECT " + wire_string(wire, style) + b"\r\n")
    except ParseError as e:
        assert (e.kind, e.code) == ("NO", "NONEXISTENT")
        try:
            utf7_decode(wire)
        except ValueError:
            return
        raise AssertionError(f"{wire!r} is valid modified UTF-7") from None
    assert cmd == Select("t", utf7_decode(wire))


@settings(max_examples=300)
@given(printable, styles)
def test_any_printable_list_pattern_is_accepted(wire: str, style: str) -> None:
    cmd = parse_bytes(b't LIST "" ' + wire_string(wire, style) + b"\r\n")
    assert cmd == List("t", "", utf7_decode_lenient(wire))


field_names = st.text(alphabet="ABCXYZabcxyz-", min_size=1, max_size=8)
search_strings = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                         max_size=12)
# (a, b) pairs where 0 is "*" (seqset.STAR): exactly what SequenceSet.parse produces for "a:b".
seqsets = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=3).map(
    lambda pairs: SequenceSet(tuple(pairs)))

leaf_keys: st.SearchStrategy[SearchKey] = st.one_of(
    st.just(SearchAll()),
    st.builds(SearchFlag, st.sampled_from(["\\Seen", "\\Deleted", "\\Answered", "\\Flagged", "\\Draft",
                                           "\\Recent", "$Junk", "work"]), st.booleans()),
    st.builds(SearchHeader, field_names, search_strings, st.just("header")),
    st.builds(SearchText, search_strings, st.booleans()),
    st.builds(SearchDate, st.sampled_from(["before", "on", "since"]),
              st.dates(date(1900, 1, 1), date(2200, 12, 31)), st.booleans()),
    st.builds(SearchSize, st.sampled_from(["larger", "smaller"]), st.integers(0, 2**40)),
    st.builds(SearchSet, seqsets, st.booleans()),
)
search_keys: st.SearchStrategy[SearchKey] = st.recursive(
    leaf_keys,
    lambda inner: st.one_of(
        st.builds(SearchNot, inner),
        st.builds(SearchOr, inner, inner),
        st.builds(SearchAnd, st.lists(inner, min_size=1, max_size=3).map(tuple)),
    ),
    max_leaves=12,
)

_FLAG_WORDS = {"\\Seen": "SEEN", "\\Deleted": "DELETED", "\\Answered": "ANSWERED", "\\Flagged": "FLAGGED",
               "\\Draft": "DRAFT", "\\Recent": "RECENT"}
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def render_key(key: SearchKey, style: str) -> bytes:
    if isinstance(key, SearchAll):
        return b"ALL"
    if isinstance(key, SearchFlag):
        word = _FLAG_WORDS.get(key.flag)
        if word == "RECENT":
            return b"RECENT" if key.present else b"OLD"
        if word:
            return (word if key.present else "UN" + word).encode()
        return (b"KEYWORD " if key.present else b"UNKEYWORD ") + key.flag.encode()
    if isinstance(key, SearchHeader):
        return b"HEADER " + key.field.encode() + b" " + wire_string(key.value, style)
    if isinstance(key, SearchText):
        return (b"TEXT " if key.headers else b"BODY ") + wire_string(key.value, style)
    if isinstance(key, SearchDate):
        d = key.date
        text = f"{d.day}-{_MONTHS[d.month - 1]}-{d.year:04d}".encode()
        word = ("SENT" if key.sent else "") + key.op.upper()
        return word.encode() + b" " + (b'"' + text + b'"' if style == "quoted" else text)
    if isinstance(key, SearchSize):
        return key.op.upper().encode() + b" " + str(key.size).encode()
    if isinstance(key, SearchSet):
        return (b"UID " if key.uid else b"") + str(key.set).encode()
    if isinstance(key, SearchNot):
        return b"NOT " + render_key(key.key, style)
    if isinstance(key, SearchOr):
        return b"OR " + render_key(key.left, style) + b" " + render_key(key.right, style)
    return b"(" + b" ".join(render_key(k, style) for k in key.keys) + b")"


@settings(max_examples=300)
@given(st.lists(search_keys, min_size=1, max_size=4), styles)
def test_search_tree_round_trip(keys: list[SearchKey], style: str) -> None:
    line = b"t SEARCH CHARSET UTF-8 " + b" ".join(render_key(k, style) for k in keys)
    assert parse_bytes(line + b"\r\n", max_nesting=1000) == Search("t", SearchAnd(tuple(keys)), charset="UTF-8")


resource_names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=12)


@settings(max_examples=300)
@given(st.text(max_size=20), styles, st.lists(st.tuples(resource_names, st.integers(0, 2**63 - 1)), max_size=5))
def test_quota_commands_round_trip(root: str, style: str, limits: list[tuple[str, int]]) -> None:
    """RFC 9208 §6: GETQUOTA/SETQUOTA quota-root-name (astring) and setquota-list parse back."""
    assume("\x00" not in root)
    wire = wire_string(root, style)
    assert parse_bytes(b"t GETQUOTA " + wire + b"\r\n") == GetQuota("t", root)
    items = b" ".join(b"%s %d" % (name.encode(), n) for name, n in limits)
    assert parse_bytes(b"t SETQUOTA " + wire + b" (" + items + b")\r\n") == SetQuota("t", root, tuple(limits))
