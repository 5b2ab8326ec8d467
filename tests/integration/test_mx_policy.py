"""Sender authentication on the MX (SPF at MAIL, DKIM + DMARC at DATA) against the real test DNS
server (tests/dnsserver.py). Clients are on 127.0.0.1: policy applies to loopback too."""

from __future__ import annotations

import asyncio

import dkim as dkimpy
import pytest

from mailhaven.message.headers import field_value
from mailhaven.policy.dkim import generate_rsa
from tests.dnsserver import DnsServer
from tests.fixtures_dns import SilentNameserver
from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, BOB, MxFactory, MxServer, message

mx = harness.mx  # the fixture

SENDER_DOMAIN = "sender.test"
SENDER = f"news@{SENDER_DOMAIN}"


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, str]:
    return generate_rsa(2048)


def _dkim_sign(msg: bytes, domain: str, key_pem: bytes, selector: str = "sel") -> bytes:
    """Sign with dkimpy directly (not through our wrapper): relaxed/relaxed, rsa-sha256."""
    sig = dkimpy.sign(msg, selector.encode(), domain.encode(), key_pem,
                      canonicalize=(b"relaxed", b"relaxed"),
                      include_headers=[b"from", b"to", b"subject", b"message-id"])
    return sig + msg


def _auth_results(msg: bytes) -> str:
    return field_value(msg, "Authentication-Results") or ""


async def _deliver(server: MxServer, msg: bytes, sender: str = SENDER, rcpt: str = ALICE,
                   helo: str = "mta.sender.test") -> list[str]:
    replies = await server.send(sender, [rcpt], msg, helo=helo)
    return replies[-1]


# --- DKIM ----------------------------------------------------------------------------------------


async def test_message_signed_by_dkimpy_passes_and_says_so(mx: MxFactory, dns_server: DnsServer,
                                                           rsa_key: tuple[bytes, str]) -> None:
    pem, record = rsa_key
    dns_server.add(f"sel._domainkey.{SENDER_DOMAIN}", "TXT", record)
    server = await mx()
    signed = _dkim_sign(message(sender=SENDER, subject="signed"), SENDER_DOMAIN, pem)
    [reply] = await _deliver(server, signed)
    assert reply.startswith("250 2.0.0"), reply
    [msg] = server.messages(ALICE)
    ar = _auth_results(msg)
    assert f"dkim=pass header.d={SENDER_DOMAIN} header.s=sel header.a=rsa-sha256" in ar, ar


async def test_altered_body_fails_dkim(mx: MxFactory, dns_server: DnsServer, rsa_key: tuple[bytes, str]) -> None:
    pem, record = rsa_key
    dns_server.add(f"sel._domainkey.{SENDER_DOMAIN}", "TXT", record)
    server = await mx()
    signed = _dkim_sign(message(sender=SENDER, body="Pay 10 EUR.\r\n"), SENDER_DOMAIN, pem)
    [reply] = await _deliver(server, signed.replace(b"Pay 10 EUR.", b"Pay 9999 EUR."))
    assert reply.startswith("250"), reply  # no DMARC record: a failed signature alone is not a reject
    [msg] = server.messages(ALICE)
    assert "dkim=fail" in _auth_results(msg)


async def test_two_signatures_give_two_dkim_entries(mx: MxFactory, dns_server: DnsServer,
                                                    rsa_key: tuple[bytes, str]) -> None:
    pem, record = rsa_key
    dns_server.add(f"sel._domainkey.{SENDER_DOMAIN}", "TXT", record)
    dns_server.add("sel._domainkey.esp.test", "TXT", record)
    server = await mx()
    once = _dkim_sign(message(sender=SENDER), SENDER_DOMAIN, pem)
    twice = _dkim_sign(once, "esp.test", pem)
    await _deliver(server, twice)
    [msg] = server.messages(ALICE)
    ar = _auth_results(msg)
    assert ar.count("dkim=pass") == 2 and "header.d=esp.test" in ar and f"header.d={SENDER_DOMAIN}" in ar


