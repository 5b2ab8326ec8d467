"""DANE for SMTP (RFC 7672, RFC 6698): TLSA records of an MX host, and whether a server's
certificate chain matches them (pure, apart from `lookup`).

Owns:
- `lookup`: the TLSA RRset `_25._tcp.<mxhost>` (RFC 7672 §2.2.3), trusted only when the configured
  resolver says it is DNSSEC-validated (AD bit; dns/resolver.py `secure`);
- which records are usable (RFC 7672 §3.1.3: only DANE-TA(2) and DANE-EE(3); PKIX-TA(0) and
  PKIX-EE(1) are unusable for SMTP, as are unknown selectors and matching types);
- matching (RFC 6698 §2.1, RFC 7671 §5): selector 0 (full certificate) / 1 (SubjectPublicKeyInfo),
  matching type 0 (exact) / 1 (SHA-256) / 2 (SHA-512). DANE-EE(3) is matched against the leaf only,
  with no name check and no expiry check (RFC 7672 §3.1.1); DANE-TA(2) against a certificate of the
  presented chain that the leaf chains up to by signatures, and then the leaf must name the
  MX host (or the destination domain) by the RFC 7672 §3.2.3 rules (delivery/certnames.py).
Does not own: when DANE applies (delivery/tlspolicy.py), the TLS handshake (delivery/remote.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailhaven.delivery import certnames

DANE_TA, DANE_EE = 2, 3


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        """RFC 7672 §3.1.3: DANE-TA / DANE-EE with a known selector and matching type."""
        return self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1) and self.mtype in (0, 1, 2)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()[:16]}..."


async def lookup(resolver: Any, host: str, port: int = 25) -> tuple[list[Tlsa], bool]:
    """(TLSA records of `_port._tcp.host`, DNSSEC-validated?). Raises DnsTempError."""
    records, secure = await resolver.secure(f"_{port}._tcp.{host}", "TLSA")
    return [Tlsa(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert)) for r in records], secure


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def matches(record: Tlsa, cert: x509.Certificate) -> bool:
    """Whether one certificate matches one record (usage aside)."""
    data = _selected(cert, record.selector)
    if record.mtype == 1:
        data = hashlib.sha256(data).digest()
    elif record.mtype == 2:
        data = hashlib.sha512(data).digest()
    return data == record.data


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends: no
        return False


def check(records: Sequence[Tlsa], chain_der: Sequence[bytes], names: Sequence[str]) -> str | None:
    """None when the chain (leaf first, DER) matches a usable record, else why not. `names`: the
    reference identifiers for DANE-TA (the MX host name, RFC 7672 §3.2.2)."""
    usable = [r for r in records if r.usable]
    if not chain_der:
        return "no certificate presented"
    try:
        chain = [x509.load_der_x509_certificate(d) for d in chain_der]
    except ValueError:
        return "certificate cannot be parsed"
    leaf = chain[0]
    if any(r.usage == DANE_EE and matches(r, leaf) for r in usable):
        return None  # RFC 7672 §3.1.1: the key is the identity; no name or date checks
    for r in (r for r in usable if r.usage == DANE_TA):
        # Walk up the presented chain by signatures; a matching certificate is the trust anchor.
        current = leaf
        for candidate in chain[1:]:
            if not _issued_by(current, candidate):
                break
            if matches(r, candidate):
                presented = _names(leaf)
                if any(certnames.covers(presented, n) for n in names):
                    return None
                return (f"certificate matches the DANE-TA record but does not name "
                        f"{' or '.join(names)} (it names {certnames.describe(presented)})")
            current = candidate
    return f"certificate matches none of the {len(usable)} usable TLSA records"


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        if sans:
            return sans
    except x509.ExtensionNotFound:
        pass
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


__all__ = ["Tlsa", "lookup", "matches", "check", "DANE_TA", "DANE_EE"]
