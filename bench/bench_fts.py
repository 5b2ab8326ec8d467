"""SEARCH BODY/TEXT benchmark: Mailhaven (full-text index, store/fts.py) beside Dovecot without an
FTS plugin (it scans), on copies of the same Maildir.

    python bench/bench_fts.py [--messages 10000] [--size 2048] [--runs 5] [--no-dovecot]

What it does, under one temporary directory, loopback only (bench/_dovecot.py starts and stops
both servers, as for bench_imap.py):
- writes N messages of about SIZE octets into a Maildir: bodies of words drawn from a 5,000-word
  synthetic vocabulary with Zipf frequencies (seeded), so a word's rank sets how many messages
  hold it;
- starts Dovecot, lets it index the Maildir (LOGIN+SELECT), gives Mailhaven a copy (with the
  dovecot-uidlist, as a migration would), starts it (`python -m mailhaven ... serve`);
- per server: a cold round (Mailhaven's first SEARCH scans, as before the index, and queues every
  message for its full-text index, filled in the background: the bench waits for it and prints
  how long it took; Dovecot's first reads every message into its page cache), then RUNS rounds alternating between the servers of:
  UID SEARCH BODY <rare word> (~0.8 % of the messages), BODY <mid word> (~10 %), BODY <common word>
  (most), BODY <absent word>, TEXT <rare word>, BODY <2-letter string> (too short for the index:
  Mailhaven scans), and KEYWORD <absent> for reference (what any SEARCH of the mailbox costs
  without reading a message). Every answer is checked to be the same on both servers. Medians are printed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _dovecot as shared
from _dovecot import PASSWORD, USER
from bench_imap import Client, start_imap_dovecot, start_imap_mailhaven

VOCAB = 5000


def vocabulary(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < VOCAB:
        w = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(5, 9)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def make_maildir(root: Path, count: int, size: int, words: list[str], seed: int = 11) -> None:
    """`count` messages in new/ (Dovecot-style names, LF endings), bodies of Zipf-drawn words."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    weights = [1 / (r + 1) for r in range(len(words))]
    now = int(time.time()) - 3600
    per_msg = max(10, size // 7)
    for i in range(1, count + 1):
        head = (f"From: Sender {i % 97} <sender{i % 97}@example.org>\nTo: Alice <{USER}>\n"
                f"Subject: bench message {i:06d}\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
                f"Message-ID: <fts{i}@example.org>\nMIME-Version: 1.0\n"
                f"Content-Type: text/plain; charset=us-ascii\n\n")
        drawn = rng.choices(words, weights, k=per_msg)
        body = "\n".join(" ".join(drawn[j:j + 12]) for j in range(0, len(drawn), 12))
        data = (head + body + "\n").encode()
        vsize = len(data) + data.count(b"\n")
        (root / "new" / f"{now + i}.M{i}P1Q{i}.bench,S={len(data)},W={vsize}").write_bytes(data)


def searches(words: list[str]) -> list[tuple[str, str]]:
    return [
        (f"UID SEARCH BODY {words[4000]}", "body rare"),
        (f"UID SEARCH BODY {words[300]}", "body mid"),
        (f"UID SEARCH BODY {words[5]}", "body common"),
        ("UID SEARCH BODY qqqqzzzz", "body absent"),
        (f"UID SEARCH TEXT {words[4000]}", "text rare"),
        ("UID SEARCH BODY zq", "body 2 letters (scan)"),
        ("UID SEARCH KEYWORD qqqqzzzz", "keyword (no body: a SEARCH's own cost)"),
    ]


def one_round(port: int, ops: list[tuple[str, str]]) -> tuple[dict[str, float], dict[str, bytes]]:
    res: dict[str, float] = {}
    answers: dict[str, bytes] = {}
    c = Client(port)
    c.cmd(f'LOGIN {USER} "{PASSWORD}"')
    c.cmd("SELECT INBOX")
    for command, key in ops:
        lines: list[bytes] = []
        t0 = time.perf_counter()
        c.sock.sendall(b"s " + command.encode() + b"\r\n")
        while True:
            line = c.file.readline()
            if not line:
                raise EOFError(command)
            if line.startswith(b"s "):
                break
            lines.append(line)
        res[key] = time.perf_counter() - t0
        if not line.startswith(b"s OK"):
            raise RuntimeError(f"{command}: {line!r}")
        answers[key] = b"".join(ln for ln in lines if ln.startswith(b"* SEARCH"))  # not "* OK Searched 50%"
    c.close()
    return res, answers


def wait_indexed(path: Path, count: int, limit: float = 3600) -> float:
    """Seconds until the full-text index holds `count` messages."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
                if db.execute("SELECT count(*) FROM doc").fetchone()[0] >= count:
                    return time.perf_counter() - t0
        except sqlite3.Error:
            pass
        time.sleep(0.5)
    raise TimeoutError("the full-text index was not filled")


def hits(answer: bytes) -> int:
    return len(answer.split()) - 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    from mailhaven.auth.passwords import hash_password

    work = Path(tempfile.mkdtemp(prefix="bench-fts-"))
    mh_proc: subprocess.Popen[bytes] | None = None
    dv_conf: Path | None = None
    try:
        words = vocabulary()
        ops = searches(words)
        src = work / "Maildir"
        t0 = time.perf_counter()
        make_maildir(src, args.messages, args.size, words)
        print(f"maildir: {args.messages} messages of ~{args.size} octets in {time.perf_counter() - t0:.0f} s, "
              f"in {work}", file=sys.stderr)
        pw_hash = hash_password(PASSWORD)
        ports: dict[str, int] = {}
        select: dict[str, float] = {}
        use_dovecot = not args.no_dovecot and shared.dovecot_available()
        mh_src = src
        if use_dovecot:
            dv_conf, ports["dovecot"] = start_imap_dovecot(work, src, pw_hash, 0)
            t0 = time.perf_counter()
            c = Client(ports["dovecot"])
            c.cmd(f'LOGIN {USER} "{PASSWORD}"')
            c.cmd("SELECT INBOX")  # indexes; Mailhaven then gets its uidlist
            c.close()
            select["dovecot"] = time.perf_counter() - t0
            mh_src = work / "dovecot" / "mail"
        mh_proc, ports["mailhaven"] = start_imap_mailhaven(work, mh_src, pw_hash, 0)
        t0 = time.perf_counter()
        c = Client(ports["mailhaven"])
        c.cmd(f'LOGIN {USER} "{PASSWORD}"')
        c.cmd("SELECT INBOX")
        c.close()
        select["mailhaven"] = time.perf_counter() - t0
        cold: dict[str, dict[str, float]] = {}
        first: dict[str, dict[str, bytes]] = {}
        fts_file = work / "mh-data" / "mail" / "example.test" / "alice" / "mailhaven-fts.sqlite"
        for name, port in ports.items():
            t0 = time.perf_counter()
            cold[name], first[name] = one_round(port, ops)
            if name == "mailhaven":  # the first SEARCH scanned and queued everything: wait for the index
                built = wait_indexed(fts_file, args.messages) + time.perf_counter() - t0
        rounds: dict[str, list[dict[str, float]]] = {n: [] for n in ports}
        for _ in range(args.runs):
            for name, port in ports.items():
                res, answers = one_round(port, ops)
                rounds[name].append(res)
                for key, ans in answers.items():
                    if ans != first[name][key]:
                        raise AssertionError(f"{name} {key}: answer changed between runs")
        if use_dovecot:
            for _, key in ops:
                if first["mailhaven"][key] != first["dovecot"][key]:
                    raise AssertionError(f"{key}: mailhaven and dovecot disagree")
        fts_mib = sum(p.stat().st_size for p in fts_file.parent.glob(fts_file.name + "*")) / (1 << 20)

        print(f"\nSEARCH, {args.messages} messages of ~{args.size} octets, median of {args.runs} runs "
              f"(ms; ratio = mailhaven / dovecot; cold = first SEARCH round, before Mailhaven's index)")
        print(f"{'measure':<44}{'hits':>7}" + "".join(f"{n:>12}" for n in ("mailhaven", "dovecot"))
              + f"{'ratio':>8}{'mh cold':>10}{'dv cold':>10}")
        for command, key in ops:
            mh = statistics.median(r[key] for r in rounds["mailhaven"]) * 1000
            dv = statistics.median(r[key] for r in rounds["dovecot"]) * 1000 if use_dovecot else None
            cdv = cold["dovecot"][key] * 1000 if use_dovecot else float("nan")
            print(f"{command[:44]:<44}{hits(first['mailhaven'][key]):>7}{mh:>12.1f}"
                  + (f"{dv:>12.1f}{mh / dv:>8.2f}" if dv else f"{'-':>12}{'-':>8}")
                  + f"{cold['mailhaven'][key] * 1000:>10.1f}{cdv:>10.1f}")
        print(f"first LOGIN+SELECT (index build), s: mailhaven {select['mailhaven']:.1f}"
              + (f", dovecot {select['dovecot']:.1f}" if "dovecot" in select else ""))
        print(f"full-text index file (with WAL): {fts_mib:.1f} MiB, filled in the background "
              f"{built:.1f} s after the first SEARCH")
        return 0
    finally:
        if mh_proc is not None:
            shared.stop_mailhaven(mh_proc)
        if dv_conf is not None:
            shared.stop_dovecot(dv_conf)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
