"""Delivery-time Sieve: each user's active script, run on every copy the local delivery agent makes.

Owns: `SieveFilter`, the agent's `seams.MailFilter` (delivery/local.py calls it once per final user):
- the script: the user's active one (sieve_store.ScriptStore, as ManageSieve and `mailhaven sieve`
  wrote it), compiled once and cached by file identity (mtime, size), read and compiled off the loop;
  a script that no longer compiles is skipped (implicit keep) with a log line;
- the run, off the loop, with the envelope (sender; the recipient address that reached the user),
  the user's include loader and mailbox checker, the limits (sieve/actions.Limits: actions,
  redirects (4, Pigeonhole's sieve_max_redirects), steps, run time);
- the actions: keep -> the folder the agent proposed (INBOX, or Junk when the MX's spam verdict said
  so: like Pigeonhole after the MTA's spam filter, keep does not overrule it); fileinto -> that
  folder of this user (a name that is not a valid folder, or a folder that does not exist without
  :create -> keep and a log line, as Pigeonhole does); discard; reject/ereject -> the agent's
  refusal (550 5.7.1 at DATA) when the job can carry one, else a rejection notice to the sender via
  the queue (RFC 5429 §2.1/§2.2); redirect -> `forward` (SRS-rewritten sender to other servers) through
  cleanup, counted against the user's sending limits; vacation -> a reply through cleanup (so it is
  DKIM-signed and queued) at most once per sender and handle per period (delivery/sievetrack.py,
  persisted; with PostgreSQL in the shared database, delivery/sievetrack_pg.py, so one reply per
  period whichever node delivers), never to what the engine's `skip` names nor to a daemon or list sender;
- duplicate ids to remember (RFC 7352) in the same per-user memory (seams.SieveMemory);
- a runtime error: the implicit keep and one log line (RFC 5228 §2.10.6);
- mail loops: a copy that already carries this user's Delivered-To twice (a redirect that came
  back) is kept without running the script.
imap4flags (RFC 5232): keep's and fileinto's flags become the stored copy's flags (the five system
flags as Maildir info letters, keywords such as "$label1" through the store's pending record,
store/pending.py; a keyword that is not an IMAP atom, or beyond the 32nd, is ignored with a log line,
as Pigeonhole does). editheader (RFC 5293): the stored
copy and redirects carry the edited header section (Return-Path and Delivered-To stay on top).
Side effects (redirect, vacation, rejection notice) are enqueued before the agent's store write;
if that write then fails, the sender's retry may send them twice (never zero times).
Does not own: Sieve itself (mailhaven.sieve), script storage (sieve_store.py), the messages it sends
(delivery/sievereply.py), the queue's way in (cleanup.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mailhaven import cleanup, seams
from mailhaven.delivery import local, sievereply
from mailhaven.delivery.forward import Forwarder
from mailhaven.delivery.sievetrack import FileMemory
from mailhaven.errors import BadMailboxName, DatabaseError, MailError
from mailhaven.sieve import Context as SieveContext
from mailhaven.sieve import (
    Discard,
    Envelope,
    FileInto,
    Keep,
    Redirect,
    Reject,
    Result,
    Script,
    SieveSyntaxError,
    Vacation,
    compile_script,
    evaluate,
)
from mailhaven.sieve import Limits as SieveLimits
from mailhaven.sieve_store import PersonalLoader, ScriptStore
from mailhaven.store import names, pending

log = logging.getLogger("mailhaven.sieve")

MAX_CACHE = 1000  # compiled scripts kept (one per user)
DAEMON_LOCALPARTS = ("mailer-daemon", "postmaster", "listserv", "majordomo")  # RFC 5230 §4.6, Pigeonhole


@dataclass(frozen=True)
class _Loaded:
    key: tuple[str, int, int, int]  # (name, inode, mtime_ns, size) of the active script's file
    script: Script | None  # None: it does not compile (logged once)


class _Mailboxes:
    """RFC 5490 mailboxexists, and fileinto's "does it exist": a folder of this user on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def exists(self, name: str) -> bool:
        try:
            return names.folder_path(self.root, names.canonical(name)).is_dir() or names.canonical(name) == "INBOX"
        except BadMailboxName:
            return False


