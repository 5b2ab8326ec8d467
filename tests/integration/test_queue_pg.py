"""queue/manager.py over queue/spool_pg.py: several managers (nodes: a pool each) on one PostgreSQL
database and one queue directory deliver each entry once, through claims; a manager that dies
mid-delivery has its entries delivered by another once its lease runs out. Real PostgreSQL
(tests/fixtures_postgres.py), the real test DNS server and a scripted SMTP peer (tests/smtp_peer.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from mailhaven import app
from mailhaven.queue.manager import QueueManager
from mailhaven.queue.spool_pg import PgSpool
from tests.dnsserver import DnsServer
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.smtp_peer import SmtpPeer, shared_port, until

ALICE = "alice@example.test"
PASSWORD = "correct horse"


def _msg(i: int) -> bytes:
    return f"From: {ALICE}\r\nTo: bob@b.test\r\nSubject: n{i}\r\n\r\nbody {i}\r\n".encode()


@pytest.fixture
def port() -> int:
    return shared_port("127.0.0.2")


@pytest.fixture
async def peer(port: int, dns_server: DnsServer) -> AsyncIterator[SmtpPeer]:
    dns_server.add("b.test", "MX", "10 mx.b.test.")
    dns_server.add("mx.b.test", "A", "127.0.0.2")
    p = await SmtpPeer("127.0.0.2", port).start()
    yield p
    await p.stop()


Start = Callable[..., Any]


@pytest.fixture
async def nodes(make_config: Callable[..., Any], dns_nameserver: str, port: int,
                pg_dsn: str) -> AsyncIterator[tuple[Any, Start]]:
    """(ctx, start): start(**kw) runs one more QueueManager over a PgSpool with a pool of its own,
    on the same database and queue directory; returns (manager, task)."""
    from mailhaven import pg

    cfg = make_config(hostname="mail.example.test", dns={"nameservers": [dns_nameserver], "timeout": 1},
                      queue={"remote_port": port, "retry_schedule": ["1s"], "jitter": 0, "connect_timeout": 2,
                             "command_timeout": 5})
    ctx = app.build_context(cfg)
    await ctx.store.start()
    running: list[tuple[QueueManager, asyncio.Task[None], pg.Database]] = []

    async def start(**kw: Any) -> tuple[QueueManager, asyncio.Task[None]]:
        db = pg.Database(pg_dsn, pool_size=4, timeout=kw.pop("db_timeout", 5.0))
        mgr = QueueManager(ctx, spool=PgSpool(db, Path(cfg.queue_root)), claim_every=0.2, **kw)
        task = asyncio.create_task(mgr.run())
        await asyncio.wait_for(mgr.loaded.wait(), 10)
        running.append((mgr, task, db))
        return mgr, task

    yield ctx, start
    for mgr, task, db in running:
        mgr.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)
        await db.close()
    await ctx.store.close()


async def _rows(spool: PgSpool) -> int:
    async with spool.db.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM queue_entry")
        row = await cur.fetchone()
        return int(row[0]) if row else -1


async def test_two_managers_on_one_database_deliver_each_of_20_entries_exactly_once(
        nodes: tuple[Any, Start], peer: SmtpPeer) -> None:
    _, start = nodes
    (a, _), (b, _) = await start(), await start()
    ids = [await (a if i % 2 else b).submit(ALICE, ["bob@b.test"], _msg(i)) for i in range(20)]
    assert len(set(ids)) == 20
    await peer.wait_messages(20, seconds=20)
    spool = a.spool
    assert isinstance(spool, PgSpool)

    async def drained() -> bool:
        return await _rows(spool) == 0 and not a.entries and not b.entries

    await until(drained, 10)
    await asyncio.sleep(0.5)  # a few more claim rounds: nothing is delivered again
    subjects = sorted(m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in peer.messages)
    assert subjects == sorted(f"n{i}".encode() for i in range(20))  # each once, none twice
    assert sorted(p.name for p in spool.root.iterdir() if p.name.endswith(".msg")) == []


async def test_entries_of_a_manager_killed_mid_delivery_are_delivered_by_another_after_its_lease(
        nodes: tuple[Any, Start], peer: SmtpPeer) -> None:
    _, start = nodes
    lease = 2.0
    a, a_task = await start(lease=lease)
    peer.hold_data()  # a's transaction stalls once the message arrived, before the 250
    submitted = time.monotonic()  # a claims it after this: its lease ends lease seconds later
    qid = await a.submit(ALICE, ["bob@b.test"], _msg(1))
    await asyncio.wait_for(peer.data_arrived.wait(), 10)
    assert qid in a.entries
    a_task.cancel()  # killed: no result recorded, the lease not released
    with contextlib.suppress(asyncio.CancelledError):
        await a_task
    await asyncio.sleep(0.3)  # the peer notices a's connection closing (aiosmtpd drops its transaction)
    peer.release_data()
    assert peer.messages == []  # a's transaction was never answered
    b, _ = await start(lease=lease)
    [got] = await peer.wait_messages(1, seconds=15)  # b delivers it
    assert time.monotonic() - submitted >= lease  # not before a's lease ran out
    assert got.data.endswith(b"body 1\r\n")
    spool = b.spool
    assert isinstance(spool, PgSpool)

    async def gone() -> bool:  # the row first, then the file (spool_pg.remove)
        return await _rows(spool) == 0 and not spool.msg_path(qid).exists()

    await until(gone, 10)


async def test_the_running_server_with_postgresql_queues_into_the_table_and_delivers(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, client_ssl_context: ssl.SSLContext,
        pg_dsn: str, port: int, peer: SmtpPeer) -> None:
    import psycopg

    path = app_config_file(tmp_path, tls_files, dns_nameserver, storage={"backend": "postgresql", "dsn": pg_dsn},
                           queue={"remote_port": port, "connect_timeout": 2, "command_timeout": 5})
    cfg = load_test_config(path)
    add_user(cfg, ALICE, PASSWORD)

    def rows() -> list[tuple[str, str | None]]:
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute("SELECT id, lease_owner FROM queue_entry").fetchall()

    async with running_app(cfg) as ctx:
        assert isinstance(ctx.queue, QueueManager) and isinstance(ctx.queue.spool, PgSpool)
        peer.hold_data()
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ctx.port("submission"), start_tls=True,
                                 tls_context=client_ssl_context, timeout=20)
        async with client:
            await client.login(ALICE, PASSWORD)
            await client.sendmail(ALICE, ["bob@b.test"], _msg(7))
        await asyncio.wait_for(peer.data_arrived.wait(), 10)
        [(qid, owner)] = await asyncio.to_thread(rows)  # in delivery: a row, claimed by the server
        assert owner and ctx.queue.spool.msg_path(qid).is_file()
        names = await asyncio.to_thread(os.listdir, cfg.queue_root)
        assert [n for n in names if n.endswith(".env")] == []  # no envelope file
        peer.release_data()
        [got] = await peer.wait_messages(1)
        assert got.rcpt_tos == ["bob@b.test"] and b"body 7" in got.data
        await until(lambda: not ctx.queue.spool.msg_path(qid).exists(), 10)  # type: ignore[union-attr]
        assert await asyncio.to_thread(rows) == []


async def test_claims_pause_while_postgresql_is_down_with_one_log_line_and_resume(
        nodes: tuple[Any, Start], peer: SmtpPeer, postgres: Any, caplog: pytest.LogCaptureFixture) -> None:
    _, start = nodes
    caplog.set_level(logging.INFO, logger="mailhaven.queue")
    a, _ = await start(db_timeout=0.5)
    spool = a.spool
    assert isinstance(spool, PgSpool)
    first = await a.submit(ALICE, ["bob@b.test"], _msg(3))
    await peer.wait_messages(1)
    await until(lambda: not spool.msg_path(first).exists(), 10)  # removed: row, then file
    postgres.stop()
    try:
        await asyncio.sleep(2.0)  # several claim rounds fail
    finally:
        postgres.start()
    assert caplog.text.count("cannot claim entries") == 1
    await until(lambda: "claiming entries again" in caplog.text, 15)
    second = await a.submit(ALICE, ["bob@b.test"], _msg(4))
    [_, got] = await peer.wait_messages(2, seconds=15)
    assert b"body 4" in got.data and first != second


async def test_a_delivery_whose_removal_fails_while_postgresql_is_down_is_not_repeated(
        nodes: tuple[Any, Start], peer: SmtpPeer, postgres: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last recipient delivered, the entry's removal (its only record) fails: the manager keeps
    the entry and its lease and removes it later, instead of letting the lease run out and the
    message go out again."""
    from mailhaven.queue import manager

    monkeypatch.setattr(manager, "NOTIFY_RETRY", 1.0)
    _, start = nodes
    a, _ = await start(lease=1.5, db_timeout=0.5)
    spool = a.spool
    assert isinstance(spool, PgSpool)
    peer.hold_data()
    qid = await a.submit(ALICE, ["bob@b.test"], _msg(5))
    await asyncio.wait_for(peer.data_arrived.wait(), 10)
    postgres.stop()
    try:
        peer.release_data()
        await peer.wait_messages(1)
        await asyncio.sleep(1.0)  # the removal fails
    finally:
        postgres.start()
    await until(lambda: not spool.msg_path(qid).exists(), 15)  # removed once the database is back
    await asyncio.sleep(2.0)  # past the lease: nobody delivers it again
    assert len(peer.messages) == 1 and await _rows(spool) == 0


