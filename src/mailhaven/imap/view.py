"""One session's view of its selected mailbox: message sequence numbers and pending updates.

Owns: the session's numbering (sequence number <-> UID, RFC 3501 §2.3.1.2), which store changes the
client has not been told yet, and rendering them as untagged EXPUNGE / EXISTS / RECENT / FETCH
FLAGS responses at the points the session allows (go-imap's MailboxTracker, mox's pending changes).
Pure: no I/O, no clock, no store import; it is fed snapshots (uid, flags, modseq per message).
Does not own: when to look at the store (session.py) or which messages are \\Recent to whom
(session.py decides and calls `mark_recent`).

Theory of operation
- `_uids` is the numbering the client knows: ascending UIDs; sequence number n is `_uids[n-1]`.
- A message removed from the store stays numbered (in `_gone`) until an EXPUNGE can be sent:
  RFC 3501 §7.4.1 forbids EXPUNGE while answering FETCH, STORE or SEARCH (non-UID), and
  §5.5 requires numbers to stay stable otherwise. `flush(allow_expunge=True)` sends them, in
  ascending order, each number adjusted for the ones sent before it.
- New messages (UIDs above every known one; the store never reuses or lowers UIDs) wait in `_new`
  and are numbered when `flush` sends EXISTS (allowed at any time, RFC 3501 §7.3.1), so a
  command never sees a number the client was not told about.
- Flag changes are found by modseq: a message whose modseq is above the last snapshot's
  highestmodseq changed. Flags the session already sent itself (STORE, FETCH FLAGS) are noted
  with `reported()` and not sent twice. Once the session enabled CONDSTORE (`condstore`), those
  FETCH responses carry the message's MODSEQ (RFC 7162 §3.1); once it enabled QRESYNC
  (`qresync`), removals are told as one `VANISHED uids` instead of EXPUNGEs (RFC 7162 §3.2.10).
- Memory: views never change a numbering array in place; views that see the same snapshot and
  the same changes share one array (`_Shared`), so idle sessions of one mailbox hold one copy.
Invariant (tested with a hypothesis state machine): a client applying every response `flush`
returns keeps exactly `uids` as its numbering, and after `sync(s)` + `flush(True)` that is the
UIDs of `s`.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from typing import Protocol

from mailhaven.imap.seqset import render as render_set

# Dovecot's order for system flags in FLAGS responses; keywords follow in sorted order.
_SYSTEM_ORDER = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
RECENT = "\\Recent"


class MessageLike(Protocol):
    @property
    def uid(self) -> int: ...
    @property
    def flags(self) -> frozenset[str]: ...
    @property
    def modseq(self) -> int: ...


class SnapshotLike(Protocol):
    @property
    def highestmodseq(self) -> int: ...
    @property
    def messages(self) -> Sequence[MessageLike]: ...


_flag_cache: dict[tuple[frozenset[str], bool], bytes] = {}


def render_flags(flags: frozenset[str], recent: bool = False) -> bytes:
    """`(\\Seen $Label)`: system flags in Dovecot's order, \\Recent, then keywords (RFC 3501 §7.2.6)."""
    key = (flags, recent)
    out = _flag_cache.get(key)
    if out is None:
        items = [f for f in _SYSTEM_ORDER if f in flags]
        if recent:
            items.append(RECENT)
        items.extend(sorted(f for f in flags if not f.startswith("\\")))
        out = ("(" + " ".join(items) + ")").encode("utf-8")
        if len(_flag_cache) < 4096:
            _flag_cache[key] = out
    return out


class BadSequence(ValueError):
    """A message sequence number beyond EXISTS (the session answers BAD, RFC 3501 §9 seq-number)."""


