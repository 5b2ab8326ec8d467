"""Running a SEARCH for a session: feeding search.py the selected mailbox's messages.

Owns: choosing which messages need their bytes (cheap keys such as flags, sets, sizes and internal
dates are evaluated first, from the snapshot alone), loading header blocks (from the message
cache, msgcache.py, when it has them) or whole messages in batches, and evaluating the costly keys in a
worker thread so a large mailbox never stalls the event loop; narrowing BODY/TEXT searches with the
store's full-text index (store/fts.py) when it has one, every candidate still evaluated here.
Returns sequence numbers or UIDs.
Does not own: what each key means (search.py), parsing (parser.py), the `* SEARCH` response
(session.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailhaven.errors import StoreError
from mailhaven.imap import commands as C
from mailhaven.imap import search
from mailhaven.imap.fetchitems import header_end
from mailhaven.imap.msgcache import CACHE, Entry
from mailhaven.imap.selected import Selected, match_infos, read_many
from mailhaven.store import fts

BATCH = 500  # messages loaded and evaluated per worker-thread step
RECENT = "\\Recent"


def _split(criteria: C.SearchAnd) -> tuple[C.SearchAnd, C.SearchAnd]:
    """(keys answerable from the snapshot, keys that read the message), both conjunctions."""
    cheap = tuple(k for k in criteria.keys if not search.needs(k))
    costly = tuple(k for k in criteria.keys if search.needs(k))
    return C.SearchAnd(cheap), C.SearchAnd(costly)


_ADDRESS_FIELDS = frozenset({"from", "to", "cc", "bcc"})  # search.py rewrites these before matching
_RUN = re.compile(r"[A-Za-z0-9]+")


class HeaderPrefilter:
    """A cheap necessary condition for one HEADER/SUBJECT/... key over the raw header block.

    Sound because, for a header block that is pure ASCII without encoded-words ("=?") or
    backslashes, search.py matches the folded needle against the unfolded field value (only
    whitespace changes, letters are upper-cased): every ASCII letter/digit run of the folded needle
    must then appear, case-insensitively, in that field's raw lines. Blocks that are not that simple
    always go to the full evaluation.

    The field's lines (after the colon, every occurrence, lower-cased; None for a block that is not
    simple) depend only on the header and the field name, so they are kept in a per-message memo
    (the session's message cache) and later searches on the same field are substring tests.
    """

    __slots__ = ("name", "runs", "_region")

    def __init__(self, field: str, runs: list[bytes]) -> None:
        self.name = field.encode("utf-8").lower()  # the memo key (matching is ASCII case-insensitive)
        self.runs = runs
        # A field's lines: the first (from a line start, "name", optional blanks, ":") and its
        # continuations (lines starting with a blank), RFC 5322 §2.2.3.
        self._region = re.compile(rb"^" + re.escape(field.encode("utf-8")) + rb"[ \t]*:((?:[^\n]|\n[ \t])*)",
                                  re.I | re.M)

    def regions(self, header: bytes) -> bytes | None:
        """The field's lines after the colon, lower-cased, occurrences joined by LF; None when the
        block is not simple (the check must then let it through)."""
        if not header.isascii() or b"=?" in header or b"\\" in header:
            return None
        return b"\n".join(m.group(1) for m in self._region.finditer(header)).lower()

    def __call__(self, header: bytes, memo: dict[bytes, bytes | None] | None = None) -> bool:
        if memo is None:
            text = self.regions(header)
        else:
            try:
                text = memo[self.name]
            except KeyError:
                text = memo[self.name] = self.regions(header)
        if text is None:
            return True
        for r in self.runs:  # runs have no LF, so none spans two occurrences
            if r not in text:
                return False
        return True


def header_prefilter(key: C.SearchKey) -> HeaderPrefilter | None:
    """The HeaderPrefilter of a HEADER/SUBJECT/... key, or None when there is no cheap condition
    (address fields are rewritten by search.py; an empty value matches any message with the field)."""
    if not isinstance(key, C.SearchHeader) or key.field.lower() in _ADDRESS_FIELDS or not key.value:
        return None
    needle = search.fold(key.value)
    runs = [r.lower().encode("ascii") for r in _RUN.findall(needle)] if needle.isascii() else []
    if not runs:
        return None
    return HeaderPrefilter(key.field, runs)


@dataclass
class _Msg(search.Message):
    """search.Message; its `key` also keys the session's header cache."""


def text_terms(costly: C.SearchAnd) -> list[tuple[str, bool]]:
    """The BODY/TEXT strings every match must hold (keys of the conjunction, not under OR/NOT),
    folded, that the full-text index can look up: (string, TEXT rather than BODY)."""
    out: list[tuple[str, bool]] = []
    stack: list[C.SearchKey] = list(costly.keys)
    while stack:
        k = stack.pop()
        if isinstance(k, C.SearchAnd):
            stack.extend(k.keys)
        elif isinstance(k, C.SearchText):
            needle = search.fold(k.value)
            if fts.usable(needle):
                out.append((needle, k.headers))
    return out


async def _narrow(mailbox: Any, cands: list[tuple[int, Any]], terms: list[tuple[str, bool]]
                  ) -> list[tuple[int, Any]]:
    """The candidates the full-text index cannot rule out (all of them when it cannot answer)."""
    lookup = getattr(mailbox, "text_candidates", None)
    if lookup is None or not terms:
        return cands
    try:
        keys = await lookup([info for _, info in cands], terms)
    except StoreError:
        return cands
    return [(seq, info) for seq, info in cands if info.key in keys]


def _filter(key: C.SearchKey, msgs: list[_Msg], ctx: search.SearchContext) -> list[_Msg]:
    return [m for m in msgs if search.evaluate(key, m, ctx)]


async def run(user: str, sel: Selected, cmd: C.Search, only: Sequence[int] | None = None) -> list[int]:
    """Matching sequence numbers (or UIDs for UID SEARCH), ascending (RFC 3501 §6.4.4, §7.2.5).
    `user` keys the message cache; `only` (ascending UIDs) limits the search to those messages (an
    updating search looking at what changed, context.py)."""
    view = sel.view
    numbered = list(view.uids)
    ctx = search.SearchContext(max_seq=view.exists, max_uid=numbered[-1] if numbered else 0)
    cheap, costly = _split(cmd.criteria)
    recent = view.recent
    infos: list[Any] = []
    if only is None:
        infos = match_infos(numbered, sel.current.messages)  # infos[seq - 1]
        # expunged by someone else (EXPUNGE not sent yet): matches nothing
        cands: list[tuple[int, Any]] = [(seq, info) for seq, info in enumerate(infos, 1) if info is not None]
    else:
        pairs = [(s, u) for u in only if (s := view.seq(u)) is not None]
        found = match_infos([u for _, u in pairs], sel.current.messages)
        cands = [(s, info) for (s, _), info in zip(pairs, found, strict=True) if info is not None]

    def message(seq: int, info: Any, header: bytes | None = None) -> _Msg:
        flags = info.flags | {RECENT} if info.uid in recent else info.flags
        return _Msg(seq, info.uid, flags, info.internaldate, info.size, header_bytes=header, modseq=info.modseq,
                    key=info.key)

    if cheap.keys:
        msgs = [message(seq, info) for seq, info in cands]
        if len(msgs) > 2000:
            msgs = await asyncio.to_thread(_filter, cheap, msgs, ctx)
        else:
            msgs = _filter(cheap, msgs, ctx)
        if not costly.keys:
            return [m.uid if cmd.uid else m.seq for m in msgs]
        if only is None:
            cands = [(m.seq, infos[m.seq - 1]) for m in msgs]
        else:
            by_seq = dict(cands)
            cands = [(m.seq, by_seq[m.seq]) for m in msgs]
    matched: list[_Msg] = []
    if costly.keys and cands:
        # BODY/TEXT: the full-text index narrows the candidates; each is still checked below
        cands = await _narrow(sel.mailbox, cands, text_terms(costly))
        header_only = search.needs(costly) == frozenset({"header"})
        checks = [f for f in map(header_prefilter, costly.keys) if f is not None] if header_only else []
        peek = CACHE.peek
        for start in range(0, len(cands), BATCH):
            ready: list[_Msg] = []
            to_read: list[tuple[int, Any]] = []
            for seq, info in cands[start:start + BATCH]:
                entry = peek((user, info.key)) if header_only else None
                hdr = entry.header if entry is not None else None
                if entry is None or hdr is None:
                    to_read.append((seq, info))
                    continue
                if checks:
                    memo = entry.search
                    if memo is None:
                        memo = entry.search = {}
                    known = len(memo)
                    ok = True
                    for check in checks:
                        if not check(hdr, memo):
                            ok = False
                            break
                    if len(memo) != known:
                        CACHE.remeasure((user, info.key), entry)
                    if not ok:
                        continue
                ready.append(message(seq, info, hdr))
            datas = await read_many(sel.mailbox, [info.uid for _, info in to_read])
            for seq, info in to_read:
                data = datas.get(info.uid)
                if data is None:
                    continue  # expunged meanwhile
                if header_only:
                    hdr = data[:header_end(data)]
                    ck = (user, info.key)
                    entry = CACHE.get(ck)
                    fresh = entry is None
                    if entry is None:
                        entry = Entry()
                    if entry.header is None:
                        entry.header = hdr
                    if entry.search is None:
                        entry.search = {}
                    ok = all(check(hdr, entry.search) for check in checks)
                    if fresh:
                        CACHE.put(ck, entry)  # measured with its memo
                    else:
                        CACHE.remeasure(ck, entry)
                    if ok:
                        ready.append(message(seq, info, hdr))
                else:
                    m = message(seq, info)
                    m.load = (lambda d=data: d)
                    ready.append(m)
            ready.sort(key=_seq_of)
            if len(ready) > 50:
                matched += await asyncio.to_thread(_filter, costly, ready, ctx)
            else:
                matched += _filter(costly, ready, ctx)
    elif not costly.keys:  # no keys at all cannot happen (the parser needs one); answer ALL
        matched = [message(seq, info) for seq, info in cands]
    return [m.uid if cmd.uid else m.seq for m in matched]


def _seq_of(m: _Msg) -> int:
    return m.seq


__all__ = ["run"]
