"""Keywords given at delivery (Sieve imap4flags, RFC 5232), kept on disk until the index holds them.

Owns: which keywords a delivered copy may start with (`for_delivery`), and the per-folder pending
records that carry them from the delivery to the folder's next sync.
Does not own: writing the message (maildir.py), indexing it (folder.py), locking (mailbox.py).

Why records: keywords live only in the index (the file name holds the five system flags), and a
delivery never touches the index (it runs in delivery threads without the account lock, many at
once, and a message is accepted once its file is durable). So a delivery that has keywords writes
`<folder>/mailhaven-keywords/<key>` (the key of the message's file name) and fsyncs it and that
directory before the message file is linked into new/ or cur/; the sync that first indexes the
key (folder.py, also a rebuild) gives the message those keywords in the same index transaction,
then removes the record. A crash can lose the keywords (a record not yet durable: the message is
not linked yet either; or an index lost before the sync, then rebuilt: the records still there
are applied), never the message. Deliveries without keywords cost nothing more; a sync costs one
listing of that directory, and only when it finds new files.

Record format: one line of keywords separated by single spaces, ending with LF (ASCII). A record
that is not that (torn, too long, not ASCII) gives no keywords; invalid keywords in it are
skipped. Records whose message the index already holds (a sync that stopped before removing
them) and records without a message older than STALE_SECONDS (a delivery that failed and could
not clean up) are removed by the sync that lists them. The directory moves with its folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mailhaven.store import maildir

DIRNAME = "mailhaven-keywords"
MAX_KEYWORDS = 32  # per delivered copy: bounds the record and the index row a script can make
MAX_KEYWORD_LEN = 128  # characters per keyword
MAX_RECORD = MAX_KEYWORDS * (MAX_KEYWORD_LEN + 1) + 1
STALE_SECONDS = maildir.STALE_TMP_SECONDS
# RFC 3501 §9 atom: any CHAR except atom-specials (controls, space, "(){%*\"\\]" and DEL); so
# never a system flag ("\\Seen") either.
_ATOM = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset('(){ %*"\\]')


def valid_keyword(word: str) -> bool:
    """An IMAP keyword (flag-keyword = atom, RFC 3501 §9) of at most MAX_KEYWORD_LEN characters."""
    return 0 < len(word) <= MAX_KEYWORD_LEN and all(c in _ATOM for c in word)


def for_delivery(flags: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the keywords a copy delivered with `flags` starts with, the words ignored). System flags
    ("\\..." words) are neither: maildir.canonical_flag decides about them. Invalid keywords and
    those beyond MAX_KEYWORDS are ignored (as Pigeonhole does; the caller logs them)."""
    kept: dict[str, None] = {}
    ignored: list[str] = []
    for word in flags:
        if word.startswith("\\") or word in kept:
            continue
        if valid_keyword(word) and len(kept) < MAX_KEYWORDS:
            kept[word] = None
        else:
            ignored.append(word)
    return tuple(kept), tuple(ignored)


def write(folder: Path, key: str, keywords: Iterable[str], *, fsync: bool,
          dir_sync: maildir.DirSync | None = None) -> Path:
    """Durably record the keywords of the copy `key` about to be placed in `folder`; returns the
    record's path (the caller removes it if the delivery fails). Raises OSError; FileNotFoundError
    when the folder itself is gone (the directory is created only inside an existing folder)."""
    words, _ = for_delivery(keywords)
    directory = folder / DIRNAME
    path = directory / key
    data = (" ".join(words) + "\n").encode("ascii")
    try:
        maildir.write_new_file(path, data, fsync=fsync)
    except FileNotFoundError:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        else:
            if fsync:
                maildir.fsync_dir(folder)
        maildir.write_new_file(path, data, fsync=fsync)
    if fsync:
        if dir_sync is not None:
            dir_sync.sync(directory)
        else:
            maildir.fsync_dir(directory)
    return path


@dataclass
class Found:
    """What a sync found among the records: the keywords of new keys, and which records to remove
    once the index holds the messages it indexed (`done`)."""

    keywords: dict[str, frozenset[str]] = field(default_factory=dict)
    records: set[str] = field(default_factory=set)  # new keys that have a record
    leftovers: list[str] = field(default_factory=list)  # records of indexed keys, stale records

    def done(self, indexed: Iterable[str]) -> list[str]:
        """The records to remove after the index recorded `indexed` (the new keys it took: a file
        that vanished before it was read keeps its record for the sync that finds it again)."""
        return [*self.leftovers, *(k for k in indexed if k in self.records)]


def take(folder: Path, fresh: Collection[str], known: Collection[str] = (), now: float | None = None) -> Found:
    """The records of the keys a sync is about to index (`fresh`), and the leftovers: records of
    keys already indexed (`known`) and stale ones. One listing when the directory exists, nothing
    else unless it holds records; never raises (records are best effort)."""
    found = Found()
    directory = folder / DIRNAME
    try:
        entries = os.listdir(directory)
    except OSError:  # usually FileNotFoundError: no delivery here ever had keywords
        return found
    when = time.time() if now is None else now
    fresh = set(fresh)
    for name in entries:
        if name in fresh:
            words = _read(directory / name)
            if words:
                found.keywords[name] = words
            found.records.add(name)
        elif name in known or _stale(directory / name, when):
            found.leftovers.append(name)
    return found


def remove(folder: Path, names: Iterable[str]) -> None:
    """Remove records (after the index recorded their keywords). Best effort: one left behind is
    removed by a later sync (its key is then known)."""
    directory = folder / DIRNAME
    for name in names:
        try:
            os.unlink(directory / name)
        except OSError:
            pass


def discard(paths: Iterable[Path]) -> None:
    """Remove records of a delivery that failed (their messages were never placed)."""
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass


def _read(path: Path) -> frozenset[str]:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return frozenset()
    try:
        raw = os.read(fd, MAX_RECORD + 1)
    except OSError:  # e.g. a directory in the way
        return frozenset()
    finally:
        os.close(fd)
    if len(raw) > MAX_RECORD or not raw.endswith(b"\n") or not raw.isascii():
        return frozenset()
    words, _ = for_delivery(raw[:-1].decode("ascii").split(" "))
    return frozenset(words)


def _stale(path: Path, now: float) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return now - st.st_mtime > STALE_SECONDS  # written once, never touched: its mtime is its age
