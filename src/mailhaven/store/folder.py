"""One folder's state: the Maildir files (truth) reconciled with the index (cache) and the uidlist.

Owns: loading a folder from the index or rebuilding it from disk, noticing changes made by other
programs, and the blocking parts of append / flags / expunge / copy / move for one folder.
Does not own: locking, threads and events (mailbox.py runs every method here in a worker thread
while holding the account lock, so a Folder is only ever touched by one thread at a time).

Change detection: the mtimes (ns) of new/ and cur/ are compared with the ones recorded at the last
full scan. Equal and "old" (more than MTIME_SETTLE seconds before that scan, so a change within the
same timestamp tick cannot hide) -> nothing to do, no per-message stat(). Otherwise both
directories are listed (new/ first, because other programs only move new/ -> cur/) and compared
with the known keys: unknown keys get the next UIDs (in delivery-time order), renamed files give
their new flags, missing keys are confirmed by a second listing and then expunged.
Our own writes do not update the recorded mtimes, so the next snapshot rescans once.

All or nothing: every change (a sync's findings, APPEND, a flag change, COPY/MOVE) is written to
the uidlist backup first, then to the index, and only then to the in-memory state; when a write
fails the files are put back (a flag change's rename undone, an appended or copied file removed)
and nothing is kept, so file names, index and memory agree. Removing files (EXPUNGE, the source
side of MOVE) is the one exception: once the files are gone the removal has happened, and an
index that cannot record it (a full disk) is brought up to date by the next write that works.
A sync that finds nothing but new directory mtimes writes them only when it can (they are a
hint): reading a folder needs no free space.

MODSEQ (RFC 7162): never reused while UIDVALIDITY stays. Before a MODSEQ above the last
reservation is handed out, a reservation (that MODSEQ + MODSEQ_RESERVE) is appended to the
uidlist; a rebuilt index starts above the largest one (uidlist.py).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailhaven.errors import StorageFull, StoreError, store_failure
from mailhaven.store import maildir, pending, uidlist
from mailhaven.store.index import IndexBackend, MessageRow
from mailhaven.store.model import MessageInfo, Snapshot

log = logging.getLogger(__name__)
MTIME_SETTLE = 2.0
MODSEQ_RESERVE = 1000  # MODSEQs reserved per uidlist write (a rebuild may skip up to this many)
_ORDER_RE = re.compile(r"^(\d+)\.(?:M(\d+))?")
_flagsets: dict[tuple[str, frozenset[str]], frozenset[str]] = {}


_names: dict[str, str] = {}


def shared_name(text: str) -> str:
    """One string object for each subdirectory ("cur", "new") and flag suffix (":2,S"): a folder
    holds them per message, and SQLite and os.listdir give each its own copy (about 100 bytes a
    message saved)."""
    got = _names.get(text)
    if got is None:
        got = text
        if len(_names) < 1000:
            _names[text] = text
    return got


def flagset(info: str, keywords: frozenset[str]) -> frozenset[str]:
    """Interned frozenset of system flags (from flag letters) plus keywords."""
    key = (info, keywords)
    fs = _flagsets.get(key)
    if fs is None:
        fs = maildir.info_flags(info) | keywords
        if len(_flagsets) < 10_000:
            _flagsets[key] = fs
    return fs


class Msg:
    __slots__ = ("uid", "key", "sub", "suffix", "keywords", "modseq", "internaldate", "size", "unterminated",
                 "_info")

    def __init__(self, uid: int, key: str, sub: str, suffix: str, keywords: frozenset[str], modseq: int,
                 internaldate: float, size: int, unterminated: bool) -> None:
        self.uid = uid
        self.key = key
        self.sub = shared_name(sub)
        self.suffix = shared_name(suffix)
        self.keywords = keywords
        self.modseq = modseq
        self.internaldate = internaldate
        self.size = size
        self.unterminated = unterminated  # maildir.unterminated() of the file, learnt at first sight
        self._info: MessageInfo | None = None

    @property
    def fname(self) -> str:
        return self.key + self.suffix

    @property
    def letters(self) -> str:
        return maildir.suffix_info(self.suffix)

    def info(self) -> MessageInfo:
        mi = self._info
        if mi is None:
            mi = self._info = MessageInfo(self.uid, flagset(self.letters, self.keywords), self.internaldate,
                                          self.size, self.modseq, self.key, self.unterminated)
        return mi

    def changed(self) -> None:
        self._info = None

    def row(self) -> MessageRow:
        return self.row_as(self.sub, self.suffix, self.modseq)

    def row_as(self, sub: str, suffix: str, modseq: int) -> MessageRow:
        """The index row of this message with another place, flags suffix and MODSEQ."""
        return (self.uid, self.key, sub, suffix, " ".join(sorted(self.keywords)), modseq,
                self.internaldate, self.size, int(self.unterminated))


@dataclass
class Changes:
    added: list[int] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    expunged: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.flags or self.expunged)


def _order(key: str) -> tuple[int, int, str]:
    m = _ORDER_RE.match(key)
    if not m:
        return (1 << 62, 0, key)
    return (int(m.group(1)), int(m.group(2) or 0), key)


def _listing(path: Path) -> dict[str, tuple[str, str]]:
    """key -> (sub, suffix) for every message file in new/ then cur/ (cur/ wins on duplicates)."""
    out: dict[str, tuple[str, str]] = {}
    base = str(path)
    for sub in ("new", "cur"):
        for fname in os.listdir(f"{base}/{sub}"):
            key, sep, rest = fname.partition(":")  # maildir.split_name, inlined: this loop is hot
            if key and key[0] != ".":
                out[key] = (sub, sep + rest) if sep else (sub, "")
    return out


def _dovecot_keywords(path: Path) -> dict[str, str]:
    """Letter -> keyword from Dovecot's `dovecot-keywords` ("<index> <name>" lines; index 0 = 'a')."""
    try:
        text = (path / "dovecot-keywords").read_text("utf-8", "replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        idx, _, name = line.partition(" ")
        if idx.isdigit() and int(idx) < 26 and name and not any(c.isspace() for c in name):
            out[chr(ord("a") + int(idx))] = name
    return out


def clean_keywords(words: frozenset[str] | set[str]) -> frozenset[str]:
    return frozenset(w for w in words if w and not w.startswith("\\") and not any(
        c.isspace() or ord(c) < 0x20 or c in "()*%\"]{\\" for c in w))


class Folder:
    def __init__(self, name: str, path: Path, index: IndexBackend, *, fsync: bool) -> None:
        self.name = name
        self.path = path
        self.index = index
        self.fsync = fsync
        self.deleted = False
        self.id = 0
        self.uidvalidity = 0
        self.uidnext = 1
        self.highestmodseq = 1
        self.new_mtime = 0
        self.cur_mtime = 0
        self.trusted = False
        self.by_uid: dict[int, Msg] = {}
        self.by_key: dict[str, Msg] = {}
        self._snap: list[MessageInfo] | None = None
        self._expunged_since_compact = 0
        self._reserved = 0  # MODSEQs up to this are reserved in the uidlist (0: none by this process)
        self._stored_mtimes = (0, 0)  # the directory mtimes the index holds
        self._unsaved: set[int] = set()  # UIDs removed from disk whose index rows are still to delete

    # -- loading -------------------------------------------------------------------------------

    def open(self) -> None:
        """Load from the index, or rebuild from disk when the index has no row for this folder."""
        row = self.index.load(self.name)
        if row is None:
            self._rebuild()
            return
        self.id, self.uidvalidity, self.uidnext = row.id, row.uidvalidity, row.uidnext
        self.highestmodseq, self.new_mtime, self.cur_mtime = row.highestmodseq, row.new_mtime, row.cur_mtime
        self._stored_mtimes = (row.new_mtime, row.cur_mtime)
        self.trusted = bool(row.new_mtime and row.cur_mtime)
        kw_cache: dict[str, frozenset[str]] = {}
        learnt: list[tuple[int, int]] = []
        by_uid: dict[int, Msg] = {}  # filled aside, then swapped in: a reload never shows a half
        by_key: dict[str, Msg] = {}
        for uid, key, sub, suffix, kw, modseq, idate, size, unterminated in self.index.messages(self.id):
            kws = kw_cache.get(kw)
            if kws is None:
                kws = kw_cache[kw] = frozenset(kw.split()) if kw else frozenset()
            if unterminated is None:  # a row of a version 1 index: learnt once, from the last octet
                unterminated = int(bool(maildir.file_unterminated(f"{self.path}/{sub}/{key}{suffix}")))
                learnt.append((unterminated, uid))
            m = Msg(uid, key, sub, suffix, kws, modseq, idate, size, bool(unterminated))
            by_uid[uid] = m
            by_key[key] = m
        self.by_uid, self.by_key, self._snap = by_uid, by_key, None
        if learnt:
            try:
                self.index.set_unterminated(self.id, learnt)
            except StorageFull:  # a cache: learnt again next time (reading needs no space)
                pass

    def reload(self) -> None:
        """Load again from the index, which another process changed (in place: every Mailbox
        handle shares this object; the caller checked that the row is still this folder's).
        UIDNEXT and HIGHESTMODSEQ never go back: one this process used without the index
        recording it (a failed APPEND, a removal a full disk kept out) is not handed out again."""
        uidnext, highest = self.uidnext, self.highestmodseq
        self.open()
        self.uidnext, self.highestmodseq = max(uidnext, self.uidnext), max(highest, self.highestmodseq)

    def catch_up(self, since: int) -> None:
        """What reload() does, reading only what changed: another process committed to the index
        after it held HIGHESTMODSEQ `since` (as this process last read or wrote it). Every row it
        added or changed carries a larger MODSEQ (it was up to date under the lock, so it counted
        from there); removed rows show in the folder's message count. A row that only moved from
        new/ to cur/ keeps its MODSEQ: the next scan of the directories finds it (as before).
        Messages are changed in place, like a sync does (readers without the lock see each message
        either before or after)."""
        row = self.index.load(self.name)
        if row is None or row.id != self.id:  # the caller checked; cannot happen under the lock
            self.reload()
            return
        changed, count = self.index.changed_since(self.id, since)
        top = next(reversed(self.by_uid), 0)
        disorder = False
        for uid, key, sub, suffix, kw, modseq, idate, size, unterminated in changed:
            kws = frozenset(kw.split()) if kw else frozenset()
            m = self.by_uid.get(uid)
            if m is not None and m.key == key:
                m.sub, m.suffix, m.keywords, m.modseq = sub, suffix, kws, modseq
                m.changed()
                continue
            if m is not None:
                self.by_key.pop(m.key, None)
            m = Msg(uid, key, sub, suffix, kws, modseq, idate, size, bool(unterminated))
            disorder = disorder or uid < top
            self.by_uid[uid] = m
            self.by_key[key] = m
        if len(self.by_uid) != count:  # some were removed (or were never known here)
            present = self.index.uids(self.id)
            if len(present) != count or not present <= self.by_uid.keys():
                self.reload()  # not what another process's writes can make: read everything
                return
            for uid in [u for u in self.by_uid if u not in present]:
                self.by_key.pop(self.by_uid.pop(uid).key, None)
        if disorder:  # snapshots list messages in UID order
            self.by_uid = dict(sorted(self.by_uid.items()))
        self.uidnext, self.highestmodseq = max(self.uidnext, row.uidnext), max(self.highestmodseq, row.highestmodseq)
        self.new_mtime, self.cur_mtime = row.new_mtime, row.cur_mtime
        self._stored_mtimes = (row.new_mtime, row.cur_mtime)
        self.trusted = bool(row.new_mtime and row.cur_mtime)
        self._snap = None

    def _rebuild(self) -> None:
        """Build the folder from its files, keeping UIDs from mailhaven-uidlist or dovecot-uidlist."""
        known = uidlist.read(self.path)
        dovecot = known is None
        if known is None:
            known = uidlist.read_dovecot(self.path)
        listing = _listing(self.path)
        keep: dict[str, int] = {}
        if known is not None:
            keep = {k: u for k, u in known.uids.items() if k in listing}
        # A UID given to two present files cannot be kept (lines of files that are gone do not
        # matter: a UID burnt by a failed APPEND may be in the file once more).
        if known is not None and len(set(keep.values())) == len(keep):
            self.uidvalidity = known.uidvalidity
            uidnext = known.effective_uidnext
            self.index.note_uidvalidity(self.uidvalidity)
            # RFC 7162: MODSEQ never goes back while UIDVALIDITY stays. Above the reservation, or,
            # for a file that has none (older, or Dovecot's), above any count of changes a client
            # may have seen: MODSEQ grows by one per change, far below a million per second.
            modseq = known.modseq + 1 if known.modseq else max(1, time.time_ns() // 1000)
        else:  # RFC 3501 §2.3.1.1: cannot keep the UIDs, so UIDVALIDITY must change
            keep = {}
            self.uidvalidity = self.index.next_uidvalidity()
            uidnext = 1
            modseq = 1
        letters = _dovecot_keywords(self.path) if dovecot else {}
        found = pending.take(self.path, listing)  # keywords given at delivery, not indexed yet
        fresh = sorted((k for k in listing if k not in keep), key=_order)
        pairs = sorted((u, k) for k, u in keep.items())
        for k in fresh:
            pairs.append((uidnext, k))
            uidnext += 1
        msgs: list[Msg] = []
        for uid, key in pairs:
            sub, suffix = listing[key]
            got = self._first_sight(sub, key + suffix, key)
            if got is None:
                continue
            idate, size, unterminated = got
            kws = frozenset(letters[c] for c in maildir.suffix_info(suffix) if c in letters)
            kws |= found.keywords.get(key, frozenset())
            # every message "changed" at the new MODSEQ: a client resynchronises all flags
            msgs.append(Msg(uid, key, sub, suffix, kws, modseq, idate, size, unterminated))
        self.uidnext = uidnext
        self.highestmodseq = modseq
        for m in msgs:
            self.by_uid[m.uid] = m
            self.by_key[m.key] = m
        self._rewrite_uidlist()  # first: the backup covers what the index is about to hold
        self.id = self.index.create(self.name, self.uidvalidity, self.uidnext, self.highestmodseq,
                                    [m.row() for m in msgs])
        pending.remove(self.path, found.done(m.key for m in msgs))
        self.trusted = False  # the first sync records the directory mtimes

    def _first_sight(self, sub: str, fname: str, key: str) -> tuple[float, int, bool] | None:
        """(internaldate, CRLF size, unterminated) of a file seen for the first time; None if it
        vanished. With a W= size in the name only the last octet is read, else the whole file."""
        p = f"{self.path}/{sub}/{fname}"  # str paths: pathlib costs more than the stat() here
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            _, w = maildir.key_sizes(key)
            if w is None:
                with open(fd, "rb", closefd=False) as fh:
                    data = fh.read()
                return st.st_mtime, maildir.crlf_size(data), maildir.unterminated(data)
            unterminated = st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n"
        finally:
            os.close(fd)
        return st.st_mtime, w, unterminated

    # -- change detection ----------------------------------------------------------------------

    def sync(self, *, force: bool = False) -> Changes:
        """Reconcile with the directories (see module docstring). Raises FileNotFoundError if the
        folder itself is gone."""
        changes = Changes()
        st_new = os.stat(self.path / "new")
        st_cur = os.stat(self.path / "cur")
        if (not force and self.trusted and st_new.st_mtime_ns == self.new_mtime
                and st_cur.st_mtime_ns == self.cur_mtime):
            return changes
        now = time.time()
        listing = _listing(self.path)
        missing = list(self.by_key.keys() - listing.keys())
        if missing:  # confirm: a concurrent rename may have hidden the file from one listing
            again = _listing(self.path)
            for k in missing:
                if k in again:
                    listing[k] = again[k]
            missing = [k for k in missing if k not in listing]
        modseq = self.highestmodseq + 1
        moved: list[tuple[Msg, str, str, bool]] = []  # (message, sub, suffix, whether flags differ)
        fresh: list[str] = []
        by_key = self.by_key
        for key, (sub, suffix) in listing.items():
            m = by_key.get(key)
            if m is None:
                fresh.append(key)
            elif m.suffix != suffix or m.sub != sub:
                moved.append((m, sub, suffix, maildir.suffix_info(m.suffix) != maildir.suffix_info(suffix)))
        fresh.sort(key=_order)
        # keywords given at delivery (pending.py): only looked for when there are new files
        found = pending.take(self.path, fresh, by_key) if fresh else pending.Found()
        added: list[Msg] = []
        uidnext = self.uidnext
        for key in fresh:
            sub, suffix = listing[key]
            got = self._first_sight(sub, key + suffix, key)
            if got is None:
                continue
            added.append(Msg(uidnext, key, sub, suffix, found.keywords.get(key, frozenset()), modseq, *got))
            uidnext += 1
        gone = [self.by_key[k] for k in missing]
        changed = bool(added or gone or any(differ for _, _, _, differ in moved))
        highest = modseq if changed else self.highestmodseq
        newest = max(st_new.st_mtime, st_cur.st_mtime)
        trusted = now - newest > MTIME_SETTLE
        stored = (st_new.st_mtime_ns, st_cur.st_mtime_ns) if trusted else (0, 0)
        rows = [m.row_as(sub, suffix, modseq if differ else m.modseq) for m, sub, suffix, differ in moved]
        rows += [m.row() for m in added]
        if rows or gone:  # written before anything changes here: a failure leaves the folder as it was
            self._backup([(m.uid, m.key) for m in added], highest)
            self._commit(rows, [m.uid for m in gone], uidnext=uidnext, highestmodseq=highest, mtimes=stored)
        elif stored != self._stored_mtimes or self._unsaved:
            try:  # only the mtimes (a hint) or a late removal: never a reason to fail a read
                self._commit([], [], mtimes=stored)
            except StorageFull:
                pass  # tried again at the next scan
        pending.remove(self.path, found.done(m.key for m in added))  # the index holds their keywords
        for m, sub, suffix, differ in moved:
            m.sub, m.suffix = shared_name(sub), shared_name(suffix)
            if differ:
                m.modseq = modseq
                changes.flags.append(m.uid)
            m.changed()
        for m in added:
            self.by_uid[m.uid] = m
            self.by_key[m.key] = m
            changes.added.append(m.uid)
        for m in gone:
            del self.by_key[m.key]
            del self.by_uid[m.uid]
            changes.expunged.append(m.uid)
        self.uidnext = uidnext
        self.highestmodseq = highest
        if rows or gone:
            self._snap = None
        self.trusted = trusted
        self.new_mtime, self.cur_mtime = st_new.st_mtime_ns, st_cur.st_mtime_ns
        self._compact_later(len(gone))
        changes.flags.sort()
        changes.expunged.sort()
        return changes

    def _commit(self, rows: list[MessageRow], deletes: list[int], *, uidnext: int | None = None,
                highestmodseq: int | None = None, mtimes: tuple[int, int] | None = None) -> None:
        """One index transaction: these rows, these deletions (and any left over from a removal the
        index could not record), the counters (default: the folder's) and the directory mtimes."""
        if mtimes is None:
            mtimes = (self.new_mtime, self.cur_mtime) if self.trusted else (0, 0)
        late = self._unsaved
        self.index.commit(self.id, upserts=rows, deletes=[*deletes, *late],
                          uidnext=self.uidnext if uidnext is None else uidnext,
                          highestmodseq=self.highestmodseq if highestmodseq is None else highestmodseq,
                          new_mtime=mtimes[0], cur_mtime=mtimes[1])
        self._stored_mtimes = mtimes
        if late:
            self._unsaved = set()

    def _commit_removal(self, uids: list[int]) -> None:
        """Record in the index that these files were removed (the in-memory folder already has).
        The removal has happened whatever the index says: when it cannot be recorded (a full disk)
        it is recorded by the next write that works."""
        try:
            self._backup([], self.highestmodseq)
            self._commit([], uids)
        except StoreError as e:
            self._unsaved.update(uids)
            log.warning("store: %s: the index could not record %d removed messages yet: %s",
                        self.path, len(uids), e.text)
        self._compact_later(len(uids))

    def _backup(self, pairs: list[tuple[int, str]], modseq: int) -> None:
        """Append new UIDs to the uidlist, with a new MODSEQ reservation when `modseq` is above the
        last one. Called before the index learns them, so the backup always covers the index.
        Raises StoreError (StorageFull when the disk is full)."""
        reserve = modseq + MODSEQ_RESERVE if modseq > self._reserved else 0
        if not pairs and not reserve:
            return
        try:
            uidlist.append(self.path, pairs, modseq=reserve)
        except FileNotFoundError:
            self._rewrite_uidlist(pairs, modseq)
            return
        except OSError as e:
            raise store_failure(e, "the folder's uidlist could not be written") from e
        if reserve:
            self._reserved = reserve

    def _compact_later(self, expunged: int) -> None:
        """Rewrite the uidlist without the lines of expunged messages once there are many (best
        effort: on failure the lines stay, and it is tried again after the next removal)."""
        self._expunged_since_compact += expunged
        if self._expunged_since_compact > max(1000, len(self.by_uid)):
            try:
                self._rewrite_uidlist()
            except StoreError as e:
                log.warning("store: %s: uidlist not compacted: %s", self.path, e.text)

    def _rewrite_uidlist(self, extra: Sequence[tuple[int, str]] = (), modseq: int = 0) -> None:
        reserve = max(self._reserved, self.highestmodseq + MODSEQ_RESERVE, modseq + MODSEQ_RESERVE)
        pairs = [(m.uid, m.key) for m in self.by_uid.values()] + list(extra)
        try:
            uidlist.rewrite(self.path, self.uidvalidity, max(self.uidnext, *(u + 1 for u, _ in extra), 1),
                            pairs, fsync=self.fsync, modseq=reserve)
        except OSError as e:
            raise store_failure(e, "the folder's uidlist could not be written") from e
        self._reserved = reserve
        self._expunged_since_compact = 0

    def snapshot(self) -> Snapshot:
        snap = self._snap
        if snap is None:
            snap = self._snap = [m.info() for m in self.by_uid.values()]
        # the list is shared by every snapshot of the unchanged folder (model.Snapshot: read-only),
        # so a thousand sessions that selected it hold one list, not a thousand copies
        return Snapshot(self.uidvalidity, self.uidnext, self.highestmodseq, snap)

    def vanished_since(self, modseq: int) -> list[int] | None:
        """UIDs removed after MODSEQ `modseq` (QRESYNC's VANISHED, RFC 7162 §3.2), ascending; None
        when that is not known any more (the index was rebuilt, migrated or pruned since). Removals
        the index could not record yet are included: a UID reported twice is harmless, one left
        out is not."""
        found = self.index.vanished_since(self.id, modseq)
        if found is None or not self._unsaved:
            return found
        return sorted(set(found) | self._unsaved)

    # -- our own writes ------------------------------------------------------------------------

    def _add(self, key: str, sub: str, suffix: str, keywords: frozenset[str], internaldate: float,
             size: int, unterminated: bool) -> Msg:
        m = Msg(self.uidnext, key, sub, suffix, keywords, self.highestmodseq, internaldate, size, unterminated)
        self.uidnext += 1
        self.by_uid[m.uid] = m
        self.by_key[key] = m
        self._snap = None
        return m

    def append(self, data: bytes, flags: frozenset[str], internaldate: float | None, host: str) -> int:
        """Store one message (IMAP APPEND): durable and indexed, or not kept. Returns its UID."""
        return self.append_many([(data, flags, internaldate)], host)[0]

    def append_many(self, items: Sequence[tuple[bytes, frozenset[str], float | None]], host: str) -> list[int]:
        """Store messages (data, flags, internal date) at once (APPEND; MULTIAPPEND, RFC 3502): all
        durable and indexed in one transaction, or none kept. Returns their UIDs."""
        now = time.time()
        prepared: list[tuple[bytes, str, float]] = []
        kws: list[frozenset[str]] = []
        for data, flags, internaldate in items:
            system, keywords = split_flags(flags)
            prepared.append((data, maildir.build_info(system), now if internaldate is None else internaldate))
            kws.append(keywords)
        names = maildir.store_files(self.path, host, prepared, fsync=self.fsync)
        modseq = self.highestmodseq + 1
        msgs: list[Msg] = []
        for (data, _info, when), keywords, name in zip(prepared, kws, names, strict=True):
            key, suffix = maildir.split_name(name)
            msgs.append(Msg(self.uidnext + len(msgs), key, "cur", suffix, keywords, modseq, when, len(data),
                            maildir.unterminated(data)))
        self.uidnext += len(msgs)  # used even on failure: the uidlist may hold them already
        try:
            self._backup([(m.uid, m.key) for m in msgs], modseq)
            self._commit([m.row() for m in msgs], [], highestmodseq=modseq)
        except Exception as e:  # the files are durable; drop them so no unindexed message reappears
            for name in names:
                try:
                    os.unlink(self.path / "cur" / name)
                except OSError:
                    pass
            if isinstance(e, StoreError):
                raise
            raise StoreError("the messages could not be indexed") from e
        self.highestmodseq = modseq
        for m in msgs:
            self.by_uid[m.uid] = m
            self.by_key[m.key] = m
        self._snap = None
        return [m.uid for m in msgs]

    def _forget(self, m: Msg) -> None:
        self.by_uid.pop(m.uid, None)
        self.by_key.pop(m.key, None)
        self._snap = None

    def lookup_path(self, uid: int) -> str | None:
        """The message file's path (a str: pathlib costs more than reading a small file)."""
        m = self.by_uid.get(uid)
        return None if m is None else f"{self.path}/{m.sub}/{m.key}{m.suffix}"

    def _existing(self, uids: list[int], changes: Changes) -> list[Msg]:
        """The known Msgs among `uids`, in the given order, without duplicates."""
        return [self.by_uid[u] for u in dict.fromkeys(uids) if u in self.by_uid]

    def _merge(self, into: Changes, more: Changes) -> None:
        into.added += more.added
        into.flags += more.flags
        into.expunged += more.expunged

    def store_flags(self, uids: list[int], flags: frozenset[str], mode: str) -> tuple[list[MessageInfo], Changes]:
        """Add/remove/set flags (RFC 3501 §6.4.6). Returns infos of all existing `uids` and changes."""
        if mode not in ("add", "remove", "set"):
            raise ValueError(f"bad mode {mode!r}")
        system, keywords = split_flags(flags)
        requested = list(dict.fromkeys(uids))
        changes = Changes()
        modseq = self.highestmodseq + 1
        touched: list[Msg] = []
        undo: list[tuple[Msg, str, str, frozenset[str]]] = []  # (message, sub, suffix, keywords) before
        done: set[int] = set()  # UIDs in `touched`: a set, so a 10,000-message STORE stays linear
        base = str(self.path)  # str paths: pathlib costs more than the rename() itself
        # The new suffix depends only on the old one (and the request): computed once per distinct
        # suffix, with whether the system flags change.
        plans: dict[str, tuple[str, bool]] = {}
        try:
            for attempt in (0, 1):
                retry: list[int] = []
                for m in self._existing(uids, changes):
                    if m.uid in done:
                        continue
                    old_suffix = m.suffix
                    try:
                        suffix, sys_changed = plans[old_suffix]
                    except KeyError:
                        suffix, sys_changed = plans[old_suffix] = _plan_suffix(old_suffix, system, mode)
                    if mode == "add":
                        new_kw = m.keywords | keywords if keywords else m.keywords
                    elif mode == "remove":
                        new_kw = m.keywords - keywords if keywords else m.keywords
                    else:
                        new_kw = keywords
                    if not sys_changed and new_kw == m.keywords:
                        continue
                    if suffix != old_suffix or m.sub != "cur":
                        try:
                            os.rename(f"{base}/{m.sub}/{m.key}{old_suffix}", f"{base}/cur/{m.key}{suffix}")
                        except FileNotFoundError:
                            retry.append(m.uid)
                            continue
                    undo.append((m, m.sub, old_suffix, m.keywords))
                    m.sub, m.suffix = "cur", shared_name(suffix)
                    m.keywords = new_kw
                    touched.append(m)
                    done.add(m.uid)
                if not retry or attempt == 1:
                    break
                self._merge(changes, self.sync(force=True))  # renamed or removed by another program
                modseq = max(modseq, self.highestmodseq + 1)
                uids = retry
            if touched:
                if self.fsync and any(m.sub != sub or m.suffix != suffix for m, sub, suffix, _ in undo):
                    maildir.fsync_dir(self.path / "cur")
                self._backup([], modseq)
                self._commit_flags(touched, modseq)
        except Exception as e:
            # Nothing is kept: the file names go back, so the flags are in neither the names nor the
            # index (a second session's EXPUNGE must not remove a message whose \Deleted was refused).
            self._undo_flags(undo)
            if isinstance(e, OSError):
                raise store_failure(e, "the flags could not be stored") from e
            raise
        if touched:
            for m in touched:
                m.modseq = modseq
                m.changed()
            self.highestmodseq = modseq
            self._snap = None
            changes.flags = sorted(set(changes.flags) | {m.uid for m in touched})
        by_uid = self.by_uid
        return [by_uid[u].info() for u in sorted(requested) if u in by_uid], changes

    def _undo_flags(self, undo: list[tuple[Msg, str, str, frozenset[str]]]) -> None:
        """Put back the file names and keywords of a flag change that cannot be recorded."""
        base = str(self.path)
        renamed = False
        for m, sub, suffix, kws in reversed(undo):
            if (m.sub, m.suffix) != (sub, suffix):
                try:
                    os.rename(f"{base}/{m.sub}/{m.key}{m.suffix}", f"{base}/{sub}/{m.key}{suffix}")
                    renamed = True
                except OSError:  # the next sync reads the flags from the name it kept
                    log.error("store: %s: could not undo the rename of %s", self.path, m.key, exc_info=True)
                    continue
            m.sub, m.suffix, m.keywords = sub, suffix, kws
            m.changed()
        if renamed and self.fsync:
            try:
                for sub in {u[1] for u in undo} | {"cur"}:
                    maildir.fsync_dir(self.path / sub)
            except OSError:
                log.warning("store: %s: fsync after undoing a flag change failed", self.path, exc_info=True)
        self._snap = None

    def _commit_flags(self, touched: list[Msg], modseq: int) -> None:
        """Write the flag columns of changed messages (and the counters) in one transaction."""
        kw_text: dict[frozenset[str], str] = {}
        rows: list[tuple[str, str, str, int, int]] = []
        for m in touched:
            kw = kw_text.get(m.keywords)
            if kw is None:
                kw = kw_text[m.keywords] = " ".join(sorted(m.keywords))
            rows.append((m.sub, m.suffix, kw, modseq, m.uid))
        mtimes = (self.new_mtime, self.cur_mtime) if self.trusted else (0, 0)
        self.index.commit_flags(self.id, rows, uidnext=self.uidnext, highestmodseq=modseq,
                                new_mtime=mtimes[0], cur_mtime=mtimes[1])
        self._stored_mtimes = mtimes

    def expunge(self, uids: list[int]) -> Changes:
        """Remove the messages (whatever their flags; the caller applies the \\Deleted rule)."""
        changes = Changes()
        gone: list[Msg] = []
        retry: list[int] = []
        for m in self._existing(uids, changes):
            try:
                os.unlink(self.path / m.sub / m.fname)
            except FileNotFoundError:
                retry.append(m.uid)
                continue
            gone.append(m)
        if retry:
            self._merge(changes, self.sync(force=True))
            for m in self._existing(retry, changes):
                try:
                    os.unlink(self.path / m.sub / m.fname)
                except FileNotFoundError:
                    continue
                gone.append(m)
        if gone:
            for m in gone:
                self._forget(m)
            self.highestmodseq += 1
            changes.expunged = sorted(set(changes.expunged) | {m.uid for m in gone})
            if self.fsync:
                for sub in {m.sub for m in gone}:
                    maildir.fsync_dir(self.path / sub)
            self._commit_removal([m.uid for m in gone])
        return changes

    def transfer(self, uids: list[int], dest: Folder, *, move: bool, host: str
                 ) -> tuple[list[tuple[int, int]], Changes, Changes]:
        """Copy (hard link) or move (rename) messages into `dest`; new UIDs there (RFC 3501 §6.4.7,
        RFC 6851). Copying or moving into the folder itself is allowed (new UIDs and file names, same
        flags; a move then expunges the old UIDs). Returns ([(source uid, dest uid)], source changes,
        dest changes)."""
        src_changes, dst_changes = Changes(), Changes()
        pairs: list[tuple[int, int]] = []
        placed: list[tuple[Msg, Msg, Path]] = []
        modseq = dest.highestmodseq + 1
        try:
            for m in self._existing(uids, src_changes):
                src = self.path / m.sub / m.fname
                key = m.key
                if move and key not in dest.by_key:
                    new_key = key
                else:
                    s, w = maildir.key_sizes(key)
                    new_key = maildir.make_key(maildir.unique_base(host), s if s is not None else m.size,
                                               w if w is not None else m.size)
                suffix = m.suffix if m.suffix.startswith(maildir.INFO_SEP) else maildir.INFO_SEP
                target = dest.path / "cur" / (new_key + suffix)
                try:
                    if move:
                        os.rename(src, target)
                    else:
                        maildir.link_or_copy(src, target, fsync=self.fsync)
                except FileNotFoundError:
                    continue  # vanished meanwhile: the next snapshot reports it expunged
                dm = dest._add(new_key, "cur", suffix, m.keywords, m.internaldate, m.size, m.unterminated)
                dm.modseq = modseq
                placed.append((m, dm, target))
            if placed:
                if self.fsync:
                    maildir.fsync_dir(dest.path / "cur")
                    if move:
                        for sub in {m.sub for m, _, _ in placed}:
                            maildir.fsync_dir(self.path / sub)
                dest._backup([(dm.uid, dm.key) for _, dm, _ in placed], modseq)
                dest._commit([dm.row() for _, dm, _ in placed], [], highestmodseq=modseq)
        except Exception as e:
            for m, dm, target in placed:
                dest._forget(dm)
                if move:
                    try:
                        os.rename(target, self.path / m.sub / m.fname)
                    except OSError:
                        pass
                else:
                    try:
                        os.unlink(target)
                    except OSError:
                        pass
            if isinstance(e, StoreError):
                raise
            raise store_failure(e, "the messages could not be copied") from e
        if not placed:
            return pairs, src_changes, dst_changes
        dest.highestmodseq = modseq
        dst_changes.added = [dm.uid for _, dm, _ in placed]
        pairs = [(m.uid, dm.uid) for m, dm, _ in placed]
        if move:  # the files are in `dest` now: the source's index follows (or catches up later)
            for m, _, _ in placed:
                self._forget(m)
            self.highestmodseq += 1
            src_changes.expunged = sorted(set(src_changes.expunged) | {m.uid for m, _, _ in placed})
            self._commit_removal([m.uid for m, _, _ in placed])
        return pairs, src_changes, dst_changes

    def drop_all(self) -> None:
        self.by_uid.clear()
        self.by_key.clear()
        self._snap = None


def _plan_suffix(suffix: str, system: frozenset[str], mode: str) -> tuple[str, bool]:
    """(the file name suffix after a flag change (RFC 3501 §6.4.6 on the Maildir letters), whether
    the system flags change). Letters we do not map (e.g. "P", Dovecot keyword letters) are kept."""
    letters = maildir.suffix_info(suffix)
    old_sys = maildir.info_flags(letters)
    if mode == "add":
        new_sys = old_sys | system
    elif mode == "remove":
        new_sys = old_sys - system
    else:
        new_sys = system
    return maildir.INFO_SEP + maildir.build_info(new_sys, letters), new_sys != old_sys


def split_flags(flags: frozenset[str] | set[str]) -> tuple[frozenset[str], frozenset[str]]:
    """IMAP flags -> (stored system flags, keywords). \\Recent and unknown \\flags are ignored."""
    system = set()
    words = set()
    for f in flags:
        if f.startswith("\\"):
            c = maildir.canonical_flag(f)
            if c is not None:
                system.add(c)
        else:
            words.add(f)
    return frozenset(system), clean_keywords(words)
