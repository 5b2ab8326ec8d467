"""THREAD (RFC 5256 §3): the ORDEREDSUBJECT and REFERENCES algorithms and the thread-list response.

Owns: Message-ID extraction from Message-ID, References and In-Reply-To values, the two threading
algorithms (RFC 5256 §2.2: REFERENCES steps 1-7 with duplicate Message-IDs, reference loops,
dummy containers for missing parents, subject merging of roots, siblings by sent date, ties by
number) as pure functions over `Msg` records, and writing the thread list (RFC 5256 §4/§5).
Does not own: parsing THREAD (parser.py), running the search and reading the headers (session.py),
base subjects and sent dates (sort.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mailhaven.imap import sort as sortmod
from mailhaven.imap.search import fold
from mailhaven.message import mime

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
HEADER_FIELDS = ("subject", "date", "message-id", "references", "in-reply-to")



@dataclass(frozen=True)
class Msg:
    """One message to thread: its number (sequence number or UID), folded base subject, whether
    the subject marks a reply/forward, sent date, own Message-ID and its references (oldest first)."""

    number: int
    subject: str
    reply: bool
    date: float
    message_id: str | None
    references: tuple[str, ...]


@dataclass(eq=False)
class Node:
    """A thread node: a message's number, or None for a dummy (RFC 5256's missing parent)."""

    number: int | None
    children: list[Node] = field(default_factory=list)


_ATEXT = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~") | frozenset(
    range(128, 256))
_LWSP = b" \t\r\n"


def _skip_cfws(raw: bytes, i: int) -> int:
    """Past white space and (nested, quoted-pair aware) comments from `i`."""
    while i < len(raw):
        if raw[i] in _LWSP:
            i += 1
        elif raw[i] == 0x28:  # "("
            depth = 0
            while i < len(raw):
                ch = raw[i]
                if ch == 0x5C:  # quoted-pair
                    i += 2
                    continue
                depth += ch == 0x28
                depth -= ch == 0x29
                i += 1
                if depth == 0:
                    break
        else:
            break
    return i


def _dot_atom(raw: bytes, i: int) -> tuple[bytes, int] | None:
    """A dot-atom (CFWS around the dots and after it skipped) from `i`, or None."""
    parts: list[bytes] = []
    while True:
        j = i
        while j < len(raw) and raw[j] in _ATEXT:
            j += 1
        if j == i:
            return None
        parts.append(raw[i:j])
        i = _skip_cfws(raw, j)
        if i >= len(raw) or raw[i] != 0x2E:  # "."
            return b".".join(parts), i
        i = _skip_cfws(raw, i + 1)


def _quoted(raw: bytes, i: int) -> tuple[bytes, int] | None:
    """A quoted string at `i` (its content, quoted-pairs resolved; CFWS after it skipped), or None."""
    out = bytearray()
    i += 1
    while i < len(raw):
        ch = raw[i]
        if ch == 0x22:  # the closing quote
            return bytes(out), _skip_cfws(raw, i + 1)
        if ch == 0x5C and i + 1 < len(raw):
            i += 1
            ch = raw[i]
        out.append(ch)
        i += 1
    return None


def _strict_msgid(raw: bytes, i: int) -> tuple[bytes | None, int]:
    """RFC 5322 id-left "@" id-right ">" from just after "<" (a dot-atom or quoted
    string, then a dot-atom): (id, where it ended),
    or (None, `i`) when it is not one."""
    i = _skip_cfws(raw, i)
    left = _quoted(raw, i) if raw[i:i + 1] == b'"' else _dot_atom(raw, i)
    if left is None or left[1] >= len(raw) or raw[left[1]] != 0x40:  # "@"
        return None, i
    right = _dot_atom(raw, _skip_cfws(raw, left[1] + 1))
    if right is None or right[1] >= len(raw) or raw[right[1]] != 0x3E:  # ">"
        return None, i
    return left[0] + b"@" + right[0], right[1] + 1


def message_ids(raw: bytes | None) -> list[str]:
    """The msg-ids of a header value, in order, without the brackets, read as Dovecot 2.3 reads
    them: after each "<", up to ">" when an "@" came first and no quote or "(" did (white
    space dropped); otherwise a strict dot-atom@dot-atom> (comments allowed); else skipped."""
    if not raw:
        return []
    raw = raw.split(b"\0", 1)[0]
    out: list[str] = []
    i = 0
    while (start := raw.find(b"<", i)) >= 0:
        i = start + 1
        p, found_at = i, False
        while p < len(raw) and raw[p] not in b'>"(':  # ("[" does not stop it)
            found_at = found_at or raw[p] == 0x40
            p += 1
        if p >= len(raw):
            break
        if raw[p] == 0x3E:  # ">"
            if found_at:
                out.append(bytes(b for b in raw[i:p] if b not in _LWSP).decode("utf-8", "replace"))
            i = p + 1
            continue
        found, end = _strict_msgid(raw, i)
        if found is not None:
            out.append(found.decode("utf-8", "replace"))
            i = end
    return out


def msg_of(number: int, header: bytes | None, internaldate: float) -> Msg:
    """A `Msg` from a message's header block (never raises)."""
    found: dict[str, bytes] = {}
    header = header or b""
    for f in mime.iter_fields(header, 0, len(header)):
        name = f.name.lower().decode("ascii", "replace")
        if name in HEADER_FIELDS and name not in found:
            found[name] = f.value
    subject, reply = sortmod.subject_and_reply(found.get("subject"))
    own = message_ids(found.get("message-id"))
    refs = message_ids(found.get("references"))
    if not refs:  # RFC 5256 §2.2 step 1B: else the first msg-id of In-Reply-To
        refs = message_ids(found.get("in-reply-to"))[:1]
    return Msg(number, fold(subject), reply, sortmod.sent_date(found.get("date"), internaldate),
               own[0] if own else None, tuple(refs))


