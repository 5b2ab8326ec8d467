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

Worker processes ([server] workers > 1, supervisor.py): worker 0 runs the queue over this spool;
worker i > 0 queues into its own partition `<data>/queue/worker-<i>/` (a plain Spool there: `add`
only), and the runner's Spool loads every partition at start and picks new entries up with
`scan_partitions()` (every second, or at once when a worker's datagram reaches `wake.sock` in
the queue directory). An entry stays in the directory it was written to (its saves and its removal
happen there: no file moves between directories, so no crash window). In a partition another
process may be writing right now, so a .msg without .env or a `.*.tmp` there is left alone unless
older than STALE_WRITE.

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
`notified` marks a finished recipient whose report (bounce, or success notice when asked) has
been queued, so a crash between recording the result and queueing the report still reports after
restart. DSN requests (RFC 3461, message/dsn.py; absent when not made): "ret" and "envid" on the
entry, "notify" ("NEVER" or e.g. "DELAY,FAILURE") and "orcpt" on a recipient, and "dsn_passed"
when the next hop took the request over.
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
from typing import Any, Literal, Protocol, runtime_checkable

from mailhaven.delivery.result import DeliveryResult
from mailhaven.errors import TempFailure
from mailhaven.message.dsn import NO_MAIL_DSN, NO_RCPT_DSN, DsnRequest, MailDsn, RcptDsn
from mailhaven.store import maildir

log = logging.getLogger("mailhaven.queue")

RcptState = Literal["pending", "delivered", "failed"]
VERSION = 1
ID_RE = re.compile(r"^[0-9A-F]{8,40}$")
MAX_ENVELOPE = 16 * 1024 * 1024  # an envelope file larger than this is not ours
PARTITION_PREFIX = "worker-"  # <data>/queue/worker-<i>/: what worker i > 0 queues
STALE_WRITE = 3600.0  # seconds: a partition's unfinished write older than this was cut short
WAKE_SOCKET = "wake.sock"  # in <data>/queue/: a worker's datagram there wakes the runner's scan


def partition_name(worker: int) -> str:
    return f"{PARTITION_PREFIX}{worker}"


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
    dsn: RcptDsn = NO_RCPT_DSN  # NOTIFY and ORCPT (RFC 3461) as RCPT gave them
    # The next hop took NOTIFY over (it offers DSN, delivery/remote.py): no success notice from us.
    dsn_passed: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {"address": self.address, "state": self.state, "attempts": self.attempts,
               "last_attempt": self.last_attempt, "notified": self.notified,
               "last": self.last.to_json() if self.last is not None else None}
        if self.program:
            out.update(program=self.program, program_rcpt=self.program_rcpt or self.address)
        out.update(self.dsn.to_json())
        if self.dsn_passed:
            out["dsn_passed"] = True
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
                   bool(d.get("notified", False)), str(d.get("program", "")), str(d.get("program_rcpt", "")),
                   RcptDsn.from_json(d), bool(d.get("dsn_passed", False)))


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
    dsn: MailDsn = NO_MAIL_DSN  # RET and ENVID (RFC 3461) as MAIL gave them
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
                "recipients": [r.to_json() for r in self.recipients],
                **({"ret": self.dsn.ret} if self.dsn.ret else {}),
                **({"envid": self.dsn.envid} if self.dsn.envid is not None else {}),
                **({"requiretls": True} if self.dsn.requiretls else {})}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Entry:
        if d.get("v") != VERSION:
            raise ValueError(f"unknown envelope version {d.get('v')!r}")
        rcpts = [Recipient.from_json(r) for r in d["recipients"]]
        if not rcpts:
            raise ValueError("envelope without recipients")
        ret = d.get("ret")
        envid = d.get("envid")
        dsn = MailDsn("FULL" if ret == "FULL" else "HDRS" if ret == "HDRS" else None,
                      str(envid) if envid is not None else None, d.get("requiretls") is True)
        return cls(str(d["id"]), str(d["sender"]), rcpts, float(d["created"]), float(d["next_attempt"]),
                   int(d.get("size", 0)), int(d.get("attempts", 0)), bool(d.get("delay_warning_sent")),
                   str(d.get("source", "")), dsn)


def new_entry(sender: str, recipients: Sequence[str], size: int, *, source: str = "", created: float | None = None,
              next_attempt: float | None = None, entry_id: str | None = None,
              programs: Sequence[tuple[str, str, str]] = (), dsn: DsnRequest | None = None) -> Entry:
    """A new entry (not stored yet): `programs` are more recipients, each (envelope recipient,
    command, RECIPIENT) delivered to a program; `dsn` what the sender asked to be told."""
    now = time.time()
    created = now if created is None else created
    dsn = dsn or DsnRequest()
    rcpts = [Recipient(r, dsn=dsn.of(r)) for r in recipients]
    rcpts += [Recipient(a, program=c, program_rcpt=r, dsn=dsn.of(a)) for a, c, r in programs]
    return Entry(entry_id or new_id(created), sender, rcpts, created, now if next_attempt is None else next_attempt,
                 size=size, source=source, dsn=dsn.mail)


