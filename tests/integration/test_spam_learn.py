"""Issue 12 item 4: rspamd learns from the user's own moves (IMAP COPY/MOVE into and out of Junk,
$Junk/$NotJunk), per user, in the background; POP3 teaches nothing.

A real rspamd with per-user Bayes on its own redis (tests/fixtures_rspamd.py `rspamd_bayes`:
min_learns 5, no autolearn, a controller that wants the password from loopback too), the whole
server (app.run) and real clients (imapclient, poplib, smtplib). Each test uses its own user, so
what one test teaches does not change another's verdicts."""

from __future__ import annotations

import asyncio
import json
import logging
import poplib
import random
import smtplib
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import imapclient
import pytest

from mailhaven import app
from mailhaven.metrics import Metrics
from mailhaven.policy.learn import Learner
from mailhaven.store import Store
from tests.fixtures_rspamd import CONTROLLER_PASSWORD, Rspamd
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app

PASSWORD = "correct horse"
SPAM_WORDS = ("viagra casino lottery winner prize crypto bitcoin investment pills discount offer cheap "
              "replica watches guaranteed jackpot refinance mortgage").split()
HAM_WORDS = ("meeting agenda project quarterly report budget review schedule team lunch minutes deadline "
             "draft roadmap sprint retrospective").split()


def message(words: tuple[str, ...] | list[str], seed: int, to: str) -> bytes:
    """A message of 60 words drawn from `words` (enough tokens for Bayes), unique per seed."""
    rnd = random.Random(seed)
    body = " ".join(rnd.choice(words) for _ in range(60))
    subject = " ".join(rnd.sample(list(words), 3))
    return (f"From: sender{seed}@sender.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <learn-{seed}@sender.test>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n\r\n"
            f"{body}\r\n").encode()


def spam_cfg(rspamd: Rspamd, **extra: Any) -> dict[str, Any]:
    return {"rspamd_url": rspamd.url, "rspamd_controller_url": rspamd.controller_url,
            "rspamd_password_file": str(rspamd.password_file), "rspamd_timeout": 10, **extra}


@asynccontextmanager
async def server(tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, users: list[str],
                 **spam: Any) -> AsyncIterator[app.Context]:
    cfg = load_test_config(app_config_file(tmp_path, tls_files, dns_nameserver, spam=spam))
    for user in users:
        add_user(cfg, user, PASSWORD)
    async with running_app(cfg) as ctx:
        ctx.metrics = Metrics(enabled=True, process=False)
        yield ctx


def imap(ctx: app.Context, user: str, tls: ssl.SSLContext) -> imapclient.IMAPClient:
    c = imapclient.IMAPClient("127.0.0.1", port=ctx.port("imap"), ssl=False, timeout=30)
    c.starttls(tls)
    c.login(user, PASSWORD)
    return c


def learned(ctx: app.Context, cls: str, result: str) -> float:
    value = ctx.metrics.registry.get_sample_value("mailhaven_spam_learned_total", {"class": cls, "result": result})
    return value or 0.0


def controller_stat(rspamd: Rspamd) -> dict[str, Any]:
    req = urllib.request.Request(rspamd.controller_url + "/stat", headers={"Password": CONTROLLER_PASSWORD})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - our loopback rspamd
        data: dict[str, Any] = json.loads(r.read())
    return data


