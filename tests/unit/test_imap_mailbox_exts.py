"""LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), STATUS=SIZE (RFC 8438), CREATE-SPECIAL-USE
(RFC 6154 §3), OBJECTID (RFC 8474) and SAVEDATE (RFC 8514) as whole dialogues through the sans-IO
session (test_imap_core.py's Dialogue), over a real store in tmp_path."""

from __future__ import annotations

import re
import time
from typing import Any

from mailhaven.imap import derived
from mailhaven.imap.session import MAILBOX_CAPABILITIES
from tests.unit import test_imap_core
from tests.unit.test_imap_core import ALICE, logged_in, message, selected

cfg = test_imap_core.cfg  # the fixtures: a real store in tmp_path
ctx = test_imap_core.ctx


async def _setup(ctx: Any) -> Any:
    """a.b.c and a.x (a is only a parent), foo, Sent (a default folder: \\Sent); subscribed:
    a.b.c, foo, INBOX and "gone" (no such mailbox)."""
    d = await logged_in(ctx)
    root = ctx.store.account(ALICE).path
    for folder in (".a.b.c", ".a.x"):  # made by another program: their parent is no mailbox
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True)
        (root / folder / "maildirfolder").touch()
    for name in (b"foo", b"gone"):
        assert (await d.command(b"c CREATE " + name))[-1].startswith(b"c OK ")
    for name in (b"a.b.c", b"foo", b"INBOX", b"gone"):
        assert (await d.command(b"s SUBSCRIBE " + name))[-1] == b"s OK Subscribe completed."
    assert (await d.command(b"x DELETE gone"))[-1] == b"x OK Delete completed."
    return d


async def test_capabilities_after_login_name_the_mailbox_extensions(ctx: Any) -> None:
    d = await logged_in(ctx)
    caps = (await d.command(b"c CAPABILITY"))[0].split()[2:]
    assert {c.decode() for c in caps} >= set(MAILBOX_CAPABILITIES)
    assert {b"LIST-EXTENDED", b"LIST-STATUS", b"STATUS=SIZE", b"CREATE-SPECIAL-USE", b"OBJECTID", b"SAVEDATE"} <= set(caps)


async def test_plain_list_is_unchanged_and_an_empty_selection_makes_it_extended(ctx: Any) -> None:
    d = await _setup(ctx)
    plain = await d.command(b'l LIST "" a*')
    assert plain == [b'* LIST (\\HasNoChildren) "." a.b.c', b'* LIST (\\HasNoChildren) "." a.x',
                     b'* LIST (\\Noselect \\HasChildren) "." a', b'* LIST (\\Noselect \\HasChildren) "." a.b',
                     b"l OK List completed."]
    # RFC 5258 §3: no CHILDREN asked, no children info; a parent that is no mailbox is \NonExistent
    assert await d.command(b'l LIST () "" a*') == [
        b'* LIST (\\NonExistent) "." a', b'* LIST (\\NonExistent) "." a.b', b'* LIST () "." a.b.c',
        b'* LIST () "." a.x', b"l OK List completed."]
    assert await d.command(b'l LIST "" a* RETURN (CHILDREN)') == [
        b'* LIST (\\NonExistent \\HasChildren) "." a', b'* LIST (\\NonExistent \\HasChildren) "." a.b',
        b'* LIST (\\HasNoChildren) "." a.b.c', b'* LIST (\\HasNoChildren) "." a.x', b"l OK List completed."]
    assert await d.command(b'l LIST () "" ""') == [b"l OK List completed."]  # "" is no special pattern


async def test_subscribed_selection_lists_subscriptions_existing_or_not(ctx: Any) -> None:
    d = await _setup(ctx)
    assert await d.command(b'l LIST (SUBSCRIBED) "" *') == [
        b'* LIST (\\Subscribed) "." INBOX', b'* LIST (\\Subscribed) "." a.b.c', b'* LIST (\\Subscribed) "." foo',
        b'* LIST (\\Subscribed \\NonExistent) "." gone', b"l OK List completed."]
    assert await d.command(b'l LIST "" (INBOX f*) RETURN (SUBSCRIBED CHILDREN)') == [
        b'* LIST (\\Subscribed \\HasNoChildren) "." INBOX', b'* LIST (\\Subscribed \\HasNoChildren) "." foo',
        b"l OK List completed."]


async def test_recursivematch_reports_parents_of_subscribed_names_the_pattern_misses(ctx: Any) -> None:
    d = await _setup(ctx)
    assert await d.command(b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" % RETURN (CHILDREN)') == [
        b'* LIST (\\Subscribed \\HasNoChildren) "." INBOX',
        b'* LIST (\\NonExistent \\HasChildren) "." a (CHILDINFO ("SUBSCRIBED"))',
        b'* LIST (\\Subscribed \\HasNoChildren) "." foo',
        b'* LIST (\\Subscribed \\NonExistent \\HasNoChildren) "." gone', b"l OK List completed."]
    # the subscribed child matches too: its parent is not listed for it (RFC 5258 §3.5)
    assert await d.command(b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" (a a.b a.b.c)') == [
        b'* LIST (\\Subscribed) "." a.b.c', b"l OK List completed."]


