"""Real SMTP clients against the submission listeners: smtplib, aiosmtplib and swaks, each with
STARTTLS on "submission" and implicit TLS on "submissions", AUTH PLAIN and LOGIN, certificates
verified against the test CA. smtplib is blocking, so it runs in a thread (the server shares the
test's event loop)."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.integration import test_submission_harness as harness
from tests.integration.test_submission_harness import (
    ALICE,
    BOB,
    PASSWORD,
    SubmissionFactory,
    SubmissionServer,
)

submission = harness.submission
dkim_rsa = harness.dkim_rsa

SWAKS = shutil.which("swaks")
needs_swaks = pytest.mark.skipif(SWAKS is None, reason="swaks not installed")


def email_message(subject: str, sender: str = ALICE, to: str = BOB) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content("Grüße — a UTF-8 body.\n")
    return msg


def _smtplib_send(server: SubmissionServer, listener: str, mechanism: str, subject: str) -> dict[str, Any]:
    # The test certificate names 127.0.0.1 too, so smtplib's host name check passes.
    port = server.ports[listener]
    client: smtplib.SMTP
    if listener == "submissions":
        client = smtplib.SMTP_SSL("127.0.0.1", port, context=server.client_tls, timeout=20)
    else:
        client = smtplib.SMTP("127.0.0.1", port, timeout=20)
    with client:
        client.ehlo("client.example")
        if listener == "submission":
            client.starttls(context=server.client_tls)
            client.ehlo("client.example")
        client.user, client.password = ALICE, PASSWORD
        code, text = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235, text
        return client.send_message(email_message(subject))


@pytest.mark.parametrize("listener", ["submission", "submissions"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_smtplib_submits_with_each_mechanism_over_each_listener(
        submission: SubmissionFactory, listener: str, mechanism: str) -> None:
    server = await submission()
    refused = await asyncio.to_thread(_smtplib_send, server, listener, mechanism, f"{listener} {mechanism}")
    assert refused == {}
    [msg] = server.messages(BOB)
    assert f"Subject: {listener} {mechanism}".encode() in msg
    assert "Grüße".encode() in msg or b"Gr=C3=BC=C3=9Fe" in msg


def _smtplib_wrong_password(server: SubmissionServer) -> tuple[int, bytes]:
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], context=server.client_tls,
                          timeout=20) as client:
        try:
            client.login(ALICE, "wrong")
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error
    raise AssertionError("login succeeded")


async def test_smtplib_login_with_a_wrong_password_gets_535_5_7_8(submission: SubmissionFactory) -> None:
    server = await submission()
    code, text = await asyncio.to_thread(_smtplib_wrong_password, server)
    assert code == 535 and text.startswith(b"5.7.8")


@pytest.mark.parametrize("listener", ["submission", "submissions"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_aiosmtplib_submits_with_each_mechanism_over_each_listener(
        submission: SubmissionFactory, listener: str, mechanism: str) -> None:
    server = await submission()
    implicit = listener == "submissions"
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.ports[listener], use_tls=implicit,
                             start_tls=not implicit, tls_context=server.client_tls, timeout=20,
                             local_hostname="client.example")
    async with client:  # connects (and on "submission": EHLO, STARTTLS)
        await client.ehlo()
        if mechanism == "PLAIN":
            await client.auth_plain(ALICE, PASSWORD)
        else:
            await client.auth_login(ALICE, PASSWORD)
        errors, reply = await client.send_message(email_message(f"aio {listener} {mechanism}",
                                                                to="x@remote.test"))
    assert errors == {} and reply.startswith("2.0.0 Ok: queued as ")
    [got] = await server.peer.wait_messages(1)
    assert f"aio {listener} {mechanism}".encode() in got.data


async def test_aiosmtplib_sees_530_for_mail_without_login(submission: SubmissionFactory) -> None:
    server = await submission()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.ports["submission"], start_tls=True,
                             tls_context=server.client_tls, timeout=20)
    async with client:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as e:
            await client.sendmail(ALICE, [BOB], b"Subject: x\r\n\r\nx\r\n")
    assert e.value.code == 530 and "Authentication required" in e.value.message


async def _swaks(server: SubmissionServer, listener: str, *args: str) -> tuple[int, str]:
    assert SWAKS is not None
    proc = await asyncio.create_subprocess_exec(
        SWAKS, "--server", "127.0.0.1", "--port", str(server.ports[listener]), "--helo", "client.example",
        "--timeout", "20", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode("utf-8", "replace")


@needs_swaks
@pytest.mark.parametrize("listener,tls_flag", [("submission", "--tls"), ("submissions", "--tls-on-connect")])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks_submits_with_certificate_check(submission: SubmissionFactory, tls_ca: Any, tmp_path: Path,
                                                    listener: str, tls_flag: str, mechanism: str) -> None:
    server = await submission()
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    code, out = await _swaks(server, listener, tls_flag, "--tls-verify", "--tls-ca-path", str(ca_file),
                             "--tls-sni", "localhost",
                             "--auth", mechanism, "--auth-user", ALICE, "--auth-password", PASSWORD,
                             "--from", ALICE, "--to", f"{BOB},y@remote.test", "--header", "Subject: by swaks")
    assert code == 0, out
    assert "235 2.7.0 Authentication successful" in out, out
    assert "250 2.0.0 Ok: queued as " in out, out
    [msg] = server.messages(BOB)
    assert b"Subject: by swaks" in msg
    [got] = await server.peer.wait_messages(1)
    assert got.rcpt_tos == ["y@remote.test"]


@needs_swaks
async def test_swaks_without_tls_cannot_log_in(submission: SubmissionFactory) -> None:
    server = await submission()
    code, out = await _swaks(server, "submission", "--auth", "PLAIN", "--auth-user", ALICE,
                             "--auth-password", PASSWORD, "--from", ALICE, "--to", BOB)
    assert code != 0, out
    assert "250-AUTH" not in out and "235 " not in out, out  # no AUTH offered before TLS
    assert server.messages(BOB) == []
