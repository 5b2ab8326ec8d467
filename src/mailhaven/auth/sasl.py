"""SASL PLAIN and LOGIN, sans-IO, shared by SMTP AUTH, IMAP AUTHENTICATE and POP3 AUTH.

Owns: decoding client responses into credentials and encoding server challenges.
Does not own: checking the credentials (auth/users.py) or throttling (limits.py), nor where the
protocol puts the base64 lines (`334 ...`, `+ ...`).

- PLAIN (RFC 4616 §2): message = [authzid] NUL authcid NUL passwd, UTF-8, each part at most 255
  octets, authcid and passwd non-empty.
- LOGIN (draft-murchison-sasl-login): server sends "Username:" then "Password:" (base64); the client
  answers each with a base64 line. An initial response, if any, is the user name.
- A response of "*" cancels the exchange (RFC 4954 §4, RFC 3501 §6.2.2, RFC 5034 §4) ->
  SaslCancelled. A response of "=" is an empty response (RFC 4954 §4).
Bad input raises ValueError (SaslCancelled is a ValueError too, so a careless caller still fails
safe); callers map it to their protocol's syntax error.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MECHANISMS = ("PLAIN", "LOGIN")
MAX_RESPONSE = 2048  # base64 characters in one client response
MAX_FIELD = 255  # RFC 4616 §2: authzid, authcid and passwd are at most 255 octets each

USERNAME_CHALLENGE = base64.b64encode(b"Username:").decode("ascii")  # "VXNlcm5hbWU6"
PASSWORD_CHALLENGE = base64.b64encode(b"Password:").decode("ascii")  # "UGFzc3dvcmQ6"


class SaslCancelled(ValueError):
    """The client sent "*": abort the exchange (SMTP 501, IMAP BAD, POP3 -ERR)."""


@dataclass(frozen=True)
class Credentials:
    login: str  # authcid
    password: str
    authzid: str = ""  # non-empty and different from login: the caller refuses (no proxy auth)

    def __repr__(self) -> str:  # never show the password in logs or tracebacks
        return f"Credentials(login={self.login!r}, authzid={self.authzid!r}, password=<hidden>)"


def encode_challenge(text: str | bytes) -> str:
    """Base64 of a challenge ("" stays "", which protocols send as an empty continuation)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(data).decode("ascii")


def decode_response(line: str | bytes) -> bytes:
    """One client response line (base64, CRLF already removed) -> bytes.
    "*" -> SaslCancelled; "=" -> b"" (RFC 4954 §4); bad base64 or too long -> ValueError."""
    text = line.decode("ascii", "replace") if isinstance(line, bytes) else line
    text = text.strip(" ")
    if text == "*":
        raise SaslCancelled("authentication cancelled")
    if text == "=":
        return b""
    if len(text) > MAX_RESPONSE:
        raise ValueError("SASL response too long")
    if not text.isascii() or len(text) % 4:
        raise ValueError("SASL response is not base64")
    try:
        return binascii.a2b_base64(text, strict_mode=True)  # RFC 4648 §4, no junk or excess padding
    except (binascii.Error, ValueError):
        raise ValueError("SASL response is not base64") from None


def _utf8(field: bytes, what: str) -> str:
    if len(field) > MAX_FIELD:
        raise ValueError(f"{what} longer than {MAX_FIELD} octets")
    try:
        text = field.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"{what} contains control characters")
    return text


def parse_plain(message: bytes) -> Credentials:
    """Decoded PLAIN message -> Credentials (RFC 4616 §2). Raises ValueError."""
    parts = message.split(b"\x00")
    if len(parts) != 3:
        raise ValueError("PLAIN message needs exactly two NUL separators")
    authzid, authcid, passwd = parts
    login = _utf8(authcid, "authcid")
    if not login:
        raise ValueError("empty authcid")
    if not passwd:
        raise ValueError("empty password")
    if len(passwd) > MAX_FIELD:
        raise ValueError(f"password longer than {MAX_FIELD} octets")
    try:
        password = passwd.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("password is not UTF-8") from None
    return Credentials(login=login, password=password, authzid=_utf8(authzid, "authzid"))


def decode_plain(response: str | bytes) -> Credentials:
    """A base64 PLAIN response (initial or after an empty challenge) -> Credentials. ValueError."""
    return parse_plain(decode_response(response))


def decode_login_username(response: str | bytes) -> str:
    """LOGIN: the base64 answer to "Username:" -> user name. ValueError."""
    login = _utf8(decode_response(response), "user name")
    if not login:
        raise ValueError("empty user name")
    return login


def decode_login_password(response: str | bytes) -> str:
    """LOGIN: the base64 answer to "Password:" -> password. ValueError."""
    raw = decode_response(response)
    if not raw:
        raise ValueError("empty password")
    if len(raw) > MAX_FIELD or b"\x00" in raw:
        raise ValueError("bad password")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("password is not UTF-8") from None


class Exchange:
    """A PLAIN or LOGIN exchange as a tiny state machine, for protocols that drive SASL themselves.

        ex = Exchange("PLAIN")                 # ValueError for an unknown mechanism
        out = ex.start(initial_response)       # initial_response: str | None ("=" = empty)
        while isinstance(out, str):            # out is a base64 challenge to send
            out = ex.step(client_line)         # ValueError / SaslCancelled on bad input
        creds: Credentials = out
    """

    def __init__(self, mechanism: str) -> None:
        mech = mechanism.upper()
        if mech not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism[:20]!r}")
        self.mechanism = mech
        self._login: str | None = None
        self._done = False

    def start(self, initial: str | None) -> str | Credentials:
        if self.mechanism == "PLAIN":
            if initial is None:
                return ""  # RFC 4616 §2: empty challenge, client sends the message next
            return self._finish(decode_plain(initial))
        if initial is None:
            return USERNAME_CHALLENGE
        return self.step(initial)

    def step(self, response: str | bytes) -> str | Credentials:
        if self._done:
            raise ValueError("SASL exchange already finished")
        if self.mechanism == "PLAIN":
            return self._finish(decode_plain(response))
        if self._login is None:
            self._login = decode_login_username(response)
            return PASSWORD_CHALLENGE
        return self._finish(Credentials(login=self._login, password=decode_login_password(response)))

    def _finish(self, creds: Credentials) -> Credentials:
        self._done = True
        return creds


__all__ = [
    "MECHANISMS", "Credentials", "SaslCancelled", "Exchange", "encode_challenge", "decode_response",
    "parse_plain", "decode_plain", "decode_login_username", "decode_login_password",
    "USERNAME_CHALLENGE", "PASSWORD_CHALLENGE",
]
