"""DSN (RFC 3461) on submission and the MX: the parameters' syntax, and each request honoured by
the queue and at SMTP time. Real listeners (test_submission_harness), the real queue delivering to a
real SMTP server playing the remote MX (tests/smtp_peer.py, with and without DSN), smtplib's
mail_options/rcpt_options as the client."""

from __future__ import annotations

import asyncio
import smtplib

import pytest

from mailhaven.message.headers import field_value
from tests.integration import test_mx_harness as mx_harness
from tests.integration import test_submission_harness as harness
from tests.integration.test_mx_harness import MxFactory
from tests.integration.test_submission_harness import ALICE, BOB, SubmissionFactory, SubmissionServer, message
from tests.smtp_peer import until

submission = harness.submission
mx = mx_harness.mx
dkim_rsa = harness.dkim_rsa

REMOTE = "carol@remote.test"


def _send(server: SubmissionServer, rcpts: list[str], data: bytes, mail_options: list[str],
          rcpt_options: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], local_hostname="client.example", timeout=20) as s:
        s.starttls(context=server.client_tls)
        s.login(ALICE, harness.PASSWORD)
        s.sendmail(ALICE, rcpts, data, mail_options=mail_options, rcpt_options=rcpt_options)


async def _queue_empty(server: SubmissionServer) -> None:
    await until(lambda: not server.ctx.queue.list_entries(), 15)


def _status_part(report: bytes) -> bytes:
    start = report.index(b"Content-Type: message/delivery-status")
    return report[start:report.index(b"\r\n--", start)]


