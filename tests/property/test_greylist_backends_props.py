"""The two greylist backends are one behaviour: any sequence of RCPT checks, clock steps and sweeps
gives the same decisions and the same table sizes from policy/greylist.py (SQLite) and
policy/greylist_pg.py (a real PostgreSQL, tests/fixtures_postgres.py), caps and expiry included."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhaven import pg
from mailhaven.policy.greylist import Greylist, triplet
from mailhaven.policy.greylist_pg import PgGreylist

DELAY, EXPIRE = 300.0, 3600.0
CAPS = {"max_pending": 3, "max_known": 2}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# A few networks, senders and recipients, so triplets repeat; steps around the delay and expiry.
_check = st.tuples(st.just("check"), st.sampled_from(["192.0.2.1", "192.0.2.99", "198.51.100.7", "2001:db8::1",
                                                      "203.0.113.5"]),
                   st.sampled_from(["a@s.test", "", "B@s.test"]), st.sampled_from(["alice@example.test",
                                                                                 "bob@example.test"]))
_wait = st.tuples(st.just("wait"), st.sampled_from([1.0, 100.0, DELAY, 61.0, EXPIRE, EXPIRE / 2, -50.0]))
_sweep = st.tuples(st.just("sweep"))
OPS = st.lists(st.one_of(_check, _check, _check, _wait, _sweep), max_size=40)


async def _run(gl: Any, clock: Clock, ops: list[tuple[Any, ...]]) -> list[Any]:
    out: list[Any] = []
    await gl.open()
    try:
        for op in ops:
            if op[0] == "check":
                clock.now += 1  # distinct times, as real ones are: the caps drop a well-defined oldest
                d = await gl.check(triplet(op[1], op[2], op[3]))
                out.append((d.action, d.why, round(d.wait, 6)))
            elif op[0] == "wait":
                clock.now += op[1]
            else:
                await gl.sweep_now()
                out.append(await gl.counts())
        out.append(await gl.counts())
    finally:
        await gl.close()
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_sqlite_and_postgresql_decide_alike(pg_dsn: str, ops: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # one database for every example: empty it
        conn.execute("DROP TABLE IF EXISTS greylist_pending, greylist_known, mailhaven_schema")
    with tempfile.TemporaryDirectory() as tmp:
        lite_clock, pg_clock = Clock(), Clock()
        lite = Greylist(Path(tmp) / "greylist.sqlite", delay=DELAY, expire=EXPIRE, clock=lite_clock, **CAPS)
        shared = PgGreylist(pg.Database(pg_dsn), delay=DELAY, expire=EXPIRE, clock=pg_clock, own_database=True,
                            **CAPS)
        assert asyncio.run(_run(lite, lite_clock, ops)) == asyncio.run(_run(shared, pg_clock, ops))
