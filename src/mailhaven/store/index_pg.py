"""The per-user mailbox index in PostgreSQL (`[storage] backend = "postgresql"`): index.IndexBackend.

Owns: the tables `mh_user` (one row per user: its change counter `version`, the last UIDVALIDITY
given, the subscription list), `mh_mailbox`, `mh_message`, `mh_expunged` (tombstones),
`mh_special_use` and `mh_meta`, created and upgraded through pg.Database.migrate ("index", STEPS);
`PgIndexes`, the IndexFactory that app.py hands the Store (a small psycopg 3 *sync* pool: the index
API is blocking and runs in worker threads), and `PgIndex`, one user's index; `import_dump`, the
write half of `mailhaven storage migrate` (index.Index.dump is the read half).
Does not own: the message files (still Maildir files under data_dir, on a path every node shares),
deciding what changed on disk (folder.py, mailbox.py), the async pool and schema versions (pg.py).

Semantics mirror the SQLite backend (index.py) exactly, so the same tests run on both:
- Every write is one transaction, and bumps the user's `mh_user.version` in it. data_version()
  returns a number that changes when the version moved by someone else's commit since the previous
  call: after its own commit an index records the version it wrote (when no one else's commit came
  in between), so its own writes are never taken for another process's (SQLite's `PRAGMA
  data_version` behaves the same way).
- UIDVALIDITY: `mh_user.last_uidvalidity`, raised in a transaction, so it stays unique and
  monotonic per user whatever node creates the folder. The file `<user root>/mailhaven-uidvalidity`
  is still read and written beside it (as the SQLite backend does), so a user whose rows were lost
  never gets an old UIDVALIDITY back.
- Mailbox ids are global (bigserial); a mailbox deleted and made again gets a new id, as in SQLite.

The inter-process lock (lock()/unlock()): several nodes may share the mail directory, maybe over
NFS where flock(2) cannot be trusted, so the flock of the SQLite backend is replaced (not
completed) by a session-level advisory lock of the user, `pg_advisory_lock(LOCK_CLASS << 32 | user
id)` with the user's own id from mh_user (no hash: two users never share a key, so the ordered
multi-account locks of mailbox.py cannot deadlock on a collision). lock() takes a connection from
the pool and keeps it until unlock(): every statement of the account operation runs on it, and when
the connection dies PostgreSQL drops the lock with it (a dead node never keeps a user locked). The
wait for the lock is bounded by LOCK_WAIT (then the operation fails temporarily); other statements
by [storage] timeout. Every psycopg error leaves as errors.DatabaseError (a temporary failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg_pool import ConnectionPool

from mailhaven import pg
from mailhaven.errors import DatabaseError
from mailhaven.store import index
from mailhaven.store.index import (
    IndexBackend,
    IndexDump,
    MailboxRow,
    MessageRow,
    file_uidvalidity,
    write_file_uidvalidity,
)

log = logging.getLogger(__name__)

PART = "index"  # its name in mailhaven_schema
STEPS = [
    # 1: users, mailboxes, messages, tombstones, special-use, meta.
    """
    CREATE TABLE mh_user (
        id bigserial PRIMARY KEY, name text UNIQUE NOT NULL, version bigint NOT NULL DEFAULT 0,
        last_uidvalidity bigint NOT NULL DEFAULT 0, subscriptions text[] NOT NULL DEFAULT '{}');
    CREATE TABLE mh_mailbox (
        id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES mh_user (id) ON DELETE CASCADE,
        name text NOT NULL, uidvalidity bigint NOT NULL, uidnext bigint NOT NULL,
        highestmodseq bigint NOT NULL, new_mtime bigint NOT NULL DEFAULT 0, cur_mtime bigint NOT NULL DEFAULT 0,
        msg_bytes bigint NOT NULL DEFAULT 0, msg_count bigint NOT NULL DEFAULT 0,
        vanished_floor bigint NOT NULL DEFAULT 0, UNIQUE (user_id, name));
    CREATE TABLE mh_message (
        mailbox_id bigint NOT NULL REFERENCES mh_mailbox (id) ON DELETE CASCADE, uid bigint NOT NULL,
        key text NOT NULL, sub text NOT NULL, suffix text NOT NULL, keywords text NOT NULL,
        modseq bigint NOT NULL, internaldate double precision NOT NULL, size bigint NOT NULL,
        unterminated smallint, PRIMARY KEY (mailbox_id, uid));
    CREATE INDEX mh_message_modseq ON mh_message (mailbox_id, modseq);
    CREATE INDEX mh_message_key ON mh_message (mailbox_id, key);
    CREATE TABLE mh_expunged (
        mailbox_id bigint NOT NULL REFERENCES mh_mailbox (id) ON DELETE CASCADE, uid bigint NOT NULL,
        modseq bigint NOT NULL, PRIMARY KEY (mailbox_id, uid));
    CREATE TABLE mh_special_use (
        user_id bigint NOT NULL REFERENCES mh_user (id) ON DELETE CASCADE, name text NOT NULL,
        use text NOT NULL, PRIMARY KEY (user_id, name));
    CREATE TABLE mh_meta (
        user_id bigint NOT NULL REFERENCES mh_user (id) ON DELETE CASCADE, k text NOT NULL,
        v text NOT NULL, PRIMARY KEY (user_id, k));
    """,
]
LOCK_CLASS = 0x4D48_4958  # "MHIX": high half of the bigint advisory key; the user id is the low half
LOCK_WAIT = 120.0  # seconds a process waits for another one's operation on the same user

Conn = psycopg.Connection[Any]
_MESSAGE_COLUMNS = "uid, key, sub, suffix, keywords, modseq, internaldate, size, unterminated"
_MAILBOX_COLUMNS = "id, name, uidvalidity, uidnext, highestmodseq, new_mtime, cur_mtime"


class PgIndexes:
    """The IndexFactory of the PostgreSQL backend: one sync pool for every user's index."""

    def __init__(self, database: pg.Database, *, owns_database: bool = False) -> None:
        self.database = database
        self._owns_database = owns_database  # close() closes it too (the CLI's, tests'; app.py closes its own)
        self._pool: ConnectionPool[Conn] | None = None
        self._timeout_ms = f"{int(database.timeout * 1000)}ms"

    async def open(self) -> None:
        """Create or upgrade the tables (pg.Database.migrate), then open the pool (its first
        connections are made in the background). Raises DatabaseError."""
        if self._pool is not None:
            return
        await self.database.migrate(PART, STEPS)
        db = self.database
        params = conninfo.conninfo_to_dict(db.dsn)
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = max(1, math.ceil(db.timeout))
        if "application_name" not in params:
            kwargs["application_name"] = f"{db.name}-index"
        timeout_ms = f"{int(db.timeout * 1000)}ms"

        def configure(conn: Conn) -> None:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout_ms,))

        pool: ConnectionPool[Conn] = ConnectionPool(
            # at least two: a COPY or MOVE between two users holds both their locks
            db.dsn, min_size=1, max_size=max(2, db.pool_size), kwargs=kwargs, open=False, timeout=db.timeout,
            name=f"{db.name}-index", configure=configure, check=ConnectionPool.check_connection)
        await asyncio.to_thread(pool.open, wait=False)
        self._pool = pool
        self._timeout_ms = timeout_ms

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.close)
        if self._owns_database:
            await self.database.close()

    def pool(self) -> ConnectionPool[Conn]:
        if self._pool is None:
            raise DatabaseError("the index pool is closed")
        return self._pool

    def __call__(self, user: str, user_root: Path, *, durable: bool) -> IndexBackend:
        return PgIndex(self, user, user_root, durable=durable)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as e:
        raise DatabaseError(pg.reason(e)) from e