# --- SPF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("record", "result"), [
    ("v=spf1 ip4:127.0.0.1 -all", "pass"),
    ("v=spf1 ip4:192.0.2.1 ~all", "softfail"),
    ("v=spf1 ?all", "neutral"),
    (None, "none"),
])
async def test_spf_results_are_recorded_and_the_message_accepted(mx: MxFactory, dns_server: DnsServer,
                                                                 record: str | None, result: str) -> None:
    if record:
        dns_server.add(SENDER_DOMAIN, "TXT", record)
    server = await mx()
    [reply] = await _deliver(server, message(sender=SENDER))
    assert reply.startswith("250 2.0.0"), reply
    [msg] = server.messages(ALICE)
    assert f"spf={result} smtp.mailfrom={SENDER_DOMAIN}" in _auth_results(msg)
    assert (field_value(msg, "Received-SPF") or "").startswith(result)


async def test_spf_fail_without_aligned_dkim_is_rejected_550_5_7_1(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(SENDER_DOMAIN, "TXT", "v=spf1 ip4:192.0.2.1 -all")
    server = await mx()
    [reply] = await _deliver(server, message(sender=SENDER))
    assert reply.startswith("550 5.7.1"), reply
    assert server.messages(ALICE) == []


async def test_spf_fail_with_aligned_dkim_pass_is_accepted(mx: MxFactory, dns_server: DnsServer,
                                                           rsa_key: tuple[bytes, str]) -> None:
    pem, record = rsa_key
    dns_server.add(SENDER_DOMAIN, "TXT", "v=spf1 ip4:192.0.2.1 -all")
    dns_server.add(f"sel._domainkey.{SENDER_DOMAIN}", "TXT", record)
    server = await mx()
    [reply] = await _deliver(server, _dkim_sign(message(sender=SENDER), SENDER_DOMAIN, pem))
    assert reply.startswith("250 2.0.0"), reply
    [msg] = server.messages(ALICE)
    assert "spf=fail" in _auth_results(msg) and "dkim=pass" in _auth_results(msg)


async def test_spf_temperror_defers_with_451_4_4_3(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.set_servfail(SENDER_DOMAIN)
    server = await mx()
    [reply] = await _deliver(server, message(sender=SENDER))
    assert reply.startswith("451 4.4.3"), reply
    assert server.messages(ALICE) == []


async def test_dns_timeout_defers_with_451_4_4_3_and_keeps_nothing(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.set_timeout(SENDER_DOMAIN)
    server = await mx(dns={"nameservers": [dns_server.nameserver], "timeout": 0.5})
    [reply] = await _deliver(server, message(sender=SENDER))
    assert reply.startswith("451 4.4.3"), reply
    assert server.messages(ALICE) == []


async def test_null_sender_is_checked_against_the_helo_name(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add("mta.sender.test", "TXT", "v=spf1 ip4:192.0.2.1 -all", ttl=0)  # changed below
    server = await mx()
    [reply] = await _deliver(server, message(sender="mailer-daemon@mta.sender.test"), sender="",
                             helo="mta.sender.test")
    assert reply.startswith("550 5.7.1"), reply
    dns_server.remove("mta.sender.test")
    dns_server.add("mta.sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    [reply] = await _deliver(server, message(sender="mailer-daemon@mta.sender.test"), sender="",
                             helo="mta.sender.test")
    assert reply.startswith("250"), reply
    [msg] = server.messages(ALICE)
    assert "spf=pass smtp.helo=mta.sender.test" in _auth_results(msg)


# --- DMARC ---------------------------------------------------------------------------------------


async def test_dmarc_reject_with_unaligned_identities_is_550_5_7_1(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject")
    dns_server.add("bulk.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")  # SPF passes, but for another domain
    server = await mx()
    [reply] = await _deliver(server, message(sender=SENDER), sender="bounce@bulk.example")
    assert reply.startswith("550 5.7.1"), reply
    assert "DMARC" in reply
    assert server.messages(ALICE) == []


async def test_dmarc_reject_with_aligned_spf_pass_is_delivered(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject")
    dns_server.add(f"bounces.{SENDER_DOMAIN}", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    server = await mx()
    [reply] = await _deliver(server, message(sender=SENDER), sender=f"b@bounces.{SENDER_DOMAIN}")
    assert reply.startswith("250 2.0.0"), reply  # relaxed alignment: bounces.sender.test ~ sender.test
    [msg] = server.messages(ALICE)
    assert f"dmarc=pass (p=reject dis=none) header.from={SENDER_DOMAIN}" in _auth_results(msg)


async def test_dmarc_reject_with_aligned_dkim_pass_is_delivered(mx: MxFactory, dns_server: DnsServer,
                                                                rsa_key: tuple[bytes, str]) -> None:
    pem, record = rsa_key
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject")
    dns_server.add(f"sel._domainkey.{SENDER_DOMAIN}", "TXT", record)
    server = await mx()
    signed = _dkim_sign(message(sender=SENDER), SENDER_DOMAIN, pem)
    [reply] = await _deliver(server, signed, sender="bounce@bulk.example")
    assert reply.startswith("250 2.0.0"), reply
    assert "dmarc=pass" in _auth_results(server.messages(ALICE)[0])


async def test_dmarc_quarantine_goes_to_junk(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=quarantine")
    server = await mx()
    replies = await server.send("bounce@bulk.example", [ALICE, BOB], message(sender=SENDER))
    assert replies[-1][0].startswith("250 2.0.0"), replies
    assert server.messages(ALICE) == [] and server.messages(BOB) == []
    [junk] = server.messages(ALICE, "Junk")
    assert len(server.messages(BOB, "Junk")) == 1
    assert "dmarc=fail (p=quarantine dis=quarantine)" in _auth_results(junk)


async def test_dmarc_none_policy_delivers_to_inbox_with_dmarc_fail(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=none")
    server = await mx()
    [reply] = await _deliver(server, message(sender=SENDER), sender="bounce@bulk.example")
    assert reply.startswith("250 2.0.0"), reply
    [msg] = server.messages(ALICE)
    assert "dmarc=fail (p=none dis=none)" in _auth_results(msg)


async def test_dmarc_record_lookup_servfail_defers(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.set_servfail(f"_dmarc.{SENDER_DOMAIN}")
    server = await mx()
    [reply] = await _deliver(server, message(sender=SENDER), sender="bounce@bulk.example")
    assert reply.startswith("451 4.4.3"), reply
    assert server.messages(ALICE) == []


async def test_dmarc_record_is_looked_up_at_mail_from_and_used_at_data(mx: MxFactory, dns_server: DnsServer) -> None:
    # MAIL FROM's domain is the From domain: its record is asked for while RCPT and DATA go on,
    # and DATA uses that answer (one query in all).
    dns_server.add(SENDER_DOMAIN, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject")
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO mta.sender.test")
        assert (await c.cmd(f"MAIL FROM:<{SENDER}>"))[0].startswith("250")
        await harness.wait_until(lambda: dns_server.queried(f"_dmarc.{SENDER_DOMAIN}", "TXT") == 1)
        assert (await c.cmd(f"RCPT TO:<{ALICE}>"))[0].startswith("250")
        assert (await c.cmd("DATA"))[0].startswith("354")
        [reply] = await c.cmd(harness.dot_stuff(message(sender=SENDER)) + b".")
        assert reply.startswith("250 2.0.0"), reply
    assert dns_server.queried(f"_dmarc.{SENDER_DOMAIN}", "TXT") == 1
    assert f"dmarc=pass (p=reject dis=none) header.from={SENDER_DOMAIN}" in _auth_results(server.messages(ALICE)[0])


async def test_dmarc_record_of_another_mail_from_domain_does_not_decide(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add("bulk.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("_dmarc.bulk.example", "TXT", "v=DMARC1; p=none")
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject")
    server = await mx()
    [reply] = await _deliver(server, message(sender=SENDER), sender="bounce@bulk.example")
    assert reply.startswith("550 5.7.1") and "DMARC" in reply, reply
    assert dns_server.queried(f"_dmarc.{SENDER_DOMAIN}", "TXT") == 1
    assert server.messages(ALICE) == []


async def test_policy_checks_do_not_block_other_sessions(mx: MxFactory, dns_server: DnsServer) -> None:
    # One client waits on a DNS timeout; another is served meanwhile.
    dns_server.set_timeout("slow.test")
    server = await mx(dns={"nameservers": [dns_server.nameserver], "timeout": 2.0})
    slow = asyncio.create_task(server.send("a@slow.test", [ALICE], message(sender="a@slow.test")))
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    [reply] = await _deliver(server, message(sender=SENDER))
    assert reply.startswith("250"), reply
    assert loop.time() - start < 1.5
    assert (await slow)[-1][0].startswith("451 4.4.3")


async def test_rset_abandons_a_pending_sender_check(mx: MxFactory, dns_server: DnsServer) -> None:
    # SPF runs while RCPT and DATA go on; RSET cancels it, and the next transaction does not wait.
    dns_server.set_timeout("slow.test")
    server = await mx(dns={"nameservers": [dns_server.nameserver], "timeout": 3.0})
    loop = asyncio.get_running_loop()
    async with server.raw() as c:
        await c.cmd("EHLO mta.sender.test")
        start = loop.time()
        assert (await c.cmd("MAIL FROM:<a@slow.test>"))[0].startswith("250 2.1.0")
        assert (await c.cmd("RSET"))[0].startswith("250")
        assert (await c.cmd(f"MAIL FROM:<{SENDER}>"))[0].startswith("250")
        assert (await c.cmd(f"RCPT TO:<{ALICE}>"))[0].startswith("250")
        assert (await c.cmd("DATA"))[0].startswith("354")
        [reply] = await c.cmd(harness.dot_stuff(message(sender=SENDER)) + b".")
        assert reply.startswith("250 2.0.0"), reply
        assert loop.time() - start < 2.0


# --- configurable actions, DNS trouble, dev mode ---------------------------------------------------


async def test_dmarc_reject_action_junk_delivers_to_junk(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject")
    server = await mx(policy={"dmarc_reject": "junk"})
    assert server.ctx.config.policy.dmarc_reject == "junk"
    [reply] = await _deliver(server, message(sender=SENDER), sender="bounce@bulk.example")
    assert reply.startswith("250 2.0.0"), reply
    assert server.messages(ALICE) == []
    [junk] = server.messages(ALICE, "Junk")
    assert "dmarc=fail (p=reject" in _auth_results(junk)


async def test_dmarc_quarantine_action_reject_is_550_5_7_1(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=quarantine")
    server = await mx(policy={"dmarc_quarantine": "reject"})
    [reply] = await _deliver(server, message(sender=SENDER), sender="bounce@bulk.example")
    assert reply.startswith("550 5.7.1") and "DMARC" in reply, reply
    assert server.messages(ALICE) == [] and server.messages(ALICE, "Junk") == []


async def test_dkim_key_servfail_for_an_aligned_signature_under_p_reject_defers_451_4_4_3(
        mx: MxFactory, dns_server: DnsServer, rsa_key: tuple[bytes, str]) -> None:
    # SPF is not aligned (bulk.example), so DMARC hangs on the aligned signature, whose key cannot be
    # fetched right now: a temporary error (RFC 7489 §6.6.2 temperror), never a reject, never a
    # delivery that skipped the policy.
    pem, _record = rsa_key
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject")
    dns_server.add("bulk.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.set_servfail(f"sel._domainkey.{SENDER_DOMAIN}")
    server = await mx()
    signed = _dkim_sign(message(sender=SENDER), SENDER_DOMAIN, pem)
    [reply] = await _deliver(server, signed, sender="bounce@bulk.example")
    assert reply.startswith("451 4.4.3"), reply
    assert dns_server.queried(f"sel._domainkey.{SENDER_DOMAIN}", "TXT") >= 1
    assert harness.all_files(server.mail_root) == []


async def test_dev_mode_delivers_mail_from_loopback_unchecked_and_asks_dns_nothing(
        mx: MxFactory, dns_server: DnsServer) -> None:
    # Issue 11 item 2: in dev mode a loopback client's mail is not checked, so a failing SPF and a
    # p=reject DMARC policy change nothing, and not one DNS query is sent.
    dns_server.add(SENDER_DOMAIN, "TXT", "v=spf1 ip4:192.0.2.1 -all")
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject")
    server = await mx(dev=True)
    assert server.ctx.config.dev is True
    forged = message(sender=SENDER, extra=f"Authentication-Results: {server.ctx.config.authserv_id}; spf=pass\r\n")
    [reply] = await _deliver(server, forged)  # from 127.0.0.1
    assert reply.startswith("250 2.0.0"), reply
    assert dns_server.queries == []
    [msg] = server.messages(ALICE)
    # RFC 8601 §2.2: "none", no authentication performed; the comment says why. The forged field
    # with our authserv-id is still removed (§5), and there is no Received-SPF: nothing was checked.
    assert field_value(msg, "Authentication-Results") == (
        f"{server.ctx.config.authserv_id}; none (dev mode: loopback client, not checked)")
    assert msg.count(b"Authentication-Results:") == 1
    assert field_value(msg, "Received-SPF") is None


async def test_without_dev_mode_a_loopback_client_is_checked(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(SENDER_DOMAIN, "TXT", "v=spf1 ip4:192.0.2.1 -all")
    server = await mx()
    assert server.ctx.config.dev is False
    [reply] = await _deliver(server, message(sender=SENDER))  # from 127.0.0.1
    assert reply.startswith("550 5.7.1") and "SPF" in reply, reply
    assert dns_server.queried(SENDER_DOMAIN, "TXT") >= 1
    assert harness.all_files(server.mail_root) == []


DEAD_DNS_TIMEOUT = 3.0


async def test_dev_mode_delivers_from_loopback_when_dns_never_answers(
        mx: MxFactory, silent_nameserver: SilentNameserver) -> None:
    # A machine without working DNS: the resolver's address takes queries and never answers.
    dead = {"nameservers": [silent_nameserver.nameserver], "timeout": DEAD_DNS_TIMEOUT}
    server = await mx(dev=True, dns=dead)
    loop = asyncio.get_running_loop()
    start = loop.time()
    [reply] = await _deliver(server, message(sender=SENDER))
    elapsed = loop.time() - start
    assert reply.startswith("250 2.0.0"), reply
    assert silent_nameserver.queries() == 0
    assert elapsed < DEAD_DNS_TIMEOUT  # one DNS query alone would have taken this long
    assert len(server.messages(ALICE)) == 1


async def test_production_answers_451_when_dns_never_answers(
        mx: MxFactory, silent_nameserver: SilentNameserver) -> None:
    dead = {"nameservers": [silent_nameserver.nameserver], "timeout": 1.0}
    server = await mx(dns=dead)
    [reply] = await _deliver(server, message(sender=SENDER))
    assert reply.startswith("451 4.4.3") and "DNS error during policy check" in reply, reply
    assert silent_nameserver.queries() >= 1
    assert harness.all_files(server.mail_root) == []


# --- RFC5322.From ---------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", [b"hello world\r\n", b"Subject: no author\r\n\r\nbody\r\n"])
async def test_message_without_from_is_delivered_with_dmarc_none(mx: MxFactory, dns_server: DnsServer,
                                                                 msg: bytes) -> None:
    """No From field: no author is shown, so no domain's policy is evaded; Postfix delivers it."""
    dns_server.add(SENDER_DOMAIN, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    server = await mx()
    [reply] = await _deliver(server, msg)
    assert reply.startswith("250 2.0.0"), reply
    [stored] = server.messages(ALICE)
    ar = _auth_results(stored)
    assert "spf=pass" in ar and "dmarc=none" in ar, ar
    assert stored.endswith(msg)


async def test_message_without_from_still_fails_on_spf(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(SENDER_DOMAIN, "TXT", "v=spf1 ip4:192.0.2.1 -all")
    server = await mx()
    [reply] = await _deliver(server, b"Subject: no author\r\n\r\nbody\r\n")
    assert reply.startswith("550 5.7.1") and "SPF" in reply, reply
    assert server.messages(ALICE) == []


@pytest.mark.parametrize("head", [b"From: a@sender.test\r\nFrom: b@other.test\r\n",
                                  b"From: a@sender.test, b@other.test\r\n", b"From: undisclosed\r\n"])
async def test_message_with_ambiguous_author_is_rejected(mx: MxFactory, dns_server: DnsServer, head: bytes) -> None:
    dns_server.add(SENDER_DOMAIN, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    server = await mx()
    [reply] = await _deliver(server, head + b"Subject: x\r\n\r\nbody\r\n")
    assert reply.startswith("550 5.7.1"), reply
    assert server.messages(ALICE) == []
