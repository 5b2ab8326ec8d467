"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4) through the sans-IO IMAP session: RETURN (PARTIAL
low:high) of SEARCH and SORT, RETURN (UPDATE) with its unsolicited `* ESEARCH (TAG "t") ADDTO /
REMOVEFROM` (REMOVEFROM of an expunged message before its EXPUNGE, ADDTO of a new one after EXISTS),
CANCELUPDATE, the NOUPDATE limit; and the pure diff of context.py (a client applying an update to
the old result gets the new one). Real store in tmp_path, no socket."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap import commands as C
from mailhaven.imap.context import MAX_UPDATING, Updating, changes, uid_array, update_line
from tests.unit import test_imap_condstore
from tests.unit.test_imap_condstore import select
from tests.unit.test_imap_core import ALICE, PASSWORD, logged_in, message

ctx = test_imap_condstore.ctx  # the fixture: a real store in tmp_path


async def test_context_is_advertised(ctx: Any) -> None:
    d = await logged_in(ctx)
    caps = (await d.command(b"c CAPABILITY"))[0].split()
    assert b"CONTEXT=SEARCH" in caps and b"CONTEXT=SORT" in caps
    assert b"PARTIAL" not in caps  # RFC 9394's negative ranges are not offered (neither by Dovecot 2.3)


async def test_search_partial_ranges(ctx: Any) -> None:
    d, _ = await select(ctx, 5)
    assert await d.command(b"p1 SEARCH RETURN (PARTIAL 1:1) ALL") == [
        b'* ESEARCH (TAG "p1") PARTIAL (1:1 1)', b"p1 OK Search completed."]
    assert (await d.command(b"p2 SEARCH RETURN (PARTIAL 4:2) ALL"))[0] == b'* ESEARCH (TAG "p2") PARTIAL (2:4 2:4)'
    assert (await d.command(b"p3 SEARCH RETURN (PARTIAL 6:6) ALL"))[0] == b'* ESEARCH (TAG "p3") PARTIAL (6:6 NIL)'
    assert (await d.command(b"p4 SEARCH RETURN (PARTIAL 2:10) 1:2,4:5"))[0] == (
        b'* ESEARCH (TAG "p4") PARTIAL (2:10 2,4:5)')
    # the items in Dovecot 2.3's order: MIN MAX ALL PARTIAL COUNT
    assert (await d.command(b"p5 SEARCH RETURN (COUNT PARTIAL 2:3 MAX MIN) ALL"))[0] == (
        b'* ESEARCH (TAG "p5") MIN 1 MAX 5 PARTIAL (2:3 2:3) COUNT 5')
    await d.command(b"s STORE 2 +FLAGS.SILENT (\\Deleted)")
    await d.command(b"x EXPUNGE")
    assert (await d.command(b"p6 UID SEARCH RETURN (PARTIAL 2:2) ALL"))[0] == b'* ESEARCH (TAG "p6") UID PARTIAL (2:2 3)'
    assert (await d.command(b"p7 SEARCH RETURN (PARTIAL 1:2) DELETED"))[0] == b'* ESEARCH (TAG "p7") PARTIAL (1:2 NIL)'
    for bad in (b"PARTIAL 1", b"PARTIAL 1:*", b"PARTIAL *:1", b"PARTIAL 0:2", b"PARTIAL 1:2 ALL", b"PARTIAL 1:2 PARTIAL 3:4"):
        assert (await d.command(b"b SEARCH RETURN (" + bad + b") ALL"))[-1].startswith(b"b BAD "), bad


async def test_sort_partial_is_a_slice_in_sort_order(ctx: Any) -> None:
    d, _ = await select(ctx, 5)
    assert await d.command(b"p1 SORT RETURN (PARTIAL 2:4) (REVERSE SUBJECT) US-ASCII ALL") == [
        b'* ESEARCH (TAG "p1") PARTIAL (2:4 4,3,2)', b"p1 OK Sort completed."]
    assert (await d.command(b"p2 UID SORT RETURN (PARTIAL 1:6 COUNT) (SUBJECT) US-ASCII ALL"))[0] == (
        b'* ESEARCH (TAG "p2") UID PARTIAL (1:6 1:5) COUNT 5')
    assert (await d.command(b"b SORT RETURN (PARTIAL 1:*) (SUBJECT) US-ASCII ALL"))[-1].startswith(b"b BAD ")


