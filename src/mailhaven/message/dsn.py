"""Delivery Status Notifications: bounce, delay and success reports (pure, no clock, no randomness).

Owns: what a sender asked to be told (RFC 3461: MailDsn for MAIL's RET/ENVID, RcptDsn for a
recipient's NOTIFY/ORCPT; their SMTP syntax is smtp/dsnparams.py's, xtext is here), and building the RFC 3464
report: a multipart/report; report-type=delivery-status (RFC 6522) with a human-readable
text/plain part, the message/delivery-status part (per-message fields, then one block per
recipient) and the original's header section as text/rfc822-headers (RFC 3462 §3 / RFC 6522 §3:
returning only the headers is allowed and keeps bounces small), or the whole original as
message/rfc822 in a failure report when MAIL said RET=FULL. Remote reply text is hostile: control
characters are removed and every line is bounded, so it cannot add fields.
Non-ASCII addresses use the RFC 6533 "utf-8" address type inside message/global-delivery-status.
Does not own: when a DSN is due (queue/manager.py) or sending it (cleanup.enqueue, null sender).

    build_dsn(hostname=..., to="alice@example.org", reports=[RecipientReport(...)],
              original=b"...", arrival=t0, now=t1, message_id="<...>", boundary="...") -> bytes
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

DsnAction = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
# What a recipient without NOTIFY gets (RFC 3461 §4.1 leaves it to us): Postfix's and our choice is
# failures and delays, never a success notice unasked.
DEFAULT_NOTIFY = frozenset({"FAILURE", "DELAY"})

MAX_RETURNED_HEADERS = 64 * 1024  # header section of the original returned at most (octets)
# RET=FULL (RFC 3461 §4.3) returns the whole original in a failure report up to this size; a larger
# one comes back as its headers (as Postfix's bounce_size_limit does, more generously).
MAX_RETURNED_FULL = 1024 * 1024
_MAX_FIELD = 900  # longest unfolded field value we write (RFC 5322 §2.1.1: lines <= 998)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")  # RFC 3464 §2.3.4 status-code
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")  # RFC 3461 §4: xchar ("!".."~" but "+", "=") / hexchar
_HEX = re.compile(r"\+([0-9A-F]{2})")


@dataclass(frozen=True)
class MailDsn:
    """What MAIL asked of our reports (RFC 3461 §4.3, §4.4; parsed by smtp/dsnparams.py)."""

    ret: Literal["FULL", "HDRS"] | None = None  # None: not asked (our bounces return headers)
    envid: str | None = None  # decoded
    # RFC 8689 REQUIRETLS, the other envelope-wide MAIL parameter we keep: it travels the same way
    # (smtp/dsnparams.py -> cleanup -> queue envelope -> delivery/remote.py) and is passed on.
    requiretls: bool = False


@dataclass(frozen=True)
class RcptDsn:
    """What RCPT asked for one recipient (RFC 3461 §4.1, §4.2)."""

    notify: frozenset[str] | None = None  # None: not asked (DEFAULT_NOTIFY); empty: NEVER
    orcpt: str | None = None  # "addr-type;address", decoded

    def wants(self, what: str) -> bool:
        """Whether a notice of this kind ("SUCCESS", "FAILURE", "DELAY") goes to the sender."""
        return what in (DEFAULT_NOTIFY if self.notify is None else self.notify)

    def to_json(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.notify is not None:
            out["notify"] = ",".join(sorted(self.notify)) or "NEVER"
        if self.orcpt is not None:
            out["orcpt"] = self.orcpt
        return out

    @classmethod
    def from_json(cls, d: dict[str, object]) -> RcptDsn:
        notify = d.get("notify")
        orcpt = d.get("orcpt")
        words: frozenset[str] | None = None
        if notify:
            words = frozenset() if notify == "NEVER" else frozenset(str(notify).split(","))
        return cls(words, str(orcpt) if orcpt else None)


NO_MAIL_DSN = MailDsn()
NO_RCPT_DSN = RcptDsn()


@dataclass(frozen=True)
class DsnRequest:
    """One transaction's requests: MAIL's, and each recipient's by address (absent: not asked)."""

    mail: MailDsn = NO_MAIL_DSN
    rcpts: Mapping[str, RcptDsn] = field(default_factory=dict)

    def of(self, address: str) -> RcptDsn:
        return self.rcpts.get(address, NO_RCPT_DSN)


