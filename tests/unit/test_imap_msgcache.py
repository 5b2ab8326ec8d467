"""imap/msgcache.py: the byte budget holds whatever is put in, shrinking it evicts at once, and what an
entry counts is close to the memory Python really spends on it."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.imap.msgcache import Entry, MessageCache

_op = st.tuples(st.integers(0, 40), st.integers(0, 3000), st.booleans())


@settings(max_examples=200, deadline=None)
@given(budget=st.integers(0, 20_000), ops=st.lists(_op, max_size=60), shrink_to=st.integers(0, 20_000))
def test_the_counted_bytes_never_exceed_the_budget_and_match_the_entries(
        budget: int, ops: list[tuple[int, int, bool]], shrink_to: int) -> None:
    cache = MessageCache(budget)
    for key, size, grow in ops:
        k = ("alice@example.test", f"key{key}")
        old = cache.peek(k)
        if grow and old is not None:
            old.envelope = b"e" * size  # grows in place (as searchadapt's memos do), then remeasured
            cache.remeasure(k, old)
        else:
            e = Entry()
            e.header = b"h" * size
            cache.put(k, e)
        assert cache.bytes <= cache.max_bytes
        assert cache.bytes == sum(e.size for e in cache._d.values())
    cache.set_budget(shrink_to)
    stats = cache.stats()
    assert stats.bytes <= shrink_to and stats.budget == shrink_to and stats.entries == len(cache)
    assert cache.bytes == sum(e.size for e in cache._d.values())


def test_a_zero_budget_caches_nothing_and_counts_the_evictions() -> None:
    cache = MessageCache(0)
    e = Entry()
    e.envelope = b"(NIL)"
    cache.put(("u", "k"), e)
    assert len(cache) == 0 and cache.bytes == 0 and cache.stats().evictions == 1


def test_what_an_entry_counts_is_close_to_what_python_spends_on_it() -> None:
    cache = MessageCache(1 << 40)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(5000):
            e = Entry()
            e.header = bytes(600 + i % 7)
            e.envelope = bytes(300 + i % 5)
            cache.put(("alice@example.test", f"{1700000000 + i}.M{i}P1Q{i}.host"), e)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    real = sum(d.size_diff for d in after.compare_to(before, "filename"))
    assert 0.85 < cache.bytes / real < 1.15, (cache.bytes, real)