async def test_search_update_follows_flags_expunges_and_new_mail(ctx: Any) -> None:
    """search-context-update of imaptest, byte for byte as Dovecot 2.3 answers."""
    d, _ = await select(ctx, 5)
    assert await d.command(b"u SEARCH RETURN (UPDATE) SEEN") == [b'* ESEARCH (TAG "u")', b"u OK Search completed."]
    lines = await d.command(b"s1 STORE 1,2,4 +FLAGS (\\Seen)")
    assert lines[-2:] == [b'* ESEARCH (TAG "u") ADDTO (0 1:2,4)', b"s1 OK Store completed."]
    lines = await d.command(b"s2 STORE 1,2 -FLAGS (\\Seen)")
    assert lines[-2:] == [b'* ESEARCH (TAG "u") REMOVEFROM (0 1:2)', b"s2 OK Store completed."]
    await d.command(b"s3 STORE 3:5 +FLAGS.SILENT (\\Deleted)")
    # RFC 5267 §4.3: the removal names message 4 by the number the client holds, before the EXPUNGEs
    assert await d.command(b"x EXPUNGE") == [b'* ESEARCH (TAG "u") REMOVEFROM (0 4)', b"* 3 EXPUNGE",
                                             b"* 3 EXPUNGE", b"* 3 EXPUNGE", b"x OK Expunge completed."]
    lines = await d.command(b"a APPEND INBOX (\\Seen) {5}\r\nhello")
    assert lines[-2] == b'* ESEARCH (TAG "u") ADDTO (0 3)' and lines.index(b"* 3 EXISTS") < len(lines) - 2
    assert await d.command(b"c CANCELUPDATE \"u\"") == [b"c OK Updates cancelled."]
    assert await d.command(b"s4 STORE 1 +FLAGS.SILENT (\\Seen)") == [b"s4 OK Store completed."]
    assert await d.command(b"c2 CANCELUPDATE \"u\"") == [b"c2 NO Unknown tag."]
    assert (await d.command(b"c3 CANCELUPDATE u"))[-1].startswith(b"c3 BAD ")


async def test_uid_search_update_names_uids_and_sees_other_sessions(ctx: Any) -> None:
    d, _ = await select(ctx, 4)
    other = await logged_in(ctx)
    await other.command(b"o1 SELECT INBOX")
    assert (await d.command(b"u UID SEARCH RETURN (UPDATE ALL) FLAGGED"))[0] == b'* ESEARCH (TAG "u") UID'
    await other.command(b"o2 STORE 2:3 +FLAGS.SILENT (\\Flagged)")
    lines = await d.command(b"n NOOP")
    assert b'* ESEARCH (TAG "u") UID ADDTO (0 2:3)' in lines
    fetches = [i for i, x in enumerate(lines) if b" FETCH (" in x]
    assert len(fetches) == 2 and lines.index(b'* ESEARCH (TAG "u") UID ADDTO (0 2:3)') > max(fetches)
    await other.command(b"o3 STORE 2 +FLAGS.SILENT (\\Deleted)")
    await other.command(b"o4 EXPUNGE")
    lines = await d.command(b"n2 NOOP")
    assert lines[:2] == [b'* ESEARCH (TAG "u") UID REMOVEFROM (0 2)', b"* 2 EXPUNGE"]
    # a FETCH may not tell the EXPUNGE (RFC 3501 §7.4.1): the removal is told (its number stays
    # valid until the EXPUNGE), the EXPUNGE waits for a command that may send it
    await other.command(b"o5 STORE 2 +FLAGS.SILENT (\\Deleted)")
    await other.command(b"o6 EXPUNGE")
    lines = await d.command(b"f FETCH 1 FLAGS")
    assert b'* ESEARCH (TAG "u") UID REMOVEFROM (0 3)' in lines and not any(b"EXPUNGE" in x for x in lines)
    assert await d.command(b"n3 NOOP") == [b"* 2 EXPUNGE", b"n3 OK NOOP completed."]


