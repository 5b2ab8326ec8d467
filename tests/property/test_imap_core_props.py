"""Property: however the client's bytes are cut into reads, the sans-IO IMAP session answers a
dialogue with exactly the same bytes (literals, LITERAL+, IDLE/DONE, a malformed command included)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailhaven.imap.session import Session
from tests.fixtures_base import PASSWORD
from tests.unit.test_imap_core import ALICE, Dialogue, message

DIALOGUE = b"".join([
    b"a1 LOGIN {%d}\r\n%s %s\r\n" % (len(ALICE), ALICE.encode(), PASSWORD.encode()),  # synchronising literal
    b"a2 EXAMINE INBOX\r\n",
    b"a3 FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
    b"a4 STATUS {5+}\r\nINBOX (MESSAGES UIDNEXT)\r\n",  # LITERAL+
    b"a5 FETCH 1:*\r\n",  # malformed: BAD
    b"a6 IDLE\r\nDONE\r\n",
    b"a7 SEARCH SUBJECT {9+}\r\nmessage 2\r\n",
    b"a8 LOGOUT\r\n",
])


async def _answer(cfg: Any, chunks: list[bytes]) -> bytes:
    from mailhaven.auth.users import Directory, UsersFile
    from mailhaven.store import Store

    store = Store(cfg.mail_root, hostname=cfg.hostname, fsync=False)
    await store.start()
    try:
        mb = await store.account(ALICE).mailbox("INBOX")
        if not (await mb.snapshot()).messages:
            for n in (1, 2, 3):
                await mb.append(message(n))
        ctx = SimpleNamespace(config=cfg, store=store, directory=Directory(cfg, UsersFile.load(cfg.users_file)))
        d = Dialogue(Session(ctx, listener="imap", ip="192.0.2.1", loopback=True, tls_active=False,
                             starttls_offered=False, config=cfg))
        out = [await d.run()]
        for chunk in chunks:
            out.append(await d.send(chunk))
        assert d.closed == "logout"
        d.session.close()
        return b"".join(out)
    finally:
        await store.close()


@st.composite
def cuts(draw: st.DrawFn) -> list[bytes]:
    points = sorted(draw(st.sets(st.integers(1, len(DIALOGUE) - 1), max_size=40)))
    edges = [0, *points, len(DIALOGUE)]
    return [DIALOGUE[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=cuts())
@example(chunks=[DIALOGUE[i:i + 1] for i in range(len(DIALOGUE))])  # every boundary at once
def test_any_fragmentation_of_a_dialogue_gets_the_same_answer(make_config: Callable[..., Any],
                                                               chunks: list[bytes]) -> None:
    cfg = make_config()
    whole = asyncio.run(_answer(cfg, [DIALOGUE]))
    assert b"a1 OK " in whole and b"a5 BAD " in whole and b"a6 OK Idle completed." in whole
    assert b"* SEARCH 2\r\na7 OK Search completed." in whole and whole.endswith(b"a8 OK Logout completed.\r\n")
    assert asyncio.run(_answer(cfg, chunks)) == whole
