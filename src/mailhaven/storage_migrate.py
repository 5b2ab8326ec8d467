"""`mailhaven storage migrate --to postgresql`: the SQLite state of one node moved into PostgreSQL.

Owns: finding every user's index under mail_root (`<domain>/<localpart>/mailhaven-index.sqlite`,
with its `mailhaven-uidvalidity` and `subscriptions` files) and copying it into the PostgreSQL
index (store/index_pg.py) with UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, UIDs, MODSEQs, flags and
keywords, tombstones and their floor, special-use, meta (quota warning state...) and the
subscription list unchanged, so IMAP clients see the same mailboxes (no resync, QRESYNC keeps
working); then the file queue's envelopes (queue/spool.py: `<ID>.env` in the queue directory and
its `worker-<i>` partitions) into the queue table (queue/spool_pg.py), each message file moved to
the queue directory if it was in a partition.
Does not own: the formats (index.py dumps, index_pg.py imports; spool.py, spool_pg.py).

Run it with the server stopped, after setting `[storage] backend = "postgresql"` and `dsn`.
Idempotent: a user who already has an index in PostgreSQL is skipped (and said so) unless
`force`, which replaces it; a queue entry whose row exists is not added again. What it leaves:
the SQLite index files and the uidvalidity and subscriptions files stay where they are, untouched,
not renamed (back to backend = "sqlite" before any client used PostgreSQL, the server goes on with
them; after, the operator deletes the index files first, and each is rebuilt from the uidlists that
folder.py keeps with either backend: docs/production.md); each migrated queue envelope is renamed `<ID>.env.migrated` (the file queue does not
load it any more, so no message is sent twice; renamed back to `.env` it is again).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailhaven import pg
from mailhaven.config import Config
from mailhaven.errors import BadMailboxName
from mailhaven.queue import spool
from mailhaven.queue.spool_pg import PgSpool
from mailhaven.store import index, maildir, names
from mailhaven.store.index_pg import PgIndex, PgIndexes

log = logging.getLogger(__name__)
MIGRATED_SUFFIX = ".migrated"


@dataclass
class Summary:
    users: int = 0
    skipped: int = 0
    mailboxes: int = 0
    messages: int = 0
    queued: int = 0


def user_roots(mail_root: Path) -> Iterator[tuple[str, Path]]:
    """(user, root) of every user with an index or its side files under mail_root, by name."""
    if not mail_root.is_dir():
        return
    for domain in sorted(p for p in mail_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for root in sorted(p for p in domain.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if any((root / f).exists() for f in (index.FILENAME, index.UIDVALIDITY_FILENAME,
                                                 index.SUBSCRIPTIONS_FILENAME)):
                user = f"{root.name}@{domain.name}"
                try:
                    names.split_user(user)
                except BadMailboxName:
                    log.warning("storage migrate: %s is not a user's folder, skipped", root)
                    continue
                yield user, root


def dump_user(root: Path) -> index.IndexDump:
    """Everything the SQLite backend keeps for one user (an index written by an older version is
    upgraded first, as the server would on opening it)."""
    if not (root / index.FILENAME).exists():
        return index.IndexDump(index.file_uidvalidity(root), subscriptions=index.read_subscriptions(root))
    idx = index.Index(root, durable=True)
    try:
        return idx.dump()
    finally:
        idx.close()


async def migrate(cfg: Config, *, force: bool, say: Callable[[str], None]) -> Summary:
    """Copy every user's index and the file queue into the PostgreSQL of cfg.storage."""
    summary = Summary()
    database = pg.Database.from_config(cfg.storage)
    indexes = PgIndexes(database, owns_database=True)
    await database.open()
    try:
        await indexes.open()
        for user, root in user_roots(cfg.mail_root):
            await asyncio.to_thread(_migrate_user, indexes, user, root, force, summary, say)
        await _migrate_queue(database, cfg.queue_root, summary, say)
    finally:
        await indexes.close()
    say(f"done: {summary.users} user(s) ({summary.mailboxes} mailboxes, {summary.messages} messages), "
        f"{summary.skipped} skipped, {summary.queued} queue entr{'y' if summary.queued == 1 else 'ies'}")
    return summary


def _migrate_user(indexes: PgIndexes, user: str, root: Path, force: bool, summary: Summary,
                  say: Callable[[str], None]) -> None:
    dump = dump_user(root)
    target = PgIndex(indexes, user, root, durable=True)
    target.lock()
    try:
        if target.has_data() and not force:
            summary.skipped += 1
            say(f"index: {user}: already in PostgreSQL, skipped (--force replaces it)")
            return
        target.import_dump(dump)
    finally:
        target.unlock()
    count = sum(len(b.messages) for b in dump.mailboxes)
    tombs = sum(len(b.expunged) for b in dump.mailboxes)
    summary.users += 1
    summary.mailboxes += len(dump.mailboxes)
    summary.messages += count
    say(f"index: {user}: {len(dump.mailboxes)} mailboxes, {count} messages, {tombs} tombstones, "
        f"{len(dump.subscriptions)} subscriptions, UIDVALIDITY floor {dump.last_uidvalidity}")


async def _migrate_queue(database: pg.Database, queue_root: Path, summary: Summary,
                         say: Callable[[str], None]) -> None:
    found = await asyncio.to_thread(_queued, queue_root, say)
    if not found:
        return
    target = PgSpool(database, queue_root)
    await target.open()
    for folder, entry in found:
        await asyncio.to_thread(_into_root, folder, queue_root, entry.id)
        added = await target.import_entry(entry)
        await asyncio.to_thread(_retire, folder, entry.id)
        if added:
            summary.queued += 1
            say(f"queue: {entry.id}: from {entry.sender or '<>'} to {len(entry.recipients)} recipient(s)")
        else:
            say(f"queue: {entry.id}: already in PostgreSQL")


def _queued(queue_root: Path, say: Callable[[str], None]) -> list[tuple[Path, spool.Entry]]:
    """(directory, entry) of every envelope of the file queue with its message file."""
    if not queue_root.is_dir():
        return []
    out: list[tuple[Path, spool.Entry]] = []
    for folder in [queue_root, *sorted(p for p in queue_root.glob(f"{spool.PARTITION_PREFIX}*") if p.is_dir())]:
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".env") or not spool.valid_id(name[:-4]):
                continue
            try:
                entry = spool.read_entry(folder, name[:-4])
            except (OSError, ValueError, KeyError, TypeError) as e:
                say(f"queue: {folder / name}: unreadable ({e}), left alone")
                continue
            if not (folder / f"{entry.id}.msg").exists():
                say(f"queue: {entry.id}: no message file, left alone")
                continue
            out.append((folder, entry))
    return out


def _into_root(folder: Path, queue_root: Path, eid: str) -> None:
    """A partition's message file moves to the queue directory, where the PostgreSQL queue reads it."""
    if folder != queue_root:
        os.rename(folder / f"{eid}.msg", queue_root / f"{eid}.msg")
        maildir.fsync_dir(queue_root)


def _retire(folder: Path, eid: str) -> None:
    """The envelope is renamed aside, after its row committed: the file queue loads it no more."""
    os.rename(folder / f"{eid}.env", folder / f"{eid}.env{MIGRATED_SUFFIX}")
    maildir.fsync_dir(folder)


__all__ = ["Summary", "migrate", "user_roots", "dump_user"]
