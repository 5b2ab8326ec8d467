"""Issue 13 item 2: forwarding to other servers. A real server (app.run: MX, queue, cleanup), real
smtplib clients, the tests' DNS server (MX records for the remote domains, our DKIM key) and a test
SMTP peer on 127.0.0.2 playing every remote MX. An alias with one local and one remote target: the
local copy in the Maildir, the remote copy at the peer with MAIL FROM SRS0=...@example.test,
Delivered-To: <alias>, and an ARC set that dkimpy's arc_verify passes; a bounce to that SRS
address goes back to the original sender with <>; forged and expired SRS addresses are refused
550 5.1.1; a message that already carries our Delivered-To is refused 554 5.4.6; mail filed as
Junk is not forwarded unless [delivery] forward_spam."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest

from mailhaven import app
from mailhaven.auth.users import Directory, UsersFile
from mailhaven.delivery.srs import Srs
from mailhaven.message.headers import field_value, field_values
from mailhaven.policy import dkim as mhdkim
from tests.dnsserver import DnsServer
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.integration.test_mx_harness import maildir_messages
from tests.smtp_peer import SmtpPeer, shared_port

ALIAS = "team@example.test"
ALICE = "alice@example.test"
REMOTE = "someone@b.test"
ORIGINAL = "carol@sender.test"
SECRET = "test-srs-secret"


def message(subject: str, *, sender: str = ORIGINAL, extra: str = "") -> bytes:
    return (f"From: Carol <{sender}>\r\nTo: {ALIAS}\r\nSubject: {subject}\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@sender.test>\r\nMIME-Version: 1.0\r\n{extra}\r\n"
            "Hello team,\r\nthis goes to Alice here and to someone elsewhere.\r\n").encode()


def send(port: int, sender: str, rcpts: list[str], data: bytes) -> tuple[list[tuple[int, bytes]], tuple[int, bytes]]:
    """One smtplib transaction: the RCPT replies and the reply to DATA (or the last refusal)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mta.sender.test", timeout=30) as c:
        c.ehlo()
        c.mail(sender)
        replies = [c.rcpt(r) for r in rcpts]
        if not any(code == 250 for code, _ in replies):
            c.rset()
            return replies, replies[-1]
        try:
            return replies, c.data(data)  # the reply to the final dot
        except smtplib.SMTPDataError as e:  # DATA itself refused
            return replies, (e.smtp_code, e.smtp_error)


class Forwarding:
    def __init__(self, ctx: app.Context, peer: SmtpPeer, tmp_path: Path, dns_server: DnsServer) -> None:
        self.ctx, self.peer, self.tmp_path, self.dns = ctx, peer, tmp_path, dns_server

    @property
    def port(self) -> int:
        return self.ctx.port("mx")

    async def send(self, sender: str, rcpts: list[str], data: bytes) -> tuple[list[tuple[int, bytes]], tuple[int, bytes]]:
        return await asyncio.to_thread(send, self.port, sender, rcpts, data)

    def local(self, folder: str = "INBOX") -> list[bytes]:
        return maildir_messages(Path(self.ctx.config.mail_root), ALICE, folder)

    def srs(self) -> Srs:
        return Srs(SECRET.encode(), "example.test")


Factory = Callable[..., Awaitable[Forwarding]]


@pytest.fixture
async def forwarding(tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer,
                     dns_nameserver: str) -> AsyncIterator[Factory]:
    pem, record = mhdkim.generate_rsa(1024)
    key = tmp_path / "example.test.sel.key"
    key.write_bytes(pem)
    dns_server.add("sel._domainkey.example.test", "TXT", record)
    for domain in ("b.test", "sender.test"):
        dns_server.add(domain, "MX", "10 mx.peer.test.")
    dns_server.add("mx.peer.test", "A", "127.0.0.2")
    secret = tmp_path / "srs.secret"
    secret.write_text(SECRET + "\n")
    port = shared_port("127.0.0.2")
    peer = await SmtpPeer("127.0.0.2", port).start()
    stack: list[Any] = []

    async def start(smtp: dict[str, Any] | None = None, **delivery: Any) -> Forwarding:
        path = app_config_file(
            tmp_path, tls_files, dns_nameserver,
            domains={"example.test": {"dkim_key": str(key), "dkim_selector": "sel"}},
            queue={"remote_port": port, "connect_timeout": 2, "retry_schedule": ["1h"]},
            delivery={"srs_secret_file": str(secret), **delivery}, **({"smtp": smtp} if smtp else {}))
        cfg = load_test_config(path)
        add_user(cfg, ALICE, "pw")
        with UsersFile.edit(cfg.users_file) as uf:
            uf.add_alias(ALIAS, [ALICE, REMOTE])
        cm = running_app(cfg)
        ctx = await cm.__aenter__()
        stack.append(cm)
        return Forwarding(ctx, peer, tmp_path, dns_server)

    try:
        yield start
    finally:
        for cm in reversed(stack):
            await cm.__aexit__(None, None, None)
        await peer.stop()


