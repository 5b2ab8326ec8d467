"""Remote delivery benchmark: 1,000 queued messages to 10 destinations, one of them a tarpit.

    python bench/bench_queue_remote.py [--messages 1000] [--destinations 10] [--size 4096]
                                       [--slow-delay 2] [--runs 3] [--max-connections 100]
                                       [--max-per-destination 20] [--sink smtp-sink|python]

What it does, loopback only, under one temporary directory:
- a DNS server (tests/dnsserver.py, in its own process) publishes d0.test .. d9.test, each with
  `MX 10 mx.dN.test` and `mx.dN.test A 127.0.0.(N+2)`;
- the fast destinations are Postfix's smtp-sink on 127.0.0.2 .. 127.0.0.10 (one process each, -c:
  it reports sessions and messages), the last one (d9.test, 127.0.0.11) a tarpit: an asyncio sink
  (below, standard library only) that waits SLOW_DELAY seconds before every reply, the greeting
  included; one port for all (queue.remote_port). `--sink python` serves the fast ones from that
  asyncio process too (no postfix needed; it is then the bottleneck, ~2-3 s either way);
- MESSAGES entries (SIZE octets, one recipient each, destinations round-robin) are written to
  the spool, then a QueueManager is started with [queue] max_active / max_connections =
  --max-connections and max_per_destination = --max-per-destination;
- figure: seconds from the manager's start until every message for the fast destinations (900
  of 1,000) is delivered and recorded (gone from the queue), the connections the fast sinks saw
  (counted after the manager is stopped: smtp-sink counts a session when it ends), the CPU time
  of the process running the queue (all its threads: steadier than wall time on a shared
  machine), and how many tarpit messages were through; median of RUNS runs (each with a new
  spool and fresh sink counters). The manager is stopped by cancelling it (what the tarpit still
  holds is not waited for).

Figures (2-vCPU machine shared with other jobs' tests; each line a median of 3 runs, BEFORE = main
at 3f6bb69 with this script copied in, AFTER = this branch, run alternately in the same minutes):
- `python bench/bench_queue_remote.py` (defaults: 100 connections, 20 per destination):
  BEFORE 1.67 s and 1.51 s until the 900 fast messages were delivered, 900 connections opened to
  them, 1.44 s / 1.14 s CPU; AFTER 1.45 s and 1.33 s, 111 connections, 1.22 s / 1.04 s CPU. The
  tarpit held its 20 slots in both and had delivered nothing by then (a tarpit transaction takes
  7 x 2 s). (With `--sink python` the asyncio sink is the bottleneck: 2.1-3.5 s either way, 900
  vs 101-125 connections.)
- `--max-per-destination 100` (the tarpit may take every slot): BEFORE 14.27 s and 14.97 s (the
  tarpit took all 100 slots and the fast mail waited for its transactions), 900 connections;
  AFTER 3.60 s and 1.69 s, 90-91 connections (the tarpit gets at most 80 of the 100 slots).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

os.environ.setdefault("MAILHAVEN_FAST_HASH", "1")

SENDER = "alice@example.test"

# The sinks: one process, standard library only. argv: JSON {"ips": [...], "port": P, "slow": {ip: delay}}.
# stdin "stats\n" -> one JSON line {"ip": [connections, messages]}; "reset\n" zeroes; EOF ends.
SINK_CODE = r'''
import asyncio, json, sys
cfg = json.loads(sys.argv[1])
stats = {ip: [0, 0] for ip in cfg["ips"]}

async def serve(reader, writer, ip, delay):
    stats[ip][0] += 1
    async def reply(text):
        if delay:
            await asyncio.sleep(delay)
        writer.write(text.encode() + b"\r\n")
        await writer.drain()
    try:
        await reply("220 sink ESMTP")
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO",):
                await reply("250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000")
            elif verb == b"DATA":
                await reply("354 go ahead")
                while True:
                    chunk = await reader.readline()
                    if not chunk or chunk == b".\r\n":
                        break
                if not chunk:
                    return
                stats[ip][1] += 1
                await reply("250 2.0.0 queued")
            elif verb == b"QUIT":
                await reply("221 2.0.0 bye")
                return
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP", b"HELO"):
                await reply("250 2.0.0 ok")
            else:
                await reply("502 5.5.2 what")
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()

async def control():
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if line.strip() == "reset":
            for v in stats.values():
                v[0] = v[1] = 0
            print("ok", flush=True)
        else:
            print(json.dumps(stats), flush=True)

async def main():
    servers = []
    for ip in cfg["ips"]:
        delay = cfg["slow"].get(ip, 0)
        servers.append(await asyncio.start_server(
            lambda r, w, ip=ip, delay=delay: serve(r, w, ip, delay), ip, cfg["port"], backlog=1024))
    print("ready", flush=True)
    await control()

asyncio.run(main())
'''


class Sinks:
    def __init__(self, ips: list[str], port: int, slow: dict[str, float]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SINK_CODE, json.dumps({"ips": ips, "port": port,
                                                                                   "slow": slow})],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the sinks did not start")

    def _ask(self, what: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline()

    def stats(self) -> dict[str, list[int]]:
        result: dict[str, list[int]] = json.loads(self._ask("stats"))
        return result

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(5)


class SmtpSinks:
    """Postfix's smtp-sink (C, event-driven: fast enough not to be what is measured) on each address,
    with -c: it writes "sess=N quit=N mesg=N" as sessions end and messages arrive, through its own
    buffered stream, so the counters are read once it exits: start() before a run, stats() after
    the queue has closed its connections (it stops the sinks)."""

    COUNTERS = re.compile(rb"sess=(\d+) quit=\d+ mesg=(\d+)")

    def __init__(self, ips: list[str], port: int) -> None:
        from tests.smtp_peer import SMTP_SINK

        self.exe = shutil.which("smtp-sink") or SMTP_SINK
        self.ips, self.port = ips, port
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.out: dict[str, Path] = {}
        self.dir = Path(tempfile.mkdtemp(prefix="mh-bench-sinks-"))

    def reset(self) -> None:
        """(Re)start the sinks with their counters at zero."""
        self.stop()
        for ip in self.ips:
            args = [self.exe, "-c", "-h", f"mx.{ip}"] + (["-u", "nobody"] if os.geteuid() == 0 else [])
            self.out[ip] = self.dir / f"{ip}.out"
            with open(self.out[ip], "wb") as f:
                self.procs[ip] = subprocess.Popen(args + [f"{ip}:{self.port}", "512"], stdout=f,
                                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        for ip in self.ips:
            deadline = time.monotonic() + 5
            while True:
                try:
                    with socket.create_connection((ip, self.port), timeout=0.2) as c:
                        c.sendall(b"QUIT\r\n")
                        c.recv(100)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("smtp-sink did not start") from None
                    time.sleep(0.02)

    def stats(self) -> dict[str, list[int]]:
        """{ip: [sessions, messages]} since reset(), less the probe session of reset(); stops the sinks."""
        self.stop()
        out = {}
        for ip, path in self.out.items():
            found = self.COUNTERS.findall(path.read_bytes())
            sess, msg = (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)
            out[ip] = [max(0, sess - 1), msg]
        return out

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(5)
        self.procs.clear()


def build_config(workdir: Path, nameserver: str, port: int, max_connections: int, per_destination: int) -> Any:
    from bench_queue import build_config as base

    from mailhaven.config import from_dict

    cfg = base(workdir, nameserver=nameserver, remote_port=port)
    data: dict[str, Any] = {
        "hostname": cfg.hostname, "data_dir": cfg.data_dir, "users_file": cfg.users_file,
        "domains": {"example.test": {}},
        "queue": {"remote_port": port, "max_active": max_connections, "max_per_destination": per_destination,
                  "retry_schedule": ["5s"], "connect_timeout": 30, "command_timeout": 30},
        "dns": {"nameservers": [nameserver], "timeout": 2},
    }
    return from_dict(data, workdir)


async def one_run(workdir: Path, args: argparse.Namespace, nameserver: str, port: int, sinks: list[Any],
                  ips: list[str]) -> tuple[float, int, int, int, float]:
    from bench_queue import make_context, message
    from tests.smtp_peer import until

    from mailhaven.queue.manager import QueueManager
    from mailhaven.queue.spool import Spool

    cfg = build_config(workdir, nameserver, port, args.max_connections, args.max_per_destination)
    fill = Spool(cfg.queue_root, fsync=False)  # setup only
    await fill.load()
    slow_domain = f"d{args.destinations - 1}.test"
    fast_ids: set[str] = set()
    now = time.time()
    for i in range(args.messages):
        domain = f"d{i % args.destinations}.test"
        entry = await fill.add(SENDER, [f"rcpt{i}@{domain}"], message(args.size, i), next_attempt=now)
        if domain != slow_domain:
            fast_ids.add(entry.id)
    ctx = await make_context(cfg)
    mgr = QueueManager(ctx)
    ctx.queue = mgr
    for s in sinks:
        s.reset()
    started = time.monotonic()
    cpu = time.process_time()
    task = asyncio.create_task(mgr.run())
    await until(lambda: mgr.loaded.is_set() and not any(i in mgr.entries for i in fast_ids), 900, 0.01)
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu
    task.cancel()  # connections close (idle ones without QUIT): smtp-sink counts a session when it ends
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - abandoned on purpose
        pass
    await asyncio.sleep(0.5)
    stats: dict[str, list[int]] = {}
    for s in sinks:
        stats.update(await asyncio.to_thread(s.stats))
    await ctx.store.close()
    slow_ip = ips[-1]
    fast_conns = sum(v[0] for ip, v in stats.items() if ip != slow_ip)
    fast_msgs = sum(v[1] for ip, v in stats.items() if ip != slow_ip)
    return elapsed, fast_conns, fast_msgs, stats[slow_ip][1], cpu


async def bench(args: argparse.Namespace) -> None:
    from bench_queue import DnsProcess
    from tests.smtp_peer import shared_port

    ips = [f"127.0.0.{n + 2}" for n in range(args.destinations)]
    records: dict[str, tuple[str, str]] = {}
    for n, ip in enumerate(ips):
        records[f"d{n}.test"] = ("MX", f"10 mx.d{n}.test.")
        records[f"mx.d{n}.test"] = ("A", ip)
    dns = DnsProcess(records)
    port = shared_port(*ips)
    sinks: list[Any] = []
    if args.sink == "smtp-sink":
        sinks.append(SmtpSinks(ips[:-1], port))  # started by one_run's reset()
        sinks.append(Sinks(ips[-1:], port, {ips[-1]: args.slow_delay}))
    else:
        sinks.append(Sinks(ips, port, {ips[-1]: args.slow_delay}))
    workdir = Path(tempfile.mkdtemp(prefix="mh-bench-remote-"))
    fast = args.messages - args.messages // args.destinations
    try:
        rows = []
        for r in range(args.runs):
            run_dir = workdir / f"r{r}"
            row = await one_run(run_dir, args, dns.nameserver, port, sinks, ips)
            rows.append(row)
            print(f"run {r + 1}: {fast} fast messages delivered in {row[0]:.2f}s over {row[1]} connections "
                  f"(sinks counted {row[2]} messages), queue CPU {row[4]:.2f}s; tarpit: {row[3]} delivered by then",
                  flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"median of {args.runs}: {statistics.median(r[0] for r in rows):.2f}s until the {fast} messages "
              f"for the fast destinations were delivered, {statistics.median(r[1] for r in rows):.0f} connections "
              f"opened to them, {statistics.median(r[4] for r in rows):.2f}s CPU in the queue's process; tarpit "
              f"messages delivered by then: {statistics.median(r[3] for r in rows):.0f}")
    finally:
        for s in sinks:
            s.stop()
        dns.stop()
        for s in sinks:
            if isinstance(s, SmtpSinks):
                shutil.rmtree(s.dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--destinations", type=int, default=10)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--slow-delay", type=float, default=2.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-connections", type=int, default=100)
    p.add_argument("--max-per-destination", type=int, default=20)
    p.add_argument("--sink", choices=["smtp-sink", "python"], default="smtp-sink",
                   help="the fast destinations: Postfix's smtp-sink, or the asyncio sink below")
    args = p.parse_args()
    from tests.smtp_peer import SmtpSink

    if args.sink == "smtp-sink" and not SmtpSink.available():
        raise SystemExit("smtp-sink (Debian postfix) not found: install postfix or use --sink python")
    if not 2 <= args.destinations <= 200:
        raise SystemExit("--destinations: 2-200")
    words = ["python", "bench/bench_queue_remote.py"]
    for k, v in vars(args).items():
        words += ["--" + k.replace("_", "-"), str(v)]
    cmd = shlex.join(words)
    print(f"command: {cmd}", flush=True)
    asyncio.run(bench(args))
    print(f"reproduce: {cmd}")


if __name__ == "__main__":
    main()
