"""Memory per message and per session (issue 14 item 5): a folder keeps one string object for each
subdirectory and flag suffix, snapshots of an unchanged folder share one message list, and the views
of the sessions that selected it share one numbering array, also after a change they all see."""

from __future__ import annotations

from pathlib import Path

from mailhaven.imap.view import View
from mailhaven.store.mailbox import Store
from tests.integration.test_imap_server import make_message

USER = "alice@example.test"


def fill(root: Path, n: int) -> None:
    inbox = root / "example.test" / "alice"
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        (inbox / "cur" / f"{1700000000 + i}.M{i}P1Q{i}.test:2,{'S' if i % 2 else 'FS'}").write_bytes(make_message(i))


async def test_a_reopened_folder_shares_its_names_and_snapshots_share_one_list(tmp_path: Path) -> None:
    fill(tmp_path, 50)
    store = Store(tmp_path, hostname="h", fsync=False)
    await store.start()
    mb = await store.account(USER).mailbox("INBOX")
    await mb.snapshot()  # indexes the folder
    await store.account(USER).close()
    store = Store(tmp_path, hostname="h", fsync=False)  # loads it back from the index
    await store.start()
    mb = await store.account(USER).mailbox("INBOX")
    a, b = await mb.snapshot(), await mb.snapshot()
    assert a.messages is b.messages and len(a.messages) == 50
    msgs = list(mb._folder.by_uid.values())
    assert len({id(m.suffix) for m in msgs}) == 2 and len({id(m.sub) for m in msgs}) == 1
    await store.close()


async def test_views_of_one_snapshot_share_their_numbering_also_after_a_delivery(tmp_path: Path) -> None:
    fill(tmp_path, 20)
    store = Store(tmp_path, hostname="h", fsync=False)
    await store.start()
    mb = await store.account(USER).mailbox("INBOX")
    snap = await mb.snapshot()
    views = [View(snap) for _ in range(3)]
    assert views[0].uids is views[1].uids is views[2].uids
    await store.deliver([(USER, "INBOX")], make_message(21))
    snap2 = await mb.snapshot()
    out = []
    for v in views:
        assert v.sync(snap2) == [21]
        out.append(v.flush(True))
    assert out[0] == out[1] == out[2] == [b"* 21 EXISTS\r\n", b"* 0 RECENT\r\n"]
    assert views[0].uids is views[1].uids is views[2].uids and list(views[0].uids) == list(range(1, 22))
    await store.close()