def ordered_subject(msgs: Sequence[Msg]) -> list[Node]:
    """RFC 5256 §3 ORDEREDSUBJECT: by base subject then sent date; each run of one subject is a
    thread whose first message is the parent of the others; threads by their first one's date."""
    ordered = sorted(msgs, key=lambda m: (m.subject, m.date, m.number))
    threads: list[tuple[Msg, Node]] = []
    for m in ordered:
        if threads and threads[-1][0].subject == m.subject:
            threads[-1][1].children.append(Node(m.number))
        else:
            threads.append((m, Node(m.number)))
    threads.sort(key=lambda t: (t[0].date, t[0].number))
    return [n for _, n in threads]


@dataclass(eq=False)
class _Container:
    msg: Msg | None = None
    parent: _Container | None = None
    children: list[_Container] = field(default_factory=list)

    def reaches(self, other: _Container) -> bool:
        """Whether `other` is self or one of its ancestors."""
        c: _Container | None = self
        while c is not None:
            if c is other:
                return True
            c = c.parent
        return False


def _link(parent: _Container, child: _Container) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def _unlink(child: _Container) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def references(msgs: Sequence[Msg]) -> list[Node]:
    """RFC 5256 §2.2 THREAD=REFERENCES, messages taken in the given (ascending number) order."""
    table: dict[str, _Container] = {}
    everything: list[_Container] = []

    def get(msgid: str) -> _Container:
        c = table.get(msgid)
        if c is None:
            c = table[msgid] = _Container()
            everything.append(c)
        return c

    for m in sorted(msgs, key=lambda m: m.number):  # step 1
        own = table.get(m.message_id) if m.message_id is not None else None
        if m.message_id is not None and (own is None or own.msg is None):
            own = get(m.message_id)
            own.msg = m
        else:  # step 1A: no Message-ID, or a duplicate one: a unique one of its own
            own = _Container(m)
            everything.append(own)
        prev: _Container | None = None
        # step 1B: link the references parent to child, keeping existing links; the message's own
        # Message-ID among them stays (as Dovecot 2.3: it links, and may then make step 1C a loop)
        for ref in m.references:
            c = get(ref)
            if prev is not None and c.parent is None and not prev.reaches(c):
                _link(prev, c)
            prev = c
        # step 1C: the last reference is the message's parent, unless that would make a loop; a
        # parent presumed from other messages' References goes first either way (as Dovecot)
        _unlink(own)
        if prev is not None and not prev.reaches(own):
            _link(prev, own)
    roots = [c for c in everything if c.parent is None]  # step 2; step 3: the table goes
    roots = _prune(roots, top=True)  # step 4

    def date(c: _Container) -> tuple[float, int]:
        if c.msg is not None:
            return c.msg.date, c.msg.number
        return date(c.children[0]) if c.children else (0.0, 0)

    def sort_tree(cs: list[_Container]) -> None:
        for c in cs:
            sort_tree(c.children)
        cs.sort(key=date)

    sort_tree(roots)  # step 5
    roots = _merge_subjects(roots)  # step 6
    sort_tree(roots)  # step 7 (dummies take their first child's date)
    return [_node(c) for c in roots]


