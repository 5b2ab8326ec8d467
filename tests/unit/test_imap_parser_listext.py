"""The grammar of LIST-EXTENDED (RFC 5258 §6) with LIST-STATUS (RFC 5819 §2), CREATE (USE ...)
(RFC 6154 §6) and the OBJECTID (RFC 8474 §7) and SAVEDATE (RFC 8514 §5) search keys and fetch
items: table tests and hypothesis round trips; garbage after them is a ParseError, never anything
else. And the LIST pattern matcher (listing.py) against the wildcards as a regex."""

from __future__ import annotations

import re
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap.commands import (
    Create,
    Fetch,
    FetchAttr,
    List,
    ParseError,
    Search,
    SearchDate,
    SearchObjectId,
    SearchSaveDateSupported,
)
from mailhaven.imap.listing import list_matcher
from mailhaven.imap.parser import LIST_RETURN_OPTIONS, LIST_SELECT_OPTIONS, parse_bytes

STATUS_NAMES = ["MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "DELETED", "DELETED-STORAGE",
                "MAILBOXID", "HIGHESTMODSEQ"]
patterns = st.lists(st.from_regex(r"[A-Za-z0-9.%*]{1,8}", fullmatch=True), min_size=1, max_size=4)


def test_plain_list_stays_plain() -> None:
    cmd = parse_bytes(b'a LIST "" *')
    assert cmd == List("a", "", "*") and not cmd.extended and cmd.all_patterns == ("*",)


@given(st.sets(st.sampled_from(sorted(LIST_SELECT_OPTIONS - {"RECURSIVEMATCH"}))), st.booleans(), patterns,
       st.sets(st.sampled_from(sorted(LIST_RETURN_OPTIONS))), st.lists(st.sampled_from(STATUS_NAMES), max_size=4),
       st.booleans())
def test_list_extended_round_trips(select: set[str], recursive: bool, pats: list[str], returns: set[str],
                                   status: list[str], lower: bool) -> None:
    opts = sorted(select) + (["RECURSIVEMATCH"] if recursive and select - {"REMOTE"} else [])
    ret = sorted(returns) + ([f"STATUS ({' '.join(status)})"] if status else [])
    line = f'a LIST ({" ".join(opts)}) "" ({" ".join(pats)}) RETURN ({" ".join(ret)})'
    cmd = parse_bytes((line.lower() if lower else line).encode())
    assert isinstance(cmd, List) and cmd.extended
    assert cmd.selection == frozenset(opts)
    assert cmd.patterns == tuple(p.lower() if lower else p for p in pats)
    assert cmd.returns == frozenset(returns | ({"STATUS"} if status else set()))
    assert cmd.status == tuple(dict.fromkeys(status))


@pytest.mark.parametrize("line", [
    b'a LIST (RECURSIVEMATCH) "" %', b'a LIST (REMOTE RECURSIVEMATCH) "" %', b'a LIST (BOGUS) "" %',
    b'a LIST ("SUBSCRIBED") "" %', b'a LIST "" % RETURN (BOGUS)', b'a LIST "" % RETURN (STATUS)',
    b'a LIST "" % RETURN (STATUS ())', b'a LIST "" % RETURN (STATUS (BOGUS))', b'a LIST "" % RETURN',
    b'a LIST "" % EXTRA', b'a LIST "" (a b', b'a LSUB () "" %', b'a LSUB "" (a b)',
    b"a CREATE x (USE (Sent))", b"a CREATE x (USE (\\Sent)", b"a CREATE x (FOO (\\Sent))", b"a CREATE x ()",
    b"a SEARCH EMAILID", b"a SEARCH EMAILID ()", b"a SEARCH THREADID a.b", b"a SEARCH SAVEDON 1-Foo-2020",
    b"a SEARCH EMAILID " + b"M" * 256,
])
def test_bad_forms_are_bad(line: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_bytes(line)
    assert info.value.kind == "BAD"


def test_create_use_and_search_and_fetch_items() -> None:
    assert parse_bytes(b"a CREATE x (USE (\\Sent \\junk))") == Create("a", "x", ("\\Sent", "\\junk"))
    assert parse_bytes(b"a CREATE x (USE ())") == Create("a", "x", ())
    search = parse_bytes(b"a SEARCH SAVEDBEFORE 2-Jan-2020 savedon 3-Feb-2021 SAVEDSINCE 4-Mar-2022 "
                         b"SAVEDATESUPPORTED EMAILID M0a_-Z THREADID T1")
    assert isinstance(search, Search)
    assert search.criteria.keys == (SearchDate("before", date(2020, 1, 2), saved=True),
                                    SearchDate("on", date(2021, 2, 3), saved=True),
                                    SearchDate("since", date(2022, 3, 4), saved=True), SearchSaveDateSupported(),
                                    SearchObjectId("EMAILID", "M0a_-Z"), SearchObjectId("THREADID", "T1"))
    fetch = parse_bytes(b"a FETCH 1 (EMAILID threadid SaveDate)")
    assert isinstance(fetch, Fetch)
    assert fetch.items == (FetchAttr("EMAILID"), FetchAttr("THREADID"), FetchAttr("SAVEDATE"))


@given(st.binary(max_size=40))
def test_garbage_after_the_new_forms_is_a_parse_error_or_a_command(tail: bytes) -> None:
    for head in (b'a LIST (SUBSCRIBED) "" (', b'a LIST "" % RETURN (', b"a CREATE x (USE (", b"a SEARCH EMAILID "):
        try:
            parse_bytes(head + tail.replace(b"\r", b"").replace(b"\n", b""))
        except ParseError:
            pass


def _reference(pattern: str) -> re.Pattern[str]:
    """RFC 3501 §6.3.8 as a backtracking regex: right, but exponential on hostile patterns."""
    return re.compile("".join(".*" if c == "*" else "[^.]*" if c == "%" else re.escape(c) for c in pattern), re.DOTALL)


@given(st.text(alphabet="ab.*%", max_size=8), st.text(alphabet="ab.", max_size=10))
def test_list_matcher_agrees_with_the_rfc_wildcards(pattern: str, name: str) -> None:
    assert list_matcher(pattern).fullmatch(name) == bool(_reference(pattern).fullmatch(name))
