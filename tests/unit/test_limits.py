"""limits.py: connection limits per listener and per IP, login throttling with an injected clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailhaven.config import ListenerConfig, from_dict
from mailhaven.limits import MAX_AUTH_DELAY, Limits, ip_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make(tmp_path: Path, **auth: Any) -> tuple[Limits, Clock]:
    cfg = from_dict({"data_dir": str(tmp_path), "auth": {"max_failures_per_ip": 3, "max_failures_per_account": 5,
                                                         "failure_window": "10m", "failure_delay": 1, **auth}},
                    tmp_path)
    clock = Clock()
    return Limits(cfg, clock=clock, sleep=clock.sleep), clock


LC = ListenerConfig(port=25, max_connections=3, per_ip_connections=2)


def test_per_ip_connections_are_refused_beyond_the_limit(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    assert lim.connection_opened("mx", "192.0.2.1", LC)
    assert lim.connection_opened("mx", "192.0.2.1", LC)
    assert not lim.connection_opened("mx", "192.0.2.1", LC)
    assert lim.connection_opened("mx", "192.0.2.2", LC)  # another IP still gets in
    assert lim.connections("mx", "192.0.2.1") == 2
    lim.connection_closed("mx", "192.0.2.1")
    assert lim.connection_opened("mx", "192.0.2.1", LC)


def test_listener_max_connections(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert lim.connection_opened("mx", ip, LC)
    assert not lim.connection_opened("mx", "192.0.2.4", LC)
    assert lim.connection_opened("imap", "192.0.2.4", LC)  # listeners count separately
    lim.connection_closed("mx", "192.0.2.3")
    assert lim.connection_opened("mx", "192.0.2.4", LC)
    assert lim.connections("mx") == 3


def test_counts_drop_to_zero_and_forget_keys(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    lim.connection_opened("mx", "192.0.2.1", LC)
    lim.connection_closed("mx", "192.0.2.1")
    lim.connection_closed("mx", "192.0.2.1")  # extra close does not go negative
    assert lim.connections("mx") == 0 and lim._ip_conns == {} and lim._conns == {}


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert ip_key("2001:db8:1:2::1") == ip_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert ip_key("::1") == "::1"


def test_ipv6_neighbours_share_the_per_ip_limit(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    assert lim.connection_opened("mx", "2001:db8::1", LC)
    assert lim.connection_opened("mx", "2001:db8::2", LC)
    assert not lim.connection_opened("mx", "2001:db8::3", LC)


async def test_first_attempt_is_not_delayed(tmp_path: Path) -> None:
    lim, clock = make(tmp_path)
    assert await lim.before_auth("192.0.2.1", "alice@example.test")
    assert clock.slept == []


async def test_delay_grows_with_failures_and_is_capped(tmp_path: Path) -> None:
    lim, clock = make(tmp_path, failure_delay=2, max_failures_per_ip=100, max_failures_per_account=100)
    for _ in range(4):
        assert await lim.before_auth("192.0.2.1", "alice")
        lim.auth_failed("192.0.2.1", "alice")
    assert clock.slept == [2, 4, MAX_AUTH_DELAY]  # 0, 2, 4, then 6 capped at 5
    clock.slept.clear()
    assert await lim.before_auth("192.0.2.1", "alice")
    assert clock.slept == [MAX_AUTH_DELAY]


async def test_ip_over_failure_limit_is_refused(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    for i in range(3):
        assert await lim.before_auth("192.0.2.1", f"user{i}")
        lim.auth_failed("192.0.2.1", f"user{i}")
    assert not await lim.before_auth("192.0.2.1", "someone-else")
    assert lim.blocked("192.0.2.1")
    assert await lim.before_auth("192.0.2.9", "someone-else")  # other IPs are fine


async def test_account_over_failure_limit_is_refused_from_any_ip(tmp_path: Path) -> None:
    lim, _ = make(tmp_path, failure_delay=0)
    for i in range(5):
        lim.auth_failed(f"192.0.2.{i}", "Alice@Example.test")
    assert not await lim.before_auth("198.51.100.1", "alice@example.test")  # case-insensitive
    assert await lim.before_auth("198.51.100.1", "bob@example.test")


async def test_failures_expire_after_the_window(tmp_path: Path) -> None:
    lim, clock = make(tmp_path, failure_delay=0)
    for _ in range(3):
        lim.auth_failed("192.0.2.1", "alice")
    assert not await lim.before_auth("192.0.2.1", "alice")
    clock.now += 599
    assert not await lim.before_auth("192.0.2.1", "alice")
    clock.now += 2
    assert await lim.before_auth("192.0.2.1", "alice")
    assert lim.recent_failures("192.0.2.1", "alice") == (0, 0)


async def test_success_clears_the_account_but_not_the_ip(tmp_path: Path) -> None:
    lim, _ = make(tmp_path, failure_delay=0)
    lim.auth_failed("192.0.2.1", "alice")
    lim.auth_failed("192.0.2.1", "alice")
    lim.auth_succeeded("192.0.2.1", "alice")
    assert lim.recent_failures("192.0.2.1", "alice") == (2, 0)


async def test_update_config_applies_new_limits(tmp_path: Path) -> None:
    lim, _ = make(tmp_path, failure_delay=0)
    lim.auth_failed("192.0.2.1", "alice")
    new, _ = make(tmp_path, failure_delay=0, max_failures_per_ip=1)
    lim.update_config(new.config)
    assert not await lim.before_auth("192.0.2.1", "alice")


def test_tracked_keys_are_bounded(tmp_path: Path) -> None:
    lim, clock = make(tmp_path)
    lim.max_tracked = 50
    for i in range(500):
        clock.now += 0.01
        lim.auth_failed(f"10.0.{i // 256}.{i % 256}", f"user{i}")
    assert lim.tracked_keys() <= 50
    assert lim.recent_failures("10.0.1.243", "user499") == (1, 1)  # the newest are kept


def test_failures_per_key_are_bounded(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    for _ in range(10_000):
        lim.auth_failed("192.0.2.1", "alice")
    assert len(lim._fail_ip["192.0.2.1"]) <= 6


def test_expired_keys_are_pruned_when_full(tmp_path: Path) -> None:
    lim, clock = make(tmp_path)
    lim.max_tracked = 10
    for i in range(5):
        lim.auth_failed(f"10.0.0.{i}", None)
    clock.now += 3600
    for i in range(5):
        lim.auth_failed(f"10.0.1.{i}", None)
    lim.auth_failed("10.0.2.1", None)
    assert lim.tracked_keys() == 6


@pytest.mark.parametrize("ip", ["not-an-ip", "fe80::1%eth0", ""])
def test_odd_ip_strings_do_not_raise(tmp_path: Path, ip: str) -> None:
    lim, _ = make(tmp_path)
    assert lim.connection_opened("mx", ip, LC)
    lim.auth_failed(ip, "x")
    lim.connection_closed("mx", ip)
