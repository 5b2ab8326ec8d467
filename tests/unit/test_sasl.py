"""auth/sasl.py: PLAIN (RFC 4616) and LOGIN decoding, cancellation, bounds."""

from __future__ import annotations

import base64

import pytest

from mailhaven.auth.sasl import (
    PASSWORD_CHALLENGE,
    USERNAME_CHALLENGE,
    Credentials,
    Exchange,
    SaslCancelled,
    decode_login_password,
    decode_login_username,
    decode_plain,
    decode_response,
    encode_challenge,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_plain_without_authzid() -> None:
    assert decode_plain(b64(b"\x00alice@example.test\x00secret")) == Credentials("alice@example.test", "secret", "")


def test_plain_with_authzid() -> None:
    c = decode_plain(b64(b"admin\x00alice\x00pw"))
    assert (c.authzid, c.login, c.password) == ("admin", "alice", "pw")


def test_plain_utf8_fields() -> None:
    c = decode_plain(b64("\x00jörg@bücher.example\x00pässwörd".encode()))
    assert c.login == "jörg@bücher.example" and c.password == "pässwörd"


def test_plain_accepts_bytes_and_surrounding_spaces() -> None:
    assert decode_plain(b64(b"\x00a\x00b").encode() + b" ").login == "a"


@pytest.mark.parametrize("raw", [
    b"alice\x00secret",  # one NUL
    b"\x00alice\x00secret\x00",  # three NULs
    b"\x00\x00secret",  # empty authcid
    b"\x00alice\x00",  # empty password
    b"\x00\xff\xfe\x00secret",  # authcid not UTF-8
    b"\x00alice\x00\xff",  # password not UTF-8
    b"\x00ali\x01ce\x00pw",  # control character in authcid
    b"\x00" + b"a" * 256 + b"\x00pw",  # authcid > 255 octets (RFC 4616 §2)
    b"\x00alice\x00" + b"p" * 256,
    b"",
])
def test_plain_rejects_malformed_messages(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_plain(b64(raw))


@pytest.mark.parametrize("line", ["not base64!", "YWJj=", "YW Jj", "YWJ", "ä", "A" * 4096])
def test_bad_base64_is_a_value_error(line: str) -> None:
    with pytest.raises(ValueError):
        decode_response(line)


def test_star_cancels_and_equals_is_empty() -> None:
    with pytest.raises(SaslCancelled):
        decode_response("*")
    assert decode_response("=") == b""  # RFC 4954 §4
    assert issubclass(SaslCancelled, ValueError)


def test_challenges() -> None:
    assert USERNAME_CHALLENGE == "VXNlcm5hbWU6"
    assert PASSWORD_CHALLENGE == "UGFzc3dvcmQ6"
    assert encode_challenge("") == ""
    assert encode_challenge(b"\x00") == "AA=="


def test_login_steps() -> None:
    assert decode_login_username(b64(b"alice@example.test")) == "alice@example.test"
    assert decode_login_password(b64(b"s3cr\xc3\xa9t")) == "s3cr\u00e9t"
    with pytest.raises(ValueError):
        decode_login_username("=")
    with pytest.raises(ValueError):
        decode_login_password(b64(b"a\x00b"))
    with pytest.raises(ValueError):
        decode_login_username(b64(b"a\nb"))


def test_exchange_plain_with_and_without_initial_response() -> None:
    assert Exchange("plain").start(b64(b"\x00a\x00b")) == Credentials("a", "b")
    ex = Exchange("PLAIN")
    assert ex.start(None) == ""
    assert ex.step(b64(b"\x00a\x00b")) == Credentials("a", "b")
    with pytest.raises(ValueError):
        ex.step(b64(b"\x00a\x00b"))  # finished


def test_exchange_login() -> None:
    ex = Exchange("LOGIN")
    assert ex.start(None) == USERNAME_CHALLENGE
    assert ex.step(b64(b"alice")) == PASSWORD_CHALLENGE
    assert ex.step(b64(b"pw")) == Credentials("alice", "pw")


def test_exchange_login_with_initial_user_name() -> None:
    ex = Exchange("LOGIN")
    assert ex.start(b64(b"alice")) == PASSWORD_CHALLENGE
    assert ex.step(b64(b"pw")) == Credentials("alice", "pw")


def test_exchange_cancel_and_unknown_mechanism() -> None:
    ex = Exchange("LOGIN")
    ex.start(None)
    with pytest.raises(SaslCancelled):
        ex.step("*")
    with pytest.raises(ValueError):
        Exchange("CRAM-MD5")


def test_credentials_repr_hides_password() -> None:
    assert "hunter2" not in repr(Credentials("a", "hunter2"))