class QueueSpool(Protocol):
    """What queue/manager.py asks of its storage: this module's Spool (files only, one node) or
    queue/spool_pg.py's PgSpool (envelopes in PostgreSQL, message files on a shared path)."""

    partitions: list[Path]

    @property
    def wake_path(self) -> Path: ...

    def msg_path(self, entry_id: str) -> Path: ...

    async def load(self) -> list[Entry]: ...

    async def scan_partitions(self) -> list[Entry]: ...

    async def add(self, sender: str, recipients: list[str], data: bytes, *, source: str = "",
                  created: float | None = None, next_attempt: float | None = None,
                  entry_id: str | None = None, programs: Sequence[tuple[str, str, str]] = (),
                  dsn: DsnRequest | None = None) -> Entry: ...

    async def save(self, entry: Entry) -> None: ...

    async def read(self, entry_id: str) -> bytes: ...

    async def remove(self, entry_id: str) -> None: ...


@runtime_checkable
class ClaimingSpool(QueueSpool, Protocol):
    """A spool several managers (nodes) share: each works only on the due entries it claimed, for
    a lease it renews while delivering and gives back once the entry is saved for later."""

    async def claim(self, limit: int, lease: float, now: float) -> list[Entry]: ...

    async def renew(self, entry_ids: Sequence[str], lease: float) -> set[str]: ...

    async def release(self, entry_id: str) -> None: ...

    async def snapshot(self, entry_id: str | None = None) -> list[tuple[Entry, bool]]: ...

    async def reschedule(self, entry_id: str, when: float) -> bool: ...


