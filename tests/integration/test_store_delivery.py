"""Durable delivery into real Maildirs: order of syscalls, hard links, crashes, failures, load."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mailhaven.errors import BadMailboxName, StoreError
from mailhaven.store import MessagesAdded, Store, maildir

HOST = "test.host"
ALICE = "alice@example.test"
BOB = "bob@example.test"
NAME_RE = re.compile(r"^\d+\.M\d+P\d+Q\d+\.test\.host,S=(\d+),W=(\d+)$")


@pytest.fixture
async def store(tmp_path: Path):
    s = Store(tmp_path / "mail", hostname=HOST)
    await s.start()
    yield s
    await s.close()


def files(d: Path) -> list[str]:
    return sorted(os.listdir(d)) if d.exists() else []


async def test_delivery_fsyncs_file_then_renames_then_fsyncs_directory(store: Store, monkeypatch) -> None:
    calls: list[tuple[str, str]] = []
    real_fsync, real_rename, real_link = os.fsync, os.rename, os.link

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(a, b) -> None:
        calls.append(("rename", str(b)))
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "link", lambda a, b: (calls.append(("link", str(b))), real_link(a, b)))
    await store.deliver([(ALICE, "INBOX")], b"Subject: x\n\nhello\n")
    root = store.root / "example.test" / "alice"
    [name] = files(root / "new")
    kinds = [(k, p) for k, p in calls if name in p or p.endswith("/new")]
    assert kinds == [
        ("fsync", str(root / "tmp" / name)),
        ("rename", str(root / "new" / name)),
        ("fsync", str(root / "new")),
    ]
    assert files(root / "tmp") == []


async def test_delivered_file_name_and_content_are_maildir_crlf(store: Store) -> None:
    await store.deliver([(ALICE, "INBOX")], b"Subject: x\n\nline1\r\nline2\n")
    new = store.root / "example.test" / "alice" / "new"
    [name] = files(new)
    m = NAME_RE.match(name)
    assert m, name
    data = (new / name).read_bytes()
    assert data == b"Subject: x\r\n\r\nline1\r\nline2\r\n"
    assert int(m.group(1)) == int(m.group(2)) == len(data)
    mb = await store.account(ALICE).mailbox("INBOX")
    snap = await mb.snapshot()
    assert [mi.size for mi in snap.messages] == [len(data)]
    assert await mb.read(snap.messages[0].uid) == data


async def test_multi_recipient_delivery_hard_links_one_file(store: Store) -> None:
    await store.deliver([(ALICE, "INBOX"), (BOB, "INBOX"), (ALICE, "Junk"), (ALICE, "inbox")], b"hi\n")
    a = store.root / "example.test" / "alice"
    b = store.root / "example.test" / "bob"
    paths = [a / "new", b / "new", a / ".Junk" / "new"]
    names_ = [files(p) for p in paths]
    assert all(len(n) == 1 for n in names_)
    inodes = {os.stat(p / n[0]).st_ino for p, n in zip(paths, names_, strict=True)}
    assert len(inodes) == 1
    assert os.stat(paths[0] / names_[0][0]).st_nlink == 3
    assert files(a / "tmp") == [] and files(b / "tmp") == []


async def test_delivery_to_missing_folder_creates_it_with_parents(store: Store) -> None:
    await store.deliver([(ALICE, "Lists.Python")], b"x\n")
    acc = store.account(ALICE)
    names_ = [mi.name for mi in await acc.list_mailboxes()]
    assert "Lists" in names_ and "Lists.Python" in names_
    assert (acc.path / ".Lists.Python" / "maildirfolder").exists()
    snap = await (await acc.mailbox("Lists.Python")).snapshot()
    assert len(snap.messages) == 1


async def test_delivery_publishes_messages_added(store: Store) -> None:
    with store.changes.subscribe(ALICE) as sub:
        await store.deliver([(ALICE, "INBOX"), (BOB, "INBOX")], b"x\n")
        event = await asyncio.wait_for(sub.get(), 1.0)
        assert event == MessagesAdded(ALICE, "INBOX", ())
        assert sub.get_nowait() is None  # bob's event is not alice's
        mb = await store.account(ALICE).mailbox("INBOX")
        await mb.snapshot()
    assert store.changes.subscriber_count() == 0


async def test_unsafe_targets_are_refused_before_writing(store: Store) -> None:
    with pytest.raises(BadMailboxName):
        await store.deliver([(ALICE, "INBOX"), ("../../etc@example.test", "INBOX")], b"x\n")
    with pytest.raises(BadMailboxName):
        await store.deliver([(ALICE, "../x")], b"x\n")
    assert not (store.root / "example.test" / "alice").exists()


async def test_failure_on_one_target_leaves_no_message_anywhere(store: Store) -> None:
    # bob's new/ is a regular file: a real failure even for root (permission bits would not stop root)
    await store.deliver([(BOB, "INBOX")], b"first\n")
    bob = store.root / "example.test" / "bob"
    for f in files(bob / "new"):
        os.unlink(bob / "new" / f)
    os.rmdir(bob / "new")
    (bob / "new").write_bytes(b"")
    with pytest.raises(StoreError):
        await store.deliver([(ALICE, "INBOX"), (ALICE, "Junk"), (BOB, "INBOX")], b"second\n")
    alice = store.root / "example.test" / "alice"
    for d in (alice / "new", alice / "tmp", alice / ".Junk" / "new", alice / ".Junk" / "tmp", bob / "tmp"):
        assert files(d) == [], d
    snap = await (await store.account(ALICE).mailbox("INBOX")).snapshot()
    assert snap.messages == []


async def test_failure_of_the_user_folder_itself_raises_store_error(store: Store) -> None:
    (store.root / "example.test").mkdir(parents=True)
    (store.root / "example.test" / "carol").write_bytes(b"not a directory")
    with pytest.raises(StoreError):
        await store.deliver([(ALICE, "INBOX"), ("carol@example.test", "INBOX")], b"x\n")
    assert files(store.root / "example.test" / "alice" / "new") == []


async def test_thousand_concurrent_deliveries_give_thousand_files_and_uids(store: Store) -> None:
    n = 1000
    await asyncio.gather(*(store.deliver([(ALICE, "INBOX")], b"Subject: %d\n\nbody\n" % i)
                           for i in range(n)))
    new = store.root / "example.test" / "alice" / "new"
    assert len(files(new)) == n
    snap = await (await store.account(ALICE).mailbox("INBOX")).snapshot()
    uids = [mi.uid for mi in snap.messages]
    assert len(uids) == n and len(set(uids)) == n
    assert uids == sorted(uids) and snap.uidnext > max(uids)
    assert len({mi.key for mi in snap.messages}) == n


async def test_slow_disk_does_not_block_the_event_loop(store: Store, monkeypatch) -> None:
    await store.account(ALICE).list_mailboxes()  # folders exist before the disk turns slow
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:  # a slow disk: every fsync takes 200 ms
        time.sleep(0.2)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    message = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" * 1000
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - t - 0.005)

    task = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(store.deliver([(ALICE, "INBOX")], message) for _ in range(4)))
        mb = await store.account(ALICE).mailbox("INBOX")
        await mb.append(message)
    finally:
        done.set()
        await task
    assert time.perf_counter() - t0 >= 0.4  # the slow fsyncs really happened
    assert worst < 0.1


WRITER = textwrap.dedent("""
    import asyncio, os, stat, sys, time
    from pathlib import Path
    from mailhaven.store import Store

    real_fsync = os.fsync
    def fsync_then_hang(fd):
        real_fsync(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return  # directories of the new user's folders
        # The tmp file is written and fsynced; the rename into new/ has not happened yet.
        print("written", flush=True)
        time.sleep(3600)
    os.fsync = fsync_then_hang
    store = Store(Path(sys.argv[1]), hostname="test.host")
    asyncio.run(store.deliver([("alice@example.test", "INBOX")], b"x" * (4 << 20)))
""")


async def test_writer_killed_mid_delivery_leaves_nothing_and_start_cleans_tmp(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, str(root),
                                                stdout=asyncio.subprocess.PIPE)
    alice = root / "example.test" / "alice"
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"written"
        [stale] = files(alice / "tmp")
        assert (alice / "tmp" / stale).stat().st_size == 4 << 20
        os.kill(proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert files(alice / "new") == []
    # Another host's fresh tmp file is kept (its writer may be alive).
    (alice / ".Junk" / "tmp" / "1.M1P1Q1.otherhost").write_bytes(b"in progress elsewhere")
    store = Store(root, hostname="test.host")
    assert await store.start() == 1
    assert files(alice / "tmp") == []
    assert files(alice / ".Junk" / "tmp") == ["1.M1P1Q1.otherhost"]
    snap = await (await store.account(ALICE).mailbox("INBOX")).snapshot()
    assert snap.messages == []
    await store.close()


def test_tmp_files_of_other_hosts_are_removed_after_36_hours(tmp_path: Path) -> None:
    (tmp_path / "1.M1P1Q1.otherhost").write_bytes(b"x")
    (tmp_path / "foreign-name").write_bytes(b"x")
    assert maildir.clean_tmp(tmp_path, HOST, time.time() + 35 * 3600) == 0
    assert maildir.clean_tmp(tmp_path, HOST, time.time() + 37 * 3600) == 2
    assert files(tmp_path) == []