async def test_ehlo_offers_dsn(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session() as c:
        assert "DSN" in [ln[4:] for ln in await c.cmd("EHLO client.example")]


@pytest.mark.parametrize(("line", "code"), [
    (f"MAIL FROM:<{ALICE}> RET=FULL ENVID=QQ314159", "250"),
    (f"MAIL FROM:<{ALICE}> ret=hdrs envid=a+2Bb", "250"),  # keywords in any case; xtext "+2B"
    (f"MAIL FROM:<{ALICE}> RET=ALL", "501 5.5.4"),
    (f"MAIL FROM:<{ALICE}> RET=FULL RET=HDRS", "501 5.5.4"),  # given twice
    (f"MAIL FROM:<{ALICE}> ENVID=" + "x" * 101, "501 5.5.4"),  # RFC 3461 §4.4: at most 100
    (f"MAIL FROM:<{ALICE}> ENVID=a+zz", "501 5.5.4"),  # not xtext
    (f"MAIL FROM:<{ALICE}> ENVID=a+0Ab", "501 5.5.4"),  # decodes to a control character
    (f"MAIL FROM:<{ALICE}> NOTIFY=SUCCESS", "555"),  # a RCPT parameter
])
async def test_mail_parameters(submission: SubmissionFactory, line: str, code: str) -> None:
    server = await submission()
    async with server.session() as c:
        assert (await c.cmd(line))[0].startswith(code)


@pytest.mark.parametrize(("params", "code"), [
    ("NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;bob@example.test", "250"),
    ("NOTIFY=never", "250"),
    ("ORCPT=rfc822;first+2Blast@example.test", "250"),
    ("NOTIFY=NEVER,SUCCESS", "501 5.5.4"),  # RFC 3461 §4.1: NEVER stands alone
    ("NOTIFY=SUCCESS,SUCCESS", "501 5.5.4"),
    ("NOTIFY=", "501 5.5.4"),
    ("NOTIFY=WHENEVER", "501 5.5.4"),
    ("NOTIFY=SUCCESS NOTIFY=DELAY", "501 5.5.4"),
    ("ORCPT=bob@example.test", "501 5.5.4"),  # no addr-type
    ("ORCPT=rfc822;", "501 5.5.4"),
    ("ORCPT=rfc822;" + "b" * 500, "501 5.5.4"),  # RFC 3461 §4.2: at most 500
    ("RET=FULL", "555"),  # a MAIL parameter
])
async def test_rcpt_parameters(submission: SubmissionFactory, params: str, code: str) -> None:
    server = await submission()
    async with server.session() as c:
        assert (await c.cmd(f"MAIL FROM:<{ALICE}>"))[0].startswith("250")
        assert (await c.cmd(f"RCPT TO:<{BOB}> {params}"))[0].startswith(code)


async def test_a_bounce_carries_envid_orcpt_and_with_ret_full_the_whole_message(submission: SubmissionFactory) -> None:
    server = await submission()
    server.peer.script_rcpt(REMOTE, "550 5.1.1 no such user")
    data = message(to=REMOTE, subject="doomed", body="The whole body comes back.\r\n")
    await asyncio.to_thread(_send, server, [REMOTE], data, ["RET=FULL", "ENVID=QQ+2B1"],
                            ["NOTIFY=FAILURE", "ORCPT=rfc822;carol+2Bold@remote.test"])
    [bounce] = await until(lambda: server.messages(ALICE), 15)
    status = _status_part(bounce)
    assert b"Original-Envelope-Id: QQ+1\r\n" in status  # decoded (RFC 3464 §2.2.1)
    assert b"Original-Recipient: rfc822;carol+old@remote.test\r\n" in status
    assert b"Final-Recipient: rfc822; carol@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n" in status
    assert b"Content-Type: message/rfc822\r\n" in bounce
    assert b"The whole body comes back." in bounce


async def test_without_ret_a_bounce_returns_the_headers_only(submission: SubmissionFactory) -> None:
    server = await submission()
    server.peer.script_rcpt(REMOTE, "550 5.1.1 no such user")
    data = message(to=REMOTE, subject="doomed", body="This body stays here.\r\n")
    await asyncio.to_thread(_send, server, [REMOTE], data, [], [])
    [bounce] = await until(lambda: server.messages(ALICE), 15)
    assert b"Content-Type: text/rfc822-headers" in bounce and b"Subject: doomed" in bounce
    assert b"This body stays here." not in bounce
    assert b"Original-Envelope-Id" not in bounce and b"Original-Recipient" not in bounce


async def test_notify_never_gets_no_bounce(submission: SubmissionFactory) -> None:
    server = await submission()
    server.peer.script_rcpt(REMOTE, "550 5.1.1 no such user")
    await asyncio.to_thread(_send, server, [REMOTE], message(to=REMOTE), [], ["NOTIFY=NEVER"])
    await until(lambda: server.peer.events.count(("RCPT", REMOTE)) == 1, 15)
    await _queue_empty(server)
    assert server.messages(ALICE) == []


async def test_success_at_a_next_hop_without_dsn_is_reported_relayed(submission: SubmissionFactory) -> None:
    server = await submission()
    await asyncio.to_thread(_send, server, [REMOTE], message(to=REMOTE, subject="tell me"), ["ENVID=E1"],
                            ["NOTIFY=SUCCESS"])
    await server.peer.wait_messages(1)
    [report] = await until(lambda: server.messages(ALICE), 15)
    assert field_value(report, "Subject") == "Successful Mail Delivery Report"
    status = _status_part(report)
    assert b"Action: relayed\r\nStatus: 2.0.0\r\n" in status and b"Original-Envelope-Id: E1" in status
    assert server.peer.dsn_params == []  # it does not offer DSN: nothing passed on


async def test_a_next_hop_with_dsn_gets_the_request_and_reports_itself(submission: SubmissionFactory) -> None:
    server = await submission()
    server.peer.offers_dsn = True
    await asyncio.to_thread(_send, server, [REMOTE], message(to=REMOTE), ["RET=HDRS", "ENVID=a+2Bb"],
                            ["NOTIFY=SUCCESS,FAILURE"])
    await server.peer.wait_messages(1)
    assert sorted(server.peer.dsn_params) == sorted(
        ["RET=HDRS", "ENVID=a+2Bb", "NOTIFY=FAILURE,SUCCESS", f"ORCPT=rfc822;{REMOTE}"])
    await _queue_empty(server)
    assert server.messages(ALICE) == []  # the next hop reports success, not us


async def test_a_local_delivery_that_asked_gets_a_delivered_notice(submission: SubmissionFactory) -> None:
    server = await submission()
    await asyncio.to_thread(_send, server, [BOB], message(to=BOB, subject="did bob get it"), [],
                            ["NOTIFY=SUCCESS", f"ORCPT=rfc822;{BOB}"])
    assert len(server.messages(BOB)) == 1
    [report] = await until(lambda: server.messages(ALICE), 15)
    status = _status_part(report)
    assert f"Original-Recipient: rfc822;{BOB}\r\nFinal-Recipient: rfc822; {BOB}\r\n".encode() in status
    assert b"Action: delivered\r\nStatus: 2.0.0\r\n" in status
    assert report.startswith(b"Return-Path: <>\r\n")  # RFC 5321 §4.5.5: from the null sender
    assert b"Subject: did bob get it" in report  # the headers come back


async def test_without_notify_success_a_delivery_gets_no_notice(submission: SubmissionFactory) -> None:
    server = await submission()
    await asyncio.to_thread(_send, server, [BOB, REMOTE], message(to=BOB), [], ["NOTIFY=FAILURE,DELAY"])
    await server.peer.wait_messages(1)
    await _queue_empty(server)
    assert len(server.messages(BOB)) == 1
    assert server.messages(ALICE) == []


async def test_the_mx_sends_a_delivered_notice_when_asked(mx: MxFactory) -> None:
    """The MX's local copies (stored at SMTP time): a success notice to the sender that asked, from
    the null sender, with the ENVID and ORCPT it gave; a recipient that did not ask gets none."""
    server = await mx()
    server.ctx.queue = None  # the sender is ours here: the notice is delivered without the queue
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        assert (await c.cmd(f"MAIL FROM:<{mx_harness.BOB}> ENVID=mx-1"))[0].startswith("250")
        assert (await c.cmd(f"RCPT TO:<{mx_harness.ALICE}> NOTIFY=SUCCESS ORCPT=rfc822;a+40x"))[0].startswith("250")
        assert (await c.cmd(f"RCPT TO:<{mx_harness.CAROL}>"))[0].startswith("250")
        assert (await c.cmd("DATA"))[0].startswith("354")
        assert (await c.cmd(mx_harness.message(sender=mx_harness.BOB) + b"."))[0].startswith("250")
    [report] = server.messages(mx_harness.BOB)
    status = _status_part(report)
    assert b"Original-Envelope-Id: mx-1" in status and b"Original-Recipient: rfc822;a@x" in status
    assert f"Final-Recipient: rfc822; {mx_harness.ALICE}\r\nAction: delivered".encode() in status
    assert mx_harness.CAROL.encode() not in status
