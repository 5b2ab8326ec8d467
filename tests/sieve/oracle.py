"""The Sieve differential harness: the corpus of script/message pairs, our engine's actions and
Dovecot Pigeonhole's `sieve-test` output, both turned into one comparable form.

A corpus script `tests/sieve/corpus/NAME.sieve` may start with comment lines `# message: FILE`
(default plain.eml, under corpus/messages), `# from: ADDR` (envelope sender, default
bob@example.org) and `# to: ADDR` (envelope recipient, default alice@example.com). Included scripts
live in corpus/include/{personal,global}/NAME.sieve.

The normal form is a sorted list of lines: `store MAILBOX [flags=...] [create]`, `redirect ADDR`,
`discard`, `reject REASON`, `vacation seconds=N [subject=..] [from=..] handle=..`, plus `error` when
the run failed (then the implicit keep follows) and `compile-error` when the script was refused.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mailhaven.sieve import (
    Context,
    Discard,
    Envelope,
    FileInto,
    Keep,
    Redirect,
    Reject,
    SieveSyntaxError,
    Vacation,
    compile_script,
    evaluate,
)

CORPUS = Path(__file__).parent / "corpus"
NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Pair:
    name: str
    script: Path
    message: Path
    mail_from: str
    rcpt_to: str


def load_pairs() -> list[Pair]:
    out = []
    for path in sorted(CORPUS.glob("*.sieve")):
        meta = {"message": "plain.eml", "from": "bob@example.org", "to": "alice@example.com"}
        for line in path.read_text().splitlines():
            m = re.match(r"# (message|from|to): ?(.*)$", line)
            if not m:
                break
            meta[m.group(1)] = m.group(2).strip()
        out.append(Pair(path.stem, path, CORPUS / "messages" / meta["message"], meta["from"], meta["to"]))
    return out


class DirLoader:
    """ScriptLoader over corpus/include/{personal,global}."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, name: str, location: str) -> str | None:
        p = self.root / location / f"{name}.sieve"
        return p.read_text() if p.is_file() else None


class InboxOnly:
    def exists(self, name: str) -> bool:
        return name.upper() == "INBOX"


def _printable(text: str) -> str:
    """sieve-test prints control characters (CR, LF, ...) as "?"."""
    return "".join("?" if ord(ch) < 0x20 else ch for ch in text)


def _flags(flags: tuple[str, ...] | list[str]) -> str:
    return " flags=" + " ".join(sorted({f.lower() for f in flags})) if flags else ""


def normalise_ours(pair: Pair) -> list[str]:
    try:
        script = compile_script(pair.script.read_bytes(), loader=DirLoader(CORPUS / "include"))
    except SieveSyntaxError:
        return ["compile-error"]
    ctx = Context(now=NOW, loader=DirLoader(CORPUS / "include"), mailboxes=InboxOnly())
    res = evaluate(script, pair.message.read_bytes(), Envelope(pair.mail_from, pair.rcpt_to), ctx)
    out = ["error"] if res.error else []
    for a in res.actions:
        if isinstance(a, Keep):
            out.append("store INBOX" + _flags(a.flags))
        elif isinstance(a, FileInto):
            out.append(f"store {a.mailbox}" + _flags(a.flags) + (" create" if a.create else ""))
        elif isinstance(a, Redirect):
            out.append(f"redirect {a.address}")
        elif isinstance(a, Discard):
            out.append("discard")
        elif isinstance(a, Reject):
            out.append(f"reject {a.reason}")
        elif isinstance(a, Vacation):
            out.append(f"vacation seconds={a.seconds}" + (f" subject={a.subject}" if a.subject is not None else "")
                       + (f" from={a.from_}" if a.from_ is not None else "")
                       + f" handle={a.handle.splitlines()[0] if a.handle else ''}")
    return sorted(_printable(line) for line in out)


