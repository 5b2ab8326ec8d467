"""Fixtures: the whole server in-process, for end-to-end tests.

- TLS fixtures (`tls_ca`, `tls_files`, `client_ssl_context`) come from tests/fixtures_base.py.
- `app_config_file(tmp_path, ...)`: writes a config file + empty users file under tmp_path: every
  listener on 127.0.0.1 (ports are chosen by the kernel when the server binds), domain
  example.test, TLS from `tls_files`, DNS pointed at the test DNS server. Returns its path.
- `load_test_config(path)`: load it and set every listener's port to 0 (ephemeral).
- `app_config`: the Config of the above (plain fixture).
- `running_app(config)`: async context manager: runs `app.run(config)` as a task on the test's loop,
  yields the `Context` once every available listener serves (`ctx.port("imap")` is the real port),
  and stops it gracefully afterwards (errors of the server task are raised in the test).
- `app_server`: `running_app(app_config)` as a fixture.
- `add_user(config, address, password)`: adds an account to the users file (fast argon2 hash);
  call it before the server starts, or call `ctx.request_reload()` / use `reload_users(ctx)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app, config
from mailhaven.config import Config

TEST_DOMAIN = "example.test"


def _toml(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a (two-level) dict as TOML: top-level scalars, [section], [section.sub]."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml(value)}")
    for name, table in tables:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in table.items() if isinstance(v, dict)}
        if scalars or not subs:
            lines.append(f"\n[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in scalars.items()]
        for sub, body in subs.items():
            lines.append(f"\n[{name}.{_toml(sub) if not sub.replace('_', '').isalnum() else sub}]")
            lines += [f"{k} = {_toml(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def app_config_data(tmp_path: Path, tls: tuple[Path, Path] | None, nameserver: str | None = None,
                    **top: Any) -> dict[str, Any]:
    """The test config as a dict: all listeners on 127.0.0.1 (port placeholders; see
    load_test_config), domain example.test, fast shutdown."""
    data: dict[str, Any] = {
        "hostname": "mail.example.test",
        "data_dir": str(tmp_path / "data"),
        "users_file": str(tmp_path / "users.toml"),
        "shutdown_deadline": 5,
        "domains": {TEST_DOMAIN: {}},
        "auth": {"failure_delay": 0},
        "listeners": {name: {"address": "127.0.0.1", "port": 40000 + i, **({} if tls else {"tls": "none"})}
                      for i, name in enumerate(config.LISTENER_NAMES)},
    }
    if tls:
        data["tls"] = {"cert": str(tls[0]), "key": str(tls[1])}
    if nameserver:
        data["dns"] = {"nameservers": [nameserver], "timeout": 1}
    data.update(top)
    return data


def app_config_file(tmp_path: Path, tls: tuple[Path, Path] | None, nameserver: str | None = None,
                    **top: Any) -> Path:
    """Write the test config (and an empty users file) under tmp_path; returns the config path."""
    from mailhaven.auth.users import UsersFile

    data = app_config_data(tmp_path, tls, nameserver, **top)
    users = Path(data["users_file"])
    if not users.exists():
        UsersFile(users).save()
    return write_config(tmp_path / "mailhaven.toml", data)


def with_ephemeral_ports(cfg: Config) -> Config:
    """Every listener on port 0: the kernel picks a free port when the server binds."""
    listeners = {n: dataclasses.replace(lc, port=0) for n, lc in cfg.listeners.items()}
    return dataclasses.replace(cfg, listeners=listeners)


def load_test_config(path: Path) -> Config:
    return with_ephemeral_ports(config.load(path))


def add_user(cfg: Config, address: str, password: str) -> str:
    """Add an account to cfg's users file (fast hash); returns the canonical address."""
    import argon2

    from mailhaven.auth.passwords import hash_password
    from mailhaven.auth.users import UsersFile

    fast = argon2.Parameters(type=argon2.Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1,
                             memory_cost=1024, parallelism=1)
    with UsersFile.edit(cfg.users_file) as uf:
        return str(uf.add_user(address, hash_password(password, params=fast)))


def reload_users(ctx: app.Context) -> None:
    """Make a running server see users-file edits now (what SIGHUP does for the directory)."""
    ctx.directory = app.load_directory(ctx.config)


@pytest.fixture
def app_config(tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str) -> Config:
    return load_test_config(app_config_file(tmp_path, tls_files, dns_nameserver))


@contextlib.asynccontextmanager
async def running_app(cfg: Config, *, start_timeout: float = 15.0) -> AsyncIterator[app.Context]:
    """Run the server on this event loop; yield its Context once serving; stop it gracefully."""
    started: asyncio.Future[app.Context] = asyncio.get_running_loop().create_future()

    def ready(ctx: app.Context) -> None:
        started.set_result(ctx)

    task = asyncio.create_task(app.run(cfg, ready=ready, handle_signals=False), name="mailhaven-app")
    try:
        done, _ = await asyncio.wait({task, started}, timeout=start_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the startup error
            raise RuntimeError("app.run returned before it was ready")
        if started not in done:
            raise TimeoutError(f"server not ready within {start_timeout}s")
        ctx = started.result()
        yield ctx
    finally:
        if not task.done():
            if started.done():
                started.result().request_stop()
            else:
                task.cancel()
            await _stopped(task, cfg.shutdown_deadline + 10)
        elif started.done() and not task.cancelled():
            task.result()  # the server died during the test: raise why


async def _stopped(task: asyncio.Task[None], limit: float) -> None:
    """Wait for the server task to end; cancel it if it does not within `limit` seconds."""
    try:
        await asyncio.wait_for(asyncio.shield(task), limit)
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise


@pytest.fixture
async def app_server(app_config: Config) -> AsyncIterator[app.Context]:
    async with running_app(app_config) as ctx:
        yield ctx
