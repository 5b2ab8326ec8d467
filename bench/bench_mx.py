"""MX benchmark: messages per second accepted AND durably delivered into Maildir, Mailhaven beside
Postfix, with Postfix's own load generator `smtp-source`.

    python bench/bench_mx.py [--runs 3] [--size 4096] [--messages-1 300] [--messages-20 2000]
                             [--no-postfix] [--keep] [--compare SRC_DIR ...] [--python-dns]
                             [--dns-ttl 300] [--workers N]

What it does, all under one temporary directory, loopback only, nothing in /etc touched:
- starts a DNS server with `sender.test TXT "v=spf1 ip4:127.0.0.1 -all"` and no DMARC record, so
  Mailhaven's SPF check passes after one quick lookup and DMARC is "none" (Postfix, as configured
  by Debian, checks neither): dnsmasq (Debian dnsmasq-base), a C server answering from memory like
  the local caching resolver (unbound, systemd-resolved) a production MX asks; or, with
  --python-dns or without dnsmasq, the tests' Python server (tests/dnsserver.py), which costs
  about 1 ms CPU per message on the same CPUs (it runs in this process, so shares no GIL with
  Mailhaven, but competes for the cores on Mailhaven's runs only). Either is authoritative for
  .test: answers have TTL --dns-ttl (300 s), and NXDOMAIN (the DMARC lookup) carries the zone's
  SOA with that minimum, as a resolver passes them on, so Mailhaven's answer cache ([dns]
  cache_size) answers after the first message; --dns-ttl 0 makes every lookup a query;
- starts Mailhaven (`python -m mailhaven -c <config> serve`, only the "mx" listener, no TLS, fsync on:
  the 250 comes after the message is fsynced in the Maildir; `[server] workers` = --workers, default
  0 = one worker process per CPU, as installed; its CPU time counts the parent and every worker) and Postfix (`postfix -c <dir> start`,
  smtpd on 127.0.0.1 only, `virtual` delivery into Maildir; Postfix answers 250 once the queue file is
  fsynced and delivers to the Maildir afterwards);
- each round runs `smtp-source -s S -l SIZE -m N -f bench@sender.test -t alice@example.test` (one
  connection per message) against each server, alternating servers, and measures from the start of
  smtp-source until the N-th message is in the Maildir's new/ (for Mailhaven that is when smtp-source
  ends; for Postfix it includes the queue-to-Maildir delivery). S = 1 and 20 sessions;
- prints the median messages/second of RUNS rounds, per server and session count, and the ratio
  Mailhaven / Postfix; and the median CPU time each server used per message (all its processes
  and threads, from /proc: steadier than messages/second on a shared machine), plus what the
  DNS server spent answering Mailhaven's policy lookups.
  Not like for like: Mailhaven checks SPF, DKIM and DMARC on every message (two DNS lookups for
  these unsigned messages) and fsyncs the Maildir before its 250; Postfix checks nothing and
  fsyncs its queue file before the 250, then delivers.
- `--compare SRC_DIR` (repeatable) adds one more Mailhaven, run from another source tree (its
  `src/` directory, e.g. a `git worktree` of an older commit) with the same config, measured in
  the same rounds in alternating order: an A/B comparison under the same machine load.

Run as root (Postfix needs it; mail is owned by `vmail` if that user exists, else `nobody`).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.dnsserver

from tests.dnsserver import DnsServer  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTFIX = "/usr/sbin/postfix"
USER = "alice@example.test"
SENDER = "bench@sender.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_smtp(port: int, proc: subprocess.Popen[bytes] | None, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start on port {port}")


def count(new_dir: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(new_dir))
    except FileNotFoundError:
        return 0


# --- Mailhaven -----------------------------------------------------------------------------------


def start_mailhaven(work: Path, nameserver: str, src: str | None = None, tag: str = "mh",
                    extra: str = "", workers: int | None = None) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Mailhaven from this tree, or from the source tree `src` (its src/ directory); `extra` is
    TOML appended to its config (more tables, e.g. bench_spam.py's [spam]); `workers`: its
    [server] workers (None: not set, the default of that tree)."""
    from mailhaven.auth.passwords import hash_password

    data = work / f"{tag}-data"
    data.mkdir()
    users = work / f"{tag}-users.toml"
    users.write_text(f'[users."{USER}"]\npassword = "{hash_password("secret")}"\n')
    port = free_port()
    cfg = work / f"{tag}-mailhaven.toml"
    cfg.write_text(
        f'hostname = "mx.example.test"\ndata_dir = "{data}"\nusers_file = "{users}"\n'
        + (f'[server]\nworkers = {workers}\n' if workers is not None else "") +
        f'[domains."example.test"]\n'
        f'[dns]\nnameservers = ["{nameserver}"]\ntimeout = 2.0\n'
        f'[log]\nlevel = "warning"\n'
        f'[listeners.mx]\naddress = "127.0.0.1"\nport = {port}\ntls = "none"\n'
        f'max_connections = 1000\nper_ip_connections = 1000\n' + extra)
    env = {k: v for k, v in os.environ.items() if k != "MAILHAVEN_FAST_HASH"}
    if src is not None:
        env["PYTHONPATH"] = src  # ahead of the installed (editable) package
    proc = subprocess.Popen([sys.executable, "-m", "mailhaven", "-c", str(cfg), "serve"],
                            stdout=open(work / f"{tag}.log", "wb"), stderr=subprocess.STDOUT, env=env)
    wait_smtp(port, proc, "mailhaven")
    return proc, port, data / "mail" / "example.test" / "alice" / "new"


