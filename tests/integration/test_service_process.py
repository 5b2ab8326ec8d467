"""`mailhaven serve` as a service process (a real subprocess, real clients on 127.0.0.1): sd_notify
READY only once every listener accepts connections, root binds then drops to run_as_user, SIGHUP
reloads without dropping sessions, SIGTERM drains and loses no accepted message, and the log has one
line per login / session / transaction and never a password or a body.

Listeners whose protocol module is not in this build yet are skipped (the server logs them as not
available); parts of tests that need them skip with that reason.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import imaplib
import json
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app
from tests.fixtures_server import add_user, app_config_data, write_config
from tests.integration.test_service_support import (
    NotifySocket,
    Server,
    base_env,
    can_run_python_as,
    free_port,
    open_dir,
    proc_status,
    system_user,
)

PASSWORD = "C0rrect-Secret-2"
WRONG = "Wr0ng-Secret-1"
ALICE = "alice@example.test"
BOB = "bob@example.test"


def available(listener: str) -> bool:
    return listener in app.LISTENER_FACTORIES


def need(listener: str) -> None:
    if not available(listener):
        pytest.skip(f"listener {listener} not available in this build")


class Setup:
    """A config for a server subprocess in a folder every user can traverse."""

    def __init__(self, folder: Path, tls_files: tuple[Path, Path], nameserver: str, workers: int = 1) -> None:
        self.folder = folder
        self.workers = workers
        self.nameserver = nameserver
        self.cert = Path(shutil.copy(tls_files[0], folder / "cert.pem"))
        self.key = Path(shutil.copy(tls_files[1], folder / "key.pem"))
        self.key.chmod(0o600)
        self.ports: dict[str, int] = {}
        self.path = folder / "mailhaven.toml"
        self.data = folder / "data"

    def write(self, *, ports: dict[str, int] | None = None, **top: Any) -> Path:
        data = app_config_data(self.folder, (self.cert, self.key), self.nameserver)
        data["auth"] = {"failure_delay": 0, "allow_plaintext_loopback": True}
        for name, lc in data["listeners"].items():
            self.ports.setdefault(name, (ports or {}).get(name) or free_port())
            lc["port"] = self.ports[name]
        # Every test here runs twice: one process, and a supervising parent with two worker
        # processes ([server] workers; test_workers.py tests that mode itself).
        data["server"] = {"workers": self.workers}
        data.update(top)
        write_config(self.path, data)
        users = self.folder / "users.toml"
        if not users.exists():
            from mailhaven.auth.users import UsersFile

            UsersFile(users).save()
            cfg = _load(self.path)
            add_user(cfg, ALICE, PASSWORD)
            add_user(cfg, "bob@example.test", PASSWORD)
        return self.path

    def maildir_messages(self, user: str = ALICE) -> list[bytes]:
        local, _, domain = user.partition("@")
        root = self.data / "mail" / domain / local
        return [p.read_bytes() for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()]


def children(pid: int) -> set[int]:
    """The pids whose parent is `pid`."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.add(int(entry))
    return out


def serving_statuses(server: Server, setup: Setup) -> list[dict[str, str]]:
    """/proc status of the processes that serve mail: the server itself, or with workers each
    worker (the supervising parent stays root to restart them, as Postfix's master does)."""
    if setup.workers == 1:
        return [proc_status(server.pid)]
    assert proc_status(server.pid)["Uid"].split()[1] == "0"  # the parent: root, serving nothing
    workers = children(server.pid)
    assert len(workers) == setup.workers, server.log()
    return [proc_status(pid) for pid in sorted(workers)]


def _load(path: Path) -> Any:
    from mailhaven import config

    return config.load(path)


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    """[server] workers of the servers this file starts (test_workers*.py override it with 2)."""
    return int(request.param)


@pytest.fixture
def setup(tls_files: tuple[Path, Path], dns_nameserver: str, workers: int) -> Iterator[Setup]:
    with open_dir() as folder:
        yield Setup(folder, tls_files, dns_nameserver, workers)


def message(subject: str, body: str = "hello") -> bytes:
    return (f"From: someone@example.net\r\nTo: {ALICE}\r\nDate: {email.utils.formatdate()}\r\n"
            f"Message-ID: {email.utils.make_msgid(domain='example.net')}\r\nSubject: {subject}\r\n\r\n"
            f"{body}\r\n").encode()


