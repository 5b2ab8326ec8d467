"""IDLE (RFC 2177) with the whole server running (app.run: MX, POP3 and IMAP listeners over one Store,
DNS from the test DNS server, which has no records: SPF and DMARC are "none"):

- a message delivered by smtplib to the MX port reaches an IDLEing IMAP client as `* n EXISTS`
  within one second of the MX's 250;
- a message RETRieved over POP3 gets \\Seen when the POP3 session QUITs, and an IMAP session sees
  that as FETCH FLAGS, whether it is IDLEing or sending NOOPs (RFC 3501 §7.4.1, issue 6 point 4).
"""

from __future__ import annotations

import asyncio
import poplib
import smtplib
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.fixtures_base import PASSWORD
from tests.fixtures_server import add_user, running_app
from tests.integration.test_imap_server import ALICE, make_message

SENDER = "someone@example.net"


class AsyncImap:
    """A line-level IMAP client on the test's event loop (the server runs on the same loop, so the
    client must not block it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def line(self, wait: float = 10) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), wait)
        if not line:
            raise EOFError("server closed the connection")
        return line

    async def cmd(self, text: bytes, tag: bytes = b"t") -> list[bytes]:
        self.writer.write(tag + b" " + text + b"\r\n")
        out = []
        while True:
            out.append(await self.line())
            if out[-1].startswith(tag + b" "):
                return out

    async def idle(self) -> None:
        self.writer.write(b"i IDLE\r\n")
        assert await self.line() == b"+ idling\r\n"

    async def done(self) -> list[bytes]:
        self.writer.write(b"DONE\r\n")
        out = []
        while not (out and out[-1].startswith(b"i ")):
            out.append(await self.line())
        return out


@asynccontextmanager
async def imap_selected(port: int, tls: ssl.SSLContext) -> AsyncIterator[AsyncImap]:
    """Logged in as alice over implicit TLS (993-style listener) with INBOX selected."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname="localhost")
    c = AsyncImap(reader, writer)
    try:
        assert (await c.line()).startswith(b"* OK")
        assert (await c.cmd(f'LOGIN {ALICE} "{PASSWORD}"'.encode()))[-1].startswith(b"t OK")
        assert (await c.cmd(b"SELECT INBOX"))[-1].startswith(b"t OK [READ-WRITE]")
        yield c
    finally:
        writer.close()


def smtp_deliver(port: int, subject: str) -> float:
    """One message to alice through the MX (plain smtplib); returns the monotonic time of the 250."""
    msg = (f"From: Someone <{SENDER}>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject.replace(' ', '-')}@example.net>\r\n\r\nHello over SMTP.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.net", timeout=20) as s:
        refused = s.sendmail(SENDER, [ALICE], msg)
        accepted = time.monotonic()
        assert refused == {}
    return accepted


async def test_smtp_delivery_reaches_an_idling_imap_client_within_one_second(
        app_config: Any, client_ssl_context: ssl.SSLContext) -> None:
    add_user(app_config, ALICE, PASSWORD)
    async with running_app(app_config) as ctx:
        await ctx.store.deliver([(ALICE, "INBOX")], make_message(1))
        async with imap_selected(ctx.port("imaps"), client_ssl_context) as c:
            await c.idle()
            for n in (2, 3):  # and again: IDLE keeps watching after the first report
                sending = asyncio.create_task(asyncio.to_thread(smtp_deliver, ctx.port("mx"), f"via mx {n}"))
                line = await c.line(wait=20)  # may come before the client has read the 250
                got = time.monotonic()
                accepted = await sending
                assert line == b"* %d EXISTS\r\n" % n
                assert got - accepted < 1.0, got - accepted
                assert await c.line(wait=1) == b"* %d RECENT\r\n" % n
            assert (await c.done())[-1].startswith(b"i OK")
            lines = await c.cmd(b"FETCH 2:3 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            text = b"".join(lines)
            assert b"Subject: via mx 2\r\n" in text and b"Subject: via mx 3\r\n" in text
            assert lines[-1].startswith(b"t OK")


def pop3_retr_and_quit(port: int, tls: ssl.SSLContext, which: int) -> bytes:
    p = poplib.POP3_SSL("127.0.0.1", port, context=tls, timeout=10)
    try:
        p.user(ALICE)
        p.pass_(PASSWORD)
        _, lines, _ = p.retr(which)
    finally:
        p.quit()  # the UPDATE state: RETRieved messages get \Seen now (as Dovecot)
    return b"\r\n".join(lines)


async def test_a_pop3_retr_shows_as_fetch_flags_seen_to_idling_and_nooping_imap_sessions(
        app_config: Any, client_ssl_context: ssl.SSLContext) -> None:
    add_user(app_config, ALICE, PASSWORD)
    async with running_app(app_config) as ctx:
        for n in (1, 2):
            await ctx.store.deliver([(ALICE, "INBOX")], make_message(n))
        async with imap_selected(ctx.port("imaps"), client_ssl_context) as idler, \
                imap_selected(ctx.port("imaps"), client_ssl_context) as nooper:
            await idler.idle()
            data = await asyncio.to_thread(pop3_retr_and_quit, ctx.port("pop3s"), client_ssl_context, 2)
            assert b"Subject: message 2" in data
            # The idler took \Recent for both messages when it selected first (RFC 3501 §2.3.2).
            assert await idler.line(wait=2) == b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent))\r\n"
            assert (await idler.done())[-1].startswith(b"i OK")
            assert await nooper.cmd(b"NOOP") == [b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n", b"t OK NOOP completed.\r\n"]
            # message 1 was not retrieved: unchanged for both sessions
            assert (await nooper.cmd(b"FETCH 1:2 (FLAGS)"))[:2] == [b"* 1 FETCH (FLAGS ())\r\n",
                                                                   b"* 2 FETCH (FLAGS (\\Seen))\r\n"]
