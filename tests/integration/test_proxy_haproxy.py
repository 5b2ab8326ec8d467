"""A real HAProxy in front of the IMAP listeners (Debian's haproxy, `send-proxy-v2` to imap and
`send-proxy` (v1) to imaps, TLS passed through): a client connecting to HAProxy from 127.0.0.5 is
seen by Mailhaven as 127.0.0.5, while the TCP peer of every connection Mailhaven accepts is
HAProxy at 127.0.0.1 (the only trusted proxy)."""

from __future__ import annotations

import asyncio
import imaplib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app, config
from tests.fixtures_base import free_port
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.integration.test_login_throttle import IMAP, LoginLog, capture_login_log

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy not on PATH (Debian package haproxy)")

ALICE = "alice@example.test"
PASSWORD = "Right-Password-1"
CLIENT = "127.0.0.5"


@pytest.fixture
def login_log() -> Iterator[LoginLog]:
    yield from capture_login_log()


@pytest.fixture
async def server(tmp_path: Path, tls_files: tuple[Path, Path]) -> AsyncIterator[app.Context]:
    listeners: dict[str, Any] = {
        name: {"address": "127.0.0.1", "port": 40000 + i, "enabled": name in ("imap", "imaps")}
        for i, name in enumerate(config.LISTENER_NAMES)}
    for name in ("imap", "imaps"):
        listeners[name].update(proxy_protocol=True, proxy_trusted=["127.0.0.1"])
    cfg = load_test_config(app_config_file(tmp_path, tls_files, listeners=listeners,
                                           auth={"allow_plaintext_loopback": True, "failure_delay": 0}))
    add_user(cfg, ALICE, PASSWORD)
    async with running_app(cfg) as ctx:
        yield ctx


async def _wait_listening(port: int, proc: asyncio.subprocess.Process, out: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"haproxy exited (its output is in {out})")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"haproxy not listening on {port} (its output is in {out})")


@pytest.fixture
async def haproxy(server: app.Context, tmp_path: Path) -> AsyncIterator[dict[str, int]]:
    """HAProxy on two loopback ports: imap (send-proxy-v2) and imaps (send-proxy, v1)."""
    assert HAPROXY is not None
    ports = {"imap": free_port(), "imaps": free_port()}
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"""global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend imap_in
    bind 127.0.0.1:{ports["imap"]}
    default_backend imap_out
backend imap_out
    server mh 127.0.0.1:{server.port("imap")} send-proxy-v2
frontend imaps_in
    bind 127.0.0.1:{ports["imaps"]}
    default_backend imaps_out
backend imaps_out
    server mh 127.0.0.1:{server.port("imaps")} send-proxy
""")
    out = tmp_path / "haproxy.out"
    with out.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(HAPROXY, "-f", str(cfg), "-db", stdout=sink,
                                                    stderr=subprocess.STDOUT)
    try:
        for port in ports.values():
            await _wait_listening(port, proc, out)
        yield ports
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class IMAPS(imaplib.IMAP4_SSL):
    """imaplib over TLS from a chosen source address."""

    def __init__(self, port: int, source: str, ctx: ssl.SSLContext) -> None:
        self._source = source
        super().__init__("127.0.0.1", port, ssl_context=ctx, timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname="localhost")


async def test_client_through_haproxy_is_seen_with_its_own_address(
        haproxy: dict[str, int], login_log: LoginLog, tls_ca: Any) -> None:
    ctx = ssl.create_default_context()
    tls_ca.configure_trust(ctx)

    def plain() -> None:
        c = IMAP(haproxy["imap"], CLIENT)
        c.starttls(ctx)  # no plaintext logins behind a proxy, loopback listener or not
        with pytest.raises(imaplib.IMAP4.error):
            c.login(ALICE, "wrong")
        c.login(ALICE, PASSWORD)
        c.logout()

    def tls() -> None:
        c = IMAPS(haproxy["imaps"], CLIENT, ctx)
        c.login(ALICE, PASSWORD)
        c.logout()

    await asyncio.to_thread(plain)
    assert login_log.last("login failed", proto="imap")["ip"] == CLIENT  # PROXY v2 from HAProxy
    assert login_log.last("login ok", proto="imap")["ip"] == CLIENT
    await asyncio.to_thread(tls)
    oks = [f for m, f in login_log.records if m == "login ok"]
    assert len(oks) == 2 and oks[-1]["ip"] == CLIENT  # PROXY v1, then TLS from the client through HAProxy
