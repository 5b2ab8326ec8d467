"""delivery/sievereply.py: whatever a script or a sender puts in the texts, the vacation reply and
the rejection notice keep their own header fields (no field injected, no bare CR or LF)."""

from __future__ import annotations

import email
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.delivery.sievereply import rejection_notice, vacation_reply

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)


def names(message: bytes) -> list[str]:
    head = message.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[0].decode() for line in head.split(b"\r\n") if line[:1] not in (b" ", b"\t")]


def crlf_only(message: bytes) -> bool:
    return message.replace(b"\r\n", b"").count(b"\r") == 0 and message.replace(b"\r\n", b"").count(b"\n") == 0


@settings(max_examples=200, deadline=None)
@given(subject=text, reason=text, from_=text, irt=st.none() | text, refs=st.none() | text)
def test_vacation_reply_fields_cannot_be_injected(subject: str, reason: str, from_: str, irt: str | None,
                                                  refs: str | None) -> None:
    msg = vacation_reply(from_=from_, to="s@remote.test", subject=subject, reason=reason, mime=False,
                         in_reply_to=irt, references=refs)
    expected = ["From", "To", "Subject"] + (["In-Reply-To", "References"] if irt else []) + [
        "Auto-Submitted", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"]
    assert names(msg) == expected
    assert crlf_only(msg)
    parsed = email.message_from_bytes(msg, policy=email.policy.default)
    assert str(parsed["Auto-Submitted"]).startswith("auto-replied")


@settings(max_examples=200, deadline=None)
@given(reason=text, user=text, to=text, original=st.binary(max_size=400))
def test_rejection_notice_fields_cannot_be_injected(reason: str, user: str, to: str, original: bytes) -> None:
    msg = rejection_notice(hostname="mail.example.test", user=user, to=to, reason=reason, original=original,
                           domain="example.test")
    assert names(msg) == ["From", "To", "Subject", "Auto-Submitted", "MIME-Version", "Content-Type"]
    head = msg.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