class SieveFilter:
    """The agent's filter (see the module doc). `ctx` is the shared context: its config (mail
    root, limits), limits.sending and the queue (through cleanup) are read at each delivery."""

    def __init__(self, ctx: seams.Context, memory: seams.SieveMemory | None = None) -> None:
        """`memory`: vacation and duplicate marks (default: each user's tracker file)."""
        self.ctx = ctx
        self.memory: seams.SieveMemory = memory or FileMemory(lambda user: self._store(user).path)
        self._cache: dict[str, _Loaded] = {}
        self._cache_lock = threading.Lock()  # _load runs in worker threads

    # -- the script -----------------------------------------------------------------------------

    def _store(self, user: str) -> ScriptStore:
        ms = self.ctx.config.managesieve
        return ScriptStore(Path(self.ctx.config.mail_root), user, max_scripts=ms.max_scripts,
                           max_size=ms.max_script_size)

    def _load(self, user: str) -> Script | None:
        """The user's active script, compiled (cached by file identity); blocks."""
        store = self._store(user)
        name = store.active()
        if name is None:
            with self._cache_lock:
                self._cache.pop(user, None)
            return None
        try:
            st = os.stat(store.path / (name + ".sieve"), follow_symlinks=False)
        except OSError:
            return None
        key = (name, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._cache_lock:
            hit = self._cache.get(user)
        if hit is not None and hit.key == key:
            return hit.script
        data = store.read(name)
        script: Script | None = None
        if data is None or len(data) > store.max_size:
            log.warning("sieve: %s: active script %r is missing or bigger than %d octets; not run",
                        user, name, store.max_size)
        else:
            try:
                script = compile_script(data)
            except SieveSyntaxError as e:
                log.warning("sieve: %s: active script %r does not compile (%s); not run", user, name, e)
        with self._cache_lock:
            if len(self._cache) >= MAX_CACHE and user not in self._cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[user] = _Loaded(key, script)
        return script

    def _run(self, user: str, job: seams.FilterJob, script: Script, seen: set[str]) -> Result:
        """Evaluate off the loop (blocks): the memory's live ids (`seen`) answer `duplicate`."""
        store = self._store(user)

        class _Seen:
            def seen(self, key: str) -> bool:
                return "duplicate:" + key in seen

            def mark(self, key: str, seconds: int, last: bool) -> None:
                pass

        limits = SieveLimits(max_redirects=self.ctx.config.managesieve.max_redirects)
        context = SieveContext(now=datetime.now(UTC), duplicates=_Seen(), loader=PersonalLoader(store),
                               mailboxes=_Mailboxes(names.user_root(Path(self.ctx.config.mail_root), user)),
                               user_addresses=(user, *job.recipients), limits=limits)
        envelope = Envelope(mail_from=job.sender, rcpt_to=job.recipients[0] if job.recipients else user)
        return evaluate(script, job.message, envelope, context)

    # -- the filter -----------------------------------------------------------------------------

    async def file(self, job: seams.FilterJob) -> seams.Filing:
        keep = seams.Filing((job.folder,))
        user = job.user
        if _delivered_to_count(job.message, user) > 1:  # our own redirect came back: a loop
            log.warning("sieve: %s: mail loop (Delivered-To twice); kept without running the script", user)
            return keep
        try:
            script = await asyncio.to_thread(self._load, user)
            if script is None:
                return keep
            result = await asyncio.to_thread(self._run, user, job, script, await self._seen(user))
        except Exception as e:  # noqa: BLE001 - a filter failure never loses mail: implicit keep
            log.error("sieve: %s: script not run (%s); implicit keep", user, e)
            return keep
        if result.error is not None:  # RFC 5228 §2.10.6: the implicit keep, and say why
            log.warning("sieve: %s: runtime error: %s; implicit keep", user, result.error)
            return keep
        return await self._apply(job, result)

    async def _seen(self, user: str) -> set[str]:
        """The user's live marks; none when the memory cannot be read (the script still runs: its
        folders and flags matter more than `duplicate` answering "seen"; vacation then sends
        nothing, as its claim fails too)."""
        try:
            return await self.memory.live(user)
        except (OSError, DatabaseError) as e:
            log.error("sieve: %s: duplicate ids unreadable (%s); the script runs as if none were seen", user, e)
            return set()

    async def _apply(self, job: seams.FilterJob, result: Result) -> seams.Filing:
        user = job.user
        edited = _edited(job.message, result.headers) if result.headers is not None else None
        if edited is not None:  # RFC 5293 §5: later actions (store, redirect) see the edited message
            job = dataclasses.replace(job, message=edited)
        try:
            return await self._actions(job, result, edited)
        except Exception:  # noqa: BLE001 - never lose the message over a bug here: keep it
            log.exception("sieve: %s: executing the actions failed; implicit keep", user)
            return seams.Filing((job.folder,))

    async def _actions(self, job: seams.FilterJob, result: Result, edited: bytes | None) -> seams.Filing:
        user = job.user
        folders: list[str] = []
        flags: dict[str, tuple[str, ...]] = {}
        root = names.user_root(Path(self.ctx.config.mail_root), user)
        for action in result.actions:
            if isinstance(action, Keep):
                folders.append(job.folder)
                _add_flags(flags, job.folder, action.flags, user)
            elif isinstance(action, FileInto):
                box = await self._folder(user, root, action, job.folder)
                folders.append(box)
                _add_flags(flags, box, action.flags, user)
            elif isinstance(action, Discard):
                log.info("sieve: %s: discarded", user)
            elif isinstance(action, Reject):
                reason = sievereply.one_line(action.reason) or "rejected"
                if job.can_refuse:  # RFC 5429 §2.1: in protocol, nothing stored
                    log.info("sieve: %s: rejected in protocol: %s", user, reason)
                    return seams.Filing((), refusal=reason)
                if not await self._notify_rejection(job, action.reason):
                    folders.append(job.folder)  # could not tell the sender: keep rather than lose it
            elif isinstance(action, Redirect):
                if not await self._redirect(job, action.address) and not action.copy:
                    folders.append(job.folder)  # not forwarded: keep it instead (nothing lost)
            elif isinstance(action, Vacation):
                await self._vacation(job, action)
        if result.duplicates:
            marks: list[tuple[str, float]] = [("duplicate:" + k, float(s)) for k, s, _last in result.duplicates]
            try:
                await self.memory.mark(user, marks)
            except (OSError, DatabaseError) as e:
                log.error("sieve: %s: duplicate ids not recorded: %s", user, e)
        chosen = tuple(dict.fromkeys(folders))
        return seams.Filing(chosen, flags={f: flags[f] for f in chosen if f in flags}, message=edited)

    async def _folder(self, user: str, root: Path, action: FileInto, proposed: str) -> str:
        """fileinto's folder of this user, or `proposed` (keep) with a log line when it is not a
        valid folder name or does not exist and :create was not given (RFC 5490 §3.2, Pigeonhole)."""
        try:
            name = names.canonical(action.mailbox)
        except BadMailboxName as e:
            log.warning("sieve: %s: fileinto %r: not a valid folder (%s); kept", user, action.mailbox, e)
            return proposed
        if name == "INBOX" or action.create:
            return name  # the store creates a missing folder on delivery
        if await asyncio.to_thread(_Mailboxes(root).exists, name):
            return name
        log.warning("sieve: %s: fileinto %r: no such folder (and no :create); kept", user, action.mailbox)
        return proposed

    # -- what goes out ----------------------------------------------------------------------------

    def _may_send(self, user: str, recipients: int) -> bool:
        """The user's outbound limits (config [submission], sendrate.py), counted here: redirects
        and vacation replies are mail the user sends (issue 13 item 8)."""
        sub = self.ctx.config.submission
        sending = self.ctx.limits.sending
        ok, _count = sending.take("messages", user, 1, sub.max_messages_per_hour)  # 0 = no limit
        if ok:
            ok, _count = sending.take("recipients", user, recipients, sub.max_recipients_per_hour)
            if not ok:
                sending.add("messages", user, -1)
        if not ok:
            log.warning("sieve: %s: hourly sending limit reached; nothing sent", user)
        return ok

    async def _redirect(self, job: seams.FilterJob, address: str) -> bool:
        if not self._may_send(job.user, 1):
            return False
        try:
            queue_id = await forward(self.ctx, job.sender, address, _without_return_path(job.message))
        except MailError as e:
            log.warning("sieve: %s: redirect to <%s> failed: %s", job.user, address, e)
            return False
        log.info("sieve: %s: redirected to <%s> as %s", job.user, address, queue_id)
        return True

    async def _notify_rejection(self, job: seams.FilterJob, reason: str) -> bool:
        """RFC 5429 §2.2: tell the envelope sender (none for a null sender: the message is simply
        refused, RFC 3834 §2); True when that is done."""
        if not job.sender:
            log.info("sieve: %s: rejected (null sender: no notice)", job.user)
            return True
        notice = sievereply.rejection_notice(hostname=self.ctx.config.hostname, user=job.user, to=job.sender,
                                             domain=job.user.rpartition("@")[2],
                                             reason=reason, original=job.message)
        try:
            queue_id = await cleanup.enqueue(self.ctx, "", [job.sender], notice, source="sieve-reject")
        except MailError as e:
            log.warning("sieve: %s: rejection notice to <%s> failed: %s", job.user, job.sender, e)
            return False
        log.info("sieve: %s: rejected; notice to <%s> as %s", job.user, job.sender, queue_id)
        return True

    async def _vacation(self, job: seams.FilterJob, v: Vacation) -> None:
        user = job.user
        sender = v.recipient
        if v.skip is None and sender.rpartition("@")[0].lower() in DAEMON_LOCALPARTS:
            skip: str | None = "sender is a daemon"  # RFC 5230 §4.6 (as Pigeonhole)
        else:
            skip = v.skip
        if skip is not None:
            log.info("sieve: %s: vacation: no reply to <%s>: %s", user, sender, skip)
            return
        # RFC 5230 §4.2: one reply per sender per handle per period, remembered across restarts
        key = "vacation:" + hashlib.sha256(f"{v.handle}\0{sender.lower()}".encode()).hexdigest()
        try:
            fresh = await self.memory.claim(user, key, float(v.seconds))
        except (OSError, DatabaseError) as e:
            log.error("sieve: %s: vacation tracker unusable (%s); no reply", user, e)
            return
        if not fresh:
            log.info("sieve: %s: vacation: already answered <%s> within the period", user, sender)
            return
        if not self._may_send(user, 1):
            return
        original = job.message
        own = job.recipients[0] if job.recipients else user
        from_ = own
        if v.from_:  # only an address the user may send as (issue 13 item 8; cleanup DKIM-signs it)
            _name, addr = email.utils.parseaddr(v.from_)
            if addr and self.ctx.directory.owns(user, addr):
                from_ = v.from_
            else:
                log.warning("sieve: %s: vacation :from %r is not the user's address; using <%s>", user, v.from_, own)
        reply = sievereply.vacation_reply(
            from_=from_, to=sender,
            subject=v.reply_subject, reason=v.reason, mime=v.mime, in_reply_to=v.in_reply_to,
            references=cleanup.header_value(original, "references"))
        try:  # RFC 5230 §5.1 / RFC 3834 §3.1.5: null envelope sender; cleanup DKIM-signs it
            queue_id = await cleanup.enqueue(self.ctx, "", [sender], reply, source="sieve-vacation")
        except MailError as e:
            log.warning("sieve: %s: vacation reply to <%s> failed: %s", user, sender, e)
            return
        log.info("sieve: %s: vacation reply to <%s> as %s", user, sender, queue_id)


async def forward(ctx: seams.Context, sender: str, address: str, message: bytes) -> str:
    """Redirect `message` to `address` (RFC 5228 §4.2) through cleanup; its queue id. To another
    server the envelope sender is rewritten with SRS as an alias's forward is (delivery/forward.py
    Forwarder.rewrite: the null sender and our own domains' senders are kept; no secret, kept)."""
    forwarder = local.agent_of(ctx).forwarder
    if isinstance(forwarder, Forwarder) and not ctx.config.is_local_domain(address.rpartition("@")[2].lower()):
        sender = await forwarder.rewrite(sender)
    return await cleanup.enqueue(ctx, sender, [address], message, source="sieve-redirect")


def _edited(message: bytes, fields: list[tuple[str, str]]) -> bytes:
    """The message with the header section editheader left (RFC 5293), our Return-Path and
    Delivered-To kept on top whatever the script did (they are the agent's, like Received)."""
    end = message.find(b"\r\n\r\n")
    body = b"" if end < 0 else message[end + 4:]
    lines = message.split(b"\r\n", 2)
    ours = b"".join(line + b"\r\n" for line in lines[:2]
                    if line.lower().startswith((b"return-path:", b"delivered-to:")))
    kept = list(fields)
    for name in ("return-path", "delivered-to"):  # the first of each is ours: it stays on top
        i = next((i for i, (n, _) in enumerate(kept) if n.lower() == name), None)
        if i is not None and ours.lower().find(name.encode()) >= 0:
            del kept[i]
    head = b"".join(f"{n}: {v}\r\n".encode() for n, v in kept)
    return ours + head + b"\r\n" + body


def _add_flags(flags: dict[str, tuple[str, ...]], folder: str, more: tuple[str, ...], user: str) -> None:
    """RFC 5232 §3: the copy in `folder` starts with `more` too: system flags and keywords are
    stored (the store ignores invalid keywords and those beyond its limit: logged here)."""
    if more:
        flags[folder] = tuple(dict.fromkeys((*flags.get(folder, ()), *more)))
        _, ignored = pending.for_delivery(flags[folder])
        if ignored:
            log.warning("sieve: %s: %s: keywords ignored (not an IMAP keyword, or more than %d): %s", user,
                        folder, pending.MAX_KEYWORDS, " ".join(repr(w) for w in ignored[:8]))


def _without_return_path(message: bytes) -> bytes:
    """The stored copy without the Return-Path we put on top (the forward gets its own)."""
    if message[:12].lower() == b"return-path:":
        end = message.find(b"\r\n")
        return message[end + 2:] if end >= 0 else message
    return message


def _delivered_to_count(message: bytes, user: str) -> int:
    end = message.find(b"\r\n\r\n")
    head = (message if end < 0 else message[:end + 2]).lower()
    return head.count(b"\r\ndelivered-to: " + user.lower().encode("utf-8", "replace") + b"\r\n") + \
        (1 if head.startswith(b"delivered-to: " + user.lower().encode("utf-8", "replace") + b"\r\n") else 0)


__all__ = ["SieveFilter", "forward"]
