"""The async store API: Store (delivery, accounts), Account (folders), Mailbox (messages).

Owns: the per-account asyncio.Lock that serialises writers, running every blocking step in a
worker thread (asyncio.to_thread), folder operations (list/create/delete/rename/subscribe) and
publishing change events after each write. Does not own: the file format (maildir.py), the index
(index.py), one folder's reconciliation (folder.py), protocol views (imap/, pop3/).

Decisions (see the package docstring for the full contract):
- deliver() only writes files (durably) and publishes MessagesAdded(user, folder, uids=()); UIDs
  are given by the next snapshot() of that folder, which publishes MessagesAdded with the UIDs.
  Keywords a copy starts with (Sieve imap4flags) go the same way: a record written and fsynced
  before the copy is linked, indexed with it by that sync (pending.py), so deliveries never wait
  for the account lock or the index.
- A target folder of deliver() that does not exist is created (Dovecot lda_mailbox_autocreate).
- Mailbox.snapshot() callers share reads (10,000 IDLE sessions woken by one delivery make one or
  two, not 10,000 thread hops in a row under the account lock): a caller joins the read not begun
  yet, and with `after=` (the change hub's event number, changes.py) also the running or the last
  one when it began late enough. Snapshots of an unchanged folder share its message list.
- delete_mailbox() refuses a folder that has inferior folders (MailboxHasChildren) and INBOX.
- rename_mailbox() renames inferiors too, creates missing parents of the new name, keeps
  UIDVALIDITY and UIDs, and moves subscriptions; renaming INBOX moves its messages into the new
  folder (new UIDs there) and leaves INBOX empty, its inferiors untouched (RFC 3501 §6.3.5).
- A new user's first access creates INBOX and the SPECIAL-USE folders (RFC 6154).
- Usage (the quota's octets and messages, Account.usage): each folder's totals are kept in the
  index with its rows (index.py msg_bytes/msg_count, moved in the same transaction by append, copy,
  move, expunge and every sync) and summed per account (one row per folder). deliver() does not
  touch the index, so each account also holds the copies delivered since their folder was last
  synced (`_pending`, key -> size, in memory): registered before the file appears in new/ and
  dropped by the folder's next sync, which indexes it. The first usage() of an account in this
  process opens and syncs every folder once (a folder missing from the index is rebuilt from disk,
  so deleting the index recomputes the usage); after that no delivery scans anything.
  With several processes each counts its own pending copies: one that another process's sync
  indexed stops counting here when this process next takes the account's lock (below), and the
  copies another process delivered count here only once a sync (in any process) indexes them, so
  usage() may lag behind other processes' deliveries until then.

Several processes over one mail root (DESIGN.md "Beyond one machine": worker processes, each with
its own Store): every step that reads or writes an account's index or folder state runs, in its
worker thread and besides the account's asyncio.Lock, under a threading.Lock of the account (so a
cancelled call's thread still excludes the next one) and the index's own inter-process lock
(IndexBackend.lock: with SQLite an exclusive flock(2) on `<user root>/mailhaven-lock`, with
PostgreSQL an advisory lock of the user, index_pg.py), taken for several accounts in the same order
as `_locked()` (by user). Under that lock the cached state is checked first: the index's
`data_version()` (SQLite's `PRAGMA data_version`, PostgreSQL's per-user change counter) tells
whether another process committed to the index since this one last looked (one cheap query; it
never changes for our own writes, so a single process never reloads anything). When it changed,
every cached folder whose row another process changed reads the rows changed since (in place,
Folder.catch_up), a folder deleted or replaced there is marked deleted, a renamed one follows its
new name; the disk is then checked as every snapshot does (mtimes of new/ and cur/).
So UIDs and MODSEQs are never handed out twice and no flag change is lost. deliver() takes no lock:
it only adds files to new/, which a sync in any process indexes. Change events reach the other
processes through bus.py when the Store has a `bus_dir`, and those of other nodes through its
`peers` (bus_pg.py, PostgreSQL LISTEN/NOTIFY) when it has those instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Container, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from mailhaven.errors import (
    BadMailboxName,
    MailboxExists,
    MailboxNotFound,
    MailError,
    StorageFull,
    StoreError,
    store_failure,
)
from mailhaven.store import maildir, names, pending
from mailhaven.store.bus import Bus
from mailhaven.store.changes import (
    ChangeHub,
    Expunged,
    FlagsChanged,
    MailboxesChanged,
    MessagesAdded,
    Peers,
    user_key,
)
from mailhaven.store.folder import Changes, Folder
from mailhaven.store.fts import Fts, Term
from mailhaven.store.index import IndexBackend, IndexFactory, MailboxRow, SqliteIndexes
from mailhaven.store.model import (
    MailboxHasChildren,
    MailboxInfo,
    MessageInfo,
    MessageNotFound,
    Snapshot,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
DELIVERY_THREADS = 32
FlagMode = Literal["add", "remove", "set"]
READ_CHUNK = 64 * 1024  # first read of a message file (most messages fit)
READ_CHUNK_LARGE = 1024 * 1024  # further reads of a large one


def init_user_root(root: Path, *, fsync: bool) -> bool:
    """Create INBOX and the default folders on a new user's first access; True if it was new."""
    if (root / "cur").is_dir():
        return False
    maildir.ensure_folder(root, subfolder=False, fsync=fsync)
    for name in names.DEFAULT_FOLDERS:
        maildir.ensure_folder(root / names.dirname(name), subfolder=True, fsync=fsync)
    return True


def _ensure_with_parents(root: Path, name: str, *, fsync: bool) -> None:
    for n in [*names.ancestors(name), name]:
        maildir.ensure_folder(root / names.dirname(n), subfolder=True, fsync=fsync)


