"""IDLE fan-out and memory benchmark: N IDLE connections on one account, one message delivered by
SMTP, the time until each connection reads its `* n EXISTS`; and the server's memory.

    python bench/bench_idle.py [--messages 10000] [--counts 1000,5000,10000] [--runs 3]
                               [--workers 1] [--no-dovecot] [--keep]

What it does, under one temporary directory, loopback only:
- writes an INBOX of --messages messages (bench/_dovecot.py's Maildir, moved to cur/ and \\Seen as a
  mailbox in use) and starts Mailhaven
  (`python -m mailhaven -c <config> serve`) with an "imap" and an "mx" listener, connection limits
  raised for the bench (max_connections, per_ip_connections), `[policy] check_local = false` (no DNS
  for the loopback MX client) and `[server] workers = --workers` (1: one process, whose RSS is the
  server's); RLIMIT_NOFILE is raised here and inherited by the server;
- memory: the server's RSS (/proc/PID/status VmRSS, every process of it summed) idle after start
  (interpreter and imports), then with the INBOX selected by one client (LOGIN, SELECT INBOX,
  FETCH 1:* (FLAGS)) the first time (the index is built from the files); then the same after a
  restart (the index is there, as on a running installation), then after that client also fetched
  1:* (ENVELOPE) (the message cache filled); and RSS per IDLE connection: max(--counts)
  connections opened (LOGIN, SELECT INBOX, IDLE) on that server, RSS growth / N;
- fan-out, for each N in --counts, --runs rounds: N raw asyncio connections (no threads) each do
  LOGIN, SELECT INBOX, IDLE (RSS growth / N is printed too, but memory freed by earlier rounds is
  reused: the figure above is the one to quote); then one
  message goes in by SMTP (a raw asyncio SMTP client on the same loop) and each connection's latency
  is the time from sending the DATA's final "." to reading its `* n EXISTS` line. p50/p99/max of the
  N latencies, medians over the rounds are printed, with the server's CPU time (user + system, all
  threads) from the delivery to the last EXISTS read: steadier than latency on a shared machine;
- with Dovecot installed (and not --no-dovecot), the RSS of Dovecot's imap process with the same
  INBOX selected (bench_imap.py's setup), for comparison.
The machine may be shared: run it a few times and compare medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _dovecot as shared
from _dovecot import PASSWORD, USER
from bench_imap import Client, _status_kib, dovecot_imap_pids, head, start_imap_dovecot

GREETING = b"* OK"


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, min(want, hard) if hard != resource.RLIM_INFINITY else want)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start_mailhaven(work: Path, maildir: Path, pw_hash: str, conns: int, workers: int) -> tuple[subprocess.Popen[bytes], int, int]:
    data = work / "mh-data"
    user_dir = data / "mail" / "example.test" / "alice"
    user_dir.parent.mkdir(parents=True)
    shutil.copytree(maildir, user_dir, ignore=shutil.ignore_patterns("dovecot.index*", "dovecot.list*"))
    users = work / "mh-users.toml"
    users.write_text(f'[users."{USER}"]\npassword = "{pw_hash}"\n')
    imap, mx = shared.free_port(), shared.free_port()
    cfg = work / "mailhaven.toml"
    cfg.write_text(
        f'hostname = "localhost"\ndata_dir = "{data}"\nusers_file = "{users}"\n'
        f'[server]\nworkers = {workers}\n[domains."example.test"]\n'
        f'[auth]\nallow_plaintext_loopback = true\nfailure_delay = 0\nmax_checks_per_ip = 64\n'
        f'[policy]\ncheck_local = false\n[log]\nlevel = "warning"\n'
        f'[listeners.imap]\naddress = "127.0.0.1"\nport = {imap}\ntls = "none"\n'
        f'max_connections = {conns}\nper_ip_connections = {conns}\n'
        f'[listeners.mx]\naddress = "127.0.0.1"\nport = {mx}\ntls = "none"\n')
    return launch(work, imap, mx), imap, mx


def launch(work: Path, imap: int, mx: int) -> subprocess.Popen[bytes]:
    """(Re)start the server start_mailhaven configured."""
    env = {k: v for k, v in os.environ.items() if k != "MAILHAVEN_FAST_HASH"}
    proc = subprocess.Popen([sys.executable, "-m", "mailhaven", "-c", str(work / "mailhaven.toml"), "serve"],
                            stdout=open(work / "mailhaven.log", "ab"), stderr=subprocess.STDOUT, env=env)
    shared.wait_port(imap, proc, "mailhaven", GREETING)
    shared.wait_port(mx, proc, "mailhaven", b"220")
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads) and its children (the workers) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(cpu_seconds(int(c)) for c in children)


def rss_kib(pid: int) -> int:
    """VmRSS of the process and its children (the workers when there is a supervising parent)."""
    total = _status_kib(pid, "VmRSS")
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(rss_kib(int(c)) for c in children)


# --- IDLE clients ----------------------------------------------------------------------------------


async def _until(reader: asyncio.StreamReader, prefix: bytes) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise EOFError(prefix)
        if line.startswith(prefix):
            return line


async def open_idlers(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    sem = asyncio.Semaphore(64)
    out: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
            await reader.readline()
            writer.write(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
            line = await _until(reader, b"a ")
            if not line.startswith(b"a OK"):
                raise RuntimeError(line)
            await _until(reader, b"b OK")
            await _until(reader, b"+ ")
            out.append((reader, writer))

    await asyncio.gather(*(one() for _ in range(n)))
    return out


async def smtp_deliver(port: int, mark: list[float]) -> None:
    """One message to USER; mark[0] = the time the DATA's final "." was sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise EOFError("smtp")
            if line[3:4] != b"-":
                return line

    await reply()
    for cmd in (b"EHLO bench.test", b"MAIL FROM:<bench@sender.test>", f"RCPT TO:<{USER}>".encode(), b"DATA"):
        writer.write(cmd + b"\r\n")
        line = await reply()
        if line[:1] not in (b"2", b"3"):
            raise RuntimeError(line)
    writer.write(b"From: bench@sender.test\r\nTo: " + USER.encode() + b"\r\nSubject: fan-out\r\n\r\nhello\r\n")
    mark.append(time.perf_counter())
    writer.write(b".\r\n")
    line = await reply()
    if not line.startswith(b"250"):
        raise RuntimeError(line)
    writer.write(b"QUIT\r\n")
    await reply()
    writer.close()