@contextlib.contextmanager
def running(path: Path, *, env: dict[str, str] | None = None, **kw: Any) -> Iterator[Server]:
    server = Server(path, env=env, **kw)
    try:
        server.ready()
        yield server
    finally:
        server.kill()


def pop3_login(port: int, user: str = ALICE, password: str = PASSWORD) -> poplib.POP3:
    box = poplib.POP3("127.0.0.1", port, timeout=10)
    box.user(user)
    box.pass_(password)
    return box


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def log_fields(line: str) -> dict[str, str]:
    """The key=value fields of a text log line (log.py's logfmt: bare, or double-quoted with
    backslash escapes). A key that appears twice keeps its first value; `_dups` lists such keys."""
    out: dict[str, str] = {}
    dups: list[str] = []
    for key, raw in _LOGFMT.findall(line.split(": ", 1)[1]):
        value = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        if key in out:
            dups.append(key)
        else:
            out[key] = value
    if dups:
        out["_dups"] = ",".join(dups)
    return out


def lines_with(server: Server, msg: str) -> list[dict[str, str]]:
    """Fields of every log line whose message is exactly `msg`."""
    return [log_fields(x) for x in server.lines if re.search(rf" mailhaven[.\w]*: {re.escape(msg)} ", x)]


def plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


# --- sd_notify -----------------------------------------------------------------------------------


def test_ready_is_sent_only_once_every_listener_accepts_and_stopping_on_sigterm(setup: Setup) -> None:
    path = setup.write()
    notify = NotifySocket(setup.folder)
    server = Server(path, env=base_env(NOTIFY_SOCKET=str(notify.path)))
    try:
        first = notify.next_state()
        accepted = {name for name, port in setup.ports.items() if connects(port)}  # right at READY
        assert first.get("READY") == "1", first
        server.ready()
        expected = set(setup.ports) - server.missing_listeners()
        assert "pop3" in expected
        assert accepted == expected == server.serving()
        assert server.stop() == 0, server.log()
        assert notify.next_state() == {"STOPPING": "1"}
    finally:
        server.kill()
        notify.close()


def test_no_ready_when_a_port_is_taken_and_exit_1(setup: Setup) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        path = setup.write(ports={"pop3": port})
        notify = NotifySocket(setup.folder)
        server = Server(path, env=base_env(NOTIFY_SOCKET=str(notify.path)))
        try:
            assert server.p.wait(timeout=30) == 1
            with pytest.raises(TimeoutError):
                notify.next(timeout=0.5)
            assert f"cannot listen on 127.0.0.1 port {port}" in server.log()
        finally:
            server.kill()
            notify.close()


# --- privileges ----------------------------------------------------------------------------------


@pytest.fixture
def service_user() -> Iterator[tuple[str, int, int]]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with system_user() as user:
        if not can_run_python_as(user[1], user[2]):
            pytest.skip("this interpreter is not readable by other users (pyenv under /root?); CI's venv is")
        yield user


def _low_port() -> int:
    for port in range(700, 1000):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1000")


def test_started_as_root_it_binds_a_low_port_then_runs_as_run_as_user_with_private_files(
        setup: Setup, service_user: tuple[str, int, int]) -> None:
    name, uid, gid = service_user
    low = _low_port()
    path = setup.write(ports={"pop3": low}, run_as_user=name)
    assert not setup.data.exists()
    with running(path) as server:
        for status in serving_statuses(server, setup):
            assert status["Uid"].split() == [str(uid)] * 4
            assert status["Gid"].split() == [str(gid)] * 4
            assert sorted(status["Groups"].split()) == sorted(str(g) for g in set(os.getgrouplist(name, gid)))
            assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert f"running as {name}" in server.log()
        # The data folder it made as root was handed over, private.
        st = setup.data.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o700)
        box = pop3_login(low)  # served on a port only root could bind
        assert box.stat() == (0, 0)
        box.quit()
        if available("mx"):
            with smtplib.SMTP("127.0.0.1", setup.ports["mx"], timeout=10) as smtp:
                smtp.sendmail("someone@example.net", [ALICE], message("owned"))
        assert server.stop() == 0, server.log()
    created = [setup.data, *setup.data.rglob("*")]
    assert len(created) > 3
    for p in created:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (uid, gid), p
        assert st.st_mode & 0o077 == 0, f"{p} mode {st.st_mode & 0o777:04o}"
    if available("mx"):
        [msg] = [p for p in (setup.data / "mail" / "example.test" / "alice" / "new").iterdir()]
        assert msg.stat().st_mode & 0o777 == 0o600


