"""ARC (RFC 8617): verify a message's chain on the MX, seal the copies we forward.

Owns: dkimpy's `arc_verify` and `arc_sign` run in a worker thread (RSA and blocking DNS), with key
lookups through OUR nameservers (policy/dkim.py's dnsfunc over `Resolver.sync_resolver()`), and the
mapping to RFC 8601 method "arc" results: none (no ARC set), pass, fail (RFC 8617 §7.2).
Does not own: what the verdict does with the result (nothing yet: it is recorded in our
Authentication-Results, RFC 8617 §7.2, and a later hop of ours reads it when it seals), the key
files (config `[domains]`), when a copy is forwarded (delivery/forward.py).

Sealing (RFC 8617 §5.1): the sealer adds ARC-Authentication-Results (a copy of our
Authentication-Results, i=N), ARC-Message-Signature and ARC-Seal with cv= taken from the arc= result
our Authentication-Results recorded (none for the first set, i=1). dkimpy needs the `authres`
package for both (dkimpy's "ARC" extra).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Literal

import dkim

from mailhaven import seams
from mailhaven.policy.authresults import header_end
from mailhaven.policy.dkim import _DnsFunc

log = logging.getLogger("mailhaven.policy")

ArcStatus = Literal["none", "pass", "fail"]
_SEAL_NAME = re.compile(rb"(?im)^arc-seal[ \t]*:")


def has_seal(message: bytes) -> bool:
    """Whether the header section has an ARC-Seal field (else the chain is "none" without a thread)."""
    return _SEAL_NAME.search(message, 0, header_end(message)) is not None


def _verify_sync(message: bytes, resolver: seams.Resolver) -> ArcStatus:
    dnsfunc = _DnsFunc(resolver.sync_resolver())
    cv, _results, reason = dkim.ARC(message, minkey=1024, timeout=resolver.timeout).verify(dnsfunc=dnsfunc)
    status = cv.decode("ascii", "replace").lower() if isinstance(cv, bytes) else str(cv).lower()
    if status not in ("none", "pass", "fail"):
        return "fail"
    if status == "fail":
        log.debug("ARC chain failed: %s", reason)
    return status  # type: ignore[return-value]


async def verify(resolver: seams.Resolver, message: bytes) -> ArcStatus:
    """The chain's validation status (RFC 8617 §5.2): none, pass or fail; off the loop."""
    if not has_seal(message):
        return "none"
    try:
        return await asyncio.to_thread(_verify_sync, message, resolver)
    except Exception as e:  # noqa: BLE001 - hostile input or a dkimpy bug: the chain is broken, not us
        log.debug("ARC verification error: %s", e)
        return "fail"


def _seal_sync(message: bytes, domain: str, selector: str, key_pem: bytes, authserv_id: str) -> bytes:
    fields = dkim.arc_sign(message, selector.encode("ascii"), domain.encode("ascii"), key_pem,
                           authserv_id.encode("utf-8"))
    return b"".join(fields)


async def seal(message: bytes, *, domain: str, selector: str, key_pem: bytes, authserv_id: str) -> bytes:
    """`message` with a new ARC set on top (i = the last set's + 1), or unchanged when dkimpy
    declines (no Authentication-Results of ours to seal, a chain that ended) or fails: forwarding
    must not stop for a seal (the error is logged)."""
    try:
        fields = await asyncio.to_thread(_seal_sync, message, domain, selector, key_pem, authserv_id)
    except Exception as e:  # noqa: BLE001 - a broken key must not lose the forwarded copy
        log.error("ARC sealing for %s failed: %s", domain, e)
        return message
    return fields + message


__all__ = ["ArcStatus", "has_seal", "verify", "seal"]
