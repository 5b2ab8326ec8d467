"""Durable delivery into real Maildirs: order of syscalls, hard links, crashes, failures, load."""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import re
import shutil
import signal
import stat
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mailhaven.errors import BadMailboxName, StoreError
from mailhaven.store import MessagesAdded, Store, maildir, pending

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


async def test_initial_flags_put_each_folders_copy_in_cur_with_its_own_letters(store: Store) -> None:
    # Sieve imap4flags (RFC 5232): the copies of one user share one file (hard links), each folder's
    # name carries its own flags; a folder without flags gets the plain new/ copy; keywords go to the
    # index (the tests below), never into the file name.
    await store.deliver([(ALICE, "INBOX"), (ALICE, "Work"), (ALICE, "Other")], b"Subject: x\r\n\r\nbody\r\n",
                        flags={(ALICE, "INBOX"): ["\\Flagged"], (ALICE, "Work"): ["\\seen", "\\Flagged", "$Label1"]})
    root = store.root / "example.test" / "alice"
    [inbox] = files(root / "cur")
    [work] = files(root / ".Work" / "cur")
    [other] = files(root / ".Other" / "new")
    assert files(root / "new") == files(root / ".Work" / "new") == []
    assert inbox == other + ":2,F" and work == other + ":2,FS"
    assert os.stat(root / "cur" / inbox).st_ino == os.stat(root / ".Work" / "cur" / work).st_ino
    mb = await store.account(ALICE).mailbox("Work")
    [msg] = (await mb.snapshot()).messages
    assert set(msg.flags) == {"\\Seen", "\\Flagged", "$Label1"}


# --- keywords given at delivery (store/pending.py) -------------------------------------------------


def records(folder: Path) -> list[str]:
    return files(folder / pending.DIRNAME)


async def flags_of(store: Store, user: str, folder: str) -> list[frozenset[str]]:
    mb = await store.account(user).mailbox(folder)
    return [m.flags for m in (await mb.snapshot()).messages]


async def test_delivered_keywords_reach_only_their_copy_and_the_record_goes_after_the_sync(store: Store) -> None:
    root = store.root / "example.test" / "alice"
    assert await flags_of(store, ALICE, "INBOX") == []  # indexed before: the next one comes through a sync
    await store.deliver([(ALICE, "INBOX"), (ALICE, "Work"), (BOB, "INBOX")], b"Subject: x\r\n\r\nbody\r\n",
                        flags={(ALICE, "INBOX"): ["$label1", "Work", "\\Flagged"], (ALICE, "Work"): ["\\Seen"]})
    await store.deliver([(ALICE, "INBOX")], b"Subject: y\r\n\r\nplain\r\n")
    [key] = records(root)  # durable before the message was linked; nowhere else
    assert records(root / ".Work") == [] and not (store.root / "example.test" / "bob" / pending.DIRNAME).exists()
    assert (root / pending.DIRNAME / key).read_bytes() == b"$label1 Work\n"
    assert await flags_of(store, ALICE, "INBOX") == [{"$label1", "Work", "\\Flagged"}, set()]
    assert records(root) == []
    assert await flags_of(store, ALICE, "Work") == [{"\\Seen"}]
    assert await flags_of(store, BOB, "INBOX") == [set()]


async def test_delivered_keywords_are_ordinary_keywords_afterwards(store: Store) -> None:
    await store.deliver([(ALICE, "INBOX")], b"hi\n", flags={(ALICE, "INBOX"): ["$label1", "$label2"]})
    mb = await store.account(ALICE).mailbox("INBOX")  # first open of INBOX: a rebuild indexes it
    [m] = (await mb.snapshot()).messages
    assert m.flags == {"$label1", "$label2"}
    [info] = await mb.store_flags([m.uid], {"$label1"}, "remove")
    assert info.flags == {"$label2"}
    await store.close()  # the index holds it: a restart keeps the removal (no record brings it back)
    assert await flags_of(store, ALICE, "INBOX") == [{"$label2"}]


