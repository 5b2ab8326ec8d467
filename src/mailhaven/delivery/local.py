"""Local delivery: recipients in our own domains go into the store (INBOX), durably.

Owns: resolving local recipients to users (auth.users.Directory: users, aliases, catch-all,
sub-addresses), and `into_mailboxes`, the one way into a mailbox on every path (the MX, cleanup for
submission to a local user and for bounces and delay warnings, the queue): it removes the fields
only we may write (forged Authentication-Results with our authserv-id, X-Spam-*, any incoming
Return-Path: message/trust.py), puts `Return-Path: <sender>` on top (RFC 5321 §4.4) and makes one
all-or-nothing `store.deliver` for all targets.
Does not own: the store's durability (store/), remote recipients (delivery/remote.py), the fields
themselves (message/trust.py, message/headers.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from mailhaven.delivery.result import DeliveryResult
from mailhaven.errors import MailError
from mailhaven.message import trust
from mailhaven.policy.authresults import header_end

log = logging.getLogger("mailhaven.delivery")

INBOX = "INBOX"
# Header sections up to this size are rewritten on the event loop; bigger ones in a worker thread
# (DESIGN: big parses run off the loop; the same bound as policy/pipeline.py's).
INLINE_REWRITE_LIMIT = 8 * 1024


async def into_mailboxes(store: Any, targets: Sequence[tuple[str, str]], message: bytes, *, sender: str,
                         authserv_id: str, trace: Sequence[bytes] = ()) -> None:
    """Deliver `message` durably to every (user, folder) target, all or nothing (store.deliver).
    `sender` is the envelope sender ("" for a bounce); `trace` the fields this hop adds below the
    Return-Path (the MX's Received and Authentication-Results). Raises what store.deliver raises."""
    if header_end(message) <= INLINE_REWRITE_LIMIT:
        data = trust.for_mailbox(message, sender=sender, authserv_id=authserv_id, trace=trace)
    else:
        data = await asyncio.to_thread(trust.for_mailbox, message, sender=sender, authserv_id=authserv_id,
                                       trace=trace)
    await store.deliver(targets, data)


def resolve(directory: Any, recipients: Sequence[str]) -> tuple[list[str], list[str]]:
    """(users to deliver to, deduplicated and in order; recipients nobody has)."""
    users: list[str] = []
    unknown: list[str] = []
    for rcpt in recipients:
        found = directory.resolve(rcpt)
        if not found:
            unknown.append(rcpt)
            continue
        for user in found:
            if user not in users:
                users.append(user)
    return users, unknown


async def deliver(store: Any, directory: Any, recipients: Sequence[str], message: bytes, *, sender: str,
                  authserv_id: str) -> list[DeliveryResult]:
    """Deliver to every resolvable recipient at once (into_mailboxes); one result per recipient, in
    order. Unknown recipients fail permanently (550 5.1.1); a store failure is temporary for the rest."""
    results: dict[str, DeliveryResult] = {}
    known: list[str] = []
    users: list[str] = []
    for rcpt in recipients:
        found = directory.resolve(rcpt)
        if not found:
            results[rcpt] = DeliveryResult.perm(rcpt, "no such user here", code=550, enhanced="5.1.1")
            continue
        known.append(rcpt)
        users.extend(u for u in found if u not in users)
    if users:
        try:
            await into_mailboxes(store, [(u, INBOX) for u in users], message, sender=sender,
                                 authserv_id=authserv_id)
        except MailError as e:
            for rcpt in known:
                results[rcpt] = DeliveryResult.from_error(rcpt, e)
        except Exception as e:  # noqa: BLE001 - an unexpected store failure is temporary (STYLE rule 5)
            log.exception("local delivery failed")
            for rcpt in known:
                results[rcpt] = DeliveryResult.from_error(rcpt, e)
        else:
            for rcpt in known:
                results[rcpt] = DeliveryResult.ok(rcpt, "delivered to mailbox")
    return [results[r] for r in recipients]


__all__ = ["deliver", "into_mailboxes", "resolve", "INBOX"]
