"""Connection reuse and fair concurrency in the queue (queue/manager.py + delivery/smtpconn.py), with
real SMTP servers on 127.0.0.x: scripted peers (tests/smtp_peer.py) counting connections, and a
tarpit that waits before every reply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mailhaven import app, cleanup
from mailhaven.queue.manager import QueueManager
from tests.dnsserver import DnsServer
from tests.smtp_peer import SmtpPeer, shared_port, until

ALICE = "alice@example.test"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


def _msg(i: int, domain: str) -> bytes:
    return f"From: <{ALICE}>\r\nTo: <r{i}@{domain}>\r\nSubject: n{i}\r\n\r\nbody {i}\r\n".encode()


@pytest.fixture
def port() -> int:
    return shared_port(*HOSTS)


@pytest.fixture
def build(make_config: Callable[..., Any], dns_nameserver: str, dns_server: DnsServer, port: int) -> Callable[..., Any]:
    for n, host in enumerate(HOSTS):
        dns_server.add(f"d{n}.test", "MX", f"10 mx.d{n}.test.")
        dns_server.add(f"mx.d{n}.test", "A", host)

    def make(**queue: Any) -> Any:
        q = {"remote_port": port, "retry_schedule": ["1h"], "jitter": 0, "connect_timeout": 5,
             "command_timeout": 10, **queue}
        return make_config(hostname="mail.example.test", dns={"nameservers": [dns_nameserver], "timeout": 1},
                           queue=q)
    return make


@pytest.fixture
async def manager() -> AsyncIterator[Callable[[Any], Any]]:
    started: list[tuple[Any, QueueManager, asyncio.Task[None]]] = []

    async def start(cfg: Any, *, run: bool = True) -> tuple[Any, QueueManager]:
        ctx = app.build_context(cfg)
        await ctx.store.start()
        mgr = QueueManager(ctx)
        ctx.queue = mgr
        if run:
            await mgr.load()
        task = asyncio.create_task(mgr.run()) if run else asyncio.create_task(asyncio.sleep(0))
        started.append((ctx, mgr, task))
        return ctx, mgr

    yield start
    for ctx, mgr, task in started:
        mgr.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)
        await ctx.store.close()


async def _fill(cfg: Any, n: int, domain: str) -> list[str]:
    """n entries for one recipient each at `domain`, in the spool before the manager loads it."""
    from mailhaven.queue.spool import Spool

    spool = Spool(cfg.queue_root, fsync=False)
    await spool.load()
    ids = []
    for i in range(n):
        entry = await spool.add(ALICE, [f"r{i}@{domain}"], _msg(i, domain), next_attempt=time.time())
        ids.append(entry.id)
    return ids


async def test_messages_to_one_destination_share_one_connection_one_transaction_each(
        build: Callable[..., Any], manager: Any, port: int) -> None:
    peer = await SmtpPeer(HOSTS[0], port).start()
    try:
        ctx, mgr = await manager(build(max_per_destination=1))
        for i in range(6):
            await cleanup.enqueue(ctx, ALICE, [f"r{i}@d0.test"], _msg(i, "d0.test"))
        await peer.wait_messages(6)
        await until(lambda: not mgr.entries, 10)
        assert peer.connections == 1
        assert sorted(m.rcpt_tos[0] for m in peer.messages) == sorted(f"r{i}@d0.test" for i in range(6))
        assert all(len(m.rcpt_tos) == 1 for m in peer.messages)  # each message its own transaction
        assert mgr.connections.opened_total == 1 and mgr.connections.reused_total == 5
    finally:
        await peer.stop()


async def test_a_connection_carries_at_most_max_messages_per_connection_and_idles_out(
        build: Callable[..., Any], manager: Any, port: int) -> None:
    peer = await SmtpPeer(HOSTS[0], port).start()
    try:
        ctx, mgr = await manager(build(max_per_destination=1, max_messages_per_connection=2,
                                       connection_idle_time="300ms"))
        for i in range(5):
            await cleanup.enqueue(ctx, ALICE, [f"r{i}@d0.test"], _msg(i, "d0.test"))
        await peer.wait_messages(5)
        await until(lambda: not mgr.entries, 10)
        assert peer.connections == 3  # 2 + 2 + 1
        assert mgr.connections.open == 1  # the last one waits for more...
        await until(lambda: mgr.connections.open == 0, 3)  # ...then QUIT after the idle time
    finally:
        await peer.stop()


class Tarpit:
    """An SMTP server that waits `delay` seconds before every reply, the greeting included."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.host, self.port, self.delay = host, port, delay
        self.connections = 0
        self.messages = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> Tarpit:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1

        async def reply(text: str) -> None:
            await asyncio.sleep(self.delay)
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        with contextlib.suppress(ConnectionError, OSError):
            await reply("220 tarpit ESMTP")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    await reply("250-tarpit\r\n250 8BITMIME")
                elif verb == b"DATA":
                    await reply("354 go on")
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    self.messages += 1
                    await reply("250 2.0.0 queued")
                elif verb == b"QUIT":
                    await reply("221 bye")
                    break
                else:
                    await reply("250 ok")
        writer.close()


