"""delivery/dane.py matching (RFC 6698 §2.1, RFC 7672 §3.1): DANE-EE against the leaf with any
name, DANE-TA against a chain certificate with the MX name checked; PKIX usages are unusable."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailhaven.delivery.dane import Tlsa, check


def _der(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _chain(ca: Any, *names: str) -> tuple[list[bytes], x509.Certificate, x509.Certificate]:
    issued = ca.issue_cert(*names)
    leaf = _der(issued.cert_chain_pems[0].bytes())
    root = _der(ca.cert_pem.bytes())
    return ([leaf.public_bytes(serialization.Encoding.DER), root.public_bytes(serialization.Encoding.DER)],
            leaf, root)


def test_dane_ee_matches_the_leaf_whatever_its_name(tls_ca: Any) -> None:
    chain, leaf, _ = _chain(tls_ca, "other.test")
    records = [Tlsa(3, 1, 1, hashlib.sha256(_spki(leaf)).digest())]
    assert check(records, chain, ["mx.b.test"]) is None
    assert check([Tlsa(3, 0, 2, hashlib.sha512(leaf.public_bytes(serialization.Encoding.DER)).digest())],
                 chain, ["mx.b.test"]) is None
    assert check([Tlsa(3, 1, 0, _spki(leaf))], chain, ["mx.b.test"]) is None


def test_dane_ee_with_another_key_fails(tls_ca: Any) -> None:
    chain, _, root = _chain(tls_ca, "mx.b.test")
    problem = check([Tlsa(3, 1, 1, hashlib.sha256(_spki(root)).digest())], chain, ["mx.b.test"])
    assert problem is not None and "none of the 1 usable" in problem


def test_dane_ta_needs_the_anchor_in_the_chain_and_the_mx_name(tls_ca: Any) -> None:
    chain, _, root = _chain(tls_ca, "mx.b.test")
    ta = [Tlsa(2, 1, 1, hashlib.sha256(_spki(root)).digest())]
    assert check(ta, chain, ["mx.b.test"]) is None
    chain2, _, _ = _chain(tls_ca, "other.test")
    problem = check(ta, chain2, ["mx.b.test", "b.test"])
    assert problem is not None and "does not name mx.b.test or b.test" in problem
    assert check(ta, chain[:1], ["mx.b.test"]) is not None  # anchor not presented


def test_pkix_usages_are_unusable(tls_ca: Any) -> None:
    chain, leaf, _ = _chain(tls_ca, "mx.b.test")
    record = Tlsa(1, 1, 1, hashlib.sha256(_spki(leaf)).digest())
    assert not record.usable
    assert check([record], chain, ["mx.b.test"]) is not None
