"""Issue 10 item 3: a login costs milliseconds, and a login storm cannot stall mailboxes or the MX.
(a) hashes made with old parameters are rewritten after the next good login; (b) good logins are
cached (one hash for a client opening 5 connections), dropped on reload and password change;
(c) hashing runs on its own executor: during 20 logins in flight an open session's LIST and FETCH
answer within 50 ms and an MX delivery within 500 ms (medians of 3)."""

from __future__ import annotations

import asyncio
import imaplib
import logging
import smtplib
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import argon2
import pytest

from mailhaven import app
from mailhaven.auth import passwords
from mailhaven.auth.users import UsersFile
from tests.fixtures_server import reload_users, running_app
from tests.integration.test_login_throttle import (
    ALICE,
    BOB,
    PASSWORD,
    CheckSpy,
    LoginLog,
    capture_login_log,
    login_ok,
    make_config,
    raw_login,
)

OLD = argon2.Parameters(type=argon2.Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1,
                        memory_cost=2048, parallelism=2)  # not the current (test) parameters


@pytest.fixture
def login_log() -> Iterator[LoginLog]:
    yield from capture_login_log()


# --- (b) the verification cache --------------------------------------------------------------------


async def test_five_connections_at_once_pay_one_hash_and_reconnects_are_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, login_log: LoginLog) -> None:
    spy = CheckSpy()
    monkeypatch.setattr(passwords, "verify_sync", spy)
    cfg = make_config(tmp_path)
    async with running_app(cfg) as ctx:
        port = ctx.port("imap")
        assert all(await asyncio.gather(*(raw_login(port, "imap", "127.0.0.1", ALICE, PASSWORD) for _ in range(5))))
        assert spy.total == 1  # the old code hashed 5 times
        assert await raw_login(ctx.port("pop3"), "pop3", "127.0.0.1", ALICE, PASSWORD)
        assert spy.total == 1
        assert login_log.last("login ok", proto="pop3")["cached"] is True
        # another address, same password: the cache is by user and password, not by address
        assert await raw_login(port, "imap", "127.0.0.2", ALICE, PASSWORD)
        assert spy.total == 1


async def test_the_cache_is_dropped_on_reload_and_never_answers_an_old_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "USERS_POLL_INTERVAL", 3600.0)
    spy = CheckSpy()
    monkeypatch.setattr(passwords, "verify_sync", spy)
    cfg = make_config(tmp_path)
    async with running_app(cfg) as ctx:
        port = ctx.port("imap")
        assert await raw_login(port, "imap", "127.0.0.1", ALICE, PASSWORD)
        assert await raw_login(port, "imap", "127.0.0.1", ALICE, PASSWORD)
        assert spy.total == 1
        reload_users(ctx)  # the users file was read again (SIGHUP, or the watcher after an edit)
        assert await raw_login(port, "imap", "127.0.0.1", ALICE, PASSWORD)
        assert spy.total == 2
        with UsersFile.edit(cfg.users_file) as uf:
            uf.set_password(ALICE, passwords.hash_password("New-Password-2"))
        reload_users(ctx)
        assert not await raw_login(port, "imap", "127.0.0.1", ALICE, PASSWORD)
        assert await raw_login(port, "imap", "127.0.0.1", ALICE, "New-Password-2")


async def test_the_cache_keeps_no_password_and_is_bounded(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, cache_size=3, failure_delay=0)
    async with running_app(cfg) as ctx:
        for i in range(6):
            with UsersFile.edit(cfg.users_file) as uf:
                uf.add_user(f"u{i}@example.test", passwords.hash_password(f"pw{i}"))
        reload_users(ctx)
        for i in range(6):
            assert await raw_login(ctx.port("imap"), "imap", "127.0.0.1", f"u{i}@example.test", f"pw{i}")
        assert ctx.logins is not None and ctx.logins.cache_size() == 3
        assert "pw5" not in repr(ctx.logins._cache._data)


# --- (a) rehash after a good login -------------------------------------------------------------------


def _set_old_hash(cfg_users: str) -> str:
    old = passwords.hash_password(PASSWORD, params=OLD)
    with UsersFile.edit(cfg_users) as uf:
        uf.set_password(ALICE, old)
    return old


