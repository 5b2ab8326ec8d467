"""The inbound MX over real sockets: greeting, EHLO, envelope rules, data limits, delivery, limits.

Clients: a raw socket client (test_mx_harness.RawClient), smtplib and aiosmtplib. DNS answers come
from the real test DNS server (no records = SPF none, DMARC none).
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
from typing import Any

import aiosmtplib
import pytest

from mailhaven.errors import StoreError
from mailhaven.message.headers import field_value, field_values
from tests.fixtures_base import FsyncGate
from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, BOB, CAROL, MxFactory, all_files, dot_stuff, message

mx = harness.mx  # the fixture

SENDER = "sender@sender.test"


def _keywords(lines: list[str]) -> list[str]:
    return [ln[4:].split(" ")[0] for ln in lines[1:]]


# --- greeting and EHLO ---------------------------------------------------------------------------


async def test_greeting_names_the_host_and_esmtp(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw(greet=False) as c:
        [banner] = await c.reply()
    assert banner.startswith("220 localhost ESMTP")


async def test_ehlo_advertises_size_8bitmime_smtputf8_pipelining_enhancedstatuscodes_starttls(mx: MxFactory) -> None:
    server = await mx(smtp={"max_message_size": 123456})
    async with server.raw() as c:
        lines = await c.cmd("EHLO client.example")
    assert lines[0] == "250-localhost"
    assert lines[-1].startswith("250 ")
    assert all(ln.startswith("250-") for ln in lines[:-1])
    kws = _keywords(lines)
    assert "SIZE 123456" in [ln[4:] for ln in lines]
    for kw in ("8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS"):
        assert kw in kws
    assert not any(k.startswith("AUTH") for k in kws)  # no AUTH on the MX
    assert "HELP" not in kws


async def test_ehlo_has_no_starttls_without_a_certificate(mx: MxFactory) -> None:
    server = await mx(no_tls=True)
    async with server.raw() as c:
        kws = _keywords(await c.cmd("EHLO client.example"))
    assert "STARTTLS" not in kws and "PIPELINING" in kws


async def test_ehlo_has_no_starttls_when_the_listener_has_tls_none(mx: MxFactory) -> None:
    server = await mx(mx_listener={"tls": "none"})
    async with server.raw() as c:
        kws = _keywords(await c.cmd("EHLO client.example"))
    assert "STARTTLS" not in kws


async def test_helo_still_works_and_delivers(mx: MxFactory) -> None:
    server = await mx()
    replies = await server.send(SENDER, [ALICE], message(), ehlo=False)
    assert [r[0][:3] for r in replies] == ["250", "250", "354", "250"]
    [msg] = server.messages(ALICE)
    assert b" with SMTP id " in msg


async def test_auth_is_not_a_command_on_the_mx(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
    assert reply.startswith("500 5.5.2")


async def test_every_reply_after_ehlo_has_an_enhanced_status_code(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        for command, code in [("NOOP", "250 2.0.0"), ("RCPT TO:<a@example.test>", "503 5.5.1"),
                              ("MAIL FROM:<a@b.test> FOO=BAR", "555 5.5.4"), ("RSET", "250 2.0.0"),
                              ("DATA", "503 5.5.1"), ("XYZZY", "500 5.5.2"), ("VRFY", "501 5.5.4"),
                              ("QUIT", "221 2.0.0")]:
            [reply] = await c.cmd(command)
            assert reply.startswith(code), (command, reply)


# --- senders -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["<a@b.test", "<a@b.test>x", "<a b@c.test>", "<@>", "<a@-b.test>",
                                  "<\x00@b.test>"])
async def test_malformed_sender_is_refused_501_5_1_7(mx: MxFactory, path: str) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd(f"MAIL FROM:{path}")
    # Our parser answers 501 5.1.7; aiosmtpd's own checks come first for some (553 5.1.3 for an
    # unparsable path, 555 5.5.4 when trailing text looks like a parameter).
    assert reply.startswith(("501 5.1.7", "553 5.1.3", "555 5.5.4")), reply


async def test_sender_without_closing_bracket_is_refused(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd("MAIL FROM:<a@b.test")  # aiosmtpd alone would accept it
    assert reply.startswith("501 5.1.7"), reply


async def test_null_sender_is_accepted_and_recorded_as_empty_return_path(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO mta.sender.test")
        assert (await c.cmd("MAIL FROM:<>"))[0].startswith("250 2.1.0")
        assert (await c.cmd(f"RCPT TO:<{ALICE}>"))[0].startswith("250 2.1.5")
        assert (await c.cmd("DATA"))[0].startswith("354")
        assert (await c.cmd(dot_stuff(message()) + b"."))[0].startswith("250 2.0.0")
    [msg] = server.messages(ALICE)
    assert msg.startswith(b"Return-Path: <>\r\n")


async def test_nested_mail_is_refused(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        [reply] = await c.cmd(f"MAIL FROM:<{SENDER}>")
    assert reply.startswith("503 5.5.1")


async def test_size_parameter_over_the_limit_is_refused_552_5_3_4(mx: MxFactory) -> None:
    server = await mx(smtp={"max_message_size": 2048})
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd(f"MAIL FROM:<{SENDER}> SIZE=2049")
        assert reply.startswith("552 5.3.4"), reply
        [reply] = await c.cmd(f"MAIL FROM:<{SENDER}> SIZE=2048")
        assert reply.startswith("250 2.1.0"), reply


async def test_non_ascii_sender_needs_smtputf8(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        [reply] = await c.cmd("MAIL FROM:<jörg@sender.test>")
        assert reply.startswith("553 5.6.7"), reply
        [reply] = await c.cmd("MAIL FROM:<jörg@sender.test> SMTPUTF8")
        assert reply.startswith("250 2.1.0"), reply


# --- recipients ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("rcpt", "users"), [
    (ALICE, [ALICE]),
    ("Alice@Example.TEST", [ALICE]),
    ("alice+news@example.test", [ALICE]),  # sub-address
    ("team@example.test", [ALICE, BOB]),  # alias
    ("anything@catchall.test", [ALICE]),  # catch-all
])
async def test_local_recipients_are_accepted_and_delivered(mx: MxFactory, rcpt: str, users: list[str]) -> None:
    server = await mx()
    replies = await server.send(SENDER, [rcpt], message())
    assert replies[1][0].startswith("250 2.1.5"), replies
    assert replies[-1][0].startswith("250 2.0.0"), replies
    for u in users:
        assert len(server.messages(u)) == 1
    assert server.messages(CAROL) == []


async def test_postmaster_without_domain_is_accepted(mx: MxFactory) -> None:
    server = await mx()
    replies = await server.send(SENDER, ["postmaster"], message())
    assert replies[1][0].startswith("250 2.1.5"), replies
    assert len(server.messages(ALICE)) == 1


async def test_unknown_local_user_is_550_5_1_1(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        [reply] = await c.cmd("RCPT TO:<nobody@example.test>")
    assert reply.startswith("550 5.1.1"), reply


# Relay attempts: (HELO, MAIL FROM, RCPT TO, our reply). Postfix (reject_unauth_destination,
# allow_untrusted_routing = no, strict_rfc821_envelopes = no) refuses each with its
# relay_domains_reject_code, "554 5.7.1 Relay access denied", except where noted; the issue fixes
# our code at 550. Address literals: Postfix takes [its own address] as local (550 5.1.1 for an
# unknown user) and refuses any other; we take no literal as ours.
RELAY_ATTEMPTS = [
    pytest.param("client.example", SENDER, "someone@other.test", "550 5.7.1", id="foreign-domain"),
    pytest.param("localhost", ALICE, "someone@other.test", "550 5.7.1", id="mail-from-our-domain"),
    pytest.param("localhost", "", "someone@other.test", "550 5.7.1", id="null-sender-helo-our-hostname"),
    pytest.param("client.example", SENDER, "x@[127.0.0.1]", "550 5.7.1", id="address-literal-loopback"),
    pytest.param("client.example", SENDER, "alice@[IPv6:::1]", "550 5.7.1", id="address-literal-ipv6"),
    # RFC 5321 §4.1.2 / App. C: the route is ignored (Postfix strips it too): x@other.test remains.
    pytest.param("client.example", SENDER, "@example.test:x@other.test", "550 5.7.1", id="source-route"),
    pytest.param("client.example", SENDER, "@example.test,@catchall.test:x@other.test", "550 5.7.1",
                 id="source-route-two-hops"),
    pytest.param("client.example", SENDER, "x@sub.example.test", "550 5.7.1", id="subdomain-not-ours"),
    pytest.param("client.example", SENDER, "x@example.test.other.test", "550 5.7.1", id="our-name-as-prefix"),
    # Sender-specified routing in the local part (Postfix's RESOLVE_FLAG_ROUTED: "@", "%" or "!"),
    # also where a catch-all or a sub-address would otherwise take it.
    pytest.param("client.example", SENDER, "x%other.test@example.test", "550 5.7.1", id="percent-hack"),
    pytest.param("client.example", SENDER, "x%other.test@catchall.test", "550 5.7.1",
                 id="percent-hack-catch-all"),
    pytest.param("client.example", SENDER, "alice+x%other.test@example.test", "550 5.7.1",
                 id="percent-hack-in-sub-address"),
    pytest.param("client.example", SENDER, "other.test!x@catchall.test", "550 5.7.1", id="bang-path"),
    pytest.param("client.example", SENDER, '"x@other.test"@example.test', "550 5.7.1", id="quoted-at"),
    pytest.param("client.example", SENDER, '"x@other.test"@catchall.test', "550 5.7.1",
                 id="quoted-at-catch-all"),
    # A syntax rule comes first: an unquoted second "@" is no RFC 5321 Mailbox (Postfix, not strict
    # about RFC 821 envelopes, reads it as routed and answers 554 5.7.1).
    pytest.param("client.example", SENDER, "x@other.test@example.test", "501 5.1.3", id="two-at-signs"),
]


@pytest.mark.parametrize(("helo", "sender", "rcpt", "expected"), RELAY_ATTEMPTS)
async def test_relay_attempts_are_refused_and_nothing_is_kept(mx: MxFactory, helo: str, sender: str, rcpt: str,
                                                              expected: str) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd(f"EHLO {helo}")
        assert (await c.cmd(f"MAIL FROM:<{sender}>"))[0].startswith("250 2.1.0")
        [reply] = await c.cmd(f"RCPT TO:<{rcpt}>")
        assert reply.startswith(expected), reply
        [reply] = await c.cmd("DATA")  # no recipient was taken: there is no message to take
        assert reply.startswith("503 5.5.1"), reply
    data_dir = server.mail_root.parent
    assert [p for p in data_dir.rglob("*") if p.is_file()] == []  # nothing stored, nothing queued


async def test_too_many_recipients_is_452_4_5_3(mx: MxFactory) -> None:
    server = await mx(smtp={"max_recipients": 2})
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        assert (await c.cmd(f"RCPT TO:<{ALICE}>"))[0].startswith("250")
        assert (await c.cmd(f"RCPT TO:<{BOB}>"))[0].startswith("250")
        [reply] = await c.cmd(f"RCPT TO:<{CAROL}>")
        assert reply.startswith("452 4.5.3"), reply
        assert (await c.cmd("DATA"))[0].startswith("354")
        assert (await c.cmd(dot_stuff(message()) + b"."))[0].startswith("250")
    assert len(server.messages(ALICE)) == 1 and len(server.messages(BOB)) == 1
    assert server.messages(CAROL) == []


async def test_two_recipients_for_one_user_get_one_copy(mx: MxFactory) -> None:
    server = await mx()
    replies = await server.send(SENDER, [ALICE, "alice+x@example.test", "team@example.test"], message())
    assert replies[-1][0].startswith("250 2.0.0")
    assert len(server.messages(ALICE)) == 1 and len(server.messages(BOB)) == 1


# --- data ----------------------------------------------------------------------------------------


async def test_message_over_the_size_limit_is_552_5_3_4_and_not_stored(mx: MxFactory) -> None:
    server = await mx(smtp={"max_message_size": 2048})
    body = ("x" * 70 + "\r\n") * 40
    replies = await server.send(SENDER, [ALICE], message(body=body))
    assert replies[-1][0].startswith("552 5.3.4"), replies
    assert server.messages(ALICE) == []


async def test_message_at_the_size_limit_is_accepted(mx: MxFactory) -> None:
    server = await mx(smtp={"max_message_size": 4096})
    base = message(body="")
    body = "y" * (4096 - len(base) - 2 - 1200) + "\r\n"
    # The limit is on the message as received, headers we add do not count.
    replies = await server.send(SENDER, [ALICE], message(body=body))
    assert replies[-1][0].startswith("250"), replies


async def test_line_over_the_line_limit_is_refused_500_5_5_2(mx: MxFactory) -> None:
    server = await mx(smtp={"max_line_length": 1000})
    ok = await server.send(SENDER, [ALICE], message(body="a" * 998 + "\r\n"))
    assert ok[-1][0].startswith("250"), ok
    bad = await server.send(SENDER, [ALICE], message(body="b" * 999 + "\r\n"))
    assert bad[-1][0].startswith("500 5.5.2"), bad
    huge = await server.send(SENDER, [ALICE], message(body="c" * 200_000 + "\r\n"))
    assert huge[-1][0].startswith("500 5.5.2"), huge
    assert len(server.messages(ALICE)) == 1


async def test_dot_stuffed_lines_are_unstuffed(mx: MxFactory) -> None:
    server = await mx()
    replies = await server.send(SENDER, [ALICE], message(body=".leading dot\r\n..two\r\n"))
    assert replies[-1][0].startswith("250")
    [msg] = server.messages(ALICE)
    assert msg.endswith(b"\r\n.leading dot\r\n..two\r\n")


async def test_too_many_header_fields_is_refused_552(mx: MxFactory) -> None:
    server = await mx(smtp={"max_header_count": 10})
    extra = "".join(f"X-H{i}: {i}\r\n" for i in range(6))
    ok = await server.send(SENDER, [ALICE], message(extra=extra))  # 4 + 6 = 10 fields
    assert ok[-1][0].startswith("250"), ok
    extra = "".join(f"X-H{i}: {i}\r\n" for i in range(7))
    bad = await server.send(SENDER, [ALICE], message(extra=extra))
    assert bad[-1][0].startswith("552 5.3.4"), bad
    assert len(server.messages(ALICE)) == 1


async def test_header_section_over_the_size_limit_is_refused_552(mx: MxFactory) -> None:
    server = await mx(smtp={"max_header_size": 2048})
    extra = "".join(f"X-Long: {'z' * 200}\r\n" for _ in range(12))
    bad = await server.send(SENDER, [ALICE], message(extra=extra))
    assert bad[-1][0].startswith("552 5.3.4"), bad
    assert server.messages(ALICE) == []


async def test_data_without_recipients_is_503(mx: MxFactory) -> None:
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        await c.cmd(f"MAIL FROM:<{SENDER}>")
        await c.cmd("RCPT TO:<nobody@example.test>")
        [reply] = await c.cmd("DATA")
    assert reply.startswith("503 5.5.1")


# --- delivery and trace fields -------------------------------------------------------------------


async def test_delivered_message_has_return_path_received_and_authentication_results(mx: MxFactory) -> None:
    server = await mx()
    replies = await server.send(SENDER, [ALICE], message(subject="trace"), helo="mta.sender.test")
    queue_id = replies[-1][0].rsplit(" ", 1)[1]
    [msg] = server.messages(ALICE)
    lines = msg.split(b"\r\n")
    assert lines[0] == f"Return-Path: <{SENDER}>".encode()
    assert lines[1] == f"Delivered-To: {ALICE}".encode()  # RFC 9228, below Return-Path as Postfix local(8)
    assert lines[2] == b"Received: from mta.sender.test ([127.0.0.1])"
    received = field_value(msg, "Received") or ""
    assert f"by localhost (Mailhaven) with ESMTP id {queue_id}" in received
    assert f"for <{ALICE}>;" in received
    ar = field_value(msg, "Authentication-Results") or ""
    assert ar.startswith("localhost;") and "spf=none" in ar and "dkim=none" in ar and "dmarc=none" in ar
    assert field_value(msg, "Subject") == "trace"
    assert msg.endswith(b"\r\n\r\nHello.\r\n")


async def test_alias_and_its_member_in_one_transaction_give_each_final_user_one_copy(mx: MxFactory) -> None:
    """The local delivery agent: what RCPT resolved (team@ -> alice, bob; alice) is delivered at
    DATA with duplicates suppressed, each copy with a Delivered-To naming its final user (RFC 9228)."""
    server = await mx()
    replies = await server.send(SENDER, ["team@example.test", ALICE], message())
    assert replies[-1][0].startswith("250 2.0.0"), replies
    [to_alice] = server.messages(ALICE)
    [to_bob] = server.messages(BOB)
    assert field_values(to_alice, "Delivered-To") == [ALICE]
    assert field_values(to_bob, "Delivered-To") == [BOB]
    assert server.messages(CAROL) == []


async def test_received_has_no_for_clause_with_several_recipients(mx: MxFactory) -> None:
    server = await mx()
    await server.send(SENDER, [ALICE, BOB], message())
    [msg] = server.messages(ALICE)
    assert " for <" not in (field_value(msg, "Received") or "")


async def test_forged_authentication_results_with_our_id_are_removed(mx: MxFactory) -> None:
    server = await mx()
    extra = ("Authentication-Results: localhost; dkim=pass header.d=bank.test\r\n"
             "Authentication-Results: other.example; spf=pass\r\n")
    await server.send(SENDER, [ALICE], message(extra=extra))
    [msg] = server.messages(ALICE)
    assert b"header.d=bank.test" not in msg
    assert b"Authentication-Results: other.example; spf=pass" in msg
    assert msg.count(b"Authentication-Results: localhost;") == 1


async def test_forged_trust_fields_and_return_path_from_outside_are_removed(
        mx: MxFactory, client_ssl_context: ssl.SSLContext) -> None:
    """X-Spam-* verdicts, a Return-Path and our own authserv-id's Authentication-Results and
    Received-SPF arriving from outside are removed (folded or not, any case); ours go in with exactly
    one Return-Path on top; unrelated A-R and the body stay byte for byte."""
    server = await mx()
    body = "Hi.\r\nX-Spam-Status: No\r\nReturn-Path: <in-body@x>\r\n\r\n\tend \r\n"
    extra = ("Return-Path: <forged@x.example>\r\n"
             "X-Spam-Status: No, score=-10.0\r\n\trequired=5.0 tests=ALL_TRUSTED\r\n"
             "X-SPAM-FLAG: NO\r\nX-Spam-Score: -10\r\nx-spam-level:\r\n"
             "Authentication-Results: LOCALHOST;\r\n dkim=pass header.d=bank.test\r\n"
             "Received-SPF: pass (localhost: forged) client-ip=192.0.2.1; receiver=localhost\r\n"
             "Authentication-Results: relay.example; spf=pass\r\n"
             "RETURN-PATH: <second@x.example>\r\n")

    def run() -> None:
        with smtplib.SMTP("127.0.0.1", server.port, local_hostname="mta.sender.test", timeout=20) as s:
            s.starttls(context=client_ssl_context)
            s.sendmail(SENDER, [ALICE], message(subject="trust", extra=extra, body=body))

    await asyncio.to_thread(run)
    [msg] = server.messages(ALICE)
    assert msg.startswith(f"Return-Path: <{SENDER}>\r\nDelivered-To: {ALICE}\r\nReceived: from mta.sender.test".encode())
    assert field_values(msg, "Return-Path") == [f"<{SENDER}>"]  # RFC 5321 §4.4: exactly one
    head = msg[:msg.index(b"\r\n\r\n")].lower()
    assert b"bank.test" not in head and b"forged" not in head
    # Only our own X-Spam-* fields (the embedded check's verdict, issue 12 item 5) are left.
    assert [ln for ln in head.split(b"\r\n") if ln.startswith(b"x-spam-")] == [
        b"x-spam-status: no, score=0.00, required=5.00", b"x-spam-score: 0.00"]
    ars = field_values(msg, "Authentication-Results")
    assert len(ars) == 2 and ars[0].startswith("localhost; spf=none")  # ours, then the relay's
    assert ars[1] == "relay.example; spf=pass"
    [spf] = field_values(msg, "Received-SPF")
    assert spf.startswith("none (localhost: ")  # ours only
    assert msg.endswith(b"\r\n\r\n" + body.encode())


async def test_250_comes_only_after_the_message_is_fsynced_in_every_recipients_new_dir(
        mx: MxFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await mx()
    assert server.ctx.store.fsync  # the harness's Store syncs (its default)
    domain_dir = await asyncio.to_thread(os.path.realpath, server.mail_root / "example.test")
    alice_new, bob_new = f"{domain_dir}/alice/new", f"{domain_dir}/bob/new"

    def in_tmp(path: str) -> bool:  # a file in a Maildir's tmp/ (the test's own tmp_path is under /tmp)
        return path.startswith(domain_dir + "/") and "/tmp/" in path[len(domain_dir):]

    # Each new/ fsync is held (not the Maildir creation's: only those after a tmp/ file's).
    fsyncs = FsyncGate(monkeypatch, lambda path, synced: path.endswith("/new") and any(map(in_tmp, synced)))
    synced = fsyncs.synced
    try:
        async with server.raw() as c:
            await c.cmd("EHLO client.example")
            await c.cmd(f"MAIL FROM:<{SENDER}>")
            await c.cmd(f"RCPT TO:<{ALICE}>")
            await c.cmd(f"RCPT TO:<{BOB}>")
            assert (await c.cmd("DATA"))[0].startswith("354")
            await c.send(dot_stuff(message(subject="durable")) + b".\r\n")
            held = []
            for _ in range(2):  # each new/ in turn: no reply while its fsync has not returned
                held.append(await asyncio.to_thread(fsyncs.next_held))
                with pytest.raises(TimeoutError):
                    await c.reply(wait=0.3)
                fsyncs.release(held[-1])
            [reply] = await c.reply()
            assert reply.startswith("250 2.0.0"), reply
    finally:
        fsyncs.release_all()
    assert sorted(held) == [alice_new, bob_new]
    # One file per user (each copy has its own Delivered-To), each fsynced before its new/ is.
    tmp_files = [p for p in synced if in_tmp(p)]
    assert [p[len(domain_dir) + 1:].split("/")[0] for p in tmp_files] == ["alice", "bob"]
    for tmp_file, user_new in zip(tmp_files, (alice_new, bob_new), strict=True):
        assert synced.index(tmp_file) < synced.index(user_new)
        assert os.listdir(user_new) == [tmp_file.rsplit("/", 1)[1]]
    assert len(server.messages(ALICE)) == len(server.messages(BOB)) == 1


async def test_store_failure_answers_451_4_3_0_and_keeps_nothing(mx: MxFactory) -> None:
    server = await mx()
    # Make the store fail for real: the user's Maildir root exists but cannot be written to.
    user_root = server.mail_root / "example.test" / "alice"
    user_root.mkdir(parents=True)
    user_root.chmod(0o500)
    if os.geteuid() == 0:
        # root ignores permissions: put a file where the Maildir's tmp/ directory must go.
        user_root.chmod(0o700)
        (user_root / "tmp").write_bytes(b"not a directory")
    try:
        replies = await server.send(SENDER, [ALICE], message())
    finally:
        user_root.chmod(0o700)
    assert replies[-1][0].startswith("451 4.3.0"), replies
    assert [p for p in all_files(server.mail_root) if p.parent.name in ("new", "cur")] == []


async def test_store_error_from_a_later_target_leaves_no_partial_message(mx: MxFactory) -> None:
    server = await mx()
    # bob's Maildir is broken, alice's is fine: nothing may be delivered to alice either.
    bob_root = server.mail_root / "example.test" / "bob"
    bob_root.mkdir(parents=True)
    (bob_root / "new").write_bytes(b"not a directory")
    replies = await server.send(SENDER, [ALICE, BOB], message())
    assert replies[-1][0].startswith("451 4.3.0"), replies
    assert server.messages(ALICE) == []


async def test_internal_errors_do_not_leak(mx: MxFactory) -> None:
    class Exploding:
        async def start(self) -> None: ...
        async def close(self) -> None: ...
        async def deliver(self, targets: Any, data: bytes) -> None:
            raise RuntimeError("secret internal path /var/lib/x")

    server = await mx(store=Exploding())
    replies = await server.send(SENDER, [ALICE], message())
    assert replies[-1] == ["451 4.3.0 Temporary local problem, try again later"]


async def test_store_error_is_a_temporary_reply(mx: MxFactory) -> None:
    class Failing:
        async def start(self) -> None: ...
        async def close(self) -> None: ...
        async def deliver(self, targets: Any, data: bytes) -> None:
            raise StoreError("the message could not be stored")

    server = await mx(store=Failing())
    replies = await server.send(SENDER, [ALICE], message())
    assert replies[-1][0].startswith("451 4.3.0")


# --- clients -------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["default", "tls12-chacha20"])
async def test_smtplib_delivers_over_starttls(mx: MxFactory, client_ssl_context: ssl.SSLContext,
                                              client: str) -> None:
    """Received names the TLS version and cipher the client's socket negotiated (RFC 8314 §7). The
    second client allows only TLS 1.2 and ChaCha20, which our server would not pick by itself, so a
    Received field with fixed or guessed text would not match."""
    if client == "tls12-chacha20":
        client_ssl_context.maximum_version = ssl.TLSVersion.TLSv1_2
        client_ssl_context.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
    server = await mx()

    def run() -> tuple[str, str]:
        with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.example", timeout=10) as s:
            s.starttls(context=client_ssl_context)
            assert isinstance(s.sock, ssl.SSLSocket)
            version, cipher = s.sock.version() or "", s.sock.cipher()
            s.sendmail(SENDER, [ALICE], message(subject="tls"))
        assert cipher is not None
        return version, cipher[0]

    version, cipher = await asyncio.to_thread(run)
    if client == "tls12-chacha20":
        assert version == "TLSv1.2" and "CHACHA20" in cipher, (version, cipher)
    [msg] = server.messages(ALICE)
    received = field_value(msg, "Received") or ""
    assert " with ESMTPS id " in received
    assert f"(using {version} {cipher})" in received, (received, version, cipher)


async def test_aiosmtplib_pipelined_transaction(mx: MxFactory) -> None:
    server = await mx()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, start_tls=False) as client:
        errors, _ = await client.sendmail(SENDER, [ALICE, BOB, "nobody@example.test"], message())
    assert set(errors) == {"nobody@example.test"}
    assert len(server.messages(ALICE)) == 1 and len(server.messages(BOB)) == 1


async def test_several_messages_in_one_session(mx: MxFactory) -> None:
    server = await mx()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, start_tls=False) as client:
        for i in range(5):
            await client.sendmail(SENDER, [ALICE], message(subject=f"m{i}"))
    assert len(server.messages(ALICE)) == 5
