"""The queue split between worker processes ([server] workers > 1), in one process: what worker
i > 0 queues lands durably in its partition (queue/handoff.py), the runner's spool loads and scans
the partitions without touching a write in progress, keeps each entry in the directory it was
written to, and the queue manager delivers each handed-over entry exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app
from mailhaven.queue.handoff import HandoffQueue, QueueElsewhere
from mailhaven.queue.manager import QueueManager
from mailhaven.queue.spool import STALE_WRITE, Spool
from tests.dnsserver import DnsServer
from tests.smtp_peer import SmtpPeer, shared_port, until

MSG = b"From: alice@example.test\r\nSubject: x\r\n\r\nbody\r\n"


async def test_runner_loads_and_scans_a_partition_and_leaves_writes_in_progress_alone(tmp_path: Path) -> None:
    root = tmp_path / "q"
    part = root / "worker-1"
    writer = HandoffQueue(root, worker=1)
    first = await writer.submit("alice@example.test", ["bob@b.test"], MSG)
    part.joinpath("6B000000AAAAAAAAAA.msg").write_bytes(MSG)  # being written right now: no .env yet
    part.joinpath(".6B000000BBBBBBBBBB.msg.tmp").write_bytes(b"half")  # the same, one step earlier
    stale = part / "6B000000CCCCCCCCCC.msg"  # a write cut short long ago
    stale.write_bytes(MSG)
    old = time.time() - STALE_WRITE - 60
    os.utime(stale, (old, old))
    runner = Spool(root, partitions=["worker-1", "worker-2"])
    [entry] = await runner.load()
    assert entry.id == first and runner.msg_path(first) == part / f"{first}.msg"
    assert sorted(os.listdir(part)) == sorted([f"{first}.env", f"{first}.msg", "6B000000AAAAAAAAAA.msg",
                                               ".6B000000BBBBBBBBBB.msg.tmp"])
    assert await runner.scan_partitions() == []  # nothing new
    second = await writer.submit("alice@example.test", ["carol@c.test"], MSG)
    [found] = await runner.scan_partitions()
    assert found.id == second and await runner.scan_partitions() == []
    # Updates and removal happen where the entry lives: nothing moves into the runner's own folder.
    found.attempts = 3
    await runner.save(found)
    assert b'"attempts":3' in (part / f"{second}.env").read_bytes()
    await runner.remove(first)
    assert not (part / f"{first}.env").exists() and not (part / f"{first}.msg").exists()
    assert sorted(p.name for p in root.iterdir()) == ["worker-1"]
    assert await runner.scan_partitions() == []  # a removed entry is not found again


async def test_a_worker_other_than_0_has_no_queue_to_show() -> None:
    q = HandoffQueue(Path("/nonexistent"), worker=2)
    assert q.stats() == (0, 0.0)
    with pytest.raises(QueueElsewhere, match="ask worker 0"):
        q.list_entries()
    with pytest.raises(QueueElsewhere):
        await q.retry("6B000000AAAAAAAAAA")


@pytest.fixture
def port() -> int:
    return shared_port("127.0.0.2")


async def test_entries_handed_over_by_other_workers_are_delivered_once_by_worker_0(
        make_config: Callable[..., Any], dns_nameserver: str, dns_server: DnsServer, port: int) -> None:
    dns_server.add("b.test", "MX", "10 mx.b.test.")
    dns_server.add("mx.b.test", "A", "127.0.0.2")
    peer = await SmtpPeer("127.0.0.2", port).start()
    cfg = make_config(hostname="mail.example.test", dns={"nameservers": [dns_nameserver], "timeout": 1},
                      queue={"remote_port": port, "retry_schedule": ["1s"], "jitter": 0}, server={"workers": 3})
    ctx = app.build_context(cfg)
    await ctx.store.start()
    root = Path(cfg.queue_root)
    before = await HandoffQueue(root, worker=2).submit("alice@example.test", ["early@b.test"], MSG)
    manager = QueueManager(ctx)
    task = asyncio.create_task(manager.run())
    try:
        await manager.loaded.wait()
        assert before in manager.entries  # loaded at start
        ids = [await HandoffQueue(root, worker=1 + i % 2).submit("alice@example.test", [f"r{i}@b.test"], MSG)
               for i in range(6)]
        await peer.wait_messages(7, seconds=15)
        await until(lambda: not manager.entries, 10)
        await asyncio.sleep(1.5)  # more scans: nothing is delivered twice
        assert sorted(r for m in peer.messages for r in m.rcpt_tos) == sorted(
            ["early@b.test", *(f"r{i}@b.test" for i in range(6))])
        assert len(set(ids)) == 6
        assert [p.name for p in (root / "worker-1").iterdir()] == []
        assert [p.name for p in (root / "worker-2").iterdir()] == []
    finally:
        manager.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)
        await ctx.store.close()
        await peer.stop()


async def test_a_handed_over_entry_wakes_the_runner_at_once(
        make_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailhaven.queue import manager as manager_module

    monkeypatch.setattr(manager_module, "PARTITION_SCAN", 60.0)  # only the datagram can be in time
    cfg = make_config(hostname="mail.example.test", server={"workers": 2})
    ctx = app.build_context(cfg)
    await ctx.store.start()
    manager = QueueManager(ctx, spool=Spool(Path(cfg.queue_root), partitions=["worker-1"]))
    manager.wake = lambda: None  # type: ignore[method-assign]  # record only: no delivery attempts
    task = asyncio.create_task(manager.run())
    try:
        await manager.loaded.wait()
        await until(lambda: manager.spool.wake_path.exists(), 5)
        started = time.monotonic()
        eid = await HandoffQueue(Path(cfg.queue_root), worker=1).submit("alice@example.test", ["bob@b.test"], MSG)
        await until(lambda: eid in manager.entries, 5)
        assert time.monotonic() - started < 2
    finally:
        manager.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)
        await ctx.store.close()
