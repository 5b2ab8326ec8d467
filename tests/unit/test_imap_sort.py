"""SORT (RFC 5256) and SORT=DISPLAY (RFC 5957): the parser (hypothesis round trips, garbage is a
ParseError), base-subject extraction (RFC 5256 §2.1, with imaptest's sort-subject cases), the
address and date keys, the ordering, and SORT/UID SORT through the sans-IO session."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap import sort
from mailhaven.imap.commands import ParseError, SearchAll, SearchAnd, SearchFlag, Sort
from mailhaven.imap.parser import SORT_KEYS, parse_bytes
from tests.unit import test_imap_condstore
from tests.unit.test_imap_core import ALICE, logged_in

ctx = test_imap_condstore.ctx  # the fixture: a real store in tmp_path

criteria = st.lists(st.tuples(st.sampled_from(sorted(SORT_KEYS)), st.booleans()), min_size=1, max_size=5)


@given(criteria, st.booleans(), st.sampled_from(["US-ASCII", "utf-8", '"UTF-8"']))
def test_sort_round_trips(crit: list[tuple[str, bool]], uid: bool, charset: str) -> None:
    text = " ".join(("REVERSE " if r else "") + k for k, r in crit)
    line = f"t {'UID ' if uid else ''}SORT ({text}) {charset} ALL SEEN".encode()
    assert parse_bytes(line) == Sort("t", tuple(crit), "UTF-8" if "8" in charset else "US-ASCII",
                                     SearchAnd((SearchAll(), SearchFlag("\\Seen"))), uid)


@pytest.mark.parametrize(("line", "kind"), [
    (b"t SORT (FOO) US-ASCII ALL", b"BAD"), (b"t SORT () US-ASCII ALL", b"BAD"),
    (b"t SORT (REVERSE) US-ASCII ALL", b"BAD"), (b"t SORT SUBJECT US-ASCII ALL", b"BAD"),
    (b"t SORT (SUBJECT) US-ASCII", b"BAD"), (b"t SORT (SUBJECT)", b"BAD"), (b"t SORT (SUBJECT  SIZE) UTF-8 ALL", b"BAD"),
    (b"t SORT (REVERSE REVERSE SIZE) UTF-8 ALL", b"BAD"), (b"t SORT (SUBJECT) X-FOO ALL", b"NO [BADCHARSET"),
])
def test_sort_bad(line: bytes, kind: bytes) -> None:
    with pytest.raises(ParseError) as e:
        parse_bytes(line)
    assert e.value.response().startswith(b"t " + kind)


@given(st.binary(max_size=30))
def test_sort_garbage_is_a_parse_error_or_a_command(tail: bytes) -> None:
    try:
        cmd = parse_bytes(b"t SORT " + tail)
    except ParseError as e:
        assert e.response().startswith((b"t BAD ", b"t NO ", b"* BAD "))
    else:
        assert isinstance(cmd, Sort)


@pytest.mark.parametrize(("subject", "base"), [
    (None, ""), (b"a", "a"), (b"=?iso-8859-1?q?_?=", ""), (b"[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b"),
    (b"b (a)", "b (a)"), (b"Re: [FWD: c]", "c"), (b"[xyz]", "[xyz]"), (b"Re: =?utf-8?q?b?=", "b"),
    (b"=?iso-8859-1?q?RE:_C?=", "C"), (b"=?us-ascii?b?UmU6IGM=?=", "c"), (b"Ad: Re: Ad: Re: Ad: x", "Ad: Re: Ad: Re: Ad: x"),
    (b"re: [fwd: [fwd: re: [fwd: babylon]]]", "babylon"), (b"  spaced \t  out  ", "spaced out"),
    (b"Re:Re[2]:  x", "x"), (b"Re [2]: x", "x"), (b"(fwd)", ""), (b"Fwd: Re:", ""),
])
def test_base_subject(subject: bytes | None, base: str) -> None:
    assert sort.base_subject(subject) == base


def test_address_and_date_keys() -> None:
    hdr = (b"From: =?utf-8?q?=C3=89mile?= <emile@x>\r\nTo: grp: a@b;\r\nCc: <b@c>\r\n"
           b"Date: Tue, 14 Nov 2023 10:00:00 +0100\r\n\r\n")
    assert sort.key_of("FROM", hdr, 0, 0) == sort.key_of("FROM", b"From: EMILE@y\r\n\r\n", 0, 0)
    assert sort.key_of("DISPLAYFROM", hdr, 0, 0) == sort.key_of("DISPLAYFROM", b"From: \xc3\xa9mile <z@z>\r\n\r\n", 0, 0)
    assert sort.key_of("TO", hdr, 0, 0) == sort.key_of("TO", b"To: GRP@x\r\n\r\n", 0, 0)  # a group: its name
    assert sort.key_of("DISPLAYFROM", b"From: <b@c>\r\n\r\n", 0, 0) == sort.key_of("CC", hdr, 0, 0) + "@C"
    assert sort.key_of("DATE", hdr, 5.0, 0) == 1699952400.0
    assert sort.key_of("DATE", b"Date: junk\r\n\r\n", 5.0, 0) == 5.0  # RFC 5256 §2.2: the internal date
    assert sort.key_of("DATE", b"\r\n", 7.0, 0) == 7.0
    assert sort.key_of("CC", None, 0, 0) == ""


def test_order_ties_by_sequence_number_also_reversed() -> None:
    crit = [sort.Criterion("SUBJECT"), sort.Criterion("SIZE", reverse=True)]
    rows: list[tuple[int, list[str | float]]] = [(4, ["B", 1.0]), (1, ["B", 1.0]), (2, ["A", 1.0]), (3, ["B", 9.0])]
    assert sort.order(crit, rows) == [2, 3, 1, 4]
    assert sort.order([sort.Criterion("SUBJECT", reverse=True)], rows) == [1, 3, 4, 2]


async def test_sort_through_the_session(ctx: Any) -> None:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    for i, (subject, sender) in enumerate([("Re: beta", "zed@x"), ("alpha", "bob@x"), ("[list] Beta", "amy@x")]):
        await mb.append(b"From: %s\r\nSubject: %s\r\n\r\nbody%s\r\n" % (sender.encode(), subject.encode(), b"x" * i),
                        internaldate=1700000000.0 - i)
    d = await logged_in(ctx)
    assert b" SORT " in d.greeting and b" SORT=DISPLAY" in d.greeting
    await d.command(b"s SELECT INBOX")
    await d.command(b"u STORE 2 +FLAGS.SILENT (\\Deleted)")
    await d.command(b"x EXPUNGE")  # UIDs 1 and 3 are now 1 and 2
    assert await d.command(b"a1 SORT (SUBJECT) UTF-8 ALL") == [b"* SORT 1 2", b"a1 OK Sort completed."]
    await d.command(b"c SEARCH SUBJECT beta")  # fills the message cache's header blocks
    from mailhaven.imap.msgcache import CACHE
    mb_infos = (await mb.snapshot()).messages
    assert all(CACHE.peek((ALICE, m.key)) is not None for m in mb_infos)
    assert (await d.command(b"a1 SORT (REVERSE SUBJECT FROM) UTF-8 ALL"))[0] == b"* SORT 2 1"  # from the cache
    assert (await d.command(b"a2 SORT (SUBJECT REVERSE SIZE) UTF-8 ALL"))[0] == b"* SORT 2 1"
    assert (await d.command(b"a3 UID SORT (FROM) US-ASCII ALL"))[:2] == [b"* SORT 3 1", b"a3 OK UID Sort completed."]
    assert (await d.command(b"a4 SORT (ARRIVAL) US-ASCII ALL"))[0] == b"* SORT 2 1"
    assert await d.command(b"a5 SORT (ARRIVAL) US-ASCII 5") == [b"* SORT", b"a5 OK Sort completed."]  # as SEARCH
    await d.command(b"a6 SEARCH RETURN (SAVE) 2")
    assert (await d.command(b"a7 UID SORT (SIZE) US-ASCII $"))[0] == b"* SORT 3"  # RFC 5182 with SORT


# ESORT (RFC 5267 §3): SORT RETURN (...) answers ESEARCH, MIN/MAX/ALL in sort order

@given(st.lists(st.sampled_from(["MIN", "MAX", "ALL", "COUNT", "SAVE"]), max_size=5), criteria)
def test_sort_return_round_trips(opts: list[str], crit: list[tuple[str, bool]]) -> None:
    text = " ".join(("REVERSE " if r else "") + k for k, r in crit)
    cmd = parse_bytes(f"t UID SORT RETURN ({' '.join(opts)}) ({text}) UTF-8 ALL".encode())
    assert isinstance(cmd, Sort) and cmd.returns == frozenset(opts) and cmd.criteria == tuple(crit) and cmd.uid


@pytest.mark.parametrize("line", [b"t SORT RETURN (FOO) (SIZE) UTF-8 ALL", b"t SORT RETURN (PARTIAL 1:*) (SIZE) UTF-8 ALL",
                                  b"t SORT RETURN ALL (SIZE) UTF-8 ALL", b"t SORT RETURN (ALL)(SIZE) UTF-8 ALL"])
def test_sort_return_bad(line: bytes) -> None:
    with pytest.raises(ParseError) as e:
        parse_bytes(line)
    assert e.value.response().startswith(b"t BAD ")


async def test_esort_through_the_session(ctx: Any) -> None:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    for i in range(5):
        await mb.append(b"Subject: s\r\n\r\n" + b"x" * (10 - i), internaldate=1700000000.0 + i)
    d = await logged_in(ctx)
    assert b" ESORT" in d.greeting
    await d.command(b"s SELECT INBOX")
    assert await d.command(b"a1 SORT RETURN (MIN MAX ALL COUNT) (SIZE) US-ASCII 1:3,5") == [
        b'* ESEARCH (TAG "a1") MIN 5 MAX 1 ALL 5,3,2,1 COUNT 4', b"a1 OK Sort completed."]
    assert (await d.command(b"a2 UID SORT RETURN () (REVERSE SIZE) US-ASCII ALL"))[0] == (
        b'* ESEARCH (TAG "a2") UID ALL 1:5')
    assert (await d.command(b"a3 SORT RETURN (SAVE MIN) (SIZE) US-ASCII 2:4"))[0] == b'* ESEARCH (TAG "a3") MIN 4'
    assert (await d.command(b"a4 SEARCH $"))[0] == b"* SEARCH 4"
    assert (await d.command(b"a5 SORT RETURN (COUNT) (SIZE) US-ASCII DELETED"))[0] == b'* ESEARCH (TAG "a5") COUNT 0'


_HEADER_BYTES = st.lists(st.sampled_from([b"Subject: ", b"From: ", b"To: ", b"Cc: ", b"Date: ", b"Re:", b"[", b"]",
                                          b"(fwd)", b"=?utf-8?q?", b"?=", b"<", b">", b"@", b",", b";", b":", b"\"",
                                          b" ", b"\r\n", b"\r\n ", b"\xc3\xa9", b"\xff", b"Mon, 1 Jan", b" +0100"]),
                         max_size=30).map(b"".join)


@given(_HEADER_BYTES, st.binary(max_size=40))
def test_sort_keys_of_any_header_never_raise(header: bytes, noise: bytes) -> None:
    for h in (header + b"\r\n\r\n", noise, header + noise):
        for key in ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"):
            assert isinstance(sort.key_of(key, h, 1.0, 2), str | float)
    assert isinstance(sort.base_subject(header), str)
