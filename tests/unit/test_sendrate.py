"""sendrate.py: per-user counts over a sliding hour, bounded (issue 12 item 7)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.sendrate import SendRate


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_take_counts_up_to_the_limit_then_refuses_without_counting() -> None:
    rate = SendRate(clock=Clock())
    assert rate.take("messages", "alice@x", 1, 3) == (True, 1)
    assert rate.take("messages", "Alice@X", 2, 3) == (True, 3)  # one user, any case
    assert rate.take("messages", "alice@x", 1, 3) == (False, 3)
    assert rate.count("messages", "alice@x") == 3
    assert rate.take("recipients", "alice@x", 1, 3) == (True, 1)  # kinds are separate
    assert rate.take("messages", "bob@x", 1, 3) == (True, 1)  # users are separate
    assert rate.take("messages", "alice@x", 100, 0) == (True, 103)  # 0 = no limit


def test_the_window_slides_by_the_minute() -> None:
    clock = Clock()
    rate = SendRate(clock=clock)
    rate.add("messages", "u", 2)
    clock.now += 1800
    rate.add("messages", "u", 3)
    assert rate.count("messages", "u") == 5
    clock.now += 1800 + 120  # the first two are more than an hour (and a minute) old
    assert rate.count("messages", "u") == 3
    clock.now += 1800
    assert rate.count("messages", "u") == 0
    assert rate.tracked_keys() == 0  # empty keys are dropped


def test_a_give_back_undoes_a_count() -> None:
    rate = SendRate(clock=Clock())
    rate.add("messages", "u", 1)
    rate.add("messages", "u", -1)
    assert rate.count("messages", "u") == 0 and rate.tracked_keys() == 0
    rate.add("messages", "v", -1)  # nothing to give back: nothing happens
    assert rate.count("messages", "v") == 0


def test_memory_is_bounded_by_max_keys() -> None:
    rate = SendRate(clock=Clock(), max_keys=10)
    for i in range(1000):
        rate.add("recipients", f"user{i}@x")
    assert rate.tracked_keys() == 10


@given(st.lists(st.tuples(st.integers(0, 600), st.integers(1, 5)), max_size=60), st.integers(1, 50))
def test_the_count_in_the_window_never_exceeds_the_limit(events: list[tuple[int, int]], limit: int) -> None:
    clock = Clock()
    rate = SendRate(clock=clock)
    taken: list[tuple[float, int]] = []
    for step, n in events:
        clock.now += step
        ok, _ = rate.take("messages", "u", n, limit)
        if ok:
            taken.append((clock.now, n))
        # what was let through within the hour ending now (an event counts for up to a minute more)
        assert sum(c for t, c in taken if t > clock.now - 3600) <= limit
        assert rate.count("messages", "u") <= limit
        assert len(rate._keys.get(("messages", "u"), ())) <= 61
