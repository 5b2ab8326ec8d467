"""POP3 benchmark: Mailhaven beside Dovecot on copies of the same 10,000-message Maildir.

    python bench/bench_pop3.py [--messages 10000] [--size 4096] [--retr 1000] [--runs 3] [--no-dovecot]

What it does, all under one temporary directory, loopback only, nothing in /etc touched:
- writes N messages of about SIZE octets (LF line endings, as Postfix delivers them) into a Maildir,
  with Dovecot-style names (`,S=<file size>,W=<CRLF size>`), and copies it for each server;
- starts Mailhaven (`python -m mailhaven -c <config> serve`, a POP3 listener only) and Dovecot
  (`/usr/sbin/dovecot -c <config>`, POP3 only, passwd-file with the SAME argon2id hash as Mailhaven's
  users file, so login cost is comparable; pop3_uidl_format %08Xu%08Xv like ours);
- one warm-up session per server (each builds its index on first access; that time is reported as
  "first login (cold)"), then RUNS rounds of: connect+USER/PASS, STAT, LIST, UIDL, QUIT; and
  login + RETR of the first R messages + QUIT, alternating between the servers round by round
  (so load from elsewhere hits both alike). Same client (poplib) for both. Reports medians.
- Dovecot runs first; Mailhaven then serves a copy of Dovecot's Maildir (with the dovecot-uidlist
  Dovecot wrote, index files left out), as after a migration;
- checks that both servers report the same STAT and the same LIST sizes (exactness), and whether
  the UIDLs match (they should: same UIDs and UIDVALIDITY, same %08Xu%08Xv format).

Run as root (Dovecot needs it to start; mail is owned by `nobody`). The Maildir and the two servers'
start and stop are bench/_dovecot.py's, shared with bench_imap.py.
"""

from __future__ import annotations

import argparse
import poplib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _dovecot as shared
from _dovecot import PASSWORD, USER

GREETING = b"+OK"


def head(i: int) -> str:
    return (f"Return-Path: <sender@example.org>\nFrom: Sender <sender@example.org>\n"
            f"To: Alice <{USER}>\nSubject: bench message {i}\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <bench{i}@example.org>\n\n")


# --- measurements --------------------------------------------------------------------------------


def listing_session(port: int) -> dict[str, float | object]:
    t0 = time.perf_counter()
    c = poplib.POP3("127.0.0.1", port, timeout=300)
    c.user(USER)
    c.pass_(PASSWORD)
    t1 = time.perf_counter()
    stat = c.stat()
    t2 = time.perf_counter()
    _, listing, _ = c.list()
    t3 = time.perf_counter()
    _, uidls, _ = c.uidl()
    t4 = time.perf_counter()
    c.quit()
    return {"login": t1 - t0, "stat": t2 - t1, "list": t3 - t2, "uidl": t4 - t3, "all": t4 - t0,
            "_stat": stat, "_list": listing, "_uidl": uidls}


def retr_session(port: int, n: int) -> tuple[float, int]:
    c = poplib.POP3("127.0.0.1", port, timeout=300)
    c.user(USER)
    c.pass_(PASSWORD)
    octets = 0
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        octets += c.retr(i)[2]
    t1 = time.perf_counter()
    c.quit()
    return t1 - t0, octets


def cold(port: int) -> dict[str, object]:
    """The first session: the server indexes the Maildir."""
    t0 = time.perf_counter()
    first = listing_session(port)
    return {"cold": time.perf_counter() - t0, "first": first}


