"""Authentication-Results (RFC 8601) and Received-SPF (RFC 7208 §9.1) header fields (pure).

Owns: rendering our SPF/DKIM/DMARC results as one Authentication-Results field, and reading the
authserv-id of one (RFC 8601 §2.2). Does not own: computing the results (spf.py, dkim.py,
dmarc.py), removing forged fields that claim our authserv-id (RFC 8601 §5: message/trust.py, on
every way into a mailbox).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol


class SpfLike(Protocol):
    @property
    def result(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def identity(self) -> str: ...


class DkimLike(Protocol):
    @property
    def result(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def header_b(self) -> str: ...
    @property
    def reason(self) -> str: ...


class DmarcLike(Protocol):
    @property
    def result(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def published(self) -> str | None: ...
    @property
    def policy(self) -> str: ...


# RFC 2045 §5.1 tspecials: a value holding one of these (or space/controls) must be quoted.
_TSPECIALS = set('()<>@,;:\\"/[]?= \t')


def _value(text: str) -> str:
    """RFC 8601 §2.2 value: token if possible, else quoted-string."""
    clean = "".join(c for c in text if c >= " " and c != "\x7f")
    if clean and not any(c in _TSPECIALS for c in clean):
        return clean
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    # Cut before escaping: a cut after it could leave a lone backslash that escapes the ")".
    clean = "".join(c for c in text if c >= " " and c != "\x7f")[:200]
    clean = clean.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({clean})"


def format_auth_results(authserv_id: str, spf: SpfLike | None, dkim: Sequence[DkimLike],
                        dmarc: DmarcLike | None, arc: str | None = None) -> bytes:
    """`Authentication-Results: id; spf=...; dkim=...; dmarc=...; arc=...\\r\\n`, folded one result
    a line.

    One dkim entry per signature; dkim=none when there is none (RFC 8601 §2.7.1); `arc`: the ARC
    chain's status, none/pass/fail (RFC 8617 §7.2, method "arc"), left out when not checked."""
    parts: list[str] = []
    if spf is not None:
        # RFC 8601 §2.7.2: smtp.mailfrom, or smtp.helo when the HELO identity was checked.
        ptype = "smtp.helo" if spf.identity == "helo" else "smtp.mailfrom"
        entry = f"spf={spf.result}"
        if spf.domain:
            entry += f" {ptype}={_value(spf.domain)}"
        parts.append(entry)
    if not dkim:
        parts.append("dkim=none")
    for d in dkim:
        entry = f"dkim={d.result}"
        if d.reason and d.result != "pass":
            entry += f" reason={_value(d.reason[:100])}"
        if d.domain:
            entry += f" header.d={_value(d.domain)}"
        if d.selector:
            entry += f" header.s={_value(d.selector)}"
        if d.algorithm:
            entry += f" header.a={_value(d.algorithm)}"  # RFC 8601 §2.7.1 / IANA header.a
        if d.header_b:
            entry += f" header.b={_value(d.header_b)}"  # RFC 6008 §4: first 8 characters
        parts.append(entry)
    if dmarc is not None:
        entry = f"dmarc={dmarc.result}"
        if dmarc.published is not None:
            entry += " " + _comment(f"p={dmarc.published} dis={dmarc.policy}")  # RFC 7489 §11.2
        if dmarc.domain:
            entry += f" header.from={_value(dmarc.domain)}"  # RFC 7489 §11.2
        parts.append(entry)
    if arc is not None:
        parts.append(f"arc={_value(arc)}")  # RFC 8617 §7.2
    body = ";\r\n\t".join([_value(authserv_id)] + parts) if parts else f"{_value(authserv_id)}; none"
    return f"Authentication-Results: {body}\r\n".encode()


def format_none(authserv_id: str, reason: str) -> bytes:
    """`Authentication-Results: id; none (reason)\\r\\n`: no authentication was performed
    (RFC 8601 §2.2 no-result; the comment is the CFWS the grammar allows after it)."""
    return f"Authentication-Results: {_value(authserv_id)}; none {_comment(reason)}\r\n".encode()


def format_received_spf(receiver: str, result: str, ip: str, sender: str, helo: str,
                        identity: str) -> bytes:
    """RFC 7208 §9.1 Received-SPF: `result (comment) key=value; ...\\r\\n`."""
    subject = sender or f"postmaster@{helo}"
    comment = _comment(f"{receiver}: {identity} {subject} {result} for client {ip}")
    pairs = [f"client-ip={_value(ip)}", f"envelope-from={_value(sender)}", f"helo={_value(helo)}",
             f"receiver={_value(receiver)}", f"identity={_value(identity)}"]
    return f"Received-SPF: {result} {comment}\r\n\t{'; '.join(pairs)}\r\n".encode()


# --- reading fields (the RFC 8601 §5 removal is message/trust.py's) ---------------------------


def header_end(message: bytes) -> int:
    """Where the header section ends (RFC 5322 §2.1): the offset of the first empty line, CRLF or
    bare LF (as dkimpy splits lines), or len(message) when there is none.
    A few C-level finds, whatever the size of the message (safe on the event loop)."""
    if message.startswith((b"\n", b"\r\n")):
        return 0
    i = message.find(b"\n\r\n")  # CRLF first: SMTP data has CRLF line ends (RFC 5321 §2.3.8)
    end = i + 1 if i >= 0 else len(message)
    i = message.find(b"\n\n", 0, end)
    return i + 1 if i >= 0 else end


def _strip_cfws(text: str) -> str:
    """Remove leading whitespace and (nested) comments."""
    i, depth = 0, 0
    while i < len(text):
        c = text[i]
        if depth:
            if c == "\\":
                i += 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif c == "(":
            depth = 1
        elif not c.isspace():
            break
        i += 1
    return text[i:]


def authserv_id_of(value: bytes) -> str:
    """The authserv-id of an Authentication-Results field value (lower-case)."""
    text = _strip_cfws(value.decode("utf-8", "replace"))
    if text.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"', text)
        return re.sub(r"\\(.)", r"\1", m.group(1)).lower() if m else ""
    m = re.match(r"[^\s;()]*", text)
    return m.group(0).lower() if m else ""


__all__ = ["format_auth_results", "format_none", "format_received_spf", "authserv_id_of", "header_end"]
