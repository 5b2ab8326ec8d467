"""Login cost benchmark: what one IMAP LOGIN costs, and what a login storm does to everyone else,
before and after the login rework (issue 10 item 3), in the same run.

    python bench/bench_login.py [--runs 3] [--logins 20] [--cost-runs 7] [--before f664878] [--no-before]

What it does, all under one temporary directory, loopback only:
- "before" is the code of commit --before (default f664878, the commit before the rework), checked
  out with `git worktree add` into the temporary directory; "after" is this checkout. Each runs as
  its own server process (`python -m mailhaven -c <config> serve`, PYTHONPATH=<tree>/src, no
  MAILHAVEN_FAST_HASH), with IMAP and MX listeners on 127.0.0.1, and users whose hashes that
  version's own `hash_password` made (before: argon2id m=64 MiB, t=3, p=4; after: m=19 MiB, t=2,
  p=1). A DNS server (tests/dnsserver.py) answers the MX's SPF/DMARC lookups, so the MX does its
  policy work (SPF, DKIM, DMARC) as it would on the Internet.
- Login cost: median wall time of the LOGIN command (connection already open, greeting read) over
  --cost-runs logins of users not logged in before ("cold": a full hash), and of the same users
  logging in again ("cached": the verification cache; "after" only).
- Storm: an open session (alice, INBOX selected, one message) and --logins clients that each log in
  again and again (right passwords, 20 users, 20 source addresses 127.0.3.x), so --logins logins
  are always in flight; the verification cache is off for this part ("after": cache_ttl = 0), so
  every login pays its hash, as a storm of new logins would. Meanwhile, --runs times each: `LIST ""
  "*"`, `FETCH 1 (FLAGS)` on the open session, and one MX delivery to alice (connect to 250 after
  the final dot). Medians are reported, and the same with no storm as the baseline.
Prints a table and the command that reproduces it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.dnsserver import DnsServer  # noqa: E402 - the tests' DNS server, for the MX's lookups

ALICE, PASSWORD = "alice@example.test", "bench-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hashes(src: Path, passwords: list[str]) -> list[str]:
    """Hash with that tree's own default parameters (its hash_password), in a subprocess."""
    code = ("import sys, json; from mailhaven.auth.passwords import hash_password; "
            "print(json.dumps([hash_password(p) for p in json.load(sys.stdin)]))")
    import json

    env = {k: v for k, v in os.environ.items() if k != "MAILHAVEN_FAST_HASH"}
    env["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(passwords), capture_output=True,
                         text=True, env=env, check=True)
    return list(json.loads(out.stdout))