async def fanout_round(imap: int, mx: int, n: int, pid: int, profile: str = "") -> dict[str, float]:
    before = rss_kib(pid)
    t_open = time.perf_counter()
    conns = await open_idlers(imap, n)
    opened = time.perf_counter() - t_open
    await asyncio.sleep(2)
    after = rss_kib(pid)
    got: list[float] = []
    mark: list[float] = []

    async def wait_exists(reader: asyncio.StreamReader) -> None:
        await _until(reader, b"* ")  # the first untagged line after "+ idling" is EXISTS (or RECENT)
        got.append(time.perf_counter())

    waiters = [asyncio.ensure_future(wait_exists(r)) for r, _ in conns]
    spy = None
    if profile:  # py-spy (pip install py-spy) samples the server while the fan-out happens
        spy = await asyncio.create_subprocess_exec(
            "py-spy", "record", "--pid", str(pid), "--rate", "250", "--duration", "8", "--format", "raw",
            "-o", profile, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.5)
    await asyncio.sleep(0.2)
    cpu0 = cpu_seconds(pid)
    await smtp_deliver(mx, mark)
    await asyncio.wait_for(asyncio.gather(*waiters), 120)
    cpu = cpu_seconds(pid) - cpu0
    if spy is not None:
        await spy.wait()
    lat = sorted(t - mark[0] for t in got)
    for _, w in conns:
        w.write(b"DONE\r\nz LOGOUT\r\n")
    await asyncio.sleep(0.5)
    for _, w in conns:
        w.close()
    await asyncio.sleep(2)
    return {"p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max": lat[-1],
            "rss_per_conn_kib": (after - before) / n, "open_s": opened, "cpu_ms": cpu * 1000}


