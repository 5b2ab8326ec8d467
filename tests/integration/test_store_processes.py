"""Several OS processes, each with its own Store, over one mail root (issue 15: worker processes).

The other processes are real ones (tests/store_worker.py run with this interpreter); they and this
test take a snapshot first, so each holds cached folder state before the others write. Then: UIDs
and MODSEQs are never given twice, no flag change is lost, an expunge, a deleted or a renamed
folder in one process is seen by the others, and (with a bus directory) a change in one process
reaches a subscriber in another within a second.
The tests with the `store` fixture run over both index backends (make_indexes): with PostgreSQL
(store/index_pg.py) the processes exclude each other by the user's advisory lock alone (no flock)
and notice each other's commits by the user's change counter.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mailhaven.errors import MailboxNotFound
from mailhaven.store import Expunged, FlagsChanged, MailboxesChanged, MessagesAdded, Store
from mailhaven.store.index_pg import PgIndexes

HOST = "test.host"
ALICE = "alice@example.test"
WORKER = Path(__file__).resolve().parent.parent / "store_worker.py"


class Worker:
    """One tests/store_worker.py process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, root: Path, go: Path, job: dict[str, Any]) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), str(root), str(go), json.dumps(job),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=1 << 24)  # a result is one JSON line
        return cls(proc)

    async def line(self) -> Any:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not raw:
            assert self.proc.stderr is not None
            err = await self.proc.stderr.read()
            raise AssertionError(f"worker ended: {err.decode(errors='replace')[-3000:]}")
        return json.loads(raw)

    async def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        rc = await asyncio.wait_for(self.proc.wait(), 30)
        assert rc == 0


async def start_all(root: Path, tmp_path: Path, jobs: list[dict[str, Any]], store: Store | None = None
                    ) -> tuple[list[Worker], Path]:
    """Start one worker per job and wait until each has its folder loaded (not yet going); with
    `store`'s index in PostgreSQL, theirs too."""
    go = tmp_path / "go"
    if store is not None and isinstance(store.indexes, PgIndexes):
        jobs = [{**job, "index_dsn": store.indexes.database.dsn} for job in jobs]
    workers = [await Worker.start(root, go, job) for job in jobs]
    for w in workers:
        assert await w.line() == "ready"
    return workers, go


def message(i: int) -> bytes:
    return b"From: t@example.test\r\nSubject: m%d\r\n\r\nbody %d\r\n" % (i, i)


@pytest.fixture
async def store(tmp_path: Path, make_indexes):
    s = Store(tmp_path / "mail", hostname=HOST, fsync=False, indexes=make_indexes())
    s.make_indexes = make_indexes  # for another()
    await s.start()
    yield s
    await s.close()


async def another(store: Store) -> Store:
    """A new Store in this process over the same mail and index backend."""
    s = Store(store.root, hostname=HOST, fsync=False, indexes=store.make_indexes())  # type: ignore[attr-defined]
    await s.start()
    return s


async def test_two_processes_appending_and_delivering_to_one_mailbox_never_share_a_uid(
        store: Store, tmp_path: Path) -> None:
    n = 40
    mb = await store.account(ALICE).mailbox("INBOX")
    await mb.snapshot()
    workers, go = await start_all(store.root, tmp_path, [{"user": ALICE, "op": "mixed", "n": n}] * 2, store)
    go.touch()
    results = [await w.line() for w in workers]
    for w in workers:
        await w.finish()

    snap = await mb.snapshot()  # this process's cached state is stale by now
    assert len(snap.messages) == 4 * n
    final = {m.key: m.uid for m in snap.messages}
    assert len(set(final.values())) == 4 * n
    assert snap.uidnext > max(final.values())
    for r in results:
        assert r["appended"] == sorted(r["appended"])  # ascending within each process
        for key, uid in r["seen"].items():  # every process saw each message under its final UID
            assert final.get(key) == uid
    appended = results[0]["appended"] + results[1]["appended"]
    assert len(set(appended)) == 2 * n
    # A fresh process (a new Store) reads the same from the index.
    other = await another(store)
    again = await (await other.account(ALICE).mailbox("INBOX")).snapshot()
    await other.close()
    assert {m.key: m.uid for m in again.messages} == final
    assert again.uidnext == snap.uidnext


