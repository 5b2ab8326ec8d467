"""Quotas (issue 13 item 7) end to end: limits from the users file and the domain default, usage
kept in the index (incremental; recomputed when the index is rebuilt), the IMAP QUOTA extension
(RFC 9208) with a real imaplib client, APPEND/COPY refused with [OVERQUOTA], the MX refusing at
RCPT (SIZE=) and DATA, the queue retrying then bouncing, the 90 % warning, `mailhaven quota show`."""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import logging
import os
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app, cleanup
from mailhaven.auth.users import Directory, UsersFile
from mailhaven.config import ConfigError, parse_size
from mailhaven.errors import StoreError
from mailhaven.queue.manager import QueueManager
from mailhaven.seams import Recipient
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.smtp_peer import until

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "secret"
KIB = 1024


def message(size: int, subject: str = "hello") -> bytes:
    head = f"From: <sender@sender.test>\r\nTo: <{ALICE}>\r\nSubject: {subject}\r\n\r\n".encode()
    body = b"".join(b"x" * 70 + b"\r\n" for _ in range(max(0, size - len(head)) // 72 + 1))
    return head + body[:max(0, size - len(head))]


def set_quota(users_file: Path, user: str, quota: int | None, messages: int | None) -> None:
    with UsersFile.edit(users_file) as uf:
        uf.set_quota(user, quota, messages)


async def inbox(ctx: Any, user: str = ALICE, folder: str = "INBOX") -> list[bytes]:
    mb = await ctx.store.account(user).mailbox(folder)
    return [await mb.read(m.uid) for m in (await mb.snapshot()).messages]


# -- limits ----------------------------------------------------------------------------------------


def test_sizes_and_limits_from_the_users_file_win_over_the_domain_default(tmp_path: Path,
                                                                         make_config: Any) -> None:
    assert [parse_size(v) for v in (0, 1536, "100K", "1M", "1G", "2 GiB")] == [
        0, 1536, 100 * KIB, KIB**2, KIB**3, 2 * KIB**3]
    for bad in ("1X", "-1", "1.5G", True, ""):
        with pytest.raises(ValueError):
            parse_size(bad)
    path = tmp_path / "u.toml"
    hashed = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
    path.write_text(f'[users."{ALICE}"]\npassword = "{hashed}"\nquota = "1G"\nquota_messages = 100\n'
                    f'[users."{BOB}"]\npassword = "{hashed}"\n')
    uf = UsersFile.load(path)
    cfg = make_config(domains={"example.test": {"quota": "50M", "quota_messages": 7}})
    directory = Directory(cfg, uf)
    assert directory.quota_limits(ALICE) == (KIB**3, 100)
    assert directory.quota_limits(BOB) == (50 * KIB**2, 7)  # the domain's default
    assert Directory(make_config(), uf).quota_limits(BOB) == (0, 0)  # none: no limit
    assert UsersFile.loads(uf.dumps().encode(), path).get_user(ALICE).quota == KIB**3  # type: ignore[union-attr]
    for line, key in (('quota = "lots"', "quota"), ("quota_messages = -3", "quota_messages"),
                      ('quota_messages = "9"', "quota_messages"), ("quota = true", "quota")):
        path.write_text(f'[users."{ALICE}"]\npassword = "{hashed}"\n{line}\n')
        with pytest.raises(ConfigError, match=rf'users\."alice@example.test"\.{key}: expected'):
            UsersFile.load(path)
    with pytest.raises(ConfigError, match=r"domains\.\"?example.test\"?\.quota: expected a size"):
        make_config(domains={"example.test": {"quota": "big"}})


# -- usage in the index ----------------------------------------------------------------------------


@pytest.fixture
async def ctx(make_config: Any, users_file_path: Path) -> AsyncIterator[app.Context]:
    set_quota(users_file_path, ALICE, 20_000, 100)
    context = app.build_context(make_config(hostname="mail.example.test"))
    await context.store.start()
    yield context
    await context.store.close()


async def test_usage_follows_delivery_append_copy_expunge_and_a_rebuild_recomputes_it(
        ctx: app.Context) -> None:
    account = ctx.store.account(ALICE)
    assert await account.usage() == (0, 0)
    a, b = message(1000, "a"), message(2000, "b")
    await ctx.store.deliver([(ALICE, "INBOX")], a)  # not indexed yet: counted as pending
    assert await account.usage() == (1000, 1)
    inbox_mb = await account.mailbox("INBOX")  # the sync indexes it: counted once
    assert await account.usage() == (1000, 1)
    await inbox_mb.append(b)
    assert await account.usage() == (3000, 2)
    trash = await account.mailbox("Trash")
    uids = [m.uid for m in (await inbox_mb.snapshot()).messages]
    await inbox_mb.copy(uids, trash)
    assert await account.usage() == (6000, 4)
    await inbox_mb.move(uids[:1], await account.mailbox("Archive"))
    assert await account.usage() == (6000, 4)
    await inbox_mb.expunge(uids[1:])
    assert await account.usage() == (4000, 3)  # expunge: down
    before = await account.folder_usage()
    # Rebuild: the index is gone (a new process, as after deleting it); the same usage comes back.
    await ctx.store.close()
    os.unlink(account.path / "mailhaven-index.sqlite")
    again = ctx.store.account(ALICE)
    assert await again.usage() == (4000, 3)
    assert await again.folder_usage() == before
    assert before["Trash"] == (3000, 2) and before["Archive"] == (1000, 1)


async def test_quota_refuses_local_delivery_with_452_4_2_2_and_nothing_is_stored(ctx: app.Context) -> None:
    agent = ctx.agent
    [ok] = await agent.deliver([agent.resolve(ALICE)], message(12000), sender="")
    assert ok.delivered
    [full] = await agent.deliver([agent.resolve(ALICE)], message(12000), sender="")
    assert (full.code, full.enhanced, full.temporary) == (452, "4.2.2", True)
    assert len(await inbox(ctx)) == 1
    [other] = await agent.deliver([agent.resolve(BOB)], message(12000), sender="")  # bob has no limit
    assert other.delivered


async def test_one_warning_per_crossing_of_90_percent(ctx: app.Context) -> None:
    agent = ctx.agent

    async def deliver(size: int) -> None:
        [r] = await agent.deliver([Recipient(ALICE, (ALICE,))], message(size), sender="s@sender.test")
        assert r.delivered, r.reply

    def warnings(messages: list[bytes]) -> list[email.message.Message]:
        parsed = [email.message_from_bytes(m, policy=email.policy.compat32) for m in messages]
        return [m for m in parsed if (m["Subject"] or "").startswith("Your mailbox is")]

    await deliver(10000)
    await deliver(6000)
    assert warnings(await inbox(ctx)) == []  # 81 % of 20000
    await deliver(2400)  # 93 %: crossed
    [warning] = warnings(await inbox(ctx))
    assert warning["From"] == "Mail system <postmaster@example.test>"
    assert warning["Auto-Submitted"] == "auto-generated" and warning["Return-Path"] == "<>"
    assert 90 <= int(warning["Subject"].split()[3].rstrip("%")) < 95
    await deliver(100)  # still above 90 %: no second warning
    assert len(warnings(await inbox(ctx))) == 1
    # Below 85 % re-arms it: the next crossing warns again.
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    big = [m.uid for m in (await mb.snapshot()).messages if m.size > 5000]
    await mb.expunge(big)
    await deliver(15000)
    assert len(warnings(await inbox(ctx))) == 2


async def test_queued_local_delivery_over_quota_is_retried_then_bounced(
        make_config: Any, users_file_path: Path, dns_nameserver: str, caplog: pytest.LogCaptureFixture) -> None:
    set_quota(users_file_path, ALICE, None, 1)
    cfg = make_config(hostname="mail.example.test", dns={"nameservers": [dns_nameserver], "timeout": 1},
                      queue={"retry_schedule": ["0.2s"], "jitter": 0, "lifetime": "1m"})
    ctx = app.build_context(cfg)
    await ctx.store.start()
    mgr = QueueManager(ctx)
    ctx.queue = mgr
    task = asyncio.create_task(mgr.run())
    try:
        await mgr.loaded.wait()
        await ctx.store.deliver([(ALICE, "INBOX")], message(500, "first"))  # alice now holds 1 of 1
        caplog.set_level(logging.INFO, logger="mailhaven.queue")
        # An entry from bob queued 58 s ago: it expires (lifetime 1 min) after a few retries.
        entry = await mgr.spool.add(BOB, [ALICE], cleanup.to_crlf(message(500, "queued")),
                                    created=time.time() - 58, next_attempt=time.time())
        mgr.entries[entry.id] = entry
        mgr._schedule(entry)
        mgr.wake()

        async def bounced() -> list[bytes] | None:
            got = await inbox(ctx, BOB)
            return got or None

        [bounce] = await until(bounced, 20)
        deferred = [r for r in caplog.records if "deferred" in r.getMessage() and "4.2.2" in r.getMessage()]
        assert len(deferred) >= 2  # retried
        msg = email.message_from_bytes(bounce, policy=email.policy.compat32)
        report = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"][0]
        groups = [dict(g.items()) for g in report.get_payload()]  # type: ignore[union-attr]
        assert groups[1]["Action"] == "failed" and "4.2.2" in groups[1]["Diagnostic-Code"]
        assert [m for m in await inbox(ctx) if b"Subject: queued" in m] == []
    finally:
        mgr.stop()
        await asyncio.wait_for(task, 5)
        await ctx.store.close()


# -- the server: IMAP and MX -----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def quota_config(tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str,
                 request: pytest.FixtureRequest) -> Any:
    """The server's config, over each storage backend (with PostgreSQL the usage is in its index)."""
    storage = {"storage": {"backend": "postgresql", "dsn": request.getfixturevalue("pg_dsn")}} \
        if request.param == "postgresql" else {}
    cfg = load_test_config(app_config_file(
        tmp_path, tls_files, dns_nameserver, domains={"example.test": {"quota": "10K", "quota_messages": 5}},
        auth={"failure_delay": 0, "allow_plaintext_loopback": True}, dev=True, **storage))
    add_user(cfg, ALICE, PASSWORD)
    return cfg


def imap_session(port: int, steps: Callable[[imaplib.IMAP4], Any]) -> Any:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        c.login(ALICE, PASSWORD)
        return steps(c)
    finally:
        c.logout()


async def test_imap_quota_extension_and_overquota_on_append_and_copy(quota_config: Any) -> None:
    async with running_app(quota_config) as ctx:
        def steps(c: imaplib.IMAP4) -> dict[str, Any]:
            out: dict[str, Any] = {"caps": c.capability()[1][0].decode().split()}
            out["root0"] = c.getquotaroot("INBOX")
            out["append"] = c.append("INBOX", None, None, message(4000))
            out["quota1"] = c.getquota('""')
            out["toobig"] = c.append("INBOX", None, None, message(7000))
            c.select("INBOX")
            out["copy1"] = c.copy("1", "Trash")  # 8000 octets in all: fits
            out["copy2"] = c.copy("1", "Trash")  # 12000 > 10 KiB: refused
            out["quota2"] = c.getquota('""')
            out["trash"] = c.status("Trash", "(MESSAGES)")
            out["set"] = c.setquota('""', "(STORAGE 100000)")
            out["unknown"] = c.getquota("other")
            c.select("Trash")
            c.store("1", "+FLAGS", "(\\Deleted)")
            c.expunge()
            out["quota3"] = c.getquotaroot("Trash")
            return out

        r = await asyncio.to_thread(imap_session, ctx.port("imap"), steps)
        assert {"QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE"} <= set(r["caps"])
        # RFC 9208 §4.3 / §5.1: the root "" of every folder; STORAGE in KiB (10K = 10), MESSAGE
        assert r["root0"] == ("OK", [[b'INBOX ""'], [b'"" (STORAGE 0 10 MESSAGE 0 5)']])
        assert r["append"][0] == "OK"
        assert r["quota1"] == ("OK", [b'"" (STORAGE 4 10 MESSAGE 1 5)'])  # 4000 octets: 3.9 KiB up
        assert r["toobig"][0] == "NO" and r["toobig"][1][0].startswith(b"[OVERQUOTA]")
        assert r["copy1"][0] == "OK"
        assert r["copy2"][0] == "NO" and r["copy2"][1][0].startswith(b"[OVERQUOTA]")
        assert r["quota2"] == ("OK", [b'"" (STORAGE 8 10 MESSAGE 2 5)'])  # nothing of the refusals kept
        assert r["trash"] == ("OK", [b'Trash (MESSAGES 1)'])
        assert r["set"][0] == "NO" and r["set"][1][0].startswith(b"[NOPERM]")  # RFC 9208 §4.1
        assert r["unknown"][0] == "NO"
        assert r["quota3"] == ("OK", [[b'Trash ""'], [b'"" (STORAGE 4 10 MESSAGE 1 5)']])  # expunged: down
        assert len(await inbox(ctx)) == 1


async def test_mx_refuses_over_quota_at_rcpt_with_size_and_at_data(quota_config: Any) -> None:
    async with running_app(quota_config) as ctx:
        await ctx.store.deliver([(ALICE, "INBOX")], message(6000))

        def talk() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with smtplib.SMTP("127.0.0.1", ctx.port("mx"), local_hostname="mta.sender.test", timeout=20) as s:
                s.ehlo()
                s.mail("sender@sender.test", ["SIZE=5000"])  # 6000 + 5000 > 10 KiB
                out["rcpt_size"] = s.rcpt(ALICE)
                s.rset()
                s.mail("sender@sender.test", ["SIZE=1000"])
                out["rcpt_fits"] = s.rcpt(ALICE)
                out["data"] = s.data(message(5000))  # announced 1000, is 5000 + trace: 552 at DATA
            return out

        r = await asyncio.to_thread(talk)
        assert r["rcpt_size"][0] == 452 and r["rcpt_size"][1].startswith(b"4.2.2")
        assert r["rcpt_fits"][0] == 250
        assert r["data"][0] == 552 and r["data"][1].startswith(b"5.2.2")
        assert len(await inbox(ctx)) == 1  # nothing stored


# -- the CLI ---------------------------------------------------------------------------------------


def quota_show(config_path: Path, user: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailhaven", "-c", str(config_path), "quota", "show", user],
                          capture_output=True, text=True, timeout=60)


async def test_cli_quota_show_reads_usage_and_limits_without_the_server(quota_config: Any, tmp_path: Path
                                                                        ) -> None:
    ctx = app.build_context(quota_config)
    await ctx.store.start()
    await ctx.store.deliver([(ALICE, "INBOX")], message(3000))
    await (await ctx.store.account(ALICE).mailbox("INBOX")).snapshot()  # indexed
    await ctx.store.deliver([(ALICE, "INBOX")], message(2000))  # in new/, not yet indexed
    await ctx.store.close()
    if ctx.database is not None:
        await ctx.database.close()
    set_quota(quota_config.users_file, ALICE, 100 * KIB, None)
    r = await asyncio.to_thread(quota_show, tmp_path / "mailhaven.toml", ALICE)
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()]
    assert lines[1][-4:] == ["STORAGE", "5", "100", "4"]  # 5000 octets of 100 KiB; the user's own limit
    assert lines[2][-4:] == ["MESSAGE", "2", "5", "40"]  # the domain's default count
    bad = await asyncio.to_thread(quota_show, tmp_path / "mailhaven.toml", "nobody@example.test")
    assert bad.returncode != 0 and bad.stderr == "mailhaven: no such user: nobody@example.test\n"