# --- DNS -----------------------------------------------------------------------------------------

DNSMASQ = "/usr/sbin/dnsmasq"
TXT_RECORDS = {"sender.test": "v=spf1 ip4:127.0.0.1 -all"}
A_RECORDS = {"client.sender.test": "127.0.0.1"}
DNS_TTL = 300  # TTL of every answer, and SOA minimum (negative TTL), seconds


def free_udp_tcp_port() -> int:
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise SystemExit("no free port for the DNS server")


class Dnsmasq:
    """dnsmasq answering the bench's records from memory, authoritative for .test (answers with
    TTL `ttl`; NXDOMAIN for any other name under .test, with the zone's SOA, minimum `ttl`),
    nothing forwarded anywhere (--no-resolv), loopback only."""

    def __init__(self, work: Path, ttl: int = DNS_TTL) -> None:
        self.port = free_udp_tcp_port()
        args = [DNSMASQ, "--keep-in-foreground", f"--port={self.port}", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--no-resolv", "--no-hosts", "--no-poll", "--pid-file=",
                "--local=/test/", f"--log-facility={work}/dnsmasq.log",
                "--auth-server=ns.test,lo", "--auth-zone=test", "--auth-soa=1,hostmaster.test",
                f"--auth-ttl={ttl}"]  # the TTL of answers and the SOA's TTL and minimum
        args += [f"--txt-record={name},{text}" for name, text in TXT_RECORDS.items()]
        args += [f"--host-record={name},{ip}" for name, ip in A_RECORDS.items()]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(work / "dnsmasq.err", "wb"))
        self.nameserver = f"127.0.0.1:{self.port}"
        self._wait()

    def _wait(self) -> None:
        import dns.resolver

        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = ["127.0.0.1"], self.port, 1.0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"dnsmasq exited with {self.proc.returncode}")
            try:
                r.resolve("sender.test", "TXT")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        raise SystemExit("dnsmasq did not answer")

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class PythonDns:
    """The tests' DNS server (tests/dnsserver.py) in a thread of this process."""

    def __init__(self, ttl: int = DNS_TTL) -> None:
        self.server = DnsServer().start()
        self.server.default_ttl = ttl
        self.server.set_soa("test", minimum=ttl)
        for name, text in TXT_RECORDS.items():
            self.server.add(name, "TXT", text)
        for name, ip in A_RECORDS.items():
            self.server.add(name, "A", ip)
        self.nameserver = self.server.nameserver
        thread = self.server._thread  # noqa: SLF001 - its CPU time is what we report
        self._tid = thread.native_id if thread is not None else None

    def cpu(self) -> float:
        return thread_cpu(self._tid) if self._tid else 0.0

    def stop(self) -> None:
        self.server.stop()


