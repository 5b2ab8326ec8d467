"""RFC 5267 §5's grammar in the IMAP parser: the CONTEXT, UPDATE and PARTIAL return options of SEARCH
and SORT (partial-range = nz-number ":" nz-number, either order; no "*", no single number; PARTIAL
with ALL, PARTIAL twice and UPDATE twice are BAD, as Dovecot 2.3) and CANCELUPDATE 1*(SP quoted)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap.commands import CancelUpdate, ParseError, Search, Sort
from mailhaven.imap.parser import MAX_NUMBER, parse_bytes

nz = st.integers(1, MAX_NUMBER)
plain = st.lists(st.sampled_from(["MIN", "MAX", "COUNT", "SAVE", "CONTEXT"]), max_size=4)


@given(plain, st.booleans(), st.none() | st.tuples(nz, nz), st.booleans(), st.booleans(), st.booleans())
def test_return_options_round_trip(opts: list[str], update: bool, partial: tuple[int, int] | None, uid: bool,
                                   sort: bool, lower: bool) -> None:
    words = list(opts)
    if update:
        words.insert(len(words) // 2, "UPDATE")
    if partial is not None:
        words.append(f"PARTIAL {partial[0]}:{partial[1]}")
    text = "RETURN (" + " ".join(words) + ")"
    if lower:
        text = text.lower()
    line = ("UID " if uid else "") + ("SORT " + text + " (DATE) UTF-8 ALL" if sort else "SEARCH " + text + " ALL")
    cmd = parse_bytes(("t " + line).encode())
    assert isinstance(cmd, Sort if sort else Search) and cmd.uid == uid
    expected = set(opts) - {"CONTEXT"}  # a no-op, as in Dovecot 2.3
    expected |= {"UPDATE"} if update else set()
    expected |= {"PARTIAL"} if partial is not None else set()
    assert cmd.returns == frozenset(expected)
    assert cmd.partial == (None if partial is None else (min(partial), max(partial)))


@pytest.mark.parametrize("opts", [b"PARTIAL 1", b"PARTIAL 1:*", b"PARTIAL *:1", b"PARTIAL 0:3", b"PARTIAL 3:0",
                                  b"PARTIAL 1:2 ALL", b"ALL PARTIAL 1:2", b"PARTIAL 1:2 PARTIAL 1:2",
                                  b"UPDATE UPDATE", b"PARTIAL", b"PARTIAL 1:4294967296", b"PARTIAL 1:2:3",
                                  b"PARTIAL -1:-5", b"PARTIAL 1,3", b"UPDATE (FLAGS)"])
def test_bad_return_options(opts: bytes) -> None:
    for line in (b"a SEARCH RETURN (" + opts + b") ALL", b"a SORT RETURN (" + opts + b") (DATE) UTF-8 ALL"):
        with pytest.raises(ParseError) as e:
            parse_bytes(line)
        assert e.value.response().startswith(b"a BAD "), line


@given(st.binary(max_size=24))
def test_partial_garbage_is_a_parse_error_or_a_search(tail: bytes) -> None:
    try:
        cmd = parse_bytes(b"t SEARCH RETURN (PARTIAL " + tail)
    except ParseError as e:
        assert e.response().startswith((b"t BAD ", b"t NO ", b"* BAD "))
    else:
        assert isinstance(cmd, Search) and cmd.partial is not None and 1 <= cmd.partial[0] <= cmd.partial[1]


tags = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=12)


@given(st.lists(tags, min_size=1, max_size=4))
def test_cancelupdate_round_trips(names: list[str]) -> None:
    quoted = " ".join('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' for n in names)
    cmd = parse_bytes(b"c CANCELUPDATE " + quoted.encode())
    assert cmd == CancelUpdate("c", tuple(names))


@pytest.mark.parametrize("line", [b"c CANCELUPDATE", b"c CANCELUPDATE a", b'c CANCELUPDATE "a" b',
                                  b'c CANCELUPDATE  "a"', b'c CANCELUPDATE "a" '])
def test_cancelupdate_bad(line: bytes) -> None:
    with pytest.raises(ParseError) as e:
        parse_bytes(line)
    assert e.value.response().startswith(b"c BAD ")
