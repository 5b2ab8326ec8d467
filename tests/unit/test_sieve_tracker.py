"""delivery/sievetrack.py: the per-user vacation/duplicate memory on disk."""

from __future__ import annotations

import json
from pathlib import Path

from mailhaven.delivery import sievetrack
from mailhaven.delivery.sievetrack import Tracker


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_claim_is_once_per_period_and_survives_a_new_instance(tmp_path: Path) -> None:
    clock = Clock()
    t = Tracker(tmp_path / "sieve", clock=clock)
    assert t.claim("vacation:a", 86400) is True
    assert t.claim("vacation:a", 86400) is False
    assert Tracker(tmp_path / "sieve", clock=clock).claim("vacation:a", 86400) is False  # a restart
    assert t.claim("vacation:b", 86400) is True
    clock.now += 86401
    assert t.claim("vacation:a", 86400) is True  # the period is over


def test_mark_and_seen_and_expired_entries_are_dropped(tmp_path: Path) -> None:
    clock = Clock()
    t = Tracker(tmp_path, clock=clock)
    t.mark([("duplicate:x", 10), ("duplicate:y", 100)])
    assert t.seen("duplicate:x") and t.snapshot() == {"duplicate:x", "duplicate:y"}
    clock.now += 50
    assert not t.seen("duplicate:x") and t.seen("duplicate:y")
    t.mark([("duplicate:z", 10)])
    assert set(json.loads((tmp_path / sievetrack.FILE).read_bytes())) == {"duplicate:y", "duplicate:z"}


def test_the_file_is_bounded(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sievetrack, "MAX_ENTRIES", 5)
    t = Tracker(tmp_path)
    t.mark([(f"k{i}", 1000 + i) for i in range(8)])
    assert t.snapshot() == {"k3", "k4", "k5", "k6", "k7"}  # the soonest to expire went first


def test_a_damaged_or_foreign_file_counts_as_empty(tmp_path: Path) -> None:
    for junk in (b"not json", b"[1, 2]", b'{"a": "x", "b": 1e300}', b"\xff" * 10):
        (tmp_path / sievetrack.FILE).write_bytes(junk)
        t = Tracker(tmp_path)
        assert t.snapshot() <= {"b"}
        assert t.claim("k", 10) is True
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _claim_all(folder: str, n: int) -> list[str]:
    from mailhaven.delivery.sievetrack import Tracker

    t = Tracker(Path(folder), fsync=False)
    return [f"k{i}" for i in range(n) if t.claim(f"k{i}", 3600)]


def test_two_processes_never_both_claim_one_key(tmp_path: Path) -> None:
    # worker processes (issue 15) share a user's tracker: one vacation reply per sender, not one each
    import multiprocessing

    n = 400
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_claim_all, [(str(tmp_path), n)] * 2)
    claimed = [k for r in results for k in r]
    assert sorted(claimed) == sorted(f"k{i}" for i in range(n))  # each exactly once, none lost
