"""SEARCH BODY/TEXT through our full-text index (store/fts.py) gives what a real Dovecot 2.3 without
an FTS plugin gives, on the MIME corpus of tests/data/mime (base64, quoted-printable, charsets,
HTML, attachments, nested messages, broken parts): the BODY/TEXT keys of
test_fetch_vs_dovecot.py's comparison plus words of three characters or more, each sent to both
servers over IMAP. The index must have been used (one row per message after the SEARCHes).
"""

from __future__ import annotations

import imaplib
import sqlite3
from collections.abc import Callable
from typing import Any

from mailhaven.store import fts
from tests.fixtures_base import PASSWORD
from tests.integration import test_fetch_vs_dovecot as dv
from tests.integration.test_fetch_vs_dovecot import dovecot_fresh  # noqa: F401  (fixture)
from tests.integration.test_imap_server import ALICE, ImapHarness

EXTRA_KEYS = [
    'BODY "the"', 'BODY "THE"', 'TEXT "content-type"', 'TEXT "boundary"', 'BODY "part"', 'TEXT "filename"',
    'TEXT ".pdf"', 'TEXT ".txt"', 'BODY "html"', 'BODY "<p>"', 'BODY "body"', 'TEXT "message"',
    'BODY "Köln"', 'BODY "KÖLN"', 'BODY "ünchen"', 'TEXT "müller"', 'BODY "zzzz-nowhere"', 'BODY "ab"',
    'BODY "needle" BODY "six"', 'BODY "needle" NOT BODY "nine"', 'OR BODY "seven" TEXT "report"',
]


def _keys() -> list[str]:
    keys = [k for k in dv.SEARCH_KEYS + dv.FUZZ_SEARCH_KEYS if k.startswith(("BODY", "TEXT"))]
    return list(dict.fromkeys(keys + EXTRA_KEYS))


def _search(c: imaplib.IMAP4, key: str) -> list[int]:
    tag = c._new_tag()  # type: ignore[attr-defined]
    c.send(tag + b" SEARCH CHARSET UTF-8 " + dv._wire_key(key) + b"\r\n")
    resp = dv._read_response(c, tag)
    return sorted(int(n) for r in resp if r.startswith(b"* SEARCH") for n in r[8:].split())


def test_body_and_text_searches_match_dovecot(make_config: Callable[..., Any],
                                             dovecot_fresh: tuple[Any, imaplib.IMAP4]) -> None:  # noqa: F811
    _, theirs = dovecot_fresh
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}})).start()
    try:
        async def fill() -> None:
            mb = await h.store.account(ALICE).mailbox("INBOX")
            for i, p in enumerate(dv.SAMPLES):
                await mb.append(p.read_bytes(), internaldate=dv._mtime(i))

        h.call(fill())
        assert h.store.fts.wait_idle(30)
        ours = imaplib.IMAP4("127.0.0.1", h.ports["imap"], timeout=30)
        try:
            ours.login(ALICE, PASSWORD)
            assert ours.select("INBOX")[0] == "OK"
            diffs = []
            for key in _keys():
                a, b = _search(ours, key), _search(theirs, key)
                if a != b:
                    diffs.append(f"{key}: dovecot {b} ours {a}")
            assert not diffs, "\n".join(diffs)
        finally:
            ours.logout()
        root = h.store.account(ALICE).path
        with sqlite3.connect(root / fts.FILENAME) as db:
            assert db.execute("SELECT count(*) FROM doc").fetchone()[0] == len(dv.SAMPLES)
    finally:
        h.stop()
