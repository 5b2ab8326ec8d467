"""Message bodies for RETR, read in batches ahead of the client.

Owns: the per-session cache of messages read ahead of a RETR sequence, and when to read the next
batch. Does not own: which messages come next (protocol.Session.following, which skips messages
marked deleted), reading files (the store's Mailbox.read_many / read).

Why: a client downloading a maildrop sends RETR 1, RETR 2, ... one after the other, waiting for
each reply. Reading each message when its RETR arrives costs a worker-thread round trip per
message (the store never reads on the event loop). Instead the shell reads the next messages in
one `read_many` batch (one round trip for many messages) while the client is still taking in
earlier ones, and answers most RETRs from memory without waiting for anything.

Bounds: the shell passes the window (`wanted`, at most READ_AHEAD_MESSAGES messages and
READ_AHEAD_OCTETS octets, from Session.following); messages outside it are dropped, and batches
only read messages inside it, so memory per session stays within one window. A new batch is
started only when at least half of the window is missing (or the next message is), so batches
stay large; the shell asks for a new plan only after a miss or when `running_low()`.

Correctness: a message's content never changes in a Maildir (flag changes only rename the file),
so data read ahead is what a read at RETR time would return. A message expunged by another client
before it was read ahead is not found and RETR answers as before (the fallback `read` raises
MessageNotFound); one expunged after it was read ahead is still in this session's maildrop, which
is the maildrop as of login (RFC 1939 §8).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger("mailhaven.pop3")

READ_AHEAD_MESSAGES = 64  # messages read ahead of a RETR sequence, per session
READ_AHEAD_OCTETS = 4 * 1024 * 1024  # and at most this much of them in memory


class Reader(Protocol):
    """What the read-ahead needs of the store's Mailbox."""

    async def read(self, uid: int) -> bytes: ...

    async def read_many(self, uids: Sequence[int]) -> list[bytes | None]: ...


def _retrieved(task: asyncio.Task[list[bytes | None]]) -> None:
    """Done callback: a batch nobody waits for any more must not log 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()


class ReadAhead:
    """One session's read-ahead cache. `take` (sync) or `get` (async) a message; `plan` after each
    RETR; `close` at the end of the session (cancels a batch still being read)."""

    def __init__(self, mailbox: Reader) -> None:
        self._mailbox = mailbox
        self._ready: dict[int, bytes] = {}
        self._batch: asyncio.Task[list[bytes | None]] | None = None
        self._batch_uids: tuple[int, ...] = ()
        self._window = 0  # len(wanted) at the last plan()
        self.batches = 0  # batches started (tests, metrics)

    def take(self, uid: int) -> bytes | None:
        """The message if it is already in memory (no waiting), removed from the cache."""
        self._collect()
        return self._ready.pop(uid, None)

    async def get(self, uid: int) -> bytes:
        """The message: from the cache, from the batch being read, or read now.
        Raises MessageNotFound (and the store's other errors) like Mailbox.read."""
        data = self.take(uid)
        if data is not None:
            return data
        batch = self._batch
        if batch is not None and uid in self._batch_uids:
            await asyncio.wait([batch])
            data = self.take(uid)
            if data is not None:
                return data
        return await self._mailbox.read(uid)

    def running_low(self) -> bool:
        """True when `plan` may have something to do: no batch is being read and at most half of
        the last window is left in memory. (Lets the shell skip computing the window on most RETRs.)"""
        return self._batch is None and 2 * len(self._ready) <= self._window

    def plan(self, wanted: Sequence[int]) -> None:
        """`wanted`: the UIDs the client is expected to ask for next, in order (bounded by the
        caller). Drop what is not wanted any more; read the missing ones if enough are missing."""
        self._collect()
        self._window = len(wanted)
        keep = set(wanted)
        for uid in [u for u in self._ready if u not in keep]:
            del self._ready[uid]
        if self._batch is not None or not wanted:
            return
        missing = [u for u in wanted if u not in self._ready]
        if missing and (2 * len(missing) >= len(wanted) or wanted[0] not in self._ready):
            self._start(missing)

    def close(self) -> None:
        if self._batch is not None:
            self._batch.cancel()
        self._batch, self._batch_uids = None, ()
        self._ready.clear()

    def _start(self, uids: list[int]) -> None:
        task = asyncio.get_running_loop().create_task(self._mailbox.read_many(uids))
        task.add_done_callback(_retrieved)
        self._batch, self._batch_uids = task, tuple(uids)
        self.batches += 1

    def _collect(self) -> None:
        """Move a finished batch into the cache. A failed batch is forgotten: `get` then reads each
        message on its own, and that read reports the error."""
        batch = self._batch
        if batch is None or not batch.done():
            return
        uids = self._batch_uids
        self._batch, self._batch_uids = None, ()
        if batch.cancelled():
            return
        exc = batch.exception()
        if exc is not None:
            log.debug("pop3 read-ahead batch failed: %r", exc)
            return
        for uid, data in zip(uids, batch.result(), strict=True):
            if data is not None:
                self._ready[uid] = data
