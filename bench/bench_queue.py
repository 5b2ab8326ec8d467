"""Outbound queue benchmark: recovery time of a large spool, and submission throughput to a remote MX.

    python bench/bench_queue.py [--entries 10000] [--messages 2000] [--size 4096] [--runs 3]
                                [--concurrency 1,20] [--only recovery|throughput] [--dkim] [--threads N]
    python bench/bench_queue.py --via smtp --smtp HOST:PORT --user U --password P --control SOCK ...

Figures (medians of RUNS, everything on loopback under one temporary directory):
- recovery: a spool of ENTRIES queued messages (SIZE octets each, written once up front); a new
  QueueManager loads it: time from start until every entry is loaded and scheduled
  (`QueueManager.load()`: read and parse every envelope, clean leftovers, fill the timer heap).
  The page cache is warm after the first run; run 1 alone is printed too.
- throughput: MESSAGES messages submitted by C concurrent submitters (for each C in
  --concurrency) through `cleanup.enqueue` (header fixing, durable spool write with fsync) and
  delivered by the queue over SMTP to Postfix's smtp-sink on 127.0.0.7 (found through MX records
  in a local test DNS server): messages per second from the first submission until the queue is
  empty again (everything delivered and removed), and the submission rate alone (acceptance).
  DKIM signing is off by default (--dkim turns RSA-2048 signing on).
The command that reproduces the figures (every option the mode reads, defaults spelled out) is
printed first and again under the figures.

Switching to SMTP submission (once smtp/submission.py exists): `--via smtp` submits over
aiosmtplib with STARTTLS + AUTH to a running server instead of calling cleanup.enqueue, and waits
for that server's queue to drain through its control socket (`--control`); the server's config must
route the remote domain to the sink (dns.nameservers + queue.remote_port), which this script prints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

os.environ.setdefault("MAILHAVEN_FAST_HASH", "1")

SENDER = "alice@example.test"
SINK_IP = "127.0.0.7"


def message(size: int, i: int) -> bytes:
    head = (f"From: Alice <{SENDER}>\r\nTo: <rcpt{i}@remote.test>\r\nSubject: bench {i}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head))]
    return head + body


def build_config(workdir: Path, *, nameserver: str = "", remote_port: int = 25, dkim_key: str = "") -> Any:
    from mailhaven.auth.passwords import hash_password
    from mailhaven.auth.users import UsersFile
    from mailhaven.config import from_dict

    workdir.mkdir(parents=True, exist_ok=True)
    users = workdir / "users.toml"
    if not users.exists():
        with UsersFile.edit(users) as uf:
            uf.add_user(SENDER, hash_password("secret"))
    data: dict[str, Any] = {
        "hostname": "mail.example.test", "data_dir": str(workdir / "data"), "users_file": str(users),
        "domains": {"example.test": {"dkim_key": dkim_key} if dkim_key else {}},
        "queue": {"remote_port": remote_port, "max_active": 100, "max_per_destination": 20,
                  "retry_schedule": ["5s"]},
    }
    if nameserver:
        data["dns"] = {"nameservers": [nameserver], "timeout": 2}
    return from_dict(data, workdir)


async def make_context(cfg: Any) -> Any:
    from mailhaven import app

    ctx = app.build_context(cfg)
    await ctx.store.start()
    return ctx


# --- recovery ------------------------------------------------------------------------------------

async def bench_recovery(workdir: Path, entries: int, size: int, runs: int) -> None:
    from mailhaven.queue.manager import QueueManager
    from mailhaven.queue.spool import Spool

    cfg = build_config(workdir / "recovery")
    fill = Spool(cfg.queue_root, fsync=False)  # setup only: the figure is the loading
    await fill.load()
    t0 = time.monotonic()
    sem = asyncio.Semaphore(64)

    async def add(i: int) -> None:
        async with sem:
            await fill.add(SENDER, [f"rcpt{i}@remote{i % 50}.test", f"other{i}@remote{i % 7}.test"],
                           message(size, i), next_attempt=time.time() + 3600)

    await asyncio.gather(*(add(i) for i in range(entries)))
    os.sync()
    print(f"recovery: wrote {entries} entries ({size} octets each) in {time.monotonic() - t0:.1f}s")
    ctx = await make_context(cfg)
    times = []
    for _ in range(runs):
        mgr = QueueManager(ctx)
        started = time.monotonic()
        await mgr.load()
        elapsed = time.monotonic() - started
        assert len(mgr.entries) == entries and len(mgr._heap) == entries
        times.append(elapsed)
    await ctx.store.close()
    print(f"recovery: {entries} entries loaded and scheduled: median {statistics.median(times) * 1000:.0f} ms "
          f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times)} ms; run 1 after os.sync, cache warm)")


# --- throughput ----------------------------------------------------------------------------------

class EnqueueSubmitter:
    """Submits through cleanup.enqueue in this process (the queue's own entry point)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    async def submit(self, i: int, data: bytes) -> None:
        from mailhaven import cleanup

        await cleanup.enqueue(self.ctx, SENDER, [f"rcpt{i}@remote.test"], data)

    async def close(self) -> None:
        pass


class SmtpSubmitter:
    """Submits over SMTP (STARTTLS + AUTH) to a running server; one connection per submitter."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.host, self.port, self.user, self.password = host, port, user, password
        self._clients: dict[int, Any] = {}

    async def client(self, worker: int) -> Any:
        import aiosmtplib

        c = self._clients.get(worker)
        if c is None:
            c = aiosmtplib.SMTP(hostname=self.host, port=self.port, start_tls=None, validate_certs=False,
                                username=self.user, password=self.password, local_hostname="bench")
            await c.connect()
            self._clients[worker] = c
        return c

    async def submit(self, i: int, data: bytes, worker: int = 0) -> None:
        c = await self.client(worker)
        await c.sendmail(self.user, [f"rcpt{i}@remote.test"], data)

    async def close(self) -> None:
        for c in self._clients.values():
            try:
                await c.quit()
            except Exception:  # noqa: BLE001
                c.close()


async def run_throughput(submitter: Any, drained: Any, n: int, concurrency: int, size: int) -> tuple[float, float]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    payloads = {i: message(size, i) for i in range(min(n, 64))}

    async def worker(w: int) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            data = payloads[i % len(payloads)]
            if isinstance(submitter, SmtpSubmitter):
                await submitter.submit(i, data, worker=w)
            else:
                await submitter.submit(i, data)

    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    accepted = time.monotonic() - started
    await drained()
    total = time.monotonic() - started
    return n / total, n / accepted


class DnsProcess:
    """tests/dnsserver.py in its own process, so it does not share our GIL (it would slow the queue)."""

    def __init__(self, records: dict[str, tuple[str, str]]) -> None:
        import json
        import subprocess

        code = ("import json, sys, time\n"
                "from tests.dnsserver import DnsServer\n"
                "s = DnsServer().start()\n"
                "for name, (t, v) in json.loads(sys.argv[1]).items(): s.add(name, t, v)\n"
                "print(s.nameserver, flush=True)\n"
                "sys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(records)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.nameserver = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(5)


async def bench_throughput(workdir: Path, n: int, size: int, runs: int, levels: list[int], dkim: bool,
                           threads: int = 0) -> None:
    from tests.smtp_peer import SmtpSink, shared_port, until

    from mailhaven.policy.dkim import generate_rsa
    from mailhaven.queue.manager import QueueManager

    if not SmtpSink.available():
        raise SystemExit("smtp-sink (Debian postfix) is needed for the throughput figure")
    dns = DnsProcess({"remote.test": ("MX", "10 mx.remote.test."), "mx.remote.test": ("A", SINK_IP)})
    port = shared_port(SINK_IP)
    sink = SmtpSink(SINK_IP, port, hostname="mx.remote.test", backlog=512).start()
    key = ""
    if dkim:
        pem, txt = generate_rsa(2048)
        (workdir / "dkim.pem").write_bytes(pem)
        key = str(workdir / "dkim.pem")
    if threads:
        from concurrent.futures import ThreadPoolExecutor

        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(threads))
    try:
        for c in levels:
            totals, accepts = [], []
            for r in range(runs):
                run_dir = workdir / f"tp-c{c}-r{r}"
                run_dir.mkdir()
                cfg = build_config(run_dir, nameserver=dns.nameserver, remote_port=port, dkim_key=key)
                ctx = await make_context(cfg)
                mgr = QueueManager(ctx)
                ctx.queue = mgr
                task = asyncio.create_task(mgr.run())
                await mgr.loaded.wait()

                async def drained(mgr: QueueManager = mgr) -> None:
                    await until(lambda: not mgr.entries, 600, 0.005)

                total, accept = await run_throughput(EnqueueSubmitter(ctx), drained, n, c, size)
                totals.append(total)
                accepts.append(accept)
                mgr.stop()
                await task
                await ctx.store.close()
                shutil.rmtree(run_dir, ignore_errors=True)
            print(f"throughput: {c:>2} submitter(s), {n} x {size} octets, cleanup.enqueue -> queue -> smtp-sink"
                  f"{' (DKIM RSA-2048)' if dkim else ''}: median {statistics.median(totals):.0f} msg/s delivered "
                  f"end to end, {statistics.median(accepts):.0f} msg/s accepted (runs: "
                  f"{', '.join(f'{t:.0f}' for t in totals)})")
    finally:
        sink.stop()
        dns.stop()


async def bench_smtp(args: argparse.Namespace, levels: list[int]) -> None:
    from tests.smtp_peer import until

    from mailhaven.control import control_request

    host, _, port = args.smtp.rpartition(":")

    async def drained() -> None:
        async def empty() -> bool:
            reply = await asyncio.to_thread(control_request, args.control, {"cmd": "list"})
            return not reply["entries"]

        await until(empty, 3600, 0.05)

    for c in levels:
        totals, accepts = [], []
        for _ in range(args.runs):
            sub = SmtpSubmitter(host, int(port), args.user, args.password)
            total, accept = await run_throughput(sub, drained, args.messages, c, args.size)
            await sub.close()
            totals.append(total)
            accepts.append(accept)
        print(f"throughput (SMTP submission): {c:>2} submitter(s): median {statistics.median(totals):.0f} msg/s "
              f"delivered, {statistics.median(accepts):.0f} msg/s accepted")


# Options each mode reads (the reproducing command names these, defaults spelled out).
MODE_OPTIONS = {
    "enqueue": ("entries", "messages", "size", "runs", "concurrency", "only", "dkim", "threads", "via"),
    "smtp": ("messages", "size", "runs", "concurrency", "via", "smtp", "user", "password", "control"),
}


def reproduce_command(args: argparse.Namespace) -> str:
    """The command line that reproduces these figures: every option the mode reads, with the value
    it had (defaults spelled out, so the figures stay reproducible if a default changes),
    shell-quoted. A password other than the default is shown as <PASSWORD>."""
    words = ["python", "bench/bench_queue.py"]
    for dest in MODE_OPTIONS[args.via]:
        value = getattr(args, dest)
        flag = "--" + dest
        if isinstance(value, bool):
            words += [flag] if value else []
        elif value is None:
            continue
        elif dest == "password" and value != "secret":
            words += [flag, "<PASSWORD>"]
        else:
            words += [flag, str(value)]
    return shlex.join(words).replace("'<PASSWORD>'", "<PASSWORD>")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=10_000)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", default="1,20")
    p.add_argument("--only", choices=["recovery", "throughput"])
    p.add_argument("--dkim", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="worker threads for asyncio.to_thread (0 = Python's default)")
    p.add_argument("--via", choices=["enqueue", "smtp"], default="enqueue")
    p.add_argument("--smtp", default="127.0.0.1:2587")
    p.add_argument("--user", default=SENDER)
    p.add_argument("--password", default="secret")
    p.add_argument("--control", default="")
    args = p.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    cmd = reproduce_command(args)
    print(f"command: {cmd}", flush=True)
    if args.via == "smtp":
        asyncio.run(bench_smtp(args, levels))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="mh-bench-queue-"))
        try:
            if args.only in (None, "recovery"):
                asyncio.run(bench_recovery(workdir, args.entries, args.size, args.runs))
            if args.only in (None, "throughput"):
                asyncio.run(bench_throughput(workdir, args.messages, args.size, args.runs, levels, args.dkim,
                                            args.threads))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmedians of {args.runs} run(s); reproduce: {cmd}")


if __name__ == "__main__":
    main()
