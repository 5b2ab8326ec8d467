"""The embedded content check, used when no rspamd is configured (config spam.rspamd_url = ""): GTUBE.

Owns: finding the GTUBE test string (SpamAssassin's "Generic Test for Unsolicited Bulk Email", which
rspamd knows too) in a message body, raw or in a base64 / quoted-printable text part
(`find_gtube`, pure), and the `SpamVerdict` the check gives (`scan`): "reject" with symbol GTUBE
(550 5.7.1 through spam.error_for, as rspamd answers GTUBE), else "no action" with score 0, so the
MX logs, counts and labels (X-Spam-Status) every message in one format whichever engine ran.
Does not own: the per-user sender lists (policy/senderlists.py), the MX (smtp/inbound.py), rspamd.

Scores are SpamAssassin's: GTUBE 1000, required 5 (its default required_score).
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator

from mailhaven.message import mime
from mailhaven.policy import spam

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_SYMBOL = "GTUBE"
GTUBE_SCORE = 1000.0
REQUIRED = 5.0
GTUBE_MESSAGE = "Message refused: it contains the GTUBE spam test pattern"
SCANNER = "embedded"


def _leaves(part: mime.Part) -> Iterator[mime.Part]:
    stack = [part]
    while stack:
        p = stack.pop()
        if p.children:
            stack.extend(reversed(p.children))
        else:
            yield p


def _decoded(msg: bytes, part: mime.Part) -> bytes | None:
    """The body of a base64 or quoted-printable text part, decoded (None for other parts)."""
    if not part.is_text or part.encoding is None:
        return None
    encoding = part.encoding.strip().lower()
    body = msg[part.body_start:part.body_end]
    try:
        if encoding == b"base64":
            # RFC 2045 §6.8: characters outside the alphabet are ignored (non-strict mode)
            return binascii.a2b_base64(b"".join(body.split()))
        if encoding == b"quoted-printable":
            return binascii.a2b_qp(body)  # RFC 2045 §6.7, soft line breaks removed
    except (binascii.Error, ValueError):
        return None
    return None


def find_gtube(message: bytes) -> bool:
    """Whether the body holds GTUBE: as written (any part, any encoding that leaves it readable), or
    in a base64 / quoted-printable text part once decoded (parts of attached messages included).
    The header is not searched (a Subject naming GTUBE is no test message). Never raises; the work
    is bounded by the message size (mime.parse limits the parts)."""
    msg = mime.to_crlf(message)
    root = mime.parse(msg)
    if GTUBE in msg[root.header_end:]:
        return True
    for leaf in _leaves(root):
        decoded = _decoded(msg, leaf)
        if decoded is not None and GTUBE in decoded:
            return True
    return False


def verdict(found_gtube: bool) -> spam.SpamVerdict:
    if found_gtube:
        return spam.SpamVerdict("reject", GTUBE_SCORE, REQUIRED, (GTUBE_SYMBOL,), GTUBE_MESSAGE)
    return spam.SpamVerdict("no action", 0.0, REQUIRED)


def scan(message: bytes) -> spam.SpamVerdict:
    """The embedded verdict of one message (call off the event loop for a large one)."""
    return verdict(find_gtube(message))


__all__ = ["GTUBE", "GTUBE_SYMBOL", "REQUIRED", "SCANNER", "find_gtube", "verdict", "scan"]