def normalise_sieve_test(stdout: str, stderr: str) -> list[str]:
    """sieve-test's "Performed actions" and "Implicit keep" sections in the normal form."""
    if "failed to compile" in stderr:
        return ["compile-error"]
    if "final result: failed" in stderr:
        return ["error", "store INBOX"]  # "resolved with successful implicit keep"; no actions printed
    out: list[str] = []
    current: dict[str, str | list[str]] | None = None
    items: list[dict[str, str | list[str]]] = []
    for line in stdout.splitlines():
        if line.startswith(" * "):
            current = {"head": line[3:].strip(), "flags": [], "create": ""}
            items.append(current)
        elif current is not None and line.strip().startswith("+ add IMAP flags:"):
            flags = current["flags"]
            assert isinstance(flags, list)
            flags.extend(line.split(":", 1)[1].split())
        elif current is not None and "create mailbox if it does not exist" in line:
            current["create"] = " create"
        elif current is not None and line.strip().startswith("=>"):
            key, _, value = line.strip()[2:].partition(":")
            current[key.strip()] = value.strip()
        elif line.startswith("START MESSAGE"):
            current = None
    for it in items:
        head = str(it["head"])
        flags = it["flags"]
        assert isinstance(flags, list)
        if head.startswith("store message in folder:"):
            # a store into "" is a store into INBOX when sieve-test executes it (-e shows "mailbox '' (INBOX)")
            box = head.split(":", 1)[1].strip() or "INBOX"
            out.append("store " + box + _flags(flags) + str(it["create"]))
        elif head.startswith("redirect message to:"):
            out.append("redirect " + head.split(":", 1)[1].strip().strip("<>"))
        elif head == "discard":
            out.append("discard")
        elif head.startswith("reject message with reason:"):
            out.append("reject " + head.split(":", 1)[1].strip())
        elif head.startswith("send vacation message"):
            out.append(f"vacation seconds={it.get('seconds', '')}"
                       + (f" subject={it['subject']}" if "subject" in it else "")
                       + (f" from={it['from']}" if "from" in it else "") + f" handle={it.get('handle', '')}")
        elif head.startswith("track duplicate"):
            continue
        else:
            out.append("unknown " + head)
    return sorted(out)


class SieveTest:
    """Runs Pigeonhole's sieve-test with a minimal Dovecot config in a scratch copy of the corpus
    (sieve-test writes compiled .svbin files beside the scripts, as the mail user)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.dir = workdir
        shutil.copytree(CORPUS, workdir / "corpus")
        for p in [workdir, *workdir.rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o666)
        uid = os.getuid()
        # Dovecot refuses mail access as root: run as nobody then (the scratch tree is world-writable).
        mail_uid = 65534 if uid == 0 else uid
        mail_gid = 65534 if uid == 0 else os.getgid()
        inc = workdir / "corpus" / "include"
        (workdir / "mail").mkdir(mode=0o777)
        (workdir / "mail").chmod(0o777)
        self.conf = workdir / "dovecot.conf"
        self.conf.write_text(f"""ssl = no
mail_uid = {mail_uid}
mail_gid = {mail_gid}
first_valid_uid = 0
first_valid_gid = 0
mail_location = maildir:{workdir}/mail
base_dir = {workdir}/run
state_dir = {workdir}/state
log_path = /dev/stderr
plugin {{
  sieve = file:{inc}/personal
  sieve_global = {inc}/global
  sieve_extensions = +vacation-seconds +editheader +encoded-character
  sieve_max_redirects = 4
}}
""")
        self.conf.chmod(0o644)

    def run(self, pair: Pair) -> list[str]:
        script = self.dir / "corpus" / pair.script.name
        message = self.dir / "corpus" / "messages" / pair.message.name
        # -a/-r: the envelope recipient the "to" part reports; -f: the sender; TZ fixes the "local" zone.
        args = [self.binary, "-c", str(self.conf), "-a", pair.rcpt_to, "-r", pair.rcpt_to]
        # sieve-test refuses "-f <>": without -f it reads the message's Return-Path (<> in bounce.eml)
        args += ["-f", pair.mail_from] if pair.mail_from else []
        proc = subprocess.run(args + [str(script), str(message)], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "TZ": "UTC"}, cwd=self.dir)
        return normalise_sieve_test(proc.stdout, proc.stderr)


# Pairs where we follow the RFC and Pigeonhole 0.5.19 (Debian 12's dovecot-sieve) does not; the
# differential test asserts that these still differ, so a fixed oracle shows up.
KNOWN_DIFFERENCES = {
    "date-received-index": "RFC 5260 §6 applies :index to the date test; Pigeonhole 0.5.19 ignores it there "
                           "and reads the first field",
    "duplicate-twice": "a second duplicate test of one id gets the first one's answer here (RFC 7352 §3: "
                       "one answer per message); Pigeonhole 0.5.19 ends that run as failed (implicit keep)",
}
EXPECTED = CORPUS / "expected.json"
