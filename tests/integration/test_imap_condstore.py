"""CONDSTORE (RFC 7162 §3.1) over real sockets with imapclient, which parses HIGHESTMODSEQ, MODSEQ
FETCH data, CHANGEDSINCE and SEARCH's (MODSEQ n) with its own lexer; STORE (UNCHANGEDSINCE) with
a raw client (imapclient has no STORE modifiers); HIGHESTMODSEQ across a server restart that also
lost the index (a rebuild from the Maildir must never lower it)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from tests.fixtures_base import PASSWORD
from tests.integration.test_imap_server import ALICE, ImapHarness


@pytest.fixture(params=["sqlite", "postgresql"])
def imap(make_config: Callable[..., Any], request: pytest.FixtureRequest) -> Iterator[ImapHarness]:
    """Over each index backend (SQLite; PostgreSQL, store/index_pg.py)."""
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgresql" else None
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}}), pg_dsn=dsn, pg_index=dsn is not None).start()
    try:
        yield h
    finally:
        h.stop()


def connect(imap: ImapHarness, ctx: ssl.SSLContext) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=imap.ports["imap"], ssl=False, timeout=30)
    c.starttls(ctx)
    c.login(ALICE, PASSWORD)
    return c


def test_imapclient_condstore_dialogue(imap: ImapHarness, client_ssl_context: ssl.SSLContext) -> None:
    imap.fill(4)
    c = connect(imap, client_ssl_context)
    assert b"CONDSTORE" in c.capabilities()
    assert c.enable("CONDSTORE") == [b"CONDSTORE"]
    info = c.select_folder("INBOX")
    start = info[b"HIGHESTMODSEQ"]
    assert start == max(m.modseq for m in imap.messages())
    got = c.fetch([1, 2, 3, 4], ["MODSEQ", "FLAGS"])
    assert {u: d[b"MODSEQ"] for u, d in got.items()} == {m.uid: (m.modseq,) for m in imap.messages()}
    # another session changes message 3: an unsolicited FETCH with MODSEQ, CHANGEDSINCE finds it
    other = connect(imap, client_ssl_context)
    other.select_folder("INBOX")
    other.add_flags([3], [b"\\Flagged"])
    new = {m.uid: m.modseq for m in imap.messages()}[3]
    assert new > start
    updates = c.noop()[1]
    assert (3, b"FETCH", (b"UID", 3, b"MODSEQ", (new,), b"FLAGS", (b"\\Flagged", b"\\Recent"))) in updates
    changed = c.fetch([1, 2, 3, 4], ["FLAGS"], modifiers=[f"CHANGEDSINCE {start}"])
    assert list(changed) == [3] and changed[3][b"MODSEQ"] == (new,)
    assert changed[3][b"FLAGS"] == (b"\\Flagged", b"\\Recent")
    found = c.search(["MODSEQ", str(start + 1)])
    assert list(found) == [3] and found.modseq == new
    assert c.folder_status("INBOX", ["HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"] == new
    other.logout()
    c.logout()


def test_store_unchangedsince_over_the_wire(imap: ImapHarness) -> None:
    imap.fill(3)
    raw = imap.raw()
    raw.login()
    lines = raw.cmd(b"SELECT INBOX (CONDSTORE)")
    hms = int(re.search(rb"\[HIGHESTMODSEQ (\d+)\]", b"".join(lines)).group(1))  # type: ignore[union-attr]
    imap.store_flags([2], {"$Seen-Elsewhere"})
    lines = raw.cmd(b"STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Answered)" % hms)
    assert lines[-1] == b"t OK [MODIFIED 2] Conditional store failed.\r\n", lines
    flags = {m.uid: m.flags for m in imap.messages()}
    assert "\\Answered" in flags[1] and "\\Answered" in flags[3] and "\\Answered" not in flags[2]
    raw.close()


def test_highestmodseq_survives_a_restart_without_the_index(make_config: Callable[..., Any]) -> None:
    cfg = make_config("imap", {"imaps": {"tls": "implicit"}})
    h = ImapHarness(cfg).start()
    try:
        h.fill(3)
        h.store_flags([1, 2], {"\\Seen"})
        h.expunge([3])
        before = max(m.modseq for m in h.messages())
        raw = h.raw()
        raw.login()
        lines = raw.cmd(b"STATUS INBOX (HIGHESTMODSEQ)")
        status = int(re.search(rb"HIGHESTMODSEQ (\d+)", lines[0]).group(1))  # type: ignore[union-attr]
        assert status > before  # the expunge used a MODSEQ of its own
        raw.close()
    finally:
        h.stop()
    for p in Path(cfg.mail_root).rglob("mailhaven-index.sqlite*"):
        p.unlink()
    h = ImapHarness(cfg).start()
    try:
        raw = h.raw()
        raw.login()
        lines = raw.cmd(b"SELECT INBOX")
        after = int(re.search(rb"\[HIGHESTMODSEQ (\d+)\]", b"".join(lines)).group(1))  # type: ignore[union-attr]
        assert after >= status
        assert all(m.modseq <= after for m in h.messages())
        lines = raw.cmd(b"STORE 1 +FLAGS (\\Flagged)")
        assert b"MODSEQ" not in lines[0]  # CONDSTORE not enabled in this session
        assert int(re.search(rb"HIGHESTMODSEQ (\d+)",  # type: ignore[union-attr]
                             raw.cmd(b"STATUS INBOX (HIGHESTMODSEQ)")[0]).group(1)) > after
        raw.close()
    finally:
        h.stop()
