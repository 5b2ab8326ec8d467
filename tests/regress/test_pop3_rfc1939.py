"""The POP3 server checked from outside against RFC 1939 / 2449 / 5034 and side by side with Dovecot
(Debian's dovecot-pop3d on the same Maildir layout; see the audit report). Where the RFC leaves a
choice we answer as Dovecot does. Messages dropped into new/ by other tools are part of the deal:
the Maildir is the truth (DESIGN.md).
"""

from __future__ import annotations

import base64
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD
from tests.integration.test_pop3_server import (
    ALICE,
    Pop3Harness,
    harness_factory,
    make_message,
    raw,
    read_multiline,
)


@pytest.fixture
def pop3_factory(make_config: Callable[..., Any]) -> Iterator[Callable[..., Pop3Harness]]:
    yield from harness_factory(make_config)


@pytest.fixture
def h(pop3_factory: Callable[..., Pop3Harness]) -> Pop3Harness:
    harness = pop3_factory()
    harness.deliver(make_message(1))
    harness.deliver(make_message(2))
    return harness


def _login(h: Pop3Harness) -> tuple[socket.socket, Any]:
    s, f = raw(h)
    s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
    assert f.readline() == b"+OK\r\n"
    assert f.readline() == b"+OK Logged in.\r\n"
    return s, f


def _cmd(s: socket.socket, f: Any, line: bytes) -> bytes:
    s.sendall(line + b"\r\n")
    return bytes(f.readline())


def _unstuff(lines: list[bytes]) -> bytes:
    return b"".join(ln[1:] if ln.startswith(b".") else ln for ln in lines)


def _drop_into_new(h: Pop3Harness, name: str, data: bytes) -> None:
    """What procmail, maildrop or a Dovecot LDA would do: write the file straight into new/."""
    new = Path(h.store.account(ALICE).path) / "new"
    new.mkdir(parents=True, exist_ok=True)
    (new / name).write_bytes(data)


# --- Dovecot parity where RFC 1939 is silent ------------------------------------------------------


@pytest.mark.parametrize("line", [b"STAT x", b"NOOP x", b"RSET now", b"CAPA please"])
def test_argument_to_a_command_without_arguments_is_ignored_as_dovecot_does(h: Pop3Harness, line: bytes) -> None:
    s, f = _login(h)
    reply = _cmd(s, f, line)
    assert reply.startswith(b"+OK"), reply
    if line.startswith(b"CAPA"):
        read_multiline(f)
    assert _cmd(s, f, b"QUIT").startswith(b"+OK")
    s.close()


def test_overlong_sasl_continuation_ends_the_exchange(h: Pop3Harness) -> None:
    """RFC 5034 §4: a response we cannot take ends the AUTH exchange; the next line is a command
    again (Dovecot drops the connection instead; it never reads the next line as SASL data)."""
    s, f = raw(h)
    assert _cmd(s, f, b"AUTH PLAIN") == b"+ \r\n"
    assert _cmd(s, f, b"A" * 20_000).startswith(b"-ERR")
    assert _cmd(s, f, b"CAPA").startswith(b"+OK Capability")
    read_multiline(f)
    token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
    assert _cmd(s, f, b"AUTH PLAIN " + token) == b"+OK Logged in.\r\n"
    s.close()


# --- messages written by other tools (RFC 1939 §11: LIST size is the RETR size) -------------------


def _crlf(data: bytes) -> bytes:
    """What RETR sends of a stored message: bare LFs become CRLF (bare CRs stay), and a message
    without a final line break gets one."""
    out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return out if not out or out.endswith(b"\r\n") else out + b"\r\n"


