"""Running a SEARCH for a session: feeding search.py the selected mailbox's messages.

Owns: choosing which messages need their bytes (cheap keys such as flags, sets, sizes and internal
dates are evaluated first, from the snapshot alone), loading header blocks (from the session's
message cache when it has them) or whole messages in batches, and evaluating the costly keys in a
worker thread so a large mailbox never stalls the event loop. Returns sequence numbers or UIDs.
Does not own: what each key means (search.py), parsing (parser.py), the `* SEARCH` response
(session.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from mailhaven.imap import commands as C
from mailhaven.imap import search
from mailhaven.imap.fetchitems import header_end

BATCH = 500  # messages loaded and evaluated per worker-thread step
RECENT = "\\Recent"


def _split(criteria: C.SearchAnd) -> tuple[C.SearchAnd, C.SearchAnd]:
    """(keys answerable from the snapshot, keys that read the message), both conjunctions."""
    cheap = tuple(k for k in criteria.keys if not search.needs(k))
    costly = tuple(k for k in criteria.keys if search.needs(k))
    return C.SearchAnd(cheap), C.SearchAnd(costly)


_ADDRESS_FIELDS = frozenset({"from", "to", "cc", "bcc"})  # search.py rewrites these before matching
_RUN = re.compile(r"[A-Za-z0-9]+")


def header_prefilter(key: C.SearchKey) -> Callable[[bytes], bool] | None:
    """A cheap necessary condition for HEADER/SUBJECT/... keys over the raw header block, or None.

    Sound because, for a header block that is pure ASCII without encoded-words ("=?") or
    backslashes, search.py matches the folded needle against the unfolded field value (only
    whitespace changes, letters are upper-cased): every ASCII letter/digit run of the folded needle
    must then appear, case-insensitively, in that field's raw lines. Blocks that are not that simple
    always go to the full evaluation. Address fields are rewritten by search.py, so they are left out.
    """
    if not isinstance(key, C.SearchHeader) or key.field.lower() in _ADDRESS_FIELDS or not key.value:
        return None
    needle = search.fold(key.value)
    runs = [r.lower().encode("ascii") for r in _RUN.findall(needle)] if needle.isascii() else []
    if not runs:
        return None
    field = re.compile(rb"^" + re.escape(key.field.encode("utf-8")) + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)",
                       re.IGNORECASE | re.MULTILINE)

    def may_match(header: bytes) -> bool:
        if not header.isascii() or b"=?" in header or b"\\" in header:
            return True
        values = b"\n".join(field.findall(header)).lower()
        return bool(values) and all(r in values for r in runs)

    return may_match


def _filter(key: C.SearchKey, msgs: list[search.Message], ctx: search.SearchContext) -> list[search.Message]:
    return [m for m in msgs if search.evaluate(key, m, ctx)]


async def run(session: Any, sel: Any, cmd: C.Search) -> list[int]:
    """Matching sequence numbers (or UIDs for UID SEARCH), ascending (RFC 3501 §6.4.4, §7.2.5)."""
    from mailhaven.imap.session import CACHE, _Entry, _match_infos, _read_many

    view = sel.view
    numbered = list(view.uids)
    infos = _match_infos(numbered, sel.current.messages)
    ctx = search.SearchContext(max_seq=view.exists, max_uid=numbered[-1] if numbered else 0)
    cheap, costly = _split(cmd.criteria)
    msgs: list[search.Message] = []
    for seq, info in enumerate(infos, 1):
        if info is None:  # expunged by someone else, EXPUNGE not sent yet: matches nothing
            continue
        flags = info.flags | {RECENT} if view.is_recent(info.uid) else info.flags
        msgs.append(search.Message(seq, info.uid, flags, info.internaldate, info.size))
    if cheap.keys:
        if len(msgs) > 2000:
            msgs = await asyncio.to_thread(_filter, cheap, msgs, ctx)
        else:
            msgs = _filter(cheap, msgs, ctx)
    if costly.keys and msgs:
        header_only = search.needs(costly) == frozenset({"header"})
        checks = [f for f in map(header_prefilter, costly.keys) if f is not None] if header_only else []
        user = session.user or ""
        keys = {info.uid: info.key for info in infos if info is not None}
        matched: list[search.Message] = []
        for start in range(0, len(msgs), BATCH):
            batch = msgs[start:start + BATCH]
            to_read: list[int] = []
            for m in batch:
                entry = CACHE.get((user, keys[m.uid])) if header_only else None
                if entry is not None and entry.header is not None:
                    m.header_bytes = entry.header
                else:
                    to_read.append(m.uid)
            datas = await _read_many(sel.mailbox, to_read)
            ready: list[search.Message] = []
            for m in batch:
                if m.header_bytes is not None:
                    if all(check(m.header_bytes) for check in checks):
                        ready.append(m)
                    continue
                data = datas.get(m.uid)
                if data is None:
                    continue  # expunged meanwhile
                if header_only:
                    m.header_bytes = data[:header_end(data)]
                    entry = CACHE.get((user, keys[m.uid]))
                    if entry is None:
                        entry = _Entry()
                        entry.header = m.header_bytes
                        CACHE.put((user, keys[m.uid]), entry)
                    if not all(check(m.header_bytes) for check in checks):
                        continue
                else:
                    m.load = (lambda d=data: d)
                ready.append(m)
            if len(ready) > 50:
                matched += await asyncio.to_thread(_filter, costly, ready, ctx)
            else:
                matched += _filter(costly, ready, ctx)
        msgs = matched
    if cmd.uid:
        return [m.uid for m in msgs]
    return [m.seq for m in msgs]


__all__ = ["run"]