async def test_special_use_selection_and_return_option(ctx: Any) -> None:
    d = await _setup(ctx)
    lines = await d.command(b'l LIST (SPECIAL-USE) "" *')
    assert b'* LIST (\\Sent) "." Sent' in lines and b'* LIST (\\Trash) "." Trash' in lines
    assert not [ln for ln in lines if b"foo" in ln or b"INBOX" in ln]
    assert await d.command(b'l LIST "" S* RETURN (SPECIAL-USE)') == [b'* LIST (\\Sent) "." Sent',
                                                                      b"l OK List completed."]
    assert await d.command(b'l LIST "" S*') == [b'* LIST (\\HasNoChildren \\Sent) "." Sent', b"l OK List completed."]
    assert (await d.command(b"s SUBSCRIBE Sent"))[-1] == b"s OK Subscribe completed."
    assert await d.command(b'l LSUB "" S*') == [b'* LSUB (\\Sent) "." Sent', b"l OK Lsub completed."]  # as Dovecot


async def test_bad_list_options_are_bad_as_dovecot_answers_them(ctx: Any) -> None:
    d = await logged_in(ctx)
    for line, text in ((b'l LIST (RECURSIVEMATCH) "" %', b"RECURSIVEMATCH must not be the only selection."),
                       (b'l LIST (RECURSIVEMATCH REMOTE) "" %', b"RECURSIVEMATCH must not be the only selection."),
                       (b'l LIST (FOO) "" %', b"Unknown select options"),
                       (b'l LIST "" % RETURN (FOO)', b"Unknown return options"),
                       (b'l LIST "" % RETURN (STATUS)', b"Unknown return options"),
                       (b'l LIST "" % RETURN (STATUS ())', b"Empty status list")):
        assert await d.command(line) == [b"l BAD " + text]
    assert (await d.command(b'l LIST (REMOTE) "" INBOX')) == [b'* LIST () "." INBOX', b"l OK List completed."]


