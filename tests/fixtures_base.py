"""Fixtures: base (TLS material, cheap password hashing, a ready Config).

- `fast_hashing` (autouse): sets MAILHAVEN_FAST_HASH=1 so argon2 uses t=1, m=1 MiB, p=1 in every test
  (also inherited by server subprocesses started from tests). Tests of the real cost pass
  `params=` explicitly.
- `tls_ca`: a trustme.CA for the session.
- `tls_files` (session): (cert_path, key_path) for "localhost", "mail.example.test", 127.0.0.1 and
  ::1, signed by `tls_ca` (key mode 0600).
- `client_ssl_context`: an ssl.SSLContext (client side) trusting `tls_ca`; check_hostname on, so
  connect with server_hostname="localhost".
- `free_port()`: a plain function (import it) returning a currently free TCP port on 127.0.0.1.
- `make_config`: a function building a validated Config via mailhaven.config.from_dict:

      cfg = make_config()                                   # no listeners
      cfg = make_config("submission", "imap")               # these listeners on 127.0.0.1, free ports
      cfg = make_config({"mx": {"tls": "none"}}, auth={"failure_delay": 0.5})

  Positional arguments are listener names or dicts {name: {listener overrides}}; keyword arguments
  are deep-merged into the config table (e.g. dns={"nameservers": [dns_nameserver]},
  domains={"other.test": {}}). Defaults: hostname "localhost", data_dir tmp_path/"data" (created),
  domain "example.test", tls = `tls_files`, users file tmp_path/"users.toml" with alice@example.test
  and bob@example.test (password "secret", see USERS), auth.failure_delay 0 (throttling tests
  raise it) and auth.allow_plaintext_loopback true. The port of a listener is in
  cfg.listeners[name].port.
"""

from __future__ import annotations

import os
import queue
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "secret"
USERS = ("alice@example.test", "bob@example.test")


@pytest.fixture(autouse=True)
def fast_hashing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """MAILHAVEN_FAST_HASH=1 in every test: cheap argon2 parameters."""
    from mailhaven.auth import passwords

    monkeypatch.setenv(passwords.FAST_ENV, "1")
    yield


@pytest.fixture(scope="session")
def tls_ca() -> Any:
    """A trustme CA for the session."""
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(tls_ca: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cert_path, key_path) for localhost / mail.example.test / 127.0.0.1 / ::1, issued by tls_ca."""
    folder = tmp_path_factory.mktemp("tls")
    cert = tls_ca.issue_cert("localhost", "127.0.0.1", "::1", "mail.example.test")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))  # leaf first, then chain
    cert.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def client_ssl_context(tls_ca: Any) -> ssl.SSLContext:
    """Client context trusting tls_ca (hostname checked: use server_hostname="localhost")."""
    ctx = ssl.create_default_context()
    tls_ca.configure_trust(ctx)
    return ctx


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind to port 0, read it, close), never one this
    process was already given: the kernel may hand the same closed port out twice in a row, and two
    listeners of one config on the same port is a config error (CI saw pop3 and pop3s collide)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@pytest.fixture
def users_file_path(tmp_path: Path) -> Path:
    """tmp_path/"users.toml" with USERS, password PASSWORD (written with the UsersFile API)."""
    from mailhaven.auth.passwords import hash_password
    from mailhaven.auth.users import UsersFile

    path = tmp_path / "users.toml"
    if not path.exists():
        with UsersFile.edit(path) as uf:
            for user in USERS:
                uf.add_user(user, hash_password(PASSWORD))
    return path


@pytest.fixture
def make_config(tmp_path: Path, tls_files: tuple[Path, Path], users_file_path: Path,
                fast_hashing: None) -> Callable[..., Any]:
    """make_config(*listeners, **overrides) -> Config (see the module docstring)."""
    from mailhaven.config import Config, from_dict

    def build(*listeners: str | dict[str, dict[str, Any]], **overrides: Any) -> Config:
        data_dir = tmp_path / "data"
        data_dir.mkdir(exist_ok=True)
        lst: dict[str, dict[str, Any]] = {}
        for item in listeners:
            table = {item: {}} if isinstance(item, str) else item
            for name, extra in table.items():
                lst[name] = {"address": "127.0.0.1", "port": free_port(), **extra}
        data: dict[str, Any] = {
            "hostname": "localhost",
            "data_dir": str(data_dir),
            "users_file": str(users_file_path),
            "domains": {"example.test": {}},
            "tls": {"cert": str(tls_files[0]), "key": str(tls_files[1])},
            "auth": {"failure_delay": 0, "allow_plaintext_loopback": True},
            "listeners": lst,
        }
        cfg: Config = from_dict(_merge(data, overrides), tmp_path)
        return cfg

    return build


class FsyncGate:
    """os.fsync replaced for a durability test: every synced path is recorded in `synced` (in
    order, read from /proc/self/fd), and a worker thread syncing a path that `hold(path, synced)`
    accepts waits at a gate until the test opens it, so the test can show no reply comes before
    that fsync returns. Always `release_all()` in a finally."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold: Callable[[str, list[str]], bool]) -> None:
        self.synced: list[str] = []
        self._entered: queue.Queue[str] = queue.Queue()
        self._gates: dict[str, threading.Event] = {}
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if hold(path, self.synced):
                gate = self._gates.setdefault(path, threading.Event())
                self._entered.put(path)
                gate.wait(10)
            real_fsync(fd)
            self.synced.append(path)

        monkeypatch.setattr(os, "fsync", fsync)

    def next_held(self, timeout: float = 10) -> str:
        """The path of the next fsync waiting at its gate (blocking: call it off the event loop)."""
        return self._entered.get(timeout=timeout)

    def release(self, path: str) -> None:
        self._gates[path].set()

    def release_all(self) -> None:
        for gate in self._gates.values():
            gate.set()
