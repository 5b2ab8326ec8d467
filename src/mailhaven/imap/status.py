"""STATUS responses (RFC 3501 §6.3.10), shared by STATUS and LIST-STATUS (RFC 5819).

Owns: each item's value over a mailbox snapshot (STATUS=SIZE RFC 8438, DELETED RFC 9051 §6.3.11,
DELETED-STORAGE RFC 9208 §4.3, MAILBOXID RFC 8474 §4.3, HIGHESTMODSEQ RFC 7162 §3.1.2.1) and the
`* STATUS` line, its items in Dovecot's fixed order (MESSAGES RECENT DELETED UIDNEXT UIDVALIDITY
UNSEEN HIGHESTMODSEQ SIZE), whatever order the client asked them in; ours Dovecot 2.3 lacks
(DELETED-STORAGE, MAILBOXID) come last.
Does not own: who counts as \\Recent (session.py's registry: it passes the count), the mailbox id's
derivation (derived.py), opening the mailbox (session.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from mailhaven.imap.listing import wire_name
from mailhaven.store import Snapshot

ORDER = ("MESSAGES", "RECENT", "DELETED", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE",
         "DELETED-STORAGE", "MAILBOXID")
SEEN, DELETED = "\\Seen", "\\Deleted"


def value(item: str, snap: Snapshot, recent: int, mailboxid: str) -> bytes:
    """One item's value as sent."""
    if item == "MESSAGES":
        return b"%d" % len(snap.messages)
    if item == "RECENT":
        return b"%d" % recent
    if item == "DELETED":
        return b"%d" % sum(1 for m in snap.messages if DELETED in m.flags)
    if item == "UIDNEXT":
        return b"%d" % snap.uidnext
    if item == "UIDVALIDITY":
        return b"%d" % snap.uidvalidity
    if item == "UNSEEN":
        return b"%d" % sum(1 for m in snap.messages if SEEN not in m.flags)
    if item == "HIGHESTMODSEQ":
        return b"%d" % snap.highestmodseq
    if item == "SIZE":  # RFC 8438 §2: the sum of the messages' RFC822.SIZE
        return b"%d" % sum(m.size for m in snap.messages)
    if item == "DELETED-STORAGE":  # RFC 9208 §4.3: what EXPUNGE would free: the \Deleted messages' sizes
        return b"%d" % sum(m.size for m in snap.messages if DELETED in m.flags)
    if item == "MAILBOXID":  # RFC 8474 §4.3
        return b"(" + mailboxid.encode("ascii") + b")"
    raise ValueError(item)


def line(name: str, items: Iterable[str], snap: Snapshot, recent: int, mailboxid: str, utf8: bool = False) -> bytes:
    """`* STATUS name (item value ...)` for the items asked for, in ORDER (the name in UTF-8 once
    the client enabled UTF8=ACCEPT)."""
    wanted = set(items)
    values = [item.encode("ascii") + b" " + value(item, snap, recent, mailboxid) for item in ORDER if item in wanted]
    return b"* STATUS " + wire_name(name, utf8) + b" (" + b" ".join(values) + b")\r\n"


__all__ = ["ORDER", "line", "value"]
