"""Spam-filtering benchmark: what rspamd scanning at DATA costs the MX, in one run.

    python bench/bench_spam.py [--runs 3] [--size 4096] [--messages-1 200] [--messages-20 1000]
                               [--scans 300] [--lookups 300] [--hyperscan] [--keep]

What it does, all under one temporary directory, loopback only, nothing in /etc touched:
- starts the DNS server bench_mx.py uses (dnsmasq, or the tests' Python server without it) with
  `sender.test TXT "v=spf1 ip4:127.0.0.1 -all"`, and rspamd 3.4 + redis from Debian exactly as the
  tests start them (tests/fixtures_rspamd.py: Debian's stock configuration with the modules that
  reach the Internet off, DNS from our server, one normal worker; hyperscan off unless
  --hyperscan, which makes rspamd compile its regexps at start: minutes on a loaded machine);
- starts three Mailhavens with bench_mx.py's config (only the "mx" listener, no TLS, fsync on, log
  level warning): "embedded" without [spam] (the embedded default: GTUBE, users' sender lists),
  "dnsbl" the same with `[spam] dnsbl = ["bl.test"]` (the DNS server answers NXDOMAIN: the client
  is not listed; every message comes from 127.0.0.1, so after the first lookup the answer is in the
  list cache: the cached cost), and "rspamd" with `[spam] rspamd_url` pointing at rspamd, so every
  message is scanned before the 250;
- each round runs `smtp-source -s S -l SIZE -m N` (one connection per message) against each
  Mailhaven in turn (the first one rotates from round to round) and measures until the N-th message
  is in the INBOX's new/ (a message rspamd sent to Junk or refused would stall the run: these score
  "no action"); S = 1 and 20 sessions;
- then times rspamd's round trip per message with Mailhaven's own client (policy/rspamd.py, the
  code the MX runs): --scans messages of SIZE octets like smtp-source's, one at a time and 20 at a
  time, p50 and p99;
- then times one DNS list check (policy/dnsbl.py Checker.check, the code the MX runs, over our
  resolver and the DNS server) --lookups times, uncached (a new client address each time, from
  198.18.0.0/15: only a name in a query to our own DNS server, no traffic goes there) and cached
  (the same address again), p50 and p99;
- prints the median messages/second of RUNS rounds per Mailhaven and session count, the ratios to
  "embedded", the median CPU ms per message of Mailhaven and of rspamd (all its processes, from
  /proc), and the percentiles.

Run as root to run rspamd as Debian's `_rspamd` user (as the tests do); as another user it runs as
that user.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for bench.bench_mx and tests.fixtures_rspamd

from bench.bench_mx import (  # noqa: E402
    DNSMASQ,
    SENDER,
    SMTP_SOURCE,
    USER,
    Dnsmasq,
    PythonDns,
    run_load,
    start_mailhaven,
    tree_cpu,
)
from tests.fixtures_rspamd import REDIS, RSPAMD, STOCK, Rspamd  # noqa: E402

from mailhaven.policy.rspamd import RspamdClient  # noqa: E402
from mailhaven.policy.spam import ScanRequest  # noqa: E402

MODES = ("embedded", "dnsbl", "rspamd")
BLOCKLIST = "bl.test"  # under the DNS server's local .test zone: NXDOMAIN, nobody is listed


def spam_config(mode: str, rspamd_url: str) -> str:
    """The [spam] TOML of one Mailhaven of the run."""
    if mode == "dnsbl":
        return f'[spam]\ndnsbl = ["{BLOCKLIST}"]\n'
    if mode == "rspamd":
        return f'[spam]\nrspamd_url = "{rspamd_url}"\n'
    return ""


async def list_checks(nameserver: str, lookups: int) -> dict[str, list[float]]:
    """Milliseconds per Checker.check against one list: uncached (a new address each time) and
    cached (the same address again)."""
    from mailhaven.dns.resolver import Resolver
    from mailhaven.policy.dnsbl import Checker

    resolver, checker = Resolver([nameserver], timeout=2.0), Checker()
    out: dict[str, list[float]] = {"uncached": [], "cached": []}
    for i in range(lookups):
        ip = f"198.{18 + i // 65536 % 2}.{i // 256 % 256}.{i % 256}"
        for kind in ("uncached", "cached"):
            t0 = time.perf_counter()
            await checker.check(resolver, ip, [BLOCKLIST], [])
            out[kind].append((time.perf_counter() - t0) * 1000)
    assert checker.queries == lookups, checker.queries  # one query per address, the repeat from the cache
    return out


class BenchRspamd(Rspamd):
    """The tests' rspamd; with hyperscan on when asked (the production default)."""

    def __init__(self, root: Path, dns: str, hyperscan: bool) -> None:
        super().__init__(root, dns)
        self.hyperscan = hyperscan

    def _write_config(self) -> None:
        super()._write_config()
        if self.hyperscan:
            options = self.root / "conf" / "local.d" / "options.inc"
            options.write_text(options.read_text().replace("disable_hyperscan = true;", "disable_hyperscan = false;"))


def message(size: int) -> bytes:
    """A message like smtp-source's: a few header fields and "La la la" lines up to `size` octets."""
    head = (f"From: <{SENDER}>\r\nTo: <{USER}>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n"
            "Message-Id: <bench-spam@client.sender.test>\r\nSubject: bench\r\n\r\n")
    line = "La " * 25 + "\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return (head + body).encode()


