"""The README's first try on a machine without working DNS (issue 11 item 2): the server as
`serve --dev` builds it (cli._dev_environment: dev config, ./mailhaven-dev, the dev account), its
resolver pointed at a nameserver that never answers, and the README's `swaks --to dev@example.test`
(and smtplib) delivering over the MX from loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import smtplib
from pathlib import Path

import pytest

from mailhaven import cli
from mailhaven.config import Config, DnsConfig
from mailhaven.message.headers import field_value
from tests.fixtures_dns import SilentNameserver
from tests.fixtures_server import running_app, with_ephemeral_ports
from tests.integration.test_mx_harness import maildir_messages

SWAKS = shutil.which("swaks")
DNS_TIMEOUT = 3.0  # one query to the silent nameserver costs this much


def dev_config(cwd: Path, nameserver: str) -> Config:
    """What `serve --dev` runs in `cwd`, with ephemeral ports and the given (dead) nameserver."""
    cfg, _password = cli._dev_environment(cwd)
    cfg = dataclasses.replace(cfg, dns=DnsConfig(nameservers=[nameserver], timeout=DNS_TIMEOUT))
    return with_ephemeral_ports(cfg)


def _ar(cfg: Config) -> str:
    [msg] = maildir_messages(Path(cfg.mail_root), cli.DEV_USER)
    return field_value(msg, "Authentication-Results") or ""


async def test_smtplib_delivers_to_the_dev_account_without_dns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, silent_nameserver: SilentNameserver) -> None:
    monkeypatch.setenv("MAILHAVEN_FAST_HASH", "1")
    cfg = dev_config(tmp_path, silent_nameserver.nameserver)
    async with running_app(cfg) as ctx:
        port = ctx.port("mx")
        loop = asyncio.get_running_loop()
        start = loop.time()

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                return s.sendmail("someone@elsewhere.example", [cli.DEV_USER],
                                  b"From: someone@elsewhere.example\r\nSubject: offline\r\n\r\nhi\r\n")

        refused = await asyncio.to_thread(send)
        elapsed = loop.time() - start
    assert refused == {}
    assert elapsed < DNS_TIMEOUT, elapsed
    assert silent_nameserver.queries() == 0
    assert "; none (dev mode: loopback client, not checked)" in _ar(cfg)


@pytest.mark.skipif(SWAKS is None, reason="swaks not installed")
async def test_the_readme_swaks_command_delivers_without_dns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, silent_nameserver: SilentNameserver) -> None:
    assert SWAKS is not None
    monkeypatch.setenv("MAILHAVEN_FAST_HASH", "1")
    cfg = dev_config(tmp_path, silent_nameserver.nameserver)
    async with running_app(cfg) as ctx:
        # README: swaks --server 127.0.0.1:2525 --to dev@example.test (here on the ephemeral port)
        proc = await asyncio.create_subprocess_exec(
            SWAKS, "--server", f"127.0.0.1:{ctx.port('mx')}", "--to", cli.DEV_USER, "--timeout", "20",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "<-  250 2.0.0 Ok: delivered as " in text, text
    assert not re.search(r"^<\*\*\s+4\d\d", text, re.M), text  # no 4xx reply (not: "451" anywhere, a queue id may hold it)
    assert silent_nameserver.queries() == 0
    assert "; none (dev mode: loopback client, not checked)" in _ar(cfg)


def test_the_dev_account_gets_postmaster_and_abuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailhaven.auth.users import Directory

    monkeypatch.setenv("MAILHAVEN_FAST_HASH", "1")
    cfg, _password = cli._dev_environment(tmp_path)
    d = Directory.load(cfg)
    assert d.postmaster("example.test") == ([cli.DEV_USER], "alias")
    assert d.resolve("abuse@example.test") == [cli.DEV_USER]
    assert d.role_warnings == []
