"""Sending a delivery report (RFC 3464) to a sender: built by message/dsn.py, queued through
cleanup.enqueue from the null sender (RFC 5321 §4.5.5: a report is never reported on).

Owns: the report's Message-ID and MIME boundary, the "bounce" metric and the log line; the success
notices of recipients delivered at SMTP time (the MX's and submission's local copies) that asked
for one with NOTIFY=SUCCESS (RFC 3461 §4.1: Action "delivered").
Does not own: when a report is due (queue/manager.py for queued recipients), its content
(message/dsn.py).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence

from mailhaven import metrics, seams
from mailhaven.errors import MailError
from mailhaven.message import dsn

log = logging.getLogger("mailhaven.queue")


async def queue_report(ctx: seams.Context, *, about: str, to: str, reports: Sequence[dsn.RecipientReport],
                       original: bytes, arrival: float, now: float | None = None,
                       request: dsn.MailDsn = dsn.NO_MAIL_DSN, will_retry_until: float | None = None) -> str:
    """Queue one report to `to` about the message `about` (its queue id); returns the report's.
    Raises MailError when it cannot be queued (TempFailure: try again later)."""
    from mailhaven import cleanup  # cleanup imports the queue package, which imports this module

    hostname = ctx.config.hostname
    action = dsn.report_action(reports)
    data = dsn.build_dsn(hostname=hostname, to=to, reports=reports, original=original, arrival=arrival,
                         now=time.time() if now is None else now, message_id=f"<{about}.{secrets.token_hex(4)}.dsn@{hostname}>",
                         boundary=f"{about}.{secrets.token_hex(6)}/{hostname}",
                         will_retry_until=will_retry_until if action == "delayed" else None, request=request)
    report_id = await cleanup.enqueue(ctx, "", [to], data, source="dsn")
    if action == "failed":
        metrics.of(ctx).message_bounced()  # one per bounce (DSN) queued
    notice = {"failed": "bounce", "delayed": "delay"}.get(action, "success")
    log.info("queue: %s %s notice to <%s> queued as %s", about, notice, to, report_id)
    return report_id


async def report_delivered(ctx: seams.Context, *, about: str, sender: str, request: dsn.DsnRequest,
                           recipients: Sequence[seams.Recipient], original: bytes, arrival: float) -> None:
    """After the local copies of a transaction are stored and its forwarded copy queued (before its
    250): a success notice for the recipients whose RCPT said NOTIFY=SUCCESS: "delivered" for an
    address that reached only local mailboxes, "expanded" for one an alias sent to several places
    of which some on other servers (RFC 3461 §6.2.7: their copies carry NOTIFY without SUCCESS,
    dsn.forwarded); an address forwarded to one other server passed the request on and gets
    nothing here. Nothing for the null sender. A notice that cannot be queued is logged, not
    raised: the copies are stored, and a refusal now would make the client send them again."""
    owed: dict[str, dsn.DsnAction] = {}
    for r in recipients:
        if not request.of(r.address).wants("SUCCESS") or r.address in owed:
            continue
        if r.forward and len(r.users) + len(r.forward) > 1:
            owed[r.address] = "expanded"
        elif r.users and not r.forward:
            owed[r.address] = "delivered"
    if not sender or not owed:
        return
    reports = [dsn.RecipientReport(a, action, "2.0.0",
                                   diagnostic="250 2.0.0 " + ("delivered to mailbox" if action == "delivered"
                                                              else "forwarded to several addresses"),
                                   original_recipient=request.of(a).orcpt or "") for a, action in owed.items()]
    try:
        await queue_report(ctx, about=about, to=sender, reports=reports, original=original, arrival=arrival,
                           request=request.mail)
    except MailError as e:
        log.warning("queue: %s success notice to <%s> not queued: %s", about, sender, e.text)


__all__ = ["queue_report", "report_delivered"]
