"""The POP3 read-ahead (pop3/readahead.py) over a real Store on disk: batches instead of one
worker-thread trip per RETR, bounded memory, exact contents, and the fallbacks (expunged
messages, failed batches, a client that jumps around)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mailhaven.errors import StoreError
from mailhaven.pop3.readahead import READ_AHEAD_MESSAGES, ReadAhead
from mailhaven.store import MessageNotFound, Store

ALICE = "alice@example.test"


class Counting:
    """The store's Mailbox, counting the calls the read-ahead makes (and optionally failing)."""

    def __init__(self, mailbox: Any, fail_batches: bool = False) -> None:
        self.mailbox = mailbox
        self.fail_batches = fail_batches
        self.reads: list[int] = []
        self.batches: list[list[int]] = []

    async def read(self, uid: int) -> bytes:
        self.reads.append(uid)
        return bytes(await self.mailbox.read(uid))

    async def read_many(self, uids: Sequence[int]) -> list[bytes | None]:
        self.batches.append(list(uids))
        if self.fail_batches:
            raise StoreError("disk on fire")
        return list(await self.mailbox.read_many(uids))


@pytest.fixture
async def mailbox(tmp_path: Path) -> AsyncIterator[Any]:
    store = Store(tmp_path / "mail", hostname="test.host")
    await store.start()
    for i in range(200):
        # every message has a leading-dot line and LF endings on the way in (stored as CRLF)
        await store.deliver([(ALICE, "INBOX")], b"Subject: m%d\n\n.dot line\nbody %d\n" % (i, i))
    box = await store.account(ALICE).mailbox("INBOX")
    await box.snapshot()
    yield box
    await store.close()


async def uids_of(box: Any) -> list[int]:
    return [m.uid for m in (await box.snapshot()).messages]


def window(uids: list[int], i: int, count: int = READ_AHEAD_MESSAGES) -> list[int]:
    """What Session.following returns after message i (0-based) when nothing is deleted."""
    return uids[i + 1:i + 1 + count]


async def retr_all(ahead: ReadAhead, uids: list[int], box: Any) -> int:
    """Drive the read-ahead as the shell does for RETR 1..n; returns the most messages it held."""
    most = 0
    for i, uid in enumerate(uids):
        data = ahead.take(uid)
        hit = data is not None
        if data is None:
            data = await ahead.get(uid)
        assert data == await box.read(uid)
        if not hit or ahead.running_low():
            ahead.plan(window(uids, i))
        most = max(most, len(ahead._ready))
    return most


async def test_sequential_retr_reads_in_batches_not_one_trip_per_message(mailbox: Any) -> None:
    uids = await uids_of(mailbox)
    reader = Counting(mailbox)
    ahead = ReadAhead(reader)
    most = await retr_all(ahead, uids, mailbox)
    assert reader.reads == [uids[0]]  # only the first RETR waits for a read of its own
    # then one batch per half window: 200 messages in a handful of worker-thread trips
    assert len(reader.batches) <= 2 + len(uids) // (READ_AHEAD_MESSAGES // 2)
    assert sorted(u for b in reader.batches for u in b) == uids[1:]  # each message read once
    assert most <= READ_AHEAD_MESSAGES  # memory stays within the window
    ahead.close()


async def test_contents_are_exact_crlf_with_the_dot_line_untouched(mailbox: Any) -> None:
    uids = await uids_of(mailbox)
    ahead = ReadAhead(mailbox)
    ahead.plan(uids[:10])
    data = await ahead.get(uids[3])
    assert data == b"Subject: m3\r\n\r\n.dot line\r\nbody 3\r\n"  # stuffing is protocol.py's job
    ahead.close()


async def test_a_client_that_jumps_drops_what_it_will_not_ask_for(mailbox: Any) -> None:
    uids = await uids_of(mailbox)
    reader = Counting(mailbox)
    ahead = ReadAhead(reader)
    ahead.plan(window(uids, 0))
    assert await ahead.get(uids[1]) == await mailbox.read(uids[1])
    ahead.plan(window(uids, 150))  # RETR 151: the earlier window is no longer wanted
    assert ahead.take(uids[2]) is None
    assert await ahead.get(uids[151]) == await mailbox.read(uids[151])
    assert len(ahead._ready) <= READ_AHEAD_MESSAGES
    ahead.close()


async def test_message_expunged_before_it_was_read_ahead_is_not_found(mailbox: Any) -> None:
    uids = await uids_of(mailbox)
    await mailbox.expunge([uids[5]])  # another client, after this session's login
    ahead = ReadAhead(mailbox)
    ahead.plan(uids[:10])
    with pytest.raises(MessageNotFound):
        await ahead.get(uids[5])
    assert await ahead.get(uids[6]) == await mailbox.read(uids[6])
    ahead.close()


async def test_a_failed_batch_falls_back_to_reading_each_message(mailbox: Any) -> None:
    uids = await uids_of(mailbox)
    reader = Counting(mailbox, fail_batches=True)
    ahead = ReadAhead(reader)
    ahead.plan(uids[:10])
    for uid in uids[:3]:
        assert await ahead.get(uid) == await mailbox.read(uid)
    assert reader.reads == uids[:3]
    ahead.close()


async def test_close_cancels_the_batch_and_empties_the_cache(mailbox: Any) -> None:
    uids = await uids_of(mailbox)
    ahead = ReadAhead(mailbox)
    ahead.plan(uids[:50])
    batch = ahead._batch
    assert batch is not None
    ahead.close()
    assert batch.cancelled() or batch.cancelling()
    assert ahead.take(uids[0]) is None and not ahead._ready
