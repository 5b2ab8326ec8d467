"""THREAD (RFC 5256): the parser (round trips, errors, garbage is a ParseError), the two algorithms
over `thread.Msg` records (RFC 5256 §2.2's edge cases: missing parents, duplicate Message-IDs,
reference loops, subject merging, siblings by sent date), the thread-list writer against RFC 5256
§5's grammar, hypothesis (any header bytes never raise; every message appears exactly once), and
THREAD/UID THREAD through the sans-IO session."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap import thread
from mailhaven.imap.commands import ParseError, SearchAll, SearchAnd, SearchFlag, Thread
from mailhaven.imap.parser import parse_bytes
from tests.unit import test_imap_condstore
from tests.unit.test_imap_core import ALICE, logged_in

ctx = test_imap_condstore.ctx  # the fixture: a real store in tmp_path


@given(st.sampled_from(["REFERENCES", "orderedsubject", "References"]), st.booleans(),
       st.sampled_from(["US-ASCII", "utf-8", '"UTF-8"']))
def test_thread_round_trips(alg: str, uid: bool, charset: str) -> None:
    line = f"t {'UID ' if uid else ''}THREAD {alg} {charset} ALL SEEN".encode()
    assert parse_bytes(line) == Thread("t", alg.upper(), "UTF-8" if "8" in charset else "US-ASCII",
                                       SearchAnd((SearchAll(), SearchFlag("\\Seen"))), uid)


@pytest.mark.parametrize(("line", "kind"), [
    (b"t THREAD FOO US-ASCII ALL", b"BAD"), (b"t THREAD REFERENCES US-ASCII", b"BAD"), (b"t THREAD", b"BAD"),
    (b"t THREAD (REFERENCES) US-ASCII ALL", b"BAD"), (b"t THREAD REFERENCES  US-ASCII ALL", b"BAD"),
    (b"t THREAD REFERENCES X-FOO ALL", b"NO [BADCHARSET"), (b"t UID THREAD ORDEREDSUBJECT", b"BAD"),
])
def test_thread_bad(line: bytes, kind: bytes) -> None:
    with pytest.raises(ParseError) as e:
        parse_bytes(line)
    assert e.value.response().startswith(b"t " + kind)


@given(st.binary(max_size=30))
def test_thread_garbage_is_a_parse_error_or_a_command(tail: bytes) -> None:
    try:
        cmd = parse_bytes(b"t THREAD " + tail)
    except ParseError as e:
        assert e.response().startswith((b"t BAD ", b"t NO ", b"* BAD "))
    else:
        assert isinstance(cmd, Thread)


def m(n: int, date: float, mid: str | None = None, refs: str = "", subject: str = "s", irt: str = "") -> thread.Msg:
    head = f"Subject: {subject}\r\nDate: {date}\r\n"
    head += f"Message-ID: {mid}\r\n" if mid else ""
    head += f"References: {refs}\r\n" if refs else ""
    head += f"In-Reply-To: {irt}\r\n" if irt else ""
    return thread.msg_of(n, head.encode() + b"\r\n", float(date))


def refs(*msgs: thread.Msg) -> bytes:
    return thread.render(thread.references(msgs))


def test_message_ids() -> None:
    assert thread.message_ids(b"junk <a@b> <nope> \"x\" <c@d>\r\n <e@f>") == ["a@b", "c@d", "e@f"]
    assert thread.message_ids(None) == [] and thread.message_ids(b"") == []
    assert m(1, 0, irt="<x@y> <z@y>").references == ("x@y",)  # the first of In-Reply-To
    assert m(1, 0, refs="<r@y>", irt="<x@y>").references == ("r@y",)  # References first


def test_rfc5256_section4_examples_render() -> None:
    """RFC 5256 §4's two example thread lists, from their trees."""
    n = thread.Node
    tree = [n(2), n(3, [n(6, [n(4, [n(23)]), n(44, [n(7, [n(96)])])])])]
    assert thread.render(tree) == b"(2)(3 6 (4 23)(44 7 96))"
    assert thread.render([n(None, [n(3), n(5)])]) == b"((3)(5))"