async def round_trips(url: str, size: int, scans: int, parallel: int) -> list[float]:
    """Milliseconds per scan with Mailhaven's rspamd client, `parallel` scans in flight."""
    client = RspamdClient(url, timeout=60, max_concurrency=parallel, max_size=size * 2)
    data = message(size)
    times: list[float] = []

    async def one(i: int) -> None:
        req = ScanRequest(ip="127.0.0.1", helo="client.sender.test", sender=SENDER, recipients=(USER,),
                          queue_id=f"bench{i}", hostname="client.sender.test", deliver_to=USER)
        t0 = time.perf_counter()
        await client.scan(data, req)
        times.append((time.perf_counter() - t0) * 1000)

    async def worker(ids: range) -> None:
        for i in ids:
            await one(i)

    try:
        await one(-1)  # the pooled connection
        times.clear()
        await asyncio.gather(*(worker(range(w, scans, parallel)) for w in range(parallel)))
    finally:
        await client.close()
    return times


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--messages-1", type=int, default=200, help="messages per run with 1 session")
    ap.add_argument("--messages-20", type=int, default=1000, help="messages per run with 20 sessions")
    ap.add_argument("--scans", type=int, default=300, help="rspamd round trips timed, per parallelism")
    ap.add_argument("--hyperscan", action="store_true", help="rspamd with hyperscan (slow start)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--lookups", type=int, default=300, help="DNS list checks timed, uncached and cached")
    args = ap.parse_args()
    for tool in (SMTP_SOURCE, RSPAMD, REDIS):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} not found (Debian packages postfix, rspamd, redis-server)")
    if not STOCK.is_dir():
        raise SystemExit(f"{STOCK} not found (Debian package rspamd)")

    work = Path(tempfile.mkdtemp(prefix="bench-spam-"))
    work.chmod(0o755)  # rspamd runs as _rspamd and reads its configuration under here
    dns: Dnsmasq | PythonDns = Dnsmasq(work) if os.path.exists(DNSMASQ) else PythonDns()
    rspamd = BenchRspamd(work / "rspamd", dns.nameserver, args.hyperscan)
    (work / "rspamd").mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    rates: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    rspamd_cpu: list[float] = []
    latency: dict[int, list[float]] = {}
    checks: dict[str, list[float]] = {}
    try:
        t0 = time.monotonic()
        rspamd.start()
        print(f"rspamd 3.4 up in {time.monotonic() - t0:.1f} s (hyperscan {'on' if args.hyperscan else 'off'})",
              flush=True)
        rspamd_pid = rspamd.procs[-1].pid
        servers: dict[str, tuple[int, Path, int]] = {}
        for mode in MODES:
            proc, port, new_dir = start_mailhaven(work, dns.nameserver, tag=f"mh-{mode}",
                                                  extra=spam_config(mode, rspamd.url))
            procs.append(proc)
            servers[mode] = (port, new_dir, proc.pid)
        for port, new_dir, _ in servers.values():  # warm-up: imports, rspamd's first scans
            run_load(port, new_dir, 4, 40, args.size)
        for r in range(args.runs):
            for sessions, n in ((1, args.messages_1), (20, args.messages_20)):
                order = list(MODES[r % len(MODES):] + MODES[:r % len(MODES)])
                for mode in order:
                    port, new_dir, pid = servers[mode]
                    c0, s0 = tree_cpu(pid), tree_cpu(rspamd_pid)
                    rate = run_load(port, new_dir, sessions, n, args.size)
                    cpu.setdefault((mode, sessions), []).append((tree_cpu(pid) - c0) / n * 1000)
                    if mode == "rspamd":
                        rspamd_cpu.append((tree_cpu(rspamd_pid) - s0) / n * 1000)
                    rates.setdefault((mode, sessions), []).append(rate)
                    print(f"run {r + 1}: {mode:<7} {sessions:>2} session(s) {n:>5} msgs: {rate:8.1f} msg/s  "
                          f"{cpu[(mode, sessions)][-1]:5.2f} ms CPU/msg", flush=True)
        for parallel in (1, 20):
            latency[parallel] = asyncio.run(round_trips(rspamd.url, args.size, args.scans, parallel))
        checks = asyncio.run(list_checks(dns.nameserver, args.lookups))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        rspamd.stop()
        dns.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    print(f"\nmedian of {args.runs} runs, {args.size}-octet messages, one connection per message, messages/second "
          f"accepted and in the INBOX, and Mailhaven's CPU ms per message:")
    print(f"{'sessions':<10}" + "".join(f"{m:>10}{'cpu':>7}" for m in MODES)
          + "".join(f"{m + '/emb':>12}" for m in MODES[1:]))
    for sessions in (1, 20):
        rate = {m: med(rates[(m, sessions)]) for m in MODES}
        print(f"{sessions:<10}" + "".join(f"{rate[m]:10.1f}{med(cpu[(m, sessions)]):7.2f}" for m in MODES)
              + "".join(f"{rate[m] / rate['embedded']:12.2f}" for m in MODES[1:]))
    print(f"rspamd's own CPU per scanned message (all its processes): {med(rspamd_cpu):.2f} ms (median of runs)")
    for parallel, times in latency.items():
        print(f"rspamd round trip (Mailhaven's client, /checkv2, {args.size} octets), {parallel:>2} in flight: "
              f"p50 {pct(times, 50):6.1f} ms  p99 {pct(times, 99):6.1f} ms  ({len(times)} scans)")
    for kind, times in checks.items():
        print(f"DNS list check (policy/dnsbl.py, one list, NXDOMAIN), {kind:<8}: p50 {pct(times, 50):6.3f} ms  "
              f"p99 {pct(times, 99):6.3f} ms  ({len(times)} checks)")
    print("rspamd as the tests configure it: network modules (RBL, fuzzy, ...) off, one normal worker, "
          f"hyperscan {'on' if args.hyperscan else 'off'}.")


if __name__ == "__main__":
    main()
