"""The queue end to end: cleanup.enqueue -> spool -> QueueManager -> remote peers / the store, with
the real test DNS server and scripted SMTP peers on 127.0.0.x (tests/smtp_peer.py)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailhaven import app, cleanup
from mailhaven.message.headers import field_values
from mailhaven.metrics import Metrics
from mailhaven.queue.manager import QueueManager
from tests.dnsserver import DnsServer
from tests.smtp_peer import SmtpPeer, shared_port, until

HOSTS = ("127.0.0.2", "127.0.0.3")
ALICE = "alice@example.test"
MSG = b"From: Alice <alice@example.test>\r\nTo: bob@b.test\r\nSubject: hello\r\n\r\nHi Bob.\r\n"


@dataclass
class Env:
    ctx: Any
    manager: QueueManager
    task: asyncio.Task[None]

    @property
    def spool_dir(self) -> Path:
        return Path(self.ctx.config.queue_root)

    async def inbox(self, user: str = ALICE) -> list[bytes]:
        mb = await self.ctx.store.account(user).mailbox("INBOX")
        snap = await mb.snapshot()
        return [await mb.read(m.uid) for m in snap.messages]

    async def wait_inbox(self, n: int, user: str = ALICE, seconds: float = 10) -> list[bytes]:
        async def enough() -> list[bytes] | None:
            got = await self.inbox(user)
            return got if len(got) >= n else None

        result: list[bytes] = await until(enough, seconds)
        return result

    async def wait_empty(self, seconds: float = 10) -> None:
        await until(lambda: not self.manager.entries, seconds)


@pytest.fixture
def port() -> int:
    return shared_port(*HOSTS)


@pytest.fixture
def queue_config(make_config: Callable[..., Any], dns_nameserver: str, port: int) -> Callable[..., Any]:
    def build(**queue: Any) -> Any:
        q = {"remote_port": port, "retry_schedule": ["1s"], "jitter": 0, "connect_timeout": 2,
             "command_timeout": 5, **queue}
        return make_config(hostname="mail.example.test", dns={"nameservers": [dns_nameserver], "timeout": 1},
                           queue=q)
    return build


@pytest.fixture
async def env_factory() -> AsyncIterator[Callable[..., Any]]:
    envs: list[Env] = []

    async def start(cfg: Any) -> Env:
        ctx = app.build_context(cfg)
        await ctx.store.start()
        mgr = QueueManager(ctx)
        ctx.queue = mgr
        task = asyncio.create_task(mgr.run())
        await mgr.loaded.wait()
        env = Env(ctx, mgr, task)
        envs.append(env)
        return env

    yield start
    for env in envs:
        env.manager.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(env.task, 5)
        await env.ctx.store.close()


@pytest.fixture
async def peer(port: int, dns_server: DnsServer) -> AsyncIterator[SmtpPeer]:
    dns_server.add("b.test", "MX", "10 mx.b.test.")
    dns_server.add("mx.b.test", "A", "127.0.0.2")
    p = await SmtpPeer("127.0.0.2", port).start()
    yield p
    await p.stop()


def _attempted(path: Path) -> dict[str, Any] | None:
    """The envelope once its first recipient has an attempt recorded."""
    try:
        env: dict[str, Any] = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return env if env["recipients"][0]["attempts"] >= 1 else None


def _report(data: bytes) -> tuple[email.message.Message, list[dict[str, str]]]:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    status = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"][0]
    groups = [dict(g.items()) for g in status.get_payload()]  # type: ignore[union-attr]
    return msg, groups[1:]


async def test_enqueued_message_is_delivered_and_leaves_the_queue(queue_config: Any, env_factory: Any,
                                                                   peer: SmtpPeer) -> None:
    env = await env_factory(queue_config())
    qid = await cleanup.enqueue(env.ctx, ALICE, ["bob@b.test"], MSG)
    assert (env.spool_dir / f"{qid}.msg").exists() or peer.messages  # durable before returning
    [got] = await peer.wait_messages(1)
    assert got.rcpt_tos == ["bob@b.test"] and got.mail_from == ALICE
    # cleanup added the fields a message must carry (RFC 5322 §3.6)
    assert b"\r\nDate: " in b"\r\n" + got.data and b"Message-ID: <" in got.data
    assert b"@mail.example.test>" in got.data
    await env.wait_empty()
    assert sorted(p.name for p in env.spool_dir.iterdir() if not p.name.startswith(".")) == []


async def test_local_recipients_go_straight_to_the_store(queue_config: Any, env_factory: Any) -> None:
    env = await env_factory(queue_config())
    await cleanup.enqueue(env.ctx, ALICE, ["bob@example.test"], MSG)
    [stored] = await env.inbox("bob@example.test")  # no waiting: delivered before enqueue returned
    assert b"Subject: hello" in stored
    assert env.manager.entries == {}


async def test_unknown_local_recipient_is_refused_before_anything_is_stored(queue_config: Any,
                                                                          env_factory: Any) -> None:
    from mailhaven.errors import UnknownUser

    env = await env_factory(queue_config())
    with pytest.raises(UnknownUser):
        await cleanup.enqueue(env.ctx, ALICE, ["bob@example.test", "nobody@example.test"], MSG)
    assert await env.inbox("bob@example.test") == []


async def test_temporary_failure_is_retried_until_delivered(queue_config: Any, env_factory: Any,
                                                            peer: SmtpPeer) -> None:
    peer.script_rcpt("bob@b.test", "451 4.7.1 greylisted, come back later")
    env = await env_factory(queue_config())
    qid = await cleanup.enqueue(env.ctx, ALICE, ["bob@b.test"], MSG)
    first = await until(lambda: _attempted(env.spool_dir / f"{qid}.env"), 5)
    assert first["recipients"][0]["state"] == "pending"
    assert first["recipients"][0]["last"]["code"] == 451  # recorded durably
    started = time.monotonic()
    await peer.wait_messages(1)
    assert time.monotonic() - started >= 0.5  # after the backoff, not at once
    await env.wait_empty()
    assert await env.inbox() == []  # no bounce, no delay warning


async def test_permanent_failure_bounces_to_the_local_sender(queue_config: Any, env_factory: Any,
                                                             peer: SmtpPeer) -> None:
    peer.script_rcpt("bob@b.test", "550 5.1.1 no such user here")
    env = await env_factory(queue_config())
    await cleanup.enqueue(env.ctx, ALICE, ["bob@b.test"], MSG)
    [bounce] = await env.wait_inbox(1)
    msg, [rcpt] = _report(bounce)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.test>"
    assert (rcpt["Final-Recipient"], rcpt["Action"], rcpt["Status"]) == ("rfc822; bob@b.test", "failed", "5.1.1")
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user here"
    assert rcpt["Remote-MTA"] == "dns; mx.b.test"
    assert b"Subject: hello" in bounce  # original headers returned
    await env.wait_empty()
    assert peer.messages == []


async def test_only_the_refused_recipient_bounces(queue_config: Any, env_factory: Any, peer: SmtpPeer) -> None:
    peer.script_rcpt("gone@b.test", "550 5.1.1 gone")
    env = await env_factory(queue_config())
    await cleanup.enqueue(env.ctx, ALICE, ["bob@b.test", "gone@b.test"], MSG)
    [bounce] = await env.wait_inbox(1)
    _, rcpts = _report(bounce)
    assert [r["Final-Recipient"] for r in rcpts] == ["rfc822; gone@b.test"]
    assert peer.recipients_received() == ["bob@b.test"]
    await env.wait_empty()
    assert peer.recipients_received() == ["bob@b.test"]  # delivered once, never again


async def test_null_mx_bounces_at_once(queue_config: Any, env_factory: Any, dns_server: DnsServer) -> None:
    dns_server.add("nomail.test", "MX", "0 .")
    env = await env_factory(queue_config())
    await cleanup.enqueue(env.ctx, ALICE, ["x@nomail.test"], MSG)
    [bounce] = await env.wait_inbox(1, seconds=3)
    _, [rcpt] = _report(bounce)
    assert rcpt["Status"] == "5.1.10" and rcpt["Diagnostic-Code"].startswith("smtp; 556 5.1.10")


async def test_a_bounce_is_never_bounced(queue_config: Any, env_factory: Any, dns_server: DnsServer) -> None:
    dns_server.add("nomail.test", "MX", "0 .")
    env = await env_factory(queue_config())
    await cleanup.enqueue(env.ctx, "", ["x@nomail.test"], MSG, source="dsn")
    await env.wait_empty(seconds=3)
    await asyncio.sleep(0.2)
    assert env.manager.entries == {}
    assert await env.inbox() == []


async def test_entry_past_its_lifetime_bounces_after_a_failed_attempt(
        queue_config: Any, env_factory: Any, dns_server: DnsServer, port: int) -> None:
    dns_server.add("b.test", "MX", "10 mx.b.test.")
    dns_server.add("mx.b.test", "A", "127.0.0.2")  # nobody listens: connection refused
    env = await env_factory(queue_config(lifetime="1h"))
    # An entry queued two hours ago (as after a long outage, or loaded at start).
    entry = await env.manager.spool.add(ALICE, ["bob@b.test"], cleanup.to_crlf(MSG),
                                        created=time.time() - 7200, next_attempt=time.time())
    env.manager.entries[entry.id] = entry
    env.manager._schedule(entry)
    env.manager.wake()
    [bounce] = await env.wait_inbox(1)
    _, [rcpt] = _report(bounce)
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.4.7"  # RFC 3463: delivery time expired
    assert "gave up" in rcpt["Diagnostic-Code"] and "127.0.0.2" in rcpt["Diagnostic-Code"]
    await env.wait_empty()


async def test_delay_warning_is_sent_once_and_the_message_still_delivered(
        queue_config: Any, env_factory: Any, peer: SmtpPeer) -> None:
    peer.script_rcpt("bob@b.test", *["451 4.3.0 later"] * 4)
    env = await env_factory(queue_config(retry_schedule=["0.3s"], delay_warning="0.5s"))
    await cleanup.enqueue(env.ctx, ALICE, ["bob@b.test"], MSG)
    await peer.wait_messages(1, seconds=15)
    await env.wait_empty()
    [warning] = await env.inbox()
    msg, [rcpt] = _report(warning)
    assert msg["Subject"].startswith("Delayed Mail")
    assert rcpt["Action"] == "delayed" and rcpt["Status"] == "4.3.0" and "Will-Retry-Until" in rcpt


async def test_bounce_and_delay_warning_delivered_locally_have_one_return_path_null(
        queue_config: Any, env_factory: Any, peer: SmtpPeer) -> None:
    """RFC 5321 §4.4 and §4.5.5: a DSN is sent from the null reverse-path, so its local copy starts
    with exactly one `Return-Path: <>`."""
    peer.script_rcpt("bob@b.test", *["451 4.3.0 later"] * 3, "550 5.1.1 gone after all")
    env = await env_factory(queue_config(retry_schedule=["0.3s"], delay_warning="0.5s"))
    await cleanup.enqueue(env.ctx, ALICE, ["bob@b.test"], b"Return-Path: <forged@x.example>\r\n" + MSG)
    warning, bounce = await env.wait_inbox(2, seconds=15)
    if _report(warning)[1][0]["Action"] != "delayed":
        warning, bounce = bounce, warning
    assert [_report(m)[1][0]["Action"] for m in (warning, bounce)] == ["delayed", "failed"]
    for notice in (warning, bounce):
        assert notice.startswith(f"Return-Path: <>\r\nDelivered-To: {ALICE}\r\n".encode()), notice[:200]
        assert field_values(notice, "Return-Path") == ["<>"]
    await env.wait_empty()


async def test_queued_entry_for_a_local_recipient_is_delivered_without_forged_trust_fields(
        queue_config: Any, env_factory: Any) -> None:
    """The queue's own way into a mailbox (an entry for a domain that is local when it is delivered)
    goes through the same local delivery: forged fields out, Return-Path of the entry's sender."""
    env = await env_factory(queue_config())
    forged = (b"Return-Path: <forged@x.example>\r\n"
              b"Authentication-Results: mail.example.test; dkim=pass header.d=bank.test\r\n"
              b"X-Spam-Status: No\r\n\tscore=-10\r\n")
    entry = await env.manager.spool.add(ALICE, ["bob@example.test"], cleanup.to_crlf(forged + MSG),
                                        next_attempt=time.time())
    env.manager.entries[entry.id] = entry
    env.manager._schedule(entry)
    env.manager.wake()
    [stored] = await env.wait_inbox(1, user="bob@example.test")
    assert stored == f"Return-Path: <{ALICE}>\r\nDelivered-To: bob@example.test\r\n".encode() + MSG
    await env.wait_empty()


