"""The fast paths of the store under the IMAP performance work: flag changes planned once per
distinct file-name suffix must give each message exactly the name and index row the one-by-one
rules give, whatever mixture of suffixes (none, unsorted letters, unknown letters) is on disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mailhaven.store import Store

HOST = "test.host"
ALICE = "alice@example.test"


@pytest.fixture
async def store(tmp_path: Path):
    s = Store(tmp_path / "mail", hostname=HOST)
    await s.start()
    yield s
    await s.close()


def _put(root: Path, sub: str, name: str) -> None:
    (root / sub / name).write_bytes(b"Subject: x\r\n\r\nbody\r\n")


async def test_store_on_mixed_suffixes_renames_each_file_by_its_own_letters(store: Store) -> None:
    acc = store.account(ALICE)
    box = await acc.mailbox("INBOX")
    root = acc.path
    t = int(time.time()) - 100
    names = {  # key -> (sub, suffix written by "another program")
        f"{t}.M1P1.other": ("new", ""),
        f"{t}.M2P1.other": ("cur", ":2,SR"),  # unsorted letters
        f"{t}.M3P1.other": ("cur", ":2,PS"),  # P (passed) is not an IMAP flag: kept
        f"{t}.M4P1.other": ("cur", ":2,S"),
        f"{t}.M5P1.other": ("cur", ":2,a"),  # a Dovecot keyword letter: kept
        f"{t}.M6P1.other": ("cur", ":2,S"),
    }
    for key, (sub, suffix) in names.items():
        _put(root, sub, key + suffix)
    snap = await box.snapshot()
    uids = [m.uid for m in snap.messages]
    assert len(uids) == 6

    infos = await box.store_flags(uids, {"\\Flagged"}, "add")
    assert [i.flags for i in infos] == [
        {"\\Flagged"}, {"\\Flagged", "\\Seen", "\\Answered"}, {"\\Flagged", "\\Seen"}, {"\\Flagged", "\\Seen"},
        {"\\Flagged"}, {"\\Flagged", "\\Seen"}]
    assert sorted(os.listdir(root / "new")) == []
    assert sorted(os.listdir(root / "cur")) == sorted([
        f"{t}.M1P1.other:2,F", f"{t}.M2P1.other:2,FRS", f"{t}.M3P1.other:2,FPS", f"{t}.M4P1.other:2,FS",
        f"{t}.M5P1.other:2,Fa", f"{t}.M6P1.other:2,FS"])
    # Only messages whose flags change are touched: removing \Seen leaves 1 and 5 alone.
    before = {m.uid: m.modseq for m in (await box.snapshot()).messages}
    await box.store_flags(uids, {"\\Seen"}, "remove")
    after = {m.uid: m.modseq for m in (await box.snapshot()).messages}
    assert [after[u] > before[u] for u in uids] == [False, True, True, True, False, True]
    # A keyword-only change on a message keeps its letters (normalised order) and is indexed.
    await box.store_flags([uids[1]], {"Work"}, "add")
    assert f"{t}.M2P1.other:2,FR" in os.listdir(root / "cur")
    await store.close()
    again = Store(store.root, hostname=HOST)
    try:
        snap2 = await (await again.account(ALICE).mailbox("INBOX")).snapshot()
        assert [m.flags for m in snap2.messages] == [
            {"\\Flagged"}, {"\\Flagged", "\\Answered", "Work"}, {"\\Flagged"}, {"\\Flagged"}, {"\\Flagged"},
            {"\\Flagged"}]
    finally:
        await again.close()


async def test_store_set_mode_replaces_system_flags_and_keywords(store: Store) -> None:
    acc = store.account(ALICE)
    box = await acc.mailbox("INBOX")
    for i in range(3):
        await box.append(b"Subject: %d\r\n\r\nx\r\n" % i, frozenset({"\\Seen", "Old"}) if i else frozenset())
    uids = [m.uid for m in (await box.snapshot()).messages]
    infos = await box.store_flags(uids, {"\\Draft", "New"}, "set")
    assert [i.flags for i in infos] == [{"\\Draft", "New"}] * 3
    assert all(n.endswith(":2,D") for n in os.listdir(acc.path / "cur"))
