"""Local delivery: the one local delivery agent, the only way into a mailbox (DESIGN "Local delivery").

Owns: `LocalDeliveryAgent`, through which every path delivers to our own users: the MX
(smtp/inbound.py, which resolves with it at RCPT and delivers what that resolution gave at DATA),
submission to a local user and bounces/delay warnings to a local sender (cleanup.py), the queue's
local recipients (queue/manager.py), and later vacation replies. It is the only caller of
`store.deliver` (a test reads the source to keep it so). Per message it does, once:
- alias expansion: `resolve` asks the user directory (auth/users.py Directory.resolve: users,
  aliases, catch-all, sub-addresses; `postmaster` for RFC 5321 §4.5.1) for the final users;
- duplicate suppression: a final user reached through several recipients or aliases of one
  transaction gets one copy (as Postfix local(8)'s duplicate filter and Dovecot's LMTP do);
- the trust fields: forged Authentication-Results with our authserv-id, X-Spam-*, incoming
  Return-Path removed (message/trust.py), then `Return-Path: <sender>` on top (RFC 5321 §4.4) and
  `Delivered-To: <final user>` below it in each user's copy (RFC 9228, as Postfix local(8) and
  Dovecot's LDA write it), then the caller's trace fields (the MX's Received, Authentication-Results);
- the folder: the caller's verdict (INBOX, or Junk), then the per-user filter step (seams.MailFilter:
  the Sieve engine's seat; fileinto/keep/discard), then the quota step (seams.Quota, quota.py:
  the copy's size once per folder it goes into; refused with OverQuota 452 4.2.2; after the
  write, `delivered` lets it send its 90 % warning; `enforce_quota=False` for that warning);
- forwarding: a recipient's `forward` targets (aliases to other servers, bounces to our SRS
  addresses) go to the forwarder (seams.Forwarder, delivery/forward.py) after the local copies are
  durable: one queued copy, SRS sender, ARC set; not for a message filed as spam (`spam=True`);
- the write: `deliver_all` puts every copy in one all-or-nothing `store.deliver` (the MX answers one
  reply for the whole transaction: fsynced everywhere before its 250, or nothing visible);
  `deliver` writes each user on their own and answers per recipient (LMTP-like: the queue and
  cleanup report or retry each recipient; one user's failure does not fail the others).
- programs: `resolve` also gives the program targets an address reaches; `queue_programs` puts them
  in one queue entry (the same trust-cleaned message with the trace fields; the queue runs them
  through delivery/program.py with Return-Path and Delivered-To on top, `with_head`): never inline.
Does not own: the store's durability (store/), the users file (auth/users.py), remote recipients
(delivery/remote.py), the fields themselves (message/trust.py, message/headers.py), spam verdicts
(policy/, decided before the 250).

Why here and not a new delivery/agent.py: this module already owned resolving local recipients and
the one write into the store; the agent is that, made an object, and the callers keep importing
`mailhaven.delivery.local`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mailhaven.delivery.result import DeliveryResult
from mailhaven.errors import MailError, PermFailure, TempFailure
from mailhaven.message import trust
from mailhaven.message.address import Address
from mailhaven.message.dsn import DsnRequest
from mailhaven.message.headers import return_path
from mailhaven.policy.authresults import header_end
from mailhaven.seams import (
    Directory,
    FilterJob,
    Forwarder,
    MailFilter,
    Program,
    Queue,
    Quota,
    Recipient,
    Store,
)

log = logging.getLogger("mailhaven.delivery")

INBOX = "INBOX"
# Header sections up to this size are rewritten on the event loop; bigger ones in a worker thread
# (DESIGN: big parses run off the loop; the same bound as policy/pipeline.py's).
INLINE_REWRITE_LIMIT = 8 * 1024


def delivered_to(user: str) -> bytes:
    """`Delivered-To: user` (RFC 9228: the address the message was delivered to, after alias
    expansion; CRLF-terminated; UTF-8 for an internationalized user, RFC 6532)."""
    if "\r" in user or "\n" in user:
        raise ValueError("line break in a user address")
    return b"Delivered-To: " + user.encode("utf-8") + b"\r\n"


def unique_users(recipients: Sequence[Recipient]) -> list[str]:
    """The final users of `recipients`, each once, in the order first reached (duplicate
    suppression: one copy per final user per transaction)."""
    return list(dict.fromkeys(u for r in recipients for u in r.users))


@dataclass(frozen=True)
class _Copy:
    """One final user's copy: who reached them, the head written above the shared body
    (Return-Path, Delivered-To) and the folders it goes into."""

    user: str
    recipients: tuple[str, ...]
    head: bytes
    folders: tuple[str, ...]
    flags: Mapping[str, tuple[str, ...]] | None = None  # folder -> initial flags (Sieve imap4flags)
    own: bytes | None = None  # the whole copy, when the filter edited its header (then head is b"")


class LocalDeliveryAgent:
    """The one local delivery agent (see the module doc). `directory()` returns the current user
    directory and `authserv_id()` our authserv-id (both change on reload); `filter` and `quota` are
    the per-user hooks (None: the verdict's folder, no quota); `forwarder` queues the copies for
    other servers (None: a recipient with forward targets fails temporarily)."""

    def __init__(self, store: Store, directory: Callable[[], Directory], authserv_id: Callable[[], str], *,
                 filter: MailFilter | None = None, quota: Quota | None = None,
                 forwarder: Forwarder | None = None) -> None:
        self.store = store
        self._directory = directory
        self._authserv_id = authserv_id
        self.filter = filter
        self.quota = quota
        self.forwarder = forwarder

    # -- alias expansion ---------------------------------------------------------------------------

    def resolve(self, address: str | Address) -> Recipient:
        """`address`, the final users mail to it reaches, the addresses on other servers it is
        forwarded to (all none: unknown or not ours) and the programs it reaches (auth/users.py
        program targets; delivered by the queue)."""
        found = self._directory().targets(address)
        return Recipient(str(address), tuple(found.users), tuple(found.forward),
                         tuple(Program(c, r) for c, r in found.programs))

    # -- programs (delivery/program.py runs them, from the queue) ---------------------------------

    async def program_body(self, message: bytes, *, sender: str, trace: Sequence[bytes] = ()) -> bytes:
        """The message a program gets below its head (`with_head`): as a mailbox copy's body."""
        return await self._body(message, sender, trace)

    async def queue_programs(self, queue: Queue | None, recipients: Sequence[Recipient], message: bytes, *,
                             sender: str, trace: Sequence[bytes] = (), entry_id: str | None = None,
                             dsn: DsnRequest | None = None) -> str | None:
        """Queue one entry for the program targets of `recipients` (each (command, RECIPIENT) once
        per transaction), with the message a mailbox copy gets below its head; durable when this
        returns. None when there are none; TempFailure when the queue is not running. `dsn`: the
        transaction's DSN requests (RFC 3461), by envelope recipient."""
        jobs = program_jobs(recipients)
        if not jobs:
            return None
        if queue is None:
            raise TempFailure("the outbound queue is not running")
        body = await self._body(message, sender, trace)
        return await queue.submit(sender, [], body, source="program", entry_id=entry_id, programs=jobs, dsn=dsn)

    def postmaster(self, domain: str, *, local_only: bool = False) -> Recipient:
        """postmaster@`domain` (RFC 5321 §4.5.1: always accepted): what its alias reaches, local
        users, other servers' addresses (forwarded) and programs alike; with no alias (an old users
        file), or with `local_only` and no local user among its targets, whoever
        Directory.postmaster names (the domain's first user)."""
        address = f"postmaster@{domain}"
        found = self.resolve(address)
        if found.users or (not local_only and (found.forward or found.programs)):
            return found
        directory = self._directory()
        users, _how = directory.postmaster(domain)
        if not users and local_only:
            users, _how = directory.first_user(domain)
        return Recipient(address, tuple(users or ()))

    # -- delivery ----------------------------------------------------------------------------------

    async def deliver(self, recipients: Sequence[Recipient], message: bytes, *, sender: str,
                      trace: Sequence[bytes] = (), folder: str | Mapping[str, str] = INBOX,
                      enforce_quota: bool = True) -> list[DeliveryResult]:
        """Deliver to every final user on their own; one result per recipient, in order. Unknown
        recipients fail permanently (550 5.1.1); a recipient fails (as its user's write or quota
        did) if any of its users failed, and is delivered otherwise."""
        body = await self._body(message, sender, trace)
        copies, failed = await self._plan(recipients, body, sender, folder, enforce_quota=enforce_quota)
        for copy in copies:
            try:
                await self._write([copy], body)
            except Exception as e:  # noqa: BLE001 - reported per recipient (a store failure is temporary)
                if not isinstance(e, MailError):
                    log.exception("local delivery to %s failed", copy.user)
                failed.setdefault(copy.user, e)
        if enforce_quota:
            await self._delivered([c for c in copies if c.user not in failed])
        forward_error: BaseException | None = None
        if any(r.forward for r in recipients):
            try:
                await self._forward([r for r in recipients if r.forward], message, sender, trace, False)
            except Exception as e:  # noqa: BLE001 - reported per recipient
                forward_error = e
        results: list[DeliveryResult] = []
        for r in recipients:
            if not r.users and not r.forward:
                results.append(DeliveryResult.perm(r.address, "no such user here", code=550, enhanced="5.1.1"))
                continue
            error = next((failed[u] for u in r.users if u in failed), None)
            if error is None and r.forward and forward_error is not None:
                error = forward_error
            results.append(DeliveryResult.ok(r.address, "delivered to mailbox") if error is None
                           else DeliveryResult.from_error(r.address, error))
        return results

    async def deliver_all(self, recipients: Sequence[Recipient], message: bytes, *, sender: str,
                          trace: Sequence[bytes] = (), folder: str | Mapping[str, str] = INBOX,
                          spam: bool = False, dsn: DsnRequest | None = None) -> None:
        """Deliver every copy in one all-or-nothing store write, fsynced before this returns, then
        queue the forwarded copy (durable too); raises the first failure (an unknown recipient:
        550 5.1.1; the quota's refusal; what the store or the queue raises). A failure of the
        forward after the local write may give a retry a second local copy, never none (as
        cleanup's order). `spam`: the message was filed as Junk (not forwarded by default). `dsn`:
        the transaction's DSN requests, carried on to the forwarded copy (forward.py)."""
        for r in recipients:
            if not r.users and not r.forward and not r.programs:  # programs: queue_programs
                raise PermFailure(f"no such user: {r.address}", code=550, enhanced="5.1.1")
        local_rcpts = [r for r in recipients if r.users]
        if local_rcpts:
            body = await self._body(message, sender, trace)
            # RFC 5429 §2.1: a Sieve reject can be the SMTP reply only when it answers for everyone
            # (one recipient, one user, and nothing forwarded or piped beside that user's copy)
            refusable = (len(recipients) == 1 and len(recipients[0].users) == 1
                         and not recipients[0].forward and not recipients[0].programs)
            copies, failed = await self._plan(local_rcpts, body, sender, folder, can_refuse=refusable)
            if failed:
                raise next(iter(failed.values()))
            await self._write(copies, body)
            await self._delivered(copies)
        if any(r.forward for r in recipients):
            await self._forward([r for r in recipients if r.forward], message, sender, trace, spam, dsn)

    async def _forward(self, recipients: Sequence[Recipient], message: bytes, sender: str,
                       trace: Sequence[bytes], spam: bool, dsn: DsnRequest | None = None) -> None:
        if self.forwarder is None:
            raise TempFailure("forwarding is not set up here")
        await self.forwarder.forward(recipients, message, sender=sender, trace=trace, spam=spam, dsn=dsn)

    async def _delivered(self, copies: Sequence[_Copy]) -> None:
        """Tell the quota step which users' copies were stored (its 90 % warning)."""
        if self.quota is not None:
            for copy in copies:
                await self.quota.delivered(copy.user)

    async def _body(self, message: bytes, sender: str, trace: Sequence[bytes]) -> bytes:
        """What every copy shares below its head: the trace fields, then the message without the
        fields only we may write (message/trust.py; off the loop for a big header section)."""
        authserv_id = self._authserv_id()
        if header_end(message) <= INLINE_REWRITE_LIMIT:
            data = trust.for_mailbox(message, sender=sender, authserv_id=authserv_id, trace=trace)
        else:
            data = await asyncio.to_thread(trust.for_mailbox, message, sender=sender, authserv_id=authserv_id,
                                           trace=trace)
        rp = return_path(sender)
        assert data.startswith(rp)  # for_mailbox puts it first; each copy's head carries it
        return data[len(rp):]

    async def _plan(self, recipients: Sequence[Recipient], body: bytes, sender: str,
                    folder: str | Mapping[str, str], *, enforce_quota: bool = True, can_refuse: bool = False,
                    ) -> tuple[list[_Copy], dict[str, BaseException]]:
        """One copy per final user (duplicates suppressed), its folders from the verdict and the
        filter, admitted by the quota; and the users refused on the way, with why."""
        rp = return_path(sender)
        copies: list[_Copy] = []
        failed: dict[str, BaseException] = {}
        for user in unique_users(recipients):
            head = rp + delivered_to(user)
            reached = tuple(r.address for r in recipients if user in r.users)
            chosen = folder if isinstance(folder, str) else folder.get(user, INBOX)
            try:
                folders: tuple[str, ...] = (chosen,)
                flags: Mapping[str, tuple[str, ...]] | None = None
                own: bytes | None = None
                if self.filter is not None:
                    job = FilterJob(user=user, recipients=reached, sender=sender, message=head + body, folder=chosen,
                                    can_refuse=can_refuse)
                    filing = await self.filter.file(job)
                    if filing.refusal is not None and can_refuse:  # RFC 5429 §2.1: reject in protocol
                        raise PermFailure(filing.refusal, code=550, enhanced="5.7.1")
                    folders = tuple(dict.fromkeys(filing.folders))
                    flags = filing.flags or None
                    own = filing.message
                if folders and self.quota is not None and enforce_quota:
                    # each folder's copy counts, as in Dovecot's quota (hard links or not)
                    await self.quota.admit(user, (len(head) + (len(body) if own is None else len(own))) * len(folders))
            except MailError as e:
                failed[user] = e
                continue
            if folders:  # none: the filter discarded it (delivered, nothing stored)
                copies.append(_Copy(user, reached, head if own is None else b"", folders, flags, own))
        return copies, failed

    async def _write(self, copies: Sequence[_Copy], body: bytes) -> None:
        """The one call into the store: every copy, all or nothing, durable when it returns."""
        if not copies:
            return
        targets = [(c.user, f) for c in copies for f in c.folders]
        flags = {(c.user, f): c.flags[f] for c in copies if c.flags for f in c.folders if c.flags.get(f)}
        bodies = {c.user: c.own for c in copies if c.own is not None}
        await self.store.deliver(targets, body, heads={c.user: c.head for c in copies}, flags=flags or None,
                                 bodies=bodies or None)


def program_jobs(recipients: Sequence[Recipient]) -> list[tuple[str, str, str]]:
    """(envelope recipient, command, RECIPIENT) for every program `recipients` reach, each
    (command, RECIPIENT) once (duplicate suppression, as for mailboxes)."""
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, str, str]] = []
    for r in recipients:
        for p in r.programs:
            if (p.command, p.recipient) not in seen:
                seen.add((p.command, p.recipient))
                out.append((r.address, p.command, p.recipient))
    return out


def with_head(body: bytes, *, sender: str, recipient: str) -> bytes:
    """A queued program copy (queue_programs' body) with Return-Path and Delivered-To on top."""
    return return_path(sender) + delivered_to(recipient) + body


def agent_of(ctx: object) -> LocalDeliveryAgent:
    """`ctx.agent` (app.py builds it), made on first use for a context built without one (test
    harnesses): over `ctx.store`, the current `ctx.directory` and `ctx.config.authserv_id`."""
    agent = getattr(ctx, "agent", None)
    if not isinstance(agent, LocalDeliveryAgent):
        from mailhaven.delivery.forward import Forwarder

        agent = LocalDeliveryAgent(getattr(ctx, "store"), lambda: getattr(ctx, "directory"),  # noqa: B009
                                   lambda: str(getattr(ctx, "config").authserv_id),  # noqa: B009
                                   forwarder=Forwarder(ctx))  # type: ignore[arg-type]
        setattr(ctx, "agent", agent)  # noqa: B010
    return agent


__all__ = ["LocalDeliveryAgent", "agent_of", "delivered_to", "unique_users", "program_jobs", "with_head", "INBOX"]
