"""Fixtures: a real PostgreSQL (Debian's package) for the [storage] backend = "postgresql" tests.

- `postgres` (session): a `Postgres` cluster made by initdb in a temporary directory and started
  with pg_ctl, listening on 127.0.0.1 only on a free port (its unix socket in that directory),
  fsync off (nothing here needs to outlive a crash), trust authentication from loopback, superuser
  `postgres`. As root it runs as the `postgres` user (Debian's package creates it) or `nobody`:
  PostgreSQL refuses to run as root. Stopped with `pg_ctl stop -m fast` at the end. About two
  seconds, once per session (with pytest-xdist, once per worker).
- `Postgres.stop()` / `.start()`: tests of "the database is down" (call `.start()` again in a
  finally).
- `pg_dsn`: the DSN of a fresh database (CREATE DATABASE from template1), one per test, so tests
  do not see each other's tables or rows.

The binaries are found on PATH, else in the newest /usr/lib/postgresql/*/bin (where Debian puts
them). Without them, or without psycopg, the tests that use these fixtures are skipped with the
reason, or FAIL when MAILHAVEN_REQUIRE_POSTGRES=1 or CI=true (.ci/run installs postgresql and sets
the former).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_base import free_port

REQUIRE_ENV = "MAILHAVEN_REQUIRE_POSTGRES"
SUPERUSER = "postgres"
START_TIMEOUT = 60  # seconds, for pg_ctl -w -t (a loaded CI machine; about a second when idle)

# Appended to the cluster's postgresql.conf: loopback only, fast, quiet.
_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 32MB
log_min_messages = warning
"""


def bindir() -> Path | None:
    """The folder of initdb and pg_ctl: PATH first, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1" or os.environ.get("CI") == "true"


def _unavailable(reason: str) -> None:
    if _required():
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 or CI=true (.ci/run installs postgresql)")
    pytest.skip(reason)


def _user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when we are root; None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
    raise RuntimeError("no unprivileged user (postgres or nobody) to run PostgreSQL as")


class Postgres:
    """One PostgreSQL cluster under `root`, on 127.0.0.1:`port`."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root, self.bin = root, bindir
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.port = free_port()
        self.user = _user()
        self._names = itertools.count(1)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.user is not None:
            uid, gid = self.user
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(self.root)}
        proc = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=START_TIMEOUT + 30,
                              check=False)
        if proc.returncode != 0:
            log = (self.root / "postgres.log").read_text(errors="replace")[-3000:] \
                if (self.root / "postgres.log").exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n{log}")

    def init(self) -> Postgres:
        for d in (self.data, self.sockets):
            d.mkdir(mode=0o700)
        if self.user is not None:
            for p in (self.root, self.data, self.sockets):
                os.chown(p, *self.user)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C",
                  "--no-sync", "--no-instructions")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(_CONF.format(port=self.port, sockets=self.sockets))
        return self

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w",
                  "-t", str(START_TIMEOUT), "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self) -> str:
        """A new empty database; its DSN."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("PostgreSQL tests need psycopg (pip install -e '.[test]')")
    where = bindir()
    if where is None or not (where / "initdb").exists():
        _unavailable("PostgreSQL tests need Debian's postgresql (initdb and pg_ctl, on PATH or in "
                     "/usr/lib/postgresql/*/bin)")
    assert where is not None
    root = Path(tempfile.mkdtemp(prefix="mailhaven-pg-"))  # not under pytest's 0700 tmp: the user reads it
    os.chmod(root, 0o755)
    cluster = Postgres(root, where)
    try:
        cluster.init().start()
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):
            if cluster.running():
                cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(postgres: Postgres) -> str:
    """The DSN of a database of this test's own."""
    if not postgres.running():  # a test that stopped it and failed before starting it again
        postgres.start()
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def make_indexes(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """Parametrizes a test over the two index backends (store/index.py IndexFactory): each call
    makes a new factory for a Store; with PostgreSQL each has a pool of its own over this test's
    database (as a process of its own would)."""
    from mailhaven.store.index import SqliteIndexes

    if request.param == "sqlite":
        return SqliteIndexes
    dsn = request.getfixturevalue("pg_dsn")
    from mailhaven import pg
    from mailhaven.store.index_pg import PgIndexes

    return lambda: PgIndexes(pg.Database(dsn, pool_size=4), owns_database=True)


def drop_index(indexes: Any, user_root: Path, user: str) -> None:
    """Lose one user's index, as a deleted SQLite file or the user's rows gone from PostgreSQL."""
    from mailhaven.store.index_pg import PgIndexes

    if isinstance(indexes, PgIndexes):
        import psycopg

        with psycopg.connect(indexes.database.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM mh_user WHERE name = %s", (user,))
        return
    for suffix in ("", "-wal", "-shm"):
        p = user_root / f"mailhaven-index.sqlite{suffix}"
        if p.exists():
            p.unlink()
