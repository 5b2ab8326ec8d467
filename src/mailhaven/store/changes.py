"""Change hub: frozen change events broadcast to live sessions of the same user (IMAP IDLE, NOOP).

Owns: the event types and fan-out to subscribers. Does not own: deciding what changed (mailbox.py
publishes after every write and after every snapshot that found changes made by other programs).

Events (all frozen dataclasses; `uids` is a tuple, ascending):
    MessagesAdded(user, mailbox, uids)   new messages. `deliver()` does not assign UIDs (it only
                                         writes files), so it publishes uids=(): "mailbox changed,
                                         call snapshot()". The snapshot that then assigns UIDs
                                         publishes MessagesAdded again with the real UIDs.
    FlagsChanged(user, mailbox, uids)    flags/keywords changed (by us or found renamed on disk)
    Expunged(user, mailbox, uids)        messages removed (expunge, move, or deleted on disk)
    MailboxesChanged(user)               a folder was created, deleted, renamed or (un)subscribed
    Overflow(user)                       this subscriber fell behind and events were dropped:
                                         re-snapshot everything it shows

Publishing never blocks: each subscription has a bounded queue (MAX_PENDING); when it is full the
queue is emptied and a single Overflow is queued. Use a subscription as a context manager, or call
close(), so the hub forgets it.

Sequence: the hub numbers what it publishes (`hub.seq`, 1, 2, ... for this process); a subscription's
`last_seq` is the number of the last event it handed out. A read of the store that began when
`hub.seq` was already >= n sees the change of event n (events are published once the change is
done), which is how Mailbox.snapshot(after=n) lets the sessions woken by one event share one read.

Other processes: when the Store runs a bus (bus.py), `relay` is set and every event published here
is also sent to the other processes sharing the mail root; the events they send are published
here with relay=False (uids=(): "take a new snapshot"), and their "everything changed" as an
Overflow to every subscriber. Other nodes (PostgreSQL): the Store's `peers` (a Peers, e.g.
bus_pg.PgBus, LISTEN/NOTIFY) sets `relay` the same way, instead of the bus.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

MAX_PENDING = 10_000


@dataclass(frozen=True, slots=True)
class MessagesAdded:
    user: str
    mailbox: str
    uids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class FlagsChanged:
    user: str
    mailbox: str
    uids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Expunged:
    user: str
    mailbox: str
    uids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class MailboxesChanged:
    user: str


@dataclass(frozen=True, slots=True)
class Overflow:
    user: str


Event = MessagesAdded | FlagsChanged | Expunged | MailboxesChanged | Overflow


class Subscription:
    """Events for one user. `await sub.get()`, `sub.get_nowait()`, or `async for event in sub`;
    `await sub.wait()` (or the future `sub.waiter()`) until one is pending."""

    def __init__(self, hub: ChangeHub, user: str) -> None:
        self.user = user
        self._hub = hub
        self._events: deque[tuple[int, Event]] = deque()  # (the hub's number for it, the event)
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.last_seq = 0  # the hub's number of the last event handed out (module doc: Sequence)

    def _push(self, event: Event, seq: int) -> None:
        if self.closed:
            return
        if len(self._events) >= MAX_PENDING:
            self._events.clear()
            self._events.append((seq, Overflow(self.user)))
        else:
            self._events.append((seq, event))
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def pending(self) -> int:
        return len(self._events)

    def get_nowait(self) -> Event | None:
        """The next event, or None if there is none right now."""
        return self._take() if self._events else None

    def _take(self) -> Event:
        self.last_seq, event = self._events.popleft()
        return event

    async def get(self) -> Event:
        """Wait for the next event. Raises asyncio.CancelledError if cancelled, EOFError if closed."""
        while not self._events:
            if self.closed:
                raise EOFError("subscription closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._take()

    async def wait(self) -> None:
        """Until an event is pending or the subscription is closed; takes none (cancel-safe)."""
        if self._events or self.closed:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def waiter(self) -> asyncio.Future[None]:
        """A future done once an event is pending or the subscription is closed (like `wait()`, but
        a plain future: an IDLE connection waits on it without a task of its own). Cancel it to
        stop waiting; it takes no event."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._events or self.closed:
            fut.set_result(None)
        else:
            self._waiter = fut
        return fut

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._hub._remove(self)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            try:
                yield await self.get()
            except EOFError:
                return


def user_key(user: str) -> str:
    """Users compare with the domain case-folded ("Alice@Example.TEST" -> "Alice@example.test")."""
    local, at, domain = user.rpartition("@")
    return f"{local}{at}{domain.lower()}"


class ChangeHub:
    """Fan-out of store events by user. Call publish() and subscribe() on the event loop thread."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self.relay: Callable[[Event], None] | None = None  # to other processes (bus.py), if any
        self.seq = 0  # how many events were published here (module doc: Sequence)

    def subscribe(self, user: str) -> Subscription:
        sub = Subscription(self, user_key(user))
        self._subs.setdefault(sub.user, set()).add(sub)
        return sub

    def publish(self, event: Event, *, relay: bool = True) -> None:
        self.seq += 1
        seq = self.seq
        for sub in list(self._subs.get(user_key(event.user), ())):
            sub._push(event, seq)
        if relay and self.relay is not None:
            self.relay(event)

    def republish(self, events: Iterable[Event | None]) -> int:
        """Events another process or node published (store/bus.py, bus_pg.py), to our subscribers
        only (not relayed again); None = "everything changed" (an Overflow for each). Returns how
        many there were."""
        n = 0
        for event in events:
            if event is None:
                self.overflow_all()
            else:
                self.publish(event, relay=False)
            n += 1
        return n

    def overflow_all(self) -> None:
        """Every subscriber may have missed events: each gets an Overflow (re-snapshot)."""
        self.seq += 1
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub._push(Overflow(sub.user), self.seq)

    def subscriber_count(self, user: str | None = None) -> int:
        if user is not None:
            return len(self._subs.get(user_key(user), ()))
        return sum(len(s) for s in self._subs.values())

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.user)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.user]


class Peers(Protocol):
    """A transport of change events to the stores of other nodes (store/bus_pg.py): from start()
    to close() it sets `hub.relay` and publishes what the others send with relay=False."""

    async def start(self, hub: ChangeHub) -> None: ...

    async def close(self) -> None: ...
