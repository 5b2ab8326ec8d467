"""queue/schedule.py: backoff, jitter, expiry and the delay warning (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.queue.schedule import (
    DEFAULT_SCHEDULE,
    delay_warning_due,
    expired,
    next_attempt,
    next_wakeup,
    retry_delay,
)

T0 = 1_700_000_000.0


@pytest.mark.parametrize(("attempts", "delay"), [
    (1, 300), (2, 600), (3, 1200), (4, 2400), (5, 3600), (6, 3600), (50, 3600), (0, 300),
])
def test_default_schedule_doubles_from_five_minutes_then_stays_hourly(attempts: int, delay: float) -> None:
    assert retry_delay(attempts) == delay
    assert next_attempt(attempts, T0, DEFAULT_SCHEDULE, jitter=0.1, rand=0.5) == T0 + delay


def test_last_configured_delay_repeats() -> None:
    assert [retry_delay(n, [1.0, 5.0]) for n in (1, 2, 3, 9)] == [1.0, 5.0, 5.0, 5.0]


def test_empty_schedule_is_refused() -> None:
    with pytest.raises(ValueError):
        retry_delay(1, [])


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 270.0), (0.5, 300.0), (1.0, 330.0)])
def test_jitter_spreads_the_delay_by_the_configured_fraction(rand: float, expected: float) -> None:
    assert next_attempt(1, T0, DEFAULT_SCHEDULE, jitter=0.1, rand=rand) == pytest.approx(T0 + expected)


def test_no_jitter_gives_the_exact_delay() -> None:
    assert next_attempt(2, T0, DEFAULT_SCHEDULE, jitter=0.0, rand=0.99) == T0 + 600


@given(attempts=st.integers(-5, 1000), jitter=st.floats(-1, 2), rand=st.floats(-1, 2),
       schedule=st.lists(st.floats(0, 1e6), min_size=1, max_size=8))
def test_next_attempt_is_never_in_the_past_nor_beyond_twice_the_delay(
        attempts: int, jitter: float, rand: float, schedule: list[float]) -> None:
    t = next_attempt(attempts, T0, schedule, jitter, rand)
    assert T0 <= t <= T0 + 2 * retry_delay(attempts, schedule) + 1e-6


def test_expiry_at_the_lifetime() -> None:
    assert not expired(T0, T0 + 5 * 86400 - 1, 5 * 86400)
    assert expired(T0, T0 + 5 * 86400, 5 * 86400)


@pytest.mark.parametrize(("age", "warn", "lifetime", "sent", "due"), [
    (3 * 3600, 4 * 3600, 5 * 86400, False, False),  # too early
    (4 * 3600, 4 * 3600, 5 * 86400, False, True),  # due
    (9 * 3600, 4 * 3600, 5 * 86400, True, False),  # only once
    (9 * 3600, 0, 5 * 86400, False, False),  # disabled
    (9 * 3600, 4 * 3600, 4 * 3600, False, False),  # the bounce comes first
])
def test_delay_warning_is_due_once_after_the_configured_age(age: float, warn: float, lifetime: float,
                                                            sent: bool, due: bool) -> None:
    assert delay_warning_due(T0, T0 + age, warn, lifetime, sent) is due


def test_wakeup_never_later_than_expiry() -> None:
    assert next_wakeup(T0, T0 + 100, 50) == T0 + 50
    assert next_wakeup(T0, T0 + 10, 50) == T0 + 10
