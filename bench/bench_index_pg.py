"""The mailbox index on SQLite and on PostgreSQL side by side (issue 15 item 3's figure).

    python bench/bench_index_pg.py [--runs 3] [--appends 500] [--messages 10000]

What it does, loopback only, under one temporary directory: starts Debian's PostgreSQL (the tests'
cluster, tests/fixtures_postgres.py: fsync off), then per backend and run a fresh mail root (and a
fresh database): APPENDs one at a time (Mailbox.append, Store fsync off: the figure is the index),
STOREs of one flag on one message at a time, and the cold open of a folder of --messages messages
by a new Store (the rows read from the index, no rescan of the files). Each is one worker thread
taking the user's lock (flock, or the advisory lock on a pooled connection), checking data_version
and writing one transaction, as the server does per command. Prints the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.fixtures_postgres

from tests.fixtures_postgres import Postgres, bindir  # noqa: E402

USER = "bench@example.test"
HOST = "bench.host"
MSG = b"From: a@example.test\r\nSubject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"


async def one_run(make: Callable[[], Any], root: Path, appends: int, messages: int) -> tuple[float, float, float]:
    """(appends/s, stores/s, seconds to open the big folder cold) on one backend."""
    from mailhaven.store import Store

    store = Store(root, hostname=HOST, fsync=False, indexes=make())
    await store.start()
    try:
        mb = await store.account(USER).mailbox("INBOX")
        started = time.perf_counter()
        uids = [await mb.append(MSG) for _ in range(appends)]
        append_rate = appends / (time.perf_counter() - started)
        started = time.perf_counter()
        for i, uid in enumerate(uids):
            await mb.store_flags([uid], {"\\Seen" if i % 2 else "$Label1"}, "add")
        store_rate = appends / (time.perf_counter() - started)
        acc = store.account(USER)
        await acc.create_mailbox("Big")
        big = acc.path / ".Big" / "cur"
        for i in range(messages):  # files by another program: indexed by the next sync
            (big / f"{1700000000 + i}.M{i}P1.{HOST},S={len(MSG)}:2,S").write_bytes(MSG)
        await (await acc.mailbox("Big")).snapshot()
    finally:
        await store.close()
    again = Store(root, hostname=HOST, fsync=False, indexes=make())
    await again.start()
    try:
        started = time.perf_counter()
        snap = await (await again.account(USER).mailbox("Big")).snapshot()
        cold = time.perf_counter() - started
        assert len(snap.messages) == messages
    finally:
        await again.close()
    return append_rate, store_rate, cold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--appends", type=int, default=500)
    ap.add_argument("--messages", type=int, default=10000)
    args = ap.parse_args()
    where = bindir()
    if where is None:
        raise SystemExit("needs Debian's postgresql (initdb, pg_ctl)")
    from mailhaven import pg
    from mailhaven.store.index import SqliteIndexes
    from mailhaven.store.index_pg import PgIndexes

    work = Path(tempfile.mkdtemp(prefix="bench-index-pg-"))
    work.chmod(0o755)
    cluster = Postgres(work, where)
    cluster.init().start()
    try:
        for backend in ("sqlite", "postgresql"):
            figures = []
            for r in range(args.runs):
                if backend == "postgresql":
                    dsn = cluster.create_database()

                    def make(dsn: str = dsn) -> Any:
                        return PgIndexes(pg.Database(dsn, pool_size=4), owns_database=True)
                else:
                    make = SqliteIndexes
                root = work / f"mail-{backend}-{r}"
                figures.append(asyncio.run(one_run(make, root, args.appends, args.messages)))
                a, s, c = figures[-1]
                print(f"{backend} run {r + 1}: {a:6.0f} appends/s  {s:6.0f} flag stores/s  "
                      f"cold open of {args.messages}: {c * 1000:5.0f} ms", flush=True)
            med = [statistics.median(f[i] for f in figures) for i in range(3)]
            print(f"{backend} median: {med[0]:.0f} appends/s, {med[1]:.0f} flag stores/s, "
                  f"cold open {med[2] * 1000:.0f} ms\n", flush=True)
        print(f"reproduce: python bench/bench_index_pg.py --runs {args.runs} --appends {args.appends} "
              f"--messages {args.messages}")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
