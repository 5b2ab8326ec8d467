"""Issue 12 items 2 and 6 through the real MX with real clients (smtplib from 127.0.0.x source
addresses): DNS block lists refuse at RCPT, allow lists skip greylisting, open-resolver answers are
ignored, greylisting defers and then passes, and its state outlives a restart. Every DNS answer
comes from the tests' DNS server."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from pathlib import Path
from typing import Any

import pytest

from mailhaven.metrics import Metrics
from tests.dnsserver import DnsServer
from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, BOB, MxFactory, MxServer, message

mx = harness.mx  # the fixture

SENDER = "news@sender.test"
BL, WL = "bl.test", "wl.test"


def _rev(ip: str, zone: str) -> str:
    return ".".join(reversed(ip.split("."))) + "." + zone


async def _mx(mx: MxFactory, **spam: Any) -> MxServer:
    top = {k: spam.pop(k) for k in ("dev", "storage") if k in spam}
    server = await mx(spam=spam, **top)
    server.ctx.metrics = Metrics(enabled=True, process=False)
    return server


def _smtplib(port: int, source: str, rcpts: list[str], sender: str = SENDER) -> list[tuple[int, str]]:
    """One transaction from `source`: the RCPT replies, then DATA's final reply when one was taken."""
    out: list[tuple[int, str]] = []
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mta.sender.test", timeout=30,
                      source_address=(source, 0)) as c:
        c.ehlo()
        code, _ = c.mail(sender)
        assert code == 250
        for r in rcpts:
            code, text = c.rcpt(r)
            out.append((code, text.decode()))
        if any(code == 250 for code, _ in out):
            try:
                code, text = c.data(message(sender=sender))
            except smtplib.SMTPDataError as e:
                code, text = e.smtp_code, e.smtp_error
            out.append((code, text.decode()))
    return out


async def _send(server: MxServer, source: str, rcpts: list[str] | None = None,
                sender: str = SENDER) -> list[tuple[int, str]]:
    return await asyncio.to_thread(_smtplib, server.port, source, rcpts or [ALICE], sender)


def _verdicts(caplog: pytest.LogCaptureFixture, msg: str = "reputation verdict") -> list[dict[str, Any]]:
    return [dict(r.mh_fields) for r in caplog.records if r.getMessage() == msg]


def _count(server: MxServer, name: str, **labels: str) -> float:
    return server.ctx.metrics.registry.get_sample_value(name, labels) or 0.0


# --- DNS block lists ---------------------------------------------------------------------------------


async def test_listed_client_is_refused_at_rcpt_in_postfix_wording_logged_and_counted_once(
        mx: MxFactory, dns_server: DnsServer, caplog: pytest.LogCaptureFixture) -> None:
    dns_server.add(_rev("127.0.0.2", BL), "A", "127.0.0.2")  # RFC 5782 §5: the test entry
    server = await _mx(mx, dnsbl=["clean.test", BL])
    caplog.set_level(logging.INFO, logger="mailhaven")
    replies = await _send(server, "127.0.0.2", [ALICE, BOB])
    assert replies == [(554, "5.7.1 Service unavailable; Client host [127.0.0.2] blocked using bl.test")] * 2
    assert server.messages(ALICE) == []
    [v] = _verdicts(caplog)  # two refused RCPTs, one transaction: one line
    assert (v["action"], v["ip"], v["list"]) == ("dnsbl_reject", "127.0.0.2", BL)
    assert _count(server, "mailhaven_reputation_verdicts_total", action="dnsbl_reject") == 1
    assert dns_server.queried(_rev("127.0.0.2", "clean.test")) == 1  # every configured list asked


