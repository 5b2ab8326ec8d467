"""`mailhaven -c FILE queue list|show|retry|delete|flush` against a running server (real subprocess)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from mailhaven import cleanup
from tests.fixtures_server import app_config_file, load_test_config, running_app


def mailhaven(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailhaven", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


async def test_queue_commands_list_show_retry_delete_flush_a_deferred_entry(
        tmp_path: Path, tls_files: Any, dns_server: Any, dns_nameserver: str) -> None:
    dns_server.set_servfail("remote.test")  # the destination stays temporarily unreachable
    path = app_config_file(tmp_path, tls_files, dns_nameserver)
    cfg = load_test_config(path)
    conf = str(path)
    async with running_app(cfg) as ctx:
        assert (await asyncio.to_thread(mailhaven, "-c", conf, "queue", "list")).stdout.strip() \
            == "Mail queue is empty"
        msg = b"From: a@example.test\r\nTo: b@remote.test\r\nSubject: q\r\n\r\nbody\r\n"
        qid = await cleanup.enqueue(ctx, "a@example.test", ["b@remote.test"], msg, dkim=False)
        r = await asyncio.to_thread(mailhaven, "-c", conf, "queue", "list")
        assert r.returncode == 0 and qid in r.stdout and "b@remote.test" in r.stdout
        r = await asyncio.to_thread(mailhaven, "-c", conf, "queue", "show", qid)
        assert r.returncode == 0 and "a@example.test" in r.stdout
        r = await asyncio.to_thread(mailhaven, "-c", conf, "queue", "retry", qid)
        assert r.returncode == 0, r.stderr
        r = await asyncio.to_thread(mailhaven, "-c", conf, "queue", "flush")
        assert r.returncode == 0, r.stderr
        r = await asyncio.to_thread(mailhaven, "-c", conf, "queue", "show", "NOSUCHID")
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        r = await asyncio.to_thread(mailhaven, "-c", conf, "queue", "delete", qid)
        assert r.returncode == 0, r.stderr
        r = await asyncio.to_thread(mailhaven, "-c", conf, "queue", "list")
        assert r.stdout.strip() == "Mail queue is empty"
        assert not list((ctx.config.queue_root).rglob(f"*{qid}*"))
    r = await asyncio.to_thread(mailhaven, "-c", conf, "queue", "list")
    assert r.returncode == 1 and "not running" in r.stderr and "Traceback" not in r.stderr