async def test_invalid_keywords_are_ignored_and_at_most_32_kept(store: Store) -> None:
    bad = ["bad(", "two words", "caf\u00e9", "x" * 129, "", "quo\"te", "\\Recent", "\\Bogus", "a]b", "del\x7f"]
    await store.deliver([(ALICE, "INBOX")], b"hi\n", flags={(ALICE, "INBOX"): [*bad, "$ok", "$ok"]})
    many = [f"k{i}" for i in range(40)]
    await store.deliver([(ALICE, "INBOX")], b"ho\n", flags={(ALICE, "INBOX"): ["\\Seen", *many]})
    assert await flags_of(store, ALICE, "INBOX") == [{"$ok"}, {"\\Seen", *many[:pending.MAX_KEYWORDS]}]


async def test_without_keywords_no_record_is_written(store: Store, monkeypatch) -> None:
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    await store.deliver([(ALICE, "INBOX"), (ALICE, "Work")], b"hi\n", flags={(ALICE, "Work"): ["\\Seen"]})
    assert not any(pending.DIRNAME in p for p in opened)
    root = store.root / "example.test" / "alice"
    assert not (root / pending.DIRNAME).exists() and not (root / ".Work" / pending.DIRNAME).exists()


async def test_keyword_record_and_its_directory_are_fsynced_before_the_message_is_linked(
        store: Store, monkeypatch) -> None:
    await store.deliver([(ALICE, "INBOX")], b"first\n", flags={(ALICE, "INBOX"): ["$x"]})  # directory exists
    calls: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (calls.append(("rename", str(b))), real_rename(a, b))[1])
    await store.deliver([(ALICE, "INBOX")], b"second\n", flags={(ALICE, "INBOX"): ["$label1"]})
    root = store.root / "example.test" / "alice"
    [key] = [k for k in records(root) if ("fsync", str(root / pending.DIRNAME / k)) in calls]
    assert calls.index(("fsync", str(root / pending.DIRNAME / key))) < calls.index(
        ("fsync", str(root / pending.DIRNAME))) < calls.index(("rename", str(root / "new" / key)))


async def test_failed_delivery_leaves_no_keyword_record(store: Store, monkeypatch) -> None:
    real_rename = os.rename

    def rename(a, b) -> None:
        if "/new/" in str(b):
            raise OSError(errno.EIO, "I/O error")
        real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(StoreError):
        await store.deliver([(ALICE, "INBOX")], b"hi\n", flags={(ALICE, "INBOX"): ["$label1"]})
    root = store.root / "example.test" / "alice"
    assert files(root / "new") == [] and records(root) == []


async def test_keywords_into_a_folder_removed_behind_the_stores_back(store: Store) -> None:
    await store.deliver([(ALICE, "Junk")], b"one\n")
    junk = store.root / "example.test" / "alice" / ".Junk"
    shutil.rmtree(junk)
    await store.deliver([(ALICE, "Junk")], b"two\n", flags={(ALICE, "Junk"): ["$Junk"]})
    assert await flags_of(store, ALICE, "Junk") == [{"$Junk"}]


