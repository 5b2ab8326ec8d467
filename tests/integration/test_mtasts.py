"""MTA-STS (RFC 8461) and REQUIRETLS (RFC 8689) in remote delivery: the test DNS server publishes
`_mta-sts.b.test` and the MX, a real HTTPS server (aiohttp, certificate from the test CA) serves the
policy, and scripted SMTP peers with certificates that do or do not name the MX play the MX."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mailhaven.delivery import remote, tlspolicy
from mailhaven.dns.resolver import Resolver
from tests.dnsserver import DnsServer
from tests.smtp_peer import SmtpPeer, cert_files, server_tls_context, shared_port

MSG = b"From: alice@example.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    lines = "".join(f"mx: {m}\r\n" for m in mx)
    return f"version: STSv1\r\nmode: {mode}\r\n{lines}max_age: {max_age}\r\n"


class PolicyServer:
    """https://mta-sts.<domain>/.well-known/mta-sts.txt on 127.0.0.1, a test-CA certificate."""

    def __init__(self) -> None:
        self.text = policy("enforce", "mx.b.test")
        self.requests = 0
        self.status = 200
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _get(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text=self.text, status=self.status, content_type="text/plain")

    async def start(self, ctx: ssl.SSLContext) -> PolicyServer:
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self._get)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def sts_server(tls_ca: Any) -> AsyncIterator[PolicyServer]:
    cert = tls_ca.issue_cert("mta-sts.b.test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    server = await PolicyServer().start(ctx)
    yield server
    await server.stop()


@pytest.fixture
def port() -> int:
    return shared_port("127.0.0.2", "127.0.0.3")


@pytest.fixture
def ca_file(tls_ca: Any, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def cfg(make_config: Callable[..., Any], dns_nameserver: str, port: int, ca_file: Path) -> Any:
    return make_config(dns={"nameservers": [dns_nameserver], "timeout": 1},
                       queue={"remote_port": port, "connect_timeout": 2, "command_timeout": 5,
                              "tls_ca_file": str(ca_file), "dane": False})


@pytest.fixture
def publish(dns_server: DnsServer) -> Callable[..., None]:
    hosts: list[str] = []

    def go(sts_id: str = "1") -> None:
        dns_server.remove("_mta-sts.b.test", "TXT")
        dns_server.add("_mta-sts.b.test", "TXT", f"v=STSv1; id={sts_id}", ttl=0)
        if not hosts:
            hosts.append("b.test")
            dns_server.add("mta-sts.b.test", "A", "127.0.0.1")
            dns_server.add("b.test", "MX", "10 mx.b.test.")
            dns_server.add("mx.b.test", "A", "127.0.0.2")
    return go


@pytest.fixture
async def mx(port: int, tls_ca: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[SmtpPeer] = []

    async def start(*names: str, host: str = "127.0.0.2") -> SmtpPeer:
        p = SmtpPeer(host, port, tls_context=server_tls_context(*cert_files(tmp_path / "peer", *names, ca=tls_ca)))
        started.append(await p.start())
        return p

    yield start
    for p in started:
        await p.stop()


def policies(cfg: Any, server: PolicyServer) -> tlspolicy.TlsPolicies:
    return tlspolicy.TlsPolicies(cfg, Resolver.from_config(cfg.dns), sts_port=server.port)


async def send(cfg: Any, pol: tlspolicy.TlsPolicies, **kw: Any) -> Any:
    [r] = await remote.deliver(cfg, pol.resolver, "alice@example.test", "b.test", ["bob@b.test"],
                               kw.pop("message", MSG), policies=pol, **kw)
    return r


async def test_enforce_defers_an_mx_whose_certificate_does_not_name_it(
        cfg: Any, sts_server: PolicyServer, publish: Any, mx: Any) -> None:
    publish()
    peer = await mx("other.test")
    r = await send(cfg, policies(cfg, sts_server))
    assert (r.code, r.enhanced, r.temporary) == (451, "4.7.5", True)
    assert "does not name mx.b.test" in r.text and "policy: MTA-STS enforce" in r.text
    assert peer.messages == []


async def test_enforce_delivers_over_verified_tls(cfg: Any, sts_server: PolicyServer, publish: Any,
                                                 mx: Any, caplog: pytest.LogCaptureFixture) -> None:
    publish()
    peer = await mx("mx.b.test")
    caplog.set_level(logging.INFO)
    r = await send(cfg, policies(cfg, sts_server))
    assert r.delivered, r.text
    assert [m.tls for m in peer.messages] == [True]
    assert any("delivered to bob@b.test via mx.b.test[127.0.0.2] (TLS; certificate verified: MTA-STS enforce)"
               in m for m in caplog.messages), caplog.messages


async def test_enforce_uses_only_mx_hosts_the_policy_names(cfg: Any, sts_server: PolicyServer, publish: Any,
                                                          mx: Any, dns_server: DnsServer) -> None:
    publish()
    dns_server.add("b.test", "MX", "5 rogue.b.test.")
    dns_server.add("rogue.b.test", "A", "127.0.0.3")
    rogue = await mx("rogue.b.test", host="127.0.0.3")
    good = await mx("mx.b.test")
    r = await send(cfg, policies(cfg, sts_server))
    assert r.delivered and r.remote_mta == "mx.b.test"
    assert rogue.connections == 0 and len(good.messages) == 1
    sts_server.text = policy("enforce", "other.b.test")
    pol = policies(cfg, sts_server)
    pol.sts.path.unlink()  # type: ignore[union-attr]
    pol = policies(cfg, sts_server)
    r = await send(cfg, pol)
    assert (r.enhanced, r.temporary) == ("4.7.5", True) and "matches its MTA-STS policy" in r.text


async def test_testing_mode_delivers_and_logs_the_failure(cfg: Any, sts_server: PolicyServer, publish: Any,
                                                         mx: Any, caplog: pytest.LogCaptureFixture) -> None:
    sts_server.text = policy("testing", "mx.b.test")
    publish()
    peer = await mx("other.test")
    caplog.set_level(logging.INFO)
    r = await send(cfg, policies(cfg, sts_server))
    assert r.delivered and len(peer.messages) == 1
    assert any("MTA-STS testing policy of b.test" in m and "mx.b.test" in m for m in caplog.messages)


async def test_policy_cache_survives_a_restart(cfg: Any, sts_server: PolicyServer, publish: Any, mx: Any) -> None:
    publish()
    await mx("other.test")
    first = policies(cfg, sts_server)
    assert (await send(cfg, first)).enhanced == "4.7.5"
    assert sts_server.requests == 1
    await sts_server.stop()  # the web server is gone: only the cache file can know the policy
    again = policies(cfg, sts_server)  # a new process: same data dir
    r = await send(cfg, again)
    assert r.enhanced == "4.7.5" and "MTA-STS enforce" in r.text
    assert again.sts is not None and again.sts.fetches == 0


async def test_a_new_policy_id_fetches_the_policy_again_in_the_background(
        cfg: Any, sts_server: PolicyServer, publish: Any, mx: Any) -> None:
    publish("1")
    await mx("other.test")
    pol = policies(cfg, sts_server)
    assert (await send(cfg, pol)).enhanced == "4.7.5"
    await send(cfg, pol)
    assert sts_server.requests == 1  # same id: the cached policy
    sts_server.text = policy("testing", "mx.b.test")
    publish("2")
    r = await send(cfg, pol)
    assert r.enhanced == "4.7.5"  # this attempt still under the cached policy (RFC 8461 §5.1)
    assert pol.sts is not None
    await pol.sts.settle()
    assert sts_server.requests == 2
    cached = pol.sts.cached("b.test")
    assert cached is not None and (cached.id, cached.policy.mode) == ("2", "testing")
    assert (await send(cfg, pol)).delivered


async def test_a_failed_policy_fetch_without_cache_delivers_opportunistically(
        cfg: Any, sts_server: PolicyServer, publish: Any, mx: Any) -> None:
    sts_server.status = 404
    publish()
    peer = await mx("other.test")
    assert (await send(cfg, policies(cfg, sts_server))).delivered
    assert len(peer.messages) == 1


async def test_tls_required_no_ignores_the_policy(cfg: Any, sts_server: PolicyServer, publish: Any, mx: Any) -> None:
    publish()
    peer = await mx("other.test")
    msg = b"From: a@example.test\r\nTLS-Required: No\r\nSubject: s\r\n\r\nbody\r\n"
    assert tlspolicy.tls_required_no(msg)
    r = await send(cfg, policies(cfg, sts_server), message=msg, tls_optional=True)
    assert r.delivered
    assert b"TLS-Required: No" in peer.messages[0].data  # RFC 8689 §5: the field is kept


async def test_requiretls_without_a_policy_bounces_with_5_7_10(cfg: Any, sts_server: PolicyServer,
                                                              dns_server: DnsServer, mx: Any) -> None:
    dns_server.add("b.test", "MX", "10 mx.b.test.")
    dns_server.add("mx.b.test", "A", "127.0.0.2")
    peer = await mx("mx.b.test")
    r = await send(cfg, policies(cfg, sts_server), requiretls=True)
    assert (r.code, r.enhanced, r.temporary) == (550, "5.7.10", False)
    assert peer.connections == 0


async def test_requiretls_needs_a_next_hop_offering_it(cfg: Any, sts_server: PolicyServer, publish: Any,
                                                      mx: Any) -> None:
    publish()
    peer = await mx("mx.b.test")
    r = await send(cfg, policies(cfg, sts_server), requiretls=True)
    assert (r.code, r.enhanced, r.temporary) == (550, "5.7.30", False)
    assert peer.messages == []
    peer.offers_requiretls = True
    r = await send(cfg, policies(cfg, sts_server), requiretls=True)
    assert r.delivered and peer.requiretls_seen == 1


async def test_requiretls_under_a_testing_policy_is_enforced(cfg: Any, sts_server: PolicyServer, publish: Any,
                                                            mx: Any) -> None:
    sts_server.text = policy("testing", "mx.b.test")
    publish()
    peer = await mx("other.test")
    peer.offers_requiretls = True
    r = await send(cfg, policies(cfg, sts_server), requiretls=True)
    assert (r.enhanced, r.temporary) == ("5.7.10", False) and "does not name" in r.text
    assert peer.messages == []


async def test_redirects_and_oversized_policies_are_not_followed_nor_read(
        cfg: Any, sts_server: PolicyServer, publish: Any, mx: Any) -> None:
    from mailhaven.delivery import mtasts

    publish()
    pol = policies(cfg, sts_server)
    assert pol.sts is not None
    sts_server.status = 301  # RFC 8461 §3.3: redirects MUST NOT be followed
    found = await pol.sts.policy("b.test")
    assert found.policy is None and "HTTP 301" in found.problem
    sts_server.status = 200
    sts_server.text = policy("enforce", "mx.b.test") + "x: " + "y" * mtasts.MAX_POLICY_SIZE + "\r\n"
    found = await pol.sts.policy("b.test")
    assert found.policy is None and found.problem_kind == "sts-policy-invalid" and "larger than" in found.problem


async def test_concurrent_deliveries_share_one_policy_fetch(cfg: Any, sts_server: PolicyServer, publish: Any,
                                                           mx: Any) -> None:
    import asyncio

    publish()
    await mx("mx.b.test")
    pol = policies(cfg, sts_server)
    results = await asyncio.gather(*(send(cfg, pol) for _ in range(3)))
    assert all(r.delivered for r in results)
    assert sts_server.requests == 1


async def test_the_pool_never_reuses_an_opportunistic_connection_for_an_enforce_destination(
        cfg: Any, sts_server: PolicyServer, publish: Any, mx: Any, dns_server: DnsServer) -> None:
    """a.test (no policy) and b.test (MTA-STS enforce) share one MX host and address. A connection
    opened for a.test (TLS, certificate not checked) must not carry b.test's mail: the key names
    the TLS requirement (remote._Hop.key, tlspolicy.HostPlan.requirement)."""
    from mailhaven.delivery.smtpconn import SmtpConnections

    publish()
    dns_server.add("a.test", "MX", "10 mx.b.test.")
    peer = await mx("other.test")  # a certificate that does not name mx.b.test
    pol, pool = policies(cfg, sts_server), SmtpConnections()
    [r] = await remote.deliver(cfg, pol.resolver, "alice@example.test", "a.test", ["ann@a.test"], MSG,
                               policies=pol, pool=pool)
    assert r.delivered and pool.idle() == 1  # opportunistic: delivered, the connection kept
    [r] = await remote.deliver(cfg, pol.resolver, "alice@example.test", "b.test", ["bob@b.test"], MSG,
                               policies=pol, pool=pool)
    assert (r.code, r.enhanced, r.temporary, r.stage) == (451, "4.7.5", True, "STARTTLS")
    assert "does not name mx.b.test" in r.text and "policy: MTA-STS enforce" in r.text
    assert [m.rcpt_tos for m in peer.messages] == [["ann@a.test"]]
    assert (peer.connections, pool.reused_total) == (2, 0)
    await pool.close_all()


async def test_the_pool_reuses_connections_per_policy_and_a_pooled_one_honours_requiretls(
        cfg: Any, sts_server: PolicyServer, publish: Any, mx: Any, dns_server: DnsServer) -> None:
    """Same MX host for a.test (opportunistic) and b.test (enforce, certificate naming the MX):
    one connection per policy, each reused by its own; REQUIRETLS is decided per message on a
    pooled connection (the hop's EHLO after TLS), and passed in MAIL."""
    from mailhaven.delivery.smtpconn import SmtpConnections

    publish()
    dns_server.add("a.test", "MX", "10 mx.b.test.")
    peer = await mx("mx.b.test")
    peer.offers_requiretls = True
    pol, pool = policies(cfg, sts_server), SmtpConnections()

    async def to(domain: str, **kw: Any) -> Any:
        [r] = await remote.deliver(cfg, pol.resolver, "alice@example.test", domain, [f"x@{domain}"], MSG,
                                   policies=pol, pool=pool, **kw)
        return r

    assert (await to("a.test")).delivered and (await to("b.test")).delivered
    assert peer.connections == 2 and pool.idle() == 2
    assert (await to("b.test", requiretls=True)).delivered and (await to("a.test")).delivered
    assert (peer.connections, pool.reused_total, peer.requiretls_seen) == (2, 2, 1)
    r = await to("a.test", requiretls=True)  # no policy for a.test: returned before any connection
    assert (r.code, r.enhanced, r.temporary) == (550, "5.7.10", False)
    assert [m.tls for m in peer.messages] == [True] * 4 and peer.connections == 2
    await pool.close_all()


async def test_the_pool_keeps_an_mta_sts_testing_session_apart_from_an_opportunistic_one(
        cfg: Any, sts_server: PolicyServer, publish: Any, mx: Any, dns_server: DnsServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """Both deliver whatever the certificate, but a testing policy's session is checked (and the
    failure logged and reported, RFC 8461 §5): an unchecked opportunistic one must not stand in."""
    from mailhaven.delivery.smtpconn import SmtpConnections

    sts_server.text = policy("testing", "mx.b.test")
    publish()
    dns_server.add("a.test", "MX", "10 mx.b.test.")
    peer = await mx("other.test")
    pol, pool = policies(cfg, sts_server), SmtpConnections()
    caplog.set_level(logging.INFO)
    for domain in ("a.test", "b.test"):
        [r] = await remote.deliver(cfg, pol.resolver, "alice@example.test", domain, [f"x@{domain}"], MSG,
                                   policies=pol, pool=pool)
        assert r.delivered, r.text
    assert (peer.connections, pool.reused_total) == (2, 0)
    assert any("MTA-STS testing policy of b.test: mx.b.test fails the policy" in m for m in caplog.messages)
    await pool.close_all()


async def test_through_the_relay_mta_sts_does_not_apply_but_requiretls_needs_the_relay_to_offer_it(
        make_config: Callable[..., Any], dns_nameserver: str, port: int, ca_file: Path, sts_server: PolicyServer,
        publish: Any, mx: Any, dns_server: DnsServer) -> None:
    """b.test's MTA-STS enforce names mx.b.test, not the relay: the policy is about the next hop
    (remote.py), so the relay (verified TLS naming it) takes the mail. A REQUIRETLS message goes
    only to a relay offering REQUIRETLS, else it is returned (5.7.30); the destination needs no
    MTA-STS or DANE of its own then."""
    publish()
    dns_server.add("relay.test", "A", "127.0.0.3")
    relay = await mx("relay.test", host="127.0.0.3")
    cfg = make_config(dns={"nameservers": [dns_nameserver], "timeout": 1},
                      queue={"remote_port": port, "connect_timeout": 2, "command_timeout": 5,
                             "tls_ca_file": str(ca_file), "dane": False, "relay": f"relay.test:{port}"})
    pol = policies(cfg, sts_server)
    r = await send(cfg, pol)
    assert r.delivered and r.route == f"relay [relay.test]:{port}", r.text
    r = await send(cfg, pol, requiretls=True)
    assert (r.code, r.enhanced, r.temporary, r.stage) == (550, "5.7.30", False, "MAIL FROM")
    assert "relay.test[127.0.0.3] does not offer REQUIRETLS" in r.text
    relay.offers_requiretls = True
    r = await send(cfg, pol, requiretls=True)
    assert r.delivered and relay.requiretls_seen == 1
    # c.test publishes no policy at all: no MX lookup to secure through the relay (RFC 8689 §4.2.1)
    [r] = await remote.deliver(cfg, pol.resolver, "alice@example.test", "c.test", ["carol@c.test"], MSG,
                               policies=pol, requiretls=True)
    assert r.delivered and relay.requiretls_seen == 2, r.text
    assert [m.tls for m in relay.messages] == [True, True, True]
