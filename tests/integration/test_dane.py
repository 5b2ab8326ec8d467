"""DANE (RFC 7672) in remote delivery, end to end: a zone signed by the test (dnspython), served by
the test DNS server, validated by a real unbound whose trust anchor is the zone's key; our resolver
asks unbound and trusts its AD bit. SMTP peers with certificates that do or do not match the TLSA."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailhaven.delivery import remote, tlspolicy
from mailhaven.dns.resolver import Resolver
from tests.dnsserver import DnsServer
from tests.fixtures_unbound import signed_zone
from tests.smtp_peer import SmtpPeer, cert_files, server_tls_context, shared_port

MSG = b"From: alice@example.test\r\nTo: bob@d.test\r\nSubject: hi\r\n\r\nHello.\r\n"

ZONE = """$TTL 60
d.test. IN SOA ns.d.test. hostmaster.d.test. 1 3600 600 86400 60
d.test. IN NS ns.d.test.
ns.d.test. IN A 127.0.0.1
d.test. IN MX 10 mx.d.test.
mx.d.test. IN A 127.0.0.2
"""


@pytest.fixture
def port() -> int:
    return shared_port("127.0.0.2")


def _spki_sha256(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@pytest.fixture
async def mx(port: int, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """An MX on 127.0.0.2 with a self-signed certificate (no CA would vouch for it)."""
    started: list[SmtpPeer] = []

    async def start(*names: str) -> tuple[SmtpPeer, str]:
        cert, key = cert_files(tmp_path / "peer", *names)
        p = SmtpPeer("127.0.0.2", port, tls_context=server_tls_context(cert, key))
        started.append(await p.start())
        return p, _spki_sha256(cert)

    yield start
    for p in started:
        await p.stop()


@pytest.fixture
def setup(make_config: Callable[..., Any], dns_server: DnsServer, unbound_resolver: Any,
          port: int) -> Callable[..., Any]:
    def go(extra: str = "", *, signed: bool = True) -> tuple[Any, tlspolicy.TlsPolicies]:
        zone, anchor = signed_zone(ZONE + extra, "d.test.")
        dns_server.add_zone(zone)  # type: ignore[arg-type]
        nameserver = unbound_resolver("d.test.", anchor) if signed else dns_server.nameserver
        cfg = make_config(dns={"nameservers": [nameserver], "timeout": 2},
                          queue={"remote_port": port, "connect_timeout": 2, "command_timeout": 5,
                                 "mta_sts": False})
        return cfg, tlspolicy.TlsPolicies(cfg, Resolver.from_config(cfg.dns))
    return go


async def send(cfg: Any, pol: tlspolicy.TlsPolicies, **kw: Any) -> Any:
    [r] = await remote.deliver(cfg, pol.resolver, "alice@example.test", "d.test", ["bob@d.test"], MSG,
                               policies=pol, **kw)
    return r


async def test_a_dane_ee_match_delivers_to_a_certificate_no_ca_signed(setup: Any, mx: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    peer, digest = await mx("anything.example")
    cfg, pol = setup(f"_25._tcp.mx.d.test. IN TLSA 3 1 1 {digest}\n")
    plan = await pol.plan("d.test")
    assert plan.mx_secure
    caplog.set_level(logging.INFO)
    r = await send(cfg, pol)
    assert r.delivered, r.text
    assert [m.tls for m in peer.messages] == [True]
    assert any("(TLS; certificate verified: DANE, 1 usable TLSA)" in m for m in caplog.messages)


async def test_a_tlsa_mismatch_defers_with_4_7_5(setup: Any, mx: Any) -> None:
    peer, digest = await mx("mx.d.test")
    other = "00" * 32
    cfg, pol = setup(f"_25._tcp.mx.d.test. IN TLSA 3 1 1 {other}\n")
    r = await send(cfg, pol)
    assert (r.code, r.enhanced, r.temporary) == (451, "4.7.5", True)
    assert "fails DANE" in r.text and "policy: DANE, 1 usable TLSA" in r.text
    assert peer.messages == []


async def test_only_unusable_tlsa_records_leave_tls_opportunistic(setup: Any, mx: Any) -> None:
    peer, digest = await mx("anything.example")
    cfg, pol = setup(f"_25._tcp.mx.d.test. IN TLSA 1 1 1 {'00' * 32}\n")  # PKIX-EE: unusable for SMTP
    assert (await send(cfg, pol)).delivered
    assert len(peer.messages) == 1


async def test_a_signed_zone_without_tlsa_delivers_opportunistically(setup: Any, mx: Any) -> None:
    peer, _ = await mx("anything.example")
    cfg, pol = setup()  # the TLSA name does not exist: a validated NXDOMAIN (NSEC)
    assert (await send(cfg, pol)).delivered
    assert len(peer.messages) == 1


async def test_tlsa_without_dnssec_validation_is_ignored(setup: Any, mx: Any) -> None:
    peer, _ = await mx("mx.d.test")
    cfg, pol = setup(f"_25._tcp.mx.d.test. IN TLSA 3 1 1 {'00' * 32}\n", signed=False)  # no AD bit
    plan = await pol.plan("d.test")
    assert not plan.mx_secure
    assert (await send(cfg, pol)).delivered


async def test_requiretls_goes_through_dane(setup: Any, mx: Any) -> None:
    peer, digest = await mx("anything.example")
    peer.offers_requiretls = True
    cfg, pol = setup(f"_25._tcp.mx.d.test. IN TLSA 3 1 1 {digest}\n")
    r = await send(cfg, pol, requiretls=True)
    assert r.delivered, r.text
    assert peer.requiretls_seen == 1


async def test_dane_ta_needs_the_anchor_in_the_chain_and_the_mx_name(setup: Any, port: int, tls_ca: Any,
                                                                    tmp_path: Path) -> None:
    ca_der = x509.load_pem_x509_certificate(tls_ca.cert_pem.bytes())
    ca_spki = hashlib.sha256(ca_der.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    cfg, pol = setup(f"_25._tcp.mx.d.test. IN TLSA 2 1 1 {ca_spki}\n")
    for name, delivered in (("mx.d.test", True), ("other.example", False)):
        cert, key = cert_files(tmp_path / name, name, ca=tls_ca)
        chain = cert.with_suffix(".chain.pem")  # RFC 7672 §3.1.2: the server presents the anchor too
        chain.write_bytes(cert.read_bytes() + tls_ca.cert_pem.bytes())
        peer = await SmtpPeer("127.0.0.2", port, tls_context=server_tls_context(chain, key)).start()
        try:
            r = await send(cfg, pol)
        finally:
            await peer.stop()
        assert r.delivered is delivered, r.text
        if not delivered:
            assert r.enhanced == "4.7.5" and "does not name mx.d.test or d.test" in r.text


def test_dane_is_off_when_the_resolver_is_not_on_this_host(make_config: Callable[..., Any],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # A remote resolver's AD bit can be forged on the way: only a local validator is trusted.
    remote_ns = make_config(dns={"nameservers": ["192.0.2.53"]}, queue={"mta_sts": False})
    assert not tlspolicy.TlsPolicies(remote_ns, Resolver.from_config(remote_ns.dns)).dane
    assert any("DANE not used" in m for m in caplog.messages)
    local = make_config(dns={"nameservers": ["127.0.0.1:5353"]}, queue={"mta_sts": False})
    assert tlspolicy.TlsPolicies(local, Resolver.from_config(local.dns)).dane
