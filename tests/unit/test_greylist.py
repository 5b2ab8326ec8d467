"""policy/greylist.py over a real SQLite file and policy/greylist_pg.py over a real PostgreSQL
(tests/fixtures_postgres.py), each test against both, with an injectable clock: the decision,
memory of clients that passed, persistence across reopening, expiry and the row caps. Then what
only PostgreSQL has: several nodes (pools) on one database at once, and the database going away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

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


Make = Callable[..., Awaitable[Any]]  # make(**limits) -> an opened greylist over the same state


@pytest.fixture(params=["sqlite", "postgresql"])
async def make(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[Make]:
    """Each call a new greylist object (a new "process" or node) over this test's one state: the
    SQLite file under tmp_path, or a PostgreSQL database of the test's own."""
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgresql" else ""
    made: list[Any] = []

    async def build(**kw: float) -> Any:
        delay, expire = kw.pop("delay", DELAY), kw.pop("expire", EXPIRE)
        if dsn:
            from mailhaven import pg
            from mailhaven.policy.greylist_pg import PgGreylist

            gl: Any = PgGreylist(pg.Database(dsn), delay=delay, expire=expire, clock=clock, own_database=True,
                                 **kw)  # type: ignore[arg-type]
        else:
            gl = Greylist(tmp_path / "greylist.sqlite", delay=delay, expire=expire, clock=clock,
                          **kw)  # type: ignore[arg-type]
        await gl.open()
        made.append(gl)
        return gl

    yield build
    for gl in made:
        await gl.close()


