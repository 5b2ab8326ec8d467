"""When to try a queued message again, when to give up, when to warn (pure, no clock, no I/O).

Owns: the retry backoff (the configured `queue.retry_schedule`, default 5m, 10m, 20m, 40m, then
hourly: the last delay repeats), its jitter (spreads retries so a recovered destination is not hit
by every message at once), lifetime expiry and the one delay warning. Time is passed in as seconds
since the epoch and randomness as a number in [0, 1), so every rule is a table test.
Does not own: the clock, the spool, or what happens on expiry (queue/manager.py).

RFC 5321 §4.5.4.1: the retry interval SHOULD be at least 30 minutes and the give-up time at least
4-5 days; we start shorter (5 minutes) as most MTAs do today, and default to 5 days.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_SCHEDULE: tuple[float, ...] = (300.0, 600.0, 1200.0, 2400.0, 3600.0)


def retry_delay(attempts: int, schedule: Sequence[float] = DEFAULT_SCHEDULE) -> float:
    """The delay after the `attempts`-th failed attempt (1-based); the last delay repeats."""
    if not schedule:
        raise ValueError("empty retry schedule")
    index = min(max(attempts, 1), len(schedule)) - 1
    return max(0.0, float(schedule[index]))


def next_attempt(attempts: int, now: float, schedule: Sequence[float] = DEFAULT_SCHEDULE,
                 jitter: float = 0.1, rand: float = 0.5) -> float:
    """Time of the next attempt after `attempts` failed ones, `now` being the last.

    The delay is spread by +-`jitter` (a fraction, 0-1) around the schedule: rand 0.5 gives the
    delay exactly, 0 the shortest, just under 1 the longest. Never earlier than `now`.
    """
    delay = retry_delay(attempts, schedule)
    jitter = min(max(jitter, 0.0), 1.0)
    rand = min(max(rand, 0.0), 1.0)
    return now + max(0.0, delay * (1.0 + jitter * (2.0 * rand - 1.0)))


def expired(created: float, now: float, lifetime: float) -> bool:
    """True once the entry has been queued `lifetime` seconds (then it bounces)."""
    return now - created >= lifetime


def delay_warning_due(created: float, now: float, delay_warning: float, lifetime: float,
                      already_sent: bool) -> bool:
    """One delay warning (RFC 3464 Action: delayed) once the entry is `delay_warning` old.

    Never twice, never when disabled (0), and not when the warning time is not before the
    lifetime (the bounce then says it all)."""
    if already_sent or delay_warning <= 0 or delay_warning >= lifetime:
        return False
    return now - created >= delay_warning


def next_wakeup(created: float, planned: float, lifetime: float) -> float:
    """The time the entry must be looked at: its planned attempt, but no later than its expiry,
    so the bounce leaves on time even when the last delay reaches past the lifetime."""
    return min(planned, created + lifetime)


__all__ = ["DEFAULT_SCHEDULE", "retry_delay", "next_attempt", "expired", "delay_warning_due",
           "next_wakeup"]
