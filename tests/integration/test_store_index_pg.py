"""store/index_pg.py on a real PostgreSQL: what the SQLite backend gets from SQLite itself and the
PostgreSQL one builds: data_version() moves for another's commit and never for our own, the per-user
advisory lock excludes another index of the same user (and not of another user), dies with its
connection, UIDVALIDITY stays unique and rising when two indexes of one user ask at once, and a
database that is down is a temporary failure (errors.DatabaseError), never a hang or a traceback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psycopg
import pytest

from mailhaven import pg
from mailhaven.errors import DatabaseError, TempFailure
from mailhaven.store import Store
from mailhaven.store.index_pg import PgIndex, PgIndexes
from tests.fixtures_postgres import Postgres

ALICE = "alice@example.test"
BOB = "bob@example.test"

Make = Callable[..., Awaitable[PgIndexes]]


@pytest.fixture
async def make(pg_dsn: str) -> AsyncIterator[Make]:
    """Each call a new PgIndexes with a pool of its own (another process, or node)."""
    made: list[PgIndexes] = []

    async def build(db_timeout: float = 5.0) -> PgIndexes:
        f = PgIndexes(pg.Database(pg_dsn, pool_size=4, timeout=db_timeout), owns_database=True)
        await f.open()
        made.append(f)
        return f

    yield build
    for f in made:
        await f.close()


def _index(factory: PgIndexes, user: str, tmp_path: Path) -> PgIndex:
    root = tmp_path / user
    root.mkdir(exist_ok=True)
    idx = factory(user, root, durable=False)
    assert isinstance(idx, PgIndex)
    return idx


async def test_data_version_moves_for_another_commit_and_never_for_our_own(make: Make, tmp_path: Path) -> None:
    a = _index(await make(), ALICE, tmp_path)
    b = _index(await make(), ALICE, tmp_path)

    def run() -> None:
        a.lock()
        first = a.data_version()
        box = a.create("INBOX", 7, 1, 1)
        a.commit(box, upserts=[(1, "k1", "new", "", "", 2, 1.0, 10, 0)], uidnext=2, highestmodseq=2,
                 new_mtime=0, cur_mtime=0)
        a.set_meta("x", "1")
        assert a.data_version() == first  # our own writes: nothing to reload
        a.unlock()
        b.lock()
        b.data_version()
        b.set_special_use("INBOX", "\\Important")
        b.unlock()
        a.lock()
        second = a.data_version()
        assert second != first  # another's commit
        assert a.data_version() == second  # and only once
        assert a.special_uses() == {"INBOX": "\\Important"}
        row = a.load("INBOX")
        assert row is not None and (row.uidnext, row.highestmodseq) == (2, 2)
        a.unlock()

    await asyncio.to_thread(run)


async def test_the_users_lock_excludes_another_index_of_the_same_user_only(make: Make, tmp_path: Path) -> None:
    a = _index(await make(), ALICE, tmp_path)
    b = _index(await make(), ALICE, tmp_path)
    other = _index(await make(), BOB, tmp_path)
    a.lock()
    got = threading.Event()

    def take() -> None:
        b.lock()
        got.set()

    t = threading.Thread(target=take)
    t.start()
    try:
        assert not got.wait(0.3)  # waits for a
        other.lock()  # another user: not held up
        other.unlock()
        a.unlock()
        assert got.wait(5)
    finally:
        t.join(5)
        b.unlock()
        a.unlock()


async def test_a_lock_goes_with_its_connection(make: Make, tmp_path: Path, pg_dsn: str) -> None:
    a = _index(await make(), ALICE, tmp_path)
    b = _index(await make(), ALICE, tmp_path)
    a.lock()
    assert a._conn is not None
    pid = a._conn.info.backend_pid
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    t = time.monotonic()
    await asyncio.to_thread(b.lock)  # a dead node does not keep the user locked
    assert time.monotonic() - t < 5
    with pytest.raises(DatabaseError):
        a.get_meta("x")  # its connection is gone: a temporary failure
    a.unlock()  # and unlocking it does not fail
    b.unlock()


async def test_two_indexes_of_one_user_asking_at_once_get_distinct_rising_uidvalidities(
        make: Make, tmp_path: Path) -> None:
    a = _index(await make(), ALICE, tmp_path)
    b = _index(await make(), ALICE, tmp_path)

    def many(idx: PgIndex) -> list[int]:
        return [idx.next_uidvalidity() for _ in range(30)]  # no lock: the row itself serialises them

    got = await asyncio.gather(asyncio.to_thread(many, a), asyncio.to_thread(many, b))
    for values in got:
        assert values == sorted(values)
    assert len(set(got[0] + got[1])) == 60
    assert (tmp_path / ALICE / "mailhaven-uidvalidity").read_text().strip() == str(max(got[0] + got[1]))


async def test_a_database_that_is_down_is_a_temporary_failure(make: Make, tmp_path: Path,
                                                               postgres: Postgres) -> None:
    store = Store(tmp_path / "mail", hostname="test.host", fsync=False, indexes=await make(db_timeout=1.0))
    await store.start()
    acc = store.account(ALICE)
    await acc.list_mailboxes()
    postgres.stop()
    try:
        t = time.monotonic()
        with pytest.raises(TempFailure):
            await (await acc.mailbox("INBOX")).append(b"Subject: x\r\n\r\nbody\r\n")
        assert time.monotonic() - t < 10
    finally:
        postgres.start()
    deadline = time.monotonic() + 20
    while True:  # back: it works again once the pool reconnected (a client retries a NO too)
        try:
            mb = await acc.mailbox("INBOX")
            uid = await mb.append(b"Subject: y\r\n\r\nbody\r\n")
            break
        except TempFailure:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    snap = await mb.snapshot()
    assert [m.uid for m in snap.messages] == [uid]  # the failed APPEND left nothing behind
    await store.close()
