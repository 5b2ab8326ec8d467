"""Helpers for the service tests (test_service_*.py): a `mailhaven serve` subprocess with its log
lines, a systemd notify socket, a temporary system user, a config `init` wrote moved to loopback on
free ports, and a sandbox that replays the systemd unit's restrictions without systemd. No tests
live here.

The sandbox (`python test_service_support.py sandbox --unit FILE [--user NAME] -- CMD...`) reads the
unit's settings and applies them to itself before exec'ing CMD, the way systemd would:
  UMask=, NoNewPrivileges=yes (prctl PR_SET_NO_NEW_PRIVS), MemoryDenyWriteExecute=yes (the kernel's
  own prctl PR_SET_MDWE, Linux >= 6.3), SystemCallFilter= allow/deny lists (expanded by
  `systemd-analyze syscall-filter`, loaded with libseccomp; denied calls fail with
  SystemCallErrorNumber=), RestrictAddressFamilies= (socket() with any other family fails).
It imports only the standard library, so it runs with any Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "mailhaven.service"


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAILHAVEN_CONFIG", "NOTIFY_SOCKET", "JOURNAL_STREAM", "PYTEST_CURRENT_TEST")}
    env.update({"PYTHONUNBUFFERED": "1", "MAILHAVEN_FAST_HASH": "1"}, **extra)
    return env


try:  # one record with tests.fixtures_base.free_port, so the two never hand out the same port
    from tests.fixtures_base import _HANDED_OUT
except ImportError:  # run as a script in the unit's sandbox
    _HANDED_OUT = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never one this process was already given (the kernel may hand
    the same closed port out twice in a row, and two listeners of one config on one port is a config
    error: CI saw imap and submission collide). This file runs as a script inside the unit's
    sandbox, where the tests package is not importable, so it cannot use tests.fixtures_base's."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def loopback_free_ports(config: Path) -> dict[str, int]:
    """Rewrite a config `mailhaven init` wrote: every listener on 127.0.0.1 on a free port, those
    this build lacks disabled. Returns {listener: port}. (The file keeps its owner and mode.)"""
    from mailhaven import app

    text = config.read_text()
    ports: dict[str, int] = {}
    given: set[int] = set()

    def fresh() -> int:  # the kernel may hand out one closed port twice in a row
        while (port := free_port()) in given:
            pass
        given.add(port)
        return port

    def listener(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in app.LISTENER_FACTORIES:
            return f"[listeners.{name}]\nenabled = false\naddress = \"127.0.0.1\"\nport = {fresh()}\n"
        ports[name] = fresh()
        return f"[listeners.{name}]\naddress = \"127.0.0.1\"\nport = {ports[name]}\n"

    new = re.sub(r"\[listeners\.(\w+)\]\naddress = \"[^\"]*\"\nport = \d+\n", listener, text)
    assert new != text and "0.0.0.0" not in new
    config.write_text(new)
    return ports


def mailhaven_argv() -> list[str]:
    """How to run the `mailhaven` command of this interpreter's environment."""
    return [sys.executable, "-m", "mailhaven"]


@contextlib.contextmanager
def open_dir(prefix: str = "mailhaven-svc-") -> Iterator[Path]:
    """A temporary directory every user can traverse (pytest's tmp_path is root-only), removed after."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- a server subprocess -------------------------------------------------------------------------


class Server:
    """`mailhaven -c CONFIG serve` as a subprocess; stderr (the log) is collected line by line."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None, prefix: list[str] | None = None,
                 cwd: Path | None = None, command: str = "serve") -> None:
        argv = [*(prefix or []), *mailhaven_argv(), "-c", str(config), command]
        self.p = subprocess.Popen(argv, env=env or base_env(), cwd=cwd or config.parent, text=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.stdout: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._seen = 0
        threading.Thread(target=self._pump, args=(self.p.stderr, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.p.stdout, False), daemon=True).start()

    def _pump(self, stream: Any, is_err: bool) -> None:
        for line in stream:
            if is_err:
                self.lines.append(line.rstrip("\n"))
                self._q.put(line)
            else:
                self.stdout.append(line)
        if is_err:
            self._q.put(None)

    @property
    def pid(self) -> int:
        return self.p.pid

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        """The next log line (after the last one matched) matching `pattern`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.lines):
                line = self.lines[self._seen]
                self._seen += 1
                if rx.search(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no log line matching {pattern!r} in {timeout}s; log:\n{self.log()}")
            if self.p.poll() is not None and self._q.empty() and self._seen >= len(self.lines):
                time.sleep(0.2)  # let the pump thread finish
                if self._seen >= len(self.lines):
                    raise AssertionError(f"server exited ({self.p.returncode}) without {pattern!r}; "
                                         f"log:\n{self.log()}")
            with contextlib.suppress(queue.Empty):
                self._q.get(timeout=min(left, 0.2))

    def ready(self, timeout: float = 30.0) -> None:
        """A single process serves, or the supervising parent says every worker does (one worker's
        own "serving in worker N" line is not enough: the others may still be starting as root)."""
        self.wait_for(r"ready: \d+ (listener\(s\) serving(?! in worker)|workers serving)", timeout)

    def missing_listeners(self) -> set[str]:
        return {m.group(1) for line in self.lines if (m := re.search(r"listener (\S+) not available", line))}

    def serving(self) -> set[str]:
        return {m.group(1) for line in self.lines if (m := re.search(r"listening: (\S+) on ", line))}

    def signal(self, sig: signal.Signals) -> None:
        self.p.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


# --- sd_notify -----------------------------------------------------------------------------------


class NotifySocket:
    """The systemd side of sd_notify: a unix datagram socket; `next()` returns one message."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o777)  # a server that dropped privileges can still write
        self.messages: list[str] = []

    def next(self, timeout: float = 30.0) -> str:
        self.sock.settimeout(timeout)
        msg = self.sock.recv(4096).decode()
        self.messages.append(msg)
        return msg

    def next_state(self, timeout: float = 30.0) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.next(timeout).splitlines() if "=" in line)

    def close(self) -> None:
        self.sock.close()


