"""POP3 and IMAP agree about which message is which (issue 5, "Exactness" and "With IMAP").

The whole server (app.py) runs with its POP3 and IMAP listeners over one store; a real IMAP client
(imaplib) reads UIDVALIDITY from SELECT and the UIDs from UID FETCH 1:* (UID), a real POP3 client
(poplib) reads UIDL, and each UIDL must be Dovecot's `%08Xu%08Xv` of that UID and UIDVALIDITY
(lower-case hex, as Dovecot prints it). The same must hold, with the same values, after the server
and its Store are restarted, and after the index is lost (UIDs come back from the uidlist).
"""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import re
import ssl
from pathlib import Path
from typing import Any

from tests.fixtures_base import PASSWORD
from tests.fixtures_server import add_user, running_app

ALICE = "alice@example.test"
UNTERMINATED = b"From: x@example.org\r\nSubject: no final line break\r\n\r\nlast line"


def _message(n: int) -> bytes:
    return (b"From: sender@example.org\r\nTo: alice@example.test\r\nSubject: identity %d\r\n"
            b"Message-ID: <identity%d@example.org>\r\n\r\nbody of message %d\r\n" % (n, n, n))


def _imap_view(port: int, context: ssl.SSLContext) -> tuple[int, list[int], dict[int, bytes], dict[int, int]]:
    """(UIDVALIDITY from SELECT, UIDs in sequence order, message by UID, RFC822.SIZE by UID)."""
    imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=10)
    imap.login(ALICE, PASSWORD)
    typ, _ = imap.select("INBOX", readonly=True)
    assert typ == "OK"
    _, data = imap.response("UIDVALIDITY")  # RFC 3501 §7.1: * OK [UIDVALIDITY n]
    assert data and data[0] is not None
    uidvalidity = int(data[0])
    typ, lines = imap.uid("FETCH", "1:*", "(UID)")
    assert typ == "OK"
    seq_uid = []
    for line in lines:
        assert isinstance(line, bytes)
        m = re.fullmatch(rb"(\d+) \(UID (\d+)\)", line)
        assert m, line
        seq_uid.append((int(m.group(1)), int(m.group(2))))
    assert [s for s, _ in seq_uid] == list(range(1, len(seq_uid) + 1))
    uids = [u for _, u in seq_uid]
    bodies: dict[int, bytes] = {}
    sizes: dict[int, int] = {}
    for uid in uids:
        typ, parts = imap.uid("FETCH", str(uid), "(RFC822.SIZE BODY.PEEK[])")
        assert typ == "OK"
        head, body = parts[0]  # type: ignore[misc]
        size = re.search(rb"RFC822\.SIZE (\d+)", head)
        assert size, head
        bodies[uid], sizes[uid] = body, int(size.group(1))
    imap.logout()
    return uidvalidity, uids, bodies, sizes


def _pop3_view(port: int, context: ssl.SSLContext) -> tuple[list[str], list[int], list[bytes]]:
    """(UIDL values, LIST sizes, RETR bodies (unstuffed, CRLF line ends)), in message-number order."""
    c = poplib.POP3_SSL("127.0.0.1", port, context=context, timeout=10)
    c.user(ALICE)
    c.pass_(PASSWORD)
    _, uidl_lines, _ = c.uidl()
    _, list_lines, _ = c.list()
    numbers = [int(ln.split()[0]) for ln in uidl_lines]
    assert numbers == list(range(1, len(numbers) + 1))
    uidls = [ln.split()[1].decode() for ln in uidl_lines]
    sizes = [int(ln.split()[1]) for ln in list_lines]
    bodies = [b"".join(line + b"\r\n" for line in c.retr(n)[1]) for n in numbers]
    c.rset()  # nothing changes: RETR would set \Seen at QUIT
    c.quit()
    return uidls, sizes, bodies


async def _views(cfg: Any, context: ssl.SSLContext, *, prepare: bool = False) -> dict[str, Any]:
    async with running_app(cfg) as ctx:
        if prepare:
            for n in range(1, 6):
                await ctx.store.deliver([(ALICE, "INBOX")], _message(n))
            await ctx.store.deliver([(ALICE, "INBOX")], UNTERMINATED)
            mailbox = await ctx.store.account(ALICE).mailbox("INBOX")
            uids = [m.uid for m in (await mailbox.snapshot()).messages]
            await mailbox.expunge([uids[0], uids[2]])  # UIDs with gaps: not the message numbers
        uidvalidity, uids, imap_bodies, rfc822_sizes = await asyncio.to_thread(
            _imap_view, ctx.port("imaps"), context)
        uidls, list_sizes, pop3_bodies = await asyncio.to_thread(_pop3_view, ctx.port("pop3s"), context)
    return {"uidvalidity": uidvalidity, "uids": uids, "imap_bodies": imap_bodies,
            "rfc822_sizes": rfc822_sizes, "uidls": uidls, "list_sizes": list_sizes, "pop3_bodies": pop3_bodies}


def _check_identity(v: dict[str, Any]) -> None:
    uids, uidvalidity = v["uids"], v["uidvalidity"]
    assert len(uids) == 4 and uids != list(range(1, 5))
    # RFC 1939 §7 UIDL, Dovecot's %08Xu%08Xv: the IMAP UID, then UIDVALIDITY
    assert v["uidls"] == [f"{uid:08x}{uidvalidity:08x}" for uid in uids]
    # and the POP3 message with that UIDL is the IMAP message with that UID
    for n, uid in enumerate(uids):
        imap_body, pop3_body = v["imap_bodies"][uid], v["pop3_bodies"][n]
        if imap_body == UNTERMINATED:
            # RFC822.SIZE is the message's own size; POP3 LIST counts the CRLF RETR adds.
            assert pop3_body == imap_body + b"\r\n"
            assert v["rfc822_sizes"][uid] == len(imap_body) and v["list_sizes"][n] == len(imap_body) + 2
        else:
            assert pop3_body == imap_body
            assert v["rfc822_sizes"][uid] == v["list_sizes"][n] == len(imap_body)
    assert UNTERMINATED in v["imap_bodies"].values()


async def test_uidl_is_the_imap_uid_and_uidvalidity_and_survives_restarts(
        app_config: Any, client_ssl_context: ssl.SSLContext) -> None:
    add_user(app_config, ALICE, PASSWORD)
    first = await _views(app_config, client_ssl_context, prepare=True)
    _check_identity(first)

    again = await _views(app_config, client_ssl_context)  # a new server process, a new Store
    _check_identity(again)
    assert again == first

    # The index is a cache: without it the UIDs come back from the folder's uidlist, and so do
    # the UIDLs (clients do not download everything again).
    user_root = Path(app_config.mail_root) / "example.test" / "alice"
    index_files = list(user_root.glob("mailhaven-index.sqlite*"))
    assert index_files
    for p in index_files:
        p.unlink()
    rebuilt = await _views(app_config, client_ssl_context)
    _check_identity(rebuilt)
    assert rebuilt == first
