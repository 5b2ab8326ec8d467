"""The whole server (app.run from a config file) with [spam] greylist and dnsbl on: the MX greylists
and refuses listed clients, an authenticated submission user is neither greylisted nor looked up,
and the greylist outlives a restart of the server, in data_dir/greylist.sqlite or, with [storage]
backend = "postgresql", in a real PostgreSQL (tests/fixtures_postgres.py). With PostgreSQL down,
mail still passes (the check fails open); unreachable at start, the server refuses to start."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from mailhaven.app import StartupError
from tests.dnsserver import DnsServer
from tests.fixtures_base import free_port
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


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The [storage] table: the default, or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        return {}
    return {"backend": "postgresql", "dsn": request.getfixturevalue("pg_dsn")}


def _pending_in_postgresql(dsn: str) -> list[tuple[str, str, str]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT net, sender, rcpt FROM greylist_pending").fetchall()


async def test_greylist_and_dnsbl_in_the_running_server(tmp_path: Path, tls_files: tuple[Path, Path],
                                                         dns_server: DnsServer, dns_nameserver: str,
                                                         client_ssl_context: ssl.SSLContext,
                                                         storage: dict[str, Any]) -> None:
    dns_server.add("1.0.0.127.bl.test", "A", "127.0.0.2")  # the server's own address is listed
    dns_server.add("2.0.0.127.bl.test", "A", "127.0.0.2")
    path = app_config_file(tmp_path, tls_files, dns_nameserver, storage=storage,
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
    if storage:  # the state is in the database, none in data_dir
        assert not (Path(cfg.data_dir) / "greylist.sqlite").exists()
        assert _pending_in_postgresql(storage["dsn"]) == [("127.0.0.0/24", "news@sender.test", ALICE)]
    else:
        assert (Path(cfg.data_dir) / "greylist.sqlite").is_file()
    await asyncio.sleep(1.2)
    async with running_app(cfg) as ctx:  # restarted: the triplet is still known
        code, text = await asyncio.to_thread(_mx_rcpt, ctx.port("mx"), "127.0.0.3")
        assert code == 250, text


async def test_with_postgresql_down_the_greylist_lets_mail_pass(tmp_path: Path, tls_files: tuple[Path, Path],
                                                                 dns_nameserver: str, pg_dsn: str, postgres: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = app_config_file(tmp_path, tls_files, dns_nameserver,
                           storage={"backend": "postgresql", "dsn": pg_dsn, "timeout": "1s"},
                           spam={"greylist": True, "greylist_delay": 60, "greylist_skip": []})
    cfg = load_test_config(path)
    add_user(cfg, ALICE, PASSWORD)
    async with running_app(cfg) as ctx:
        mx = ctx.port("mx")
        assert (await asyncio.to_thread(_mx_rcpt, mx, "127.0.0.3"))[0] == 451  # greylisting works
        postgres.stop()
        try:
            caplog.set_level(logging.ERROR, logger="mailhaven")
            code, text = await asyncio.to_thread(_mx_rcpt, mx, "127.0.0.3")  # still early: would be 451
            assert code == 250, text  # never lost: the check failed, and the message passed
            await until(lambda: maildir_messages(cfg.mail_root, ALICE), 10)
            assert any("greylist check failed" in r.getMessage() for r in caplog.records)
        finally:
            postgres.start()
        assert (await asyncio.to_thread(_mx_rcpt, mx, "127.0.0.3"))[0] == 451  # back: greylisting again


async def test_postgresql_unreachable_at_start_is_one_line(tmp_path: Path, tls_files: tuple[Path, Path],
                                                          dns_nameserver: str) -> None:
    path = app_config_file(tmp_path, tls_files, dns_nameserver,
                           storage={"backend": "postgresql", "dsn": f"host=127.0.0.1 port={free_port()} "
                                    "dbname=mailhaven user=mailhaven", "timeout": "1s"},
                           spam={"greylist": True})
    cfg = load_test_config(path)
    with pytest.raises(StartupError) as exc:
        async with running_app(cfg):
            pass
    assert str(exc.value).startswith("storage.dsn: cannot connect: ")
    assert "Connection refused" in str(exc.value) and "\n" not in str(exc.value)
