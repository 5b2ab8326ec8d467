"""The per-user memory of delivery-time Sieve: vacation replies sent and duplicate ids seen.

Owns: one small file per user (`<user root>/sieve/.tracker`, JSON: key -> expiry time), read and
written whole, bounded (MAX_ENTRIES, the soonest to expire go first), written to a temporary file,
fsynced and renamed (so "one reply per sender per :days" survives a restart, RFC 5230 §4.1), and a
lock per file so concurrent deliveries to one user do not lose each other's marks: a thread lock
inside the process and flock(2) on `.tracker.lock` beside it across worker processes (readers need
neither: the file is replaced whole by rename).
Does not own: what a key means (delivery/sieve.py builds them: "vacation:" + handle and sender,
RFC 5230 §4.2; "duplicate:" + the RFC 7352 id), the script storage next to it (sieve_store.py; its
script names never begin with ".", so this file is never taken for a script).
Tracker's functions block (file I/O); `FileMemory`, the seams.SieveMemory over these files
(delivery/sieve.py's default), runs them off the event loop. With [storage] backend = "postgresql"
the same keys live in the shared database instead (delivery/sievetrack_pg.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mailhaven.store.maildir import fsync_dir, make_dirs

FILE = ".tracker"
LOCK_FILE = ".tracker.lock"
MAX_ENTRIES = 10_000  # per user (Pigeonhole's lda-dupes has no bound; a flood must not grow it forever)
MAX_FILE = 4 * 1024 * 1024  # a bigger file is ignored (not ours, or damaged)

_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(path: Path) -> threading.Lock:
    with _locks_guard:  # one per user that got mail (bounded by the users file)
        return _locks.setdefault(path, threading.Lock())


class Tracker:
    """One user's tracker file at `folder`/.tracker (`folder` is the user's sieve folder)."""

    def __init__(self, folder: Path, *, fsync: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.path = folder / FILE
        self.fsync = fsync
        self.clock = clock

    def _load(self) -> dict[str, float]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_FILE + 1)
        except FileNotFoundError:
            return {}
        if len(raw) > MAX_FILE:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        now = self.clock()
        if not isinstance(data, dict):
            return {}
        return {k: float(v) for k, v in data.items()
                if isinstance(k, str) and isinstance(v, int | float) and v > now}

    def _save(self, entries: dict[str, float]) -> None:
        if len(entries) > MAX_ENTRIES:
            keep = sorted(entries.items(), key=lambda kv: kv[1])[-MAX_ENTRIES:]
            entries = dict(keep)
        make_dirs(self.path.parent, fsync=self.fsync)
        tmp = self.path.with_name(f"{FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(json.dumps(entries, separators=(",", ":")).encode())
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.fsync:
            fsync_dir(self.path.parent)

    def seen(self, key: str) -> bool:
        """Is `key` marked and not yet expired."""
        with _lock(self.path):
            return key in self._load()

    def snapshot(self) -> set[str]:
        """Every live key (one read for a whole script run)."""
        with _lock(self.path):
            return set(self._load())

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This file's writers one at a time: threads of this process, then other processes."""
        with _lock(self.path):
            make_dirs(self.path.parent, fsync=self.fsync)
            fd = os.open(self.path.with_name(LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def mark(self, keys: list[tuple[str, float]]) -> None:
        """Mark each (key, seconds): live until now + seconds; durable when this returns."""
        if not keys:
            return
        with self._exclusive():
            entries = self._load()
            now = self.clock()
            for key, seconds in keys:
                entries[key] = now + max(0.0, seconds)
            self._save(entries)

    def claim(self, key: str, seconds: float) -> bool:
        """Mark `key` for `seconds` unless it is live already; True when this call marked it (the
        caller may act: check and mark are one step, so two deliveries cannot both answer, in one
        process or in two)."""
        with self._exclusive():
            entries = self._load()
            if key in entries:
                return False
            entries[key] = self.clock() + max(0.0, seconds)
            self._save(entries)
            return True


class FileMemory:
    """seams.SieveMemory over each user's tracker file; `folder(user)` is that user's sieve folder
    (it may raise BadMailboxName for an unsafe user). Every call runs in a thread."""

    def __init__(self, folder: Callable[[str], Path], *, fsync: bool = True) -> None:
        self._folder = folder
        self.fsync = fsync

    def _tracker(self, user: str) -> Tracker:
        return Tracker(self._folder(user), fsync=self.fsync)

    async def live(self, user: str) -> set[str]:
        return await asyncio.to_thread(lambda: self._tracker(user).snapshot())

    async def mark(self, user: str, keys: Sequence[tuple[str, float]]) -> None:
        await asyncio.to_thread(lambda: self._tracker(user).mark(list(keys)))

    async def claim(self, user: str, key: str, seconds: float) -> bool:
        return await asyncio.to_thread(lambda: self._tracker(user).claim(key, seconds))


__all__ = ["Tracker", "FileMemory", "FILE", "LOCK_FILE", "MAX_ENTRIES"]