class Spool:
    """Durable queue storage in one directory. Every method runs its file work in a thread."""

    def __init__(self, root: Path, *, fsync: bool = True, partitions: Sequence[str] = ()) -> None:
        """`partitions`: names of partition directories under `root` to load and scan besides
        those found there at load (the runner passes worker-1 ... worker-<N-1>)."""
        self.root = Path(root)
        self.fsync = fsync
        self._locks: dict[str, asyncio.Lock] = {}
        self._ready = False
        self.partitions: list[Path] = [self.root / p for p in partitions]
        self._dirs: dict[str, Path] = {}  # entry id -> its partition (entries of root are not here)

    # -- paths --
    @property
    def wake_path(self) -> Path:
        """The runner's wake-up socket: a datagram there makes it scan the partitions now."""
        return self.root / WAKE_SOCKET

    def dir_of(self, entry_id: str) -> Path:
        return self._dirs.get(entry_id, self.root)

    def msg_path(self, entry_id: str) -> Path:
        return self.dir_of(entry_id) / f"{entry_id}.msg"

    def env_path(self, entry_id: str) -> Path:
        return self.dir_of(entry_id) / f"{entry_id}.env"

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
        entries = self._load_dir(self.root, 0.0)
        seen = {e.id for e in entries}
        found = sorted(p for p in self.root.glob(f"{PARTITION_PREFIX}*") if p.is_dir())
        for part in dict.fromkeys([*found, *self.partitions]):
            if part not in self.partitions:
                self.partitions.append(part)
            if not part.is_dir():
                continue
            for entry in self._load_dir(part, STALE_WRITE):
                if entry.id not in seen:
                    seen.add(entry.id)
                    self._dirs[entry.id] = part
                    entries.append(entry)
        return entries

    def _load_dir(self, folder: Path, keep_recent: float) -> list[Entry]:
        """The entries of one directory. Crash leftovers are cleaned, except those younger than
        `keep_recent` seconds (a partition's writer may be in the middle of them)."""
        root = str(folder)
        names = os.listdir(root)
        msgs = {n[:-4] for n in names if n.endswith(".msg")}
        envs = {n[:-4] for n in names if n.endswith(".env")}
        entries: list[Entry] = []
        changed = False
        for n in names:
            if n.startswith(".") and n.endswith(".tmp") and _older(folder / n, keep_recent):
                with contextlib.suppress(OSError):
                    os.unlink(folder / n)
                    changed = True
        for eid in sorted(envs):
            if eid not in msgs:
                log.error("queue entry %s has an envelope but no message file; moved to corrupt/", eid)
                self._quarantine(folder, eid)
                continue
            try:
                entry = _read_entry(folder, eid)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("queue entry %s: unreadable envelope (%s); moved to corrupt/", eid, e)
                self._quarantine(folder, eid)
                continue
            entries.append(entry)
        for eid in msgs - envs:
            # Never acknowledged (or a removal cut short): not part of the queue.
            if _older(folder / f"{eid}.msg", keep_recent):
                with contextlib.suppress(OSError):
                    os.unlink(folder / f"{eid}.msg")
                    changed = True
        if changed and self.fsync:
            maildir.fsync_dir(folder)
        return entries

    def _quarantine(self, folder: Path, eid: str) -> None:
        bad = self.root / "corrupt"
        os.makedirs(bad, mode=0o700, exist_ok=True)
        for name in (f"{eid}.env", f"{eid}.msg"):
            with contextlib.suppress(OSError):
                os.replace(folder / name, bad / name)

    # -- partitions --
    async def scan_partitions(self) -> list[Entry]:
        """Entries written into a partition since the last look (complete ones only: .msg and
        .env both there); stale unfinished writes are cleaned on the way. Cheap when nothing
        changed: one listdir per partition."""
        if not self.partitions:
            return []
        known = set(self._dirs)
        found = await asyncio.to_thread(self._scan_sync, known)
        out: list[Entry] = []
        for part, entry in found:
            # Checked on the loop: an entry removed while the thread read it is gone for good
            # (remove() forgets its id only once the files are unlinked).
            if entry.id not in self._dirs and (part / f"{entry.id}.env").exists():
                self._dirs[entry.id] = part
                out.append(entry)
        return out

    def _scan_sync(self, known: set[str]) -> list[tuple[Path, Entry]]:
        out: list[tuple[Path, Entry]] = []
        for part in self.partitions:
            try:
                names = os.listdir(part)
            except FileNotFoundError:
                continue
            envs = {n[:-4] for n in names if n.endswith(".env")}
            msgs = {n[:-4] for n in names if n.endswith(".msg")}
            for eid in sorted((envs & msgs) - known):
                try:
                    out.append((part, _read_entry(part, eid)))
                except FileNotFoundError:
                    continue  # removed meanwhile
                except (OSError, ValueError, KeyError, TypeError) as e:
                    log.error("queue entry %s: unreadable envelope (%s); moved to corrupt/", eid, e)
                    self._quarantine(part, eid)
            for eid in msgs - envs - known:
                if _older(part / f"{eid}.msg", STALE_WRITE):
                    log.warning("queue: removing %s/%s.msg, a write cut short", part.name, eid)
                    with contextlib.suppress(OSError):
                        os.unlink(part / f"{eid}.msg")
        return out

    # -- add --
    async def add(self, sender: str, recipients: list[str], data: bytes, *, source: str = "",
                  created: float | None = None, next_attempt: float | None = None,
                  entry_id: str | None = None, programs: Sequence[tuple[str, str, str]] = (),
                  dsn: DsnRequest | None = None) -> Entry:
        """Durably store a new entry (new_entry's arguments); returns once message, envelope and
        directory are fsynced. Raises TempFailure (nothing left behind) when the disk fails."""
        entry = new_entry(sender, recipients, len(data), source=source, created=created, next_attempt=next_attempt,
                          entry_id=entry_id, programs=programs, dsn=dsn)
        try:
            await asyncio.to_thread(self._add_sync, entry, data)
        except OSError as e:
            log.error("queue: cannot store entry %s: %s", entry.id, e.strerror or e)
            raise TempFailure("the message could not be queued") from e
        return entry

    def _add_sync(self, entry: Entry, data: bytes) -> None:
        if not self._ready:
            self._make_root()
        msg = write_message(self.root, entry.id, data, fsync=self.fsync, sync_dir=False)
        try:
            # atomic_write fsyncs the directory after the .env rename: that covers the .msg too.
            maildir.atomic_write(self.env_path(entry.id), _dumps(entry), fsync=self.fsync)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(msg)
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
        self._dirs.pop(entry_id, None)  # after the unlinks: scan_partitions relies on this order

    def _remove_sync(self, entry_id: str) -> None:
        for p in (self.env_path(entry_id), self.msg_path(entry_id)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        if self.fsync:
            maildir.fsync_dir(self.dir_of(entry_id))


def write_message(folder: Path, entry_id: str, data: bytes, *, fsync: bool, sync_dir: bool = True) -> Path:
    """Write `<folder>/<entry_id>.msg` durably: a temporary name, fsync, rename, then (`sync_dir`)
    fsync the directory. Nothing is left behind on failure. Returns the path."""
    msg = folder / f"{entry_id}.msg"
    tmp = folder / f".{entry_id}.msg.tmp"
    maildir.write_new_file(tmp, data, fsync=fsync)
    try:
        os.rename(tmp, msg)
        if sync_dir and fsync:
            maildir.fsync_dir(folder)
    except BaseException:
        for p in (tmp, msg):
            with contextlib.suppress(OSError):
                os.unlink(p)
        raise
    return msg


def _older(path: Path, seconds: float) -> bool:
    """True when `path` was last modified more than `seconds` ago (or is gone: nothing to keep)."""
    if seconds <= 0:
        return True
    try:
        return time.time() - os.stat(path).st_mtime > seconds
    except OSError:
        return True


def read_entry(folder: Path, eid: str) -> Entry:
    """The entry of `<folder>/<eid>.env`. Raises OSError, ValueError, KeyError, TypeError."""
    return _read_entry(folder, eid)


def _read_entry(folder: Path, eid: str) -> Entry:
    entry = Entry.from_json(json.loads(_read_small(os.path.join(folder, eid + ".env"))))
    if entry.id != eid:
        raise ValueError("id does not match the file name")
    return entry


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


__all__ = ["Spool", "QueueSpool", "ClaimingSpool", "Entry", "Recipient", "RcptState", "new_id", "valid_id", "write_message", "partition_name", "STALE_WRITE", "WAKE_SOCKET"]
