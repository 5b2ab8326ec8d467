"""MODSEQ never goes backwards (issue 10 item 9): a rebuilt index starts above every MODSEQ handed
out while UIDVALIDITY stays, from the reservation kept in the folder's uidlist (RFC 7162); older
uidlists and Dovecot's, which have none, start above any count of changes a client may have seen.

Real Store on real files; the index is deleted as an operator (or a lost disk) would delete it:
the SQLite file, or (make_indexes' other backend) the user's rows in PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailhaven.store import Store, folder, uidlist
from mailhaven.store.index import SqliteIndexes
from tests.fixtures_postgres import drop_index

HOST = "test.host"
ALICE = "alice@example.test"


async def _changes(store: Store, rounds: int) -> tuple[int, int]:
    """Flag changes and an expunge in INBOX; returns (UIDVALIDITY, HIGHESTMODSEQ) afterwards."""
    mb = await store.account(ALICE).mailbox("INBOX")
    uids = [m.uid for m in (await mb.snapshot()).messages]
    seen = 0
    for i in range(rounds):
        mode = "add" if (i // len(uids)) % 2 == 0 else "remove"  # each round changes something
        await mb.store_flags([uids[i % len(uids)]], {"\\Flagged", "$Label"}, mode)
        snap = await mb.snapshot()
        assert snap.highestmodseq > seen  # every change gets a larger MODSEQ
        seen = snap.highestmodseq
    await mb.expunge([uids[-1]])
    snap = await mb.snapshot()
    assert snap.highestmodseq > seen
    assert max(m.modseq for m in snap.messages) <= snap.highestmodseq
    return snap.uidvalidity, snap.highestmodseq


async def _reopened(root: Path, *, drop: bool, make=SqliteIndexes) -> tuple[Store, int, int]:
    user_root = root / "example.test" / "alice"
    store = Store(root, hostname=HOST, fsync=False, indexes=make())
    if drop:
        drop_index(store.indexes, user_root, ALICE)
    await store.start()
    snap = await (await store.account(ALICE).mailbox("INBOX")).snapshot()
    return store, snap.uidvalidity, snap.highestmodseq


@pytest.mark.parametrize("reserve", [None, 3])
async def test_rebuilt_index_never_hands_out_a_modseq_already_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reserve: int | None, make_indexes) -> None:
    if reserve is not None:  # many changes cross several reservations (appended lines), not only one
        monkeypatch.setattr(folder, "MODSEQ_RESERVE", reserve, raising=False)
    root = tmp_path / "mail"
    store = Store(root, hostname=HOST, fsync=False, indexes=make_indexes())
    await store.start()
    for i in range(4):
        await store.deliver([(ALICE, "INBOX")], b"Subject: m%d\n\nbody\n" % i)
    uidvalidity, before = await _changes(store, 12)
    await store.close()

    for n in range(2):  # rebuilt twice: the second rebuild reads what the first one wrote
        store, uv, after = await _reopened(root, drop=True, make=make_indexes)
        assert uv == uidvalidity
        assert after > before  # every message counts as changed: clients fetch all flags again
        mb = await store.account(ALICE).mailbox("INBOX")
        assert all(m.modseq > before for m in (await mb.snapshot()).messages)
        uid = (await mb.snapshot()).messages[0].uid
        await mb.store_flags([uid], {f"$Round{n}"}, "add")
        snap = await mb.snapshot()
        assert snap.highestmodseq > after
        assert [m.modseq for m in snap.messages if m.uid == uid] == [snap.highestmodseq]
        _, before = await _changes(store, 5)
        await store.close()

    # a plain restart keeps the index and its HIGHESTMODSEQ
    store, uv, after = await _reopened(root, drop=False, make=make_indexes)
    assert (uv, after) == (uidvalidity, before)
    await store.close()


async def test_uidlist_without_a_modseq_reservation_starts_above_any_count_of_changes(tmp_path: Path) -> None:
    """A uidlist written before reservations existed (or Dovecot's) keeps UIDVALIDITY and UIDs, and
    MODSEQ starts above the number of changes a counter growing by one per change can have made."""
    root = tmp_path / "mail"
    user = root / "example.test" / "alice"
    for d in ("cur", "new", "tmp"):
        (user / d).mkdir(parents=True)
    keys = ["1600000001.M1P1.old,S=8,W=10", "1600000002.M2P1.old,S=8,W=10"]
    for k in keys:
        (user / "cur" / (k + ":2,S")).write_bytes(b"one\ntwo\n")
    (user / "mailhaven-uidlist").write_text(f"M1 V777 N9\n4 {keys[0]}\n7 {keys[1]}\n")  # the old format
    floor = time.time_ns() // 1000
    store = Store(root, hostname=HOST, fsync=False)
    mb = await store.account(ALICE).mailbox("INBOX")
    snap = await mb.snapshot()
    assert (snap.uidvalidity, [m.uid for m in snap.messages]) == (777, [4, 7])
    assert snap.highestmodseq >= floor
    await mb.store_flags([4], {"\\Flagged"}, "add")
    assert (await mb.snapshot()).highestmodseq > snap.highestmodseq
    await store.close()
    # the reservation is in the file now: the next rebuild starts above it
    got = uidlist.read(user)
    assert got is not None and got.modseq > snap.highestmodseq
    store, uv, after = await _reopened(root, drop=True)
    assert (uv, after > snap.highestmodseq) == (777, True)
    await store.close()


def test_uidlist_modseq_reservations_round_trip_and_old_files_read_as_before(tmp_path: Path) -> None:
    uidlist.rewrite(tmp_path, 1234, 10, {"k1": 3}, fsync=False, modseq=500)
    assert (tmp_path / "mailhaven-uidlist").read_text() == "M1 V1234 N10 H500\n3 k1\n"
    uidlist.append(tmp_path, [(10, "k2")], modseq=1500)
    uidlist.append(tmp_path, [], modseq=900)  # never lowers what was reserved
    got = uidlist.read(tmp_path)
    assert got is not None
    assert (got.uidvalidity, got.uids, got.modseq, got.effective_uidnext) == (1234, {"k1": 3, "k2": 10}, 1500, 11)
    # a file in the format before reservations: same UIDs, MODSEQ not known
    (tmp_path / "mailhaven-uidlist").write_text("M1 V1234 N10\n3 k1\n")
    got = uidlist.read(tmp_path)
    assert got is not None and (got.uids, got.modseq) == ({"k1": 3}, 0)
    # a hostile or absurd reservation is ignored, not trusted
    (tmp_path / "mailhaven-uidlist").write_text(f"M1 V1234 N10 H{1 << 64}\nH12x\n3 k1\n")
    got = uidlist.read(tmp_path)
    assert got is not None and (got.uids, got.modseq) == ({"k1": 3}, 0)