def test_client_network_is_the_24_or_the_64() -> None:
    assert greylist.client_net("192.0.2.77") == "192.0.2.0/24"
    assert greylist.client_net("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert greylist.client_net("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    t = triplet("192.0.2.77", "Bounce@Sender.Test", "Alice@Example.Test")
    assert (t.sender, t.rcpt) == ("bounce@sender.test", "alice@example.test")
    assert triplet("192.0.2.77", "", "a@b").sender == "<>"


async def test_first_attempt_defers_early_retry_defers_retry_after_delay_passes(make: Make, clock: Clock) -> None:
    gl = await make()
    t = triplet("192.0.2.1", "s@sender.test", "alice@example.test")
    d = await gl.check(t)
    assert (d.action, d.why, d.wait) == ("defer", "new", DELAY)
    clock.now += 100
    d = await gl.check(t)
    assert (d.action, d.why, d.wait) == ("defer", "early", DELAY - 100)
    clock.now += 200
    assert (await gl.check(t)).action == "pass"


async def test_a_client_that_passed_is_known_for_any_triplet_from_its_network(make: Make, clock: Clock) -> None:
    gl = await make()
    await gl.check(triplet("192.0.2.1", "s@sender.test", "alice@example.test"))
    clock.now += DELAY
    assert (await gl.check(triplet("192.0.2.1", "s@sender.test", "alice@example.test"))).why == "retried"
    # the same pool retries from another address of its /24, for someone else: known
    assert (await gl.check(triplet("192.0.2.200", "other@sender.test", "bob@example.test"))).why == "known"
    assert (await gl.check(triplet("198.51.100.1", "s@sender.test", "alice@example.test"))).action == "defer"


async def test_state_survives_reopening(make: Make, clock: Clock) -> None:
    gl = await make()
    t = triplet("192.0.2.1", "s@sender.test", "alice@example.test")
    assert (await gl.check(t)).action == "defer"
    await gl.close()
    clock.now += DELAY
    again = await make()
    assert (await again.check(t)).why == "retried"
    await again.close()
    assert (await (await make()).check(triplet("192.0.2.9", "x@y.test", "bob@example.test"))).why == "known"


async def test_known_clients_and_pending_triplets_expire_and_are_deleted(make: Make, clock: Clock) -> None:
    gl = await make(expire=3600.0)
    t = triplet("192.0.2.1", "s@sender.test", "alice@example.test")
    await gl.check(t)
    clock.now += DELAY
    assert (await gl.check(t)).why == "retried"
    clock.now += 1800
    assert (await gl.check(t)).why == "known"  # seen: remembered 3600 s from now
    await gl.check(triplet("198.51.100.1", "a@b.test", "alice@example.test"))  # pending
    assert (await gl.counts()) == (1, 1)
    clock.now += 3601
    await gl.sweep_now()
    assert (await gl.counts()) == (0, 0)  # bounded: both forgotten and deleted
    assert (await gl.check(t)).why == "new"  # greylisted again


async def test_expired_entries_are_swept_while_triplets_are_added(make: Make, clock: Clock) -> None:
    gl = await make(expire=600.0)
    for i in range(20):
        await gl.check(triplet(f"10.{i}.0.1", "s@sender.test", "alice@example.test"))
    clock.now += 601  # more than a minute and the expiry later: the next insert sweeps
    await gl.check(triplet("192.0.2.1", "s@sender.test", "alice@example.test"))
    assert (await gl.counts()) == (1, 0)


async def test_row_caps_drop_the_oldest(make: Make, clock: Clock) -> None:
    gl = await make(max_pending=10, max_known=3)
    for i in range(30):
        clock.now += 1
        await gl.check(triplet(f"10.0.{i}.1", "s@sender.test", "alice@example.test"))
    await gl.sweep_now()
    assert (await gl.counts())[0] == 10
    clock.now += DELAY
    assert (await gl.check(triplet("10.0.29.1", "s@sender.test", "alice@example.test"))).why == "retried"
    assert (await gl.check(triplet("10.0.0.1", "s@sender.test", "alice@example.test"))).why == "new"  # dropped
    for i in range(5):  # five networks pass: the three that passed last are kept
        clock.now += 1
        assert (await gl.check(triplet(f"10.0.{20 + i}.1", "s@sender.test", "alice@example.test"))).why == "retried"
    await gl.sweep_now()
    assert (await gl.counts())[1] == 3
    assert (await gl.check(triplet("10.0.24.9", "x@y.test", "bob@example.test"))).why == "known"
    assert (await gl.check(triplet("10.0.20.9", "x@y.test", "bob@example.test"))).why == "new"


async def test_sqlite_api_runs_off_the_loop(tmp_path: Path, clock: Clock) -> None:
    gl = Greylist(tmp_path / "greylist.sqlite", delay=DELAY, expire=EXPIRE, clock=clock)
    await gl.open()
    t = triplet("192.0.2.1", "s@sender.test", "alice@example.test")
    assert (await gl.check(t)).action == "defer"
    await gl.close()


# --- PostgreSQL only: several nodes on one database, and the database going away -----------------


def _node(dsn: str, clock: Clock, **kw: Any) -> Any:
    """A greylist with a pool of its own: what one node of several has."""
    from mailhaven import pg
    from mailhaven.policy.greylist_pg import PgGreylist

    return PgGreylist(pg.Database(dsn, timeout=kw.pop("timeout", 5.0)), delay=DELAY, expire=EXPIRE, clock=clock,
                      own_database=True, **kw)


async def test_two_nodes_checking_the_same_new_triplet_at_once_each_defer_once(pg_dsn: str, clock: Clock) -> None:
    a, b = _node(pg_dsn, clock), _node(pg_dsn, clock)
    try:
        await asyncio.gather(a.open(), b.open())  # both create the tables at once: one does, neither fails
        for i in range(20):
            t = triplet(f"10.1.{i}.1", "s@sender.test", "alice@example.test")
            first, second = await asyncio.gather(a.check(t), b.check(t))
            assert (first.action, second.action) == ("defer", "defer")
            assert sorted([first.why, second.why]) == ["early", "new"]  # recorded once
        assert await a.counts() == (20, 0)
        clock.now += DELAY  # and the retry passes on either node, the network known to both
        t = triplet("10.1.0.1", "s@sender.test", "alice@example.test")
        assert [d.why for d in await asyncio.gather(a.check(t), b.check(t))] in (["retried", "known"],
                                                                                  ["known", "retried"])
        assert (await b.check(triplet("10.1.0.7", "x@y.test", "bob@example.test"))).why == "known"
    finally:
        await a.close()
        await b.close()


async def test_checks_fail_while_postgresql_is_down_and_work_again_after(pg_dsn: str, clock: Clock,
                                                                         postgres: Any) -> None:
    from mailhaven.errors import DatabaseError

    gl = _node(pg_dsn, clock, timeout=1.0)
    await gl.open()
    t = triplet("192.0.2.1", "s@sender.test", "alice@example.test")
    try:
        assert (await gl.check(t)).why == "new"
        postgres.stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DatabaseError):
            await gl.check(t)
        assert loop.time() - started < 5  # bounded by storage.timeout, not hanging the RCPT
    finally:
        postgres.start()
    clock.now += DELAY
    assert (await gl.check(t)).why == "retried"  # the pool reconnects; the state was kept
    await gl.close()