class Server:
    """One Mailhaven process of one source tree."""

    def __init__(self, name: str, src: Path, work: Path, dns: str, users: dict[str, str], auth: str) -> None:
        self.name, self.src, self.work = name, src, work
        work.mkdir(parents=True)
        (work / "users.toml").write_text("".join(f'[users."{u}"]\npassword = "{h}"\n' for u, h in users.items()))
        self.imap, self.mx = free_port(), free_port()
        (work / "mailhaven.toml").write_text(
            f'hostname = "mail.example.test"\ndata_dir = "{work / "data"}"\nusers_file = "{work / "users.toml"}"\n'
            f'[domains."example.test"]\n'
            f'[auth]\nallow_plaintext_loopback = true\nfailure_delay = 0\nmax_failures_per_ip = 1000000\n'
            f'max_failures_per_account = 1000000\n{auth}'
            f'[dns]\nnameservers = ["{dns}"]\ntimeout = 2\n[log]\nlevel = "warning"\n'
            f'[listeners.imap]\naddress = "127.0.0.1"\nport = {self.imap}\ntls = "none"\n'
            f'max_connections = 500\nper_ip_connections = 100\n'
            f'[listeners.mx]\naddress = "127.0.0.1"\nport = {self.mx}\ntls = "none"\n'
            f'max_connections = 500\nper_ip_connections = 100\n')
        env = {k: v for k, v in os.environ.items() if k != "MAILHAVEN_FAST_HASH"}
        env["PYTHONPATH"] = str(src)
        self.proc = subprocess.Popen([sys.executable, "-m", "mailhaven", "-c", str(work / "mailhaven.toml"), "serve"],
                                     stdout=open(work / "server.log", "wb"), stderr=subprocess.STDOUT, env=env,
                                     cwd=work)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.imap), 1).close()
                socket.create_connection(("127.0.0.1", self.mx), 1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start: {(work / 'server.log').read_text()[-2000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- minimal raw clients (the same for both versions) ------------------------------------------------


class Imap:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w, self.n = reader, writer, 0

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> Imap:
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0), limit=1 << 20)
        await r.readline()
        return cls(r, w)

    async def cmd(self, text: str) -> bytes:
        self.n += 1
        tag = f"b{self.n}".encode()
        self.w.write(tag + b" " + text.encode() + b"\r\n")
        while True:
            line = await self.r.readline()
            if not line:
                raise ConnectionError("closed")
            if line.startswith(tag + b" "):
                return line

    def close(self) -> None:
        self.w.close()


async def login_once(port: int, source: str, user: str, password: str) -> float:
    """Wall time of the LOGIN command alone."""
    c = await Imap.open(port, source)
    try:
        t0 = time.perf_counter()
        reply = await c.cmd(f'LOGIN "{user}" "{password}"')
        dt = time.perf_counter() - t0
        if b" OK" not in reply:
            raise RuntimeError(f"login failed: {reply!r}")
        return dt
    finally:
        c.close()


async def mx_deliver(port: int) -> float:
    """Connect to the 250 after the final dot of one message to alice."""
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await r.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return line

    try:
        await reply()
        for command in (b"EHLO client.example.net", b"MAIL FROM:<someone@example.net>", f"RCPT TO:<{ALICE}>".encode(),
                        b"DATA"):
            w.write(command + b"\r\n")
            line = await reply()
            if line[:1] not in (b"2", b"3"):
                raise RuntimeError(f"MX refused {command!r}: {line!r}")
        w.write(b"From: someone@example.net\r\nTo: " + ALICE.encode() + b"\r\nSubject: bench\r\n"
                b"Message-ID: <" + base64.b32encode(os.urandom(10)) + b"@example.net>\r\n\r\nhello\r\n.\r\n")
        line = await reply()
        if not line.startswith(b"250"):
            raise RuntimeError(f"MX: {line!r}")
        dt = time.perf_counter() - t0
        w.write(b"QUIT\r\n")
        return dt
    finally:
        w.close()


# --- the measurements -----------------------------------------------------------------------------------


async def cost(server: Server, runs: int, cached: bool) -> tuple[float, float | None]:
    """(cold median, cached median or None)."""
    cold, warm = [], []
    for i in range(runs):
        user = f"c{i}@example.test"
        cold.append(await login_once(server.imap, "127.0.0.1", user, f"pw-c{i}"))
        if cached:
            warm.append(await login_once(server.imap, "127.0.0.1", user, f"pw-c{i}"))
    return statistics.median(cold), (statistics.median(warm) if warm else None)


async def storm(server: Server, runs: int, logins: int) -> dict[str, float]:
    await mx_deliver(server.mx)  # a message to FETCH
    session = await Imap.open(server.imap)
    assert b" OK" in await session.cmd(f'LOGIN "{ALICE}" "{PASSWORD}"')
    assert b" OK" in await session.cmd("SELECT INBOX")

    async def timed(coro: object) -> float:
        t0 = time.perf_counter()
        await coro  # type: ignore[misc]
        return time.perf_counter() - t0

    async def measure() -> tuple[list[float], list[float], list[float]]:
        lists, fetches, mx = [], [], []
        for _ in range(runs):
            lists.append(await timed(session.cmd('LIST "" "*"')))
            fetches.append(await timed(session.cmd("FETCH 1 (FLAGS)")))
            mx.append(await mx_deliver(server.mx))
        return lists, fetches, mx

    idle = await measure()
    stop = asyncio.Event()
    done = 0

    async def client(i: int) -> None:
        nonlocal done
        while not stop.is_set():
            await login_once(server.imap, f"127.0.3.{i + 1}", f"s{i}@example.test", f"pw-s{i}")
            done += 1

    tasks = [asyncio.create_task(client(i)) for i in range(logins)]
    t0 = time.perf_counter()
    await asyncio.sleep(1.0)  # the storm is on
    loaded = await measure()
    stop.set()
    await asyncio.gather(*tasks)
    rate = done / (time.perf_counter() - t0)
    session.close()
    med = statistics.median
    return {"list_idle": med(idle[0]), "fetch_idle": med(idle[1]), "mx_idle": med(idle[2]),
            "list": med(loaded[0]), "fetch": med(loaded[1]), "mx": med(loaded[2]), "storm_rate": rate}


def users_for(src: Path, logins: int, cost_runs: int) -> dict[str, str]:
    pairs = [(ALICE, PASSWORD)] + [(f"s{i}@example.test", f"pw-s{i}") for i in range(logins)]
    pairs += [(f"c{i}@example.test", f"pw-c{i}") for i in range(cost_runs)]
    return dict(zip([u for u, _ in pairs], hashes(src, [p for _, p in pairs]), strict=True))


async def run_version(name: str, src: Path, work: Path, dns: str, args: argparse.Namespace,
                      after: bool) -> dict[str, float | None]:
    users = users_for(src, args.logins, args.cost_runs)
    out: dict[str, float | None] = {}
    server = Server(name, src, work / f"{name}-cost", dns, users, "")
    try:
        out["login_cold"], out["login_cached"] = await cost(server, args.cost_runs, cached=after)
    finally:
        server.stop()
    server = Server(name, src, work / f"{name}-storm", dns, users, "cache_ttl = 0\n" if after else "")
    try:
        out.update(await storm(server, args.runs, args.logins))
    finally:
        server.stop()
    return out


def git(*args: str) -> None:
    subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True)


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="measurements per latency figure (median)")
    p.add_argument("--logins", type=int, default=20, help="logins in flight during the storm")
    p.add_argument("--cost-runs", type=int, default=7, help="logins timed for the login cost (median)")
    p.add_argument("--before", default="f664878", help="git commit of the code before the rework")
    p.add_argument("--no-before", action="store_true", help="measure this checkout only")
    args = p.parse_args()
    dns = DnsServer().start()
    dns.add("example.net", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("_dmarc.example.net", "TXT", "v=DMARC1; p=reject")
    work = Path(tempfile.mkdtemp(prefix="bench-login-"))
    results: dict[str, dict[str, float | None]] = {}
    old_tree = work / "before-tree"
    try:
        if not args.no_before:
            git("worktree", "add", "--detach", "-f", str(old_tree), args.before)
            results[f"before ({args.before})"] = await run_version("before", old_tree / "src", work, dns.nameserver,
                                                                   args, after=False)
        results["after"] = await run_version("after", REPO / "src", work, dns.nameserver, args, after=True)
    finally:
        dns.stop()
        if old_tree.exists():
            git("worktree", "remove", "--force", str(old_tree))
        shutil.rmtree(work, ignore_errors=True)
    rows = [("IMAP LOGIN, cold (a full hash)", "login_cold"), ("IMAP LOGIN, cached", "login_cached"),
            ("LIST, idle", "list_idle"), (f"LIST, {args.logins} logins in flight", "list"),
            ("FETCH 1 (FLAGS), idle", "fetch_idle"), (f"FETCH 1 (FLAGS), {args.logins} logins in flight", "fetch"),
            ("MX delivery, idle", "mx_idle"), (f"MX delivery, {args.logins} logins in flight", "mx")]
    names = list(results)
    print(f"{'median of ' + str(args.runs) + ' (login cost: of ' + str(args.cost_runs) + ')':<44}"
          + "".join(f"{n:>22}" for n in names))
    for label, key in rows:
        print(f"{label:<44}" + "".join(f"{ms(results[n].get(key)):>22}" for n in names))
    print(f"{'logins per second during the storm':<44}"
          + "".join(f"{results[n].get('storm_rate') or 0:>22.1f}" for n in names))
    print(f"\nnproc {os.cpu_count()}; reproduce: python bench/bench_login.py --runs {args.runs} "
          f"--logins {args.logins} --cost-runs {args.cost_runs} --before {args.before}")


if __name__ == "__main__":
    asyncio.run(main())
