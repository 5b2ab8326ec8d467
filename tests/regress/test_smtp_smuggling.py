"""SMTP smuggling (SEC Consult, December 2023; CVE-2023-51764 Postfix, CVE-2023-51765 Sendmail,
CVE-2023-51766 Exim): a sender hides a second transaction inside the first message's data behind
an end-of-data marker that uses a bare LF or bare CR. If the receiving server takes the fake
marker for the real `CRLF . CRLF`, it delivers a second, forged message.

Mailhaven ends DATA only at CRLF "." CRLF (RFC 5321 §4.1.1.4) and refuses any message holding a
bare CR or bare LF with 550 5.5.2 (RFC 5321 §2.3.8). So each payload below is one refused message,
no second message is ever delivered, and the session stays in step for the next transaction.
"""

from __future__ import annotations

import pytest

from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, BOB, MxFactory, dot_stuff, message

mx = harness.mx  # the fixture

PAYLOADS = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n", b"\n.\r"]

SMUGGLED = (b"MAIL FROM:<ceo@example.test>\r\n"
            b"RCPT TO:<bob@example.test>\r\n"
            b"DATA\r\n"
            b"From: ceo@example.test\r\n"
            b"Subject: smuggled\r\n"
            b"\r\n"
            b"wire the money\r\n"
            b".\r\n")


def _first(payload: bytes) -> bytes:
    return b"From: sender@sender.test\r\nTo: alice@example.test\r\nSubject: first\r\n\r\nfirst body" + payload


@pytest.mark.parametrize("payload", PAYLOADS, ids=[repr(p)[2:-1] for p in PAYLOADS])
async def test_bare_newline_end_of_data_cannot_smuggle_a_second_message(mx: MxFactory, payload: bytes) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO attacker.example")
        assert (await c.cmd("MAIL FROM:<sender@sender.test>"))[0].startswith("250")
        assert (await c.cmd(f"RCPT TO:<{ALICE}>"))[0].startswith("250")
        assert (await c.cmd("DATA"))[0].startswith("354")
        await c.send(_first(payload) + SMUGGLED)
        # Exactly one reply for all of that: the whole thing was one DATA block, refused.
        [reply] = await c.reply()
        assert reply.startswith("550 5.5.2"), reply
        [reply] = await c.cmd("NOOP")
        assert reply.startswith("250 2.0.0"), reply  # no stray replies were queued before it
        # The session is still in step: a clean message goes through.
        assert (await c.cmd("MAIL FROM:<sender@sender.test>"))[0].startswith("250")
        assert (await c.cmd(f"RCPT TO:<{ALICE}>"))[0].startswith("250")
        assert (await c.cmd("DATA"))[0].startswith("354")
        [reply] = await c.cmd(dot_stuff(message(subject="clean")) + b".")
        assert reply.startswith("250 2.0.0"), reply
    [only] = server.messages(ALICE)
    assert b"Subject: clean" in only and b"smuggled" not in only and b"first body" not in only
    assert server.messages(BOB) == []


@pytest.mark.parametrize("payload", PAYLOADS, ids=[repr(p)[2:-1] for p in PAYLOADS])
async def test_smuggling_payload_sent_pipelined_in_one_write(mx: MxFactory, payload: bytes) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.send(b"EHLO attacker.example\r\nMAIL FROM:<sender@sender.test>\r\n"
                     b"RCPT TO:<alice@example.test>\r\nDATA\r\n" + _first(payload) + SMUGGLED + b"QUIT\r\n")
        replies = []
        while True:
            r = await c.reply()
            if not r:
                break
            replies.append(r[-1][:9])
    assert replies == ["250 DSN", "250 2.1.0", "250 2.1.5", "354 End d",
                       "550 5.5.2", "221 2.0.0"]
    assert server.messages(ALICE) == [] and server.messages(BOB) == []


async def test_real_end_of_data_after_a_lone_dot_line_in_the_body(mx: MxFactory) -> None:
    # The legitimate case: a line holding only "." in the body is sent dot-stuffed as "..".
    server = await mx()
    replies = await server.send("sender@sender.test", [ALICE], message(body="one\r\n.\r\ntwo\r\n"))
    assert replies[-1][0].startswith("250 2.0.0")
    [msg] = server.messages(ALICE)
    assert msg.endswith(b"\r\n\r\none\r\n.\r\ntwo\r\n")
