"""limits.py: connection limits per listener and per IP through Limits.admit (eviction and refusal
reports: tests/unit/test_limits_admission.py; login throttling: tests/unit/test_throttle.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailhaven.config import ListenerConfig, from_dict
from mailhaven.limits import Limits, ip_key


def make(tmp_path: Path, **auth: Any) -> tuple[Limits, None]:
    cfg = from_dict({"data_dir": str(tmp_path)}, tmp_path)
    return Limits(cfg), None


LC = ListenerConfig(port=25, max_connections=3, per_ip_connections=2)


def test_per_ip_connections_are_refused_beyond_the_limit(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    assert lim.admit("mx", "192.0.2.1", LC) is None
    assert lim.admit("mx", "192.0.2.1", LC) is None
    assert lim.admit("mx", "192.0.2.1", LC) == "per_ip"
    assert lim.admit("mx", "192.0.2.2", LC) is None  # another IP still gets in
    assert lim.connections("mx", "192.0.2.1") == 2
    lim.connection_closed("mx", "192.0.2.1")
    assert lim.admit("mx", "192.0.2.1", LC) is None


def test_listener_max_connections(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert lim.admit("mx", ip, LC) is None
    assert lim.admit("mx", "192.0.2.4", LC) == "total"
    assert lim.admit("imap", "192.0.2.4", LC) is None  # listeners count separately
    lim.connection_closed("mx", "192.0.2.3")
    assert lim.admit("mx", "192.0.2.4", LC) is None
    assert lim.connections("mx") == 3


def test_counts_drop_to_zero_and_forget_keys(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    lim.admit("mx", "192.0.2.1", LC)
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
    assert lim.admit("mx", "2001:db8::1", LC) is None
    assert lim.admit("mx", "2001:db8::2", LC) is None
    assert lim.admit("mx", "2001:db8::3", LC) is not None


@pytest.mark.parametrize("ip", ["not-an-ip", "fe80::1%eth0", ""])
def test_odd_ip_strings_do_not_raise(tmp_path: Path, ip: str) -> None:
    lim, _ = make(tmp_path)
    assert lim.admit("mx", ip, LC) is None
    lim.connection_closed("mx", ip)
