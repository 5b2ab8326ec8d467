"""delivery/remote.py against the real test DNS server and scripted SMTP peers on 127.0.0.x."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven.delivery import remote
from mailhaven.dns.resolver import Resolver
from tests.dnsserver import DnsServer
from tests.smtp_peer import SmtpPeer, server_tls_context, shared_port

MSG = b"From: alice@example.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nHello.\r\n"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def port() -> int:
    return shared_port(*HOSTS)


@pytest.fixture
def cfg(make_config: Callable[..., Any], dns_nameserver: str, port: int) -> Any:
    return make_config(dns={"nameservers": [dns_nameserver], "timeout": 1},
                       queue={"remote_port": port, "connect_timeout": 2, "command_timeout": 5,
                              "require_tls_domains": ["secure.test"]})


@pytest.fixture
async def peers(port: int, tls_files: tuple[Path, Path]) -> AsyncIterator[Callable[..., Any]]:
    started: list[SmtpPeer] = []

    async def start(host: str, *, tls: bool = False) -> SmtpPeer:
        p = SmtpPeer(host, port, tls_context=server_tls_context(*tls_files) if tls else None)
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


async def test_required_tls_domain_with_starttls_is_delivered_encrypted(
        cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    _mx(dns_server, "secure.test", (10, "mx.secure.test", "127.0.0.2"))
    peer = await peers("127.0.0.2", tls=True)
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "secure.test",
                               ["bob@secure.test"], MSG)
    assert r.delivered and peer.messages[0].tls


async def test_dot_lines_and_bare_lf_arrive_intact(cfg: Any, dns_server: DnsServer, peers: Any) -> None:
    _mx(dns_server, "b.test", (10, "mx.b.test", "127.0.0.2"))
    peer = await peers("127.0.0.2")
    body = b"Subject: dots\r\n\r\n.\r\n..two\r\n.end\r\n"
    [r] = await remote.deliver(cfg, Resolver.from_config(cfg.dns), "a@example.test", "b.test", ["bob@b.test"], body)
    assert r.delivered and peer.messages[0].data == body
