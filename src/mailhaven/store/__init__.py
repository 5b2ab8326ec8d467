"""The mail store: Maildir++ on disk (the truth) plus a per-user SQLite index (rebuildable).

Owns: durable delivery, folders, flags, UIDs, change notification between sessions.
Does not own: protocols (IMAP/POP3 views, sequence numbers), policy, the queue.

Public API (import from `mailhaven.store`); everything is async and never blocks the loop
(file I/O, fsync and SQLite run in worker threads):

    store = Store(root: Path, *, hostname: str, fsync: bool = True)
        await store.start()                 # clean stale tmp files, ready the index
        await store.close()
        store.account(user: str) -> Account # user = canonical address "alice@example.test"
        await store.deliver(targets: Sequence[tuple[str, str]], data: bytes) -> None
            # targets: (user, folder) e.g. ("alice@example.test", "INBOX") or (..., "Junk").
            # One tmp file, fsynced, hard-linked into every target's new/, directories fsynced;
            # all-or-nothing: raises StoreError and leaves no visible partial message.
        store.changes -> ChangeHub          # subscribe(user) -> Subscription (async iterator / .get())

    Account (one user):
        .user, .path
        await list_mailboxes() -> list[MailboxInfo]        # INBOX first
        await create_mailbox(name, special_use=None), delete_mailbox(name), rename_mailbox(old, new)
        await subscribe(name), unsubscribe(name)
        await mailbox(name) -> Mailbox                     # MailboxNotFound, BadMailboxName

    Mailbox (one folder of one user):
        .name, .uidvalidity
        await snapshot() -> Snapshot        # picks up changes made on disk by other programs
        await append(data, flags=frozenset(), internaldate=None) -> int  (the new UID; fsynced)
        await read(uid) -> bytes            # the message with CRLF line endings
        await store_flags(uids, flags, mode: "add"|"remove"|"set") -> list[MessageInfo]
        await expunge(uids) -> list[int]    # UIDs actually removed
        await copy(uids, dest: Mailbox) -> list[tuple[int, int]]   # (source uid, new uid)
        await move(uids, dest: Mailbox) -> list[tuple[int, int]]

Mailbox names are Unicode strings with "." as the hierarchy delimiter (Maildir++), stored as
UTF-8 on disk: "INBOX", "Sent", "Work.Projects" -> <user>/.Work.Projects/. `names.py` rejects
anything that could escape the user's folder.
"""
