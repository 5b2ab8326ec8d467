"""The RFC 4731 ESEARCH syntax in the IMAP parser: SEARCH/UID SEARCH RETURN (options) before
CHARSET and the keys; unknown options, a missing list or RETURN after CHARSET are BAD (as Dovecot 2.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap.commands import ParseError, Search, SearchAll, SearchAnd, SearchSet
from mailhaven.imap.parser import SEARCH_RETURN_OPTIONS, parse_bytes
from mailhaven.imap.seqset import SequenceSet

options = st.lists(st.sampled_from(sorted(SEARCH_RETURN_OPTIONS - {"UPDATE"})), max_size=6)  # UPDATE: once


def test_search_return_forms() -> None:
    cmd = parse_bytes(b"a SEARCH RETURN (MIN MAX ALL COUNT) ALL")
    assert cmd == Search("a", SearchAnd((SearchAll(),)), None, False, frozenset({"MIN", "MAX", "ALL", "COUNT"}))
    empty = parse_bytes(b"b uid search return () 1:3")
    assert empty == Search("b", SearchAnd((SearchSet(SequenceSet(((1, 3),))),)), None, True, frozenset())
    cs = parse_bytes(b"c SEARCH RETURN (count) CHARSET UTF-8 ALL")
    assert isinstance(cs, Search) and cs.charset == "UTF-8" and cs.returns == frozenset({"COUNT"})
    plain = parse_bytes(b"d SEARCH ALL")
    assert isinstance(plain, Search) and plain.returns is None  # a plain SEARCH: `* SEARCH`


@pytest.mark.parametrize("line", [
    b"a SEARCH RETURN (FOO) ALL",
    b"a SEARCH RETURN ALL 1",  # the list is required
    b"a SEARCH RETURN (MIN",
    b"a SEARCH RETURN (MIN) ",
    b"a SEARCH RETURN (MIN)",
    b"a SEARCH RETURN (MIN  MAX) ALL",
    b"a SEARCH RETURN ( MIN) ALL",
    b"a SEARCH RETURN (MIN)ALL",
    b"a SEARCH CHARSET UTF-8 RETURN (ALL) 1",  # RFC 4731 §7: RETURN comes first
])
def test_search_return_bad(line: bytes) -> None:
    with pytest.raises(ParseError) as e:
        parse_bytes(line)
    assert e.value.response().startswith(b"a BAD ")


@given(options, st.booleans(), st.booleans())
def test_search_return_round_trips(opts: list[str], uid: bool, lower: bool) -> None:
    text = "RETURN (" + " ".join(opts) + ") ALL"
    line = (("UID " if uid else "") + "SEARCH " + (text.lower() if lower else text)).encode()
    cmd = parse_bytes(b"t " + line)
    assert isinstance(cmd, Search) and cmd.uid == uid and cmd.returns == frozenset(opts)


@given(st.binary(max_size=30))
def test_search_return_garbage_is_a_parse_error_or_a_command(tail: bytes) -> None:
    try:
        cmd = parse_bytes(b"t SEARCH RETURN " + tail)
    except ParseError as e:
        assert e.response().startswith((b"t BAD ", b"t NO ", b"* BAD "))
    else:
        assert isinstance(cmd, Search) and cmd.returns is not None


# SEARCHRES (RFC 5182): RETURN (SAVE) and "$" wherever a sequence set goes

def test_dollar_is_the_saved_result_wherever_a_set_goes() -> None:
    from mailhaven.imap.commands import Copy, Fetch, Move, Store
    from mailhaven.imap.parser import SAVED_RESULT

    for line, cls in ((b"a FETCH $ (UID)", Fetch), (b"a UID STORE $ +FLAGS x", Store), (b"a COPY $ b", Copy),
                      (b"a UID MOVE $ b", Move)):
        cmd = parse_bytes(line)
        assert isinstance(cmd, cls) and cmd.set is SAVED_RESULT and cmd.set.saved
    search = parse_bytes(b"a SEARCH RETURN (SAVE) OR $ UID $")
    assert isinstance(search, Search) and search.returns == frozenset({"SAVE"})
    assert SequenceSet(((1, 1),)) != SAVED_RESULT and not SequenceSet(((1, 1),)).saved


@pytest.mark.parametrize("line", [b"a FETCH 1,$ FLAGS", b"a FETCH $:3 FLAGS", b"a FETCH $1 FLAGS",
                                  b"a SEARCH $$", b"a SEARCH $,1"])
def test_dollar_is_only_alone(line: bytes) -> None:
    with pytest.raises(ParseError) as e:
        parse_bytes(line)
    assert e.value.response().startswith(b"a BAD ")


@given(st.sampled_from([b"FOO", b"1,$", b"(ALL", b"CHARSET X ALL", b"ALL)", b""]), st.booleans())
def test_failed_search_marks_save(tail: bytes, save: bool) -> None:
    """RFC 5182 §2.1: the session empties "$" when a SEARCH with SAVE fails; the error says so."""
    opts = b"(SAVE MIN)" if save else b"(MIN)"
    with pytest.raises(ParseError) as e:
        parse_bytes(b"a SEARCH RETURN " + opts + b" " + tail)
    assert e.value.search_save == save
