"""docs/production.md runs as written: its ```sh blocks are read from the document itself and run in
order, as root, with `bash -euo pipefail`, so the test breaks when the guide drifts from the code.

How the guide maps onto a test machine (the guide's own top comment says the same):
- Paths: /etc/mailhaven, /var/lib/mailhaven, /usr/local/bin, /etc/systemd/system and /etc/rspamd
  (with Debian's empty local.d/) become folders of a temporary directory (plain textual substitution); /opt/mailhaven becomes this test's own
  virtualenv (the guide's `pip install` block is marked skip). No run block may name another
  system path, so the test never writes outside its folder.
- Markers: a block preceded by `<!-- guide-test: skip (why) -->` is not run. At
  `<!-- guide-test: start ... -->` (the `systemctl enable --now` block) the test does what systemd
  would: it reads the unit the guide installed, moves the listeners to 127.0.0.1 on free ports and
  points `[dns] nameservers` at the tests' DNS server (port 25 may be taken, and no real DNS), then
  runs ExecStart= as User=/Group= with setpriv (UMask=, Environment=, the ambient capability, and
  NOTIFY_SOCKET: Type=notify, so it waits for READY=1). Later blocks run against that server.
- Input: each block gets one line on stdin, the password `user add` reads when stdin is no terminal.
- Output: a `# prints TEXT` comment on a command line is checked: the block's output holds TEXT.
- The system user `mailhaven`: the guide creates it when missing; the test deletes it afterwards
  only if it did not exist before.
After the last block: the records `mailhaven dns` printed are published in the tests' DNS server
(the guide says to publish exactly those); a message goes in over the MX for the user the guide
created and one for the alias it made, and the user sends one to themself over submissions (465,
AUTH over TLS); all three are read back over IMAP (TLS, trusting the certificate `init` made), and
the submitted one carries a DKIM signature that verifies against the published record, so the
service user could read the DKIM key. Then a reload (SIGHUP, as `systemctl reload` sends) must
succeed as the service user (RELOADING=1, then READY=1, and "reloaded" in the log), and SIGTERM
must stop the server with exit status 0.

Needs root (useradd, chown, setpriv); skipped with a reason otherwise. CI (.ci/run) runs as root.
"""

from __future__ import annotations

import asyncio
import email
import imaplib
import os
import pwd
import re
import shlex
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailhaven.dns.resolver import Resolver
from mailhaven.policy import dkim
from tests.dnsserver import DnsServer
from tests.integration.test_dkim_dns_cli import txt_value, zone
from tests.integration.test_service_support import (
    REPO,
    NotifySocket,
    base_env,
    can_run_python_as,
    loopback_free_ports,
    open_dir,
    proc_status,
    unit_settings,
)

GUIDE = REPO / "docs" / "production.md"
PASSWORD = "Guide-Test-Pass-1"
SERVICE_USER = "mailhaven"
_MARKER = re.compile(r"^<!--\s*guide-test:\s*(skip|start)\b(.*?)-->\s*$")
_PRINTS = re.compile(r"#\s*prints\s+(\S.*?)\s*$", re.MULTILINE)
# Absolute paths a run block may name after substitution only inside the test's folder.
_SYSTEM_PATH = re.compile(r"(?<![\w./-])/(?:etc|var|opt|usr/local|srv|home|root)/")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    kind: str  # "run", "skip" or "start"
    text: str
    why: str = ""