NO_DSN = DsnRequest()


def forwarded(asked: RcptDsn, address: str, targets: int) -> RcptDsn:
    """What a recipient's request becomes on the copy an alias forwards to `targets` addresses
    elsewhere (RFC 3461 §6.2.7): ORCPT stays the original one (else this address); with one target
    NOTIFY goes on as asked, with several SUCCESS is ours to report ("expanded") and the rest goes
    on (only SUCCESS asked: NEVER)."""
    orcpt = asked.orcpt or (f"rfc822;{address}" if address.isascii() else None)
    notify = asked.notify
    if targets > 1 and notify is not None and "SUCCESS" in notify:
        notify = notify - {"SUCCESS"}
    return RcptDsn(notify, orcpt)


@dataclass(frozen=True)
class RecipientReport:
    """One recipient's block in the report (RFC 3464 §2.3)."""

    recipient: str
    action: DsnAction
    status: str  # "5.1.1", "4.4.1" (RFC 3463)
    diagnostic: str = ""  # the reply, "550 5.1.1 no such user" (Diagnostic-Code: smtp; ...)
    remote_mta: str = ""  # host that gave the reply
    last_attempt: float | None = None
    original_recipient: str = ""  # "rfc822;addr": RCPT's ORCPT (RFC 3461 §4.2), as given


def xtext_decode(text: str) -> str:
    """RFC 3461 §4 xtext to text; ValueError when it is not xtext."""
    if not _XTEXT.fullmatch(text):
        raise ValueError("not xtext")
    return _HEX.sub(lambda m: chr(int(m[1], 16)), text)


def xtext_encode(text: str) -> str:
    """Text as xtext: "+XX" for "+", "=" and octets outside "!".."~" (UTF-8 octets each)."""
    return "".join(ch if "!" <= ch <= "~" and ch not in "+=" else "".join(f"+{b:02X}" for b in ch.encode())
                   for ch in text)


def format_date(ts: float) -> str:
    """RFC 5322 §3.3 date-time in UTC: "Mon, 01 Jan 2024 00:00:00 +0000"."""
    dt = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return (f"{days[dt.weekday()]}, {dt.day:02d} {months[dt.month - 1]} {dt.year:04d} "
            f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} +0000")


def _one_line(text: str, limit: int = _MAX_FIELD) -> str:
    return _CONTROL.sub(" ", text).strip()[:limit]


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _fold(name: str, value: str) -> str:
    """`Name: value` folded at spaces near 78 columns (RFC 5322 §2.2.3), CRLF-terminated."""
    line = f"{name}: "
    out: list[str] = []
    for word in value.split(" "):
        if len(line) + len(word) > 76 and line.strip() and not line.endswith(": "):
            out.append(line.rstrip(" "))
            line = " "
        line += word + " "
    out.append(line.rstrip(" "))
    return "\r\n".join(out) + "\r\n"


def _addr_field(address: str) -> tuple[str, bool]:
    """RFC 3464 §2.3.2 "rfc822; addr", or RFC 6533 §3 "utf-8; addr" when non-ASCII."""
    addr = _one_line(address, 512)
    if addr.isascii():
        return f"rfc822; {addr}", False
    return f"utf-8; {addr}", True


def header_section(message: bytes, limit: int = MAX_RETURNED_HEADERS) -> bytes:
    """The original's header fields (without the empty line), CRLF line ends, cut at a line
    boundary so at most `limit` octets are returned."""
    data = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    end = data.find(b"\n\n")
    if data.startswith(b"\n"):
        head = b""
    else:
        head = data if end < 0 else data[:end + 1]
    out: list[bytes] = []
    size = 0
    for line in head.split(b"\n"):
        if not line:
            continue
        size += len(line) + 2
        if size > limit:
            break
        out.append(line + b"\r\n")
    return b"".join(out)