async def test_rebuild_applies_pending_records_and_survives_leftover_ones(store: Store) -> None:
    root = store.root / "example.test" / "alice"
    await store.deliver([(ALICE, "INBOX")], b"one\n", flags={(ALICE, "INBOX"): ["$one"]})
    assert await flags_of(store, ALICE, "INBOX") == [{"$one"}]
    await store.deliver([(ALICE, "INBOX")], b"two\n", flags={(ALICE, "INBOX"): ["$two"]})
    [two] = records(root)
    # Leftovers of every kind: garbage, torn, not ASCII, a directory, a symlink, no message, too long.
    d = root / pending.DIRNAME
    (d / "garbage").write_bytes(b"\x00\xff(((\n")
    (d / "torn").write_bytes(b"$a $b")
    (d / "latin").write_bytes("caf\u00e9\n".encode())
    (d / "adir").mkdir()
    (d / "alink").symlink_to(d / two)
    (d / "big").write_bytes(b"x " * 10_000 + b"\n")
    old = time.time() - maildir.STALE_TMP_SECONDS - 60
    (d / "1.M1P1Q1.gone,S=1,W=1").write_bytes(b"$lost\n")
    os.utime(d / "1.M1P1Q1.gone,S=1,W=1", (old, old))
    await store.close()
    os.unlink(root / "mailhaven-index.sqlite")  # lost: rebuilt from the files (keywords only from records)
    assert await flags_of(store, ALICE, "INBOX") == [set(), {"$two"}]
    assert sorted(records(root)) == ["adir", "alink", "big", "garbage", "latin", "torn"]  # young, unknown: kept
    # Leftovers whose message is indexed go at the next sync that finds a new file.
    (d / two).write_bytes(b"$again\n")
    await store.deliver([(ALICE, "INBOX")], b"three\n")
    assert await flags_of(store, ALICE, "INBOX") == [set(), {"$two"}, set()]
    assert two not in records(root)


async def test_heads_give_each_user_a_file_of_their_own_with_the_head_on_top(store: Store) -> None:
    """deliver(heads=): a per-user head (Delivered-To) above the shared body; a user's folders
    still share one file, S= and W= count the head, and the index sees the whole message."""
    heads = {ALICE: b"Delivered-To: alice@example.test\r\n", "bob@Example.TEST": b"Delivered-To: bob\r\n"}
    await store.deliver([(ALICE, "INBOX"), (BOB, "INBOX"), (ALICE, "Junk")], b"Subject: s\n\nbody\n", heads=heads)
    a = store.root / "example.test" / "alice"
    b = store.root / "example.test" / "bob"
    [an], [jn], [bn] = files(a / "new"), files(a / ".Junk" / "new"), files(b / "new")
    assert an == jn and an != bn
    assert os.stat(a / "new" / an).st_ino == os.stat(a / ".Junk" / "new" / jn).st_ino
    for path, head in ((a / "new" / an, heads[ALICE]), (b / "new" / bn, b"Delivered-To: bob\r\n")):
        data = path.read_bytes()
        assert data == head + b"Subject: s\r\n\r\nbody\r\n"
        m = NAME_RE.match(path.name)
        assert m and int(m.group(1)) == int(m.group(2)) == len(data)
    assert files(a / "tmp") == [] and files(b / "tmp") == []
    snap = await (await store.account(BOB).mailbox("INBOX")).snapshot()
    assert [mi.size for mi in snap.messages] == [len((b / "new" / bn).read_bytes())]


async def test_heads_delivery_is_all_or_nothing_across_users(store: Store) -> None:
    bob_root = store.root / "example.test" / "bob"
    bob_root.mkdir(parents=True)
    (bob_root / "new").write_bytes(b"not a directory")  # bob's write fails after alice's succeeded
    with pytest.raises(StoreError):
        await store.deliver([(ALICE, "INBOX"), (BOB, "INBOX")], b"x\n",
                            heads={ALICE: b"Delivered-To: a\r\n", BOB: b"Delivered-To: b\r\n"})
    a = store.root / "example.test" / "alice"
    assert files(a / "new") == [] and files(a / "tmp") == []
    with pytest.raises(StoreError):  # and the keyword record of alice's copy goes with it
        await store.deliver([(ALICE, "INBOX"), (BOB, "INBOX")], b"x\n", flags={(ALICE, "INBOX"): ["$label1"]},
                            heads={ALICE: b"Delivered-To: a\r\n", BOB: b"Delivered-To: b\r\n"})
    assert files(a / "new") == [] and records(a) == []


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