def _wire_size_is_exact(h: Pop3Harness, data: bytes) -> None:
    """LIST, STAT and RETR's +OK line all give the octets RETR sends before ".CRLF", unstuffed."""
    s, f = _login(h)
    _, size = _cmd(s, f, b"LIST 1").split()[1:3]
    assert _cmd(s, f, b"STAT") == b"+OK 1 %s\r\n" % size
    head = _cmd(s, f, b"RETR 1")
    body = _unstuff(read_multiline(f))
    assert head == b"+OK %s octets\r\n" % size, head
    assert body == _crlf(data)
    assert len(body) == int(size)  # exact, whatever the file's line ends
    assert _cmd(s, f, b"TOP 1 0") == b"+OK\r\n"
    top = _unstuff(read_multiline(f))
    assert top.endswith(b"\r\n\r\n") if data else top == b""  # header and the blank line
    assert _cmd(s, f, b"QUIT").startswith(b"+OK")
    s.close()


_NO_FINAL_NEWLINE = b"From: x@example.org\r\nSubject: no final CRLF\r\n\r\nlast line"


@pytest.mark.parametrize(("name", "data"), [
    ("1700000001.ext1.host", b"From: x@example.org\nSubject: bare LF\n\nline 1\n.dot line\nline 3\n"),
    ("1700000002.ext2.host,S={size}", b"From: x@example.org\nSubject: bare LF, S= of the LF file\n\nl1\nl2\n"),
    ("1700000003.ext3.host", _NO_FINAL_NEWLINE),
    ("1700000004.ext4.host", b"From: x@example.org\r\nSubject: dots\r\n\r\n.\r\n..\r\n.x\r\n"),
    # W= (Dovecot's CRLF size) in the name: the store reads only the last octet of these
    ("1700000005.ext5.host,S={size},W={vsize}", _NO_FINAL_NEWLINE),
    ("1700000006.ext6.host,S={size},W={vsize}", b"From: x@example.org\nSubject: LF, no final LF\n\nend"),
    ("1700000007.ext7.host,S={size},W={vsize}", b"From: x@example.org\nSubject: W=, LF\n\nbody\n"),
    ("1700000008.ext8.host", b"From: x@example.org\r\nSubject: mixed\n\r\na\rb\r\nc\nd\r"),
    ("1700000009.ext9.host", b"From: x@example.org\r\nSubject: ends in bare CR\r\n\r\nx\r"),
    ("1700000010.ext10.host,S={size},W={vsize}", b"From: x@example.org\nSubject: mixed, W=\r\n\nx\ry\n\r"),
    ("1700000011.ext11.host", b""),
])
def test_message_dropped_into_new_has_list_size_equal_to_retr_octets(
        pop3_factory: Callable[..., Pop3Harness], name: str, data: bytes) -> None:
    h = pop3_factory()
    vsize = len(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    # S= as Maildir++ has it (octets on disk), W= as Dovecot has it (octets with CRLF line ends)
    _drop_into_new(h, name.format(size=len(data), vsize=vsize), data)
    _wire_size_is_exact(h, data)
    [info] = h.messages()
    assert info.size == vsize  # IMAP's RFC822.SIZE stays the message's own size


@pytest.mark.parametrize("data", [_NO_FINAL_NEWLINE, b"Subject: LF only, none at the end\n\nx", make_message(1)])
def test_message_delivered_or_appended_has_list_size_equal_to_retr_octets(
        pop3_factory: Callable[..., Pop3Harness], data: bytes) -> None:
    h = pop3_factory()
    h.deliver(data)  # store.deliver (SMTP, LMTP): a file with S= and W=
    _wire_size_is_exact(h, data)
    h.expunge(h.uids())

    async def append() -> None:  # IMAP APPEND: the store knows the data
        await (await h._mailbox(ALICE)).append(data)
    h.call(append())
    _wire_size_is_exact(h, data)


def test_index_written_before_the_size_fix_is_migrated_not_rebuilt(
        pop3_factory: Callable[..., Pop3Harness]) -> None:
    """An index of schema 1 has no `unterminated` column: it is added, the flags, keywords and
    UIDs are kept (no rebuild), and LIST learns the size RETR sends from the file's last octet."""
    import sqlite3

    from mailhaven.store import index

    h = pop3_factory()
    h.deliver(make_message(1))
    h.deliver(_NO_FINAL_NEWLINE)
    uids, uidvalidity = h.uids(), h.uidvalidity()

    async def keyword_then_close() -> None:
        await (await h._mailbox(ALICE)).store_flags([uids[1]], {"$Work"}, "add")
        await h.store.close()
    h.call(keyword_then_close())
    db = sqlite3.connect(Path(h.store.account(ALICE).path) / index.FILENAME)
    db.execute("ALTER TABLE message DROP COLUMN unterminated")
    db.execute("UPDATE meta SET v='1' WHERE k='schema'")
    db.commit()
    db.close()

    _wire_size_is_exact_for(h, 2, _NO_FINAL_NEWLINE)
    assert h.uids() == uids and h.uidvalidity() == uidvalidity
    assert "$Work" in h.messages()[1].flags  # kept only in the index: it was not rebuilt
    db = sqlite3.connect(Path(h.store.account(ALICE).path) / index.FILENAME)
    assert db.execute("SELECT v FROM meta WHERE k='schema'").fetchone() == (index.SCHEMA_VERSION,)
    assert db.execute("SELECT uid, unterminated FROM message ORDER BY uid").fetchall() == \
        [(uids[0], 0), (uids[1], 1)]  # learnt once, stored
    db.close()


def _wire_size_is_exact_for(h: Pop3Harness, n: int, data: bytes) -> None:
    s, f = _login(h)
    _, size = _cmd(s, f, b"LIST %d" % n).split()[1:3]
    assert _cmd(s, f, b"RETR %d" % n) == b"+OK %s octets\r\n" % size
    body = _unstuff(read_multiline(f))
    assert body == _crlf(data) and len(body) == int(size)
    assert _cmd(s, f, b"QUIT").startswith(b"+OK")
    s.close()


def test_message_file_removed_by_another_tool_during_the_session(h: Pop3Harness) -> None:
    s, f = _login(h)
    for p in h.files():
        if b"message 2" in p.read_bytes():
            p.unlink()
    assert _cmd(s, f, b"RETR 2").startswith(b"-ERR")
    assert _cmd(s, f, b"RETR 1").startswith(b"+OK")
    read_multiline(f)
    assert _cmd(s, f, b"QUIT").startswith(b"+OK")
    s.close()


# --- deleted messages, abrupt ends -----------------------------------------------------------------


@pytest.mark.parametrize("line", [b"LIST 1", b"UIDL 1", b"RETR 1", b"TOP 1 0", b"DELE 1"])
def test_command_on_a_deleted_message_is_err(h: Pop3Harness, line: bytes) -> None:
    """RFC 1939 §5: a message marked deleted may not be referred to; STAT/LIST leave it out."""
    s, f = _login(h)
    assert _cmd(s, f, b"DELE 1") == b"+OK Marked to be deleted.\r\n"
    assert _cmd(s, f, line) == b"-ERR Message is deleted.\r\n"
    assert _cmd(s, f, b"STAT").startswith(b"+OK 1 ")
    assert _cmd(s, f, b"LIST").startswith(b"+OK 1 messages")
    assert [ln.split()[0] for ln in read_multiline(f)] == [b"2"]
    s.close()


def test_reset_in_the_middle_of_a_retr_releases_the_maildrop_and_deletes_nothing(
        pop3_factory: Callable[..., Pop3Harness]) -> None:
    h = pop3_factory()
    h.deliver(make_message(1, body_lines=100_000))  # ~ 2.5 MB
    s, f = _login(h)
    s.sendall(b"RETR 1\r\nDELE 1\r\n")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST
    deadline = time.monotonic() + 5
    while True:
        s, f = raw(h)
        s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
        f.readline()
        reply = f.readline()
        if reply == b"+OK Logged in.\r\n" or time.monotonic() > deadline:
            break
        s.close()
        time.sleep(0.05)
    assert reply == b"+OK Logged in.\r\n"
    assert _cmd(s, f, b"STAT").startswith(b"+OK 1 ")
    s.close()
