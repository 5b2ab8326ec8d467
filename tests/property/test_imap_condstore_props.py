"""Property: STORE (UNCHANGEDSINCE n) (RFC 7162 §3.1.3) against a model, through the sans-IO
session over a real store. Whatever another writer changed before, the tagged [MODIFIED] names
exactly the messages whose MODSEQ is above n, only the others get the new flags, and HIGHESTMODSEQ
grows exactly when some flag really changed (a STORE that changes nothing uses no MODSEQ)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhaven.imap.seqset import render as render_set
from mailhaven.imap.session import Session
from tests.fixtures_base import PASSWORD
from tests.unit.test_imap_core import ALICE, Dialogue, message

N = 5
FLAGS = ("\\Seen", "\\Flagged", "$Label")
subsets = st.frozensets(st.integers(1, N), min_size=1)
step = st.tuples(
    subsets,  # messages another writer changes first
    st.sampled_from(FLAGS),  # ... by adding this flag
    subsets,  # messages the session's STORE names
    st.sampled_from(["+FLAGS", "-FLAGS"]),
    st.sampled_from(FLAGS),
    st.integers(-2, 2),  # UNCHANGEDSINCE = the HIGHESTMODSEQ before the other writer + this
    st.booleans(),  # UID STORE
)


async def _run(cfg: Any, steps: list[tuple[Any, ...]]) -> None:
    from mailhaven.auth.users import Directory, UsersFile
    from mailhaven.store import Store

    store = Store(cfg.mail_root, hostname=cfg.hostname, fsync=False)
    await store.start()
    try:
        mb = await store.account(ALICE).mailbox("INBOX")
        if not (await mb.snapshot()).messages:
            for n in range(N):
                await mb.append(message(n + 1))
        ctx = SimpleNamespace(config=cfg, store=store, directory=Directory(cfg, UsersFile.load(cfg.users_file)))
        d = Dialogue(Session(ctx, listener="imap", ip="192.0.2.1", loopback=True, tls_active=False,
                             starttls_offered=False, config=cfg))
        await d.run()
        await d.command(b"b LOGIN " + ALICE.encode() + b" " + PASSWORD.encode())
        assert (await d.command(b"s SELECT INBOX (CONDSTORE)"))[-1].startswith(b"s OK")
        uids = [m.uid for m in (await mb.snapshot()).messages]
        for other, oflag, named, op, flag, delta, uid in steps:
            start = (await mb.snapshot()).highestmodseq
            await mb.store_flags([uids[i - 1] for i in other], {oflag}, "add")
            before = {m.uid: m for m in (await mb.snapshot()).messages}
            since = max(0, start + delta)
            targets = sorted(uids[i - 1] for i in named)
            numbers = targets if uid else sorted(named)
            cmd = b"t %sSTORE %s (UNCHANGEDSINCE %d) %s (%s)" % (
                b"UID " if uid else b"", render_set(numbers).encode(), since, op.encode(), flag.encode())
            lines = await d.command(cmd)
            after = {m.uid: m for m in (await mb.snapshot()).messages}
            modified = [u for u in targets if before[u].modseq > since]
            if modified:
                shown = modified if uid else [uids.index(u) + 1 for u in modified]
                assert lines[-1] == b"t OK [MODIFIED %s] Conditional store failed." % render_set(shown).encode()
            else:
                assert lines[-1] == b"t OK Store completed.", lines
            changed = False
            for u in uids:
                want = before[u].flags
                if u in targets and u not in modified:
                    want = want | {flag} if op == "+FLAGS" else want - {flag}
                assert after[u].flags == want, (u, lines)
                changed = changed or want != before[u].flags
            hms_before = max(m.modseq for m in before.values())
            hms_after = (await mb.snapshot()).highestmodseq
            assert (hms_after > hms_before) == changed
            # each message this STORE changed is reported with its new MODSEQ (RFC 7162 §3.1.3)
            for u in targets:
                if u not in modified and after[u].flags != before[u].flags:
                    head = b"* %d FETCH (%sMODSEQ (%d) FLAGS " % (
                        uids.index(u) + 1, b"UID %d " % u if uid else b"", after[u].modseq)
                    assert any(ln.startswith(head) for ln in lines), (head, lines)
        d.session.close()
    finally:
        await store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=6))
def test_unchangedsince_matches_the_model(make_config: Callable[..., Any], steps: list[tuple[Any, ...]]) -> None:
    asyncio.run(_run(make_config(), steps))
