"""policy.dkim_fail on the MX, end to end: the fixture DNS server publishes the key, dkimpy signs,
the body is altered in transit, and the MX stores (INBOX or Junk) or refuses the message."""

from __future__ import annotations

import dkim as dkimpy
import pytest

from mailhaven.message.headers import field_value
from mailhaven.policy.dkim import generate_rsa
from tests.dnsserver import DnsServer
from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, MxFactory, MxServer, message

mx = harness.mx  # the fixture

SENDER_DOMAIN = "sender.test"
SENDER = f"news@{SENDER_DOMAIN}"


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, str]:
    return generate_rsa(2048)


@pytest.fixture
def published(dns_server: DnsServer, rsa_key: tuple[bytes, str]) -> bytes:
    """The sender's DKIM key in DNS and an SPF record that passes for 127.0.0.1, so only DKIM can
    decide (no DMARC record: DMARC is none). Returns the private key."""
    pem, record = rsa_key
    dns_server.add(f"sel._domainkey.{SENDER_DOMAIN}", "TXT", record)
    dns_server.add(SENDER_DOMAIN, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    return pem


def _signed(pem: bytes, body: str = "Pay 10 EUR.\r\n") -> bytes:
    """Signed by dkimpy directly (relaxed/relaxed, rsa-sha256), not through our wrapper."""
    msg = message(sender=SENDER, subject="invoice", body=body)
    return dkimpy.sign(msg, b"sel", SENDER_DOMAIN.encode(), pem, canonicalize=(b"relaxed", b"relaxed"),
                       include_headers=[b"from", b"to", b"subject", b"message-id"]) + msg


def _tampered(pem: bytes) -> bytes:
    signed = _signed(pem)
    altered = signed.replace(b"Pay 10 EUR.", b"Pay 9999 EUR.")
    assert altered != signed
    return altered


async def _deliver(server: MxServer, msg: bytes) -> str:
    replies = await server.send(SENDER, [ALICE], msg, helo="mta.sender.test")
    return replies[-1][0]


def _auth_results(msg: bytes) -> str:
    return field_value(msg, "Authentication-Results") or ""


async def test_default_accept_delivers_a_failed_signature_to_inbox_with_dkim_fail(
        mx: MxFactory, published: bytes) -> None:
    server = await mx()  # policy.dkim_fail left at its default
    reply = await _deliver(server, _tampered(published))
    assert reply.startswith("250 2.0.0"), reply
    [msg] = server.messages(ALICE)
    assert server.messages(ALICE, "Junk") == []
    ar = _auth_results(msg)
    assert f'dkim=fail reason="body hash did not verify" header.d={SENDER_DOMAIN}' in ar, ar
    assert "spf=pass" in ar and "dmarc=none" in ar, ar
    assert b"Pay 9999 EUR." in msg


async def test_junk_files_a_failed_signature_in_junk(mx: MxFactory, published: bytes) -> None:
    server = await mx(policy={"dkim_fail": "junk"})
    reply = await _deliver(server, _tampered(published))
    assert reply.startswith("250 2.0.0"), reply
    assert server.messages(ALICE) == []
    [junk] = server.messages(ALICE, "Junk")
    assert "dkim=fail" in _auth_results(junk)


async def test_reject_refuses_a_failed_signature_with_550_5_7_1_and_stores_nothing(
        mx: MxFactory, published: bytes) -> None:
    server = await mx(policy={"dkim_fail": "reject"})
    reply = await _deliver(server, _tampered(published))
    assert reply.startswith("550 5.7.1") and "DKIM" in reply, reply
    assert server.messages(ALICE) == [] and server.messages(ALICE, "Junk") == []


async def test_reject_refuses_a_signature_without_a_key_permerror(mx: MxFactory, published: bytes,
                                                                  dns_server: DnsServer) -> None:
    dns_server.remove(f"sel._domainkey.{SENDER_DOMAIN}")  # no key record: permerror (RFC 6376 §6.1.2)
    server = await mx(policy={"dkim_fail": "reject"})
    reply = await _deliver(server, _signed(published))
    assert reply.startswith("550 5.7.1") and "DKIM" in reply, reply
    assert server.messages(ALICE) == []


@pytest.mark.parametrize("action", ["accept", "junk", "reject"])
async def test_a_valid_signature_is_unaffected(mx: MxFactory, published: bytes, action: str) -> None:
    server = await mx(policy={"dkim_fail": action})
    reply = await _deliver(server, _signed(published))
    assert reply.startswith("250 2.0.0"), reply
    [msg] = server.messages(ALICE)
    assert f"dkim=pass header.d={SENDER_DOMAIN}" in _auth_results(msg)


async def test_unsigned_mail_is_unaffected_by_reject(mx: MxFactory, published: bytes) -> None:
    server = await mx(policy={"dkim_fail": "reject"})
    reply = await _deliver(server, message(sender=SENDER))
    assert reply.startswith("250 2.0.0"), reply
    assert len(server.messages(ALICE)) == 1


async def test_key_lookup_servfail_defers_with_451_4_4_3_when_the_action_is_reject(
        mx: MxFactory, published: bytes, dns_server: DnsServer) -> None:
    dns_server.set_servfail(f"sel._domainkey.{SENDER_DOMAIN}")
    server = await mx(policy={"dkim_fail": "reject"})
    reply = await _deliver(server, _signed(published))
    assert reply.startswith("451 4.4.3"), reply
    assert server.messages(ALICE) == []
