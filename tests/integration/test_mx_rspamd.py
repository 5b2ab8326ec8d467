"""Issue 12 items 1, 3, 8: the MX scans every message with a real rspamd at DATA, before the 250.

rspamd and its redis are started once per session (tests/fixtures_rspamd.py), pointed at the tests'
DNS server; the thresholds there are greylist 10, add header 20, reject 100, and the Subject markers
ADD_HEADER_MARK (+30) and GREYLIST_MARK (+13) put a message into those bands. "rspamd is down" is a
loopback port where nothing listens (connection refused) or a socket that accepts and never answers
(timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailhaven.message.headers import field_value, field_values
from mailhaven.metrics import Metrics
from mailhaven.policy import spam
from mailhaven.policy.rspamd import RspamdClient
from tests.fixtures_base import free_port
from tests.fixtures_rspamd import ADD_HEADER_MARK, GREYLIST_MARK, REWRITE_MARK, Rspamd
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, BOB, MxFactory, MxServer, all_files, message

mx = harness.mx  # the fixture

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SENDER = "news@sender.test"


async def _mx(mx: MxFactory, url: str, **spam: Any) -> MxServer:
    server = await mx(spam={"rspamd_url": url, "rspamd_timeout": spam.pop("rspamd_timeout", 10.0), **spam})
    server.ctx.metrics = Metrics(enabled=True, process=False)
    return server


def _smtplib_send(port: int, msg: bytes, rcpts: list[str]) -> tuple[int, str]:
    """One transaction with smtplib (a real client); (code, text) of the reply to the final dot."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mta.sender.test", timeout=30) as c:
        c.ehlo()
        c.mail(SENDER)
        for r in rcpts:
            code, text = c.rcpt(r)
            assert code == 250, (code, text)
        code, text = c.data(msg)
        return code, text.decode()


async def _send(server: MxServer, msg: bytes, rcpts: list[str] | None = None) -> tuple[int, str]:
    return await asyncio.to_thread(_smtplib_send, server.port, msg, rcpts or [ALICE])


def _verdicts(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(r.mh_fields) for r in caplog.records if r.getMessage() == "spam verdict"]


def _count(server: MxServer, action: str) -> float:
    value = server.ctx.metrics.registry.get_sample_value("mailhaven_spam_verdicts_total", {"action": action})
    return value or 0.0


# --- rspamd answers ----------------------------------------------------------------------------------


async def test_gtube_is_refused_550_with_rspamds_message_and_nothing_is_stored(
        mx: MxFactory, rspamd: Rspamd, caplog: pytest.LogCaptureFixture) -> None:
    server = await _mx(mx, rspamd.url)
    caplog.set_level(logging.INFO, logger="mailhaven")
    code, text = await _send(server, message(subject="gtube", body=GTUBE + "\r\n"))
    assert code == 550 and text.startswith("5.7.1 "), (code, text)
    assert "Gtube pattern" in text  # rspamd's messages.smtp_message
    assert all_files(server.mail_root) == []
    [v] = _verdicts(caplog)
    assert v["action"] == "reject" and "GTUBE" in v["symbols"].split(",") and v["id"]
    assert _count(server, "reject") == 1


async def test_clean_message_goes_to_inbox_with_our_x_spam_fields(
        mx: MxFactory, rspamd: Rspamd, caplog: pytest.LogCaptureFixture) -> None:
    server = await _mx(mx, rspamd.url)
    caplog.set_level(logging.INFO, logger="mailhaven")
    code, text = await _send(server, message(subject="lunch on friday"))
    assert code == 250, (code, text)
    [msg] = server.messages(ALICE)
    assert server.messages(ALICE, "Junk") == []
    status = field_value(msg, "X-Spam-Status") or ""
    assert status.startswith("No, score=") and ", required=100.00" in status, status
    score = field_value(msg, "X-Spam-Score") or ""
    assert f"score={score}," in status
    assert float(score) < 10
    [v] = _verdicts(caplog)  # once per message, with the queue id of the 250
    assert v["action"] == "no action" and v["id"] in text and v["score"] == score
    assert v["required"] == "100.00" and v["symbols"]
    assert _count(server, "no_action") == 1


async def test_rspamd_is_told_the_envelope(mx: MxFactory, rspamd: Rspamd) -> None:
    # rspamd logs each task with the Queue-Id, IP, From and Rcpt headers it was given.
    server = await _mx(mx, rspamd.url)
    code, text = await _send(server, message(subject="envelope", sender=SENDER))
    assert code == 250
    queue_id = text.rsplit(" ", 1)[-1]
    await harness.wait_until(lambda: f"qid: <{queue_id}>" in rspamd.log(), 10)
    [line] = [ln for ln in rspamd.log().splitlines() if f"qid: <{queue_id}>" in ln]
    assert "ip: 127.0.0.1" in line and f"from: <{SENDER}>" in line, line
    assert f"rcpts: <{ALICE}>" in rspamd.log().split(f"qid: <{queue_id}>", 1)[1].split("qid: <", 1)[0]