def arc_verify(data: bytes, nameserver: str) -> bytes:
    """dkimpy's arc_verify with the keys from the tests' DNS server."""
    host, _, port = nameserver.partition(":")
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port = [host], int(port or 53)

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            return b"".join(b"".join(rd.strings) for rd in r.resolve(name.decode(), "TXT"))
        except dns.exception.DNSException:
            return None

    cv, _results, _reason = dkim.arc_verify(data, dnsfunc=dnsfunc)
    return bytes(cv)


async def test_alias_with_local_and_remote_targets_forwards_with_srs_and_arc(
        forwarding: Factory, dns_nameserver: str) -> None:
    f = await forwarding()
    _rcpts, (code, _text) = await f.send(ORIGINAL, [ALIAS], message("mixed"))
    assert code == 250
    [local] = f.local()
    assert field_value(local, "Delivered-To") == ALICE
    await f.peer.wait_messages(1, 15)
    [got] = f.peer.messages
    assert got.rcpt_tos == [REMOTE]
    srs_sender = got.mail_from
    assert srs_sender.startswith("SRS0=") and srs_sender.endswith("@example.test")
    assert f.srs().reverse(srs_sender) == ORIGINAL  # SPF at b.test checks example.test now
    assert field_values(got.data, "Delivered-To") == [ALIAS]  # for loop detection, not Alice's copy's
    assert "i=1" in field_value(got.data, "ARC-Seal") and "cv=none" in field_value(got.data, "ARC-Seal")
    assert "arc=none" in field_value(got.data, "ARC-Authentication-Results")
    assert arc_verify(got.data, dns_nameserver) == b"pass"
    assert b"DKIM-Signature" not in got.data  # not re-signed as the author's domain (sender.test)

    # the destination bounces to the SRS address: it reaches the original sender, null sender kept
    bounce = (b"From: MAILER-DAEMON@b.test\r\nTo: " + srs_sender.encode() + b"\r\nSubject: Undelivered\r\n"
              b"\r\nsomeone@b.test: no such user\r\n")
    _rcpts, (code, _text) = await f.send("", [srs_sender], bounce)
    assert code == 250
    await f.peer.wait_messages(2, 15)
    back = f.peer.messages[1]
    assert (back.mail_from, back.rcpt_tos) == ("<>", [ORIGINAL])
    assert b"Subject: Undelivered" in back.data and b"Delivered-To" not in back.data
    assert len(f.local()) == 1  # nothing local for the bounce


async def test_forged_and_expired_srs_addresses_are_refused_550_5_1_1(forwarding: Factory) -> None:
    f = await forwarding()
    good = f.srs().forward(ORIGINAL)
    h = good.split("=")[1]
    forged = good.replace(f"={h}=", "=" + ("AAAA" if h.upper() != "AAAA" else "BBBB") + "=", 1)
    expired = f.srs().forward(ORIGINAL, now=time.time() - 22 * 86400)
    other_secret = Srs(b"not ours", "example.test").forward(ORIGINAL)
    replies, _ = await f.send("", [forged, expired, other_secret, good.lower()], b"Subject: x\r\n\r\nx\r\n")
    for code, text in replies[:3]:
        assert (code, text[:5]) == (550, b"5.1.1"), text
    assert replies[3][0] == 250  # the hash is compared without case (relays lower-case local parts)


async def test_a_message_with_our_delivered_to_is_a_loop_554_5_4_6(forwarding: Factory) -> None:
    f = await forwarding()
    looped = message("looped", extra=f"Delivered-To: {ALIAS}\r\n")
    _rcpts, (code, text) = await f.send(ORIGINAL, [ALIAS], looped)
    assert code == 554 and text.startswith(b"5.4.6") and ALIAS.encode() in text
    assert f.local() == [] and f.local("Junk") == []
    await asyncio.sleep(0.3)
    assert f.peer.messages == []
    # someone else's Delivered-To is no loop
    _rcpts, (code, _text) = await f.send(ORIGINAL, [ALIAS], message("fine", extra="Delivered-To: x@y.test\r\n"))
    assert code == 250