# --- Postfix -------------------------------------------------------------------------------------

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def start_postfix(work: Path) -> tuple[Path, int, Path]:
    try:
        owner = pwd.getpwnam("vmail")
    except KeyError:
        owner = pwd.getpwnam("nobody")
    conf, spool, pdata, mail = work / "pf-conf", work / "pf-spool", work / "pf-data", work / "pf-mail"
    for d in (conf, spool, pdata, mail):
        d.mkdir()
    for sub in ("cur", "new", "tmp"):
        (mail / "alice" / "Maildir" / sub).mkdir(parents=True)
    shutil.chown(pdata, "postfix", "postfix")
    for root, dirs, _ in os.walk(mail):
        os.chown(root, owner.pw_uid, owner.pw_gid)
        for d in dirs:
            os.chown(os.path.join(root, d), owner.pw_uid, owner.pw_gid)
    port = free_port()
    (conf / "vmailbox").write_text(f"{USER} alice/Maildir/\n")
    (conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {pdata}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = no
smtpd_banner = $myhostname ESMTP
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unauth_destination
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 200
virtual_mailbox_domains = example.test
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{conf}/vmailbox
virtual_uid_maps = static:{owner.pw_uid}
virtual_gid_maps = static:{owner.pw_gid}
virtual_minimum_uid = 1
virtual_mailbox_limit = 0
maillog_file_prefixes = /var, /dev/stdout, {work}
maillog_file = {work}/postfix.log
""")
    (conf / "master.cf").write_text(MASTER_CF.format(port=port))
    subprocess.run([POSTFIX, "-c", str(conf), "set-permissions"], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    log = open(work / "postfix-start.log", "wb")
    for action in ("check", "start"):
        r = subprocess.run([POSTFIX, "-c", str(conf), action], stdin=subprocess.DEVNULL, stdout=log,
                           stderr=subprocess.STDOUT, check=False)
        if r.returncode != 0:
            raise SystemExit(f"postfix {action} failed; see {work}/postfix-start.log and postfix.log")
    wait_smtp(port, None, "postfix")
    return conf, port, mail / "alice" / "Maildir" / "new"


def stop_postfix(conf: Path) -> None:
    subprocess.run([POSTFIX, "-c", str(conf), "stop"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


# --- CPU accounting (/proc) ----------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def tree_cpu(root: int) -> float:
    """CPU seconds of process `root` and its descendants: live ones count their own and their
    waited-for children's time, and a child that exits is added to its parent's cutime/cstime, so
    the difference of two readings is what the whole tree used in between (Postfix's master and its
    daemons; Mailhaven's one process and its threads)."""
    children: dict[int, list[int]] = {}
    fields: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(entry)
            if f is not None:
                fields[int(entry)] = f
                children.setdefault(int(f[1]), []).append(int(entry))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        f = fields.get(pid)
        if f is None:
            continue
        total += sum(int(x) for x in f[11:15]) / _TICK  # utime stime cutime cstime
        todo.extend(children.get(pid, []))
    return total


def thread_cpu(native_id: int) -> float:
    """CPU seconds of one thread of this process (the test DNS server's)."""
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fl = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fl[11]) + int(fl[12])) / _TICK


def postfix_master_pid(spool: Path) -> int:
    text = (spool / "pid" / "master.pid").read_text()
    return int(text.split()[0])


# --- one measurement -----------------------------------------------------------------------------


