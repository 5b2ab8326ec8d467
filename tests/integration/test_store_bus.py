"""The change bus (store/bus.py) on real Unix datagram sockets: peers that died, garbage, full queues.

The peer processes here are plain sockets of this test playing another worker (bound in the bus
directory like one); test_store_processes.py has the real second process.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven.store import FlagsChanged, MailboxesChanged, MessagesAdded, Overflow, Store, bus

HOST = "test.host"
ALICE = "alice@example.test"


@pytest.fixture
async def store(tmp_path: Path):
    s = Store(tmp_path / "mail", hostname=HOST, fsync=False, bus_dir=tmp_path / "bus")
    await s.start()
    yield s
    await s.close()


def peer(directory: Path, name: str = "424242-1.sock") -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / name))
    sock.setblocking(False)
    return sock


def records(sock: socket.socket) -> list[bytes]:
    out: list[bytes] = []
    while True:
        try:
            data = sock.recv(bus.MAX_DATAGRAM + 1)
        except BlockingIOError:
            return out
        assert data.startswith(b"MH1\n")
        out += data[4:].split(b"\n")


async def eventually(check: Callable[[], bool], seconds: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_the_bus_directory_is_private_and_each_store_binds_its_own_socket(store: Store, tmp_path: Path) -> None:
    d = tmp_path / "bus"
    assert os.stat(d).st_mode & 0o777 == 0o700
    assert store.bus is not None
    assert [p.name for p in d.iterdir()] == [store.bus.name]
    assert store.bus.name.startswith(f"{os.getpid()}-")


async def test_events_are_sent_to_a_live_peer_and_a_dead_peers_socket_is_removed(store: Store, tmp_path: Path) -> None:
    d = tmp_path / "bus"
    live = peer(d)
    dead = peer(d, "999999999-1.sock")
    dead.close()  # its file stays: the process "died" without cleaning up
    assert (d / "999999999-1.sock").exists()
    await store.account(ALICE).create_mailbox("Work")
    mb = await store.account(ALICE).mailbox("Work")
    await mb.append(b"Subject: x\r\n\r\nx\r\n")
    got: list[bytes] = []
    await eventually(lambda: bool(got.extend(records(live))) or b"a\0alice@example.test\0Work" in got)
    assert b"m\0alice@example.test\0" in got
    assert not (d / "999999999-1.sock").exists()
    assert (d / "424242-1.sock").exists()
    live.close()


async def test_garbage_datagrams_are_ignored_and_a_good_one_after_them_still_arrives(
        store: Store, tmp_path: Path) -> None:
    assert store.bus is not None
    errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    target = str(tmp_path / "bus" / store.bus.name)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    garbage = [
        b"", b"\xff" * 100, os.urandom(3000), b"MH1", b"MH1\n", b"MH2\na\0alice@example.test\0INBOX",
        b"MH1\nz\0alice@example.test\0INBOX",  # unknown kind
        b"MH1\na\0alice@example.test",  # too few fields
        b"MH1\na\0\xff\xfe@example.test\0INBOX",  # not UTF-8
        b"MH1\na\0alice@example.test\0IN\x01BOX",  # control character
        b"MH1\na\0" + b"a" * 5000 + b"@example.test\0INBOX",  # name too long
        b"MH1\na\0alice@example.test\0",  # messages of no mailbox
        b"MH1\n" + b"a\0alice@example.test\0INBOX\n" * 2000,  # longer than MAX_DATAGRAM
    ]
    with store.changes.subscribe(ALICE) as sub:
        for g in garbage:
            sender.sendto(g, target)
            await asyncio.sleep(0.005)  # the store reads on this loop; its queue holds few datagrams
        sender.sendto(b"MH1\nf\0alice@example.test\0Sent\nbogus\nm\0alice@example.test\0", target)
        assert await asyncio.wait_for(sub.get(), 2) == FlagsChanged(ALICE, "Sent", ())
        assert await asyncio.wait_for(sub.get(), 2) == MailboxesChanged(ALICE)
        assert sub.pending() == 0
    sender.close()
    assert store.bus.dropped >= len(garbage)
    assert errors == []
    # The store still works, and a foreign "everything changed" record reaches every subscriber.
    with store.changes.subscribe(ALICE) as sub:
        mb = await store.account(ALICE).mailbox("INBOX")
        await mb.append(b"Subject: y\r\n\r\ny\r\n")
        assert await asyncio.wait_for(sub.get(), 2) == MessagesAdded(ALICE, "INBOX", (1,))
        s2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s2.sendto(b"MH1\no\0\0", target)
        s2.close()
        assert await asyncio.wait_for(sub.get(), 2) == Overflow(ALICE)


async def test_a_peer_whose_queue_is_full_gets_every_change_once_it_reads_again(store: Store, tmp_path: Path) -> None:
    slow = peer(tmp_path / "bus")  # reads nothing for a while: its queue fills
    sent = set()
    for i in range(40):
        store.changes.publish(FlagsChanged(ALICE, f"F{i}", (i + 1,)))
        sent.add(f"f\0{ALICE}\0F{i}".encode())
        await asyncio.sleep(bus.COALESCE * 2)  # one datagram each: more than the queue holds
    assert store.bus is not None and store.bus._backlog  # what the full queue refused is kept
    got: set[bytes] = set()
    await eventually(lambda: bool(got.update(records(slow))) or sent <= got, seconds=5)
    assert not store.bus._backlog
    slow.close()


async def test_two_stores_of_one_process_on_one_bus_hear_each_other(tmp_path: Path) -> None:
    a = Store(tmp_path / "mail", hostname=HOST, fsync=False, bus_dir=tmp_path / "bus")
    b = Store(tmp_path / "mail", hostname=HOST, fsync=False, bus_dir=tmp_path / "bus")
    await a.start()
    await b.start()
    try:
        mb_b = await b.account(ALICE).mailbox("INBOX")
        await mb_b.snapshot()
        with b.changes.subscribe(ALICE) as sub:
            await a.deliver([(ALICE, "INBOX")], b"Subject: z\r\n\r\nz\r\n")
            assert await asyncio.wait_for(sub.get(), 1) == MessagesAdded(ALICE, "INBOX", ())
            assert len((await mb_b.snapshot()).messages) == 1
    finally:
        await a.close()
        await b.close()


async def test_the_app_context_gives_its_store_the_bus_directory_of_the_workers(
        make_config: Callable[..., Any], tmp_path: Path) -> None:
    from mailhaven import app

    ctx = app.build_context(make_config(), bus_dir=tmp_path / "run" / "bus")
    await ctx.store.start()
    try:
        bus_end = ctx.store.bus
        assert bus_end is not None and bus_end.name.startswith(f"{os.getpid()}-")
        assert [p.name for p in (tmp_path / "run" / "bus").iterdir()] == [bus_end.name]
    finally:
        await ctx.store.close()
    assert list((tmp_path / "run" / "bus").iterdir()) == []
    assert app.build_context(make_config()).store.bus_dir is None  # one process: no bus