async def test_two_processes_changing_flags_of_the_same_messages_lose_no_update_nor_reuse_a_modseq(
        store: Store, tmp_path: Path) -> None:
    mb = await store.account(ALICE).mailbox("INBOX")
    uids = [await mb.append(message(i)) for i in range(30)]
    before = (await mb.snapshot()).highestmodseq
    jobs = [{"user": ALICE, "op": "flags", "uids": uids, "flags": ["kwa", "\\Seen"]},
            {"user": ALICE, "op": "flags", "uids": uids, "flags": ["kwb", "\\Flagged"]}]
    workers, go = await start_all(store.root, tmp_path, jobs, store)
    go.touch()
    results = [await w.line() for w in workers]
    for w in workers:
        await w.finish()

    snap = await mb.snapshot()
    for m in snap.messages:
        assert {"kwa", "kwb", "\\Seen", "\\Flagged"} <= m.flags, m
    given = [ms for r in results for _, ms in r["modseqs"]]
    assert len(given) == 2 * len(uids)
    assert len(set(given)) == len(given)  # never the same MODSEQ twice
    assert min(given) > before
    for r in results:
        own = [ms for _, ms in r["modseqs"]]
        assert own == sorted(own)  # strictly increasing (distinct, checked above)
    last = {uid: max(ms for r in results for u, ms in r["modseqs"] if u == uid) for uid in uids}
    assert {m.uid: m.modseq for m in snap.messages} == last
    assert snap.highestmodseq == max(given)
    # The next change here goes above every MODSEQ the other processes gave.
    info = await mb.store_flags([uids[0]], frozenset({"kwc"}), "add")
    assert info[0].modseq == max(given) + 1


async def test_an_expunge_in_another_process_is_seen_here_and_its_uids_are_not_given_again(
        store: Store, tmp_path: Path) -> None:
    mb = await store.account(ALICE).mailbox("INBOX")
    for i in range(10):
        await mb.append(message(i))
    assert len((await mb.snapshot()).messages) == 10
    workers, go = await start_all(store.root, tmp_path, [
        {"user": ALICE, "op": "expunge", "uids": [8, 9, 10], "append": 2}], store)
    go.touch()
    assert await workers[0].line() == {"expunged": [8, 9, 10], "appended": [11, 12]}
    await workers[0].finish()
    assert await mb.append(message(13)) == 13
    snap = await mb.snapshot()
    assert [m.uid for m in snap.messages] == [*range(1, 8), 11, 12, 13]
    assert snap.uidnext == 14


async def test_a_folder_deleted_or_renamed_by_another_process_is_followed_here(
        store: Store, tmp_path: Path) -> None:
    acc = store.account(ALICE)
    await acc.create_mailbox("Old")
    await acc.create_mailbox("Gone")
    old, gone = await acc.mailbox("Old"), await acc.mailbox("Gone")
    await old.append(message(1))
    await gone.append(message(2))
    workers, go = await start_all(store.root, tmp_path, [
        {"user": ALICE, "op": "folders", "delete": "Gone", "rename": ["Old", "New"]}], store)
    go.touch()
    await workers[0].line()
    await workers[0].finish()
    with pytest.raises(MailboxNotFound):
        await gone.snapshot()
    snap = await old.snapshot()
    assert old.name == "New" and [m.uid for m in snap.messages] == [1]
    assert await old.append(message(3)) == 2
    assert [b.name for b in await acc.list_mailboxes() if b.name in ("Old", "New", "Gone")] == ["New"]


async def test_copies_between_two_users_in_opposite_directions_neither_deadlock_nor_share_a_uid(
        store: Store, tmp_path: Path) -> None:
    bob = "bob@example.test"
    for user in (ALICE, bob):
        mb = await store.account(user).mailbox("INBOX")
        for i in range(5):
            await mb.append(message(i))
    await store.close()  # the workers only
    jobs = [{"user": ALICE, "op": "copyto", "dest": bob, "n": 20, "uids": [1, 2, 3, 4, 5]},
            {"user": bob, "op": "copyto", "dest": ALICE, "n": 20, "uids": [1, 2, 3, 4, 5]}]
    workers, go = await start_all(store.root, tmp_path, jobs, store)
    go.touch()
    results = [await w.line() for w in workers]  # both lock both users: in one order, or a deadlock
    for w in workers:
        await w.finish()
    await store.start()
    for user, copied_in, own in ((bob, results[0], results[1]), (ALICE, results[1], results[0])):
        new = [d for _, d in copied_in["pairs"]] + own["appended"]  # both processes wrote this INBOX
        assert len(new) == len(set(new)) == 20 * 5 + 20
        snap = await (await store.account(user).mailbox("INBOX")).snapshot()
        assert sorted(m.uid for m in snap.messages) == [*range(1, 6), *sorted(new)]


