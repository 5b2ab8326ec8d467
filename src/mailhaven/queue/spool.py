"""The queue on disk: one message file plus one JSON envelope per entry (the truth of the queue).

Owns: the entry format (sender, per-recipient state pending/delivered/failed with attempts and the
last reply, created time, next attempt, delay-warning flag), durable writes through the store's
helpers (store/maildir.py: tmp -> fsync -> rename -> fsync the directory; STYLE rule 11), atomic
envelope updates, loading everything at start and cleaning what a crash left behind.
Does not own: scheduling or delivery (queue/manager.py), header fixing (cleanup.py).

This is the narrow interface a second backend (DESIGN "Beyond one machine": queue metadata in
PostgreSQL, message files on shared storage) replaces: `load`, `add`, `save`, `read`, `remove`.

On disk, `<data>/queue/`:
    <ID>.msg    the message, CRLF line ends, written once
    <ID>.env    the envelope, JSON (format below), replaced atomically on every change
An entry exists once its .env is in place: `add` writes the .msg first and the .env last, then
fsyncs the directory, and only then returns (the caller may acknowledge). `remove` unlinks the .env
first. So at load a .msg without .env is a transaction that was never acknowledged (or a removal
cut short) and is deleted; an .env without .msg cannot be delivered: it is moved to `corrupt/`
with a log line, as is an .env that does not parse. Leftover `.*.tmp` files are deleted.

Envelope (version 1):
    {"v": 1, "id": "...", "sender": "a@b" | "", "created": ts, "next_attempt": ts, "attempts": n,
     "delay_warning_sent": bool, "size": octets, "source": "submission",
     "recipients": [{"address": "...", "state": "pending"|"delivered"|"failed", "attempts": n,
                     "last_attempt": ts | null, "notified": bool,
                     "last": {"code", "enhanced", "text", "temporary", "remote_mta"} | null,
                     "program": "|/path args", "program_rcpt": "..."}]}
`program` (absent for an ordinary recipient; envelopes without it load as before) makes the recipient
a delivery to that program (delivery/program.py): `address` is the envelope recipient as received
(ORIGINAL_RECIPIENT, and the one a bounce names), `program_rcpt` the alias naming the command
(RECIPIENT).
`notified` marks a failed recipient whose bounce has been queued (or that needs none), so a crash
between recording the failure and queueing the bounce still bounces after restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mailhaven.delivery.result import DeliveryResult
from mailhaven.errors import TempFailure
from mailhaven.store import maildir

log = logging.getLogger("mailhaven.queue")

RcptState = Literal["pending", "delivered", "failed"]
VERSION = 1
ID_RE = re.compile(r"^[0-9A-F]{8,40}$")
MAX_ENVELOPE = 16 * 1024 * 1024  # an envelope file larger than this is not ours


def new_id(now: float | None = None) -> str:
    """Queue id: 8 hex digits of seconds, then 10 random ones (sortable by arrival, unguessable)."""
    return f"{int(now if now is not None else time.time()) & 0xFFFFFFFF:08X}{secrets.token_hex(5).upper()}"


def valid_id(text: str) -> bool:
    return bool(ID_RE.match(text))


@dataclass
class Recipient:
    address: str
    state: RcptState = "pending"
    attempts: int = 0
    last_attempt: float | None = None
    last: DeliveryResult | None = None
    notified: bool = False
    program: str = ""  # "|/path args": deliver to this program (delivery/program.py)
    program_rcpt: str = ""  # its RECIPIENT (the alias naming it)

    def to_json(self) -> dict[str, Any]:
        out = {"address": self.address, "state": self.state, "attempts": self.attempts,
               "last_attempt": self.last_attempt, "notified": self.notified,
               "last": self.last.to_json() if self.last is not None else None}
        if self.program:
            out.update(program=self.program, program_rcpt=self.program_rcpt or self.address)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Recipient:
        address = str(d["address"])
        state = d.get("state", "pending")
        if state not in ("pending", "delivered", "failed"):
            raise ValueError(f"bad recipient state {state!r}")
        last = d.get("last")
        return cls(address, state, int(d.get("attempts", 0)),
                   None if d.get("last_attempt") is None else float(d["last_attempt"]),
                   DeliveryResult.from_json(address, last) if isinstance(last, dict) else None,
                   bool(d.get("notified", False)), str(d.get("program", "")), str(d.get("program_rcpt", "")))


@dataclass
class Entry:
    id: str
    sender: str  # "" = null reverse-path (a bounce: never bounced itself)
    recipients: list[Recipient]
    created: float
    next_attempt: float
    size: int = 0
    attempts: int = 0
    delay_warning_sent: bool = False
    source: str = ""
    # Not stored: set while the manager works on the entry / once the operator deleted it.
    busy: bool = field(default=False, compare=False)
    deleted: bool = field(default=False, compare=False)

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state == "pending"]

    def done(self) -> bool:
        return all(r.state != "pending" for r in self.recipients)

    def to_json(self) -> dict[str, Any]:
        return {"v": VERSION, "id": self.id, "sender": self.sender, "created": self.created,
                "next_attempt": self.next_attempt, "attempts": self.attempts,
                "delay_warning_sent": self.delay_warning_sent, "size": self.size, "source": self.source,
                "recipients": [r.to_json() for r in self.recipients]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Entry:
        if d.get("v") != VERSION:
            raise ValueError(f"unknown envelope version {d.get('v')!r}")
        rcpts = [Recipient.from_json(r) for r in d["recipients"]]
        if not rcpts:
            raise ValueError("envelope without recipients")
        return cls(str(d["id"]), str(d["sender"]), rcpts, float(d["created"]), float(d["next_attempt"]),
                   int(d.get("size", 0)), int(d.get("attempts", 0)), bool(d.get("delay_warning_sent")),
                   str(d.get("source", "")))


class Spool:
    """Durable queue storage in one directory. Every method runs its file work in a thread."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._locks: dict[str, asyncio.Lock] = {}
        self._ready = False

    # -- paths --
    def msg_path(self, entry_id: str) -> Path:
        return self.root / f"{entry_id}.msg"

    def env_path(self, entry_id: str) -> Path:
        return self.root / f"{entry_id}.env"

    # -- load --
    async def load(self) -> list[Entry]:
        """Every entry on disk (creating the directory), after cleaning crash leftovers."""
        return await asyncio.to_thread(self._load_sync)

    def _make_root(self) -> None:
        # Each new directory's entry in its parent is fsynced too: the first entry acknowledged
        # after the first start must not vanish with a queue directory the disk never recorded.
        maildir.make_dirs(self.root, fsync=self.fsync)
        self._ready = True

    def _load_sync(self) -> list[Entry]:
        self._make_root()
        root = str(self.root)
        names = os.listdir(root)
        msgs = {n[:-4] for n in names if n.endswith(".msg")}
        envs = {n[:-4] for n in names if n.endswith(".env")}
        entries: list[Entry] = []
        changed = False
        for n in names:
            if n.startswith(".") and n.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(self.root / n)
                    changed = True
        for eid in sorted(envs):
            if eid not in msgs:
                log.error("queue entry %s has an envelope but no message file; moved to corrupt/", eid)
                self._quarantine(eid)
                continue
            try:
                raw = _read_small(os.path.join(root, eid + ".env"))
                entry = Entry.from_json(json.loads(raw))
                if entry.id != eid:
                    raise ValueError("id does not match the file name")
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("queue entry %s: unreadable envelope (%s); moved to corrupt/", eid, e)
                self._quarantine(eid)
                continue
            entries.append(entry)
        for eid in msgs - envs:
            # Never acknowledged (or a removal cut short): not part of the queue.
            with contextlib.suppress(OSError):
                os.unlink(self.msg_path(eid))
                changed = True
        if changed and self.fsync:
            maildir.fsync_dir(self.root)
        return entries

    def _quarantine(self, eid: str) -> None:
        bad = self.root / "corrupt"
        os.makedirs(bad, mode=0o700, exist_ok=True)
        for p in (self.env_path(eid), self.msg_path(eid)):
            with contextlib.suppress(OSError):
                os.replace(p, bad / p.name)

    # -- add --
    async def add(self, sender: str, recipients: list[str], data: bytes, *, source: str = "",
                  created: float | None = None, next_attempt: float | None = None,
                  entry_id: str | None = None, programs: Sequence[tuple[str, str, str]] = ()) -> Entry:
        """Durably store a new entry; returns once message, envelope and directory are fsynced.
        `programs`: more recipients, each (envelope recipient, command, RECIPIENT) to be delivered
        to a program. Raises TempFailure (nothing left behind) when the disk fails."""
        now = time.time()
        created = now if created is None else created
        rcpts = [Recipient(r) for r in recipients] + [Recipient(a, program=c, program_rcpt=r) for a, c, r in programs]
        entry = Entry(entry_id or new_id(created), sender, rcpts, created,
                      now if next_attempt is None else next_attempt, size=len(data), source=source)
        try:
            await asyncio.to_thread(self._add_sync, entry, data)
        except OSError as e:
            log.error("queue: cannot store entry %s: %s", entry.id, e.strerror or e)
            raise TempFailure("the message could not be queued") from e
        return entry

    def _add_sync(self, entry: Entry, data: bytes) -> None:
        if not self._ready:
            self._make_root()
        msg = self.msg_path(entry.id)
        tmp = self.root / f".{entry.id}.msg.tmp"
        maildir.write_new_file(tmp, data, fsync=self.fsync)
        try:
            os.rename(tmp, msg)
            # atomic_write fsyncs the directory after the .env rename: that covers the .msg too.
            maildir.atomic_write(self.env_path(entry.id), _dumps(entry), fsync=self.fsync)
        except BaseException:
            for p in (tmp, msg):
                with contextlib.suppress(OSError):
                    os.unlink(p)
            raise

    # -- update --
    async def save(self, entry: Entry) -> None:
        """Replace the envelope atomically with the entry's current state (serialised per entry,
        so a later save never loses to an earlier one). Raises OSError when the disk fails."""
        lock = self._locks.setdefault(entry.id, asyncio.Lock())
        async with lock:
            data = _dumps(entry)
            await asyncio.to_thread(maildir.atomic_write, self.env_path(entry.id), data, fsync=self.fsync)

    async def read(self, entry_id: str) -> bytes:
        return await asyncio.to_thread(self.msg_path(entry_id).read_bytes)

    async def remove(self, entry_id: str) -> None:
        """Delete the entry: envelope first (that ends it), then the message file."""
        lock = self._locks.setdefault(entry_id, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(self._remove_sync, entry_id)
        self._locks.pop(entry_id, None)

    def _remove_sync(self, entry_id: str) -> None:
        for p in (self.env_path(entry_id), self.msg_path(entry_id)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        if self.fsync:
            maildir.fsync_dir(self.root)


def _read_small(path: str) -> bytes:
    """A whole envelope file (plain os calls: at start we read thousands of them)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        if size > MAX_ENVELOPE:
            raise ValueError("envelope too large")
        chunks: list[bytes] = []
        while True:
            data = os.read(fd, max(size, 4096))
            if not data:
                break
            chunks.append(data)
            if sum(map(len, chunks)) > MAX_ENVELOPE:
                raise ValueError("envelope too large")
    finally:
        os.close(fd)
    return b"".join(chunks)


def _dumps(entry: Entry) -> bytes:
    return json.dumps(entry.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


__all__ = ["Spool", "Entry", "Recipient", "RcptState", "new_id", "valid_id"]
