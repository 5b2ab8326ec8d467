"""limits.py admission (issue 10 items 7 and 11): eviction of the oldest evictable session on a
full listener, and refusals reported at most once a minute per address, with a count."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mailhaven.config import ListenerConfig, from_dict
from mailhaven.limits import REFUSAL_LOG_INTERVAL, Limits

LC = ListenerConfig(port=143, max_connections=3, per_ip_connections=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Session:
    """limits.Evictable: gives its slot back when evicted, as the listeners do."""

    def __init__(self, limits: Limits, ip: str) -> None:
        self.limits, self.ip, self.evicted = limits, ip, False

    def evict(self) -> None:
        self.evicted = True
        self.limits.connection_closed("imap", self.ip)


def make(tmp_path: Path, max_tracked: int = 1000) -> tuple[Limits, Clock]:
    clock = Clock()
    return Limits(from_dict({"data_dir": str(tmp_path)}, tmp_path), clock=clock, max_tracked=max_tracked), clock


def open_session(lim: Limits, ip: str, evictable: bool = True) -> Session:
    assert lim.admit("imap", ip, LC) is None
    s = Session(lim, ip)
    if evictable:
        lim.evictable("imap", s)
    return s


def test_a_full_listener_evicts_the_oldest_evictable_session(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    a = open_session(lim, "192.0.2.1")
    b = open_session(lim, "192.0.2.2")
    c = open_session(lim, "192.0.2.3")
    lim.evictable("imap", a)  # marked again (the MX after a command): now the youngest
    assert lim.admit("imap", "192.0.2.4", LC) is None
    assert (a.evicted, b.evicted, c.evicted) == (False, True, False)
    assert lim.connections("imap") == 3


def test_sessions_that_are_not_evictable_are_never_evicted(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    sessions = [open_session(lim, f"192.0.2.{i}") for i in range(1, 4)]
    for s in sessions:
        lim.not_evictable("imap", s)  # logged in
    assert lim.admit("imap", "192.0.2.9", LC) == "total"
    assert not any(s.evicted for s in sessions)
    assert lim.connections("imap") == 3


def test_an_address_over_its_share_evicts_no_one(tmp_path: Path) -> None:
    lim, _ = make(tmp_path)
    a = open_session(lim, "192.0.2.1")
    b = open_session(lim, "192.0.2.1")
    assert lim.admit("imap", "192.0.2.1", LC) == "per_ip"
    assert not (a.evicted or b.evicted)


def _refusal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "connections refused"]


def test_refusals_are_logged_once_a_minute_per_address_with_the_count(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven")
    lim, clock = make(tmp_path)
    open_session(lim, "192.0.2.1")
    open_session(lim, "192.0.2.1")
    for _ in range(5):
        assert lim.admit("imap", "192.0.2.1", LC) == "per_ip"
        clock.now += 1
    [first] = _refusal_lines(caplog)
    assert first.levelno == logging.WARNING
    assert first.mh_fields == {"listener": "imap", "reason": "per_ip", "limit": 2, "refused": 1,  # type: ignore[attr-defined]
                               "ip": "192.0.2.1"}
    assert lim.admit("imap", "192.0.2.7", LC) is None  # another address is not affected
    clock.now += REFUSAL_LOG_INTERVAL
    assert lim.admit("imap", "192.0.2.1", LC) == "per_ip"
    lines = _refusal_lines(caplog)
    assert len(lines) == 2
    assert lines[1].mh_fields["refused"] == 5  # type: ignore[attr-defined]  # 4 kept quiet, and this one


def test_refusal_reports_remember_a_bounded_number_of_addresses(tmp_path: Path) -> None:
    lim, _ = make(tmp_path, max_tracked=10)
    lim.admit("imap", "192.0.2.1", LC)
    lim.admit("imap", "192.0.2.2", LC)
    lim.admit("imap", "192.0.2.3", LC)
    for i in range(100):
        assert lim.admit("imap", f"198.51.100.{i}", LC) == "total"
    assert len(lim._refusals) <= 10