async def test_add_header_verdict_files_into_junk_with_the_fields(mx: MxFactory, rspamd: Rspamd) -> None:
    server = await _mx(mx, rspamd.url)
    code, _ = await _send(server, message(subject=f"cheap {ADD_HEADER_MARK} offer"))
    assert code == 250
    assert server.messages(ALICE) == []
    [msg] = server.messages(ALICE, "Junk")
    status = field_value(msg, "X-Spam-Status") or ""
    assert status.startswith("Yes, score=") and "required=100.00" in status, status
    assert 20 <= float(field_value(msg, "X-Spam-Score") or "0") < 100
    assert _count(server, "add_header") == 1


async def test_headers_rspamd_asks_for_are_added_and_removed(mx: MxFactory, rspamd: Rspamd) -> None:
    # milter_headers (fixture config): add X-Spamd-Bar and X-Rspamd-Queue-Id, remove X-Spam.
    server = await _mx(mx, rspamd.url)
    code, text = await _send(server, message(subject=f"{ADD_HEADER_MARK} bar",
                                             extra="X-Spam: yes\r\nX-Spamd-Bar: forged\r\n"))
    assert code == 250
    [msg] = server.messages(ALICE, "Junk")
    assert field_values(msg, "X-Spam") == []
    assert field_values(msg, "X-Rspamd-Queue-Id") == [text.rsplit(" ", 1)[-1]]
    bars = field_values(msg, "X-Spamd-Bar")
    assert len(bars) == 1 and set(bars[0]) == {"+"} and len(bars[0]) >= 20, bars  # ours, not the forged one


async def test_rewrite_subject_verdict_goes_to_junk_with_rspamds_subject(mx: MxFactory, rspamd: Rspamd) -> None:
    server = await _mx(mx, rspamd.url)
    code, _ = await _send(server, message(subject=f"{REWRITE_MARK} deal"))
    assert code == 250
    [msg] = server.messages(ALICE, "Junk")
    assert field_values(msg, "Subject") == [f"***SPAM*** {REWRITE_MARK} deal"]
    assert (field_value(msg, "X-Spam-Status") or "").startswith("Yes, ")
    assert _count(server, "rewrite_subject") == 1


async def test_incoming_x_spam_fields_are_replaced_by_ours(mx: MxFactory, rspamd: Rspamd) -> None:
    server = await _mx(mx, rspamd.url)
    forged = "X-Spam-Status: No, score=-100\r\nX-Spam-Score: -100\r\nX-Spam-Flag: NO\r\nX-Spam: no\r\n"
    code, _ = await _send(server, message(subject=f"{ADD_HEADER_MARK} forged", extra=forged))
    assert code == 250
    [msg] = server.messages(ALICE, "Junk")
    assert len(field_values(msg, "X-Spam-Status")) == 1
    assert (field_value(msg, "X-Spam-Status") or "").startswith("Yes, ")
    assert field_values(msg, "X-Spam-Score") != ["-100"] and len(field_values(msg, "X-Spam-Score")) == 1
    assert field_values(msg, "X-Spam-Flag") == [] and field_values(msg, "X-Spam") == []


async def test_greylist_verdict_is_451_471_and_nothing_is_stored(mx: MxFactory, rspamd: Rspamd) -> None:
    server = await _mx(mx, rspamd.url)
    code, text = await _send(server, message(subject=f"{GREYLIST_MARK} hello"))
    assert code == 451 and text.startswith("4.7.1 "), (code, text)
    assert all_files(server.mail_root) == []
    assert _count(server, "greylist") == 1


async def test_two_recipients_one_scan_one_verdict(mx: MxFactory, rspamd: Rspamd,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    server = await _mx(mx, rspamd.url)
    caplog.set_level(logging.INFO, logger="mailhaven")
    code, _ = await _send(server, message(subject=f"{ADD_HEADER_MARK} both"), [ALICE, BOB])
    assert code == 250
    assert len(server.messages(ALICE, "Junk")) == 1 and len(server.messages(BOB, "Junk")) == 1
    assert len(_verdicts(caplog)) == 1


# --- rspamd does not answer --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _silent_listener() -> AsyncIterator[str]:
    """A loopback socket that accepts connections and never answers (a hung rspamd)."""
    conns: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)

    srv = await asyncio.start_server(hold, "127.0.0.1", 0, family=socket.AF_INET)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        for w in conns:
            w.close()
        srv.close()


