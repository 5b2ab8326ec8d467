"""Public value types and store-specific errors of the mail store (no behaviour, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from mailhaven.errors import PermFailure


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message as a snapshot sees it.

    flags: system flags ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft") plus keywords.
    internaldate: seconds since the epoch (RFC 3501 §2.3.3). size: RFC822.SIZE, CRLF octets.
    key: the Maildir file name before ":2," (stable while the message lives in this folder).
    unterminated: the message is not empty and does not end with a line break (recorded when the
    store first sees the file, so nobody reads messages to learn it).
    """

    uid: int
    flags: frozenset[str]
    internaldate: float
    size: int
    modseq: int
    key: str
    unterminated: bool = False

    @property
    def pop3_size(self) -> int:
        """The octets POP3 RETR sends before its terminating ".CRLF" (RFC 1939 §3, §11 LIST),
        before byte-stuffing: `size`, plus the CRLF a multi-line response adds to a message that
        does not end with one."""
        return self.size + 2 if self.unterminated else self.size


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    name: str
    special_use: str | None  # RFC 6154 attribute, e.g. "\\Sent"
    has_children: bool
    subscribed: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: list[MessageInfo]  # ascending UID; shared by the snapshots of an unchanged folder: never modify


class MessageNotFound(PermFailure):
    """No such message (it was expunged)."""


class MailboxHasChildren(PermFailure):
    """Mailbox has inferior mailboxes; delete them first."""
