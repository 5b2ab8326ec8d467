"""Does a server certificate name the MX host we connected to? (pure)

Owns: the reference-identifier rules of verified outbound TLS (queue.require_tls_domains): which
names a certificate presents and whether one of them covers the MX host name, as RFC 6125 §6.4
says, narrowed by RFC 7672 §3.2.3 and RFC 8461 §4.2:
- the reference identifier is the MX host name (RFC 8461 §4.2; for an implicit MX the domain
  itself), compared case-insensitively, a final dot ignored;
- the presented identifiers are the subjectAltName dNSNames; the subject's Common Name only when
  the certificate has no dNSName at all (RFC 6125 §6.4.4; Postfix and OpenSSL do the same);
- a wildcard is allowed only as the complete left-most label ("*.example.org"), matches exactly one
  non-empty label (so not "a.b.example.org", nor "example.org" itself), and needs at least two
  labels after it ("*.org" matches nothing). A "*" anywhere else ("mx.*.example.org",
  "m*.example.org") matches nothing (RFC 7672 §3.2.3, RFC 6125 §6.4.3).
Does not own: the chain check (the ssl module does it against the trust store during the
handshake), when names are checked (delivery/remote.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MIN_LABELS_AFTER_WILDCARD = 2


def _normal(name: str) -> str:
    return name.strip().lower().removesuffix(".")


def presented_names(peercert: Mapping[str, Any] | None) -> list[str]:
    """The DNS names of a certificate as `ssl.SSLSocket.getpeercert()` decodes it: its
    subjectAltName dNSNames, or its Common Names when it has none (RFC 6125 §6.4.4)."""
    if not peercert:
        return []
    sans = [str(value) for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"]
    if sans:
        return sans
    return [str(value) for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]


def name_matches(presented: str, host: str) -> bool:
    """One presented identifier against the MX host name."""
    pattern, ref = _normal(presented), _normal(host)
    if not pattern or not ref or "" in ref.split("."):
        return False
    if "*" not in pattern:
        return pattern == ref
    labels = pattern.split(".")
    # RFC 7672 §3.2.3: "*" only as the whole left-most label, and nowhere else.
    if labels[0] != "*" or any("*" in label for label in labels[1:]):
        return False
    if len(labels) - 1 < MIN_LABELS_AFTER_WILDCARD or "" in labels[1:]:
        return False
    ref_labels = ref.split(".")
    # RFC 6125 §6.4.3: the wildcard stands for exactly one label.
    return len(ref_labels) == len(labels) and ref_labels[1:] == labels[1:]


def covers(names: Iterable[str], host: str) -> bool:
    """Whether any of `names` (presented_names) matches `host`."""
    return any(name_matches(n, host) for n in names)


def describe(names: Sequence[str], limit: int = 5) -> str:
    """"mx.a.example, *.b.example" for log lines and queue replies (at most `limit` names)."""
    if not names:
        return "no DNS name"
    shown = ", ".join(n[:100] for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


__all__ = ["presented_names", "name_matches", "covers", "describe"]