async def test_rspamd_down_on_error_accept_delivers_marked_unknown_counted_and_logged(
        mx: MxFactory, caplog: pytest.LogCaptureFixture) -> None:
    server = await _mx(mx, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    caplog.set_level(logging.INFO, logger="mailhaven")
    code, _ = await _send(server, message(subject="while rspamd is down"))
    assert code == 250
    [msg] = server.messages(ALICE)
    assert field_values(msg, "X-Spam-Status") == ["Unknown"]
    assert field_values(msg, "X-Spam-Score") == []
    [v] = _verdicts(caplog)
    assert v["action"] == "unknown" and "unreachable" in v["reason"]
    assert any(r.levelno == logging.WARNING and r.getMessage() == "spam verdict" for r in caplog.records)
    assert _count(server, "unknown") == 1


async def test_rspamd_hung_on_error_tempfail_is_451_471_within_the_timeout(mx: MxFactory) -> None:
    async with _silent_listener() as url:
        server = await _mx(mx, url, on_error="tempfail", rspamd_timeout=1.0)
        t0 = asyncio.get_running_loop().time()
        code, text = await _send(server, message(subject="while rspamd hangs"))
        elapsed = asyncio.get_running_loop().time() - t0
    assert code == 451 and text.startswith("4.7.1 "), (code, text)
    assert elapsed < 5  # spam.rspamd_timeout bounds the wait (1 s here)
    assert all_files(server.mail_root) == []
    assert _count(server, "unknown") == 1


async def test_rspamd_down_on_error_tempfail_is_451_471(mx: MxFactory) -> None:
    server = await _mx(mx, f"http://127.0.0.1:{free_port()}", on_error="tempfail")
    code, text = await _send(server, message(subject="refused"))
    assert code == 451 and text.startswith("4.7.1 "), (code, text)
    assert all_files(server.mail_root) == []


async def test_rspamd_hung_on_error_accept_delivers_unknown(mx: MxFactory) -> None:
    async with _silent_listener() as url:
        server = await _mx(mx, url, rspamd_timeout=1.0)
        code, _ = await _send(server, message(subject="hung accept"))
    assert code == 250
    [msg] = server.messages(ALICE)
    assert field_values(msg, "X-Spam-Status") == ["Unknown"]


async def test_without_spam_config_the_embedded_check_labels_the_message(mx: MxFactory) -> None:
    # Issue 12 item 5: no rspamd_url -> the embedded check (GTUBE, sender lists) gives the verdict;
    # the forged field from outside is replaced by ours.
    server = await mx()
    [*_, reply] = await server.send(SENDER, [ALICE], message(subject="plain", extra="X-Spam-Status: Yes\r\n"))
    assert reply[0].startswith("250")
    [msg] = server.messages(ALICE)
    assert field_values(msg, "X-Spam-Status") == ["No, score=0.00, required=5.00"]



# --- the whole server ---------------------------------------------------------------------------------


async def test_the_server_scans_with_the_rspamd_of_its_config_and_closes_the_client_at_stop(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, rspamd: Rspamd) -> None:
    cfg = load_test_config(app_config_file(tmp_path, tls_files, dns_nameserver,
                                           spam={"rspamd_url": rspamd.url, "rspamd_timeout": 10}))
    add_user(cfg, ALICE, "secret")
    async with running_app(cfg) as ctx:
        client = ctx.spam
        assert isinstance(client, RspamdClient)
        code, text = await asyncio.to_thread(_smtplib_send, ctx.port("mx"),
                                             message(subject="gtube", body=GTUBE + "\r\n"), [ALICE])
        assert code == 550 and text.startswith("5.7.1 Gtube pattern"), (code, text)
        code, _ = await asyncio.to_thread(_smtplib_send, ctx.port("mx"), message(subject="fine"), [ALICE])
        assert code == 250
    assert client._session is None  # closed with the server
    [msg] = harness.maildir_messages(cfg.mail_root, ALICE)
    assert (field_value(msg, "X-Spam-Status") or "").startswith("No, score=")


# --- the client's bounds ------------------------------------------------------------------------------


async def test_client_keeps_at_most_max_concurrency_scans_in_flight_and_times_out_queued_ones() -> None:
    # A hung rspamd: count the connections it sees while six scans wait on it.
    conns: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)

    srv = await asyncio.start_server(hold, "127.0.0.1", 0, family=socket.AF_INET)
    client = RspamdClient(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", timeout=1.5,
                          max_concurrency=2, max_size=1 << 20)
    req = spam.ScanRequest("127.0.0.1", "h.test", "", (ALICE,), "Q")
    try:
        t0 = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(client.scan(b"Subject: x\r\n\r\nhi\r\n", req) for _ in range(6)),
                                       return_exceptions=True)
        elapsed = asyncio.get_running_loop().time() - t0
    finally:
        await client.close()
        for w in conns:
            w.close()
        srv.close()
    assert all(isinstance(r, spam.ScanError) for r in results), results
    assert len(conns) == 2  # the other four waited for a slot, and their deadline includes the wait
    assert elapsed < 5
