"""CONDSTORE (RFC 7162 §3.1) through the sans-IO IMAP session: the capability, ENABLE and the
CONDSTORE enabling commands, HIGHESTMODSEQ in SELECT/EXAMINE and STATUS, FETCH MODSEQ and
(CHANGEDSINCE), STORE's MODSEQ responses and (UNCHANGEDSINCE) with [MODIFIED], SEARCH MODSEQ and
its (MODSEQ n), and unsolicited FETCH with MODSEQ. Response shapes follow Dovecot 2.3 (probed with
its imap server) where the RFC leaves them open. Real store in tmp_path, no socket."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.test_imap_core import ALICE, Dialogue, logged_in, message


@pytest.fixture
async def ctx(make_config: Callable[..., Any]) -> AsyncIterator[Any]:
    from mailhaven.auth.users import Directory, UsersFile
    from mailhaven.store import Store

    cfg = make_config()
    store = Store(cfg.mail_root, hostname=cfg.hostname, fsync=False)
    await store.start()
    try:
        yield SimpleNamespace(config=cfg, store=store, directory=Directory(cfg, UsersFile.load(cfg.users_file)))
    finally:
        await store.close()


async def fill(ctx: Any, n: int) -> None:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    for i in range(n):
        await mb.append(message(i + 1))


async def highest(ctx: Any) -> int:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    return int((await mb.snapshot()).highestmodseq)


async def modseqs(ctx: Any) -> dict[int, int]:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    return {m.uid: m.modseq for m in (await mb.snapshot()).messages}


async def select(ctx: Any, n: int, command: bytes = b"s1 SELECT INBOX") -> tuple[Dialogue, list[bytes]]:
    await fill(ctx, n)
    d = await logged_in(ctx)
    lines = await d.command(command)
    assert lines[-1].startswith(b"s1 OK ["), lines
    return d, lines


async def test_condstore_is_advertised_before_and_after_login(ctx: Any) -> None:
    d = await logged_in(ctx)
    assert b" CONDSTORE" in d.greeting
    lines = await d.command(b"c CAPABILITY")
    assert b"CONDSTORE" in lines[0].split()


async def test_select_and_examine_report_highestmodseq_after_uidnext(ctx: Any) -> None:
    d, lines = await select(ctx, 3)
    hms = await highest(ctx)
    assert lines[-3].startswith(b"* OK [UIDNEXT 4]")
    assert lines[-2] == b"* OK [HIGHESTMODSEQ %d] Highest" % hms  # RFC 7162 §3.1.2.1: every SELECT
    lines = await d.command(b"e1 EXAMINE INBOX (CONDSTORE)")
    assert lines[-2] == b"* OK [HIGHESTMODSEQ %d] Highest" % hms
    assert lines[-1] == b"e1 OK [READ-ONLY] Examine completed."


async def test_select_with_an_unknown_parameter_is_bad(ctx: Any) -> None:
    d, _ = await select(ctx, 1)
    assert (await d.command(b"s2 SELECT INBOX (FOO)"))[-1] == b"s2 BAD Unknown SELECT parameter."
    assert (await d.command(b"s3 SELECT INBOX (CONDSTORE 1)"))[-1] == b"s3 BAD Unknown SELECT parameter."


async def test_enable_condstore(ctx: Any) -> None:
    await fill(ctx, 2)
    d = await logged_in(ctx)
    assert await d.command(b"e1 ENABLE X-FOO") == [b"* ENABLED", b"e1 OK Enabled."]
    assert await d.command(b"e2 ENABLE CONDSTORE X-FOO") == [b"* ENABLED CONDSTORE", b"e2 OK Enabled."]
    assert await d.command(b"e3 ENABLE CONDSTORE") == [b"* ENABLED CONDSTORE", b"e3 OK Enabled."]
    lines = await d.command(b"s1 SELECT INBOX")
    assert b"* OK [HIGHESTMODSEQ %d] Highest" % await highest(ctx) in lines
    lines = await d.command(b"t1 STORE 1 +FLAGS (\\Seen)")  # enabled: MODSEQ in STORE's FETCH
    assert re.fullmatch(rb"\* 1 FETCH \(MODSEQ \((\d+)\) FLAGS \(\\Seen \\Recent\)\)", lines[0]), lines


async def test_enable_is_for_the_authenticated_state_only(ctx: Any) -> None:
    d, _ = await select(ctx, 1)  # RFC 5161 §3.1 (Dovecot is laxer)
    assert (await d.command(b"e1 ENABLE CONDSTORE"))[-1].startswith(b"e1 BAD ")


async def test_fetch_modseq_enables_condstore_and_renders_it(ctx: Any) -> None:
    d, _ = await select(ctx, 3)
    ms = await modseqs(ctx)
    hms = await highest(ctx)
    assert await d.command(b"f1 FETCH 1 (MODSEQ)") == [
        b"* OK [HIGHESTMODSEQ %d] Highest" % hms, b"* 1 FETCH (MODSEQ (%d))" % ms[1], b"f1 OK Fetch completed."]
    lines = await d.command(b"f2 UID FETCH 2:3 (FLAGS MODSEQ)")
    assert lines == [b"* 2 FETCH (UID 2 FLAGS (\\Recent) MODSEQ (%d))" % ms[2],
                     b"* 3 FETCH (UID 3 FLAGS (\\Recent) MODSEQ (%d))" % ms[3], b"f2 OK UID Fetch completed."]
    # with message data too (the path that reads the files)
    lines = await d.command(b"f3 FETCH 1 (MODSEQ BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert lines[0] == b"* 1 FETCH (MODSEQ (%d) BODY[HEADER.FIELDS (SUBJECT)] {22}" % ms[1], lines


async def test_fetch_changedsince_gives_only_changed_messages_with_modseq_last(ctx: Any) -> None:
    d, _ = await select(ctx, 4)
    before = await highest(ctx)
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    await mb.store_flags([2, 4], {"\\Flagged"}, "add")
    ms = await modseqs(ctx)
    await d.command(b"n1 NOOP")
    lines = await d.command(b"f1 FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % before)
    assert lines[0].startswith(b"* OK [HIGHESTMODSEQ ")  # CHANGEDSINCE enables CONDSTORE
    assert lines[1:] == [b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % ms[2],
                         b"* 4 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % ms[4], b"f1 OK Fetch completed."]
    lines = await d.command(b"f2 UID FETCH 1:* (UID) (CHANGEDSINCE %d)" % ms[4])
    assert lines == [b"f2 OK UID Fetch completed."]
    lines = await d.command(b"f3 FETCH 1:4 (MODSEQ) (CHANGEDSINCE 0)")
    assert lines == [*(b"* %d FETCH (MODSEQ (%d))" % (u, ms[u]) for u in (1, 2, 3, 4)), b"f3 OK Fetch completed."]


async def test_store_with_condstore_reports_only_changes_and_noop_keeps_modseq(ctx: Any) -> None:
    d, _ = await select(ctx, 3, b"s1 SELECT INBOX (CONDSTORE)")
    lines = await d.command(b"t1 STORE 1 +FLAGS (\\Seen)")
    after = await highest(ctx)
    assert lines == [b"* 1 FETCH (MODSEQ (%d) FLAGS (\\Seen \\Recent))" % after, b"t1 OK Store completed."]
    # a STORE that changes nothing: no response for it, no MODSEQ used
    assert await d.command(b"t2 STORE 1 +FLAGS (\\Seen)") == [b"t2 OK Store completed."]
    assert await highest(ctx) == after
    # .SILENT: the FETCH still comes, with MODSEQ and without FLAGS (RFC 7162 §3.1.3; Dovecot)
    lines = await d.command(b"t3 UID STORE 1:2 +FLAGS.SILENT (\\Seen)")
    assert lines == [b"* 2 FETCH (UID 2 MODSEQ (%d))" % (after + 1), b"t3 OK Store completed."]
    assert await highest(ctx) == after + 1


async def test_store_without_condstore_keeps_the_plain_responses(ctx: Any) -> None:
    d, _ = await select(ctx, 2)
    assert await d.command(b"t1 STORE 1 +FLAGS (\\Seen)") == [b"* 1 FETCH (FLAGS (\\Seen \\Recent))",
                                                               b"t1 OK Store completed."]


async def test_store_unchangedsince_leaves_newer_messages_alone(ctx: Any) -> None:
    d, _ = await select(ctx, 4)
    mark = await highest(ctx)
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    await mb.store_flags([1, 3], {"$Other"}, "add")  # another session changes 1 and 3 after `mark`
    lines = await d.command(b"t1 STORE 1:4 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % mark)
    assert lines[-1] == b"t1 OK [MODIFIED 1,3] Conditional store failed."
    flags = {m.uid: m.flags for m in (await mb.snapshot()).messages}
    assert "\\Flagged" in flags[2] and "\\Flagged" in flags[4]
    assert "\\Flagged" not in flags[1] and "\\Flagged" not in flags[3]
    ms = await modseqs(ctx)
    changed = [ln for ln in lines if ln.startswith(b"* ") and b"FETCH" in ln and b"FLAGS (\\Flagged" in ln]
    assert changed == [b"* 2 FETCH (MODSEQ (%d) FLAGS (\\Flagged \\Recent))" % ms[2],
                       b"* 4 FETCH (MODSEQ (%d) FLAGS (\\Flagged \\Recent))" % ms[4]]
    # UID STORE lists UIDs; UNCHANGEDSINCE 0 fails for every message and changes nothing
    await d.command(b"x1 EXPUNGE")
    before = await highest(ctx)
    lines = await d.command(b"t2 UID STORE 2:4 (UNCHANGEDSINCE 0) -FLAGS.SILENT (\\Flagged)")
    assert lines == [b"t2 OK [MODIFIED 2:4] Conditional store failed."]
    assert await highest(ctx) == before
    # a large enough UNCHANGEDSINCE lets the STORE through
    lines = await d.command(b"t3 UID STORE 2,4 (UNCHANGEDSINCE %d) -FLAGS.SILENT (\\Flagged)" % before)
    assert lines == [b"* 2 FETCH (UID 2 MODSEQ (%d))" % (before + 1),
                     b"* 4 FETCH (UID 4 MODSEQ (%d))" % (before + 1), b"t3 OK Store completed."]


async def test_store_unchangedsince_in_a_read_only_mailbox_is_refused(ctx: Any) -> None:
    d, _ = await select(ctx, 1, b"s1 EXAMINE INBOX")
    lines = await d.command(b"t1 STORE 1 (UNCHANGEDSINCE 99) +FLAGS (\\Seen)")
    assert lines[-1] == b"t1 NO [READ-ONLY] Mailbox is read-only."


async def test_search_modseq_and_the_highest_modseq_found(ctx: Any) -> None:
    d, _ = await select(ctx, 4)
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    await mb.store_flags([2], {"\\Seen"}, "add")
    await mb.store_flags([3], {"\\Seen"}, "add")
    ms = await modseqs(ctx)
    await d.command(b"n1 NOOP")
    lines = await d.command(b"q1 SEARCH MODSEQ %d" % ms[2])
    assert lines[0].startswith(b"* OK [HIGHESTMODSEQ ")  # SEARCH MODSEQ enables CONDSTORE
    assert lines[1:] == [b"* SEARCH 2 3 (MODSEQ %d)" % ms[3], b"q1 OK Search completed."]
    assert await d.command(b'q2 UID SEARCH MODSEQ "/flags/\\\\Seen" all %d' % ms[3]) == [
        b"* SEARCH 3 (MODSEQ %d)" % ms[3], b"q2 OK UID Search completed."]
    assert await d.command(b"q3 SEARCH OR MODSEQ %d SEEN NOT 3" % (ms[3] + 1)) == [
        b"* SEARCH 2 (MODSEQ %d)" % ms[2], b"q3 OK Search completed."]
    assert await d.command(b"q4 SEARCH MODSEQ %d" % (ms[3] + 1)) == [b"* SEARCH", b"q4 OK Search completed."]
    assert await d.command(b"q5 SEARCH SEEN") == [b"* SEARCH 2 3", b"q5 OK Search completed."]
    assert await d.command(b"q6 SEARCH MODSEQ 0") == [b"* SEARCH 1 2 3 4 (MODSEQ %d)" % ms[3],
                                                     b"q6 OK Search completed."]
    assert (await d.command(b'q7 SEARCH MODSEQ "/flags/\\\\Seen" foo 1'))[-1].startswith(b"q7 BAD ")


async def test_status_highestmodseq_enables_condstore(ctx: Any) -> None:
    await fill(ctx, 2)
    d = await logged_in(ctx)
    hms = await highest(ctx)
    assert await d.command(b"st1 STATUS INBOX (MESSAGES HIGHESTMODSEQ)") == [
        b"* STATUS INBOX (MESSAGES 2 HIGHESTMODSEQ %d)" % hms, b"st1 OK Status completed."]
    await d.command(b"s1 SELECT INBOX")
    lines = await d.command(b"t1 STORE 2 +FLAGS (\\Answered)")
    assert lines[0] == b"* 2 FETCH (MODSEQ (%d) FLAGS (\\Answered \\Recent))" % (hms + 1)


async def test_unsolicited_fetch_carries_modseq_once_enabled(ctx: Any) -> None:
    d, _ = await select(ctx, 3)
    await d.command(b"f1 FETCH 1 (MODSEQ)")
    other, _ = await select(ctx, 0)
    await other.command(b"t1 STORE 2 +FLAGS (\\Flagged)")
    ms = await modseqs(ctx)
    lines = await d.command(b"n1 NOOP")
    assert lines == [b"* 2 FETCH (UID 2 MODSEQ (%d) FLAGS (\\Flagged \\Recent))" % ms[2],
                     b"n1 OK NOOP completed."]
    # a session without CONDSTORE keeps the plain form
    plain = await logged_in(ctx)
    await plain.command(b"s1 EXAMINE INBOX")
    await other.command(b"t2 STORE 3 +FLAGS (\\Flagged)")
    assert (await plain.command(b"n1 NOOP"))[0] == b"* 3 FETCH (UID 3 FLAGS (\\Flagged))"


async def test_every_flag_change_and_expunge_raises_highestmodseq(ctx: Any) -> None:
    d, _ = await select(ctx, 3, b"s1 SELECT INBOX (CONDSTORE)")
    seen = [await highest(ctx)]
    for cmd in (b"t1 STORE 1 +FLAGS (\\Deleted)", b"t2 STORE 2 FLAGS (kw)", b"t3 STORE 2 -FLAGS (kw)",
                b"x1 EXPUNGE"):
        await d.command(cmd)
        seen.append(await highest(ctx))
    assert seen == sorted(set(seen)), seen  # strictly increasing
    lines = await d.command(b"st1 STATUS INBOX (HIGHESTMODSEQ)")
    assert lines[0] == b"* STATUS INBOX (HIGHESTMODSEQ %d)" % seen[-1]


async def test_fetch_that_sets_seen_reports_the_new_modseq_after_the_data(ctx: Any) -> None:
    d, _ = await select(ctx, 2, b"s1 SELECT INBOX (CONDSTORE)")
    lines = await d.command(b"f1 FETCH 1 (BODY[TEXT])")
    hms = await highest(ctx)
    # FLAGS before the data, as Dovecot 2.3 (checked by hand against it)
    assert lines == [b"* 1 FETCH (FLAGS (\\Seen \\Recent) BODY[TEXT] {7}", b"hello", b")",
                     b"* 1 FETCH (MODSEQ (%d))" % hms, b"f1 OK Fetch completed."]
    lines = await d.command(b"f2 UID FETCH 2 (MODSEQ BODY[TEXT])")  # MODSEQ asked for: shown in place
    assert lines == [b"* 2 FETCH (UID 2 MODSEQ (%d) FLAGS (\\Seen \\Recent) BODY[TEXT] {7}" % (hms + 1), b"hello",
                     b")", b"f2 OK UID Fetch completed."]
    assert await d.command(b"f3 FETCH 1 (BODY[TEXT])") == [b"* 1 FETCH (BODY[TEXT] {7}", b"hello", b")",
                                                          b"f3 OK Fetch completed."]
