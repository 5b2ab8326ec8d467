"""The full-text index: an accelerator for IMAP SEARCH BODY/TEXT, one SQLite FTS5 file per user.

Owns: `<user root>/mailhaven-fts.sqlite` (its schema, opening, recreating it when it is damaged),
indexing messages (their `textextract` texts) in worker threads (a background batch after
delivery and APPEND, and whatever is missing at SEARCH time), forgetting expunged ones, and
answering "which of these messages may hold these strings" (`candidates`).
Does not own: what matches (imap/search.py evaluates every candidate), the mailbox index
(index.py: this file works beside either of its backends and never touches its schema).

The index is a derived cache, never the truth, so a SEARCH is always exactly what the scan answers:
- Rows are keyed by the Maildir key (the file name before ":2,"), which flag changes (renames of
  the file), MOVE and RENAME of folders keep; a COPY gets a new key and is indexed when missing.
- It indexes exactly the folded texts the scan matches (textextract.body_text/header_text, NUL
  between parts replaced by LF) with the `trigram` tokenizer (SQLite >= 3.34), case-sensitive,
  in two contentless tables without positions (`content=''`, `detail=none`: about 1.4 times the
  text, where keeping the text and positions took 8 times): `body` (BODY) and `head` (TEXT looks
  in both). A string of >= 3 characters is looked up as all of its trigrams (up to MAX_TRIGRAMS of
  them), a necessary condition for being a substring, so the rows found are a superset of the
  messages the scan matches; the final check drops the others.
- Shorter strings, strings holding NUL, messages cut at TEXT_LIMIT, messages not indexed (missing,
  unreadable, failed) and any SQLite error make the messages concerned (or all) candidates.
- Expunged messages' rows are removed from `doc` by a background batch; their trigrams stay in
  the contentless tables (which cannot delete without the text) and are ignored, since only keys
  in `doc` are answered, under ids never given again (AUTOINCREMENT). When such leftovers outnumber
  the live rows, the file is emptied and filled again lazily. Rows of messages gone otherwise
  (folder deleted, removed by another program) are never candidates: only the selected mailbox's
  keys are asked about.
- It never takes the last free space from mail (room_for_index): on a nearly full file system
  nothing is added, and the messages it misses are scanned.
- Losing the file loses nothing: it is created again and filled at the next SEARCH (up to
  SYNC_INDEX missing messages before it answers; a larger backlog, as after a migration or a lost
  file, is filled in the background while the SEARCHes meanwhile scan those messages, so a first
  SEARCH never costs more than the scan).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from mailhaven.errors import StoreError
from mailhaven.message import textextract

log = logging.getLogger(__name__)

FILENAME = "mailhaven-fts.sqlite"
TEXT_LIMIT = 1 << 20  # characters of each text (bodies, headers) indexed per message; beyond: scanned
MIN_TERM = 3  # trigram: shorter strings cannot be looked up
BATCH = 200  # messages indexed per transaction
GATHER = 0.5  # seconds the background indexer waits for more before writing
SYNC_INDEX = 500  # missing messages a SEARCH indexes before answering; more: the background does it
QUEUE_BYTES = 32 << 20  # message bytes waiting for the background indexer; beyond: indexed at SEARCH
MAX_TRIGRAMS = 24  # trigrams of one string looked up (evenly spread); more narrow little further
KEEP_KEYS = 5000  # keys asked about above which all keys are read once and kept in memory
MAX_OPEN = 32  # users' files kept open (least recently used closed first)
MIN_FREE = 64 << 20  # free octets below which nothing is added to the index (room_for_index)
_SCHEMA_VERSION = 3
_TABLES = ("doc", "meta", "body", "head")
_SCHEMA = """
CREATE TABLE doc (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, partial INTEGER NOT NULL);
CREATE INDEX doc_partial ON doc (partial) WHERE partial;
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta VALUES ('leftovers', 0);
CREATE VIRTUAL TABLE body USING fts5(t, tokenize = 'trigram case_sensitive 1', content = '', detail = none);
CREATE VIRTUAL TABLE head USING fts5(t, tokenize = 'trigram case_sensitive 1', content = '', detail = none);
"""

Term = tuple[str, bool]  # (folded string, headers too: TEXT rather than BODY)
# A queued message: (user root, key, its bytes | a callable giving its path | None: forget it)
_Item = tuple[Path, str, "bytes | Callable[[], str | None] | None"]


def usable(term: str) -> bool:
    """Can the index narrow a search for this folded string?"""
    return len(term) >= MIN_TERM and "\0" not in term


def _query(term: str) -> str:
    """The FTS5 query for a usable string: its trigrams, each a quoted token, all required."""
    grams = list(dict.fromkeys(term[i:i + 3] for i in range(len(term) - 2)))
    if len(grams) > MAX_TRIGRAMS:
        step = (len(grams) - 1) / (MAX_TRIGRAMS - 1)
        grams = [grams[round(i * step)] for i in range(MAX_TRIGRAMS)]
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)


class FtsIndex:
    """One user's FTS file. Thread-safe (one connection under a lock); every method blocks."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / FILENAME
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None  # of the file the connection has open
        # Every key in `doc`, kept for large mailboxes (SELECT of all keys: 50 ms per 100,000),
        # valid while no other connection has committed (PRAGMA data_version); ours update it.
        self._keys: set[str] | None = None
        self._version = -1

    def _open(self) -> sqlite3.Connection:
        if self._db is not None and self._inode != _inode(self.path):  # deleted or replaced: start again
            self._db.close()
            self._db = None
        if self._db is None:
            try:
                self._db = self._connect()
            except sqlite3.DatabaseError:  # damaged or foreign: it is only a cache
                log.warning("full-text index %s unreadable: made again", self.path)
                self._discard_file()
                self._db = self._connect()
            self._inode = _inode(self.path)
            self._keys = None
        return self._db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a cache: a lost tail is filled again
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != _SCHEMA_VERSION:
                _reset(db)
        except BaseException:
            db.close()
            raise
        return db

    def _discard_file(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _guarded(self, fn: str, *args: object) -> object:
        """Run method `fn` under the lock; a damaged file is dropped (and the call fails)."""
        with self._lock:
            try:
                return getattr(self, fn)(*args)
            except sqlite3.DatabaseError as e:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                if not isinstance(e, sqlite3.OperationalError):  # corrupt, not busy or locked
                    self._discard_file()
                raise

    # -- the operations (called under the lock) ----------------------------------------------

    def _known(self, keys: Sequence[str]) -> set[str]:
        db = self._open()
        if len(keys) > KEEP_KEYS:  # most of the user's mail: every key, kept (see __init__)
            version = db.execute("PRAGMA data_version").fetchone()[0]
            if self._keys is None or version != self._version:
                self._keys = {k for (k,) in db.execute("SELECT key FROM doc")}
                self._version = version
            return self._keys
        out: set[str] = set()
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            sql = f"SELECT key FROM doc WHERE key IN ({','.join('?' * len(part))})"
            out.update(k for (k,) in db.execute(sql, part))
        return out

    def _add(self, docs: Sequence[tuple[str, textextract.Text | None]]) -> None:
        if not room_for_index(self.path.parent):
            return  # left unindexed: those messages are scanned (see room_for_index)
        db = self._open()
        db.execute("BEGIN IMMEDIATE")
        try:
            for key, text in docs:
                partial = 1 if text is None or text.truncated else 0
                cur = db.execute("INSERT OR IGNORE INTO doc (key, partial) VALUES (?, ?)", (key, partial))
                if cur.rowcount and text is not None:
                    db.execute("INSERT INTO body (rowid, t) VALUES (?, ?)", (cur.lastrowid, text.body.replace("\0", "\n")))
                    db.execute("INSERT INTO head (rowid, t) VALUES (?, ?)",
                               (cur.lastrowid, text.headers.replace("\0", "\n")))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if self._keys is not None:  # only once committed: a key wrongly known would never be found
            self._keys.update(key for key, _ in docs)

    def _remove(self, keys: Sequence[str]) -> None:
        if not room_for_index(self.path.parent):
            return  # rows of expunged keys are never answered (see the module doc): left for later
        db = self._open()
        db.execute("BEGIN IMMEDIATE")
        try:
            gone = 0
            for key in keys:
                gone += db.execute("DELETE FROM doc WHERE key = ?", (key,)).rowcount
            left = db.execute("UPDATE meta SET value = value + ? WHERE name = 'leftovers' RETURNING value",
                              (gone,)).fetchone()[0]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if self._keys is not None:
            self._keys.difference_update(keys)
        if left > 1000 and left > db.execute("SELECT count(*) FROM doc").fetchone()[0]:
            _reset(db)  # mostly leftovers: start again (filled at the next SEARCH)
            self._keys = None

    def _matching(self, terms: Sequence[Term]) -> set[str]:
        """Keys of the rows holding every term, and of every partial row."""
        db = self._open()
        clauses = []
        args: list[str] = []
        for term, headers in terms:
            q = _query(term)
            if headers:  # TEXT: RFC 3501 §6.4.4, the header or the body
                clauses.append("SELECT rowid FROM body WHERE body MATCH ? UNION SELECT rowid FROM head WHERE head MATCH ?")
                args += [q, q]
            else:
                clauses.append("SELECT rowid FROM body WHERE body MATCH ?")
                args.append(q)
        sql = (f"SELECT key FROM doc WHERE id IN ({' INTERSECT '.join(clauses)})"
               " UNION ALL SELECT key FROM doc WHERE partial")
        return {k for (k,) in db.execute(sql, args)}

    # -- public, blocking ------------------------------------------------------------------------

    def known(self, keys: Sequence[str]) -> set[str]:
        """Those of `keys` that are indexed (perhaps more)."""
        out = self._guarded("_known", keys)
        assert isinstance(out, set)
        return out

    def add(self, docs: Sequence[tuple[str, textextract.Text | None]]) -> None:
        """Index these messages' texts (None: could not be read; always a candidate). Keys already
        indexed are left as they are (a key always names the same bytes)."""
        self._guarded("_add", docs)

    def remove(self, keys: Sequence[str]) -> None:
        self._guarded("_remove", keys)

    def matching(self, terms: Sequence[Term]) -> set[str]:
        out = self._guarded("_matching", terms)
        assert isinstance(out, set)
        return out


def room_for_index(root: Path) -> bool:
    """Whether the file system holding `root` has room to spare for the index: more than MIN_FREE
    free (or a twentieth of it, on a small one). The index is a cache and never takes the last free
    space from mail: below that it is not written, and the messages it misses are scanned."""
    try:
        st = os.statvfs(root)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize > min(MIN_FREE, st.f_blocks * st.f_frsize // 20)


def _reset(db: sqlite3.Connection) -> None:
    """Empty the file: the current schema, no rows."""
    db.executescript("BEGIN IMMEDIATE;" + "".join(f"DROP TABLE IF EXISTS {t};" for t in _TABLES) + _SCHEMA
                     + f"PRAGMA user_version = {_SCHEMA_VERSION}; COMMIT;")


def extract(data: bytes) -> textextract.Text | None:
    """The texts to index, or None when the message defeats the extractor (it is then scanned)."""
    try:
        return textextract.extract(data, TEXT_LIMIT)
    except Exception:  # malformed input must never stop indexing; the scan decides for it
        log.exception("full-text extraction failed")
        return None


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


class Fts:
    """The full-text indexes of every user of a Store, and the background indexer thread."""

    def __init__(self) -> None:
        self._indexes: OrderedDict[Path, FtsIndex] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._queued_bytes = 0
        self._backlog: set[tuple[Path, str]] = set()  # queued by a SEARCH (read from disk there)
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)
        self._busy = 0

    def index(self, root: Path) -> FtsIndex:
        with self._lock:
            idx = self._indexes.get(root)
            if idx is None:
                idx = self._indexes[root] = FtsIndex(root)
            self._indexes.move_to_end(root)
            if len(self._indexes) <= MAX_OPEN:
                return idx
            _, old = self._indexes.popitem(last=False)
        old.close()  # a thread still using it opens it again
        return idx

    # -- background (after delivery, APPEND, EXPUNGE) -------------------------------------------

    def later(self, root: Path, key: str, data: bytes) -> None:
        """Index this message soon, in the background thread (never blocks). Dropped when too much
        is waiting: the next SEARCH indexes it."""
        with self._lock:
            if self._queued_bytes + len(data) > QUEUE_BYTES:
                return
            self._queued_bytes += len(data)
            self._busy += 1
            self._start()
        self._queue.put((root, key, data))

    def forget_later(self, root: Path, keys: Iterable[str]) -> None:
        """Remove these messages' rows soon (expunged)."""
        with self._lock:
            self._start()
            for key in keys:
                self._busy += 1
                self._queue.put((root, key, None))

    def _backfill(self, root: Path, items: Sequence[tuple[str, int]], path_of: Callable[[int], str | None]) -> None:
        """Index these (key, UID) in the background, reading their files (found by path_of) there;
        those queued already are left alone."""
        with self._lock:
            self._start()
            for key, uid in items:
                if (root, key) in self._backlog:
                    continue
                self._backlog.add((root, key))
                self._busy += 1
                self._queue.put((root, key, functools.partial(path_of, uid)))

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._worker, name="fts-indexer", daemon=True)
            self._thread.start()

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            items = [item]
            # Gather for up to GATHER seconds: one transaction for many deliveries, not one each (FTS5
            # writes a segment per transaction and merges them as they pile up: one message at a
            # time cost about 0.9 ms of CPU per delivered message on the MX benchmark).
            until = time.monotonic() + GATHER
            while len(items) < BATCH:
                try:
                    nxt = self._queue.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                items.append(nxt)
            try:
                self._apply(items)
            except Exception:
                log.exception("background full-text indexing failed (the next SEARCH indexes)")
            finally:
                with self._lock:
                    self._busy -= len(items)
                    self._queued_bytes -= sum(len(d) for _, _, d in items if isinstance(d, bytes))
                    self._backlog.difference_update((root, key) for root, key, d in items if callable(d))
                    self._idle.notify_all()

    def _apply(self, items: list[_Item]) -> None:
        adds: dict[Path, list[tuple[str, textextract.Text | None]]] = {}
        drops: dict[Path, list[str]] = {}
        for root, key, data in items:
            if data is None:
                drops.setdefault(root, []).append(key)
                continue
            if callable(data):  # a SEARCH's backlog: read now (gone or renamed: the next SEARCH asks again)
                path = data()
                data = None if path is None else _read(path)
                if data is None:
                    continue
            adds.setdefault(root, []).append((key, extract(data)))
        for root, docs in adds.items():
            try:
                self.index(root).add(docs)
            except sqlite3.Error:
                log.exception("full-text index of %s not written", root)
        for root, keys in drops.items():
            try:
                self.index(root).remove(keys)
            except sqlite3.Error:
                log.exception("full-text index of %s not pruned", root)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the background queue is empty (tests, benchmarks, close)."""
        with self._lock:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def close(self) -> None:
        """Drop the queued work (a cache: the next SEARCH indexes what is missing), let the batch
        under way finish, stop the thread and close every file (blocks)."""
        dropped = octets = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                dropped += 1
                octets += len(item[2]) if isinstance(item[2], bytes) else 0
        with self._lock:
            self._busy -= dropped
            self._queued_bytes -= octets
            self._backlog.clear()
            self._idle.notify_all()
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join()
        self._thread = None
        with self._lock:
            indexes = list(self._indexes.values())
            self._indexes.clear()
        for idx in indexes:
            idx.close()

    # -- at SEARCH time ----------------------------------------------------------------------------

    def candidates(self, root: Path, uids: Mapping[str, int], path_of: Callable[[int], str | None],
                   terms: Sequence[Term]) -> set[str]:
        """Which of the messages `uids` (key -> UID) may hold every term (folded strings, all
        `usable`): index the missing ones first (their files found by `path_of(uid)`: None when
        gone), then ask the index. Keys that cannot be indexed are candidates. Blocks: run in a
        worker thread. Raises StoreError (then scan everything)."""
        try:
            return self._candidates(root, uids, path_of, terms)
        except (sqlite3.Error, OSError) as e:
            log.warning("full-text index of %s unavailable: %s", root, e)
            raise StoreError("full-text index unavailable") from e

    def _candidates(self, root: Path, uids: Mapping[str, int], path_of: Callable[[int], str | None],
                    terms: Sequence[Term]) -> set[str]:
        idx = self.index(root)
        known = idx.known(list(uids))
        missing = [k for k in uids if k not in known]
        unread: set[str] = set()
        if len(missing) > SYNC_INDEX:  # a new or lost index: answer as the scan does, fill it meanwhile
            self._backfill(root, [(k, uids[k]) for k in missing], path_of)
            unread.update(missing)
            missing = []
        for start in range(0, len(missing), BATCH):
            docs: list[tuple[str, textextract.Text | None]] = []
            for key in missing[start:start + BATCH]:
                path = path_of(uids[key])
                data = None if path is None else _read(path)
                if data is None:
                    unread.add(key)  # renamed or gone meanwhile: let the scan decide
                    continue
                docs.append((key, extract(data)))
            idx.add(docs)
        found = idx.matching(terms)
        return {k for k in uids if k in found or k in unread}


__all__ = ["FILENAME", "TEXT_LIMIT", "Fts", "FtsIndex", "Term", "extract", "usable"]
