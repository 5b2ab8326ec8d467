"""A process-wide cache of data derived from message files: header block, ENVELOPE, BODYSTRUCTURE,
BODY and the SEARCH prefilter's per-field memo (searchadapt.HeaderPrefilter).

Owns: the LRU (`MessageCache`), bounded in bytes (the budget: config `[imap] cache_bytes`, set by
imap/server.py with `set_budget`, CACHE_MAX_BYTES until then; least recently used entries are
evicted so the count never exceeds it), what it counts (`stats()`, exposed as the
mailhaven_imap_cache_* metrics) and the one instance every IMAP session of the process shares
(`CACHE`). Keys are (user, file key): stable for a message's life (a moved message keeps its file and
content), so entries never go stale, they only age out.
Does not own: computing the entries (fetch.py derives them, searchadapt.py fills header blocks and
memos) or deciding what to cache (the callers).

An entry counts its octets plus what Python spends on it (ENTRY_OVERHEAD: the entry, its key and
its slot in the LRU; BYTES_OVERHEAD per bytes object), measured with tracemalloc on CPython 3.11, so
the budget is close to the memory the cache really holds.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

CACHE_MAX_BYTES = 32 * 1024 * 1024  # the default budget (config [imap] cache_bytes)
ENTRY_OVERHEAD = 320  # an Entry, its (user, key) tuple and key string, its OrderedDict node
BYTES_OVERHEAD = 33  # a bytes object's header
MEMO_OVERHEAD = 232  # the search memo's dict


class Entry:
    __slots__ = ("header", "envelope", "bodystructure", "body", "search", "size")

    def __init__(self) -> None:
        self.header: bytes | None = None
        self.envelope: bytes | None = None
        self.bodystructure: bytes | None = None
        self.body: bytes | None = None
        # SEARCH prefilter memo (searchadapt.HeaderPrefilter): field name -> its lines, or None
        self.search: dict[bytes, bytes | None] | None = None
        self.size = 0

    def measure(self) -> int:
        size = ENTRY_OVERHEAD + sum(BYTES_OVERHEAD + len(x) for x in (self.header, self.envelope,
                                                                       self.bodystructure, self.body)
                                    if x is not None)
        if self.search:
            size += MEMO_OVERHEAD + sum(48 + len(k) + (len(v) if v is not None else 0)
                                        for k, v in self.search.items())
        self.size = size
        return size


class Stats(NamedTuple):
    bytes: int  # counted now (module doc)
    entries: int
    budget: int  # max_bytes
    evictions: int  # entries evicted to stay within the budget, since the start


class MessageCache:
    """LRU of data derived from message files, bounded in bytes. Keys (user, file key) are stable for
    a message's life (a moved message keeps its file and content)."""

    def __init__(self, max_bytes: int = CACHE_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._d: OrderedDict[tuple[str, str], Entry] = OrderedDict()

    def set_budget(self, max_bytes: int) -> None:
        """A new budget (0: cache nothing); evicts at once down to it."""
        self.max_bytes = max_bytes
        self._evict()

    def stats(self) -> Stats:
        return Stats(self.bytes, len(self._d), self.max_bytes, self.evictions)

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._d:
            _, e = self._d.popitem(last=False)
            self.bytes -= e.size
            self.evictions += 1

    def get(self, key: tuple[str, str]) -> Entry | None:
        e = self._d.get(key)
        if e is not None:
            self._d.move_to_end(key)
        return e

    def peek(self, key: tuple[str, str]) -> Entry | None:
        """Like get() without refreshing the entry's place (bulk scans must not reorder the LRU)."""
        return self._d.get(key)

    def put(self, key: tuple[str, str], entry: Entry) -> None:
        old = self._d.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self.bytes += entry.measure()
        self._d[key] = entry
        self._evict()

    def remeasure(self, key: tuple[str, str], entry: Entry) -> None:
        """`entry` grew in place (e.g. a field it did not have): count its new size."""
        if self._d.get(key) is not entry:
            return  # evicted meanwhile (or never put): nothing is counted for it
        old = entry.size
        self.bytes += entry.measure() - old
        self._evict()

    def __len__(self) -> int:
        return len(self._d)


CACHE = MessageCache()


__all__ = ["CACHE", "CACHE_MAX_BYTES", "Entry", "MessageCache", "Stats"]
