"""IMAP wire encoding of strings and lists (RFC 3501 §4, §9 formal syntax).

Owns: choosing quoted string vs literal, NIL for absent nstrings, atoms/astrings for mailbox
names, parenthesised lists, and Dovecot's "string for humans" rendering used in ENVELOPE.
Does not own: response framing (tags, untagged lines) or FETCH item rendering (fetchitems.py).
Everything here is pure and returns bytes ready to be written to the wire.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NIL = b"NIL"

# RFC 3501 §9: ATOM-CHAR = any CHAR except atom-specials; atom-specials = "(" / ")" / "{" / SP /
# CTL / list-wildcards ("%" / "*") / quoted-specials ('"' / "\") / resp-specials ("]").
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')
_ATOM_CHARS = frozenset(c for c in range(0x21, 0x7F) if c not in _ATOM_SPECIALS)
# ASTRING-CHAR = ATOM-CHAR / resp-specials (RFC 3501 §9)
_ASTRING_CHARS = _ATOM_CHARS | {ord("]")}


def literal(data: bytes) -> bytes:
    """A synchronising literal `{n}CRLF<data>` (RFC 3501 §4.3).

    NUL cannot appear in a literal (RFC 3501 §9 CHAR8 excludes %x00); like Dovecot, it is sent as
    0x80, which keeps every length and offset unchanged.
    """
    if b"\x00" in data:
        data = data.replace(b"\x00", b"\x80")
    return b"{%d}\r\n" % len(data) + data


def quoted(data: bytes) -> bytes:
    """A quoted string with '"' and '\\' escaped; caller guarantees no CR/LF/NUL/8-bit."""
    if b"\\" in data:
        data = data.replace(b"\\", b"\\\\")
    if b'"' in data:
        data = data.replace(b'"', b'\\"')
    return b'"' + data + b'"'


def needs_literal(data: bytes) -> bool:
    """True if `data` cannot be sent as a quoted string: RFC 3501 §9 QUOTED-CHAR is 7-bit
    TEXT-CHAR, which excludes CR and LF, and NUL is never allowed (§4.3)."""
    if data.isascii():
        return b"\r" in data or b"\n" in data or b"\x00" in data
    return True


def string(data: bytes | str) -> bytes:
    """A `string` (RFC 3501 §4.3): quoted when safe 7-bit text, else a literal."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return literal(data) if needs_literal(data) else quoted(data)


def nstring(data: bytes | str | None) -> bytes:
    """An `nstring`: NIL when absent, else `string` (RFC 3501 §9)."""
    return NIL if data is None else string(data)


def is_atom(data: bytes) -> bool:
    return bool(data) and all(c in _ATOM_CHARS for c in data)


def astring(data: bytes | str) -> bytes:
    """An `astring` (RFC 3501 §9), e.g. a mailbox name: bare atom when possible, else `string`.

    The empty string and "NIL" are quoted so they cannot be mistaken for NIL or nothing.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if data and data.upper() != b"NIL" and all(c in _ASTRING_CHARS for c in data):
        return data
    return string(data)


def plist(items: Iterable[bytes]) -> bytes:
    """A parenthesised list of already-encoded items separated by one space."""
    return b"(" + b" ".join(items) + b")"


def nlist(items: list[bytes]) -> bytes:
    """A parenthesised list, or NIL when there are no items."""
    return plist(items) if items else NIL


_LWSP = b" \t\r\n"
_LWSP_RUN = re.compile(rb"[ \t\r\n]+")


def human_string(data: bytes) -> bytes:
    """A string meant for people (subjects, display names), rendered as Dovecot does.

    Runs of SP/TAB/CR/LF become one space, leading and trailing whitespace is dropped, NUL becomes
    0x80. Text that needed no change and holds no '"' '\\' or 8-bit byte is sent quoted; anything
    else is sent as a literal of the cleaned text; whitespace-only text is "".
    """
    if not data:
        return b'""'
    plain = True
    if not data.isascii() or b'"' in data or b"\\" in data or b"\x00" in data:
        plain = False
    cleaned = _LWSP_RUN.sub(b" ", data.replace(b"\x00", b"\x80")).strip(_LWSP)
    if plain and cleaned == data:
        return b'"' + data + b'"'
    if not cleaned:
        return b'""'
    return literal(cleaned)
