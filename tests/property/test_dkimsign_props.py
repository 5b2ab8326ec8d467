"""policy/dkimsign: every signature it makes over arbitrary messages verifies with dkimpy (an
independent implementation), a changed body or signed header makes it fail, and the relaxed
canonicalization equals dkimpy's."""

from __future__ import annotations

import re

import dkim
import dkim.canonicalization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhaven.policy import dkimsign
from mailhaven.policy.dkim import DEFAULT_SIGN_HEADERS, OVERSIGN_HEADERS, public_record

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def _record(key: dkimsign.SigningKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return public_record(pem).encode()


RECORDS = {b"rsa._domainkey.example.test.": _record(RSA_KEY), b"ed._domainkey.example.test.": _record(ED_KEY)}


def _dns(name: bytes, timeout: int = 5) -> bytes | None:
    return RECORDS.get(name)


def _verifies(message: bytes) -> bool:
    return bool(dkim.verify(message, dnsfunc=_dns))


def _sign(message: bytes, key: dkimsign.SigningKey) -> bytes:
    present = [n for n, _ in dkimsign.split_message(message)[0]]
    h = dkimsign.header_list(present, DEFAULT_SIGN_HEADERS, OVERSIGN_HEADERS)
    selector = "ed" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"
    return dkimsign.sign(message, "example.test", selector, key, h, 1_700_000_000)


text = st.text(alphabet=st.sampled_from("ab xyz\t.,:;<>@-=é"), max_size=40)
value = st.lists(text, min_size=1, max_size=3).map(lambda parts: "\r\n\t".join(parts))
names = st.sampled_from(["From", "from", "To", "Subject", "SUBJECT", "Cc", "X-Other", "Date", "Reply-To"])
# RFC 5322 §3.6.8: no WSP before ":" (obsolete syntax, which dkimpy refuses to parse)
field = st.tuples(names, st.sampled_from([":", ": ", ":  ", ":\t"]), value).map(
    lambda t: (t[0] + t[1] + t[2]).encode())
body_line = st.text(alphabet=st.sampled_from("ab .\t-é"), max_size=30).map(str.encode)
# Bodies as SMTP carries them: empty or ending in CRLF (DATA adds the final CRLF before ".").
body = st.lists(body_line, max_size=8).map(lambda lines: b"".join(x + b"\r\n" for x in lines)) | st.sampled_from(
    [b"", b"\r\n", b"\r\n\r\n", b"x\r\n", b"x \t \r\n", b" \r\n\t\r\n", b"a\r\n\r\n \r\n"])


def _message(fields: list[bytes], body: bytes) -> bytes:
    return b"From: Alice <alice@example.test>\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(field, max_size=6), body, st.sampled_from([RSA_KEY, ED_KEY]))
def test_every_signature_verifies_with_dkimpy(fields: list[bytes], body: bytes, key: dkimsign.SigningKey) -> None:
    message = _message(fields, body)
    signed = _sign(message, key) + message
    assert _verifies(signed)


@settings(max_examples=60, deadline=None)
@given(st.lists(field, max_size=4), body)
def test_a_changed_body_or_an_added_from_fails(fields: list[bytes], body: bytes) -> None:
    message = _message(fields, body)
    sig = _sign(message, RSA_KEY)
    assert not _verifies(sig + message + b"tampered\r\n")
    # From is over-signed: a second From added on top breaks the signature (RFC 6376 §8.15)
    assert not _verifies(sig + b"From: mallory@evil.test\r\n" + message)


@given(body)
def test_relaxed_body_equals_dkimpy(b: bytes) -> None:
    assert dkimsign.relaxed_body(b) == dkim.canonicalization.Relaxed.canonicalize_body(b)


@given(field)
def test_relaxed_header_equals_dkimpy(raw: bytes) -> None:
    name, _, val = raw.partition(b":")
    ((n, v),) = dkim.canonicalization.Relaxed.canonicalize_headers([(name, val)])
    assert dkimsign.relaxed_header(raw) == n + b":" + v


def test_signature_field_is_folded_within_78_columns_and_names_its_tags() -> None:
    sig = _sign(_message([b"Subject: hello", b"To: bob@remote.test"], b"hi\r\n"), RSA_KEY)
    assert sig.endswith(b"\r\n") and all(len(line) <= 78 for line in sig.split(b"\r\n"))
    tags = dict(t.split(b"=", 1) for t in re.sub(rb"\s+", b"", sig.split(b":", 1)[1]).split(b";"))
    assert tags[b"a"] == b"rsa-sha256" and tags[b"c"] == b"relaxed/relaxed" and tags[b"d"] == b"example.test"
    assert tags[b"h"].split(b":").count(b"from") == 2  # once present, once over-signed
    assert tags[b"h"].split(b":").count(b"subject") == 2 and b"cc" in tags[b"h"].split(b":")
    assert b"content-type" not in tags[b"h"].split(b":")  # absent, not over-signed: left out


def test_header_list_counts_instances_and_always_has_from() -> None:
    assert dkimsign.header_list([b"to", b"to", b"x"], ("To", "Subject"), ()) == [b"to", b"to", b"from"]
    assert dkimsign.header_list([b"from"], ("From",), ("From",)) == [b"from", b"from"]
