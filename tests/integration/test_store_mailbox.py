"""Mailbox behaviour on real files: external changes, index rebuild, migration, flags, folders.

The tests with the `store` fixture run over both index backends (make_indexes: SQLite files and
PostgreSQL, store/index_pg.py): the same behaviour from each."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from mailhaven.errors import BadMailboxName, MailboxExists, MailboxNotFound, MailError
from mailhaven.store import (
    Expunged,
    FlagsChanged,
    MailboxesChanged,
    MailboxHasChildren,
    MessageNotFound,
    MessagesAdded,
    Overflow,
    Store,
    changes,
)
from mailhaven.store.index_pg import PgIndexes
from tests.fixtures_postgres import drop_index

HOST = "test.host"
ALICE = "alice@example.test"


@pytest.fixture
async def store(tmp_path: Path, make_indexes):
    s = Store(tmp_path / "mail", hostname=HOST, indexes=make_indexes())
    s.make_indexes = make_indexes  # for again()
    await s.start()
    yield s
    await s.close()


async def again(store: Store) -> Store:
    """Another Store over the same mail and index backend (a restart)."""
    s = Store(store.root, hostname=HOST, indexes=store.make_indexes())  # type: ignore[attr-defined]
    await s.start()
    return s


def age(*dirs: Path, seconds: float = 60) -> None:
    """Make directory mtimes old, as they are between bursts of activity."""
    t = time.time() - seconds
    for d in dirs:
        os.utime(d, (t, t))


async def deliver_n(store: Store, n: int, user: str = ALICE, folder: str = "INBOX") -> None:
    for i in range(n):
        await store.deliver([(user, folder)], b"Subject: m%d\n\nbody %d\n" % (i, i))


# --- first access and listing -------------------------------------------------------------------


async def test_first_access_creates_inbox_and_special_use_folders(store: Store) -> None:
    acc = store.account(ALICE)
    boxes = await acc.list_mailboxes()
    assert [b.name for b in boxes] == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    uses = {b.name: b.special_use for b in boxes}
    assert uses == {"INBOX": None, "Archive": "\\Archive", "Drafts": "\\Drafts", "Junk": "\\Junk",
                    "Sent": "\\Sent", "Trash": "\\Trash"}
    for d in ("cur", "new", "tmp"):
        assert (acc.path / d).is_dir()
        assert (acc.path / ".Sent" / d).is_dir()
    assert (acc.path / ".Sent" / "maildirfolder").is_file()
    assert not (acc.path / "maildirfolder").exists()
    assert acc.path == store.root / "example.test" / "alice"


async def test_unknown_mailbox_is_not_found_and_bad_names_are_refused(store: Store) -> None:
    acc = store.account(ALICE)
    with pytest.raises(MailboxNotFound):
        await acc.mailbox("Nope")
    for bad in ("../x", "a..b", "/abs", "a/b", ""):
        with pytest.raises(BadMailboxName):
            await acc.mailbox(bad)
    with pytest.raises(BadMailboxName):
        store.account("../../etc/passwd@example.test")


# --- messages -----------------------------------------------------------------------------------


async def test_append_returns_ascending_uids_and_keeps_internaldate_and_flags(store: Store) -> None:
    mb = await store.account(ALICE).mailbox("INBOX")
    u1 = await mb.append(b"a\n", frozenset({"\\Seen", "$Label1"}), internaldate=1_000_000_000.0)
    u2 = await mb.append(b"b\r\n")
    assert u2 > u1
    snap = await mb.snapshot()
    first, second = snap.messages
    assert (first.uid, first.flags, first.internaldate, first.size) == (
        u1, frozenset({"\\Seen", "$Label1"}), 1_000_000_000.0, 3)
    assert second.flags == frozenset()
    assert snap.uidnext == u2 + 1
    assert await mb.read(u1) == b"a\r\n"
    [name] = [n for n in os.listdir(mb.account.path / "cur") if n.startswith(first.key)]
    assert name.endswith(":2,S")
    assert os.stat(mb.account.path / "cur" / name).st_mtime == 1_000_000_000.0


async def test_flags_round_trip_through_file_names_and_index(store: Store, tmp_path: Path) -> None:
    await deliver_n(store, 2)
    acc = store.account(ALICE)
    mb = await acc.mailbox("INBOX")
    snap = await mb.snapshot()
    u1, u2 = (m.uid for m in snap.messages)
    all5 = {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"}
    infos = await mb.store_flags([u1], all5 | {"\\Recent", "Work"}, "add")
    assert infos[0].flags == frozenset(all5 | {"Work"})
    assert infos[0].modseq > snap.highestmodseq
    assert os.listdir(acc.path / "new") == [snap.messages[1].key]  # untouched one stays in new/
    [name] = os.listdir(acc.path / "cur")
    assert name == snap.messages[0].key + ":2,DFRST"
    infos = await mb.store_flags([u1, u2, 999], {"\\seen", "Work"}, "remove")
    assert [i.uid for i in infos] == [u1, u2]
    assert infos[0].flags == frozenset(all5 - {"\\Seen"})
    infos = await mb.store_flags([u1], {"\\Flagged", "Other"}, "set")
    assert infos[0].flags == frozenset({"\\Flagged", "Other"})
    with pytest.raises(ValueError):
        await mb.store_flags([u1], {"\\Seen"}, "toggle")  # type: ignore[arg-type]
    before = (await mb.snapshot()).highestmodseq
    await mb.store_flags([u1], {"\\Flagged"}, "add")  # no change: no new modseq
    assert (await mb.snapshot()).highestmodseq == before
    # Keywords live in the index and survive a restart.
    await store.close()
    store2 = await again(store)
    snap2 = await (await store2.account(ALICE).mailbox("INBOX")).snapshot()
    assert snap2.messages[0].flags == frozenset({"\\Flagged", "Other"})
    await store2.close()


async def test_copy_hard_links_and_move_renames_with_new_uids(store: Store) -> None:
    await deliver_n(store, 3)
    acc = store.account(ALICE)
    inbox = await acc.mailbox("INBOX")
    arch = await acc.mailbox("Archive")
    u = [m.uid for m in (await inbox.snapshot()).messages]
    await inbox.store_flags([u[0]], {"\\Seen", "Kw"}, "add")
    pairs = await inbox.copy([u[0], u[1], 12345], arch)
    assert [p[0] for p in pairs] == [u[0], u[1]]
    assert [p[1] for p in pairs] == sorted(p[1] for p in pairs)
    asnap = await arch.snapshot()
    assert [m.uid for m in asnap.messages] == [p[1] for p in pairs]
    src0 = (await inbox.snapshot()).messages[0]
    assert asnap.messages[0].flags == frozenset({"\\Seen", "Kw"})
    assert asnap.messages[0].internaldate == src0.internaldate
    ino = {os.stat(acc.path / "cur" / n).st_ino for n in os.listdir(acc.path / "cur")}
    assert any(os.stat(acc.path / ".Archive" / "cur" / n).st_ino in ino
               for n in os.listdir(acc.path / ".Archive" / "cur"))
    moved = await inbox.move([u[2]], arch)
    assert moved[0][1] > pairs[-1][1]
    assert [m.uid for m in (await inbox.snapshot()).messages] == [u[0], u[1]]
    assert await arch.read(moved[0][1]) == b"Subject: m2\r\n\r\nbody 2\r\n"
    with pytest.raises(MessageNotFound):
        await inbox.read(u[2])
    # RFC 6851 allows MOVE into the mailbox itself (Dovecot does it): a new UID, the old one gone,
    # same flags, date and content; the file is renamed, not doubled.
    before = (await inbox.snapshot()).messages[1]
    data = await inbox.read(u[1])
    files = len(os.listdir(acc.path / "cur")) + len(os.listdir(acc.path / "new"))
    [(s, d)] = await inbox.move([u[1]], await acc.mailbox("inbox"))
    after = {m.uid: m for m in (await inbox.snapshot()).messages}
    assert s == u[1] and d > moved[0][1] and u[1] not in after
    assert (after[d].flags, after[d].internaldate) == (before.flags, before.internaldate)
    assert await inbox.read(d) == data
    assert len(os.listdir(acc.path / "cur")) + len(os.listdir(acc.path / "new")) == files
    # RFC 3501 allows COPY into the selected mailbox itself: new UIDs, same flags and date.
    [(s, d)] = await inbox.copy([u[0]], await acc.mailbox("inbox"))
    copies = {m.uid: m for m in (await inbox.snapshot()).messages}
    assert s == u[0] and d > u[2] and copies[d].flags == copies[s].flags
    assert copies[d].internaldate == copies[s].internaldate
    assert await inbox.read(d) == await inbox.read(s)


async def test_expunge_removes_files_and_uids_are_never_reused(store: Store) -> None:
    await deliver_n(store, 3)
    acc = store.account(ALICE)
    mb = await acc.mailbox("INBOX")
    u = [m.uid for m in (await mb.snapshot()).messages]
    assert await mb.expunge([u[2], u[1], 777]) == [u[1], u[2]]
    assert len(os.listdir(acc.path / "new")) == 1
    with pytest.raises(MessageNotFound):
        await mb.read(u[2])
    new_uid = await mb.append(b"x\n")
    assert new_uid == u[2] + 1
    snap = await mb.snapshot()
    assert [m.uid for m in snap.messages] == [u[0], new_uid]


# --- changes made by other programs ---------------------------------------------------------------


async def test_changes_by_other_programs_are_picked_up(store: Store) -> None:
    await deliver_n(store, 3)
    acc = store.account(ALICE)
    mb = await acc.mailbox("INBOX")
    snap = await mb.snapshot()
    u = [m.uid for m in snap.messages]
    root = acc.path
    age(root / "new", root / "cur")
    await mb.snapshot()  # directories are now "old": the next snapshot trusts their mtimes
    with store.changes.subscribe(ALICE) as sub:
        # 1. a file dropped into new/ by another MDA (bare LF, no S=/W=)
        (root / "tmp" / "1700000000.foreign.mda").write_bytes(b"Subject: ext\n\nbody\n")
        os.rename(root / "tmp" / "1700000000.foreign.mda", root / "new" / "1700000000.foreign.mda")
        # 2. one deleted, 3. one's flags changed by renaming it into cur/
        os.unlink(root / "new" / snap.messages[0].key)
        os.rename(root / "new" / snap.messages[1].key, root / "cur" / (snap.messages[1].key + ":2,FS"))
        snap2 = await mb.snapshot()
        by_uid = {m.uid: m for m in snap2.messages}
        assert u[0] not in by_uid
        assert by_uid[u[1]].flags == frozenset({"\\Flagged", "\\Seen"})
        assert by_uid[u[1]].modseq > snap.highestmodseq
        new_uid = max(by_uid)
        assert new_uid == snap.uidnext
        assert by_uid[new_uid].size == len(b"Subject: ext\r\n\r\nbody\r\n")
        assert by_uid[new_uid].key == "1700000000.foreign.mda"
        assert await mb.read(new_uid) == b"Subject: ext\r\n\r\nbody\r\n"
        events = [sub.get_nowait() for _ in range(sub.pending())]
        assert Expunged(ALICE, "INBOX", (u[0],)) in events
        assert MessagesAdded(ALICE, "INBOX", (new_uid,)) in events
        assert FlagsChanged(ALICE, "INBOX", (u[1],)) in events


async def test_read_follows_a_file_renamed_by_another_program(store: Store) -> None:
    await deliver_n(store, 1)
    acc = store.account(ALICE)
    mb = await acc.mailbox("INBOX")
    [m] = (await mb.snapshot()).messages
    os.rename(acc.path / "new" / m.key, acc.path / "cur" / (m.key + ":2,S"))
    assert await mb.read(m.uid) == b"Subject: m0\r\n\r\nbody 0\r\n"
    infos = await mb.store_flags([m.uid], {"\\Answered"}, "add")
    assert infos[0].flags == frozenset({"\\Seen", "\\Answered"})
    os.unlink(acc.path / "cur" / (m.key + ":2,RS"))
    with pytest.raises(MessageNotFound):
        await mb.read(m.uid)


# --- index loss, uidlist, migration ---------------------------------------------------------------


def _drop_index(store: Store, user_root: Path) -> None:
    drop_index(store.indexes, user_root, ALICE)


async def test_deleted_index_is_rebuilt_with_the_same_uids(store: Store) -> None:
    await deliver_n(store, 5)
    acc = store.account(ALICE)
    mb = await acc.mailbox("INBOX")
    snap = await mb.snapshot()
    await mb.expunge([snap.messages[4].uid, snap.messages[1].uid])
    await mb.store_flags([snap.messages[0].uid], {"\\Seen"}, "add")
    await store.deliver([(ALICE, "INBOX")], b"late\n")
    before = await mb.snapshot()
    sent = await acc.mailbox("Sent")
    await sent.append(b"sent\n")
    sent_before = await sent.snapshot()
    await store.close()
    _drop_index(store, acc.path)

    store2 = await again(store)
    mb2 = await store2.account(ALICE).mailbox("INBOX")
    after = await mb2.snapshot()
    assert after.uidvalidity == before.uidvalidity
    assert [(m.uid, m.key, m.flags, m.size) for m in after.messages] == \
        [(m.uid, m.key, m.flags, m.size) for m in before.messages]
    assert after.uidnext == before.uidnext
    assert await mb2.append(b"next\n") == before.uidnext  # never reuses an expunged UID
    sent_after = await (await store2.account(ALICE).mailbox("Sent")).snapshot()
    assert (sent_after.uidvalidity, [m.uid for m in sent_after.messages]) == \
        (sent_before.uidvalidity, [m.uid for m in sent_before.messages])
    await store2.close()


async def test_lost_index_and_uidlist_change_uidvalidity(store: Store) -> None:
    await deliver_n(store, 2)
    acc = store.account(ALICE)
    before = await (await acc.mailbox("INBOX")).snapshot()
    await store.close()
    _drop_index(store, acc.path)
    (acc.path / "mailhaven-uidlist").unlink()
    store2 = await again(store)
    after = await (await store2.account(ALICE).mailbox("INBOX")).snapshot()
    assert after.uidvalidity != before.uidvalidity
    assert [m.uid for m in after.messages] == [1, 2]
    await store2.close()


async def test_dovecot_uidlist_is_imported_with_its_uids(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    user = root / "example.test" / "alice"
    folder = user / ".Lists"
    for d in ("cur", "new", "tmp"):
        (user / d).mkdir(parents=True, exist_ok=True)
        (folder / d).mkdir(parents=True, exist_ok=True)
    (folder / "maildirfolder").write_bytes(b"")
    keys = ["1600000001.M1P1.old,S=8,W=10", "1600000002.M2P1.old,S=8,W=10", "1600000003.M3P1.old,S=8"]
    (folder / "cur" / (keys[0] + ":2,Sa")).write_bytes(b"one\ntwo\n")
    (folder / "cur" / (keys[1] + ":2,")).write_bytes(b"one\ntwo\n")
    (folder / "new" / keys[2]).write_bytes(b"one\ntwo\n")
    (folder / "new" / "1600000009.M9P1.unlisted").write_bytes(b"x\n")
    (folder / "dovecot-uidlist").write_text(
        "3 V1234567 N60 Gabcdef\n"
        f"17 W10 :{keys[0]}\n"
        f"42 :{keys[1]}\n"
        f"55 S8 W10 :{keys[2]}\n"
        "58 :1600000000.gone\n")
    (folder / "dovecot-keywords").write_text("0 $Important\n")
    store = Store(root, hostname=HOST)
    acc = store.account(ALICE)
    snap = await (await acc.mailbox("Lists")).snapshot()
    assert snap.uidvalidity == 1234567
    assert [(m.uid, m.key) for m in snap.messages] == [
        (17, keys[0]), (42, keys[1]), (55, keys[2]), (60, "1600000009.M9P1.unlisted")]
    assert snap.messages[0].flags == frozenset({"\\Seen", "$Important"})
    assert snap.uidnext == 61
    assert [m.size for m in snap.messages] == [10, 10, 10, 3]  # W=, or counted in CRLF
    assert "Lists" in [b.name for b in await acc.list_mailboxes()]
    await store.close()


# --- folders ------------------------------------------------------------------------------------


async def test_create_makes_parents_and_children_are_listed(store: Store) -> None:
    acc = store.account(ALICE)
    await acc.create_mailbox("Work.Projects.2024")
    await acc.create_mailbox("Receipts", special_use="\\All")
    boxes = {b.name: b for b in await acc.list_mailboxes()}
    assert boxes["Work"].has_children and boxes["Work.Projects"].has_children
    assert not boxes["Work.Projects.2024"].has_children
    assert boxes["Receipts"].special_use == "\\All"
    with pytest.raises(MailboxExists):
        await acc.create_mailbox("work.projects".title().replace("Projects", "Projects"))
    with pytest.raises(MailboxExists):
        await acc.create_mailbox("inbox")
    with pytest.raises(MailError):
        await acc.create_mailbox("X", special_use="\\Bogus")


async def test_delete_refuses_inbox_and_parents_and_new_folder_gets_new_uidvalidity(store: Store) -> None:
    acc = store.account(ALICE)
    await acc.create_mailbox("A.B")
    with pytest.raises(MailError):
        await acc.delete_mailbox("INBOX")
    with pytest.raises(MailboxHasChildren):
        await acc.delete_mailbox("A")
    mb = await acc.mailbox("A.B")
    await mb.append(b"x\n")
    old_validity = mb.uidvalidity
    await acc.delete_mailbox("A.B")
    with pytest.raises(MailboxNotFound):
        await mb.snapshot()
    with pytest.raises(MailboxNotFound):
        await acc.delete_mailbox("A.B")
    assert not (acc.path / ".A.B").exists()
    assert [p for p in os.listdir(acc.path) if "deleted" in p] == []
    await acc.delete_mailbox("A")
    await acc.create_mailbox("A.B")
    mb2 = await acc.mailbox("A.B")
    snap = await mb2.snapshot()
    assert snap.messages == [] and mb2.uidvalidity != old_validity


async def test_rename_moves_children_and_keeps_uids(store: Store) -> None:
    acc = store.account(ALICE)
    await acc.create_mailbox("Old.Child")
    await acc.subscribe("Old.Child")
    await store.deliver([(ALICE, "Old.Child")], b"x\n")
    child = await acc.mailbox("Old.Child")
    before = await child.snapshot()
    await acc.rename_mailbox("Old", "New.Place")
    names_ = [b.name for b in await acc.list_mailboxes()]
    assert "Old" not in names_ and "Old.Child" not in names_
    assert {"New", "New.Place", "New.Place.Child"} <= set(names_)
    after = await (await acc.mailbox("New.Place.Child")).snapshot()
    assert (after.uidvalidity, [m.uid for m in after.messages]) == \
        (before.uidvalidity, [m.uid for m in before.messages])
    assert await acc.subscriptions() == ["New.Place.Child"]
    await acc.create_mailbox("Other")
    with pytest.raises(MailboxExists):
        await acc.rename_mailbox("New.Place", "Other")
    with pytest.raises(BadMailboxName):
        await acc.rename_mailbox("New", "New.Place.Sub")
    with pytest.raises(MailboxNotFound):
        await acc.rename_mailbox("Missing", "Elsewhere")


async def test_renaming_inbox_moves_messages_and_leaves_inbox_empty(store: Store) -> None:
    acc = store.account(ALICE)
    await acc.create_mailbox("INBOX.Kid")
    await deliver_n(store, 3)
    inbox = await acc.mailbox("INBOX")
    await inbox.store_flags([(await inbox.snapshot()).messages[0].uid], {"\\Seen", "Kw"}, "add")
    await acc.rename_mailbox("INBOX", "Before2024")
    assert (await inbox.snapshot()).messages == []
    moved = await (await acc.mailbox("Before2024")).snapshot()
    assert len(moved.messages) == 3
    assert moved.messages[0].flags == frozenset({"\\Seen", "Kw"})
    names_ = [b.name for b in await acc.list_mailboxes()]
    assert names_[0] == "INBOX" and "INBOX.Kid" in names_  # inferiors of INBOX stay (RFC 3501 §6.3.5)
    await store.deliver([(ALICE, "INBOX")], b"new\n")
    assert len((await inbox.snapshot()).messages) == 1


async def test_subscriptions_are_kept_in_a_dovecot_style_file(store: Store) -> None:
    acc = store.account(ALICE)
    await acc.subscribe("Sent")
    await acc.subscribe("Nonexistent.Yet")
    await acc.subscribe("Sent")
    await acc.unsubscribe("Trash")
    if isinstance(store.indexes, PgIndexes):
        assert not (acc.path / "subscriptions").exists()  # in the database instead
    else:
        assert (acc.path / "subscriptions").read_text() == "Sent\nNonexistent.Yet\n"
    boxes = {b.name: b.subscribed for b in await acc.list_mailboxes()}
    assert boxes["Sent"] and not boxes["Trash"]
    await acc.unsubscribe("Sent")
    assert await acc.subscriptions() == ["Nonexistent.Yet"]
    if isinstance(store.indexes, PgIndexes):
        return
    (acc.path / "subscriptions").write_text("V\t2\n\nWork\tProjects\n")  # Dovecot 2.x format
    assert await acc.subscriptions() == ["Work.Projects"]


# --- change hub ---------------------------------------------------------------------------------


async def test_subscriber_hears_of_new_mail_within_a_second(store: Store) -> None:
    acc = store.account(ALICE)
    mb = await acc.mailbox("INBOX")
    await mb.snapshot()

    async def idle() -> list[int]:
        with store.changes.subscribe(ALICE) as sub:
            ready.set()
            async for event in sub:
                if isinstance(event, MessagesAdded) and event.mailbox == "INBOX":
                    return [m.uid for m in (await mb.snapshot()).messages]
        return []

    ready = asyncio.Event()
    task = asyncio.create_task(idle())
    await ready.wait()
    t0 = time.perf_counter()
    await store.deliver([(ALICE, "INBOX")], b"hello\n")
    uids = await asyncio.wait_for(task, 1.0)
    assert len(uids) == 1 and time.perf_counter() - t0 < 1.0
    assert store.changes.subscriber_count(ALICE) == 0


async def test_folder_changes_and_overflow_are_published(store: Store, monkeypatch) -> None:
    acc = store.account(ALICE)
    monkeypatch.setattr(changes, "MAX_PENDING", 3)
    sub = store.changes.subscribe("alice@EXAMPLE.test")
    await acc.create_mailbox("X")
    assert sub.get_nowait() == MailboxesChanged(ALICE)
    for _ in range(4):
        await store.deliver([(ALICE, "X")], b"x\n")
    assert sub.get_nowait() == Overflow(ALICE)
    sub.close()
    sub.close()
    with pytest.raises(EOFError):
        await sub.get()
    assert store.changes.subscriber_count() == 0


# --- performance --------------------------------------------------------------------------------


async def test_warm_snapshot_of_10000_messages_is_fast(store: Store) -> None:
    acc = store.account(ALICE)
    await acc.list_mailboxes()
    cur = acc.path / "cur"
    body = b"Subject: x\r\n\r\nbody\r\n"
    template = acc.path / "template"
    template.write_bytes(body)
    for i in range(10_000):
        os.link(template, cur / f"1700000000.M{i}P1Q{i}.bulk,S={len(body)},W={len(body)}:2,S")
    age(acc.path / "new", cur)
    mb = await acc.mailbox("INBOX")
    snap = await mb.snapshot()
    assert len(snap.messages) == 10_000
    timings = []
    for _ in range(5):
        t = time.perf_counter()
        snap = await mb.snapshot()
        timings.append(time.perf_counter() - t)
    assert len(snap.messages) == 10_000
    assert sorted(timings)[2] < 0.1
    # A new Store (index on disk, nothing in memory) also opens it without rescanning every file.
    await store.close()
    store2 = await again(store)
    t = time.perf_counter()
    snap2 = await (await store2.account(ALICE).mailbox("INBOX")).snapshot()
    assert time.perf_counter() - t < 1.0
    assert [m.uid for m in snap2.messages] == [m.uid for m in snap.messages]
    await store2.close()


async def test_read_many_returns_every_message_in_order_and_none_for_expunged_or_unknown(store: Store) -> None:
    box = await store.account(ALICE).mailbox("INBOX")
    uids = [await box.append(f"Subject: {i}\n\nbody {i}\n".encode()) for i in range(3)]
    await box.expunge([uids[1]])
    got = await box.read_many([uids[2], uids[1], uids[0], 999])
    assert got == [b"Subject: 2\r\n\r\nbody 2\r\n", None, b"Subject: 0\r\n\r\nbody 0\r\n", None]
    assert got[0] == await box.read(uids[2])


async def test_store_flags_on_many_messages_changes_each_once(store: Store) -> None:
    box = await store.account(ALICE).mailbox("INBOX")
    await deliver_n(store, 300)
    snap = await box.snapshot()
    uids = [m.uid for m in snap.messages]
    infos = await box.store_flags(uids + uids, {"\\Seen"}, "add")  # duplicates are one change
    assert sorted(i.uid for i in infos) == uids and all("\\Seen" in i.flags for i in infos)
    after = await box.snapshot()
    assert len({m.modseq for m in after.messages}) == 1