def mx_send(port: int, msg: bytes, rcpt: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mta.sender.test", timeout=30) as c:
        c.ehlo()
        c.mail("news@sender.test")
        c.rcpt(rcpt)
        code, text = c.data(msg)
        return code, text.decode()


def verdicts(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(r.mh_fields) for r in caplog.records if r.getMessage() == "spam verdict"]


async def idle(ctx: app.Context) -> None:
    assert ctx.learner is not None
    assert await ctx.learner.wait_idle(60), f"{ctx.learner.pending} messages still waiting to be learned"


# --- the acceptance test ----------------------------------------------------------------------------------


async def test_ten_spam_and_ten_ham_moved_by_imap_teach_bayes_for_that_user_only(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, client_ssl_context: ssl.SSLContext,
        rspamd_bayes: Rspamd, caplog: pytest.LogCaptureFixture) -> None:
    carol, dave = "carol@example.test", "dave@example.test"
    caplog.set_level(logging.INFO, logger="mailhaven")
    async with server(tmp_path, tls_files, dns_nameserver, [carol, dave], **spam_cfg(rspamd_bayes)) as ctx:
        t0 = time.monotonic()

        def train() -> None:
            with imap(ctx, carol, client_ssl_context) as c:
                for i in range(10):
                    c.append("INBOX", message(SPAM_WORDS, i, carol))
                    c.append("Junk", message(HAM_WORDS, 100 + i, carol))
                c.select_folder("INBOX")
                c.move(c.search("ALL"), "Junk")  # the user says: spam

        await asyncio.to_thread(train)
        await idle(ctx)
        assert learned(ctx, "spam", "learned") == 10

        def untrain() -> None:
            with imap(ctx, carol, client_ssl_context) as c:
                c.select_folder("Junk")
                ham = [uid for uid, data in c.fetch(c.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]).items()
                       if b"learn-10" in data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"]]
                assert len(ham) == 10
                c.move(ham, "INBOX")  # the user says: not spam

        await asyncio.to_thread(untrain)
        await idle(ctx)
        # rspamd learns each ham message, or answers 204 once its Bayes already files it as ham.
        assert learned(ctx, "ham", "learned") + learned(ctx, "ham", "skipped") == 10
        assert learned(ctx, "ham", "learned") >= 5
        assert [r for r in caplog.records if r.getMessage().startswith("spam learn") and r.levelno >= logging.WARNING] == []

        caplog.clear()
        code, _ = await asyncio.to_thread(mx_send, ctx.port("mx"), message(SPAM_WORDS, 500, carol), carol)
        assert code == 250
        code, _ = await asyncio.to_thread(mx_send, ctx.port("mx"), message(SPAM_WORDS, 500, dave), dave)
        assert code == 250
        [for_carol, for_dave] = verdicts(caplog)
        assert "BAYES_SPAM" in for_carol["symbols"].split(","), for_carol
        # Per-user statistics: dave taught nothing, so his Bayes says nothing.
        assert "BAYES_SPAM" not in for_dave["symbols"].split(","), for_dave
        assert time.monotonic() - t0 < 30


# --- what teaches what ----------------------------------------------------------------------------------


async def test_copy_into_junk_and_junk_keyword_teach_spam_notjunk_ham_trash_and_other_moves_nothing(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, client_ssl_context: ssl.SSLContext,
        rspamd_bayes: Rspamd) -> None:
    erin = "erin@example.test"
    async with server(tmp_path, tls_files, dns_nameserver, [erin], **spam_cfg(rspamd_bayes)) as ctx:

        def total(cls: str) -> float:
            return sum(learned(ctx, cls, r) for r in ("learned", "already", "skipped", "refused", "failed"))

        async def step(action: Callable[[imapclient.IMAPClient], object], spam: float, ham: float) -> None:
            before = total("spam"), total("ham")
            await asyncio.to_thread(lambda: action(client))
            await idle(ctx)
            assert (total("spam") - before[0], total("ham") - before[1]) == (spam, ham)

        client = await asyncio.to_thread(imap, ctx, erin, client_ssl_context)
        try:
            for i in range(4):
                await asyncio.to_thread(client.append, "INBOX", message(SPAM_WORDS, 200 + i, erin))
            await asyncio.to_thread(client.select_folder, "INBOX")
            uids = await asyncio.to_thread(client.search, "ALL")
            await step(lambda c: c.copy(uids[:1], "Junk"), spam=1, ham=0)  # COPY into Junk
            # The same message marked $Junk in INBOX too (Thunderbird does both): rspamd answers 208.
            await step(lambda c: c.add_flags(uids[:1], ["$Junk"]), spam=1, ham=0)
            assert learned(ctx, "spam", "already") == 1
            await step(lambda c: c.move(uids[1:2], "Archive"), spam=0, ham=0)  # between two other folders
            await step(lambda c: c.add_flags(uids[2:3], ["$Junk"]), spam=1, ham=0)
            await step(lambda c: c.add_flags(uids[2:3], ["$Junk"]), spam=0, ham=0)  # not newly set
            await step(lambda c: c.add_flags(uids[3:4], ["$NotJunk"]), spam=0, ham=1)
            await step(lambda c: c.add_flags(uids[3:4], [b"\\Seen"]), spam=0, ham=0)
            await asyncio.to_thread(client.select_folder, "Junk")
            junk = await asyncio.to_thread(client.search, "ALL")
            await step(lambda c: c.move(junk, "Trash"), spam=0, ham=0)  # Junk -> Trash: no verdict
            await asyncio.to_thread(client.create_folder, "Spam")
            await asyncio.to_thread(client.select_folder, "INBOX")
            await step(lambda c: c.copy(uids[3:4], "Spam"), spam=0, ham=0)  # not Junk: just a folder name
        finally:
            await asyncio.to_thread(client.logout)


async def test_pop3_retr_and_dele_teach_nothing(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str, client_ssl_context: ssl.SSLContext,
        rspamd_bayes: Rspamd) -> None:
    frank = "frank@example.test"
    async with server(tmp_path, tls_files, dns_nameserver, [frank], **spam_cfg(rspamd_bayes)) as ctx:
        assert ctx.store is not None
        for i in range(3):
            await ctx.store.deliver([(frank, "INBOX")], message(SPAM_WORDS, 300 + i, frank))
        before = controller_stat(rspamd_bayes)["learned"]

        def pop() -> None:
            p = poplib.POP3("127.0.0.1", ctx.port("pop3"), timeout=30)
            p.stls(client_ssl_context)
            p.user(frank)
            p.pass_(PASSWORD)
            for n in (1, 2, 3):
                p.retr(n)
                p.dele(n)
            p.quit()

        await asyncio.to_thread(pop)
        assert ctx.learner is not None and ctx.learner.pending == 0
        await asyncio.sleep(0.5)
        assert controller_stat(rspamd_bayes)["learned"] == before
        assert ctx.metrics.registry.get_sample_value("mailhaven_spam_learned_total",
                                                     {"class": "spam", "result": "learned"}) is None


# --- the user never waits; refusals, failures and a full queue are counted and logged ---------------------


async def test_a_hung_controller_never_delays_the_move(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str,
        client_ssl_context: ssl.SSLContext) -> None:
    conns: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        await asyncio.sleep(3600)

    hung = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    gina = "gina@example.test"
    try:
        async with server(tmp_path, tls_files, dns_nameserver, [gina], rspamd_controller_url=f"http://127.0.0.1:{port}",
                          rspamd_timeout=20) as ctx:

            def move() -> float:
                with imap(ctx, gina, client_ssl_context) as c:
                    for i in range(5):
                        c.append("INBOX", message(SPAM_WORDS, 400 + i, gina))
                    c.select_folder("INBOX")
                    t = time.monotonic()
                    c.move(c.search("ALL"), "Junk")
                    c.noop()
                    return time.monotonic() - t

            assert await asyncio.to_thread(move) < 2.0
            assert ctx.learner is not None and ctx.learner.pending == 5
            for _ in range(100):
                if len(conns) == 2:  # spam.learn_concurrency (2) posts waiting on the controller
                    break
                await asyncio.sleep(0.05)
            assert len(conns) == 2
    finally:
        hung.close()
        for w in conns:
            w.close()


async def _mailbox_with(tmp_path: Path, n: int) -> tuple[Store, Any]:
    store = Store(tmp_path / "mail", hostname="mail.example.test", fsync=False)
    await store.start()
    box = await store.account("hank@example.test").mailbox("Junk")
    for i in range(n):
        await box.append(message(SPAM_WORDS, 600 + i, "hank@example.test"))
    return store, box


async def test_a_wrong_password_is_a_refusal_logged_once_and_not_retried(
        tmp_path: Path, rspamd_bayes: Rspamd, caplog: pytest.LogCaptureFixture) -> None:
    counts: list[tuple[str, str]] = []
    store, box = await _mailbox_with(tmp_path, 1)
    learner = Learner(rspamd_bayes.controller_url, password="wrong", timeout=10, max_pending=10, concurrency=1,
                      max_size=1 << 20, count=lambda c, r: counts.append((c, r)), retry_delays=(0.05, 0.05))
    caplog.set_level(logging.INFO, logger="mailhaven")
    try:
        assert learner.submit("hank@example.test", "spam", box, [1]) == 1
        assert await learner.wait_idle(30)
    finally:
        await learner.close()
        await store.close()
    assert counts == [("spam", "refused")]
    [line] = [dict(r.mh_fields) for r in caplog.records if r.getMessage() == "spam learn refused"]
    assert line["status"] == 401 and line["learn_user"] == "hank@example.test" and line["learn"] == "spam"


async def test_an_unreachable_controller_is_retried_then_failed_and_a_full_queue_drops(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(1)
        writer.close()

    broken = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    port = broken.sockets[0].getsockname()[1]
    counts: list[tuple[str, str]] = []
    store, box = await _mailbox_with(tmp_path, 3)
    learner = Learner(f"http://127.0.0.1:{port}", password="", timeout=5, max_pending=2, concurrency=1,
                      max_size=1 << 20, count=lambda c, r: counts.append((c, r)), retry_delays=(0.05, 0.1))
    caplog.set_level(logging.INFO, logger="mailhaven")
    try:
        assert learner.submit("hank@example.test", "spam", box, [1, 2, 3]) == 2  # room for two
        assert await learner.wait_idle(30)
        assert learner.submit("hank@example.test", "ham", box, [99]) == 1  # expunged meanwhile: gone
        assert await learner.wait_idle(30)
    finally:
        await learner.close()
        broken.close()
        await store.close()
    assert sorted(counts) == [("ham", "gone"), ("spam", "dropped"), ("spam", "failed"), ("spam", "failed")]
    assert len(attempts) == 2 * 3  # each message tried 1 + len(retry_delays) times
    lines = {r.getMessage(): dict(r.mh_fields) for r in caplog.records if r.getMessage().startswith("spam learn")}
    assert lines["spam learn dropped"]["messages"] == 1
    assert lines["spam learn failed"]["attempts"] == 3
