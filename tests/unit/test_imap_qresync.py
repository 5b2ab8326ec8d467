"""QRESYNC (RFC 7162 §3.2) through the sans-IO IMAP session: ENABLE QRESYNC, VANISHED instead of
EXPUNGE, SELECT/EXAMINE (QRESYNC (uidvalidity modseq [known-uids])) with VANISHED (EARLIER) and the
changed messages' FETCH, UID FETCH (CHANGEDSINCE n VANISHED), [CLOSED], and the fallback when the
tombstones do not reach back (index rebuilt). Real store in tmp_path, no socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.test_imap_condstore import fill, highest
from tests.unit.test_imap_core import ALICE, Dialogue, logged_in


@pytest.fixture
async def ctx(make_config: Callable[..., Any]) -> AsyncIterator[Any]:
    from mailhaven.auth.users import Directory, UsersFile
    from mailhaven.store import Store

    cfg = make_config()
    store = Store(cfg.mail_root, hostname=cfg.hostname, fsync=False)
    await store.start()
    context = SimpleNamespace(config=cfg, store=store, directory=Directory(cfg, UsersFile.load(cfg.users_file)))
    try:
        yield context
    finally:
        await context.store.close()  # the test may have put a new Store in


async def enabled(ctx: Any) -> Dialogue:
    d = await logged_in(ctx)
    assert await d.command(b"e1 ENABLE QRESYNC") == [b"* ENABLED QRESYNC", b"e1 OK Enabled."]
    return d


async def uidvalidity(ctx: Any) -> int:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    return int((await mb.snapshot()).uidvalidity)


async def test_qresync_is_advertised_and_enable_implies_condstore(ctx: Any) -> None:
    await fill(ctx, 2)
    d = await logged_in(ctx)
    assert b" QRESYNC" in d.greeting
    assert await d.command(b"e1 ENABLE CONDSTORE QRESYNC") == [b"* ENABLED CONDSTORE QRESYNC", b"e1 OK Enabled."]
    await d.command(b"s1 SELECT INBOX")
    lines = await d.command(b"t1 STORE 1 +FLAGS (\\Seen)")
    assert lines[0].startswith(b"* 1 FETCH (UID 1 MODSEQ (")


async def test_vanished_replaces_expunge_once_enabled(ctx: Any) -> None:
    await fill(ctx, 5)
    d = await enabled(ctx)
    await d.command(b"s1 SELECT INBOX")
    await d.command(b"t1 STORE 2:4 +FLAGS.SILENT (\\Deleted)")
    hms = await highest(ctx)
    assert await d.command(b"x1 EXPUNGE") == [b"* VANISHED 2:4", b"x1 OK [HIGHESTMODSEQ %d] Expunge completed." % (hms + 1)]
    # and for another session's expunge, at NOOP
    other = await logged_in(ctx)
    await other.command(b"s1 SELECT INBOX")
    await other.command(b"t1 STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert (await other.command(b"x1 EXPUNGE"))[0] == b"* 2 EXPUNGE"  # not enabled there
    assert await d.command(b"n1 NOOP") == [b"* VANISHED 5", b"n1 OK [HIGHESTMODSEQ %d] NOOP completed." % await highest(ctx)]
    assert await d.command(b"n2 NOOP") == [b"n2 OK NOOP completed."]


async def test_select_qresync_reports_vanished_earlier_and_changes(ctx: Any) -> None:
    await fill(ctx, 6)
    uv = await uidvalidity(ctx)
    mark = await highest(ctx)
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    await mb.expunge([2, 5])
    await mb.store_flags([3], {"\\Flagged"}, "add")
    d = await enabled(ctx)
    lines = await d.command(b"s1 SELECT INBOX (QRESYNC (%d %d))" % (uv, mark))
    hms = await highest(ctx)
    tail = lines[lines.index(b"* OK [HIGHESTMODSEQ %d] Highest" % hms) + 1:]
    assert tail == [b"* VANISHED (EARLIER) 2,5", b"* 2 FETCH (UID 3 FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % hms,
                    b"s1 OK [READ-WRITE] Select completed."]
    # known-uids limits both; a re-SELECT says [CLOSED] first (RFC 7162 §3.2.11)
    lines = await d.command(b"s2 EXAMINE INBOX (QRESYNC (%d %d 1:4))" % (uv, mark))
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed."
    assert lines[-3:] == [b"* VANISHED (EARLIER) 2", b"* 2 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ (%d))" % hms,
                          b"s2 OK [READ-ONLY] Examine completed."]
    # up to date: nothing; another UIDVALIDITY: the parameter is ignored
    lines = await d.command(b"s3 EXAMINE INBOX (QRESYNC (%d %d))" % (uv, hms))
    assert lines[-2:] == [b"* OK [HIGHESTMODSEQ %d] Highest" % hms, b"s3 OK [READ-ONLY] Examine completed."]
    lines = await d.command(b"s4 EXAMINE INBOX (QRESYNC (%d 1))" % (uv + 1))
    assert not any(b"VANISHED" in ln or b"FETCH" in ln for ln in lines)


async def test_select_qresync_needs_enable_and_valid_parameters(ctx: Any) -> None:
    await fill(ctx, 1)
    d = await logged_in(ctx)
    assert (await d.command(b"s1 SELECT INBOX (QRESYNC (1 1))"))[-1] == b"s1 BAD QRESYNC is not enabled."
    await d.command(b"e1 ENABLE QRESYNC")
    for bad in (b"(QRESYNC (1))", b"(QRESYNC (0 1))", b"(QRESYNC (1 0))", b"(QRESYNC 1)", b"(QRESYNC (1 1 x))"):
        assert (await d.command(b"s2 SELECT INBOX " + bad))[-1].startswith(b"s2 BAD "), bad


async def test_uid_fetch_vanished_modifier(ctx: Any) -> None:
    await fill(ctx, 5)
    mark = await highest(ctx)
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    await mb.expunge([1, 4])
    await mb.store_flags([5], {"$X"}, "add")
    d = await enabled(ctx)
    await d.command(b"s1 SELECT INBOX")
    hms = await highest(ctx)
    lines = await d.command(b"f1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % mark)
    assert lines[0] == b"* VANISHED (EARLIER) 1,4"
    assert lines[-2:] == [b"* 3 FETCH (UID 5 FLAGS (\\Recent $X) MODSEQ (%d))" % hms, b"f1 OK UID Fetch completed."]
    lines = await d.command(b"f2 UID FETCH 2:3 (FLAGS) (CHANGEDSINCE %d VANISHED)" % mark)
    assert lines == [b"f2 OK UID Fetch completed."]
    for bad in (b"f3 FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)", b"f3 UID FETCH 1 (FLAGS) (VANISHED)"):
        assert (await d.command(bad))[-1].startswith(b"f3 BAD "), bad


async def test_without_tombstones_every_missing_known_uid_is_vanished(ctx: Any) -> None:
    await fill(ctx, 6)
    uv = await uidvalidity(ctx)
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    mark = await highest(ctx)
    await mb.expunge([3])
    # the index is lost and rebuilt: the tombstone of UID 3 with it
    await ctx.store.close()
    user = Path(ctx.config.mail_root) / "example.test" / "alice"
    for suffix in ("", "-wal", "-shm"):
        p = user / f"mailhaven-index.sqlite{suffix}"
        if p.exists():
            p.unlink()
    from mailhaven.store import Store

    ctx.store = Store(ctx.config.mail_root, hostname=ctx.config.hostname, fsync=False)
    await ctx.store.start()
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    assert await mb.vanished_since(mark) is None
    d = await enabled(ctx)
    lines = await d.command(b"s1 SELECT INBOX (QRESYNC (%d %d 1:9))" % (uv, mark))
    assert b"* VANISHED (EARLIER) 3" in lines  # UIDs 7:9 were never used (UIDNEXT 7): not listed
    assert sum(b" FETCH (UID " in ln for ln in lines) == 5  # all changed: the rebuild raised every MODSEQ
    d.session.close()


async def test_store_responses_carry_uid_once_enabled(ctx: Any) -> None:
    await fill(ctx, 2)
    d = await enabled(ctx)
    await d.command(b"s1 SELECT INBOX")
    hms = await highest(ctx)
    # a FETCH asked for keeps its items (as Dovecot); STORE's and \Seen's FETCH get UID
    assert await d.command(b"f1 FETCH 2 (FLAGS)") == [b"* 2 FETCH (FLAGS (\\Recent))", b"f1 OK Fetch completed."]
    assert await d.command(b"t1 STORE 1 +FLAGS.SILENT (\\Seen)") == [
        b"* 1 FETCH (UID 1 MODSEQ (%d))" % (hms + 1), b"t1 OK Store completed."]
    lines = await d.command(b"f2 FETCH 2 (BODY[TEXT])")  # sets \Seen: its MODSEQ line too
    assert lines[-2:] == [b"* 2 FETCH (UID 2 MODSEQ (%d))" % (hms + 2), b"f2 OK Fetch completed."]
