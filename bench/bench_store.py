"""Mail store benchmark: durable deliveries per second, and snapshot cost of a big folder.

Figures (each the median of --runs runs, default 3):
  1. deliveries/s into one Maildir, fsync on, 4 KB messages, 1 concurrent writer
  2. the same with 50 concurrent writers
  3. snapshot of a --messages folder (default 100,000) with no index: full rebuild from disk
  4. snapshot of the same folder by a fresh Store with the index present (load, no rescan)
  5. snapshot of the same folder again in the same Store (in-memory, the IMAP NOOP path)

Usage: python bench/bench_store.py [--messages N] [--deliveries N] [--runs N] [--dir PATH]
The default run takes about a minute; --messages 10000 --deliveries 200 is a quick check.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mailhaven.store import Store

USER = "bench@example.test"
HOST = "bench.host"


def message(i: int) -> bytes:
    head = b"From: a@example.test\r\nTo: bench@example.test\r\nSubject: message %d\r\n\r\n" % i
    return head + b"x" * (4096 - len(head) - 2) + b"\r\n"


async def deliveries_per_second(base: Path, count: int, writers: int) -> float:
    root = base / f"deliver-{writers}"
    shutil.rmtree(root, ignore_errors=True)
    store = Store(root, hostname=HOST, fsync=True)
    await store.start()
    await store.deliver([(USER, "INBOX")], message(0))  # first access creates the folders
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def writer() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await store.deliver([(USER, "INBOX")], message(i))

    t = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - t
    await store.close()
    assert len(os.listdir(root / "example.test" / "bench" / "new")) == count + 1
    shutil.rmtree(root, ignore_errors=True)
    return count / elapsed


def fill_folder(root: Path, n: int) -> Path:
    """A folder of n messages written directly (like a migrated Maildir), half of them seen."""
    user = root / "example.test" / "bench"
    for d in ("cur", "new", "tmp"):
        (user / d).mkdir(parents=True, exist_ok=True)
    body = message(0)
    template = root / "template"
    for i in range(n):
        if i % 50_000 == 0:  # ext4 allows 65,000 links per inode
            template = root / f"template{i}"
            template.write_bytes(body)
        key = f"{1_600_000_000 + i}.M{i}P1Q{i}.{HOST},S={len(body)},W={len(body)}"
        if i % 2:
            path = user / "cur" / f"{key}:2,S"
        else:
            path = user / "new" / key
        os.link(template, path)  # same content everywhere; a link is much faster to create
    old = time.time() - 3600  # settled directories, as between bursts of mail
    for d in ("cur", "new"):
        os.utime(user / d, (old, old))
    return user


def drop_index(user: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = user / f"mailhaven-index.sqlite{suffix}"
        if p.exists():
            p.unlink()


async def snapshot_seconds(root: Path) -> tuple[float, int]:
    store = Store(root, hostname=HOST, fsync=True)
    t = time.perf_counter()
    mb = await store.account(USER).mailbox("INBOX")
    snap = await mb.snapshot()
    elapsed = time.perf_counter() - t
    await store.close()
    return elapsed, len(snap.messages)


async def in_memory_snapshot_seconds(root: Path) -> float:
    store = Store(root, hostname=HOST, fsync=True)
    mb = await store.account(USER).mailbox("INBOX")
    await mb.snapshot()
    t = time.perf_counter()
    await mb.snapshot()
    elapsed = time.perf_counter() - t
    await store.close()
    return elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000, help="messages in the scanned folder")
    ap.add_argument("--deliveries", type=int, default=400, help="deliveries per delivery run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to work (default: a temp dir)")
    args = ap.parse_args()
    command = "python bench/bench_store.py " + " ".join(sys.argv[1:])
    base = Path(tempfile.mkdtemp(prefix="mailhaven-bench-", dir=args.dir))
    try:
        for writers in (1, 50):
            rates = [await deliveries_per_second(base, args.deliveries, writers) for _ in range(args.runs)]
            print(f"store.deliver fsync=on 4KB writers={writers}: {statistics.median(rates):.0f} msg/s "
                  f"(median of {args.runs}, {args.deliveries} each)  [{command.strip()}]", flush=True)
        folder_root = base / "scan"
        t = time.perf_counter()
        user = fill_folder(folder_root, args.messages)
        print(f"# wrote {args.messages} messages in {time.perf_counter() - t:.1f}s", flush=True)
        cold = []
        for _ in range(args.runs):
            drop_index(user)
            elapsed, n = await snapshot_seconds(folder_root)
            assert n == args.messages
            cold.append(elapsed)
        print(f"store snapshot cold (no index, full rebuild) {args.messages} msgs: "
              f"{statistics.median(cold) * 1000:.0f} ms (median of {args.runs})  [{command.strip()}]",
              flush=True)
        warm = []
        for _ in range(args.runs):
            elapsed, n = await snapshot_seconds(folder_root)
            assert n == args.messages
            warm.append(elapsed)
        print(f"store snapshot warm (fresh Store, index present) {args.messages} msgs: "
              f"{statistics.median(warm) * 1000:.0f} ms (median of {args.runs})  [{command.strip()}]",
              flush=True)
        hot = [await in_memory_snapshot_seconds(folder_root) for _ in range(args.runs)]
        print(f"store snapshot repeat (same Store, unchanged folder) {args.messages} msgs: "
              f"{statistics.median(hot) * 1000:.1f} ms (median of {args.runs})  [{command.strip()}]",
              flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