async def test_a_stopped_manager_finishes_its_transaction_and_gives_back_what_it_did_not_start(
        nodes: tuple[Any, Start], peer: SmtpPeer) -> None:
    """stop(): the transaction in flight finishes, the entry claimed but waiting for a slot is
    released at once, not after its lease (60 s)."""
    ctx, start = nodes
    ctx.config = dataclasses.replace(ctx.config, queue=dataclasses.replace(ctx.config.queue, max_per_destination=1))
    a, a_task = await start(lease=60.0)
    peer.hold_data()
    first = await a.submit(ALICE, ["bob@b.test"], _msg(8))
    await asyncio.wait_for(peer.data_arrived.wait(), 10)
    second = await a.submit(ALICE, ["bob@b.test"], _msg(9))
    await until(lambda: second in a.entries, 5)  # claimed, waiting: one transaction per destination
    b, _ = await start(lease=60.0)
    await asyncio.sleep(0.5)
    assert peer.messages == [] and not b.entries  # a holds both
    a.stop()
    peer.release_data()
    await asyncio.wait_for(a_task, 10)
    started = time.monotonic()
    got = await peer.wait_messages(2, seconds=10)
    assert time.monotonic() - started < 5  # not after the lease
    assert sorted(m.data[-8:] for m in got) == [b"body 8\r\n", b"body 9\r\n"] and first != second