def guide_blocks(text: str) -> list[Block]:
    """The ```sh blocks of a Markdown text, each with the marker comment just before it (if any)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    last = ""  # the last non-blank line outside a fence
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if line[3:].strip() == "sh":
                m = _MARKER.match(last.strip())
                kind, why = (m.group(1), m.group(2).strip(" ()")) if m else ("run", "")
                blocks.append(Block(i + 1, kind, "\n".join(lines[i + 1:end]) + "\n", why))
            last, i = "", end + 1
            continue
        if line.strip():
            last = line
        i += 1
    return blocks


def path_map(root: Path) -> dict[str, str]:
    """Guide path -> test path (see the module docstring)."""
    return {"/etc/mailhaven": str(root / "etc" / "mailhaven"),
            "/var/lib/mailhaven": str(root / "var" / "lib" / "mailhaven"),
            "/usr/local/bin/": str(root / "usr" / "local" / "bin") + "/",
            "/etc/systemd/system/": str(root / "etc" / "systemd" / "system") + "/",
            "/etc/rspamd": str(root / "etc" / "rspamd"),
            "/opt/mailhaven": sys.prefix}


def substitute(text: str, mapping: dict[str, str]) -> str:
    pattern = re.compile("|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)))
    return pattern.sub(lambda m: mapping[m.group(0)], text)


# --- the document's shape (no root needed) -------------------------------------------------------


def test_guide_blocks_are_found_with_their_markers() -> None:
    doc = ("# T\n\n```sh\necho one\n```\n\n<!-- guide-test: skip (no network) -->\n```sh\napt-get x\n```\n"
           "text\n<!-- guide-test: start (systemd) -->\n\n```sh\nsystemctl start x\n```\n"
           "```toml\na = 1\n```\nprose\n```sh\nmailhaven health   # prints ok\n```\n")
    blocks = guide_blocks(doc)
    assert [(b.kind, b.why, b.text) for b in blocks] == [
        ("run", "", "echo one\n"), ("skip", "no network", "apt-get x\n"), ("start", "systemd", "systemctl start x\n"),
        ("run", "", "mailhaven health   # prints ok\n")]
    assert _PRINTS.findall(blocks[-1].text) == ["ok"]


def test_the_guide_has_one_start_point_and_runs_init_check_config_and_user_add() -> None:
    blocks = guide_blocks(GUIDE.read_text())
    assert [b.kind for b in blocks].count("start") == 1
    run = "".join(b.text for b in blocks if b.kind == "run")
    for needed in ("init --domain", "--run-as-user mailhaven", "check-config", "user add", "cp systemd/mailhaven.service"):
        assert needed in run, needed
    assert all(b.why for b in blocks if b.kind != "run"), "every skip/start marker says why"
    root = Path("/nonexistent-root")
    for b in blocks:
        if b.kind == "run":
            assert not _SYSTEM_PATH.search(substitute(b.text, path_map(root))), (
                f"docs/production.md line {b.line}: a path the test does not map: teach path_map()\n{b.text}")


# --- the guide, executed -------------------------------------------------------------------------


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates the system user mailhaven, gives it files and runs the server as it (CI runs as root)"
    for tool in ("useradd", "userdel", "setpriv", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    nobody = pwd.getpwnam("nobody")
    if not can_run_python_as(nobody.pw_uid, nobody.pw_gid):
        return f"another user cannot run {sys.executable} and import mailhaven (an interpreter under /root?)"
    return None


@pytest.fixture
def service_user_cleanup() -> Iterator[None]:
    """Delete the user `mailhaven` (and its group) afterwards, if it did not exist before."""
    try:
        pwd.getpwnam(SERVICE_USER)
        existed = True
    except KeyError:
        existed = False
    yield
    if not existed:
        subprocess.run(["userdel", SERVICE_USER], capture_output=True)
        subprocess.run(["groupdel", SERVICE_USER], capture_output=True)


class Unit:
    """The installed unit's ExecStart= run as systemd would run it (see the module docstring)."""

    def __init__(self, unit: Path, mapping: dict[str, str], notify: NotifySocket, log: Path) -> None:
        s = {k: v[-1] for k, v in unit_settings(unit).items()}
        argv = shlex.split(substitute(s["ExecStart"], mapping))
        caps = [c.lower().removeprefix("cap_") for c in s.get("AmbientCapabilities", "").split()]
        prefix = ["setpriv", f"--reuid={s['User']}", f"--regid={s['Group']}", "--init-groups"]
        if caps:
            prefix += [f"--inh-caps=+{','.join(caps)}", f"--ambient-caps=+{','.join(caps)}"]
        env = base_env(NOTIFY_SOCKET=str(notify.path))
        for assignment in unit_settings(unit).get("Environment", []):
            key, _, value = assignment.partition("=")
            env[key] = value
        self.user = s["User"]
        self.log = log
        self._log_file = log.open("w")
        self.p = subprocess.Popen([*prefix, "--", *argv], env=env, cwd="/", stdin=subprocess.DEVNULL,
                                  stdout=self._log_file, stderr=subprocess.STDOUT, umask=int(s.get("UMask", "0022"), 8))

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=90)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()
            self._log_file.close()