async def test_one_transaction_per_domain_and_separate_ones_for_other_domains(
        queue_config: Any, env_factory: Any, dns_server: DnsServer, port: int, peer: SmtpPeer) -> None:
    dns_server.add("c.test", "MX", "10 mx.c.test.")
    dns_server.add("mx.c.test", "A", "127.0.0.3")
    other = await SmtpPeer("127.0.0.3", port).start()
    try:
        env = await env_factory(queue_config())
        await cleanup.enqueue(env.ctx, ALICE, ["bob@b.test", "carol@c.test", "dave@b.test"], MSG)
        await peer.wait_messages(1)
        await other.wait_messages(1)
        await env.wait_empty()
        assert [m.rcpt_tos for m in peer.messages] == [["bob@b.test", "dave@b.test"]]
        assert [m.rcpt_tos for m in other.messages] == [["carol@c.test"]]
    finally:
        await other.stop()


async def test_spool_is_loaded_at_start_and_delivered(queue_config: Any, env_factory: Any,
                                                      peer: SmtpPeer) -> None:
    from mailhaven.queue.spool import Spool

    cfg = queue_config()
    spool = Spool(cfg.queue_root)
    await spool.load()
    e = await spool.add(ALICE, ["bob@b.test"], cleanup.to_crlf(MSG))
    (cfg.queue_root / "0123ABCD0123456789.msg").write_bytes(b"orphan: never acknowledged")
    env = await env_factory(cfg)
    assert e.id in env.manager.entries
    await peer.wait_messages(1)
    await env.wait_empty()
    assert not (cfg.queue_root / "0123ABCD0123456789.msg").exists()