# --- main ----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--counts", default="1000,5000,10000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--py-spy", default="", metavar="FILE",
                    help="profile the server with py-spy during the last round of the largest N (raw format)")
    args = ap.parse_args()
    counts = [int(x) for x in args.counts.split(",") if x]
    limit = raise_nofile(max(counts, default=0) + 2000)  # each side: its N sockets and a few
    if limit < max(counts, default=0) + 500:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}: too low for {max(counts)} connections")

    from mailhaven.auth.passwords import hash_password

    work = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    proc: subprocess.Popen[bytes] | None = None
    dv_conf: Path | None = None
    try:
        src = work / "Maildir"
        shared.make_maildir(src, args.messages, args.size, head)
        for name in os.listdir(src / "new"):  # seen by a client, as a mailbox in use (Dovecot moves them too)
            os.rename(src / "new" / name, src / "cur" / f"{name}:2,S")
        pw_hash = hash_password(PASSWORD)
        mem: dict[str, float] = {}
        if not args.no_dovecot and shared.dovecot_available():
            dv_conf, dv_port = start_imap_dovecot(work, src, pw_hash, 10)
            c = Client(dv_port)
            c.cmd(f'LOGIN {USER} "{PASSWORD}"')
            c.cmd("SELECT INBOX")
            c.cmd("FETCH 1:* (FLAGS)")
            time.sleep(0.5)
            mem["dovecot imap process, INBOX selected"] = max(
                (_status_kib(p, "VmRSS") for p in dovecot_imap_pids()), default=0) / 1024
            c.cmd("FETCH 1:* (ENVELOPE)")
            mem["dovecot imap process, after FETCH 1:* (ENVELOPE)"] = max(
                (_status_kib(p, "VmRSS") for p in dovecot_imap_pids()), default=0) / 1024
            c.close()
            shared.stop_dovecot(dv_conf)
            dv_conf = None
            src = work / "dovecot" / "mail"  # with Dovecot's uidlist, as after a migration
        proc, imap, mx = start_mailhaven(work, src, pw_hash, max(counts, default=0) + 100, args.workers)
        time.sleep(2)
        mem["mailhaven idle (interpreter + imports)"] = rss_kib(proc.pid) / 1024
        c = Client(imap)
        c.cmd(f'LOGIN {USER} "{PASSWORD}"')
        c.cmd("SELECT INBOX")
        c.cmd("FETCH 1:* (FLAGS)")
        time.sleep(0.5)
        mem["mailhaven, INBOX selected, first time (index built)"] = rss_kib(proc.pid) / 1024
        c.close()
        shared.stop_mailhaven(proc)  # again, as after a restart: the index is there
        proc = launch(work, imap, mx)
        time.sleep(2)
        mem["mailhaven restarted, idle"] = rss_kib(proc.pid) / 1024
        c = Client(imap)
        c.cmd(f'LOGIN {USER} "{PASSWORD}"')
        c.cmd("SELECT INBOX")
        c.cmd("FETCH 1:* (FLAGS)")
        time.sleep(0.5)
        mem["mailhaven restarted, INBOX selected"] = rss_kib(proc.pid) / 1024
        c.cmd("FETCH 1:* (ENVELOPE)")
        time.sleep(0.5)
        mem["mailhaven, after FETCH 1:* (ENVELOPE)"] = rss_kib(proc.pid) / 1024
        c.close()
        loop = asyncio.new_event_loop()
        try:
            if counts:  # per IDLE connection, before any fan-out round (whose closed connections'
                n = max(counts)  # memory the next round would reuse)
                time.sleep(1)
                before = rss_kib(proc.pid)
                conns = loop.run_until_complete(open_idlers(imap, n))
                time.sleep(2)
                per_conn = (rss_kib(proc.pid) - before) / n
                for _, w in conns:
                    w.write(b"DONE\r\nz LOGOUT\r\n")
                    w.close()
                loop.run_until_complete(asyncio.sleep(3))
            print(f"\nmemory (MiB, VmRSS), INBOX of {args.messages} messages of ~{args.size} octets:")
            for k, v in mem.items():
                print(f"  {k:<55}{v:8.1f}")
            if counts:
                label = f"RSS per IDLE connection (KiB), {max(counts)} connections"
                print(f"  {label:<55}{per_conn:8.1f}")
            sys.stdout.flush()
            print(f"\nIDLE fan-out, one SMTP delivery, {args.runs} runs, medians (workers = {args.workers}):")
            print(f"  {'N':>6}{'p50 s':>9}{'p99 s':>9}{'max s':>9}{'KiB/conn':>10}{'open s':>9}"
                  f"{'srv CPU ms':>12}")
            for n in counts if args.runs else []:  # --runs 0: memory only
                rounds = [loop.run_until_complete(fanout_round(
                    imap, mx, n, proc.pid, args.py_spy if n == max(counts) and i == args.runs - 1 else ""))
                    for i in range(args.runs)]
                med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
                print(f"  {n:>6}{med['p50']:9.3f}{med['p99']:9.3f}{med['max']:9.3f}"
                      f"{med['rss_per_conn_kib']:10.1f}{med['open_s']:9.1f}{med['cpu_ms']:12.0f}"
                      "   runs p99: " + ", ".join(format(r["p99"], ".3f") for r in rounds))
                sys.stdout.flush()
        finally:
            loop.close()
    finally:
        if proc is not None:
            shared.stop_mailhaven(proc)
        if dv_conf is not None:
            shared.stop_dovecot(dv_conf)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
