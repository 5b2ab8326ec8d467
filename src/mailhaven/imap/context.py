"""Updating searches and sorts (RFC 5267 §4.3, CONTEXT=SEARCH and CONTEXT=SORT): what the server
keeps of each and the `* ESEARCH (TAG "t") ... REMOVEFROM/ADDTO` lines that tell its changes.

Owns: `Updating` (one SEARCH/SORT ... RETURN (UPDATE): its tag, whether it answers UIDs, its
criteria with "$" already resolved, its sort criteria for a SORT, and the result the client holds,
as UIDs in result order), the limit of them per session (`MAX_UPDATING`, as Dovecot 2.3's
CLIENT_MAX_SEARCH_UPDATES), and the pure part of an update: which messages left and joined a
result (`changes`) and the line telling them (`update_line`).
Does not own: running the searches and sorts (session.py over searchadapt.py and sort.py), when
updates are sent (session.send_updates: removals of expunged messages before the EXPUNGEs, with the
numbers the client still has; the rest after the EXISTS/FETCH updates), parsing (parser.py).

Searched again: only the messages that changed since (MODSEQ above the last evaluation's
HIGHESTMODSEQ, or new), as Dovecot 2.3 does; the others keep their membership, which holds because
a key's meaning depends only on the message once sequence-number sets are frozen to the UIDs they
named when the search ran (`frozen`: an expunge elsewhere must not move a message in or out).

Positions (RFC 5267 §4.3): an unordered SEARCH result has none, so its REMOVEFROM and ADDTO carry
position 0 and one set of messages (as Dovecot 2.3). A SORT result is ordered: each removed message
is one (position, message) pair, positions in the old result, highest first, so a client removing
them in the order given finds each where it says; then each added message is one pair, positions
in the new result, lowest first, so inserting them in order leaves the new result. (The messages
that stay keep their relative order: sort keys do not change, ties go by sequence number.)
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mailhaven.imap import commands as C
from mailhaven.imap.seqset import SequenceSet
from mailhaven.imap.seqset import render as render_set

MAX_UPDATING = 10  # updating searches per session; more get NO [NOUPDATE] (RFC 5267 §4.3, as Dovecot)


@dataclass
class Updating:
    """One updating SEARCH or SORT of the selected mailbox."""

    tag: str
    uid: bool  # UID SEARCH / UID SORT: the updates name UIDs, else sequence numbers
    criteria: C.SearchAnd  # "$" already replaced by the UIDs it named (RFC 5182 §2.1)
    sort: tuple[tuple[str, bool], ...] | None  # the SORT criteria; None for a SEARCH
    # UIDs the client holds, ascending for a SEARCH, in sort order for a SORT; 4 octets each (UIDs are
    # 32-bit), so ten results of a 100,000-message mailbox hold 4 MB, not 36
    result: array[int]
    generation: int = 0  # Selected.generation the result was computed on
    modseq: int = 0  # the snapshot's HIGHESTMODSEQ then: only messages changed since are searched again
    last_uid: int = 0  # the snapshot's highest UID then: messages above it are new


Pair = tuple[int, int]  # (position, message)


def uid_array(uids: Iterable[int]) -> array[int]:
    """UIDs as a compact array (Updating.result)."""
    return array("I", uids)


def changes(old: Sequence[int], new: Sequence[int], ordered: bool) -> tuple[list[Pair], list[Pair]]:
    """(removed, added) between two results of UIDs: for an unordered result every position is 0 and
    the pairs are in ascending UID order; for an ordered one see the module docstring."""
    new_set = set(new)
    old_set = set(old)
    if not ordered:
        return ([(0, u) for u in sorted(old_set - new_set)], [(0, u) for u in sorted(new_set - old_set)])
    removed = [(i, u) for i, u in enumerate(old, 1) if u not in new_set]
    removed.reverse()
    added = [(i, u) for i, u in enumerate(new, 1) if u not in old_set]
    return removed, added


def frozen(key: C.SearchKey, uids_of: Callable[[SequenceSet], list[int]]) -> C.SearchKey:
    """`key` with every sequence-number set replaced by the UIDs it names now (`uids_of`)."""
    return C.map_sets(key, lambda s: C.SearchSet(SequenceSet.of(uids_of(s.set)), uid=True)
                      if not s.uid and not s.set.saved else s)


def update_line(up: Updating, removed: list[Pair], added: list[Pair], number: Callable[[int], int | None]) -> bytes:
    """`* ESEARCH (TAG "t") [UID] [REMOVEFROM (...)] [ADDTO (...)]`, or b"" when nothing changed;
    `number` turns a UID into what the client holds (itself for UID SEARCH, else its sequence number;
    None, never expected, leaves the message out rather than name a number the client lacks)."""
    removed = [(p, n) for p, u in removed if (n := number(u)) is not None]
    added = [(p, n) for p, u in added if (n := number(u)) is not None]
    if not removed and not added:
        return b""
    line = b'* ESEARCH (TAG "%s")' % up.tag.encode("ascii")
    if up.uid:
        line += b" UID"
    for name, pairs in ((b"REMOVEFROM", removed), (b"ADDTO", added)):
        if not pairs:
            continue
        if up.sort is None:
            line += b" %s (0 %s)" % (name, render_set(n for _, n in pairs).encode("ascii"))
        else:
            line += b" %s (%s)" % (name, b" ".join(b"%d %d" % (p, n) for p, n in pairs))
    return line + b"\r\n"


__all__ = ["MAX_UPDATING", "Pair", "Updating", "changes", "frozen", "uid_array", "update_line"]
