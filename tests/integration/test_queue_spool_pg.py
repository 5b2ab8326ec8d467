"""queue/spool_pg.py over a real PostgreSQL (tests/fixtures_postgres.py) and a real directory: the
entry round trip, the durability order of add (file fsynced and renamed, directory fsynced, then the
row), cleaning at load, and the claims several nodes (here: several pools) make on one table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven.delivery.result import DeliveryResult
from mailhaven.errors import DatabaseError
from mailhaven.queue.spool import ClaimingSpool, QueueSpool, Spool
from mailhaven.queue.spool_pg import PgSpool

MSG = b"Subject: x\r\n\r\nbody\r\n"

Make = Callable[..., Awaitable[PgSpool]]


@pytest.fixture
async def make(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Make]:
    """Each call a new PgSpool with a pool of its own (a node) over this test's database and one
    shared queue directory."""
    from mailhaven import pg

    made: list[PgSpool] = []

    async def build(**kw: Any) -> PgSpool:
        spool = PgSpool(pg.Database(pg_dsn, pool_size=4), tmp_path / "q", **kw)
        await spool.load()
        made.append(spool)
        return spool

    yield build
    for s in made:
        await s.db.close()


async def _rows(spool: PgSpool) -> dict[str, Any]:
    async with spool.db.connection() as conn:
        cur = await conn.execute("SELECT id, lease_owner FROM queue_entry")
        return {str(r[0]): r[1] for r in await cur.fetchall()}


def test_both_spools_have_the_interface_the_manager_uses(tmp_path: Path) -> None:
    from mailhaven import pg

    file_spool: QueueSpool = Spool(tmp_path)
    pg_spool: QueueSpool = PgSpool(pg.Database("dbname=x"), tmp_path)
    assert isinstance(pg_spool, ClaimingSpool) and not isinstance(file_spool, ClaimingSpool)


async def test_added_entry_is_seen_by_another_node_with_every_field_and_saves_and_removal(make: Make) -> None:
    a, b = await make(), await make()
    entry = await a.add("alice@example.test", ["bob@b.test", "carol@c.test"], MSG, source="submission",
                        programs=[("prog@example.test", "|/bin/cat", "prog-alias@example.test")])
    [loaded] = await b.load()
    assert loaded == entry and loaded.recipients[2].program == "|/bin/cat"
    assert await b.read(entry.id) == MSG
    entry.recipients[0].state = "delivered"
    entry.recipients[0].last = DeliveryResult("bob@b.test", 250, "2.0.0", "ok", False, "mx.b.test")
    entry.attempts, entry.next_attempt = 1, entry.next_attempt + 600
    await a.save(entry)
    [again] = await b.load()
    assert again == entry and again.recipients[0].last is not None and again.recipients[0].last.code == 250
    await b.remove(entry.id)
    assert await a.load() == [] and not a.msg_path(entry.id).exists()


async def test_add_writes_the_row_only_after_the_message_file_and_directory_are_fsynced(
        make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    spool, other = await make(), await make()
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def rename(src: Any, dst: Any) -> None:
        real_rename(src, dst)
        events.append(("rename", os.fspath(dst)))

    real_connection = spool.db.connection

    @contextlib.asynccontextmanager
    async def connection() -> AsyncIterator[Any]:
        events.append(("db", ""))
        async with real_connection() as conn:
            yield conn

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(spool.db, "connection", connection)
    entry = await spool.add("alice@example.test", ["bob@b.test"], MSG)
    assert entry.id in await _rows(other)  # committed when add returned
    root = str(spool.root.resolve())
    msg = os.path.join(root, f"{entry.id}.msg")
    kinds = [e for e in events if e[0] == "db" or e[1] in (msg, root) or e[1].startswith(os.path.join(root, "."))]
    assert [k for k, _ in kinds] == ["fsync", "rename", "fsync", "db"], events  # tmp, rename, directory, row
    assert kinds[1] == ("rename", msg) and kinds[2] == ("fsync", root)


async def test_add_with_the_database_down_fails_temporarily_and_leaves_no_file(make: Make, postgres: Any) -> None:
    spool = await make()
    await spool.db.close()
    postgres.stop()
    try:
        with pytest.raises(DatabaseError):
            await spool.add("alice@example.test", ["bob@b.test"], MSG)
        assert [p.name for p in spool.root.iterdir()] == []
    finally:
        postgres.start()


async def test_load_removes_old_orphan_files_keeps_young_ones_and_file_queue_entries_and_sets_rows_without_file_aside(
        make: Make, caplog: pytest.LogCaptureFixture) -> None:
    a = await make()
    kept = await a.add("alice@example.test", ["bob@b.test"], MSG)
    lost = await a.add("alice@example.test", ["bob@b.test"], MSG)
    os.unlink(a.msg_path(lost.id))
    old, young = a.root / "0000000AAAAAAAAAAA.msg", a.root / "0000000BBBBBBBBBBB.msg"
    for p in (old, young):
        p.write_bytes(MSG)
    file_spool = a.root / "0000000CCCCCCCCCCC"  # an entry of the file queue, from before the switch
    for p in (file_spool.with_suffix(".msg"), file_spool.with_suffix(".env")):
        p.write_bytes(MSG)
    stale = time.time() - 7200
    for p in (old, file_spool.with_suffix(".msg")):
        os.utime(p, (stale, stale))
    b = await make()
    assert [e.id for e in await b.load()] == [kept.id]
    assert not old.exists() and young.exists() and a.msg_path(kept.id).exists()
    assert [i for i, _ in await b.corrupt()] == [lost.id]
    assert set(await _rows(b)) == {kept.id}
    assert f"queue entry {lost.id}: no message file" in caplog.text
    assert file_spool.with_suffix(".msg").exists() and "drain the queue before switching" in caplog.text


async def _fill(spool: PgSpool, n: int, **kw: Any) -> list[str]:
    return [(await spool.add("alice@example.test", [f"r{i}@b.test"], MSG, **kw)).id for i in range(n)]


async def test_two_nodes_claiming_at_once_get_disjoint_sets_that_cover_every_due_entry(make: Make) -> None:
    a, b = await make(), await make()
    ids = set(await _fill(a, 50))
    later = await a.add("alice@example.test", ["x@b.test"], MSG, next_attempt=time.time() + 3600)
    got_a: list[str] = []
    got_b: list[str] = []

    async def claimer(spool: PgSpool, into: list[str]) -> None:
        while True:
            got = await spool.claim(7, 60, time.time())
            if not got:
                return
            into.extend(e.id for e in got)

    await asyncio.gather(claimer(a, got_a), claimer(b, got_b), claimer(a, got_a), claimer(b, got_b))
    assert not set(got_a) & set(got_b) and len(got_a) + len(got_b) == 50
    assert set(got_a) | set(got_b) == ids and later.id not in ids  # not due: not claimed
    rows = await _rows(a)
    assert {i for i in got_a if rows[i] == a.owner} == set(got_a)


async def test_an_expired_lease_lets_another_node_take_the_entry_and_renewal_prevents_it(make: Make) -> None:
    a, b = await make(), await make()
    [first, second] = await _fill(a, 2)
    assert {e.id for e in await a.claim(10, 1.0, time.time())} == {first, second}
    assert await b.claim(10, 60, time.time()) == []  # held
    await asyncio.sleep(0.6)
    assert await a.renew([first], 1.0) == {first}
    await asyncio.sleep(0.6)  # second's lease has expired; first's was renewed
    assert [e.id for e in await b.claim(10, 60, time.time())] == [second]
    assert await a.renew([first, second], 1.0) == {first}  # second is b's now


async def test_released_entries_can_be_claimed_again_and_removed_ones_never(make: Make) -> None:
    a, b = await make(), await make()
    [kept, gone] = await _fill(a, 2)
    claimed = await a.claim(10, 60, time.time())
    assert {e.id for e in claimed} == {kept, gone}
    await a.remove(gone)
    await a.release(kept)
    assert [e.id for e in await b.claim(10, 60, time.time())] == [kept]
    await b.release(kept)
    await asyncio.sleep(0)
    assert [e.id for e in await a.claim(10, 60, time.time())] == [kept]
