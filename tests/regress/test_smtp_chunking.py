"""CHUNKING / BDAT (RFC 3030) on the MX and on submission, checked from outside over raw sockets
(no Python client speaks BDAT): the same limits and durability as DATA, a refused chunk's octets
are read and never taken as commands, DATA and BDAT never mix in one transaction."""

from __future__ import annotations

import pytest

from tests.integration import test_mx_harness as harness
from tests.integration import test_submission_harness as sub_harness
from tests.integration.test_mx_harness import ALICE, MxFactory, RawClient, message
from tests.integration.test_submission_harness import BOB, SubmissionFactory

mx = harness.mx  # the fixtures
submission = sub_harness.submission
dkim_rsa = sub_harness.dkim_rsa

SENDER = "sender@sender.test"


async def _bdat(c: RawClient, data: bytes, *, last: bool = False) -> list[str]:
    await c.send(f"BDAT {len(data)}{' LAST' if last else ''}\r\n".encode() + data)
    return await c.reply()


async def _envelope(c: RawClient, rcpt: str = ALICE) -> None:
    assert (await c.cmd("EHLO client.example"))[-1].startswith("250")
    assert (await c.cmd(f"MAIL FROM:<{SENDER}>"))[0].startswith("250")
    assert (await c.cmd(f"RCPT TO:<{rcpt}>"))[0].startswith("250")


async def test_ehlo_offers_chunking(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        assert "CHUNKING" in [ln[4:] for ln in await c.cmd("EHLO client.example")]


async def test_a_message_in_chunks_is_delivered_as_sent(mx: MxFactory) -> None:
    server = await mx()
    msg = message(subject="chunked", body="line one\r\n.a leading dot stays\r\nline three\r\n")
    pieces = [msg[:7], msg[7:100], msg[100:]]  # splits inside a line and inside the header
    async with server.raw() as c:
        await _envelope(c)
        assert await _bdat(c, pieces[0]) == [f"250 2.0.0 {len(pieces[0])} octets received"]
        assert (await _bdat(c, pieces[1]))[0].startswith("250 2.0.0")
        end = await _bdat(c, pieces[2], last=True)
        assert end[0].startswith("250 2.0.0 Ok"), end
    [stored] = server.messages(ALICE)
    assert stored.endswith(msg)  # no dot-stuffing removed: ".a leading dot" kept as sent


async def test_pipelined_chunks_and_bdat_zero_last(mx: MxFactory) -> None:
    server = await mx()
    msg = message(subject="pipelined")
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        half = len(msg) // 2
        await c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nBDAT {half}\r\n".encode() + msg[:half]
                     + f"BDAT {len(msg) - half}\r\n".encode() + msg[half:] + b"BDAT 0 LAST\r\n")
        replies = [await c.reply() for _ in range(5)]
        assert [r[0][:3] for r in replies] == ["250"] * 5, replies
        assert "Ok" in replies[-1][0]
    [stored] = server.messages(ALICE)
    assert stored.endswith(msg)


async def test_content_without_a_final_crlf_gets_one(mx: MxFactory) -> None:
    server = await mx()
    msg = message(subject="no final newline", body="last line")
    assert msg.endswith(b"last line")
    async with server.raw() as c:
        await _envelope(c)
        assert (await _bdat(c, msg, last=True))[0].startswith("250")
    [stored] = server.messages(ALICE)
    assert stored.endswith(b"\r\nlast line\r\n")


async def test_a_refused_chunk_is_read_not_taken_as_commands(mx: MxFactory) -> None:
    """RFC 3030 §2: without MAIL the chunk is refused, but its octets are still the chunk's: the
    commands inside it never run."""
    server = await mx()
    smuggled = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n".encode()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        assert (await _bdat(c, smuggled, last=True))[0].startswith("503 5.5.1")
        assert (await c.cmd("NOOP"))[0].startswith("250")  # in step: the next reply is NOOP's
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        assert (await _bdat(c, b"x" * 50))[0].startswith("503 5.5.1")  # MAIL but no RCPT
        assert (await c.cmd("RSET"))[0].startswith("250")
    assert server.messages(ALICE) == []


async def test_bdat_before_ehlo_and_bad_arguments(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        assert (await _bdat(c, b"abc"))[0].startswith("503 5.5.1")
        await c.cmd("EHLO client.example")
        for arg in ("BDAT", "BDAT x", "BDAT 10 FIRST", "BDAT -1", "BDAT 1234567890123456789"):
            assert (await c.cmd(arg))[0].startswith("501 5.5.4"), arg
        assert (await c.cmd("NOOP"))[0].startswith("250")


async def test_data_after_bdat_is_refused_and_bdat_after_data_is_a_new_transaction(mx: MxFactory) -> None:
    server = await mx()
    msg = message(subject="mixed")
    async with server.raw() as c:
        await _envelope(c)
        assert (await _bdat(c, msg[:10]))[0].startswith("250")
        assert (await c.cmd("DATA"))[0].startswith("503 5.5.1")
        assert (await _bdat(c, msg[10:], last=True))[0].startswith("250 2.0.0 Ok")
    [stored] = server.messages(ALICE)
    assert stored.endswith(msg)


async def test_over_the_size_limit_fails_at_once_and_ends_the_transaction(mx: MxFactory) -> None:
    server = await mx(smtp={"max_message_size": 2048})
    line = b"y" * 70 + b"\r\n"
    async with server.raw() as c:
        await _envelope(c)
        assert (await _bdat(c, message(subject="big")))[0].startswith("250")
        assert (await _bdat(c, line * 40))[0].startswith("552 5.3.4")
        assert (await _bdat(c, line, last=True))[0].startswith("503 5.5.1")  # the transaction is over
    assert server.messages(ALICE) == []


@pytest.mark.parametrize(("body", "code"), [
    (b"a" * 999 + b"\r\n", "500 5.5.2"),  # over max_line_length (1000 with the CRLF)
    (b"bare\nLF\r\n", "550 5.5.2"),
    (b"bare\rCR\r\n", "550 5.5.2"),
])
async def test_the_content_checks_of_data_hold_for_bdat(mx: MxFactory, body: bytes, code: str) -> None:
    server = await mx(smtp={"max_line_length": 1000})
    async with server.raw() as c:
        await _envelope(c)
        assert (await _bdat(c, message(subject="checks") + body, last=True))[0].startswith(code)
        await _envelope_again(c)
        assert (await _bdat(c, message(subject="fine"), last=True))[0].startswith("250")
    assert len(server.messages(ALICE)) == 1


async def _envelope_again(c: RawClient) -> None:
    assert (await c.cmd(f"MAIL FROM:<{SENDER}>"))[0].startswith("250")
    assert (await c.cmd(f"RCPT TO:<{ALICE}>"))[0].startswith("250")


async def test_submission_takes_bdat_after_auth_only(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.raw("submission") as c:
        await c.cmd("EHLO client.example")
        await c.starttls(server.client_tls)
        assert "CHUNKING" in [ln[4:] for ln in await c.cmd("EHLO client.example")]
        assert (await _bdat(c, b"Subject: x\r\n\r\nhi\r\n", last=True))[0].startswith("530 5.7.0")
        assert (await c.login())[0].startswith("235")
        assert (await c.cmd(f"MAIL FROM:<{sub_harness.ALICE}>"))[0].startswith("250")
        assert (await c.cmd(f"RCPT TO:<{BOB}>"))[0].startswith("250")
        msg = sub_harness.message()
        assert (await _bdat(c, msg, last=True))[0].startswith("250 2.0.0 Ok: queued as"), msg
