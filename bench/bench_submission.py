"""Submission benchmark: messages per second from authenticated TLS sessions on the submission
listener, through the queue, to a remote MX (Postfix's smtp-sink).

    python bench/bench_submission.py [--runs 3] [--size 4096] [--messages-1 300] [--messages-20 2000]
                                     [--listener submission|submissions] [--no-dkim] [--keep]

What it does, all under one temporary directory, loopback only:
- starts the test DNS server (tests/dnsserver.py, in its own process) answering `remote.test MX
  mx.remote.test` and `mx.remote.test A 127.0.0.8`;
- starts `smtp-sink -d DIR/%H%M%S.` on 127.0.0.8 (one file per message received: the count of
  files is the count of messages delivered);
- starts Mailhaven as a real server process (`python -m mailhaven -c <config> serve`) with the
  "submission" (STARTTLS) and "submissions" (implicit TLS) listeners, a self-signed certificate,
  one user with a real argon2 hash, DKIM signing with a 2048-bit RSA key (off with --no-dkim),
  queue.remote_port = the sink's port, fsync on (the 250 comes after the spool file is fsynced);
- per round and per session count S (1 and 20): S aiosmtplib clients each open one session
  (STARTTLS or implicit TLS, certificate verified, AUTH PLAIN once) and send their share of N
  messages of SIZE octets to distinct recipients at remote.test; the clock starts before the
  connections and stops (a) when the last 250 arrives: "accepted/s", and (b) when smtp-sink has
  written the N-th message: "delivered/s" (end to end);
- prints the median of RUNS rounds and the command that reproduces it.

The client runs in this process (asyncio + aiosmtplib, one core); the server in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import ssl
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

USER = "alice@example.test"
PASSWORD = "bench-password-1"
SINK_IP = "127.0.0.8"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, proc: subprocess.Popen[Any], what: str, tls: bool = False,
              timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start on {host} port {port}")


def count_files(folder: Path) -> int:
    return sum(1 for e in os.scandir(folder) if e.is_file())


def message(size: int, i: int) -> bytes:
    head = (f"From: Alice <{USER}>\r\nTo: <rcpt{i}@remote.test>\r\nSubject: bench {i}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return head + (line * (size // len(line) + 1))[: max(0, size - len(head))]


class Dns:
    """tests/dnsserver.py in a child process (it would otherwise share the client's GIL)."""

    def __init__(self, records: dict[str, tuple[str, str]]) -> None:
        code = ("import json, sys\nfrom tests.dnsserver import DnsServer\ns = DnsServer().start()\n"
                "for n, (t, v) in json.loads(sys.argv[1]).items(): s.add(n, t, v)\n"
                "print(s.nameserver, flush=True)\nsys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(records)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.nameserver = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(5)


def start_sink(work: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    exe = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(exe):
        raise SystemExit("smtp-sink (Debian package postfix) is needed")
    dump = work / "sink"
    dump.mkdir()
    dump.chmod(0o777)  # smtp-sink drops to nobody when started as root
    port = free_port(SINK_IP)
    args = [exe, "-h", "mx.remote.test", "-d", f"{dump}/%H%M%S."]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    proc = subprocess.Popen([*args, f"{SINK_IP}:{port}", "512"])
    wait_port(SINK_IP, port, proc, "smtp-sink")
    return proc, port, dump


def start_mailhaven(work: Path, nameserver: str, sink_port: int, dkim: bool) -> tuple[subprocess.Popen[bytes], dict[str, int], Path]:
    from mailhaven.auth.passwords import hash_password
    from mailhaven.auth.users import UsersFile
    from mailhaven.policy.dkim import generate_rsa
    from mailhaven.tls import make_self_signed

    cert, key = work / "cert.pem", work / "key.pem"
    make_self_signed(cert, key, ["localhost", "127.0.0.1"])
    users = work / "users.toml"
    os.environ.pop("MAILHAVEN_FAST_HASH", None)
    with UsersFile.edit(users) as uf:
        uf.add_user(USER, hash_password(PASSWORD))
    domain = '[domains."example.test"]\n'
    if dkim:
        pem, _ = generate_rsa(2048)
        (work / "dkim.key").write_bytes(pem)
        (work / "dkim.key").chmod(0o600)
        domain += f'dkim_key = "{work / "dkim.key"}"\n'
    ports = {"submission": free_port(), "submissions": free_port()}
    listeners = "".join(
        f'[listeners.{name}]\naddress = "127.0.0.1"\nport = {port}\ntls = "{"starttls" if name == "submission" else "implicit"}"\n'
        "max_connections = 1000\nper_ip_connections = 1000\n" for name, port in ports.items())
    cfg = work / "mailhaven.toml"
    cfg.write_text(
        f'hostname = "mail.example.test"\ndata_dir = "{work / "data"}"\nusers_file = "{users}"\n'
        f'control_socket = "control.sock"\n{domain}'
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        f'[dns]\nnameservers = ["{nameserver}"]\ntimeout = 2.0\n'
        f'[queue]\nremote_port = {sink_port}\nmax_active = 200\nmax_per_destination = 20\nretry_schedule = ["5s"]\n'
        f'[log]\nlevel = "warning"\n{listeners}')
    env = {k: v for k, v in os.environ.items() if k != "MAILHAVEN_FAST_HASH"}
    proc = subprocess.Popen([sys.executable, "-m", "mailhaven", "-c", str(cfg), "serve"],
                            stdout=open(work / "mailhaven.log", "wb"), stderr=subprocess.STDOUT, env=env)
    for port in ports.values():
        wait_port("127.0.0.1", port, proc, "mailhaven")
    return proc, ports, cert


async def session(port: int, implicit: bool, tls: ssl.SSLContext, ids: list[int], size: int) -> None:
    import aiosmtplib

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=implicit, start_tls=not implicit,
                             tls_context=tls, timeout=120)
    async with client:
        await client.ehlo()
        await client.login(USER, PASSWORD)
        for i in ids:
            errors, reply = await client.sendmail(USER, [f"rcpt{i}@remote.test"], message(size, i))
            if errors or not reply.startswith("2.0.0"):
                raise SystemExit(f"message {i} refused: {errors or reply}")


async def one_round(port: int, implicit: bool, tls: ssl.SSLContext, sessions: int, n: int, size: int,
                    sink_dir: Path, base: int) -> tuple[float, float]:
    shares = [list(range(base + s, base + n, sessions)) for s in range(sessions)]
    before = count_files(sink_dir)
    start = time.monotonic()
    await asyncio.gather(*(session(port, implicit, tls, ids, size) for ids in shares))
    accepted = time.monotonic() - start
    deadline = start + 600
    while count_files(sink_dir) < before + n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {count_files(sink_dir) - before} of {n} messages reached smtp-sink")
        await asyncio.sleep(0.005)
    delivered = time.monotonic() - start
    return n / accepted, n / delivered


async def bench(args: argparse.Namespace, work: Path) -> None:
    dns = Dns({"remote.test": ("MX", "10 mx.remote.test."), "mx.remote.test": ("A", SINK_IP)})
    sink = mh = None
    try:
        sink, sink_port, sink_dir = start_sink(work)
        mh, ports, cert = start_mailhaven(work, dns.nameserver, sink_port, not args.no_dkim)
        tls = ssl.create_default_context(cafile=str(cert))
        implicit = args.listener == "submissions"
        levels = [(1, args.messages_1), (20, args.messages_20)]
        base = 0
        # Warm-up: the first session pays for imports, DNS and the TLS session cache.
        await one_round(ports[args.listener], implicit, tls, 1, 5, args.size, sink_dir, base)
        base += 5
        results: dict[int, list[tuple[float, float]]] = {s: [] for s, _ in levels}
        for r in range(args.runs):
            for sessions, n in levels:
                res = await one_round(ports[args.listener], implicit, tls, sessions, n, args.size, sink_dir, base)
                base += n
                results[sessions].append(res)
                print(f"  round {r + 1}: {sessions:>2} session(s): {res[0]:7.1f} accepted/s, {res[1]:7.1f} delivered/s",
                      flush=True)
        cmd = " ".join(["python", "bench/bench_submission.py", *sys.argv[1:]])
        print(f"\nsubmission benchmark ({args.listener}, {'STARTTLS' if not implicit else 'implicit TLS'} + "
              f"AUTH PLAIN, {args.size} octets, DKIM {'off' if args.no_dkim else 'RSA-2048'}, "
              f"median of {args.runs} rounds; reproduce: {cmd})")
        for sessions, n in levels:
            acc = statistics.median(a for a, _ in results[sessions])
            dlv = statistics.median(d for _, d in results[sessions])
            print(f"  {sessions:>2} session(s), {n} messages: {acc:7.1f} msg/s accepted (250), "
                  f"{dlv:7.1f} msg/s delivered to smtp-sink (end to end)")
    finally:
        if mh is not None:
            mh.terminate()
            mh.wait(30)
        if sink is not None:
            sink.terminate()
            sink.wait(5)
        dns.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--messages-1", type=int, default=300, help="messages per round with 1 session")
    ap.add_argument("--messages-20", type=int, default=2000, help="messages per round with 20 sessions")
    ap.add_argument("--listener", choices=["submission", "submissions"], default="submission")
    ap.add_argument("--no-dkim", action="store_true", help="no DKIM signing (default: RSA-2048)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, spool, sink dumps)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mh-bench-sub-", dir="/tmp"))
    work.chmod(0o755)  # smtp-sink (as nobody) must reach its dump folder
    try:
        asyncio.run(bench(args, work))
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
