"""Quotas: per-user storage and message-count limits (issue 13 item 7).

Owns: `QuotaService`, the one place that decides whether a user may keep more mail: the limits
(auth/users.py Directory.quota_limits: the user's `quota`/`quota_messages` in the users file, else
their domain's default from [domains."x"]), the check before a write (local delivery through the
agent's seams.Quota hook; IMAP APPEND and COPY), the usage report (IMAP GETQUOTA, `mailhaven quota
show`) and the warning sent to the user once when the usage crosses 90 % (WARN_AT) of either limit.
Does not own: counting the usage (store/mailbox.py Account.usage: per-folder totals kept in the
index with the rows, summed per account, plus copies delivered and not yet indexed; never a scan
per delivery), the replies (errors.OverQuota, mapped by smtp/replies.py to 552 5.2.2 at DATA, by
imap/session.py to NO [OVERQUOTA]), delivering the warning (the local delivery agent does).

Semantics, as Dovecot's quota plugin (count backend): a write is refused when the usage after it
would exceed a limit (octets: the messages' sizes as the index records them, RFC822.SIZE; one
message per folder copy); 0 = no limit; a user without limits costs nothing (the store is not
asked). Refusal is temporary (OverQuota, 452 4.2.2): the queue retries, then bounces (Postfix's
behaviour with Dovecot's quota_full_tempfail = yes); the MX refuses for good at DATA (552 5.2.2).
The warning's state (sent, not yet re-armed) is kept per account in the index (key
`quota_warned`), re-armed when the usage is back below 85 % (WARN_RESET), so one message per
crossing, also across restarts.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mailhaven.errors import OverQuota
from mailhaven.seams import Recipient

if TYPE_CHECKING:
    from mailhaven import seams
    from mailhaven.delivery.local import LocalDeliveryAgent

log = logging.getLogger("mailhaven.quota")

WARN_AT = 0.90  # the warning goes out when the usage reaches this fraction of a limit
WARN_RESET = 0.85  # and is sent again only after the usage fell below this one
STATE_KEY = "quota_warned"


class Limits(Protocol):
    """Where the limits come from (auth/users.py Directory)."""

    def quota_limits(self, user: str) -> tuple[int, int]: ...


@dataclass(frozen=True)
class Report:
    """One user's usage and limits (0 = no limit)."""

    user: str
    octets: int
    messages: int
    max_octets: int
    max_messages: int

    @property
    def limited(self) -> bool:
        return bool(self.max_octets or self.max_messages)

    def fraction(self) -> float:
        """The larger of the used fractions of the two limits (0.0 with no limit)."""
        parts = [self.octets / self.max_octets if self.max_octets else 0.0,
                 self.messages / self.max_messages if self.max_messages else 0.0]
        return max(parts)

    def fits(self, octets: int, messages: int = 1) -> bool:
        """Whether `messages` more messages of `octets` in all stay within both limits."""
        return not ((self.max_octets and self.octets + octets > self.max_octets)
                    or (self.max_messages and self.messages + messages > self.max_messages))

    def resources(self) -> list[tuple[str, int, int]]:
        """RFC 9208 §5 resources with a limit: (name, usage, limit); STORAGE in units of 1024
        octets (§5.1, rounded up, as Dovecot), MESSAGE in messages (§5.2)."""
        out: list[tuple[str, int, int]] = []
        if self.max_octets:
            out.append(("STORAGE", -(-self.octets // 1024), self.max_octets // 1024))
        if self.max_messages:
            out.append(("MESSAGE", self.messages, self.max_messages))
        return out


def warning_message(report: Report, *, now: float | None = None) -> bytes:
    """The warning sent to the user: from postmaster@their domain, `Auto-Submitted:
    auto-generated` (RFC 3834 §5, so vacation responders stay silent)."""
    from mailhaven.message.dsn import format_date

    domain = report.user.rpartition("@")[2]
    percent = int(report.fraction() * 100)
    lines = [f"From: Mail system <postmaster@{domain}>", f"To: <{report.user}>",
             f"Subject: Your mailbox is {percent}% full",
             f"Date: {format_date(time.time() if now is None else now)}",
             f"Message-ID: <{uuid.uuid4().hex}.quota@{domain}>",
             "Auto-Submitted: auto-generated", "MIME-Version: 1.0",
             "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "",
             f"Your mailbox {report.user} uses {percent}% of its quota:"]
    if report.max_octets:
        lines.append(f"  storage: {_human(report.octets)} of {_human(report.max_octets)}")
    if report.max_messages:
        lines.append(f"  messages: {report.messages} of {report.max_messages}")
    lines += ["", "When it is full, new mail is refused. Please delete or archive some messages", "(and empty the Trash).", ""]
    return "\r\n".join(lines).encode("utf-8")


def _human(octets: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if octets >= size:
            return f"{octets / size:.1f} {unit}"
    return f"{octets} octets"


class QuotaService:
    """The quota of every user (see the module doc). `directory()` gives the current limits (it
    changes on reload); `agent`, set once the agent exists, delivers the warnings."""

    def __init__(self, store: seams.Store, directory: Callable[[], Limits]) -> None:
        self.store = store
        self._directory = directory
        self.agent: LocalDeliveryAgent | None = None
        self._warned: dict[str, bool] = {}  # the index's STATE_KEY, read once per user

    def limits(self, user: str) -> tuple[int, int]:
        return self._directory().quota_limits(user)

    async def report(self, user: str) -> Report:
        octets, messages = await self.store.account(user).usage()
        max_octets, max_messages = self.limits(user)
        return Report(self.store.account(user).user, octets, messages, max_octets, max_messages)

    async def check(self, user: str, octets: int, messages: int = 1) -> None:
        """Raise OverQuota if `messages` more messages of `octets` in all would not fit."""
        if not any(self.limits(user)):
            return
        report = await self.report(user)
        if report.fraction() < WARN_RESET:  # usage fell since the last warning (expunge): re-arm it
            await self._rearm(report.user)
        if not report.fits(octets, messages):
            raise OverQuota()

    async def admit(self, user: str, size: int) -> None:
        """seams.Quota: the local delivery agent's per-user step."""
        await self.check(user, size)

    async def delivered(self, user: str) -> None:
        """After mail was added for `user`: send the 90 % warning once per crossing."""
        if not any(self.limits(user)):
            return
        try:
            await self._maybe_warn(user)
        except Exception:  # noqa: BLE001 - the mail is stored; a failed warning must not fail it
            log.warning("quota: warning for %s failed", user, exc_info=True)

    async def _is_warned(self, user: str) -> bool:
        warned = self._warned.get(user)
        if warned is None:
            warned = self._warned[user] = await self.store.account(user).get_state(STATE_KEY) == "1"
        return warned

    async def _rearm(self, user: str) -> None:
        if await self._is_warned(user):
            self._warned[user] = False
            await self.store.account(user).set_state(STATE_KEY, None)

    async def _maybe_warn(self, user: str) -> None:
        report = await self.report(user)
        account = self.store.account(user)
        warned = await self._is_warned(account.user)
        fraction = report.fraction()
        if fraction >= WARN_AT and not warned:
            self._warned[account.user] = True
            await account.set_state(STATE_KEY, "1")  # first: a crash after it sends none, never two
            log.info("quota: %s at %d%% of quota, warning sent", account.user, int(fraction * 100))
            if self.agent is not None:
                await self.agent.deliver([Recipient(account.user, (account.user,))], warning_message(report),
                                         sender="", enforce_quota=False)
        elif fraction < WARN_RESET and warned:
            await self._rearm(account.user)


def of(ctx: object) -> QuotaService | None:
    """`ctx.quota` (app.Context builds it), or None for a context built without one."""
    service = getattr(ctx, "quota", None)
    return service if isinstance(service, QuotaService) else None


__all__ = ["QuotaService", "Report", "Limits", "warning_message", "of", "WARN_AT", "WARN_RESET"]
