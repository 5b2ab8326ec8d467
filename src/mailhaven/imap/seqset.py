"""IMAP sequence sets and UID sets (RFC 3501 §9 `sequence-set`, §6.4.8): parse, resolve, test, render.

Owns: the syntax "1", "1:*", "5:3", "*", "1,3:5,7:*" and its meaning once "*" is known.
Does not own: whether a sequence number exists (the session checks `max_number(exists)` against the
mailbox size and answers BAD), or mapping sequence numbers to UIDs.

A range may be written in either order (RFC 3501 §9: "seq-range ... 2:4 and 4:2 are equivalent").
"*" is the largest number in use; for UIDs "559:*" still includes the last UID even when 559 is
higher (RFC 3501 §6.4.8), which falls out of "ranges in any order". Numbers are nz-number < 2^32.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

MAX_NUMBER = 2**32 - 1  # RFC 3501 §9: nz-number is a 32-bit unsigned value, not 0
STAR = 0  # stands for "*" inside `ranges`; never a valid nz-number


def _number(text: str) -> int:
    if text == "*":
        return STAR
    # RFC 3501 §9: nz-number = digit-nz *DIGIT; guard the length before int() (big-int DoS).
    if not text or len(text) > 10 or not text.isascii() or not text.isdigit() or text[0] == "0":
        raise ValueError(f"invalid sequence number {text[:20]!r}")
    value = int(text)
    if value > MAX_NUMBER:
        raise ValueError("sequence number out of range")
    return value


@dataclass(frozen=True)
class SequenceSet:
    """A parsed sequence-set. `ranges` holds (a, b) pairs as written; STAR (0) stands for "*".
    `saved`: the set is "$" (RFC 5182 §2.1, no ranges), the messages the last SEARCH ... RETURN
    (SAVE) kept, which the session substitutes (on its own it names nothing)."""

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        """"1,3:5,7:*" -> SequenceSet. Raises ValueError."""
        if not text:
            raise ValueError("empty sequence set")
        ranges: list[tuple[int, int]] = []
        for item in text.split(","):
            if ":" in item:
                left, _, right = item.partition(":")
                ranges.append((_number(left), _number(right)))
            else:
                n = _number(item)
                ranges.append((n, n))
        return cls(tuple(ranges))

    @classmethod
    def of(cls, numbers: Iterable[int]) -> SequenceSet:
        """A set holding exactly these numbers (compacted)."""
        text = render(numbers)
        return cls.parse(text) if text else cls(())

    @property
    def uses_star(self) -> bool:
        return any(STAR in r for r in self.ranges)

    def resolve(self, max_value: int) -> list[tuple[int, int]]:
        """Sorted, merged, inclusive (lo, hi) ranges with "*" replaced by `max_value`.

        Not clipped to `max_value` (UID sets may name UIDs that do not exist). With an empty
        mailbox (`max_value` 0) "*" resolves to nothing useful: ranges touching 0 start at 1.
        """
        spans: list[tuple[int, int]] = []
        for a, b in self.ranges:
            a = max_value if a == STAR else a
            b = max_value if b == STAR else b
            lo, hi = (a, b) if a <= b else (b, a)
            lo = max(lo, 1)
            if hi >= lo:
                spans.append((lo, hi))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def max_number(self, max_value: int) -> int:
        """Largest number named once "*" = `max_value` (0 if none); for "seq > EXISTS" checks."""
        spans = self.resolve(max_value)
        return spans[-1][1] if spans else 0

    def contains(self, n: int, max_value: int) -> bool:
        """Is `n` in the set when "*" is `max_value`?"""
        for a, b in self.ranges:
            a = max_value if a == STAR else a
            b = max_value if b == STAR else b
            if min(a, b) <= n <= max(a, b) and n >= 1:
                return True
        return False

    def iter_within(self, max_value: int) -> Iterator[int]:
        """Members in 1..max_value, ascending, each once (bounded by max_value, not by the text)."""
        for lo, hi in self.resolve(max_value):
            if lo > max_value:
                break
            yield from range(lo, min(hi, max_value) + 1)

    def __str__(self) -> str:
        def one(n: int) -> str:
            return "*" if n == STAR else str(n)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


def render(numbers: Iterable[int]) -> str:
    """Compact set text for COPYUID/APPENDUID (RFC 4315 §3): [1, 2, 3, 5] -> "1:3,5"; [] -> ""."""
    parts: list[str] = []
    run_start = run_end = -1
    for n in sorted(set(numbers)):
        if n < 1:
            raise ValueError("sequence numbers start at 1")
        if n == run_end + 1:
            run_end = n
            continue
        if run_start > 0:
            parts.append(str(run_start) if run_start == run_end else f"{run_start}:{run_end}")
        run_start = run_end = n
    if run_start > 0:
        parts.append(str(run_start) if run_start == run_end else f"{run_start}:{run_end}")
    return ",".join(parts)


def missing(ranges: Iterable[tuple[int, int]], present: Sequence[int], below: int) -> list[tuple[int, int]]:
    """The parts of resolved `ranges` under `below` holding none of the ascending UIDs `present`,
    as (lo, hi) ranges: the UIDs a client may know that are gone (RFC 7162 §3.2.5.2 VANISHED
    (EARLIER) when the tombstones do not reach back). Work grows with len(present), not the span."""
    out: list[tuple[int, int]] = []
    j = 0
    for lo, hi in ranges:
        hi = min(hi, below - 1)
        if lo > hi:
            continue
        j = bisect_left(present, lo, j)
        start = lo
        while j < len(present) and present[j] <= hi:
            if present[j] > start:
                out.append((start, present[j] - 1))
            start = present[j] + 1
            j += 1
        if start <= hi:
            out.append((start, hi))
    return out


def render_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """(lo, hi) ranges, ascending and apart, as set text: [(1, 3), (5, 5)] -> "1:3,5"."""
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)
