"""MX connection limits, timeouts and the bad-command limit, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time

from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, MxFactory, dot_stuff, message, wait_until

mx = harness.mx  # the fixture


async def test_per_ip_connection_limit_refuses_with_421_4_7_0_and_closes(mx: MxFactory) -> None:
    server = await mx(mx_listener={"per_ip_connections": 2})
    limits = server.ctx.limits
    async with server.raw() as a, server.raw() as b:
        await a.cmd("EHLO a.example")
        async with server.raw(greet=False) as c:
            [reply] = await c.reply()
            assert reply.startswith("421 4.7.0") and "too many connections" in reply
            assert await c.closed()
        assert limits.connections("mx", "127.0.0.1") == 2
        assert (await b.cmd("NOOP"))[0].startswith("250")  # the others still work
    await wait_until(lambda: limits.connections("mx") == 0)
    async with server.raw() as d:  # and a slot is free again
        assert (await d.cmd("EHLO d.example"))[-1].startswith("250 ")


async def test_listener_connection_limit_refuses_with_421(mx: MxFactory) -> None:
    server = await mx(mx_listener={"max_connections": 1, "per_ip_connections": 1})
    async with server.raw():
        async with server.raw(greet=False) as c:
            [reply] = await c.reply()
            assert reply.startswith("421 4.7.0")


async def _in_data(c: harness.RawClient) -> None:
    """Bring a session into DATA (354 sent): busy with a message, so it is never evicted."""
    await c.cmd("EHLO a.example")
    await c.cmd("MAIL FROM:<a@sender.test>")
    await c.cmd(f"RCPT TO:<{ALICE}>")
    assert (await c.cmd("DATA"))[0].startswith("354")


async def test_listener_connection_limit_counts_all_client_addresses_together(mx: MxFactory) -> None:
    # max_connections is the listener's limit, apart from the per-IP one: one connection from each of
    # three addresses (each below per_ip_connections) and the third is refused. (per_ip_connections
    # may not exceed max_connections in the config, so the addresses differ instead.) Both admitted
    # sessions are inside DATA, so neither may be evicted to make room.
    server = await mx(mx_listener={"max_connections": 2, "per_ip_connections": 2})
    limits = server.ctx.limits
    async with contextlib.AsyncExitStack() as first, server.raw(source="127.0.0.2") as b:
        a = await first.enter_async_context(server.raw(source="127.0.0.1"))
        await _in_data(a)
        await _in_data(b)
        async with server.raw(greet=False, source="127.0.0.3") as c:
            [reply] = await c.reply()
            assert reply.startswith("421 4.7.0") and "too many connections" in reply, reply
            assert await c.closed()
        assert limits.connections("mx", "127.0.0.3") == 0 and limits.connections("mx") == 2
        assert (await a.cmd(dot_stuff(message(subject="a")) + b"."))[0].startswith("250")  # still work
        assert (await b.cmd(dot_stuff(message(subject="b")) + b"."))[0].startswith("250")
        await _in_data(b)
        await first.aclose()  # one leaves ...
        await wait_until(lambda: limits.connections("mx") == 1)
        async with server.raw(source="127.0.0.3") as d:  # ... and the next client is served
            assert (await d.cmd("EHLO d.example"))[-1].startswith("250 ")
            assert limits.connections("mx") == 2
        assert (await b.cmd(dot_stuff(message(subject="b2")) + b"."))[0].startswith("250")
    await wait_until(lambda: limits.connections("mx") == 0)
    assert len(server.messages(ALICE)) == 3


async def test_connection_counts_return_to_zero_after_quit_reset_and_dropped_data(mx: MxFactory) -> None:
    server = await mx()
    limits = server.ctx.limits
    async with server.raw() as c:
        await c.cmd("QUIT")
    async with server.raw() as c:
        await c.cmd("EHLO x.example")
        await c.cmd("MAIL FROM:<a@sender.test>")
        await c.cmd(f"RCPT TO:<{ALICE}>")
        await c.cmd("DATA")
        await c.send(b"Subject: cut\r\n\r\npartial")  # then the client vanishes mid-DATA
    await wait_until(lambda: limits.connections("mx") == 0)
    assert server.messages(ALICE) == []


async def test_idle_timeout_says_421_4_4_2_and_closes(mx: MxFactory) -> None:
    server = await mx(mx_listener={"idle_timeout": 1})
    async with server.raw() as c:
        await c.cmd("EHLO x.example")
        start = time.monotonic()
        [reply] = await c.reply(wait=5)
        assert reply.startswith("421 4.4.2"), reply
        assert await c.closed()
        assert 0.8 < time.monotonic() - start < 4
    await wait_until(lambda: server.ctx.limits.connections("mx") == 0)


async def test_stalled_data_times_out_after_command_timeout(mx: MxFactory) -> None:
    server = await mx(mx_listener={"idle_timeout": 30}, smtp={"command_timeout": 1})
    async with server.raw() as c:
        await c.cmd("EHLO x.example")
        await c.cmd("MAIL FROM:<a@sender.test>")
        await c.cmd(f"RCPT TO:<{ALICE}>")
        await c.cmd("DATA")
        await c.send(b"Subject: slow\r\n")
        start = time.monotonic()
        [reply] = await c.reply(wait=10)
        assert reply.startswith("421 4.4.2"), reply
        assert time.monotonic() - start < 5
    assert server.messages(ALICE) == []


async def test_data_that_keeps_flowing_is_not_cut_by_command_timeout(mx: MxFactory) -> None:
    server = await mx(smtp={"command_timeout": 1})
    async with server.raw() as c:
        await c.cmd("EHLO x.example")
        await c.cmd("MAIL FROM:<a@sender.test>")
        await c.cmd(f"RCPT TO:<{ALICE}>")
        await c.cmd("DATA")
        await c.send(b"From: a@sender.test\r\nSubject: slow but steady\r\n\r\n")
        for i in range(5):  # 2.5 s in all, a line every 0.5 s
            await asyncio.sleep(0.5)
            await c.send(f"line {i}\r\n".encode())
        [reply] = await c.cmd(b".")
        assert reply.startswith("250 2.0.0"), reply


async def test_too_many_bad_commands_gets_421_and_disconnect(mx: MxFactory) -> None:
    server = await mx(smtp={"max_bad_commands": 3})
    async with server.raw() as c:
        await c.cmd("EHLO x.example")
        for verb in ("FOO", "BAR", "BAZ"):
            [reply] = await c.cmd(verb)
            assert reply.startswith("500 5.5.2"), reply
        [reply] = await c.cmd("QUX")
        assert reply.startswith("421 4.7.0"), reply
        assert await c.closed()


async def test_unknown_commands_beyond_aiosmtpds_budget_of_five_follow_our_limit(mx: MxFactory) -> None:
    server = await mx(smtp={"max_bad_commands": 8})
    async with server.raw() as c:
        for i in range(8):
            [reply] = await c.cmd(f"X{i}")
            assert reply.startswith("500 5.5.2"), (i, reply)
        [reply] = await c.cmd("X9")
        assert reply.startswith("421 4.7.0"), reply


async def test_refused_recipients_count_as_errors(mx: MxFactory) -> None:
    # Directory harvesting: each unknown user is a 550, and they add up.
    server = await mx(smtp={"max_bad_commands": 3})
    async with server.raw() as c:
        await c.cmd("EHLO x.example")
        await c.cmd("MAIL FROM:<a@sender.test>")
        for name in ("aa", "bb", "cc"):
            assert (await c.cmd(f"RCPT TO:<{name}@example.test>"))[0].startswith("550 5.1.1")
        assert (await c.cmd("RCPT TO:<dd@example.test>"))[0].startswith("421 4.7.0")


async def test_a_refused_message_does_not_count_as_a_bad_command(mx: MxFactory) -> None:
    server = await mx(smtp={"max_bad_commands": 1, "max_message_size": 1024})
    async with server.raw() as c:
        await c.cmd("EHLO x.example")
        for _ in range(3):
            await c.cmd("MAIL FROM:<a@sender.test>")
            await c.cmd(f"RCPT TO:<{ALICE}>")
            await c.cmd("DATA")
            [reply] = await c.cmd(dot_stuff(message(body="x" * 2000 + "\r\n")) + b".")
            assert reply.startswith("552 5.3.4"), reply
        assert (await c.cmd("NOOP"))[0].startswith("250")
