"""The MX checked from outside against RFC 5321 / 1869 / 2034 / 2920 / 3207 / 6531, and against what
Postfix does where the RFCs leave a choice (found by probing `mailhaven serve --dev` and a Debian
Postfix side by side; see the audit report). Each test is one behaviour; tests marked xfail(strict)
are defects in files owned elsewhere (smtp/server.py), with the fix named in the reason.

Replies are compared by code and enhanced code (RFC 3463), never by free text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.auth.users import Directory, UsersFile
from mailhaven.message.headers import field_value
from mailhaven.smtp.server import parse_esmtp_params
from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import (
    ALICE,
    BOB,
    MxFactory,
    MxServer,
    RawClient,
    dot_stuff,
    message,
    wait_until,
)

mx = harness.mx  # the fixture

SENDER = "sender@sender.test"


async def _still_delivers(server: MxServer, subject: str = "after") -> None:
    """RFC 5321 §7.9: whatever one client did, the next one still gets its mail delivered."""
    replies = await server.send(SENDER, [ALICE], message(subject=subject))
    assert replies[-1][0].startswith("250 2.0.0"), replies
    assert any(f"Subject: {subject}".encode() in m for m in server.messages(ALICE))


def _without_postmaster_alias(server: MxServer) -> None:
    """The harness adds postmaster@example.test -> alice; a users file from before init and user add
    wrote postmaster aliases has no such alias."""
    cfg = server.ctx.config
    with UsersFile.edit(cfg.users_file) as uf:
        uf.delete_alias("postmaster@example.test")
    server.ctx.directory = Directory.load(cfg)
    assert server.ctx.directory.resolve("postmaster@example.test") is None


async def _starttls(c: RawClient, ctx: ssl.SSLContext) -> None:
    await c.writer.start_tls(ctx, server_hostname="localhost")


# --- commands and their order (RFC 5321 §4.1.4, §4.3.2; RFC 2034 §3) ------------------------------


@pytest.mark.parametrize(("line", "code"), [
    ("RCPT TO:<alice@example.test>", "503 5.5.1"),  # RCPT before MAIL
    ("DATA", "503 5.5.1"),  # DATA before MAIL
    ("NOOP", "250 2.0.0"),
    ("NOOP ignored argument", "250 2.0.0"),  # RFC 5321 §4.1.1.9: the parameter is ignored
    ("RSET", "250 2.0.0"),
    ("VRFY alice", "252 2.0.0"),  # RFC 5321 §3.5.3: 252 when we will not say; Postfix the same
    ("VRFY", "501 5.5.4"),
    ("EXPN staff", "502 5.5.1"),  # RFC 5321 §3.5.2: EXPN may be disabled
    ("FROB", "500 5.5.2"),  # RFC 5321 §4.2.4 unrecognised command
    ("QUIT now", "501 5.5.4"),  # RFC 5321 §4.1.1.10: QUIT takes no argument
])
async def test_command_outside_a_transaction_gets_its_rfc_reply(mx: MxFactory, line: str, code: str) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd(line)
        assert reply.startswith(code), reply
        assert (await c.cmd("NOOP"))[0].startswith("250")


@pytest.mark.parametrize(("line", "code"), [
    ("EHLO", "501"), ("HELO", "501"),  # RFC 5321 §4.1.1.1: the domain is required
    ("EHLO [127.0.0.1]", "250"), ("EHLO [IPv6:::1]", "250"),  # address literals (RFC 5321 §4.1.3)
    ("EHLO not_a_valid_name!", "250"),  # accepted, as Postfix does (RFC 5321 §4.1.4: no refusal on it)
    ("EHLO bad\x01name", "501 5.5.4"),  # but not control characters (they would reach Received)
])
async def test_ehlo_and_helo_arguments(mx: MxFactory, line: str, code: str) -> None:
    server = await mx()
    async with server.raw() as c:
        reply = await c.cmd(line)
        assert reply[0].startswith(code), reply
        assert (await c.cmd("NOOP"))[0].startswith("250")


async def test_data_before_rcpt_and_nested_mail_are_503(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        assert (await c.cmd(f"MAIL FROM:<{SENDER}>"))[0].startswith("250 2.1.0")
        [reply] = await c.cmd("DATA")
        assert reply.startswith("503 5.5.1"), reply  # RFC 5321 §3.3 (Postfix: 554 5.5.1, also allowed)
        [reply] = await c.cmd(f"MAIL FROM:<{SENDER}>")
        assert reply.startswith("503 5.5.1"), reply
        assert (await c.cmd("RSET"))[0].startswith("250")
        assert (await c.cmd(f"MAIL FROM:<{SENDER}>"))[0].startswith("250 2.1.0")  # RSET ended it


@pytest.mark.parametrize(("params", "code"), [
    ("SIZE=1000", "250 2.1.0"),
    ("BODY=8BITMIME", "250 2.1.0"),
    ("BODY=7BIT", "250 2.1.0"),
    ("body=8bitmime", "250 2.1.0"),  # RFC 5321 §2.4: keywords are case-insensitive
    ("SMTPUTF8", "250 2.1.0"),
    ("SIZE=999999999999", "552 5.3.4"),  # RFC 1870 §6.2
    ("SIZE=abc", "501 5.5.4"),
    ("BODY=BINARYMIME", "501 5.5.4"),  # BINARYMIME is not offered
    ("RET=HDRS", "250 2.1.0"),  # DSN (RFC 3461 §4.3)
    ("XRET=HDRS", "555 5.5.4"),  # RFC 5321 §4.1.1.11: parameter we do not know
    ("XFOO=bar", "555 5.5.4"),
    ("X-FOO=bar", "555 5.5.4"),  # RFC 5321 §4.1.2: "-" inside an esmtp-keyword
    ("-XFOO=bar", "501 5.5.4"),  # a keyword starts with a letter or digit
    ("XFOO=", "501 5.5.4"),  # an esmtp-value is not empty
    ("XFOO=a=b", "501 5.5.4"),  # nor holds "="
])
async def test_mail_parameters(mx: MxFactory, params: str, code: str) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd(f"MAIL FROM:<{SENDER}> {params}")
        assert reply.startswith(code), reply


@given(st.lists(st.text(min_size=1, max_size=12).filter(lambda t: " " not in t), max_size=4))
def test_esmtp_parameter_grammar_never_raises_and_keeps_well_formed_keywords(params: list[str]) -> None:
    """RFC 5321 §4.1.2: esmtp-keyword ["=" esmtp-value]; anything else is a syntax error (None)."""
    parsed = parse_esmtp_params(params)
    ok = all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*(=[^=\x00-\x20\x7f]+)?", p) for p in params)
    if parsed is not None:
        assert ok and set(parsed) == {p.partition("=")[0] for p in params}
    elif all(p.isascii() for p in params):
        assert not ok


async def test_unknown_rcpt_parameter_is_555_and_the_address_is_not_taken(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        [reply] = await c.cmd(f"RCPT TO:<{ALICE}> XNOTIFY=NEVER")
        assert reply.startswith("555 5.5.4"), reply
        [reply] = await c.cmd("DATA")
        assert reply.startswith("503 5.5.1"), reply


async def test_help_knows_the_transaction_commands(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd("HELP")
        assert reply.startswith("250"), reply
        for verb in ("EHLO", "MAIL", "RCPT", "DATA"):
            assert verb in reply.split(), reply
        [reply] = await c.cmd("HELP MAIL")
        assert reply.startswith("250"), reply


async def test_command_line_of_512_octets_is_taken_and_a_longer_one_refused(mx: MxFactory) -> None:
    """RFC 5321 §4.5.3.1.4: 512 octets with CRLF; we allow that much plus the CRLF (Postel), and
    refuse longer lines with 500 5.5.2 and go on."""
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd("NOOP " + "x" * 505)  # 510 octets + CRLF
        assert reply.startswith("250"), reply
        [reply] = await c.cmd("NOOP " + "x" * 600)
        assert reply.startswith("500 5.5.2"), reply
        assert (await c.cmd("NOOP"))[0].startswith("250")


# --- addresses (RFC 5321 §4.1.2, §4.5.1; RFC 6531 §3.4) ------------------------------------------


@pytest.mark.parametrize("rcpt", ["<postmaster>", "<postmaster@example.test>", "<Postmaster@EXAMPLE.test>",
                                  "<POSTMASTER>"])
async def test_postmaster_is_accepted_without_an_alias(mx: MxFactory, rcpt: str) -> None:
    """RFC 5321 §4.5.1: postmaster (any case, bare or at each of our domains) MUST be accepted. An
    older users file has no postmaster alias: the mail goes, implicitly, to the first user of that
    domain (Directory.postmaster), and check-config and doctor warn about it."""
    server = await mx()
    _without_postmaster_alias(server)
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        [reply] = await c.cmd(f"RCPT TO:{rcpt}")
        assert reply.startswith("250 2.1.5"), reply
        await c.cmd("DATA")
        [reply] = await c.cmd(message(subject="to postmaster", to="postmaster@example.test") + b".")
        assert reply.startswith("250 2.0.0"), reply
    [delivered] = server.messages(ALICE)  # alice@ sorts before bob@ and carol@
    assert b"Subject: to postmaster" in delivered


async def test_postmaster_of_a_domain_without_users_goes_to_a_user_of_another_domain(mx: MxFactory) -> None:
    server = await mx(domains={"empty.test": {}})
    replies = await server.send(SENDER, ["postmaster@empty.test"], message())
    assert replies[-1][0].startswith("250 2.0.0"), replies
    assert len(server.messages(ALICE)) == 1  # the harness's alias postmaster@example.test -> alice


async def test_postmaster_alias_wins_over_the_default(mx: MxFactory) -> None:
    server = await mx()
    cfg = server.ctx.config
    with UsersFile.edit(cfg.users_file) as uf:
        uf.add_alias("postmaster@example.test", [BOB], replace=True)
    server.ctx.directory = Directory.load(cfg)
    replies = await server.send(SENDER, ["postmaster@example.test"], message())
    assert replies[-1][0].startswith("250 2.0.0"), replies
    assert len(server.messages(BOB)) == 1 and server.messages(ALICE) == []


@pytest.mark.parametrize("rcpt", ['<"alice"@example.test>', "<ALICE@EXAMPLE.TEST>",
                                  "<@relay.example:alice@example.test>", " <alice@example.test>"])
async def test_equivalent_recipient_forms_reach_the_user(mx: MxFactory, rcpt: str) -> None:
    """RFC 5321 §4.1.2 quoted local part without need of quotes, §2.4 case of the domain and (by
    Postfix's and Dovecot's default) of the local part, §4.1.1.3 source route ignored, and a space
    after the colon (Postfix accepts it)."""
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        [reply] = await c.cmd(f"RCPT TO:{rcpt}")
        assert reply.startswith("250 2.1.5"), reply


async def test_same_recipient_twice_is_delivered_once_and_named_in_received(mx: MxFactory) -> None:
    """Postfix delivers one copy; so do we, and the Received field still has its `for` clause
    (RFC 5321 §4.4: one recipient)."""
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        assert (await c.cmd(f"RCPT TO:<{ALICE}>"))[0].startswith("250 2.1.5")
        assert (await c.cmd("RCPT TO:<Alice@example.test>"))[0].startswith("250 2.1.5")
        await c.cmd("DATA")
        [reply] = await c.cmd(message(subject="twice") + b".")
        assert reply.startswith("250 2.0.0"), reply
    [delivered] = server.messages(ALICE)
    received = field_value(delivered, "Received") or ""
    assert f"for <{ALICE}>" in received, received


async def test_utf8_recipient_without_smtputf8_is_553_5_6_7(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        [reply] = await c.cmd("RCPT TO:<jörg@example.test>".encode())
        assert reply.startswith("553 5.6.7"), reply  # RFC 6531 §3.6.1


async def test_utf8_domain_without_smtputf8_is_553_5_6_7(mx: MxFactory) -> None:
    """RFC 6531 §3.2: without SMTPUTF8 the envelope is ASCII; Postfix: 553 5.6.7."""
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd("MAIL FROM:<sender@bücher.test>".encode())
        assert reply.startswith("553 5.6.7"), reply
        assert (await c.cmd(f"MAIL FROM:<{SENDER}>"))[0].startswith("250 2.1.0")
        [reply] = await c.cmd("RCPT TO:<alice@exämple.test>".encode())
        assert reply.startswith("553 5.6.7"), reply
        assert (await c.cmd("RSET"))[0].startswith("250")
        [reply] = await c.cmd("MAIL FROM:<sender@bücher.test> SMTPUTF8".encode())
        assert reply.startswith("250 2.1.0"), reply  # with SMTPUTF8 the same path is fine


# --- STARTTLS (RFC 3207) ---------------------------------------------------------------------------


async def test_commands_pipelined_behind_starttls_are_discarded(
        mx: MxFactory, client_ssl_context: ssl.SSLContext) -> None:
    """CVE-2011-0411: what arrives in clear after STARTTLS must not run inside TLS (RFC 3207 §4.2)."""
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.send(b"STARTTLS\r\nEHLO injected.example\r\nMAIL FROM:<evil@sender.test>\r\n")
        [reply] = await c.reply()
        assert reply.startswith("220"), reply
        await _starttls(c, client_ssl_context)
        [reply] = await c.cmd(f"MAIL FROM:<{SENDER}>")
        # not 250 (the injected EHLO did not run) and not a stray reply to an injected command
        assert reply.startswith("503 5.5.1"), reply
        ehlo = await c.cmd("EHLO client.example")
        assert ehlo[-1].startswith("250 ") and "STARTTLS" not in " ".join(ehlo)  # RFC 3207 §4.2
    await _still_delivers(server)


async def test_starttls_inside_tls_is_refused_and_the_session_goes_on(
        mx: MxFactory, client_ssl_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        assert (await c.cmd("STARTTLS"))[0].startswith("220")
        await _starttls(c, client_ssl_context)
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd("STARTTLS", wait=5)
        assert reply.startswith("5"), reply
        assert (await c.cmd("NOOP", wait=5))[0].startswith("250")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_client_silent_after_starttls_is_timed_out_and_its_slot_given_back(mx: MxFactory) -> None:
    server = await mx(mx_listener={"idle_timeout": 1, "per_ip_connections": 2})
    for _ in range(3):  # more than the per-IP limit, one after the other
        async with server.raw() as c:
            await c.cmd("EHLO client.example")
            assert (await c.cmd("STARTTLS"))[0].startswith("220")
            assert await asyncio.wait_for(c.reader.read(), 5) == b""  # closed by the idle timer
    await wait_until(lambda: server.ctx.limits.connections("mx") == 0)
    await _still_delivers(server)


@pytest.mark.parametrize("hello", [b"", b"\x16\x03\x01\x02\x00\x01", b"EHLO not tls\r\n"])
async def test_stalled_or_garbled_starttls_handshake_is_cut_by_its_own_timeout(mx: MxFactory, hello: bytes) -> None:
    """The handshake has its own deadline (smtp.command_timeout here, 1 s), well before the idle
    timer (60 s): silence, half a ClientHello or clear text all end the connection and give the
    per-IP slot back."""
    server = await mx(mx_listener={"idle_timeout": 60, "per_ip_connections": 1}, smtp={"command_timeout": 1})
    for _ in range(2):  # the second one needs the slot the first one held
        async with server.raw() as c:
            await c.cmd("EHLO client.example")
            assert (await c.cmd("STARTTLS"))[0].startswith("220")
            await c.send(hello)
            start = time.monotonic()
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(c.reader.read(4096), 5):
                    pass  # a TLS alert, perhaps; then EOF
            assert time.monotonic() - start < 4
        await wait_until(lambda: server.ctx.limits.connections("mx") == 0)
    await _still_delivers(server)


@pytest.mark.parametrize(("version", "ok"), [
    (ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True), (ssl.TLSVersion.TLSv1_3, True),
])
async def test_starttls_takes_tls_1_2_and_1_3_only(mx: MxFactory, tls_ca: object, version: ssl.TLSVersion,
                                                   ok: bool) -> None:
    server = await mx()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls_ca.configure_trust(ctx)  # type: ignore[attr-defined]
    ctx.minimum_version = ctx.maximum_version = version
    if not ok:
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # let our side offer it, so the server is what refuses
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        assert (await c.cmd("STARTTLS"))[0].startswith("220")
        if ok:
            await _starttls(c, ctx)
            assert (await c.cmd("NOOP"))[0].startswith("250")
        else:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await _starttls(c, ctx)
    await _still_delivers(server)


# --- DATA (RFC 5321 §4.1.1.4, §4.5.2; RFC 2920) ---------------------------------------------------


async def test_whole_transaction_pipelined_in_one_write(mx: MxFactory) -> None:
    """RFC 2920 §3.1: replies come in order, one per command, and the message is delivered with its
    dot-stuffed line unstuffed (RFC 5321 §4.5.2)."""
    server = await mx()
    async with server.raw() as c:
        await c.send(b"EHLO client.example\r\n"
                     b"MAIL FROM:<sender@sender.test>\r\n"
                     b"RCPT TO:<alice@example.test>\r\n"
                     b"RCPT TO:<nobody@example.test>\r\n"
                     b"RCPT TO:<bob@example.test>\r\n"
                     b"DATA\r\n"
                     b"From: sender@sender.test\r\nSubject: piped\r\n\r\n..leading dot\r\n.\r\n"
                     b"QUIT\r\n")
        codes = []
        for _ in range(7):
            reply = await c.reply()
            m = re.match(r"\d{3}(?: \d\.\d{1,3}\.\d{1,3})?", reply[-1])
            codes.append(m.group(0) if m else reply[-1])
        assert codes == ["250", "250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354", "250 2.0.0"], codes
        assert (await c.reply())[0].startswith("221")
    for user in (ALICE, BOB):
        [delivered] = server.messages(user)
        assert delivered.endswith(b"\r\n\r\n.leading dot\r\n")


@pytest.mark.parametrize(("data", "stored_end"), [
    (b"From: sender@sender.test\r\nSubject: head only\r\n", b"Subject: head only\r\n"),  # no body
    (b"From: sender@sender.test\r\nSubject: 8bit\r\n\r\ncaf\xc3\xa9 \xe9\xff\r\n", b"caf\xc3\xa9 \xe9\xff\r\n"),
    (b"From: sender@sender.test\r\nSubject: nul\r\n\r\na\x00b\r\n", b"a\x00b\r\n"),
    (b"From: sender@sender.test\r\nSubject: " + b"long " * 1500 + b"\r\n\r\nb\r\n", b"long \r\n\r\nb\r\n"),
])
async def test_odd_but_acceptable_messages_are_stored_as_sent(mx: MxFactory, data: bytes, stored_end: bytes) -> None:
    """Header without body (RFC 5322 §3.5: the body is optional), 8-bit body without BODY=8BITMIME and
    NUL octets (Postfix takes both), a 7,500-octet header line (within smtp.max_line_length)."""
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        await c.cmd(f"RCPT TO:<{ALICE}>")
        assert (await c.cmd("DATA"))[0].startswith("354")
        [reply] = await c.cmd(data + b".")
        assert reply.startswith("250 2.0.0"), reply
    [delivered] = server.messages(ALICE)
    assert delivered.endswith(stored_end)


@pytest.mark.parametrize(("hops", "code"), [(100, "250 2.0.0"), (101, "554 5.4.6")])
async def test_mail_loop_is_refused_after_100_received_fields(mx: MxFactory, hops: int, code: str) -> None:
    """RFC 5321 §6.3: count Received fields, threshold at least 100 (Postfix: 554 5.4.0 at 50)."""
    server = await mx()
    trace = "".join(f"Received: from hop{i}.example by hop{i + 1}.example; Wed, 25 Nov 2026 12:00:00 +0000\r\n"
                    for i in range(hops))
    replies = await server.send(SENDER, [ALICE], message(subject="loop").replace(b"From:", trace.encode() + b"From:"))
    assert replies[-1][0].startswith(code), replies
    assert len(server.messages(ALICE)) == (1 if code.startswith("250") else 0)


@pytest.mark.parametrize(("extra", "code"), [(0, "250 2.0.0"), (1, "552 5.3.4")])
async def test_message_of_exactly_the_size_limit_is_taken_and_one_octet_more_refused(
        mx: MxFactory, extra: int, code: str) -> None:
    """RFC 1870 §3: the size counts CRLFs, not the transparency dots nor the final dot; Postfix
    refuses even the exact size (it counts its own added headers), we do not."""
    limit = 4096
    server = await mx(smtp={"max_message_size": limit})
    head = b"From: sender@sender.test\r\nSubject: size\r\n\r\n"
    body = b".dot\r\n" * 100  # each line is sent with one more dot, which must not count
    data = head + body + b"y" * (limit + extra - len(head) - len(body) - 2) + b"\r\n"
    assert len(data) == limit + extra
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        await c.cmd(f"RCPT TO:<{ALICE}>")
        assert (await c.cmd("DATA"))[0].startswith("354")
        [reply] = await c.cmd(dot_stuff(data) + b".")
        assert reply.startswith(code), reply
    assert len(server.messages(ALICE)) == (0 if extra else 1)


@pytest.mark.parametrize(("size", "code"), [(4096, "250 2.1.0"), (4097, "552 5.3.4")])
async def test_size_parameter_at_and_over_the_limit(mx: MxFactory, size: int, code: str) -> None:
    server = await mx(smtp={"max_message_size": 4096})
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd(f"MAIL FROM:<{SENDER}> SIZE={size}")
        assert reply.startswith(code), reply  # RFC 1870 §6.2


async def test_quit_inside_data_is_message_text_and_a_drop_stores_nothing(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        await c.cmd(f"RCPT TO:<{ALICE}>")
        await c.cmd("DATA")
        await c.send(b"From: sender@sender.test\r\nSubject: cut\r\n\r\nQUIT\r\n")
        with pytest.raises(TimeoutError):
            await c.reply(wait=0.5)  # QUIT is a line of the message: no 221
    await wait_until(lambda: server.ctx.limits.connections("mx") == 0)
    assert server.messages(ALICE) == []
    await _still_delivers(server)


# --- slow and greedy clients -------------------------------------------------------------------------


async def test_command_line_dripped_byte_by_byte_still_times_out(mx: MxFactory) -> None:
    """Slowloris: bytes that never complete a command do not keep the session alive."""
    server = await mx(mx_listener={"idle_timeout": 1})
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        start = time.monotonic()
        reply: list[str] = []
        for ch in b"NOOP NOOP NOOP NOOP NOOP":
            try:
                await c.send(bytes([ch]))
            except ConnectionError:
                break
            try:
                reply = await c.reply(wait=0.25)
                break
            except TimeoutError:
                continue
        assert reply and reply[0].startswith("421 4.4.2"), reply
        assert time.monotonic() - start < 4
    await wait_until(lambda: server.ctx.limits.connections("mx") == 0)


async def test_connection_flood_from_one_ip_gets_421_and_others_still_deliver(mx: MxFactory) -> None:
    server = await mx(mx_listener={"per_ip_connections": 5})
    held = []
    try:
        for _ in range(5):
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            assert (await r.readline()).startswith(b"220 ")
            held.append(w)
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        assert (await r.readline()).startswith(b"421 4.7.0")
        w.close()
    finally:
        for w in held:
            w.close()
    await wait_until(lambda: server.ctx.limits.connections("mx") == 0)
    await _still_delivers(server)