async def test_per_destination_limit_caps_parallel_transactions(
        queue_config: Any, env_factory: Any, peer: SmtpPeer) -> None:
    env = await env_factory(queue_config(max_per_destination=2))
    peer.hold_data()
    for i in range(5):
        await cleanup.enqueue(env.ctx, ALICE, [f"u{i}@b.test"], MSG)
    await until(lambda: sum(1 for e in peer.events if e[0] == "DATA") >= 2, 5)
    await asyncio.sleep(0.3)
    assert sum(1 for e in peer.events if e[0] == "DATA") == 2
    assert env.manager.active == 2
    peer.release_data()
    await peer.wait_messages(5)
    await env.wait_empty()


# --- null sender, a peer that comes up late, metrics, the per-attempt log line ---------------------------

def _attempt_lines(caplog: pytest.LogCaptureFixture, qid: str) -> list[str]:
    """The queue's per-attempt log lines about entry `qid` (one per recipient per attempt)."""
    return [r.getMessage() for r in caplog.records
            if r.name == "mailhaven.queue" and r.getMessage().startswith(f"queue: {qid} to=<")]


async def test_null_sender_delayed_past_the_warning_delay_gets_no_delay_warning(
        queue_config: Any, env_factory: Any, peer: SmtpPeer, caplog: pytest.LogCaptureFixture) -> None:
    # RFC 5321 §6.1: a bounce (null reverse-path) is never answered by a DSN, a delay warning included.
    caplog.set_level(logging.INFO, logger="mailhaven.queue")
    peer.script_rcpt("bob@b.test", *["451 4.3.0 later"] * 4)
    env = await env_factory(queue_config(retry_schedule=["0.3s"], delay_warning="0.5s"))
    submitted: list[tuple[str, list[str]]] = []
    real_submit = env.manager.submit

    async def spy(sender: str, recipients: list[str], message: bytes, **kw: Any) -> str:
        submitted.append((sender, list(recipients)))
        return await real_submit(sender, recipients, message, **kw)

    env.manager.submit = spy  # type: ignore[method-assign]
    started = time.monotonic()
    qid = await cleanup.enqueue(env.ctx, "", ["bob@b.test"], MSG, source="dsn")
    [got] = await peer.wait_messages(1, seconds=15)
    assert time.monotonic() - started >= 0.5  # it was still queued once the warning was due
    assert got.mail_from == "<>"  # aiosmtpd records the null reverse-path as written
    await env.wait_empty()
    await asyncio.sleep(0.3)
    assert submitted == [("", ["bob@b.test"])]  # nothing else was queued: no warning to anyone
    assert env.manager.entries == {} and await env.inbox() == []
    assert not [r for r in caplog.records if "notice to" in r.getMessage()]
    assert len(_attempt_lines(caplog, qid)) == 5  # 4 deferrals, then the delivery


