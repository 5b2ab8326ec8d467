"""SRS: the Sender Rewriting Scheme for forwarded mail (pure; the "Guarded" scheme of libsrs2).

Owns: rewriting the envelope sender of a copy we forward to another server, so that SPF at the
destination checks our domain and not the original sender's, and reversing such an address when a
bounce comes back to it. The forms (Shevek, "Sender Rewriting Scheme", as libsrs2 and postsrsd
write them):
- SRS0=HHHH=TT=domain=local@srsdomain  for a sender we are the first hop of;
- SRS1=HHHH=firsthop=<opaque>@srsdomain  for a sender that already was SRS0 (re-forwarding): a
  bounce goes straight back to the first hop, which holds the original sender.
HHHH is base64 of HMAC-SHA1(secret, lower-cased hashed text), the first 4 characters, compared
without regard to case (libsrs2 does, because some relays lower-case local parts); TT is the day
number modulo 1024 in two base32 digits (A-Z2-7), valid for 21 days (libsrs2's default maxage).

Does not own: which senders are rewritten (delivery/forward.py: the null sender and our own
domains are not), where the secret lives (config.py `[delivery]`, cli.py `init`).

Why not srslib: it is the test oracle (tests/test_srs.py compares both directions on generated
vectors), but it is unmaintained since 2017 and its reverse accepts a hash of ANY length the
address carries (a one-character hash is one in 64 to forge); this module requires the full length.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

HASH_LENGTH = 4
MAX_AGE_DAYS = 21  # libsrs2's default maxage
_DAY = 86400
_TS_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # base32 digits, as the SRS paper and libsrs2
_TS_MODULO = 1 << 10  # two base32 digits
SEPARATORS = "=+-"  # the separator after SRS0/SRS1 (libsrs2 accepts any of them)


class SrsError(ValueError):
    """Not an SRS address we made and still honour: forged, mangled or expired."""


def is_srs(local: str) -> bool:
    """Whether a local part looks like SRS0 or SRS1 (case-insensitive prefix and a separator)."""
    return len(local) > 5 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in SEPARATORS


def _hash(secret: bytes, text: str) -> str:
    digest = hmac.new(secret, text.lower().encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest)[:HASH_LENGTH].decode("ascii")


def timestamp(now: float) -> str:
    """Today's day number modulo 1024 as two base32 digits."""
    day = int(now // _DAY)
    return _TS_ALPHABET[(day >> 5) & 31] + _TS_ALPHABET[day & 31]


def _ts_age(ts: str, now: float) -> int:
    """Days from the timestamp `ts` to today, modulo 1024; SrsError when `ts` is no timestamp."""
    ts = ts.upper()
    if len(ts) != 2 or any(c not in _TS_ALPHABET for c in ts):
        raise SrsError("bad SRS timestamp")
    then = _TS_ALPHABET.index(ts[0]) << 5 | _TS_ALPHABET.index(ts[1])
    return (int(now // _DAY) - then) % _TS_MODULO


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise SrsError(f"not an address: {address!r}")
    return local, domain


@dataclass(frozen=True)
class Srs:
    """SRS with one secret (`previous`: older secrets still accepted when reversing, for a
    rotation) and the domain our rewritten addresses are in."""

    secret: bytes
    domain: str
    previous: tuple[bytes, ...] = ()

    def forward(self, sender: str, now: float | None = None) -> str:
        """The rewritten sender for a copy we forward (SRS1 for an SRS0/SRS1 sender, else SRS0)."""
        local, host = _split(sender)
        if local[:4].upper() == "SRS1" and len(local) > 5 and local[4] in SEPARATORS:
            # SRS1=HHHH=firsthop=<opaque>: keep the first hop and its opaque part, our own hash.
            parts = local[5:].split("=", 2)
            if len(parts) == 3 and parts[1] and parts[2][:1] in SEPARATORS:
                first_hop, opaque = parts[1], parts[2]
                return f"SRS1={_hash(self.secret, first_hop + opaque)}={first_hop}={opaque}@{self.domain}"
        if local[:4].upper() == "SRS0" and len(local) > 4 and local[4] in SEPARATORS:
            opaque = local[4:]  # with its leading separator
            return f"SRS1={_hash(self.secret, host + opaque)}={host}={opaque}@{self.domain}"
        ts = timestamp(time.time() if now is None else now)
        return f"SRS0={_hash(self.secret, ts + host + local)}={ts}={host}={local}@{self.domain}"

    def reverse(self, address: str, now: float | None = None) -> str:
        """Where a bounce to `address` goes: the original sender (SRS0) or the first hop's SRS0
        address (SRS1). SrsError when the hash is wrong or short, or an SRS0 timestamp expired."""
        local, _domain = _split(address)
        if not is_srs(local):
            raise SrsError("not an SRS address")
        kind, rest = local[:4].upper(), local[5:]
        if kind == "SRS1":
            parts = rest.split("=", 2)
            if len(parts) != 3 or not parts[1] or parts[2][:1] not in SEPARATORS or len(parts[2]) < 2:
                raise SrsError("malformed SRS1 address")
            h, first_hop, opaque = parts
            self._check(h, first_hop + opaque)
            return f"SRS0{opaque}@{first_hop}"
        parts = rest.split("=", 3)
        if len(parts) != 4 or not all(parts):
            raise SrsError("malformed SRS0 address")
        h, ts, host, orig_local = parts
        self._check(h, ts + host + orig_local)
        if _ts_age(ts, time.time() if now is None else now) >= MAX_AGE_DAYS:
            raise SrsError("SRS address expired")
        return f"{orig_local}@{host}"

    def _check(self, h: str, text: str) -> None:
        # The full length, case-insensitive (libsrs2: srs_hash_check); constant time per secret.
        if len(h) != HASH_LENGTH:
            raise SrsError("bad SRS hash")
        for secret in (self.secret, *self.previous):
            if hmac.compare_digest(h.lower().encode("ascii", "replace"), _hash(secret, text).lower().encode("ascii")):
                return
        raise SrsError("bad SRS hash")


__all__ = ["Srs", "SrsError", "is_srs", "timestamp", "HASH_LENGTH", "MAX_AGE_DAYS"]
