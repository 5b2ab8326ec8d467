"""Issue 12 item 7 (scanning): submitted mail is scanned by rspamd as the logged-in user's (`User:`),
an outbound reject is 550 5.7.1 to the user with nothing queued, and a clean message is queued
unchanged. The whole server (app.run), a real rspamd (tests/fixtures_rspamd.py) and aiosmtplib
logging in over STARTTLS."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from mailhaven import app
from mailhaven.message.headers import field_value
from mailhaven.metrics import Metrics
from tests.fixtures_base import free_port
from tests.fixtures_rspamd import SOFT_REJECT_USER, Rspamd
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.integration.test_mx_harness import maildir_messages

ALICE = "alice@example.test"
BOB = "bob@example.test"
REMOTE = "carol@remote.test"
PASSWORD = "correct horse"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@asynccontextmanager
async def server(tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str,
                 **spam: Any) -> AsyncIterator[app.Context]:
    cfg = load_test_config(app_config_file(tmp_path, tls_files, dns_nameserver, spam=spam))
    add_user(cfg, ALICE, PASSWORD)
    add_user(cfg, BOB, PASSWORD)
    add_user(cfg, SOFT_REJECT_USER, PASSWORD)
    async with running_app(cfg) as ctx:
        ctx.metrics = Metrics(enabled=True, process=False)
        yield ctx


async def submit(ctx: app.Context, tls: ssl.SSLContext, rcpts: list[str], subject: str, body: str,
                 user: str = ALICE) -> tuple[int, str]:
    """One message from `user`, logged in over STARTTLS; (code, text) of the reply to DATA."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=ctx.port("submission"), start_tls=True, tls_context=tls,
                             timeout=30)
    msg = (f"From: {user}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n\r\n{body}\r\n").encode()
    async with client:
        await client.login(user, PASSWORD)
        await client.mail(user)
        for r in rcpts:
            await client.rcpt(r)
        try:
            reply = await client.data(msg)
        except aiosmtplib.SMTPDataError as e:
            return e.code, e.message
    return reply.code, reply.message


def outbound_verdicts(caplog: pytest.LogCaptureFixture) -> list[tuple[int, dict[str, Any]]]:
    return [(r.levelno, dict(r.mh_fields)) for r in caplog.records
            if r.getMessage() == "spam verdict" and r.mh_fields.get("direction") == "outbound"]


def spool_files(ctx: app.Context) -> list[Path]:
    return [p for p in ctx.config.queue_root.rglob("*") if p.is_file()] if ctx.config.queue_root.exists() else []


async def test_gtube_from_a_logged_in_user_is_refused_550_571_logged_and_nothing_is_queued(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, client_ssl_context: ssl.SSLContext,
        rspamd: Rspamd, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven")
    async with server(tmp_path, tls_files, dns_nameserver, rspamd_url=rspamd.url, rspamd_timeout=10) as ctx:
        assert ctx.queue is not None
        code, text = await submit(ctx, client_ssl_context, [BOB, REMOTE], "gtube", GTUBE)
        assert code == 550 and text.startswith("5.7.1 "), (code, text)
        assert "Gtube pattern" in text  # rspamd's messages.smtp_message
        assert ctx.queue.stats()[0] == 0 and spool_files(ctx) == []
        assert maildir_messages(ctx.config.mail_root, BOB) == []
        [(level, line)] = outbound_verdicts(caplog)
        assert level == logging.WARNING and line["action"] == "reject" and "GTUBE" in line["symbols"]
        assert ctx.metrics.registry.get_sample_value("mailhaven_spam_outbound_verdicts_total",
                                                     {"action": "reject"}) == 1
        # Inbound verdicts are counted apart.
        assert ctx.metrics.registry.get_sample_value("mailhaven_spam_verdicts_total", {"action": "reject"}) is None


async def test_a_clean_message_is_queued_unchanged_and_rspamd_is_told_the_user(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, client_ssl_context: ssl.SSLContext,
        rspamd: Rspamd, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven")
    async with server(tmp_path, tls_files, dns_nameserver, rspamd_url=rspamd.url, rspamd_timeout=10) as ctx:
        code, text = await submit(ctx, client_ssl_context, [BOB], "lunch on friday", "See you at noon.")
        assert code == 250 and text.startswith("2.0.0 Ok: queued as "), (code, text)
        queue_id = text.rsplit(" ", 1)[1]
        [msg] = maildir_messages(ctx.config.mail_root, BOB)
        assert field_value(msg, "X-Spam-Status") is None and field_value(msg, "X-Spam-Score") is None
        [(level, line)] = outbound_verdicts(caplog)
        assert level == logging.INFO and line["action"] == "no action" and line["id"] == queue_id
        # rspamd's own log names the authenticated user for this queue id (its task log line).
        [task] = [t for t in rspamd.log().splitlines() if f"qid: <{queue_id}>" in t]
        assert f"user: {ALICE}" in task, task


async def test_an_outbound_soft_reject_is_451_471_and_nothing_is_queued(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, client_ssl_context: ssl.SSLContext,
        rspamd: Rspamd, caplog: pytest.LogCaptureFixture) -> None:
    # rspamd's answer to a user over their rate limit (its ratelimit module); the client retries later.
    caplog.set_level(logging.INFO, logger="mailhaven")
    async with server(tmp_path, tls_files, dns_nameserver, rspamd_url=rspamd.url, rspamd_timeout=10) as ctx:
        code, text = await submit(ctx, client_ssl_context, [BOB], "hello", "hi", user=SOFT_REJECT_USER)
        assert code == 451 and text.startswith("4.7.1 "), (code, text)
        assert maildir_messages(ctx.config.mail_root, BOB) == [] and spool_files(ctx) == []
        [(level, line)] = outbound_verdicts(caplog)
        assert level == logging.WARNING and line["action"] == "soft reject"
        assert "Ratelimit exceeded (test)" in text  # rspamd's message for the user


async def test_rspamd_down_on_error_tempfail_defers_the_submission(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, client_ssl_context: ssl.SSLContext
        ) -> None:
    async with server(tmp_path, tls_files, dns_nameserver, rspamd_url=f"http://127.0.0.1:{free_port()}",
                      rspamd_timeout=5, on_error="tempfail") as ctx:
        code, text = await submit(ctx, client_ssl_context, [BOB], "hello", "hi")
        assert code == 451 and text.startswith("4.7.1 "), (code, text)
        assert maildir_messages(ctx.config.mail_root, BOB) == []
