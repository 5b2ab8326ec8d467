"""Issue 15: the state two nodes must agree on, in a real PostgreSQL (tests/fixtures_postgres.py):
Sieve's vacation (and duplicate) memory (delivery/sievetrack_pg.py) and the login failures the
throttle counts (auth/throttle_pg.py). Each "node" here is an object of its own with a pool of its
own over one database, as two servers would be; clocks are injected to test expiry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven import pg
from mailhaven.auth import passwords
from mailhaven.auth.login import LoginService
from mailhaven.auth.throttle_pg import PgLoginFailures
from mailhaven.auth.users import Directory, UsersFile
from mailhaven.config import Config, from_dict
from mailhaven.delivery.sievetrack import FILE
from mailhaven.delivery.sievetrack_pg import PgSieveMemory
from tests.dnsserver import DnsServer
from tests.fixtures_server import running_app
from tests.integration.test_sieve_delivery import (  # noqa: F401 - dkim_key is a fixture
    ALICE,
    VACATION,
    Server,
    _start,
    dkim_key,
    message,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


@pytest.fixture
async def pools(pg_dsn: str) -> AsyncIterator[Callable[[], pg.Database]]:
    """Each call: a new pool over this test's database (one per node)."""
    made: list[pg.Database] = []

    def pool() -> pg.Database:
        made.append(pg.Database(pg_dsn, pool_size=2))
        return made[-1]

    yield pool
    for db in made:
        await db.close()


# --- Sieve's memory: one vacation reply per sender and period, whichever node delivers ------------


async def test_a_vacation_claim_on_one_node_holds_on_the_other_until_it_expires(
        pools: Callable[[], pg.Database]) -> None:
    clock = Clock()
    a, b = PgSieveMemory(pools(), clock=clock), PgSieveMemory(pools(), clock=clock)
    assert await a.claim(ALICE, "vacation:k", 7 * 86400)
    assert not await b.claim(ALICE, "vacation:k", 7 * 86400)  # answered already, on the other node
    assert not await a.claim(ALICE, "vacation:k", 7 * 86400)
    assert await b.claim("bob@example.test", "vacation:k", 60)  # another user: his own memory
    assert await b.live(ALICE) == {"vacation:k"}
    clock.now += 7 * 86400  # the period is over: one more reply, and only one
    assert await b.live(ALICE) == set()
    results = await asyncio.gather(a.claim(ALICE, "vacation:k", 60), b.claim(ALICE, "vacation:k", 60))
    assert sorted(results) == [False, True]


async def test_duplicate_marks_are_seen_by_every_node_are_bounded_and_swept(
        pools: Callable[[], pg.Database]) -> None:
    clock = Clock()
    a, b = PgSieveMemory(pools(), clock=clock, max_entries=3), PgSieveMemory(pools(), clock=clock)
    await a.mark(ALICE, [(f"duplicate:{i}", 100.0 + i) for i in range(5)])
    assert await b.live(ALICE) == {"duplicate:2", "duplicate:3", "duplicate:4"}  # soonest to expire dropped
    await a.mark(ALICE, [("duplicate:2", 1000.0)])  # marked again: lives longer
    clock.now += 200
    assert await b.live(ALICE) == {"duplicate:2"}
    assert await b.count() == 3
    await b.sweep_now()
    assert await a.count() == 1


async def test_the_server_keeps_vacation_state_in_postgresql_not_in_the_users_folder(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer, dkim_key: tuple[str, str],  # noqa: F811
        pg_dsn: str) -> None:
    cfg, peer = await _start(tmp_path, tls_files, dns_server, dkim_key,
                             storage={"backend": "postgresql", "dsn": pg_dsn})
    try:
        async with running_app(cfg) as ctx:
            s = Server(ctx, peer, cfg)
            s.put(ALICE, VACATION)
            assert (await s.send([ALICE], message()))[0] == 250
            await peer.wait_messages(1, 20)
            assert (await s.send([ALICE], message(mid="<m2@remote.test>")))[0] == 250
            assert len(await s.folder(ALICE)) == 2
            await asyncio.sleep(0.3)
            assert len(peer.messages) == 1  # one reply per period
        assert not (Path(cfg.mail_root) / "example.test" / "alice" / "sieve" / FILE).exists()
        memory = PgSieveMemory(pg.Database(pg_dsn, pool_size=1))
        try:
            assert [k.split(":")[0] for k in await memory.live(ALICE)] == ["vacation"]
        finally:
            await memory.db.close()
    finally:
        await peer.stop()


