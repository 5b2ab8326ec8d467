"""DKIM signatures added by cleanup.enqueue survive delivery: mail queued for a remote domain is
captured by Postfix's smtp-sink and verified by dkimpy (our policy.dkim.verify) and by OpenDKIM's
`opendkim-testmsg`, both reading the public keys from the test DNS server.

opendkim-testmsg has no option for a DNS server: libopendkim asks the system resolver, which reads
/etc/resolv.conf and always uses port 53. So it runs in a private mount namespace
(`unshare -m`) where /etc/resolv.conf is bind-mounted to name 127.0.0.77, and a small forwarder on
127.0.0.77:53 (UDP and TCP) relays to the test DNS server. That needs root; otherwise it is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app, cleanup
from mailhaven.dns.resolver import Resolver
from mailhaven.policy import dkim
from mailhaven.queue.manager import QueueManager
from tests.dnsserver import DnsServer
from tests.smtp_peer import SmtpSink, shared_port, until

TESTMSG = shutil.which("opendkim-testmsg") or "/usr/sbin/opendkim-testmsg"
FORWARDER_IP = "127.0.0.77"
MSG = (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@b.test>\r\nSubject: signed\r\n"
       b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
       b"Hello Bob,\r\n\r\n.a line starting with a dot\r\nand trailing spaces   \r\n")


class DnsForwarder:
    """Relays DNS over UDP and TCP from FORWARDER_IP:53 to the test DNS server."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.udp.bind((FORWARDER_IP, 53))
        self.tcp.bind((FORWARDER_IP, 53))
        self.tcp.listen(8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ)
        sel.register(self.tcp, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(0.2):
                if key.fileobj is self.udp:
                    query, client = self.udp.recvfrom(65535)
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                        up.settimeout(2)
                        up.sendto(query, self.upstream)
                        with contextlib.suppress(OSError):
                            self.udp.sendto(up.recv(65535), client)
                else:
                    conn, _ = self.tcp.accept()
                    with conn, socket.create_connection(self.upstream, timeout=2) as up:
                        conn.settimeout(2)
                        with contextlib.suppress(OSError):
                            n = struct.unpack("!H", _read(conn, 2))[0]
                            up.sendall(struct.pack("!H", n) + _read(conn, n))
                            m = struct.unpack("!H", _read(up, 2))[0]
                            conn.sendall(struct.pack("!H", m) + _read(up, m))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.udp.close()
        self.tcp.close()


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("closed")
        buf += chunk
    return buf


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("dkim")
    rsa_pem, rsa_txt = dkim.generate_rsa(2048)
    ed_pem, ed_txt = dkim.generate_ed25519()
    (folder / "rsa.pem").write_bytes(rsa_pem)
    (folder / "ed.pem").write_bytes(ed_pem)
    return {"rsa": str(folder / "rsa.pem"), "ed": str(folder / "ed.pem"), "rsa_txt": rsa_txt, "ed_txt": ed_txt}


@pytest.fixture
def sink_dir() -> Iterator[Path]:
    # smtp-sink drops privileges (to nobody, as root), so its dump folder must be open to it.
    d = Path(tempfile.mkdtemp(prefix="mh-sink-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sink(sink_dir: Path, dns_server: DnsServer) -> Iterator[int]:
    if not SmtpSink.available():
        pytest.skip("smtp-sink (Debian postfix) not installed")
    sink = SmtpSink("127.0.0.5", shared_port("127.0.0.5"), dump_dir=sink_dir, hostname="mx.b.test").start()
    dns_server.add("b.test", "MX", "10 mx.b.test.")
    dns_server.add("mx.b.test", "A", "127.0.0.5")
    try:
        yield sink.port
    finally:
        sink.stop()


@pytest.fixture
async def delivered(make_config: Callable[..., Any], dns_server: DnsServer, dns_nameserver: str, keys: dict[str, Any],
                    sink: int, sink_dir: Path) -> bytes:
    dns_server.add("mh1._domainkey.example.test", "TXT", keys["rsa_txt"])
    dns_server.add("mh1e._domainkey.example.test", "TXT", keys["ed_txt"])
    cfg = make_config(hostname="mail.example.test", dns={"nameservers": [dns_nameserver], "timeout": 1},
                      queue={"remote_port": sink, "retry_schedule": ["1s"]},
                      domains={"example.test": {"dkim_key": keys["rsa"], "dkim_ed25519_key": keys["ed"]}})
    ctx = app.build_context(cfg)
    await ctx.store.start()
    manager = QueueManager(ctx)
    ctx.queue = manager
    task = asyncio.create_task(manager.run())
    try:
        await cleanup.enqueue(ctx, "alice@example.test", ["bob@b.test"], MSG)
        [dump] = await until(lambda: [p for p in sink_dir.rglob("*") if p.is_file()], 10)
        await until(lambda: not manager.entries, 5)
    finally:
        manager.stop()
        await asyncio.wait_for(task, 5)
        await ctx.store.close()
    raw = dump.read_bytes()
    # Drop smtp-sink's own X-* lines and its 3-line Received header; the message follows.
    lines = raw.split(b"\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith(b"Received: ")) + 3
    message = b"\n".join(lines[start:])
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def test_delivered_mail_carries_rsa_and_ed25519_signatures_that_dkimpy_verifies(
        delivered: bytes, dns_nameserver: str) -> None:
    assert delivered.startswith(b"DKIM-Signature: ")
    results = await dkim.verify(Resolver([dns_nameserver], timeout=2), delivered)
    assert sorted((r.result, r.domain, r.selector, r.algorithm) for r in results) == [
        ("pass", "example.test", "mh1", "rsa-sha256"), ("pass", "example.test", "mh1e", "ed25519-sha256")]


def _unshare_ok() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not os.path.exists(TESTMSG):
        return False
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return r.returncode == 0


def _opendkim_verify(message: bytes, dns: DnsServer, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {FORWARDER_IP}\noptions edns0 attempts:1 timeout:2\n")
    forwarder = DnsForwarder((dns.host, dns.port))
    try:
        return subprocess.run(
            ["unshare", "-m", "sh", "-c", f'mount --bind "{resolv}" /etc/resolv.conf && exec "{TESTMSG}"'],
            input=message.replace(b"\r\n", b"\n"), capture_output=True, timeout=30)
    finally:
        forwarder.close()


OTHER = {"rsa-sha256": b"a=ed25519-sha256", "ed25519-sha256": b"a=rsa-sha256"}


@pytest.mark.skipif(not _unshare_ok(), reason="needs root, unshare -m and opendkim-testmsg")
@pytest.mark.parametrize("algorithm", sorted(OTHER))
async def test_opendkim_verifies_each_signature(delivered: bytes, dns_server: DnsServer, tmp_path: Path,
                                                algorithm: str) -> None:
    # opendkim-testmsg reports one verdict per message: check each signature on its own.
    one = _without_signature(delivered, OTHER[algorithm])
    assert one.count(b"DKIM-Signature:") == 1
    r = await asyncio.to_thread(_opendkim_verify, one, dns_server, tmp_path)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", r.stderr


@pytest.mark.skipif(not _unshare_ok(), reason="needs root, unshare -m and opendkim-testmsg")
@pytest.mark.parametrize("algorithm", sorted(OTHER))
async def test_opendkim_rejects_a_tampered_message(delivered: bytes, dns_server: DnsServer, tmp_path: Path,
                                                   algorithm: str) -> None:
    one = _without_signature(delivered, OTHER[algorithm])
    r = await asyncio.to_thread(_opendkim_verify, one.replace(b"Hello Bob", b"Hello Eve"), dns_server, tmp_path)
    assert r.returncode != 0 or r.stderr  # the same tool notices the change


def _without_signature(message: bytes, marker: bytes) -> bytes:
    """Remove the DKIM-Signature field (with its folded lines) that contains `marker`."""
    lines = message.split(b"\r\n")
    out: list[bytes] = []
    i = 0
    while i < len(lines):
        field = [lines[i]]
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t") and lines[i] != b"":
            field.append(lines[j])
            j += 1
        text = b"\r\n".join(field)
        if not (text.lower().startswith(b"dkim-signature:") and marker in text.replace(b" ", b"")):
            out.extend(field)
        i = j
    return b"\r\n".join(out)


@pytest.mark.skipif(not _unshare_ok(), reason="needs root, unshare -m and opendkim-testmsg")
async def test_opendkim_reads_the_key_from_the_test_dns(delivered: bytes, dns_server: DnsServer,
                                                        tmp_path: Path) -> None:
    before = dns_server.queried("mh1._domainkey.example.test", "TXT")
    rsa_only = _without_signature(delivered, b"a=ed25519-sha256")
    r = await asyncio.to_thread(_opendkim_verify, rsa_only, dns_server, tmp_path)
    assert r.returncode == 0
    assert dns_server.queried("mh1._domainkey.example.test", "TXT") > before
