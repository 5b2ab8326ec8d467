"""Issue 15 item 5: nothing acknowledged is lost, nothing is stored twice, when worker processes are
killed with SIGKILL under load. `mailhaven serve` with [server] workers = 2 (a real subprocess);
six smtplib clients deliver to alice over the MX as fast as they can while one worker, then the
other, is killed; each message carries its own Message-ID. Afterwards every message that got its
250 is in alice's Maildir exactly once, whole, and nothing is there twice (a message whose 250
never arrived may be there once, or not at all: the client was not told)."""

from __future__ import annotations

import os
import signal
import smtplib
import threading
import time
from email import message_from_bytes
from pathlib import Path

import pytest

from tests.integration import test_service_process as service
from tests.integration.test_service_process import ALICE, Setup, running
from tests.integration.test_workers import WORKERS, all_ready, children

setup = service.setup


@pytest.fixture
def workers() -> int:
    """These tests write [server] workers themselves: one run each, not one per mode."""
    return 2

CLIENTS = 6


def _body(tag: str) -> bytes:
    return (f"From: someone@example.net\r\nTo: {ALICE}\r\nSubject: load {tag}\r\n"
            f"Message-ID: <{tag}@load.example.net>\r\n\r\n" + "line of the body\r\n" * 40 + "the end\r\n").encode()


def _client(port: int, n: int, stop: threading.Event, acked: list[str], tried: list[str]) -> None:
    i = 0
    while not stop.is_set():
        tag = f"c{n}m{i}"
        i += 1
        tried.append(tag)
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.sendmail("someone@example.net", [ALICE], _body(tag))
        except (OSError, smtplib.SMTPException):
            continue  # killed mid-transaction: not acknowledged
        acked.append(tag)


def _stored(mail_root: Path) -> list[bytes]:
    local, _, domain = ALICE.partition("@")
    base = mail_root / domain / local
    return [p.read_bytes() for sub in ("new", "cur") if (base / sub).is_dir() for p in (base / sub).iterdir()]


def test_sigkill_of_workers_under_load_loses_nothing_acknowledged_and_stores_nothing_twice(setup: Setup) -> None:
    with running(setup.write(server=WORKERS)) as server:
        all_ready(server)
        stop = threading.Event()
        acked: list[str] = []
        tried: list[str] = []
        threads = [threading.Thread(target=_client, args=(setup.ports["mx"], n, stop, acked, tried), daemon=True)
                   for n in range(CLIENTS)]
        for t in threads:
            t.start()
        try:
            for _round in range(2):  # one worker, then (once restarted) the other
                time.sleep(1.0)
                victim = min(children(server.pid))
                os.kill(victim, signal.SIGKILL)
                server.wait_for(r"worker restarted and serving: 2 of 2", timeout=30)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert server.stop() == 0
    stored = _stored(Path(setup.data) / "mail")
    print(f"\n{len(tried)} tried, {len(acked)} acknowledged, {len(stored)} stored")
    ids = [str(message_from_bytes(m)["Message-ID"]).strip("<>").split("@")[0] for m in stored]
    assert len(acked) > 50, (len(acked), len(tried))  # real load, on both sides of each kill
    assert len(ids) == len(set(ids)), "a message was stored twice"
    assert not set(acked) - set(ids), f"acknowledged but lost: {sorted(set(acked) - set(ids))}"
    assert set(ids) <= set(tried)
    assert all(m.endswith(b"the end\r\n") for m in stored), "a stored message is not whole"
