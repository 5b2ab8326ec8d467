"""Login throttling state: how long a login attempt waits, by client address and by (address, account).

Owns: counting login attempts (from the moment they start) and failures per client address and per
(address, account) pair, the penalty delay derived from them, the account-wide alarm, bounded
memory and expiry, and the listing and lifting of penalties (`mailhaven auth blocks` / `unblock`).
Does not own: sleeping, password checks, caching or logging (auth/login.py); connection counting
(limits.py). Pure: no I/O, no asyncio; the clock is injected. Call from one thread (the loop).

The model is Dovecot's auth_penalty: a login is never refused for failures, it is delayed, and the
delay grows with recent failures: `failure_delay * 2**(n-1)`, capped at `max_delay` (Dovecot:
2 s doubling to 15 s). Differences from Dovecot:

- n is the larger of two counts: failures plus checks in flight for this (address, account) pair,
  and failures plus checks in flight from the whole address minus `ip_free` (so one stale phone
  behind an office NAT slows only its own account; a password spray from one address slows every
  login from it once it passes `ip_free` failures). Never by account alone: failures from other
  addresses never delay a login.
- Attempts count when they start (`start`), not when their check returns, so parallel attempts see
  each other: the k-th wrong password sent at once on k connections waits like the k-th in a row.
- A failure with the same password as a recent failure of that pair is not counted again (a client
  retrying a stale password; Dovecot does the same with a password checksum), and attempts with the
  same password in flight at once count once (the caller checks the password once for all of them).
- A success clears its pair; the address's failures only age out (a valid account of an attacker
  does not wipe its record).
- Per-account failures from all addresses are counted too, for an alarm only: crossing
  `account_alarm` within the window is reported once (log and metric), never refused.

Several nodes (PostgreSQL): the failures every node counted (auth/throttle_pg.py) come in as
`start`'s `elsewhere` and stand for this process's own (they include them; a success on another
node cleared them there); attempts in flight stay this process's, and its own counts are kept for
when the database fails. Which failures to pass on is `Attempt.counted` (the fingerprints are per process).

Entries expire `window` seconds after their last failure (a count restarts from zero then). At most
`max_tracked` entries are kept: expired ones are dropped first, then the least recently used ones
with no attempt in flight.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from mailhaven.limits import ip_key  # an IPv4 address or an IPv6 /64

MAX_TRACKED = 100_000  # entries (addresses + pairs + accounts) remembered at most
MAX_LOGIN_KEY = 320  # longer logins are truncated for tracking
RECENT_PASSWORDS = 4  # failed-password fingerprints remembered per pair

K = TypeVar("K")


def account_key(login: str) -> str:
    return login[:MAX_LOGIN_KEY].lower()


@dataclass(frozen=True)
class Policy:
    failure_delay: float = 2.0  # penalty after one failure (0 = never delay)
    max_delay: float = 15.0  # the most any attempt waits
    window: float = 900.0  # failures are forgotten this long after the last one
    ip_free: int = 10  # failures from one address before all its logins are delayed
    account_alarm: int = 20  # failures for one account (all addresses) that raise the alarm
    max_tracked: int = MAX_TRACKED

    def delay(self, n: int) -> float:
        """The penalty after n failures (Dovecot auth_penalty: doubling, capped)."""
        if n <= 0 or self.failure_delay <= 0:
            return 0.0
        return min(self.max_delay, self.failure_delay * 2.0 ** min(n - 1, 62))


@dataclass
class _Entry:
    failures: int = 0
    last: float = 0.0  # time of the last failure
    inflight: int = 0  # distinct checks running
    fingerprints: list[bytes] = field(default_factory=list)  # recent failed passwords (pairs only)
    running: dict[bytes, int] = field(default_factory=dict)  # fingerprint -> attempts (pairs only)
    alarmed: bool = False  # accounts only


@dataclass
class Attempt:
    """One login attempt, from `start` until `finish` (call it exactly once, also on cancellation)."""

    ip: str
    account: str
    fingerprint: bytes
    delay: float  # how long to wait before checking
    first: bool  # the first attempt in flight with this password: it does the check
    done: bool = False
    counted: bool = False  # set by finish: a failure that counted (not a recent password again)


@dataclass(frozen=True)
class Block:
    """A penalty in force (for `mailhaven auth blocks`)."""

    kind: str  # "ip", "pair" or "account" (account: alarm only, never delays)
    ip: str
    account: str
    failures: int
    delay: float  # what the next attempt waits
    expires_in: float


class Throttle:
    def __init__(self, policy: Policy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._ips: dict[str, _Entry] = {}
        self._pairs: dict[tuple[str, str], _Entry] = {}
        self._accounts: dict[str, _Entry] = {}

    def update_policy(self, policy: Policy) -> None:
        """Reload: new settings apply to the next attempts; counts are kept."""
        self.policy = policy

    # -- attempts --

    def start(self, ip: str, login: str, fingerprint: bytes, elsewhere: tuple[int, int] | None = None) -> Attempt:
        """Register an attempt as it starts and say how long it waits. `elsewhere`: the failures of
        the pair and of the address that every node counted (they include ours), used instead of ours."""
        now = self._clock()
        ipk, acct = ip_key(ip), account_key(login)
        ip_e = self._get(self._ips, ipk, now)
        pair = self._get(self._pairs, (ipk, acct), now)
        first = pair.running.get(fingerprint, 0) == 0
        pair_failures, ip_failures = (pair.failures, ip_e.failures) if elsewhere is None else elsewhere
        n_pair = pair_failures + pair.inflight - (0 if first else 1)
        n_ip = ip_failures + ip_e.inflight - (0 if first else 1) - self.policy.ip_free
        delay = self.policy.delay(max(n_pair, n_ip))
        pair.running[fingerprint] = pair.running.get(fingerprint, 0) + 1
        if first:
            pair.inflight += 1
            ip_e.inflight += 1
        return Attempt(ipk, acct, fingerprint, delay, first)

    def finish(self, attempt: Attempt, ok: bool) -> bool:
        """The attempt ended (ok = the password was right). A failure counts unless the pair failed
        with this password recently. Returns True when this failure raised the account alarm."""
        if attempt.done:
            return False
        attempt.done = True
        now = self._clock()
        ip_e = self._ips.get(attempt.ip)
        pair = self._pairs.get((attempt.ip, attempt.account))
        if pair is not None:
            left = pair.running.get(attempt.fingerprint, 0) - 1
            if left > 0:
                pair.running[attempt.fingerprint] = left
            else:
                pair.running.pop(attempt.fingerprint, None)
            if attempt.first:
                pair.inflight = max(0, pair.inflight - 1)
        if attempt.first and ip_e is not None:
            ip_e.inflight = max(0, ip_e.inflight - 1)
        if ok:
            if pair is not None:
                pair.failures, pair.fingerprints = 0, []
            return False
        if pair is None:
            pair = self._get(self._pairs, (attempt.ip, attempt.account), now)
        if attempt.fingerprint in pair.fingerprints:
            return False  # the same wrong password again: counted once
        pair.fingerprints = (pair.fingerprints + [attempt.fingerprint])[-RECENT_PASSWORDS:]
        attempt.counted = True
        self._fail(pair, now)
        self._fail(ip_e if ip_e is not None else self._get(self._ips, attempt.ip, now), now)
        acct = self._get(self._accounts, attempt.account, now)
        self._fail(acct, now)
        if acct.failures >= self.policy.account_alarm and not acct.alarmed:
            acct.alarmed = True
            return True
        return False

    def account_failures(self, login: str) -> int:
        """Recent failures for an account from every address (the alarm's count)."""
        e = self._accounts.get(account_key(login))
        return 0 if e is None or self._expired(e, self._clock()) else e.failures

    def pending_delay(self, ip: str, login: str) -> float:
        """What an attempt starting now would wait (no side effect)."""
        now = self._clock()
        ipk = ip_key(ip)
        ip_e, pair = self._ips.get(ipk), self._pairs.get((ipk, account_key(login)))
        n_pair = 0 if pair is None or self._expired(pair, now) else pair.failures + pair.inflight
        n_ip = 0 if ip_e is None or self._expired(ip_e, now) else ip_e.failures + ip_e.inflight
        return self.policy.delay(max(n_pair, n_ip - self.policy.ip_free))

    # -- operators --

    def blocks(self) -> list[Block]:
        """Every penalty in force now, longest delay first; account alarms last."""
        now = self._clock()
        p = self.policy
        out: list[Block] = []
        for ipk, e in self._ips.items():
            if not self._expired(e, now) and e.failures > p.ip_free:
                out.append(Block("ip", ipk, "", e.failures, p.delay(e.failures - p.ip_free),
                                 e.last + p.window - now))
        for (ipk, acct), e in self._pairs.items():
            if not self._expired(e, now) and e.failures > 0:
                out.append(Block("pair", ipk, acct, e.failures, p.delay(e.failures), e.last + p.window - now))
        out.sort(key=lambda b: (-b.delay, -b.failures))
        for acct, e in self._accounts.items():
            if not self._expired(e, now) and e.failures >= p.account_alarm:
                out.append(Block("account", "", acct, e.failures, 0.0, e.last + p.window - now))
        return out

    def unblock(self, target: str) -> int:
        """Lift penalties: an IP address (or a network as `blocks` lists it) clears that address
        and its pairs; anything else is an account: its pairs on every address and its alarm.
        Returns how many of the `blocks()` lines it lifted."""
        target = target.strip()
        try:
            ipaddress.ip_network(target, strict=False)
            is_ip = True
        except ValueError:
            is_ip = False
        if is_ip:
            ipk = target if "/" in target else ip_key(target)
            lifted = sum(1 for b in self.blocks() if b.ip == ipk)
            entries = [e for k, e in self._pairs.items() if k[0] == ipk]
            if ipk in self._ips:
                entries.append(self._ips[ipk])
        else:
            acct = account_key(target)
            lifted = sum(1 for b in self.blocks() if b.account == acct)
            entries = [e for k, e in self._pairs.items() if k[1] == acct]
            if acct in self._accounts:
                entries.append(self._accounts[acct])
        for e in entries:
            e.failures, e.fingerprints, e.alarmed = 0, [], False
        self._prune(self._clock())
        return lifted

    def tracked(self) -> int:
        return len(self._ips) + len(self._pairs) + len(self._accounts)

    # -- internals --

    def _expired(self, e: _Entry, now: float) -> bool:
        return e.failures > 0 and now - e.last >= self.policy.window

    def _fail(self, e: _Entry, now: float) -> None:
        if self._expired(e, now):
            e.failures, e.fingerprints, e.alarmed = 0, [], False
        e.failures += 1
        e.last = now

    def _get(self, table: dict[K, _Entry], key: K, now: float) -> _Entry:
        e = table.pop(key, None)
        if e is None:
            if self.tracked() >= self.policy.max_tracked:
                self._prune(now)
                self._evict()
            e = _Entry()
        elif self._expired(e, now):
            e.failures, e.fingerprints, e.alarmed = 0, [], False
        table[key] = e  # most recently used last
        return e

    def _prune(self, now: float) -> None:
        """Drop entries with nothing to remember: no attempt running and no live failures."""
        def idle(e: _Entry) -> bool:
            return e.inflight == 0 and not e.running and (e.failures == 0 or self._expired(e, now))

        self._ips = {k: e for k, e in self._ips.items() if not idle(e)}
        self._pairs = {k: e for k, e in self._pairs.items() if not idle(e)}
        self._accounts = {k: e for k, e in self._accounts.items() if not idle(e)}

    def _evict(self) -> None:
        """Still full: forget the least recently used entries with nothing in flight (a tenth of
        the room), pairs first."""
        room = max(1, self.policy.max_tracked // 10)
        room = _drop_oldest(self._pairs, room)
        room = _drop_oldest(self._accounts, room)
        _drop_oldest(self._ips, room)


def _drop_oldest(table: dict[K, _Entry], room: int) -> int:
    """Delete up to `room` idle entries, oldest first; returns the room left."""
    if room <= 0:
        return 0
    for k in [k for k, e in table.items() if e.inflight == 0 and not e.running][:room]:
        del table[k]
        room -= 1
    return room


__all__ = ["Throttle", "Policy", "Attempt", "Block", "ip_key", "account_key", "MAX_TRACKED"]