class View:
    """The numbering and pending updates of one selected mailbox for one session."""

    def __init__(self, snapshot: SnapshotLike) -> None:
        # UIDs are 32-bit (RFC 3501 §2.3.1.1): 4 octets each, so 10,000 messages cost 40 KB, and
        # views of the same snapshot share one array (never changed in place: see _Shared).
        self._uids = _SHARED.numbering(snapshot.messages)
        self.modseq = snapshot.highestmodseq
        self._gone: set[int] = set()  # numbered, removed from the store, EXPUNGE not yet sent
        self._new: list[int] = []  # in the store, not numbered yet (EXISTS not yet sent)
        self._flags: dict[int, tuple[frozenset[str], int]] = {}  # flag changes not yet sent: (flags, modseq)
        self.condstore = False  # RFC 7162 §3.1: once enabled, unsolicited FETCH carries MODSEQ
        self.qresync = False  # RFC 7162 §3.2.10: once enabled, VANISHED instead of EXPUNGE
        self._reported: dict[int, int] = {}  # uid -> modseq whose flags this session already sent
        self._recent: set[int] = set()
        self.rev2 = False  # RFC 9051 (ENABLE IMAP4rev2): no \Recent, no RECENT response

    # -- numbering ----------------------------------------------------------------------------

    @property
    def exists(self) -> int:
        """Messages the client has numbered (EXISTS as last sent)."""
        return len(self._uids)

    @property
    def uids(self) -> Sequence[int]:
        return self._uids

    @property
    def last_uid(self) -> int:
        """The highest UID known to this view (numbered or pending), 0 if none."""
        if self._new:
            return self._new[-1]
        return self._uids[-1] if self._uids else 0

    def uid(self, seq: int) -> int:
        if not 1 <= seq <= len(self._uids):
            raise BadSequence(f"no message {seq}")
        return self._uids[seq - 1]

    def seq(self, uid: int) -> int | None:
        """The sequence number of `uid`, or None if it is not numbered."""
        i = bisect_left(self._uids, uid)
        return i + 1 if i < len(self._uids) and self._uids[i] == uid else None

    def is_gone(self, uid: int) -> bool:
        """Removed from the store, EXPUNGE not yet sent (the number still refers to it)."""
        return uid in self._gone

    @property
    def recent(self) -> frozenset[int]:
        return frozenset(self._recent)

    def is_recent(self, uid: int) -> bool:
        return uid in self._recent

    def by_seqs(self, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """(seq, uid) for resolved sequence ranges (lo, hi). BadSequence if hi > EXISTS."""
        out: list[tuple[int, int]] = []
        n = len(self._uids)
        for lo, hi in ranges:
            if hi > n or lo < 1:
                raise BadSequence("Invalid message sequence number")
            out.extend(zip(range(lo, hi + 1), self._uids[lo - 1:hi], strict=True))
        return out

    def by_uids(self, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """(seq, uid) of numbered messages whose UID lies in the resolved ranges (lo, hi)."""
        out: list[tuple[int, int]] = []
        uids = self._uids
        for lo, hi in ranges:
            i = bisect_left(uids, lo)
            j = bisect_right(uids, hi)
            out.extend(zip(range(i + 1, j + 1), uids[i:j], strict=True))
        return out

    # -- learning about the store --------------------------------------------------------------

    def sync(self, snapshot: SnapshotLike) -> list[int]:
        """Compare with a newer snapshot of the same mailbox; returns UIDs that are new to the view.

        Nothing is sent here: the differences wait for `flush`.
        """
        msgs = snapshot.messages
        last = self.last_uid
        split = bisect_right(msgs, last, key=_uid_of)
        known = len(self._uids) + len(self._new) - len(self._gone)
        if split != known:  # some known messages left the store (UIDs never come back)
            present = {m.uid for m in msgs[:split]}
            for u in self._uids:
                if u not in present and u not in self._gone:
                    self._gone.add(u)
                    self._flags.pop(u, None)
            if self._new:
                vanished = [u for u in self._new if u not in present]
                if vanished:
                    self._new = [u for u in self._new if u in present]
                    self._recent.difference_update(vanished)
        since = self.modseq
        if snapshot.highestmodseq > since and self._uids:
            reported = self._reported
            numbered_last = self._uids[-1]
            gone = self._gone
            for m in _SHARED.changed(msgs, since, numbered_last):
                if reported.get(m.uid, 0) < m.modseq and m.uid not in gone:
                    self._flags[m.uid] = (m.flags, m.modseq)
        self._reported.clear()
        self.modseq = max(self.modseq, snapshot.highestmodseq)
        new = [m.uid for m in msgs[split:]]
        self._new.extend(new)
        return new

    def mark_recent(self, uids: Iterable[int]) -> None:
        """These (new or initial) messages are \\Recent in this session (RFC 3501 §2.3.2)."""
        if self.rev2:  # RFC 9051 Appendix E: IMAP4rev2 has no \Recent flag
            return
        self._recent.update(uids)

    def expunged(self, uids: Iterable[int]) -> None:
        """This session removed these messages: EXPUNGE them at the next `flush(True)`."""
        numbered = set(self._uids)
        for u in uids:
            if u in numbered:
                self._gone.add(u)
                self._flags.pop(u, None)
            elif u in self._new:
                self._new.remove(u)

    def reported(self, uid: int, modseq: int) -> None:
        """The session sent this message's flags as of `modseq` (no unsolicited FETCH for it)."""
        if self._flags:
            self._flags.pop(uid, None)
        if modseq > self.modseq and self._reported.get(uid, 0) < modseq:  # newer than the last sync
            self._reported[uid] = modseq

    def reported_many(self, messages: Iterable[MessageLike]) -> None:
        """`reported(m.uid, m.modseq)` for each message (FETCH FLAGS of many messages)."""
        flags = self._flags
        since = self.modseq
        done = self._reported
        for m in messages:
            uid = m.uid
            if flags:
                flags.pop(uid, None)
            modseq = m.modseq
            if modseq > since and done.get(uid, 0) < modseq:
                done[uid] = modseq

    def pending(self) -> bool:
        """Is there anything `flush(True)` would send?"""
        return bool(self._gone or self._new or self._flags)

    # -- telling the client --------------------------------------------------------------------

    def flush(self, allow_expunge: bool, *, with_uid: bool = True) -> list[bytes]:
        """Untagged responses for everything pending, in order: EXPUNGE, EXISTS, RECENT, FETCH."""
        out: list[bytes] = []
        if allow_expunge and self._gone:
            uids = self._uids
            if self.qresync:  # RFC 7162 §3.2.10: one VANISHED with the UIDs
                out.append(b"* VANISHED %s\r\n" % render_set(self._gone).encode("ascii"))
            else:
                positions = sorted(bisect_left(uids, u) + 1 for u in self._gone)
                # RFC 3501 §7.4.1: each EXPUNGE renumbers the messages after it immediately.
                out.extend(b"* %d EXPUNGE\r\n" % (p - k) for k, p in enumerate(positions))
            gone = self._gone
            self._uids = _SHARED.without(uids, gone)
            self._recent.difference_update(gone)
            gone.clear()
        if self._new:
            self._uids = _SHARED.extended(self._uids, self._new)
            self._new.clear()
            out.append(b"* %d EXISTS\r\n" % len(self._uids))  # RFC 3501 §7.3.1
            # RFC 3501 §7.3.2: RECENT goes with EXISTS (as Dovecot sends it); not in IMAP4rev2
            if not self.rev2:
                out.append(b"* %d RECENT\r\n" % len(self._recent))
        if self._flags:
            for uid in sorted(self._flags):
                seq = self.seq(uid)
                if seq is None or uid in self._gone:
                    continue
                fl, modseq = self._flags[uid]
                flags = render_flags(fl, uid in self._recent)
                if self.condstore:  # RFC 7162 §3.1.4.1 (Dovecot: MODSEQ before FLAGS)
                    out.append(b"* %d FETCH (UID %d MODSEQ (%d) FLAGS %s)\r\n" % (seq, uid, modseq, flags)
                               if with_uid else b"* %d FETCH (MODSEQ (%d) FLAGS %s)\r\n" % (seq, modseq, flags))
                elif with_uid:
                    out.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, flags))
                else:
                    out.append(b"* %d FETCH (FLAGS %s)\r\n" % (seq, flags))
            self._flags.clear()
        return out


