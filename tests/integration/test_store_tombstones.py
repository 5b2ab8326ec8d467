"""Expunge tombstones (issue 14 item 2, for QRESYNC's VANISHED, RFC 7162 §3.2): each removed UID is
remembered with the MODSEQ of its removal, whoever removed it (EXPUNGE, MOVE, another program
deleting the file); `vanished_since` answers None, never a wrong "nothing vanished", where the
tombstones do not reach (an index rebuilt or migrated from schema 3, pruned tombstones); a deleted
mailbox takes its tombstones along. Real Store on real files; the tests taking `make_indexes` run
over both index backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailhaven.store import Store, index
from tests.fixtures_postgres import drop_index

HOST = "test.host"
ALICE = "alice@example.test"


async def _filled(root: Path, n: int, make_indexes=index.SqliteIndexes) -> Store:
    store = Store(root, hostname=HOST, fsync=False, indexes=make_indexes())
    await store.start()
    for i in range(n):
        await store.deliver([(ALICE, "INBOX")], b"Subject: m%d\n\nbody\n" % i)
    return store


async def test_expunge_and_move_leave_tombstones_at_their_modseq(tmp_path: Path, make_indexes) -> None:
    store = await _filled(tmp_path / "mail", 5, make_indexes)
    acc = store.account(ALICE)
    mb = await acc.mailbox("INBOX")
    start = (await mb.snapshot()).highestmodseq
    assert await mb.vanished_since(start) == []
    await mb.expunge([2, 3])
    mid = (await mb.snapshot()).highestmodseq
    assert mid > start
    assert await mb.vanished_since(start) == [2, 3]
    assert await mb.vanished_since(mid) == []
    await acc.create_mailbox("Kept")
    dest = await acc.mailbox("Kept")
    await mb.move([5], dest)
    end = (await mb.snapshot()).highestmodseq
    assert await mb.vanished_since(start) == [2, 3, 5]
    assert await mb.vanished_since(mid) == [5]
    assert await mb.vanished_since(end) == []
    assert await dest.vanished_since((await dest.snapshot()).highestmodseq) == []
    await store.close()
    # a restart keeps them (they are in the index)
    store = await _filled(tmp_path / "mail", 0, make_indexes)
    mb = await store.account(ALICE).mailbox("INBOX")
    assert await mb.vanished_since(start) == [2, 3, 5]
    await store.close()


async def test_a_file_deleted_by_another_program_leaves_a_tombstone(tmp_path: Path, make_indexes) -> None:
    root = tmp_path / "mail"
    store = await _filled(root, 3, make_indexes)
    mb = await store.account(ALICE).mailbox("INBOX")
    start = (await mb.snapshot()).highestmodseq
    user = root / "example.test" / "alice"
    victim = next(p for p in sorted((user / "new").iterdir()) + sorted((user / "cur").iterdir()))
    victim.unlink()
    assert await mb.vanished_since(start) == [1]  # noticed by the call itself, not by a later snapshot
    assert [m.uid for m in (await mb.snapshot()).messages] == [2, 3]
    await store.close()


async def test_a_rebuilt_index_does_not_claim_to_know_older_removals(tmp_path: Path, make_indexes) -> None:
    root = tmp_path / "mail"
    store = await _filled(root, 3, make_indexes)
    mb = await store.account(ALICE).mailbox("INBOX")
    start = (await mb.snapshot()).highestmodseq
    await mb.expunge([1])
    await store.close()
    drop_index(store.indexes, root / "example.test" / "alice", ALICE)
    store = await _filled(root, 0, make_indexes)
    mb = await store.account(ALICE).mailbox("INBOX")
    snap = await mb.snapshot()
    assert [m.uid for m in snap.messages] == [2, 3]
    assert await mb.vanished_since(start) is None  # unknown: the client must be told about every UID
    assert await mb.vanished_since(snap.highestmodseq) == []
    await mb.expunge([2])
    assert await mb.vanished_since(snap.highestmodseq) == [2]
    await store.close()


async def test_an_index_of_schema_3_is_migrated_with_tombstones_from_now_on(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    store = await _filled(root, 2)
    mb = await store.account(ALICE).mailbox("INBOX")
    hms = (await mb.snapshot()).highestmodseq
    await store.close()
    db = sqlite3.connect(root / "example.test" / "alice" / index.FILENAME)
    db.execute("DROP TABLE expunged")
    db.execute("ALTER TABLE mailbox DROP COLUMN vanished_floor")
    db.execute("UPDATE meta SET v='3' WHERE k='schema'")
    db.commit()
    db.close()
    store = Store(root, hostname=HOST, fsync=False)
    mb = await store.account(ALICE).mailbox("INBOX")
    assert await mb.vanished_since(hms - 1) is None
    assert await mb.vanished_since(hms) == []
    await mb.expunge([1])
    assert await mb.vanished_since(hms) == [1]
    await store.close()
    db = sqlite3.connect(root / "example.test" / "alice" / index.FILENAME)
    assert db.execute("SELECT v FROM meta WHERE k='schema'").fetchone() == (index.SCHEMA_VERSION,)
    db.close()


async def test_pruning_forgets_the_oldest_and_raises_the_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              make_indexes) -> None:
    monkeypatch.setattr(index, "MAX_TOMBSTONES", 4)
    store = await _filled(tmp_path / "mail", 8, make_indexes)
    mb = await store.account(ALICE).mailbox("INBOX")
    marks = [(await mb.snapshot()).highestmodseq]
    for uid in range(1, 8):  # one EXPUNGE each: tombstones at increasing MODSEQs
        await mb.expunge([uid])
        marks.append((await mb.snapshot()).highestmodseq)
    # 5 tombstones made it prune to 2 (uids 4, 5 kept), then 6 and 7 came: 4..7 remain
    assert await mb.vanished_since(marks[0]) is None
    assert await mb.vanished_since(marks[3]) == [4, 5, 6, 7]
    assert await mb.vanished_since(marks[5]) == [6, 7]
    assert await mb.vanished_since(marks[2]) is None  # uid 3's tombstone is gone: not "[4, 5, 6, 7]"
    await store.close()


async def test_deleting_a_mailbox_drops_its_tombstones(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    store = await _filled(root, 1)
    acc = store.account(ALICE)
    await acc.create_mailbox("Box")
    box = await acc.mailbox("Box")
    await box.append(b"Subject: x\r\n\r\nbody\r\n")
    await box.expunge([1])
    await acc.delete_mailbox("Box")
    await store.close()
    db = sqlite3.connect(root / "example.test" / "alice" / index.FILENAME)
    try:
        ids = {r[0] for r in db.execute("SELECT id FROM mailbox")}
        assert all(r[0] in ids for r in db.execute("SELECT mailbox_id FROM expunged"))
    finally:
        db.close()
