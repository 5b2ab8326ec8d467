"""auth/login.py without sockets: the login service over a real Directory, with an injected clock
and sleep (the penalty is recorded, not waited)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mailhaven.auth import passwords
from mailhaven.auth.login import LoginService
from mailhaven.auth.users import Directory, UsersFile
from mailhaven.config import Config, from_dict

ALICE = "alice@example.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def make(tmp_path: Path, **auth: Any) -> tuple[LoginService, Clock, dict[str, Any]]:
    users = tmp_path / "users.toml"
    uf = UsersFile(users)
    uf.add_user(ALICE, passwords.hash_password("right"))
    uf.save()
    cfg: Config = from_dict({"data_dir": str(tmp_path), "users_file": str(users), "domains": {"example.test": {}},
                             "auth": {"failure_delay": 1, "max_failure_delay": 8, **auth}}, tmp_path)
    state: dict[str, Any] = {"config": cfg, "directory": Directory(cfg, UsersFile.load(users))}
    clock = Clock()
    service = LoginService(lambda: state["config"], lambda: state["directory"], None, clock=clock, sleep=clock.sleep)
    return service, clock, state


async def test_a_cached_login_still_waits_the_penalty(tmp_path: Path) -> None:
    """The cache answers no faster than a check would: otherwise a quick answer would tell an
    attacker that a guess is the (cached) right password, beating the penalty."""
    service, clock, _ = make(tmp_path)
    assert (await service.login("imap", "192.0.2.1", ALICE, "right", "LOGIN")).ok
    for i in range(3):
        assert not (await service.login("imap", "192.0.2.1", ALICE, f"guess{i}", "LOGIN")).ok
    clock.slept.clear()
    out = await service.login("imap", "192.0.2.1", ALICE, "right", "LOGIN")
    assert out.ok and out.cached and out.delay == 4 and clock.slept == [4]  # 3 failures: 1, 2, 4


async def test_cache_entries_expire_after_the_ttl(tmp_path: Path) -> None:
    service, clock, _ = make(tmp_path, cache_ttl=60)
    assert not (await service.login("imap", "192.0.2.1", ALICE, "right", "LOGIN")).cached
    assert (await service.login("imap", "192.0.2.1", ALICE, "right", "LOGIN")).cached
    clock.now += 61
    assert not (await service.login("imap", "192.0.2.1", ALICE, "right", "LOGIN")).cached
    assert service.checks == 2


async def test_a_new_directory_empties_the_cache(tmp_path: Path) -> None:
    service, _, state = make(tmp_path)
    await service.login("imap", "192.0.2.1", ALICE, "right", "LOGIN")
    state["directory"] = Directory(state["config"], UsersFile.load(state["config"].users_file))
    assert not (await service.login("imap", "192.0.2.1", ALICE, "right", "LOGIN")).cached


async def test_unknown_users_cost_a_check_and_say_why(tmp_path: Path) -> None:
    service, _, _ = make(tmp_path)
    out = await service.login("pop3", "192.0.2.1", "nobody@example.test", "x", "USER")
    assert out.reason == "unknown_user" and service.checks == 1
    out = await service.login("pop3", "192.0.2.1", "x" * 5000, "x", "USER")
    assert out.reason == "unknown_user"
    out = await service.login("pop3", "192.0.2.1", ALICE, "wrong", "USER")
    assert out.reason == "bad_password"


async def test_a_cancelled_check_counts_as_a_failure_and_its_waiters_check_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service, _, _ = make(tmp_path, failure_delay=0)
    gate = asyncio.Event()
    real = passwords.verify

    async def slow(hash: str, pw: str, **kw: Any) -> bool:
        await gate.wait()
        return await real(hash, pw, **kw)

    monkeypatch.setattr(passwords, "verify", slow)
    leader = asyncio.create_task(service.login("imap", "192.0.2.1", ALICE, "right", "LOGIN"))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(service.login("imap", "192.0.2.2", ALICE, "right", "LOGIN"))
    await asyncio.sleep(0.01)
    leader.cancel()  # the client went away mid-check
    await asyncio.sleep(0.01)
    gate.set()
    assert (await waiter).ok  # it shared the leader's check, then made its own
    with pytest.raises(asyncio.CancelledError):
        await leader
    blocks = service.blocks()
    assert [(b.kind, b.ip) for b in blocks if b.kind == "pair"] == [("pair", "192.0.2.1")]


@pytest.mark.parametrize("reason", ["bad_password", "unknown_user", "plaintext_refused", "bad_sasl", "cancelled",
                                    "unknown_mechanism", "authzid_refused"])
def test_every_login_failure_is_one_warning_line_whatever_the_reason(
        tmp_path: Path, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11 item 5: one line format and ONE level for every protocol and reason, so one
    fail2ban filter and one log level serve them all."""
    service, _, _ = make(tmp_path)
    with caplog.at_level("DEBUG", logger="mailhaven.auth"):
        service.refused("pop3", "192.0.2.1", ALICE, reason, "PLAIN")
    lines = [r for r in caplog.records if r.getMessage() == "login failed"]
    assert [(r.levelname, r.mh_fields["reason"]) for r in lines] == [("WARNING", reason)]  # type: ignore[attr-defined]