def test_references_chain_siblings_by_date_and_missing_parent() -> None:
    assert refs(m(1, 10, "<a@x>"), m(2, 30, "<b@x>", "<a@x>"), m(3, 20, "<c@x>", "<a@x>"),
                m(4, 40, "<d@x>", "<a@x> <b@x>")) == b"(1 (3)(2 4))"
    # a missing parent of two messages is a dummy at the root; of one, it goes
    assert refs(m(1, 5, "<b@x>", "<gone@x>"), m(2, 1, "<c@x>", "<gone@x>")) == b"((2)(1))"
    assert refs(m(1, 5, "<b@x>", "<gone@x>", subject="q"), m(2, 1, "<c@x>", subject="p")) == b"(2)(1)"


def test_references_duplicates_loops_and_imaptest_thread_case() -> None:
    # a duplicate Message-ID gets a unique one: both stay, replies go to the first
    assert refs(m(1, 1, "<d@x>", subject="a"), m(2, 2, "<d@x>", subject="b"),
                m(3, 3, "<e@x>", "<d@x>", subject="c")) == b"(1 3)(2)"
    assert refs(m(1, 1, "<a@x>", "<b@x>", subject="a"), m(2, 2, "<b@x>", "<a@x>", subject="b")) == b"(2 1)"
    assert refs(m(1, 1, "<me@x>", "<me@x>")) == b"(1)"
    # imaptest's group "thread": a presumed parent goes when the message itself says otherwise
    assert refs(m(1, 17, "<a@b>", subject=""), m(2, 15, "<b@b>", "<a@b> <c@b>", subject=""),
                m(3, 16, "<c@b>", "<b@b>", subject="")) == b"(3 2)(1)"


def test_references_subject_merging() -> None:
    assert refs(m(1, 1, "<a@x>", subject="x"), m(2, 2, "<b@x>", subject="Re: x")) == b"(1 2)"
    assert refs(m(1, 1, "<a@x>", subject="Re: x"), m(2, 2, "<b@x>", subject="x")) == b"(2 1)"
    assert refs(m(1, 1, "<a@x>", subject="x"), m(2, 2, "<b@x>", subject="x")) == b"((1)(2))"
    assert refs(m(1, 1, "<a@x>", subject="Re: x"), m(2, 2, "<b@x>", subject="fwd: x")) == b"((1)(2))"
    assert refs(m(1, 1, "<a@x>", subject=""), m(2, 2, "<b@x>", subject="")) == b"(1)(2)"  # empty: never


def test_ordered_subject() -> None:
    msgs = [m(1, 3, subject="b"), m(2, 1, subject="Re: a"), m(3, 2, subject="a"), m(4, 0, subject="re: b"),
            m(5, 5, subject="b"), m(6, 9, subject="c")]
    assert thread.render(thread.ordered_subject(msgs)) == b"(4 (1)(5))(2 3)(6)"


def _parses(data: bytes) -> list[int]:
    """The numbers of an RFC 5256 §5 thread-list, asserting its grammar (recursive descent)."""
    out: list[int] = []
    pos = 0

    def thread_list() -> None:
        nonlocal pos
        assert data[pos:pos + 1] == b"("
        pos += 1
        if data[pos:pos + 1] == b"(":
            nested()
        else:
            number()
            while data[pos:pos + 1] == b" ":
                pos += 1
                if data[pos:pos + 1] == b"(":
                    nested()
                    break
                number()
        assert data[pos:pos + 1] == b")", data
        pos += 1

    def nested() -> None:  # thread-nested = 2*thread-list
        count = 0
        while data[pos:pos + 1] == b"(":
            thread_list()
            count += 1
        assert count >= 2, data

    def number() -> None:
        nonlocal pos
        m = re.compile(rb"[1-9]\d*").match(data, pos)
        assert m, data
        out.append(int(m.group()))
        pos = m.end()

    while pos < len(data):
        thread_list()
    return out


_IDS = st.sampled_from(["<a@x>", "<b@x>", "<c@x>", "<d@x>", "<e@y>", "junk", "<@>", "<a@x", ""])
_HEADER = st.lists(st.sampled_from([b"Subject: ", b"Message-ID: ", b"References: ", b"In-Reply-To: ", b"Date: ",
                                    b"Re:", b"Fwd: ", b"[x]", b"(fwd)", b"<a@x>", b"<b@x>", b"<", b">", b"@", b" ",
                                    b"\r\n", b"\r\n ", b"\xff", b"=?utf-8?q?R=C3=A9?=", b"Mon, 1 Jan 2024"]),
                   max_size=25).map(b"".join)


