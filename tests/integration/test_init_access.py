"""`mailhaven init --run-as-user USER` as root: the service user can read exactly what the server
reads (config, users file, TLS key, DKIM key: root:GROUP 0640 in 0750 folders; the certificate
0644) and owns the data folder (0700); init prints each path with its owner, group and mode; the
commands that edit those files later as root (`user add`, `dkim keygen`) keep them readable.
Before, init left every file root's alone (dkim/ 0700, keys 0600) and the server, started by
systemd as `mailhaven`, failed with `Permission denied` and was restarted every 5 s.

The owner tests need root (chown, a temporary system user) and skip with a reason otherwise.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailhaven import config
from tests.integration.test_service_support import base_env, can_run_python_as, open_dir, system_user

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: gives files to a temporary system user")


def mh(*args: str, stdin: str = "", user: tuple[int, int] | None = None) -> subprocess.CompletedProcess[str]:
    def demote() -> None:
        assert user is not None
        os.setgroups([])
        os.setgid(user[1])
        os.setuid(user[0])

    return subprocess.run([sys.executable, "-m", "mailhaven", *args], input=stdin, capture_output=True, text=True,
                          timeout=120, env=base_env(), cwd="/", preexec_fn=demote if user else None)


def owner_mode(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


@pytest.fixture
def service() -> Iterator[tuple[str, int, int]]:
    with system_user("mhinit") as user:
        yield user


@pytest.fixture
def folder() -> Iterator[Path]:
    with open_dir("mailhaven-init-") as path:
        yield path


@needs_root
def test_init_as_root_gives_the_service_user_read_access_to_exactly_what_it_reads(
        service: tuple[str, int, int], folder: Path) -> None:
    name, uid, gid = service
    cfg_path = folder / "etc" / "mailhaven.toml"
    data = folder / "data"
    r = mh("-c", str(cfg_path), "init", "--domain", "example.org", "--data-dir", str(data), "--run-as-user", name)
    assert r.returncode == 0, r.stderr
    cfg = config.load(cfg_path)
    assert cfg.run_as_user == name
    etc = cfg_path.parent
    dkim_key = Path(cfg.domains["example.org"].dkim_key)
    expected = {
        etc: ("root", name, 0o750),
        cfg_path: ("root", name, 0o640),
        etc / "users.toml": ("root", name, 0o640),
        etc / "tls": ("root", name, 0o750),
        etc / "tls" / "cert.pem": ("root", name, 0o644),
        etc / "tls" / "key.pem": ("root", name, 0o640),
        etc / "dkim": ("root", name, 0o750),
        dkim_key: ("root", name, 0o640),
        etc / "srs.secret": ("root", name, 0o640),  # [delivery] srs_secret_file (forwarding)
        data: (name, name, 0o700),
    }
    assert {p: owner_mode(p) for p in expected} == expected
    assert {p for p in etc.rglob("*")} | {etc, data} == set(expected)  # nothing else was made
    # It says what it did: one line per path, as `ls -l` names owner and mode.
    said = r.stdout[r.stdout.index(f"gave {name} read access"):]
    for p, (user, group, mode) in expected.items():
        assert f"  {p} {user}:{group} {mode:04o}\n" in said, said
    if can_run_python_as(uid, gid):
        r = mh("-c", str(cfg_path), "check-config", user=(uid, gid))
        assert (r.returncode, r.stdout) == (0, "OK\n"), r.stderr


@needs_root
def test_user_add_and_dkim_keygen_as_root_keep_the_service_user_reading(
        service: tuple[str, int, int], folder: Path) -> None:
    name, uid, gid = service
    cfg_path = folder / "etc" / "mailhaven.toml"
    r = mh("-c", str(cfg_path), "init", "--domain", "example.org", "--data-dir", str(folder / "data"),
           "--run-as-user", name)
    assert r.returncode == 0, r.stderr
    users = cfg_path.parent / "users.toml"
    assert mh("-c", str(cfg_path), "user", "add", "alice@example.org", stdin="pw-1\n").returncode == 0
    assert owner_mode(users) == ("root", name, 0o640)
    r = mh("-c", str(cfg_path), "dkim", "keygen", "example.org", "--selector", "second")
    assert r.returncode == 0, r.stderr
    key = Path(config.load(cfg_path).domains["example.org"].dkim_key)
    assert key.name == "example.org.second.key"
    assert owner_mode(key) == ("root", name, 0o640)
    assert owner_mode(key.parent) == ("root", name, 0o750)
    assert owner_mode(cfg_path) == ("root", name, 0o640)  # the rewritten config kept its owner and mode
    if can_run_python_as(uid, gid):
        r = mh("-c", str(cfg_path), "check-config", user=(uid, gid))
        assert (r.returncode, r.stdout) == (0, "OK\n"), r.stderr


@needs_root
def test_init_gives_a_data_folder_holding_someone_elses_files_no_recursive_chown(
        service: tuple[str, int, int], folder: Path) -> None:
    name, _, _ = service
    data = folder / "data"
    data.mkdir()
    (data / "old-mail").write_text("x")
    cfg_path = folder / "etc" / "mailhaven.toml"
    r = mh("-c", str(cfg_path), "init", "--domain", "example.org", "--data-dir", str(data), "--run-as-user", name)
    assert r.returncode == 0, r.stderr
    assert f"{data} holds files and is not {name}'s: left as is (chown -R {name}: {data})" in r.stdout
    assert owner_mode(data)[0] == "root"


def test_init_with_an_unknown_service_user_fails_before_writing_anything(tmp_path: Path) -> None:
    cfg_path = tmp_path / "etc" / "mailhaven.toml"
    r = mh("-c", str(cfg_path), "init", "--domain", "example.org", "--data-dir", str(tmp_path / "data"),
           "--run-as-user", "no-such-user-mh")
    assert r.returncode == 1
    assert r.stderr.startswith("mailhaven: run_as_user: no such user: no-such-user-mh (create it first: useradd ")
    assert not cfg_path.exists() and not (tmp_path / "etc" / "users.toml").exists()


@needs_root
def test_init_as_root_without_a_service_user_says_how_to_give_one_access(tmp_path: Path) -> None:
    cfg_path = tmp_path / "mailhaven.toml"
    r = mh("-c", str(cfg_path), "init", "--domain", "example.org", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    assert "--run-as-user mailhaven" in r.stdout
    assert owner_mode(tmp_path / "users.toml") == ("root", "root", 0o600)


@needs_root
def test_check_config_as_the_service_user_names_each_file_it_cannot_read(
        service: tuple[str, int, int], folder: Path) -> None:
    """check-config said OK while the server, as the service user, could not read the DKIM key
    (signing failed on every message), and blamed tls.cert for an unreadable tls.key."""
    name, uid, gid = service
    if not can_run_python_as(uid, gid):
        pytest.skip(f"{name} cannot run {sys.executable} (an interpreter under /root?)")
    cfg_path = folder / "etc" / "mailhaven.toml"
    r = mh("-c", str(cfg_path), "init", "--domain", "example.org", "--data-dir", str(folder / "data"),
           "--run-as-user", name)
    assert r.returncode == 0, r.stderr
    dkim_key = Path(config.load(cfg_path).domains["example.org"].dkim_key)
    tls_key = cfg_path.parent / "tls" / "key.pem"
    for path, message in ((dkim_key, f"domains.example.org.dkim_key: cannot read {dkim_key}: Permission denied"),
                          (tls_key, f"tls.key: cannot read {tls_key}: Permission denied")):
        path.chmod(0o600)
        r = mh("-c", str(cfg_path), "check-config", user=(uid, gid))
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"mailhaven: {message}\n")
        path.chmod(0o640)
    dkim_key.chmod(0o600)
    dkim_key.write_text("not a key\n")
    dkim_key.chmod(0o640)
    r = mh("-c", str(cfg_path), "check-config", user=(uid, gid))
    assert r.returncode == 2 and r.stderr.startswith(f"mailhaven: domains.example.org.dkim_key: {dkim_key} is not a usable")


@needs_root
def test_init_not_run_as_root_leaves_owners_as_they_are_and_says_so(
        service: tuple[str, int, int], folder: Path) -> None:
    name, uid, gid = service
    if not can_run_python_as(uid, gid):
        pytest.skip(f"{name} cannot run {sys.executable} (an interpreter under /root?)")
    os.chown(folder, uid, gid)
    cfg_path = folder / "etc" / "mailhaven.toml"
    r = mh("-c", str(cfg_path), "init", "--domain", "example.org", "--data-dir", str(folder / "data"),
           "--run-as-user", name, user=(uid, gid))
    assert r.returncode == 0, r.stderr
    assert f"not run as root: owners and modes left as they are (run init as root to give {name} read access)" \
        in r.stdout
    assert config.load(cfg_path).run_as_user == name
    assert owner_mode(cfg_path.parent / "users.toml") == (name, name, 0o600)
