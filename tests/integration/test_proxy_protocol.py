"""The PROXY protocol on every listener (proxyaccept.py), end to end: the whole server (app.py) on
127.0.0.1, clients that send a v1 or v2 header and then speak IMAP, IMAPS, POP3, ManageSieve, SMTP
and SMTPS by hand. The proxied address is what login throttling, connection limits, SPF, the
Received header and the logs see; an untrusted peer and a malformed, oversized or late header are
closed with one log line; implicit TLS starts after the header, even when the ClientHello comes in
the same segment; a listener without proxy_protocol is unchanged."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app, config
from mailhaven.proxyproto import MAX_V2_TLV, encode_v1, encode_v2
from tests.dnsserver import DnsServer
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.integration.test_login_throttle import LoginLog, capture_login_log

ALICE = "alice@example.test"
PASSWORD = "Right-Password-1"
SENDER_DOMAIN = "sender.test"
PROXY_TIMEOUT = 0.5


class ProxyLog(logging.Handler):
    """proxyaccept's refusal lines, and any record carrying a traceback anywhere in mailhaven."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.tracebacks.append(record.getMessage())
        if record.name == "mailhaven.proxy":
            self.lines.append(record.getMessage())


@pytest.fixture
def proxy_log() -> Iterator[ProxyLog]:
    handler = ProxyLog()
    loggers = logging.getLogger("mailhaven"), logging.getLogger("asyncio")  # asyncio: callback errors
    proxy = logging.getLogger("mailhaven.proxy")
    old = proxy.level
    proxy.setLevel(logging.INFO)
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)
    proxy.setLevel(old)


@pytest.fixture
def login_log() -> Iterator[LoginLog]:
    yield from capture_login_log()


def make_config(tmp_path: Path, tls_files: tuple[Path, Path], nameserver: str) -> config.Config:
    """Every listener on 127.0.0.1 behind a PROXY-speaking proxy at 127.0.0.1, except submission
    (587), which stays a plain listener; imap allows one connection per client address."""
    listeners: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(config.LISTENER_NAMES):
        listeners[name] = {"address": "127.0.0.1", "port": 40000 + i, "proxy_protocol": True,
                           "proxy_trusted": ["127.0.0.1/32"], "proxy_timeout": PROXY_TIMEOUT}
    listeners["submission"] = {"address": "127.0.0.1", "port": 40100}
    listeners["imap"]["per_ip_connections"] = 1
    path = app_config_file(tmp_path, tls_files, nameserver, listeners=listeners,
                           auth={"allow_plaintext_loopback": True, "failure_delay": 0.05, "max_failure_delay": 0.2})
    cfg = load_test_config(path)
    add_user(cfg, ALICE, PASSWORD)
    return cfg


@pytest.fixture
async def server(tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str) -> AsyncIterator[app.Context]:
    async with running_app(make_config(tmp_path, tls_files, dns_nameserver)) as ctx:
        yield ctx


