"""The connection plumbing IMAP and POP3 share (lineproto.py), driven through both real servers on
127.0.0.1: the idle timer counted from the last input, connection limits, the server-stopping
reply, STARTTLS dropping pipelined plaintext, half-close, and an unexpected exception that gets a
reply revealing nothing."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD
from tests.integration.test_imap_server import ImapHarness
from tests.integration.test_pop3_server import Pop3Harness, harness_factory

ALICE = "alice@example.test"


@pytest.fixture
def pop3_factory(make_config: Callable[..., Any]) -> Iterator[Callable[..., Pop3Harness]]:
    yield from harness_factory(make_config)


@pytest.fixture
def imap_factory(make_config: Callable[..., Any]) -> Iterator[Callable[..., ImapHarness]]:
    started: list[ImapHarness] = []

    def build(**plain: Any) -> ImapHarness:
        cfg = make_config({"imap": {"tls": "starttls", **plain}}, {"imaps": {"tls": "implicit"}})
        h = ImapHarness(cfg).start()
        started.append(h)
        return h

    yield build
    for h in started:
        h.stop()


def connect(port: int, greeting: bytes) -> tuple[socket.socket, Any]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(greeting)
    return s, f


# --- idle timer ----------------------------------------------------------------------------------


def test_imap_idle_timeout_counts_from_the_last_command(imap_factory: Callable[..., ImapHarness]) -> None:
    h = imap_factory(idle_timeout=1)
    s, f = connect(h.ports["imap"], b"* OK")
    for i in range(6):  # 2.4 s of activity, longer than the timeout, in steps shorter than it
        s.sendall(b"a%d NOOP\r\n" % i)
        assert f.readline().startswith(b"a%d OK" % i)
        time.sleep(0.4)
    t0 = time.monotonic()
    assert f.readline() == b"* BYE Disconnected for inactivity.\r\n"
    assert 0.5 <= time.monotonic() - t0 < 5
    assert f.readline() == b""
    s.close()


# --- connection limits ---------------------------------------------------------------------------


def test_imap_connection_limit_refuses_with_bye_and_frees_the_slot(
        imap_factory: Callable[..., ImapHarness]) -> None:
    h = imap_factory(per_ip_connections=1, max_connections=10)
    s, f = connect(h.ports["imap"], b"* OK")
    t = socket.create_connection(("127.0.0.1", h.ports["imap"]), timeout=10)
    g = t.makefile("rb")
    assert g.readline() == b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"
    assert g.readline() == b""
    t.close()
    s.sendall(b"a LOGOUT\r\n")
    assert f.readline().startswith(b"* BYE")
    s.close()
    deadline = time.monotonic() + 5
    while True:  # the slot is released when the session ends
        u = socket.create_connection(("127.0.0.1", h.ports["imap"]), timeout=10)
        line = u.makefile("rb").readline()
        u.close()
        if line.startswith(b"* OK") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert line.startswith(b"* OK")


# --- server stopping -----------------------------------------------------------------------------


def test_server_stopping_says_goodbye_on_both_protocols(
        imap_factory: Callable[..., ImapHarness], pop3_factory: Callable[..., Pop3Harness]) -> None:
    hi, hp = imap_factory(), pop3_factory()
    si, fi = connect(hi.ports["imap"], b"* OK")
    sp, fp = connect(hp.ports["pop3"], b"+OK")
    hi.loop.call_soon_threadsafe(hi.ctx.stopping.set)
    hp.loop.call_soon_threadsafe(hp.ctx.stopping.set)
    assert fi.readline() == b"* BYE Server shutting down.\r\n"
    assert fp.readline() == b"-ERR [SYS/TEMP] Server shutting down.\r\n"
    assert fi.readline() == b"" and fp.readline() == b""
    si.close()
    sp.close()


# --- STARTTLS -----------------------------------------------------------------------------------


def test_plaintext_pipelined_after_starttls_is_never_acted_on(
        imap_factory: Callable[..., ImapHarness], client_ssl_context: ssl.SSLContext) -> None:
    h = imap_factory()
    s, f = connect(h.ports["imap"], b"* OK")
    s.sendall(f'a STARTTLS\r\nb LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())  # CVE-2011-0411 class
    assert f.readline().startswith(b"a OK")
    t = client_ssl_context.wrap_socket(s, server_hostname="localhost")
    t.sendall(b"c CAPABILITY\r\n")
    g = t.makefile("rb")
    lines = [g.readline(), g.readline()]
    assert lines[0].startswith(b"* CAPABILITY") and lines[1].startswith(b"c OK")
    t.sendall(b"d SELECT INBOX\r\n")  # refused: the LOGIN sent before the handshake was dropped
    assert g.readline() == b"d BAD SELECT is not allowed before login.\r\n"
    t.close()


# --- half-close ----------------------------------------------------------------------------------


def test_replies_still_go_out_after_the_client_half_closes(pop3_factory: Callable[..., Pop3Harness]) -> None:
    h = pop3_factory()
    s, f = connect(h.ports["pop3"], b"+OK")
    s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nSTAT\r\nQUIT\r\n".encode())
    s.shutdown(socket.SHUT_WR)
    assert [f.readline() for _ in range(4)] == [b"+OK\r\n", b"+OK Logged in.\r\n", b"+OK 0 0\r\n",
                                                b"+OK Logging out, 0 messages left.\r\n"]
    assert f.readline() == b""
    s.close()


# --- an unexpected exception ----------------------------------------------------------------------


class BrokenDirectory:
    """A user directory (auth.users.Directory's authenticate) that fails unexpectedly."""

    async def authenticate(self, login: str, password: str) -> str | None:
        raise RuntimeError("secret internal detail")


def test_unexpected_exception_gets_a_reply_that_reveals_nothing_and_is_logged(
        pop3_factory: Callable[..., Pop3Harness], caplog: pytest.LogCaptureFixture) -> None:
    h = pop3_factory()
    h.ctx.directory = BrokenDirectory()
    s, f = connect(h.ports["pop3"], b"+OK")
    with caplog.at_level(logging.ERROR, logger="mailhaven.pop3"):
        s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
        assert f.readline() == b"+OK\r\n"
        reply = f.readline()
        assert reply == b"-ERR [SYS/TEMP] Internal error occurred. Refer to server log for more information.\r\n"
        assert f.readline() == b""
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)
    s.close()
    assert any("secret internal detail" in (r.exc_text or "") or r.exc_info for r in caplog.records)