async def test_an_index_of_schema_2_gets_its_folder_totals_computed_from_its_rows(ctx: app.Context) -> None:
    """An index written before quotas (no mailbox.msg_bytes/msg_count) is migrated in place: the
    totals are summed from the rows once, and the UIDs are kept (not a rebuild)."""
    account = ctx.store.account(ALICE)
    mb = await account.mailbox("INBOX")
    await mb.append(message(1500))
    await mb.append(message(2500))
    uids = [m.uid for m in (await mb.snapshot()).messages]
    await ctx.store.close()
    db = sqlite3.connect(account.path / "mailhaven-index.sqlite")
    db.execute("ALTER TABLE mailbox DROP COLUMN msg_bytes")
    db.execute("ALTER TABLE mailbox DROP COLUMN msg_count")
    db.execute("UPDATE meta SET v='2' WHERE k='schema'")
    db.commit()
    db.close()
    again = ctx.store.account(ALICE)
    assert await again.usage() == (4000, 2)
    assert [m.uid for m in (await (await again.mailbox("INBOX")).snapshot()).messages] == uids


async def test_a_delivery_reads_one_row_per_folder_not_the_messages(ctx: app.Context,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """"Never a scan per delivery": once the account's usage is known, the quota step of a delivery
    lists no directory and does not read the message rows (only the per-folder totals)."""
    account = ctx.store.account(ALICE)
    mb = await account.mailbox("INBOX")
    for _ in range(50):
        await mb.append(message(100))
    assert await account.usage() == (5000, 50)
    statements: list[str] = []
    index = account._ready()
    index._db.set_trace_callback(statements.append)
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        listed.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # observed, not replaced
    try:
        await ctx.quota.admit(ALICE, 100)
        [r] = await ctx.agent.deliver([Recipient(ALICE, (ALICE,))], message(100), sender="")
    finally:
        monkeypatch.undo()
        index._db.set_trace_callback(None)
    assert r.delivered
    assert listed == []
    assert statements and all("FROM message" not in s for s in statements), statements


async def test_a_failed_all_or_nothing_delivery_leaves_the_usage_as_it_was(ctx: app.Context) -> None:
    account = ctx.store.account(ALICE)
    assert await account.usage() == (0, 0)
    bob_root = ctx.store.account(BOB).path
    bob_root.parent.mkdir(parents=True, exist_ok=True)
    bob_root.write_bytes(b"not a folder")  # bob's copy fails after alice's was placed
    with pytest.raises(StoreError):
        await ctx.store.deliver([(ALICE, "INBOX"), (BOB, "INBOX")], message(1000),
                                heads={ALICE: b"Delivered-To: alice\r\n", BOB: b"Delivered-To: bob\r\n"})
    assert await account.usage() == (0, 0)
    assert await inbox(ctx) == []