async def test_list_status_follows_each_selectable_mailbox_with_its_status(ctx: Any) -> None:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    await mb.append(message(1))
    await mb.append(message(2), frozenset({"\\Seen"}))
    d = await _setup(ctx)
    lines = await d.command(b'l LIST "" (INBOX a*) RETURN (STATUS (UNSEEN SIZE MESSAGES))')
    size = len(message(1)) + len(message(2))
    assert lines == [b'* LIST () "." INBOX', b"* STATUS INBOX (MESSAGES 2 UNSEEN 1 SIZE %d)" % size,
                     b'* LIST (\\NonExistent) "." a', b'* LIST (\\NonExistent) "." a.b',
                     b'* LIST () "." a.b.c', b"* STATUS a.b.c (MESSAGES 0 UNSEEN 0 SIZE 0)",
                     b'* LIST () "." a.x', b"* STATUS a.x (MESSAGES 0 UNSEEN 0 SIZE 0)", b"l OK List completed."]
    # not for a subscription that does not exist, nor for a parent listed only for its children
    lines = await d.command(b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" % RETURN (STATUS (MESSAGES))')
    assert [ln for ln in lines if ln.startswith(b"* STATUS")] == [b"* STATUS INBOX (MESSAGES 2)",
                                                                   b"* STATUS foo (MESSAGES 0)"]


async def test_status_items_come_in_dovecots_order_with_size_deleted_and_mailboxid(ctx: Any) -> None:
    d = await selected(ctx, 3)
    assert (await d.command(b"s STORE 2 +FLAGS (\\Deleted)"))[-1] == b"s OK Store completed."
    lines = await d.command(b"t STATUS INBOX (SIZE UNSEEN MESSAGES DELETED-STORAGE DELETED MAILBOXID)")
    n = len(message(1))
    m = re.fullmatch(rb"\* STATUS INBOX \(MESSAGES 3 DELETED 1 UNSEEN 3 SIZE (\d+) DELETED-STORAGE (\d+) "
                     rb"MAILBOXID \((F[0-9a-f]{24})\)\)", lines[0])
    assert m, lines
    assert int(m.group(1)) == 3 * n and int(m.group(2)) == n
    assert lines[-1] == b"t OK Status completed."


async def test_mailboxid_in_create_select_and_status_survives_rename(ctx: Any) -> None:
    d = await logged_in(ctx)
    created = await d.command(b"c CREATE Work")
    m = re.fullmatch(rb"c OK \[MAILBOXID \((F[0-9a-f]{24})\)\] Create completed\.", created[-1])
    assert m, created
    ident = m.group(1)
    assert (await d.command(b"r RENAME Work Job"))[-1] == b"r OK Rename completed."
    lines = await d.command(b"s EXAMINE Job")
    assert b"* OK [MAILBOXID (%s)] Ok" % ident in lines
    assert (await d.command(b"t STATUS Job (MAILBOXID)"))[0] == b"* STATUS Job (MAILBOXID (%s))" % ident
    # a new mailbox under the old name is another mailbox
    other = (await d.command(b"c CREATE Work"))[-1]
    assert ident not in other
    inbox = [ln for ln in await d.command(b"s SELECT INBOX") if b"MAILBOXID" in ln]
    assert inbox and ident not in inbox[0]


async def test_create_with_a_special_use(ctx: Any) -> None:
    d = await logged_in(ctx)
    assert (await d.command(b"c CREATE Outbox (USE (\\sent))"))[-1].startswith(b"c OK [MAILBOXID ")
    assert await d.command(b'l LIST "" Outbox RETURN (SPECIAL-USE)') == [b'* LIST (\\Sent) "." Outbox',
                                                                         b"l OK List completed."]
    assert await d.command(b"c CREATE X (USE (\\Foo))") == [
        b"c NO [USEATTR] Special-use attribute \\Foo is not supported."]
    assert await d.command(b"c CREATE X (USE (\\All))") == [
        b"c NO [USEATTR] Special-use attribute \\All is not supported."]
    assert await d.command(b"c CREATE X (USE (\\Drafts \\Sent))") == [
        b"c NO [USEATTR] A mailbox can have only one special-use attribute."]
    assert await d.command(b'l LIST "" X') == [b"l OK List completed."]  # nothing was created
    assert (await d.command(b"c CREATE X (USE ())"))[-1].startswith(b"c OK ")
    assert await d.command(b"c CREATE Y (FOO)") == [b"c BAD Unknown CREATE parameter"]


async def test_fetch_emailid_threadid_and_savedate(ctx: Any) -> None:
    before = int(time.time())
    d = await selected(ctx, 2)
    lines = await d.command(b"f FETCH 1:2 (EMAILID THREADID SAVEDATE)")
    ids = [re.match(rb"\* \d FETCH \(EMAILID \((M[0-9a-f]{24})\) THREADID NIL SAVEDATE \"([^\"]+)\"\)", ln)
           for ln in lines[:2]]
    assert all(ids), lines
    assert ids[0].group(1) != ids[1].group(1)  # type: ignore[union-attr]
    # the EMAILID stays over flag changes (a rename of the file) and a MOVE
    assert (await d.command(b"s STORE 1 +FLAGS (\\Seen \\Flagged)"))[-1] == b"s OK Store completed."
    again = await d.command(b"f FETCH 1 (EMAILID)")
    assert again[0] == b"* 1 FETCH (EMAILID (%s))" % ids[0].group(1)  # type: ignore[union-attr]
    # with data items too (the per-message renderer)
    assert (await d.command(b"f FETCH 1 (EMAILID BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))[0].startswith(
        b"* 1 FETCH (EMAILID (%s) BODY[HEADER.FIELDS (SUBJECT)]" % ids[0].group(1))  # type: ignore[union-attr]
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    saved = derived.save_date((await mb.snapshot()).messages[0].key, 0)
    assert before - 1 <= saved <= time.time() + 1  # the key's time: when the message was saved
    assert (await d.command(b"c CREATE Kept"))[-1].startswith(b"c OK ")
    assert (await d.command(b"m MOVE 1 Kept"))[-1] == b"m OK Move completed."
    assert (await d.command(b"s SELECT Kept"))[-1] == b"s OK [READ-WRITE] Select completed."
    assert (await d.command(b"f FETCH 1 (EMAILID)"))[0] == b"* 1 FETCH (EMAILID (%s))" % ids[0].group(1)  # type: ignore[union-attr]


async def test_search_emailid_threadid_and_save_dates(ctx: Any) -> None:
    d = await selected(ctx, 3)
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    keys = [m.key for m in (await mb.snapshot()).messages]
    want = derived.email_id(keys[1]).encode()
    assert await d.command(b"s SEARCH EMAILID " + want) == [b"* SEARCH 2", b"s OK Search completed."]
    assert await d.command(b"s UID SEARCH NOT EMAILID " + want) == [b"* SEARCH 1 3", b"s OK UID Search completed."]
    assert await d.command(b"s SEARCH THREADID T1") == [b"* SEARCH", b"s OK Search completed."]
    assert await d.command(b"s SEARCH SAVEDATESUPPORTED") == [b"* SEARCH 1 2 3", b"s OK Search completed."]
    today = time.strftime("%d-%b-%Y").encode()
    assert await d.command(b"s SEARCH SAVEDON " + today) == [b"* SEARCH 1 2 3", b"s OK Search completed."]
    assert await d.command(b"s SEARCH SAVEDBEFORE " + today) == [b"* SEARCH", b"s OK Search completed."]
    assert await d.command(b"s SEARCH SAVEDSINCE 1-Jan-2000 UNSEEN") == [b"* SEARCH 1 2 3",
                                                                          b"s OK Search completed."]
    assert await d.command(b"s SEARCH EMAILID a.b") == [b"s BAD Unexpected extra arguments"]
