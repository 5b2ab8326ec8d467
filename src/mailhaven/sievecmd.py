"""`mailhaven sieve put|get|list|activate|deactivate|delete|check`: an admin's ManageSieve, on the files.

Owns: what each subcommand does and prints. It works on the script files directly, through
sieve_store.ScriptStore (the same checks, quotas and durable writes as ManageSieve), as `user add`
edits the users file; a running server sees the change at its next session or delivery.
Does not own: argument parsing or turning errors into exit codes (cli.py), the storage (sieve_store).
Every refusal is a `SieveCommandError` with one line (a syntax error says its line and column).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mailhaven.config import Config
from mailhaven.sieve import SieveSyntaxError
from mailhaven.sieve_store import ScriptError, ScriptStore, check_script


class SieveCommandError(Exception):
    """One line for stderr; exit 1."""


def _store(cfg: Config, user: str) -> ScriptStore:
    ms = cfg.managesieve
    return ScriptStore(cfg.mail_root, user, max_scripts=ms.max_scripts, max_size=ms.max_script_size)


def _read(path: str, limit: int) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read(limit + 1)
    with open(path, "rb") as f:
        return f.read(limit + 1)


def _default_name(path: str) -> str:
    base = Path(path).name
    return base[: -len(".sieve")] if base.endswith(".sieve") else base


def run(cfg: Config, action: str, user: str | None, name: str | None, file: str | None,
        activate: bool = False) -> int:
    """`user` is a canonical, existing account (cli.py checked it), or None for `check FILE`."""
    try:
        return _run(cfg, action, user, name, file, activate)
    except SieveSyntaxError as e:
        raise SieveCommandError(f"{file or name}: {e}") from None
    except ScriptError as e:
        code = f" ({e.code})" if e.code else ""
        raise SieveCommandError(f"{e.message.rstrip('.')}{code}") from None


def _run(cfg: Config, action: str, user: str | None, name: str | None, file: str | None, activate: bool) -> int:
    limit = cfg.managesieve.max_script_size
    if action == "check":
        if file is not None:
            check_script(_read(file, limit), limit)
            print(f"{file}: ok")
            return 0
        assert user is not None  # `check USER`: every script the user has
        store = _store(cfg, user)
        for n in store.names():
            try:
                check_script(store.get(n), limit)
            except SieveSyntaxError as e:
                raise SieveCommandError(f"{user} script {n}: {e}") from None
            print(f"{n}: ok")
        return 0
    assert user is not None
    store = _store(cfg, user)
    if action == "list":
        for n, active in store.listing():
            print(f"{n}{'  (active)' if active else ''}")
        return 0
    if action == "get":
        assert name is not None
        sys.stdout.buffer.write(store.get(name))
        sys.stdout.flush()
        return 0
    if action == "put":
        assert file is not None
        script = name or _default_name(file)
        store.put(script, _read(file, limit))
        print(f"stored {script} for {user}")
        if activate:
            store.set_active(script)
            print(f"{script} is now active")
        return 0
    if action == "activate":
        assert name is not None
        store.set_active(name)
        print(f"{name} is now active for {user}")
        return 0
    if action == "deactivate":
        store.set_active("")
        print(f"no active script for {user}")
        return 0
    if action == "delete":
        assert name is not None
        store.delete(name)
        print(f"deleted {name} of {user}")
        return 0
    raise SieveCommandError(f"unknown action {action}")


def owner_fix(cfg: Config, user: str, chown: Any = os.chown) -> None:
    """Run as root: give what this command created (the user's folders, the sieve folder and its
    files, where root owns them) to data_dir's owner, the service user, so the server can still
    change them."""
    if os.geteuid() != 0:
        return
    st = os.stat(cfg.data_dir)
    folder = _store(cfg, user).path
    if not folder.is_dir():
        return
    for p in [folder.parent.parent, folder.parent, folder, *folder.iterdir()]:
        if os.lstat(p).st_uid == 0 and st.st_uid != 0:
            chown(p, st.st_uid, st.st_gid, follow_symlinks=False)


__all__ = ["SieveCommandError", "owner_fix", "run"]
