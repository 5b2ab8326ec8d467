"""SORT (RFC 5256) and SORT=DISPLAY (RFC 5957): the sort key of one message for each criterion.

Owns: base-subject extraction (RFC 5256 §2.1), the address keys (FROM/TO/CC: the addr-mailbox of
the first address; DISPLAYFROM/DISPLAYTO: its decoded display-name, else its addr-spec), the sent
date (the Date header as an instant, the internal date when it is missing or unreadable,
RFC 5256 §2.2), and ordering a set of messages by a criteria list, ties by sequence number.
Strings compare under search.fold (i;unicode-casemap, as Dovecot 2.3).
Does not own: parsing SORT (parser.py), running the search and reading the headers (session.py),
address and header decoding (fetchitems.py, search.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import mktime_tz, parsedate_tz

from mailhaven.imap.fetchitems import parse_address_list
from mailhaven.imap.search import decode_header_value, fold
from mailhaven.message import mime

HEADER_KEYS = frozenset({"CC", "DATE", "FROM", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})  # need the header

_WSP = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:\s|\(fwd\))+$", re.I)  # RFC 5256 §5 subj-trailer, repeated
_BLOB = r"\[[^\[\]]*\][ \t]*"  # subj-blob
_LEADER = re.compile(r"^(?:(?:" + _BLOB + r")*(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:|[ \t]+)", re.I)  # subj-leader
_BLOB_PREFIX = re.compile(r"^" + _BLOB)


@dataclass(frozen=True)
class Criterion:
    key: str  # one of parser.SORT_KEYS
    reverse: bool = False


def base_subject(raw: bytes | None) -> str:
    """RFC 5256 §2.1 base subject of a Subject header value (None: no header), not yet folded."""
    return subject_and_reply(raw)[0]


def subject_and_reply(raw: bytes | None) -> tuple[str, bool]:
    """The base subject, and whether extracting it removed a reply/forward marker (re:, fwd:,
    "(fwd)", "[fwd: ...]"): RFC 5256 §2.2 THREAD=REFERENCES step 6's "reply or forward"."""
    if raw is None:
        return "", False
    reply = False
    text = _WSP.sub(" ", decode_header_value(raw))  # step 1
    while True:
        trimmed = _TRAILER.sub("", text)  # step 2
        reply = reply or "(fwd)" in text[len(trimmed):].lower()
        text = trimmed
        while True:  # steps 3-5
            before = text
            while m := _LEADER.match(text):
                reply = reply or bool(m.group(0).strip())
                text = text[m.end():]
            m = _BLOB_PREFIX.match(text)
            if m and text[m.end():]:  # step 4: only when something is left
                text = text[m.end():]
            if text == before:
                break
        if text[:5].lower() == "[fwd:" and text.endswith("]"):  # step 6
            text = text[5:-1]
            reply = True
            continue
        return text, reply


def _first_address(raw: bytes | None) -> tuple[str, str]:
    """(addr-mailbox, display key) of the first address of an address-list header value."""
    if raw is None:
        return "", ""
    addrs = parse_address_list(mime.unfold(raw))
    if not addrs:
        return "", ""
    a = addrs[0]
    mailbox = (a.mailbox or b"").decode("utf-8", "replace")
    if a.name:
        display = _WSP.sub(" ", decode_header_value(a.name)).strip()
        if display:
            return mailbox, display
    if a.host is None:  # a group: its name (RFC 5957 §2: the display name)
        return mailbox, mailbox
    return mailbox, mailbox + "@" + a.host.decode("utf-8", "replace")


def sent_date(raw: bytes | None, internaldate: float) -> float:
    """RFC 5256 §2.2: the Date header as seconds since the epoch, else the internal date."""
    if raw is not None:
        parsed = parsedate_tz(decode_header_value(raw).strip())
        if parsed is not None:
            try:
                return float(mktime_tz(parsed))
            except (OverflowError, ValueError):
                pass
    return float(internaldate)


def fields(header: bytes | None) -> dict[str, bytes]:
    """The first occurrence of each field the criteria may read, by lower-case name."""
    out: dict[str, bytes] = {}
    header = header or b""
    for f in mime.iter_fields(header, 0, len(header)):
        name = f.name.lower().decode("ascii", "replace")
        if name in ("subject", "from", "to", "cc", "date") and name not in out:
            out[name] = f.value
    return out


def key_of(criterion: str, header: bytes | dict[str, bytes] | None, internaldate: float, size: int) -> str | float:
    """The sort key of one message for one criterion (strings already folded). `header`: the
    header block, or its `fields()` when several criteria read it."""
    if criterion == "ARRIVAL":
        return float(internaldate)
    if criterion == "SIZE":
        return float(size)
    found = header if isinstance(header, dict) else fields(header)
    if criterion == "DATE":
        return sent_date(found.get("date"), internaldate)
    if criterion == "SUBJECT":
        return fold(base_subject(found.get("subject")))
    field = {"FROM": "from", "TO": "to", "CC": "cc", "DISPLAYFROM": "from", "DISPLAYTO": "to"}[criterion]
    mailbox, display = _first_address(found.get(field))
    return fold(display if criterion.startswith("DISPLAY") else mailbox)


def _nth(i: int) -> Callable[[tuple[int, list[str | float]]], str | float]:
    def key(row: tuple[int, list[str | float]]) -> str | float:
        return row[1][i]
    return key


def order(criteria: Sequence[Criterion], rows: list[tuple[int, list[str | float]]]) -> list[int]:
    """`rows` (sequence number, one key per criterion) sorted by the criteria; ties ascending by
    sequence number (RFC 5256 §3). Returns the sequence numbers."""
    rows = sorted(rows, key=lambda r: r[0])
    for i in reversed(range(len(criteria))):  # stable sorts, least significant first
        rows.sort(key=_nth(i), reverse=criteria[i].reverse)
    return [seq for seq, _ in rows]


__all__ = ["HEADER_KEYS", "Criterion", "base_subject", "fields", "key_of", "order", "sent_date", "subject_and_reply"]
