"""Spam verdicts: what a content scanner said about one message, and what we do with it (pure).

Owns: the `SpamVerdict` type every scanner returns (rspamd today: policy/rspamd.py; the embedded
checks later), parsing rspamd's /checkv2 JSON reply into it (`parse_rspamd`, one error type:
`ScanError`), the outcome of each action (`outcome`, as Postfix's rspamd milter maps them:
reject -> 550 5.7.1 with rspamd's message; soft reject and greylist -> 451 4.7.1; add header and
rewrite subject -> delivered to Junk; no action -> INBOX), the fields we add (`status_fields`:
`X-Spam-Status: Yes|No, score=S, required=R` and `X-Spam-Score: S`, or `X-Spam-Status: Unknown`
when no scanner answered) and the header changes a scanner asks for (`milter_fields`,
`remove_fields`: rspamd's `milter.add_headers` / `milter.remove_headers`, and the new Subject of
"rewrite subject").
Does not own: talking to rspamd (policy/rspamd.py), removing the X-Spam-* fields that arrive from
outside (message/trust.py, on every way into a mailbox), the SMTP dialogue (smtp/inbound.py).

Every verdict is decided before the 250 (no backscatter): smtp/inbound.py raises `outcome`'s error
in the DATA reply or files the message where `outcome` says.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header
from typing import Literal, Protocol

from mailhaven.errors import MailError, PolicyReject, TempFailure

# rspamd's action names (rspamd.com/doc/faq.html#what-are-rspamd-actions), plus ours: "unknown"
# (no scanner answered: spam.on_error = "accept") and "skipped" (too big to scan).
ACTIONS = frozenset({"no action", "greylist", "add header", "rewrite subject", "soft reject", "reject",
                     "unknown", "skipped"})
Outcome = Literal["inbox", "junk", "reject", "tempfail"]

MAX_SYMBOLS = 200  # symbol names kept from one reply (for the log line)
MAX_FIELDS = 50  # header fields a scanner may add or remove per message
MAX_VALUE = 4096  # octets of one added field's value
_FIELD_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 §3.6.8 ftext, a sane length
_FOLD = re.compile(r"\r?\n(?=[ \t])")
DEFAULT_REJECT = "Spam message rejected"
DEFAULT_TEMPFAIL = "Try again later"


class ScanError(Exception):
    """The scanner did not give a usable verdict (no answer in time, HTTP error, bad reply)."""


@dataclass(frozen=True)
class SpamVerdict:
    """What a scanner decided about one message."""

    action: str  # one of ACTIONS
    score: float = 0.0
    required: float = 0.0
    symbols: tuple[str, ...] = ()
    message: str = ""  # rspamd's messages.smtp_message: the text of a refusal
    add: tuple[tuple[str, str], ...] = ()  # fields to add (name, value), value may be folded
    remove: tuple[tuple[str, int], ...] = ()  # (name, n): n = 0 every occurrence, n > 0 the n-th
    subject: str | None = None  # the new Subject of "rewrite subject"
    reason: str = ""  # for unknown / skipped: why

    @property
    def scanned(self) -> bool:
        return self.action not in ("unknown", "skipped")


def unknown(reason: str) -> SpamVerdict:
    return SpamVerdict("unknown", reason=reason)


def outcome(verdict: SpamVerdict) -> Outcome:
    """Where the message goes (Postfix + rspamd milter semantics)."""
    if verdict.action == "reject":
        return "reject"
    if verdict.action in ("soft reject", "greylist"):
        return "tempfail"
    if verdict.action in ("add header", "rewrite subject"):
        return "junk"
    return "inbox"


def error_for(verdict: SpamVerdict) -> MailError | None:
    """The refusal of a reject / tempfail outcome (smtp/replies.py renders it), else None."""
    kind = outcome(verdict)
    if kind == "reject":
        return PolicyReject(verdict.message or DEFAULT_REJECT, code=550, enhanced="5.7.1")  # RFC 3463 X.7.1
    if kind == "tempfail":
        return TempFailure(verdict.message or DEFAULT_TEMPFAIL, code=451, enhanced="4.7.1")
    return None


def _num(x: float) -> str:
    return f"{x:.2f}"


def status_fields(verdict: SpamVerdict) -> bytes:
    """X-Spam-Status (and X-Spam-Score when scanned), CRLF-terminated, to prepend."""
    if not verdict.scanned:
        return b"X-Spam-Status: Unknown\r\n"
    flag = "Yes" if outcome(verdict) == "junk" else "No"
    return (f"X-Spam-Status: {flag}, score={_num(verdict.score)}, required={_num(verdict.required)}\r\n"
            f"X-Spam-Score: {_num(verdict.score)}\r\n").encode("ascii")


def _clean_value(value: str) -> str | None:
    """A field value safe to write: folds kept (as CRLF + WSP), any other line break refused."""
    value = _FOLD.sub("\r\n", value.strip("\r\n"))
    if re.search(r"\r(?!\n[ \t])|(?<!\r)\n|\r\n(?![ \t])|\x00", value) or len(value) > MAX_VALUE:
        return None
    return value


def _encode(name: str, value: str) -> bytes:
    if value.isascii():
        return f"{name}: {value}\r\n".encode("ascii")
    # RFC 2047 encoded-words for a non-ASCII value (rspamd may hand back a UTF-8 Subject).
    return f"{name}: {Header(value, 'utf-8').encode(linesep=chr(13) + chr(10))}\r\n".encode("ascii")


def milter_fields(verdict: SpamVerdict) -> bytes:
    """The fields the scanner asked us to add (and the rewritten Subject), CRLF-terminated. Names
    that are no field names and values with bare line breaks are dropped (no header injection);
    X-Spam-* from the scanner is dropped as well: those are ours (status_fields)."""
    out: list[bytes] = []
    for name, value in verdict.add:
        clean = _clean_value(value)
        if clean is None or not _FIELD_NAME.match(name) or name.lower().startswith("x-spam-"):
            continue
        out.append(_encode(name, clean))
    if verdict.subject is not None and verdict.action == "rewrite subject":
        subject = _clean_value(verdict.subject)
        if subject is not None:
            out.append(_encode("Subject", subject))
    return b"".join(out)


def removals(verdict: SpamVerdict) -> list[tuple[str, int]]:
    """Fields to remove before delivery: what the scanner asked for, and the old Subject when it is
    rewritten."""
    out = [(name, n) for name, n in verdict.remove if _FIELD_NAME.match(name)]
    if verdict.subject is not None and verdict.action == "rewrite subject" and \
            _clean_value(verdict.subject) is not None:
        out.append(("Subject", 0))
    return out


_LINE = re.compile(rb"[^\n]*\n|[^\n]+")


def remove_fields(message: bytes, removals: Sequence[tuple[str, int]]) -> bytes:
    """`message` without the named header fields: (name, 0) every occurrence, (name, n) the n-th
    (1-based, as rspamd's milter_headers counts; a negative n counts from the end). Folded fields go
    whole (RFC 5322 §2.2.3); the body and every other field keep their bytes."""
    if not removals:
        return message
    lines: list[bytes] = []
    pos = 0
    for m in _LINE.finditer(message):
        if m.group(0) in (b"\r\n", b"\n"):
            pos = m.start()
            break
        lines.append(m.group(0))
        pos = m.end()
    else:
        pos = len(message)
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    names = [f[0].split(b":", 1)[0].strip().decode("latin-1").lower() for f in fields]
    drop: set[int] = set()
    for name, n in removals:
        idx = [i for i, nm in enumerate(names) if nm == name.lower()]
        if n == 0:
            drop.update(idx)
        elif 0 < n <= len(idx):
            drop.add(idx[n - 1])
        elif n < 0 and -n <= len(idx):
            drop.add(idx[n])
    if not drop:
        return message
    kept = b"".join(b"".join(f) for i, f in enumerate(fields) if i not in drop)
    return kept + message[pos:]


# --- rspamd's /checkv2 reply ------------------------------------------------------------------------


def _float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScanError(f"bad {what} in scanner reply")
    return float(value)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _adds(block: object) -> tuple[tuple[str, str], ...]:
    """milter.add_headers: {name: "value" | {"value": v, "order": n} | [those...]}."""
    out: list[tuple[str, str]] = []
    if not isinstance(block, dict):
        return ()
    for name, spec in block.items():
        items = spec if isinstance(spec, list) else [spec]
        for item in items:
            value = item.get("value") if isinstance(item, dict) else item
            if isinstance(name, str) and isinstance(value, str):
                out.append((name, value))
    return tuple(out[:MAX_FIELDS])


def _removes(block: object) -> tuple[tuple[str, int], ...]:
    """milter.remove_headers: {name: n} (0 = all occurrences)."""
    out: list[tuple[str, int]] = []
    if not isinstance(block, dict):
        return ()
    for name, n in block.items():
        if isinstance(name, str) and isinstance(n, int) and not isinstance(n, bool) and abs(n) < 1000:
            out.append((name, n))
    return tuple(out[:MAX_FIELDS])


def parse_rspamd(body: bytes) -> SpamVerdict:
    """rspamd's JSON reply to /checkv2 -> SpamVerdict. Raises ScanError (and nothing else) for
    anything that is not a reply with a known action and a numeric score."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ScanError("scanner reply is not JSON") from None
    if not isinstance(data, dict):
        raise ScanError("scanner reply is not a JSON object")
    action = data.get("action")
    if not isinstance(action, str) or action not in ACTIONS or action in ("unknown", "skipped"):
        raise ScanError("unknown action in scanner reply")
    score = _float(data.get("score"), "score")
    required = _float(data.get("required_score", 0.0), "required_score")
    symbols = data.get("symbols")
    names = tuple(sorted(k for k in symbols if isinstance(k, str)))[:MAX_SYMBOLS] \
        if isinstance(symbols, dict) else ()
    messages = data.get("messages")
    message = _text(messages.get("smtp_message")) if isinstance(messages, dict) else ""
    milter = data.get("milter")
    add = _adds(milter.get("add_headers")) if isinstance(milter, dict) else ()
    remove = _removes(milter.get("remove_headers")) if isinstance(milter, dict) else ()
    subject = data.get("subject")
    return SpamVerdict(action, score, required, names, message, add, remove,
                       subject if isinstance(subject, str) else None)


@dataclass(frozen=True)
class ScanRequest:
    """The envelope a scanner is told about (rspamd's request headers)."""

    ip: str
    helo: str
    sender: str  # "" for the null reverse-path
    recipients: tuple[str, ...]
    queue_id: str
    hostname: str = "unknown"  # the client's verified host name (Postfix's "unknown" when none)
    deliver_to: str = ""  # the one mailbox, when the message goes to one user
    user: str = ""  # the authenticated sender of submitted mail (rspamd's outbound rules apply)


class Scanner(Protocol):
    """A content scanner the MX asks at DATA (policy/rspamd.RspamdClient; the embedded checks later)."""

    async def scan(self, message: bytes, req: ScanRequest) -> SpamVerdict:
        """The verdict on `message`; raises ScanError when there is none."""
        ...

    async def close(self) -> None:
        """Release pooled connections (the owner calls it once, at shutdown)."""
        ...


__all__ = ["ACTIONS", "Scanner", "ScanError", "ScanRequest", "SpamVerdict", "unknown", "outcome", "error_for",
           "status_fields", "milter_fields", "removals", "remove_fields", "parse_rspamd"]
