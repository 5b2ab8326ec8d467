"""MX benchmark: messages per second accepted AND durably delivered into Maildir, Mailhaven beside
Postfix, with Postfix's own load generator `smtp-source`.

    python bench/bench_mx.py [--runs 3] [--size 4096] [--messages-1 300] [--messages-20 2000]
                             [--no-postfix] [--keep]

What it does, all under one temporary directory, loopback only, nothing in /etc touched:
- starts the test DNS server (tests/dnsserver.py) with `sender.test TXT "v=spf1 ip4:127.0.0.1 -all"`
  and no DMARC record, so Mailhaven's SPF check passes after one quick lookup and DMARC is "none"
  (Postfix, as configured by Debian, checks neither);
- starts Mailhaven (`python -m mailhaven -c <config> serve`, only the "mx" listener, no TLS, fsync on:
  the 250 comes after the message is fsynced in the Maildir) and Postfix (`postfix -c <dir> start`,
  smtpd on 127.0.0.1 only, `virtual` delivery into Maildir; Postfix answers 250 once the queue file is
  fsynced and delivers to the Maildir afterwards);
- each round runs `smtp-source -s S -l SIZE -m N -f bench@sender.test -t alice@example.test` (one
  connection per message) against each server, alternating servers, and measures from the start of
  smtp-source until the N-th message is in the Maildir's new/ (for Mailhaven that is when smtp-source
  ends; for Postfix it includes the queue-to-Maildir delivery). S = 1 and 20 sessions;
- prints the median messages/second of RUNS rounds, per server and session count, and the ratio
  Mailhaven / Postfix.

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


def start_mailhaven(work: Path, nameserver: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    from mailhaven.auth.passwords import hash_password

    data = work / "mh-data"
    data.mkdir()
    users = work / "mh-users.toml"
    users.write_text(f'[users."{USER}"]\npassword = "{hash_password("secret")}"\n')
    port = free_port()
    cfg = work / "mailhaven.toml"
    cfg.write_text(
        f'hostname = "mx.example.test"\ndata_dir = "{data}"\nusers_file = "{users}"\n'
        f'[domains."example.test"]\n'
        f'[dns]\nnameservers = ["{nameserver}"]\ntimeout = 2.0\n'
        f'[log]\nlevel = "warning"\n'
        f'[listeners.mx]\naddress = "127.0.0.1"\nport = {port}\ntls = "none"\n'
        f'max_connections = 1000\nper_ip_connections = 1000\n')
    env = {k: v for k, v in os.environ.items() if k != "MAILHAVEN_FAST_HASH"}
    proc = subprocess.Popen([sys.executable, "-m", "mailhaven", "-c", str(cfg), "serve"],
                            stdout=open(work / "mailhaven.log", "wb"), stderr=subprocess.STDOUT, env=env)
    wait_smtp(port, proc, "mailhaven")
    return proc, port, data / "mail" / "example.test" / "alice" / "new"


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
    args = ap.parse_args()
    if not args.no_postfix and os.geteuid() != 0:
        raise SystemExit("run as root (Postfix), or pass --no-postfix")
    for tool in [SMTP_SOURCE] + ([] if args.no_postfix else [POSTFIX]):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} not found (Debian package postfix)")

    work = Path(tempfile.mkdtemp(prefix="bench-mx-"))
    work.chmod(0o755)  # Postfix's delivery agent runs as the mail owner and must reach the Maildir
    dns = DnsServer().start()
    dns.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("client.sender.test", "A", "127.0.0.1")
    mh_proc: subprocess.Popen[bytes] | None = None
    pf_conf: Path | None = None
    results: dict[tuple[str, int], list[float]] = {}
    try:
        mh_proc, mh_port, mh_new = start_mailhaven(work, dns.nameserver)
        servers = {"mailhaven": (mh_port, mh_new)}
        if not args.no_postfix:
            pf_conf, pf_port, pf_new = start_postfix(work)
            servers["postfix"] = (pf_port, pf_new)
        # Warm-up: one short load each (process start-up, imports, Postfix's first delivery agents).
        for port, new_dir in servers.values():
            run_load(port, new_dir, 4, 40, args.size)
        for r in range(args.runs):
            for sessions, n in ((1, args.messages_1), (20, args.messages_20)):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    port, new_dir = servers[name]
                    rate = run_load(port, new_dir, sessions, n, args.size)
                    results.setdefault((name, sessions), []).append(rate)
                    print(f"run {r + 1}: {name:<9} {sessions:>2} session(s) {n:>5} msgs: {rate:8.1f} msg/s",
                          flush=True)
    finally:
        if mh_proc is not None:
            mh_proc.send_signal(signal.SIGTERM)
            try:
                mh_proc.wait(30)
            except subprocess.TimeoutExpired:
                mh_proc.kill()
        if pf_conf is not None:
            stop_postfix(pf_conf)
        dns.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nmedian of {args.runs} runs, {args.size}-octet messages, one connection per message, "
          f"messages/second accepted and in the Maildir:")
    print(f"{'sessions':<10}{'mailhaven':>12}{'postfix':>12}{'ratio':>8}")
    for sessions in (1, 20):
        mh = statistics.median(results[("mailhaven", sessions)])
        pf_list = results.get(("postfix", sessions))
        pf = statistics.median(pf_list) if pf_list else None
        ratio = f"{mh / pf:8.2f}" if pf else f"{'-':>8}"
        print(f"{sessions:<10}{mh:12.1f}{(f'{pf:12.1f}' if pf else f'{chr(45):>12}')}{ratio}")


if __name__ == "__main__":
    main()
