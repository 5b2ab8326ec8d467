"""Change notification between the processes of one machine that share a mail root.

Owns: carrying the store's change events (changes.py) from the ChangeHub of one process to the
ChangeHubs of the others, so an IMAP IDLE session in one worker hears about a delivery, a flag
change, an expunge or a new folder made by another worker within a second (DESIGN.md "Beyond one
machine": "change notification crosses processes"). Does not own: the events themselves, or making
a process's cached folder state fresh (mailbox.py does that under the inter-process lock; an event
here is only a hint to take a new snapshot, which is what a subscriber does with every event).
With `[storage] backend = "postgresql"` bus_pg.py (LISTEN/NOTIFY) replaces it, between the
workers of one node too; it reuses this module's records.

Why Unix datagram sockets in a directory: every process that runs a Store with `bus_dir` binds
`<bus_dir>/<pid>-<n>.sock`; a sender lists the directory (again only when its mtime says it
changed) and sends to every socket but its own. It needs no broker, no extra process, no
dependency, costs nothing while nothing changes (unlike polling the index), and a datagram arrives
at once. A peer that died leaves a socket nobody reads: sending to it fails with ECONNREFUSED and
the file is removed (when it is still the same inode).

Nothing is silently lost: a receiver's queue is short (Linux net.unix.max_dgram_qlen, 10 by
default, even 512 is short), so a sender coalesces the events of COALESCE seconds into one datagram
(identical events once), keeps per peer what could not be sent (queue full) and tries again every
RETRY seconds; when that backlog is too large it is replaced by one "everything changed" record,
which becomes an Overflow(user) for every subscriber of the receiver (they re-snapshot). A process
restarted meanwhile does not need what it missed: its sessions snapshot when they start. The last
resort stays an IMAP session's own poll (imap/session.py POLL_INTERVAL, 30 s): its snapshot sees
whatever another process wrote, with or without an event.

Wire format: one datagram of at most MAX_DATAGRAM octets: b"MH1" then records, each b"\\n" +
kind + b"\\0" + user + b"\\0" + mailbox (UTF-8). Kinds: a (messages added), f (flags changed), x
(expunged), m (folders changed; mailbox empty), o (everything may have changed; user and mailbox
empty). A receiver ignores anything else: a datagram too long or not of this form, a record of an
unknown kind, a name with control characters or too long, and, where the kernel reports the
sender (SO_PASSCRED), a datagram from another user. The directory is made mode 0700 and must be
owned by us, so other local users cannot even reach the sockets.

All methods run on the event loop thread (the hub's publish() calls send()).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import socket
import stat
import struct
import time
from pathlib import Path

from mailhaven.errors import StoreError
from mailhaven.store.changes import (
    ChangeHub,
    Event,
    Expunged,
    FlagsChanged,
    MailboxesChanged,
    MessagesAdded,
    Overflow,
)

log = logging.getLogger(__name__)
MAGIC = b"MH1"
MAX_DATAGRAM = 16 * 1024
MAX_NAME = 1024  # octets of a user or mailbox name (an address is at most 320, a folder name 255)
MAX_BACKLOG = 10_000  # records kept for one peer that does not read; beyond: one "everything" record
COALESCE = 0.005  # seconds of events sent together
RETRY = 0.05  # seconds between tries to a peer whose queue was full
LIST_SETTLE = 2.0  # a directory listing is trusted only when the directory is older than this
SUFFIX = ".sock"
MAX_SUN_PATH = 100  # sockaddr_un.sun_path is 108 octets on Linux; longer paths go through /proc
_KINDS = {MessagesAdded: b"a", FlagsChanged: b"f", Expunged: b"x", MailboxesChanged: b"m"}
_EVERYTHING = b"o\0\0"
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_counter = itertools.count(1)

Record = bytes  # kind NUL user NUL mailbox


def encode(event: Event) -> Record | None:
    """The record of an event; None for one that does not cross (Overflow is per subscriber)."""
    kind = _KINDS.get(type(event))
    if kind is None or isinstance(event, Overflow):
        return None
    user = event.user.encode("utf-8", "surrogatepass")
    mailbox = b"" if isinstance(event, MailboxesChanged) else event.mailbox.encode("utf-8", "surrogatepass")
    if not _clean(user):
        return None
    if not _clean(mailbox):  # cannot be sent as is: "something changed" for every folder of the user
        kind, mailbox = b"m", b""
    return kind + b"\0" + user + b"\0" + mailbox


def _clean(name: bytes) -> bool:
    return len(name) <= MAX_NAME and not any(c < 0x20 or c == 0x7F for c in name)


def decode(data: bytes) -> list[Event | None]:
    """The events of a datagram (None: "everything changed"); [] for anything not well formed."""
    if len(data) > MAX_DATAGRAM or not data.startswith(MAGIC + b"\n"):
        return []
    out: list[Event | None] = []
    for record in data[len(MAGIC) + 1:].split(b"\n"):
        parts = record.split(b"\0")
        if len(parts) != 3:
            continue
        kind, raw_user, raw_mailbox = parts
        if kind == b"o":
            out.append(None)
            continue
        if not (raw_user and _clean(raw_user) and _clean(raw_mailbox)):
            continue
        try:
            user, mailbox = raw_user.decode("utf-8"), raw_mailbox.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if kind == b"m":
            out.append(MailboxesChanged(user))
        elif kind in (b"a", b"f", b"x") and mailbox:
            cls = MessagesAdded if kind == b"a" else FlagsChanged if kind == b"f" else Expunged
            out.append(cls(user, mailbox, ()))
    return out


def pack(records: list[Record], limit: int = MAX_DATAGRAM) -> list[tuple[bytes, int]]:
    """Datagrams of at most `limit` octets holding these records in order, each with how many it
    holds (a record longer than `limit` alone in one; encode() keeps them under 2 * MAX_NAME + 3)."""
    out: list[tuple[bytes, int]] = []
    current, n = bytearray(MAGIC), 0
    for r in records:
        if n and len(current) + 1 + len(r) > limit:
            out.append((bytes(current), n))
            current, n = bytearray(MAGIC), 0
        current += b"\n" + r
        n += 1
    if n:
        out.append((bytes(current), n))
    return out


def prepare_dir(path: Path) -> None:
    """Create the bus directory mode 0700; refuse one owned by someone else (StoreError)."""
    try:
        os.makedirs(path, 0o700, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise StoreError(f"the change bus directory {path} must be a directory owned by this user")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o700)
    except OSError as e:
        raise StoreError(f"the change bus directory {path} is unusable: {e.strerror}") from e


class Bus:
    """This process's end of the bus over `directory`, feeding and fed by `hub`."""

    def __init__(self, directory: Path, hub: ChangeHub) -> None:
        self.directory = Path(directory)
        self.hub = hub
        self.name = f"{os.getpid()}-{next(_counter)}{SUFFIX}"
        self._sock: socket.socket | None = None
        self._dir_fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: dict[Record, None] = {}  # records not yet handed to the peers (ordered set)
        self._backlog: dict[str, dict[Record, None]] = {}  # peer -> records its full queue refused
        self._timer: asyncio.TimerHandle | None = None
        self._peers: dict[str, int] = {}  # socket file name -> inode
        self._listed: tuple[int, float] = (-1, 0.0)  # (directory mtime_ns, when) of the listing
        self._passcred = hasattr(socket, "SO_PASSCRED") and hasattr(socket, "SCM_CREDENTIALS")
        self.received = 0  # events published from other processes (for tests and metrics)
        self.dropped = 0  # datagrams or records ignored as malformed or foreign

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind our socket and start reading (on the running event loop); hook into the hub."""
        prepare_dir(self.directory)
        self._loop = asyncio.get_running_loop()
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            if self._passcred:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            try:
                os.unlink(self.name, dir_fd=self._dir_fd)  # left by a dead process with our pid
            except FileNotFoundError:
                pass
            sock.bind(self._addr(self.name))
        except OSError as e:
            sock.close()
            os.close(self._dir_fd)
            self._dir_fd = -1
            raise StoreError(f"the change bus socket in {self.directory} could not be bound: {e}") from e
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self.hub.relay = self.send

    def close(self) -> None:
        """Send what is still waiting (best effort), stop reading and remove our socket file."""
        if self.hub.relay == self.send:
            self.hub.relay = None
        if self._sock is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush(final=True)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        try:
            os.unlink(self.name, dir_fd=self._dir_fd)
        except OSError:
            pass
        os.close(self._dir_fd)
        self._dir_fd = -1

    def _addr(self, name: str) -> str:
        path = f"{self.directory}/{name}"
        if len(path.encode()) <= MAX_SUN_PATH:
            return path
        return f"/proc/self/fd/{self._dir_fd}/{name}"  # Linux: resolves through our directory fd

    # -- sending --------------------------------------------------------------------------------

    def send(self, event: Event) -> None:
        """Queue an event for every other process (sent within COALESCE seconds); never blocks."""
        if self._sock is None or self._loop is None:
            return
        record = encode(event)
        if record is None:
            return
        self._outbox[record] = None
        if self._timer is None:
            self._timer = self._loop.call_later(COALESCE, self._flush)

    def _flush(self, final: bool = False) -> None:
        self._timer = None
        if self._sock is None:
            return
        records, self._outbox = list(self._outbox), {}
        peers = self._list_peers()
        for peer in list(self._backlog):
            if peer not in peers:
                del self._backlog[peer]
        for peer in peers:
            backlog = self._backlog.get(peer)
            if backlog is None:
                if records:
                    rest = self._send_to(peer, records)
                    if rest:
                        self._backlog[peer] = dict.fromkeys(rest)
                continue
            backlog.update(dict.fromkeys(records))
            if len(backlog) > MAX_BACKLOG:
                backlog = self._backlog[peer] = {_EVERYTHING: None}
            rest = self._send_to(peer, list(backlog))
            if rest:
                self._backlog[peer] = dict.fromkeys(rest)
            else:
                self._backlog.pop(peer, None)
        if self._backlog and not final and self._loop is not None:
            self._timer = self._loop.call_later(RETRY, self._flush)

    def _send_to(self, peer: str, records: list[Record]) -> list[Record]:
        """Send the records to one peer; returns those its full queue did not take."""
        assert self._sock is not None
        sent = 0
        for datagram, n in pack(records):
            try:
                self._sock.sendto(datagram, self._addr(peer))
            except (BlockingIOError, InterruptedError):
                return records[sent:]
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    return records[sent:]
                if e.errno == errno.ECONNREFUSED:  # nobody reads it: its process is gone
                    self._forget(peer, remove=True)
                elif e.errno in (errno.ENOENT, errno.ENOTSOCK, errno.EPROTOTYPE):  # gone, or not a peer
                    self._forget(peer, remove=False)
                else:
                    log.warning("store bus: sending to %s failed: %s", peer, e)
                return []
            sent += n
        return []

    def _forget(self, peer: str, *, remove: bool) -> None:
        """Stop sending to a peer; `remove`: its process is gone, remove its socket file if it is
        still the one we listed (not one a new process with the same pid just bound)."""
        inode = self._peers.pop(peer, None)
        self._backlog.pop(peer, None)
        try:
            if remove and inode is not None and os.stat(peer, dir_fd=self._dir_fd, follow_symlinks=False).st_ino == inode:
                os.unlink(peer, dir_fd=self._dir_fd)
                log.info("store bus: removed %s (its process is gone)", peer)
        except OSError:
            pass

    def _list_peers(self) -> list[str]:
        """The other sockets in the directory: listed again only when the directory changed (or
        changed so recently that a second change within the same mtime tick could hide)."""
        try:
            st = os.stat(self._dir_fd)
        except OSError:
            return list(self._peers)
        mtime_ns, listed_at = self._listed
        if st.st_mtime_ns != mtime_ns or listed_at - st.st_mtime < LIST_SETTLE:
            peers: dict[str, int] = {}
            try:
                with os.scandir(self._dir_fd) as it:
                    for entry in it:
                        if entry.name.endswith(SUFFIX) and entry.name != self.name:
                            peers[entry.name] = entry.inode()
            except OSError as e:
                log.warning("store bus: cannot list %s: %s", self.directory, e)
                return list(self._peers)
            self._peers = peers
            self._listed = (st.st_mtime_ns, time.time())
        return list(self._peers)

    # -- receiving ------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(256):  # then let the loop run other work; the reader is called again
            try:
                data, ancdata, flags, _addr = sock.recvmsg(MAX_DATAGRAM + 1, socket.CMSG_SPACE(_CREDS.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("store bus: receiving failed: %s", e)
                return
            if flags & socket.MSG_TRUNC or not self._from_us(ancdata):
                self.dropped += 1
                continue
            events = decode(data)
            if not events:
                self.dropped += 1
                continue
            self.received += self.hub.republish(events)

    def _from_us(self, ancdata: list[tuple[int, int, bytes]]) -> bool:
        """Whether the kernel says the sender runs as our user (True where it cannot say)."""
        if not self._passcred:
            return True
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _CREDS.size:
                uid: int = _CREDS.unpack_from(data)[1]
                return uid == os.getuid()
        return False


__all__ = ["Bus", "decode", "encode", "pack", "prepare_dir"]
