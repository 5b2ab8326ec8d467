"""LIST and LSUB responses (RFC 3501 §6.3.8, §6.3.9; CHILDREN RFC 3348; SPECIAL-USE RFC 6154 §2).

Owns: matching mailbox names against a reference and pattern ("*" and "%" wildcards, INBOX in any
case), the attributes each listed name gets (\\HasChildren/\\HasNoChildren, special use, \\Noselect
for parents that are not mailboxes), and the untagged lines, with names in modified UTF-7.
Pure: it is given the account's mailboxes or subscriptions; session.py asks the store for them.
Does not own: the mailboxes (store/), the hierarchy delimiter's meaning on disk (store/names.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from mailhaven.imap import encode, utf7
from mailhaven.store import MailboxInfo

DELIMITER = "."  # Maildir++ hierarchy delimiter (store/names.py)


def wire_name(name: str, utf8: bool = False) -> bytes:
    """A mailbox name as sent in LIST/LSUB/STATUS: modified UTF-7 (RFC 3501 §5.1.3), astring; once
    the client enabled UTF8=ACCEPT, UTF-8 (RFC 6855 §3), quoted when it has no CR, LF or NUL."""
    if not utf8:
        return encode.astring(utf7.encode(name).encode("ascii"))
    data = name.encode("utf-8", "surrogateescape")
    if data.isascii() or any(c in data for c in b"\r\n\x00"):
        return encode.astring(data)
    return encode.quoted(data)


def list_matcher(pattern: str) -> re.Pattern[str]:
    """RFC 3501 §6.3.8: "*" matches anything, "%" anything but the hierarchy delimiter."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append("[^" + re.escape(DELIMITER) + "]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def inbox_canonical(pattern: str) -> str:
    """"inbox" / "Inbox.sub" -> "INBOX..." (RFC 3501 §5.1: INBOX is case-insensitive)."""
    head, sep, rest = pattern.partition(DELIMITER)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return pattern


def ancestors(name: str) -> list[str]:
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


def list_lines(infos: Iterable[MailboxInfo], reference: str, pattern: str, utf8: bool = False) -> list[bytes]:
    """The `* LIST` lines for LIST reference pattern over the account's mailboxes."""
    if pattern == "":  # RFC 3501 §6.3.8: the delimiter and root of the reference
        return [b'* LIST (\\Noselect) "." ""\r\n']
    matcher = list_matcher(inbox_canonical(reference + pattern))
    infos = list(infos)
    names = {i.name for i in infos}
    rows: list[tuple[str, list[str]]] = []
    for info in infos:
        if matcher.fullmatch(info.name):
            attrs = ["\\HasChildren" if info.has_children else "\\HasNoChildren"]  # RFC 3348
            if info.special_use:
                attrs.append(info.special_use)  # RFC 6154 §2
            rows.append((info.name, attrs))
    # Parents that are not mailboxes themselves (folders made by other tools): \Noselect.
    for implied in sorted({a for n in names for a in ancestors(n)} - names):
        if matcher.fullmatch(implied):
            rows.append((implied, ["\\Noselect", "\\HasChildren"]))
    return [b"* LIST (" + " ".join(attrs).encode("ascii") + b') "." ' + wire_name(name, utf8) + b"\r\n"
            for name, attrs in rows]


def lsub_lines(subs: Sequence[str], reference: str, pattern: str, utf8: bool = False) -> list[bytes]:
    """The `* LSUB` lines for LSUB reference pattern over the account's subscriptions."""
    if pattern == "":
        return [b'* LSUB (\\Noselect) "." ""\r\n']
    matcher = list_matcher(inbox_canonical(reference + pattern))
    subscribed = set(subs)
    shown: set[str] = set()
    out: list[bytes] = []
    for name in subs:
        if matcher.fullmatch(name) and name not in shown:
            shown.add(name)
            out.append(b"* LSUB () \".\" " + wire_name(name, utf8) + b"\r\n")
    # RFC 3501 §6.3.9: when "%" hides a subscribed name, its unsubscribed parent that the pattern
    # matches is shown, as \Noselect.
    for name in subs:
        if matcher.fullmatch(name):
            continue
        for a in ancestors(name):
            if a not in subscribed and a not in shown and matcher.fullmatch(a):
                shown.add(a)
                out.append(b"* LSUB (\\Noselect) \".\" " + wire_name(a, utf8) + b"\r\n")
    return out


__all__ = ["DELIMITER", "ancestors", "inbox_canonical", "list_lines", "list_matcher", "lsub_lines",
           "wire_name"]
