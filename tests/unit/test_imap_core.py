"""Whole IMAP dialogues through the sans-IO session (imap/session.py), without a socket.

The client's raw bytes go into `Session.receive_data`; the events `next_event()` returns are what a
shell would carry out. `Dialogue` plays the shell: it collects every Send, stops at a Wait (the
session needs input) or a Close, and records LoggedIn and StartTls. The store is real (a Maildir in
tmp_path), and so is the login path (users file, password check).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from mailhaven.imap import session as core
from mailhaven.imap.session import Close, LoggedIn, Send, Session, StartCompress, StartTls, Wait
from tests.fixtures_base import PASSWORD

ALICE = "alice@example.test"


def message(n: int, body: bytes = b"hello\r\n") -> bytes:
    return (b"From: Bob <bob@example.org>\r\nTo: Alice <alice@example.test>\r\nSubject: message %d\r\n"
            b"Message-ID: <m%d@example.org>\r\n\r\n" % (n, n)) + body


class Dialogue:
    """The shell's side of a session, in memory."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.wait: Wait | None = None
        self.closed: str | None = None
        self.logged_in: str | None = None
        self.tls_requests = 0
        self.compress_requests = 0
        self.sends: list[bytes] = []  # every Send of the last run, one entry per event
        self.greeting = session.greeting()

    async def run(self) -> bytes:
        """Run the session until it waits for input or closes; everything it sent meanwhile."""
        self.sends = []
        while True:
            ev = await self.session.next_event()
            if isinstance(ev, Send):
                self.sends.append(ev.data)
            elif isinstance(ev, Wait):
                self.wait = ev
                break
            elif isinstance(ev, LoggedIn):
                self.logged_in = ev.user
            elif isinstance(ev, StartTls):
                self.tls_requests += 1
                self.session.tls_started()  # as if the handshake succeeded
            elif isinstance(ev, StartCompress):
                self.compress_requests += 1
            else:
                assert isinstance(ev, Close)
                self.closed = ev.reason
                break
        return b"".join(self.sends)

    async def send(self, data: bytes) -> bytes:
        """The client sends `data` (any number of commands, or part of one)."""
        self.session.receive_data(data)
        return await self.run()

    async def command(self, line: bytes) -> list[bytes]:
        """One command line; the response lines."""
        out = await self.send(line + b"\r\n")
        return out.split(b"\r\n")[:-1]


@pytest.fixture
def cfg(make_config: Callable[..., Any]) -> Any:
    return make_config()


@pytest.fixture
async def ctx(cfg: Any) -> AsyncIterator[Any]:
    from mailhaven.auth.users import Directory, UsersFile
    from mailhaven.store import Store

    store = Store(cfg.mail_root, hostname=cfg.hostname, fsync=False)
    await store.start()
    try:
        yield SimpleNamespace(config=cfg, store=store, directory=Directory(cfg, UsersFile.load(cfg.users_file)))
    finally:
        await store.close()


async def open_session(ctx: Any, *, loopback: bool = True, tls: bool = False,
                       starttls: bool = False) -> Dialogue:
    session = Session(ctx, listener="imap", ip="192.0.2.1", loopback=loopback, tls_active=tls,
                      starttls_offered=starttls, config=ctx.config)
    d = Dialogue(session)
    assert await d.run() == b""
    assert d.wait is not None and d.wait.changes is None
    return d


async def logged_in(ctx: Any, **kw: Any) -> Dialogue:
    d = await open_session(ctx, **kw)
    lines = await d.command(b"a1 LOGIN " + ALICE.encode() + b" " + PASSWORD.encode())
    assert lines[-1].startswith(b"a1 OK [CAPABILITY "), lines
    return d


async def selected(ctx: Any, n: int) -> Dialogue:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    for i in range(n):
        await mb.append(message(i + 1))
    d = await logged_in(ctx)
    lines = await d.command(b"s1 SELECT INBOX")
    assert lines[-1] == b"s1 OK [READ-WRITE] Select completed.", lines
    return d


