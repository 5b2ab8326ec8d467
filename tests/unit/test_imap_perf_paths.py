"""The fast paths of FETCH/STORE rendering give exactly what the plain rules give (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap import commands as C
from mailhaven.imap.fetch import internaldate, render_meta
from mailhaven.imap.selected import match_infos
from mailhaven.imap.view import View, render_flags
from mailhaven.store import MessageInfo, Snapshot

FLAGSETS = [frozenset(), frozenset({"\\Seen"}), frozenset({"\\Seen", "\\Flagged", "Work"}), frozenset({"$Junk"})]


def info(uid: int, k: int = 0) -> MessageInfo:
    return MessageInfo(uid, FLAGSETS[k % len(FLAGSETS)], 1_700_000_000.0 + uid, 100 + uid, 1 + k, f"key{uid}")


def reference_match(uids: list[int], messages: list[MessageInfo]) -> list[MessageInfo | None]:
    by_uid = {m.uid: m for m in messages}
    return [by_uid.get(u) for u in uids]


@given(st.sets(st.integers(1, 60)), st.sets(st.integers(1, 60)))
def testmatch_infos_finds_each_uid_or_none(snapshot_uids: set[int], asked: set[int]) -> None:
    messages = [info(u) for u in sorted(snapshot_uids)]
    uids = sorted(asked)
    assert match_infos(uids, messages) == reference_match(uids, messages)


@given(st.sets(st.integers(1, 60), min_size=1), st.integers(0, 59), st.integers(0, 60))
def testmatch_infos_of_a_run_of_the_snapshot(snapshot_uids: set[int], start: int, length: int) -> None:
    messages = [info(u) for u in sorted(snapshot_uids)]
    uids = [m.uid for m in messages[start:start + length]]
    assert match_infos(uids, messages) == messages[start:start + length]


def one_by_one(pairs: list[tuple[int, int]], infos: list[MessageInfo], names: list[str],
               recent: frozenset[int]) -> bytes:
    out = []
    for (seq, uid), i in zip(pairs, infos, strict=True):
        parts = []
        for n in names:
            if n == "UID":
                parts.append(b"UID %d" % uid)
            elif n == "FLAGS":
                parts.append(b"FLAGS " + render_flags(i.flags, uid in recent))
            elif n == "RFC822.SIZE":
                parts.append(b"RFC822.SIZE %d" % i.size)
            else:
                parts.append(b"INTERNALDATE " + internaldate(i.internaldate))
        out.append(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
    return b"".join(out)


@given(st.lists(st.integers(0, 7), max_size=30),
       st.lists(st.sampled_from(["UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE"]), min_size=1, max_size=4,
                unique=True),
       st.sets(st.integers(1, 30)))
def test_metadata_rendered_in_columns_equals_one_by_one(kinds: list[int], names: list[str],
                                                        recent: set[int]) -> None:
    infos = [info(n + 1, k) for n, k in enumerate(kinds)]
    pairs = [(n + 1, i.uid) for n, i in enumerate(infos)]
    items = [C.FetchAttr(n) for n in names]
    assert render_meta(pairs, infos, items, frozenset(recent)) == one_by_one(pairs, infos, names,
                                                                              frozenset(recent))


@given(st.lists(st.integers(1, 5), min_size=1, max_size=20), st.integers(0, 3))
def test_reported_many_is_reported_for_each(modseqs: list[int], base: int) -> None:
    msgs = [MessageInfo(n + 1, FLAGSETS[1], 0.0, 1, m, f"k{n}") for n, m in enumerate(modseqs)]
    newer = [MessageInfo(m.uid, FLAGSETS[2], 0.0, 1, m.modseq + 1, m.key) for m in msgs]
    a, b = View(Snapshot(1, 100, base, msgs)), View(Snapshot(1, 100, base, msgs))
    for v in (a, b):
        v.sync(Snapshot(1, 100, base + 6, newer))  # pending FETCH FLAGS for the changed ones
    half = newer[: len(newer) // 2]
    for m in half:
        a.reported(m.uid, m.modseq)
    b.reported_many(half)
    assert a.flush(True) == b.flush(True)


@given(st.binary(max_size=300).map(lambda b: b.translate(bytes.maketrans(b"abc", b"\r\n\x00"))),
       st.booleans())
def test_store_crlf_conversion_equals_the_bare_lf_rule(data: bytes, large: bool) -> None:
    from mailhaven.message import mime
    from mailhaven.store import maildir

    if large:
        data = data * 4000  # the sliced path for inputs over 1 MiB
    assert maildir.to_crlf(data) == mime.to_crlf(data)


@given(st.binary(max_size=200).map(lambda b: b.translate(bytes.maketrans(b"abc", b"\r\n\x00"))),
       st.sampled_from(["BODY[]", "BODY.PEEK[]", "BODY[]<2.5>", "BODY[TEXT]", "RFC822", "BODY[HEADER]"]))
def test_fetch_body_literal_equals_body_section(raw: bytes, item_text: str) -> None:
    from mailhaven.imap import encode, fetchitems
    from mailhaven.imap.fetch import render_items
    from mailhaven.imap.parser import parse_bytes
    from mailhaven.store import maildir

    data = maildir.to_crlf(b"Subject: x\n\n" + raw)  # as the store returns it
    cmd = parse_bytes(b"a FETCH 1 (" + item_text.encode() + b")\r\n")
    [item] = cmd.items  # type: ignore[attr-defined]
    if isinstance(item, C.FetchBody):
        sec = fetchitems.Section(item.section.part, item.section.text or "", ())
        chunk = fetchitems.body_section(data, sec, item.partial)
        name = item.response_name.encode()
    else:
        chunk, name = data, b"RFC822"
    expected = b"* 3 FETCH (" + name + b" " + encode.literal(chunk) + b")\r\n"
    assert render_items(3, info(7), [item], data, None, False) == expected


_hwords = st.text(alphabet=st.sampled_from("abcXYZ019 -_.:<>@=?\\\"'\t\u00e9"), max_size=12)


@given(st.lists(st.tuples(st.sampled_from(["Subject", "subject", "SUBJECT ", "X-Group", "Subjectx"]), _hwords,
                          st.booleans()), min_size=1, max_size=4),
       st.lists(_hwords, min_size=1, max_size=4))
def test_header_prefilter_memo_answers_as_the_full_search_for_many_needles(
        fields: list[tuple[str, str, bool]], needles: list[str]) -> None:
    from mailhaven.imap import search
    from mailhaven.imap.searchadapt import header_prefilter

    lines = [f"{name}: {value}" + ("\r\n \t" + value if folded else "") for name, value, folded in fields]
    header = ("\r\n".join(lines) + "\r\n\r\n").encode()
    memo: dict[bytes, bytes | None] = {}  # one memo for the message, shared by every search
    for needle in needles:
        key = C.SearchHeader("Subject", needle)
        check = header_prefilter(key)
        if check is None:
            continue
        assert check(header, memo) == check(header)
        matched = search.evaluate(key, search.Message(1, 1, frozenset(), 0.0, 1, header_bytes=header),
                                  search.SearchContext(1, 1))
        if matched:
            assert check(header, memo)