async def test_the_operator_sees_and_acts_on_every_nodes_entries(nodes: tuple[Any, Start], peer: SmtpPeer,
                                                                 tmp_path: Path) -> None:
    """`queue list/show/retry/delete` through any node's control socket see the whole table: an
    entry node A is delivering right now shows as busy on B, one waiting for its retry is made due
    from B, and B can delete what A holds."""
    from mailhaven.control import _handle

    _, start = nodes
    a, _ = await start()
    b, _ = await start()
    peer.hold_data()
    held = await a.submit(ALICE, ["bob@b.test"], _msg(1))
    await asyncio.wait_for(peer.data_arrived.wait(), 10)  # held by whichever node claimed it
    holder, other = (a, b) if held in a.entries else (b, a)
    listed = await _handle(other, {"cmd": "list"})
    assert [(e["id"], e["busy"]) for e in listed["entries"]] == [(held, True)]
    shown = await _handle(other, {"cmd": "show", "id": held, "headers": True})
    assert shown["entry"]["recipients"][0]["address"] == "bob@b.test"
    assert shown["entry"]["headers"]["Subject"] == "n1"
    assert (await _handle(other, {"cmd": "show", "id": "0123456789ABCDEF"}))["ok"] is False
    assert (await _handle(other, {"cmd": "delete", "id": held}))["ok"] is True
    spool = other.spool
    assert isinstance(spool, PgSpool)
    assert await _rows(spool) == 0
    peer.release_data()  # the transaction in flight ends as it would (as `queue delete` says)
    await peer.wait_messages(1, seconds=10)
    # An entry no node holds, waiting for its next attempt an hour away: made due from either node.
    later = (await spool.add(ALICE, ["bob@b.test"], _msg(2), next_attempt=time.time() + 3600)).id
    await asyncio.sleep(0.5)  # claim rounds pass it by: not due
    assert len(peer.messages) == 1 and not (await spool.snapshot(later))[0][1]
    assert (await _handle(holder, {"cmd": "retry", "id": later}))["ok"] is True
    got = await peer.wait_messages(2, seconds=10)  # now, not in an hour
    assert got[1].data.endswith(b"body 2\r\n")

    async def drained() -> bool:
        return await _rows(spool) == 0

    await until(drained, 10)