async def test_unlisted_client_is_accepted_and_answers_are_cached(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(_rev("127.0.0.2", BL), "A", "127.0.0.2")
    server = await _mx(mx, dnsbl=[BL])
    for _ in range(2):
        replies = await _send(server, "127.0.0.3")
        assert replies[0][0] == 250 and replies[-1][0] == 250, replies
    assert len(server.messages(ALICE)) == 2
    assert dns_server.queried(_rev("127.0.0.3", BL)) == 1  # the second connection used the cache


async def test_dev_mode_still_asks_the_lists_for_loopback_clients(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(_rev("127.0.0.2", BL), "A", "127.0.0.2")
    server = await _mx(mx, dnsbl=[BL], dev=True)
    assert server.ctx.config.dev
    [(code, text)] = await _send(server, "127.0.0.2")
    assert code == 554 and "blocked using bl.test" in text
    replies = await _send(server, "127.0.0.1")  # asked too (RFC 5782 §5: never listed), delivered
    assert replies[-1][0] == 250 and dns_server.queried(_rev("127.0.0.1", BL)) == 1


async def test_dnsbl_skip_networks_are_not_looked_up(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(_rev("127.0.0.2", BL), "A", "127.0.0.2")
    server = await _mx(mx, dnsbl=[BL], dnsbl_skip=["127.0.0.2/32"])
    replies = await _send(server, "127.0.0.2")
    assert replies[-1][0] == 250, replies
    assert dns_server.queried(_rev("127.0.0.2", BL)) == 0


async def test_relay_attempts_and_unknown_users_are_refused_before_any_list_is_asked(
        mx: MxFactory, dns_server: DnsServer) -> None:
    server = await _mx(mx, dnsbl=[BL])
    replies = await _send(server, "127.0.0.2", ["someone@elsewhere.test", "nobody@example.test"])
    assert [c for c, _ in replies] == [550, 550]
    # the lookup starts at MAIL FROM (alongside SPF), but no RCPT waited for it
    assert "blocked" not in "".join(t for _, t in replies)


@pytest.mark.parametrize(("answer", "reason"), [("127.255.255.254", "refused"), ("127.255.255.255", "refused"),
                                                ("198.51.100.80", "bogus")])
async def test_open_resolver_codes_and_answers_outside_127_8_are_ignored_warned_and_counted(
        mx: MxFactory, dns_server: DnsServer, caplog: pytest.LogCaptureFixture, answer: str, reason: str) -> None:
    dns_server.add(_rev("127.0.0.2", BL), "A", answer)
    server = await _mx(mx, dnsbl=[BL])
    caplog.set_level(logging.INFO, logger="mailhaven")
    replies = await _send(server, "127.0.0.2")
    assert replies[0][0] == 250 and replies[-1][0] == 250, replies
    [w] = _verdicts(caplog, "dns list answer ignored")
    assert (w["list"], w["reason"], w["answer"]) == (BL, reason, answer)
    if reason == "refused":
        assert "open/public resolver" in w["advice"]
    assert _count(server, "mailhaven_dnsbl_ignored_total", list=BL, reason=reason) == 1
    assert _verdicts(caplog) == []


async def test_a_list_that_does_not_answer_refuses_nothing(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.set_servfail(_rev("127.0.0.2", BL))
    server = await _mx(mx, dnsbl=[BL])
    replies = await _send(server, "127.0.0.2")
    assert replies[-1][0] == 250, replies
    assert _count(server, "mailhaven_dnsbl_ignored_total", list=BL, reason="error") == 1


async def test_a_client_on_both_lists_is_refused(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(_rev("127.0.0.2", BL), "A", "127.0.0.2")
    dns_server.add(_rev("127.0.0.2", WL), "A", "127.0.10.0")
    server = await _mx(mx, dnsbl=[BL], dnswl=[WL], greylist=True, greylist_skip=[])
    [(code, _)] = await _send(server, "127.0.0.2")
    assert code == 554


# --- greylisting ------------------------------------------------------------------------------------


def _greylist(**more: Any) -> dict[str, Any]:
    return {"greylist": True, "greylist_delay": 1, "greylist_skip": [], **more}


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """[storage]: the default (data_dir/greylist.sqlite), or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        return {}
    return {"storage": {"backend": "postgresql", "dsn": request.getfixturevalue("pg_dsn")}}


async def test_greylisting_defers_then_passes_after_the_delay(mx: MxFactory, caplog: pytest.LogCaptureFixture,
                                                               storage: dict[str, Any]) -> None:
    server = await _mx(mx, **_greylist(), **storage)
    caplog.set_level(logging.INFO, logger="mailhaven")
    [(code, text)] = await _send(server, "127.0.0.4")
    assert code == 451 and text.startswith("4.7.1 Greylisted"), text
    [(code, _)] = await _send(server, "127.0.0.4")  # too soon
    assert code == 451
    await asyncio.sleep(1.2)
    replies = await _send(server, "127.0.0.4")
    assert replies[0][0] == 250 and replies[-1][0] == 250, replies
    assert len(server.messages(ALICE)) == 1
    # the client is known now: another sender and recipient from its /24 pass at once
    replies = await _send(server, "127.0.0.5", [BOB], sender="other@elsewhere.test")
    assert replies[-1][0] == 250, replies
    actions = [(v["action"], v.get("why")) for v in _verdicts(caplog)]
    assert actions == [("greylist_defer", "new"), ("greylist_defer", "early"), ("greylist_pass", "retried")]
    assert _verdicts(caplog)[0]["triplet"] == f"127.0.0.0/24,{SENDER},{ALICE}"
    assert _count(server, "mailhaven_reputation_verdicts_total", action="greylist_defer") == 2
    assert _count(server, "mailhaven_reputation_verdicts_total", action="greylist_pass") == 1


async def test_greylist_state_survives_a_restart(mx: MxFactory, storage: dict[str, Any]) -> None:
    first = await _mx(mx, **_greylist(), **storage)
    [(code, _)] = await _send(first, "127.0.0.4")
    assert code == 451
    first.server.close()
    await first.ctx.greylist.close()
    await asyncio.sleep(1.2)
    second = await _mx(mx, **_greylist(), **storage)  # same data_dir or database, a new greylist object
    assert second.ctx.config.data_dir == first.ctx.config.data_dir
    # the state is where [storage] says: the SQLite file, or only the database
    assert (Path(first.ctx.config.data_dir) / "greylist.sqlite").exists() == (not storage)
    replies = await _send(second, "127.0.0.4")
    assert replies[-1][0] == 250, replies


async def test_dnswl_listed_clients_are_not_greylisted(mx: MxFactory, dns_server: DnsServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    dns_server.add(_rev("127.0.0.6", WL), "A", "127.0.10.0")
    server = await _mx(mx, dnswl=[WL], **_greylist())
    caplog.set_level(logging.INFO, logger="mailhaven")
    replies = await _send(server, "127.0.0.6")
    assert replies[-1][0] == 250, replies
    [(code, _)] = await _send(server, "127.0.0.7")  # not on the allow list
    assert code == 451
    assert [(v["action"], v.get("list")) for v in _verdicts(caplog)][0] == ("dnswl_pass", WL)


async def test_greylist_skip_networks_and_loopback_by_default_are_not_greylisted(mx: MxFactory) -> None:
    server = await _mx(mx, **_greylist(greylist_skip=["127.0.0.8/32"]))
    assert (await _send(server, "127.0.0.8"))[-1][0] == 250
    assert (await _send(server, "127.0.0.9"))[0][0] == 451
    default = await _mx(mx, greylist=True)  # greylist_skip defaults to loopback
    assert (await _send(default, "127.0.0.9"))[-1][0] == 250


async def test_an_expired_client_is_greylisted_again(mx: MxFactory, storage: dict[str, Any]) -> None:
    server = await _mx(mx, **_greylist(greylist_expire=2), **storage)
    assert (await _send(server, "127.0.0.4"))[0][0] == 451
    await asyncio.sleep(1.2)
    assert (await _send(server, "127.0.0.4"))[-1][0] == 250
    await asyncio.sleep(2.2)  # not seen for longer than greylist_expire
    assert (await _send(server, "127.0.0.4"))[0][0] == 451


async def test_a_lookup_in_flight_ends_with_the_connection(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.set_timeout(_rev("127.0.0.2", BL))  # the list never answers
    server = await mx(spam={"dnsbl": [BL]}, dns={"nameservers": [dns_server.nameserver], "timeout": 20})

    def lookups() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if "_lookup_reputation" in repr(t.get_coro())]

    async with server.raw(source="127.0.0.2") as c:
        await c.cmd("EHLO mta.sender.test")
        assert (await c.cmd("MAIL FROM:<news@sender.test>"))[0].startswith("250")
        await harness.wait_until(lambda: len(lookups()) == 1)
    await harness.wait_until(lambda: not lookups(), 5)  # cancelled, not left for the 20 s timeout