@pytest.fixture
def client_tls(tls_ca: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    tls_ca.configure_trust(ctx)
    return ctx


# --- clients ------------------------------------------------------------------------------------------


class Conn:
    """A line-oriented client over a socket, or over TLS started after the PROXY header with the
    header and the ClientHello sent in ONE write (so a server reading past the header would eat
    the start of the handshake)."""

    def __init__(self, port: int, header: bytes | None, *, source: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.buf = b""
        self.tls: ssl.SSLObject | None = None
        if tls is None:
            if header:
                self.sock.sendall(header)
            return
        self._handshake(tls, header or b"")

    def starttls(self, ctx: ssl.SSLContext) -> None:
        """After the server's go-ahead for STARTTLS/STLS."""
        assert not self.buf
        self._handshake(ctx, b"")

    def _handshake(self, ctx: ssl.SSLContext, before: bytes) -> None:
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending, before = before + self.out.read(), b""
                if pending:
                    self.sock.sendall(pending)
                self._fill_tls()
        if self.out.pending:
            self.sock.sendall(self.out.read())

    def _fill_tls(self) -> None:
        assert self.tls is not None
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("EOF")
        self.inc.write(data)

    def send(self, data: bytes) -> None:
        if self.tls is None:
            self.sock.sendall(data)
            return
        self.tls.write(data)
        self.sock.sendall(self.out.read())

    def _recv(self) -> bytes:
        if self.tls is None:
            return self.sock.recv(65536)
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._fill_tls()
            except ssl.SSLZeroReturnError:
                return b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self._recv()
            if not data:
                raise ConnectionResetError(f"EOF after {self.buf!r}")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def until(self, prefix: bytes) -> bytes:
        while not (line := self.line()).startswith(prefix):
            pass
        return line

    def closed_by_server(self) -> bool:
        """Reads to the end: True when the server closed (EOF or reset) without sending anything."""
        try:
            return self._recv() == b""
        except ConnectionResetError:
            return True

    def close_after_eof(self) -> None:
        """Wait for the server's close (so its connection slot is free again), then close."""
        try:
            while self._recv():
                pass
        except (ConnectionResetError, ssl.SSLError):
            pass
        self.sock.close()


def imap_login(port: int, header: bytes, password: str, *, tls: ssl.SSLContext | None = None) -> bytes:
    c = Conn(port, header, tls=tls)
    assert c.line().startswith(b"* OK")
    return imap_login_on(c, password)


def smtp_auth(c: Conn, password: str) -> bytes:
    c.until(b"220 ")
    c.send(b"EHLO client.example.test\r\n")
    c.until(b"250 ")
    token = base64.b64encode(f"\0{ALICE}\0{password}".encode())
    c.send(b"AUTH PLAIN " + token + b"\r\n")
    return c.line()


# --- the proxied address is the client's, on every protocol ------------------------------------------


async def test_imap_login_throttling_counts_per_proxied_address(
        server: app.Context, login_log: LoginLog, client_tls: ssl.SSLContext) -> None:
    """Failures proxied from 10.1.2.3 delay its next logins; a login proxied from 10.9.9.9 over the
    same real peer (127.0.0.1) is not delayed (throttling keys on the client, never on the proxy)."""
    port = server.port("imaps")
    for i in range(3):
        header = encode_v1(("10.1.2.3", 50000 + i)) if i % 2 else encode_v2(("10.1.2.3", 50000 + i))
        reply = await asyncio.to_thread(imap_login, port, header, f"wrong-{i}", tls=client_tls)
        assert reply.startswith(b"a NO"), reply
    reply = await asyncio.to_thread(imap_login, port, encode_v2(("10.9.9.9", 4242)), "wrong-x", tls=client_tls)
    assert reply.startswith(b"a NO"), reply
    failed = [(f["ip"], f["delay"]) for m, f in login_log.records if m == "login failed" and f["proto"] == "imap"]
    assert [ip for ip, _ in failed] == ["10.1.2.3"] * 3 + ["10.9.9.9"]
    assert failed[0][1] == 0 and failed[1][1] > 0 and failed[2][1] > failed[1][1]
    assert failed[3][1] == 0
    reply = await asyncio.to_thread(imap_login, port, encode_v1(("10.9.9.9", 4243)), PASSWORD, tls=client_tls)
    assert reply.startswith(b"a OK"), reply
    assert login_log.last("login ok", proto="imap")["ip"] == "10.9.9.9"


async def test_imap_connection_limit_per_ip_counts_proxied_addresses(server: app.Context) -> None:
    """per_ip_connections = 1: a second client behind the same proxy gets in, the same client twice
    does not."""
    port = server.port("imap")

    def scenario() -> tuple[bytes, bytes, bytes]:
        conns = [Conn(port, encode_v1(("10.1.1.1", 1000)))]
        try:
            first = conns[0].line()  # admitted before the next one comes
            conns.append(Conn(port, encode_v2(("10.1.1.2", 1000))))
            second = conns[1].line()
            conns.append(Conn(port, encode_v2(("10.1.1.1", 1001))))
            return first, second, conns[2].line()
        finally:
            for x in conns:
                x.sock.close()

    first, other_client, same_client = await asyncio.to_thread(scenario)
    assert first.startswith(b"* OK") and other_client.startswith(b"* OK")
    assert same_client == b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n"


async def test_imaps_tls_starts_after_the_header_sent_with_the_client_hello(
        server: app.Context, login_log: LoginLog, client_tls: ssl.SSLContext) -> None:
    reply = await asyncio.to_thread(imap_login, server.port("imaps"), encode_v2(("2001:db8::77", 993)), "wrong",
                                    tls=client_tls)
    assert reply.startswith(b"a NO"), reply
    assert login_log.last("login failed", proto="imap")["ip"] == "2001:db8::77"
    reply = await asyncio.to_thread(imap_login, server.port("imaps"), encode_v1(("192.0.2.8", 1)), PASSWORD,
                                    tls=client_tls)
    assert reply.startswith(b"a OK"), reply
    assert login_log.last("login ok", proto="imap")["ip"] == "192.0.2.8"


async def test_pop3_and_managesieve_logins_see_the_proxied_address(
        server: app.Context, login_log: LoginLog, client_tls: ssl.SSLContext) -> None:
    def pop3() -> bytes:
        c = Conn(server.port("pop3"), encode_v2(("10.20.30.40", 5)))
        assert c.line().startswith(b"+OK")
        c.send(b"STLS\r\n")
        assert c.line().startswith(b"+OK")
        c.starttls(client_tls)
        c.send(f"USER {ALICE}\r\n".encode())
        c.line()
        c.send(b"PASS wrong\r\n")
        reply = c.line()
        c.send(b"QUIT\r\n")
        c.close_after_eof()
        return reply

    def managesieve() -> bytes:
        c = Conn(server.port("managesieve"), encode_v1(("10.20.30.41", 6)))
        c.until(b"OK")
        c.send(b"STARTTLS\r\n")
        assert c.line().startswith(b"OK")
        c.starttls(client_tls)
        c.until(b"OK")  # RFC 5804 §2.2: the capabilities again
        token = base64.b64encode(f"\0{ALICE}\0wrong".encode()).decode()
        c.send(f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())
        reply = c.line()
        c.send(b"LOGOUT\r\n")
        c.close_after_eof()
        return reply

    assert (await asyncio.to_thread(pop3)).startswith(b"-ERR")
    assert login_log.last("login failed", proto="pop3")["ip"] == "10.20.30.40"
    assert (await asyncio.to_thread(managesieve)).startswith(b"NO")
    assert login_log.last("login failed", proto="managesieve")["ip"] == "10.20.30.41"


async def test_submissions_implicit_tls_after_the_header_sees_the_proxied_address(
        server: app.Context, login_log: LoginLog, client_tls: ssl.SSLContext) -> None:
    def run() -> bytes:
        c = Conn(server.port("submissions"), encode_v2(("198.51.100.9", 7)), tls=client_tls)
        reply = smtp_auth(c, "wrong")
        c.send(b"QUIT\r\n")
        c.close_after_eof()
        return reply

    assert (await asyncio.to_thread(run)).startswith(b"535")
    assert login_log.last("login failed", proto="submission")["ip"] == "198.51.100.9"


async def test_mx_spf_and_received_header_use_the_proxied_address(server: app.Context, dns_server: DnsServer) -> None:
    """SPF for the proxied client (pass for 192.0.2.55; the real peer 127.0.0.1 would not even be
    checked, being loopback), and the Received line names it."""
    dns_server.add(SENDER_DOMAIN, "TXT", "v=spf1 ip4:192.0.2.55 -all")

    def run() -> list[bytes]:
        c = Conn(server.port("mx"), encode_v1(("192.0.2.55", 33333)))
        c.until(b"220 ")
        replies = []
        for cmd in (b"EHLO relay.sender.test", f"MAIL FROM:<bob@{SENDER_DOMAIN}>".encode(),
                    f"RCPT TO:<{ALICE}>".encode(), b"DATA"):
            c.send(cmd + b"\r\n")
            replies.append(c.until(b"250 " if cmd.startswith(b"EHLO") else b""))
        c.send(f"From: bob@{SENDER_DOMAIN}\r\nTo: {ALICE}\r\nSubject: hi\r\n\r\nhello\r\n.\r\n".encode())
        replies.append(c.line())
        c.send(b"QUIT\r\n")
        c.close_after_eof()
        return replies

    replies = await asyncio.to_thread(run)
    assert replies[-1].startswith(b"250 "), replies
    [path] = list((Path(server.config.mail_root) / "example.test" / "alice" / "new").iterdir())
    head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
    assert "client-ip=192.0.2.55" in head and "Received-SPF: pass" in head, head
    assert "spf=pass" in head, head
    received = head[head.index("Received: from"):].split("\r\n;", 1)[0]
    assert "[192.0.2.55]" in received and "127.0.0.1" not in received, received


# --- refusals -----------------------------------------------------------------------------------------


async def test_untrusted_peer_is_closed_without_a_greeting(server: app.Context, proxy_log: ProxyLog) -> None:
    def run(name: str) -> bool:
        c = Conn(server.port(name), encode_v1(("10.1.2.3", 1)), source="127.0.0.2")
        return c.closed_by_server()

    for name in ("imap", "mx", "imap"):
        assert await asyncio.to_thread(run, name)
    logged = [line for line in proxy_log.lines if "127.0.0.2" in line and "not in proxy_trusted" in line]
    assert len(logged) == 2  # imap and mx; the second time on imap within a minute: not again
    assert proxy_log.tracebacks == []


@pytest.mark.parametrize(("header", "why"), [
    (b"a1 LOGIN alice secret\r\n", "not a PROXY protocol header"),
    (b"PROXY TCP4 10.1.2.3 10.0.0.1 99999 143\r\n", "bad port"),
    (b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n", "without CRLF in its first 107"),
    (encode_v2(("10.1.2.3", 1), tlvs=bytes(MAX_V2_TLV + 1)), "more than 4096 of TLVs"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(20), "not a PROXY protocol header"),  # TLS first
])
async def test_malformed_or_oversized_header_closes_the_connection(
        server: app.Context, proxy_log: ProxyLog, header: bytes, why: str) -> None:
    def run() -> tuple[bool, float]:
        t0 = time.monotonic()
        c = Conn(server.port("imap"), header)
        return c.closed_by_server(), time.monotonic() - t0

    closed, took = await asyncio.to_thread(run)
    assert closed and took < PROXY_TIMEOUT  # at once, not at the header deadline
    assert any(why in line for line in proxy_log.lines), proxy_log.lines
    assert proxy_log.tracebacks == []


@pytest.mark.parametrize("name", ["imaps", "submissions"])
async def test_no_tls_after_the_header_on_an_implicit_tls_listener_closes_it(
        server: app.Context, proxy_log: ProxyLog, name: str) -> None:
    def run() -> bool:
        c = Conn(server.port(name), encode_v2(("10.1.2.3", 1)) + b"a1 CAPABILITY\r\n" + bytes(600))
        return c.closed_by_server()

    assert await asyncio.to_thread(run)
    await asyncio.sleep(0.1)  # a callback error would be logged by asyncio after the close
    assert any("TLS handshake failed" in line for line in proxy_log.lines), proxy_log.lines
    assert proxy_log.tracebacks == []


@pytest.mark.parametrize("partial", [b"", b"PROXY TCP4 10.1.2.3 ", encode_v2(("10.1.2.3", 1))[:20]])
async def test_late_header_closes_the_connection_at_proxy_timeout(
        server: app.Context, proxy_log: ProxyLog, partial: bytes) -> None:
    def run() -> tuple[bool, float]:
        c = Conn(server.port("pop3s"), partial)
        t0 = time.monotonic()
        return c.closed_by_server(), time.monotonic() - t0

    closed, took = await asyncio.to_thread(run)
    assert closed and PROXY_TIMEOUT * 0.8 <= took < PROXY_TIMEOUT + 2
    assert any("no PROXY header in time" in line for line in proxy_log.lines), proxy_log.lines
    assert proxy_log.tracebacks == []


async def test_local_command_and_unknown_use_the_real_peer(
        server: app.Context, login_log: LoginLog, client_tls: ssl.SSLContext) -> None:
    """v2 LOCAL (the proxy's own health check) and v1 UNKNOWN: the connection is served as the
    real peer's."""
    for header in (encode_v2(None), encode_v1(None)):
        reply = await asyncio.to_thread(imap_login, server.port("imaps"), header, "wrong", tls=client_tls)
        assert reply.startswith(b"a NO"), reply
        assert login_log.last("login failed", proto="imap")["ip"] == "127.0.0.1"


async def test_listener_without_proxy_protocol_is_unchanged(server: app.Context, login_log: LoginLog) -> None:
    """submission has no proxy_protocol: a PROXY line is an unknown command, the client address is
    the socket's."""
    def run() -> tuple[bytes, bytes]:
        c = Conn(server.port("submission"), None)
        c.until(b"220 ")
        c.send(encode_v1(("10.1.2.3", 1)))
        refused = c.line()
        c.buf = b"220 again\r\n"  # smtp_auth waits for a greeting
        reply = smtp_auth(c, "wrong")
        c.send(b"QUIT\r\n")
        c.close_after_eof()
        return refused, reply

    refused, reply = await asyncio.to_thread(run)
    assert refused.startswith(b"500"), refused
    assert reply.startswith(b"535"), reply
    assert login_log.last("login failed", proto="submission")["ip"] == "127.0.0.1"


async def test_no_plaintext_login_behind_a_proxy_even_on_a_loopback_listener(
        server: app.Context, login_log: LoginLog) -> None:
    """allow_plaintext_loopback is for clients on this host: behind a proxy the clients are
    elsewhere, so the loopback listener (127.0.0.1) still wants TLS before a password."""
    def run() -> tuple[bytes, bytes]:
        c = Conn(server.port("imap"), encode_v1(("127.0.0.1", 1)))
        c.line()
        c.send(b"a CAPABILITY\r\n")
        caps = c.until(b"* CAPABILITY")
        c.until(b"a ")
        return caps, imap_login_on(c, "wrong")

    caps, reply = await asyncio.to_thread(run)
    assert b"LOGINDISABLED" in caps, caps
    assert reply.startswith(b"a NO") or reply.startswith(b"a BAD"), reply
    assert not [f for m, f in login_log.records if f.get("proto") == "imap" and m == "login ok"]


def imap_login_on(c: Conn, password: str) -> bytes:
    c.send(f'a LOGIN "{ALICE}" "{password}"\r\n'.encode())
    reply = c.until(b"a ")
    c.send(b"b LOGOUT\r\n")
    c.close_after_eof()
    return reply
