"""PostgreSQL, for config `[storage] backend = "postgresql"`: the shared database of several nodes.

Owns: the connection pool (`Database`: psycopg 3's async pool, opened by app.run after root is
dropped and closed at stop), the schema's versions (`Database.migrate`: each part that keeps state
here names its ordered steps; they run once, in a transaction, under an advisory lock, so nodes
starting together neither race nor apply a step twice, and a database upgraded by a newer
Mailhaven is refused rather than misread), and what a database failure means to us: every psycopg
error leaves as `errors.DatabaseError`, a TempFailure (451 4.3.0), with libpq's words for the log.
Does not own: the tables of each part (policy/greylist_pg.py, ...), the choice of backend
(config.py `[storage]`, app.py), the SQLite files of the embedded default.

psycopg is an optional dependency (`mailhaven[postgresql]`): it is imported here and by the
modules that use this one, never by the protocol code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg_pool import AsyncConnectionPool

from mailhaven.config import StorageConfig
from mailhaven.errors import DatabaseError

log = logging.getLogger("mailhaven.pg")

SCHEMA_TABLE = "mailhaven_schema"
# pg_advisory_xact_lock(bigint) key held while migrating ("MHschema"); the two-int4 form other
# modules use for their own locks is a separate key space (PostgreSQL docs, "Advisory Locks").
MIGRATION_LOCK = 0x4D48_7363_6865_6D61

Connection = psycopg.AsyncConnection[Any]


def reason(exc: BaseException) -> str:
    """One line for the log from a psycopg error (libpq's message; never the DSN's password)."""
    if isinstance(exc, DatabaseError):
        return exc.detail
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class SchemaTooNew(DatabaseError):
    """The database was upgraded by a newer Mailhaven than this one."""


class Database:
    """The pool of connections to one PostgreSQL database (config [storage]); not opened yet."""

    def __init__(self, dsn: str, *, pool_size: int = 10, timeout: float = 5.0, name: str = "mailhaven") -> None:
        self.dsn, self.timeout = dsn, timeout
        self.pool_size, self.name = pool_size, name
        params = conninfo.conninfo_to_dict(dsn)
        extra: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:  # libpq's, in whole seconds; the DSN's own wins
            extra["connect_timeout"] = max(1, math.ceil(timeout))
        if "application_name" not in params:
            extra["application_name"] = name
        self._kwargs = extra
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._opening = asyncio.Lock()

    @classmethod
    def from_config(cls, storage: StorageConfig) -> Database:
        return cls(storage.dsn, pool_size=storage.pool_size, timeout=storage.timeout)

    async def _configure(self, conn: Connection) -> None:
        # Every statement is bounded, as every network wait is (STYLE rule 14); migrations lift it.
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(self.timeout * 1000)}ms",))

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def open(self) -> None:
        """Connect once (so a wrong host, role or password is one clear line now, not a timeout
        later), then open a pool (a closed Database opens a new one). Raises DatabaseError."""
        async with self._opening:
            if self._pool is not None:
                return
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, **self._kwargs)
            except psycopg.Error as e:
                raise DatabaseError(f"cannot connect: {reason(e)}") from e
            await conn.close()
            pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
                self.dsn, min_size=1, max_size=self.pool_size, kwargs=self._kwargs, open=False,
                timeout=self.timeout, name=self.name, configure=self._configure,
                check=AsyncConnectionPool.check_connection)
            await pool.open(wait=False)
            self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def connect(self) -> Connection:
        """A connection of its own, outside the pool (autocommit, no statement timeout), for a
        caller that keeps it (store/bus_pg.py's LISTEN); the caller closes it. Raises DatabaseError."""
        try:
            return await psycopg.AsyncConnection.connect(self.dsn, **self._kwargs)
        except psycopg.Error as e:
            raise DatabaseError(f"cannot connect: {reason(e)}") from e

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection (autocommit: use `conn.transaction()`), opening the pool on first
        use. Any psycopg error inside becomes DatabaseError; the connection goes back to the pool
        (or is discarded when broken)."""
        if self._pool is None:
            await self.open()
        pool = self._pool
        if pool is None:  # closed again meanwhile
            raise DatabaseError("the database pool is closed")
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.Error as e:
            raise DatabaseError(reason(e)) from e

    async def migrate(self, part: str, steps: Sequence[str]) -> int:
        """Bring `part`'s tables to version len(steps): run steps[v:] (each one SQL text, possibly
        several statements) where v is the version recorded in mailhaven_schema, all in one
        transaction under the migration lock. Idempotent; returns the version. Raises SchemaTooNew
        when the database is ahead of `steps`, DatabaseError when it cannot be done."""
        async with self.connection() as conn, conn.transaction():
            await conn.execute("SELECT set_config('statement_timeout', '0', true)")
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            # Created under the lock: two CREATE TABLE IF NOT EXISTS at once can both fail otherwise.
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (part text PRIMARY KEY, "
                               "version integer NOT NULL, updated timestamptz NOT NULL DEFAULT now())")
            cur = await conn.execute(f"SELECT version FROM {SCHEMA_TABLE} WHERE part = %s", (part,))
            row = await cur.fetchone()
            version = 0 if row is None else int(row[0])
            if version > len(steps):
                raise SchemaTooNew(f"the {part} tables are at version {version}, and this Mailhaven knows "
                                   f"versions up to {len(steps)}: upgrade it")
            for i in range(version, len(steps)):
                await conn.execute(steps[i])  # no parameters: several statements may go in one
            if version < len(steps):
                await conn.execute(f"INSERT INTO {SCHEMA_TABLE} (part, version) VALUES (%s, %s) ON CONFLICT (part) "
                                   "DO UPDATE SET version = EXCLUDED.version, updated = now()", (part, len(steps)))
                log.info("database: %s tables upgraded from version %d to %d", part, version, len(steps))
            return len(steps)


def from_config(storage: StorageConfig) -> Database | None:
    """The Database of config [storage] (not opened), or None with the SQLite backend."""
    if storage.backend != "postgresql":
        return None
    return Database.from_config(storage)


__all__ = ["Database", "SchemaTooNew", "from_config", "reason", "SCHEMA_TABLE"]