class Store:
    """All users' mail under `root` (`<root>/<domain>/<localpart>/`, Maildir++).

    `bus_dir`: set when other processes run a Store over the same root: change events are sent to
    them and theirs received (bus.py), from start() to close(). None: this process alone.
    `peers`: instead of `bus_dir`, when stores on other nodes share the root (bus_pg.PgBus,
    PostgreSQL LISTEN/NOTIFY); started by start(), closed by close().
    `indexes`: makes each user's index (index.IndexFactory; default SQLite files, index_pg.PgIndexes
    with PostgreSQL), opened by start() and closed by close()."""

    def __init__(self, root: Path, *, hostname: str, fsync: bool = True, bus_dir: Path | None = None,
                 peers: Peers | None = None, indexes: IndexFactory | None = None) -> None:
        if bus_dir is not None and peers is not None:
            raise ValueError("a Store relays its changes through bus_dir or peers, not both")
        self.root = Path(root)
        self.hostname = hostname
        self.fsync = fsync
        self.changes = ChangeHub()
        self.bus_dir = None if bus_dir is None else Path(bus_dir)
        self.bus: Bus | None = None
        self.peers = peers
        self._peers_started = False
        self.indexes: IndexFactory = SqliteIndexes() if indexes is None else indexes
        self._accounts: dict[str, Account] = {}
        # Deliveries wait on fsync, not CPU: their own pool lets many fsyncs be in flight (the file
        # system commits them together) without starving the default pool used by everything else.
        self._delivery_pool = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="store-deliver")
        # Concurrent deliveries into one new/ share its fsync (group commit, maildir.DirSync).
        self.dir_sync = maildir.DirSync()
        # Folders a delivery has found complete (cur/ new/ tmp/): later deliveries skip the stat()
        # calls. A folder removed behind our back makes the delivery fail with ENOENT; it is then
        # forgotten and the delivery tried once more, creating it again as before.
        self._ready: set[Path] = set()
        self.fts = Fts()  # the users' full-text indexes (SEARCH BODY/TEXT accelerator)

    async def start(self) -> int:
        """Create the root, remove stale tmp/ files (ours from a killed writer; anyone's older than
        36 h), join the change bus if there is one. Returns how many files were removed."""
        removed = await asyncio.to_thread(self._clean_all_tmp)
        await self.indexes.open()
        if self.bus_dir is not None and self.bus is None:
            self.bus = Bus(self.bus_dir, self.changes)
            self.bus.start()
        if self.peers is not None and not self._peers_started:
            await self.peers.start(self.changes)
            self._peers_started = True
        return removed

    def _clean_all_tmp(self) -> int:
        os.makedirs(self.root, 0o700, exist_ok=True)
        now = time.time()
        removed = 0
        for domain in _subdirs(self.root):
            for user in _subdirs(domain):
                removed += maildir.clean_tmp(user / "tmp", self.hostname, now)
                for entry in _subdirs(user):
                    if entry.name.startswith("."):
                        removed += maildir.clean_tmp(entry / "tmp", self.hostname, now)
        if removed:
            log.info("removed %d stale tmp files", removed)
        return removed

    async def close(self) -> None:
        if self.bus is not None:
            self.bus.close()
            self.bus = None
        if self.peers is not None and self._peers_started:
            self._peers_started = False
            await self.peers.close()
        for account in list(self._accounts.values()):
            await account.close()
        self._accounts.clear()
        await self.indexes.close()
        await asyncio.to_thread(self.fts.close)
        await asyncio.to_thread(self._delivery_pool.shutdown, wait=True)
        self._delivery_pool = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="store-deliver")

    def account(self, user: str) -> Account:
        """The account of a canonical user address. Raises BadMailboxName for an unsafe address."""
        domain, localpart = names.split_user(user)
        key = f"{localpart}@{domain}"
        acc = self._accounts.get(key)
        if acc is None:
            acc = self._accounts[key] = Account(self, key, self.root / domain / localpart)
        return acc

    async def deliver(self, targets: Sequence[tuple[str, str]], data: bytes, *,
                      heads: Mapping[str, bytes] | None = None,
                      flags: Mapping[tuple[str, str], Sequence[str]] | None = None,
                      bodies: Mapping[str, bytes] | None = None) -> None:
        """Durably deliver one message to every (user, folder) target, all or nothing.

        `heads[user]` (CRLF-terminated header fields, e.g. Return-Path and Delivered-To) is written
        above `data` in that user's copies: users with different heads get files of their own, the
        folders of one user share one file (hard links). Returns only after every file and new/
        directory are fsynced. Raises StoreError (nothing visible anywhere), or BadMailboxName for
        an invalid user or folder name (nothing written). `flags[(user, folder)]`: the IMAP flags
        the copy starts with (Sieve imap4flags, RFC 5232): the five system flags go into the file
        name, keywords into a pending record that the folder's next sync indexes (pending.py; at
        most pending.MAX_KEYWORDS; invalid keywords, \\Recent and unknown \\flags are ignored).
        `bodies[user]`: what that user's copies hold below their head instead of `data` (Sieve
        editheader, RFC 5293: a copy with its own header section).
        """
        resolved: dict[tuple[str, str], tuple[Account, str]] = {}
        infos: dict[tuple[str, str], str] = {}
        words: dict[tuple[str, str], tuple[str, ...]] = {}
        for user, folder in targets:
            acc = self.account(user)
            name = names.canonical(folder)
            resolved.setdefault((acc.user, name), (acc, name))
            if flags and flags.get((user, folder)):
                given = flags[(user, folder)]
                infos[(acc.user, name)] = maildir.build_info(
                    f for f in (maildir.canonical_flag(x) for x in given) if f)
                kws, _ = pending.for_delivery(given)
                if kws:
                    words[(acc.user, name)] = kws
        if not resolved:
            raise StoreError("no delivery target")
        items = list(resolved.values())
        # One group per distinct head (the users' keys canonicalised like the targets').
        by_user = {self.account(u).user: h for u, h in (heads or {}).items()}
        own = {self.account(u).user: b for u, b in (bodies or {}).items()}
        groups: dict[tuple[bytes, bytes | None], list[tuple[Account, str]]] = {}
        for acc, name in items:
            groups.setdefault((by_user.get(acc.user, b""), own.get(acc.user)), []).append((acc, name))
        loop = asyncio.get_running_loop()
        written = await loop.run_in_executor(self._delivery_pool, self._deliver_sync, list(groups.items()), data,
                                             infos, words)
        for acc, name in items:
            self.changes.publish(MessagesAdded(acc.user, name, ()))
        for root, key, copy in written:  # after the fsyncs, off the delivery path (fts.py)
            self.fts.later(root, key, copy)

    def _deliver_sync(self, groups: list[tuple[tuple[bytes, bytes | None], list[tuple[Account, str]]]],
                      shared: bytes, infos: Mapping[tuple[str, str], str] | None = None,
                      words: Mapping[tuple[str, str], tuple[str, ...]] | None = None
                      ) -> list[tuple[Path, str, bytes]]:
        """Returns (user root, key, bytes) of each distinct file written, for the full-text index."""
        shared = maildir.to_crlf(shared)
        written: list[tuple[Path, str, bytes]] = []
        placed: list[Path] = []  # files of the groups already delivered: removed if a later one fails
        counted: list[tuple[Account, str, str]] = []  # and their copies in the usage: uncounted
        records: list[Path] = []  # and their keyword records (pending.py)
        try:
            for (head, body), items in groups:
                data = shared if body is None else maildir.to_crlf(body)
                paths = self._folders_for(items, trust_known=True)
                letters = [(infos or {}).get((acc.user, n), "") for acc, n in items]
                kws = [(words or {}).get((acc.user, n), ()) for acc, n in items]
                try:
                    name = self._deliver_counted(items, paths, head, data, letters, kws, records)
                except StoreError as e:
                    if not isinstance(e.__cause__, FileNotFoundError):
                        raise
                    # A folder vanished (deleted or renamed by IMAP or by hand): create it, try once more.
                    self._ready.difference_update(paths)
                    paths = self._folders_for(items, trust_known=False)
                    name = self._deliver_counted(items, paths, head, data, letters, kws, records)
                placed.extend(maildir.delivered_path(p, name, i) for p, i in zip(paths, letters, strict=True))
                counted.extend((acc, folder, name) for acc, folder in items)
                copy = head + data
                written.extend((root, name, copy) for root in dict.fromkeys(acc.path for acc, _ in items))
        except BaseException:
            # All or nothing: the copies already placed go too (a crash right here may leave them:
            # delivered twice on the sender's retry, never lost).
            for p in placed:
                with contextlib.suppress(OSError):
                    os.unlink(p)
            pending.discard(records)
            for acc, folder, name in counted:
                acc._unpend(folder, name)
            raise
        return written

    def _deliver_counted(self, items: list[tuple[Account, str]], paths: list[Path], head: bytes,
                         data: bytes, infos: Sequence[str] = (), words: Sequence[tuple[str, ...]] = (),
                         records: list[Path] | None = None) -> str:
        """maildir.deliver_files, with each copy counted in its account's usage from before its
        file is visible in new/ (so a sync that indexes it always finds it pending), and the
        keywords `words[i]` of the copy in `paths[i]` recorded durably before that (pending.py;
        the records written are added to `records`, removed here if this delivery fails)."""
        base = maildir.unique_base(self.hostname)
        size = len(head) + len(data)
        key = maildir.make_key(base, size, size)
        for acc, name in items:
            acc._pend(name, key, size)
        mine: list[Path] = []
        try:
            for path, kws in zip(paths, words, strict=False):
                if kws:
                    try:
                        mine.append(pending.write(path, key, kws, fsync=self.fsync, dir_sync=self.dir_sync))
                    except OSError as e:
                        raise store_failure(e, "the message could not be stored") from e
            placed = maildir.deliver_files(paths, base, data, fsync=self.fsync, dir_sync=self.dir_sync, head=head,
                                           infos=infos)
        except BaseException:
            pending.discard(mine)
            for acc, name in items:
                acc._unpend(name, key)
            raise
        if records is not None:
            records.extend(mine)
        for acc, name in items:
            acc._placed(name, key)
        return placed

    def _folders_for(self, items: list[tuple[Account, str]], *, trust_known: bool) -> list[Path]:
        """The folder directories of the targets, each created (durably) if it is not there."""
        paths: list[Path] = []
        try:
            for acc, name in items:
                path = names.folder_path(acc.path, name)
                if not (trust_known and path in self._ready):
                    init_user_root(acc.path, fsync=self.fsync)
                    if name == names.INBOX:
                        maildir.ensure_folder(acc.path, subfolder=False, fsync=self.fsync)
                    else:
                        _ensure_with_parents(acc.path, name, fsync=self.fsync)
                    self._ready.add(path)
                paths.append(path)
        except OSError as e:
            raise store_failure(e, "the message could not be stored") from e
        return paths


