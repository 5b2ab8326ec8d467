"""Forwarding: the copy of a message that an alias sends to addresses on other servers.

Owns, for the recipients the local delivery agent was given (delivery/local.py calls `forward`
after the local copies are durable):
- the targets: every recipient's `forward` addresses (auth/users.py Directory.targets), each once,
  in ONE queued copy per message (Postfix's virtual alias expansion does the same: one queue file);
- the envelope sender: rewritten with SRS (delivery/srs.py) so SPF at the destination checks our
  domain; the null sender stays null, and a sender in one of our domains is not rewritten (our SPF
  covers it already; postsrsd's exclude domains); without a secret it is left as it is (logged);
- `Delivered-To: <alias address>` on the copy (RFC 9228), read back by `looping` when the copy
  comes home (Postfix local(8): "mail forwarding loop for ...", 554 5.4.6, RFC 3463 X.4.6);
- an ARC set (RFC 8617 §5.1, policy/arc.py) with the alias domain's DKIM key, i=1 on a first hop;
  the copy is not DKIM-signed as the author's domain (it is not ours);
- spam: a message filed as Junk is not forwarded unless `[delivery] forward_spam`;
- bounces to our SRS addresses: `bounce_target` verifies SRS0=/SRS1= addresses at RCPT (a forged or
  expired one is unknown, 550 5.1.1), and the bounce goes to the original sender unchanged (no
  Delivered-To, the null sender stays null).
The copy enters the queue through cleanup.enqueue (the one way in), durable before the caller's 250.
Does not own: alias expansion (auth/users.py), SRS itself (delivery/srs.py), the queue's delivery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from mailhaven import seams
from mailhaven.delivery import srs
from mailhaven.message import headers, trust
from mailhaven.message.address import Address, parse_mailbox
from mailhaven.message.dsn import DsnRequest, RcptDsn, forwarded
from mailhaven.seams import Recipient

log = logging.getLogger("mailhaven.delivery")


def delivered_to_field(address: str) -> bytes:
    if "\r" in address or "\n" in address:
        raise ValueError("line break in an address")
    return b"Delivered-To: " + address.encode("utf-8") + b"\r\n"


def looping(message: bytes, recipients: Sequence[Recipient]) -> str | None:
    """The recipient address or final user that a `Delivered-To` field of `message` already names
    (the message has been here before: a forwarding loop), or None. Compared without case."""
    seen = {v.strip().strip("<>").lower() for v in headers.field_values(message, "Delivered-To")}
    if not seen:
        return None
    for r in recipients:
        for a in (r.address, *r.users):
            if a.lower() in seen:
                return a
    return None


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


class Forwarder:
    """Forwarding over the shared context (`ctx.config`, `ctx.queue`; read per call, so a reload
    applies). The SRS secret is read from its file once per file change, off the loop."""

    def __init__(self, ctx: seams.Context) -> None:
        self.ctx = ctx
        self._secret: tuple[tuple[str, float, str], bytes] | None = None

    async def codec(self) -> srs.Srs | None:
        """SRS with the configured secret and domain, or None when no secret is configured."""
        cfg = self.ctx.config
        d = cfg.delivery
        if not (d.srs_secret_file or d.srs_secret):
            return None
        mtime = (await asyncio.to_thread(Path(d.srs_secret_file).stat)).st_mtime if d.srs_secret_file else 0.0
        key = (d.srs_secret_file, mtime, d.srs_secret)
        if self._secret is None or self._secret[0] != key:
            secret = await asyncio.to_thread(d.secret)
            if not secret:
                return None
            self._secret = (key, secret)
        return srs.Srs(self._secret[1], cfg.srs_domain)

    async def bounce_target(self, rcpt: Address) -> str | None:
        """For a recipient in our SRS domain that looks like SRS0=/SRS1=: where a bounce to it goes
        (the reversed address), "" when it is forged, expired or malformed (550 5.1.1), None when it
        is no SRS address of ours (resolve it as usual)."""
        cfg = self.ctx.config
        if not srs.is_srs(rcpt.local) or rcpt.domain.lower() != cfg.srs_domain:
            return None
        codec = await self.codec()
        if codec is None:
            return ""
        try:
            target = codec.reverse(str(rcpt))
            parse_mailbox(target)
        except ValueError as e:  # SrsError, or a reversed address that is no address
            log.info("refused SRS address %s: %s", rcpt, e)
            return ""
        return target

    async def rewrite(self, sender: str) -> str:
        """The envelope sender of a forwarded copy (see the module doc)."""
        if not sender or self.ctx.config.is_local_domain(_domain(sender)):
            return sender
        codec = await self.codec()
        if codec is None:
            log.warning("forwarding without SRS (no [delivery] srs_secret_file): sender %s kept", sender)
            return sender
        return codec.forward(sender)

    async def forward(self, recipients: Sequence[Recipient], message: bytes, *, sender: str,
                      trace: Sequence[bytes] = (), spam: bool = False, dsn: DsnRequest | None = None) -> list[str]:
        """Queue the forwarded copies of `message` (as received; `trace` is this hop's fields) for
        every recipient's `forward` targets; returns their queue ids ([]: nothing to forward).
        `dsn`: the transaction's DSN requests; each target's becomes message/dsn.forwarded's."""
        from mailhaven import cleanup

        cfg = self.ctx.config
        bounces = [r for r in recipients if r.forward and srs.is_srs(r.address.rpartition("@")[0])
                   and _domain(r.address) == cfg.srs_domain]
        aliases = [r for r in recipients if r.forward and r not in bounces]
        if not bounces and not aliases:
            return []
        if spam and not cfg.delivery.forward_spam:
            log.info("not forwarded to %s: filed as spam ([delivery] forward_spam = false)",
                     ", ".join(t for r in aliases + bounces for t in r.forward))
            return []
        body = trust.remove_forged(message, cfg.authserv_id)
        ids: list[str] = []
        if aliases:
            targets = list(dict.fromkeys(t for r in aliases for t in r.forward))
            names = list(dict.fromkeys(r.address for r in aliases))
            copy = b"".join([*(delivered_to_field(a) for a in names), *trace, body])
            new_sender = await self.rewrite(sender)
            request = None
            if dsn is not None:
                onward: dict[str, RcptDsn] = {}
                for r in aliases:
                    for t in r.forward:
                        onward.setdefault(t, forwarded(dsn.of(r.address), r.address, len(r.users) + len(r.forward)))
                request = DsnRequest(dsn.mail, onward)
            ids.append(await cleanup.enqueue(self.ctx, new_sender, targets, copy, dkim=False, source="forward",
                                             seal=lambda m: self._seal(m, _domain(names[0])), dsn=request))
            log.info("forwarded %s to %s with sender <%s>", ", ".join(names), ", ".join(targets), new_sender)
        if bounces:
            targets = list(dict.fromkeys(t for r in bounces for t in r.forward))
            copy = b"".join([*trace, body])
            ids.append(await cleanup.enqueue(self.ctx, sender, targets, copy, dkim=False, source="srs-bounce"))
            log.info("SRS bounce to %s forwarded with sender <%s>", ", ".join(targets), sender)
        return ids

    async def _seal(self, message: bytes, domain: str) -> bytes:
        """An ARC set with `domain`'s RSA DKIM key (ARC signs with rsa-sha256, RFC 8617); unsealed
        when the domain has no RSA key."""
        from mailhaven import cleanup
        from mailhaven.policy import arc

        dom = self.ctx.config.domains.get(domain)
        if dom is None or not dom.dkim_key:
            return message
        try:
            pem = await asyncio.to_thread(cleanup._read_key, dom.dkim_key)
        except OSError as e:
            log.error("ARC sealing for %s: cannot read %s: %s", domain, dom.dkim_key, e)
            return message
        return await arc.seal(message, domain=domain, selector=dom.dkim_selector, key_pem=pem,
                              authserv_id=self.ctx.config.authserv_id)


__all__ = ["Forwarder", "looping", "delivered_to_field"]
