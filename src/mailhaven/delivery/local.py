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
  the Sieve engine's seat; fileinto/keep/discard), then the quota step (seams.Quota; none yet);
- forwarding: a recipient's `forward` targets (aliases to other servers, bounces to our SRS
  addresses) go to the forwarder (seams.Forwarder, delivery/forward.py) after the local copies are
  durable: one queued copy, SRS sender, ARC set; not for a message filed as spam (`spam=True`);
- the write: `deliver_all` puts every copy in one all-or-nothing `store.deliver` (the MX answers one
  reply for the whole transaction: fsynced everywhere before its 250, or nothing visible);
  `deliver` writes each user on their own and answers per recipient (LMTP-like: the queue and
  cleanup report or retry each recipient; one user's failure does not fail the others).
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
from mailhaven.message.headers import return_path
from mailhaven.policy.authresults import header_end
from mailhaven.seams import Directory, FilterJob, Forwarder, MailFilter, Quota, Recipient, Store

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
        """`address`, the final users mail to it reaches and the addresses on other servers it is
        forwarded to (both none: unknown or not ours)."""
        found = self._directory().targets(address)
        if found is None:
            return Recipient(str(address), ())
        return Recipient(str(address), tuple(found[0]), tuple(found[1]))

    def postmaster(self, domain: str) -> Recipient:
        """postmaster@`domain` (RFC 5321 §4.5.1: always accepted): whoever Directory.postmaster
        names (the postmaster alias; in an old users file, the domain's first user)."""
        users, _how = self._directory().postmaster(domain)
        return Recipient(f"postmaster@{domain}", tuple(users or ()))

    # -- delivery ----------------------------------------------------------------------------------

    async def deliver(self, recipients: Sequence[Recipient], message: bytes, *, sender: str,
                      trace: Sequence[bytes] = (), folder: str | Mapping[str, str] = INBOX,
                      ) -> list[DeliveryResult]:
        """Deliver to every final user on their own; one result per recipient, in order. Unknown
        recipients fail permanently (550 5.1.1); a recipient fails (as its user's write or quota
        did) if any of its users failed, and is delivered otherwise."""
        body = await self._body(message, sender, trace)
        copies, failed = await self._plan(recipients, body, sender, folder)
        for copy in copies:
            try:
                await self._write([copy], body)
            except Exception as e:  # noqa: BLE001 - reported per recipient (a store failure is temporary)
                if not isinstance(e, MailError):
                    log.exception("local delivery to %s failed", copy.user)
                failed.setdefault(copy.user, e)
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
                          spam: bool = False) -> None:
        """Deliver every copy in one all-or-nothing store write, fsynced before this returns, then
        queue the forwarded copy (durable too); raises the first failure (an unknown recipient:
        550 5.1.1; the quota's refusal; what the store or the queue raises). A failure of the
        forward after the local write may give a retry a second local copy, never none (as
        cleanup's order). `spam`: the message was filed as Junk (not forwarded by default)."""
        for r in recipients:
            if not r.users and not r.forward:
                raise PermFailure(f"no such user: {r.address}", code=550, enhanced="5.1.1")
        local_rcpts = [r for r in recipients if r.users]
        if local_rcpts:
            body = await self._body(message, sender, trace)
            copies, failed = await self._plan(local_rcpts, body, sender, folder)
            if failed:
                raise next(iter(failed.values()))
            await self._write(copies, body)
        if any(r.forward for r in recipients):
            await self._forward([r for r in recipients if r.forward], message, sender, trace, spam)

    async def _forward(self, recipients: Sequence[Recipient], message: bytes, sender: str,
                       trace: Sequence[bytes], spam: bool) -> None:
        if self.forwarder is None:
            raise TempFailure("forwarding is not set up here")
        await self.forwarder.forward(recipients, message, sender=sender, trace=trace, spam=spam)

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
                    folder: str | Mapping[str, str]) -> tuple[list[_Copy], dict[str, BaseException]]:
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
                if self.filter is not None:
                    job = FilterJob(user=user, recipients=reached, sender=sender, message=head + body, folder=chosen)
                    folders = tuple(dict.fromkeys((await self.filter.file(job)).folders))
                if folders and self.quota is not None:
                    await self.quota.admit(user, len(head) + len(body))
            except MailError as e:
                failed[user] = e
                continue
            if folders:  # none: the filter discarded it (delivered, nothing stored)
                copies.append(_Copy(user, reached, head, folders))
        return copies, failed

    async def _write(self, copies: Sequence[_Copy], body: bytes) -> None:
        """The one call into the store: every copy, all or nothing, durable when it returns."""
        if not copies:
            return
        targets = [(c.user, f) for c in copies for f in c.folders]
        await self.store.deliver(targets, body, heads={c.user: c.head for c in copies})


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


__all__ = ["LocalDeliveryAgent", "agent_of", "delivered_to", "unique_users", "INBOX"]
