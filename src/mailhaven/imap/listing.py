"""LIST and LSUB responses (RFC 3501 §6.3.8, §6.3.9; CHILDREN RFC 3348; SPECIAL-USE RFC 6154 §2;
LIST-EXTENDED RFC 5258; which listed names get a STATUS for LIST-STATUS RFC 5819).

Owns: matching mailbox names against a reference and pattern(s) ("*" and "%" wildcards, INBOX in
any case), the attributes each listed name gets (\\HasChildren/\\HasNoChildren, special use,
\\Noselect for parents that are not mailboxes; in an extended LIST \\NonExistent instead, and
\\Subscribed, CHILDINFO), and the untagged lines, with names in modified UTF-7.
Pure: it is given the account's mailboxes and subscriptions; session.py asks the store for them
and renders the STATUS lines (status.py).
Does not own: the mailboxes (store/), the hierarchy delimiter's meaning on disk (store/names.py).

Extended LIST, as Dovecot 2.3 answers it (tests/integration/test_listext_vs_dovecot.py):
- attributes in the order \\Subscribed \\Noselect \\NonExistent \\HasChildren|\\HasNoChildren, then the
  special use; children only with RETURN (CHILDREN), the special use only with RETURN (SPECIAL-USE)
  or the SPECIAL-USE selection, \\Subscribed only with RETURN (SUBSCRIBED) or the SUBSCRIBED
  selection (RFC 5258 §3.2); a parent that is no mailbox is \\NonExistent (RFC 5258 §3.4);
- the SUBSCRIBED selection lists the subscribed names matching a pattern, existing or not
  (those \\NonExistent); SPECIAL-USE lists the mailboxes that have a special use (RFC 6154 §3);
- RECURSIVEMATCH with SUBSCRIBED lists each name that matches a pattern and has a subscribed
  descendant the patterns miss, with `(CHILDINFO ("SUBSCRIBED"))` (RFC 5258 §3.5), whether the name
  itself is subscribed or not; with SPECIAL-USE alone it adds nothing (Dovecot 2.3 on Maildir has
  no CHILDINFO ("SPECIAL-USE") to give);
- "" is no special pattern (RFC 5258 §3); REMOTE selects nothing more (no remote mailboxes);
- one line per name however many patterns match it; INBOX first, then by name (Dovecot: directory
  order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mailhaven.imap import commands as C
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


class Matcher:
    """One LIST pattern (RFC 3501 §6.3.8: "*" matches anything, "%" anything but the hierarchy
    delimiter), matched in time linear in the name: the pattern's positions run as a set of states
    (bits of an int) over the name's characters, so a hostile pattern such as "*a*a*a*a*a*b" cannot
    make a backtracking search run for minutes on the event loop. Runs of wildcards are collapsed
    first ("%*" and "**" are "*", "%%" is "%"), so one step of closure follows each character."""

    __slots__ = ("_accept", "_chars", "_pct", "_star")

    def __init__(self, pattern: str) -> None:
        tokens: list[str] = []
        for ch in pattern:
            if ch in "*%" and tokens and tokens[-1] in "*%":
                if ch == "*":
                    tokens[-1] = "*"
                continue
            tokens.append(ch)
        self._chars: dict[str, int] = {}
        self._star = self._pct = 0
        for i, tok in enumerate(tokens):
            if tok == "*":
                self._star |= 1 << i
            elif tok == "%":
                self._pct |= 1 << i
            else:
                self._chars[tok] = self._chars.get(tok, 0) | 1 << i
        self._accept = 1 << len(tokens)

    def _closure(self, states: int) -> int:
        return states | (states & (self._star | self._pct)) << 1  # a wildcard may match nothing

    def fullmatch(self, name: str) -> bool:
        states = self._closure(1)
        star, pct, chars = self._star, self._pct, self._chars
        for ch in name:
            moved = (states & chars.get(ch, 0)) << 1 | states & star
            if ch != DELIMITER:
                moved |= states & pct
            states = self._closure(moved)
            if not states:
                return False
        return bool(states & self._accept)


def list_matcher(pattern: str) -> Matcher:
    """The matcher of one LIST/LSUB pattern (RFC 3501 §6.3.8)."""
    return Matcher(pattern)


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


def lsub_lines(subs: Sequence[str], reference: str, pattern: str,
               uses: Mapping[str, str | None] | None = None, utf8: bool = False) -> list[bytes]:
    """The `* LSUB` lines for LSUB reference pattern over the account's subscriptions; `uses`: the
    special use of each mailbox, shown on its LSUB line as Dovecot does (RFC 6154 §2 names only
    LIST; Dovecot sends them on LSUB too, for Outlook)."""
    if pattern == "":
        return [b'* LSUB (\\Noselect) "." ""\r\n']
    matcher = list_matcher(inbox_canonical(reference + pattern))
    subscribed = set(subs)
    shown: set[str] = set()
    out: list[bytes] = []
    for name in subs:
        if matcher.fullmatch(name) and name not in shown:
            shown.add(name)
            use = uses.get(name) if uses else None
            out.append(b"* LSUB (" + (use or "").encode("ascii") + b") \".\" " + wire_name(name, utf8) + b"\r\n")
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


@dataclass(frozen=True, slots=True)
class Row:
    """One `* LIST` line of an extended LIST; `status`: LIST-STATUS sends a STATUS after it
    (RFC 5819 §2: not for \\NonExistent or \\Noselect names, nor, when listing subscriptions, for a
    name listed only for its subscribed children)."""

    name: str
    attrs: tuple[str, ...]
    childinfo: tuple[str, ...] = ()
    status: bool = True

    def line(self, utf8: bool = False) -> bytes:
        out = b"* LIST (" + " ".join(self.attrs).encode("ascii") + b') "." ' + wire_name(self.name, utf8)
        if self.childinfo:  # RFC 5258 §6 mbox-list-extended
            out += b' (CHILDINFO (' + b" ".join(b'"' + c.encode("ascii") + b'"' for c in self.childinfo) + b"))"
        return out + b"\r\n"


def extended_rows(infos: Iterable[MailboxInfo], subs: Sequence[str], cmd: C.List) -> list[Row]:
    """The lines of an extended LIST (RFC 5258) over the account's mailboxes and subscriptions."""
    selection = cmd.selection or frozenset()
    returns = cmd.returns or frozenset()
    matchers = [list_matcher(inbox_canonical(cmd.reference + p)) for p in cmd.all_patterns]

    def matches(name: str) -> bool:
        return any(m.fullmatch(name) for m in matchers)

    infos = list(infos)
    uses = {i.name: i.special_use for i in infos}
    parents = {a for n in uses for a in ancestors(n)}
    subscribed = set(subs)
    by_subs = "SUBSCRIBED" in selection
    by_use = "SPECIAL-USE" in selection
    show_subscribed = by_subs or "SUBSCRIBED" in returns
    show_use = by_use or "SPECIAL-USE" in returns
    show_children = "CHILDREN" in returns

    special = {n for n, u in uses.items() if u is not None}
    if by_subs:
        universe = subscribed & special if by_use else set(subscribed)
    elif by_use:
        universe = special
    else:
        universe = set(uses) | parents
    names = {n for n in universe if matches(n)}
    childinfo: set[str] = set()
    if "RECURSIVEMATCH" in selection and by_subs:
        for n in universe - names:  # RFC 5258 §3.5: a selected descendant the patterns miss
            childinfo.update(a for a in ancestors(n) if matches(a))
    rows: list[Row] = []
    for name in sorted(names | childinfo, key=lambda n: (n != "INBOX", n)):
        exists = name in uses
        attrs: list[str] = []
        if show_subscribed and name in subscribed:
            attrs.append("\\Subscribed")
        if not exists:
            attrs.append("\\NonExistent")  # RFC 5258 §3.4 (implies \\Noselect)
        if show_children:
            attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        use = uses.get(name)
        if show_use and use:
            attrs.append(use)
        info = ("SUBSCRIBED",) if name in childinfo else ()
        rows.append(Row(name, tuple(attrs), info, exists and name in names))
    return rows


__all__ = ["DELIMITER", "Matcher", "Row", "ancestors", "extended_rows", "inbox_canonical", "list_lines", "list_matcher",
           "lsub_lines", "wire_name"]