async def test_a_tarpit_destination_does_not_hold_back_the_others(
        build: Callable[..., Any], manager: Any, port: int) -> None:
    tarpit = await Tarpit(HOSTS[0], port, 0.4).start()
    fast = [await SmtpPeer(h, port).start() for h in HOSTS[1:3]]
    try:
        # 5 slots in all and up to 5 per destination: the tarpit could take every one of them.
        cfg = build(max_connections=5, max_per_destination=5)
        ctx, mgr = await manager(cfg, run=False)
        slow_ids = await _fill(cfg, 12, "d0.test")
        fast_ids = await _fill(cfg, 10, "d1.test") + await _fill(cfg, 10, "d2.test")
        started = time.monotonic()
        task = asyncio.create_task(mgr.run())
        try:
            await until(lambda: mgr.loaded.is_set() and not any(i in mgr.entries for i in fast_ids), 8)
            elapsed = time.monotonic() - started
            assert sum(len(p.messages) for p in fast) == 20
            # A tarpit transaction takes 7 x 0.4 s: the fast ones must not wait for them.
            assert elapsed < 2.5, elapsed
            assert tarpit.connections <= 4  # at most 4/5 of the slots
            assert any(i in mgr.entries for i in slow_ids)  # the tarpit is still being served...
            await until(lambda: tarpit.messages >= 1, 6)  # ...and does get its mail
        finally:
            mgr.stop()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    finally:
        await tarpit.stop()
        for p in fast:
            await p.stop()


class Closer:
    """Accepts one transaction per connection, then closes it without a word (as a server whose
    idle timer fired): the pooled connection is dead when the next transaction comes."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.connections = 0
        self.messages = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> Closer:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(b"220 closer ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-closer\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go on\r\n")
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    self.messages += 1
                    writer.write(b"250 2.0.0 queued\r\n")
                    await writer.drain()
                    break  # and hang up
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        writer.close()


async def test_a_pooled_connection_the_server_closed_is_replaced_and_a_failed_one_not_reused(
        build: Callable[..., Any], port: int) -> None:
    from mailhaven.delivery import remote
    from mailhaven.delivery.smtpconn import SmtpConnections
    from mailhaven.dns.resolver import Resolver

    cfg = build()
    resolver = Resolver.from_config(cfg.dns)
    pool = SmtpConnections()
    closer = await Closer(HOSTS[0], port).start()
    peer = await SmtpPeer(HOSTS[1], port).start()
    try:
        for i in range(3):
            [r] = await remote.deliver(cfg, resolver, ALICE, "d0.test", [f"r{i}@d0.test"], _msg(i, "d0.test"),
                                       pool=pool)
            assert r.delivered and r.route == "MX"
            await asyncio.sleep(0.05)  # the hang-up arrives
        assert (closer.messages, closer.connections) == (3, 3)  # RSET failed each time: a new one
        peer.script_data("451 4.3.0 try again")
        [r] = await remote.deliver(cfg, resolver, ALICE, "d1.test", ["a@d1.test"], _msg(0, "d1.test"), pool=pool)
        assert (r.code, r.temporary, r.stage, r.route) == (451, True, "DATA", "MX")
        [r] = await remote.deliver(cfg, resolver, ALICE, "d1.test", ["b@d1.test"], _msg(1, "d1.test"), pool=pool)
        [r2] = await remote.deliver(cfg, resolver, ALICE, "d1.test", ["c@d1.test"], _msg(2, "d1.test"), pool=pool)
        assert r.delivered and r2.delivered
        assert peer.connections == 2  # not after the refused DATA; then kept for the next one
        await pool.close_all()
        assert pool.open == 0
    finally:
        assert closer.server is not None
        closer.server.close()
        await peer.stop()


async def test_idle_connections_beyond_max_connections_are_closed_oldest_first(
        build: Callable[..., Any], port: int) -> None:
    from mailhaven.delivery import remote
    from mailhaven.delivery.smtpconn import SmtpConnections
    from mailhaven.dns.resolver import Resolver

    cfg = build(max_connections=2, connection_idle_time="10s")
    resolver = Resolver.from_config(cfg.dns)
    pool = SmtpConnections()
    peers = [await SmtpPeer(h, port).start() for h in HOSTS[:3]]
    try:
        for n in range(3):
            [r] = await remote.deliver(cfg, resolver, ALICE, f"d{n}.test", [f"a@d{n}.test"], _msg(n, f"d{n}.test"),
                                       pool=pool)
            assert r.delivered
        await until(lambda: pool.open == 2, 3)  # d0's connection went (QUIT), d1's and d2's wait
        assert pool.idle() == 2
        [r] = await remote.deliver(cfg, resolver, ALICE, "d2.test", ["b@d2.test"], _msg(3, "d2.test"), pool=pool)
        assert r.delivered and [p.connections for p in peers] == [1, 1, 1]  # d2 reused its own
        await pool.close_all()
        assert pool.open == 0
    finally:
        for p in peers:
            await p.stop()


async def test_a_local_transport_goes_to_the_local_agent_not_to_the_mx(
        build: Callable[..., Any], manager: Any, port: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    peer = await SmtpPeer(HOSTS[0], port).start()  # d0.test's MX
    try:
        ctx, mgr = await manager(build(transports={"d0.test": "local"}))
        qid = await cleanup.enqueue(ctx, ALICE, ["nobody@d0.test"], _msg(0, "d0.test"))

        async def settled() -> bool:
            s = await mgr.show(qid)
            return s is None or s["recipients"][0]["state"] != "pending"

        await until(settled, 10)
        assert peer.connections == 0  # never its MX
        assert any(r.getMessage() == f"queue: {qid} to=<nobody@d0.test> bounced via -: 550 5.1.1 no such user here"
                   for r in caplog.records)  # the local agent's answer: no such user in the users file
    finally:
        await peer.stop()