@pytest.mark.parametrize("forward_spam", [False, True])
async def test_junk_is_not_forwarded_unless_forward_spam(forwarding: Factory, dns_server: DnsServer,
                                                         forward_spam: bool) -> None:
    dns_server.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=quarantine")  # DMARC fails: filed as Junk
    f = await forwarding(forward_spam=forward_spam)
    _rcpts, (code, _text) = await f.send("bounces@bulk.example", [ALIAS], message("junk"))
    assert code == 250
    assert len(f.local("Junk")) == 1 and f.local() == []
    if forward_spam:
        await f.peer.wait_messages(1, 15)
        assert f.peer.messages[0].mail_from.startswith("SRS0=")
    else:
        await asyncio.sleep(0.5)
        assert f.peer.messages == [] and not f.ctx.queue.entries  # type: ignore[union-attr]


async def test_sender_in_our_domain_and_null_sender_are_not_rewritten(forwarding: Factory) -> None:
    f = await forwarding()
    _r, (code, _t) = await f.send("", [ALIAS], message("null"))
    assert code == 250
    await f.peer.wait_messages(1, 15)
    assert f.peer.messages[0].mail_from == "<>"  # the null sender stays null
    _r, (code, _t) = await f.send("bob@example.test", [ALIAS], message("ours", sender="bob@example.test"))
    assert code == 250
    await f.peer.wait_messages(2, 15)
    assert f.peer.messages[1].mail_from == "bob@example.test"  # our SPF covers it (postsrsd's exclude)
    assert len(f.local()) == 2


async def test_submitted_mail_to_an_alias_reaches_its_remote_target_through_cleanup(forwarding: Factory) -> None:
    from mailhaven import cleanup

    f = await forwarding()
    with UsersFile.edit(f.ctx.config.users_file) as uf:
        uf.add_alias("far@example.test", ["x@b.test"])  # only a remote target
    f.ctx.directory = app.load_directory(f.ctx.config)
    msg = b"From: alice@example.test\r\nTo: team@example.test\r\nSubject: sub\r\n\r\nbody\r\n"
    await cleanup.enqueue(f.ctx, ALICE, [ALIAS, "far@example.test"], msg)
    assert len(f.local()) == 1
    await f.peer.wait_messages(1, 15)
    [got] = f.peer.messages
    # one queued copy for both aliases' remote targets; our own sender is not rewritten
    assert (got.mail_from, sorted(got.rcpt_tos)) == (ALICE, [REMOTE, "x@b.test"])
    assert field_values(got.data, "Delivered-To") == [ALIAS, "far@example.test"]
    assert b"DKIM-Signature" in got.data  # cleanup signed it for example.test, the author's domain


async def test_mx_records_arc_and_a_second_hop_seals_i2_with_cv_pass(forwarding: Factory,
                                                                      dns_nameserver: str) -> None:
    f = await forwarding()
    with UsersFile.edit(f.ctx.config.users_file) as uf:
        uf.add_alias("relay@example.test", ["y@b.test"])
    f.ctx.directory = app.load_directory(f.ctx.config)
    _r, (code, _t) = await f.send(ORIGINAL, [ALIAS], message("hop one"))
    assert code == 250
    [plain] = f.local()
    assert "arc=none" in field_value(plain, "Authentication-Results")  # no ARC set: none (RFC 8617 §7.2)
    await f.peer.wait_messages(1, 15)
    sealed = f.peer.messages[0].data
    # our MX verifies the chain (dkimpy's arc_verify, our resolver) and records it
    _r, (code, _t) = await f.send(ORIGINAL, [ALICE], sealed)
    assert code == 250
    assert "arc=pass" in field_value(f.local()[-1], "Authentication-Results")
    tampered = sealed.replace(b"this goes to Alice", b"this goes to Mallory")
    _r, (code, _t) = await f.send(ORIGINAL, [ALICE], tampered)
    assert code == 250
    assert "arc=fail" in field_value(f.local()[-1], "Authentication-Results")
    # forwarded once more: the second set is i=2 and carries cv=pass, and the whole chain verifies
    first_hop = Srs(b"first hop", "fwd.sender.test").forward(ORIGINAL)  # another forwarder's SRS0
    _r, (code, _t) = await f.send(first_hop, ["relay@example.test"], sealed)
    assert code == 250
    await f.peer.wait_messages(2, 15)
    second = f.peer.messages[1]
    # SRS1 keeps the first hop and its opaque part; a bounce to it goes back to that first hop
    assert second.mail_from.startswith("SRS1=")
    assert second.mail_from.endswith("=fwd.sender.test==" + first_hop[5:].rpartition("@")[0] + "@example.test")
    assert f.srs().reverse(second.mail_from) == first_hop
    seals = field_values(second.data, "ARC-Seal")
    assert len(seals) == 2 and "i=2" in seals[0] and "cv=pass" in seals[0]
    assert arc_verify(second.data, dns_nameserver) == b"pass"


