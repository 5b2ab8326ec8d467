"""What a Sieve run decides: the actions (RFC 5228 §4, and those of each extension) and the result.

Owns: the action dataclasses a caller executes (keep, fileinto, redirect, discard, reject/ereject,
vacation with its computed reply data), the `Result` of one run (actions, the edited header block when
editheader changed it, duplicate ids to record, the runtime error if any), and the seams the caller
provides: `Envelope`, `DuplicateTracker`, `ScriptLoader`, `MailboxChecker`, plus the `Limits`.

Does not own: evaluating a script (interp.py), delivering, sending or logging anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Keep:
    flags: tuple[str, ...] = ()
    implicit: bool = False


@dataclass(frozen=True, slots=True)
class FileInto:
    mailbox: str
    flags: tuple[str, ...] = ()
    create: bool = False
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Redirect:
    address: str
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Discard:
    pass


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str
    extended: bool = False  # ereject (RFC 5429 §2.1): refuse in protocol when possible


@dataclass(frozen=True, slots=True)
class Vacation:
    """RFC 5230 §4: the reply to send to `recipient`, unless one went out for `handle` within
    `seconds` (the caller's tracker decides)."""

    recipient: str  # the envelope sender of the incoming message
    subject: str | None  # :subject as given
    from_: str | None  # None: the caller uses the user's address
    reason: str
    mime: bool
    handle: str
    seconds: int
    reply_subject: str = ""  # :subject, or "Auto: " and the original subject (RFC 5230 §4.3)
    in_reply_to: str | None = None
    skip: str | None = None  # why no reply goes out (RFC 5230 §4.5, §5), decided here, applied by the caller


Action = Keep | FileInto | Redirect | Discard | Reject | Vacation


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope of the message being delivered (RFC 5228 §5.4)."""

    mail_from: str  # "" for the null reverse-path
    rcpt_to: str  # the recipient, as the envelope "to" part reports it
    auth: str | None = None


class DuplicateTracker(Protocol):
    """RFC 7352: which ids were seen for this user; the caller persists them."""

    def seen(self, key: str) -> bool: ...

    def mark(self, key: str, seconds: int, last: bool) -> None: ...


class ScriptLoader(Protocol):
    """RFC 6609 §2.3: the text of the script `name` at `location` ("personal" or "global"), or None."""

    def load(self, name: str, location: str) -> str | bytes | None: ...


class MailboxChecker(Protocol):
    """RFC 5490 §3.1: does the user's mailbox `name` exist."""

    def exists(self, name: str) -> bool: ...


class DictTracker:
    """A `DuplicateTracker` in a dict (tests, and callers without persistence)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def seen(self, key: str) -> bool:
        return key in self.ids

    def mark(self, key: str, seconds: int, last: bool) -> None:
        self.ids[key] = seconds


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one run (Pigeonhole: sieve_max_actions 32, sieve_max_redirects 4)."""

    max_actions: int = 32
    max_redirects: int = 4
    max_steps: int = 100_000  # commands and tests executed, includes counted
    max_seconds: float = 2.0  # wall-clock run time, checked every 64 steps
    max_include_depth: int = 10
    max_variable_size: int = 4096
    max_variables: int = 255


@dataclass(slots=True)
class Result:
    actions: list[Action] = field(default_factory=list)
    error: str | None = None  # a runtime error: the actions are then the implicit keep alone
    headers: list[tuple[str, str]] | None = None  # the header fields after editheader, if changed
    duplicates: list[tuple[str, int, bool]] = field(default_factory=list)  # (key, seconds, last) to mark
