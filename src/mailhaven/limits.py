"""Connection counting, shared by every listener.

Owns: "may this connection open" (listener max_connections, per-IP connections; a full listener
evicts its oldest evictable session first; refusals reported in the log, at most one line per
address a minute).
Does not own: login throttling (auth/throttle.py, used through auth/login.py), checking passwords,
or the protocol replies for a refusal.

Client IPs are grouped: IPv4-mapped IPv6 counts as the IPv4 address, other IPv6 addresses count
per /64 (one host usually has a whole /64). Single-threaded: call from the event loop only.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Literal, Protocol

from mailhaven import log as mhlog
from mailhaven.config import Config, ListenerConfig
from mailhaven.netaddr import client_ip
from mailhaven.sendrate import SendRate

MAX_TRACKED = 100_000  # addresses whose refusals are remembered at most
REFUSAL_LOG_INTERVAL = 60.0  # seconds; at most one "connection refused" line per address this often

Refusal = Literal["per_ip", "total"]
log = logging.getLogger("mailhaven.limits")


class Evictable(Protocol):
    """A session that may be closed to make room for a new connection."""

    def evict(self) -> None:
        """Say goodbye and close; give the slot back (connection_closed) before returning."""


def ip_key(ip: str) -> str:
    """The unit an IP is counted in: IPv4 address, or IPv6 /64."""
    try:
        addr = client_ip(ip)
    except ValueError:
        return ip[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.is_loopback:
            return str(addr)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class Limits:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = MAX_TRACKED) -> None:
        self.config = config
        self.max_tracked = max_tracked
        self._clock = clock
        self._conns: dict[str, int] = {}  # listener -> open connections
        self._ip_conns: dict[tuple[str, str], int] = {}  # (listener, ip key) -> open connections
        self._evictable: dict[str, dict[Evictable, None]] = {}  # listener -> sessions, oldest first
        self._refusals: dict[tuple[str, str], list[float]] = {}  # (listener, ip key) -> [logged at, since]
        self.sending = SendRate(clock=clock)  # per-user submission counts (sendrate.py, config [submission])

    def update_config(self, config: Config) -> None:
        """Reload: new limits apply to new connections and attempts; counts are kept."""
        self.config = config

    # -- connections --

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

    # -- admission with eviction, refusal reports (issue 10 items 7 and 11) --

    def admit(self, listener: str, ip: str, lc: ListenerConfig) -> Refusal | None:
        """Count a new connection in, or say why it is refused ("per_ip" or "total"; then do not
        call connection_closed). A full listener first closes its oldest evictable session to make
        room (Dovecot's login processes do the same); an address over its own share evicts no one.
        A refusal is reported in the log, at most once per address per REFUSAL_LOG_INTERVAL."""
        key = (listener, ip_key(ip))
        reason: Refusal | None = None
        if self._ip_conns.get(key, 0) >= lc.per_ip_connections:
            reason = "per_ip"
        elif self._conns.get(listener, 0) >= lc.max_connections:
            self.evict_oldest(listener)
            if self._conns.get(listener, 0) >= lc.max_connections:
                reason = "total"
        if reason is not None:
            self._report_refusal(listener, ip, reason, lc)
            return reason
        self._conns[listener] = self._conns.get(listener, 0) + 1
        self._ip_conns[key] = self._ip_conns.get(key, 0) + 1
        return None

    def evictable(self, listener: str, session: Evictable) -> None:
        """`session` may be closed to make room; it becomes the youngest candidate (the oldest is
        evicted first). IMAP, POP3, submission: from admission until login; MX: while it waits for
        its client's next command."""
        table = self._evictable.setdefault(listener, {})
        table.pop(session, None)
        table[session] = None

    def not_evictable(self, listener: str, session: Evictable) -> None:
        table = self._evictable.get(listener)
        if table is not None:
            table.pop(session, None)

    def evict_oldest(self, listener: str) -> bool:
        """Close the oldest evictable session of the listener (it gives its slot back at once, by
        connection_closed). False when there is none."""
        table = self._evictable.get(listener)
        if not table:
            return False
        session = next(iter(table))
        del table[session]
        session.evict()
        return True

    def _report_refusal(self, listener: str, ip: str, reason: Refusal, lc: ListenerConfig) -> None:
        """One log line per listener and address per REFUSAL_LOG_INTERVAL, `refused=` the number of
        refusals since the previous line (Postfix's anvil warns the same way; a flood of refusals
        cannot flood the log). Memory: at most MAX_TRACKED addresses, the oldest forgotten first."""
        now = self._clock()
        key = (listener, ip_key(ip))
        seen = self._refusals.get(key)
        if seen is not None and now - seen[0] < REFUSAL_LOG_INTERVAL:
            seen[1] += 1
            return
        count = 1 + (int(seen[1]) if seen is not None else 0)
        self._refusals.pop(key, None)
        while len(self._refusals) >= self.max_tracked:
            del self._refusals[next(iter(self._refusals))]
        self._refusals[key] = [now, 0]
        limit = lc.per_ip_connections if reason == "per_ip" else lc.max_connections
        mhlog.event(log, "connections refused", level=logging.WARNING, listener=listener, reason=reason,
                    limit=limit, refused=count, ip=ip)


__all__ = ["Evictable", "Limits", "Refusal", "ip_key", "MAX_TRACKED", "REFUSAL_LOG_INTERVAL"]
