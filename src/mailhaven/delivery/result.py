"""The outcome of delivering one message to one recipient (pure value).

Owns: `DeliveryResult` (reply code, enhanced status code RFC 3463, reply text, temporary or not, the
host that answered) and turning SMTP replies and our own errors into one. Does not own: what a
result means for the queue entry (queue/manager.py) or the DSN text (message/dsn.py).

Classification (STYLE rule 5): 2xx = delivered; 5xx = permanent; everything else (4xx, a broken
reply, a network error, an exception we did not expect) = temporary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")  # RFC 3463 §2 status-code
MAX_TEXT = 512  # remote reply text kept per recipient (hostile servers send megabytes)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clean_text(text: str) -> str:
    """One line of printable text, bounded: remote replies end up in envelopes, logs and DSNs."""
    return _CONTROL.sub(" ", text).strip()[:MAX_TEXT]


def split_enhanced(code: int, text: str) -> tuple[str, str]:
    """("5.1.1", "no such user") from "5.1.1 no such user"; a default class code when absent or
    when its class disagrees with the reply code (RFC 3463 §2: the classes must match)."""
    m = _ENHANCED.match(text)
    klass = str(code)[0] if 200 <= code < 600 else "4"
    if m and m.group(1) == klass:
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}", text[m.end():].strip()
    return f"{klass}.0.0", text.strip()


@dataclass(frozen=True)
class DeliveryResult:
    """One recipient's outcome of one attempt."""

    recipient: str
    code: int
    enhanced: str
    text: str
    temporary: bool
    remote_mta: str = ""  # host name (or address) that gave the reply; "" for local/internal
    # Delivered to a next hop that took the DSN request (RFC 3461) over: it reports from now on.
    dsn_passed: bool = False
    route: str = ""  # how the next hop was chosen: "MX", "relay [HOST]:PORT", "transport [HOST]:PORT" (routes.py)
    stage: str = ""  # where a failed attempt stopped: "connect", "EHLO", "STARTTLS", "AUTH", "RCPT TO", "DATA"...

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return not self.delivered and not self.temporary

    @property
    def reply(self) -> str:
        """"550 5.1.1 no such user" - the form logged and put in Diagnostic-Code."""
        return f"{self.code} {self.enhanced} {self.text}".strip()

    @classmethod
    def from_reply(cls, recipient: str, code: int, message: str, remote_mta: str = "") -> DeliveryResult:
        """From an SMTP reply. Codes outside 200-599 are treated as temporary failures (451)."""
        text = clean_text(message.replace("\n", " "))
        if not 200 <= code < 600 or 300 <= code < 400:
            return cls(recipient, 451, "4.5.0", f"unexpected reply {code} {text}".strip(), True, remote_mta)
        enhanced, rest = split_enhanced(code, text)
        return cls(recipient, code, enhanced, rest, code < 500 and code >= 300, remote_mta)

    @classmethod
    def temp(cls, recipient: str, text: str, *, code: int = 451, enhanced: str = "4.4.1",
             remote_mta: str = "") -> DeliveryResult:
        return cls(recipient, code, enhanced, clean_text(text), True, remote_mta)

    @classmethod
    def perm(cls, recipient: str, text: str, *, code: int = 550, enhanced: str = "5.0.0",
             remote_mta: str = "") -> DeliveryResult:
        return cls(recipient, code, enhanced, clean_text(text), False, remote_mta)

    @classmethod
    def ok(cls, recipient: str, text: str = "delivered", *, remote_mta: str = "") -> DeliveryResult:
        return cls(recipient, 250, "2.0.0", clean_text(text), False, remote_mta)

    @classmethod
    def from_error(cls, recipient: str, error: BaseException, *, remote_mta: str = "") -> DeliveryResult:
        """Our MailError keeps its meaning; anything else is temporary with no internals shown."""
        from mailhaven.errors import MailError

        if isinstance(error, MailError):
            return cls(recipient, error.code, error.enhanced, clean_text(error.text), error.temporary,
                       remote_mta)
        return cls.temp(recipient, "internal error, will retry", code=451, enhanced="4.3.0",
                        remote_mta=remote_mta)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "enhanced": self.enhanced, "text": self.text,
                               "temporary": self.temporary, "remote_mta": self.remote_mta}
        if self.route:
            out["route"] = self.route
        if self.stage:
            out["stage"] = self.stage
        return out

    @classmethod
    def from_json(cls, recipient: str, data: dict[str, Any]) -> DeliveryResult:
        return cls(recipient, int(data["code"]), str(data["enhanced"]), str(data["text"]),
                   bool(data["temporary"]), str(data.get("remote_mta", "")),
                   route=str(data.get("route", "")), stage=str(data.get("stage", "")))


__all__ = ["DeliveryResult", "split_enhanced", "clean_text"]
