"""What happens to a submitted message: Message-ID and Date added, the Received field (submitter
redacted or not), DKIM signatures that verify against the test DNS server, local recipients straight
into the store, remote ones through the spool to a remote MX (tests/smtp_peer.SmtpPeer on
127.0.0.6, found through the test DNS server's MX record), and the 250 only once the spool holds it.

dkimpy (policy.dkim.verify) checks what the submission path produces, Received field included;
OpenDKIM's opendkim-testmsg checks one submitted message too, with test_delivery_dkim.py's set-up
(it has no option for a DNS server: a private mount namespace gives it a resolv.conf pointing at
the test DNS; skipped when not root).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from pathlib import Path

import pytest

from mailhaven.auth.passwords import hash_password
from mailhaven.auth.users import UsersFile
from mailhaven.dns.resolver import Resolver
from mailhaven.message.headers import field_value, field_values
from mailhaven.policy import dkim
from tests.dnsserver import DnsServer
from tests.integration import test_submission_harness as harness
from tests.integration.test_delivery_dkim import _opendkim_verify, _unshare_ok
from tests.integration.test_submission_harness import ALICE, BOB, SALES, SubmissionFactory, message
from tests.smtp_peer import until

submission = harness.submission
dkim_rsa = harness.dkim_rsa

QUEUED = "250 2.0.0 Ok: queued as "
DAVE = "dave@second.test"


def spool_files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def header_names(msg: bytes) -> list[str]:
    head = msg.split(b"\r\n\r\n", 1)[0]
    return [ln.split(b":", 1)[0].decode().lower() for ln in head.split(b"\r\n") if ln and ln[:1] not in b" \t"]


async def test_local_recipient_gets_it_in_inbox_with_message_id_and_date_added(
        submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submission") as c:
        replies = await c.transaction(ALICE, [BOB], message(subject="to bob"))
    assert replies[-1][0].startswith(QUEUED)
    [msg] = server.messages(BOB)
    assert b"Subject: to bob" in msg
    mid = field_value(msg, "Message-ID") or ""
    assert mid.startswith("<") and mid.endswith("@mail.example.test>")
    date = field_value(msg, "Date") or ""
    assert abs(time.time() - email.utils.parsedate_to_datetime(date).timestamp()) < 120
    names = header_names(msg)
    # Return-Path, Delivered-To (RFC 9228) and the trace field on top, then what we added, then the client's own fields
    # (RFC 5321 §4.4).
    assert names[:6] == ["return-path", "delivered-to", "dkim-signature", "received", "date", "message-id"], names


async def test_message_id_and_date_of_the_client_are_kept(submission: SubmissionFactory) -> None:
    server = await submission()
    extra = "Message-ID: <mine@client.example>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
    async with server.session("submissions") as c:
        await c.transaction(ALICE, [BOB], message(extra=extra))
    [msg] = server.messages(BOB)
    assert field_values(msg, "Message-ID") == ["<mine@client.example>"]
    assert field_values(msg, "Date") == ["Mon, 1 Jan 2024 10:00:00 +0000"]


async def test_received_hides_the_submitter_by_default(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submission") as c:
        await c.transaction(ALICE, [BOB], message())
    [msg] = server.messages(BOB)
    [received] = field_values(msg, "Received")
    assert received.startswith("from client.invalid (address hidden)")
    assert "127.0.0.1" not in received and "client.example" not in received
    assert " by mail.example.test (Mailhaven) with ESMTPSA id " in received
    assert "(using TLSv1." in received
    assert ALICE not in received and "for <" not in received


async def test_received_shows_the_submitter_when_redaction_is_off(submission: SubmissionFactory) -> None:
    server = await submission(smtp={"redact_submitter": False})
    async with server.session("submissions") as c:
        await c.transaction(ALICE, [BOB], message())
    [msg] = server.messages(BOB)
    [received] = field_values(msg, "Received")
    assert received.startswith("from client.example ([127.0.0.1])")
    assert " with ESMTPSA id " in received and "for <" not in received


async def test_local_delivery_is_dkim_signed_and_verifies(submission: SubmissionFactory, dns_nameserver: str) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        await c.transaction(SALES, [BOB], message(sender=f"Sales <{SALES}>"))
    [msg] = server.messages(BOB)
    results = await dkim.verify(Resolver([dns_nameserver], timeout=2), msg)
    assert [(r.result, r.domain, r.selector, r.algorithm) for r in results] == [
        ("pass", "example.test", "mh1", "rsa-sha256")]


async def test_remote_recipient_gets_it_through_the_queue_dkim_signed(
        submission: SubmissionFactory, dns_nameserver: str) -> None:
    server = await submission()
    async with server.session("submission") as c:
        replies = await c.transaction(ALICE, ["carol@remote.test"], message(to="carol@remote.test",
                                                                            subject="far away"))
    assert replies[-1][0].startswith(QUEUED)
    [got] = await server.peer.wait_messages(1)
    assert got.mail_from == ALICE and got.rcpt_tos == ["carol@remote.test"]
    assert b"Subject: far away" in got.data
    assert field_value(got.data, "Message-ID") and field_value(got.data, "Date")
    assert "127.0.0.1" not in (field_values(got.data, "Received") or [""])[0]
    results = await dkim.verify(Resolver([dns_nameserver], timeout=2), got.data)
    assert [(r.result, r.domain, r.selector) for r in results] == [("pass", "example.test", "mh1")]
    await until(lambda: not server.ctx.queue.list_entries(), 10)


async def test_local_and_remote_recipients_each_get_one_copy(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        replies = await c.transaction(ALICE, [BOB, "x@remote.test", "y@remote.test", ALICE], message())
    assert replies[-1][0].startswith(QUEUED)
    [got] = await server.peer.wait_messages(1)
    assert sorted(got.rcpt_tos) == ["x@remote.test", "y@remote.test"]
    assert len(server.messages(BOB)) == 1 and len(server.messages(ALICE)) == 1


async def test_received_names_the_queue_id_the_client_is_told(submission: SubmissionFactory) -> None:
    """One id in the 250, the Received field of every copy and the spool entry (Postfix's `id`)."""
    server = await submission()
    server.peer.hold_data()
    async with server.session("submissions") as c:
        replies = await c.transaction(ALICE, [BOB, "x@remote.test"], message(subject="one id"))
    assert replies[-1][0].startswith(QUEUED)
    queue_id = replies[-1][0][len(QUEUED):].strip()
    assert [e["id"] for e in server.ctx.queue.list_entries()] == [queue_id]
    server.peer.release_data()
    [got] = await server.peer.wait_messages(1)
    for copy in (got.data, server.messages(BOB)[0]):
        [received] = field_values(copy, "Received")
        assert f" id {queue_id};" in received, (queue_id, received)


async def test_250_comes_only_once_the_spool_holds_the_message(submission: SubmissionFactory) -> None:
    server = await submission()
    server.peer.hold_data()  # the remote MX takes the message but does not answer yet
    async with server.session("submissions") as c:
        replies = await c.transaction(ALICE, ["x@remote.test"], message(subject="durable"))
        assert replies[-1][0].startswith(QUEUED)
        on_disk = await asyncio.to_thread(spool_files_holding, Path(server.ctx.config.queue_root), b"Subject: durable")
        assert on_disk, "250 was sent but the message is not in the spool"
    server.peer.release_data()
    await server.peer.wait_messages(1)


async def test_remote_refusal_bounces_to_the_sender(submission: SubmissionFactory) -> None:
    server = await submission()
    server.peer.script_rcpt("nobody@remote.test", "550 5.1.1 no such user")
    async with server.session("submissions") as c:
        replies = await c.transaction(ALICE, ["nobody@remote.test"], message(subject="doomed"))
    assert replies[-1][0].startswith(QUEUED)
    bounce = await until(lambda: server.messages(ALICE), 15)
    assert b"nobody@remote.test" in bounce[0] and b"550 5.1.1" in bounce[0]


@pytest.fixture
def ed25519_key(tmp_path: Path, dns_server: DnsServer) -> str:
    pem, txt = dkim.generate_ed25519()
    path = tmp_path / "example.test.mh1e.key"
    path.write_bytes(pem)
    path.chmod(0o600)
    dns_server.add("mh1e._domainkey.example.test", "TXT", txt)
    return str(path)


async def test_ed25519_key_adds_a_second_signature(submission: SubmissionFactory, ed25519_key: str,
                                                   dkim_rsa: tuple[Path, str], dns_nameserver: str) -> None:
    server = await submission(domains={"example.test": {"dkim_key": str(dkim_rsa[0]), "dkim_selector": "mh1",
                                                        "dkim_ed25519_key": ed25519_key}})
    async with server.session("submissions") as c:
        await c.transaction(ALICE, ["x@remote.test"], message())
    [got] = await server.peer.wait_messages(1)
    results = await dkim.verify(Resolver([dns_nameserver], timeout=2), got.data)
    assert sorted((r.result, r.selector, r.algorithm) for r in results) == [
        ("pass", "mh1", "rsa-sha256"), ("pass", "mh1e", "ed25519-sha256")]


async def test_user_of_a_second_domain_gets_that_domains_signature(
        submission: SubmissionFactory, dns_server: DnsServer, dns_nameserver: str, tmp_path: Path,
        users_file_path: Path, dkim_rsa: tuple[Path, str]) -> None:
    """Two domains, each with its own key: dave@second.test's mail is signed d=second.test with
    second.test's key (published in the test DNS), not with example.test's."""
    pem, txt = await asyncio.to_thread(dkim.generate_rsa, 2048)
    key = tmp_path / "second.test.s2.key"
    key.write_bytes(pem)
    key.chmod(0o600)
    dns_server.add("s2._domainkey.second.test", "TXT", txt)
    with UsersFile.edit(users_file_path) as uf:  # the users file the harness's config reads
        uf.add_user(DAVE, hash_password(harness.PASSWORD))
    server = await submission(domains={"second.test": {"dkim_key": str(key), "dkim_selector": "s2"}})
    async with server.session("submissions", login=DAVE) as c:
        replies = await c.transaction(DAVE, ["carol@remote.test"], message(sender=f"Dave <{DAVE}>",
                                                                           to="carol@remote.test"))
    assert replies[-1][0].startswith(QUEUED)
    [got] = await server.peer.wait_messages(1)
    assert got.mail_from == DAVE
    results = await dkim.verify(Resolver([dns_nameserver], timeout=2), got.data)
    assert [(r.result, r.domain, r.selector, r.algorithm) for r in results] == [
        ("pass", "second.test", "s2", "rsa-sha256")]
    # example.test's key is not the one that signed: published under the same name, it fails.
    dns_server.remove("s2._domainkey.second.test", "TXT")
    dns_server.add("s2._domainkey.second.test", "TXT", dkim_rsa[1])
    results = await dkim.verify(Resolver([dns_nameserver], timeout=2), got.data)
    assert [r.result for r in results] == ["fail"]


async def test_domain_without_a_key_sends_unsigned(submission: SubmissionFactory) -> None:
    server = await submission(domains={"example.test": {"dkim_key": ""}})
    async with server.session("submissions") as c:
        await c.transaction(ALICE, [BOB], message())
    [msg] = server.messages(BOB)
    assert b"DKIM-Signature" not in msg


@pytest.mark.skipif(not _unshare_ok(), reason="needs root, unshare -m and opendkim-testmsg")
async def test_opendkim_verifies_a_submitted_message_as_the_remote_mx_got_it(
        submission: SubmissionFactory, dns_server: DnsServer, tmp_path: Path) -> None:
    # The OpenDKIM set-up (a private /etc/resolv.conf pointing at the test DNS) is test_delivery_dkim's.
    server = await submission()
    async with server.session("submission") as c:
        await c.transaction(ALICE, ["carol@remote.test"], message(to="carol@remote.test", subject="opendkim",
                                                                  body="Hi.\r\n.dot line\r\ntrailing   \r\n"))
    [got] = await server.peer.wait_messages(1)
    r = await asyncio.to_thread(_opendkim_verify, got.data, dns_server, tmp_path)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    tampered = got.data.replace(b"Subject: opendkim", b"Subject: opendkim!")
    r = await asyncio.to_thread(_opendkim_verify, tampered, dns_server, tmp_path)
    assert r.returncode != 0 or r.stderr


# --- trust fields and Return-Path (issue 10 items 5 and 6) ---------------------------------------------

FORGED = ("Return-Path: <forged@x.example>\r\n"
          "Authentication-Results: mail.example.test; dkim=pass header.d=bank.test\r\n"
          "authentication-results: (looks fine)\r\n mail.example.test;\r\n\tdmarc=pass header.from=bank.test\r\n"
          "Authentication-Results: other.example; spf=pass smtp.mailfrom=bank.test\r\n"
          "X-Spam-Status: No, score=-10.0\r\n\trequired=5.0 tests=ALL_TRUSTED\r\n"
          "X-Spam-Flag: NO\r\nx-spam-score: -10\r\nX-Spam-Level: \r\n"
          "Received-SPF: pass (mail.example.test: bank.test) receiver=mail.example.test; identity=mailfrom\r\n")
BODY = "Dear customer,\r\n\r\nX-Spam-Status: No\r\nReturn-Path: <in the body stays>\r\n  indented line \r\n"


def _submit_with_smtplib(server: harness.SubmissionServer, sender: str, rcpts: list[str], data: bytes) -> None:
    """One message through the submission listener with the stdlib client: STARTTLS, AUTH, sendmail."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", server.ports["submission"], local_hostname="client.example", timeout=20) as s:
        s.starttls(context=server.client_tls)
        s.login(ALICE, harness.PASSWORD)
        s.sendmail(sender, rcpts, data)


def _assert_trusted_fields_only(msg: bytes, return_path: str) -> None:
    lines = msg.split(b"\r\n")
    assert lines[0] == f"Return-Path: <{return_path}>".encode()
    assert field_values(msg, "Return-Path") == [f"<{return_path}>"]  # exactly one (RFC 5321 §4.4)
    head = msg[:msg.index(b"\r\n\r\n") + 2]
    assert b"bank.test" not in head.replace(b"other.example; spf=pass smtp.mailfrom=bank.test", b"")
    assert b"forged@x.example" not in head
    assert [n for n in header_names(msg) if n.startswith("x-spam-")] == []
    assert field_values(msg, "Received-SPF") == []
    assert field_values(msg, "Authentication-Results") == ["other.example; spf=pass smtp.mailfrom=bank.test"]
    assert msg.endswith(b"\r\n\r\n" + BODY.encode())  # the body byte for byte


async def test_forged_trust_fields_submitted_to_a_local_user_are_removed(
        submission: SubmissionFactory, dns_nameserver: str) -> None:
    """A user submits dkim=pass header.d=bank.test under our authserv-id, X-Spam-* verdicts and a
    Return-Path of their own: the local recipient gets none of them, one Return-Path with the envelope
    sender, the rest untouched (our DKIM signature still verifies)."""
    server = await submission()
    data = message(subject="your bank", extra=FORGED, body=BODY)
    await asyncio.to_thread(_submit_with_smtplib, server, ALICE, [BOB], data)
    [msg] = server.messages(BOB)
    _assert_trusted_fields_only(msg, ALICE)
    results = await dkim.verify(Resolver([dns_nameserver], timeout=2), msg)
    assert [(r.result, r.domain) for r in results] == [("pass", "example.test")]


async def test_null_sender_submission_to_a_local_user_has_return_path_null(submission: SubmissionFactory) -> None:
    server = await submission()
    await asyncio.to_thread(_submit_with_smtplib, server, "<>", [BOB], message(extra=FORGED, body=BODY))
    [msg] = server.messages(BOB)
    _assert_trusted_fields_only(msg, "")


async def test_bounce_to_a_local_sender_has_one_return_path_null(submission: SubmissionFactory) -> None:
    server = await submission()
    server.peer.script_rcpt("nobody@remote.test", "550 5.1.1 no such user")
    data = message(to="nobody@remote.test", subject="doomed", extra="Return-Path: <forged@x.example>\r\n")
    await asyncio.to_thread(_submit_with_smtplib, server, ALICE, ["nobody@remote.test"], data)
    [bounce] = await until(lambda: server.messages(ALICE), 15)
    assert bounce.startswith(b"Return-Path: <>\r\n")  # RFC 5321 §4.4, §4.5.5: the null reverse-path
    assert field_values(bounce, "Return-Path") == ["<>"]
    assert b"nobody@remote.test" in bounce
