"""Connection counting and login throttling, shared by every listener.

Owns: "may this connection open" (listener max_connections, per-IP connections) and "may this login
attempt proceed, and after how long" (config.auth: failure_delay per recent failure, capped at
MAX_AUTH_DELAY; refuse over max_failures_per_ip / max_failures_per_account within failure_window).
Does not own: checking passwords (auth/users.py) or the protocol replies for a refusal.

Client IPs are grouped: IPv4-mapped IPv6 counts as the IPv4 address, other IPv6 addresses count
per /64 (one host usually has a whole /64). Memory is bounded: failure lists keep at most the
number of entries that matter, expired entries are pruned, and at most MAX_TRACKED keys are kept
(oldest dropped first). Single-threaded: call from the event loop only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from collections.abc import Awaitable, Callable

from mailhaven.config import Config, ListenerConfig
from mailhaven.sendrate import SendRate

MAX_AUTH_DELAY = 5.0  # seconds; the most before_auth() ever waits
MAX_TRACKED = 100_000  # failure keys (IPs + accounts) remembered at most
MAX_LOGIN_KEY = 320  # longer logins are truncated for tracking


def ip_key(ip: str) -> str:
    """The unit an IP is counted in: IPv4 address, or IPv6 /64."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if addr.is_loopback:
            return str(addr)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def _login_key(login: str) -> str:
    return login[:MAX_LOGIN_KEY].lower()


class Limits:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, max_tracked: int = MAX_TRACKED) -> None:
        self.config = config
        self.max_tracked = max_tracked
        self._clock = clock
        self._sleep = sleep
        self._conns: dict[str, int] = {}  # listener -> open connections
        self._ip_conns: dict[tuple[str, str], int] = {}  # (listener, ip key) -> open connections
        self._fail_ip: dict[str, deque[float]] = {}
        self._fail_acct: dict[str, deque[float]] = {}
        self.sending = SendRate(clock=clock)  # per-user submission counts (sendrate.py, config [submission])

    def update_config(self, config: Config) -> None:
        """Reload: new limits apply to new connections and attempts; counts are kept."""
        self.config = config

    # -- connections --

    def connection_opened(self, listener: str, ip: str, lc: ListenerConfig) -> bool:
        """Count a new connection; False = refuse it (and do not call connection_closed)."""
        key = (listener, ip_key(ip))
        if self._conns.get(listener, 0) >= lc.max_connections:
            return False
        if self._ip_conns.get(key, 0) >= lc.per_ip_connections:
            return False
        self._conns[listener] = self._conns.get(listener, 0) + 1
        self._ip_conns[key] = self._ip_conns.get(key, 0) + 1
        return True

    def connection_closed(self, listener: str, ip: str) -> None:
        key = (listener, ip_key(ip))
        n = self._conns.get(listener, 0) - 1
        if n > 0:
            self._conns[listener] = n
        else:
            self._conns.pop(listener, None)
        m = self._ip_conns.get(key, 0) - 1
        if m > 0:
            self._ip_conns[key] = m
        else:
            self._ip_conns.pop(key, None)

    def connections(self, listener: str, ip: str | None = None) -> int:
        """Open connections on a listener (from one IP when given); for metrics and tests."""
        if ip is None:
            return self._conns.get(listener, 0)
        return self._ip_conns.get((listener, ip_key(ip)), 0)

    # -- login throttling --

    def _recent(self, table: dict[str, deque[float]], key: str) -> int:
        q = table.get(key)
        if q is None:
            return 0
        horizon = self._clock() - self.config.auth.failure_window
        while q and q[0] <= horizon:
            q.popleft()
        if not q:
            del table[key]
            return 0
        return len(q)

    def recent_failures(self, ip: str, login: str | None = None) -> tuple[int, int]:
        """(failures from this IP, failures for this account) within failure_window."""
        n_ip = self._recent(self._fail_ip, ip_key(ip))
        n_acct = self._recent(self._fail_acct, _login_key(login)) if login else 0
        return n_ip, n_acct

    def blocked(self, ip: str, login: str | None = None) -> bool:
        """True when this IP or account is over its failure limit (no waiting)."""
        a = self.config.auth
        n_ip, n_acct = self.recent_failures(ip, login)
        return n_ip >= a.max_failures_per_ip or n_acct >= a.max_failures_per_account

    async def before_auth(self, ip: str, login: str | None = None) -> bool:
        """Call before checking a password. Waits failure_delay per recent failure (capped at
        MAX_AUTH_DELAY); returns False when the caller must refuse without checking."""
        a = self.config.auth
        n_ip, n_acct = self.recent_failures(ip, login)
        delay = min(MAX_AUTH_DELAY, a.failure_delay * max(n_ip, n_acct))
        if delay > 0:
            await self._sleep(delay)
        return not (n_ip >= a.max_failures_per_ip or n_acct >= a.max_failures_per_account)

    def _record(self, table: dict[str, deque[float]], key: str, keep: int, now: float) -> None:
        q = table.get(key)
        if q is None:
            if len(self._fail_ip) + len(self._fail_acct) >= self.max_tracked:
                self._prune(now)
            if len(self._fail_ip) + len(self._fail_acct) >= self.max_tracked:
                fullest = max(self._fail_ip, self._fail_acct, key=len)
                del fullest[next(iter(fullest))]  # still full: forget the oldest key
            q = table[key] = deque(maxlen=keep)
        q.append(now)

    def _prune(self, now: float) -> None:
        horizon = now - self.config.auth.failure_window
        for table in (self._fail_ip, self._fail_acct):
            for key in [k for k, q in table.items() if not q or q[-1] <= horizon]:
                del table[key]

    def auth_failed(self, ip: str, login: str | None = None) -> None:
        a = self.config.auth
        now = self._clock()
        # Never more entries than the larger limit can use (bounded memory per key).
        keep = max(a.max_failures_per_ip, a.max_failures_per_account) + 1
        self._record(self._fail_ip, ip_key(ip), keep, now)
        if login:
            self._record(self._fail_acct, _login_key(login), keep, now)

    def auth_succeeded(self, ip: str, login: str | None = None) -> None:
        """A good login clears that account's failures (the IP's failures only age out, so one
        valid account does not reset an attacker's count)."""
        if login:
            self._fail_acct.pop(_login_key(login), None)

    def tracked_keys(self) -> int:
        return len(self._fail_ip) + len(self._fail_acct)


__all__ = ["Limits", "ip_key", "MAX_AUTH_DELAY", "MAX_TRACKED"]
