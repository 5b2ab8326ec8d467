"""The whole server (app.run from a config file): the "submission" and "submissions" listeners come
from app.py's registry, and a DKIM key made by `mailhaven dkim keygen` is used from the next reload
(what SIGHUP does), not before."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path

import aiosmtplib

from mailhaven import config
from mailhaven.dns.resolver import Resolver
from mailhaven.policy import dkim
from tests.dnsserver import DnsServer
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.integration.test_mx_harness import maildir_messages
from tests.smtp_peer import until

ALICE = "alice@example.test"
PASSWORD = "correct horse"


def keygen(config_path: Path, selector: str) -> str:
    r = subprocess.run([sys.executable, "-m", "mailhaven", "-c", str(config_path), "dkim", "keygen", "example.test",
                        "--selector", selector], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    dom = config.load(config_path).domains["example.test"]
    return dkim.public_record(Path(dom.dkim_key).read_bytes())


async def send(port: int, implicit: bool, tls: ssl.SSLContext, subject: str) -> str:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=implicit, start_tls=not implicit,
                             tls_context=tls, timeout=20)
    async with client:
        await client.ehlo()
        await client.login(ALICE, PASSWORD)
        _, reply = await client.sendmail(ALICE, [ALICE], f"From: {ALICE}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\n"
                                         "hi\r\n".encode())
    return reply


async def selectors(mail_root: Path, resolver: Resolver, subject: str) -> list[tuple[str, str]]:
    msgs = await until(lambda: [m for m in maildir_messages(mail_root, ALICE) if subject.encode() in m], 10)
    return [(r.selector, r.result) for r in await dkim.verify(resolver, msgs[0])]


async def test_app_serves_submission_and_a_new_dkim_key_signs_after_reload(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer, dns_nameserver: str,
        client_ssl_context: ssl.SSLContext) -> None:
    path = app_config_file(tmp_path, tls_files, dns_nameserver)
    dns_server.add("s1._domainkey.example.test", "TXT", await asyncio.to_thread(keygen, path, "s1"))
    cfg = load_test_config(path)
    add_user(cfg, ALICE, PASSWORD)
    resolver = Resolver([dns_nameserver], timeout=2)
    async with running_app(cfg) as ctx:
        assert {"submission", "submissions"} <= set(ctx.serving)
        reply = await send(ctx.port("submission"), False, client_ssl_context, "one")
        assert reply.startswith("2.0.0 Ok: queued as ")
        assert await selectors(cfg.mail_root, resolver, "one") == [("s1", "pass")]

        dns_server.add("s2._domainkey.example.test", "TXT", await asyncio.to_thread(keygen, path, "s2"))
        await send(ctx.port("submissions"), True, client_ssl_context, "two")
        assert await selectors(cfg.mail_root, resolver, "two") == [("s1", "pass")]  # not reloaded yet

        ctx.request_reload()  # SIGHUP
        await until(lambda: ctx.config.domains["example.test"].dkim_selector == "s2", 10)
        await send(ctx.port("submissions"), True, client_ssl_context, "three")
        assert await selectors(cfg.mail_root, resolver, "three") == [("s2", "pass")]