async def test_a_message_at_the_size_limit_is_still_forwarded(forwarding: Factory) -> None:
    f = await forwarding(smtp={"max_message_size": 64 * 1024})
    msg = message("big")
    msg += (b"y" * 78 + b"\r\n") * ((64 * 1024 - len(msg) - 300) // 80)  # the forwarded copy is over it
    _r, (code, _t) = await f.send(ORIGINAL, [ALIAS], msg)
    assert code == 250
    await f.peer.wait_messages(1, 15)
    assert len(f.peer.messages[0].data) > 64 * 1024 and len(f.local()) == 1


async def test_a_postmaster_alias_to_another_server_is_forwarded_not_given_to_the_first_user(
        forwarding: Factory) -> None:
    f = await forwarding()
    with UsersFile.edit(f.ctx.config.users_file) as uf:
        uf.add_alias("postmaster@example.test", [REMOTE], replace=True)
    f.ctx.directory = app.load_directory(f.ctx.config)
    _r, (code, _t) = await f.send(ORIGINAL, ["PostMaster@example.test"], message("to the postmaster"))
    assert code == 250
    await f.peer.wait_messages(1, 15)
    [got] = f.peer.messages
    assert got.rcpt_tos == [REMOTE] and got.mail_from.startswith("SRS0=")
    assert f.local() == []  # not Alice's (the first user's) mail
    # bare <postmaster> (RFC 5321 §4.5.1) has no address to forward as: a local user gets it
    _r, (code, _t) = await f.send(ORIGINAL, ["postmaster"], message("bare postmaster"))
    assert code == 250 and len(f.local()) == 1


def _send_dsn(port: int, sender: str, rcpt: str, data: bytes, mail: list[str], rcpt_options: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mta.sender.test", timeout=30) as c:
        c.sendmail(sender, [rcpt], data, mail_options=mail, rcpt_options=rcpt_options)


async def test_dsn_requests_of_an_alias_go_on_with_its_forwarded_copy(forwarding: Factory) -> None:
    """RFC 3461 §6.2.7: an alias reaching several places (Alice here, someone@b.test) reports the
    success itself ("expanded") and passes the rest on with ORCPT; one forwarding to a single
    address elsewhere passes NOTIFY on as asked and reports nothing itself."""
    f = await forwarding()
    f.peer.offers_dsn = True
    await asyncio.to_thread(_send_dsn, f.port, ORIGINAL, ALIAS, message("expand"), ["ENVID=E-1"],
                            ["NOTIFY=SUCCESS,FAILURE"])
    got = await f.peer.wait_messages(2, 15)  # the forwarded copy and our notice to the sender
    [copy] = [m for m in got if m.rcpt_tos == [REMOTE]]
    assert {"ENVID=E-1", "NOTIFY=FAILURE", f"ORCPT=rfc822;{ALIAS}"} <= set(f.peer.dsn_params)
    assert "NOTIFY=FAILURE,SUCCESS" not in f.peer.dsn_params
    [notice] = [m for m in got if m.rcpt_tos == [ORIGINAL]]
    assert notice.mail_from == "<>" and b"Action: expanded" in notice.data and b"Subject: expand" in notice.data
    assert b"Hello team" in copy.data and len(f.local()) == 1

    solo = "solo@example.test"
    with UsersFile.edit(f.ctx.config.users_file) as uf:
        uf.add_alias(solo, [REMOTE])
    f.ctx.directory = Directory.load(f.ctx.config)
    f.peer.dsn_params.clear()
    await asyncio.to_thread(_send_dsn, f.port, ORIGINAL, solo, message("solo"), [], ["NOTIFY=SUCCESS"])
    got = await f.peer.wait_messages(3, 15)
    assert got[2].rcpt_tos == [REMOTE]
    assert sorted(f.peer.dsn_params) == ["NOTIFY=SUCCESS", f"ORCPT=rfc822;{solo}"]
    await asyncio.sleep(1)
    assert len(f.peer.messages) == 3  # no notice from us: the next hop reports
