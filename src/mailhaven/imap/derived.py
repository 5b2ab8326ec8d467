"""Message and mailbox attributes derived from what the store already keeps (no column of their own).

Owns: OBJECTID's identifiers (RFC 8474) and SAVEDATE's save date (RFC 8514), computed from the
mailbox's UIDVALIDITY and the message's Maildir key, so the index schema stays as it is.
Does not own: the keys and UIDVALIDITYs themselves (store/), rendering them (fetch.py, session.py).

Derivations (stable: the same inputs give the same value on every node and after an index rebuild):
- MAILBOXID (RFC 8474 §4) = "F" + 24 hex digits of BLAKE2b over the user and the mailbox's
  UIDVALIDITY. A user's UIDVALIDITYs are unique and only grow (store/index.py next_uidvalidity, also
  kept in `mailhaven-uidvalidity` beside the index), and RENAME keeps a mailbox's UIDVALIDITY, so the
  id survives RENAME and is never given to another mailbox; RENAME of INBOX moves the messages into a
  new mailbox (a new UIDVALIDITY, so a new id) while INBOX keeps its own (RFC 8474 §4). It changes
  only where the UIDVALIDITY changes (an index lost together with the folder's uidlist).
- EMAILID (RFC 8474 §5.1) = "M" + 24 hex digits of BLAKE2b over the Maildir key's unique base (the
  file name before ",S=" and ":2,"). Flag changes rename the file but keep the key; an index rebuild
  reads the keys back from the file names; MOVE keeps the key (store/folder.py transfer) and so the
  EMAILID. COPY gives the copy a key of its own, so a copy has a new EMAILID (RFC 8474 §5.1 wants
  the source's: known deviation, fixing it needs the origin recorded with the copy).
- THREADID (RFC 8474 §5.2) is NIL: the store keeps no thread identity, and NIL is what the RFC has
  a server without threads answer. SEARCH THREADID matches nothing.
- The save date (RFC 8514 §3) is the time the Maildir key starts with: the moment the message's
  file was written into its folder (delivery, APPEND, COPY). Dovecot 2.3 on Maildir answers its
  cached save time or else the file's ctime; the key is the same moment and, unlike the ctime,
  does not move when a flag change renames the file. A key that does not start with a time (a file
  some other program named) falls back to the internal date. MOVE keeps the key, so a moved message
  keeps the save date of its first folder (known deviation, as for EMAILID over COPY). Every mailbox
  has save dates, so SAVEDATESUPPORTED matches every message (as Dovecot on Maildir).
"""

from __future__ import annotations

import hashlib
import re

_KEY_TIME = re.compile(r"([0-9]{1,12})\.")


def _digest(data: str) -> str:
    return hashlib.blake2b(data.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


def mailbox_id(user: str, uidvalidity: int) -> str:
    """RFC 8474 §4 MAILBOXID of the user's mailbox with this UIDVALIDITY."""
    return "F" + _digest(f"{user}\0{uidvalidity}")


def key_base(key: str) -> str:
    """The unique part of a Maildir key: before the ",S=" / ",W=" size fields."""
    return key.split(",", 1)[0]


def email_id(key: str) -> str:
    """RFC 8474 §5.1 EMAILID of the message stored under this Maildir key."""
    return "M" + _digest(key_base(key))


THREAD_ID: None = None  # RFC 8474 §5.2: no thread identity kept (NIL)


def save_date(key: str, internaldate: float) -> float:
    """RFC 8514 §3 save date (seconds since the epoch) of the message with this key."""
    m = _KEY_TIME.match(key)
    return float(m.group(1)) if m else internaldate


__all__ = ["THREAD_ID", "email_id", "key_base", "mailbox_id", "save_date"]
