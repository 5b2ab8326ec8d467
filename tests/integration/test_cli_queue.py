"""`mailhaven -c FILE queue list|show|retry|delete|flush` against a running server (real subprocess)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mailhaven import cleanup
from mailhaven.control import control_request
from tests.fixtures_server import app_config_file, load_test_config, running_app
from tests.smtp_peer import SmtpPeer, cert_files, server_tls_context, shared_port, until


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


async def test_queue_show_reads_like_a_person_wrote_it_and_json_keeps_the_entry(
        tmp_path: Path, tls_files: Any, dns_server: Any, dns_nameserver: str) -> None:
    dns_server.set_servfail("remote.test")
    path = app_config_file(tmp_path, tls_files, dns_nameserver)
    conf = str(path)
    async with running_app(load_test_config(path)) as ctx:
        msg = (b"From: Alice <a@example.test>\r\nTo: b@remote.test, c@remote.test\r\n"
               b"Subject: =?utf-8?q?caf=C3=A9?= \x1b[31mred\r\nMessage-ID: <m1@example.test>\r\n\r\nbody\r\n")
        qid = await cleanup.enqueue(ctx, "a@example.test", ["b@remote.test", "c@remote.test"], msg, dkim=False)
        await until(lambda: ctx.queue.entries[qid].attempts >= 1 and not ctx.queue.entries[qid].busy, 10)
        r = await asyncio.to_thread(mailhaven, "-c", conf, "queue", "show", qid)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == f"Queue ID:      {qid}"
        assert "Sender:        <a@example.test>" in lines
        size = ctx.queue.entries[qid].size
        assert f"Size:          {size} bytes" in lines
        assert re.search(r"^Arrived:       \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \((now|\d+ s ago|\d+ min ago)\)$", r.stdout, re.M)
        assert re.search(r"^Next attempt:  \d{4}-.* UTC \(in \d+ min\)$", r.stdout, re.M)
        assert "  From:       Alice <a@example.test>" in lines
        assert "  To:         b@remote.test, c@remote.test" in lines
        assert "  Subject:    café \\x1b[31mred" in lines  # RFC 2047 decoded; no raw escape to the terminal
        assert "  Message-ID: <m1@example.test>" in lines
        assert "\x1b" not in r.stdout
        at = lines.index("  <b@remote.test>")
        assert lines[at + 1] == "    state:      deferred, will be retried"
        assert re.fullmatch(r"    attempts:   1, last \d{4}-.* UTC \((now|\d+ s ago)\)", lines[at + 2])
        assert lines[at + 3] == "    last reply: 451 4.4.3 DNS lookup of remote.test MX failed temporarily"
        assert "  <c@remote.test>" in lines
        r = await asyncio.to_thread(mailhaven, "-c", conf, "queue", "show", qid, "--json")
        assert r.returncode == 0, r.stderr
        shown = json.loads(r.stdout)
        assert shown == (await asyncio.to_thread(control_request, ctx.config.control_path,
                                                 {"cmd": "show", "id": qid}))["entry"]
        assert "headers" not in shown and shown["recipients"][0]["last"]["enhanced"] == "4.4.3"


async def test_a_refused_certificate_defers_with_4_7_5_and_queue_show_says_why(
        tmp_path: Path, tls_files: Any, tls_ca: Any, dns_server: Any, dns_nameserver: str,
        caplog: pytest.LogCaptureFixture) -> None:
    port = shared_port("127.0.0.2")
    dns_server.add("secure.test", "MX", "10 mx.secure.test.")
    dns_server.add("mx.secure.test", "A", "127.0.0.2")
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))
    path = app_config_file(tmp_path, tls_files, dns_nameserver,
                           queue={"remote_port": port, "connect_timeout": 5, "require_tls_domains": ["secure.test"],
                                  "tls_ca_file": str(ca)})
    peer = await SmtpPeer("127.0.0.2", port, tls_context=server_tls_context(
        *cert_files(tmp_path / "peer", "other.test", ca=tls_ca))).start()
    caplog.set_level(logging.INFO)
    try:
        async with running_app(load_test_config(path)) as ctx:
            msg = b"From: a@example.test\r\nTo: bob@secure.test\r\nSubject: s\r\n\r\nbody\r\n"
            qid = await cleanup.enqueue(ctx, "a@example.test", ["bob@secure.test"], msg, dkim=False)
            await until(lambda: ctx.queue.entries[qid].attempts >= 1 and not ctx.queue.entries[qid].busy, 15)
            r = await asyncio.to_thread(mailhaven, "-c", str(path), "queue", "show", qid)
    finally:
        await peer.stop()
    reason = "TLS certificate of mx.secure.test[127.0.0.2] does not name mx.secure.test (it names other.test) (policy: require_tls_domains)"
    assert f"    last reply: 451 4.7.5 {reason}  (from mx.secure.test)" in r.stdout.splitlines(), r.stdout
    assert "    state:      deferred, will be retried" in r.stdout.splitlines()
    assert peer.messages == []
    deferred = [rec.getMessage() for rec in caplog.records if f"{qid} to=<bob@secure.test> deferred" in rec.getMessage()]
    assert deferred and f"451 4.7.5 {reason}" in deferred[0]
