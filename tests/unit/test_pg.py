"""pg.py against a real PostgreSQL (tests/fixtures_postgres.py): schema versions applied once when
several nodes start at once, a database ahead of this code refused, and every failure a one-line
temporary error (errors.DatabaseError, 451) rather than a psycopg exception."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from mailhaven import pg
from mailhaven.errors import DatabaseError, TempFailure
from tests.fixtures_base import free_port

STEPS = [
    "CREATE TABLE t_items (id integer PRIMARY KEY); INSERT INTO t_items VALUES (1)",
    "ALTER TABLE t_items ADD COLUMN name text; INSERT INTO t_items VALUES (2, 'two')",
]


async def test_nodes_starting_at_once_apply_each_step_once(pg_dsn: str) -> None:
    dbs = [pg.Database(pg_dsn) for _ in range(4)]
    try:
        assert await asyncio.gather(*(db.migrate("t", STEPS[:1]) for db in dbs)) == [1] * 4
        assert await asyncio.gather(*(db.migrate("t", STEPS) for db in dbs)) == [2] * 4  # an upgrade
        assert await dbs[0].migrate("t", STEPS) == 2  # idempotent
    finally:
        for db in dbs:
            await db.close()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT id, name FROM t_items ORDER BY id").fetchall() == [(1, None), (2, "two")]
        assert conn.execute("SELECT part, version FROM mailhaven_schema").fetchall() == [("t", 2)]


async def test_a_schema_newer_than_this_code_is_refused(pg_dsn: str) -> None:
    db = pg.Database(pg_dsn)
    try:
        await db.migrate("t", STEPS)
        with pytest.raises(pg.SchemaTooNew, match=r"^the t tables are at version 2, and this Mailhaven knows "
                           r"versions up to 1: upgrade it$"):
            await db.migrate("t", STEPS[:1])
    finally:
        await db.close()


async def test_a_failed_step_leaves_nothing_behind(pg_dsn: str) -> None:
    db = pg.Database(pg_dsn)
    try:
        with pytest.raises(DatabaseError, match='relation "nowhere" does not exist'):
            await db.migrate("t", [*STEPS, "INSERT INTO nowhere VALUES (1)"])
        assert await db.migrate("t", STEPS) == 2  # nothing of the failed run was kept: all steps run now
    finally:
        await db.close()


async def test_a_database_that_cannot_be_reached_is_a_temporary_failure_in_one_line() -> None:
    db = pg.Database(f"host=127.0.0.1 port={free_port()} dbname=x user=x", timeout=1)
    with pytest.raises(DatabaseError) as exc:
        await db.open()
    assert isinstance(exc.value, TempFailure) and exc.value.code == 451
    assert exc.value.detail.startswith("cannot connect: ") and "Connection refused" in exc.value.detail
    assert "\n" not in exc.value.detail
    assert exc.value.text == "Temporary local failure, try again later"  # what a client could see


async def test_statements_are_bounded_by_the_timeout(pg_dsn: str) -> None:
    db = pg.Database(pg_dsn, timeout=0.5)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DatabaseError, match="statement timeout"):
            async with db.connection() as conn:
                await conn.execute("SELECT pg_sleep(10)")
        assert loop.time() - started < 5
        async with db.connection() as conn:  # the pool is fine afterwards
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
    finally:
        await db.close()


async def test_a_closed_database_opens_again_on_use(pg_dsn: str) -> None:
    db = pg.Database(pg_dsn)
    await asyncio.gather(db.open(), db.open())  # at once: one pool
    await db.close()
    assert not db.is_open
    async with db.connection() as conn:  # a greylist checked after a close, e.g.
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)
    await db.close()
