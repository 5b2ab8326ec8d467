"""The per-user index seam (`IndexBackend`, `IndexFactory`) and its SQLite implementation (WAL):
mailbox UIDVALIDITY/UIDNEXT/HIGHESTMODSEQ, message rows, tombstones, special-use, meta and the
subscription list.

Owns: the interface every index backend satisfies (`IndexBackend`; the PostgreSQL one is
index_pg.py, chosen by app.py through the Store's `indexes` factory, so protocol code never
knows), the SQLite schema and every SQLite statement, and the SQLite backend's exclusion of other
processes (`lock()`: an flock(2) on `<user root>/mailhaven-lock`).
Does not own: deciding what changed on disk (mailbox.py); the index never owns a message, it is a
cache of the Maildir that can be rebuilt (uidlist.py keeps UIDs across a rebuild).

All methods are blocking and must be called from a worker thread, one at a time (the account
lock in mailbox.py serialises them), between lock() and unlock(). File:
`<user root>/mailhaven-index.sqlite`; the subscription list stays in Dovecot's `subscriptions`
file beside it (one name per line), read and written through this interface.

Every write is one transaction that either commits or is rolled back (also when COMMIT itself
fails: SQLite may leave the transaction open then). SQLite's "database or disk is full"
(SQLITE_FULL, or the WAL index that cannot grow) is raised as errors.StorageFull, a temporary
failure; reading needs no space.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mailhaven.errors import StorageFull, no_space
from mailhaven.store import maildir

log = logging.getLogger(__name__)
FILENAME = "mailhaven-index.sqlite"
UIDVALIDITY_FILENAME = "mailhaven-uidvalidity"
SUBSCRIPTIONS_FILENAME = "subscriptions"
LOCK_FILENAME = "mailhaven-lock"
# 2: message.unterminated (1 = the file does not end with LF; NULL = not known yet: a row of a
# version 1 index, filled in when its folder is next opened).
# 3: mailbox.msg_bytes/msg_count, each folder's message octets and count (the quota's usage, kept
# in the same transaction as the rows they sum; computed from the rows by the migration).
# 4: expunged (tombstones: each removed UID with the MODSEQ of its removal, for QRESYNC's VANISHED,
# RFC 7162 §3.2) and mailbox.vanished_floor (tombstones are complete above it; a migrated or
# rebuilt mailbox starts it at its HIGHESTMODSEQ, pruning raises it).
SCHEMA_VERSION = "4"
MAX_TOMBSTONES = 50_000  # per mailbox; past it the oldest half goes and vanished_floor rises

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mailbox (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    highestmodseq INTEGER NOT NULL,
    new_mtime INTEGER NOT NULL DEFAULT 0,
    cur_mtime INTEGER NOT NULL DEFAULT 0,
    msg_bytes INTEGER NOT NULL DEFAULT 0,
    msg_count INTEGER NOT NULL DEFAULT 0,
    vanished_floor INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS expunged (
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS message (
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    key TEXT NOT NULL,
    sub TEXT NOT NULL,
    suffix TEXT NOT NULL,
    keywords TEXT NOT NULL,
    modseq INTEGER NOT NULL,
    internaldate REAL NOT NULL,
    size INTEGER NOT NULL,
    unterminated INTEGER,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS special_use (name TEXT PRIMARY KEY, use TEXT NOT NULL);
"""

# (uid, key, sub, suffix, keywords, modseq, internaldate, size, unterminated: 0, 1 or None = unknown)
MessageRow = tuple[int, str, str, str, str, int, float, int, int | None]


@dataclass
class MailboxRow:
    id: int
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    new_mtime: int
    cur_mtime: int


@dataclass
class MailboxDump:
    """One mailbox of an index, whole (for `mailhaven storage migrate`)."""

    row: MailboxRow
    msg_bytes: int
    msg_count: int
    vanished_floor: int
    messages: list[MessageRow]
    expunged: list[tuple[int, int]]  # (uid, modseq of its removal)


@dataclass
class IndexDump:
    """Everything one user's index holds, to copy it into another backend."""

    last_uidvalidity: int
    meta: dict[str, str] = field(default_factory=dict)
    special_use: dict[str, str] = field(default_factory=dict)
    subscriptions: list[str] = field(default_factory=list)
    mailboxes: list[MailboxDump] = field(default_factory=list)


