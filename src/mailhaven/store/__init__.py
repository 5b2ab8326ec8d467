r"""The mail store: Maildir++ on disk (the truth) plus a per-user index (rebuildable): SQLite files,
or PostgreSQL with `[storage] backend = "postgresql"` (index_pg.py).

Owns: durable delivery, folders, flags, UIDs, change notification between sessions.
Does not own: protocols (IMAP/POP3 views, sequence numbers), policy, the queue.

Public API (import from `mailhaven.store`); everything is async and never blocks the loop
(file I/O, fsync and SQLite run in worker threads):

    store = Store(root: Path, *, hostname: str, fsync: bool = True, bus_dir: Path | None = None,
                  peers: Peers | None = None, indexes: IndexFactory | None = None)
        # indexes: makes each user's index (index.IndexFactory: index.SqliteIndexes, the default,
        # or index_pg.PgIndexes; app.py picks it from [storage] backend), opened by start().
        # bus_dir: other processes run a Store over the same root; change events cross to them
        # and back through Unix datagram sockets in that directory (bus.py). None: this one alone.
        # peers, instead: stores on other nodes share the root; events cross through it
        # (bus_pg.PgBus: PostgreSQL LISTEN/NOTIFY), started by start() and closed by close().
        await store.start() -> int          # removes stale tmp/ files (ours from a dead writer, or
                                            # anyone's older than 36 h); returns how many; joins the bus
        await store.close()                 # closes every account's index
        store.account(user: str) -> Account # user = canonical address "alice@example.test"
        await store.deliver(targets: Sequence[tuple[str, str]], data: bytes, *,
                            heads: Mapping[str, bytes] | None = None,
                            flags: Mapping[tuple[str, str], Sequence[str]] | None = None,
                            bodies: Mapping[str, bytes] | None = None) -> None
            # targets: (user, folder) e.g. ("alice@example.test", "INBOX") or (..., "Junk").
            # heads[user]: header fields written above data in that user's copies (Return-Path,
            # Delivered-To); one tmp file per distinct head, fsynced, hard-linked into each of its
            # targets' new/, directories fsynced; all-or-nothing across every target: raises
            # StoreError and leaves no visible partial message. Only delivery/local.py calls it.
            # flags[(user, folder)]: initial flags of that copy (system flags in the file name,
            # keywords through pending.py: indexed by the folder's next sync). bodies[user]:
            # that user's copies hold it below their head instead of data (Sieve editheader).
            # Creates a missing target folder. Publishes MessagesAdded(user, folder, uids=()).
        store.changes -> ChangeHub          # subscribe(user) -> Subscription (async iterator / .get())
        store.fts -> fts.Fts                # the users' full-text indexes; deliver() and append() queue
                                            # their copies for it after the fsyncs, expunge() its removals

    Account (one user):
        .user, .path
        await list_mailboxes() -> list[MailboxInfo]        # INBOX first
        await create_mailbox(name, special_use=None), delete_mailbox(name), rename_mailbox(old, new)
        await subscribe(name), unsubscribe(name)
        await subscriptions() -> list[str]                 # the subscription list (LSUB)
        await mailbox(name) -> Mailbox                     # MailboxNotFound, BadMailboxName
        # delete_mailbox refuses INBOX and folders with inferiors (MailboxHasChildren);
        # rename_mailbox renames inferiors; renaming INBOX moves its messages (RFC 3501 §6.3.5).

    Mailbox (one folder of one user):
        .name, .uidvalidity
        await snapshot() -> Snapshot        # picks up changes made on disk by other programs
        await append(data, flags=frozenset(), internaldate=None) -> int  (the new UID; fsynced)
        await read(uid) -> bytes            # the message with CRLF line endings; MessageNotFound
        await store_flags(uids, flags, mode: "add"|"remove"|"set") -> list[MessageInfo]
            # infos of every existing UID asked for; \Recent and unknown \flags are ignored
        await store_flags_unchanged_since(uids, flags, mode, n) -> (infos, uids left alone: MODSEQ > n)
        await expunge(uids) -> list[int]    # UIDs actually removed (the caller checks \Deleted)
        await vanished_since(modseq) -> list[int] | None  # tombstones: UIDs expunged after modseq;
            # None: not known that far back (index rebuilt or migrated, tombstones pruned)
        await copy(uids, dest: Mailbox) -> list[tuple[int, int]]   # (source uid, new uid)
        await move(uids, dest: Mailbox) -> list[tuple[int, int]]
        await text_candidates(infos, terms: [(folded string, headers too)]) -> set[str]
            # keys among `infos` that may hold every string (BODY, or TEXT when headers too), from
            # the full-text index (fts.py), indexing the missing ones first: a superset of the
            # matches, which the caller still checks; StoreError when the index cannot answer

Values (frozen dataclasses, model.py):
    MessageInfo(uid, flags: frozenset[str], internaldate: float, size: int, modseq: int, key: str,
                unterminated: bool)
        flags = system flags ("\Seen" "\Answered" "\Flagged" "\Deleted" "\Draft") + keywords
        size = RFC822.SIZE (CRLF octets); .pop3_size = what POP3 RETR sends (a final CRLF added to
        an unterminated message: one that does not end with a line break, known from the index)
    Snapshot(uidvalidity, uidnext, highestmodseq, messages: list[MessageInfo])   # ascending UID
    MailboxInfo(name, special_use: str | None, has_children: bool, subscribed: bool)
Errors: mailhaven.errors.StoreError / BadMailboxName / MailboxNotFound / MailboxExists, and
MessageNotFound, MailboxHasChildren (PermFailure subclasses, exported here).

Change events (changes.py, frozen dataclasses): MessagesAdded(user, mailbox, uids),
FlagsChanged(user, mailbox, uids), Expunged(user, mailbox, uids), MailboxesChanged(user),
Overflow(user). Every write publishes; deliver() publishes MessagesAdded with uids=() (call
snapshot(), which assigns UIDs and publishes MessagesAdded with them). Subscriptions:
`with store.changes.subscribe(user) as sub: event = await sub.get()` (or `async for`), close()d
when done.

On disk (one user): `<root>/<domain>/<localpart>/` = INBOX (cur/ new/ tmp/), `.Sent/` `.Drafts/`
`.Trash/` `.Junk/` `.Archive/` (created on first access) and `.Folder.Sub/`; each subfolder has a
`maildirfolder` marker; `subscriptions` (one name per line); `mailhaven-index.sqlite` (the
rebuildable index, WAL); `mailhaven-fts.sqlite` (the full-text index for SEARCH BODY/TEXT, fts.py: a
cache keyed by Maildir key, beside either index backend, made again when lost); `mailhaven-lock` (empty: the per-user inter-process lock, flock(2), held
by every step that reads or writes the index, so several processes may each run a Store over one
root, mailbox.py); `mailhaven-uidvalidity` (last UIDVALIDITY given). With the PostgreSQL index
the first three are rows instead (index_pg.py; the lock an advisory lock of the user), the rest
stays on disk; `mailhaven-uidlist` in
every folder (UID backup, format in uidlist.py; a `dovecot-uidlist` is imported when we have
neither); `mailhaven-keywords/` in a folder that was delivered keywords (one record per copy whose
keywords the index does not hold yet, pending.py). Messages are stored with CRLF line endings. If
the index is lost, UIDVALIDITY, UIDs and flags come back from the uidlists and file names; keywords
(kept only in the index) are lost, except Dovecot keyword letters mapped by a `dovecot-keywords`
file on import and delivered keywords still in a pending record.

Modules: names.py (pure name -> path rules), maildir.py (durable file primitives), uidlist.py
(UID backup files), index.py (the IndexBackend seam, and SQLite), index_pg.py (PostgreSQL), fts.py (the
full-text index, SQLite FTS5), folder.py (one folder's reconciliation), pending.py
(keywords given at delivery, until the index holds them), mailbox.py (the async API and locking),
changes.py (events), bus.py (events between processes), bus_pg.py (events between nodes, through
PostgreSQL), model.py (value types).

Mailbox names are Unicode strings with "." as the hierarchy delimiter (Maildir++), stored as
UTF-8 on disk: "INBOX", "Sent", "Work.Projects" -> <user>/.Work.Projects/. `names.py` rejects
anything that could escape the user's folder.
"""

from mailhaven.store.changes import (
    ChangeHub,
    Event,
    Expunged,
    FlagsChanged,
    MailboxesChanged,
    MessagesAdded,
    Overflow,
    Peers,
    Subscription,
)
from mailhaven.store.mailbox import Account, Mailbox, Store
from mailhaven.store.model import MailboxHasChildren, MailboxInfo, MessageInfo, MessageNotFound, Snapshot

__all__ = [
    "Account", "ChangeHub", "Event", "Expunged", "FlagsChanged", "MailboxHasChildren", "MailboxInfo",
    "Mailbox", "MailboxesChanged", "MessageInfo", "MessageNotFound", "MessagesAdded", "Overflow", "Peers",
    "Snapshot", "Store", "Subscription",
]
