"""Hostile SMTP clients: garbage, huge lines, NUL bytes, undecodable bytes, broken TLS, header
injection through HELO. Each gets protocol errors (never a traceback, never a hang), and the server
keeps serving other clients (RFC 5321 §7.9: a server must survive what any client sends).
"""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from mailhaven.message.headers import field_value
from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, MxFactory, MxServer, message, wait_until

mx = harness.mx  # the fixture


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


async def _still_delivers(server: MxServer, subject: str = "after") -> None:
    replies = await server.send("sender@sender.test", [ALICE], message(subject=subject))
    assert replies[-1][0].startswith("250 2.0.0"), replies
    assert any(f"Subject: {subject}".encode() in m for m in server.messages(ALICE))


async def test_random_garbage_then_another_client_delivers(mx: MxFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = await mx()
    rng = random.Random(1234)
    for _ in range(5):
        async with server.raw() as c:
            await c.send(bytes(rng.randrange(256) for _ in range(20_000)) + b"\r\n")
            assert await c.closed(wait=10)  # the random bytes hold many LFs: 421 after too many errors
    await _still_delivers(server)
    _no_tracebacks(caplog)


async def test_huge_command_line_is_refused_and_the_session_continues(mx: MxFactory,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.send(b"EHLO " + b"a" * 1_000_000 + b"\r\n")
        [reply] = await c.reply()
        assert reply.startswith("500 5.5.2"), reply
        [reply] = await c.cmd("MAIL FROM:<" + "b" * 5000 + "@sender.test>")
        assert reply.startswith("500 5.5.2"), reply
        assert (await c.cmd("EHLO ok.example"))[-1].startswith("250 ")
        assert (await c.cmd("NOOP"))[0].startswith("250")
    await _still_delivers(server)
    _no_tracebacks(caplog)


async def test_huge_line_without_newline_then_disconnect(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.send(b"X" * 5_000_000)
    await _still_delivers(server)


@pytest.mark.parametrize("line", [
    b"\x00\x00\x00", b"EHLO \x00", b"MAIL\x00FROM:<a@b.test>", b"MAIL FROM:<a\x00@sender.test>",
    b"MAIL FROM:<\xff\xfe@sender.test>", b"RCPT TO:<alice@example.test\x00>", b"\xc3\x28 HELO",
    b"DATA\x00", b"STARTTLS\x00", b"   ", b"\t", b"QUIT extra",
])
async def test_nul_and_undecodable_bytes_get_protocol_errors(mx: MxFactory, line: bytes,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO x.example")
        [reply] = await c.cmd(line)
        assert reply[:1] in ("4", "5"), reply
        assert (await c.cmd("NOOP"))[0].startswith("250")
    _no_tracebacks(caplog)


async def test_nul_bytes_and_8bit_garbage_in_data_do_not_break_anything(mx: MxFactory,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    server = await mx()
    body = b"From: a@sender.test\r\nSubject: nul\x00\xff\r\n\r\n\x00\x01\x02\xfe\xff\r\n"
    async with server.raw() as c:
        await c.cmd("EHLO x.example")
        await c.cmd("MAIL FROM:<a@sender.test>")
        await c.cmd(f"RCPT TO:<{ALICE}>")
        await c.cmd("DATA")
        [reply] = await c.cmd(body + b".")
        assert reply[:1] in ("2", "5"), reply
    await _still_delivers(server)
    _no_tracebacks(caplog)


async def test_garbage_instead_of_a_tls_handshake(mx: MxFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO x.example")
        [reply] = await c.cmd("STARTTLS")
        assert reply.startswith("220 2.0.0"), reply
        await c.send(b"\x16\x03\x01\x00\x05hello this is not TLS\r\n" * 10)
        assert await c.closed(wait=10)
    await _still_delivers(server)
    await asyncio.sleep(0.1)
    assert server.ctx.limits.connections("mx") == 0
    _no_tracebacks(caplog)


async def test_helo_name_cannot_inject_header_fields(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("HELO evil(x)\\ X-Injected: yes")
        await c.cmd("MAIL FROM:<a@sender.test>")
        await c.cmd(f"RCPT TO:<{ALICE}>")
        await c.cmd("DATA")
        [reply] = await c.cmd(harness.dot_stuff(message()) + b".")
        assert reply.startswith("250"), reply
    [msg] = server.messages(ALICE)
    received = field_value(msg, "Received") or ""
    assert received.startswith("from [127.0.0.1] (helo=evil?x?? X-Injected: yes) by localhost"), received
    assert field_value(msg, "X-Injected") is None


async def test_many_short_connections_leave_no_counts_behind(mx: MxFactory) -> None:
    server = await mx(mx_listener={"per_ip_connections": 5})

    async def hit() -> None:
        async with server.raw(greet=False) as c:
            await c.send(b"EHLO x\r\nQUIT\r\n")
            assert await c.closed(wait=10)

    for _ in range(4):
        await asyncio.gather(*(hit() for _ in range(20)))
    await wait_until(lambda: server.ctx.limits.connections("mx") == 0)
    await _still_delivers(server)


async def test_client_that_never_reads_does_not_block_others(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        # Thousands of pipelined commands whose replies we never read.
        await c.send(b"NOOP\r\n" * 1000)
        await _still_delivers(server)
