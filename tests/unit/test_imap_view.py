"""imap.view: a session's sequence numbers and pending updates (RFC 3501 §2.3.1.2, §5.2, §7.4.1).

Table tests for each rule, and a hypothesis state machine: a model store changes at random, a model
client applies every response the view sends, and the two must always agree on the numbering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mailhaven.imap.view import BadSequence, View, render_flags

SEEN = "\\Seen"


@dataclass(frozen=True)
class Msg:
    uid: int
    flags: frozenset[str]
    modseq: int


@dataclass
class Snap:
    highestmodseq: int
    messages: list[Msg] = field(default_factory=list)


class FakeStore:
    """UIDs ascending, never reused; every change bumps highestmodseq."""

    def __init__(self, n: int = 0) -> None:
        self.modseq = 1
        self.uidnext = 1
        self.msgs: dict[int, Msg] = {}
        for _ in range(n):
            self.add()

    def add(self) -> int:
        self.modseq += 1
        uid = self.uidnext
        self.uidnext += 1
        self.msgs[uid] = Msg(uid, frozenset(), self.modseq)
        return uid

    def remove(self, uid: int) -> None:
        self.modseq += 1
        del self.msgs[uid]

    def set_flags(self, uid: int, flags: frozenset[str]) -> None:
        self.modseq += 1
        self.msgs[uid] = Msg(uid, flags, self.modseq)

    def snap(self) -> Snap:
        return Snap(self.modseq, [self.msgs[u] for u in sorted(self.msgs)])


def apply(client: list[int], lines: list[bytes], numbering: list[int]) -> list[int]:
    """What a client does with untagged responses: EXPUNGE n removes number n; EXISTS n appends
    numbers up to n (the client would learn their UIDs by FETCH; the test takes them from the
    view's numbering after the flush)."""
    client = list(client)
    for line in lines:
        m = re.match(rb"\* (\d+) (EXPUNGE|EXISTS|RECENT|FETCH)", line)
        assert m, line
        n, what = int(m.group(1)), m.group(2)
        if what == b"EXPUNGE":
            assert 1 <= n <= len(client)
            del client[n - 1]
        elif what == b"EXISTS":
            assert n >= len(client)
            assert client == numbering[: len(client)]
            client.extend(numbering[len(client):n])
        elif what == b"FETCH":
            assert 1 <= n <= len(client)
    return client


def test_initial_numbering_follows_uid_order() -> None:
    s = FakeStore(3)
    v = View(s.snap())
    assert v.exists == 3
    assert [v.uid(i) for i in (1, 2, 3)] == [1, 2, 3]
    assert v.seq(2) == 2 and v.seq(99) is None
    assert v.flush(True) == []


def test_sequence_number_beyond_exists_is_bad() -> None:
    v = View(FakeStore(2).snap())
    with pytest.raises(BadSequence):
        v.uid(3)
    with pytest.raises(BadSequence):
        v.by_seqs([(1, 3)])


def test_uid_ranges_select_only_numbered_messages() -> None:
    s = FakeStore(5)
    s.remove(3)
    v = View(s.snap())
    assert v.by_uids([(2, 4), (5, 100)]) == [(2, 2), (3, 4), (4, 5)]


def test_new_message_is_not_numbered_until_exists_is_sent() -> None:
    s = FakeStore(2)
    v = View(s.snap())
    s.add()
    assert v.sync(s.snap()) == [3]
    assert v.exists == 2  # a command running now cannot see number 3 yet
    assert v.flush(False) == [b"* 3 EXISTS\r\n", b"* 0 RECENT\r\n"]
    assert v.exists == 3 and v.uid(3) == 3


def test_recent_count_goes_with_exists() -> None:
    s = FakeStore(1)
    v = View(s.snap())
    v.mark_recent(v.sync((s.add(), s.snap())[1]))
    assert v.flush(True) == [b"* 2 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert v.is_recent(2)


def test_expunge_waits_while_fetch_store_search_answer() -> None:
    s = FakeStore(3)
    v = View(s.snap())
    s.remove(2)
    v.sync(s.snap())
    assert v.flush(False) == []
    assert v.is_gone(2) and v.uid(2) == 2  # RFC 3501 §7.4.1: number 2 still means UID 2
    assert v.flush(True) == [b"* 2 EXPUNGE\r\n"]
    assert v.exists == 2 and v.uid(2) == 3


def test_several_expunges_are_renumbered_as_sent() -> None:
    s = FakeStore(6)
    v = View(s.snap())
    for u in (2, 3, 5):
        s.remove(u)
    v.sync(s.snap())
    # each EXPUNGE shifts later numbers down by one (RFC 3501 §7.4.1 example)
    assert v.flush(True) == [b"* 2 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n"]
    assert list(v.uids) == [1, 4, 6]


def test_exists_during_pending_expunge_counts_the_unexpunged_number() -> None:
    s = FakeStore(3)
    v = View(s.snap())
    s.remove(1)
    s.add()
    v.sync(s.snap())
    assert v.flush(False) == [b"* 4 EXISTS\r\n", b"* 0 RECENT\r\n"]
    assert v.flush(True) == [b"* 1 EXPUNGE\r\n"]
    assert list(v.uids) == [2, 3, 4]


def test_flag_change_by_another_session_is_reported_once() -> None:
    s = FakeStore(3)
    v = View(s.snap())
    s.set_flags(2, frozenset({SEEN}))
    v.sync(s.snap())
    assert v.flush(False) == [b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n"]
    v.sync(s.snap())
    assert v.flush(True) == []


def test_flags_this_session_reported_are_not_repeated() -> None:
    s = FakeStore(2)
    v = View(s.snap())
    s.set_flags(1, frozenset({SEEN}))
    v.reported(1, s.msgs[1].modseq)
    v.sync(s.snap())
    assert v.flush(True) == []


def test_flag_change_of_unannounced_message_is_not_sent_separately() -> None:
    s = FakeStore(1)
    v = View(s.snap())
    u = s.add()
    s.set_flags(u, frozenset({SEEN}))
    v.sync(s.snap())
    assert v.flush(True) == [b"* 2 EXISTS\r\n", b"* 0 RECENT\r\n"]


def test_new_message_removed_before_announcement_is_never_announced() -> None:
    s = FakeStore(1)
    v = View(s.snap())
    u = s.add()
    v.sync(s.snap())
    s.remove(u)
    v.sync(s.snap())
    assert v.flush(True) == []
    assert v.exists == 1


def test_own_expunge_is_reported_at_flush() -> None:
    s = FakeStore(3)
    v = View(s.snap())
    s.remove(3)
    v.expunged([3])
    assert v.flush(True) == [b"* 3 EXPUNGE\r\n"]
    v.sync(s.snap())
    assert v.flush(True) == []


def test_render_flags_orders_system_flags_then_recent_then_keywords() -> None:
    assert render_flags(frozenset({"\\Seen", "$Junk", "\\Answered", "Alpha"}), True) == \
        b"(\\Answered \\Seen \\Recent $Junk Alpha)"
    assert render_flags(frozenset()) == b"()"


class ViewMachine(RuleBasedStateMachine):
    """Random store changes, syncs and flushes; the client model must track the view exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.store = FakeStore(3)
        self.view = View(self.store.snap())
        self.client = [m.uid for m in self.store.snap().messages]

    @rule()
    def deliver(self) -> None:
        self.store.add()

    @precondition(lambda self: bool(self.store.msgs))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        self.store.remove(data.draw(st.sampled_from(sorted(self.store.msgs))))

    @precondition(lambda self: bool(self.store.msgs))
    @rule(data=st.data(), seen=st.booleans())
    def flag(self, data: st.DataObject, seen: bool) -> None:
        uid = data.draw(st.sampled_from(sorted(self.store.msgs)))
        self.store.set_flags(uid, frozenset({SEEN}) if seen else frozenset())

    @precondition(lambda self: bool(self.store.msgs))
    @rule(data=st.data())
    def own_expunge(self, data: st.DataObject) -> None:
        uid = data.draw(st.sampled_from(sorted(self.store.msgs)))
        self.store.remove(uid)
        self.view.expunged([uid])

    @rule()
    def sync(self) -> None:
        self.view.sync(self.store.snap())

    @rule(allow=st.booleans())
    def flush(self, allow: bool) -> None:
        lines = self.view.flush(allow)
        if not allow:
            assert not any(b"EXPUNGE" in line for line in lines)
        self.client = apply(self.client, lines, list(self.view.uids))

    @rule()
    def sync_and_flush_everything(self) -> None:
        self.view.sync(self.store.snap())
        self.client = apply(self.client, self.view.flush(True), list(self.view.uids))
        assert self.client == sorted(self.store.msgs)

    @invariant()
    def client_numbering_matches_view(self) -> None:
        assert self.client == list(self.view.uids)

    @invariant()
    def numbering_is_ascending(self) -> None:
        uids = list(self.view.uids)
        assert uids == sorted(set(uids))


ViewMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestViewStateMachine = ViewMachine.TestCase
