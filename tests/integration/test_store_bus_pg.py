"""Change events between nodes through PostgreSQL LISTEN/NOTIFY (store/bus_pg.py): two Stores, each
with a pool of its own (two nodes), over one mail root and one real PostgreSQL
(tests/fixtures_postgres.py); garbage on the channel; the database restarted. The IMAP IDLE test
with a second process is in test_imap_sessions.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app
from mailhaven.pg import Database
from mailhaven.store import Event, Expunged, MailboxesChanged, MessagesAdded, Overflow, Store, Subscription
from mailhaven.store.bus_pg import CHANNEL, MAX_PAYLOAD, PgBus, payloads
from tests.fixtures_postgres import Postgres

HOST = "test.host"
ALICE = "alice@example.test"
MSG = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


class Node:
    def __init__(self, store: Store, peers: PgBus, database: Database) -> None:
        self.store, self.peers, self.database = store, peers, database


@pytest.fixture
async def nodes(tmp_path: Path, pg_dsn: str) -> AsyncIterator[Callable[[], Any]]:
    """make() -> a started Node over tmp_path/mail with a Database pool of its own."""
    made: list[Node] = []

    async def make() -> Node:
        db = Database(pg_dsn, pool_size=2, timeout=2.0)
        await db.open()
        peers = PgBus(db, check_every=0.5)
        store = Store(tmp_path / "mail", hostname=HOST, fsync=False, peers=peers)
        await store.start()
        assert peers.listening.is_set()
        made.append(Node(store, peers, db))
        return made[-1]

    yield make
    for n in made:
        await n.store.close()
        await n.database.close()


async def next_event(sub: Subscription, seconds: float = 1.0) -> Event:
    return await asyncio.wait_for(sub.get(), seconds)


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_delivery_through_one_node_reaches_a_subscriber_on_another_within_one_second(
        nodes: Callable[[], Any]) -> None:
    a, b = await nodes(), await nodes()
    with b.store.changes.subscribe(ALICE) as sub:
        started = time.monotonic()
        await a.store.deliver([(ALICE, "INBOX")], MSG)
        assert await next_event(sub) == MessagesAdded(ALICE, "INBOX", ())
        assert time.monotonic() - started < 1.0
        await a.store.account(ALICE).create_mailbox("Work")
        assert await next_event(sub) == MailboxesChanged(ALICE)
        mb = await b.store.account(ALICE).mailbox("INBOX")  # B's snapshot sees A's delivery
        assert len((await mb.snapshot()).messages) == 1


async def test_a_nodes_own_notifications_are_not_published_twice(nodes: Callable[[], Any]) -> None:
    a, b = await nodes(), await nodes()
    with a.store.changes.subscribe(ALICE) as mine, b.store.changes.subscribe(ALICE) as theirs:
        await a.store.deliver([(ALICE, "INBOX")], MSG)
        assert await next_event(mine) == MessagesAdded(ALICE, "INBOX", ())
        assert await next_event(theirs) == MessagesAdded(ALICE, "INBOX", ())
        await asyncio.sleep(0.3)  # A's LISTEN got its own NOTIFY by now (B got it, sent at once)
        assert mine.pending() == 0 and theirs.pending() == 0
        assert a.peers.received == 0 and b.peers.received == 1


async def test_a_burst_of_events_is_coalesced_and_split_under_the_payload_limit(
        nodes: Callable[[], Any], pg_dsn: str) -> None:
    import psycopg

    a, b = await nodes(), await nodes()
    users = [f"u{i:04d}-{'x' * 200}@example.test" for i in range(60)]  # ~13 kB of records
    seen: list[str] = []
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as spy:
        await spy.execute(f"LISTEN {CHANNEL}")
        subs = [b.store.changes.subscribe(u) for u in users]
        for u in users:
            for _ in range(3):  # the same event three times: sent once
                a.store.changes.publish(MailboxesChanged(u))
        for s in subs:
            assert await next_event(s) == MailboxesChanged(s.user)
        async for n in spy.notifies(timeout=0.5):
            seen.append(n.payload)
    assert 2 <= len(seen) <= 3 and all(len(p.encode()) < MAX_PAYLOAD for p in seen)
    assert b.peers.received == len(users)
    for s in subs:
        assert s.pending() == 0
        s.close()


async def test_garbage_on_the_channel_is_ignored(nodes: Callable[[], Any], pg_dsn: str) -> None:
    import psycopg

    a, b = await nodes(), await nodes()
    node = "0123456789abcdef"
    garbage = ["", "hello", "MH1\na\talice@example.test\tINBOX", f"{node}", f"{node} ", f"{node} MH1",
               f"{node} MH2\na\t{ALICE}\tINBOX", f"{node} MH1\nz\t{ALICE}\tINBOX", f"{node} MH1\na\t\tINBOX",
               f"{node} MH1\na\t{ALICE}\x01\tINBOX", f"{node} MH1\na\t{ALICE}", f"{node} MH1\na\t{ALICE}\tINBOX\tx",
               "ZZZZ456789abcdef MH1\na\talice@example.test\tINBOX", f"{node} MH1\n" + "y" * 7900,
               f"{node} MH1\na\t{'u' * 2000}@example.test\tINBOX"]
    with b.store.changes.subscribe(ALICE) as sub:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as other:
            for g in garbage:
                await other.execute("SELECT pg_notify(%s, %s)", (CHANNEL, g))
            # A well-formed payload of a node nobody knows is heard like any other.
            await other.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payloads(node, [b"x\0" + ALICE.encode() + b"\0Junk"])[0]))
        await a.store.deliver([(ALICE, "INBOX")], MSG)
        assert await next_event(sub) == Expunged(ALICE, "Junk", ())
        assert await next_event(sub) == MessagesAdded(ALICE, "INBOX", ())
        await eventually(lambda: b.peers.dropped == len(garbage), 1.0)
    assert b.peers.listening.is_set() and b.peers.connects == 1


async def test_after_postgresql_restarts_the_listener_reconnects_and_subscribers_resync(
        nodes: Callable[[], Any], postgres: Postgres, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven.store.bus_pg")
    a, b = await nodes(), await nodes()
    with b.store.changes.subscribe(ALICE) as sub:
        await asyncio.to_thread(postgres.stop)
        try:
            await eventually(lambda: not b.peers.listening.is_set(), 5.0)
        finally:
            await asyncio.to_thread(postgres.start)
        await eventually(lambda: b.peers.listening.is_set(), 15.0)
        assert b.peers.connects == 2
        assert await next_event(sub) == Overflow(ALICE)  # events sent meanwhile were lost: resync
        started = time.monotonic()
        await a.store.deliver([(ALICE, "INBOX")], MSG)
        assert await next_event(sub, 5.0) == MessagesAdded(ALICE, "INBOX", ())
        assert time.monotonic() - started < 5.0  # A's pool replaces its broken connections first
    b_lines = [r.getMessage() for r in caplog.records if "not listening" in r.getMessage()]
    assert len(b_lines) == 2  # one line per node for the whole outage, however often it tried
    assert sum("listening again" in r.getMessage() for r in caplog.records) == 2


async def test_with_postgresql_the_app_relays_store_changes_through_notify_not_the_bus(
        make_config: Callable[..., Any], tmp_path: Path, pg_dsn: str) -> None:
    cfg = make_config(storage={"backend": "postgresql", "dsn": pg_dsn})
    ctx = app.build_context(cfg, bus_dir=tmp_path / "run" / "bus")
    assert isinstance(ctx.store.peers, PgBus) and ctx.store.bus_dir is None
    plain = app.build_context(make_config(), bus_dir=tmp_path / "run" / "bus")
    assert plain.store.peers is None and plain.store.bus_dir == tmp_path / "run" / "bus"


async def _imap_line(reader: asyncio.StreamReader, seconds: float = 5.0) -> bytes:
    return await asyncio.wait_for(reader.readline(), seconds)


async def _imap_cmd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> list[bytes]:
    writer.write(b"t " + line + b"\r\n")
    out = [await _imap_line(reader)]
    while not out[-1].startswith(b"t "):
        out.append(await _imap_line(reader))
    return out


def _mx_send(port: int, rcpt: str) -> dict[str, Any]:
    """One MX transaction (smtplib raises when it is refused); the refused recipients."""
    import smtplib

    msg = f"From: someone@example.net\r\nTo: {rcpt}\r\nSubject: across\r\nMessage-ID: <n@example.net>\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("client.example.net")
        return dict(smtp.sendmail("someone@example.net", [rcpt], msg))


async def test_mail_through_the_mx_of_node_a_reaches_an_idle_session_on_node_b_within_one_second(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, pg_dsn: str) -> None:
    """Issue 15: two running servers (app.run) sharing one PostgreSQL and one mail directory
    (node B's data_dir/mail is a symlink to node A's)."""
    from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app

    top: dict[str, Any] = {"storage": {"backend": "postgresql", "dsn": pg_dsn},
                           "auth": {"failure_delay": 0, "allow_plaintext_loopback": True},
                           "users_file": str(tmp_path / "users.toml")}
    cfgs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        cfgs.append(load_test_config(app_config_file(tmp_path / name, tls_files, dns_nameserver, **top)))
    (tmp_path / "b" / "data").mkdir()
    (tmp_path / "a" / "data" / "mail").mkdir(parents=True)
    (tmp_path / "b" / "data" / "mail").symlink_to(tmp_path / "a" / "data" / "mail")
    add_user(cfgs[0], ALICE, "correct horse")
    async with running_app(cfgs[0]) as a, running_app(cfgs[1]) as b:
        reader, writer = await asyncio.open_connection("127.0.0.1", b.port("imap"))
        try:
            assert (await _imap_line(reader)).startswith(b"* OK")
            assert (await _imap_cmd(reader, writer, b'LOGIN alice@example.test "correct horse"'))[-1].startswith(b"t OK")
            assert (await _imap_cmd(reader, writer, b"SELECT INBOX"))[-1].startswith(b"t OK")
            writer.write(b"i IDLE\r\n")
            assert (await _imap_line(reader)).startswith(b"+ ")
            assert await asyncio.to_thread(_mx_send, a.port("mx"), ALICE) == {}
            sent = time.monotonic()  # the 250 to DATA: A's store has the message
            assert await _imap_line(reader, 1.0) == b"* 1 EXISTS\r\n"
            assert time.monotonic() - sent < 1.0
            writer.write(b"DONE\r\n")
            lines = [await _imap_line(reader)]
            while not lines[-1].startswith(b"i "):
                lines.append(await _imap_line(reader))
            assert lines[-1].startswith(b"i OK")
            assert (await _imap_cmd(reader, writer, b"FETCH 1 (UID BODY[HEADER.FIELDS (SUBJECT)])"))[0].startswith(
                b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) BODY[HEADER.FIELDS (SUBJECT)]")  # FLAGS first: Dovecot's order
        finally:
            writer.close()