class IndexBackend(Protocol):
    """One user's index, as mailbox.py and folder.py use it (blocking; one caller at a time).

    Every write is one transaction. `data_version()` changes when another process (or node)
    committed to this user's index since the previous call, never for this object's own writes;
    `last_seen(id)` is (UIDNEXT, HIGHESTMODSEQ) of a mailbox as this object last read or wrote it.
    lock()/unlock() bracket every use: they exclude the other processes (and nodes) that share
    this user's index, and are not reentrant."""

    def lock(self) -> None: ...
    def unlock(self) -> None: ...
    def close(self) -> None: ...
    def next_uidvalidity(self) -> int: ...
    def note_uidvalidity(self, value: int) -> None: ...
    def usage(self) -> tuple[int, int]: ...
    def folder_usage(self) -> dict[str, tuple[int, int]]: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str | None) -> None: ...
    def special_uses(self) -> dict[str, str]: ...
    def set_special_use(self, name: str, use: str | None) -> None: ...
    def subscriptions(self) -> list[str]: ...
    def set_subscriptions(self, names: list[str]) -> None: ...
    def load(self, name: str) -> MailboxRow | None: ...
    def mailbox_rows(self) -> list[MailboxRow]: ...
    def last_seen(self, mailbox_id: int) -> tuple[int, int] | None: ...
    def data_version(self) -> int: ...
    def known_keys(self, name: str, keys: Iterable[str]) -> set[str]: ...
    def changed_since(self, mailbox_id: int, modseq: int) -> tuple[list[MessageRow], int]: ...
    def uids(self, mailbox_id: int) -> set[int]: ...
    def messages(self, mailbox_id: int) -> Iterable[MessageRow]: ...
    def create(self, name: str, uidvalidity: int, uidnext: int, highestmodseq: int,
               rows: Iterable[MessageRow] = ()) -> int: ...
    def commit(self, mailbox_id: int, *, upserts: Iterable[MessageRow] = (), deletes: Iterable[int] = (),
               uidnext: int, highestmodseq: int, new_mtime: int, cur_mtime: int) -> None: ...
    def vanished_since(self, mailbox_id: int, modseq: int) -> list[int] | None: ...
    def commit_flags(self, mailbox_id: int, rows: Iterable[tuple[str, str, str, int, int]], *, uidnext: int,
                     highestmodseq: int, new_mtime: int, cur_mtime: int) -> None: ...
    def set_unterminated(self, mailbox_id: int, rows: Iterable[tuple[int, int]]) -> None: ...
    def rename(self, old: str, new: str) -> None: ...
    def delete(self, name: str) -> None: ...
    def names(self) -> list[str]: ...


