"""Helpers for the SIGKILL-under-load tests (issue 15 item 5: test_workers_kill.py kills worker
processes of one node, test_two_nodes.py a whole node behind HAProxy): senders that each send
messages with their own Message-ID as fast as they can, recording which got their 250, and the
check afterwards: every acknowledged message is in the mailbox exactly once and whole, nothing is
there twice. No tests live here."""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Callable
from email import message_from_bytes
from pathlib import Path

Send = Callable[[str, bytes], None]  # (tag, message): returns once acknowledged, raises if not


def body(tag: str, to: str, sender: str = "someone@example.net") -> bytes:
    """A message tagged `tag` (its Message-ID), ending in a line the check looks for."""
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: load {tag}\r\n"
            f"Message-ID: <{tag}@load.example.net>\r\n\r\n" + "line of the body\r\n" * 40 + "the end\r\n").encode()


def sender_loop(send: Send, n: int, to: str, stop: threading.Event, acked: list[str], tried: list[str],
                sender: str = "someone@example.net") -> None:
    """Sender n: send until `stop`; a message that raised (killed mid-transaction) is not acknowledged."""
    i = 0
    while not stop.is_set():
        tag = f"c{n}m{i}"
        i += 1
        tried.append(tag)
        try:
            send(tag, body(tag, to, sender))
        except (OSError, smtplib.SMTPException):
            continue
        acked.append(tag)


def start_senders(send: Send, count: int, to: str, sender: str = "someone@example.net"
                  ) -> tuple[threading.Event, list[threading.Thread], list[str], list[str]]:
    """`count` sender threads (messages From: `sender`): (stop, threads, acked, tried)."""
    stop = threading.Event()
    acked: list[str] = []
    tried: list[str] = []
    threads = [threading.Thread(target=sender_loop, args=(send, n, to, stop, acked, tried, sender), daemon=True)
               for n in range(count)]
    for t in threads:
        t.start()
    return stop, threads, acked, tried


def stop_senders(stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for t in threads:
        t.join(30)


def stored(mail_root: Path, user: str) -> list[bytes]:
    """Every message in `user`'s INBOX (new/ and cur/)."""
    local, _, domain = user.partition("@")
    base = mail_root / domain / local
    return [p.read_bytes() for sub in ("new", "cur") if (base / sub).is_dir() for p in (base / sub).iterdir()]


def check_exactly_once(messages: list[bytes], acked: list[str], tried: list[str], *, least: int) -> None:
    """Nothing acknowledged lost, nothing stored twice, nothing stored cut short; at least `least`
    acknowledged (real load on both sides of the kills)."""
    print(f"\n{len(tried)} tried, {len(acked)} acknowledged, {len(messages)} stored")
    ids = [str(message_from_bytes(m)["Message-ID"]).strip("<>").split("@")[0] for m in messages]
    assert len(acked) >= least, (len(acked), len(tried))
    assert len(ids) == len(set(ids)), "a message was stored twice"
    assert not set(acked) - set(ids), f"acknowledged but lost: {sorted(set(acked) - set(ids))}"
    assert set(ids) <= set(tried)
    assert all(m.endswith(b"the end\r\n") for m in messages), "a stored message is not whole"


def smtp_send(port: int, sender: str, rcpt: str, host: str = "127.0.0.1") -> Send:
    """A Send over plain SMTP (the MX) to host:port."""
    def send(tag: str, data: bytes) -> None:
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.sendmail(sender, [rcpt], data)
    return send


__all__ = ["Send", "body", "sender_loop", "start_senders", "stop_senders", "stored", "check_exactly_once",
           "smtp_send"]
