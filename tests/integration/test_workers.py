"""`mailhaven serve` with [server] workers = 2 (a real subprocess, real clients on 127.0.0.1): a
supervising parent with two worker children that all serve every listener; the parent restarts a
killed worker, passes SIGHUP and SIGTERM on, reports a worker that cannot start, and sums the
workers' metrics on GET /metrics; each queued message is delivered exactly once, whichever worker
took it (tests/smtp_peer.SmtpPeer on 127.0.0.6 plays the remote MX, found through the test DNS
server), and `mailhaven queue list` answers.
"""

from __future__ import annotations

import asyncio
import imaplib
import os
import poplib
import re
import signal
import smtplib
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dnsserver import DnsServer
from tests.fixtures_server import add_user
from tests.integration import test_service_process as service
from tests.integration.test_service_process import (
    ALICE,
    BOB,
    NO_USERS_POLL,
    PASSWORD,
    Setup,
    _load,
    children,
    message,
    running,
)
from tests.integration.test_service_support import NotifySocket, Server, base_env, free_port, mailhaven_argv
from tests.smtp_peer import SmtpPeer, shared_port

setup = service.setup


@pytest.fixture
def workers() -> int:
    """These tests write [server] workers themselves: one run each, not one per mode."""
    return 2

REMOTE = "remote.test"
REMOTE_IP = "127.0.0.6"
WORKERS = {"workers": 2}
T = TypeVar("T")


def all_ready(server: Server) -> None:
    """The parent said both workers serve (Server.ready, which `running` calls, waits for the same)."""
    if not any("ready: 2 workers serving" in line for line in server.lines):
        server.wait_for(r"ready: 2 workers serving")


def greetings(setup: Setup, n: int) -> None:
    """`n` connections to each of POP3, IMAP and SMTP, each answered with its greeting."""
    for _ in range(n):
        box = poplib.POP3("127.0.0.1", setup.ports["pop3"], timeout=10)
        assert box.getwelcome().startswith(b"+OK")
        box.quit()
        imap = imaplib.IMAP4("127.0.0.1", setup.ports["imap"], timeout=10)
        assert imap.welcome.startswith(b"* OK")
        imap.logout()
        with smtplib.SMTP("127.0.0.1", setup.ports["mx"], timeout=10) as smtp:
            assert smtp.noop()[0] == 250


def test_two_workers_serve_every_listener_and_a_killed_worker_is_restarted(setup: Setup) -> None:
    with running(setup.write(server=WORKERS)) as server:
        all_ready(server)
        workers = children(server.pid)
        assert len(workers) == 2, server.log()
        greetings(setup, 20)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        line = server.wait_for(r"worker \d was killed by signal SIGKILL; restarting")
        greetings(setup, 5)  # the other worker answers meanwhile
        server.wait_for(r"worker \d started")
        server.wait_for(r"worker restarted and serving: 2 of 2")
        now = children(server.pid)
        assert len(now) == 2 and victim not in now and (workers - {victim}) < now, (workers, now, line)
        greetings(setup, 10)
        assert server.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in now)


def test_only_the_parent_notifies_systemd_ready_once_both_workers_serve(setup: Setup) -> None:
    notify = NotifySocket(setup.folder)
    server = Server(setup.write(server=WORKERS), env=base_env(NOTIFY_SOCKET=str(notify.path)))
    try:
        assert notify.next_state() == {"READY": "1"}
        # READY comes once both workers serve: each logs that (to the one stderr) before it tells
        # the parent, which logs its own line when it notifies.
        all_ready(server)
        parent = next(i for i, line in enumerate(server.lines) if "ready: 2 workers serving" in line)
        assert sum("listener(s) serving in worker" in line for line in server.lines[:parent]) == 2, server.log()
        greetings(setup, 2)
        server.signal(signal.SIGHUP)
        assert notify.next_state().get("RELOADING") == "1"
        assert notify.next_state() == {"READY": "1"}
        assert server.stop() == 0
        assert notify.next_state() == {"STOPPING": "1"}
        with pytest.raises(TimeoutError):  # nothing from the workers, ever
            notify.next(timeout=0.5)
    finally:
        server.kill()
        notify.close()