# -- login, select, fetch, logout ---------------------------------------------------------------------


async def test_a_whole_session_login_select_fetch_logout_without_a_socket(ctx: Any) -> None:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    await mb.append(message(1))
    await mb.append(message(2))
    d = await open_session(ctx)
    assert d.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    assert b"AUTH=PLAIN" in d.greeting

    lines = await d.command(b"a1 LOGIN " + ALICE.encode() + b" " + PASSWORD.encode())
    assert re.fullmatch(rb"a1 OK \[CAPABILITY IMAP4rev1 [^\]]*\] Logged in", lines[-1])
    assert d.logged_in == ALICE

    lines = await d.command(b"a2 SELECT INBOX")
    assert b"* 2 EXISTS" in lines and b"* 2 RECENT" in lines
    assert lines[-1] == b"a2 OK [READ-WRITE] Select completed."

    out = await d.send(b"a3 FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
    assert out == (b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {22}\r\nSubject: message 1\r\n\r\n)\r\n"
                   b"* 2 FETCH (UID 2 BODY[HEADER.FIELDS (SUBJECT)] {22}\r\nSubject: message 2\r\n\r\n)\r\n"
                   b"a3 OK Fetch completed.\r\n")

    assert await d.command(b"a4 LOGOUT") == [b"* BYE Logging out", b"a4 OK Logout completed."]
    assert d.closed == "logout"
    assert isinstance(await d.session.next_event(), Close)  # and it stays closed


async def test_a_wrong_password_is_no_authenticationfailed_and_does_not_log_in(ctx: Any) -> None:
    d = await open_session(ctx)
    lines = await d.command(b"a1 LOGIN " + ALICE.encode() + b" wrong")
    assert lines == [b"a1 NO [AUTHENTICATIONFAILED] Authentication failed."]
    assert d.logged_in is None
    assert await d.command(b"a2 SELECT INBOX") == [b"a2 BAD SELECT is not allowed before login."]


async def test_authenticate_plain_reads_its_response_line_after_a_continuation(ctx: Any) -> None:
    d = await open_session(ctx)
    assert await d.send(b"a1 AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert d.wait is not None and d.logged_in is None
    creds = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + PASSWORD.encode())
    lines = (await d.send(creds + b"\r\n")).split(b"\r\n")
    assert lines[0].startswith(b"a1 OK [CAPABILITY ")
    assert d.logged_in == ALICE


