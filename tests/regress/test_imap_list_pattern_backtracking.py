"""LIST pattern backtracking: `LIST "" "*a*a*a*a*a*a*a*b"` (or the same in LSUB, or in a
LIST-EXTENDED pattern list) against mailbox names of a few hundred "a"s. Translated into a
backtracking regex ("*" -> ".*") this takes minutes per name on the event loop; the matcher
(listing.Matcher) must answer in time linear in the name. Through the sans-IO session, over a real
store."""

from __future__ import annotations

import time
from typing import Any

from tests.unit import test_imap_core
from tests.unit.test_imap_core import logged_in

cfg = test_imap_core.cfg  # the fixtures: a real store in tmp_path
ctx = test_imap_core.ctx

HOSTILE = b"*a" * 40 + b"b"


async def test_hostile_list_patterns_are_answered_at_once(ctx: Any) -> None:
    d = await logged_in(ctx)
    for level in range(1, 4):
        name = b".".join([b"a" * 60] * level)
        assert (await d.command(b"c CREATE " + name))[-1].startswith(b"c OK ")
        assert (await d.command(b"s SUBSCRIBE " + name))[-1].startswith(b"s OK ")
    start = time.monotonic()
    for line in (b'l LIST "" ' + HOSTILE, b'l LSUB "" ' + HOSTILE, b'l LIST "" (' + HOSTILE + b" %" + HOSTILE + b")",
                 b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" (' + HOSTILE + b")"):
        assert (await d.command(line))[-1].startswith(b"l OK ")
    assert time.monotonic() - start < 2.0
