"""The selected mailbox of a session and the reads over it that FETCH and SEARCH share.

Owns: `Selected` (the mailbox, its view, the last snapshot, what the client was told of flags),
`match_infos` (a run of UIDs to their snapshot entries) and `read_many` (message bytes for many UIDs,
batched, expunged ones left out); for IDLE fan-out, what sessions woken by one change share:
`shared_snapshot` (one store read for all of them), `already_seen` (the event of a read the session
took wakes no other) and `keywords_of` (computed once per snapshot list).
Does not own: the sequence numbering and pending updates (view.py), the commands (session.py,
fetch.py, searchadapt.py), storage (store/).

A leaf of the imap package apart from view.py and the store's value types, so session.py, fetch.py
and searchadapt.py can all import it without a cycle.
"""

from __future__ import annotations

import asyncio
import operator
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from mailhaven.imap.context import Updating
from mailhaven.imap.view import View
from mailhaven.store import MessageInfo, MessageNotFound, MessagesAdded, Snapshot


@dataclass
class Selected:
    """The mailbox a session has selected (RFC 3501 §6.3.1) and what the session told the client of it."""

    mailbox: Any  # mailhaven.store.Mailbox
    name: str
    readonly: bool
    view: View
    snap: Snapshot | None  # the last snapshot; dropped while idling (memory), taken again when needed
    uidvalidity: int
    keywords: frozenset[str]
    synced_at: float
    generation: int = 0  # bumped with every new snapshot
    # RFC 5182 §2.1: the UIDs (ascending) the last SEARCH ... RETURN (SAVE) kept, what "$" names; a
    # new Selected (SELECT/EXAMINE) starts empty, CLOSE/UNSELECT drop it
    saved: tuple[int, ...] = ()
    # the change hub's number (store/changes.py, Sequence) of the last event about this mailbox
    # the session took: a snapshot begun after it shows everything the session was told of
    event_seq: int = 0
    # RFC 5267 §4.3: the updating searches (RETURN (UPDATE)) of this selection, oldest first; a new
    # Selected starts with none, CLOSE/UNSELECT end them
    updating: list[Updating] = field(default_factory=list)

    @property
    def current(self) -> Snapshot:
        """The snapshot a command works on (Session.refresh() guarantees there is one)."""
        assert self.snap is not None
        return self.snap


def match_infos(uids: Sequence[int], messages: Sequence[MessageInfo]) -> list[MessageInfo | None]:
    """The infos of ascending `uids` in the ascending snapshot `messages` (None: not in it)."""
    n = len(uids)
    if not n:
        return []
    # Usual case (e.g. 1:* on an up-to-date view): the UIDs are a run of the snapshot, found by
    # bisection and checked in one comparison instead of a walk in Python.
    lo = bisect_left(messages, uids[0], key=_uid_of)
    run = messages[lo:lo + n]
    if len(run) == n and run[-1].uid == uids[-1] and list(map(_uid_of, run)) == list(uids):
        return list(run)
    out: list[MessageInfo | None] = []
    j, m = lo, len(messages)
    for u in uids:
        while j < m and messages[j].uid < u:
            j += 1
        out.append(messages[j] if j < m and messages[j].uid == u else None)
    return out


_uid_of = operator.attrgetter("uid")


async def shared_snapshot(sel: Selected, not_before: float = 0.0) -> Snapshot:
    """A snapshot of the mailbox begun after the last event the session took (sel.event_seq) and
    not before `not_before` (time.monotonic()): the sessions one change (or one poll period) woke
    share one read (store Mailbox.snapshot's `after`)."""
    return cast(Snapshot, await sel.mailbox.snapshot(after=sel.event_seq, after_time=not_before))


def already_seen(sel: Selected, event: object) -> bool:
    """A MessagesAdded whose UIDs the view knows already: the snapshot that gave them their UIDs
    published it, and this session took that snapshot (it woke for the delivery's own event), so
    it needs no other."""
    return isinstance(event, MessagesAdded) and bool(event.uids) and event.uids[-1] <= sel.view.last_uid


_keywords_memo: tuple[list[MessageInfo], frozenset[str]] | None = None


def keywords_of(messages: Iterable[MessageInfo]) -> frozenset[str]:
    """The keywords the messages carry. The answer for the last snapshot list is kept: sessions
    idling in one mailbox all look at the same (shared) list after a change."""
    global _keywords_memo
    memo = _keywords_memo
    if memo is not None and memo[0] is messages:
        return memo[1]
    seen: set[frozenset[str]] = set()
    out: set[str] = set()
    for m in messages:
        if m.flags not in seen:
            seen.add(m.flags)
            out.update(f for f in m.flags if not f.startswith("\\"))
    keywords = frozenset(out)
    if isinstance(messages, list):
        _keywords_memo = (messages, keywords)
    return keywords


async def read_many(mailbox: Any, uids: list[int]) -> dict[int, bytes]:
    """Message bytes by UID; expunged ones are left out. Uses the store's batch read when it has one."""
    if not uids:
        return {}
    batch = getattr(mailbox, "read_many", None)
    if batch is not None:
        got = await batch(uids)
        return {u: d for u, d in zip(uids, got, strict=True) if d is not None}
    out: dict[int, bytes] = {}
    for i in range(0, len(uids), 32):
        part = uids[i:i + 32]
        results = await asyncio.gather(*(mailbox.read(u) for u in part), return_exceptions=True)
        for u, r in zip(part, results, strict=True):
            if isinstance(r, bytes):
                out[u] = r
            elif not isinstance(r, MessageNotFound):
                raise r
    return out



__all__ = ["Selected", "already_seen", "shared_snapshot", "keywords_of", "match_infos", "read_many"]
