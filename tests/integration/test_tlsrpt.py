"""TLS reporting (RFC 8460): outcomes of verified outbound TLS recorded per day with [reports] tls,
and the daily report sent to the domain's rua, by HTTPS POST (a real aiohttp server with a test-CA
certificate) and by mail (through a running server's queue into a local mailbox)."""

from __future__ import annotations

import email
import gzip
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from mailhaven.delivery import remote, tlspolicy, tlsrpt
from mailhaven.dns.resolver import Resolver
from tests.dnsserver import DnsServer
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.integration.test_mtasts import PolicyServer, policy
from tests.integration.test_mx_harness import maildir_messages
from tests.smtp_peer import SmtpPeer, cert_files, server_tls_context, shared_port, until

MSG = b"From: alice@example.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nHello.\r\n"
DAY = 86400.0


class ReportSink:
    """https://127.0.0.1:PORT/tlsrpt taking POSTed reports."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _post(self, request: web.Request) -> web.Response:
        self.bodies.append((request.content_type, await request.read()))
        return web.Response(status=200)

    async def start(self, ctx: ssl.SSLContext) -> ReportSink:
        app = web.Application()
        app.router.add_post("/tlsrpt", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _server_ctx(tls_ca: Any, *names: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_ca.issue_cert(*names).configure_cert(ctx)
    return ctx


@pytest.fixture
async def sts(tls_ca: Any) -> AsyncIterator[PolicyServer]:
    server = await PolicyServer().start(_server_ctx(tls_ca, "mta-sts.b.test"))
    server.text = policy("enforce", "mx1.b.test", "mx2.b.test")
    yield server
    await server.stop()


@pytest.fixture
async def sink(tls_ca: Any) -> AsyncIterator[ReportSink]:
    s = await ReportSink().start(_server_ctx(tls_ca, "127.0.0.1"))
    yield s
    await s.stop()


@pytest.fixture
def ca_file(tls_ca: Any, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


async def _one_failure_one_success(cfg: Any, dns_server: DnsServer, sts: PolicyServer, tls_ca: Any,
                                   tmp_path: Path) -> list[tlsrpt.Outcome]:
    """b.test: enforce; mx1 presents a certificate for another name, mx2 a good one."""
    dns_server.add("_mta-sts.b.test", "TXT", "v=STSv1; id=1")
    dns_server.add("mta-sts.b.test", "A", "127.0.0.1")
    dns_server.add("b.test", "MX", "10 mx1.b.test.")
    dns_server.add("b.test", "MX", "20 mx2.b.test.")
    dns_server.add("mx1.b.test", "A", "127.0.0.2")
    dns_server.add("mx2.b.test", "A", "127.0.0.3")
    port = cfg.queue.remote_port
    bad = await SmtpPeer("127.0.0.2", port, tls_context=server_tls_context(
        *cert_files(tmp_path / "p", "other.test", ca=tls_ca))).start()
    good = await SmtpPeer("127.0.0.3", port, tls_context=server_tls_context(
        *cert_files(tmp_path / "p", "mx2.b.test", ca=tls_ca))).start()
    try:
        pol = tlspolicy.TlsPolicies(cfg, Resolver.from_config(cfg.dns), sts_port=sts.port)
        [r] = await remote.deliver(cfg, pol.resolver, "a@example.test", "b.test", ["bob@b.test"], MSG, policies=pol)
        assert r.delivered and r.remote_mta == "mx2.b.test"
    finally:
        await bad.stop()
        await good.stop()
    folder = Path(cfg.data_dir) / "tlsrpt"
    [day_file] = await until(lambda: [p for p in folder.glob("*.jsonl") if len(p.read_text().splitlines()) >= 2])
    return tlsrpt.read_day(day_file)


async def test_outcomes_are_recorded_and_posted_to_the_https_rua(
        make_config: Callable[..., Any], dns_server: DnsServer, dns_nameserver: str, sts: PolicyServer,
        sink: ReportSink, tls_ca: Any, tmp_path: Path, ca_file: Path) -> None:
    port = shared_port("127.0.0.2", "127.0.0.3")
    cfg = make_config(dns={"nameservers": [dns_nameserver], "timeout": 1}, reports={"tls": True},
                      queue={"remote_port": port, "connect_timeout": 2, "tls_ca_file": str(ca_file), "dane": False})
    outcomes = await _one_failure_one_success(cfg, dns_server, sts, tls_ca, tmp_path)
    assert sorted((o.mx_host, o.result) for o in outcomes) == [
        ("mx1.b.test", "certificate-host-mismatch"), ("mx2.b.test", "success")]
    dns_server.add("_smtp._tls.b.test", "TXT", f"v=TLSRPTv1; rua=https://127.0.0.1:{sink.port}/tlsrpt")
    ctx = SimpleNamespace(config=cfg, resolver=Resolver.from_config(cfg.dns))
    client_tls = ssl.create_default_context(cafile=str(ca_file))
    folder = Path(cfg.data_dir) / "tlsrpt"
    import time
    assert await tlsrpt.send_due(ctx, folder, https_tls=client_tls) == 0  # today's data: not yet
    assert await tlsrpt.send_due(ctx, folder, now=time.time() + DAY, https_tls=client_tls) == 1
    [(ctype, body)] = sink.bodies
    assert ctype == "application/tlsrpt+gzip"
    report = json.loads(gzip.decompress(body))
    [pol] = report["policies"]
    assert pol["policy"]["policy-type"] == "sts" and pol["policy"]["policy-domain"] == "b.test"
    assert "mode: enforce" in pol["policy"]["policy-string"]
    assert pol["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 1}
    assert pol["failure-details"] == [{"result-type": "certificate-host-mismatch", "receiving-mx-hostname": "mx1.b.test",
                                       "receiving-ip": "127.0.0.2", "failed-session-count": 1}]
    assert report["organization-name"] == cfg.hostname
    assert list(folder.iterdir()) == []  # sent once: the day's data is gone
    assert await tlsrpt.send_due(ctx, folder, now=time.time() + DAY, https_tls=client_tls) == 0


async def test_the_report_goes_by_mail_through_the_queue(
        dns_server: DnsServer, dns_nameserver: str, sts: PolicyServer, tls_ca: Any, tmp_path: Path,
        tls_files: tuple[Path, Path], ca_file: Path) -> None:
    port = shared_port("127.0.0.2", "127.0.0.3")
    path = app_config_file(tmp_path, tls_files, dns_nameserver, reports={"tls": True},
                           queue={"remote_port": port, "connect_timeout": 2, "tls_ca_file": str(ca_file),
                                  "dane": False})
    cfg = load_test_config(path)
    add_user(cfg, "tls@example.test", "pw-pw-pw-pw")
    await _one_failure_one_success(cfg, dns_server, sts, tls_ca, tmp_path)
    dns_server.add("_smtp._tls.b.test", "TXT", "v=TLSRPTv1; rua=mailto:tls@example.test")
    import time
    async with running_app(cfg) as ctx:
        sent = await tlsrpt.send_due(ctx, Path(cfg.data_dir) / "tlsrpt", now=time.time() + DAY)
        assert sent == 1
        [raw] = await until(lambda: maildir_messages(Path(cfg.mail_root), "tls@example.test"))
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt"
    assert msg["Subject"].startswith("Report Domain: b.test Submitter: mail.example.test Report-ID: <")
    assert msg["TLS-Required"] == "No"
    [part] = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert part.get_filename().startswith("mail.example.test!b.test!")
    report = json.loads(gzip.decompress(part.get_payload(decode=True)))
    assert report["policies"][0]["summary"]["total-failure-session-count"] == 1


def test_txt_record_parsing() -> None:
    assert tlsrpt.parse_txt(["v=TLSRPTv1; rua=mailto:a@b.example,https://r.example/x"]) == [
        "mailto:a@b.example", "https://r.example/x"]
    assert tlsrpt.parse_txt(["v=TLSRPTv1;rua=ftp://x"]) == []
    assert tlsrpt.parse_txt(["v=TLSRPTv1; rua=mailto:a@b", "v=TLSRPTv1; rua=mailto:c@d"]) == []  # two: none
    assert tlsrpt.parse_txt(["v=spf1 -all"]) == []
