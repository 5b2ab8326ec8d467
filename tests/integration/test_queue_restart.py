"""Restart safety: the queue process is killed with SIGKILL while entries are queued and in flight;
after a restart every entry is delivered, and a recipient recorded as delivered is not sent again.

The queue runs in a real subprocess: this file doubles as its program
(`python -m tests.integration.test_queue_restart CONFIG.json`), which builds the context and a
QueueManager from a config table and runs it until killed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import DnsServer
from tests.smtp_peer import SmtpPeer, shared_port, until

ALICE = "alice@example.test"
MSG = b"From: alice@example.test\r\nSubject: restart\r\nMessage-ID: <r@example.test>\r\n\r\nbody\r\n"
ROOT = Path(__file__).resolve().parents[2]


async def _child(cfg: Any) -> None:
    """The queue process: app context + QueueManager, nothing else."""
    from mailhaven import app
    from mailhaven.queue.manager import QueueManager

    ctx = app.build_context(cfg)
    await ctx.store.start()
    manager = QueueManager(ctx)
    ctx.queue = manager
    await manager.run()


def _envelopes(queue_root: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in queue_root.glob("*.env"):
        try:
            out[p.stem] = json.loads(p.read_bytes())
        except (OSError, ValueError):
            pass
    return out


@pytest.fixture
async def peers(dns_server: DnsServer) -> AsyncIterator[tuple[SmtpPeer, SmtpPeer]]:
    port = shared_port("127.0.0.2", "127.0.0.3")
    for domain, ip in (("a.test", "127.0.0.2"), ("b.test", "127.0.0.3")):
        dns_server.add(domain, "MX", f"10 mx.{domain}.")
        dns_server.add(f"mx.{domain}", "A", ip)
    a, b = SmtpPeer("127.0.0.2", port), SmtpPeer("127.0.0.3", port)
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


async def _start_child(config_path: Path, log_path: Path) -> asyncio.subprocess.Process:
    logf = log_path.open("ab")  # noqa: ASYNC230 - a local file, opened once per child
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.test_queue_restart", str(config_path),
            cwd=ROOT, stdout=logf, stderr=logf)
    finally:
        logf.close()


async def test_sigkill_mid_delivery_loses_nothing_and_repeats_no_recorded_delivery(
        tmp_path: Path, dns_nameserver: str, users_file_path: Path, peers: tuple[SmtpPeer, SmtpPeer]) -> None:
    from mailhaven.config import from_dict
    from mailhaven.queue.spool import Spool

    peer_a, peer_b = peers
    data_dir = tmp_path / "data"
    table = {"hostname": "mail.example.test", "data_dir": str(data_dir), "users_file": str(users_file_path),
             "domains": {"example.test": {}},
             "dns": {"nameservers": [dns_nameserver], "timeout": 1},
             "queue": {"remote_port": peer_a.port, "retry_schedule": ["1s"], "jitter": 0,
                       "connect_timeout": 2, "command_timeout": 30}}
    config_path = tmp_path / "queue-config.json"
    config_path.write_text(json.dumps(table))
    cfg = from_dict(table, tmp_path)

    # Two queued entries: one for both domains, one for b.test only.
    spool = Spool(cfg.queue_root)
    await spool.load()
    both = await spool.add(ALICE, ["ann@a.test", "ben@b.test"], MSG)
    only_b = await spool.add(ALICE, ["bea@b.test"], MSG)

    peer_b.hold_data()  # b.test stalls after the message arrived, before answering
    child = await _start_child(config_path, tmp_path / "child1.log")
    try:
        # a.test is delivered and recorded; both b.test transactions are in flight.
        await until(lambda: _envelopes(cfg.queue_root).get(both.id, {}).get("recipients", [{}])[0]
                    .get("state") == "delivered", 15)
        await until(lambda: sum(1 for e in peer_b.events if e[0] == "DATA") == 2, 15)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert peer_a.recipients_received() == ["ann@a.test"]
    envs = _envelopes(cfg.queue_root)
    assert set(envs) == {both.id, only_b.id}
    assert [r["state"] for r in envs[both.id]["recipients"]] == ["delivered", "pending"]

    # The stalled sessions died with the process: the client never saw them accepted.
    peer_b.release_data()
    await asyncio.sleep(0.2)
    assert peer_b.messages == []

    child = await _start_child(config_path, tmp_path / "child2.log")
    try:
        await peer_b.wait_messages(2, 20)
        # A removal unlinks the .env, then the .msg (spool.py): wait for both, or the SIGKILL below
        # can land between the two (a .msg left so is deleted at the next load, by design).
        await until(lambda: not list(cfg.queue_root.glob("*.env")) and not list(cfg.queue_root.glob("*.msg")), 15)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert sorted(peer_b.recipients_received()) == ["bea@b.test", "ben@b.test"]
    assert peer_a.recipients_received() == ["ann@a.test"]  # not sent again after the restart
    assert not list(cfg.queue_root.glob("*.msg"))


def _main(config_path: str) -> None:
    import logging

    from mailhaven.config import from_dict

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    cfg = from_dict(json.loads(Path(config_path).read_text()), Path(config_path).parent)
    asyncio.run(_child(cfg))


if __name__ == "__main__":
    _main(sys.argv[1])
