"""Per-folder UID backup file `mailhaven-uidlist`, and import of Dovecot's `dovecot-uidlist`.

Owns: the on-disk format that lets a lost or deleted SQLite index be rebuilt with the same
UIDVALIDITY and UIDs (RFC 3501 §2.3.1.1: UIDs must not change while UIDVALIDITY stays).
Does not own: the index itself (index.py) or deciding when to rebuild (mailbox.py).

Format of `mailhaven-uidlist` (UTF-8 text, one record per line, in the folder's directory next to
cur/ new/ tmp/, so it moves with the folder when the folder is renamed):

    M1 V<uidvalidity> N<uidnext> H<modseq>    header, first line (H: since 2026-12, optional)
    <uid> <key>                               one line per UID assigned; <key> = file name before ":"
    H<modseq>                                 a MODSEQ reservation (since 2026-12)

H: every MODSEQ the folder has handed out is at most the largest H in the file (the header's and
the lines'). The folder appends a new reservation (its current MODSEQ + a step) before it hands
out a MODSEQ above the last one, so an index rebuilt from this file starts above every MODSEQ a
client may have seen while UIDVALIDITY stays (RFC 7162: a new MODSEQ is above every earlier
one). Older readers skip both (a header token they do not know, a line without "<uid> <key>"); a file
without H (written before, or Dovecot's) gives modseq 0: not known.

The header is written when the file is (re)created, atomically (temporary file, fsync, rename).
New UIDs are appended as whole lines in one write(2) with O_APPEND; a torn last line after a crash
is ignored. Lines of expunged messages stay until the file is compacted (rewritten atomically), so
the largest UID ever given stays visible and UIDs are never reused. The effective UIDNEXT is
max(N, largest uid + 1). Appends are not fsynced: the SQLite index (synchronous=FULL when fsync is
on) is the durable record, and this file is the backup used when the index is lost or deleted.

`dovecot-uidlist` (doc.dovecot.org, "Maildir Mailbox Format"): version 3 header
`3 V<uidvalidity> N<uidnext> [G<guid>] ...` and records `<uid> [<ext>...] :<filename>`; version 1
(Courier compatible) header `1 <uidvalidity> <uidnext>` and records `<uid> <filename>`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mailhaven.store import maildir

FILENAME = "mailhaven-uidlist"
DOVECOT_FILENAME = "dovecot-uidlist"
MAX_LINE_KEY = 4096


@dataclass
class UidList:
    uidvalidity: int
    uidnext: int
    uids: dict[str, int] = field(default_factory=dict)  # key -> uid
    lines: int = 0  # records in the file (including those of expunged messages)
    modseq: int = 0  # the largest MODSEQ reservation (H); 0 = not recorded

    @property
    def effective_uidnext(self) -> int:
        top = max(self.uids.values(), default=0)
        return max(self.uidnext, top + 1)


def _parse_int(text: str) -> int | None:
    """A decimal 32-bit unsigned number (UIDs and UIDVALIDITY are nz-number, RFC 3501 §9), else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    value = int(text)
    return value if value <= 0xFFFFFFFF else None


def _parse_modseq(text: str) -> int:
    """A MODSEQ (RFC 7162 §7: up to 2^63 - 1), else 0."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return 0
    value = int(text)
    return value if value < 1 << 63 else 0


def read(folder: Path) -> UidList | None:
    """Our uidlist of a folder, or None when missing or unreadable."""
    try:
        raw = (folder / FILENAME).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    text = raw.decode("utf-8", "replace")
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) < 3 or head[0] != "M1" or not head[1].startswith("V") or not head[2].startswith("N"):
        return None
    v, n = _parse_int(head[1][1:]), _parse_int(head[2][1:])
    if not v or not n:
        return None
    result = UidList(uidvalidity=v, uidnext=n)
    for token in head[3:]:
        if token.startswith("H"):
            result.modseq = max(result.modseq, _parse_modseq(token[1:]))
    complete = text.endswith("\n")
    body = lines[1:]
    if not complete and body:  # torn last line
        body = body[:-1]
    for line in body:
        if line.startswith("H"):
            result.modseq = max(result.modseq, _parse_modseq(line[1:]))
            continue
        uid_text, sep, key = line.partition(" ")
        uid = _parse_int(uid_text)
        if not sep or uid is None or uid == 0 or not key or len(key) > MAX_LINE_KEY:
            continue
        result.lines += 1
        result.uids[key] = uid
    return result


def read_dovecot(folder: Path) -> UidList | None:
    """Dovecot's uidlist (versions 1 and 3) of a folder, or None when missing or not understood."""
    try:
        raw = (folder / DOVECOT_FILENAME).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    lines = raw.decode("utf-8", "replace").split("\n")
    head = lines[0].split()
    if not head:
        return None
    version = head[0]
    v = n = None
    if version == "3":
        for token in head[1:]:
            if token.startswith("V"):
                v = _parse_int(token[1:])
            elif token.startswith("N"):
                n = _parse_int(token[1:])
    elif version == "1" and len(head) >= 3:
        v, n = _parse_int(head[1]), _parse_int(head[2])
    else:
        return None
    if not v:
        return None
    result = UidList(uidvalidity=v, uidnext=n or 1)
    for line in lines[1:]:
        if not line:
            continue
        uid_text, _, rest = line.partition(" ")
        uid = _parse_int(uid_text)
        if uid is None or uid == 0:
            continue
        if version == "3":
            i = rest.find(":")  # extension fields come first, the file name follows ':'
            if i < 0:
                continue
            fname = rest[i + 1:]
        else:
            fname = rest
        key, _ = maildir.split_name(fname.strip())
        if key:
            result.uids[key] = uid
            result.lines += 1
    return result


def rewrite(folder: Path, uidvalidity: int, uidnext: int, uids: dict[str, int] | list[tuple[int, str]],
            *, fsync: bool, modseq: int = 0) -> None:
    """Write the whole file atomically (creation, rebuild, compaction); `modseq`: the H reservation."""
    pairs = sorted((u, k) for k, u in uids.items()) if isinstance(uids, dict) else sorted(uids)
    parts = [f"M1 V{uidvalidity} N{uidnext}" + (f" H{modseq}\n" if modseq else "\n")]
    parts.extend(f"{u} {k}\n" for u, k in pairs)
    maildir.atomic_write(folder / FILENAME, "".join(parts).encode("utf-8"), fsync=fsync)


def append(folder: Path, pairs: list[tuple[int, str]], *, modseq: int = 0) -> None:
    """Append records for newly assigned UIDs, and a MODSEQ reservation when `modseq` is given, in
    one write (not fsynced: see module docstring)."""
    if not pairs and not modseq:
        return
    data = "".join([f"{u} {k}\n" for u, k in pairs] + ([f"H{modseq}\n"] if modseq else [])).encode("utf-8")
    fd = os.open(folder / FILENAME, os.O_WRONLY | os.O_APPEND)  # FileNotFoundError: caller rewrites
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)
