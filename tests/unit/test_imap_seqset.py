"""Sequence sets (RFC 3501 §9 sequence-set, §6.4.8 UID ranges) and compact rendering (RFC 4315)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap.seqset import STAR, SequenceSet, render


def test_single_number() -> None:
    s = SequenceSet.parse("7")
    assert s.ranges == ((7, 7),)
    assert s.contains(7, 10) and not s.contains(6, 10)


def test_star_alone_is_the_last_message() -> None:
    s = SequenceSet.parse("*")
    assert s.uses_star
    assert s.resolve(12) == [(12, 12)]
    assert list(s.iter_within(12)) == [12]


def test_range_to_star() -> None:
    assert SequenceSet.parse("4:*").resolve(9) == [(4, 9)]


def test_star_first_range_is_the_same_as_reversed() -> None:
    assert SequenceSet.parse("*:4").resolve(9) == [(4, 9)]


def test_reversed_range_equals_forward_range() -> None:
    assert SequenceSet.parse("5:3").resolve(10) == SequenceSet.parse("3:5").resolve(10)


def test_uid_range_above_max_still_includes_last_uid() -> None:
    # RFC 3501 §6.4.8: "559:*" includes the last UID even if 559 is higher.
    s = SequenceSet.parse("559:*")
    assert s.contains(300, 300)
    assert not s.contains(299, 300)


def test_comma_list_is_merged_and_sorted() -> None:
    s = SequenceSet.parse("7:*,1,3:5,2")
    assert s.resolve(9) == [(1, 5), (7, 9)]
    assert list(s.iter_within(8)) == [1, 2, 3, 4, 5, 7, 8]


def test_iter_within_is_bounded_by_max_not_by_text() -> None:
    s = SequenceSet.parse("1:4294967295")
    assert list(s.iter_within(3)) == [1, 2, 3]


def test_empty_mailbox_star_resolves_to_nothing() -> None:
    assert SequenceSet.parse("*").resolve(0) == []
    assert list(SequenceSet.parse("1:*").iter_within(0)) == []
    assert SequenceSet.parse("1:*").max_number(0) == 1


def test_max_number_for_exists_check() -> None:
    assert SequenceSet.parse("2,9:4").max_number(3) == 9
    assert SequenceSet.parse("2:*").max_number(3) == 3


def test_str_keeps_the_written_form() -> None:
    assert str(SequenceSet.parse("1,3:5,7:*,*")) == "1,3:5,7:*,*"
    assert SequenceSet.parse("*").ranges == ((STAR, STAR),)


@pytest.mark.parametrize("bad", ["", "0", "1:0", "01", "1,", ",1", "1::2", "1:2:3", "a", "4294967296",
                                 "99999999999999999999", "-1", "1 2", "**", "1,,2"])
def test_invalid_sets_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        SequenceSet.parse(bad)


def test_largest_number_is_accepted() -> None:
    assert SequenceSet.parse("4294967295").ranges == ((4294967295, 4294967295),)


@pytest.mark.parametrize(("numbers", "text"), [
    ([], ""), ([5], "5"), ([1, 2, 3, 5], "1:3,5"), ([9, 1, 2, 2, 10, 4], "1:2,4,9:10"),
])
def test_render_compacts_runs(numbers: list[int], text: str) -> None:
    assert render(numbers) == text


def test_render_rejects_zero() -> None:
    with pytest.raises(ValueError):
        render([0, 1])


@given(st.sets(st.integers(1, 500), max_size=60))
def test_render_then_parse_round_trips(numbers: set[int]) -> None:
    text = render(numbers)
    if not numbers:
        assert text == ""
        return
    s = SequenceSet.parse(text)
    assert set(s.iter_within(500)) == numbers
    assert SequenceSet.of(numbers) == s


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=8),
       st.integers(0, 50))
def test_contains_agrees_with_resolve(pairs: list[tuple[int, int]], max_value: int) -> None:
    text = ",".join(("*" if a == 0 else str(a)) + ":" + ("*" if b == 0 else str(b)) for a, b in pairs)
    s = SequenceSet.parse(text)
    members = {n for lo, hi in s.resolve(max_value) for n in range(lo, hi + 1)}
    for n in range(1, 60):
        assert s.contains(n, max_value) == (n in members)


@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 20)), max_size=5),
       st.sets(st.integers(1, 80)), st.integers(1, 90))
def test_missing_is_the_set_minus_present_below_the_limit(spans: list[tuple[int, int]], present: set[int],
                                                          below: int) -> None:
    from mailhaven.imap.seqset import missing, render_ranges

    ranges = SequenceSet.parse(",".join(f"{a}:{a + n}" for a, n in spans)).resolve(0) if spans else []
    got = missing(ranges, sorted(present), below)
    want = {u for lo, hi in ranges for u in range(lo, hi + 1) if u < below} - present
    assert {u for lo, hi in got for u in range(lo, hi + 1)} == want
    assert all(a <= b for a, b in got) and all(b + 1 < c for (_, b), (c, _) in zip(got, got[1:], strict=False))
    assert render_ranges(got) == render(want)
