"""delivery/remote.py against the real test DNS server and scripted SMTP peers on 127.0.0.x."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven.delivery import remote
from mailhaven.dns.resolver import Resolver
from tests.dnsserver import DnsServer
from tests.smtp_peer import SmtpPeer, cert_files, server_tls_context, shared_port

MSG = b"From: alice@example.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nHello.\r\n"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def port() -> int:
    return shared_port(*HOSTS)


@pytest.fixture
def ca_file(tls_ca: Any, tmp_path: Path) -> Path:
    """The test CA's certificate: queue.tls_ca_file, the trust store of verified delivery."""
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def cfg(make_config: Callable[..., Any], dns_nameserver: str, port: int, ca_file: Path) -> Any:
    return make_config(dns={"nameservers": [dns_nameserver], "timeout": 1},
                       queue={"remote_port": port, "connect_timeout": 2, "command_timeout": 5,
                              "require_tls_domains": ["secure.test"], "tls_ca_file": str(ca_file)})


@pytest.fixture
async def peers(port: int, tls_files: tuple[Path, Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[SmtpPeer] = []

    async def start(host: str, *, tls: bool = False, cert: tuple[Path, Path] | None = None) -> SmtpPeer:
        files = cert or tls_files
        p = SmtpPeer(host, port, tls_context=server_tls_context(*files) if tls or cert else None)
        started.append(await p.start())
        return p

    yield start
    for p in started:
        await p.stop()


def _mx(dns: DnsServer, domain: str, *hosts: tuple[int, str, str]) -> None:
    for pref, name, ip in hosts:
        dns.add(domain, "MX", f"{pref} {name}.")
        dns.add(name, "A", ip)


async def test_delivers_to_the_mx_host_with_every_recipient_in_one_transaction(
        cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    _mx(dns_server, "b.test", (10, "mx.b.test", "127.0.0.2"))
    peer = await peers("127.0.0.2")
    resolver = Resolver.from_config(cfg.dns)
    results = await remote.deliver(cfg, resolver, "alice@example.test", "b.test", ["bob@b.test", "carol@b.test"], MSG)
    assert [r.delivered for r in results] == [True, True]
    assert results[0].remote_mta == "mx.b.test"
    [got] = peer.messages
    assert got.mail_from == "alice@example.test" and got.rcpt_tos == ["bob@b.test", "carol@b.test"]
    assert got.data.replace(b"\r\n", b"\n") == MSG.replace(b"\r\n", b"\n")
    assert peer.connections == 1


async def test_first_mx_down_goes_to_the_next_preference(cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    # 127.0.0.2 has nobody listening: connection refused.
    _mx(dns_server, "b.test", (10, "mx1.b.test", "127.0.0.2"), (20, "mx2.b.test", "127.0.0.3"))
    backup = await peers("127.0.0.3")
    results = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "alice@example.test", "b.test",
                                   ["bob@b.test"], MSG)
    assert results[0].delivered and results[0].remote_mta == "mx2.b.test"
    assert len(backup.messages) == 1


async def test_mx_greeting_421_and_mail_from_4xx_go_to_the_next_mx(cfg: Any, dns_server: DnsServer,
                                                                  peers: Any) -> None:
    _mx(dns_server, "b.test", (10, "mx1.b.test", "127.0.0.2"), (20, "mx2.b.test", "127.0.0.3"),
        (30, "mx3.b.test", "127.0.0.4"))
    first, second, third = await peers("127.0.0.2"), await peers("127.0.0.3"), await peers("127.0.0.4")
    first.script_greeting("421 4.3.2 too busy")
    second.script_mail("451 4.3.0 try later")
    results = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "alice@example.test", "b.test",
                                   ["bob@b.test"], MSG)
    assert results[0].delivered and results[0].remote_mta == "mx3.b.test"
    assert (len(first.messages), len(second.messages), len(third.messages)) == (0, 0, 1)


async def test_every_mx_down_is_a_temporary_failure(cfg: Any, dns_server: DnsServer) -> None:
    _mx(dns_server, "b.test", (10, "mx1.b.test", "127.0.0.2"), (20, "mx2.b.test", "127.0.0.3"))
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test", ["bob@b.test"], MSG)
    assert r.temporary and not r.delivered and r.code == 451
    assert "127.0.0.3" in r.text  # the last host's reason


async def test_no_mx_uses_the_domains_own_address(cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    dns_server.add("b.test", "A", "127.0.0.4")  # RFC 5321 §5.1 implicit MX
    peer = await peers("127.0.0.4")
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test", ["bob@b.test"], MSG)
    assert r.delivered and len(peer.messages) == 1


async def test_null_mx_fails_permanently_without_connecting(cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    dns_server.add("b.test", "MX", "0 .")
    dns_server.add("b.test", "A", "127.0.0.2")
    peer = await peers("127.0.0.2")
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test", ["bob@b.test"], MSG)
    assert (r.code, r.enhanced, r.temporary) == (556, "5.1.10", False)  # RFC 7505 §4.2
    assert peer.connections == 0


async def test_nonexistent_domain_fails_permanently(cfg: Any, dns_server: DnsServer) -> None:
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "nx.test", ["bob@nx.test"], MSG)
    assert r.permanent and r.enhanced == "5.1.2"


async def test_dns_servfail_is_temporary(cfg: Any, dns_server: DnsServer) -> None:
    dns_server.set_servfail("b.test")
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test", ["bob@b.test"], MSG)
    assert r.temporary and r.enhanced == "4.4.3"


async def test_refused_recipients_keep_their_own_reply_and_the_rest_is_delivered(
        cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    _mx(dns_server, "b.test", (10, "mx.b.test", "127.0.0.2"))
    peer = await peers("127.0.0.2")
    peer.script_rcpt("gone@b.test", "550 5.1.1 no such user")
    peer.script_rcpt("full@b.test", "452 4.2.2 mailbox full")
    results = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test",
                                   ["bob@b.test", "gone@b.test", "full@b.test"], MSG)
    bob, gone, full = results
    assert bob.delivered
    assert (gone.code, gone.enhanced, gone.permanent, gone.text) == (550, "5.1.1", True, "no such user")
    assert (full.code, full.enhanced, full.temporary) == (452, "4.2.2", True)
    assert peer.messages[0].rcpt_tos == ["bob@b.test"]


async def test_data_5xx_fails_every_accepted_recipient_permanently(cfg: Any, dns_server: DnsServer,
                                                                  peers: Any) -> None:
    _mx(dns_server, "b.test", (10, "mx.b.test", "127.0.0.2"))
    peer = await peers("127.0.0.2")
    peer.script_data("554 5.7.1 spam")
    results = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test",
                                   ["bob@b.test", "carol@b.test"], MSG)
    assert [(r.code, r.enhanced, r.permanent) for r in results] == [(554, "5.7.1", True)] * 2


async def test_mail_from_5xx_fails_every_recipient_permanently(cfg: Any, dns_server: DnsServer,
                                                              peers: Any) -> None:
    _mx(dns_server, "b.test", (10, "mx.b.test", "127.0.0.2"))
    peer = await peers("127.0.0.2")
    peer.script_mail("550 5.7.1 sender blocked")
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test", ["bob@b.test"], MSG)
    assert (r.code, r.permanent) == (550, True)


async def test_null_sender_is_sent_as_empty_path(cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    _mx(dns_server, "b.test", (10, "mx.b.test", "127.0.0.2"))
    peer = await peers("127.0.0.2")
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "", "b.test", ["bob@b.test"], MSG)
    assert r.delivered
    assert peer.events[0] == ("MAIL", "<>")  # aiosmtpd reports the null path as "<>"


async def test_starttls_is_used_when_offered(cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    _mx(dns_server, "b.test", (10, "mx.b.test", "127.0.0.2"))
    peer = await peers("127.0.0.2", tls=True)
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test", ["bob@b.test"], MSG)
    assert r.delivered and peer.messages[0].tls is True


async def test_required_tls_domain_without_starttls_is_not_sent_in_clear(
        cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    _mx(dns_server, "secure.test", (10, "mx.secure.test", "127.0.0.2"))
    peer = await peers("127.0.0.2", tls=False)
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "secure.test",
                               ["bob@secure.test"], MSG)
    assert r.temporary and r.enhanced == "4.7.10"
    assert peer.messages == [] and not any(e[0] == "MAIL" for e in peer.events)


async def test_required_tls_domain_with_a_valid_certificate_for_the_mx_is_delivered_encrypted(
        cfg: Any, dns_server: DnsServer, peers: Any, tls_ca: Any, tmp_path: Path) -> None:
    _mx(dns_server, "secure.test", (10, "mx.secure.test", "127.0.0.2"))
    peer = await peers("127.0.0.2", cert=cert_files(tmp_path, "mx.secure.test", ca=tls_ca))
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "secure.test",
                               ["bob@secure.test"], MSG)
    assert r.delivered and peer.messages[0].tls


async def _refused_cert(cfg: Any, peer: SmtpPeer, caplog: pytest.LogCaptureFixture) -> Any:
    """Deliver to secure.test (TLS required) and check nothing travelled; returns the result."""
    caplog.set_level(logging.INFO, logger="mailhaven.delivery")
    caplog.clear()
    before = (len(peer.messages), len(peer.events))
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "secure.test",
                               ["bob@secure.test"], MSG)
    assert (r.code, r.enhanced, r.temporary) == (451, "4.7.5", True), r
    assert len(peer.messages) == before[0] and not any(e[0] == "MAIL" for e in peer.events[before[1]:])
    [line] = [rec.getMessage() for rec in caplog.records if "not possible" in rec.getMessage()]
    assert "4.7.5" in line and r.text in line  # the reason is in the log line
    return r


async def test_required_tls_domain_refuses_a_self_signed_certificate(
        cfg: Any, dns_server: DnsServer, peers: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _mx(dns_server, "secure.test", (10, "mx.secure.test", "127.0.0.2"))
    peer = await peers("127.0.0.2", cert=cert_files(tmp_path, "mx.secure.test"))  # right name, no CA
    r = await _refused_cert(cfg, peer, caplog)
    assert r.text == "TLS certificate of mx.secure.test[127.0.0.2] not trusted: self-signed certificate"


async def test_required_tls_domain_refuses_a_trusted_certificate_for_another_name(
        cfg: Any, dns_server: DnsServer, peers: Any, tls_ca: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    _mx(dns_server, "secure.test", (10, "mx.secure.test", "127.0.0.2"))
    peer = await peers("127.0.0.2", cert=cert_files(tmp_path, "other.test", ca=tls_ca))
    r = await _refused_cert(cfg, peer, caplog)
    assert r.text == "TLS certificate of mx.secure.test[127.0.0.2] does not name mx.secure.test (it names other.test) (policy: require_tls_domains)"
    assert r.remote_mta == "mx.secure.test"


async def test_required_tls_domain_accepts_a_wildcard_for_one_leftmost_label_only(
        cfg: Any, dns_server: DnsServer, peers: Any, tls_ca: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    peer = await peers("127.0.0.2", cert=cert_files(tmp_path, "*.secure.test", ca=tls_ca))
    _mx(dns_server, "secure.test", (10, "mx.secure.test", "127.0.0.2"))
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "secure.test",
                               ["bob@secure.test"], MSG)
    assert r.delivered and peer.messages[0].tls
    dns_server.clear()
    _mx(dns_server, "secure.test", (10, "a.b.secure.test", "127.0.0.2"))  # two labels below the wildcard
    r = await _refused_cert(cfg, peer, caplog)
    assert "does not name a.b.secure.test (it names *.secure.test)" in r.text


async def test_required_tls_domain_refuses_a_wildcard_in_a_non_leftmost_label(
        cfg: Any, dns_server: DnsServer, peers: Any, tls_ca: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    _mx(dns_server, "secure.test", (10, "mx.secure.test", "127.0.0.2"))
    peer = await peers("127.0.0.2", cert=cert_files(tmp_path, "mx.*.test", ca=tls_ca))
    r = await _refused_cert(cfg, peer, caplog)
    assert "does not name mx.secure.test (it names mx.*.test)" in r.text


async def test_a_certificate_refused_on_one_mx_moves_on_to_the_next(
        cfg: Any, dns_server: DnsServer, peers: Any, tls_ca: Any, tmp_path: Path) -> None:
    _mx(dns_server, "secure.test", (10, "mx1.secure.test", "127.0.0.2"), (20, "mx2.secure.test", "127.0.0.3"))
    bad = await peers("127.0.0.2", cert=cert_files(tmp_path, "mx1.secure.test"))
    good = await peers("127.0.0.3", cert=cert_files(tmp_path, "mx2.secure.test", ca=tls_ca))
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "secure.test",
                               ["bob@secure.test"], MSG)
    assert r.delivered and r.remote_mta == "mx2.secure.test"
    assert (bad.messages, len(good.messages)) == ([], 1)


async def test_a_domain_without_required_tls_still_delivers_to_a_self_signed_certificate(
        cfg: Any, dns_server: DnsServer, peers: Any, tmp_path: Path) -> None:
    _mx(dns_server, "b.test", (10, "mx.b.test", "127.0.0.2"))
    peer = await peers("127.0.0.2", cert=cert_files(tmp_path, "somewhere.else"))  # opportunistic TLS
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test", ["bob@b.test"], MSG)
    assert r.delivered and peer.messages[0].tls is True


async def test_an_unusable_tls_ca_file_defers_required_tls_domains_with_the_reason(
        make_config: Callable[..., Any], dns_nameserver: str, port: int, dns_server: DnsServer,
        tmp_path: Path) -> None:
    _mx(dns_server, "secure.test", (10, "mx.secure.test", "127.0.0.2"))
    (tmp_path / "garbage.pem").write_text("no certificate here\n")
    cfg = make_config(dns={"nameservers": [dns_nameserver], "timeout": 1},
                      queue={"remote_port": port, "require_tls_domains": ["secure.test"],
                             "tls_ca_file": str(tmp_path / "garbage.pem")})
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "secure.test",
                               ["bob@secure.test"], MSG)
    assert (r.enhanced, r.temporary) == ("4.7.5", True)
    assert r.text.startswith("queue.tls_ca_file: no usable CA certificate in ")


async def test_dot_lines_and_bare_lf_arrive_intact(cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    _mx(dns_server, "b.test", (10, "mx.b.test", "127.0.0.2"))
    peer = await peers("127.0.0.2")
    body = b"Subject: dots\r\n\r\n.\r\n..two\r\n.end\r\n"
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test", ["bob@b.test"], body)
    assert r.delivered and peer.messages[0].data == body