def test_sighup_reloads_every_worker(setup: Setup) -> None:
    with running(setup.write(server=WORKERS), prefix=NO_USERS_POLL) as server:
        all_ready(server)
        add_user(_load(setup.path), "carol@example.test", "carol-pw")
        server.signal(signal.SIGHUP)
        server.wait_for(r"reloaded ")
        server.wait_for(r"reloaded ")  # one line per worker
        for _ in range(12):  # the kernel spreads them over both workers
            box = service.pop3_login(setup.ports["pop3"], "carol@example.test", "carol-pw")
            assert box.stat() == (0, 0)
            box.quit()
        assert server.stop() == 0
    assert sum("reloaded " in line for line in server.lines) == 2, server.log()


def test_sigterm_stops_every_worker_closes_the_ports_at_once_and_the_parent_exits_0(setup: Setup) -> None:
    with running(setup.write(server=WORKERS, shutdown_deadline=10)) as server:
        all_ready(server)
        workers = children(server.pid)
        smtp, rest = service._in_data(setup.ports["mx"], "finished during the stop")
        server.signal(signal.SIGTERM)
        server.wait_for(r"waiting up to 10s for 1 session")  # the worker that has it
        deadline = time.monotonic() + 2
        while service.connects(setup.ports["mx"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        # Nobody would accept: the parent's copy of the socket is closed too, not queueing for nobody.
        assert not service.connects(setup.ports["mx"])
        smtp.send(rest)
        assert smtp.getreply()[0] == 250
        assert server.p.wait(timeout=20) == 0, server.log()
        server.wait_for(r"mailhaven.supervisor: stopped$")  # the last line, once the pipe is read
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert sum(line.endswith("stopped") for line in server.lines) == 3, server.log()  # 2 workers, the parent


def test_a_worker_that_cannot_start_stops_the_others_and_exits_with_its_error_line(setup: Setup) -> None:
    # The workers read the users file (the parent does not): a broken one is a config error, exit 2.
    path = setup.write(server=WORKERS)
    (setup.folder / "users.toml").write_text("[users\n")
    server = Server(path)
    try:
        assert server.p.wait(timeout=30) == 2
        # The line a single process prints for it: the file, the position and what is wrong.
        last = server.wait_for(r"^mailhaven: ")
        assert last.startswith(f"mailhaven: {setup.folder / 'users.toml'}:1:7: TOML syntax"), server.log()
        assert not any("ready: 2 workers" in line for line in server.lines)
        assert not children(server.pid)
    finally:
        server.kill()


def test_metrics_are_summed_over_the_workers(setup: Setup) -> None:
    port = free_port()
    with running(setup.write(server=WORKERS, metrics={"address": f"127.0.0.1:{port}"})) as server:
        all_ready(server)
        n = 20
        for _ in range(n):
            box = poplib.POP3("127.0.0.1", setup.ports["pop3"], timeout=10)
            box.quit()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            text = r.read().decode()
        assert server.stop() == 0
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert values[("mailhaven_connections_total", (("listener", "pop3"),))] == n
    assert values[("mailhaven_workers", ())] == 2
    assert values[("mailhaven_build_info", (("version", _version()),))] == 1


def test_a_flood_on_the_metrics_port_leaves_the_parent_answering(setup: Setup) -> None:
    import socket

    from mailhaven.metrics import MAX_CLIENTS

    port = free_port()
    with running(setup.write(server=WORKERS, metrics={"address": f"127.0.0.1:{port}"})) as server:
        all_ready(server)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(MAX_CLIENTS)]
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", port), timeout=2)  # not REQUEST_TIMEOUT (10 s)
        try:
            assert extra.recv(100) == b""  # one too many: closed at once, nothing held for it
        except ConnectionResetError:
            pass
        finally:
            extra.close()
        os.kill(min(children(server.pid)), signal.SIGKILL)  # the parent still restarts workers
        server.wait_for(r"worker restarted and serving: 2 of 2", timeout=30)
        for s in idle:
            s.close()
        time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
        assert server.stop() == 0


def _version() -> str:
    from mailhaven import __version__

    return __version__


async def test_submitted_mail_is_delivered_exactly_once_whichever_worker_took_it(
        setup: Setup, dns_server: DnsServer) -> None:
    peer = await SmtpPeer(REMOTE_IP, shared_port(REMOTE_IP), hostname="mx.remote.test").start()
    dns_server.add(REMOTE, "MX", "10 mx.remote.test.")
    dns_server.add("mx.remote.test", "A", REMOTE_IP)
    peer.script_rcpt("held@remote.test", "451 4.3.0 not now")  # one entry stays for `queue list`
    path = setup.write(server=WORKERS, queue={"remote_port": peer.port, "retry_schedule": ["1h"]})
    n = 20

    def submit_all() -> list[str]:
        ids = []
        for i in range(n):
            with smtplib.SMTP("127.0.0.1", setup.ports["submission"], timeout=10) as smtp:
                smtp.ehlo("client.example.test")
                smtp.login(BOB, PASSWORD)
                data = message(f"number {i}").replace(b"From: someone@example.net", f"From: {BOB}".encode())
                code, reply = smtp.data(data) if smtp.mail(BOB)[0] == 250 and smtp.rcpt(ALICE)[0] == 250 \
                    and smtp.rcpt(f"r{i}@{REMOTE}")[0] == 250 else (0, b"")
                assert code == 250, reply
                ids.append(reply.decode().rsplit(" ", 1)[1])
        with smtplib.SMTP("127.0.0.1", setup.ports["submission"], timeout=10) as smtp:
            smtp.login(BOB, PASSWORD)
            smtp.sendmail(BOB, ["held@remote.test"], message("held").replace(
                b"From: someone@example.net", f"From: {BOB}".encode()))
        return ids

    with running(path) as server:
        await asyncio.to_thread(all_ready, server)
        try:
            ids = await asyncio.to_thread(submit_all)
            await peer.wait_messages(n, seconds=20)
            await asyncio.sleep(1.5)  # time for a duplicate to show up
            listing = await asyncio.to_thread(
                subprocess.run, [*mailhaven_argv(), "-c", str(path), "queue", "list"], env=base_env(),
                capture_output=True, text=True, timeout=30)
            assert await asyncio.to_thread(server.stop) == 0
        finally:
            await peer.stop()
    got = sorted(r for m in peer.messages for r in m.rcpt_tos)
    assert got == sorted(f"r{i}@{REMOTE}" for i in range(n)), got
    local = setup.maildir_messages(ALICE)
    assert len(local) == n
    assert listing.returncode == 0, listing.stderr
    assert "held@remote.test" in listing.stdout, listing.stdout
    assert len(set(ids)) == n
    assert sum("accepted " in line for line in server.lines) == n + 1, server.log()
    # Which worker took each connection is the kernel's choice (worker 1 took some in every run
    # seen); test_workers_queue.py hands entries over deterministically.


async def test_with_postgresql_both_workers_claim_from_the_table_and_deliver_each_message_once(
        setup: Setup, dns_server: DnsServer, pg_dsn: str) -> None:
    """[storage] backend = "postgresql": every worker runs a queue manager over queue_entry (no
    hand-off to worker 0) and each message still leaves exactly once."""
    import psycopg

    peer = await SmtpPeer(REMOTE_IP, shared_port(REMOTE_IP), hostname="mx.remote.test").start()
    dns_server.add(REMOTE, "MX", "10 mx.remote.test.")
    dns_server.add("mx.remote.test", "A", REMOTE_IP)
    path = setup.write(server=WORKERS, storage={"backend": "postgresql", "dsn": pg_dsn},
                       queue={"remote_port": peer.port, "retry_schedule": ["1h"]})
    n = 12

    def submit_all() -> None:
        for i in range(n):
            with smtplib.SMTP("127.0.0.1", setup.ports["submission"], timeout=10) as smtp:
                smtp.login(BOB, PASSWORD)
                smtp.sendmail(BOB, [f"r{i}@{REMOTE}"], message(f"number {i}").replace(
                    b"From: someone@example.net", f"From: {BOB}".encode()))

    def rows() -> int:
        with psycopg.connect(pg_dsn) as conn:
            row = conn.execute("SELECT count(*) FROM queue_entry").fetchone()
            return int(row[0]) if row else -1

    with running(path) as server:
        await asyncio.to_thread(all_ready, server)
        try:
            await asyncio.to_thread(submit_all)
            await peer.wait_messages(n, seconds=20)
            await asyncio.sleep(1.5)  # time for a duplicate to show up
            assert await asyncio.to_thread(server.stop) == 0
        finally:
            await peer.stop()
    got = sorted(r for m in peer.messages for r in m.rcpt_tos)
    assert got == sorted(f"r{i}@{REMOTE}" for i in range(n)), got
    assert await asyncio.to_thread(rows) == 0
    assert not list((setup.data / "queue").glob("worker-*"))  # no hand-off partitions


def _on_the_other_worker(stopped: int, connect: Callable[[], T]) -> T:
    """`connect()` while worker `stopped` is SIGSTOPped: the other worker accepts it."""
    os.kill(stopped, signal.SIGSTOP)
    try:
        return connect()
    finally:
        os.kill(stopped, signal.SIGCONT)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_delivery_in_one_worker_wakes_idle_in_the_other_within_one_second(
        setup: Setup, backend: str, request: pytest.FixtureRequest) -> None:
    """Through the datagram bus (store/bus.py), or with PostgreSQL through LISTEN/NOTIFY
    (store/bus_pg.py), which then replaces the bus."""
    import socket

    storage = {"backend": "postgresql", "dsn": request.getfixturevalue("pg_dsn")} if backend == "postgresql" else {}
    with running(setup.write(server=WORKERS, **({"storage": storage} if storage else {}))) as server:
        all_ready(server)
        bus_sockets = list((setup.data / "run" / "bus").glob("*.sock"))
        assert len(bus_sockets) == (0 if storage else 2), bus_sockets
        first, second = sorted(children(server.pid))

        def idle_client() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", setup.ports["imap"]), timeout=10)
            f = s.makefile("rb")
            assert f.readline().startswith(b"* OK")  # the greeting: accepted by `second`
            s.sendall(f"a LOGIN {ALICE} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
            while not f.readline().startswith(b"+ "):
                pass
            return s

        imap = _on_the_other_worker(first, idle_client)  # IDLE in `second`

        def smtp_client() -> smtplib.SMTP:
            smtp = smtplib.SMTP("127.0.0.1", setup.ports["mx"], timeout=10)  # greeted by `first`
            return smtp

        smtp = _on_the_other_worker(second, smtp_client)  # the delivery in `first`
        with imap, smtp:
            smtp.sendmail("someone@example.net", [ALICE], message("across workers"))
            sent = time.monotonic()
            imap.settimeout(1.0)
            got = b""
            while b"EXISTS" not in got:
                got += imap.recv(4096)  # socket.timeout (an error) after 1 s without a word
            assert b"* 1 EXISTS" in got and time.monotonic() - sent < 1.0, got
            imap.sendall(b"DONE\r\nd LOGOUT\r\n")
        assert server.stop() == 0


def _pop3_login(port: int, password: str, source: str = "127.0.0.5") -> bool:
    """USER/PASS from `source`; True for +OK."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0)) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"+OK")
        s.sendall(f"USER {ALICE}\r\n".encode())
        f.readline()
        s.sendall(f"PASS {password}\r\n".encode())
        ok = f.readline().startswith(b"+OK")
        s.sendall(b"QUIT\r\n")
        return ok


def test_auth_unblock_lifts_the_penalties_of_every_worker(setup: Setup) -> None:
    auth = {"failure_delay": 0.5, "allow_plaintext_loopback": True}
    path = setup.write(server=WORKERS, auth=auth)
    with running(path) as server:
        all_ready(server)
        pids = sorted(children(server.pid))
        port = setup.ports["pop3"]
        for other in pids:  # two failures from 127.0.0.5 in each worker: each holds a penalty
            _on_the_other_worker(other, lambda: [_pop3_login(port, "wrong") for _ in range(2)])
        r = subprocess.run([*mailhaven_argv(), "-c", str(path), "auth", "unblock", "127.0.0.5"], env=base_env(),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        server.wait_for(r"auth unblock 127\.0\.0\.5 passed on from another worker")
        for other in pids:  # a right password in each worker now: no delay left anywhere
            started = time.monotonic()
            assert _on_the_other_worker(other, lambda: _pop3_login(port, PASSWORD))
            assert time.monotonic() - started < 0.4
        delays = [line for line in server.lines if "login ok" in line and "ip=127.0.0.5" in line]
        assert len(delays) == 2 and all(re.search(r"delay=0(\.0)?\b", d) for d in delays), delays
        assert server.stop() == 0
