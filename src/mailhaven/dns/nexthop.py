"""Next-hop selection for outbound delivery: MX records -> the ordered hosts to try (pure).

Owns: RFC 5321 §5.1 ordering (ascending preference, random order among equal preferences, so load
spreads), the implicit MX (no MX records -> the domain itself), and RFC 7505 null MX ("this domain
accepts no mail"). Does not own: the lookups (dns/resolver.py) or connecting (delivery/remote.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class NullMX:
    """The domain publishes a null MX (RFC 7505): it accepts no mail, bounce with 556 5.1.10."""

    domain: str
    code: int = 556  # RFC 7505 §4.2
    enhanced: str = "5.1.10"  # RFC 7505 §4.2


@dataclass(frozen=True)
class Hosts:
    """Hosts to try in this order; `implicit` when there was no MX and the domain itself is used."""

    hosts: tuple[str, ...]
    implicit: bool = False


def next_hops(domain: str, mx: Sequence[tuple[int, str]],
              shuffle: Callable[[list[str]], None] = random.shuffle) -> Hosts | NullMX:
    """Order the MX list of domain. `shuffle` permutes a list in place (inject for tests)."""
    domain = domain.lower().rstrip(".")
    if not mx:
        return Hosts((domain,), implicit=True)  # RFC 5321 §5.1: implicit MX, preference 0
    # RFC 7505 §3: a null MX is a single MX record, preference 0, exchange ".".
    if any(_host(h) == "" for _, h in mx):
        if len(mx) == 1 and mx[0][0] == 0:
            return NullMX(domain)
        # RFC 7505 §3: a "." mixed with real MX records is a misconfiguration; ignore the "." ones.
        mx = [(p, h) for p, h in mx if _host(h) != ""]
    by_pref: dict[int, list[str]] = {}
    for pref, host in mx:
        name = _host(host)
        bucket = by_pref.setdefault(pref, [])
        if name not in bucket:
            bucket.append(name)
    ordered: list[str] = []
    seen: set[str] = set()
    for pref in sorted(by_pref):  # RFC 5321 §5.1: lowest preference first
        group = [h for h in by_pref[pref] if h not in seen]
        shuffle(group)  # RFC 5321 §5.1: randomise among equal preferences
        ordered.extend(group)
        seen.update(group)
    return Hosts(tuple(ordered))


def _host(host: str) -> str:
    return host.lower().rstrip(".")


__all__ = ["NullMX", "Hosts", "next_hops"]