async def test_refused_connection_is_retried_until_the_peer_is_up(
        queue_config: Any, env_factory: Any, dns_server: DnsServer, port: int,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven.queue")
    dns_server.add("b.test", "MX", "10 mx.b.test.")
    dns_server.add("mx.b.test", "A", "127.0.0.2")  # nobody listens yet: connection refused
    env = await env_factory(queue_config(retry_schedule=["0.5s"]))
    qid = await cleanup.enqueue(env.ctx, ALICE, ["bob@b.test"], MSG)
    first = await until(lambda: _attempted(env.spool_dir / f"{qid}.env"), 5)
    [rcpt] = first["recipients"]
    assert rcpt["state"] == "pending" and rcpt["last"]["temporary"] is True
    assert (rcpt["last"]["code"], rcpt["last"]["enhanced"]) == (451, "4.4.1")
    assert rcpt["last"]["text"].startswith("connect to mx.b.test[127.0.0.2]")
    late = await SmtpPeer("127.0.0.2", port).start()  # the destination comes back
    try:
        [got] = await late.wait_messages(1, seconds=10)  # no operator action: the queue retried
        assert got.rcpt_tos == ["bob@b.test"] and b"Subject: hello" in got.data
        await env.wait_empty()
        assert len(late.messages) == 1 and await env.inbox() == []  # once, and no bounce or warning
    finally:
        await late.stop()
    lines = _attempt_lines(caplog, qid)
    assert len(lines) >= 2
    assert all(" deferred via mx.b.test: 451 4.4.1 connect to mx.b.test[127.0.0.2]" in ln for ln in lines[:-1])
    assert lines[-1].startswith(f"queue: {qid} to=<bob@b.test> delivered via mx.b.test: 250 ")


async def test_one_log_line_per_recipient_and_attempt_with_result_and_remote_reply(
        queue_config: Any, env_factory: Any, peer: SmtpPeer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven.queue")
    peer.script_rcpt("bob@b.test", "451 4.7.1 greylisted, come back later")
    peer.script_rcpt("gone@b.test", "550 5.1.1 no such user here")
    env = await env_factory(queue_config(retry_schedule=["0.3s"]))
    qid = await cleanup.enqueue(env.ctx, ALICE, ["bob@b.test", "gone@b.test"], MSG)
    await peer.wait_messages(1)
    await env.wait_empty()
    lines = _attempt_lines(caplog, qid)
    # Attempt 1: both recipients in one transaction; attempt 2: only the one still pending.
    assert sorted(lines[:2]) == sorted([
        f"queue: {qid} to=<bob@b.test> deferred via mx.b.test: 451 4.7.1 greylisted, come back later "
        "[route MX, at RCPT TO]",
        f"queue: {qid} to=<gone@b.test> bounced via mx.b.test: 550 5.1.1 no such user here [route MX, at RCPT TO]"])
    assert lines[2:] == [f"queue: {qid} to=<bob@b.test> delivered via mx.b.test: 250 2.0.0 queued [route MX]"]
    assert not any("Hi Bob." in r.getMessage() for r in caplog.records)  # never the message body


def _metric(m: Metrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def _delivery_results(m: Metrics) -> dict[tuple[str, str], float]:
    return {(s.labels["kind"], s.labels["result"]): s.value
            for f in text_string_to_metric_families(m.render().decode()) for s in f.samples
            if s.name == "mailhaven_delivery_results_total"}


async def test_metrics_follow_deliveries_deferrals_bounces_and_the_queue(
        queue_config: Any, env_factory: Any, peer: SmtpPeer) -> None:
    env = await env_factory(queue_config(retry_schedule=["1h"]))  # a deferred entry stays put
    m = Metrics(process=False)
    env.ctx.metrics = m
    m.set_queue_probe(env.manager.stats)  # as app.run wires it
    assert (_metric(m, "mailhaven_queue_messages"), _metric(m, "mailhaven_queue_oldest_age_seconds")) == (0, 0)

    # A delivery.
    await cleanup.enqueue(env.ctx, ALICE, ["bob@b.test"], MSG)
    await peer.wait_messages(1)
    await env.wait_empty()
    assert _metric(m, "mailhaven_messages_sent_total") == 1
    assert _delivery_results(m) == {("remote", "delivered"): 1}

    # A deferral: the entry stays queued, and the gauges show it and its growing age.
    peer.script_rcpt("later@b.test", "451 4.3.0 try later")
    deferred = await cleanup.enqueue(env.ctx, ALICE, ["later@b.test"], MSG)
    await until(lambda: _attempted(env.spool_dir / f"{deferred}.env"), 5)
    assert _delivery_results(m) == {("remote", "delivered"): 1, ("remote", "deferred"): 1}
    assert _metric(m, "mailhaven_queue_messages") == 1
    age = _metric(m, "mailhaven_queue_oldest_age_seconds")
    assert age is not None and 0 < age < 30
    await asyncio.sleep(0.3)
    later_age = _metric(m, "mailhaven_queue_oldest_age_seconds")
    assert later_age is not None and later_age >= age + 0.25
    assert _metric(m, "mailhaven_messages_sent_total") == 1  # deferred is not sent

    # A bounce (the DSN goes straight into the local sender's INBOX).
    peer.script_rcpt("gone@b.test", "550 5.1.1 no such user")
    await cleanup.enqueue(env.ctx, ALICE, ["gone@b.test"], MSG)
    await env.wait_inbox(1)
    await until(lambda: len(env.manager.entries) == 1, 5)
    assert _metric(m, "mailhaven_messages_bounced_total") == 1
    assert _metric(m, "mailhaven_messages_sent_total") == 1  # bounced is not sent
    assert _delivery_results(m) == {("remote", "delivered"): 1, ("remote", "deferred"): 1,
                                    ("remote", "bounced"): 1}
    assert _metric(m, "mailhaven_queue_messages") == 1  # only the deferred entry is left

    # The deferred entry is retried now and delivered: the queue is empty again.
    assert await env.manager.retry(deferred)
    await peer.wait_messages(2)
    await env.wait_empty()
    assert _metric(m, "mailhaven_messages_sent_total") == 2
    assert _delivery_results(m) == {("remote", "delivered"): 2, ("remote", "deferred"): 1,
                                    ("remote", "bounced"): 1}
    assert (_metric(m, "mailhaven_queue_messages"), _metric(m, "mailhaven_queue_oldest_age_seconds")) == (0, 0)
    assert _metric(m, "mailhaven_messages_bounced_total") == 1