@contextlib.contextmanager
def system_group(prefix: str = "mhgrp") -> Iterator[tuple[str, int]]:
    """groupadd --system a group no user has as its primary group; yields (name, gid)."""
    import grp

    name = f"{prefix}{os.getpid() % 100000}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], capture_output=True)


def test_run_as_group_other_than_the_users_own_is_the_process_group_and_owns_its_files(
        setup: Setup, service_user: tuple[str, int, int]) -> None:
    name, uid, own_gid = service_user
    with system_group() as (group, gid):
        assert gid != own_gid
        path = setup.write(run_as_user=name, run_as_group=group)
        with running(path) as server:
            for status in serving_statuses(server, setup):
                assert status["Uid"].split() == [str(uid)] * 4
                assert status["Gid"].split() == [str(gid)] * 4  # real, effective, saved, filesystem
                # Supplementary groups are the user's memberships with `group` as the base, so the
                # user's own primary group is not kept.
                groups = {int(g) for g in status["Groups"].split()}
                assert groups == set(os.getgrouplist(name, gid)) and own_gid not in groups
            assert f"running as {name} (uid {uid}, gid {gid})" in server.log()
            st = setup.data.stat()
            assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o700)
            box = pop3_login(setup.ports["pop3"])
            box.quit()
            if available("mx"):
                with smtplib.SMTP("127.0.0.1", setup.ports["mx"], timeout=10) as smtp:
                    smtp.sendmail("someone@example.net", [ALICE], message("group"))
            assert server.stop() == 0, server.log()
        created = list(setup.data.rglob("*"))
        assert created
        for p in created:
            st = p.lstat()
            assert (st.st_uid, st.st_gid) == (uid, gid), p


def test_data_dir_the_user_cannot_write_is_refused_with_one_line(
        setup: Setup, service_user: tuple[str, int, int]) -> None:
    name, _, _ = service_user
    setup.data.mkdir(mode=0o755)
    (setup.data / "something").write_text("not empty")
    path = setup.write(run_as_user=name)
    server = Server(path)
    try:
        assert server.p.wait(timeout=30) == 1
        time.sleep(0.2)
        assert server.lines[-1] == (f"mailhaven: data_dir: {setup.data} is not writable by {name} (owner root, "
                                    f"mode 0755): chown -R {name}: {setup.data}")
    finally:
        server.kill()


def test_unknown_run_as_user_is_a_config_error_exit_2_before_serving(setup: Setup) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    path = setup.write(run_as_user="no-such-user-mh")
    server = Server(path)
    try:
        assert server.p.wait(timeout=30) == 2  # RestartPreventExitStatus=2: no restart loop
        time.sleep(0.2)
        assert server.lines[-1] == "mailhaven: run_as_user: no such user: no-such-user-mh"
        assert "Traceback" not in server.log()
        assert not any("listening:" in line for line in server.lines)
    finally:
        server.kill()


# --- reload --------------------------------------------------------------------------------------


def hup(server: Server) -> None:
    server.signal(signal.SIGHUP)
    server.wait_for(r"reloaded |reload failed")


def test_established_pop3_session_survives_sighup(setup: Setup) -> None:
    with running(setup.write()) as server:
        box = pop3_login(setup.ports["pop3"])
        hup(server)
        assert box.stat() == (0, 0)
        assert box.quit().startswith(b"+OK")
        assert server.stop() == 0


