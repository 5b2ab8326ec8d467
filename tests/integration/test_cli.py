"""The `mailhaven` command line, run as a real subprocess (`python -m mailhaven`)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailhaven import config
from mailhaven.auth import passwords
from mailhaven.auth.users import Directory, UsersFile
from tests.fixtures_base import free_port
from tests.fixtures_server import app_config_data, app_config_file, write_config

ENV = {**os.environ, "MAILHAVEN_FAST_HASH": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("MAILHAVEN_CONFIG", None)
ENV.pop("NOTIFY_SOCKET", None)


def mh(*args: str, stdin: str | None = "", cwd: Path | None = None,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailhaven", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env or ENV)


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert r.returncode == code, r.stderr
    assert r.stderr == f"mailhaven: {message}\n"
    assert "Traceback" not in r.stderr + r.stdout


@pytest.fixture
def initialised(tmp_path: Path) -> Path:
    cfg = tmp_path / "etc" / "mailhaven.toml"
    r = mh("init", "--domain", "example.test", "--hostname", "mail.example.test", "--config", str(cfg),
           "--data-dir", str(tmp_path / "data"), "--dev")
    assert r.returncode == 0, r.stderr
    return cfg


def test_python_m_mailhaven_help_lists_the_commands() -> None:
    r = mh("--help")
    assert r.returncode == 0
    for command in ("init", "serve", "check-config", "user", "alias"):
        assert command in r.stdout


def test_mailhaven_console_command_is_installed() -> None:
    exe = shutil.which("mailhaven")
    assert exe is not None
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("mailhaven ")


def test_init_writes_a_config_that_check_config_accepts(initialised: Path, tmp_path: Path) -> None:
    folder = initialised.parent
    assert stat.S_IMODE((folder / "users.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert (folder / "tls" / "cert.pem").is_file() and (folder / "tls" / "key.pem").is_file()
    cfg = config.load(initialised)
    assert cfg.hostname == "mail.example.test" and list(cfg.domains) == ["example.test"]
    assert {n: lc.port for n, lc in cfg.listeners.items()} == config.DEV_PORTS
    assert all(lc.address == "127.0.0.1" for lc in cfg.listeners.values())
    # the SRS secret for forwarding: random, private like the other secrets, named by [delivery]
    srs = folder / "srs.secret"
    assert cfg.delivery.srs_secret_file == str(srs) and stat.S_IMODE(srs.stat().st_mode) == 0o640
    assert len(cfg.delivery.secret()) >= 32 and cfg.srs_domain == "example.test"
    r = mh("-c", str(initialised), "check-config")
    assert (r.returncode, r.stdout, r.stderr) == (0, "OK\n", "")


def test_init_production_config_uses_standard_ports_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "mailhaven.toml"
    r = mh("-c", str(path), "init", "--domain", "Example.ORG", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    cfg = config.load(path)
    assert cfg.hostname == "mail.example.org" and not cfg.dev
    assert cfg.listeners["mx"].port == 25 and cfg.listeners["imaps"].port == 993
    assert mh("-c", str(path), "check-config").stdout == "OK\n"


def test_init_refuses_to_overwrite_a_config_unless_forced_and_never_touches_users(
        initialised: Path) -> None:
    r = mh("-c", str(initialised), "init", "--domain", "example.test", "--dev")
    assert_one_line_error(r, 1, f"{initialised} already exists (use --force to overwrite it)")
    assert mh("-c", str(initialised), "user", "add", "alice@example.test", stdin="pw1\n").returncode == 0
    r = mh("-c", str(initialised), "init", "--domain", "example.test", "--dev", "--force")
    assert r.returncode == 0, r.stderr
    assert UsersFile.load(initialised.parent / "users.toml").list_users() == ["alice@example.test"]


def test_init_with_a_bad_domain_is_a_config_error_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new" / "mailhaven.toml"
    r = mh("-c", str(path), "init", "--domain", "bad domain", "--dev")
    assert_one_line_error(r, 2, 'domains."bad domain": not a valid domain name')
    assert not path.exists() and not (path.parent / "users.toml").exists()


# --- postmaster@ and abuse@ (issue 11 item 4) -------------------------------------------------------


def _directory(path: Path) -> Directory:
    return Directory.load(config.load(path))


def test_init_postmaster_writes_the_role_aliases_and_names_the_account_to_add(tmp_path: Path) -> None:
    path = tmp_path / "mailhaven.toml"
    r = mh("-c", str(path), "init", "--domain", "example.test", "--dev", "--postmaster", "Admin@Example.TEST")
    assert r.returncode == 0, r.stderr
    assert "alias postmaster@example.test -> Admin@example.test\n" in r.stdout
    assert "alias abuse@example.test -> postmaster@example.test\n" in r.stdout
    assert f"next: mailhaven -c {path} user add Admin@example.test\n" in r.stdout
    # The first user added is someone else: init's choice stands.
    r = mh("-c", str(path), "user", "add", "alice@example.test", stdin="pw\n")
    assert (r.returncode, r.stdout) == (0, "added alice@example.test\n")
    assert mh("-c", str(path), "user", "add", "admin@example.test", stdin="pw\n").returncode == 0
    d = _directory(path)
    assert d.postmaster("example.test") == (["admin@example.test"], "alias")  # the user's own spelling
    assert d.resolve("abuse@example.test") == ["admin@example.test"]
    assert (mh("-c", str(path), "check-config").stderr, d.role_warnings) == ("", [])


@pytest.mark.parametrize("address,message", [
    ("admin@elsewhere.test", "--postmaster admin@elsewhere.test: must be an address in example.test (to "
                             "forward it elsewhere: mailhaven alias add postmaster@example.test admin@elsewhere.test)"),
    ("not an address", "--postmaster not an address: not a valid address"),
])
def test_init_postmaster_outside_the_domain_is_refused_and_nothing_written(tmp_path: Path, address: str,
                                                                            message: str) -> None:
    path = tmp_path / "etc" / "mailhaven.toml"
    r = mh("-c", str(path), "init", "--domain", "example.test", "--dev", "--postmaster", address)
    assert r.returncode == 1 and r.stderr.startswith(f"mailhaven: {message}") and r.stderr.count("\n") == 1
    assert not path.exists() and not (path.parent / "users.toml").exists()


def test_the_first_user_of_a_domain_gets_postmaster_and_abuse_and_is_told_so(initialised: Path) -> None:
    c = str(initialised)
    r = mh("-c", c, "user", "add", "alice@example.test", stdin="pw\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "added alice@example.test",
        "alias postmaster@example.test -> alice@example.test (the first user of the domain; change it with "
        "`mailhaven alias`)",
        "alias abuse@example.test -> postmaster@example.test (the first user of the domain; change it with "
        "`mailhaven alias`)"]
    r = mh("-c", c, "user", "add", "bob@example.test", stdin="pw\n")
    assert (r.returncode, r.stdout) == (0, "added bob@example.test\n")
    assert _directory(initialised).postmaster("example.test") == (["alice@example.test"], "alias")
    assert mh("-c", c, "check-config").stderr == ""


def test_init_without_postmaster_says_who_will_get_its_mail(tmp_path: Path) -> None:
    path = tmp_path / "mailhaven.toml"
    r = mh("-c", str(path), "init", "--domain", "example.test", "--dev")
    assert "also gets the mail for postmaster@example.test and abuse@example.test" in r.stdout
    assert UsersFile.load(tmp_path / "users.toml").list_aliases() == {}


def test_check_config_warns_about_an_older_users_file_without_role_aliases(initialised: Path) -> None:
    with UsersFile.edit(initialised.parent / "users.toml") as uf:  # as written before this change
        uf.add_user("alice@example.test", passwords.hash_password("pw"))
    r = mh("-c", str(initialised), "check-config")
    assert (r.returncode, r.stdout) == (0, "OK\n")
    assert r.stderr.splitlines() == [
        "warning: postmaster@example.test is not a user or alias: its mail goes to alice@example.test (the "
        "first user) only implicitly (to make it explicit: mailhaven alias add postmaster@example.test "
        "alice@example.test)",
        "warning: abuse@example.test reaches no one: abuse reports (RFC 2142) are refused (to make it "
        "explicit: mailhaven alias add abuse@example.test postmaster@example.test)"]


def test_user_add_list_passwd_del_with_password_on_stdin(initialised: Path) -> None:
    c = str(initialised)
    r = mh("-c", c, "user", "add", "Alice@Example.TEST", stdin="s3cret\n")
    assert (r.returncode, r.stderr) == (0, "")
    assert mh("-c", c, "user", "add", "bob@example.test", stdin="hunter2\n").returncode == 0
    assert mh("-c", c, "user", "list").stdout == "Alice@example.test\nbob@example.test\n"
    users = initialised.parent / "users.toml"
    h = UsersFile.load(users).get_user("alice@example.test")
    assert h is not None and h.password.startswith("$argon2id$")
    assert passwords.verify_sync(h.password, "s3cret")
    assert mh("-c", c, "user", "passwd", "alice@example.test", stdin="n3w\n").returncode == 0
    h = UsersFile.load(users).get_user("alice@example.test")
    assert h is not None and passwords.verify_sync(h.password, "n3w") and not passwords.verify_sync(h.password, "s3cret")
    assert mh("-c", c, "user", "del", "alice@example.test").returncode == 0
    assert mh("-c", c, "user", "list").stdout == "bob@example.test\n"
    assert stat.S_IMODE(users.stat().st_mode) == 0o600


def _on_terminal(args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its controlling tty; answer each prompt in turn."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()

    def make_controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "mailhaven", *args], stdin=slave, stdout=slave,
                            stderr=slave, env=ENV, preexec_fn=make_controlling_tty)
    os.close(slave)
    seen = b""
    try:
        for answer in answers:
            while b"Password" not in seen.rsplit(b"\n", 1)[-1]:
                seen += os.read(master, 1024)
            os.write(master, answer.encode() + b"\n")
            seen += b"\n"
        code = proc.wait(timeout=60)
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 1024):
                seen += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, seen.decode(errors="replace")


def test_user_add_on_a_terminal_asks_twice_and_refuses_a_mismatch(initialised: Path) -> None:
    c = str(initialised)
    code, out = _on_terminal(["-c", c, "user", "add", "carol@example.test"], ["one", "two"])
    assert code == 1 and "mailhaven: passwords do not match" in out
    assert "one" not in out and "two" not in out  # not echoed
    code, out = _on_terminal(["-c", c, "user", "add", "carol@example.test"], ["t3rm", "t3rm"])
    assert code == 0, out
    entry = UsersFile.load(initialised.parent / "users.toml").get_user("carol@example.test")
    assert entry is not None and passwords.verify_sync(entry.password, "t3rm")


def test_user_commands_refuse_bad_input_with_one_line(initialised: Path) -> None:
    c = str(initialised)
    assert_one_line_error(mh("-c", c, "user", "add", "alice@example.test", stdin="\n"), 1,
                          "empty password refused")
    assert_one_line_error(mh("-c", c, "user", "add", "alice@elsewhere.test", stdin="pw\n"), 1,
                          "alice@elsewhere.test: domain elsewhere.test is not one of this server's domains "
                          "(example.test)")
    assert_one_line_error(mh("-c", c, "user", "add", "nodomain", stdin="pw\n"), 1,
                          "'nodomain': expected an address like alice@example.org")
    assert mh("-c", c, "user", "add", "alice@example.test", stdin="pw\n").returncode == 0
    assert_one_line_error(mh("-c", c, "user", "add", "ALICE@example.test", stdin="pw\n"), 1,
                          "user alice@example.test already exists")
    assert_one_line_error(mh("-c", c, "user", "passwd", "nobody@example.test", stdin="pw\n"), 1,
                          "no such user: nobody@example.test")
    assert_one_line_error(mh("-c", c, "user", "del", "nobody@example.test"), 1,
                          "no such user: nobody@example.test")
    assert mh("-c", c, "user", "list").stdout == "alice@example.test\n"


def test_alias_add_list_del(initialised: Path) -> None:
    c = str(initialised)
    assert mh("-c", c, "user", "add", "alice@example.test", stdin="pw\n").returncode == 0
    assert mh("-c", c, "user", "add", "bob@example.test", stdin="pw\n").returncode == 0
    r = mh("-c", c, "alias", "add", "team@example.test", "alice@example.test", "bob@example.test")
    assert (r.returncode, r.stdout) == (0, "alias team@example.test -> alice@example.test, bob@example.test\n")
    assert mh("-c", c, "alias", "add", "postmaster@example.test", "alice@example.test").returncode == 0
    assert mh("-c", c, "alias", "list").stdout == (  # user add gave the first user the role aliases
        "abuse@example.test -> postmaster@example.test\n"
        "postmaster@example.test -> alice@example.test\n"
        "team@example.test -> alice@example.test, bob@example.test\n")
    # local and remote targets mixed (forwarding, issue 13 item 2): the remote ones are named
    r = mh("-c", c, "alias", "add", "fwd@example.test", "alice@example.test", "someone@Elsewhere.test")
    assert (r.returncode, r.stdout) == (0, "alias fwd@example.test -> alice@example.test, someone@elsewhere.test\n"
                                        "forwarded to other servers (sender rewritten with SRS): "
                                        "someone@elsewhere.test\n")
    assert "fwd@example.test -> alice@example.test, someone@elsewhere.test\n" in mh("-c", c, "alias", "list").stdout
    assert_one_line_error(mh("-c", c, "alias", "add", "fwd2@example.test", "someone@[192.0.2.1]"), 1,
                          "someone@[192.0.2.1]: an address literal cannot be a forwarding target")
    assert mh("-c", c, "alias", "del", "fwd@example.test").returncode == 0
    assert_one_line_error(mh("-c", c, "alias", "add", "alice@example.test", "bob@example.test"), 1,
                          "alice@example.test is a user")
    assert mh("-c", c, "alias", "del", "team@example.test").returncode == 0
    assert mh("-c", c, "alias", "list").stdout == (
        "abuse@example.test -> postmaster@example.test\npostmaster@example.test -> alice@example.test\n")
    assert_one_line_error(mh("-c", c, "alias", "del", "team@example.test"), 1,
                          "no such alias: team@example.test")


@pytest.mark.parametrize("command", [["check-config"], ["user", "list"], ["alias", "list"], ["serve"],
                                     ["user", "add", "x@example.test"]])
def test_config_errors_are_one_line_exit_2_without_traceback(tmp_path: Path, command: list[str]) -> None:
    path = app_config_file(tmp_path, None)
    path.write_text(path.read_text().replace("port = 40005", 'port = "abc"'))
    r = mh("-c", str(path), *command, stdin="pw\n")
    assert_one_line_error(r, 2, 'listeners.imap.port: expected an integer 1-65535, got "abc"')


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert_one_line_error(mh("-c", str(missing), "check-config"), 2, f"{missing}: file not found")


def test_check_config_reports_a_broken_users_file(initialised: Path) -> None:
    users = initialised.parent / "users.toml"
    users.write_text('[users."alice@example.test"]\npassword = "plain"\n')
    r = mh("-c", str(initialised), "check-config")
    assert r.returncode == 2 and r.stderr.startswith(f"mailhaven: {users}: users.\"alice@example.test\".password: ")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_mailhaven_config_environment_variable_is_the_default_config(initialised: Path) -> None:
    r = mh("check-config", env={**ENV, "MAILHAVEN_CONFIG": str(initialised)})
    assert (r.returncode, r.stdout) == (0, "OK\n")


def test_default_config_path_is_etc_mailhaven() -> None:
    from mailhaven.cli import build_parser

    env = os.environ.pop("MAILHAVEN_CONFIG", None)
    try:
        assert build_parser().parse_args(["check-config"]).config == "/etc/mailhaven/mailhaven.toml"
    finally:
        if env is not None:
            os.environ["MAILHAVEN_CONFIG"] = env


# --- -c FILE after the command (issue 2: `mailhaven check-config -c FILE`) ---------------------


@pytest.mark.parametrize("option", ["-c", "--config"])
def test_check_config_takes_the_config_after_the_command(initialised: Path, option: str) -> None:
    r = mh("check-config", option, str(initialised))
    assert (r.returncode, r.stdout, r.stderr) == (0, "OK\n", "")


def test_config_after_the_command_wins_over_the_one_before(initialised: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    r = mh("-c", str(missing), "check-config", "-c", str(initialised))
    assert (r.returncode, r.stdout) == (0, "OK\n"), r.stderr
    # ...and the other way round, so it is the position that decides, not which file exists.
    assert_one_line_error(mh("-c", str(initialised), "check-config", "-c", str(missing)), 2,
                          f"{missing}: file not found")


def test_user_commands_take_the_config_after_the_command(initialised: Path) -> None:
    c = str(initialised)
    r = mh("user", "add", "alice@example.test", "-c", c, stdin="pw\n")
    assert (r.returncode, r.stderr) == (0, "")
    assert mh("user", "-c", c, "add", "bob@example.test", stdin="pw\n").returncode == 0
    r = mh("user", "list", "-c", c)
    assert (r.returncode, r.stdout) == (0, "alice@example.test\nbob@example.test\n")
    r = mh("alias", "add", "team@example.test", "alice@example.test", "bob@example.test", "--config", c)
    assert r.returncode == 0, r.stderr
    assert mh("alias", "list", "-c", c).stdout.endswith("team@example.test -> alice@example.test, bob@example.test\n")


@pytest.mark.parametrize(("argv", "expected"), [
    (["queue", "list", "-c", "/x.toml"], {"command": "queue", "action": "list", "id": None}),
    (["queue", "show", "Q1", "--config", "/x.toml"], {"action": "show", "id": "Q1"}),
    (["-c", "/other.toml", "queue", "retry", "Q1", "-c", "/x.toml"], {"action": "retry", "id": "Q1"}),
    (["dkim", "keygen", "example.org", "-c", "/x.toml"], {"dkim_command": "keygen", "domain": "example.org"}),
    (["dkim", "-c", "/x.toml", "keygen", "example.org"], {"dkim_command": "keygen", "domain": "example.org"}),
    (["user", "add", "a@example.org", "-c", "/x.toml"], {"action": "add", "address": "a@example.org"}),
    (["doctor", "example.org", "-c", "/x.toml"], {"domains": ["example.org"]}),
    (["health", "imap", "--timeout", "2", "-c", "/x.toml"], {"listeners": ["imap"], "timeout": 2.0}),
    (["dns", "-c", "/x.toml", "example.org"], {"domains": ["example.org"]}),
    (["serve", "--dev", "-c", "/x.toml"], {"dev": True}),
    (["init", "--domain", "example.org", "-c", "/x.toml"], {"domain": "example.org"}),
    (["-c", "/x.toml", "init", "--domain", "example.org"], {"domain": "example.org"}),
])
def test_every_command_parses_the_config_before_or_after_it(argv: list[str], expected: dict[str, object]) -> None:
    from mailhaven.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.config == "/x.toml"
    assert {k: getattr(args, k) for k in expected} == expected
    # The same command with -c in front, the form scripts already use, still parses the same way.
    if argv[0] != "-c":
        first = [a for a in argv if a not in ("-c", "--config", "/x.toml", "/other.toml")]
        assert vars(build_parser().parse_args(["-c", "/x.toml", *first])) == vars(args)


# --- serve ---------------------------------------------------------------------------------------


class Proc:
    """A server subprocess whose stdout and stderr lines are collected by threads."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "mailhaven", *args], cwd=cwd, env=ENV, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.err_lines: list[str] = []
        for stream, q in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, q), daemon=True).start()

    @staticmethod
    def _pump(stream: object, q: queue.Queue[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            q.put(line)

    def wait_line(self, q: queue.Queue[str], pattern: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.p.poll() is not None and q.empty()):
                raise AssertionError(f"no line matching {pattern!r}; stderr so far: {self.err_lines}")
            try:
                line = q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if q is self.err:
                self.err_lines.append(line)
            if re.search(pattern, line):
                return line

    def drain_err(self) -> list[str]:
        while True:
            try:
                self.err_lines.append(self.err.get_nowait())
            except queue.Empty:
                return self.err_lines

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=30)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _dev_banner(proc: Proc) -> dict[str, str]:
    lines: dict[str, str] = {}
    while True:
        line = proc.wait_line(proc.out, r".")
        if line.startswith("Stop with"):
            return lines
        m = re.match(r"^\s+(\S+)\s+(.*)$", line)
        if m:
            lines[m.group(1)] = m.group(2).strip()


# The dev ports served over implicit TLS (RFC 8314) and the start of each one's greeting.
IMPLICIT_TLS_GREETINGS = {"submissions": b"220 ", "pop3s": b"+OK", "imaps": b"* OK"}


def _tls_greeting(port: int, cert: Path) -> bytes:
    """Handshake with 127.0.0.1:port verifying the server against `cert` (self-signed, for
    localhost and 127.0.0.1), and return the first line the server sends."""
    ctx = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        line = b""
        while not line.endswith(b"\n"):
            chunk = tls.recv(1024)
            if not chunk:
                break
            line += chunk
        return line


def test_serve_dev_needs_no_files_prints_the_account_and_stops_on_sigterm(tmp_path: Path) -> None:
    busy = [p for p in config.DEV_PORTS.values() if not _port_free(p)]
    if busy:
        pytest.skip(f"dev ports in use on this machine: {busy}")
    proc = Proc(["serve", "--dev"], cwd=tmp_path)
    try:
        banner = _dev_banner(proc)
        assert banner["account"] == "dev@example.test"
        password = banner["password"]
        assert len(password) >= 12
        assert banner["data"] == str(tmp_path / "mailhaven-dev" / "data")
        serving = {name: banner[name] for name in config.DEV_PORTS if not banner[name].startswith("(")}
        for name, where in serving.items():
            assert where == f"127.0.0.1 port {config.DEV_PORTS[name]}"
            with socket.create_connection(("127.0.0.1", config.DEV_PORTS[name]), timeout=5):
                pass
        # The implicit-TLS ports speak TLS with the certificate serve --dev wrote, then greet.
        cert = tmp_path / "mailhaven-dev" / "tls" / "cert.pem"
        implicit = [name for name in IMPLICIT_TLS_GREETINGS if name in serving]
        for name in implicit:
            assert _tls_greeting(config.DEV_PORTS[name], cert).startswith(IMPLICIT_TLS_GREETINGS[name]), name
        entry = UsersFile.load(tmp_path / "mailhaven-dev" / "users.toml").get_user("dev@example.test")
        assert entry is not None and passwords.verify_sync(entry.password, password)
    finally:
        code = proc.stop()
    assert code == 0, proc.drain_err()
    assert not any("Traceback" in line for line in proc.drain_err())
    # A restart keeps the password (and prints it again).
    proc = Proc(["serve", "--dev"], cwd=tmp_path)
    try:
        assert _dev_banner(proc)["password"] == password
    finally:
        assert proc.stop() == 0


def test_serve_keeps_running_on_sighup_with_a_broken_config_and_logs_one_line(tmp_path: Path) -> None:
    data = app_config_data(tmp_path, None)
    for lc in data["listeners"].values():
        lc["port"] = free_port()
    path = app_config_file(tmp_path, None)
    write_config(path, data)
    proc = Proc(["-c", str(path), "serve"], cwd=tmp_path)
    try:
        proc.wait_line(proc.err, r"ready: \d+ listener")
        path.write_text("bogus = 1\n" + path.read_text())
        proc.p.send_signal(signal.SIGHUP)
        proc.wait_line(proc.err, r"reload failed")
        time.sleep(0.3)
        assert proc.p.poll() is None
        failures = [line for line in proc.drain_err() if "reload failed" in line]
        assert len(failures) == 1
        assert failures[0].rstrip("\n").endswith("reload failed, keeping the running config: bogus: unknown key")
        # Still serving whatever listeners this build has.
        for name, lc in data["listeners"].items():
            if any(f"listening: {name} " in line for line in proc.err_lines):
                with socket.create_connection(("127.0.0.1", lc["port"]), timeout=5):
                    pass
        write_config(path, data)  # fixed again: the next SIGHUP reloads
        proc.p.send_signal(signal.SIGHUP)
        proc.wait_line(proc.err, r"reloaded ")
    finally:
        code = proc.stop()
    assert code == 0, proc.drain_err()


def test_serve_with_a_taken_port_fails_with_one_line_exit_1(tmp_path: Path) -> None:
    data = app_config_data(tmp_path, None)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        port = blocker.getsockname()[1]
        for lc in data["listeners"].values():
            lc["port"] = free_port()
        data["listeners"]["mx"]["port"] = port
        path = app_config_file(tmp_path, None)
        write_config(path, data)
        r = mh("-c", str(path), "serve")
        assert r.returncode == 1
        assert r.stderr.splitlines()[-1] == (f"mailhaven: listeners.mx: cannot listen on 127.0.0.1 port {port}: "
                                             "Address already in use")
        assert "Traceback" not in r.stderr
    finally:
        blocker.close()
