"""Local delivery: recipients in our own domains go into the store (INBOX), durably.

Owns: resolving local recipients to users (auth.users.Directory: users, aliases, catch-all,
sub-addresses) and one all-or-nothing `store.deliver` for all of them.
Does not own: the store's durability (store/), remote recipients (delivery/remote.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from mailhaven.delivery.result import DeliveryResult
from mailhaven.errors import MailError

log = logging.getLogger("mailhaven.delivery")

INBOX = "INBOX"


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


async def deliver(store: Any, directory: Any, recipients: Sequence[str], message: bytes) -> list[DeliveryResult]:
    """Deliver to every resolvable recipient at once; one result per recipient, in order.
    Unknown recipients fail permanently (550 5.1.1); a store failure is temporary for the rest."""
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
            await store.deliver([(u, INBOX) for u in users], message)
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


__all__ = ["deliver", "resolve", "INBOX"]
