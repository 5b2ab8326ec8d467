"""systemd/mailhaven.service: `systemd-analyze verify` accepts it, it keeps the settings issue 7 asks
for, its exposure score stays low, and the server works inside the unit's sandbox (seccomp system
call filter, MemoryDenyWriteExecute, address families, umask), replayed without systemd by
test_service_support.sandbox_prefix().

CI needs the Debian package `systemd` (systemd-analyze, libseccomp2); the tests skip without it.
"""

from __future__ import annotations

import os
import poplib
import re
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_server import app_config_data, write_config
from tests.integration.test_service_support import (
    UNIT,
    NotifySocket,
    Server,
    base_env,
    can_run_python_as,
    free_port,
    open_dir,
    proc_status,
    sandbox_prefix,
    system_user,
    unit_settings,
)

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (Debian package systemd)")
UNIT_EXEC = "/usr/local/bin/mailhaven"


def unit_copy(folder: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this environment's `mailhaven` (the console script next to
    this interpreter, whatever PATH says) when /usr/local/bin has none (verify insists that the
    binary exists)."""
    text = text if text is not None else UNIT.read_text()
    if not os.path.exists(UNIT_EXEC):
        exe = Path(sys.executable).parent / "mailhaven"
        assert exe.is_file(), f"the mailhaven console script is not installed next to {sys.executable}"
        text = text.replace(UNIT_EXEC, str(exe))
    path = folder / "mailhaven.service"
    path.write_text(text)
    return path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE
    return subprocess.run([ANALYZE, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    r = verify(unit_copy(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "mailhaven.service" not in r.stdout + r.stderr, r.stdout + r.stderr


@needs_analyze
def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """Negative control: the verify test above is not vacuous."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    r = verify(unit_copy(tmp_path, broken))
    assert re.search(r"Unknown key( name)? 'ProtectSystm'", r.stdout + r.stderr)
    missing = UNIT.read_text().replace(UNIT_EXEC, "/nonexistent/mailhaven")
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "mailhaven.service"
    path.write_text(missing)
    assert verify(path).returncode != 0


