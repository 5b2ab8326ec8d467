"""Queue claims per second on PostgreSQL with two nodes (issue 15's figure).

    python bench/bench_queue_pg.py [--runs 3] [--entries 5000] [--batch 20] [--nodes 2]

What it does, all under one temporary directory, loopback only: starts Debian's PostgreSQL (the
tests' cluster, tests/fixtures_postgres.py: initdb and pg_ctl as an unprivileged user, fsync off),
then per run a fresh database and spool directory; fills the queue with ENTRIES due entries through
one node's `PgSpool.add` (message files written without fsync: the figure is the claiming); then
NODES spools, each with its own connection pool (a node each), claim in parallel, BATCH at a time
(`UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`, as QueueManager does), and
remove what they claimed, until the queue is empty. It checks that every entry was claimed exactly
once, and prints the median claims/second (claimed entries / seconds until the queue was empty),
and the removals with them, since a node removes each entry it delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.fixtures_postgres

from tests.fixtures_postgres import Postgres, bindir  # noqa: E402

LEASE = 120.0


async def one_run(cluster: Postgres, work: Path, entries: int, batch: int, nodes: int) -> tuple[float, float]:
    """(claims/s, claims+removals/s) of one run on a fresh database."""
    from mailhaven import pg
    from mailhaven.queue.spool_pg import PgSpool

    dsn = cluster.create_database()
    spool_dir = work / f"spool-{time.monotonic_ns()}"
    dbs = [pg.Database(dsn, pool_size=4, name=f"node{i}") for i in range(nodes)]
    for db in dbs:
        await db.open()
    try:
        spools = [PgSpool(db, spool_dir, owner=f"node{i}", fsync=False) for i, db in enumerate(dbs)]
        for s in spools:
            await s.open()
        body = b"From: a@example.test\r\nSubject: bench\r\n\r\nbody\r\n"
        for i in range(entries):
            await spools[0].add("a@example.test", [f"r{i}@b.test"], body, source="bench")
        claimed: list[list[str]] = [[] for _ in spools]

        async def claim_only(i: int) -> None:
            while True:
                got = await spools[i].claim(batch, LEASE, time.time() + 1)
                if not got:
                    return
                claimed[i].extend(e.id for e in got)

        started = time.perf_counter()
        await asyncio.gather(*(claim_only(i) for i in range(nodes)))
        claim_rate = entries / (time.perf_counter() - started)
        ids = [x for c in claimed for x in c]
        if len(ids) != entries or len(set(ids)) != entries:
            raise SystemExit(f"claimed {len(ids)} ({len(set(ids))} distinct) of {entries}")
        started = time.perf_counter()
        await asyncio.gather(*(spools[i].remove(x) for i, c in enumerate(claimed) for x in c))
        remove_seconds = time.perf_counter() - started
        return claim_rate, entries / (entries / claim_rate + remove_seconds)
    finally:
        for db in dbs:
            await db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--entries", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=20, help="entries per claim (QueueManager claims up to its free slots)")
    ap.add_argument("--nodes", type=int, default=2)
    args = ap.parse_args()
    where = bindir()
    if where is None:
        raise SystemExit("needs Debian's postgresql (initdb, pg_ctl)")
    root = Path(tempfile.mkdtemp(prefix="bench-queue-pg-"))
    root.chmod(0o755)
    cluster = Postgres(root, where)
    cluster.init().start()
    try:
        claims, both = [], []
        for r in range(args.runs):
            c, b = asyncio.run(one_run(cluster, root, args.entries, args.batch, args.nodes))
            claims.append(c)
            both.append(b)
            print(f"run {r + 1}: {c:8.0f} claims/s, {b:8.0f} claimed and removed/s", flush=True)
        print(f"\nmedian of {args.runs} runs, {args.entries} entries, {args.nodes} nodes, {args.batch} per claim:")
        print(f"claims/s: {statistics.median(claims):.0f}   claimed and removed/s: {statistics.median(both):.0f}")
        print(f"reproduce: python bench/bench_queue_pg.py --runs {args.runs} --entries {args.entries} "
              f"--batch {args.batch} --nodes {args.nodes}")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
