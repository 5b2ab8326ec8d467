"""ESEARCH (RFC 4731) through the sans-IO IMAP session: the capability, `* ESEARCH (TAG "t") [UID]
MIN MAX ALL COUNT` in Dovecot 2.3's order, RETURN () as ALL, empty results, and the MODSEQ item with
CONDSTORE (RFC 7162 §3.1.5). Real store in tmp_path, no socket."""

from __future__ import annotations

from typing import Any

from tests.unit import test_imap_condstore
from tests.unit.test_imap_condstore import modseqs, select
from tests.unit.test_imap_core import logged_in

ctx = test_imap_condstore.ctx  # the fixture: a real store in tmp_path


async def test_esearch_is_advertised(ctx: Any) -> None:
    d = await logged_in(ctx)
    assert b" ESEARCH" in d.greeting
    assert b"ESEARCH" in (await d.command(b"c CAPABILITY"))[0].split()


async def test_search_return_items_in_dovecot_order(ctx: Any) -> None:
    d, _ = await select(ctx, 6)
    await d.command(b"s STORE 4 +FLAGS.SILENT (\\Deleted)")
    await d.command(b"x EXPUNGE")
    assert await d.command(b"a1 SEARCH RETURN (COUNT ALL MAX MIN) ALL") == [
        b'* ESEARCH (TAG "a1") MIN 1 MAX 5 ALL 1:5 COUNT 5', b"a1 OK Search completed."]
    assert await d.command(b"a2 UID SEARCH RETURN () ALL") == [
        b'* ESEARCH (TAG "a2") UID ALL 1:3,5:6', b"a2 OK UID Search completed."]
    assert (await d.command(b"a3 UID SEARCH RETURN (MAX) 1:2"))[0] == b'* ESEARCH (TAG "a3") UID MAX 2'
    assert (await d.command(b"a4 SEARCH RETURN (MIN COUNT) 2,4"))[0] == b'* ESEARCH (TAG "a4") MIN 2 COUNT 2'
    assert (await d.command(b"a5 SEARCH 2,4"))[0] == b"* SEARCH 2 4"  # plain SEARCH unchanged


async def test_search_return_nothing_found(ctx: Any) -> None:
    d, _ = await select(ctx, 2)
    assert (await d.command(b"a1 SEARCH RETURN (MIN MAX ALL) DELETED"))[0] == b'* ESEARCH (TAG "a1")'
    assert (await d.command(b"a2 UID SEARCH RETURN () DELETED"))[0] == b'* ESEARCH (TAG "a2") UID'
    assert (await d.command(b"a3 SEARCH RETURN (COUNT MIN) DELETED"))[0] == b'* ESEARCH (TAG "a3") COUNT 0'


async def test_search_return_bad_option(ctx: Any) -> None:
    d, _ = await select(ctx, 1)
    assert (await d.command(b"a1 SEARCH RETURN (FOO) ALL"))[-1].startswith(b"a1 BAD ")


async def test_esearch_modseq_follows_the_reported_messages(ctx: Any) -> None:
    """RFC 7162 §3.1.5: MIN or MAX alone -> that message's MODSEQ; with ALL/COUNT -> the highest."""
    d, _ = await select(ctx, 4)
    for n in (1, 3, 2, 4):  # MODSEQs rise in this order
        await d.command(b"s%d STORE %d +FLAGS (\\Seen)" % (n, n))
    ms = await modseqs(ctx)
    assert (await d.command(b"a1 SEARCH RETURN (MIN) 1:3 MODSEQ 1"))[-2] == (
        b'* ESEARCH (TAG "a1") MIN 1 MODSEQ %d' % ms[1])
    assert (await d.command(b"a2 SEARCH RETURN (MAX) 1:3 MODSEQ 1"))[0] == (
        b'* ESEARCH (TAG "a2") MAX 3 MODSEQ %d' % ms[3])
    assert (await d.command(b"a3 SEARCH RETURN (MIN MAX) 1:3 MODSEQ 1"))[0] == (
        b'* ESEARCH (TAG "a3") MIN 1 MAX 3 MODSEQ %d' % ms[3])
    assert (await d.command(b"a4 UID SEARCH RETURN (COUNT) 1:3 MODSEQ 1"))[0] == (
        b'* ESEARCH (TAG "a4") UID COUNT 3 MODSEQ %d' % ms[2])
    assert (await d.command(b"a5 SEARCH RETURN (COUNT) MODSEQ %d" % (ms[4] + 1)))[0] == (
        b'* ESEARCH (TAG "a5") COUNT 0')