async def test_concurrent_deliveries_into_one_folder_share_the_fsync_of_new(store: Store, monkeypatch) -> None:
    await store.deliver([(ALICE, "INBOX")], b"first\n")  # folders exist
    new = store.root / "example.test" / "alice" / "new"
    real_fsync = os.fsync
    dir_fsyncs = 0

    def fsync(fd: int) -> None:
        nonlocal dir_fsyncs
        if stat.S_ISDIR(os.fstat(fd).st_mode) and os.readlink(f"/proc/self/fd/{fd}") == str(new):
            dir_fsyncs += 1
            time.sleep(0.05)  # a slow journal commit: deliveries pile up behind it
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    await asyncio.gather(*(store.deliver([(ALICE, "INBOX")], b"m %d\n" % i) for i in range(20)))
    assert len(files(new)) == 21
    assert 1 <= dir_fsyncs <= 6, dir_fsyncs  # 20 without group commit; typically 2 or 3


def _run_members(ds: maildir.DirSync, n: int, path: Path, clock: itertools.count[int]) -> list[tuple[int, int, object]]:
    """n threads call ds.sync(path) at about the same time: (called, returned, error) of each."""
    out: list[tuple[int, int, object]] = []
    lock = threading.Lock()

    def member() -> None:
        called = next(clock)
        error: object = None
        try:
            ds.sync(path)
        except OSError as e:
            error = e
        with lock:
            out.append((called, next(clock), error))

    threads = [threading.Thread(target=member) for _ in range(n)]
    for t in threads:
        t.start()
        time.sleep(0.002)
    for t in threads:
        t.join()
    return out


def test_dir_sync_returns_only_after_an_fsync_that_started_after_the_call() -> None:
    clock = itertools.count()
    fsyncs: list[tuple[int, int]] = []

    def slow_fsync(path: Path) -> None:
        start = next(clock)
        time.sleep(0.02)
        fsyncs.append((start, next(clock)))

    ds = maildir.DirSync(slow_fsync)
    members = _run_members(ds, 20, Path("/nowhere/new"), clock)
    assert len(members) == 20 and all(err is None for _, _, err in members)
    for called, returned, _ in members:
        # Durable: some fsync began after this caller's rename (made before it called) and ended
        # before it was told so.
        assert any(called < start and end < returned for start, end in fsyncs), (called, returned, fsyncs)
    assert ds.fsyncs == len(fsyncs) < 20 and ds.requests == 20


def test_dir_sync_error_fails_every_caller_it_covered_and_only_those() -> None:
    clock = itertools.count()
    calls = 0

    def failing_second(path: Path) -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.02)
        if calls == 2:
            raise OSError(errno.EIO, "journal commit failed")

    ds = maildir.DirSync(failing_second)
    members = _run_members(ds, 10, Path("/nowhere/new"), clock)
    failed = [m for m in members if m[2] is not None]
    assert failed and len(failed) < 10  # the first caller's own fsync succeeded
    assert all(isinstance(e, OSError) and e.errno == errno.EIO for _, _, e in failed)
    ds.sync(Path("/nowhere/new"))  # a later caller gets a fresh fsync, not the old error


async def test_dir_fsync_failure_undoes_the_delivery(store: Store, monkeypatch) -> None:
    await store.deliver([(ALICE, "INBOX")], b"first\n")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StoreError):
        await store.deliver([(ALICE, "INBOX")], b"second\n")
    root = store.root / "example.test" / "alice"
    assert len(files(root / "new")) == 1 and files(root / "tmp") == []


async def test_folder_removed_behind_the_stores_back_is_created_again(store: Store) -> None:
    await store.deliver([(ALICE, "Junk")], b"one\n")
    junk = store.root / "example.test" / "alice" / ".Junk"
    shutil.rmtree(junk)  # e.g. deleted by hand or by another tool between two deliveries
    await store.deliver([(ALICE, "Junk")], b"two\n")
    assert len(files(junk / "new")) == 1
    shutil.rmtree(junk / "new")  # only new/ gone: the rename fails, the folder is completed
    await store.deliver([(ALICE, "Junk")], b"three\n")
    assert len(files(junk / "new")) == 1 and (junk / "cur").is_dir() and files(junk / "tmp") == []


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
