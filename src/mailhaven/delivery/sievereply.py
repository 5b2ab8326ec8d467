"""The messages delivery-time Sieve sends: vacation replies and rejection notices (pure, no I/O).

Owns: `vacation_reply` (RFC 5230 §5 and RFC 3834 §3: From the user or :from, To the sender,
Subject "Auto: ..." or :subject, In-Reply-To and References, `Auto-Submitted: auto-replied`, the
reason as text/plain UTF-8 or, with :mime, as the MIME entity given) and `rejection_notice`
(RFC 5429 §2.2: an MDN, RFC 8098, with disposition "deleted" and the reason, to the envelope
sender). Both go out with a null envelope sender (RFC 5230 §5.1, RFC 5429 §2.2) through cleanup,
which adds Date and Message-ID and DKIM-signs them.
Does not own: whether to send (the Sieve engine's `skip`, delivery/sieve.py's tracker and limits),
sending (cleanup.py).
"""

from __future__ import annotations

import re
from email.header import Header

from mailhaven.message.dsn import header_section

_MAX_LINE = 200


def one_line(text: str, limit: int = _MAX_LINE) -> str:
    """`text` on one line of printable characters, at most `limit` long (what may go into a
    header field or an SMTP reply)."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    return text[:limit]


def _field(name: str, value: str) -> bytes:
    """`Name: value` CRLF; non-ASCII as an RFC 2047 encoded-word."""
    value = one_line(value, 900)
    if not value.isascii():
        value = Header(value, "utf-8").encode(linesep="\r\n")
    return f"{name}: {value}\r\n".encode("ascii")


def _addr(address: str) -> str:
    """An address field value: "<addr>" for a bare address, the :from text as given otherwise."""
    address = one_line(address, 900)
    return address if "<" in address else f"<{address}>"


def _text_body(text: str) -> bytes:
    body = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    return body.encode("utf-8") + (b"" if body.endswith("\r\n") else b"\r\n")


def vacation_reply(*, from_: str, to: str, subject: str, reason: str, mime: bool,
                   in_reply_to: str | None, references: str | None) -> bytes:
    """The vacation reply (RFC 5230 §5); `references` is the original's References field."""
    head = _field("From", _addr(from_)) + _field("To", _addr(to)) + _field("Subject", subject)
    if in_reply_to:  # RFC 5230 §5.8: In-Reply-To and References from the original's Message-ID
        head += _field("In-Reply-To", in_reply_to)
        head += _field("References", f"{references} {in_reply_to}" if references else in_reply_to)
    head += b"Auto-Submitted: auto-replied (vacation)\r\n"  # RFC 3834 §5, RFC 5230 §5.4
    head += b"MIME-Version: 1.0\r\n"
    if mime:  # RFC 5230 §4.4: the reason is a MIME entity, its own header fields first
        entity = _text_body(reason)
        if not entity.startswith(b"\r\n") and b"\r\n\r\n" not in entity:
            entity = b"\r\n" + entity
        return head + entity
    return head + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + \
        _text_body(reason)


def rejection_notice(*, hostname: str, user: str, to: str, reason: str, original: bytes, domain: str = "") -> bytes:
    """RFC 5429 §2.2: the MDN (RFC 8098 §3) telling `to` that `user`'s filter refused the message;
    From MAILER-DAEMON@`domain` (the user's domain, so cleanup DKIM-signs it), else @`hostname`."""
    subject = _original_field(original, b"subject")
    mid = _original_field(original, b"message-id")
    boundary = f"=_sieve_reject_{abs(hash((user, to, reason, mid))) % 10**12:012d}"
    head = _field("From", f"Mail Delivery System <MAILER-DAEMON@{domain or hostname}>") + _field("To", _addr(to))
    head += _field("Subject", f"Rejected: {subject}" if subject else "Message rejected")
    head += b"Auto-Submitted: auto-replied (rejected)\r\nMIME-Version: 1.0\r\n"
    head += f'Content-Type: multipart/report; report-type=disposition-notification;\r\n boundary="{boundary}"\r\n'.encode()
    text = (f"Your message to <{user}> was automatically rejected:\r\n\r\n{reason}\r\n")
    report = (f"Reporting-UA: {hostname}; Mailhaven Sieve\r\n"
              f"Final-Recipient: rfc822; {one_line(user)}\r\n"
              + (f"Original-Message-ID: {one_line(mid)}\r\n" if mid else "")
              + "Disposition: automatic-action/MDN-sent-automatically; deleted\r\n")
    b = boundary.encode()
    return (head + b"\r\nThis is a MIME-encapsulated message.\r\n\r\n"
            + b"--" + b + b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + _text_body(text)
            + b"\r\n--" + b + b"\r\nContent-Type: message/disposition-notification\r\n\r\n" + report.encode("utf-8")
            + b"\r\n--" + b + b"\r\nContent-Type: text/rfc822-headers\r\n\r\n" + header_section(original)
            + b"\r\n--" + b + b"--\r\n")


def _original_field(message: bytes, name: bytes) -> str:
    """The first `name` field of `message`, unfolded, one line ("" if absent)."""
    end = message.find(b"\r\n\r\n")
    lines = (message if end < 0 else message[:end]).split(b"\r\n")
    for i, line in enumerate(lines):
        if line.lower().startswith(name + b":"):
            value = line[len(name) + 1:]
            for cont in lines[i + 1:]:
                if cont[:1] not in (b" ", b"\t"):
                    break
                value += cont
            return one_line(value.decode("utf-8", "replace"))
    return ""


__all__ = ["vacation_reply", "rejection_notice", "one_line"]
