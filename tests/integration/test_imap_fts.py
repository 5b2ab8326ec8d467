"""SEARCH BODY/TEXT through the full-text index (store/fts.py), with the whole server running:
messages arrive by SMTP (smtplib to the MX) and APPEND (imaplib), and by a program writing into
new/ behind the server's back; the index file fills in the background and at SEARCH time, follows
EXPUNGE, survives flag changes (which rename the files), and is made again when deleted. Every
answer is checked against the scan (the same SEARCH with the index unable to narrow: a string of
fewer than three characters, or the expected set written out).
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import os
import smtplib
import sqlite3
import ssl
import time
from pathlib import Path
from typing import Any

from mailhaven.store import fts
from tests.fixtures_base import PASSWORD
from tests.fixtures_server import add_user, running_app
from tests.integration.test_imap_server import ALICE

SENDER = "someone@example.net"

B64_MAIL = (b"From: Someone <someone@example.net>\r\nTo: alice@example.test\r\nSubject: fish\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes("Grüße aus Köln, the zebrafish swims.\n".encode()).replace(b"\n", b"\r\n"))
QP_MAIL = (b"From: Someone <someone@example.net>\r\nTo: alice@example.test\r\nSubject: coffee\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 cr=E8me and a zebra=\r\nfish too.\r\n")
HTML_MAIL = (b"From: Bob <bob@example.org>\r\nTo: alice@example.test\r\nSubject: garden\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
             b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Octopus <b>garden</b></p>\r\n"
             b"--b\r\nContent-Type: application/pdf\r\n"
             b"Content-Disposition: attachment; filename=\"q3-report.pdf\"\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n")
OUTSIDE_MAIL = b"From: x@example.org\r\nSubject: dropped in\r\n\r\nA narwhal arrived by another program.\r\n"


def _rows(root: Path) -> int:
    with sqlite3.connect(root / fts.FILENAME) as db:
        n: int = db.execute("SELECT count(*) FROM doc").fetchone()[0]
        return n


def _uids(c: imaplib.IMAP4, *criteria: str) -> list[int]:
    typ, data = c.uid("SEARCH", *criteria)
    assert typ == "OK", data
    return [int(x) for x in (data[0] or b"").split()]


def _scenario(imaps: int, mx: int, tls: ssl.SSLContext, root: Path, store_fts: fts.Fts) -> None:
    with smtplib.SMTP("127.0.0.1", mx, local_hostname="client.example.net", timeout=20) as s:
        assert s.sendmail(SENDER, [ALICE], B64_MAIL) == {}
        assert s.sendmail(SENDER, [ALICE], QP_MAIL) == {}
    c = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=tls, timeout=30)
    try:
        c.login(ALICE, PASSWORD)
        typ, _ = c.append("INBOX", "", imaplib.Time2Internaldate(1700000000), HTML_MAIL)
        assert typ == "OK"
        assert store_fts.wait_idle(20)
        assert _rows(root) == 3  # indexed after the 250 and the APPEND OK, before any SEARCH
        c.select("INBOX")
        assert _uids(c, "BODY", "zebrafish") == [1, 2]  # base64; QP's soft line break undone
        assert _uids(c, "BODY", "ZEBRAFISH") == [1, 2]
        assert _uids(c, "BODY", "caf") == [2]  # iso-8859-1
        assert _uids(c, "BODY", "octopus") == [3]
        assert _uids(c, "BODY", '"<b>garden"') == [3]  # HTML searched as written, as the scan does
        assert _uids(c, "BODY", "q3-report") == []
        assert _uids(c, "TEXT", "q3-report") == [3]  # the attachment's name, in its part's header
        assert _uids(c, "TEXT", "coffee") == [2] and _uids(c, "BODY", "coffee") == []
        assert _uids(c, "BODY", "fi") == [1, 2]  # too short for the index: scanned
        assert _uids(c, "NOT", "BODY", "zebrafish") == [3]
        assert _uids(c, "OR", "BODY", "octopus", "BODY", "narwhal") == [3]
        assert _uids(c, "BODY", "zebra", "TEXT", "coffee") == [2]
        # a flag change renames the file: the key, and the row, stay
        assert c.uid("STORE", "1", "+FLAGS", "(\\Seen)")[0] == "OK"
        assert _uids(c, "BODY", "zebrafish") == [1, 2] and _rows(root) == 3
        # written into new/ by another program: indexed when a SEARCH needs it
        (root / "new" / "1700000000.M1P1Q1.elsewhere").write_bytes(OUTSIDE_MAIL)
        later = time.time() + 5  # as if written in a later second (the store looks at new/'s mtime)
        os.utime(root / "new", (later, later))
        c.select("INBOX")
        assert _uids(c, "BODY", "narwhal") == [4] and _rows(root) == 4
        # EXPUNGE: the row goes (in the background); the message is no longer found
        assert c.uid("STORE", "1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert c.expunge()[0] == "OK"
        assert store_fts.wait_idle(20)
        assert _rows(root) == 3
        assert _uids(c, "BODY", "zebrafish") == [2]
        # the file deleted: made again and filled at the next SEARCH
        for suffix in ("", "-wal", "-shm"):
            (root / (fts.FILENAME + suffix)).unlink(missing_ok=True)
        assert _uids(c, "BODY", "zebrafish") == [2] and _rows(root) == 3
        # COPY (a new file), then RENAME of the folder holding it
        assert c.create("Work")[0] == "OK"
        assert c.uid("COPY", "2:3", "Work")[0] == "OK"
        assert c.rename("Work", "Play")[0] == "OK"
        c.select("Play")
        assert _uids(c, "BODY", "zebrafish") == [1] and _uids(c, "TEXT", "report") == [2]
        assert _rows(root) == 5
    finally:
        c.logout()


async def test_search_body_and_text_through_the_index(app_config: Any, client_ssl_context: ssl.SSLContext) -> None:
    add_user(app_config, ALICE, PASSWORD)
    async with running_app(app_config) as ctx:
        root = ctx.store.account(ALICE).path
        await asyncio.to_thread(_scenario, ctx.port("imaps"), ctx.port("mx"), client_ssl_context, root,
                                ctx.store.fts)
