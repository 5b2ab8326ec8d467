"""store/pending.py: which keywords a delivered copy keeps, and reading records back (never raising)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.store import pending

ATOM_SPECIALS = set('(){ %*"\\]')


def test_for_delivery_keeps_atoms_in_order_and_ignores_the_rest() -> None:
    kept, ignored = pending.for_delivery(
        ["$label1", "\\Flagged", "Work", "bad(", "two words", "caf\u00e9", "", "$label1", "\\Recent", "x" * 129,
         "x" * 128, "a]b", "del\x7f", "$Junk"])
    assert kept == ("$label1", "Work", "x" * 128, "$Junk")
    assert ignored == ("bad(", "two words", "caf\u00e9", "", "x" * 129, "a]b", "del\x7f")


def test_for_delivery_keeps_at_most_max_keywords() -> None:
    words = [f"k{i}" for i in range(pending.MAX_KEYWORDS + 5)]
    kept, ignored = pending.for_delivery(words)
    assert kept == tuple(words[:pending.MAX_KEYWORDS]) and ignored == tuple(words[pending.MAX_KEYWORDS:])


@given(st.lists(st.text(max_size=12), max_size=50))
def test_for_delivery_keeps_only_valid_distinct_keywords(words: list[str]) -> None:
    kept, ignored = pending.for_delivery(words)
    assert len(kept) <= pending.MAX_KEYWORDS and len(set(kept)) == len(kept)
    for w in kept:
        assert w and w.isascii() and not (set(w) & ATOM_SPECIALS) and all(0x21 <= ord(c) < 0x7F for c in w)
    assert set(kept) | set(ignored) == {w for w in words if not w.startswith("\\")}


def test_record_round_trip_and_leftovers() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pending.write(folder, "k1", ["$a", "bad(", "Work"], fsync=False)
        pending.write(folder, "k2", ["$b"], fsync=False)
        pending.write(folder, "k3", ["$c"], fsync=False)
        found = pending.take(folder, ["k1", "k9"], known={"k2"})
        assert found.keywords == {"k1": {"$a", "Work"}}
        assert found.done(["k1"]) == ["k2", "k1"]  # k3: a delivery still under way
        assert found.done([]) == ["k2"]  # k1's file vanished before it was read: its record stays
        pending.remove(folder, found.done(["k1"]))
        assert sorted(p.name for p in (folder / pending.DIRNAME).iterdir()) == ["k3"]
        assert pending.take(folder, ["k1"], now=10**12).done([]) == ["k3"]  # stale: its delivery failed


def test_take_without_a_record_directory_finds_nothing() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        found = pending.take(Path(tmp), ["k1"])
        assert found.keywords == {} and found.done(["k1"]) == []


@given(st.binary(max_size=300))
def test_any_record_content_gives_only_valid_keywords(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / pending.DIRNAME).mkdir()
        (folder / pending.DIRNAME / "k").write_bytes(raw)
        words = pending.take(folder, ["k"]).keywords.get("k", frozenset())
        assert all(pending.valid_keyword(w) for w in words) and len(words) <= pending.MAX_KEYWORDS
        if words:
            assert raw.endswith(b"\n")