# --- a temporary system user ---------------------------------------------------------------------


@contextlib.contextmanager
def system_user(prefix: str = "mhtest") -> Iterator[tuple[str, int, int]]:
    """useradd --system a user with its own group; yields (name, uid, gid); userdel afterwards."""
    import pwd

    name = f"{prefix}{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        yield name, pw.pw_uid, pw.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


def can_run_python_as(uid: int, gid: int) -> bool:
    """Whether that user can start this interpreter and import mailhaven (pyenv under /root cannot)."""
    def demote() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    try:
        r = subprocess.run([sys.executable, "-c", "import mailhaven, argon2, cryptography"], preexec_fn=demote,
                           capture_output=True, timeout=60, cwd="/")
    except OSError:
        return False
    return r.returncode == 0


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


# --- the unit's sandbox, without systemd ---------------------------------------------------------


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """[Service]-section settings of a unit file: {key: [values in order]} (keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}" if section != "Service" else key.strip(), []).append(value.strip())
    return out


def _syscall_sets() -> dict[str, list[str]]:
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    sets: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw.startswith(" ") and line.startswith("@"):
            current = line
            sets[current] = []
        elif current is not None and raw.startswith(" "):
            sets[current].append(line)
    return sets


def _expand(names: list[str], sets: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for n in names:
        if n.startswith("@"):
            out |= _expand(sets[n], sets)
        else:
            out.add(n)
    return out


def allowed_syscalls(settings: dict[str, list[str]]) -> set[str]:
    """systemd's semantics: the first non-~ list is an allow-list, ~ lists remove from it."""
    sets = _syscall_sets()
    allowed: set[str] = set()
    for value in settings.get("SystemCallFilter", []):
        deny = value.startswith("~")
        names = value.lstrip("~").split()
        if deny:
            allowed -= _expand(names, sets)
        else:
            allowed |= _expand(names, sets)
    return allowed


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
FAMILIES = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6,
            "AF_NETLINK": getattr(socket, "AF_NETLINK", 16), "AF_PACKET": getattr(socket, "AF_PACKET", 17)}


def _scmp_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def apply_sandbox(settings: dict[str, list[str]], allowed: set[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    umask = settings.get("UMask", ["0022"])[-1]
    os.umask(int(umask, 8))
    if settings.get("NoNewPrivileges", ["no"])[-1] == "yes" or allowed:
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_MDWE (needs Linux >= 6.3)")
    if not allowed:
        return
    err = getattr(errno, settings.get("SystemCallErrorNumber", ["EPERM"])[-1])
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    ctx = lib.seccomp_init(_scmp_errno(err))
    if not ctx:
        raise OSError("seccomp_init failed")
    families = [FAMILIES[f] for value in settings.get("RestrictAddressFamilies", []) for f in value.split()]
    for name in sorted(allowed):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # not a syscall of this architecture
        if name == "socket" and families:
            for fam in families:
                cmp = _ArgCmp(0, SCMP_CMP_EQ, fam, 0)
                if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 1, ctypes.byref(cmp)) != 0:
                    raise OSError(f"seccomp rule for socket({fam}) failed")
            continue
        rc = lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None)
        if rc not in (0, -errno.EEXIST):
            raise OSError(f"seccomp rule for {name} failed: {rc}")
    if lib.seccomp_load(ctx) != 0:
        raise OSError("seccomp_load failed")


def sandbox_prefix(unit: Path = UNIT, user: str | None = None) -> list[str]:
    """argv prefix that runs a command inside the unit's sandbox (see the module docstring)."""
    prefix = [sys.executable, str(Path(__file__).resolve()), "sandbox", "--unit", str(unit)]
    if user:
        prefix += ["--user", user]
    return prefix + ["--"]


def _main(argv: list[str]) -> None:
    import argparse
    import grp
    import pwd

    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["sandbox"])
    p.add_argument("--unit", required=True)
    p.add_argument("--user")
    p.add_argument("command", nargs="+")
    args = p.parse_args(argv)
    settings = unit_settings(Path(args.unit))
    allowed = allowed_syscalls(settings)  # runs systemd-analyze: before the filter is loaded
    if args.user:
        pw = pwd.getpwnam(args.user)
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setgid(grp.getgrgid(pw.pw_gid).gr_gid)
        os.setuid(pw.pw_uid)
    apply_sandbox(settings, allowed)
    os.execvp(args.command[0], args.command)


if __name__ == "__main__":
    _main(sys.argv[1:])
