"""The control socket (control.py) over a real Unix socket, driving a real QueueManager."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import stat
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mailhaven import app, cleanup
from mailhaven.control import ControlError, control_request, format_list, queue_command, serve_control
from mailhaven.queue.manager import QueueManager
from tests.dnsserver import DnsServer
from tests.smtp_peer import SmtpPeer, shared_port, until

MSG = b"From: alice@example.test\r\nSubject: queued\r\n\r\nbody\r\n"


@pytest.fixture
async def running(make_config: Callable[..., Any], dns_server: DnsServer,
                  dns_nameserver: str) -> AsyncIterator[tuple[Any, QueueManager, int]]:
    port = shared_port("127.0.0.2")
    dns_server.add("b.test", "MX", "10 mx.b.test.")
    dns_server.add("mx.b.test", "A", "127.0.0.2")  # nobody listens yet: entries stay queued
    cfg = make_config(dns={"nameservers": [dns_nameserver], "timeout": 1},
                      queue={"remote_port": port, "retry_schedule": ["1h"], "connect_timeout": 2})
    ctx = app.build_context(cfg)
    await ctx.store.start()
    manager = QueueManager(ctx)
    ctx.queue = manager
    task = asyncio.create_task(manager.run())
    server = await serve_control(ctx, manager)
    try:
        yield ctx, manager, port
    finally:
        server.close()
        manager.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)
        await ctx.store.close()


async def _ask(ctx: Any, command: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.to_thread(control_request, ctx.config.control_path, command)


async def _queued(ctx: Any, manager: QueueManager, rcpt: str = "bob@b.test") -> str:
    qid = await cleanup.enqueue(ctx, "alice@example.test", [rcpt], MSG)
    await until(lambda: manager.entries[qid].attempts >= 1 and not manager.entries[qid].busy, 5)
    return qid


async def test_control_socket_is_private_to_the_server_user(running: Any) -> None:
    ctx, _, _ = running
    mode = ctx.config.control_path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


async def test_list_and_show_describe_queued_entries(running: Any) -> None:
    ctx, manager, _ = running
    qid = await _queued(ctx, manager)
    reply = await _ask(ctx, {"cmd": "list"})
    assert reply["ok"] is True
    [entry] = reply["entries"]
    assert entry["id"] == qid and entry["sender"] == "alice@example.test" and entry["attempts"] == 1
    assert entry["recipients"][0]["state"] == "pending"
    assert "127.0.0.2" in entry["recipients"][0]["last"]
    text = format_list(reply["entries"])
    assert qid in text and "bob@b.test" in text
    shown = await _ask(ctx, {"cmd": "show", "id": qid})
    assert shown["ok"] and shown["entry"]["recipients"][0]["last"]["code"] == 451
    assert await _ask(ctx, {"cmd": "show", "id": "0" * 18}) == {"ok": False,
                                                                "error": "no such queue entry: " + "0" * 18}


async def test_retry_delivers_now_instead_of_in_an_hour(running: Any) -> None:
    ctx, manager, port = running
    qid = await _queued(ctx, manager)
    assert manager.entries[qid].next_attempt > manager.clock() + 3000
    peer = await SmtpPeer("127.0.0.2", port).start()
    try:
        assert await _ask(ctx, {"cmd": "retry", "id": qid}) == {"ok": True}
        await peer.wait_messages(1, 5)
        await until(lambda: qid not in manager.entries, 5)
    finally:
        await peer.stop()


async def test_flush_retries_every_entry(running: Any) -> None:
    ctx, manager, port = running
    ids = [await _queued(ctx, manager, f"u{i}@b.test") for i in range(3)]
    peer = await SmtpPeer("127.0.0.2", port).start()
    try:
        assert await _ask(ctx, {"cmd": "flush"}) == {"ok": True, "count": 3}
        await peer.wait_messages(3, 5)
        await until(lambda: not any(i in manager.entries for i in ids), 5)
    finally:
        await peer.stop()


async def test_delete_removes_the_entry_from_disk_without_a_bounce(running: Any) -> None:
    ctx, manager, _ = running
    qid = await _queued(ctx, manager)
    assert await _ask(ctx, {"cmd": "delete", "id": qid}) == {"ok": True}
    assert not list(ctx.config.queue_root.glob(f"{qid}.*"))
    assert (await _ask(ctx, {"cmd": "list"}))["entries"] == []
    assert (await _ask(ctx, {"cmd": "delete", "id": qid}))["ok"] is False


@pytest.mark.parametrize(("command", "error"), [
    ({"cmd": "explode"}, "unknown command 'explode'"),
    ({"cmd": "show"}, 'show needs an "id"'),
    ({"nocmd": 1}, 'expected a JSON object with "cmd"'),
    ({"cmd": "delete", "id": "../../etc/passwd"}, "no such queue entry: ../../etc/passwd"),
])
async def test_bad_commands_get_one_line_errors(running: Any, command: dict[str, Any], error: str) -> None:
    ctx, _, _ = running
    assert await _ask(ctx, command) == {"ok": False, "error": error}


async def test_garbage_and_oversized_requests_are_refused_and_the_server_keeps_serving(running: Any) -> None:
    ctx, _, _ = running

    def raw(data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(ctx.config.control_path))
            s.sendall(data)
            return s.recv(1000)

    assert b"not JSON" in await asyncio.to_thread(raw, b"hello\n")
    assert b"request too long" in await asyncio.to_thread(raw, b"x" * 100_000 + b"\n")
    assert (await _ask(ctx, {"cmd": "list"}))["ok"] is True


async def test_client_reports_a_server_that_is_not_running(tmp_path: Any) -> None:
    with pytest.raises(ControlError, match="not running"):
        control_request(tmp_path / "control.sock", {"cmd": "list"})


async def test_a_second_server_does_not_steal_a_live_socket(running: Any) -> None:
    ctx, manager, _ = running
    with pytest.raises(ControlError, match="another running server"):
        await serve_control(ctx, manager)


async def test_cli_queue_command_texts_and_exit_statuses(running: Any, tmp_path: Any) -> None:
    ctx, manager, _ = running
    path = ctx.config.control_path
    assert await asyncio.to_thread(queue_command, path, "list") == (0, "Mail queue is empty")
    qid = await _queued(ctx, manager)
    status, text = await asyncio.to_thread(queue_command, path, "list")
    assert status == 0 and text.startswith(qid) and text.endswith("-- 1 entry")
    status, text = await asyncio.to_thread(queue_command, path, "show", qid)
    assert status == 0 and "Sender:        <alice@example.test>" in text.splitlines()
    status, text = await asyncio.to_thread(lambda: queue_command(path, "show", qid, as_json=True))
    assert status == 0 and '"sender": "alice@example.test"' in text
    assert await asyncio.to_thread(queue_command, path, "show") == (2, "queue show needs a queue ID")
    assert (await asyncio.to_thread(queue_command, path, "retry", "ZZ"))[0] == 1
    assert await asyncio.to_thread(queue_command, path, "delete", qid) == (0, f"{qid}: deleted")
    assert await asyncio.to_thread(queue_command, path, "flush") == (0, "0 entries scheduled for delivery now")
    assert (await asyncio.to_thread(queue_command, path, "purge"))[0] == 2
    status, text = queue_command(tmp_path / "nothing.sock", "list")
    assert status == 1 and "not running" in text


def test_format_show_names_every_recipient_state_with_dates_and_ages() -> None:
    from mailhaven.control import format_show

    now = 1_800_000_000.0
    entry = {"id": "Q1", "sender": "", "created": now - 7500, "next_attempt": now + 600, "attempts": 2,
             "size": 20480, "busy": False, "source": "dsn",
             "recipients": [
                 {"address": "ok@b.test", "state": "delivered", "attempts": 1, "last_attempt": now - 7400,
                  "last": {"code": 250, "enhanced": "2.0.0", "text": "queued", "remote_mta": "mx.b.test"}},
                 {"address": "gone@b.test", "state": "failed", "attempts": 1, "last_attempt": now - 90000,
                  "notified": True, "last": {"code": 550, "enhanced": "5.1.1", "text": "no such user"}},
                 {"address": "new@c.test", "state": "pending", "attempts": 0, "last_attempt": None, "last": None}]}
    lines = format_show(entry, now).splitlines()
    assert "Sender:        <>  (null sender: a bounce or notice)" in lines
    assert "Size:          20480 bytes (20.0 KiB)" in lines
    assert "Arrived:       2027-01-15 05:55:00 UTC (2 h 5 min ago)" in lines
    assert "Next attempt:  2027-01-15 08:10:00 UTC (in 10 min)" in lines
    assert "Came from:     dsn" in lines
    assert lines[lines.index("  <ok@b.test>") + 1:lines.index("  <ok@b.test>") + 4] == [
        "    state:      delivered",
        "    attempts:   1, last 2027-01-15 05:56:40 UTC (2 h 3 min ago)",
        "    last reply: 250 2.0.0 queued  (from mx.b.test)"]
    assert "    state:      failed (no bounce: the message is itself a bounce)" in lines
    assert "    attempts:   1, last 2027-01-14 07:00:00 UTC (1 d 1 h ago)" in lines
    at = lines.index("  <new@c.test>")
    assert lines[at + 1:at + 4] == ["    state:      waiting for its first attempt", "    attempts:   0",
                                    "    last reply: (none yet)"]
    assert "Headers:" not in lines  # only when the server sent them
    busy = format_show({**entry, "busy": True, "sender": "a@example.test"}, now).splitlines()
    assert "Next attempt:  in delivery now" in busy and "    state:      failed, sender notified" in busy
    piped = {**entry, "recipients": [{"address": "tickets@a.test", "state": "pending", "attempts": 0,
                                      "program": "|/usr/local/bin/ticket --queue support",
                                      "program_rcpt": "tickets@a.test"}]}
    lines = format_show(piped, now).splitlines()
    assert lines[lines.index("  <tickets@a.test>") + 1] == "    program:    |/usr/local/bin/ticket --queue support"