async def test_with_the_memory_unreachable_the_script_still_files_and_no_vacation_is_sent(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer, dkim_key: tuple[str, str],  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    """A database that does not answer (nothing listens on its port) costs the `duplicate` answers
    and the vacation reply, never the user's folders."""
    from mailhaven import seams
    from mailhaven.delivery.sieve import SieveFilter
    from tests.fixtures_base import free_port

    cfg, peer = await _start(tmp_path, tls_files, dns_server, dkim_key)
    db = pg.Database(f"host=127.0.0.1 port={free_port()} dbname=nowhere user=nobody", timeout=0.5)
    try:
        async with running_app(cfg) as ctx:
            s = Server(ctx, peer, cfg)
            s.put(ALICE, 'require ["fileinto", "mailbox", "vacation", "duplicate"];\n'
                         'if not duplicate { fileinto :create "Work"; }\nvacation "Away.";\n')
            sieve = SieveFilter(ctx, PgSieveMemory(db))
            job = seams.FilterJob(user=ALICE, recipients=(ALICE,), sender="sender@remote.test",
                                  message=message(), folder="INBOX")
            filing = await sieve.file(job)
            assert filing.folders == ("Work",)
            await asyncio.sleep(0.3)
            assert peer.messages == [] and not ctx.queue.entries  # type: ignore[union-attr]
            assert any("duplicate ids unreadable" in r.getMessage() for r in caplog.records)
            assert any("vacation tracker unusable" in r.getMessage() for r in caplog.records)
    finally:
        await db.close()
        await peer.stop()


# --- login failures: counted across nodes, a stranger still slows only himself --------------------

ALICE_PW, BOB = "right", "bob@example.test"


def _config(tmp_path: Path, **auth: Any) -> Config:
    users = tmp_path / "users.toml"
    if not users.exists():
        uf = UsersFile(users)
        uf.add_user(ALICE, passwords.hash_password(ALICE_PW))
        uf.add_user(BOB, passwords.hash_password(ALICE_PW))
        uf.save()
    return from_dict({"data_dir": str(tmp_path), "users_file": str(users), "domains": {"example.test": {}},
                      "auth": {"failure_delay": 1, "max_failure_delay": 8, **auth}}, tmp_path)


Node = Callable[..., LoginService]


@pytest.fixture
def node(tmp_path: Path, pools: Callable[[], pg.Database]) -> tuple[Node, Clock]:
    """Each call: a LoginService (one node) with its own pool; every node on one clock."""
    clock = Clock()

    def make(**auth: Any) -> LoginService:
        cfg = _config(tmp_path, **auth)
        directory = Directory(cfg, UsersFile.load(cfg.users_file))
        return LoginService(lambda: cfg, lambda: directory, None, clock=clock, sleep=clock.sleep,
                            failures=PgLoginFailures(pools(), clock=clock))
    return make, clock


Login = Callable[[LoginService, str, str, str], Awaitable[Any]]


async def _login(service: LoginService, ip: str, user: str, password: str) -> Any:
    return await service.login("imap", ip, user, password, "LOGIN")


async def test_failures_on_one_node_delay_the_next_attempt_on_the_other(node: tuple[Node, Clock]) -> None:
    make, _ = node
    a, b = make(), make()
    for i in range(3):
        assert not (await _login(a, "192.0.2.1", ALICE, f"guess{i}")).ok
    out = await _login(b, "192.0.2.1", ALICE, "guess3")  # a fresh node: the three failures count
    assert out.delay == 4  # 1, 2, 4: as if every attempt had gone to one node
    out = await _login(a, "192.0.2.1", ALICE, "guess4")
    assert out.delay == 8
    out = await _login(b, "192.0.2.1", ALICE, ALICE_PW)  # the right password still gets in (delayed)
    assert out.ok and out.delay == 8
    assert (await _login(a, "192.0.2.1", ALICE, ALICE_PW)).delay == 0  # a success cleared the pair everywhere


async def test_a_stranger_only_slows_himself_on_every_node(node: tuple[Node, Clock]) -> None:
    make, _ = node
    a, b = make(max_failures_per_ip=10), make(max_failures_per_ip=10)
    for i in range(12):  # a spray from one address, half on each node
        assert not (await _login(a if i % 2 else b, "198.51.100.66", ALICE, f"spray{i}")).ok
    out = await _login(b, "192.0.2.1", ALICE, ALICE_PW)  # the user, from her own address: not slowed
    assert out.ok and out.delay == 0
    out = await _login(a, "198.51.100.66", BOB, "other")  # the sprayer, any account: 12 - 10 failures
    assert not out.ok and out.delay == 2


async def test_shared_failures_expire_after_the_window_and_are_swept(node: tuple[Node, Clock]) -> None:
    make, clock = node
    a, b = make(failure_window=60), make(failure_window=60)
    for i in range(3):
        await _login(a, "192.0.2.1", ALICE, f"guess{i}")
    clock.now += 61
    assert (await _login(b, "192.0.2.1", ALICE, "guess9")).delay == 0
    assert b.failures is not None and isinstance(b.failures, PgLoginFailures)
    clock.now += 61
    await b.failures.sweep_now(60)
    assert await b.failures.counts("192.0.2.1", ALICE, 1e9) == (0, 0)


async def test_the_account_alarm_is_raised_once_for_failures_on_every_node(
        node: tuple[Node, Clock], caplog: pytest.LogCaptureFixture) -> None:
    make, _ = node
    a, b = make(max_failures_per_account=4), make(max_failures_per_account=4)
    caplog.set_level(logging.WARNING, "mailhaven.auth")
    for i in range(6):  # from six addresses, over both nodes: no node alone sees four
        await _login(a if i % 2 else b, f"203.0.113.{i + 1}", ALICE, f"guess{i}")
    assert sum("login failures for one account" in r.getMessage() for r in caplog.records) == 1


async def test_unblock_lifts_the_shared_counts(node: tuple[Node, Clock]) -> None:
    make, _ = node
    a, b = make(), make()
    for i in range(3):
        await _login(a, "192.0.2.1", ALICE, f"guess{i}")
    b.unblock("192.0.2.1")
    await b.drain()
    c = make()
    assert (await _login(c, "192.0.2.1", ALICE, "guess9")).delay == 0


async def test_logins_go_on_with_the_process_own_counts_while_the_database_is_down(
        tmp_path: Path, pg_dsn: str, postgres: Any, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    cfg = _config(tmp_path)
    directory = Directory(cfg, UsersFile.load(cfg.users_file))
    db = pg.Database(pg_dsn, pool_size=1, timeout=1)
    service = LoginService(lambda: cfg, lambda: directory, None, clock=clock, sleep=clock.sleep,
                           failures=PgLoginFailures(db, clock=clock))
    try:
        await _login(service, "192.0.2.1", ALICE, "guess0")  # the table exists, the pool is open
        postgres.stop()
        try:
            caplog.set_level(logging.WARNING, "mailhaven.auth")
            started = time.monotonic()
            assert (await _login(service, "192.0.2.1", ALICE, "guess1")).delay == 1  # its own count: 1
            assert (await _login(service, "192.0.2.1", ALICE, "guess2")).delay == 2
            out = await _login(service, "192.0.2.1", ALICE, ALICE_PW)
            assert out.ok and out.delay == 4
            unavailable = [r for r in caplog.records if "other nodes unavailable" in r.getMessage()]
            assert len(unavailable) == 1  # one line, not one per login
            assert time.monotonic() - started < 2.5  # only the first login waited for the database (1 s)
        finally:
            postgres.start()
    finally:
        await db.close()