def run_load(port: int, new_dir: Path, sessions: int, messages: int, size: int, timeout: float = 600) -> float:
    """Messages/second from the start of smtp-source until all `messages` are in new_dir."""
    before = count(new_dir)
    start = time.monotonic()
    r = subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-l", str(size), "-m", str(messages),
                        "-M", "client.sender.test", "-f", SENDER, "-t", USER, f"127.0.0.1:{port}"],
                       stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"smtp-source failed ({r.returncode}): {r.stderr.decode(errors='replace')[-500:]}")
    target = before + messages
    while count(new_dir) < target:
        if time.monotonic() - start > timeout:
            raise SystemExit(f"only {count(new_dir) - before} of {messages} messages delivered in {new_dir}")
        time.sleep(0.005)
    elapsed = time.monotonic() - start
    if count(new_dir) != target:
        raise SystemExit(f"{new_dir}: {count(new_dir) - before} messages for {messages} sent")
    return messages / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--messages-1", type=int, default=300, help="messages per run with 1 session")
    ap.add_argument("--messages-20", type=int, default=2000, help="messages per run with 20 sessions")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--compare", action="append", default=[], metavar="SRC_DIR",
                    help="also run Mailhaven from this source tree's src/ directory (A/B)")
    ap.add_argument("--python-dns", action="store_true",
                    help="answer DNS with the tests' Python server instead of dnsmasq")
    ap.add_argument("--dns-ttl", type=int, default=DNS_TTL,
                    help="TTL of DNS answers and SOA minimum, seconds (0: Mailhaven caches nothing)")
    ap.add_argument("--workers", type=int, default=None,
                    help="Mailhaven's [server] workers (default: its own default, one per CPU)")
    args = ap.parse_args()
    if not args.no_postfix and os.geteuid() != 0:
        raise SystemExit("run as root (Postfix), or pass --no-postfix")
    for tool in [SMTP_SOURCE] + ([] if args.no_postfix else [POSTFIX]):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} not found (Debian package postfix)")
    for src in args.compare:
        if not (Path(src) / "mailhaven" / "__init__.py").exists():
            raise SystemExit(f"--compare {src}: not a source tree (want the directory holding mailhaven/)")

    work = Path(tempfile.mkdtemp(prefix="bench-mx-"))
    work.chmod(0o755)  # Postfix's delivery agent runs as the mail owner and must reach the Maildir
    dns: Dnsmasq | PythonDns = (PythonDns(args.dns_ttl) if args.python_dns or not os.path.exists(DNSMASQ)
                                else Dnsmasq(work, args.dns_ttl))
    procs: list[subprocess.Popen[bytes]] = []
    pf_conf: Path | None = None
    results: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}  # CPU ms per message
    dns_cpu: dict[tuple[str, int], list[float]] = {}
    try:
        servers: dict[str, tuple[int, Path, Callable[[], float]]] = {}
        mh_proc, mh_port, mh_new = start_mailhaven(work, dns.nameserver, workers=args.workers)
        procs.append(mh_proc)
        servers["mailhaven"] = (mh_port, mh_new, lambda p=mh_proc.pid: tree_cpu(p))
        for i, src in enumerate(args.compare, 1):
            proc, port, new_dir = start_mailhaven(work, dns.nameserver, src=src, tag=f"mh{i}", workers=args.workers)
            procs.append(proc)
            servers[f"mh-cmp{i}"] = (port, new_dir, lambda p=proc.pid: tree_cpu(p))
            print(f"mh-cmp{i} = Mailhaven from {src}")
        if not args.no_postfix:
            pf_conf, pf_port, pf_new = start_postfix(work)
            master = postfix_master_pid(work / "pf-spool")
            servers["postfix"] = (pf_port, pf_new, lambda p=master: tree_cpu(p))
        # Warm-up: one short load each (process start-up, imports, Postfix's first delivery agents).
        for port, new_dir, _ in servers.values():
            run_load(port, new_dir, 4, 40, args.size)
        for r in range(args.runs):
            for sessions, n in ((1, args.messages_1), (20, args.messages_20)):
                names = list(servers)
                order = names[r % len(names):] + names[:r % len(names)]  # each server goes first in turn
                for name in order:
                    port, new_dir, cpu_of = servers[name]
                    c0 = cpu_of()
                    d0 = dns.cpu()
                    rate = run_load(port, new_dir, sessions, n, args.size)
                    cpu.setdefault((name, sessions), []).append((cpu_of() - c0) / n * 1000)
                    dns_cpu.setdefault((name, sessions), []).append((dns.cpu() - d0) / n * 1000)
                    results.setdefault((name, sessions), []).append(rate)
                    print(f"run {r + 1}: {name:<9} {sessions:>2} session(s) {n:>5} msgs: {rate:8.1f} msg/s  "
                          f"{cpu[(name, sessions)][-1]:5.2f} ms CPU/msg", flush=True)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if pf_conf is not None:
            stop_postfix(pf_conf)
        dns.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    print(f"\nmedian of {args.runs} runs, {args.size}-octet messages, one connection per message, "
          f"messages/second accepted and in the Maildir, and server CPU ms per message:")
    names = [n for n in ("mailhaven", *[f"mh-cmp{i}" for i in range(1, len(args.compare) + 1)], "postfix")
             if (n, 1) in results]
    print(f"{'sessions':<10}" + "".join(f"{n:>12}{'cpu':>7}" for n in names) +
          (f"{'mh/pf':>8}" if "postfix" in names else ""))
    for sessions in (1, 20):
        line = f"{sessions:<10}"
        for n in names:
            line += f"{med(results[(n, sessions)]):12.1f}{med(cpu[(n, sessions)]):7.2f}"
        if "postfix" in names:
            line += f"{med(results[('mailhaven', sessions)]) / med(results[('postfix', sessions)]):8.2f}"
        print(line)
    if dns_cpu:
        dns_ms = med(x for k, v in dns_cpu.items() if k[0] != "postfix" for x in v)
        kind = "the tests' Python DNS server" if isinstance(dns, PythonDns) else "dnsmasq"
        print(f"Not like for like: Mailhaven checks SPF, DKIM and DMARC on every message (two DNS lookups "
              f"here, TTL {args.dns_ttl} s); Postfix, as configured, checks none. {kind} answering them "
              f"used {dns_ms:.2f} ms "
              f"CPU per message (not counted above).")

if __name__ == "__main__":
    main()
