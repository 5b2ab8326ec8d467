"""Per-user sending counts over a sliding hour (config [submission] max_messages_per_hour and
max_recipients_per_hour; issue 12 item 7: a stolen password cannot send a flood).

Owns: counting events (messages, recipients) per (kind, user) over the last WINDOW seconds, in
BUCKET-second buckets, and the atomic "may these n more go, and count them" (`take`).
Does not own: where the limits apply and what is answered (smtp/submission.py, smtp/replies.py),
the limit values (config.py).

Memory is bounded: a key keeps at most WINDOW / BUCKET + 1 buckets, empty keys are dropped, and at most
`max_keys` keys are kept (the least recently used go first). Single-threaded: call from the event
loop only (check and count happen with no await between them, so concurrent sessions of one user
cannot both slip under the limit).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

WINDOW = 3600.0  # seconds: "per hour"
BUCKET = 60.0  # seconds per bucket: the window slides by the minute
MAX_KEYS = 100_000


class SendRate:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self._clock = clock
        self._max_keys = max_keys
        # (kind, user) -> buckets [bucket number, count], oldest first
        self._keys: OrderedDict[tuple[str, str], deque[list[int]]] = OrderedDict()

    def _buckets(self, key: tuple[str, str], now_bucket: int) -> deque[list[int]] | None:
        buckets = self._keys.get(key)
        if buckets is None:
            return None
        # Kept while any part of a bucket is within the window: an event counts for at least WINDOW
        # seconds and at most BUCKET more, so no hour ever holds more than the limit.
        oldest = now_bucket - int(WINDOW / BUCKET)
        while buckets and buckets[0][0] < oldest:
            buckets.popleft()
        if not buckets:
            del self._keys[key]
            return None
        return buckets

    def count(self, kind: str, user: str) -> int:
        """Events of `kind` for `user` within the window."""
        buckets = self._buckets((kind, user.lower()), int(self._clock() // BUCKET))
        return sum(c for _, c in buckets) if buckets is not None else 0

    def add(self, kind: str, user: str, n: int = 1) -> None:
        """Count `n` events now (a negative `n` gives back what was counted and not used)."""
        key = (kind, user.lower())
        now_bucket = int(self._clock() // BUCKET)
        buckets = self._buckets(key, now_bucket)
        if buckets is None:
            if n <= 0:
                return
            buckets = self._keys[key] = deque()
        self._keys.move_to_end(key)
        if buckets and buckets[-1][0] == now_bucket:
            buckets[-1][1] += n
        else:
            buckets.append([now_bucket, n])
        while n < 0 and buckets and buckets[-1][1] <= 0:  # a give-back: keep counts non-negative
            carry = buckets.pop()[1]
            if buckets:
                buckets[-1][1] += carry
        if not buckets:
            del self._keys[key]
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)

    def take(self, kind: str, user: str, n: int, limit: int) -> tuple[bool, int]:
        """(True, count after) and `n` counted when count + n stays within `limit` (0 = no limit);
        else (False, count now) and nothing counted."""
        current = self.count(kind, user)
        if limit and current + n > limit:
            return False, current
        self.add(kind, user, n)
        return True, current + n

    def tracked_keys(self) -> int:
        return len(self._keys)


__all__ = ["SendRate", "WINDOW", "BUCKET"]