def measure(ports: dict[str, int], runs: int, retr: int, results: dict[str, dict[str, object]]) -> None:
    """Rounds alternate between the servers, so load from elsewhere hits both alike."""
    rounds: dict[str, list[dict[str, float | object]]] = {n: [] for n in ports}
    retrs: dict[str, list[tuple[float, int]]] = {n: [] for n in ports}
    for _ in range(runs):
        for name, port in ports.items():
            rounds[name].append(listing_session(port))
        for name, port in ports.items():
            retrs[name].append(retr_session(port, retr))
    for name in ports:
        out = results[name]
        for key in ("login", "stat", "list", "uidl", "all"):
            out[key] = statistics.median(float(r[key]) for r in rounds[name])  # type: ignore[arg-type]
        out["retr"] = statistics.median(t for t, _ in retrs[name])
        out["retr_octets"] = retrs[name][0][1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--retr", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    from mailhaven.auth.passwords import hash_password

    work = Path(tempfile.mkdtemp(prefix="bench-pop3-"))
    mh_proc: subprocess.Popen[bytes] | None = None
    dv_conf: Path | None = None
    try:
        src = work / "Maildir"
        total = shared.make_maildir(src, args.messages, args.size, head, dot_every=17)
        pw_hash = hash_password(PASSWORD)
        print(f"maildir: {args.messages} messages, {total} octets (CRLF), in {work}", file=sys.stderr)
        results: dict[str, dict[str, object]] = {}
        ports: dict[str, int] = {}
        use_dovecot = not args.no_dovecot and shared.dovecot_available()
        mh_src = src
        if use_dovecot:
            dv_conf, dv_port = shared.start_dovecot(
                work, src, pw_hash, "pop3", GREETING, settings="auth_mechanisms = plain\n"
                "pop3_uidl_format = %08Xu%08Xv\nmail_max_userip_connections = 100")
            results["dovecot"] = cold(dv_port)
            ports["dovecot"] = dv_port
            # Mailhaven gets Dovecot's Maildir as a migration would: same files, with the
            # dovecot-uidlist Dovecot wrote, so UIDs (and thus UIDLs) should carry over.
            mh_src = work / "dovecot" / "mail"
        mh_proc, mh_port = shared.start_mailhaven(work, mh_src, pw_hash, "pop3", GREETING)
        results["mailhaven"] = cold(mh_port)
        ports["mailhaven"] = mh_port
        measure(ports, args.runs, args.retr, results)
        mh = results["mailhaven"]
        first = mh["first"]
        assert first["_stat"] == (args.messages, total), (first["_stat"], total)  # type: ignore[index]
        print(f"\nPOP3, {args.messages} messages of ~{args.size} octets, medians of {args.runs} runs "
              f"(seconds; ratio = mailhaven / dovecot)")
        print(f"{'measure':<34}{'mailhaven':>12}{'dovecot':>12}{'ratio':>8}")
        rows = [("first login (cold index)", "cold"), ("login (USER+PASS, argon2id)", "login"),
                ("STAT", "stat"), ("LIST", "list"), ("UIDL", "uidl"),
                ("login+STAT+LIST+UIDL", "all"), (f"RETR x {args.retr}", "retr")]
        for label, key in rows:
            a = float(mh[key])  # type: ignore[arg-type]
            if "dovecot" in results:
                b = float(results["dovecot"][key])  # type: ignore[arg-type]
                print(f"{label:<34}{a:>12.4f}{b:>12.4f}{a / b if b else float('nan'):>8.2f}")
            else:
                print(f"{label:<34}{a:>12.4f}{'-':>12}{'-':>8}")
        if "dovecot" in results:
            dfirst = results["dovecot"]["first"]
            same_stat = first["_stat"] == dfirst["_stat"]  # type: ignore[index]
            same_list = first["_list"] == dfirst["_list"]  # type: ignore[index]
            same_uidl = first["_uidl"] == dfirst["_uidl"]  # type: ignore[index]
            print(f"\nsame STAT: {same_stat}; same LIST sizes: {same_list}; same UIDLs: {same_uidl}")
            if not same_uidl:
                print(f"  first UIDLs: mailhaven {first['_uidl'][:2]}, dovecot {dfirst['_uidl'][:2]}")  # type: ignore[index]
            print(f"RETR octets (poplib count): mailhaven {mh['retr_octets']}, "
                  f"dovecot {results['dovecot']['retr_octets']}")
            if not (same_stat and same_list):
                return 1
        return 0
    finally:
        if mh_proc is not None:
            shared.stop_mailhaven(mh_proc)
        if dv_conf is not None:
            shared.stop_dovecot(dv_conf)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