def _wait_ready(notify: NotifySocket, unit: Unit) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if unit.p.poll() is not None:
            raise AssertionError(f"the server exited ({unit.p.returncode}):\n{unit.log.read_text()}")
        try:
            if notify.next_state(timeout=1).get("READY") == "1":
                return
        except TimeoutError:
            continue
    raise AssertionError(f"no READY=1 in 90 s:\n{unit.log.read_text()}")


def _publish(dns_server: DnsServer, zone_text: str) -> None:
    """Every record `mailhaven dns` printed, into the tests' DNS server."""
    records = zone(zone_text, origin="")  # the root: every name printed is absolute
    assert any(owner.split(".")[1:2] == ["_domainkey"] for owner, _ in records), zone_text
    for (owner, rtype), values in records.items():
        for value in values:
            dns_server.add(owner, rtype, txt_value(value) if rtype == "TXT" else value)


def _read_inbox(port: int, tls: ssl.SSLContext, user: str, count: int) -> dict[str, bytes]:
    """Subject -> whole message of the user's INBOX over IMAPS, once it holds `count` messages."""
    imap = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls, timeout=30)
    imap.login(user, PASSWORD)
    messages: dict[str, bytes] = {}
    deadline = time.monotonic() + 30
    while len(messages) < count and time.monotonic() < deadline:
        imap.select("INBOX")
        _, data = imap.search(None, "ALL")
        messages = {}
        for num in data[0].split():
            _, parts = imap.fetch(num, "(BODY.PEEK[])")
            raw = parts[0][1]  # type: ignore[index]
            messages[str(email.message_from_bytes(raw)["Subject"])] = raw
        time.sleep(0.2)
    imap.logout()
    return messages


def _message(subject: str, to: str) -> bytes:
    return (f"From: someone@example.net\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@example.net>\r\n\r\nHello from the guide test.\r\n").encode()


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
@pytest.mark.timeout(600)
def test_the_production_guide_runs_as_written(service_user_cleanup: None, dns_server: DnsServer) -> None:
    blocks = guide_blocks(GUIDE.read_text())
    real = [Path(p) for p in ("/etc/mailhaven", "/var/lib/mailhaven", "/usr/local/bin/mailhaven",
                              "/etc/systemd/system/mailhaven.service")]
    before = {p: p.exists() for p in real}
    try:
        _run_guide(blocks, dns_server)
    finally:
        # Nothing the guide names may have been made on this machine: only in the test's folder.
        assert {p: p.exists() for p in real} == before