def test_unit_declares_notify_user_capability_directories_hardening_reload_and_no_restart_loop() -> None:
    s = {k: v[-1] for k, v in unit_settings().items()}
    expected = {
        "Type": "notify", "NotifyAccess": "main", "User": "mailhaven", "Group": "mailhaven",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "StateDirectory": "mailhaven", "StateDirectoryMode": "0700", "ConfigurationDirectory": "mailhaven",
        "UMask": "0077", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "NoNewPrivileges": "yes", "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallArchitectures": "native",
        "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
        "ExecReload": "/bin/kill -HUP $MAINPID", "RestartPreventExitStatus": "2", "Restart": "on-failure",
        "KillSignal": "SIGTERM",
    }
    assert {k: s.get(k) for k in expected} == expected
    assert unit_settings()["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert re.fullmatch(r"/usr/local/bin/mailhaven -c /etc/mailhaven/mailhaven\.toml serve", s["ExecStart"])
    # systemd must wait longer than the default shutdown_deadline (30 s) before SIGKILL.
    assert int(s["TimeoutStopSec"]) > 30
    assert s["Install.WantedBy"] == "multi-user.target"


@needs_analyze
def test_unit_security_exposure_stays_low(tmp_path: Path) -> None:
    assert ANALYZE
    r = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(unit_copy(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for mailhaven\.service: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


# --- the unit's sandbox, replayed ----------------------------------------------------------------


def _sandbox_available() -> str | None:
    if ANALYZE is None:
        return "systemd-analyze not installed"
    try:
        import ctypes

        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp.so.2 not installed"
    if tuple(int(x) for x in os.uname().release.split(".")[:2] if x.isdigit()) < (6, 3):
        return "Linux < 6.3 has no PR_SET_MDWE"
    return None


needs_sandbox = pytest.mark.skipif(_sandbox_available() is not None, reason=str(_sandbox_available()))


def in_sandbox(code: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*sandbox_prefix(user=user), sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120, env=base_env(), cwd="/")


@needs_sandbox
def test_sandbox_really_refuses_what_the_unit_forbids() -> None:
    """Negative control: inside the replayed sandbox, W+X memory, raw sockets, setgroups and CPU
    affinity changes fail, and new files are private; so the tests below prove something."""
    code = r"""
import mmap, os, socket, errno
def refused(fn):
    try:
        fn()
    except OSError as e:
        return e.errno
    return 0
print("wx", refused(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)))
print("packet", refused(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)))
print("netlink", refused(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)))
print("inet", refused(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()))
print("setgroups", refused(lambda: os.setgroups([])))
print("affinity", refused(lambda: os.sched_setaffinity(0, {0})))
print("umask", oct(os.umask(0)))
"""
    r = in_sandbox(code)
    assert r.returncode == 0, r.stderr
    got = dict(line.split() for line in r.stdout.splitlines())
    assert got["wx"] != "0" and got["packet"] != "0" and got["netlink"] != "0"
    assert got["setgroups"] == str(1) and got["affinity"] == str(1)  # EPERM: SystemCallErrorNumber
    assert got["inet"] == "0"
    assert got["umask"] == "0o77"


@needs_sandbox
def test_native_extensions_work_under_memory_deny_write_execute() -> None:
    """argon2-cffi, cryptography, pynacl (ed25519 DKIM), dkimpy RSA, _ssl and _sqlite3 inside the
    sandbox: none of them needs writable+executable memory, so MemoryDenyWriteExecute=yes is safe."""
    code = r"""
import asyncio, sqlite3, ssl
import argon2
from mailhaven.policy import dkim
h = argon2.PasswordHasher()
assert h.verify(h.hash("pw"), "pw")
msg = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: t\r\n\r\nbody\r\n"
for gen, alg in ((lambda: dkim.generate_rsa(1024), "rsa-sha256"), (dkim.generate_ed25519, "ed25519-sha256")):
    pem, record = gen()
    sig = asyncio.run(dkim.sign(msg, "example.test", "s1", pem, algorithm=alg))
    assert sig.startswith(b"DKIM-Signature:"), sig
db = sqlite3.connect(":memory:")
db.execute("create table t(x)")
ssl.create_default_context()
print("ok")
"""
    r = in_sandbox(code)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr


@pytest.fixture
def sandbox_user() -> Iterator[str | None]:
    """A system user to run as inside the sandbox (like User=mailhaven), or None (stay root) when
    this interpreter is not readable by other users (pyenv under /root)."""
    if os.geteuid() != 0:
        yield None
        return
    with system_user() as (name, uid, gid):
        yield name if can_run_python_as(uid, gid) else None


@needs_sandbox
def test_server_starts_serves_reloads_and_stops_inside_the_units_sandbox(
        tls_files: tuple[Path, Path], sandbox_user: str | None) -> None:
    from mailhaven.auth.passwords import hash_password
    from mailhaven.auth.users import UsersFile

    with open_dir() as folder:
        cert, key = shutil.copy(tls_files[0], folder / "cert.pem"), shutil.copy(tls_files[1], folder / "key.pem")
        data = app_config_data(folder, (Path(cert), Path(key)))
        ports = {name: free_port() for name in data["listeners"]}
        for name, lc in data["listeners"].items():
            lc["port"] = ports[name]
        path = write_config(folder / "mailhaven.toml", data)
        with UsersFile.edit(folder / "users.toml") as uf:
            uf.add_user("alice@example.test", hash_password("correct horse"))  # real argon2 cost
        (folder / "data").mkdir(mode=0o700)
        if sandbox_user:
            import pwd

            pw = pwd.getpwnam(sandbox_user)
            for p in (folder / "data", folder / "users.toml", Path(key), folder):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        notify = NotifySocket(folder)
        env = base_env(NOTIFY_SOCKET=str(notify.path))
        env.pop("MAILHAVEN_FAST_HASH")
        server = Server(path, env=env, prefix=sandbox_prefix(user=sandbox_user), cwd=Path("/"))
        try:
            assert notify.next_state()["READY"] == "1"
            server.ready()
            assert "pop3" in server.serving() and "pop3s" in server.serving()
            if sandbox_user:
                import pwd

                uid = str(pwd.getpwnam(sandbox_user).pw_uid)
                assert proc_status(server.pid)["Uid"].split() == [uid] * 4
            assert proc_status(server.pid)["NoNewPrivs"] == "1"
            assert proc_status(server.pid)["Seccomp"] == "2"  # filter mode
            tls = ssl.create_default_context()
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
            box = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], context=tls, timeout=10)
            box.user("alice@example.test")
            box.pass_("correct horse")
            assert box.stat() == (0, 0)
            plain = poplib.POP3("127.0.0.1", ports["pop3"], timeout=10)
            assert plain.getwelcome().startswith(b"+OK")
            plain.quit()
            server.signal(signal.SIGHUP)
            assert notify.next_state()["RELOADING"] == "1"
            assert notify.next_state()["READY"] == "1"
            server.wait_for(r"reloaded ")
            assert box.stat() == (0, 0)  # the session outlived the reload
            box.quit()
            assert server.stop() == 0, server.log()
            assert notify.next_state()["STOPPING"] == "1"
            # Whatever it created is private (UMask=0077).
            for p in (folder / "data").rglob("*"):
                assert p.stat().st_mode & 0o077 == 0, p
        finally:
            server.kill()
            notify.close()
        assert "Traceback" not in server.log()
        assert "Operation not permitted" not in server.log()
