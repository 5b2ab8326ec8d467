"""Header-section helpers used when a message arrives (pure; mypy --strict).

Owns: the trace fields we prepend (`Received:` per RFC 5321 §4.4, with the submitter's address
redacted for submitted mail; `Return-Path:` at final delivery),
prepending fields to a message, the bounds check on the header section (field count and size), and
reading one field's value (for logging the Message-ID).
Does not own: Authentication-Results (policy/authresults.py), MIME parsing (message/mime.py).

Every function works on raw bytes, scans at most the header section, and never raises on hostile
input. A line ends at LF (CRLF or bare LF): this module is also used on stored messages.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Iterable, Iterator
from typing import Literal

MAX_FIELD_VALUE = 998  # RFC 5322 §2.1.1: a line is at most 998 octets (plus CRLF)

HeaderProblem = Literal["count", "size"]


def header_section_end(data: bytes) -> int:
    """Length of the header section: the offset where the blank line that ends it starts
    (RFC 5322 §2.1), or len(data) when there is none (the whole message is header)."""
    pos = 0
    n = len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return n
        if nl == pos or (nl == pos + 1 and data[pos:pos + 1] == b"\r"):
            return pos
        pos = nl + 1
    return n


def _section(data: bytes, limit: int) -> bytes:
    """The header section, or a prefix longer than `limit` when the section is larger than that."""
    head = data[:limit + 3]  # enough to see a blank line starting at offset `limit`
    return head[:header_section_end(head)]


def _fields(section: bytes) -> Iterator[list[bytes]]:
    """The header fields of a header section, each as its list of lines (no line breaks)."""
    current: list[bytes] = []
    for line in section.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)  # RFC 5322 §2.2.3: a line starting with WSP continues the field
            continue
        if current:
            yield current
        current = [line] if line else []
    if current:
        yield current


def check_header_section(data: bytes, max_count: int, max_size: int) -> HeaderProblem | None:
    """None when the header section has at most `max_count` fields and `max_size` octets
    (line breaks included); else which limit it breaks. Reads at most max_size + 3 octets."""
    section = _section(data, max_size)
    if len(section) > max_size:
        return "size"
    count = 0
    for _ in _fields(section):
        count += 1
        if count > max_count:
            return "count"
    return None


def field_value(data: bytes, name: str, *, limit: int = 65536) -> str | None:
    """The unfolded value of the first `name:` field in the header section (case-insensitive),
    decoded as UTF-8 with replacement, or None. Reads at most `limit` + 3 octets."""
    want = name.lower().encode("ascii", "replace")
    for lines in _fields(_section(data, limit)):
        fname, sep, value = lines[0].partition(b":")
        if sep and fname.rstrip().lower() == want:
            parts = [value.strip()] + [ln.strip() for ln in lines[1:]]
            return b" ".join(p for p in parts if p).decode("utf-8", "replace")
    return None


def field_values(data: bytes, name: str, *, limit: int = 65536) -> list[str]:
    """The unfolded values of every `name:` field in the header section, in order (see field_value)."""
    want = name.lower().encode("ascii", "replace")
    out: list[str] = []
    for lines in _fields(_section(data, limit)):
        fname, sep, value = lines[0].partition(b":")
        if sep and fname.rstrip().lower() == want:
            parts = [value.strip()] + [ln.strip() for ln in lines[1:]]
            out.append(b" ".join(p for p in parts if p).decode("utf-8", "replace"))
    return out


def prepend(fields: Iterable[bytes], message: bytes) -> bytes:
    """The message with the given fields (each CRLF-terminated) before its first line."""
    parts = list(fields)
    for f in parts:
        if not f.endswith(b"\r\n"):
            raise ValueError("header field must end with CRLF")
    return b"".join(parts) + message


# --- trace fields --------------------------------------------------------------------------------

_LDH_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_LITERAL = re.compile(r"^\[(?:[0-9.]{7,15}|IPv6:[0-9A-Fa-f:.]{2,45})\]$")
_SAFE = re.compile(r"[^\x20-\x7e]|[()\\]")


def _comment_text(text: str, limit: int = 100) -> str:
    """Text safe inside an RFC 5322 comment: printable ASCII and space, no parentheses or backslash."""
    return _SAFE.sub("?", text[:limit])


def ip_literal(ip: str) -> str:
    """RFC 5321 §4.1.3 address literal: "[192.0.2.1]" or "[IPv6:2001:db8::1]"."""
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def protocol_name(*, esmtp: bool, tls: bool, auth: bool = False, smtputf8: bool = False) -> str:
    """The `with` keyword: RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 §4.3 (UTF8SMTP...)."""
    if smtputf8:
        base = "UTF8SMTP"
    elif esmtp:
        base = "ESMTP"
    else:
        return "SMTP"
    return base + ("S" if tls else "") + ("A" if auth else "")


def received(*, helo: str, ip: str, by: str, protocol: str, queue_id: str, recipient: str | None,
             when: datetime.datetime, tls: str | None = None) -> bytes:
    """One `Received:` field, RFC 5321 §4.4 (Time-stamp-line), folded, CRLF-terminated.

    from: the HELO name when it is a domain or address literal, followed by the client's address
    literal in the TCP-info comment (we do no reverse DNS); an unusable HELO name is shown only in
    a comment. `tls` is e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384" (RFC 8314 §7 recommends recording it).
    `recipient` is given only for single-recipient transactions (RFC 5321 §7.2: privacy)."""
    literal = ip_literal(ip)
    if helo and (_LDH_DOMAIN.match(helo) or _LITERAL.match(helo)):
        from_part = f"from {helo} ({literal})"
    else:
        from_part = f"from {literal} (helo={_comment_text(helo) or 'none'})"
    lines = [f"Received: {from_part}"]
    if tls:
        lines.append(f"\t(using {_comment_text(tls)})")
    lines.append(f"\tby {by} (Mailhaven) with {protocol} id {queue_id}")
    if recipient:
        lines.append(f"\tfor <{recipient}>")
    lines[-1] += ";"
    lines.append("\t" + email.utils.format_datetime(when))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


# What a redacted submission Received field shows instead of the client: a name under the reserved
# .invalid TLD (RFC 2606 §2), so the field keeps RFC 5321 §4.4 syntax and names no real host.
REDACTED_CLIENT = "client.invalid"


def received_submission(*, helo: str, ip: str, by: str, protocol: str, queue_id: str,
                        when: datetime.datetime, tls: str | None = None, redact: bool = True) -> bytes:
    """The `Received:` field of a submitted message (RFC 6409 §4, RFC 5321 §4.4).

    redact: the client's HELO name and address are left out ("from client.invalid (address
    hidden)"), because a submitter's address locates the person and every recipient would see
    it; the queue id links the field to our log line, which has both. No `for` clause: with one
    recipient the field would name it, with Bcc recipients it would leak them (RFC 5321 §7.2).
    The login is not shown either (like Postfix's default smtpd_sasl_authenticated_header = no);
    `protocol` already says ESMTPSA (RFC 3848: authenticated)."""
    if not redact:
        return received(helo=helo, ip=ip, by=by, protocol=protocol, queue_id=queue_id, recipient=None,
                        when=when, tls=tls)
    lines = [f"Received: from {REDACTED_CLIENT} (address hidden)"]
    if tls:
        lines.append(f"\t(using {_comment_text(tls)})")
    lines.append(f"\tby {by} (Mailhaven) with {protocol} id {queue_id};")
    lines.append("\t" + email.utils.format_datetime(when))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def return_path(sender: str) -> bytes:
    """`Return-Path: <sender>` (RFC 5321 §4.4, added at final delivery; "" = null reverse-path)."""
    return f"Return-Path: <{sender}>\r\n".encode("utf-8", "replace")


__all__ = [
    "HeaderProblem", "check_header_section", "header_section_end", "field_value", "field_values", "prepend",
    "ip_literal", "protocol_name", "received", "received_submission", "REDACTED_CLIENT", "return_path",
]
