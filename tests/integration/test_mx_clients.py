"""Real SMTP clients against the MX: swaks (Debian package), smtplib and aiosmtplib.

swaks 20201014 (Debian's) cannot send MAIL FROM parameters, so it cannot ask for SMTPUTF8: the
SMTPUTF8 address + 8BITMIME case is driven by smtplib and aiosmtplib, and swaks covers PIPELINING,
STARTTLS and an 8-bit UTF-8 body (plus the 553 5.6.7 it gets for a UTF-8 address without SMTPUTF8).
"""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import ssl
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from mailhaven.auth.passwords import hash_password
from mailhaven.auth.users import UsersFile
from mailhaven.message.headers import field_value
from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, BOB, MxFactory, MxServer

mx = harness.mx  # the fixture

SWAKS = shutil.which("swaks")
needs_swaks = pytest.mark.skipif(SWAKS is None, reason="swaks not installed")

JOERG = "jörg@example.test"
UTF8_BODY = "Grüße aus Köln — 東京 🌸\r\nZweite Zeile.\r\n"


async def _swaks(server: MxServer, *args: str) -> tuple[int, str]:
    assert SWAKS is not None
    proc = await asyncio.create_subprocess_exec(
        SWAKS, "--server", "127.0.0.1", "--port", str(server.port), "--helo", "client.example",
        "--timeout", "20", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode("utf-8", "replace")


@pytest.fixture
def joerg(users_file_path: Path) -> str:
    """A user with a non-ASCII local part (RFC 6531)."""
    with UsersFile.edit(users_file_path) as uf:
        uf.add_user(JOERG, hash_password("secret"))
    return JOERG


@needs_swaks
async def test_swaks_pipelining(mx: MxFactory) -> None:
    server = await mx()
    code, out = await _swaks(server, "--pipeline", "--from", "news@sender.test",
                             "--to", f"{ALICE},nobody@example.test,{BOB}",
                             "--header", "Subject: pipelined")
    assert "250-PIPELINING" in out, out
    assert "550 5.1.1" in out, out  # the unknown recipient, in the pipelined batch
    assert "250 2.0.0 Ok: delivered as" in out, out
    # swaks sent MAIL, the three RCPTs and DATA before reading any reply (RFC 2920 §3.1).
    sent = [ln for ln in out.splitlines() if ln.startswith((" -> MAIL", " -> RCPT", " -> DATA"))]
    replies = [ln for ln in out.splitlines() if ln.startswith(("<-  250 2.1", "<** 550"))]
    assert len(sent) == 5, out
    assert out.index(sent[-1]) < out.index(replies[0]), out
    assert len(server.messages(ALICE)) == 1 and len(server.messages(BOB)) == 1
    assert b"Subject: pipelined" in server.messages(ALICE)[0]


@needs_swaks
async def test_swaks_starttls_with_certificate_check(mx: MxFactory, tls_ca: Any, tmp_path: Path) -> None:
    server = await mx()
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    code, out = await _swaks(server, "--tls", "--tls-verify", "--tls-ca-path", str(ca_file),
                             "--from", "news@sender.test", "--to", ALICE, "--header", "Subject: over tls")
    assert code == 0, out
    assert "220 2.0.0 Ready to start TLS" in out, out
    [msg] = server.messages(ALICE)
    received = field_value(msg, "Received") or ""
    assert " with ESMTPS id " in received and "(using TLSv1." in received, received


@needs_swaks
async def test_swaks_8bit_utf8_body_is_stored_byte_for_byte(mx: MxFactory) -> None:
    server = await mx()
    code, out = await _swaks(server, "--from", "news@sender.test", "--to", ALICE,
                             "--header", "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=",
                             "--add-header", "MIME-Version: 1.0",
                             "--add-header", "Content-Type: text/plain; charset=utf-8",
                             "--add-header", "Content-Transfer-Encoding: 8bit",
                             "--body", UTF8_BODY)
    assert code == 0, out
    [msg] = server.messages(ALICE)
    assert UTF8_BODY.encode() in msg


@needs_swaks
async def test_swaks_utf8_address_without_smtputf8_is_refused_553_5_6_7(mx: MxFactory, joerg: str) -> None:
    server = await mx()
    code, out = await _swaks(server, "--from", "news@sender.test", "--to", joerg)
    assert "553 5.6.7" in out, out
    assert code != 0
    assert server.messages(joerg) == []


async def test_smtplib_smtputf8_address_and_8bitmime_body(mx: MxFactory, joerg: str,
                                                          client_ssl_context: ssl.SSLContext) -> None:
    server = await mx()
    msg = (f"From: Zoë <zoë@sender.test>\r\nTo: {joerg}\r\nSubject: Grüße\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           f"Content-Transfer-Encoding: 8bit\r\n\r\n{UTF8_BODY}").encode()

    def run() -> None:
        with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.example", timeout=10) as s:
            s.ehlo()
            assert s.has_extn("smtputf8") and s.has_extn("8bitmime")
            s.starttls(context=client_ssl_context)
            s.sendmail("zoë@sender.test", [joerg], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])

    await asyncio.to_thread(run)
    [stored] = server.messages(joerg)
    assert stored.startswith("Return-Path: <zoë@sender.test>\r\n".encode())
    assert UTF8_BODY.encode() in stored and "Subject: Grüße".encode() in stored
    received = field_value(stored, "Received") or ""
    assert " with UTF8SMTPS id " in received, received  # RFC 6531 §4.3
    assert "for <jörg@example.test>" in received


async def test_aiosmtplib_smtputf8_over_starttls(mx: MxFactory, joerg: str,
                                                 client_ssl_context: ssl.SSLContext) -> None:
    server = await mx()
    msg = f"From: zoë@sender.test\r\nTo: {joerg}\r\nSubject: hi\r\n\r\n{UTF8_BODY}".encode()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, tls_context=client_ssl_context,
                               start_tls=True) as client:
        errors, _ = await client.sendmail("zoë@sender.test", [joerg], msg,
                                          mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert errors == {}
    [stored] = server.messages(joerg)
    assert UTF8_BODY.encode() in stored


async def test_smtplib_over_implicit_tls_listener(mx: MxFactory, client_ssl_context: ssl.SSLContext) -> None:
    server = await mx(mx_listener={"tls": "implicit"})

    def run() -> None:
        with smtplib.SMTP_SSL("127.0.0.1", server.port, local_hostname="client.example", timeout=10,
                              context=client_ssl_context) as s:
            code, text = s.ehlo()
            assert b"STARTTLS" not in text  # already encrypted
            s.sendmail("news@sender.test", [ALICE], b"From: news@sender.test\r\nSubject: x\r\n\r\nhi\r\n")

    await asyncio.to_thread(run)
    received = field_value(server.messages(ALICE)[0], "Received") or ""
    assert " with ESMTPS id " in received
