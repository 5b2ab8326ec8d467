"""cleanup: the single way into the queue (STYLE rule 12), for submission, bounces and forwards.

Owns, for every message that enters: CRLF line ends and the size limit, the header fields a message
must have (Date and Message-ID, RFC 5322 §3.6; added with config.hostname when missing), DKIM
signing for our sending domain (rsa-sha256, plus ed25519-sha256 as a second signature when an
ed25519 key is configured, RFC 8463 §3; off the event loop), then the split: local recipients go
straight into the store through the local delivery agent (delivery/local.py: alias expansion,
Return-Path and Delivered-To on top, forged trust fields removed; all or nothing, fsynced),
remote ones into the spool (fsynced), and the queue manager is woken; program targets of local
aliases go into the spool too (their own entry; the queue runs them, delivery/program.py). It returns only when everything is durable, so the caller may answer 250 (STYLE rule 11).
Does not own: who may send (smtp/submission.py checks AUTH and owned senders), delivery, retries.

    queue_id = await cleanup.enqueue(ctx, "alice@example.org", ["bob@example.net"], data)

`ctx` is the shared context (seams.Context: `.config`, `.agent` for local recipients, `.queue`
the running queue.manager.QueueManager). Raises MailError subclasses only:
PermFailure 552 5.3.4 (too big), UnknownUser 550 5.1.1 (a local recipient nobody has),
TempFailure / StoreError 451 (disk, or the queue is not running): nothing was accepted then.
Order with mixed recipients: local delivery first, then the spool; if the spool fails the caller
gets 451 and a retry may deliver the local copy twice (never zero times).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from mailhaven import seams
from mailhaven.delivery import local
from mailhaven.delivery.reports import report_delivered
from mailhaven.errors import PermFailure, TempFailure, UnknownUser
from mailhaven.message.dsn import DsnRequest, format_date
from mailhaven.queue.spool import new_id

log = logging.getLogger("mailhaven.cleanup")

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")  # RFC 5322 §3.6.8 ftext
_keys: dict[str, tuple[float, bytes]] = {}
FORWARDED = ("forward", "srs-bounce")  # the sources delivery/forward.py enqueues with  # DKIM key file -> (mtime, PEM), re-read when it changes


def to_crlf(data: bytes) -> bytes:
    """Bare LF and bare CR become CRLF (RFC 5322 §2.3), and the message ends with CRLF."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data.replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def header_block(message: bytes) -> bytes:
    """The header section (CRLF message) without the empty line; all of it if there is no body."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[:end + 2]


def header_names(message: bytes) -> set[str]:
    names: set[str] = set()
    for line in header_block(message).split(b"\r\n"):
        m = _FIELD_NAME.match(line)
        if m:
            names.add(m.group(1).decode("ascii").lower())
    return names


def header_value(message: bytes, name: str) -> str | None:
    """First field `name` unfolded, or None."""
    lines = header_block(message).split(b"\r\n")
    want = name.lower().encode()
    for i, line in enumerate(lines):
        m = _FIELD_NAME.match(line)
        if m and m.group(1).lower() == want:
            value = line[m.end():]
            for cont in lines[i + 1:]:
                if cont[:1] in (b" ", b"\t"):
                    value += cont
                else:
                    break
            return value.decode("utf-8", "replace").strip()
    return None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".") if "@" in address else ""


def add_missing_headers(message: bytes, hostname: str, now: float) -> bytes:
    """Prepend Date and Message-ID when absent (RFC 5322 §3.6: Date is required, Message-ID SHOULD
    be present; RFC 6409 §8.3, §8.4: a submission server may add them)."""
    present = header_names(message)
    extra = b""
    if "date" not in present:
        extra += f"Date: {format_date(now)}\r\n".encode()
    if "message-id" not in present:
        extra += f"Message-ID: <{new_id(now)}.{os.getpid()}@{hostname}>\r\n".encode()
    return extra + message


def signing_domain(config: Any, sender: str, message: bytes) -> str | None:
    """The From header's domain when it is ours and has a DKIM key (DMARC aligns on it), else the
    envelope sender's domain under the same condition, else None."""
    candidates: list[str] = []
    from_value = header_value(message, "from")
    if from_value:
        for _, addr in email.utils.getaddresses([from_value]):
            if "@" in addr:
                candidates.append(domain_of(addr))
                break
    if sender:
        candidates.append(domain_of(sender))
    for d in candidates:
        dom = config.domains.get(d)
        if dom is not None and (dom.dkim_key or dom.dkim_ed25519_key):
            return d
    return None


