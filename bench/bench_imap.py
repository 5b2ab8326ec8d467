"""IMAP benchmark: Mailhaven beside Dovecot on copies of the same 10,000-message Maildir.

    python bench/bench_imap.py [--messages 10000] [--size 4096] [--runs 3] [--idle 1000] [--no-dovecot]
                               [--backend sqlite|postgresql|both]

What it does, all under one temporary directory, loopback only, nothing in /etc touched:
- writes N messages of about SIZE octets (LF line endings, as Postfix delivers them) into a Maildir;
- starts Dovecot (`/usr/sbin/dovecot -c <config>`, IMAP only, passwd-file with the SAME argon2id hash
  as Mailhaven's users file, verbose_proctitle so its per-user imap process can be found), lets it
  index the Maildir, then gives Mailhaven a copy of that Maildir (with the dovecot-uidlist, as a
  migration would) and starts it (`python -m mailhaven -c <config> serve`, one IMAP listener);
- per server: one cold round (first LOGIN+SELECT builds the index; caches empty), then RUNS rounds,
  alternating between the servers, of: LOGIN+SELECT; UID FETCH 1:* (FLAGS); FETCH 1:* (ENVELOPE);
  FETCH 1:1000 (BODY.PEEK[]); UID SEARCH SUBJECT x; UID SEARCH HEADER Subject "bench message 004242";
  STORE 1:* +FLAGS (\\Seen) (then -FLAGS.SILENT to undo, not timed). Medians are reported;
- resident memory of the server with the mailbox selected (Mailhaven: the server process; Dovecot:
  the user's imap process), after the rounds;
- memory per connection with IDLE clients: IDLE connections are opened (LOGIN, SELECT INBOX, IDLE)
  and the server's memory is read before and after: Mailhaven's RSS growth / N; Dovecot's sum of
  the imap processes' PSS (proportional set size, so shared pages count once) / N, and RSS / N.
`--backend postgresql` runs Mailhaven with `[storage] backend = "postgresql"` (the mail index in
Debian's PostgreSQL, a cluster of the tests' own: tests/fixtures_postgres.py, fsync off as there;
column "mailhaven-pg"); `both` runs the two side by side, each on its own copy of the Maildir.
The client is a minimal raw-socket IMAP reader (lines and literals), the same for both servers, so
the figures measure the servers rather than imaplib's parser (which needs ~100 ms for 10,000 lines).
Run as root (Dovecot needs it to start; mail is owned by `nobody`). The Maildir and the two servers'
start and stop are bench/_dovecot.py's, shared with bench_pop3.py.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _dovecot as shared
from _dovecot import PASSWORD, USER

GREETING = b"* OK"


def head(i: int) -> str:
    """Subject "bench message NNNNNN"."""
    return (f"Return-Path: <sender{i % 97}@example.org>\nFrom: Sender {i % 97} <sender{i % 97}@example.org>\n"
            f"To: Alice <{USER}>\nSubject: bench message {i:06d}\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <bench{i}@example.org>\n"
            f"X-Bench-Group: g{i % 100}\nMIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n")


def start_imap_mailhaven(work: Path, maildir: Path, pw_hash: str, idle: int, *, dsn: str = "",
                         name: str = "mh") -> tuple[subprocess.Popen[bytes], int]:
    conns = max(100, idle + 50)
    return shared.start_mailhaven(work, maildir, pw_hash, "imap", GREETING,
                                  auth_extra="max_failures_per_ip = 1000000\n",
                                  listener_extra=f"max_connections = {conns}\nper_ip_connections = {conns}\n",
                                  dsn=dsn, name=name)


def start_imap_dovecot(work: Path, maildir: Path, pw_hash: str, idle: int) -> tuple[Path, int]:
    """verbose_proctitle, so the per-user imap process can be found; limits for the IDLE clients."""
    limit = max(100, idle + 50)
    return shared.start_dovecot(
        work, maildir, pw_hash, "imap", GREETING,
        settings=(f"auth_mechanisms = plain login\nverbose_proctitle = yes\n"
                  f"mail_max_userip_connections = {limit}\ndefault_process_limit = {limit}\n"
                  f"default_client_limit = {limit * 2}"),
        login_service=f"  process_limit = {limit}\n",
        services=(f"service imap {{\n  process_limit = {limit}\n}}\n"
                  f"service auth {{\n  client_limit = {limit * 2}\n}}\n"
                  f"service anvil {{\n  client_limit = {limit * 3 + 10}\n}}\n"))


# --- memory --------------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def _pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def dovecot_imap_pids() -> list[int]:
    """The per-user imap processes of the bench's Dovecot (verbose_proctitle: "dovecot-<instance>/imap [alice...")."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if re.match(rb"dovecot[^/ ]*/imap \[" + re.escape(USER.encode()), cmd):
            out.append(int(entry.name))
    return out


# --- a minimal IMAP client -----------------------------------------------------------------------


