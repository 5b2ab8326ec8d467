"""Client addresses as the policy and limit code compares them.

Owns: `client_ip`, the one reading of a peer address string: the zone id ("%eth0") dropped, and an
IPv4-mapped IPv6 address (::ffff:192.0.2.1, what a dual-stack socket reports for an IPv4 client)
taken as the IPv4 address it stands for.
Does not own: what is done with it (limits.py, policy/dnsbl.py, policy/greylist.py, proxyaccept.py).
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_ip(ip: str) -> IPAddress:
    """The address `ip` names (ValueError for a string that is not one)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


__all__ = ["IPAddress", "client_ip"]