_INTRO: dict[DsnAction, list[str]] = {
    "failed": ["Your message could not be delivered to one or more recipients.",
               "It is attached below.", "", "The mail system said:", ""],
    "delayed": ["Your message could not be delivered yet to one or more recipients.",
                "It is still queued and delivery will be attempted again{until}",
                "You do not need to send it again.", "", "The mail system said:", ""],
    "delivered": ["Your message was delivered to the following recipients, as you asked to be told.",
                  "Its headers are attached below.", ""],
    "relayed": ["Your message was delivered to the following recipients, as you asked to be told.",
                "The next mail system does not send delivery notices, so this is the last one.",
                "Its headers are attached below.", ""],
    "expanded": ["Your message was delivered to the following addresses, as you asked to be told.",
                 "Each forwards it to several others, which send no further success notices.",
                 "Its headers are attached below.", ""],
}
_SUBJECT: dict[DsnAction, str] = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
    "expanded": "Successful Mail Delivery Report",
}


def report_action(reports: Sequence[RecipientReport]) -> DsnAction:
    """The action that names the whole report: a failure first, then a delay, then a success."""
    actions = {r.action for r in reports}
    for action in ("failed", "delayed", "delivered", "relayed"):
        if action in actions:
            return action
    return "expanded"


def _human_text(hostname: str, reports: Sequence[RecipientReport], action: DsnAction,
                will_retry_until: float | None) -> str:
    until = f" until {format_date(will_retry_until)}." if will_retry_until else "."
    lines = [f"This is the mail system at host {hostname}.", ""]
    lines += [line.replace("{until}", until) for line in _INTRO[action]]
    for r in reports:
        what = _one_line(r.diagnostic, 600) or f"status {r.status}"
        host = f" (host {_one_line(r.remote_mta, 255)})" if r.remote_mta else ""
        lines.append(_ascii(f"<{_one_line(r.recipient, 512)}>{host}: {what}")[:990])  # RFC 5322 §2.1.1
    return "\r\n".join(lines) + "\r\n"


def delivery_status(hostname: str, reports: Sequence[RecipientReport], arrival: float,
                    will_retry_until: float | None = None, envid: str | None = None) -> tuple[str, bool]:
    """The message/delivery-status body (RFC 3464 §2.1) and whether it needs the "global"
    (RFC 6533) form because an address is non-ASCII."""
    out = []
    if envid:
        out.append(_fold("Original-Envelope-Id", _ascii(_one_line(envid, 100))))  # §2.2.1, RFC 3461 §4.4
    out += [_fold("Reporting-MTA", f"dns; {_ascii(_one_line(hostname, 255))}"),  # §2.2.2
            _fold("Arrival-Date", format_date(arrival))]  # §2.2.5
    utf8 = False
    for r in reports:
        fallback = {"failed": "5.0.0", "delayed": "4.0.0"}.get(r.action, "2.0.0")
        status = r.status if _STATUS.match(r.status) else fallback
        addr, wide = _addr_field(r.recipient)
        utf8 = utf8 or wide
        out.append("\r\n")  # blank line between per-message and per-recipient groups (§2.1)
        if r.original_recipient:
            out.append(_fold("Original-Recipient", _ascii(_one_line(r.original_recipient, 512))))  # §2.3.1
        out.append(_fold("Final-Recipient", addr))  # §2.3.2
        out.append(_fold("Action", r.action))  # §2.3.3
        out.append(_fold("Status", status))  # §2.3.4
        if r.remote_mta:
            out.append(_fold("Remote-MTA", f"dns; {_ascii(_one_line(r.remote_mta, 255))}"))  # §2.3.5
        if r.diagnostic:
            out.append(_fold("Diagnostic-Code", f"smtp; {_ascii(_one_line(r.diagnostic))}"))  # §2.3.6
        if r.last_attempt is not None:
            out.append(_fold("Last-Attempt-Date", format_date(r.last_attempt)))  # §2.3.7
        if r.action == "delayed" and will_retry_until is not None:
            out.append(_fold("Will-Retry-Until", format_date(will_retry_until)))  # §2.3.9
    return "".join(out), utf8