class Client:
    """Blocking, reads responses (lines with literals) until the tagged reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.file = self.sock.makefile("rb", buffering=1 << 16)
        self.file.readline()
        self.n = 0

    def cmd(self, text: str) -> tuple[bytes, int, int]:
        """(tagged line, untagged responses, octets read)."""
        self.n += 1
        tag = b"b%d" % self.n
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        count = octets = 0
        readline = self.file.readline
        while True:
            line = readline()
            if not line:
                raise EOFError(text)
            octets += len(line)
            while line.endswith(b"}\r\n"):  # a literal: its octets, then the rest of the response
                n = int(line[line.rfind(b"{") + 1:-3].rstrip(b"+"))
                octets += n
                self.file.read(n)
                line = readline()
                octets += len(line)
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"{text}: {line!r}")
                return line, count, octets
            count += 1

    def close(self) -> None:
        try:
            self.cmd("LOGOUT")
        except (OSError, EOFError, RuntimeError):
            pass
        self.sock.close()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


OPS = [
    ("UID FETCH 1:* (FLAGS)", "uid_fetch_flags"),
    ("FETCH 1:* (ENVELOPE)", "fetch_envelope"),
    ("FETCH 1:1000 (BODY.PEEK[])", "fetch_body_1000"),
    ("UID SEARCH SUBJECT x", "search_subject_x"),
    ('UID SEARCH HEADER Subject "bench message 004242"', "search_header"),
    ("STORE 1:* +FLAGS (\\Seen)", "store_seen"),
]


def one_round(port: int, messages: int) -> dict[str, float]:
    res: dict[str, float] = {}
    t0 = time.perf_counter()
    c = Client(port)
    c.cmd(f'LOGIN {USER} "{PASSWORD}"')
    c.cmd("SELECT INBOX")
    res["login_select"] = time.perf_counter() - t0
    for command, key in OPS:
        command = command.replace("1:1000", f"1:{min(1000, messages)}")
        res[key], _ = timed(lambda command=command: c.cmd(command))  # type: ignore[misc]
    c.cmd("STORE 1:* -FLAGS.SILENT (\\Seen)")
    c.close()
    return res


# --- IDLE memory -----------------------------------------------------------------------------------


async def open_idlers(port: int, n: int) -> list[asyncio.StreamWriter]:
    sem = asyncio.Semaphore(40)
    writers: list[asyncio.StreamWriter] = []

    async def until(reader: asyncio.StreamReader, prefix: bytes) -> None:
        while True:
            line = await reader.readline()
            if not line:
                raise EOFError(prefix)
            if line.startswith(prefix):
                return

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            await reader.readline()
            writer.write(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\n'.encode())
            await until(reader, b"a ")
            await until(reader, b"b OK")
            writer.write(b"c IDLE\r\n")
            await until(reader, b"+ ")
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    return writers


def idle_memory(port: int, n: int, measure: Callable[[], tuple[int, int]]) -> dict[str, float]:
    """Memory per IDLE connection: (measure() after - before) / n, for (RSS, PSS) in KiB."""
    loop = asyncio.new_event_loop()
    try:
        before = measure()
        t0 = time.perf_counter()
        writers = loop.run_until_complete(open_idlers(port, n))
        opened = time.perf_counter() - t0
        time.sleep(2)
        after = measure()
        for w in writers:
            w.write(b"DONE\r\nz LOGOUT\r\n")
            w.close()
        loop.run_until_complete(asyncio.sleep(1))
    finally:
        loop.close()
    return {"rss_per_conn_kib": (after[0] - before[0]) / n, "pss_per_conn_kib": (after[1] - before[1]) / n,
            "open_seconds": opened, "rss_after_mib": after[0] / 1024}


# --- main ----------------------------------------------------------------------------------------


def _postgres(work: Path) -> Any:
    """The tests' PostgreSQL cluster (tests/fixtures_postgres.py), started under `work`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.fixtures_postgres import Postgres, bindir

    where = bindir()
    if where is None:
        raise SystemExit("--backend postgresql needs Debian's postgresql (initdb, pg_ctl)")
    work.chmod(0o755)  # the cluster runs as the postgres user
    (work / "pg").mkdir()
    cluster = Postgres(work / "pg", where).init()
    cluster.start()
    return cluster


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle", type=int, default=1000, help="IDLE connections for the memory figure (0 = skip)")
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="sqlite",
                    help="Mailhaven's [storage] backend: the mail index in SQLite files, in PostgreSQL, or both")
    args = ap.parse_args()

    from mailhaven.auth.passwords import hash_password

    work = Path(tempfile.mkdtemp(prefix="bench-imap-"))
    mh_procs: dict[str, subprocess.Popen[bytes]] = {}
    dv_conf: Path | None = None
    cluster = None
    try:
        src = work / "Maildir"
        shared.make_maildir(src, args.messages, args.size, head)
        pw_hash = hash_password(PASSWORD)
        print(f"maildir: {args.messages} messages of ~{args.size} octets, in {work}", file=sys.stderr)
        ports: dict[str, int] = {}
        use_dovecot = not args.no_dovecot and shared.dovecot_available()
        mh_src = src
        if use_dovecot:
            dv_conf, ports["dovecot"] = start_imap_dovecot(work, src, pw_hash, args.idle)
            mh_src = work / "dovecot" / "mail"
        cold: dict[str, dict[str, float]] = {}
        if use_dovecot:
            cold["dovecot"] = one_round(ports["dovecot"], args.messages)  # indexes; Mailhaven then gets its uidlist
        backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
        for backend in backends:
            name, dsn = "mailhaven", ""
            if backend == "postgresql":
                cluster = cluster or _postgres(work)
                name, dsn = "mailhaven-pg", cluster.create_database()
            mh_procs[name], ports[name] = start_imap_mailhaven(work, mh_src, pw_hash, args.idle, dsn=dsn,
                                                               name=name)
            cold[name] = one_round(ports[name], args.messages)
        rounds: dict[str, list[dict[str, float]]] = {n: [] for n in ports}
        for _ in range(args.runs):
            for name, port in ports.items():
                rounds[name].append(one_round(port, args.messages))
        # memory with the mailbox selected
        rss: dict[str, float] = {}
        holders = {}
        for name, port in ports.items():
            c = Client(port)
            c.cmd(f'LOGIN {USER} "{PASSWORD}"')
            c.cmd("SELECT INBOX")
            c.cmd("FETCH 1:* (FLAGS)")
            holders[name] = c
        time.sleep(0.5)
        for name, proc in mh_procs.items():
            rss[name] = _status_kib(proc.pid, "VmRSS") / 1024
        if use_dovecot:
            pids = dovecot_imap_pids()
            rss["dovecot"] = max((_status_kib(p, "VmRSS") for p in pids), default=0) / 1024
        for c in holders.values():
            c.close()
        idle: dict[str, dict[str, float]] = {}
        first = next(iter(mh_procs))
        if args.idle:
            time.sleep(1)
            pid = mh_procs[first].pid
            idle[first] = idle_memory(ports[first], args.idle, lambda: (_status_kib(pid, "VmRSS"), _pss_kib(pid)))
            if use_dovecot:
                def dv_measure() -> tuple[int, int]:
                    pids = dovecot_imap_pids()
                    return sum(_status_kib(p, "VmRSS") for p in pids), sum(_pss_kib(p) for p in pids)
                idle["dovecot"] = idle_memory(ports["dovecot"], args.idle, dv_measure)

        mh_names = list(mh_procs)
        dv_col = "dovecot" if "dovecot" in ports else None
        cols = [*mh_names, "dovecot"]
        print(f"\nIMAP, {args.messages} messages of ~{args.size} octets, median of {args.runs} runs "
              f"(ms; ratio = each mailhaven / dovecot; cold = first round, empty caches)")
        print(f"{'measure':<46}" + "".join(f"{n:>14}" for n in cols)
              + "".join(f"{'ratio':>8}" for _ in mh_names) + "".join(f"{n + ' cold':>18}" for n in cols))
        keys = [("LOGIN + SELECT", "login_select")] + [(cmd, key) for cmd, key in OPS]
        for label, key in keys:
            vals = {n: statistics.median(r[key] for r in rounds[n]) * 1000 for n in ports}
            dv = vals.get("dovecot")
            line = f"{label:<46}" + "".join(f"{vals[n]:>14.1f}" if n in vals else f"{'-':>14}" for n in cols)
            line += "".join(f"{vals[n] / dv:>8.2f}" if dv else f"{'-':>8}" for n in mh_names)
            line += "".join(f"{cold[n][key] * 1000:>18.1f}" if n in cold else f"{'-':>18}" for n in cols)
            print(line)
        if rss:
            dv = rss.get("dovecot")
            print(f"{'RSS with INBOX selected (MiB)':<46}"
                  + "".join(f"{rss[n]:>14.1f}" if n in rss else f"{'-':>14}" for n in cols)
                  + "".join(f"{rss[n] / dv:>8.2f}" if dv else f"{'-':>8}" for n in mh_names)
                  + "   (mailhaven: whole server; dovecot: the user's imap process)")
        for key, label in (("rss_per_conn_kib", "RSS per IDLE connection (KiB)"),
                           ("pss_per_conn_kib", "PSS per IDLE connection (KiB)")):
            if not idle:
                break
            mh = idle[first][key]
            dvi = idle.get("dovecot", {}).get(key)
            print(f"{label:<46}{mh:>14.1f}" + (f"{dvi:>14.1f}{mh / dvi:>8.2f}" if dvi else f"{'-':>14}{'-':>8}")
                  + f"   ({first}; {args.idle} clients: LOGIN, SELECT INBOX, IDLE)")
        if idle:
            print(f"{'time to open the IDLE connections (s)':<46}{idle[first]['open_seconds']:>14.1f}"
                  + (f"{idle['dovecot']['open_seconds']:>14.1f}" if "dovecot" in idle else ""))
        if dv_col is None:
            print("(no Dovecot: /usr/sbin/dovecot not found or --no-dovecot)")
        return 0
    finally:
        for proc in mh_procs.values():
            shared.stop_mailhaven(proc)
        if dv_conf is not None:
            shared.stop_dovecot(dv_conf)
        if cluster is not None:
            cluster.stop()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