def _run_guide(blocks: list[Block], dns_server: DnsServer) -> None:
    with open_dir("mailhaven-guide-") as root:
        mapping = path_map(root)
        for folder in ("etc/systemd/system", "etc/rspamd/local.d", "var/lib", "usr/local/bin", "run"):  # what Debian has
            (root / folder).mkdir(parents=True, exist_ok=True, mode=0o755)
        (root / "run").chmod(0o755)
        config = Path(mapping["/etc/mailhaven"]) / "mailhaven.toml"
        env = base_env(PATH=f"{root / 'usr' / 'local' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        outputs: list[str] = []
        unit: Unit | None = None
        notify = NotifySocket(root / "run")
        ports: dict[str, int] = {}
        try:
            for block in blocks:
                where = f"docs/production.md line {block.line}"
                if block.kind == "skip":
                    continue
                if block.kind == "start":
                    ports = loopback_free_ports(config)
                    with config.open("a") as f:
                        f.write(f'\n[dns]\nnameservers = ["{dns_server.nameserver}"]\ntimeout = 2\n')
                    installed = Path(mapping["/etc/systemd/system/"]) / "mailhaven.service"
                    assert installed.is_file(), f"{where}: the guide did not install the unit before starting it"
                    unit = Unit(installed, mapping, notify, root / "server.log")
                    _wait_ready(notify, unit)
                    continue
                script = substitute(block.text, mapping)
                r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], input=PASSWORD + "\n",
                                   capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
                out = r.stdout + r.stderr
                assert r.returncode == 0, f"{where} failed ({r.returncode}):\n{script}\n{out}"
                for expected in _PRINTS.findall(block.text):
                    assert expected in out, f"{where}: expected {expected!r} in the output:\n{out}"
                outputs.append(out)
                if re.search(r"\sdns\s*$", block.text.strip()):
                    _publish(dns_server, r.stdout)
            assert unit is not None, "the guide never starts the server"
            # The server runs as the unit's user, which the guide created.
            assert proc_status(unit.p.pid)["Uid"].split()[0] == str(pwd.getpwnam(unit.user).pw_uid)
            # init said what it gave the service user.
            assert any(f"gave {SERVICE_USER} read access" in out for out in outputs), outputs
            run_text = "".join(b.text for b in blocks if b.kind == "run")
            [user] = re.findall(r"user add (\S+@\S+)", run_text)
            aliases = re.findall(r"alias add (\S+@\S+) " + re.escape(user), run_text)
            for i, rcpt in enumerate([user, *aliases]):
                with smtplib.SMTP("127.0.0.1", ports["mx"], timeout=30) as smtp:
                    assert smtp.sendmail("someone@example.net", [rcpt], _message(f"guide-{i}", rcpt)) == {}
            tls = ssl.create_default_context(cafile=str(Path(mapping["/etc/mailhaven"]) / "tls" / "cert.pem"))
            tls.check_hostname = False  # the certificate names mail.example.org, we dial 127.0.0.1
            with smtplib.SMTP_SSL("127.0.0.1", ports["submissions"], context=tls, timeout=30) as smtp:
                smtp.login(user, PASSWORD)
                sent = _message("guide-signed", user).replace(b"From: someone@example.net", f"From: {user}".encode())
                assert smtp.sendmail(user, [user], sent) == {}
            expected = {f"guide-{i}" for i in range(1 + len(aliases))} | {"guide-signed"}
            got = _read_inbox(ports["imaps"], tls, user, len(expected))
            assert set(got) == expected
            results = asyncio.run(dkim.verify(Resolver([dns_server.nameserver], timeout=2), got["guide-signed"]))
            domain = user.partition("@")[2]
            assert [(r.result, r.domain) for r in results] == [("pass", domain)], results
            # A reload, as systemctl reload sends it, runs as the service user and reads everything again.
            unit.p.send_signal(signal.SIGHUP)
            assert notify.next_state(timeout=30).get("RELOADING") == "1"
            assert notify.next_state(timeout=30).get("READY") == "1"
            assert "reloaded " in unit.log.read_text() and "reload failed" not in unit.log.read_text()
            for p in Path(mapping["/var/lib/mailhaven"]).rglob("*"):
                assert p.stat().st_uid == pwd.getpwnam(SERVICE_USER).pw_uid and p.stat().st_mode & 0o077 == 0, p
            assert unit.stop() == 0, unit.log.read_text()
        finally:
            if unit is not None:
                unit.stop()
            notify.close()