async def test_copies_delivered_here_and_indexed_by_another_process_count_once_in_the_usage(
        store: Store, tmp_path: Path) -> None:
    acc = store.account(ALICE)
    assert await acc.usage() == (0, 0)  # every folder synced once: from now on deliveries are "pending"
    await acc.create_mailbox("Later")  # not open in this process
    for i in range(3):
        await store.deliver([(ALICE, "INBOX")], message(i))
    for i in range(2):
        await store.deliver([(ALICE, "Later")], message(i))
    size = len(message(0))
    assert await acc.usage() == (5 * size, 5)
    workers, go = await start_all(store.root, tmp_path, [{"user": ALICE, "op": "snapshot",
                                                          "mailboxes": ["INBOX", "Later"]}], store)
    go.touch()
    assert await workers[0].line() == {"INBOX": 3, "Later": 2}  # indexed there
    await workers[0].finish()
    assert await acc.usage() == (5 * size, 5)
    assert await acc.folder_usage() == {"INBOX": (3 * size, 3), "Later": (2 * size, 2), "Sent": (0, 0),
                                        "Drafts": (0, 0), "Trash": (0, 0), "Junk": (0, 0), "Archive": (0, 0)}


async def wait_event(sub: Any) -> tuple[Any, float]:
    event = await asyncio.wait_for(sub.get(), 5)
    return event, time.time()


async def test_changes_in_another_process_reach_a_subscriber_here_within_one_second(tmp_path: Path) -> None:
    bus = tmp_path / "run" / "bus"
    store = Store(tmp_path / "mail", hostname=HOST, fsync=False, bus_dir=bus)
    await store.start()
    try:
        mb = await store.account(ALICE).mailbox("INBOX")
        for i in range(3):
            await mb.append(message(i))
        await mb.snapshot()
        workers, go = await start_all(store.root, tmp_path, [
            {"user": ALICE, "op": "changes", "flags": ["\\Flagged"], "create": "Projects", "bus_dir": str(bus),
             "stay": True}])
        with store.changes.subscribe(ALICE) as sub:
            go.touch()
            delivered_at = (await workers[0].line())["delivered_at"]
            event, at = await wait_event(sub)
            assert event == MessagesAdded(ALICE, "INBOX", ())
            assert at - delivered_at < 1.0
            assert len((await mb.snapshot()).messages) == 4
            seen = [event]
            while not isinstance(seen[-1], MailboxesChanged):
                e = (await wait_event(sub))[0]
                if isinstance(e, MailboxesChanged) or not e.uids:  # not our own snapshot's MessagesAdded
                    seen.append(e)
            assert [type(e) for e in seen] == [MessagesAdded, FlagsChanged, Expunged, MailboxesChanged]
            assert seen[1:3] == [FlagsChanged(ALICE, "INBOX", ()), Expunged(ALICE, "INBOX", ())]
        await workers[0].line()
        snap = await mb.snapshot()
        assert [m.uid for m in snap.messages] == [1, 3, 4]
        assert "\\Flagged" in snap.messages[0].flags
        await workers[0].finish()
        assert store.bus is not None and store.bus.received >= 4
    finally:
        await store.close()
    assert list(bus.iterdir()) == []  # each process removed its socket when it closed


async def test_a_process_catching_up_sees_exactly_what_a_fresh_one_reads(store: Store, tmp_path: Path) -> None:
    """Folder.catch_up (the rows changed since) against a full load, after each of many random
    changes made by another Store (its own index connection and lock, as another process has)."""
    import random

    rng = random.Random(15)
    other = await another(store)
    acc, acc2 = store.account(ALICE), other.account(ALICE)
    await acc.create_mailbox("Box")
    here, there = await acc.mailbox("INBOX"), await acc2.mailbox("INBOX")
    box_there = await acc2.mailbox("Box")
    for i in range(5):
        await there.append(message(i))
    try:
        for step in range(80):
            uids = [m.uid for m in (await there.snapshot()).messages]
            pick = rng.sample(uids, min(len(uids), rng.randint(1, 3)))
            op = rng.choice(["append", "deliver", "flags", "flags", "expunge", "move_out", "move_in"])
            if op == "append":
                await there.append(message(step), frozenset({rng.choice(["\\Seen", "kw1", "kw2"])}))
            elif op == "deliver":
                await other.deliver([(ALICE, "INBOX")], message(step))
                await there.snapshot()
            elif op == "flags" and pick:
                await there.store_flags(pick, frozenset({rng.choice(["\\Flagged", "kw1", "kw3"])}),
                                        rng.choice(["add", "remove", "set"]))
            elif op == "expunge" and pick:
                await there.expunge(pick)
            elif op == "move_out" and pick:
                await there.move(pick, box_there)
            elif op == "move_in":
                inside = [m.uid for m in (await box_there.snapshot()).messages]
                if inside:
                    await box_there.move(inside[:2], there)
            fresh = await another(store)
            want = await (await fresh.account(ALICE).mailbox("INBOX")).snapshot()
            await fresh.close()
            got = await here.snapshot()
            assert (got.uidnext, got.highestmodseq) == (want.uidnext, want.highestmodseq), (step, op)
            assert [(m.uid, m.key, m.flags, m.modseq) for m in got.messages] == [
                (m.uid, m.key, m.flags, m.modseq) for m in want.messages], (step, op)
    finally:
        await other.close()
