"""FETCH rendering (RFC 3501 §6.4.5, §7.4.2): `* n FETCH (...)` lines from snapshot entries, message
bytes and cached structure items.

Owns: which items need the message bytes or a parse, deriving ENVELOPE/BODYSTRUCTURE/BODY into a
cache entry (msgcache.py), rendering one message's items (`render_items`), many at once
(`render_batch`, CPU work a caller may run in a worker thread), metadata-only items for many
messages column by column (`render_meta`), INTERNALDATE, EMAILID/THREADID (RFC 8474) and SAVEDATE
(RFC 8514) from derived.py, and a batch of messages from the store
(`render_stored`: structure items from the message cache, msgcache.py, else parsed and cached;
message bytes read in one batch; heavy batches rendered in a worker thread).
BINARY items (RFC 3516) are rendered here from binary.py's decoding.
Does not own: the encoding of ENVELOPE, BODYSTRUCTURE and BODY[section] (fetchitems.py), which
messages a FETCH names, setting \\Seen or what the client was told (session.py, view.py), flags
rendering (view.render_flags).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mailhaven.imap import binary, derived, fetchitems
from mailhaven.imap import commands as C
from mailhaven.imap.msgcache import CACHE, Entry
from mailhaven.imap.selected import read_many
from mailhaven.imap.view import render_flags
from mailhaven.message import mime
from mailhaven.store import MessageInfo

OFFLOAD_MIN = 16  # render batches with at least this many parses in a worker thread
OFFLOAD_OCTETS = 1 << 20  # ... or with this much message data

STRUCT = frozenset({"ENVELOPE", "BODYSTRUCTURE", "BODY"})
DATA_ATTRS = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT"})


def _fi_section(sec: C.Section) -> fetchitems.Section:
    return fetchitems.Section(sec.part, sec.text or "", tuple(f.encode("ascii") for f in sec.fields))


def sets_seen(item: C.FetchItem) -> bool:
    """RFC 3501 §6.4.5: BODY[...] (not PEEK), RFC822 and RFC822.TEXT set \\Seen; RFC 3516 §4.2:
    BINARY[...] too (not BINARY.PEEK nor BINARY.SIZE)."""
    if isinstance(item, C.FetchBody):
        return not item.peek
    if isinstance(item, C.FetchBinary):
        return not (item.peek or item.size)
    return item.name in ("RFC822", "RFC822.TEXT")


def needs_data(item: C.FetchItem) -> bool:
    return isinstance(item, (C.FetchBody, C.FetchBinary)) or item.name in DATA_ATTRS


def derive(data: bytes, want: Iterable[str], entry: Entry) -> None:
    """Fill `entry` with the structure items in `want` computed from the message bytes (CPU work)."""
    want = set(want)
    tree = None
    if entry.header is None:
        entry.header = data[:fetchitems.header_end(data)]
    if "ENVELOPE" in want and entry.envelope is None:
        entry.envelope = fetchitems.envelope(entry.header)
    if ("BODYSTRUCTURE" in want and entry.bodystructure is None) or ("BODY" in want and entry.body is None):
        from mailhaven.message import mime

        tree = mime.parse(data)
        if entry.bodystructure is None:
            entry.bodystructure = fetchitems.bodystructure(data, True, tree)
        if entry.body is None:
            entry.body = fetchitems.body(data, tree)


def render_items(seq: int, info: MessageInfo, items: Sequence[C.FetchItem], data: bytes | None,
                 entry: Entry | None, recent: bool) -> bytes:
    """`* seq FETCH (...)` for one message. `data` is the message (CRLF line endings, as the store
    returns it) when an item needs it; `entry` holds the derived structure items.
    Built as one list of pieces joined once, so a message body is copied once."""
    out: list[bytes] = [b"* %d FETCH (" % seq]
    tree: mime.Part | None = None  # parsed once for any BINARY items
    for n, item in enumerate(items):
        if n:
            out.append(b" ")
        if isinstance(item, C.FetchAttr):
            name = item.name
            if name == "UID":
                out.append(b"UID %d" % info.uid)
            elif name == "FLAGS":
                out += (b"FLAGS ", render_flags(info.flags, recent))
            elif name == "RFC822.SIZE":
                out.append(b"RFC822.SIZE %d" % info.size)
            elif name == "MODSEQ":
                out.append(b"MODSEQ (%d)" % info.modseq)  # RFC 7162 §3.1.4.1
            elif name == "INTERNALDATE":
                out += (b"INTERNALDATE ", internaldate(info.internaldate))
            elif name == "EMAILID":  # RFC 8474 §5.1 (derived.py)
                out.append(b"EMAILID (%s)" % derived.email_id(info.key).encode("ascii"))
            elif name == "THREADID":  # RFC 8474 §5.2: no thread identity kept
                out.append(b"THREADID NIL")
            elif name == "SAVEDATE":  # RFC 8514 §3 (derived.py)
                out += (b"SAVEDATE ", internaldate(derived.save_date(info.key, info.internaldate)))
            elif name == "ENVELOPE":
                assert entry is not None and entry.envelope is not None
                out += (b"ENVELOPE ", entry.envelope)
            elif name == "BODYSTRUCTURE":
                assert entry is not None and entry.bodystructure is not None
                out += (b"BODYSTRUCTURE ", entry.bodystructure)
            elif name == "BODY":
                assert entry is not None and entry.body is not None
                out += (b"BODY ", entry.body)
            else:
                assert data is not None
                if name == "RFC822":
                    chunk = data
                elif name == "RFC822.HEADER":
                    chunk = data[:fetchitems.header_end(data)]
                else:  # RFC822.TEXT
                    chunk = data[fetchitems.header_end(data):]
                out.append(name.encode("ascii"))
                _literal_into(out, chunk)
        elif isinstance(item, C.FetchBinary):
            assert data is not None
            if tree is None:
                tree = mime.parse(data)
            try:
                if item.size:
                    out.append(b"%s %d" % (item.response_name.encode("ascii"), binary.size(data, tree, item.part)))
                else:
                    _binary_into(out, item, binary.section(data, tree, item.part))
            except binary.BinaryError as e:  # as Dovecot 2.3: what was rendered goes out, else the UID
                e.lines = [b"".join(out[:-1]) + b")\r\n" if n else b"* %d FETCH (UID %d)\r\n" % (seq, info.uid)]
                raise
        else:
            assert data is not None
            sec = item.section
            if not sec.part and not sec.text and item.partial is None:
                chunk = data  # BODY[]: the whole message, already CRLF
            else:
                chunk = fetchitems.body_section(data, _fi_section(sec), item.partial)
            out.append(item.response_name.encode("ascii"))
            _literal_into(out, chunk)
    out.append(b")\r\n")
    return b"".join(out)


def _binary_into(out: list[bytes], item: C.FetchBinary, decoded: binary.Decoded) -> None:
    """RFC 3516 §4.3: `BINARY[part]<origin>` and the decoded data, as a literal8 (`~{n}`, NUL kept)
    when it was converted or holds NUL, else as a literal (as Dovecot 2.3)."""
    name = item.response_name.encode("ascii")
    data = decoded.data
    if item.partial is not None:
        origin, count = item.partial
        data = data[origin:origin + count]
    out += (name, b" ~{%d}\r\n" % len(data) if decoded.binary else b" {%d}\r\n" % len(data), data)


def _literal_into(out: list[bytes], data: bytes) -> None:
    """` {n}CRLF<data>` appended as pieces (encode.literal without its copy; NUL sent as 0x80 as
    there, RFC 3501 §9)."""
    if b"\x00" in data:
        data = data.replace(b"\x00", b"\x80")
    out += (b" {%d}\r\n" % len(data), data)


def render_batch(rows: list[tuple[int, MessageInfo, bytes | None, Entry | None, bool]],
                  items: Sequence[C.FetchItem], want: frozenset[str],
                  extra_flags: frozenset[int]) -> list[bytes]:
    """Render many messages (in a worker thread when parses are needed). `extra_flags`: UIDs whose
    \\Seen this FETCH set, which get FLAGS added as Dovecot does."""
    out: list[bytes] = []
    flags_item = C.FetchAttr("FLAGS")
    for seq, info, data, entry, recent in rows:
        if entry is not None and want and data is not None:
            derive(data, want, entry)
        its = items
        if info.uid in extra_flags and flags_item not in items:
            # as Dovecot 2.3 (its FLAGS handler is "buffered"): before the first item that streams data
            at = next((i for i, item in enumerate(items) if needs_data(item)), len(items))
            its = (*items[:at], flags_item, *items[at:])
        try:
            out.append(render_items(seq, info, its, data, entry, recent))
        except binary.BinaryError as e:  # the messages before it are answered
            e.lines = out + e.lines
            raise
    return out



_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def internaldate(ts: float) -> bytes:
    """fetchitems.internaldate(ts) in the server's zone, without datetime objects (5x faster; the
    unit test compares the two): "17-Jul-1996 02:44:25 -0700" quoted (RFC 3501 §9 date-time)."""
    lt = time.localtime(ts)
    off = lt.tm_gmtoff // 60
    sign = b"-" if off < 0 else b"+"
    off = abs(off)
    return b'"%02d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
        lt.tm_mday, _MONTHS[lt.tm_mon - 1], lt.tm_year, lt.tm_hour, lt.tm_min, lt.tm_sec, sign, off // 60,
        off % 60)


_META_FIELDS = {"UID": (b"UID %d", 0), "FLAGS": (b"FLAGS %s", 1), "RFC822.SIZE": (b"RFC822.SIZE %d", 2),
                "INTERNALDATE": (b"INTERNALDATE %s", 3), "MODSEQ": (b"MODSEQ (%d)", 4),
                "EMAILID": (b"EMAILID (%s)", 5), "SAVEDATE": (b"SAVEDATE %s", 6),
                "THREADID": (b"THREADID NIL", -1)}  # -1: no value


def _meta_template(items: Sequence[C.FetchItem]) -> tuple[bytes, list[int]]:
    """A %-format for `* n FETCH (...)` of metadata-only items, and which value goes where."""
    parts: list[bytes] = []
    fields: list[int] = []
    for item in items:
        assert isinstance(item, C.FetchAttr)
        text, code = _META_FIELDS[item.name]
        parts.append(text)
        if code >= 0:
            fields.append(code)
    return b"* %d FETCH (" + b" ".join(parts) + b")\r\n", fields


def render_meta(pairs: Sequence[tuple[int, int]], infos: Sequence[MessageInfo], items: Sequence[C.FetchItem],
                 recent: frozenset[int]) -> bytes:
    """`* n FETCH (...)` lines of metadata-only items for many messages, built column by column."""
    fmt, fields = _meta_template(items)
    cols: list[Sequence[int | bytes]] = [[seq for seq, _ in pairs]]
    for f in fields:
        if f == 0:
            cols.append([uid for _, uid in pairs])
        elif f == 1:
            # Flag sets are shared between messages: each distinct one is rendered once.
            plain: dict[frozenset[str], bytes] = {}
            with_recent: dict[frozenset[str], bytes] = {}
            col: list[bytes] = []
            for info in infos:
                fl = info.flags
                cache = with_recent if recent and info.uid in recent else plain
                r = cache.get(fl)
                if r is None:
                    r = cache[fl] = render_flags(fl, cache is with_recent)
                col.append(r)
            cols.append(col)
        elif f == 2:
            cols.append([info.size for info in infos])
        elif f == 4:
            cols.append([info.modseq for info in infos])
        elif f == 5:
            cols.append([derived.email_id(info.key).encode("ascii") for info in infos])
        elif f == 6:
            cols.append([internaldate(derived.save_date(info.key, info.internaldate)) for info in infos])
        else:
            cols.append([internaldate(info.internaldate) for info in infos])
    return b"".join([fmt % row for row in zip(*cols, strict=True)])


def complete(entry: Entry, want: frozenset[str]) -> bool:
    return (("ENVELOPE" not in want or entry.envelope is not None)
            and ("BODYSTRUCTURE" not in want or entry.bodystructure is not None)
            and ("BODY" not in want or entry.body is not None))




Row = tuple[int, MessageInfo, bytes | None, Entry | None, bool]


async def render_stored(mailbox: Any, user: str, chunk: Sequence[tuple[tuple[int, int], MessageInfo | None]],
                        items: Sequence[C.FetchItem], want: frozenset[str], needs_data: bool,
                        extra_flags: frozenset[int], is_recent: Callable[[int], bool]
                        ) -> tuple[list[bytes], list[MessageInfo], int]:
    """`* n FETCH` lines for one batch of ((seq, uid), info) (info None: not in the snapshot) that
    needs structure items (`want`) or message bytes (`needs_data`). Returns (lines, the infos
    rendered, how many were missing: gone from the snapshot or from the disk)."""
    rows: list[Row] = []
    to_read: list[int] = []
    entries: dict[int, Entry] = {}
    incomplete: set[int] = set()
    for (_seq, uid), info in chunk:
        if info is None:
            continue
        entry = None
        if want:
            entry = CACHE.get((user, info.key))
            if entry is None:
                entry = Entry()
            entries[uid] = entry
            if not complete(entry, want):
                incomplete.add(uid)
        if needs_data or uid in incomplete:
            to_read.append(uid)
    datas = await read_many(mailbox, to_read)
    parses = missing = 0
    for (seq, uid), info in chunk:
        if info is None:
            missing += 1
            continue
        data = datas.get(uid)
        if data is None and (needs_data or uid in incomplete):
            missing += 1
            continue
        entry = entries.get(uid)
        parses += uid in incomplete
        rows.append((seq, info, data, entry, is_recent(uid)))
    if parses >= OFFLOAD_MIN or (needs_data and sum(len(d) for d in datas.values()) > OFFLOAD_OCTETS):
        lines = await asyncio.to_thread(render_batch, rows, items, want, extra_flags)
    else:
        lines = render_batch(rows, items, want, extra_flags)
    for (_seq, info, _d, entry, _r) in rows:
        if entry is not None and info.uid in incomplete:
            CACHE.put((user, info.key), entry)
    return lines, [row[1] for row in rows], missing

__all__ = ["DATA_ATTRS", "STRUCT", "complete", "derive", "internaldate", "needs_data", "render_batch", "render_items",
           "render_meta", "render_stored", "sets_seen"]
