"""The whole server (app.run from a config file) with [spam] greylist and dnsbl on: the MX greylists
and refuses listed clients, an authenticated submission user is neither greylisted nor looked up,
and the greylist (data_dir/greylist.sqlite) outlives a restart of the server."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from pathlib import Path

import aiosmtplib

from tests.dnsserver import DnsServer
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.integration.test_mx_harness import maildir_messages, message
from tests.smtp_peer import until

ALICE = "alice@example.test"
PASSWORD = "correct horse"


def _mx_rcpt(port: int, source: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mta.sender.test", timeout=30,
                      source_address=(source, 0)) as c:
        c.ehlo()
        c.mail("news@sender.test")
        code, text = c.rcpt(ALICE)
        if code == 250:
            code, text = c.data(message(sender="news@sender.test"))
        return code, text.decode()


async def test_greylist_and_dnsbl_in_the_running_server(tmp_path: Path, tls_files: tuple[Path, Path],
                                                         dns_server: DnsServer, dns_nameserver: str,
                                                         client_ssl_context: ssl.SSLContext) -> None:
    dns_server.add("1.0.0.127.bl.test", "A", "127.0.0.2")  # the server's own address is listed
    dns_server.add("2.0.0.127.bl.test", "A", "127.0.0.2")
    path = app_config_file(tmp_path, tls_files, dns_nameserver,
                           spam={"dnsbl": ["bl.test"], "greylist": True, "greylist_delay": 1, "greylist_skip": []})
    cfg = load_test_config(path)
    add_user(cfg, ALICE, PASSWORD)
    async with running_app(cfg) as ctx:
        mx = ctx.port("mx")
        assert (await asyncio.to_thread(_mx_rcpt, mx, "127.0.0.2"))[0] == 554
        code, text = await asyncio.to_thread(_mx_rcpt, mx, "127.0.0.3")
        assert (code, text[:5]) == (451, "4.7.1")
        # An authenticated user (submission, from the listed 127.0.0.1) is not refused, not greylisted.
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ctx.port("submission"), start_tls=True,
                                 tls_context=client_ssl_context, timeout=20)
        async with client:
            await client.login(ALICE, PASSWORD)
            await client.sendmail(ALICE, [ALICE], f"From: {ALICE}\r\nTo: {ALICE}\r\nSubject: own\r\n\r\nhi\r\n")
        await until(lambda: [m for m in maildir_messages(cfg.mail_root, ALICE) if b"Subject: own" in m], 10)
    assert (Path(cfg.data_dir) / "greylist.sqlite").is_file()
    await asyncio.sleep(1.2)
    async with running_app(cfg) as ctx:  # restarted: the triplet is still known
        code, text = await asyncio.to_thread(_mx_rcpt, ctx.port("mx"), "127.0.0.3")
        assert code == 250, text
