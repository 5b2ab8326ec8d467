"""Sieve benchmark: what running a user's Sieve script at delivery costs the MX, in one run.

    python bench/bench_sieve.py [--runs 3] [--size 4096] [--messages 1000] [--sessions 20] [--keep]

What it does, all under one temporary directory, loopback only:
- starts the DNS server bench_mx.py uses (dnsmasq, or the tests' Python server without it) with
  `sender.test TXT "v=spf1 ip4:127.0.0.1 -all"`;
- starts two Mailhavens with bench_mx.py's config (only the "mx" listener, no TLS, fsync on, log
  level warning): "none", where alice has no script, and "sieve", where alice's active script
  (sieve_store.py, as `mailhaven sieve put --activate` writes it) has 20 rules of the kinds users
  write (header, address, envelope, size, body tests; fileinto, addflag, stop), none of which
  matches smtp-source's messages, so every message runs all 20 tests and is kept in INBOX (the
  load generator counts new/);
- each round runs `smtp-source -s SESSIONS -l SIZE -m MESSAGES` against each Mailhaven in turn
  (alternating which goes first) and measures until the last message is in the INBOX's new/;
- prints the median messages/second of RUNS rounds per Mailhaven, the ratio sieve/none and the
  median CPU ms per message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for bench.bench_mx

from bench.bench_mx import (  # noqa: E402
    DNSMASQ,
    SMTP_SOURCE,
    USER,
    Dnsmasq,
    PythonDns,
    run_load,
    start_mailhaven,
    tree_cpu,
)

from mailhaven.sieve import compile_script  # noqa: E402
from mailhaven.sieve_store import ScriptStore  # noqa: E402

MODES = ("none", "sieve")

# 20 rules, none matching smtp-source's messages (From/To/Subject/Date/Message-Id, "La la la" lines).
SCRIPT = """require ["fileinto", "envelope", "imap4flags", "body", "mailbox", "relational", "comparator-i;ascii-numeric"];
if header :contains "subject" "[list-a]" { fileinto :create "Lists.A"; stop; }
if header :contains "subject" "[list-b]" { fileinto :create "Lists.B"; stop; }
if header :is "x-mailing-list" "dev@lists.example" { fileinto :create "Lists.Dev"; stop; }
if exists "list-id" { fileinto :create "Lists"; stop; }
if address :domain :is "from" "newsletter.example" { fileinto :create "News"; stop; }
if address :localpart :is "from" "noreply" { fileinto :create "Automated"; stop; }
if envelope :domain :is "from" "billing.example" { fileinto :create "Bills"; stop; }
if header :matches "subject" "*invoice*" { addflag "$Invoice"; }
if header :matches "subject" "Re: *urgent*" { addflag "\\\\Flagged"; }
if address :is "to" "boss@example.test" { addflag "\\\\Flagged"; }
if size :over 10M { fileinto :create "Large"; stop; }
if header :value "gt" :comparator "i;ascii-numeric" "x-priority" "3" { fileinto :create "Low"; stop; }
if header :contains "x-spam-flag" "YES" { fileinto "Junk"; stop; }
if anyof (header :contains "from" "lottery", header :contains "subject" "winner") { discard; stop; }
if allof (header :contains "from" "calendar", header :contains "content-type" "text/calendar") {
    fileinto :create "Calendar"; stop; }
if body :text :contains "unsubscribe from this list" { fileinto :create "Bulk"; stop; }
if header :contains "subject" "[jira]" { fileinto :create "Work.Jira"; stop; }
if header :contains "subject" "[github]" { fileinto :create "Work.GitHub"; stop; }
if address :domain :is "from" "family.example" { fileinto :create "Family"; stop; }
if not exists "date" { fileinto :create "Odd"; stop; }
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if not os.path.exists(SMTP_SOURCE):
        raise SystemExit(f"{SMTP_SOURCE} not found (Debian package postfix)")
    compile_script(SCRIPT.encode())  # refuses a broken script before anything starts

    work = Path(tempfile.mkdtemp(prefix="bench-sieve-"))
    dns: Dnsmasq | PythonDns = Dnsmasq(work) if os.path.exists(DNSMASQ) else PythonDns()
    procs: list[subprocess.Popen[bytes]] = []
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        servers: dict[str, tuple[int, Path, int]] = {}
        for mode in MODES:
            proc, port, new_dir = start_mailhaven(work, dns.nameserver, tag=f"mh-{mode}")
            procs.append(proc)
            servers[mode] = (port, new_dir, proc.pid)
            if mode == "sieve":
                store = ScriptStore(work / f"mh-{mode}-data" / "mail", USER, max_scripts=10, max_size=1 << 20)
                store.put("bench", SCRIPT.encode())
                store.set_active("bench")
        for port, new_dir, _ in servers.values():  # warm-up: imports, the compiled-script cache
            run_load(port, new_dir, 4, 40, args.size)
        for r in range(args.runs):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                port, new_dir, pid = servers[mode]
                c0 = tree_cpu(pid)
                rate = run_load(port, new_dir, args.sessions, args.messages, args.size)
                cpu.setdefault(mode, []).append((tree_cpu(pid) - c0) / args.messages * 1000)
                rates.setdefault(mode, []).append(rate)
                print(f"run {r + 1}: {mode:<6} {args.sessions} sessions {args.messages} msgs: {rate:8.1f} msg/s  "
                      f"{cpu[mode][-1]:5.2f} ms CPU/msg", flush=True)
        # Every message was kept in INBOX by the script: nothing was filed elsewhere.
        sieve_root = work / "mh-sieve-data" / "mail" / "example.test" / "alice"
        filed = [p.name for p in sieve_root.iterdir() if p.name.startswith(".") and p.is_dir()
                 and p.name not in (".Sent", ".Drafts", ".Trash", ".Junk", ".Archive")]
        if filed:
            raise SystemExit(f"the script filed messages into {filed}: the run measured something else")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        dns.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    none, sieve = med(rates["none"]), med(rates["sieve"])
    print(f"\nmedian of {args.runs} runs, {args.size}-octet messages, {args.sessions} sessions, one connection per "
          f"message, messages/second in the INBOX and Mailhaven's CPU ms per message:")
    print(f"no script:          {none:8.1f} msg/s  {med(cpu['none']):5.2f} ms CPU/msg")
    print(f"20-rule script:     {sieve:8.1f} msg/s  {med(cpu['sieve']):5.2f} ms CPU/msg")
    print(f"sieve/none:         {sieve / none:8.2f}")
    print(f"reproduce: python bench/bench_sieve.py --runs {args.runs} --size {args.size} --messages {args.messages} "
          f"--sessions {args.sessions}")


if __name__ == "__main__":
    main()