def _prune(cs: list[_Container], top: bool) -> list[_Container]:
    out: list[_Container] = []
    for c in cs:
        c.children = _prune(c.children, top=False)
        for k in c.children:
            k.parent = c
        if c.msg is None and not c.children:  # 4A: a dummy with no children goes
            continue
        if c.msg is None and (not top or len(c.children) == 1):  # 4B: promote its children
            for k in c.children:
                k.parent = c.parent
            out.extend(c.children)
            continue
        out.append(c)
    return out


def _subject(c: _Container) -> tuple[str, bool]:
    m = c.msg if c.msg is not None else (c.children[0].msg if c.children else None)
    return (m.subject, m.reply) if m is not None else ("", False)


def _merge_subjects(roots: list[_Container]) -> list[_Container]:
    """Step 6: roots of one base subject under one thread."""
    table: dict[str, _Container] = {}
    for c in roots:  # 6A-C
        subject, reply = _subject(c)
        if not subject:
            continue
        old = table.get(subject)
        if old is None or (c.msg is None and old.msg is not None) or (
                old.msg is not None and _subject(old)[1] and c.msg is not None and not reply):
            table[subject] = c
    for c in roots:  # 6D-E
        if c.parent is not None:  # already under another root
            continue
        subject, reply = _subject(c)
        old = table.get(subject) if subject else None
        if old is None or old is c:
            continue
        if old.msg is None and c.msg is None:  # both dummies: its children join the table's
            for k in list(c.children):
                _link(old, k)
        elif old.msg is None:  # the table's is a dummy: this one becomes its child
            _link(old, c)
        elif c.msg is not None and reply and not _subject(old)[1]:  # a reply under the original
            _link(old, c)
        else:  # a new dummy over both, in the table's place
            dummy = _Container()
            _link(dummy, old)
            _link(dummy, c)
            table[subject] = dummy
    out: list[_Container] = []
    seen: set[int] = set()
    for c in roots:
        while c.parent is not None:
            c = c.parent
        if (c.msg is not None or c.children) and id(c) not in seen:
            seen.add(id(c))
            out.append(c)
    return out


def _node(c: _Container) -> Node:
    return Node(c.msg.number if c.msg is not None else None, [_node(k) for k in c.children])


def thread(algorithm: str, msgs: Sequence[Msg]) -> list[Node]:
    return ordered_subject(msgs) if algorithm == "ORDEREDSUBJECT" else references(msgs)


def render(roots: Sequence[Node]) -> bytes:
    """The thread-list of RFC 5256 §5, e.g. (2)(3 6 (4 23)(44 7 96)); dummies write no number."""
    return b"".join(b"(" + _members(n) + b")" for n in roots)


def _members(n: Node) -> bytes:
    parts: list[bytes] = []
    while True:
        if n.number is not None:
            parts.append(b"%d" % n.number)
        if len(n.children) == 1 and n.number is not None:
            n = n.children[0]
            continue
        if n.children:
            nested = b"".join(b"(" + _members(k) + b")" for k in n.children)
            parts.append(nested)
        return b" ".join(parts)


__all__ = ["ALGORITHMS", "Msg", "Node", "message_ids", "msg_of", "ordered_subject", "references", "render",
           "thread"]
