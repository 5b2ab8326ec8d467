"""Connection-limit refusals are logged and counted (issue 10 item 7), over the whole app: before,
IMAP and POP3 refused in silence (`* BYE [UNAVAILABLE] Too many connections`) and SMTP logged every
single refusal. Now one WARNING line per address a minute, with the count, and
mailhaven_connections_refused_total{listener, reason}."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from mailhaven import metrics
from mailhaven.config import Config
from tests.regress import test_slow_clients as slow

one_listener = slow.one_listener  # the fixture
REFUSAL = {"imap": b"* BYE [UNAVAILABLE] Too many connections", "pop3": b"-ERR [SYS/TEMP] Too many connections",
           "mx": b"421 4.7.0", "submission": b"421 4.7.0"}


def _refused(m: metrics.Metrics, listener: str, reason: str) -> float:
    return m.registry.get_sample_value("mailhaven_connections_refused_total",
                                       {"listener": listener, "reason": reason}) or 0.0


@pytest.mark.parametrize("listener", ["imap", "pop3", "mx", "submission"])
async def test_per_ip_refusals_are_logged_once_with_a_count_and_counted(
        listener: str, one_listener: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven")
    cfg = one_listener(listener, per_ip_connections=1)
    async with slow.running_app(cfg) as ctx:
        ctx.metrics = m = metrics.Metrics(process=False)
        port = ctx.port(listener)
        held = await slow.Raw.open(port, "127.0.0.2")
        try:
            await held.line()  # the greeting: admitted
            for _ in range(5):
                c = await slow.Raw.open(port, "127.0.0.2")
                assert (await c.line()).startswith(REFUSAL[listener])
                c.close()
        finally:
            held.close()
        assert _refused(m, listener, "per_ip") == 5
        assert _refused(m, listener, "total") == 0
    lines = [r for r in caplog.records if "refused" in r.getMessage() and "connection" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING
    assert lines[0].mh_fields["refused"] == 1 and lines[0].mh_fields["reason"] == "per_ip"  # type: ignore[attr-defined]
    assert lines[0].mh_fields["listener"] == listener  # type: ignore[attr-defined]


async def test_a_listener_full_of_logged_in_sessions_refuses_with_reason_total(
        one_listener: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven")
    cfg = one_listener("imap", max_connections=1, per_ip_connections=1)
    async with slow.running_app(cfg) as ctx:
        ctx.metrics = m = metrics.Metrics(process=False)
        port = ctx.port("imap")
        user = await slow.Raw.open(port, "127.0.0.2")
        try:
            await user.line()
            login = f'a LOGIN {slow.ALICE} "{slow.PASSWORD}"'.encode()
            assert (await user.cmd(login, b"a "))[-1].startswith(b"a OK")
            for i in range(3):
                c = await slow.Raw.open(port, f"127.0.0.{3 + i}")
                assert (await c.line()).startswith(REFUSAL["imap"])
                c.close()
            assert (await user.cmd(b"b NOOP", b"b "))[-1].startswith(b"b OK")
        finally:
            user.close()
        await asyncio.sleep(0)
        assert _refused(m, "imap", "total") == 3
    lines = [r for r in caplog.records if r.getMessage() == "connections refused"]
    assert [r.mh_fields["reason"] for r in lines] == ["total"] * 3  # type: ignore[attr-defined]  # three addresses
