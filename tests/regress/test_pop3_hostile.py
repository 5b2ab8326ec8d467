"""Hostile POP3 clients: each attack gets a protocol error or a disconnect, never a traceback, never
unbounded memory, and never an action the client was not entitled to."""

from __future__ import annotations

import base64
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD
from tests.integration.test_pop3_server import (
    ALICE,
    Pop3Harness,
    harness_factory,
    make_message,
    raw,
)


@pytest.fixture
def pop3_factory(make_config: Callable[..., Any]) -> Iterator[Callable[..., Pop3Harness]]:
    yield from harness_factory(make_config)


@pytest.fixture
def h(pop3_factory: Callable[..., Pop3Harness]) -> Pop3Harness:
    harness = pop3_factory(auth={"allow_plaintext_loopback": False})
    harness.deliver(make_message(1))
    return harness


def test_stls_command_injection_is_not_executed_after_handshake(
        h: Pop3Harness, client_ssl_context: ssl.SSLContext) -> None:
    """CVE-2011-0411 class: commands sent in clear with STLS must not run inside TLS."""
    s, f = raw(h)
    s.sendall(f"STLS\r\nUSER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
    assert f.readline() == b"+OK Begin TLS negotiation now.\r\n"
    t = client_ssl_context.wrap_socket(s, server_hostname="localhost")
    tf = t.makefile("rb")
    t.sendall(b"STAT\r\n")
    assert tf.readline() == b"-ERR Command not valid in this state.\r\n"  # not logged in
    t.sendall(f"PASS {PASSWORD}\r\n".encode())
    assert tf.readline() == b"-ERR USER first.\r\n"  # the injected USER was dropped too
    t.close()


def test_stls_injection_in_a_separate_packet_breaks_the_handshake_not_the_rules(
        h: Pop3Harness, client_ssl_context: ssl.SSLContext) -> None:
    s, f = raw(h)
    s.sendall(b"STLS\r\n")
    s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
    assert f.readline() == b"+OK Begin TLS negotiation now.\r\n"
    try:
        t = client_ssl_context.wrap_socket(s, server_hostname="localhost")
        tf = t.makefile("rb")
        t.sendall(b"STAT\r\n")
        line = tf.readline()
    except (ssl.SSLError, OSError):
        line = b""  # the injected bytes were taken as TLS data: handshake failed, fine
    assert not line.startswith(b"+OK")
    s.close()


def test_endless_line_is_not_buffered(h: Pop3Harness) -> None:
    s, f = raw(h)
    chunk = b"A" * 65536
    for _ in range(80):  # 5 MiB without a line end
        s.sendall(chunk)
    s.sendall(b"\r\nCAPA\r\n")
    assert f.readline() == b"-ERR Line too long.\r\n"
    assert f.readline().startswith(b"+OK Capability")
    s.close()


@pytest.mark.parametrize("cmd", [b"RETR 99999999999999999999", b"RETR 18446744073709551617",
                                 b"LIST -1", b"DELE 0", b"TOP 1 -5", b"TOP 1 99999999999999999999999",
                                 b"UIDL 00000000000000000000001", b"RETR 1e3", b"RETR \xef\xbc\x91"])
def test_hostile_message_numbers(h: Pop3Harness, client_ssl_context: ssl.SSLContext, cmd: bytes) -> None:
    t = client_ssl_context.wrap_socket(socket.create_connection(("127.0.0.1", h.ports["pop3s"]), timeout=10),
                                       server_hostname="localhost")
    tf = t.makefile("rb")
    assert tf.readline().startswith(b"+OK")
    t.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode() + cmd + b"\r\nSTAT\r\n")
    assert tf.readline() == b"+OK\r\n"
    assert tf.readline() == b"+OK Logged in.\r\n"
    reply = tf.readline()
    if reply.startswith(b"+OK"):  # TOP with a huge line count is the whole message
        assert cmd.startswith(b"TOP 1 9")
        while tf.readline() != b".\r\n":
            pass
    else:
        assert reply.startswith(b"-ERR")
    assert tf.readline().startswith(b"+OK 1 ")  # still alive, still logged in
    t.close()


def test_oversized_sasl_response_is_refused(h: Pop3Harness, client_ssl_context: ssl.SSLContext) -> None:
    t = client_ssl_context.wrap_socket(socket.create_connection(("127.0.0.1", h.ports["pop3s"]), timeout=10),
                                       server_hostname="localhost")
    tf = t.makefile("rb")
    tf.readline()
    big = base64.b64encode(b"\0" + b"a" * 3000 + b"\0" + b"b" * 3000)
    t.sendall(b"AUTH PLAIN " + big + b"\r\n")
    assert tf.readline().startswith(b"-ERR")
    t.sendall(b"AUTH PLAIN\r\n")
    assert tf.readline() == b"+ \r\n"
    t.sendall(b"%%%not base64%%%\r\n")
    assert tf.readline().startswith(b"-ERR")
    t.close()


def test_binary_garbage_gets_errors_then_disconnect(h: Pop3Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven.pop3")
    s, f = raw(h)
    s.sendall(bytes(range(256)) * 4 + b"\r\n" + b"\x00\xff\xfe\r\n" * 30)
    replies = []
    while line := f.readline():
        replies.append(line)
    assert replies and all(r.startswith(b"-ERR") for r in replies)
    assert replies[-1] == b"-ERR Too many bad commands.\r\n"
    s.close()
    time.sleep(0.2)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


def test_client_that_never_reads_is_dropped_and_releases_the_lock(
        pop3_factory: Callable[..., Pop3Harness]) -> None:
    h = pop3_factory(plain={"idle_timeout": 1})
    h.deliver(make_message(1, body_lines=20_000))  # ~ 500 KB
    s = socket.create_connection(("127.0.0.1", h.ports["pop3"]), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode() + b"RETR 1\r\n" * 200)
    time.sleep(3)  # the server is blocked writing; its idle timeout must fire
    s.close()
    deadline = time.monotonic() + 5
    from mailhaven.pop3 import server as pop3server

    while pop3server._locks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pop3server._locks


def test_login_with_crlf_in_name_cannot_inject_commands(h: Pop3Harness, client_ssl_context: ssl.SSLContext) -> None:
    t = client_ssl_context.wrap_socket(socket.create_connection(("127.0.0.1", h.ports["pop3s"]), timeout=10),
                                       server_hostname="localhost")
    tf = t.makefile("rb")
    tf.readline()
    t.sendall(b"USER alice@example.test\rPASS secret\r\nPASS secret\r\n")
    assert tf.readline() == b"+OK\r\n"
    assert tf.readline() == b"-ERR [AUTH] Authentication failed.\r\n"  # login was "alice...\rPASS secret"
    t.close()