async def test_sequence_sets_of_an_updating_search_name_the_messages_it_found(ctx: Any) -> None:
    """An expunge renumbers messages; the search keeps naming the ones its set named then, and a
    message that did not change is not searched again."""
    d, _ = await select(ctx, 5)
    assert (await d.command(b"u SEARCH RETURN (UPDATE ALL) 2:3 SEEN"))[0] == b'* ESEARCH (TAG "u")'
    await d.command(b"s STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert await d.command(b"x EXPUNGE") == [b"* 1 EXPUNGE", b"x OK Expunge completed."]
    # old 2:3 are now 1:2; old 4 (now 3) stays outside though its number fell into "2:3"
    assert (await d.command(b"s1 STORE 1:3 +FLAGS.SILENT (\\Seen)"))[-2] == b'* ESEARCH (TAG "u") ADDTO (0 1:2)'
    lines = await d.command(b"a APPEND INBOX (\\Seen) {5}\r\nhello")
    assert not any(b"ESEARCH" in x for x in lines)  # message 5 is new, not one the set named
    assert (await d.command(b"s2 STORE 2 -FLAGS.SILENT (\\Seen)"))[-2] == b'* ESEARCH (TAG "u") REMOVEFROM (0 2)'


async def test_updating_search_on_keywords_and_new_mail_from_elsewhere(ctx: Any) -> None:
    d, _ = await select(ctx, 2)
    assert (await d.command(b"u UID SEARCH RETURN (UPDATE) KEYWORD $Work"))[0] == b'* ESEARCH (TAG "u") UID'
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    uid = await mb.append(message(9), flags=frozenset({"$Work"}))
    lines = await d.command(b"n NOOP")
    assert lines[-2] == b'* ESEARCH (TAG "u") UID ADDTO (0 %d)' % uid and b"* 3 EXISTS" in lines
    lines = await d.command(b"s STORE 1 +FLAGS ($Work)")
    assert lines[-2] == b'* ESEARCH (TAG "u") UID ADDTO (0 1)'


async def test_idle_tells_updates_as_they_happen(ctx: Any) -> None:
    """While idling (the session drops its snapshot between wakes), a delivery joins the result."""
    d, _ = await select(ctx, 1)
    assert (await d.command(b"u SEARCH RETURN (UPDATE) UNSEEN"))[0] == b'* ESEARCH (TAG "u")'
    assert await d.send(b"i IDLE\r\n") == b"+ idling\r\n"
    wait = d.wait
    assert wait is not None and wait.changes is not None
    await ctx.store.deliver([(ALICE, "INBOX")], message(2))
    await asyncio.wait_for(wait.changes.wait(), 5)
    assert await d.run() == b'* 2 EXISTS\r\n* 2 RECENT\r\n* ESEARCH (TAG "u") ADDTO (0 2)\r\n'
    assert await d.send(b"DONE\r\n") == b"i OK Idle completed.\r\n"


async def test_sort_update_tells_positions(ctx: Any) -> None:
    d, _ = await select(ctx, 5)
    await d.command(b"s STORE 2,4 +FLAGS.SILENT (\\Seen)")
    assert (await d.command(b"u UID SORT RETURN (UPDATE ALL) (REVERSE SUBJECT) US-ASCII SEEN"))[0] == (
        b'* ESEARCH (TAG "u") UID ALL 4,2')
    # 5 and 1 join: the result is 5 4 2 1, so 5 goes to position 1 and 1 to position 4
    assert (await d.command(b"s1 STORE 1,5 +FLAGS.SILENT (\\Seen)"))[-2] == b'* ESEARCH (TAG "u") UID ADDTO (1 5 4 1)'
    # 4 and 1 leave (positions 2 and 4 of 5 4 2 1), highest first
    assert (await d.command(b"s2 STORE 1,4 -FLAGS.SILENT (\\Seen)"))[-2] == (
        b'* ESEARCH (TAG "u") UID REMOVEFROM (4 1 2 4)')
    assert (await d.command(b"v SORT RETURN (UPDATE) (SUBJECT) US-ASCII DELETED"))[0] == b'* ESEARCH (TAG "v")'
    assert (await d.command(b"s3 STORE 3 +FLAGS.SILENT (\\Deleted)"))[-2] == b'* ESEARCH (TAG "v") ADDTO (1 3)'


async def test_updating_searches_are_bounded_and_named_once(ctx: Any) -> None:
    d, _ = await select(ctx, 2)
    for i in range(MAX_UPDATING):
        assert (await d.command(b"t%d SEARCH RETURN (UPDATE) SEEN" % i))[-1] == b"t%d OK Search completed." % i
    assert await d.command(b"t99 SEARCH RETURN (UPDATE COUNT) SEEN") == [
        b'* NO [NOUPDATE "t99"] Too many updating searches', b'* ESEARCH (TAG "t99") COUNT 0',
        b"t99 OK Search completed."]
    assert (await d.command(b"t98 SORT RETURN (UPDATE) (SIZE) UTF-8 SEEN"))[0] == b'* NO [NOUPDATE "t98"] Too many updating searches'
    assert (await d.command(b"t1 SEARCH RETURN (UPDATE) SEEN"))[-1] == b"t1 BAD Duplicate search update tag"
    lines = await d.command(b"s STORE 1 +FLAGS.SILENT (\\Seen)")
    assert len([x for x in lines if x.endswith(b"ADDTO (0 1)")]) == MAX_UPDATING
    await d.command(b"c CANCELUPDATE \"t0\" \"t1\"")
    assert (await d.command(b"t1 SEARCH RETURN (UPDATE) SEEN"))[-1] == b"t1 OK Search completed."
    # a new selection starts without any
    await d.command(b"s2 SELECT INBOX")
    assert await d.command(b"c2 CANCELUPDATE \"t2\"") == [b"c2 NO Unknown tag."]


async def test_cancelupdate_needs_a_selected_mailbox(ctx: Any) -> None:
    d = await logged_in(ctx)
    assert (await d.command(b'c CANCELUPDATE "x"'))[-1].startswith(b"c BAD ")
    assert ALICE and PASSWORD  # the helpers' account


# -- the pure diff ---------------------------------------------------------------------------------


def _apply(old: list[int], removed: list[tuple[int, int]], added: list[tuple[int, int]]) -> list[int]:
    """What a client does with a SORT update: each pair in the order given."""
    out = list(old)
    for pos, uid in removed:
        assert out[pos - 1] == uid
        del out[pos - 1]
    for pos, uid in added:
        out.insert(pos - 1, uid)
    return out


@given(st.lists(st.integers(1, 60), unique=True), st.data())
def test_sorted_update_applied_in_order_gives_the_new_result(order: list[int], data: st.DataObject) -> None:
    """The messages that stay keep their relative order (sort keys never change), so any two
    subsequences of one order stand for the old and new results."""
    old = [u for u in order if data.draw(st.booleans())]
    new = [u for u in order if data.draw(st.booleans())]
    removed, added = changes(old, new, ordered=True)
    assert _apply(old, removed, added) == new


@given(st.sets(st.integers(1, 60)), st.sets(st.integers(1, 60)))
def test_unordered_update_is_two_sets(old: set[int], new: set[int]) -> None:
    removed, added = changes(sorted(old), sorted(new), ordered=False)
    assert {u for _, u in removed} == old - new and {u for _, u in added} == new - old
    assert all(p == 0 for p, _ in removed + added)
    up = Updating("t", True, C.SearchAnd((C.SearchAll(),)), None, uid_array(sorted(old)))
    line = update_line(up, removed, added, lambda u: u)
    assert (line == b"") == (old == new)
    assert line.startswith(b'* ESEARCH (TAG "t") UID') or not line