def build_dsn(*, hostname: str, to: str, reports: Sequence[RecipientReport], original: bytes,
              arrival: float, now: float, message_id: str, boundary: str,
              will_retry_until: float | None = None, request: MailDsn = NO_MAIL_DSN) -> bytes:
    """The whole DSN message (CRLF line ends), to be sent from the null sender to `to`.

    The report's action is report_action(reports). `request` is what MAIL asked: its ENVID comes
    back (RFC 3461 §4.4); RET=FULL returns the whole original in a failure report (§4.3) when it
    is at most MAX_RETURNED_FULL octets, else (and always for other reports) its header section."""
    if not reports:
        raise ValueError("a DSN needs at least one recipient report")
    action = report_action(reports)
    full = action == "failed" and request.ret == "FULL" and len(original) <= MAX_RETURNED_FULL
    returned = original if full else header_section(original)
    status, utf8 = delivery_status(hostname, reports, arrival, will_retry_until, request.envid)
    human = _human_text(hostname, reports, action, will_retry_until)
    bound = re.sub(r"[^0-9A-Za-z'()+_,./:=?-]", "", boundary)[:60] or "dsn"  # RFC 2046 §5.1.1 bchars
    body_bytes = human.encode() + status.encode("utf-8") + returned
    while ("--" + bound).encode() in body_bytes:
        bound += "=_"
    host = _ascii(_one_line(hostname, 255))
    top = "".join([
        _fold("From", f"Mail Delivery System <MAILER-DAEMON@{host}>"),
        _fold("To", f"<{_one_line(to, 512)}>"),
        _fold("Subject", _SUBJECT[action]),
        _fold("Date", format_date(now)),
        _fold("Message-ID", _ascii(_one_line(message_id, 255))),
        _fold("Auto-Submitted", "auto-replied"),  # RFC 3834 §5: never auto-reply to this
        _fold("MIME-Version", "1.0"),
        _fold("Content-Type", f'multipart/report; report-type=delivery-status; boundary="{bound}"'),
        "\r\n",
        "This is a MIME-encapsulated message.\r\n\r\n",
        f"--{bound}\r\n",
        "Content-Type: text/plain; charset=us-ascii\r\n",
        "Content-Description: Notification\r\n\r\n",
        human,
        f"\r\n--{bound}\r\n",
        # RFC 6533 §6.1 message/global-delivery-status for UTF-8 addresses
        "Content-Type: " + ("message/global-delivery-status" if utf8 else "message/delivery-status")
        + "\r\n",
        "Content-Description: Delivery report\r\n\r\n",
    ]).encode("utf-8")
    if full:  # RFC 6522 §3: the third part is the returned message
        head_type = "Content-Type: message/rfc822\r\n"
        description = "Undelivered Message"
    else:
        head_type = "Content-Type: text/rfc822-headers\r\n"
        description = "Undelivered Message Headers" if action != "delivered" else "Message Headers"
    if not returned.isascii():
        head_type += "Content-Transfer-Encoding: 8bit\r\n"
    rest = (f"\r\n--{bound}\r\n{head_type}Content-Description: {description}\r\n\r\n").encode()
    if full and not returned.endswith(b"\r\n"):
        returned += b"\r\n"
    return top + status.encode("utf-8") + rest + returned + f"\r\n--{bound}--\r\n".encode()


__all__ = ["DEFAULT_NOTIFY", "NO_DSN", "DsnRequest", "MAX_RETURNED_FULL", "MAX_RETURNED_HEADERS", "NO_MAIL_DSN", "NO_RCPT_DSN", "DsnAction",
           "MailDsn", "RcptDsn", "RecipientReport", "build_dsn", "delivery_status", "format_date", "header_section",
           "forwarded", "report_action", "xtext_decode", "xtext_encode"]