class PgIndex:
    """One user's index in PostgreSQL (index.IndexBackend)."""

    def __init__(self, factory: PgIndexes, user: str, user_root: Path, *, durable: bool) -> None:
        self._factory = factory
        self.user = user
        self.root, self._durable = user_root, durable
        self._conn: Conn | None = None  # held from lock() to unlock()
        self._seen: dict[int, tuple[int, int]] = {}
        self._known: int | None = None  # mh_user.version as last read, or as our own last commit left it
        self._prefetched: int | None = None  # mh_user.version read by lock(), for the data_version() after it
        self._reported = 0
        with self._connection() as conn:
            conn.execute("INSERT INTO mh_user (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (user,))
            row = conn.execute("SELECT id FROM mh_user WHERE name = %s", (user,)).fetchone()
        if row is None:
            raise DatabaseError(f"no row for user {user}")
        self.user_id = int(row[0])

    # -- connections, transactions, the lock ------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Conn]:
        with _translated():
            if self._conn is not None:
                yield self._conn
            else:
                with self._factory.pool().connection() as conn:
                    yield conn

    def _one(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> tuple[Any, ...] | None:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Conn]:
        """One write transaction that also bumps the user's version (see the module doc)."""
        with self._connection() as conn:
            with conn.transaction():
                yield conn
                row = conn.execute("UPDATE mh_user SET version = version + 1 WHERE id = %s RETURNING version",
                                   (self.user_id,)).fetchone()
            version = int(row[0]) if row else 0
            if self._known is not None and version == self._known + 1:
                self._known = version  # ours alone: not a change by someone else

    def lock(self) -> None:
        if self._conn is not None:
            raise RuntimeError("PgIndex.lock is not reentrant")
        key = LOCK_CLASS << 32 | self.user_id
        with _translated():
            conn = self._factory.pool().getconn()
            try:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                if not (row and row[0]):  # held elsewhere: wait, longer than a statement may take
                    conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(LOCK_WAIT * 1000)}ms",))
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                    conn.execute("SELECT set_config('statement_timeout', %s, false)", (self._factory._timeout_ms,))
                # Read in a statement of its own, after the lock (a snapshot taken before it could
                # miss the commit of the holder that just released it); data_version() uses it.
                self._prefetched = self._version(conn)
            except BaseException:
                self._factory.pool().putconn(conn)
                raise
        self._conn = conn

    def unlock(self) -> None:
        self._prefetched = None
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_CLASS << 32 | self.user_id,))
        except psycopg.Error:
            # Never back into the pool still holding the lock: closed, the server drops it (the
            # pool discards a closed connection).
            with contextlib.suppress(psycopg.Error):
                conn.close()
        finally:
            with contextlib.suppress(DatabaseError):
                self._factory.pool().putconn(conn)

    def close(self) -> None:
        self.unlock()

    # -- account level ---------------------------------------------------------------------------

    def next_uidvalidity(self) -> int:
        """A UIDVALIDITY larger than any given before for this user (RFC 3501 §2.3.1.1)."""
        with self._tx() as conn:
            row = conn.execute("SELECT last_uidvalidity FROM mh_user WHERE id = %s FOR UPDATE",
                               (self.user_id,)).fetchone()
            last = max(int(row[0]) if row else 0, file_uidvalidity(self.root))
            value = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
            conn.execute("UPDATE mh_user SET last_uidvalidity = %s WHERE id = %s", (value, self.user_id))
        write_file_uidvalidity(self.root, value, durable=self._durable)
        return value

    def note_uidvalidity(self, value: int) -> None:
        row = self._one("SELECT last_uidvalidity FROM mh_user WHERE id = %s", (self.user_id,))
        if row is None or max(int(row[0]), file_uidvalidity(self.root)) < value:
            with self._tx() as conn:
                conn.execute("UPDATE mh_user SET last_uidvalidity = GREATEST(last_uidvalidity, %s) WHERE id = %s",
                             (value, self.user_id))
            write_file_uidvalidity(self.root, value, durable=self._durable)

    def usage(self) -> tuple[int, int]:
        row = self._one("SELECT COALESCE(SUM(msg_bytes), 0), COALESCE(SUM(msg_count), 0) FROM mh_mailbox"
                        " WHERE user_id = %s", (self.user_id,))
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def folder_usage(self) -> dict[str, tuple[int, int]]:
        return {str(name): (int(b), int(n)) for name, b, n in self._all(
            "SELECT name, msg_bytes, msg_count FROM mh_mailbox WHERE user_id = %s", (self.user_id,))}

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT v FROM mh_meta WHERE user_id = %s AND k = %s", (self.user_id, key))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        with self._tx() as conn:
            if value is None:
                conn.execute("DELETE FROM mh_meta WHERE user_id = %s AND k = %s", (self.user_id, key))
            else:
                conn.execute("INSERT INTO mh_meta (user_id, k, v) VALUES (%s, %s, %s) ON CONFLICT (user_id, k)"
                             " DO UPDATE SET v = EXCLUDED.v", (self.user_id, key, value))

    def special_uses(self) -> dict[str, str]:
        return {str(n): str(u) for n, u in self._all("SELECT name, use FROM mh_special_use WHERE user_id = %s",
                                                     (self.user_id,))}

    def set_special_use(self, name: str, use: str | None) -> None:
        with self._tx() as conn:
            if use is None:
                conn.execute("DELETE FROM mh_special_use WHERE user_id = %s AND name = %s", (self.user_id, name))
            else:
                conn.execute("INSERT INTO mh_special_use (user_id, name, use) VALUES (%s, %s, %s)"
                             " ON CONFLICT (user_id, name) DO UPDATE SET use = EXCLUDED.use",
                             (self.user_id, name, use))

    def subscriptions(self) -> list[str]:
        row = self._one("SELECT subscriptions FROM mh_user WHERE id = %s", (self.user_id,))
        return [] if row is None else [str(n) for n in row[0]]

    def set_subscriptions(self, names: list[str]) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE mh_user SET subscriptions = %s WHERE id = %s",
                         (list(dict.fromkeys(names)), self.user_id))

    # -- mailboxes ------------------------------------------------------------------------------

    def load(self, name: str) -> MailboxRow | None:
        row = self._one(f"SELECT {_MAILBOX_COLUMNS} FROM mh_mailbox WHERE user_id = %s AND name = %s",
                        (self.user_id, name))
        if row is None:
            return None
        found = MailboxRow(*row)
        self._seen[found.id] = (found.uidnext, found.highestmodseq)
        return found

    def mailbox_rows(self) -> list[MailboxRow]:
        return [MailboxRow(*r) for r in self._all(
            f"SELECT {_MAILBOX_COLUMNS} FROM mh_mailbox WHERE user_id = %s", (self.user_id,))]

    def last_seen(self, mailbox_id: int) -> tuple[int, int] | None:
        return self._seen.get(mailbox_id)

    def _version(self, conn: Conn) -> int:
        row = conn.execute("SELECT version FROM mh_user WHERE id = %s", (self.user_id,)).fetchone()
        return int(row[0]) if row else -1

    def data_version(self) -> int:
        version, self._prefetched = self._prefetched, None
        if version is None:
            with self._connection() as conn:
                version = self._version(conn)
        if version != self._known:
            self._known = version
            self._reported += 1
        return self._reported

    def known_keys(self, name: str, keys: Iterable[str]) -> set[str]:
        return {str(r[0]) for r in self._all(
            "SELECT m.key FROM mh_message m JOIN mh_mailbox b ON m.mailbox_id = b.id"
            " WHERE b.user_id = %s AND b.name = %s AND m.key = ANY(%s)", (self.user_id, name, list(keys)))}

    def changed_since(self, mailbox_id: int, modseq: int) -> tuple[list[MessageRow], int]:
        rows = self._all(f"SELECT {_MESSAGE_COLUMNS} FROM mh_message WHERE mailbox_id = %s AND modseq > %s"
                         " ORDER BY uid", (mailbox_id, modseq))
        count = self._one("SELECT msg_count FROM mh_mailbox WHERE id = %s", (mailbox_id,))
        return [_message(r) for r in rows], int(count[0]) if count else 0

    def uids(self, mailbox_id: int) -> set[int]:
        return {int(r[0]) for r in self._all("SELECT uid FROM mh_message WHERE mailbox_id = %s", (mailbox_id,))}

    def messages(self, mailbox_id: int) -> list[MessageRow]:
        return [_message(r) for r in self._all(
            f"SELECT {_MESSAGE_COLUMNS} FROM mh_message WHERE mailbox_id = %s ORDER BY uid", (mailbox_id,))]

    def create(self, name: str, uidvalidity: int, uidnext: int, highestmodseq: int,
               rows: Iterable[MessageRow] = ()) -> int:
        rows = list(rows)
        with self._tx() as conn:
            self._drop(conn, name)
            mailbox_id = self._insert_mailbox(conn, name, uidvalidity, uidnext, highestmodseq,
                                              sum(r[7] for r in rows), len(rows), highestmodseq)
            self._insert_messages(conn, mailbox_id, rows)
        self._seen[mailbox_id] = (uidnext, highestmodseq)
        return mailbox_id

    def _insert_mailbox(self, conn: Conn, name: str, uidvalidity: int, uidnext: int, highestmodseq: int,
                        msg_bytes: int, msg_count: int, vanished_floor: int, new_mtime: int = 0,
                        cur_mtime: int = 0) -> int:
        row = conn.execute(
            "INSERT INTO mh_mailbox (user_id, name, uidvalidity, uidnext, highestmodseq, msg_bytes, msg_count,"
            " vanished_floor, new_mtime, cur_mtime) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (self.user_id, name, uidvalidity, uidnext, highestmodseq, msg_bytes, msg_count, vanished_floor,
             new_mtime, cur_mtime)).fetchone()
        assert row is not None
        return int(row[0])

    @staticmethod
    def _insert_messages(conn: Conn, mailbox_id: int, rows: list[MessageRow]) -> None:
        if rows:
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO mh_message (mailbox_id, {_MESSAGE_COLUMNS}) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", [(mailbox_id, *r) for r in rows])

    def commit(self, mailbox_id: int, *, upserts: Iterable[MessageRow] = (), deletes: Iterable[int] = (),
               uidnext: int, highestmodseq: int, new_mtime: int, cur_mtime: int) -> None:
        upserts, deletes = list(upserts), list(deletes)
        with self._tx() as conn:
            touched = list({*deletes, *(r[0] for r in upserts)})
            old = conn.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM mh_message"
                               " WHERE mailbox_id = %s AND uid = ANY(%s)", (mailbox_id, touched)).fetchone()
            old_bytes, old_count = (int(old[0]), int(old[1])) if old else (0, 0)
            conn.execute("UPDATE mh_mailbox SET msg_bytes = msg_bytes + %s, msg_count = msg_count + %s WHERE id = %s",
                         (sum(r[7] for r in upserts) - old_bytes, len(upserts) - old_count, mailbox_id))
            if deletes:
                conn.execute("DELETE FROM mh_message WHERE mailbox_id = %s AND uid = ANY(%s)", (mailbox_id, deletes))
                # tombstones at the MODSEQ of this removal (never below it: RFC 7162 §3.2.5.2)
                conn.execute("INSERT INTO mh_expunged (mailbox_id, uid, modseq) SELECT %s, u, %s FROM unnest(%s::bigint[]) u"
                             " ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq",
                             (mailbox_id, highestmodseq, deletes))
                self._prune_tombstones(conn, mailbox_id)
            if upserts:
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO mh_message (mailbox_id, {_MESSAGE_COLUMNS}) VALUES"
                        " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (mailbox_id, uid) DO UPDATE SET"
                        " key = EXCLUDED.key, sub = EXCLUDED.sub, suffix = EXCLUDED.suffix,"
                        " keywords = EXCLUDED.keywords, modseq = EXCLUDED.modseq,"
                        " internaldate = EXCLUDED.internaldate, size = EXCLUDED.size,"
                        " unterminated = EXCLUDED.unterminated", [(mailbox_id, *r) for r in upserts])
            self._counters(conn, mailbox_id, uidnext, highestmodseq, new_mtime, cur_mtime)
        self._seen[mailbox_id] = (uidnext, highestmodseq)

    @staticmethod
    def _counters(conn: Conn, mailbox_id: int, uidnext: int, highestmodseq: int, new_mtime: int,
                  cur_mtime: int) -> None:
        conn.execute("UPDATE mh_mailbox SET uidnext = %s, highestmodseq = %s, new_mtime = %s, cur_mtime = %s"
                     " WHERE id = %s", (uidnext, highestmodseq, new_mtime, cur_mtime, mailbox_id))

    @staticmethod
    def _prune_tombstones(conn: Conn, mailbox_id: int) -> None:
        """As index.Index._prune_tombstones: past MAX_TOMBSTONES the oldest half goes, the floor rises."""
        row = conn.execute("SELECT COUNT(*) FROM mh_expunged WHERE mailbox_id = %s", (mailbox_id,)).fetchone()
        count = int(row[0]) if row else 0
        if count <= index.MAX_TOMBSTONES:
            return
        cut_row = conn.execute("SELECT modseq FROM mh_expunged WHERE mailbox_id = %s ORDER BY modseq"
                               " LIMIT 1 OFFSET %s", (mailbox_id, count - index.MAX_TOMBSTONES // 2 - 1)).fetchone()
        assert cut_row is not None
        cut = int(cut_row[0])
        conn.execute("DELETE FROM mh_expunged WHERE mailbox_id = %s AND modseq <= %s", (mailbox_id, cut))
        conn.execute("UPDATE mh_mailbox SET vanished_floor = GREATEST(vanished_floor, %s) WHERE id = %s",
                     (cut, mailbox_id))

    def vanished_since(self, mailbox_id: int, modseq: int) -> list[int] | None:
        row = self._one("SELECT vanished_floor FROM mh_mailbox WHERE id = %s", (mailbox_id,))
        if row is None or modseq < int(row[0]):
            return None
        return [int(r[0]) for r in self._all(
            "SELECT uid FROM mh_expunged WHERE mailbox_id = %s AND modseq > %s ORDER BY uid", (mailbox_id, modseq))]

    def commit_flags(self, mailbox_id: int, rows: Iterable[tuple[str, str, str, int, int]], *, uidnext: int,
                     highestmodseq: int, new_mtime: int, cur_mtime: int) -> None:
        rows = list(rows)
        with self._tx() as conn:
            if rows:
                with conn.cursor() as cur:
                    cur.executemany("UPDATE mh_message SET sub = %s, suffix = %s, keywords = %s, modseq = %s"
                                    " WHERE mailbox_id = %s AND uid = %s",
                                    [(sub, suffix, kw, modseq, mailbox_id, uid) for sub, suffix, kw, modseq, uid in rows])
            self._counters(conn, mailbox_id, uidnext, highestmodseq, new_mtime, cur_mtime)
        self._seen[mailbox_id] = (uidnext, highestmodseq)

    def set_unterminated(self, mailbox_id: int, rows: Iterable[tuple[int, int]]) -> None:
        rows = list(rows)
        with self._tx() as conn:
            if rows:
                with conn.cursor() as cur:
                    cur.executemany("UPDATE mh_message SET unterminated = %s WHERE mailbox_id = %s AND uid = %s",
                                    [(value, mailbox_id, uid) for value, uid in rows])

    def rename(self, old: str, new: str) -> None:
        """Rename a mailbox and all its inferiors (names starting with `old.`)."""
        with self._tx() as conn:
            for table in ("mh_mailbox", "mh_special_use"):
                found = conn.execute(
                    f"SELECT name FROM {table} WHERE user_id = %s AND (name = %s OR left(name, %s) = %s)",
                    (self.user_id, old, len(old) + 1, old + ".")).fetchall()
                for (name,) in found:
                    target = new + str(name)[len(old):]
                    if table == "mh_mailbox":
                        self._drop(conn, target)
                    else:
                        conn.execute("DELETE FROM mh_special_use WHERE user_id = %s AND name = %s",
                                     (self.user_id, target))
                    conn.execute(f"UPDATE {table} SET name = %s WHERE user_id = %s AND name = %s",
                                 (target, self.user_id, name))

    def delete(self, name: str) -> None:
        with self._tx() as conn:
            self._drop(conn, name)
            conn.execute("DELETE FROM mh_special_use WHERE user_id = %s AND name = %s", (self.user_id, name))

    def _drop(self, conn: Conn, name: str) -> None:
        # mh_message and mh_expunged rows go with it (ON DELETE CASCADE)
        conn.execute("DELETE FROM mh_mailbox WHERE user_id = %s AND name = %s", (self.user_id, name))

    def names(self) -> list[str]:
        return [str(r[0]) for r in self._all("SELECT name FROM mh_mailbox WHERE user_id = %s", (self.user_id,))]

    # -- migration -------------------------------------------------------------------------------

    def has_data(self) -> bool:
        """Whether this user has anything in PostgreSQL already (mailboxes, meta, special-use,
        subscriptions)."""
        row = self._one(
            "SELECT EXISTS (SELECT 1 FROM mh_mailbox WHERE user_id = %(u)s)"
            " OR EXISTS (SELECT 1 FROM mh_meta WHERE user_id = %(u)s)"
            " OR EXISTS (SELECT 1 FROM mh_special_use WHERE user_id = %(u)s)"
            " OR EXISTS (SELECT 1 FROM mh_user WHERE id = %(u)s AND cardinality(subscriptions) > 0)",
            {"u": self.user_id})
        return bool(row and row[0])

    def import_dump(self, dump: IndexDump) -> None:
        """Replace this user's index with `dump` (another backend's rows, ids aside), in one
        transaction."""
        with self._tx() as conn:
            conn.execute("DELETE FROM mh_mailbox WHERE user_id = %s", (self.user_id,))
            conn.execute("DELETE FROM mh_meta WHERE user_id = %s", (self.user_id,))
            conn.execute("DELETE FROM mh_special_use WHERE user_id = %s", (self.user_id,))
            conn.execute("UPDATE mh_user SET last_uidvalidity = GREATEST(last_uidvalidity, %s), subscriptions = %s"
                         " WHERE id = %s", (dump.last_uidvalidity, list(dict.fromkeys(dump.subscriptions)),
                                            self.user_id))
            for k, v in dump.meta.items():
                conn.execute("INSERT INTO mh_meta (user_id, k, v) VALUES (%s, %s, %s)", (self.user_id, k, v))
            for name, use in dump.special_use.items():
                conn.execute("INSERT INTO mh_special_use (user_id, name, use) VALUES (%s, %s, %s)",
                             (self.user_id, name, use))
            for box in dump.mailboxes:
                r = box.row
                mailbox_id = self._insert_mailbox(conn, r.name, r.uidvalidity, r.uidnext, r.highestmodseq,
                                                  box.msg_bytes, box.msg_count, box.vanished_floor,
                                                  r.new_mtime, r.cur_mtime)
                self._insert_messages(conn, mailbox_id, box.messages)
                if box.expunged:
                    with conn.cursor() as cur:
                        cur.executemany("INSERT INTO mh_expunged (mailbox_id, uid, modseq) VALUES (%s, %s, %s)",
                                        [(mailbox_id, u, m) for u, m in box.expunged])


def read_usage(dsn: str, user: str, *, timeout: float = 5.0) -> dict[str, tuple[int, int, frozenset[str]]] | None:
    """For a reader outside the server (`mailhaven quota show`, as index.read_usage for SQLite):
    each indexed folder's octets, messages and row keys; None when the user has no index here yet.
    Blocking. Raises DatabaseError."""
    with _translated(), psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, math.ceil(timeout))) as conn:
        if conn.execute("SELECT to_regclass('mh_user')").fetchone() in (None, (None,)):
            return None  # never started with the PostgreSQL index
        row = conn.execute("SELECT id FROM mh_user WHERE name = %s", (user,)).fetchone()
        if row is None:
            return None
        totals = {str(n): (int(b), int(c)) for n, b, c in conn.execute(
            "SELECT name, msg_bytes, msg_count FROM mh_mailbox WHERE user_id = %s", (row[0],))}
        keys: dict[str, set[str]] = {name: set() for name in totals}
        for name, key in conn.execute("SELECT b.name, m.key FROM mh_message m JOIN mh_mailbox b ON"
                                      " m.mailbox_id = b.id WHERE b.user_id = %s", (row[0],)):
            keys[str(name)].add(str(key))
    return {name: (b, n, frozenset(keys[name])) for name, (b, n) in totals.items()}


def _message(r: tuple[Any, ...]) -> MessageRow:
    return (int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), float(r[6]), int(r[7]),
            None if r[8] is None else int(r[8]))


__all__ = ["LOCK_CLASS", "PART", "STEPS", "PgIndex", "PgIndexes", "read_usage"]
