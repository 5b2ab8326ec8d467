"""WITHIN (RFC 5032): OLDER n / YOUNGER n in the parser (nz-number seconds, 0 and junk BAD as
Dovecot 2.3), in search.py (whole seconds against the context's `now`, OLDER including exactly n
seconds ago, as Dovecot) and through the sans-IO session (the capability, a real store)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap import search
from mailhaven.imap.commands import ParseError, Search, SearchAnd, SearchWithin
from mailhaven.imap.parser import parse_bytes
from tests.unit import test_imap_condstore
from tests.unit.test_imap_core import ALICE, logged_in, message
from tests.unit.test_imap_search import Counting, matches

ctx = test_imap_condstore.ctx  # the fixture: a real store in tmp_path


@given(st.integers(1, 2**32 - 1), st.booleans(), st.booleans())
def test_older_younger_round_trip(n: int, older: bool, lower: bool) -> None:
    word = "OLDER" if older else "YOUNGER"
    cmd = parse_bytes(b"t SEARCH %s %d" % ((word.lower() if lower else word).encode(), n))
    assert cmd == Search("t", SearchAnd((SearchWithin(older, n),)))


@pytest.mark.parametrize("line", [b"t SEARCH OLDER 0", b"t SEARCH YOUNGER -1", b"t SEARCH OLDER 4294967296",
                                  b"t SEARCH YOUNGER x", b"t SEARCH YOUNGER", b"t SEARCH OLDER 1x"])
def test_older_younger_bad(line: bytes) -> None:
    with pytest.raises(ParseError) as e:
        parse_bytes(line)
    assert e.value.response().startswith(b"t BAD ")


@given(st.binary(max_size=20))
def test_within_garbage_is_a_parse_error_or_a_command(tail: bytes) -> None:
    try:
        cmd = parse_bytes(b"t SEARCH YOUNGER " + tail)
    except ParseError as e:
        assert e.response().startswith((b"t BAD ", b"* BAD ", b"t NO "))
    else:
        assert isinstance(cmd, Search)


def test_within_compares_whole_seconds_with_now() -> None:
    msg = Counting()
    at = int(msg.internaldate)
    exactly = search.SearchContext(10, 100, now=at + 60.9)
    assert matches("OLDER 60", msg, exactly) and matches("YOUNGER 60", msg, exactly)  # both include the edge
    assert not matches("OLDER 61", msg, exactly) and not matches("YOUNGER 59", msg, exactly)
    assert matches("OR OLDER 61 YOUNGER 61", msg, exactly)
    assert matches("NOT YOUNGER 59", msg, exactly)


async def test_within_through_the_session(ctx: Any) -> None:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    now = time.time()
    for i, age in enumerate((86400 * 3, 3600, 5), 1):
        await mb.append(message(i), internaldate=now - age)
    d = await logged_in(ctx)
    assert b" WITHIN" in d.greeting
    await d.command(b"s SELECT INBOX")
    assert (await d.command(b"a1 SEARCH OLDER 86400"))[0] == b"* SEARCH 1"
    assert (await d.command(b"a2 SEARCH YOUNGER 86400"))[0] == b"* SEARCH 2 3"
    assert (await d.command(b"a3 UID SEARCH YOUNGER 600"))[0] == b"* SEARCH 3"
    assert (await d.command(b"a4 SEARCH RETURN (COUNT) OLDER 600"))[0] == b'* ESEARCH (TAG "a4") COUNT 2'
    assert (await d.command(b"a5 SEARCH OLDER 0"))[-1].startswith(b"a5 BAD ")
