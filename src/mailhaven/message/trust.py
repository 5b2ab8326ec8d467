"""The header fields a reader trusts because this server wrote them (pure; mypy --strict).

Owns: which fields of a message are removed before it goes into a mailbox, because a mail client,
a Sieve script or the user would take them for our word, and the Return-Path on top:
- Authentication-Results whose authserv-id is ours (RFC 8601 §5). Those of other authserv-ids are
  kept: §5 allows removing them too, but OpenDKIM and OpenDMARC (RemoveARAll off) and Dovecot keep
  them, and no reader trusts an id it was not configured to trust.
- Received-SPF naming us as its receiver (RFC 7208 §9.1 `receiver=`: the verdict field we add).
- Every X-Spam-* field (X-Spam-Status, -Flag, -Score, -Level, ...): the names SpamAssassin and
  rspamd write and clients and Sieve scripts filter on; nobody outside decides that for our users.
- Every Return-Path (RFC 5321 §4.4: the delivering server adds the one field; Postfix drops
  incoming ones, message_drop_headers, and so does Dovecot's LDA).
Then `Return-Path: <sender>` (`<>` for bounces) goes first, then the trace fields this hop adds.
Lines starting with white space before the first field are removed too: they are no field (RFC 5322
§2.2), and on top of the message they would continue the Return-Path we put there.
Does not own: rendering Authentication-Results (policy/authresults.py), the trace fields
(message/headers.py), storing (delivery/local.py runs this on every way into a mailbox).

Only the header section is rewritten: every kept field keeps its bytes and place, the body stays
byte-identical (DKIM signatures of the rest still verify). Names are matched case-insensitively,
folded fields are removed whole (RFC 5322 §2.2.3), a line ends at LF (CRLF or bare LF).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mailhaven.message.headers import return_path
from mailhaven.policy.authresults import authserv_id_of, header_end

# Any name this module may remove; a header section without one of them is returned as it is.
_CANDIDATE = re.compile(rb"authentication-results|received-spf|x-spam-|return-path", re.IGNORECASE)
_LINE = re.compile(rb"[^\n]*\n|[^\n]+")
_COMMENT_OR_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"?|\(')
# RFC 7208 §9.1: key-value-pair = key [CFWS] "=" ( dot-atom / quoted-string )
_RECEIVER = re.compile(r'(?:^|[\s;])receiver[ \t\r\n]*=[ \t\r\n]*("(?:[^"\\]|\\.)*"|[^\s;]+)', re.IGNORECASE)


def _without_comments(text: str) -> str:
    """`text` with its (nested) RFC 5322 comments replaced by a space; quoted strings kept."""
    out: list[str] = []
    i = 0
    while i < len(text):
        m = _COMMENT_OR_QUOTED.search(text, i)
        if m is None:
            out.append(text[i:])
            break
        out.append(text[i:m.start()])
        if m.group(0) != "(":
            out.append(m.group(0))
            i = m.end()
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            c = text[j]
            if c == "\\":
                j += 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            j += 1
        out.append(" ")
        i = j
    return "".join(out)


def spf_receiver(value: bytes) -> str:
    """The `receiver=` of a Received-SPF field value (lower-case, unquoted), or ""."""
    m = _RECEIVER.search(_without_comments(value.decode("utf-8", "replace")))
    if m is None:
        return ""
    found = m.group(1)
    if found.startswith('"'):
        found = re.sub(r"\\(.)", r"\1", found[1:-1])
    return found.lower()


def is_ours(name: bytes, value: bytes, authserv_id: str) -> bool:
    """Whether a field (its name, and its value with any folding) is one only we may write."""
    n = name.strip(b" \t").lower()
    if n == b"return-path" or n.startswith(b"x-spam-"):
        return True
    ours = authserv_id.lower()
    if n == b"authentication-results":
        return authserv_id_of(value) == ours  # RFC 8601 §5
    if n == b"received-spf":
        return spf_receiver(value) == ours
    return False


def remove_forged(message: bytes, authserv_id: str) -> bytes:
    """The message without the fields `is_ours` names (see the module docstring); the same object
    when there is none (most mail: no copy, no line split)."""
    end = header_end(message)
    if _CANDIDATE.search(message, 0, end) is None and message[:1] not in (b" ", b"\t"):
        return message
    fields: list[list[bytes]] = []
    pos = 0
    for m in _LINE.finditer(message, 0, end):
        line = m.group(0)
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)  # RFC 5322 §2.2.3: continuation of a folded field
        else:
            fields.append([line])
        pos = m.end()
    kept: list[bytes] = []
    removed = False
    for f in fields:
        name, sep, value = b"".join(f).partition(b":")
        if f[0][:1] in (b" ", b"\t"):
            removed = True  # white space before any field: it would continue the field put on top
            continue
        if sep and is_ours(name, value, authserv_id):
            removed = True
            continue
        kept.extend(f)
    return b"".join(kept) + message[pos:] if removed else message


def for_mailbox(message: bytes, *, sender: str, authserv_id: str, trace: Sequence[bytes] = ()) -> bytes:
    """What goes into a mailbox: `Return-Path: <sender>` (RFC 5321 §4.4: exactly one, on top; ""
    is the null reverse-path of a bounce), the trace fields this hop adds (each CRLF-terminated:
    Received, our Authentication-Results, ...), then the message without forged fields."""
    for f in trace:
        if not f.endswith(b"\r\n"):
            raise ValueError("header field must end with CRLF")
    return b"".join([return_path(sender), *trace, remove_forged(message, authserv_id)])


__all__ = ["remove_forged", "for_mailbox", "is_ours", "spf_receiver"]
