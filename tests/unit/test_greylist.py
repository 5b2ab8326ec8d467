"""policy/greylist.py over a real SQLite file, with an injectable clock: the decision, memory of
clients that passed, persistence across reopening, expiry and the row caps."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailhaven.policy import greylist
from mailhaven.policy.greylist import Greylist, triplet

DELAY, EXPIRE = 300.0, 35 * 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(path: Path, clock: Clock, **kw: float) -> Greylist:
    return Greylist(path / "greylist.sqlite", delay=kw.pop("delay", DELAY), expire=kw.pop("expire", EXPIRE),
                    clock=clock, **kw)  # type: ignore[arg-type]


def test_client_network_is_the_24_or_the_64() -> None:
    assert greylist.client_net("192.0.2.77") == "192.0.2.0/24"
    assert greylist.client_net("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert greylist.client_net("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    t = triplet("192.0.2.77", "Bounce@Sender.Test", "Alice@Example.Test")
    assert (t.sender, t.rcpt) == ("bounce@sender.test", "alice@example.test")
    assert triplet("192.0.2.77", "", "a@b").sender == "<>"


def test_first_attempt_defers_early_retry_defers_retry_after_delay_passes(tmp_path: Path, clock: Clock) -> None:
    gl = make(tmp_path, clock)
    t = triplet("192.0.2.1", "s@sender.test", "alice@example.test")
    d = gl.check_sync(t)
    assert (d.action, d.why, d.wait) == ("defer", "new", DELAY)
    clock.now += 100
    d = gl.check_sync(t)
    assert (d.action, d.why, d.wait) == ("defer", "early", DELAY - 100)
    clock.now += 200
    assert gl.check_sync(t).action == "pass"


def test_a_client_that_passed_is_known_for_any_triplet_from_its_network(tmp_path: Path, clock: Clock) -> None:
    gl = make(tmp_path, clock)
    gl.check_sync(triplet("192.0.2.1", "s@sender.test", "alice@example.test"))
    clock.now += DELAY
    assert gl.check_sync(triplet("192.0.2.1", "s@sender.test", "alice@example.test")).why == "retried"
    # the same pool retries from another address of its /24, for someone else: known
    assert gl.check_sync(triplet("192.0.2.200", "other@sender.test", "bob@example.test")).why == "known"
    assert gl.check_sync(triplet("198.51.100.1", "s@sender.test", "alice@example.test")).action == "defer"


def test_state_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    gl = make(tmp_path, clock)
    t = triplet("192.0.2.1", "s@sender.test", "alice@example.test")
    assert gl.check_sync(t).action == "defer"
    gl._close()
    clock.now += DELAY
    again = make(tmp_path, clock)
    assert again.check_sync(t).why == "retried"
    again._close()
    assert make(tmp_path, clock).check_sync(triplet("192.0.2.9", "x@y.test", "bob@example.test")).why == "known"


def test_known_clients_and_pending_triplets_expire_and_are_deleted(tmp_path: Path, clock: Clock) -> None:
    gl = make(tmp_path, clock, expire=3600.0)
    t = triplet("192.0.2.1", "s@sender.test", "alice@example.test")
    gl.check_sync(t)
    clock.now += DELAY
    assert gl.check_sync(t).why == "retried"
    clock.now += 1800
    assert gl.check_sync(t).why == "known"  # seen: remembered 3600 s from now
    gl.check_sync(triplet("198.51.100.1", "a@b.test", "alice@example.test"))  # pending
    assert gl.counts() == (1, 1)
    clock.now += 3601
    gl.sweep_now()
    assert gl.counts() == (0, 0)  # bounded: both forgotten and deleted
    assert gl.check_sync(t).why == "new"  # greylisted again


def test_expired_entries_are_swept_while_triplets_are_added(tmp_path: Path, clock: Clock) -> None:
    gl = make(tmp_path, clock, expire=600.0)
    for i in range(20):
        gl.check_sync(triplet(f"10.{i}.0.1", "s@sender.test", "alice@example.test"))
    clock.now += 601  # more than a minute and the expiry later: the next insert sweeps
    gl.check_sync(triplet("192.0.2.1", "s@sender.test", "alice@example.test"))
    assert gl.counts() == (1, 0)


def test_row_caps_drop_the_oldest(tmp_path: Path, clock: Clock) -> None:
    gl = make(tmp_path, clock, max_pending=10, max_known=3)
    for i in range(30):
        clock.now += 1
        gl.check_sync(triplet(f"10.0.{i}.1", "s@sender.test", "alice@example.test"))
    gl.sweep_now()
    assert gl.counts()[0] == 10
    clock.now += DELAY
    assert gl.check_sync(triplet("10.0.29.1", "s@sender.test", "alice@example.test")).why == "retried"
    assert gl.check_sync(triplet("10.0.0.1", "s@sender.test", "alice@example.test")).why == "new"  # dropped


async def test_async_api_runs_off_the_loop(tmp_path: Path, clock: Clock) -> None:
    gl = make(tmp_path, clock)
    await gl.open()
    t = triplet("192.0.2.1", "s@sender.test", "alice@example.test")
    assert (await gl.check(t)).action == "defer"
    await gl.close()
