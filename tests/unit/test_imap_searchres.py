"""SEARCHRES (RFC 5182) through the sans-IO IMAP session: RETURN (SAVE) keeps the result without an
ESEARCH line, "$" in FETCH/STORE/COPY/MOVE/SEARCH and their UID forms, SAVE with MIN/MAX keeps only
those, expunged messages drop out, SELECT/EXAMINE/CLOSE/UNSELECT and a failed SEARCH ... SAVE
empty it. Real store in tmp_path, no socket."""

from __future__ import annotations

from typing import Any

from tests.unit import test_imap_condstore
from tests.unit.test_imap_condstore import select
from tests.unit.test_imap_core import logged_in

ctx = test_imap_condstore.ctx  # the fixture: a real store in tmp_path


async def test_searchres_is_advertised(ctx: Any) -> None:
    d = await logged_in(ctx)
    assert b" SEARCHRES" in d.greeting


async def test_save_then_use_dollar_everywhere(ctx: Any) -> None:
    d, _ = await select(ctx, 5)
    assert await d.command(b"a1 FETCH $ (UID)") == [b"a1 OK Fetch completed."]  # empty at first
    assert await d.command(b"a2 UID SEARCH RETURN (SAVE) 2:3") == [b"a2 OK UID Search completed."]
    assert await d.command(b"a3 FETCH $ (UID)") == [b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)",
                                                    b"a3 OK Fetch completed."]
    assert (await d.command(b"a4 UID FETCH $ (FLAGS)"))[:2] == [b"* 2 FETCH (UID 2 FLAGS (\\Recent))",
                                                                b"* 3 FETCH (UID 3 FLAGS (\\Recent))"]
    assert (await d.command(b"a5 STORE $ +FLAGS (\\Flagged)"))[0] == b"* 2 FETCH (FLAGS (\\Flagged \\Recent))"
    assert (await d.command(b"a6 SEARCH $"))[0] == b"* SEARCH 2 3"
    assert (await d.command(b"a7 UID SEARCH NOT UID $"))[0] == b"* SEARCH 1 4 5"
    assert (await d.command(b"a8 SEARCH RETURN (COUNT) OR $ 5"))[0] == b'* ESEARCH (TAG "a8") COUNT 3'
    assert (await d.command(b"a9 COPY $ INBOX"))[-1].startswith(b"a9 OK [COPYUID ")
    assert (await d.command(b"b1 UID MOVE $ INBOX"))[-1] == b"b1 OK Move completed."


async def test_save_with_min_max_and_expunge(ctx: Any) -> None:
    d, _ = await select(ctx, 5)
    assert (await d.command(b"a1 SEARCH RETURN (SAVE MIN MAX) 2:4"))[0] == b'* ESEARCH (TAG "a1") MIN 2 MAX 4'
    assert (await d.command(b"a2 SEARCH $"))[0] == b"* SEARCH 2 4"  # RFC 5182 §2.4: only MIN and MAX
    await d.command(b"a3 SEARCH RETURN (SAVE COUNT MIN) 2:4")
    assert (await d.command(b"a4 SEARCH $"))[0] == b"* SEARCH 2 3 4"  # with COUNT: all found
    await d.command(b"a5 STORE 2 +FLAGS.SILENT (\\Deleted)")
    await d.command(b"a6 EXPUNGE")
    assert (await d.command(b"a7 FETCH $ (UID)"))[:2] == [b"* 2 FETCH (UID 3)", b"* 3 FETCH (UID 4)"]


async def test_dollar_is_emptied(ctx: Any) -> None:
    d, _ = await select(ctx, 3)
    for reset in (b"UNSELECT", b"CLOSE", b"SELECT INBOX", b"EXAMINE INBOX"):
        await d.command(b"a1 SEARCH RETURN (SAVE) 1")
        assert (await d.command(b"a2 SEARCH $"))[0] == b"* SEARCH 1"
        await d.command(b"r " + reset)
        if reset in (b"UNSELECT", b"CLOSE"):
            await d.command(b"s SELECT INBOX")
        assert (await d.command(b"a3 SEARCH $"))[0] == b"* SEARCH", reset
    await d.command(b"a4 SEARCH RETURN (SAVE) 1")
    # RFC 5182 §2.1: a failed SEARCH ... SAVE (NO or BAD) empties it; one without SAVE leaves it
    assert (await d.command(b"a5 SEARCH FOO"))[-1].startswith(b"a5 BAD ")
    assert (await d.command(b"a6 SEARCH $"))[0] == b"* SEARCH 1"
    assert (await d.command(b"a7 SEARCH RETURN (SAVE) CHARSET FOO ALL"))[-1].startswith(b"a7 NO [BADCHARSET")
    assert (await d.command(b"a8 SEARCH $"))[0] == b"* SEARCH"
    await d.command(b"a9 SEARCH RETURN (SAVE) 1")
    assert (await d.command(b"b1 SEARCH RETURN (SAVE) FOO"))[-1].startswith(b"b1 BAD ")
    assert (await d.command(b"b2 SEARCH $"))[0] == b"* SEARCH"


async def test_dollar_syntax_errors(ctx: Any) -> None:
    d, _ = await select(ctx, 3)
    for line in (b"FETCH 1,$ FLAGS", b"FETCH $:2 FLAGS", b"SEARCH $1", b"STORE $$ FLAGS x"):
        assert (await d.command(b"x " + line))[-1].startswith(b"x BAD "), line


async def test_dollar_in_uid_fetch_vanished(ctx: Any) -> None:
    """RFC 7162 §3.2.6 with "$": the saved UIDs that were expunged since are VANISHED (EARLIER)."""
    await test_imap_condstore.fill(ctx, 4)
    d = await logged_in(ctx)
    await d.command(b"e ENABLE QRESYNC")
    await d.command(b"s SELECT INBOX")
    await d.command(b"a1 UID SEARCH RETURN (SAVE) 2:3")
    await d.command(b"a2 STORE 2 +FLAGS.SILENT (\\Deleted)")
    await d.command(b"a3 EXPUNGE")
    lines = await d.command(b"a4 UID FETCH $ (FLAGS) (CHANGEDSINCE 1 VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 2"
    assert lines[1].startswith(b"* 2 FETCH (UID 3 ")
