"""Which clients' mail goes unchecked (policy/pipeline.unchecked_reason): only loopback, only in
dev mode (issue 11 item 2)."""

from __future__ import annotations

import pytest

from mailhaven.policy.pipeline import DEV_LOOPBACK, unchecked_reason


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "::ffff:127.0.0.1"])
def test_dev_mode_leaves_loopback_clients_unchecked(ip: str) -> None:
    assert unchecked_reason(True, ip) == DEV_LOOPBACK


@pytest.mark.parametrize("ip", ["192.0.2.1", "10.0.0.5", "192.168.1.2", "2001:db8::1", "::ffff:192.0.2.1",
                                "fe80::1%eth0", "", "not-an-ip"])
def test_dev_mode_checks_every_other_client(ip: str) -> None:
    assert unchecked_reason(True, ip) == ""


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "192.0.2.1"])
def test_without_dev_mode_every_client_is_checked(ip: str) -> None:
    assert unchecked_reason(False, ip) == ""
