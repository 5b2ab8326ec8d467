"""auth/throttle.py: Dovecot-style penalties by address and (address, account), never by account
alone; attempts count from their start (issue 10 items 1 and 2). Injected clock, no sleeping."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.auth.throttle import Policy, Throttle

ALICE, BOB = "alice@example.test", "bob@example.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**policy: float) -> tuple[Throttle, Clock]:
    clock = Clock()
    args = {"failure_delay": 2.0, "max_delay": 15.0, "window": 600.0, "ip_free": 10, "account_alarm": 20}
    args.update(policy)
    return Throttle(Policy(**args), clock=clock), clock  # type: ignore[arg-type]


def fail(t: Throttle, ip: str, login: str, password: bytes) -> float:
    a = t.start(ip, login, password)
    t.finish(a, ok=False)
    return a.delay


def test_penalty_doubles_from_the_first_failure_and_is_capped_like_dovecot() -> None:
    t, _ = make()
    delays = [fail(t, "192.0.2.1", ALICE, b"pw%d" % i) for i in range(7)]
    assert delays == [0, 2, 4, 8, 15, 15, 15]


def test_failures_from_one_address_never_delay_the_account_elsewhere() -> None:
    """Issue 10 item 1: 200 wrong passwords for alice from .5; alice from .9 waits nothing."""
    t, _ = make()
    for i in range(200):
        fail(t, "127.0.0.5", ALICE, b"guess%d" % i)
    a = t.start("127.0.0.9", ALICE, b"right")
    assert a.delay == 0
    t.finish(a, ok=True)
    assert t.pending_delay("127.0.0.9", ALICE) == 0


def test_the_attacking_address_is_delayed_at_most_the_cap_for_any_account() -> None:
    t, _ = make()
    for i in range(200):
        fail(t, "127.0.0.1", ALICE, b"guess%d" % i)
    assert t.start("127.0.0.1", ALICE, b"right").delay == 15  # delayed, not refused
    assert t.start("127.0.0.1", BOB, b"bobs").delay == 15  # a spray from this address slows all of it


def test_a_few_failures_of_one_account_do_not_slow_its_neighbours_behind_a_nat() -> None:
    t, _ = make()
    for i in range(5):
        fail(t, "198.51.100.7", ALICE, b"typo%d" % i)
    assert t.pending_delay("198.51.100.7", ALICE) == 15.0
    assert t.start("198.51.100.7", BOB, b"x").delay == 0  # under ip_free: other accounts are not slowed


def test_parallel_attempts_count_while_in_flight() -> None:
    """Issue 10 item 2: 50 wrong passwords sent at once wait like 50 in a row."""
    t, _ = make(failure_delay=0.1, max_delay=1.0)
    attempts = [t.start("192.0.2.1", ALICE, b"guess%d" % i) for i in range(50)]
    delays = [a.delay for a in attempts]
    assert delays[:5] == [0, 0.1, 0.2, 0.4, 0.8]
    assert all(d == 1.0 for d in delays[5:])
    assert sum(1 for d in delays if d == 0) == 1  # only one check starts without waiting
    for a in attempts:
        t.finish(a, ok=False)
    assert t.start("192.0.2.1", ALICE, b"next").delay == 1.0


def test_parallel_attempts_for_many_accounts_from_one_address_count_too() -> None:
    t, _ = make(failure_delay=0.1, max_delay=1.0, ip_free=10)
    delays = [t.start("192.0.2.1", f"user{i}@example.test", b"pw").delay for i in range(30)]
    assert delays[:11] == [0] * 11
    assert delays[11:14] == [0.1, 0.2, 0.4]  # beyond ip_free in flight: the address is slowed


def test_same_password_in_flight_is_one_attempt() -> None:
    """A client opening 5 connections with the right password: one check, no penalty."""
    t, _ = make()
    attempts = [t.start("192.0.2.1", ALICE, b"right") for _ in range(5)]
    assert [a.delay for a in attempts] == [0] * 5
    assert [a.first for a in attempts] == [True, False, False, False, False]
    for a in attempts:
        t.finish(a, ok=True)
    assert t.pending_delay("192.0.2.1", ALICE) == 0


def test_the_same_wrong_password_again_counts_once() -> None:
    """A phone retrying a stale password (Dovecot's auth_penalty ignores repeats too)."""
    t, _ = make()
    for _ in range(10):
        fail(t, "192.0.2.1", ALICE, b"old-password")
    assert t.pending_delay("192.0.2.1", ALICE) == 2.0  # one failure


def test_success_clears_the_pair_but_not_the_address() -> None:
    t, _ = make(ip_free=2)
    for i in range(4):
        fail(t, "192.0.2.1", ALICE, b"g%d" % i)
    ok = t.start("192.0.2.1", ALICE, b"right")
    t.finish(ok, ok=True)
    # the pair is clean, the address still has 4 failures (2 over ip_free)
    assert t.pending_delay("192.0.2.1", ALICE) == 4.0
    assert t.pending_delay("192.0.2.1", BOB) == 4.0


def test_failures_expire_after_the_window() -> None:
    t, clock = make()
    for i in range(3):
        fail(t, "192.0.2.1", ALICE, b"g%d" % i)
    clock.now += 599
    assert t.pending_delay("192.0.2.1", ALICE) == 8.0
    clock.now += 2
    assert t.pending_delay("192.0.2.1", ALICE) == 0
    assert t.start("192.0.2.1", ALICE, b"x").delay == 0


def test_account_alarm_is_reported_once_and_never_delays() -> None:
    t, _ = make(account_alarm=20)
    raised = []
    for i in range(40):
        a = t.start(f"10.0.0.{i}", ALICE, b"g%d" % i)
        assert a.delay == 0  # never by account alone
        raised.append(t.finish(a, ok=False))
    assert raised.count(True) == 1 and raised.index(True) == 19
    assert t.account_failures(ALICE.upper()) == 40
    assert any(b.kind == "account" and b.account == ALICE for b in t.blocks())


def test_blocks_lists_penalties_in_force() -> None:
    t, _ = make(ip_free=2)
    for i in range(5):
        fail(t, "192.0.2.1", ALICE, b"g%d" % i)
    blocks = {(b.kind, b.ip, b.account): b for b in t.blocks()}
    assert blocks[("pair", "192.0.2.1", ALICE)].failures == 5
    assert blocks[("pair", "192.0.2.1", ALICE)].delay == 15
    assert blocks[("ip", "192.0.2.1", "")].delay == 8.0  # 3 over ip_free: 2, 4, 8
    assert 0 < blocks[("ip", "192.0.2.1", "")].expires_in <= 600


def test_unblock_an_address_lifts_it_and_its_pairs() -> None:
    t, _ = make(ip_free=2)
    for i in range(5):
        fail(t, "192.0.2.1", ALICE, b"g%d" % i)
        fail(t, "192.0.2.2", ALICE, b"g%d" % i)
    assert t.unblock("192.0.2.1") == 2
    assert t.pending_delay("192.0.2.1", ALICE) == 0
    assert t.pending_delay("192.0.2.2", ALICE) == 15  # the other address keeps its penalty


def test_unblock_an_account_lifts_its_pairs_everywhere() -> None:
    t, _ = make(ip_free=100)
    for i in range(5):
        fail(t, "192.0.2.1", ALICE, b"g%d" % i)
        fail(t, "192.0.2.2", ALICE, b"g%d" % i)
        fail(t, "192.0.2.1", BOB, b"g%d" % i)
    assert t.unblock("Alice@Example.test") == 2  # its two pairs
    assert t.pending_delay("192.0.2.1", ALICE) == t.pending_delay("192.0.2.2", ALICE) == 0
    assert t.pending_delay("192.0.2.1", BOB) == 15


def test_ipv6_counts_per_64() -> None:
    t, _ = make(ip_free=0)
    fail(t, "2001:db8:1:2::1", ALICE, b"g")
    assert t.pending_delay("2001:db8:1:2::99", BOB) == 2.0
    assert t.pending_delay("2001:db8:1:3::1", BOB) == 0


def test_memory_is_bounded() -> None:
    t, clock = make(max_tracked=60)
    for i in range(2000):
        clock.now += 0.01
        fail(t, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", f"user{i}", b"g")
        assert t.tracked() <= 60
    assert t.pending_delay("10.0.7.207", "user1999") == 2.0  # the newest are kept


def test_odd_addresses_do_not_raise() -> None:
    t, _ = make()
    for ip in ("not-an-ip", "fe80::1%eth0", ""):
        fail(t, ip, ALICE, b"g")
    t.unblock("not-an-ip")


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2), st.booleans(),
                          st.booleans()), max_size=60))
def test_counts_stay_sane_under_any_interleaving(ops: list[tuple[int, int, int, bool, bool]]) -> None:
    t, clock = make(failure_delay=1, max_delay=5, ip_free=1)
    running = []
    for ip, acct, pw, finish_one, ok in ops:
        clock.now += 1
        a = t.start(f"10.0.0.{ip}", f"u{acct}", b"p%d" % pw)
        assert 0 <= a.delay <= 5
        running.append(a)
        if finish_one and running:
            t.finish(running.pop(0), ok)
    for a in running:
        t.finish(a, False)
    assert all(e.inflight == 0 and not e.running for e in t._pairs.values())
    assert all(e.inflight == 0 for e in t._ips.values())