def _uid_of(m: MessageLike) -> int:
    return m.uid


class _Shared:
    """What many views compute alike, computed once: the sessions idling in one mailbox are told of
    one change together (the same snapshot, the same numbering before and after), so each answer
    is kept for the next view that asks the same. A view never changes a numbering array in place
    (it takes a new one), so views share them; 10,000 views of a 10,000-message mailbox hold one
    40 KB array, not 400 MB. One entry per kind: the last question and its answer."""

    def __init__(self) -> None:
        self._numbering: tuple[Sequence[MessageLike], array[int]] | None = None
        self._extended: tuple[array[int], tuple[int, ...], array[int]] | None = None
        self._without: tuple[array[int], frozenset[int], array[int]] | None = None
        self._changed: tuple[Sequence[MessageLike], int, int, list[MessageLike]] | None = None

    def numbering(self, messages: Sequence[MessageLike]) -> array[int]:
        last = self._numbering
        if last is not None and last[0] is messages:
            return last[1]
        uids = array("I", (m.uid for m in messages))
        self._numbering = (messages, uids)
        return uids

    def extended(self, uids: array[int], new: list[int]) -> array[int]:
        """`uids` followed by `new`, as a new array."""
        key = tuple(new)
        last = self._extended
        if last is not None and last[0] is uids and last[1] == key:
            return last[2]
        out = uids + array("I", key)
        self._extended = (uids, key, out)
        return out

    def without(self, uids: array[int], gone: set[int]) -> array[int]:
        """`uids` less `gone`, as a new array."""
        key = frozenset(gone)
        last = self._without
        if last is not None and last[0] is uids and last[1] == key:
            return last[2]
        out = array("I", (u for u in uids if u not in key))
        self._without = (uids, key, out)
        return out

    def changed(self, messages: Sequence[MessageLike], since: int, upto: int) -> list[MessageLike]:
        """The messages of the ascending `messages` with UID <= upto whose modseq is above `since`."""
        last = self._changed
        if last is not None and last[0] is messages and last[1] == since and last[2] == upto:
            return last[3]
        out = [m for m in messages[:bisect_right(messages, upto, key=_uid_of)] if m.modseq > since]
        self._changed = (messages, since, upto, out)
        return out


_SHARED = _Shared()


__all__ = ["View", "BadSequence", "render_flags", "MessageLike", "SnapshotLike"]
