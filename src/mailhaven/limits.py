"""Connection counting, shared by every listener.

Owns: "may this connection open" (listener max_connections, per-IP connections).
Does not own: login throttling (auth/throttle.py, used through auth/login.py), checking passwords,
or the protocol replies for a refusal.

Client IPs are grouped: IPv4-mapped IPv6 counts as the IPv4 address, other IPv6 addresses count
per /64 (one host usually has a whole /64). Single-threaded: call from the event loop only.
"""

from __future__ import annotations

import ipaddress

from mailhaven.config import Config, ListenerConfig


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


class Limits:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._conns: dict[str, int] = {}  # listener -> open connections
        self._ip_conns: dict[tuple[str, str], int] = {}  # (listener, ip key) -> open connections

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


__all__ = ["Limits", "ip_key"]
