"""Issue 12 item 7 (rate half): [submission] max_messages_per_hour and max_recipients_per_hour per
logged-in user answer 451 4.7.1 above the limit, are logged once per refusal (user, count, limit)
and counted in mailhaven_send_rate_limited_total. Real smtplib submissions with AUTH over TLS on
both listeners (they share one count per user); small limits so the tests are fast."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from typing import Any

import pytest

from mailhaven.config import Config
from mailhaven.metrics import Metrics
from tests.integration import test_submission_harness as harness
from tests.integration.test_submission_harness import ALICE, BOB, CAROL, PASSWORD, SubmissionServer, message

submission = harness.submission  # the fixtures
dkim_rsa = harness.dkim_rsa


def _client(server: SubmissionServer, listener: str, login: str = ALICE) -> smtplib.SMTP:
    port = server.ports[listener]
    client: smtplib.SMTP
    if listener == "submissions":
        client = smtplib.SMTP_SSL("127.0.0.1", port, context=server.client_tls, timeout=20)
    else:
        client = smtplib.SMTP("127.0.0.1", port, timeout=20)
        client.ehlo("client.example")
        client.starttls(context=server.client_tls)
    client.ehlo("client.example")
    client.login(login, PASSWORD)
    return client


def _send_each(server: SubmissionServer, listener: str, n: int, rcpts: list[str], login: str = ALICE
               ) -> list[tuple[int, bytes]]:
    """`n` messages in one session; each message's final reply (the first refusal ends it)."""
    out: list[tuple[int, bytes]] = []
    with _client(server, listener, login) as c:
        for i in range(n):
            code, text = c.mail(login)
            if code != 250:
                out.append((code, text))
                c.rset()
                continue
            refused = None
            for r in rcpts:
                rc, rt = c.rcpt(r)
                if rc != 250:
                    refused = (rc, rt)
                    break
            if refused is not None:
                out.append(refused)
                c.rset()
                continue
            out.append(c.data(message(sender=login, to=rcpts[0], subject=f"m{i}")))
    return out


async def _server(submission: Any, **limits: int) -> SubmissionServer:
    server: SubmissionServer = await submission(submission={**limits})
    server.ctx.metrics = Metrics(enabled=True, process=False)
    return server


def _limited(server: SubmissionServer, limit: str) -> float:
    return server.ctx.metrics.registry.get_sample_value("mailhaven_send_rate_limited_total", {"limit": limit}) or 0.0


def _rate_logs(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(r.mh_fields) for r in caplog.records if r.getMessage() == "send rate limit"]


def test_the_defaults_are_500_messages_and_2000_recipients(make_config: Any) -> None:
    cfg: Config = make_config()
    assert cfg.submission.max_messages_per_hour == 500 and cfg.submission.max_recipients_per_hour == 2000


async def test_messages_over_the_hourly_limit_get_451_4_7_1_across_both_listeners(
        submission: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = await _server(submission, max_messages_per_hour=3)
    caplog.set_level(logging.INFO, logger="mailhaven")
    first = await asyncio.to_thread(_send_each, server, "submission", 2, [BOB])
    assert [code for code, _ in first] == [250, 250]
    second = await asyncio.to_thread(_send_each, server, "submissions", 3, [BOB])
    assert [code for code, _ in second] == [250, 451, 451]
    text = second[1][1].decode()
    assert text.startswith("4.7.1 ") and "3 messages in one hour" in text, text
    assert len(server.messages(BOB)) == 3  # nothing refused was delivered
    logs = _rate_logs(caplog)
    assert len(logs) == 2  # once per refusal
    assert logs[0]["user"] == ALICE and logs[0]["limit"] == "messages" and logs[0]["count"] == 3
    assert logs[0]["max"] == 3
    assert _limited(server, "messages") == 2
    # Another user has a count of their own.
    assert [code for code, _ in await asyncio.to_thread(_send_each, server, "submission", 1, [BOB], CAROL)] == [250]


async def test_recipients_over_the_hourly_limit_get_451_4_7_1_at_rcpt(
        submission: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = await _server(submission, max_recipients_per_hour=3)
    caplog.set_level(logging.INFO, logger="mailhaven")
    ok = await asyncio.to_thread(_send_each, server, "submission", 1, [BOB, CAROL])
    assert [code for code, _ in ok] == [250]

    def over() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        with _client(server, "submission") as c:
            c.mail(ALICE)
            assert c.rcpt(BOB)[0] == 250  # the third recipient of the hour
            refused = c.rcpt(CAROL)  # the fourth
            return refused, c.data(message(sender=ALICE, to=BOB, subject="partial"))

    refused, data = await asyncio.to_thread(over)
    assert refused[0] == 451 and refused[1].decode().startswith("4.7.1 "), refused
    assert "3 recipients in one hour" in refused[1].decode()
    assert data[0] == 250  # the accepted recipient still gets its message, as any refused RCPT
    assert len(server.messages(BOB)) == 2 and len(server.messages(CAROL)) == 1
    [log] = _rate_logs(caplog)
    assert log["user"] == ALICE and log["limit"] == "recipients" and log["count"] == 3 and log["max"] == 3
    assert _limited(server, "recipients") == 1


async def test_a_zero_limit_means_no_limit(submission: Any) -> None:
    server = await _server(submission, max_messages_per_hour=0, max_recipients_per_hour=0)
    codes = [code for code, _ in await asyncio.to_thread(_send_each, server, "submission", 4, [BOB, CAROL])]
    assert codes == [250] * 4


def test_a_negative_limit_is_a_one_line_config_error(make_config: Any) -> None:
    from mailhaven.config import ConfigError

    with pytest.raises(ConfigError) as e:
        make_config(submission={"max_messages_per_hour": -1})
    assert "submission.max_messages_per_hour" in str(e.value) and "\n" not in str(e.value)
