"""Issue 15 item 5: nothing acknowledged is lost, nothing is stored twice, when worker processes are
killed with SIGKILL under load. `mailhaven serve` with [server] workers = 2 (a real subprocess);
six smtplib clients deliver to alice over the MX as fast as they can while one worker, then the
other, is killed; each message carries its own Message-ID. Afterwards every message that got its
250 is in alice's Maildir exactly once, whole, and nothing is there twice (a message whose 250
never arrived may be there once, or not at all: the client was not told)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration import test_service_process as service
from tests.integration.kill_support import check_exactly_once, smtp_send, start_senders, stop_senders, stored
from tests.integration.test_service_process import ALICE, Setup, running
from tests.integration.test_workers import WORKERS, all_ready, children

setup = service.setup


@pytest.fixture
def workers() -> int:
    """These tests write [server] workers themselves: one run each, not one per mode."""
    return 2

CLIENTS = 6


def test_sigkill_of_workers_under_load_loses_nothing_acknowledged_and_stores_nothing_twice(setup: Setup) -> None:
    with running(setup.write(server=WORKERS)) as server:
        all_ready(server)
        stop, threads, acked, tried = start_senders(smtp_send(setup.ports["mx"], "someone@example.net", ALICE),
                                                    CLIENTS, ALICE)
        try:
            for _round in range(2):  # one worker, then (once restarted) the other
                time.sleep(1.0)
                victim = min(children(server.pid))
                os.kill(victim, signal.SIGKILL)
                server.wait_for(r"worker restarted and serving: 2 of 2", timeout=30)
            time.sleep(0.5)
        finally:
            stop_senders(stop, threads)
        assert server.stop() == 0
    check_exactly_once(stored(Path(setup.data) / "mail", ALICE), acked, tried, least=51)