def _read_key(path: str) -> bytes:
    p = Path(path)
    mtime = p.stat().st_mtime
    cached = _keys.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    data = p.read_bytes()
    _keys[path] = (mtime, data)
    return data


async def dkim_sign(config: Any, domain: str, message: bytes) -> bytes:
    """The message with our DKIM-Signature field(s) prepended (RSA first, then ed25519 above it)."""
    from mailhaven.policy import dkim

    dom = config.domains[domain]
    jobs: list[tuple[str, str, str]] = []
    if dom.dkim_key:
        jobs.append((dom.dkim_key, dom.dkim_selector, "rsa-sha256"))
    if dom.dkim_ed25519_key:
        jobs.append((dom.dkim_ed25519_key, dom.dkim_ed25519_selector, "ed25519-sha256"))  # RFC 8463
    headers = b""
    for path, selector, algorithm in jobs:
        try:
            pem = await asyncio.to_thread(_read_key, path)
            headers = await dkim.sign(message, domain, selector, pem, algorithm) + headers  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - a broken key must not lose mail; the log says why
            log.error("DKIM signing for %s with %s failed: %s", domain, path, e)
    return headers + message


async def enqueue(ctx: seams.Context, sender: str, recipients: Sequence[str], message: bytes, *, dkim: bool = True,
                  source: str = "submission", queue_id: str | None = None,
                  seal: Callable[[bytes], Awaitable[bytes]] | None = None, dsn: DsnRequest | None = None) -> str:
    """Accept a message durably for every recipient; returns its queue id (see module doc):
    `queue_id` when given (a caller that already wrote it into a Received field), else a new one.
    `seal`: the last change to the message (delivery/forward.py's ARC set, after Date/Message-ID).
    `dsn`: what the sender asked to be told (RFC 3461): success notices for the local copies that
    asked for one are queued here, the queue honours the rest."""
    config = ctx.config
    rcpts = list(dict.fromkeys(recipients))
    if not rcpts:
        raise PermFailure("no recipients", code=554, enhanced="5.5.1")
    message = to_crlf(message)
    # A forwarded copy was accepted within the limit already (our trace fields and the ARC set make
    # it a little bigger): refusing it now would answer no after the local copies were written.
    if source not in FORWARDED and len(message) > config.smtp.max_message_size:
        raise PermFailure("message too big", code=552, enhanced="5.3.4")  # RFC 1870 §6
    now = time.time()
    message = add_missing_headers(message, config.hostname, now)
    if dkim:
        domain = signing_domain(config, sender, message)
        if domain is not None:
            message = await dkim_sign(config, domain, message)
    if seal is not None:
        message = await seal(message)
    local_rcpts = [r for r in rcpts if config.is_local_domain(domain_of(r))]
    remote_rcpts = [r for r in rcpts if r not in local_rcpts]
    agent = local.agent_of(ctx)
    resolved = [agent.resolve(r) for r in local_rcpts]
    unknown = [r.address for r in resolved if not r.users and not r.forward and not r.programs]
    if unknown:
        raise UnknownUser(f"no such user: {unknown[0]}")
    queue = ctx.queue
    programs = [r for r in resolved if r.programs]
    if (remote_rcpts or programs) and queue is None:
        raise TempFailure("the outbound queue is not running")
    if resolved:
        # The one way into a mailbox (forged trust fields out, Return-Path and Delivered-To on top,
        # each user once), all or nothing like the one reply it answers: the sender is "" for
        # bounces and delay warnings, so they carry Return-Path: <> (RFC 5321 §4.4, §4.5.5).
        await agent.deliver_all(resolved, message, sender=sender, dsn=dsn)
    queue_id = queue_id or new_id(now)
    if resolved and dsn is not None:
        await report_delivered(ctx, about=queue_id, sender=sender, request=dsn, original=message, arrival=now,
                               recipients=resolved)
    if programs:
        # Program targets run from the queue (delivery/program.py), in their own entry: the message
        # as a mailbox gets it, not the one sent out.
        await agent.queue_programs(queue, programs, message, sender=sender,
                                   entry_id=None if remote_rcpts else queue_id, dsn=dsn)
    if remote_rcpts and queue is not None:
        await queue.submit(sender, remote_rcpts, message, source=source, entry_id=queue_id, dsn=dsn)
    log.info("accepted %s from <%s> (%s): %d local, %d remote recipient(s), %d octets", queue_id, sender,
             source, len(local_rcpts), len(remote_rcpts), len(message))
    return queue_id


__all__ = ["enqueue", "to_crlf", "add_missing_headers", "signing_domain", "dkim_sign", "header_value"]