async def test_authenticate_cancelled_with_a_star_is_bad(ctx: Any) -> None:
    d = await open_session(ctx)
    assert await d.send(b"a1 AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert await d.send(b"*\r\n") == b"a1 BAD Authentication aborted by client.\r\n"
    assert d.logged_in is None


# -- APPEND with literals --------------------------------------------------------------------------


async def test_append_with_a_synchronising_literal_waits_for_the_go_ahead(ctx: Any) -> None:
    d = await selected(ctx, 1)
    msg = message(7)
    # RFC 3501 §7.5: the client sends {n}, waits for "+", then the octets.
    assert await d.send(b"a1 APPEND INBOX (\\Flagged) {%d}\r\n" % len(msg)) == b"+ Ready for literal data\r\n"
    assert d.wait is not None
    out = await d.send(msg + b"\r\n")
    assert re.fullmatch(rb"\* 2 EXISTS\r\n\* 2 RECENT\r\na1 OK \[APPENDUID \d+ 2\] Append completed.\r\n", out), out
    fetched = await d.send(b"a2 FETCH 2 (FLAGS BODY.PEEK[])\r\n")
    assert fetched == b"* 2 FETCH (FLAGS (\\Flagged \\Recent) BODY[] {%d}\r\n%s)\r\na2 OK Fetch completed.\r\n" % (
        len(msg), msg)


async def test_append_with_a_non_synchronising_literal_gets_no_continuation(ctx: Any) -> None:
    d = await selected(ctx, 1)
    msg = message(8)
    # RFC 7888 LITERAL+: {n+} and the octets in one go; no "+" in between.
    out = await d.send(b"a1 APPEND INBOX {%d+}\r\n%s\r\n" % (len(msg), msg))
    assert not out.startswith(b"+")
    assert out.endswith(b" 2] Append completed.\r\n")


async def test_a_literal_that_arrives_one_octet_at_a_time_is_the_same_command(ctx: Any) -> None:
    d = await selected(ctx, 0)
    msg = message(9)
    out = b""
    for i, octet in enumerate(b"a1 APPEND INBOX {%d+}\r\n%s\r\n" % (len(msg), msg)):
        out += await d.send(bytes([octet]))
        if i < len(msg):
            assert d.wait is not None
    assert out.endswith(b" 1] Append completed.\r\n")
    assert (await d.command(b"a2 FETCH 1 BODY.PEEK[TEXT]"))[0] == b"* 1 FETCH (BODY[TEXT] {7}"


async def test_before_login_a_big_literal_is_refused_after_login_it_is_a_message(ctx: Any) -> None:
    big = b"x" * (core.PREAUTH_MAX_LITERAL + 1)
    d = await open_session(ctx)
    assert await d.send(b"a1 LOGIN {%d}\r\n" % len(big)) == b"a1 BAD Literal too big\r\n"
    d = await selected(ctx, 0)
    msg = message(1, body=big + b"\r\n")
    assert await d.send(b"a2 APPEND INBOX {%d}\r\n" % len(msg)) == b"+ Ready for literal data\r\n"
    assert (await d.send(msg + b"\r\n")).endswith(b"Append completed.\r\n")


# -- IDLE ------------------------------------------------------------------------------------------


async def test_idle_reports_a_delivery_that_arrives_while_idling_and_ends_with_done(ctx: Any) -> None:
    d = await selected(ctx, 1)
    assert await d.send(b"a1 IDLE\r\n") == b"+ idling\r\n"
    wait = d.wait
    assert wait is not None and wait.changes is not None and wait.timeout
    await ctx.store.deliver([(ALICE, "INBOX")], message(2))
    await asyncio.wait_for(wait.changes.wait(), 5)  # what the shell waits on besides input
    assert await d.run() == b"* 2 EXISTS\r\n* 2 RECENT\r\n"
    assert d.wait is not None and d.wait.changes is not None  # still idling
    assert await d.send(b"DONE\r\n") == b"a1 OK Idle completed.\r\n"
    assert d.wait is not None and d.wait.changes is None
    assert (await d.command(b"a2 FETCH 2 (UID)"))[0] == b"* 2 FETCH (UID 2)"


async def test_idle_ended_by_anything_but_done_is_bad(ctx: Any) -> None:
    d = await selected(ctx, 0)
    assert await d.send(b"a1 IDLE\r\n") == b"+ idling\r\n"
    assert await d.send(b"a2 NOOP\r\n") == b"a1 BAD Expected DONE.\r\n"


async def test_idle_timer_without_news_sends_nothing(ctx: Any) -> None:
    d = await selected(ctx, 1)
    assert await d.send(b"a1 IDLE\r\n") == b"+ idling\r\n"
    assert await d.run() == b""  # the shell's timeout fired: nothing changed, nothing to say


# -- STORE, EXPUNGE ----------------------------------------------------------------------------------


async def test_store_and_expunge_report_flags_and_the_removed_message(ctx: Any) -> None:
    d = await selected(ctx, 3)
    assert await d.command(b"a1 STORE 2 +FLAGS (\\Deleted)") == [
        b"* 2 FETCH (FLAGS (\\Deleted \\Recent))", b"a1 OK Store completed."]
    assert await d.command(b"a2 STORE 1 +FLAGS.SILENT (\\Seen)") == [b"a2 OK Store completed."]
    assert await d.command(b"a3 EXPUNGE") == [b"* 2 EXPUNGE", b"a3 OK Expunge completed."]
    assert await d.command(b"a4 FETCH 1:* (UID FLAGS)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))", b"* 2 FETCH (UID 3 FLAGS (\\Recent))", b"a4 OK Fetch completed."]


# -- errors ------------------------------------------------------------------------------------------


async def test_a_malformed_command_is_bad_and_the_session_goes_on(ctx: Any) -> None:
    d = await selected(ctx, 1)
    assert await d.command(b"a1 FETCH") == [b"a1 BAD Missing arguments"]
    assert (await d.command(b"a2 FETCH 1:* (NOSUCHITEM)"))[0].startswith(b"a2 BAD ")
    assert await d.command(b"a3 FETCH 5 (UID)") == [b"a3 BAD Error in IMAP command FETCH: Invalid messageset"]
    assert await d.command(b"a4 NOOP") == [b"a4 OK NOOP completed."]
    assert d.session.bad == 3 and d.closed is None


async def test_too_many_bad_commands_end_the_session_with_bye(ctx: Any) -> None:
    d = await open_session(ctx)
    limit = ctx.config.imap.max_bad_commands
    out = await d.send(b"".join(b"x%d BOGUS\r\n" % i for i in range(limit + 5)))
    assert out.endswith(b"* BYE Too many invalid IMAP commands.\r\n")
    assert out.count(b" BAD ") == limit
    assert d.closed == "too many bad commands"


# -- pipelining, output batching, STARTTLS -------------------------------------------------------------


async def test_pipelined_commands_are_answered_in_order(ctx: Any) -> None:
    d = await selected(ctx, 2)
    out = await d.send(b"a1 NOOP\r\na2 FETCH 2 (UID)\r\na3 STATUS INBOX (MESSAGES)\r\n")
    assert out == (b"a1 OK NOOP completed.\r\n* 2 FETCH (UID 2)\r\na2 OK Fetch completed.\r\n"
                   b"* STATUS INBOX (MESSAGES 2)\r\na3 OK Status completed.\r\n")


async def test_a_large_fetch_is_handed_out_in_batches_so_the_shell_can_apply_flow_control(
        ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d = await selected(ctx, 20)
    monkeypatch.setattr(core, "OUTPUT_BATCH", 300)  # each FETCH line here is about 160 octets
    out = await d.send(b"a1 FETCH 1:* (BODY.PEEK[])\r\n")
    assert out.count(b" FETCH (BODY[] {") == 20 and out.endswith(b"a1 OK Fetch completed.\r\n")
    assert len(d.sends) >= 8  # not one Send with everything
    assert all(len(s) < 300 + 200 for s in d.sends)


async def test_starttls_drops_commands_pipelined_before_the_handshake(ctx: Any) -> None:
    d = await open_session(ctx, loopback=False, starttls=True)
    assert b"LOGINDISABLED" in d.greeting and b"STARTTLS" in d.greeting
    # RFC 3501 §6.2.1 (CVE-2011-0411 class): the LOGIN sent in plaintext after STARTTLS is never run.
    out = await d.send(b"a1 STARTTLS\r\na2 LOGIN " + ALICE.encode() + b" " + PASSWORD.encode() + b"\r\n")
    assert out == b"a1 OK Begin TLS negotiation now.\r\n"
    assert d.tls_requests == 1 and d.logged_in is None and d.wait is not None
    caps = await d.command(b"a3 CAPABILITY")
    assert b"STARTTLS" not in caps[0] and b"AUTH=PLAIN" in caps[0]
    assert (await d.command(b"a4 LOGIN " + ALICE.encode() + b" " + PASSWORD.encode()))[-1].startswith(b"a4 OK ")
