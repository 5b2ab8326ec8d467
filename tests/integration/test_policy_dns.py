"""SPF, DKIM, DMARC and the verdict, against the real test DNS server (tests/dnsserver.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import dkim as dkimpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.config import PolicyConfig
from mailhaven.dns.resolver import Resolver
from mailhaven.policy import dkim, dmarc, pipeline, spf
from mailhaven.policy.dkim import DkimResult
from tests.dnsserver import DnsServer

MSG = (b"From: Alice <alice@example.net>\r\n"
       b"To: bob@example.org\r\n"
       b"Subject: hello\r\n"
       b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
       b"Message-ID: <1@example.net>\r\n"
       b"MIME-Version: 1.0\r\n"
       b"Content-Type: text/plain\r\n"
       b"\r\n"
       b"Hello Bob.\r\n")

AUTHSERV = "mx.example.org"


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, str]:
    return dkim.generate_rsa(2048)


@pytest.fixture(scope="module")
def ed_key() -> tuple[bytes, str]:
    return dkim.generate_ed25519()


async def _signed(msg: bytes, domain: str, selector: str, key: bytes, alg: str = "rsa-sha256") -> bytes:
    return await dkim.sign(msg, domain, selector, key, alg) + msg  # type: ignore[arg-type]


def _with_from(domain: str, msg: bytes = MSG) -> bytes:
    return msg.replace(b"alice@example.net", b"alice@" + domain.encode())


# --- DKIM ----------------------------------------------------------------------------------------


async def test_dkim_signed_message_passes(dns_server: DnsServer, resolver: Resolver,
                                          rsa_key: tuple[bytes, str]) -> None:
    pem, txt = rsa_key
    dns_server.add("sel._domainkey.example.net", "TXT", txt)  # > 255 octets: several strings
    signed = await _signed(MSG, "example.net", "sel", pem)
    assert signed.startswith(b"DKIM-Signature: ") and b"\r\n\r\n" in signed
    [r] = await dkim.verify(resolver, signed)
    assert (r.result, r.domain, r.selector, r.algorithm) == ("pass", "example.net", "sel", "rsa-sha256")
    assert len(r.header_b) == 8 and signed.count(r.header_b.encode()) == 1


async def test_dkim_altered_body_fails(dns_server: DnsServer, resolver: Resolver,
                                       rsa_key: tuple[bytes, str]) -> None:
    pem, txt = rsa_key
    dns_server.add("sel._domainkey.example.net", "TXT", txt)
    signed = await _signed(MSG, "example.net", "sel", pem)
    [r] = await dkim.verify(resolver, signed.replace(b"Hello Bob.", b"Hello Eve."))
    assert r.result == "fail" and "body hash" in r.reason


async def test_dkim_altered_or_added_from_fails(dns_server: DnsServer, resolver: Resolver,
                                                rsa_key: tuple[bytes, str]) -> None:
    pem, txt = rsa_key
    dns_server.add("sel._domainkey.example.net", "TXT", txt)
    signed = await _signed(MSG, "example.net", "sel", pem)
    [r] = await dkim.verify(resolver, signed.replace(b"Subject: hello", b"Subject: hullo"))
    assert r.result == "fail"
    # From is oversigned: a second From added later breaks the signature.
    [r] = await dkim.verify(resolver, signed.replace(b"To: bob", b"From: eve@evil.example\r\nTo: bob"))
    assert r.result == "fail"


async def test_two_signatures_give_two_results(dns_server: DnsServer, resolver: Resolver,
                                               rsa_key: tuple[bytes, str], ed_key: tuple[bytes, str]) -> None:
    dns_server.add("sel._domainkey.example.net", "TXT", rsa_key[1])
    dns_server.add("ed._domainkey.other.example", "TXT", ed_key[1])
    once = await _signed(MSG, "example.net", "sel", rsa_key[0])
    twice = await _signed(once, "other.example", "ed", ed_key[0], "ed25519-sha256")
    results = await dkim.verify(resolver, twice)
    assert [(r.result, r.domain, r.algorithm) for r in results] == [
        ("pass", "other.example", "ed25519-sha256"), ("pass", "example.net", "rsa-sha256")]
    results = await dkim.verify(resolver, twice.replace(b"Hello Bob.", b"Bye."))
    assert [r.result for r in results] == ["fail", "fail"]


async def test_unsigned_message_has_no_results(dns_server: DnsServer, resolver: Resolver) -> None:
    assert await dkim.verify(resolver, MSG) == []


async def test_unsigned_message_costs_no_worker_thread(dns_server: DnsServer, resolver: Resolver,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_thread(*args: object, **kwargs: object) -> object:
        raise AssertionError("unsigned mail went to a worker thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    assert await dkim.verify(resolver, MSG) == []
    assert await dkim.verify(resolver, b"X-Note: talks about DKIM signatures\r\n" + MSG) == []
    # the name in the body does not count
    assert await dkim.verify(resolver, MSG + b"DKIM-Signature: v=1; in the body\r\n") == []


_PARTS = st.lists(st.sampled_from([
    b"DKIM-Signature: v=1; d=x\r\n", b"dkim-signature:x\n", b"DKIM-SIGNATURE: y\r\n", b"From: a@b\r\n",
    b" folded\r\n", b"\tdkim-signature: folded\r\n", b"\r\n", b"\n", b"\r", b"From x\r\n",
    b"X: dkim-signature\r\n", b"Dkim-Signature :y\r\n", b"body\r\n", b"\r\r\n",
]), max_size=10)


@given(_PARTS)
def test_has_signature_is_true_whenever_dkimpy_finds_a_signature_field(parts: list[bytes]) -> None:
    msg = b"".join(parts)
    try:
        fields, _body = dkimpy.rfc822_parse(msg)
    except (dkimpy.MessageFormatError, IndexError):  # IndexError: dkimpy on a leading folded line
        return
    if any(name.lower() == b"dkim-signature" for name, _ in fields):
        assert dkim.has_signature(msg)


def test_sync_resolver_is_built_once_per_thread(resolver: Resolver) -> None:
    here = resolver.sync_resolver()
    assert resolver.sync_resolver() is here
    other: list[object] = []
    t = threading.Thread(target=lambda: other.append(resolver.sync_resolver()))
    t.start()
    t.join()
    assert other[0] is not here  # never shared between threads
    assert Resolver(resolver.nameservers, resolver.timeout).sync_resolver() is not here


async def test_missing_or_broken_key_is_permerror(dns_server: DnsServer, resolver: Resolver,
                                                  rsa_key: tuple[bytes, str]) -> None:
    signed = await _signed(MSG, "example.net", "sel", rsa_key[0])
    [r] = await dkim.verify(resolver, signed)
    assert r.result == "permerror" and "no key" in r.reason
    dns_server.add("sel._domainkey.example.net", "TXT", "v=DKIM1; k=rsa; p=AAAA")
    [r] = await dkim.verify(resolver, signed)
    assert r.result == "permerror" and "bad key" in r.reason


async def test_key_lookup_servfail_is_temperror(dns_server: DnsServer, resolver: Resolver,
                                                rsa_key: tuple[bytes, str]) -> None:
    dns_server.set_servfail("sel._domainkey.example.net")
    signed = await _signed(MSG, "example.net", "sel", rsa_key[0])
    [r] = await dkim.verify(resolver, signed)
    assert r.result == "temperror"


async def test_garbage_signature_is_permerror_not_an_exception(dns_server: DnsServer,
                                                               resolver: Resolver) -> None:
    [r] = await dkim.verify(resolver, b"DKIM-Signature: v=1; a=rsa-sha256; nonsense\r\n" + MSG)
    assert r.result == "permerror"


async def test_public_record_matches_generated_record(rsa_key: tuple[bytes, str],
                                                      ed_key: tuple[bytes, str]) -> None:
    assert dkim.public_record(rsa_key[0]) == rsa_key[1]
    assert dkim.public_record(ed_key[0]) == ed_key[1]


# --- SPF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("record", "ip", "expected"), [
    ("v=spf1 ip4:127.0.0.1 -all", "127.0.0.1", "pass"),
    ("v=spf1 ip4:127.0.0.1 -all", "127.0.0.2", "fail"),
    ("v=spf1 ip4:127.0.0.1 ~all", "127.0.0.2", "softfail"),
    ("v=spf1 ?all", "127.0.0.2", "neutral"),
    ("v=spf1 mx -all", "127.0.0.5", "pass"),
    ("v=spf1 a:host.example.net -all", "127.0.0.6", "pass"),
    ("v=spf1 include:spf.example.org -all", "127.0.0.7", "pass"),
    ("v=spf1 bogus:x -all", "127.0.0.1", "permerror"),
    ("v=spf1 include:broken.example -all", "127.0.0.2", "temperror"),
])
async def test_spf_results(dns_server: DnsServer, resolver: Resolver, record: str, ip: str,
                           expected: str) -> None:
    dns_server.add("example.net", "TXT", record)
    dns_server.add("example.net", "MX", "10 mail.example.net.")
    dns_server.add("mail.example.net", "A", "127.0.0.5")
    dns_server.add("host.example.net", "A", "127.0.0.6")
    dns_server.add("spf.example.org", "TXT", "v=spf1 ip4:127.0.0.7 -all")
    dns_server.set_servfail("broken.example")
    r = await spf.check_host(resolver, ip, "alice@example.net", "client.example")
    assert (r.result, r.domain, r.identity) == (expected, "example.net", "mailfrom")


async def test_spf_without_record_is_none(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("example.net", "A", "127.0.0.1")
    assert (await spf.check_host(resolver, "127.0.0.1", "a@example.net", "h.example")).result == "none"
    assert (await spf.check_host(resolver, "127.0.0.1", "a@nxdomain.example", "h.example")).result == "none"


async def test_spf_servfail_on_the_domain_is_temperror(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_servfail("example.net")
    assert (await spf.check_host(resolver, "127.0.0.1", "a@example.net", "h.example")).result == "temperror"


async def test_spf_timeout_is_temperror_quickly(dns_server: DnsServer, dns_nameserver: str) -> None:
    dns_server.set_timeout("example.net")
    start = time.monotonic()
    r = await spf.check_host(Resolver([dns_nameserver], timeout=0.3), "127.0.0.1", "a@example.net", "h.example")
    assert r.result == "temperror"
    assert time.monotonic() - start < 3


async def test_null_sender_checks_the_helo_identity(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("mta.example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    r = await spf.check_host(resolver, "127.0.0.1", "", "mta.example.net")
    assert (r.result, r.domain, r.identity, r.sender) == ("pass", "mta.example.net", "helo",
                                                          "postmaster@mta.example.net")
    r = await spf.check_host(resolver, "127.0.0.9", "", "mta.example.net")
    assert r.result == "fail"


async def test_spf_ipv6_client(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("example.net", "TXT", "v=spf1 ip6:::1 -all")
    assert (await spf.check_host(resolver, "::1", "a@example.net", "h")).result == "pass"


# --- DMARC ---------------------------------------------------------------------------------------


async def _dmarc(resolver: Resolver, from_domain: str, spf_result: str, spf_domain: str,
                 dkim_pass: list[str] | None = None, rand: float = 0.0) -> dmarc.DmarcResult:
    return await dmarc.evaluate(resolver, from_domain, spf_result, spf_domain, dkim_pass or [],
                                rand=lambda: rand)


async def test_dmarc_reject_quarantine_none_policies(dns_server: DnsServer, resolver: Resolver) -> None:
    for p in ("reject", "quarantine", "none"):
        dns_server.clear()
        dns_server.add("_dmarc.example.net", "TXT", f"v=DMARC1; p={p}", ttl=0)  # changed each round
        r = await _dmarc(resolver, "example.net", "fail", "example.net")
        assert (r.result, r.policy, r.record_domain) == ("fail", p, "example.net")


async def test_dmarc_relaxed_and_strict_alignment(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject", ttl=0)  # changed below
    assert (await _dmarc(resolver, "example.net", "pass", "bounces.example.net")).result == "pass"
    assert (await _dmarc(resolver, "example.net", "fail", "x", ["mail.example.net"])).result == "pass"
    assert (await _dmarc(resolver, "example.net", "pass", "other.example")).result == "fail"
    assert (await _dmarc(resolver, "example.net", "fail", "x", ["other.example"])).result == "fail"
    dns_server.clear()
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")
    assert (await _dmarc(resolver, "example.net", "pass", "bounces.example.net")).result == "fail"
    assert (await _dmarc(resolver, "example.net", "fail", "x", ["mail.example.net"])).result == "fail"
    assert (await _dmarc(resolver, "example.net", "pass", "example.net")).result == "pass"


async def test_dmarc_subdomain_falls_back_to_org_domain_and_uses_sp(dns_server: DnsServer,
                                                                    resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.co.uk", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    r = await _dmarc(resolver, "sub.example.co.uk", "fail", "sub.example.co.uk")
    assert (r.result, r.policy, r.record_domain) == ("fail", "quarantine", "example.co.uk")
    assert dns_server.queried("_dmarc.sub.example.co.uk", "TXT") == 1
    assert dns_server.queried("_dmarc.co.uk", "TXT") == 0  # the PSL stops at the org domain
    r = await _dmarc(resolver, "example.co.uk", "fail", "x")
    assert (r.result, r.policy) == ("fail", "reject")
    # Aligned relaxed across the org domain.
    assert (await _dmarc(resolver, "sub.example.co.uk", "pass", "other.example.co.uk")).result == "pass"


async def test_dmarc_own_record_of_subdomain_wins_and_uses_p(dns_server: DnsServer,
                                                             resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.co.uk", "TXT", "v=DMARC1; p=reject; sp=reject")
    dns_server.add("_dmarc.sub.example.co.uk", "TXT", "v=DMARC1; p=none; sp=reject")
    r = await _dmarc(resolver, "sub.example.co.uk", "fail", "x")
    assert (r.result, r.policy, r.record_domain) == ("fail", "none", "sub.example.co.uk")


async def test_dmarc_pct_samples_failures(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject; pct=20")
    assert (await _dmarc(resolver, "example.net", "fail", "x", rand=0.1)).policy == "reject"
    r = await _dmarc(resolver, "example.net", "fail", "x", rand=0.5)
    assert (r.policy, r.sampled_out, r.published) == ("quarantine", True, "reject")


async def test_dmarc_no_record_and_multiple_records_are_none(dns_server: DnsServer,
                                                             resolver: Resolver) -> None:
    assert (await _dmarc(resolver, "example.net", "fail", "x")).result == "none"
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=none")
    assert (await _dmarc(resolver, "example.net", "fail", "x")).result == "none"


async def test_dmarc_lookup_servfail_is_temperror(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_servfail("_dmarc.example.net")
    assert (await _dmarc(resolver, "example.net", "fail", "x")).result == "temperror"


# --- the verdict ---------------------------------------------------------------------------------


POLICY = PolicyConfig()


async def _verdict(resolver: Resolver, ip: str, mail_from: str, message: bytes,
                   policy: PolicyConfig = POLICY, enforce: bool = True) -> pipeline.Assessment:
    s = await pipeline.check_mail(resolver, ip, mail_from, "client.example")
    return await pipeline.check_data(resolver, policy, AUTHSERV, s, message, enforce=enforce,
                                     rand=lambda: 0.0)


async def test_dmarc_reject_fail_is_rejected_550_571(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    a = await _verdict(resolver, "127.0.0.2", "alice@example.net", MSG)
    assert (a.verdict.action, a.verdict.code, a.verdict.enhanced) == ("reject", 550, "5.7.1")
    assert a.verdict.reply.startswith("550 5.7.1 ")
    err = a.verdict.error()
    assert err is not None and (err.code, err.enhanced, err.temporary) == (550, "5.7.1", False)


async def test_dmarc_quarantine_fail_goes_to_junk(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=quarantine")
    a = await _verdict(resolver, "127.0.0.2", "bounce@elsewhere.example", MSG)
    assert (a.verdict.action, a.verdict.code) == ("junk", 250)
    assert a.verdict.error() is None


async def test_spf_fail_without_dmarc_is_rejected(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    a = await _verdict(resolver, "127.0.0.2", "alice@example.net", MSG)
    assert (a.verdict.action, a.verdict.code, a.verdict.enhanced) == ("reject", 550, "5.7.1")
    assert a.dmarc.result == "none"


async def test_spf_fail_is_rescued_by_aligned_dkim_pass(dns_server: DnsServer, resolver: Resolver,
                                                        rsa_key: tuple[bytes, str]) -> None:
    dns_server.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    dns_server.add("sel._domainkey.mail.example.net", "TXT", rsa_key[1])
    signed = await _signed(MSG, "mail.example.net", "sel", rsa_key[0])
    a = await _verdict(resolver, "127.0.0.2", "alice@example.net", signed)
    assert (a.spf.result if a.spf else None, a.dmarc.result, a.verdict.action) == ("fail", "pass", "accept")


async def test_spf_fail_with_only_unaligned_dkim_pass_is_rejected(dns_server: DnsServer,
                                                                  resolver: Resolver,
                                                                  rsa_key: tuple[bytes, str]) -> None:
    dns_server.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("sel._domainkey.relay.example", "TXT", rsa_key[1])
    signed = await _signed(MSG, "relay.example", "sel", rsa_key[0])
    a = await _verdict(resolver, "127.0.0.2", "alice@example.net", signed)
    assert a.dkim[0].result == "pass"
    assert a.verdict.action == "reject"


async def test_spf_fail_action_is_configurable(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("example.net", "TXT", "v=spf1 -all")
    a = await _verdict(resolver, "127.0.0.2", "alice@example.net", MSG, PolicyConfig(spf_fail="junk"))
    assert a.verdict.action == "junk"
    a = await _verdict(resolver, "127.0.0.2", "alice@example.net", MSG, PolicyConfig(spf_fail="accept"))
    assert a.verdict.action == "accept"


async def test_spf_temperror_is_tempfail_451_443(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_servfail("example.net")
    a = await _verdict(resolver, "127.0.0.1", "alice@example.net", MSG)
    assert (a.verdict.action, a.verdict.code, a.verdict.enhanced) == ("tempfail", 451, "4.4.3")
    err = a.verdict.error()
    assert err is not None and err.temporary


async def test_dmarc_lookup_temperror_is_tempfail(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.set_servfail("_dmarc.example.net")
    a = await _verdict(resolver, "127.0.0.1", "alice@example.net", MSG)
    assert (a.verdict.action, a.verdict.code, a.verdict.enhanced) == ("tempfail", 451, "4.4.3")


async def test_pass_is_accepted_with_authentication_results(dns_server: DnsServer, resolver: Resolver,
                                                            rsa_key: tuple[bytes, str]) -> None:
    dns_server.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    dns_server.add("sel._domainkey.example.net", "TXT", rsa_key[1])
    forged = b"Authentication-Results: mx.example.org; dkim=pass header.d=paypal.example\r\n" + MSG
    signed = await _signed(forged, "example.net", "sel", rsa_key[0])
    a = await _verdict(resolver, "127.0.0.1", "alice@example.net", signed)
    assert a.verdict.action == "accept"
    ar = a.headers.decode().replace("\r\n\t", " ")
    assert ar.startswith("Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=example.net; "
                         "dkim=pass header.d=example.net header.s=sel")
    assert "dmarc=pass (p=reject dis=none) header.from=example.net" in ar
    assert "Received-SPF: pass" in ar
    assert "paypal.example" not in ar  # the forged field is removed on delivery (message/trust.py)


async def test_big_header_section_is_judged_like_a_small_one(dns_server: DnsServer, resolver: Resolver) -> None:
    # Above pipeline.INLINE_PARSE_LIMIT the header section is parsed in a worker thread instead.
    dns_server.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    forged = b"Authentication-Results: mx.example.org; dmarc=pass header.from=paypal.example\r\n"
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 60) for i in range(200))
    assert len(pad) > pipeline.INLINE_PARSE_LIMIT
    for msg in (forged + MSG, forged + pad + MSG):
        a = await _verdict(resolver, "127.0.0.1", "alice@example.net", msg)
        assert (a.verdict.action, a.dmarc.result, a.from_domain) == ("accept", "pass", "example.net")
    big = b"From: a@x.example\r\n" + pad + MSG  # two From fields, far apart
    a = await _verdict(resolver, "127.0.0.1", "alice@example.net", big)
    assert (a.verdict.action, a.dmarc.result) == ("reject", "permerror")


def _ahead(resolver: Resolver, domain: str) -> pipeline.DmarcAhead:
    return pipeline.DmarcAhead(domain, asyncio.ensure_future(pipeline.look_ahead(resolver, domain)))


async def test_dmarc_look_ahead_of_the_from_domain_saves_the_lookup_at_data(dns_server: DnsServer,
                                                                            resolver: Resolver) -> None:
    dns_server.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    ahead = _ahead(resolver, pipeline.dmarc_ahead_domain("alice@Example.NET"))
    s = await pipeline.check_mail(resolver, "127.0.0.1", "alice@example.net", "client.example")
    await ahead.task
    assert dns_server.queried("_dmarc.example.net", "TXT") == 1
    a = await pipeline.check_data(resolver, POLICY, AUTHSERV, s, MSG, dmarc_ahead=ahead)
    assert (a.dmarc.result, a.dmarc.published, a.verdict.action) == ("pass", "reject", "accept")
    assert dns_server.queried("_dmarc.example.net", "TXT") == 1  # not asked again at DATA


async def test_dmarc_look_ahead_of_another_domain_is_not_used(dns_server: DnsServer,
                                                              resolver: Resolver) -> None:
    dns_server.add("bounces.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("_dmarc.bounces.example", "TXT", "v=DMARC1; p=none")
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    ahead = _ahead(resolver, pipeline.dmarc_ahead_domain("b@bounces.example"))
    s = await pipeline.check_mail(resolver, "127.0.0.1", "b@bounces.example", "client.example")
    a = await pipeline.check_data(resolver, POLICY, AUTHSERV, s, MSG, dmarc_ahead=ahead)
    assert (a.dmarc.result, a.dmarc.record_domain, a.verdict.action) == ("fail", "example.net", "reject")
    assert dns_server.queried("_dmarc.example.net", "TXT") == 1


async def test_failed_dmarc_look_ahead_is_asked_again_at_data(dns_server: DnsServer,
                                                              resolver: Resolver) -> None:
    dns_server.set_servfail("_dmarc.example.net")
    ahead = _ahead(resolver, "example.net")
    assert await ahead.task is None
    dns_server.clear()  # the server recovers before DATA
    dns_server.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add("_dmarc.example.net", "TXT", "v=DMARC1; p=quarantine")
    s = await pipeline.check_mail(resolver, "127.0.0.1", "alice@example.net", "client.example")
    a = await pipeline.check_data(resolver, POLICY, AUTHSERV, s, MSG, dmarc_ahead=ahead)
    assert (a.dmarc.result, a.dmarc.published, a.verdict.action) == ("pass", "quarantine", "accept")
    assert dns_server.queried("_dmarc.example.net", "TXT") == 1


def test_dmarc_look_ahead_domain_skips_the_null_sender_and_literals() -> None:
    assert pipeline.dmarc_ahead_domain("a@Mail.Example.NET.") == "mail.example.net"
    assert pipeline.dmarc_ahead_domain("") == ""
    assert pipeline.dmarc_ahead_domain("a@[192.0.2.1]") == ""


async def test_missing_from_is_dmarc_none_and_spf_decides(dns_server: DnsServer, resolver: Resolver) -> None:
    msg = MSG.replace(b"From: Alice <alice@example.net>\r\n", b"")
    dns_server.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    a = await _verdict(resolver, "127.0.0.1", "alice@example.net", msg)
    assert (a.verdict.action, a.dmarc.result) == ("accept", "none")
    assert dns_server.queried("_dmarc.example.net", "TXT") == 0  # no author domain: nothing to look up
    a = await _verdict(resolver, "192.0.2.9", "alice@example.net", msg)
    assert (a.verdict.action, a.verdict.code, a.dmarc.result) == ("reject", 550, "none")


async def test_two_from_fields_are_rejected(dns_server: DnsServer, resolver: Resolver) -> None:
    msg = MSG.replace(b"From: Alice <alice@example.net>\r\n",
                      b"From: Alice <alice@example.net>\r\nFrom: Eve <eve@example.org>\r\n")
    a = await _verdict(resolver, "127.0.0.1", "alice@example.net", msg)
    assert (a.verdict.action, a.verdict.code, a.dmarc.result) == ("reject", 550, "permerror")


async def test_loopback_clients_are_checked_unless_check_local_is_off(dns_server: DnsServer,
                                                                      resolver: Resolver) -> None:
    assert pipeline.applies(PolicyConfig(), "127.0.0.1")
    assert not pipeline.applies(PolicyConfig(check_local=False), "127.0.0.1")
    assert pipeline.applies(PolicyConfig(check_local=False), "9.9.9.9")  # a public address (no network involved)
    dns_server.add("example.net", "TXT", "v=spf1 -all")
    a = await _verdict(resolver, "127.0.0.1", "alice@example.net", MSG, enforce=False)
    assert a.verdict.action == "accept" and a.spf is not None and a.spf.result == "fail"
    assert a.notes and "reject" in a.notes[0]


def test_decide_prefers_the_strongest_action() -> None:
    s = spf.SpfResult("fail", "", "example.net")
    d = dmarc.DmarcResult("fail", "quarantine", "example.net", "example.net", "quarantine")
    assert pipeline.decide(PolicyConfig(), s, [], d).action == "reject"
    aligned_pass = [DkimResult("pass", "example.net")]
    assert pipeline.decide(PolicyConfig(), s, aligned_pass,
                           dmarc.DmarcResult("pass", "none", "example.net")).action == "accept"
