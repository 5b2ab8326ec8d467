"""The RFC 7162 CONDSTORE syntax in the IMAP parser: FETCH MODSEQ and (CHANGEDSINCE n), STORE
(UNCHANGEDSINCE n), SEARCH MODSEQ [entry-name entry-type] n, SELECT/EXAMINE (CONDSTORE)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap.commands import (
    Fetch,
    FetchAttr,
    ParseError,
    Search,
    SearchAnd,
    SearchFlag,
    SearchModseq,
    SearchNot,
    SearchOr,
    Select,
    SelectParam,
    Store,
)
from mailhaven.imap.parser import parse_bytes
from mailhaven.imap.seqset import SequenceSet

MAX64 = 2**63 - 1
modseqs = st.integers(0, MAX64)


def bad(line: bytes) -> bytes:
    with pytest.raises(ParseError) as e:
        parse_bytes(line)
    return e.value.response()


def test_fetch_modseq_item() -> None:
    cmd = parse_bytes(b"a FETCH 1:* (FLAGS MODSEQ)")
    assert isinstance(cmd, Fetch)
    assert cmd.items == (FetchAttr("FLAGS"), FetchAttr("MODSEQ")) and cmd.changedsince is None
    assert parse_bytes(b"a fetch 1 modseq") == Fetch("a", SequenceSet(((1, 1),)), (FetchAttr("MODSEQ"),))


def test_fetch_changedsince_after_items_and_macros() -> None:
    cmd = parse_bytes(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)")
    assert isinstance(cmd, Fetch) and cmd.uid and cmd.changedsince == 12345
    assert cmd.items == (FetchAttr("UID"), FetchAttr("FLAGS"))
    fast = parse_bytes(b"a FETCH 2 FAST (changedsince 7)")
    assert isinstance(fast, Fetch) and fast.changedsince == 7 and len(fast.items) == 3
    single = parse_bytes(b"a FETCH 2 FLAGS (CHANGEDSINCE 0)")  # 0 accepted, as Dovecot does
    assert isinstance(single, Fetch) and single.changedsince == 0


@pytest.mark.parametrize("line", [
    b"a FETCH 1 (FLAGS) (FOO 1)",
    b"a FETCH 1 (FLAGS) (VANISHED 1)",  # VANISHED takes no value
    b"a FETCH 1 (FLAGS) (UNCHANGEDSINCE 1)",
    b"a FETCH 1 (FLAGS) (CHANGEDSINCE)",
    b"a FETCH 1 (FLAGS) (CHANGEDSINCE x)",
    b"a FETCH 1 (FLAGS) (CHANGEDSINCE 9223372036854775808)",  # above 2^63-1
    b"a FETCH 1 (FLAGS) (CHANGEDSINCE 1",
    b"a FETCH 1 (FLAGS) ()",
])
def test_fetch_bad_modifiers(line: bytes) -> None:
    assert bad(line).startswith(b"a BAD ")


def test_fetch_vanished_modifier() -> None:  # RFC 7162 §3.2.6 (the session checks UID and CHANGEDSINCE)
    cmd = parse_bytes(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5 VANISHED)")
    assert isinstance(cmd, Fetch) and cmd.vanished and cmd.changedsince == 5
    alone = parse_bytes(b"a FETCH 1 FLAGS (vanished)")
    assert isinstance(alone, Fetch) and alone.vanished and alone.changedsince is None
    assert bad(b"a STORE 1 (VANISHED) +FLAGS x").startswith(b"a BAD ")


def test_store_unchangedsince() -> None:
    cmd = parse_bytes(b"a STORE 1:3 (UNCHANGEDSINCE 5) +FLAGS.SILENT (\\Seen)")
    assert cmd == Store("a", SequenceSet(((1, 3),)), "add", frozenset({"\\Seen"}), True, False, 5)
    uid = parse_bytes(b"a UID STORE 7 (unchangedsince 0) FLAGS ()")
    assert isinstance(uid, Store) and uid.uid and uid.unchangedsince == 0 and uid.mode == "set"
    plain = parse_bytes(b"a STORE 1 -FLAGS x")
    assert isinstance(plain, Store) and plain.unchangedsince is None


@pytest.mark.parametrize("line", [
    b"a STORE 1 (CHANGEDSINCE 3) +FLAGS x",
    b"a STORE 1 (UNCHANGEDSINCE 3 FOO 1) +FLAGS x",
    b"a STORE 1 (UNCHANGEDSINCE) +FLAGS x",
    b"a STORE 1 (UNCHANGEDSINCE 3)+FLAGS x",
])
def test_store_bad_modifiers(line: bytes) -> None:
    assert bad(line).startswith(b"a BAD ")


def test_search_modseq_forms() -> None:
    assert parse_bytes(b"a SEARCH MODSEQ 0") == Search("a", SearchAnd((SearchModseq(0),)))
    cmd = parse_bytes(b'a SEARCH MODSEQ "/flags/\\\\Seen" ALL 620162338')
    assert cmd == Search("a", SearchAnd((SearchModseq(620162338, "/flags/\\Seen", "all"),)))
    nested = parse_bytes(b"a UID SEARCH OR MODSEQ 3 NOT MODSEQ 4 SEEN")
    assert nested == Search("a", SearchAnd((SearchOr(SearchModseq(3), SearchNot(SearchModseq(4))),
                                            SearchFlag("\\Seen"))), uid=True)


@pytest.mark.parametrize("line", [
    b'a SEARCH MODSEQ "/flags/\\\\Seen" foo 3',  # entry-type-req: priv / shared / all
    b'a SEARCH MODSEQ "/flags/\\\\Seen" 3',  # an entry name needs its type
    b"a SEARCH MODSEQ",
    b"a SEARCH MODSEQ x",
    b"a SEARCH MODSEQ 9223372036854775808",
])
def test_search_modseq_bad(line: bytes) -> None:
    assert bad(line).startswith(b"a BAD ")


def test_select_condstore_parameter() -> None:
    assert parse_bytes(b"a SELECT INBOX (CONDSTORE)") == Select("a", "INBOX", False, (SelectParam("CONDSTORE"),))
    ex = parse_bytes(b"a EXAMINE INBOX (condstore)")
    assert isinstance(ex, Select) and ex.readonly and ex.params == (SelectParam("CONDSTORE"),)


@given(modseqs, st.booleans(), st.booleans())
def test_changedsince_any_value_round_trips(n: int, uid: bool, lower: bool) -> None:
    word = b"changedsince" if lower else b"CHANGEDSINCE"
    cmd = parse_bytes(b"t %sFETCH 1:* (FLAGS) (%s %d)" % (b"UID " if uid else b"", word, n))
    assert isinstance(cmd, Fetch) and cmd.changedsince == n and cmd.uid == uid


@given(modseqs, st.sampled_from([b"+FLAGS", b"-FLAGS", b"FLAGS", b"+FLAGS.SILENT"]))
def test_unchangedsince_any_value_round_trips(n: int, op: bytes) -> None:
    cmd = parse_bytes(b"t STORE 1,3:5 (UNCHANGEDSINCE %d) %s (\\Seen kw)" % (n, op))
    assert isinstance(cmd, Store) and cmd.unchangedsince == n
    assert cmd.flags == frozenset({"\\Seen", "kw"}) and cmd.silent == op.endswith(b".SILENT")


@given(modseqs, st.sampled_from(["priv", "shared", "all", "PRIV", "Shared"]),
       st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\'), max_size=20))
def test_search_modseq_entry_round_trips(n: int, kind: str, flag: str) -> None:
    entry = "/flags/" + flag
    cmd = parse_bytes(b'u SEARCH MODSEQ "%s" %s %d' % (entry.encode(), kind.encode(), n))
    assert cmd == Search("u", SearchAnd((SearchModseq(n, entry, kind.lower()),)))


@given(st.integers(2**63, 2**70))
def test_values_above_63_bits_are_refused(n: int) -> None:
    for line in (b"t FETCH 1 (FLAGS) (CHANGEDSINCE %d)" % n, b"t STORE 1 (UNCHANGEDSINCE %d) FLAGS x" % n,
                 b"t SEARCH MODSEQ %d" % n):
        assert bad(line).startswith(b"t BAD ")


@given(st.binary(max_size=30))
def test_modifier_garbage_is_a_parse_error_or_a_command(tail: bytes) -> None:
    for head in (b"t FETCH 1 (FLAGS) (", b"t STORE 1 (", b"t SEARCH MODSEQ "):
        line = head + tail.replace(b"\r", b"").replace(b"\n", b"")
        try:
            parse_bytes(line)
        except ParseError as e:
            assert e.response().startswith((b"t BAD ", b"t NO "))


uid_sets = st.lists(st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1)), min_size=1, max_size=5).map(
    lambda pairs: ",".join(f"{a}:{b}" if a != b else str(a) for a, b in pairs))


@given(st.integers(1, 2**32 - 1), st.integers(1, MAX64), st.none() | uid_sets, st.none() | st.tuples(uid_sets, uid_sets))
def test_select_qresync_round_trips(uv: int, modseq: int, known: str | None, match: tuple[str, str] | None) -> None:
    from mailhaven.imap.commands import Qresync

    parts = [str(uv), str(modseq)]
    if known is not None:
        parts.append(known)
    if match is not None:
        parts.append(f"({match[0]} {match[1]})")
    cmd = parse_bytes(b"q SELECT INBOX (QRESYNC (%s))" % " ".join(parts).encode())
    assert isinstance(cmd, Select) and cmd.params == ()
    assert cmd.qresync == Qresync(uv, modseq, SequenceSet.parse(known) if known is not None else None,
                                  (SequenceSet.parse(match[0]), SequenceSet.parse(match[1])) if match else None)


@given(st.binary(max_size=40))
def test_qresync_garbage_is_a_parse_error_or_a_command(tail: bytes) -> None:
    line = b"q SELECT INBOX (QRESYNC (" + tail.replace(b"\r", b"").replace(b"\n", b"")
    try:
        parse_bytes(line)
    except ParseError as e:
        assert e.response().startswith(b"q BAD ")