class IndexFactory(Protocol):
    """Makes the index of each user (the Store holds one; app.py picks it from [storage] backend).
    open() at Store.start, close() at Store.close (on the event loop); the call itself is blocking
    (in a worker thread, from Account._ready)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def __call__(self, user: str, user_root: Path, *, durable: bool) -> IndexBackend: ...


class SqliteIndexes:
    """The default IndexFactory: `<user root>/mailhaven-index.sqlite` per user."""

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def __call__(self, user: str, user_root: Path, *, durable: bool) -> IndexBackend:
        return Index(user_root, durable=durable)


class Index:
    """The SQLite IndexBackend of one user."""

    def __init__(self, user_root: Path, *, durable: bool) -> None:
        self.root = user_root
        self.path = user_root / FILENAME
        self._lock_fd = -1
        self._durable = durable
        self.exclusive = False
        # mailbox id -> (uidnext, highestmodseq) as this connection last read or wrote them: a row
        # that differs was changed by another process (see last_seen).
        self._seen: dict[int, tuple[int, int]] = {}
        try:
            self._db = self._open(exclusive=False)
        except StorageFull:
            # The WAL index (`-shm`, 32 kB) cannot be created on a full disk. In exclusive locking
            # mode SQLite keeps it in memory instead, so the index can be read (and written once
            # deleting mail made room); other programs cannot open the index until it is closed.
            self._db = self._open(exclusive=True)
            self.exclusive = True
            log.warning("store: %s opened in exclusive mode: the disk is full", self.path)

    def _open(self, *, exclusive: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if exclusive:
                db.execute("PRAGMA locking_mode=EXCLUSIVE")  # before WAL is first used: no -shm file
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed UID assignment survives power loss, so UIDs are never handed out twice.
            db.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'OFF'}")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._db = db
            self._migrate()
        except sqlite3.Error as e:
            db.close()
            _raise_translated(e)
            raise
        except BaseException:
            db.close()
            raise
        return db

    def _migrate(self) -> None:
        """Bring an index written by an earlier version up to SCHEMA_VERSION, keeping its rows (the
        keywords live only here, so an index is migrated, never rebuilt)."""
        with self._tx():
            row = self._db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
            if row is None:  # a new file: _SCHEMA made the current tables
                self._db.execute("INSERT INTO meta (k, v) VALUES ('schema', ?)", (SCHEMA_VERSION,))
                return
            if row[0] == "1":
                columns = {r[1] for r in self._db.execute("PRAGMA table_info(message)")}
                if "unterminated" not in columns:
                    self._db.execute("ALTER TABLE message ADD COLUMN unterminated INTEGER")  # NULL: unknown
            if row[0] in ("1", "2"):
                columns = {r[1] for r in self._db.execute("PRAGMA table_info(mailbox)")}
                for column in ("msg_bytes", "msg_count"):
                    if column not in columns:
                        self._db.execute(f"ALTER TABLE mailbox ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
                self._db.execute(
                    "UPDATE mailbox SET"
                    " msg_bytes=(SELECT COALESCE(SUM(size), 0) FROM message WHERE mailbox_id=mailbox.id),"
                    " msg_count=(SELECT COUNT(*) FROM message WHERE mailbox_id=mailbox.id)")
            if row[0] in ("1", "2", "3"):
                columns = {r[1] for r in self._db.execute("PRAGMA table_info(mailbox)")}
                if "vanished_floor" not in columns:
                    self._db.execute("ALTER TABLE mailbox ADD COLUMN vanished_floor INTEGER NOT NULL DEFAULT 0")
                # nothing is known of the removals before: complete only above today's HIGHESTMODSEQ
                self._db.execute("UPDATE mailbox SET vanished_floor=highestmodseq")
                self._db.execute("UPDATE meta SET v=? WHERE k='schema'", (SCHEMA_VERSION,))

    def close(self) -> None:
        self._db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def lock(self) -> None:
        """Exclude the other processes of this machine: an exclusive flock(2) on
        `<user root>/mailhaven-lock` (opened once, kept open until close())."""
        if self._lock_fd < 0:
            self._lock_fd = os.open(self.root / LOCK_FILENAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- account level ---------------------------------------------------------------------------

    def next_uidvalidity(self) -> int:
        """A UIDVALIDITY larger than any given before for this user (RFC 3501 §2.3.1.1).

        Time based, and above the last one recorded both here and in the small file
        `mailhaven-uidvalidity` (like Dovecot's dovecot-uidvalidity), which survives the loss of the
        index, so a folder rebuilt without its UIDs never gets its old UIDVALIDITY back."""
        row = self._db.execute("SELECT v FROM meta WHERE k='last_uidvalidity'").fetchone()
        last = max(int(row[0]) if row else 0, self._file_uidvalidity())
        value = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
        self._remember(value)
        return value

    def _file_uidvalidity(self) -> int:
        return file_uidvalidity(self.root)

    def _remember(self, value: int) -> None:
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('last_uidvalidity', ?)",
                             (str(value),))
        write_file_uidvalidity(self.root, value, durable=self._durable)

    def note_uidvalidity(self, value: int) -> None:
        """Remember a UIDVALIDITY imported from disk so later ones are larger."""
        row = self._db.execute("SELECT v FROM meta WHERE k='last_uidvalidity'").fetchone()
        if max(int(row[0]) if row else 0, self._file_uidvalidity()) < value:
            self._remember(value)

    def usage(self) -> tuple[int, int]:
        """(octets, messages) of every indexed folder: the sum of the per-folder totals kept with
        the rows (one row per folder is read, never the messages)."""
        row = self._db.execute("SELECT COALESCE(SUM(msg_bytes), 0), COALESCE(SUM(msg_count), 0) FROM mailbox"
                               ).fetchone()
        return int(row[0]), int(row[1])

    def folder_usage(self) -> dict[str, tuple[int, int]]:
        """Each indexed folder's (octets, messages)."""
        return {name: (int(b), int(n)) for name, b, n in
                self._db.execute("SELECT name, msg_bytes, msg_count FROM mailbox")}

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        with self._tx():
            if value is None:
                self._db.execute("DELETE FROM meta WHERE k=?", (key,))
            else:
                self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    def special_uses(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT name, use FROM special_use").fetchall())

    def set_special_use(self, name: str, use: str | None) -> None:
        with self._tx():
            if use is None:
                self._db.execute("DELETE FROM special_use WHERE name=?", (name,))
            else:
                self._db.execute("INSERT OR REPLACE INTO special_use (name, use) VALUES (?, ?)", (name, use))

    def subscriptions(self) -> list[str]:
        """The subscription list in file order (Dovecot/Courier `subscriptions`: one name a line;
        Dovecot 2.x's "V\t2" form with TAB as the separator is read too)."""
        return read_subscriptions(self.root)

    def set_subscriptions(self, names: list[str]) -> None:
        data = "".join(s + "\n" for s in dict.fromkeys(names)).encode("utf-8")
        try:
            maildir.atomic_write(self.root / SUBSCRIPTIONS_FILENAME, data, fsync=self._durable)
        except OSError as e:
            if no_space(e):
                raise StorageFull() from e
            raise

    def dump(self) -> IndexDump:
        """Everything this index holds (`mailhaven storage migrate`)."""
        meta = dict(self._db.execute("SELECT k, v FROM meta WHERE k NOT IN ('schema', 'last_uidvalidity')"))
        row = self._db.execute("SELECT v FROM meta WHERE k='last_uidvalidity'").fetchone()
        out = IndexDump(max(int(row[0]) if row else 0, self._file_uidvalidity()), meta, self.special_uses(),
                        self.subscriptions())
        for r in self._db.execute("SELECT id, name, uidvalidity, uidnext, highestmodseq, new_mtime, cur_mtime,"
                                  " msg_bytes, msg_count, vanished_floor FROM mailbox ORDER BY id").fetchall():
            box = MailboxRow(*r[:7])
            tombs = [(int(u), int(m)) for u, m in self._db.execute(
                "SELECT uid, modseq FROM expunged WHERE mailbox_id=? ORDER BY uid", (box.id,))]
            out.mailboxes.append(MailboxDump(box, int(r[7]), int(r[8]), int(r[9]), list(self.messages(box.id)), tombs))
        return out

    # -- mailboxes ------------------------------------------------------------------------------

    def load(self, name: str) -> MailboxRow | None:
        row = self._db.execute(
            "SELECT id, name, uidvalidity, uidnext, highestmodseq, new_mtime, cur_mtime FROM mailbox"
            " WHERE name=?", (name,)).fetchone()
        if not row:
            return None
        found = MailboxRow(*row)
        self._seen[found.id] = (found.uidnext, found.highestmodseq)
        return found

    def mailbox_rows(self) -> list[MailboxRow]:
        """Every mailbox row (a few per user): what another process may have changed."""
        return [MailboxRow(*r) for r in self._db.execute(
            "SELECT id, name, uidvalidity, uidnext, highestmodseq, new_mtime, cur_mtime FROM mailbox")]

    def last_seen(self, mailbox_id: int) -> tuple[int, int] | None:
        """(UIDNEXT, HIGHESTMODSEQ) of a mailbox as this connection last read or wrote them. A row
        that differs was changed by another process: it added, removed or changed messages (each
        such change moves HIGHESTMODSEQ up; what does not, a file moved from new/ to cur/ or the
        directory mtimes, the next scan of the directories finds)."""
        return self._seen.get(mailbox_id)

    def data_version(self) -> int:
        """Changes when another connection (another process) committed to this index since the last
        call; never for this connection's own writes (SQLite `PRAGMA data_version`)."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def known_keys(self, name: str, keys: Iterable[str]) -> set[str]:
        """Which of these message keys the mailbox `name` has rows for."""
        keys = list(keys)
        found: set[str] = set()
        for i in range(0, len(keys), 500):  # below SQLite's limit of bound parameters
            chunk = keys[i:i + 500]
            found.update(r[0] for r in self._db.execute(
                "SELECT message.key FROM message JOIN mailbox ON message.mailbox_id=mailbox.id"
                f" WHERE mailbox.name=? AND message.key IN ({','.join('?' * len(chunk))})", (name, *chunk)))
        return found

    def changed_since(self, mailbox_id: int, modseq: int) -> tuple[list[MessageRow], int]:
        """(the rows written with a MODSEQ above `modseq`, the folder's message count): what another
        process added or changed since this one saw HIGHESTMODSEQ `modseq`; the count tells
        whether it also removed rows (then see uids())."""
        rows = self._db.execute(
            "SELECT uid, key, sub, suffix, keywords, modseq, internaldate, size, unterminated FROM message"
            " WHERE mailbox_id=? AND modseq>? ORDER BY uid", (mailbox_id, modseq)).fetchall()
        count = self._db.execute("SELECT msg_count FROM mailbox WHERE id=?", (mailbox_id,)).fetchone()
        return rows, int(count[0]) if count else 0

    def uids(self, mailbox_id: int) -> set[int]:
        return {r[0] for r in self._db.execute("SELECT uid FROM message WHERE mailbox_id=?", (mailbox_id,))}

    def messages(self, mailbox_id: int) -> Iterator[MessageRow]:
        """The folder's rows by UID, one at a time (not a list of them all: a 10,000-message folder
        would leave megabytes of freed rows scattered among the ones it keeps). Run no other
        statement on this index before the iteration ends."""
        return iter(self._db.execute(
            "SELECT uid, key, sub, suffix, keywords, modseq, internaldate, size, unterminated FROM message"
            " WHERE mailbox_id=? ORDER BY uid", (mailbox_id,)))

    def create(self, name: str, uidvalidity: int, uidnext: int, highestmodseq: int,
               rows: Iterable[MessageRow] = ()) -> int:
        """Create (or replace) a mailbox row with its messages, in one transaction."""
        rows = list(rows)
        with self._tx():
            self._drop(name)
            cur = self._db.execute(
                "INSERT INTO mailbox (name, uidvalidity, uidnext, highestmodseq, msg_bytes, msg_count,"
                " vanished_floor) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, uidvalidity, uidnext, highestmodseq, sum(r[7] for r in rows), len(rows), highestmodseq))
            mailbox_id = int(cur.lastrowid or 0)
            self._db.executemany(
                "INSERT INTO message (mailbox_id, uid, key, sub, suffix, keywords, modseq, internaldate,"
                " size, unterminated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", ((mailbox_id, *r) for r in rows))
        self._seen[mailbox_id] = (uidnext, highestmodseq)
        return mailbox_id

    def commit(self, mailbox_id: int, *, upserts: Iterable[MessageRow] = (), deletes: Iterable[int] = (),
               uidnext: int, highestmodseq: int, new_mtime: int, cur_mtime: int) -> None:
        """Apply one batch of message changes and the mailbox counters atomically (the folder's
        octet and message totals move by what the batch removed and added: the sizes of the rows
        it replaces or deletes are read first, by key, never by a scan)."""
        upserts, deletes = list(upserts), list(deletes)
        with self._tx():
            old_bytes = old_count = 0
            for uid in {*deletes, *(r[0] for r in upserts)}:
                row = self._db.execute("SELECT size FROM message WHERE mailbox_id=? AND uid=?",
                                       (mailbox_id, uid)).fetchone()
                if row is not None:
                    old_bytes, old_count = old_bytes + int(row[0]), old_count + 1
            self._db.execute("UPDATE mailbox SET msg_bytes=msg_bytes+?, msg_count=msg_count+? WHERE id=?",
                             (sum(r[7] for r in upserts) - old_bytes, len(upserts) - old_count, mailbox_id))
            self._db.executemany("DELETE FROM message WHERE mailbox_id=? AND uid=?",
                                 ((mailbox_id, u) for u in deletes))
            if deletes:  # tombstones at the MODSEQ of this removal (never below it: RFC 7162 §3.2.5.2)
                self._db.executemany("INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
                                     ((mailbox_id, u, highestmodseq) for u in deletes))
                self._prune_tombstones(mailbox_id)
            self._db.executemany(
                "INSERT OR REPLACE INTO message (mailbox_id, uid, key, sub, suffix, keywords, modseq,"
                " internaldate, size, unterminated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((mailbox_id, *r) for r in upserts))
            self._db.execute(
                "UPDATE mailbox SET uidnext=?, highestmodseq=?, new_mtime=?, cur_mtime=? WHERE id=?",
                (uidnext, highestmodseq, new_mtime, cur_mtime, mailbox_id))
        self._seen[mailbox_id] = (uidnext, highestmodseq)

    def _prune_tombstones(self, mailbox_id: int) -> None:
        """Past MAX_TOMBSTONES, forget the oldest half and raise vanished_floor to the newest MODSEQ
        forgotten, so no one is told "nothing vanished" for a span the tombstones no longer cover."""
        (count,) = self._db.execute("SELECT COUNT(*) FROM expunged WHERE mailbox_id=?", (mailbox_id,)).fetchone()
        if count <= MAX_TOMBSTONES:
            return
        (cut,) = self._db.execute("SELECT modseq FROM expunged WHERE mailbox_id=? ORDER BY modseq LIMIT 1 OFFSET ?",
                                  (mailbox_id, count - MAX_TOMBSTONES // 2 - 1)).fetchone()
        self._db.execute("DELETE FROM expunged WHERE mailbox_id=? AND modseq<=?", (mailbox_id, cut))
        self._db.execute("UPDATE mailbox SET vanished_floor=MAX(vanished_floor, ?) WHERE id=?", (cut, mailbox_id))

    def vanished_since(self, mailbox_id: int, modseq: int) -> list[int] | None:
        """UIDs removed at a MODSEQ above `modseq`, ascending; None when the tombstones do not reach
        back that far (below vanished_floor: a rebuilt, migrated or pruned mailbox)."""
        row = self._db.execute("SELECT vanished_floor FROM mailbox WHERE id=?", (mailbox_id,)).fetchone()
        if row is None or modseq < int(row[0]):
            return None
        return [int(r[0]) for r in self._db.execute(
            "SELECT uid FROM expunged WHERE mailbox_id=? AND modseq>? ORDER BY uid", (mailbox_id, modseq))]

    def commit_flags(self, mailbox_id: int, rows: Iterable[tuple[str, str, str, int, int]], *, uidnext: int,
                     highestmodseq: int, new_mtime: int, cur_mtime: int) -> None:
        """Update the flag columns of existing messages, rows = (sub, suffix, keywords, modseq, uid),
        and the mailbox counters, atomically (cheaper than commit()'s full-row replace)."""
        with self._tx():
            self._db.executemany(
                "UPDATE message SET sub=?, suffix=?, keywords=?, modseq=? WHERE mailbox_id=? AND uid=?",
                ((sub, suffix, kw, modseq, mailbox_id, uid) for sub, suffix, kw, modseq, uid in rows))
            self._db.execute(
                "UPDATE mailbox SET uidnext=?, highestmodseq=?, new_mtime=?, cur_mtime=? WHERE id=?",
                (uidnext, highestmodseq, new_mtime, cur_mtime, mailbox_id))
        self._seen[mailbox_id] = (uidnext, highestmodseq)

    def set_unterminated(self, mailbox_id: int, rows: Iterable[tuple[int, int]]) -> None:
        """Record `unterminated` of messages that had it unknown, rows = (unterminated, uid)."""
        with self._tx():
            self._db.executemany("UPDATE message SET unterminated=? WHERE mailbox_id=? AND uid=?",
                                 ((value, mailbox_id, uid) for value, uid in rows))

    def rename(self, old: str, new: str) -> None:
        """Rename a mailbox and all its inferiors (names starting with `old.`)."""
        with self._tx():
            for table in ("mailbox", "special_use"):
                rows = self._db.execute(
                    f"SELECT name FROM {table} WHERE name=? OR substr(name, 1, ?)=?",
                    (old, len(old) + 1, old + ".")).fetchall()
                for (name,) in rows:
                    target = new + name[len(old):]
                    if table == "mailbox":
                        self._drop(target)
                    else:
                        self._db.execute("DELETE FROM special_use WHERE name=?", (target,))
                    self._db.execute(f"UPDATE {table} SET name=? WHERE name=?", (target, name))

    def delete(self, name: str) -> None:
        with self._tx():
            self._drop(name)
            self._db.execute("DELETE FROM special_use WHERE name=?", (name,))

    def _drop(self, name: str) -> None:
        old = self._db.execute("SELECT id FROM mailbox WHERE name=?", (name,)).fetchone()
        if old:
            self._db.execute("DELETE FROM message WHERE mailbox_id=?", (old[0],))
            self._db.execute("DELETE FROM expunged WHERE mailbox_id=?", (old[0],))
            self._db.execute("DELETE FROM mailbox WHERE id=?", (old[0],))

    def names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM mailbox")]

    def _tx(self) -> _Tx:
        return _Tx(self._db)


def file_uidvalidity(user_root: Path) -> int:
    """The last UIDVALIDITY recorded in `<user root>/mailhaven-uidvalidity` (0: none)."""
    try:
        text = (user_root / UIDVALIDITY_FILENAME).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return 0
    return int(text) if text.isdigit() and len(text) < 11 else 0


def write_file_uidvalidity(user_root: Path, value: int, *, durable: bool) -> None:
    try:
        maildir.atomic_write(user_root / UIDVALIDITY_FILENAME, f"{value}\n".encode(), fsync=durable)
    except OSError as e:
        if no_space(e):
            raise StorageFull() from e
        raise


def read_subscriptions(user_root: Path) -> list[str]:
    """The names in `<user root>/subscriptions` (none when there is no such file)."""
    try:
        text = (user_root / SUBSCRIPTIONS_FILENAME).read_text("utf-8", "replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    if lines and lines[0] == "V\t2":  # Dovecot 2.x: hierarchy separated by TAB
        return [line.replace("\t", ".") for line in lines[1:] if line]
    return [line for line in lines if line]


def read_usage(user_root: Path) -> dict[str, tuple[int, int, frozenset[str]]] | None:
    """For a reader outside the server (`mailhaven quota show`): each indexed folder's octets,
    messages and row keys, read-only (the server may be writing; an index of any schema version);
    None when the user has no index yet. Blocking."""
    path = user_root / FILENAME
    if not path.exists():
        return None
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        totals = {name: (int(b), int(n)) for name, b, n in db.execute(
            "SELECT mailbox.name, COALESCE(SUM(message.size), 0), COUNT(message.uid) FROM mailbox"
            " LEFT JOIN message ON message.mailbox_id=mailbox.id GROUP BY mailbox.id")}
        keys: dict[str, set[str]] = {name: set() for name in totals}
        for name, key in db.execute("SELECT mailbox.name, message.key FROM message JOIN mailbox"
                                    " ON message.mailbox_id=mailbox.id"):
            keys[name].add(key)
    finally:
        db.close()
    return {name: (b, n, frozenset(keys[name])) for name, (b, n) in totals.items()}


# SQLite result codes meaning "no space": SQLITE_FULL (13, also its extended forms) and
# SQLITE_IOERR_SHMSIZE (the WAL index file could not grow).
_SQLITE_FULL = 13
_SQLITE_IOERR_SHMSIZE = 10 | (19 << 8)


def _raise_translated(e: sqlite3.Error) -> None:
    """Raise StorageFull for SQLite's "database or disk is full"; return for any other error."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF == _SQLITE_FULL or code == _SQLITE_IOERR_SHMSIZE):
        raise StorageFull() from e


class _Tx:
    """One write transaction: COMMIT, or ROLLBACK on any failure (COMMIT's own included)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            _raise_translated(e)
            raise

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as e:
                self._rollback()
                _raise_translated(e)
                raise
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            _raise_translated(exc)

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolled back on its own, or will when the connection is next used