async def test_a_hash_with_old_parameters_is_rewritten_after_a_good_login(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    old = _set_old_hash(cfg.users_file)
    async with running_app(cfg) as ctx:
        assert await asyncio.to_thread(login_ok, ctx, "imap", "127.0.0.1", ALICE, PASSWORD)
        assert ctx.logins is not None
        await ctx.logins.drain()
        entry = UsersFile.load(cfg.users_file).get_user(ALICE)
        assert entry is not None and entry.password != old
        assert not passwords.needs_rehash(entry.password)  # the current parameters
        assert passwords.verify_sync(entry.password, PASSWORD)
        # the server picks the rewritten file up and logins go on working
        reload_users(ctx)
        assert await asyncio.to_thread(login_ok, ctx, "pop3", "127.0.0.1", ALICE, PASSWORD)
        bob = UsersFile.load(cfg.users_file).get_user(BOB)
        assert bob is not None and passwords.verify_sync(bob.password, PASSWORD)  # others untouched


def _block_lock_file(users_file: str) -> None:
    """A folder where the locked edit's lock file goes: the users file cannot be edited (the tests
    run as root, so a read-only mode would not stop a write)."""
    Path(users_file + ".lock").unlink(missing_ok=True)
    Path(users_file + ".lock").mkdir()


async def test_a_users_file_that_cannot_be_written_is_logged_once_and_logins_go_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config(tmp_path)
    old = _set_old_hash(cfg.users_file)
    _block_lock_file(cfg.users_file)
    caplog.set_level(logging.WARNING, logger="mailhaven.auth")
    async with running_app(cfg) as ctx:
        assert ctx.logins is not None
        for proto in ("imap", "pop3", "submission"):
            reload_users(ctx)  # drop the cache: a real check, and a rehash attempt, each time
            assert await asyncio.to_thread(login_ok, ctx, proto, "127.0.0.1", ALICE, PASSWORD)
            await ctx.logins.drain()
    warnings = [r for r in caplog.records if "cannot rewrite password hashes" in r.getMessage()]
    assert len(warnings) == 1
    entry = UsersFile.load(cfg.users_file).get_user(ALICE)
    assert entry is not None and entry.password == old


# --- (c) hashing on its own executor -------------------------------------------------------------------


async def test_password_checks_run_on_the_hash_threads_not_the_default_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names: list[str] = []
    real = passwords.verify_sync

    def spy(hash: str, pw: str) -> bool:
        names.append(threading.current_thread().name)
        return real(hash, pw)

    monkeypatch.setattr(passwords, "verify_sync", spy)
    cfg = make_config(tmp_path)
    async with running_app(cfg) as ctx:
        for proto in ("imap", "pop3", "submission"):
            assert not await raw_login(ctx.port(proto), proto, "127.0.0.1", BOB, f"wrong-{proto}")
    assert names and all(n.startswith("mailhaven-hash") for n in names), names


def _imap_session(port: int) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    c.login(ALICE, PASSWORD)
    c.select("INBOX")
    return c


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def _mx_deliver(port: int) -> None:
    msg = (f"From: someone@example.net\r\nTo: {ALICE}\r\nSubject: during a login storm\r\n"
           "Message-ID: <storm@example.net>\r\n\r\nhi\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.example.net")
        assert smtp.sendmail("someone@example.net", [ALICE], msg) == {}


async def test_a_login_storm_does_not_stall_an_open_mailbox_or_the_mx(
        tmp_path: Path, dns_nameserver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 logins always in flight (20 users, right passwords, no cache), each a slow hash (0.3 s of
    a worker thread, as the old 64 MiB argon2id took under load). The old code ran them in the default pool, which the store and the MX share:
    LIST waited for them. Now LIST and FETCH answer within 50 ms and the MX within 500 ms."""
    real = passwords.verify_sync

    def slow(hash: str, pw: str) -> bool:
        time.sleep(0.3)
        return real(hash, pw)

    cfg = make_config(tmp_path, dns_nameserver, failure_delay=0, cache_ttl=0)  # every login hashes
    with UsersFile.edit(cfg.users_file) as uf:
        for i in range(20):
            uf.add_user(f"u{i}@example.test", passwords.hash_password(f"pw{i}"))
    async with running_app(cfg) as ctx:
        imap_port, mx_port = ctx.port("imap"), ctx.port("mx")
        await asyncio.to_thread(_mx_deliver, mx_port)  # one message to FETCH
        session = await asyncio.to_thread(_imap_session, imap_port)
        monkeypatch.setattr(passwords, "verify_sync", slow)
        stop = asyncio.Event()

        async def client(i: int) -> int:
            n = 0
            while not stop.is_set():  # always a login of this client in flight
                assert await raw_login(imap_port, "imap", f"127.0.3.{i}", f"u{i}@example.test", f"pw{i}")
                n += 1
            return n

        storm = [asyncio.create_task(client(i)) for i in range(20)]
        try:
            await asyncio.sleep(0.5)  # the storm is on
            lists, fetches, mx = [], [], []
            for _ in range(3):
                lists.append(await asyncio.to_thread(_timed, lambda: session.list()))
                fetches.append(await asyncio.to_thread(_timed, lambda: session.fetch("1", "(FLAGS)")))
                mx.append(await asyncio.to_thread(_timed, lambda: _mx_deliver(mx_port)))
        finally:
            stop.set()
            await asyncio.gather(*storm, return_exceptions=True)
        await asyncio.to_thread(session.logout)
    assert statistics.median(lists) < 0.05, lists
    assert statistics.median(fetches) < 0.05, fetches
    assert statistics.median(mx) < 0.5, mx