@given(st.lists(st.tuples(_IDS, st.lists(_IDS, max_size=4), st.sampled_from(["a", "Re: a", "b", "", "fwd: b"]),
                          st.integers(0, 5)), max_size=12),
       st.lists(_HEADER, max_size=4))
def test_every_message_once_and_the_grammar_holds(specs: list[tuple[str, list[str], str, int]],
                                                  raw: list[bytes]) -> None:
    msgs = [m(i + 1, d, mid or None, " ".join(r), subj) for i, (mid, r, subj, d) in enumerate(specs)]
    msgs += [thread.msg_of(len(msgs) + 1 + i, h, 1.0) for i, h in enumerate(raw)]  # any header bytes
    for alg in thread.ALGORITHMS:
        out = thread.render(thread.thread(alg, msgs))
        assert sorted(_parses(out)) == list(range(1, len(msgs) + 1))


@given(_HEADER, st.binary(max_size=60))
def test_msg_of_any_header_never_raises(header: bytes, noise: bytes) -> None:
    for h in (header, noise, header + b"\r\n\r\n" + noise, None):
        assert isinstance(thread.msg_of(1, h, 0.0), thread.Msg)


async def test_thread_through_the_session(ctx: Any) -> None:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    for i, head in enumerate([b"Subject: a\r\nMessage-ID: <1@x>", b"Subject: gone\r\nMessage-ID: <2@x>",
                              b"Subject: Re: a\r\nMessage-ID: <3@x>\r\nReferences: <1@x>",
                              b"Subject: b\r\nIn-Reply-To: <3@x>"]):
        await mb.append(head + b"\r\n\r\nbody\r\n", internaldate=1700000000.0 + i)
    d = await logged_in(ctx)
    assert b" THREAD=ORDEREDSUBJECT THREAD=REFERENCES" in d.greeting
    await d.command(b"s SELECT INBOX")
    await d.command(b"u STORE 2 +FLAGS.SILENT (\\Deleted)")
    await d.command(b"x EXPUNGE")  # UIDs 1 3 4 are now 1 2 3
    assert await d.command(b"a1 THREAD REFERENCES UTF-8 ALL") == [b"* THREAD (1 2 3)", b"a1 OK Thread completed."]
    assert await d.command(b"a2 UID THREAD REFERENCES US-ASCII ALL") == [b"* THREAD (1 3 4)",
                                                                        b"a2 OK UID Thread completed."]
    assert (await d.command(b"a3 THREAD ORDEREDSUBJECT US-ASCII ALL"))[0] == b"* THREAD (1 2)(3)"
    assert (await d.command(b"a4 UID THREAD ORDEREDSUBJECT US-ASCII NOT SUBJECT b"))[0] == b"* THREAD (1 3)"
    assert (await d.command(b"a5 THREAD REFERENCES US-ASCII DELETED"))[0] == b"* THREAD "  # as Dovecot 2.3
    await d.command(b"a6 SEARCH RETURN (SAVE) 3")
    assert (await d.command(b"a7 THREAD REFERENCES US-ASCII $"))[0] == b"* THREAD (3)"  # RFC 5182 with THREAD
    assert (await d.command(b"a8 THREAD FOO US-ASCII ALL"))[0].startswith(b"a8 BAD ")


@pytest.mark.parametrize(("raw", "ids"), [
    (b"< d@r >", ["d@r"]), (b"<e>", []), (b"<f@r> (comment)", ["f@r"]), (b"<g@[1.2.3.4]>", ["g@[1.2.3.4]"]),
    (b"<i@r><j@r>", ["i@r", "j@r"]), (b'<"q q"@r>', ["q q@r"]), (b"<h@r", []), (b"<h@r <x@y>", ["h@r<x@y"]),
    (b"<o(x)@r>", ["o@r"]), (b"<o(x)@r (y)>", ["o@r"]), (b"<o(@r>", []), (b"<a@b\0c>", []),
])
def test_message_ids_as_dovecot_reads_them(raw: bytes, ids: list[str]) -> None:
    """Forms taken from the random graphs compared with Dovecot 2.3 (test_thread_vs_dovecot.py)."""
    assert thread.message_ids(raw) == ids
