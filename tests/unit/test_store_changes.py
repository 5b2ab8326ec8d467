"""Subscription.wait(): the IMAP shell waits on it while a session idles, and the session then takes
the events itself, so waiting must never consume one (store/changes.py)."""

from __future__ import annotations

import asyncio

from mailhaven.store.changes import ChangeHub, MessagesAdded

ALICE = "alice@example.test"


async def test_wait_returns_when_an_event_comes_and_leaves_it_to_be_taken() -> None:
    hub = ChangeHub()
    with hub.subscribe(ALICE) as sub:
        waiter = asyncio.ensure_future(sub.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        ev = MessagesAdded(ALICE, "INBOX", (1,))
        hub.publish(ev, relay=False)
        await asyncio.wait_for(waiter, 1)
        assert sub.get_nowait() == ev
        assert sub.get_nowait() is None


async def test_wait_returns_at_once_when_an_event_is_pending_or_the_subscription_is_closed() -> None:
    hub = ChangeHub()
    sub = hub.subscribe(ALICE)
    hub.publish(MessagesAdded(ALICE, "INBOX"), relay=False)
    await asyncio.wait_for(sub.wait(), 1)
    assert sub.pending() == 1
    sub.get_nowait()
    sub.close()
    await asyncio.wait_for(sub.wait(), 1)


async def test_a_cancelled_wait_loses_no_event() -> None:
    hub = ChangeHub()
    with hub.subscribe(ALICE) as sub:
        waiter = asyncio.ensure_future(sub.wait())
        await asyncio.sleep(0)
        waiter.cancel()
        ev = MessagesAdded(ALICE, "Sent", (7,))
        hub.publish(ev, relay=False)
        await asyncio.sleep(0)
        assert sub.get_nowait() == ev
