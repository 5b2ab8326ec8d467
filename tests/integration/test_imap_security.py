"""IMAP attack surface: STARTTLS command injection (CVE-2011-0411 class), TLS state rules, and
isolation of users' mailboxes whatever names a client tries (path tricks, wildcards, mUTF-7)."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD
from tests.integration.test_imap_server import ALICE, BOB, ImapHarness, RawClient, make_message


@pytest.fixture
def imap(make_config: Callable[..., Any]) -> Iterator[ImapHarness]:
    # Many names below are syntax errors (BAD): allow them all in one session.
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}}, imap={"max_bad_commands": 10_000})).start()
    try:
        yield h
    finally:
        h.stop()


def _tls_lines(sock: ssl.SSLSocket, tag: bytes) -> list[bytes]:
    buf = b""
    out: list[bytes] = []
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError(buf)
            buf += chunk
        line, _, buf = buf.partition(b"\r\n")
        out.append(line)
        if line.startswith(tag + b" "):
            return out


def test_starttls_drops_commands_pipelined_in_plaintext(imap: ImapHarness, client_ssl_context: ssl.SSLContext
                                                        ) -> None:
    raw = imap.raw()
    # One packet: STARTTLS plus an injected command a man in the middle appended in plaintext.
    raw.send(b"a STARTTLS\r\nb LOGIN alice@example.test secret\r\nc CAPABILITY\r\n")
    assert raw.line() == b"a OK Begin TLS negotiation now.\r\n"
    tls = client_ssl_context.wrap_socket(raw.sock, server_hostname="localhost")
    tls.sendall(b"d NOOP\r\n")
    lines = _tls_lines(tls, b"d")
    assert lines == [b"d OK NOOP completed."]  # nothing answered for b or c
    tls.sendall(b"e CAPABILITY\r\n")
    caps = _tls_lines(tls, b"e")[0]
    assert b"STARTTLS" not in caps and b"AUTH=PLAIN" in caps  # still not logged in
    tls.sendall(b"f SELECT INBOX\r\n")
    assert _tls_lines(tls, b"f")[-1].startswith(b"f BAD")
    tls.close()


def test_starttls_twice_or_on_implicit_tls_is_refused(imap: ImapHarness, client_ssl_context: ssl.SSLContext
                                                      ) -> None:
    raw = imap.raw()
    raw.cmd(b"STARTTLS", b"a")
    tls = client_ssl_context.wrap_socket(raw.sock, server_hostname="localhost")
    tls.sendall(b"b STARTTLS\r\n")
    assert _tls_lines(tls, b"b")[-1].startswith(b"b BAD")
    tls.close()
    sock = socket.create_connection(("127.0.0.1", imap.ports["imaps"]), timeout=10)
    tls = client_ssl_context.wrap_socket(sock, server_hostname="localhost")
    greeting = _tls_lines(tls, b"*")[0]
    assert b"STARTTLS" not in greeting
    tls.sendall(b"a STARTTLS\r\n")
    assert _tls_lines(tls, b"a")[-1].startswith(b"a BAD")
    tls.close()


def test_starttls_after_login_is_not_allowed(imap: ImapHarness) -> None:
    raw = imap.raw()
    raw.login()
    assert raw.cmd(b"STARTTLS")[-1].startswith(b"t BAD")
    raw.close()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


HOSTILE_NAMES = [
    "../bob", "..", ".", "/etc", "/", "INBOX/../../bob", "../../example.test/bob", "..%", "%", "*",
    "..bob", ".bob", "a..b", "\\etc", "&AC8-etc",  # "/etc" in modified UTF-7
    "&AC4ALg-",  # ".." in modified UTF-7
    "&ACoA-",  # "*" in modified UTF-7 (invalid: printable ASCII may not be encoded)
    "foo\u0000bar", "x" * 300,
]
# Odd but harmless: these become folders inside alice's own Maildir++ (checked on disk below).
OWN_NAMES = ["bob@example.test", "~bob", "a.", "INBOX.bob"]


def _quoted(name: str) -> bytes:
    return b'"' + name.encode("utf-8").replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def test_a_user_never_reaches_another_users_mailboxes(imap: ImapHarness) -> None:
    imap.fill(2, user=BOB)
    c = imap.client(login=BOB)
    c.create("Secret")
    c.logout()
    assert imap.store.fts.wait_idle(10)  # bob's full-text index written (store/fts.py, in the background)
    root = imap.cfg.mail_root
    bob_root = root / "example.test" / "bob"
    before_bob = _tree(bob_root)
    before_outside = {p for p in _tree(root) if not p.startswith("example.test/alice")}
    raw = imap.raw()
    raw.login(ALICE)
    for name in OWN_NAMES:
        raw.cmd(b"CREATE " + _quoted(name))
        raw.cmd(b"SELECT " + _quoted(name))
    for name in HOSTILE_NAMES:
        q = _quoted(name) if "\x00" not in name else b"{%d}\r\n" % len(name.encode()) + name.encode()
        for cmd in (b"SELECT ", b"EXAMINE ", b"CREATE ", b"DELETE ", b"SUBSCRIBE ", b"STATUS "):
            if b"{" in q:
                raw.send(b"t " + cmd + q.split(b"\r\n")[0] + b"\r\n")
                line = raw.line()
                if line.startswith(b"+"):
                    raw.send(q.split(b"\r\n", 1)[1] + (b" (MESSAGES)" if cmd == b"STATUS " else b"") + b"\r\n")
                    line = raw.until_tagged(b"t")[-1]
                lines = [line]
            else:
                lines = raw.cmd(cmd + q + (b" (MESSAGES)" if cmd == b"STATUS " else b""))
            last = lines[-1]
            if cmd == b"SUBSCRIBE " and last.startswith(b"t OK"):
                continue  # a name in alice's own subscription list, nothing else
            assert last.startswith((b"t NO", b"t BAD")), (cmd, name, lines)
            assert not any(b"EXISTS" in x for x in lines)
        if "\x00" in name:
            continue
        msg = make_message(1)
        lines = raw.cmd(b"APPEND " + _quoted(name) + b" {%d+}\r\n" % len(msg) + msg)
        assert lines[-1].startswith((b"t NO", b"t BAD")), (name, lines)
        lines = raw.cmd(b"RENAME INBOX " + _quoted(name))
        assert lines[-1].startswith((b"t NO", b"t BAD")), (name, lines)
    # LIST shows only alice's own folders, whatever the reference and pattern.
    for ref, pat in ((b'""', b"*"), (b'"../"', b"*"), (b'"/"', b"*"), (b'"../bob/"', b"%"), (b'"~bob"', b"*"),
                     (b'""', b'"../*"'), (b'""', b"%.%")):
        lines = raw.cmd(b"LIST " + ref + b" " + pat)
        assert lines[-1].startswith(b"t OK")
        assert not any(b"Secret" in x for x in lines), lines
    raw.close()
    assert _tree(bob_root) == before_bob
    assert {p for p in _tree(root) if not p.startswith("example.test/alice")} == before_outside
    alice = root / "example.test" / "alice"
    for p in alice.iterdir():  # every folder alice has is a plain Maildir++ folder of hers
        assert p.resolve().parent == alice.resolve()


def test_copy_and_move_cannot_target_other_users(imap: ImapHarness) -> None:
    imap.fill(1)
    before = len(imap.messages(user=BOB))
    raw = imap.raw()
    raw.login(ALICE)
    raw.cmd(b"SELECT INBOX")
    for name in ("../bob", "/etc", "..", "&AC8-etc", "bob@example.test.INBOX"):
        assert raw.cmd(b"COPY 1 " + _quoted(name))[-1].startswith((b"t NO", b"t BAD"))
        assert raw.cmd(b"MOVE 1 " + _quoted(name))[-1].startswith((b"t NO", b"t BAD"))
    raw.close()
    assert len(imap.messages(user=BOB)) == before
    assert len(imap.messages()) == 1


def test_pipelining_flood_is_cut_off(make_config: Callable[..., Any]) -> None:
    cfg = make_config("imap", {"imaps": {"tls": "implicit"}}, imap={"max_in_flight": 2, "max_line_length": 1000})
    h = ImapHarness(cfg, names=("imap",)).start()
    try:
        raw = RawClient(h.ports["imap"])
        raw.login()
        raw.send(b"a IDLE\r\n" + b"x" * 5000)  # IDLE reads lines; the flood must not be buffered
        try:
            raw.sock.sendall(b"y" * 200_000)
        except OSError:
            pass
        assert raw.closed(10)
        c = h.client()
        c.noop()  # the server lives on
        c.logout()
    finally:
        h.stop()


def test_failures_delay_but_never_refuse_the_right_password(make_config: Callable[..., Any]) -> None:
    """Issue 10 item 1: the old code answered NO [UNAVAILABLE] to the right password here."""
    cfg = make_config("imap", {"imaps": {"tls": "implicit"}},
                      auth={"max_failures_per_ip": 3, "failure_delay": 0.05, "max_failure_delay": 0.2})
    h = ImapHarness(cfg, names=("imap",)).start()
    try:
        raw = h.raw()
        for i in range(6):
            assert b"AUTHENTICATIONFAILED" in raw.cmd(f"LOGIN {ALICE} wrong{i}".encode())[-1]
        t0 = time.monotonic()
        last = raw.cmd(f"LOGIN {ALICE} {PASSWORD}".encode())[-1]
        assert last.startswith(b"t OK ")
        assert time.monotonic() - t0 >= 0.2  # delayed (6 failures of this pair: the cap)
        raw.close()
    finally:
        h.stop()


def test_hostile_mailbox_names_give_no_traceback_in_logs(imap: ImapHarness, caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    import logging

    caplog.set_level(logging.WARNING)
    raw = imap.raw()
    raw.login()
    for name in HOSTILE_NAMES:
        if "\x00" in name:
            continue
        raw.cmd(b"SELECT " + _quoted(name))
        raw.cmd(b"LIST " + _quoted(name) + b" *")
    raw.close()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert os.path.isdir(imap.cfg.mail_root)


def test_garbage_instead_of_a_tls_handshake_is_logged_as_a_disconnect(imap: ImapHarness,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10 item 12: a stranger's `a STARTTLS` followed by bytes that are not TLS was logged as an
    IMAP internal error with a traceback (anyone could flood the error log); SMTP and POP3 log it
    at INFO, and so does IMAP now."""
    import logging

    caplog.set_level(logging.INFO)
    raw = imap.raw()
    raw.send(b"a STARTTLS\r\n")
    assert raw.line() == b"a OK Begin TLS negotiation now.\r\n"
    raw.send(b"\x16\x03\x01\x00\x05hello this is not TLS\r\n" * 10)
    assert raw.closed()
    raw.sock.close()
    for _ in range(100):  # the session's end line comes once the server has given up
        if any(r.getMessage() == "imap session end" for r in caplog.records):
            break
        time.sleep(0.05)
    records = [r for r in caplog.records if r.name.startswith("mailhaven")]
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR], \
        [(r.levelname, r.getMessage()) for r in records]
    failed = [r for r in records if "TLS handshake failed" in r.getMessage()]
    assert failed and failed[0].levelno == logging.INFO, [r.getMessage() for r in records]
    end = [r for r in records if r.getMessage() == "imap session end"]
    assert end and getattr(end[0], "mh_fields", {}).get("reason") == "TLS handshake failed"
    assert imap.ctx.limits.connections("imap") == 0
    # and the server still serves
    other = imap.raw()
    other.login()
    other.close()
