"""IDLE fan-out (issue 14 item 5): one delivery to an account with many IDLE sessions on its INBOX
reaches every session quickly because the sessions share the store reads it causes (store
Mailbox.snapshot's shared reads, imap/view.py's shared numbering) instead of each reading the
folder in turn under the account lock. bench/bench_idle.py measures the same at 10,000 sessions.

Whole server in-process (app.run), raw asyncio clients on the test's loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven.store.folder import Folder
from tests.fixtures_base import PASSWORD
from tests.fixtures_server import running_app
from tests.integration.test_imap_server import ALICE, make_message

SESSIONS = 200
MESSAGES = 2000


def fill_inbox(data_dir: Path, count: int) -> None:
    """`count` messages in alice's INBOX, written as another program would (files in cur/)."""
    root = data_dir / "mail" / "example.test" / "alice"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        (root / "cur" / f"{1700000000 + i}.M{i}P1Q{i}.test:2,S").write_bytes(make_message(i))


async def idler(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(f'a LOGIN {ALICE} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
    while not (line := await reader.readline()).startswith(b"+ "):
        assert line and not line.startswith((b"a NO", b"a BAD", b"b NO", b"b BAD")), line
    return reader, writer


@pytest.fixture
def counted_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a folder is reconciled with its directories (the work of one store read)."""
    calls = [0]
    real: Callable[..., Any] = Folder.sync

    def sync(self: Folder, **kw: Any) -> Any:
        calls[0] += 1
        return real(self, **kw)

    monkeypatch.setattr(Folder, "sync", sync)
    return calls


async def test_one_delivery_reaches_200_idle_sessions_within_a_second_with_shared_reads(
        make_config: Callable[..., Any], counted_reads: list[int]) -> None:
    limits = {"tls": "none", "max_connections": SESSIONS + 10, "per_ip_connections": SESSIONS + 10}
    cfg = make_config({"imap": limits})
    fill_inbox(cfg.data_path, MESSAGES)
    async with running_app(cfg) as ctx:
        port = ctx.port("imap")
        conns = [await idler(port) for _ in range(SESSIONS)]
        try:
            reads_before = counted_reads[0]
            t0 = time.monotonic()
            await ctx.store.deliver([(ALICE, "INBOX")], make_message(MESSAGES + 1))
            lines = await asyncio.wait_for(asyncio.gather(*(r.readline() for r, _ in conns)), 10)
            elapsed = time.monotonic() - t0
            assert set(lines) == {b"* %d EXISTS\r\n" % (MESSAGES + 1)}
            assert elapsed < 1.0, elapsed
            # the sessions shared the reads: not one (or more) per session
            assert counted_reads[0] - reads_before <= 4, counted_reads[0] - reads_before
            # and each still numbers its messages right after the change
            r, w = conns[0]
            assert (await r.readline()).endswith(b" RECENT\r\n")
            w.write(b"DONE\r\nd UID FETCH * (UID)\r\n")
            assert await r.readline() == b"c OK Idle completed.\r\n"
            assert await r.readline() == b"* %d FETCH (UID %d)\r\n" % (MESSAGES + 1, MESSAGES + 1)
        finally:
            for _, w in conns:
                w.close()