def test_established_imap_session_survives_sighup(setup: Setup) -> None:
    need("imap")
    with running(setup.write()) as server:
        imap = imaplib.IMAP4("127.0.0.1", setup.ports["imap"], timeout=10)
        imap.login(ALICE, PASSWORD)
        assert imap.select("INBOX")[0] == "OK"
        hup(server)
        assert imap.noop()[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
        imap.logout()
        assert server.stop() == 0


def test_smtp_transaction_in_progress_survives_sighup(setup: Setup) -> None:
    need("mx")
    with running(setup.write()) as server:
        smtp = smtplib.SMTP("127.0.0.1", setup.ports["mx"], timeout=10)
        smtp.ehlo("client.example.net")
        assert smtp.mail("someone@example.net")[0] == 250
        hup(server)
        assert smtp.rcpt(ALICE)[0] == 250
        assert smtp.data(message("across a reload"))[0] == 250
        smtp.quit()
        assert server.stop() == 0
    assert any(b"across a reload" in m for m in setup.maildir_messages())


# `python -c` runs `python -m mailhaven ARGS` (what Server appends) with the users-file poller
# (app._users_watcher, every USERS_POLL_INTERVAL seconds) slowed to once an hour, so only SIGHUP
# can bring a users-file edit in.
NO_USERS_POLL = [sys.executable, "-c",
                 "import runpy, sys; import mailhaven.app as a; a.USERS_POLL_INTERVAL = 3600.0; "
                 "sys.argv = ['mailhaven', *sys.argv[4:]]; runpy.run_module('mailhaven', run_name='__main__')"]


def test_user_added_to_the_users_file_logs_in_after_sighup(setup: Setup) -> None:
    with running(setup.write(), prefix=NO_USERS_POLL) as server:
        with pytest.raises(poplib.error_proto):
            pop3_login(setup.ports["pop3"], "carol@example.test", "carol-pw")
        add_user(_load(setup.path), "carol@example.test", "carol-pw")
        # Well past the poller's normal interval (1 s): without SIGHUP, carol is still unknown.
        time.sleep(2.5)
        with pytest.raises(poplib.error_proto):
            pop3_login(setup.ports["pop3"], "carol@example.test", "carol-pw")
        hup(server)
        box = pop3_login(setup.ports["pop3"], "carol@example.test", "carol-pw")
        assert box.stat() == (0, 0)
        box.quit()
        assert server.stop() == 0
    assert not any("users file reloaded" in x for x in server.lines), server.log()


def _trusting(ca: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def test_new_certificate_is_served_to_new_connections_after_sighup(setup: Setup, tls_ca: Any) -> None:
    import trustme

    with running(setup.write()) as server:
        old = poplib.POP3_SSL("127.0.0.1", setup.ports["pop3s"], context=_trusting(tls_ca), timeout=10)
        old.user(ALICE)
        old.pass_(PASSWORD)
        ca2 = trustme.CA()
        issued = ca2.issue_cert("localhost", "127.0.0.1", "mail.example.test")
        issued.private_key_and_cert_chain_pem.write_to_path(str(setup.cert))  # replaced in place,
        issued.private_key_pem.write_to_path(str(setup.key))                # as certbot would
        hup(server)
        new = poplib.POP3_SSL("127.0.0.1", setup.ports["pop3s"], context=_trusting(ca2), timeout=10)
        assert new.getwelcome().startswith(b"+OK")
        new.quit()
        with pytest.raises(ssl.SSLCertVerificationError):
            poplib.POP3_SSL("127.0.0.1", setup.ports["pop3s"], context=_trusting(tls_ca), timeout=10)
        assert old.stat() == (0, 0)  # the session made before the reload goes on with its TLS
        old.quit()


def test_broken_certificate_on_sighup_is_refused_in_one_line_and_the_old_one_kept(
        setup: Setup, tls_ca: Any) -> None:
    with running(setup.write()) as server:
        setup.key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        server.signal(signal.SIGHUP)
        line = server.wait_for(r"reload failed")
        assert "tls" in line and "keeping the running config" in line
        time.sleep(0.3)
        assert sum("reload failed" in x for x in server.lines) == 1
        box = poplib.POP3_SSL("127.0.0.1", setup.ports["pop3s"], context=_trusting(tls_ca), timeout=10)
        assert box.getwelcome().startswith(b"+OK")
        box.quit()
        assert server.stop() == 0


def test_new_dkim_key_and_selector_sign_mail_after_sighup(setup: Setup) -> None:
    need("submission")
    from mailhaven.policy.dkim import generate_rsa

    keys = []
    for selector in ("mh1", "mh2"):
        pem, _ = generate_rsa(1024)
        path = setup.folder / f"{selector}.pem"
        path.write_bytes(pem)
        path.chmod(0o600)
        keys.append((selector, path))

    def config(selector: str, key: Path) -> Path:
        return setup.write(domains={"example.test": {"dkim_selector": selector, "dkim_key": str(key)}})

    def submit(subject: str) -> None:
        with smtplib.SMTP("127.0.0.1", setup.ports["submission"], timeout=10) as smtp:
            smtp.ehlo("client.example.test")
            smtp.login("bob@example.test", PASSWORD)
            smtp.sendmail("bob@example.test", [ALICE], message(subject).replace(
                b"From: someone@example.net", b"From: bob@example.test"))

    def signature_of(subject: str) -> bytes:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for m in setup.maildir_messages():
                if f"Subject: {subject}".encode() in m:
                    return m.split(b"\r\n\r\n", 1)[0]
            time.sleep(0.1)
        raise AssertionError(f"{subject} not delivered")

    with running(config(*keys[0])) as server:
        submit("first")
        assert b"s=mh1" in signature_of("first")
        config(*keys[1])
        hup(server)
        submit("second")
        head = signature_of("second")
        assert b"s=mh2" in head and b"s=mh1" not in head
        assert server.stop() == 0


# --- stop ----------------------------------------------------------------------------------------


def test_sigterm_stops_accepting_says_goodbye_to_idle_sessions_and_exits_0(setup: Setup) -> None:
    path = setup.write(shutdown_deadline=10)
    with running(path) as server:
        box = pop3_login(setup.ports["pop3"])
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_for(r"stopping: no new connections")
        deadline = time.monotonic() + 2  # the line is logged just before the listeners close
        while connects(setup.ports["pop3"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not connects(setup.ports["pop3"])
        # The idle session is told the server is going away, and the server does not wait the deadline.
        with contextlib.suppress(poplib.error_proto, OSError, EOFError):
            box.stat()
        assert server.p.wait(timeout=15) == 0
        assert time.monotonic() - t0 < 8
        server.wait_for(r"stopped")


def _in_data(port: int, subject: str) -> tuple[smtplib.SMTP, bytes]:
    """An MX session in the middle of DATA (354 answered, half the message sent); returns the rest."""
    msg = message(subject, "first half\r\n" + "x" * 3000 + "\r\nsecond half")
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
    smtp.ehlo("client.example.net")
    assert smtp.mail("someone@example.net")[0] == 250
    assert smtp.rcpt(ALICE)[0] == 250
    assert smtp.docmd("DATA")[0] == 354
    cut = msg.index(b"second half")
    smtp.send(msg[:cut])
    return smtp, msg[cut:] + b".\r\n"


def test_sigterm_during_data_lets_the_transaction_finish_250_stored_and_exit_0(setup: Setup) -> None:
    need("mx")
    with running(setup.write(shutdown_deadline=10)) as server:
        smtp, rest = _in_data(setup.ports["mx"], "finished during the stop")
        server.signal(signal.SIGTERM)
        server.wait_for(r"stopping: no new connections; waiting up to 10s for 1 session")
        deadline = time.monotonic() + 2
        while connects(setup.ports["mx"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not connects(setup.ports["mx"])  # stopping for real, and still waiting for us
        time.sleep(0.5)
        assert server.p.poll() is None
        smtp.send(rest)
        code, reply = smtp.getreply()
        assert code == 250 and reply.startswith(b"2.0.0 Ok: delivered as "), (code, reply)
        # The transaction over, the stopping server says goodbye instead of waiting for more.
        code, reply = smtp.getreply()
        assert code == 421 and reply.startswith(b"4.3.2 "), (code, reply)
        assert server.p.wait(timeout=15) == 0, server.log()
    [stored] = [m for m in setup.maildir_messages() if b"Subject: finished during the stop" in m]
    assert b"first half" in stored and b"second half" in stored
    assert "shutdown deadline passed" not in server.log()


def test_sigterm_tells_an_idle_smtp_session_421_at_once_and_lets_a_begun_transaction_finish(
        setup: Setup) -> None:
    need("mx")
    with running(setup.write(shutdown_deadline=20)) as server:
        idle = smtplib.SMTP("127.0.0.1", setup.ports["mx"], timeout=10)
        idle.ehlo("idle.example.net")
        begun = smtplib.SMTP("127.0.0.1", setup.ports["mx"], timeout=10)
        begun.ehlo("client.example.net")
        assert begun.mail("someone@example.net")[0] == 250
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        # The idle client is told at once (RFC 5321 §3.8), without sending anything.
        code, reply = idle.getreply()
        assert code == 421 and reply.startswith(b"4.3.2 "), (code, reply)
        assert time.monotonic() - t0 < 5
        idle.sock.settimeout(5)
        assert idle.sock.recv(100) == b""
        idle.close()
        # The transaction begun before the stop is let finish, then told 421.
        assert server.p.poll() is None
        assert begun.rcpt(ALICE)[0] == 250
        code, reply = begun.data(message("begun before the stop", "body"))
        assert code == 250, (code, reply)
        code, reply = begun.getreply()
        assert code == 421 and reply.startswith(b"4.3.2 "), (code, reply)
        begun.close()
        assert server.p.wait(timeout=15) == 0, server.log()
        assert time.monotonic() - t0 < 10  # well before the 20 s deadline
        assert "shutdown deadline passed" not in server.log()
    assert any(b"Subject: begun before the stop" in m for m in setup.maildir_messages())


def test_a_session_held_past_the_shutdown_deadline_is_closed_and_the_server_exits_0(setup: Setup) -> None:
    need("mx")
    with running(setup.write(shutdown_deadline="1s")) as server:
        smtp, _ = _in_data(setup.ports["mx"], "never finished")
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.p.wait(timeout=15) == 0, server.log()
        took = time.monotonic() - t0
        assert 0.9 <= took < 6, took
        server.wait_for(r"shutdown deadline passed: closing 1 session")
        # The client's connection was closed under it (no 250 for a message the server never took).
        smtp.sock.settimeout(5)
        with contextlib.suppress(ConnectionError):
            assert smtp.sock.recv(100) == b""
        smtp.close()
    assert not any(b"never finished" in m for m in setup.maildir_messages())


def test_no_message_that_got_250_is_lost_when_stopping_during_smtp_traffic(setup: Setup) -> None:
    need("mx")
    path = setup.write(shutdown_deadline=10)
    accepted: list[str] = []
    lock = threading.Lock()
    stop_sending = threading.Event()

    def sender(n: int) -> None:
        i = 0
        while not stop_sending.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", setup.ports["mx"], timeout=10) as smtp:
                    while not stop_sending.is_set():
                        mid = f"<{n}.{i}.{time.monotonic_ns()}@stop.test>"
                        i += 1
                        msg = (f"From: someone@example.net\r\nMessage-ID: {mid}\r\n"
                               f"Date: {email.utils.formatdate()}\r\nSubject: {mid}\r\n\r\n{'x' * 2000}\r\n").encode()
                        smtp.sendmail("someone@example.net", [ALICE], msg)  # returns only on 250
                        with lock:
                            accepted.append(mid)
            except (smtplib.SMTPException, OSError):
                if stop_sending.wait(0.05):
                    return

    with running(path) as server:
        threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(accepted) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.signal(signal.SIGTERM)
        code = server.p.wait(timeout=30)
        stop_sending.set()
        for t in threads:
            t.join(30)
    assert code == 0, server.log()
    assert len(accepted) >= 20
    stored = b"\n".join(setup.maildir_messages())
    lost = [mid for mid in accepted if mid.encode() not in stored]
    assert lost == []


# --- logs ----------------------------------------------------------------------------------------


def test_log_has_login_session_and_transaction_lines_and_never_a_password_or_body(setup: Setup) -> None:
    with running(setup.write()) as server:
        with pytest.raises(poplib.error_proto):
            pop3_login(setup.ports["pop3"], ALICE, WRONG)
        box = pop3_login(setup.ports["pop3"])
        box.quit()
        if available("mx"):
            with smtplib.SMTP("127.0.0.1", setup.ports["mx"], timeout=10) as smtp:
                smtp.sendmail("someone@example.net", [ALICE], message("s", "BODY-MARKER-7f3a"))
        assert server.stop() == 0
    log = server.log()
    failed = [x for x in server.lines if "login" in x and "fail" in x and ALICE in x]
    assert len(failed) == 1, log
    assert "127.0.0.1" in failed[0]
    ends = [x for x in server.lines if "pop3 session end" in x]
    assert len(ends) >= 2 and any(f"user={ALICE}" in x for x in ends), log
    if available("mx"):
        tx = [x for x in server.lines if "someone@example.net" in x and ALICE in x]
        assert tx, f"no SMTP transaction line:\n{log}"
    for secret in (PASSWORD, WRONG, "BODY-MARKER-7f3a"):
        assert secret not in log


def test_log_has_a_line_for_a_successful_login(setup: Setup) -> None:
    with running(setup.write()) as server:
        pop3_login(setup.ports["pop3"]).quit()
        assert server.stop() == 0
    ok = [x for x in server.lines if "login" in x and ALICE in x and "fail" not in x and "session end" not in x]
    assert ok, server.log()


def test_json_log_format_is_one_object_per_line(setup: Setup) -> None:
    path = setup.write(log={"format": "json"})
    with running(path) as server:
        with pytest.raises(poplib.error_proto):
            pop3_login(setup.ports["pop3"], ALICE, WRONG)
        assert server.stop() == 0
    objects = [json.loads(line) for line in server.lines if line.strip()]
    assert len(objects) >= 3
    assert all({"ts", "level", "logger", "msg"} <= set(o) for o in objects)
    assert any(o["msg"].startswith("ready: ") for o in objects)
    assert WRONG not in server.log()


def _submitted(server: Server, queue_id: str, deadline: float = 10.0) -> dict[str, str]:
    """The one `smtp transaction` line of that queue id."""
    end = time.monotonic() + deadline
    while True:
        found = [f for f in lines_with(server, "smtp transaction") if f.get("id") == queue_id]
        if found or time.monotonic() > end:
            assert len(found) == 1, server.log()
            return found[0]
        time.sleep(0.05)


def test_smtp_transaction_lines_carry_client_tls_user_envelope_size_result_queue_id_and_message_id(
        setup: Setup, tls_ca: Any) -> None:
    need("submissions")
    need("mx")
    with running(setup.write()) as server:
        # Submission over implicit TLS with a login, two recipients.
        sub = message("submitted", "BODY-SUB-5c1e").replace(b"From: someone@example.net", f"From: {ALICE}".encode())
        sub_mid = re.search(rb"Message-ID: (\S+)", sub)[1].decode()  # type: ignore[index]
        with smtplib.SMTP_SSL("127.0.0.1", setup.ports["submissions"], context=_trusting(tls_ca),
                              timeout=10) as smtp:
            smtp.login(ALICE, PASSWORD)
            tls_sock: Any = smtp.sock
            tls = f"{tls_sock.version()} {tls_sock.cipher()[0]}"
            assert smtp.mail(ALICE)[0] == 250
            assert smtp.rcpt(ALICE)[0] == 250
            assert smtp.rcpt(BOB)[0] == 250
            code, reply = smtp.data(sub)
        assert code == 250
        sub_id = reply.decode().rsplit(" ", 1)[1]  # "2.0.0 Ok: queued as ID"
        # The MX: no TLS, no login.
        mx = message("received", "BODY-MX-9d2f")
        mx_mid = re.search(rb"Message-ID: (\S+)", mx)[1].decode()  # type: ignore[index]
        with smtplib.SMTP("127.0.0.1", setup.ports["mx"], timeout=10) as smtp:
            smtp.ehlo("client.example.net")
            assert smtp.mail("someone@example.net")[0] == 250
            assert smtp.rcpt(ALICE)[0] == 250
            code, reply = smtp.data(mx)
        assert code == 250
        mx_id = reply.decode().rsplit(" ", 1)[1]  # "2.0.0 Ok: delivered as ID"
        sub_line, mx_line = _submitted(server, sub_id), _submitted(server, mx_id)
        assert server.stop() == 0
    assert sub_id != mx_id
    assert "_dups" not in sub_line and "_dups" not in mx_line  # each key once (user= is also context)
    assert {k: sub_line.get(k) for k in ("role", "proto", "client", "tls", "user", "sender", "rcpts", "refused", "size",
                                         "result", "message_id")} == {
        "role": "submission", "proto": "submissions", "client": "127.0.0.1", "tls": tls, "user": ALICE, "sender": ALICE,
        "rcpts": f"{ALICE},{BOB}", "refused": "0", "size": str(len(sub)),
        "result": f"250 2.0.0 Ok: queued as {sub_id}", "message_id": sub_mid}
    assert {k: mx_line.get(k) for k in ("role", "client", "helo", "tls", "user", "sender", "rcpts", "size",
                                        "result", "message_id")} == {
        "role": "mx", "client": "127.0.0.1", "helo": "client.example.net", "tls": "no", "user": "",
        "sender": "someone@example.net", "rcpts": ALICE, "size": str(len(mx)),
        "result": f"250 2.0.0 Ok: delivered as {mx_id}", "message_id": mx_mid}
    log = server.log()
    for secret in (PASSWORD, "BODY-SUB-5c1e", "BODY-MX-9d2f"):
        assert secret not in log


def test_smtp_login_failures_log_their_reason_and_never_the_password(setup: Setup) -> None:
    need("submission")
    auth = {"failure_delay": 0, "allow_plaintext_loopback": True, "max_failures_per_account": 2,
            "max_failures_per_ip": 100}
    with running(setup.write(auth=auth)) as server:
        with smtplib.SMTP("127.0.0.1", setup.ports["submission"], timeout=10) as smtp:
            smtp.ehlo("client.example.test")
            assert smtp.docmd("AUTH", "PLAIN " + plain(ALICE, WRONG))[0] == 535
            assert smtp.docmd("AUTH", "PLAIN " + plain("nobody@example.test", WRONG))[0] == 535
            assert smtp.docmd("AUTH", "PLAIN " + plain(ALICE, WRONG + "x"))[0] == 535
            # Alice is over max_failures_per_account: that only logs; the right password gets in.
            assert smtp.docmd("AUTH", "PLAIN " + plain(ALICE, PASSWORD))[0] == 235
        with smtplib.SMTP("127.0.0.1", setup.ports["submission"], timeout=10) as smtp:
            smtp.ehlo("client.example.test")
            assert smtp.docmd("AUTH", "PLAIN " + plain(BOB, PASSWORD))[0] == 235
        assert server.stop() == 0
    failed = lines_with(server, "login failed")
    assert [(f["proto"], f["reason"], f["user"], f["mechanism"], f["ip"]) for f in failed] == [
        ("submission", "bad_password", ALICE, "PLAIN", "127.0.0.1"),
        ("submission", "unknown_user", "nobody@example.test", "PLAIN", "127.0.0.1"),
        ("submission", "bad_password", ALICE, "PLAIN", "127.0.0.1")]
    assert all(x.split()[1] == "WARNING" for x in server.lines if " login failed " in x)
    assert [f["user"] for f in lines_with(server, "login ok")] == [ALICE, BOB]
    log = server.log()
    for secret in (PASSWORD, WRONG, plain(ALICE, WRONG), plain(ALICE, PASSWORD)):
        assert secret not in log


def test_imap_login_wrong_then_right_password_never_logs_either(setup: Setup) -> None:
    need("imap")
    with running(setup.write()) as server:
        imap = imaplib.IMAP4("127.0.0.1", setup.ports["imap"], timeout=10)
        with pytest.raises(imaplib.IMAP4.error):
            imap.login(ALICE, WRONG)
        assert imap.login(ALICE, PASSWORD)[0] == "OK"
        imap.logout()
        assert server.stop() == 0
    [failed] = lines_with(server, "login failed")
    assert failed["user"] == ALICE and failed["reason"] == "bad_password" and failed["proto"] == "imap"
    assert [f["user"] for f in lines_with(server, "login ok")] == [ALICE]
    log = server.log()
    assert WRONG not in log and PASSWORD not in log