def _subdirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


@contextlib.asynccontextmanager
async def _locked(*accounts: Account) -> AsyncIterator[None]:
    """Hold the locks of several accounts, always in the same order (no deadlock)."""
    async with contextlib.AsyncExitStack() as stack:
        for a in _in_order(accounts):
            await stack.enter_async_context(a.lock)
        yield


def _in_order(accounts: Sequence[Account]) -> list[Account]:
    """Each account once, by user: the one order every lock of several accounts is taken in."""
    return sorted({id(a): a for a in accounts}.values(), key=lambda a: a.user)


def _exclusive(accounts: Sequence[Account], fn: Callable[..., T], *args: object) -> T:
    """In a worker thread, with the accounts' asyncio locks held: take each account's thread lock
    and inter-process lock (in `_in_order` order), bring its cached state up to date with what
    other processes wrote, run `fn(*args)`, release."""
    held: list[Account] = []
    try:
        for a in _in_order(accounts):
            a._acquire()
            held.append(a)
            a._freshen()
        return fn(*args)
    finally:
        for a in reversed(held):
            a._release()


class Account:
    """One user's folders. Get it from Store.account(user)."""

    def __init__(self, store: Store, user: str, path: Path) -> None:
        self.store = store
        self.user = user
        self.path = path
        self.lock = asyncio.Lock()
        self._index: IndexBackend | None = None
        self._folders: dict[str, Folder] = {}
        # Usage (see the module doc): copies delivered and not yet indexed, folder -> key -> size
        # (written by delivery threads, so under its own lock), and whether every folder was synced.
        self._pending: dict[str, dict[str, int]] = {}
        self._placing: set[tuple[str, str]] = set()  # (folder, key) of pending copies not yet in new/
        self._pending_lock = threading.Lock()
        self._usage_known = False
        # Against other threads and processes (module doc): held around every blocking step.
        self._thread_lock = threading.Lock()
        self._data_version: int | None = None  # the index's data_version when last checked
        # Mailbox.snapshot(), per folder: the read callers may still join (it has not begun), the
        # read running and the last one done, each with when it began (the change hub's seq, the
        # monotonic clock)
        self._next_snapshot: dict[Folder, asyncio.Future[Snapshot]] = {}
        self._running_snapshot: dict[Folder, tuple[int, float, asyncio.Future[Snapshot]]] = {}
        self._last_snapshot: dict[Folder, tuple[int, float, Snapshot]] = {}

    # -- usage (quota) ----------------------------------------------------------------------------

    def _pend(self, folder: str, key: str, size: int) -> None:
        with self._pending_lock:
            self._pending.setdefault(folder, {})[key] = size
            self._placing.add((folder, key))

    def _placed(self, folder: str, key: str) -> None:
        with self._pending_lock:
            self._placing.discard((folder, key))

    def _unpend(self, folder: str, key: str) -> None:
        with self._pending_lock:
            self._pending.get(folder, {}).pop(key, None)
            self._placing.discard((folder, key))

    def _settle(self, f: Folder) -> None:
        """After a sync of `f`: its pending copies now indexed, or placed and gone from new/
        (removed by another program), stop counting; one still being written stays."""
        self._settle_keys(f.name, f.path, f.by_key)

    def _settle_keys(self, name: str, path: Path, indexed: Container[str]) -> None:
        with self._pending_lock:
            keys = self._pending.get(name)
            if not keys:
                return
            for key in [k for k in keys if k in indexed or (
                    (name, k) not in self._placing and not os.path.exists(f"{path}/new/{k}"))]:
                del keys[key]

    async def usage(self) -> tuple[int, int]:
        """(octets, messages) of every folder of this account, delivered copies not yet indexed
        included. The first call in this process syncs every folder (the rebuild); later calls read
        one index row per folder."""
        return await self._call(self._usage_sync)

    def _usage_sync(self) -> tuple[int, int]:
        if not self._usage_known:
            for name in sorted(self._names_on_disk()):
                try:
                    self._sync(self._folder(name), reading=True)
                except MailboxNotFound:
                    continue
            self._usage_known = True
        octets, count = self._ready().usage()
        with self._pending_lock:
            for keys in self._pending.values():
                octets += sum(keys.values())
                count += len(keys)
        return octets, count

    async def folder_usage(self) -> dict[str, tuple[int, int]]:
        """Each folder's indexed (octets, messages), after usage() made the index complete."""
        await self.usage()
        return await self._call(lambda: self._ready().folder_usage())

    async def get_state(self, key: str) -> str | None:
        """A small per-account value kept in the index (e.g. the quota warning's state)."""
        return await self._call(lambda: self._ready().get_meta(key))

    async def set_state(self, key: str, value: str | None) -> None:
        await self._call(self._set_state_sync, key, value)

    def _set_state_sync(self, key: str, value: str | None) -> None:
        self._ready().set_meta(key, value)

    async def claim_recent(self, uidvalidity: int, uids: Sequence[int]) -> list[int]:
        """RFC 3501 §2.3.2 across processes and nodes: of `uids`, those no session of any process
        was told about yet as \\Recent; they are this caller's from now on (the mark, per mailbox
        UIDVALIDITY, is kept in the index, moved under the account lock)."""
        return await self._call(self._claim_recent_sync, uidvalidity, list(uids))

    def _claim_recent_sync(self, uidvalidity: int, uids: list[int]) -> list[int]:
        idx = self._ready()
        key = f"recent:{uidvalidity}"
        mark = int(idx.get_meta(key) or 0)
        mine = [u for u in uids if u > mark]
        if mine:
            idx.set_meta(key, str(max(mine)))
        return mine

    async def recent_mark(self, uidvalidity: int) -> int:
        """The highest UID some session was told about as \\Recent (EXAMINE and STATUS count above it)."""
        value = await self.get_state(f"recent:{uidvalidity}")
        return int(value) if value and value.isdigit() else 0

    # -- plumbing -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` in a worker thread while holding the account lock."""
        async with self.lock:
            return await asyncio.to_thread(self._ready_then, fn, *args)

    def _ready_then(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` with the index open, under the account's thread and inter-process locks."""
        return _exclusive((self,), fn, *args)

    def _acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            idx = self._ready()
            try:
                idx.lock()
            except OSError as e:
                raise store_failure(e, "mail folder unavailable") from e
        except BaseException:
            self._thread_lock.release()
            raise

    def _release(self) -> None:
        try:
            if self._index is not None:
                self._index.unlock()
        finally:
            self._thread_lock.release()

    def _freshen(self) -> None:
        """With the locks held: if another process committed to the index since this one last
        looked, bring the cached folders (and the pending usage) up to date with it."""
        idx = self._ready()
        version = idx.data_version()
        if version == self._data_version:
            return
        if self._data_version is not None:
            self._reload_changed(idx)
        self._data_version = version

    def _reload_changed(self, idx: IndexBackend) -> None:
        rows: dict[int, MailboxRow] = {r.id: r for r in idx.mailbox_rows()}
        kept: dict[str, Folder] = {}
        for f in self._folders.values():
            row = rows.get(f.id)
            if f.deleted or row is None or row.uidvalidity != f.uidvalidity:
                f.deleted = True  # deleted, or deleted and made again, by another process
                f.drop_all()
                continue
            if row.name != f.name:  # renamed by another process: follow (as _rename_sync does)
                with self._pending_lock:
                    if f.name in self._pending:
                        self._pending[row.name] = self._pending.pop(f.name)
                f.name, f.path = row.name, names.folder_path(self.path, row.name)
            seen = idx.last_seen(row.id)
            if seen is None:
                f.reload()
            elif seen != (row.uidnext, row.highestmodseq):
                f.catch_up(seen[1])
            kept[f.name] = f
        self._folders = kept
        with self._pending_lock:
            waiting = {name: list(keys) for name, keys in self._pending.items() if keys}
        for name, keys in waiting.items():  # our deliveries another process indexed (or removed)
            open_folder = kept.get(name)
            if open_folder is not None:
                self._settle(open_folder)
            else:
                self._settle_keys(name, names.folder_path(self.path, name), idx.known_keys(name, keys))

    def _ready(self) -> IndexBackend:
        if self._index is None:
            try:
                init_user_root(self.path, fsync=self.store.fsync)
            except OSError as e:
                raise store_failure(e, "mail folder unavailable") from e
            self._index = self.store.indexes(self.user, self.path, durable=self.store.fsync)
        return self._index

    async def close(self) -> None:
        async with self.lock:
            await asyncio.to_thread(self._close_sync)
            self._last_snapshot.clear()

    def _close_sync(self) -> None:
        with self._thread_lock:
            if self._index is not None:
                self._index.close()
                self._index = None
            self._data_version = None
            self._folders.clear()

    def _publish(self, name: str, changes: Changes) -> None:
        hub = self.store.changes
        if changes.expunged:
            hub.publish(Expunged(self.user, name, tuple(changes.expunged)))
        if changes.added:
            hub.publish(MessagesAdded(self.user, name, tuple(changes.added)))
        if changes.flags:
            hub.publish(FlagsChanged(self.user, name, tuple(changes.flags)))

    def _folder(self, name: str) -> Folder:
        """The open Folder for a canonical name (blocking; lock held)."""
        f = self._folders.get(name)
        if f is not None and not f.deleted:
            return f
        path = names.folder_path(self.path, name)
        if name != names.INBOX and not path.is_dir():
            raise MailboxNotFound(f"no mailbox {name}")
        try:
            maildir.ensure_folder(path, subfolder=name != names.INBOX, fsync=self.store.fsync)
        except OSError as e:
            raise store_failure(e, "mail folder unavailable") from e
        f = Folder(name, path, self._ready(), fsync=self.store.fsync)
        f.open()
        self._folders[name] = f
        return f

    def _sync(self, f: Folder, *, force: bool = False, reading: bool = False) -> Changes:
        """Reconcile `f` with its directories. `reading`: for a read (open, snapshot), a full disk
        that keeps new findings out of the index shows the folder as last recorded, unchanged (its
        UIDs and MODSEQs are all durable), instead of failing: reading needs no space."""
        try:
            changes = f.sync(force=force)
            self._settle(f)
            return changes
        except StorageFull:
            if not reading:
                raise
            log.warning("store: %s %s: disk full, showing the folder as last indexed", self.user, f.name)
            return Changes()
        except FileNotFoundError:
            f.deleted = True
            f.drop_all()
            self._folders.pop(f.name, None)
            raise MailboxNotFound(f"no mailbox {f.name}") from None

    def _names_on_disk(self) -> set[str]:
        found = {names.INBOX}
        for entry in os.scandir(self.path):
            if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                n = names.name_from_dirname(entry.name)
                if n is not None:
                    found.add(n)
        return found

    # -- subscriptions (kept by the index: SQLite's is Dovecot's `subscriptions` file) ----------

    def _read_subscriptions(self) -> list[str]:
        return self._ready().subscriptions()

    def _write_subscriptions(self, subs: list[str]) -> None:
        self._ready().set_subscriptions(list(dict.fromkeys(subs)))

    # -- public API -----------------------------------------------------------------------------

    async def list_mailboxes(self) -> list[MailboxInfo]:
        """All folders, INBOX first then by name (RFC 3501 §6.3.8 LIST; RFC 6154 SPECIAL-USE)."""
        return await self._call(self._list_sync)

    def _list_sync(self) -> list[MailboxInfo]:
        found = self._names_on_disk()
        uses = self._ready().special_uses()
        subs = set(self._read_subscriptions())
        ordered = [names.INBOX] + sorted(n for n in found if n != names.INBOX)
        prefixes = {a for n in found for a in names.ancestors(n)}
        return [MailboxInfo(n, uses.get(n, names.default_special_use(n)), n in prefixes, n in subs)
                for n in ordered]

    async def create_mailbox(self, name: str, special_use: str | None = None) -> None:
        """Create a folder and any missing parents (RFC 3501 §6.3.3; RFC 6154 §3 CREATE USE)."""
        canon = names.canonical(name)
        if special_use is not None and special_use not in names.SPECIAL_USES:
            raise MailError("unsupported special-use attribute", code=503, enhanced="5.5.4")
        await self._call(self._create_sync, canon, special_use)
        self.store.changes.publish(MailboxesChanged(self.user))

    def _create_sync(self, name: str, special_use: str | None) -> None:
        if name == names.INBOX or name in self._names_on_disk():
            raise MailboxExists(f"mailbox {name} already exists")
        try:
            _ensure_with_parents(self.path, name, fsync=self.store.fsync)
        except OSError as e:
            raise store_failure(e, "mailbox could not be created") from e
        idx = self._ready()
        idx.delete(name)  # stale index rows of an earlier folder with this name
        if special_use is not None:
            idx.set_special_use(name, special_use)

    async def delete_mailbox(self, name: str) -> None:
        """Delete a folder and its messages (RFC 3501 §6.3.4). INBOX and folders with inferiors are
        refused; subscriptions are kept (RFC 3501 §6.3.6)."""
        canon = names.canonical(name)
        if canon == names.INBOX:
            raise MailError("INBOX cannot be deleted", code=550, enhanced="5.2.0")
        await self._call(self._delete_sync, canon)
        self.store.changes.publish(MailboxesChanged(self.user))

    def _delete_sync(self, name: str) -> None:
        found = self._names_on_disk()
        if name not in found:
            raise MailboxNotFound(f"no mailbox {name}")
        if any(names.is_inferior(n, name) for n in found):
            raise MailboxHasChildren(f"mailbox {name} has inferior mailboxes; delete them first")
        path = names.folder_path(self.path, name)
        trash = self.path / f"..mailhaven-deleted.{maildir.unique_base(self.store.hostname)}"
        try:
            os.rename(path, trash)  # disappears atomically, then is removed at leisure
        except OSError as e:
            raise StoreError("mailbox could not be deleted") from e
        f = self._folders.pop(name, None)
        if f is not None:
            f.deleted = True
            f.drop_all()
        self._ready().delete(name)
        with self._pending_lock:
            self._pending.pop(name, None)
        shutil.rmtree(trash, ignore_errors=True)

    async def rename_mailbox(self, old: str, new: str) -> None:
        """Rename a folder with its inferiors (RFC 3501 §6.3.5); INBOX: see module docstring."""
        src, dst = names.canonical(old), names.canonical(new)
        if dst == names.INBOX:
            raise MailboxExists("INBOX already exists")
        if src == dst or names.is_inferior(dst, src):
            raise BadMailboxName("cannot rename a mailbox into itself")
        if src == names.INBOX:
            async with self.lock:
                moved = await asyncio.to_thread(self._ready_then, self._rename_inbox_sync, dst)
            self._publish(names.INBOX, moved[0])
            self._publish(dst, moved[1])
        else:
            await self._call(self._rename_sync, src, dst)
        self.store.changes.publish(MailboxesChanged(self.user))

    def _rename_inbox_sync(self, dst: str) -> tuple[Changes, Changes]:
        self._create_sync(dst, None)
        return self._inbox_move_sync(self._folder(names.INBOX), dst)

    def _inbox_move_sync(self, inbox: Folder, dst: str) -> tuple[Changes, Changes]:
        self._sync(inbox, force=True)
        dest = self._folder(dst)
        _, src_changes, dst_changes = inbox.transfer(list(inbox.by_uid), dest, move=True,
                                                     host=self.store.hostname)
        return src_changes, dst_changes

    def _rename_sync(self, src: str, dst: str) -> None:
        found = self._names_on_disk()
        if src not in found:
            raise MailboxNotFound(f"no mailbox {src}")
        moving = sorted(n for n in found if n == src or names.is_inferior(n, src))
        targets = [dst + n[len(src):] for n in moving]
        for t in targets:
            names.canonical(t)  # the new names must be valid too (length)
            if t in found:
                raise MailboxExists(f"mailbox {t} already exists")
        done: list[tuple[Path, Path]] = []
        try:
            for a in names.ancestors(dst):
                if a not in found:
                    maildir.ensure_folder(self.path / names.dirname(a), subfolder=True,
                                          fsync=self.store.fsync)
            for n, t in zip(moving, targets, strict=True):
                pa, pb = self.path / names.dirname(n), self.path / names.dirname(t)
                os.rename(pa, pb)
                done.append((pa, pb))
        except OSError as e:
            for pa, pb in reversed(done):
                with contextlib.suppress(OSError):
                    os.rename(pb, pa)
            raise store_failure(e, "mailbox could not be renamed") from e
        self._ready().rename(src, dst)
        for n, t in zip(moving, targets, strict=True):
            f = self._folders.pop(n, None)
            if f is not None:
                f.name, f.path = t, self.path / names.dirname(t)
                self._folders[t] = f
            with self._pending_lock:
                if n in self._pending:
                    self._pending[t] = self._pending.pop(n)
        subs = self._read_subscriptions()
        if any(s == src or names.is_inferior(s, src) for s in subs):
            self._write_subscriptions([dst + s[len(src):] if s == src or names.is_inferior(s, src) else s
                                       for s in subs])

    async def subscribe(self, name: str) -> None:
        """Add to the subscription list (RFC 3501 §6.3.6); the mailbox need not exist."""
        canon = names.canonical(name)
        await self._call(self._set_subscribed, canon, True)
        self.store.changes.publish(MailboxesChanged(self.user))

    async def unsubscribe(self, name: str) -> None:
        """Remove from the subscription list (RFC 3501 §6.3.7)."""
        canon = names.canonical(name)
        await self._call(self._set_subscribed, canon, False)
        self.store.changes.publish(MailboxesChanged(self.user))

    def _set_subscribed(self, name: str, on: bool) -> None:
        subs = self._read_subscriptions()
        if on and name not in subs:
            self._write_subscriptions([*subs, name])
        elif not on and name in subs:
            self._write_subscriptions([s for s in subs if s != name])

    async def subscriptions(self) -> list[str]:
        """Names in the subscription list (existing or not), in file order (RFC 3501 §6.3.9 LSUB)."""
        return await self._call(self._read_subscriptions)

    async def mailbox(self, name: str) -> Mailbox:
        """Open a folder. Raises MailboxNotFound, BadMailboxName."""
        canon = names.canonical(name)
        async with self.lock:
            folder, changes = await asyncio.to_thread(self._ready_then, self._open_sync, canon)
        self._publish(canon, changes)
        return Mailbox(self, folder)

    def _open_sync(self, name: str) -> tuple[Folder, Changes]:
        f = self._folder(name)
        return f, self._sync(f, reading=True)


class Mailbox:
    """One open folder of one account. Cheap handle; many can share the folder state."""

    def __init__(self, account: Account, folder: Folder) -> None:
        self.account = account
        self._folder = folder

    @property
    def name(self) -> str:
        return self._folder.name

    @property
    def uidvalidity(self) -> int:
        return self._folder.uidvalidity

    def _live(self) -> Folder:
        if self._folder.deleted:
            raise MailboxNotFound(f"no mailbox {self._folder.name}")
        return self._folder

    async def _run(self, fn: Callable[..., tuple[T, Changes]], *args: object) -> T:
        acc = self.account
        async with acc.lock:
            f = self._live()
            out: tuple[T, Changes] = await asyncio.to_thread(acc._ready_then, self._live_then, fn, *args)
        result, changes = out
        acc._publish(f.name, changes)
        return result

    def _live_then(self, fn: Callable[..., T], *args: object) -> T:
        self._live()  # again, now that the state is fresh: another process may have deleted it
        return fn(*args)

    async def snapshot(self, *, after: int | None = None, after_time: float = 0.0) -> Snapshot:
        """The folder now, including changes other programs made on disk (new, removed, renamed).

        Callers at the same time share one read (10,000 IDLE sessions woken by one delivery make one
        or two reads, not 10,000 thread hops in a row under the account lock): a caller joins the
        folder's next read if it has not begun yet (it begins after the call, so it sees everything
        done before it), else it starts that next read. A read that fails fails for every caller
        that joined it; one whose starter was cancelled before it began is started again.
        `after=n`: the caller needs only the changes of the change hub's events up to n
        (changes.py, Sequence) and what other programs did before `after_time` (time.monotonic()),
        so any read that began once event n was published and not before after_time will do: the
        folder's last read, or the one running, if it began late enough."""
        acc = self.account
        while True:
            f = self._folder
            shared = acc._next_snapshot.get(f)
            if after is not None and not f.deleted:
                done = acc._last_snapshot.get(f)
                if done is not None and done[0] >= after and done[1] >= after_time:
                    return done[2]
                running = acc._running_snapshot.get(f)
                if running is not None and running[0] >= after and running[1] >= after_time:
                    shared = running[2]
            if shared is None:
                return await self._lead_snapshot(f)
            await asyncio.wait((shared,))
            if not shared.cancelled():
                return shared.result()

    async def _lead_snapshot(self, f: Folder) -> Snapshot:
        acc = self.account
        waiting = acc._next_snapshot
        shared: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        waiting[f] = shared
        began, began_at = -1, 0.0
        try:
            async with acc.lock:
                if waiting.get(f) is shared:  # it begins: later callers start the next one
                    del waiting[f]
                began, began_at = acc.store.changes.seq, time.monotonic()
                acc._running_snapshot[f] = (began, began_at, shared)
                self._live()
                out: tuple[Snapshot, Changes] = await asyncio.to_thread(
                    acc._ready_then, self._live_then, self._snapshot_sync)
        except asyncio.CancelledError:
            self._ended(f, shared)
            shared.cancel()  # the joiners start another
            raise
        except BaseException as e:
            self._ended(f, shared)
            shared.set_exception(e)
            shared.exception()  # retrieved: no "never retrieved" warning when nobody joined
            raise
        self._ended(f, shared)
        snap, changes = out
        last = acc._last_snapshot.get(f)
        if last is None or began >= last[0]:
            acc._last_snapshot[f] = (began, began_at, snap)
        acc._publish(f.name, changes)
        shared.set_result(snap)
        return snap

    def _ended(self, f: Folder, shared: asyncio.Future[Snapshot]) -> None:
        acc = self.account
        if acc._next_snapshot.get(f) is shared:
            del acc._next_snapshot[f]
        running = acc._running_snapshot.get(f)
        if running is not None and running[2] is shared:
            del acc._running_snapshot[f]

    def _snapshot_sync(self) -> tuple[Snapshot, Changes]:
        changes = self.account._sync(self._folder, reading=True)
        return self._folder.snapshot(), changes

    async def append(self, data: bytes, flags: frozenset[str] = frozenset(),
                     internaldate: float | None = None) -> int:
        """Store a message (RFC 3501 §6.3.11); durable before it returns the new UID."""
        uid, key, crlf = await self._run(self._append_sync, data, frozenset(flags), internaldate)
        self.account.store.fts.later(self.account.path, key, crlf)  # in the background (fts.py)
        return uid

    def _append_sync(self, data: bytes, flags: frozenset[str], internaldate: float | None
                     ) -> tuple[tuple[int, str, bytes], Changes]:
        crlf = maildir.to_crlf(data)
        uid = self._folder.append(crlf, flags, internaldate, self.account.store.hostname)
        return (uid, self._folder.by_uid[uid].key, crlf), Changes(added=[uid])

    async def append_many(self, items: Sequence[tuple[bytes, frozenset[str], float | None]]) -> list[int]:
        """Store several messages (data, flags, internal date) as one: all durable before it returns
        their UIDs, or none kept (IMAP MULTIAPPEND, RFC 3502)."""
        done = await self._run(self._append_many_sync, [(d, frozenset(f), t) for d, f, t in items])
        for _, key, crlf in done:
            self.account.store.fts.later(self.account.path, key, crlf)  # in the background (fts.py)
        return [uid for uid, _, _ in done]

    def _append_many_sync(self, items: list[tuple[bytes, frozenset[str], float | None]]
                          ) -> tuple[list[tuple[int, str, bytes]], Changes]:
        crlf = [(maildir.to_crlf(d), f, t) for d, f, t in items]
        uids = self._folder.append_many(crlf, self.account.store.hostname)
        by_uid = self._folder.by_uid
        return [(uid, by_uid[uid].key, data) for uid, (data, _, _) in zip(uids, crlf, strict=True)], Changes(added=uids)

    async def read(self, uid: int) -> bytes:
        """The message with CRLF line endings. Raises MessageNotFound if it is gone."""
        f = self._live()
        for attempt in (0, 1):
            path = f.lookup_path(uid)
            if path is None:
                raise MessageNotFound(f"no message with UID {uid}")
            try:
                return await asyncio.to_thread(_read_crlf, path)
            except FileNotFoundError:
                if attempt == 1:
                    break
                await self._run(self._rescan_sync)  # renamed or deleted by another program
        raise MessageNotFound(f"no message with UID {uid}")

    async def read_many(self, uids: Sequence[int]) -> list[bytes | None]:
        """The messages with CRLF line endings, in one worker-thread trip (None: expunged)."""
        f = self._live()
        paths = [f.lookup_path(uid) for uid in uids]
        datas = await asyncio.to_thread(_read_all_crlf, paths)
        for i, uid in enumerate(uids):
            if datas[i] is None and paths[i] is not None:  # renamed by another program meanwhile?
                try:
                    datas[i] = await self.read(uid)
                except MessageNotFound:
                    pass
        return datas

    def _rescan_sync(self) -> tuple[None, Changes]:
        return None, self.account._sync(self._folder, force=True, reading=True)

    async def store_flags(self, uids: Sequence[int], flags: frozenset[str] | set[str],
                          mode: FlagMode) -> list[MessageInfo]:
        """Change flags (RFC 3501 §6.4.6); returns the infos of every existing UID asked for."""
        if mode not in ("add", "remove", "set"):
            raise ValueError(f"bad mode {mode!r}")
        return await self._run(self._folder.store_flags, list(uids), frozenset(flags), mode)

    async def store_flags_unchanged_since(self, uids: Sequence[int], flags: frozenset[str] | set[str],
                                          mode: FlagMode, unchangedsince: int
                                          ) -> tuple[list[MessageInfo], list[int]]:
        """STORE (UNCHANGEDSINCE n) (RFC 7162 §3.1.3): messages whose MODSEQ is above `unchangedsince`
        are left alone, checked and changed under the account lock (no other writer in between).
        Returns (the infos of the other existing UIDs, the UIDs left alone)."""
        if mode not in ("add", "remove", "set"):
            raise ValueError(f"bad mode {mode!r}")
        return await self._run(self._store_unchanged_sync, list(uids), frozenset(flags), mode, unchangedsince)

    def _store_unchanged_sync(self, uids: list[int], flags: frozenset[str], mode: str, unchangedsince: int
                              ) -> tuple[tuple[list[MessageInfo], list[int]], Changes]:
        by_uid = self._folder.by_uid
        modified = [u for u in uids if (m := by_uid.get(u)) is not None and m.modseq > unchangedsince]
        left = set(modified)
        infos, changes = self._folder.store_flags([u for u in uids if u not in left], flags, mode)
        return (infos, modified), changes

    async def vanished_since(self, modseq: int) -> list[int] | None:
        """UIDs expunged after MODSEQ `modseq`, from the tombstones (RFC 7162 §3.2 VANISHED);
        None when the tombstones do not reach back that far (the client must then be told about
        every UID it knows that is gone)."""
        return await self._run(self._vanished_sync, modseq)

    def _vanished_sync(self, modseq: int) -> tuple[list[int] | None, Changes]:
        changes = self.account._sync(self._folder, reading=True)  # removals by other programs first
        return self._folder.vanished_since(modseq), changes

    async def expunge(self, uids: Sequence[int]) -> list[int]:
        """Remove these messages, whatever their flags; returns the UIDs removed (RFC 3501 §6.4.3)."""
        removed, keys = await self._run(self._expunge_sync, list(uids))
        if keys:
            self.account.store.fts.forget_later(self.account.path, keys)
        return removed

    def _expunge_sync(self, uids: list[int]) -> tuple[tuple[list[int], list[str]], Changes]:
        by_uid = self._folder.by_uid
        keys = {u: m.key for u in uids if (m := by_uid.get(u)) is not None}
        changes = self._folder.expunge(uids)
        wanted = set(uids)
        removed = [u for u in changes.expunged if u in wanted]
        return (removed, [keys[u] for u in removed if u in keys]), changes

    async def text_candidates(self, infos: Sequence[MessageInfo], terms: Sequence[Term]) -> set[str]:
        """The keys of the messages among `infos` that may hold every term (folded strings of at
        least fts.MIN_TERM characters; True: TEXT, else BODY), from the full-text index, after
        indexing those it lacks (fts.py). A superset of the matches; raises StoreError when the
        index cannot answer (then search them all)."""
        f = self._live()
        uids = {info.key: info.uid for info in infos}
        return await asyncio.to_thread(self.account.store.fts.candidates, self.account.path, uids, f.lookup_path,
                                       terms)

    async def copy(self, uids: Sequence[int], dest: Mailbox) -> list[tuple[int, int]]:
        """Copy (hard links) into `dest` keeping flags and internal date (RFC 3501 §6.4.7).
        `dest` may be this same folder (the copies get new UIDs)."""
        return await self._transfer(list(uids), dest, move=False)

    async def move(self, uids: Sequence[int], dest: Mailbox) -> list[tuple[int, int]]:
        """Move into `dest` (rename; RFC 6851): expunged here, new UIDs there. `dest` may be this
        same folder (as Dovecot: new UIDs, the old ones expunged)."""
        return await self._transfer(list(uids), dest, move=True)

    async def _transfer(self, uids: list[int], dest: Mailbox, *, move: bool) -> list[tuple[int, int]]:
        async with _locked(self.account, dest.account):
            src, dst = self._live(), dest._live()
            pairs, sc, dc = await asyncio.to_thread(
                _exclusive, (self.account, dest.account), _transfer_call, self, uids, dest, move,
                self.account.store.hostname)
        self.account._publish(src.name, sc)
        dest.account._publish(dst.name, dc)
        return pairs


def _transfer_call(src: Mailbox, uids: list[int], dst: Mailbox, move: bool, host: str
                   ) -> tuple[list[tuple[int, int]], Changes, Changes]:
    return src._live().transfer(uids, dst._live(), move=move, host=host)


def _read_all_crlf(paths: Sequence[str | None]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for path in paths:
        try:
            out.append(None if path is None else _read_crlf(path))
        except FileNotFoundError:
            out.append(None)
    return out


def _read_crlf(path: str) -> bytes:
    # os.open/os.read: half the cost of open() for the small files most messages are.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        chunks: list[bytes] = []
        size = READ_CHUNK
        while chunk := os.read(fd, size):
            chunks.append(chunk)
            size = READ_CHUNK_LARGE
    finally:
        os.close(fd)
    return maildir.to_crlf(chunks[0] if len(chunks) == 1 else b"".join(chunks))


__all__ = ["Account", "Mailbox", "Store", "user_key"]
