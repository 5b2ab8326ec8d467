"""message/dsn.py: RFC 3464 reports, checked by parsing them back with the stdlib email parser."""

from __future__ import annotations

import email
import email.policy
from email.message import Message

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.message.dsn import RecipientReport, build_dsn, header_section

T0 = 1_700_000_000.0
ORIGINAL = (b"From: Alice <alice@example.test>\r\nTo: bob@b.test\r\nSubject: lunch\r\n"
            b"Message-ID: <1@example.test>\r\n\r\nsecret body text\r\n")


def _build(reports: list[RecipientReport], original: bytes = ORIGINAL, **kw: object) -> bytes:
    args: dict[str, object] = {"hostname": "mail.example.test", "to": "alice@example.test", "reports": reports,
                               "original": original, "arrival": T0, "now": T0 + 60,
                               "message_id": "<dsn1@mail.example.test>", "boundary": "b0undary"}
    args.update(kw)
    return build_dsn(**args)  # type: ignore[arg-type]


def _parts(data: bytes) -> tuple[Message, list[Message]]:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    return msg, list(msg.get_payload())  # type: ignore[arg-type]


def _status_groups(part: Message) -> list[Message]:
    # email parses message/delivery-status into a list of header blocks: per-message, then recipients.
    return list(part.get_payload())  # type: ignore[arg-type]


def _raw_status_groups(data: bytes) -> list[Message]:
    """The status part's field groups parsed from the raw bytes (works for the global type too)."""
    marker = b"Content-Description: Delivery report\r\n\r\n"
    start = data.index(marker) + len(marker)
    end = data.index(b"\r\n--", start)
    blocks = data[start:end].decode("utf-8").split("\r\n\r\n")
    return [email.message_from_string(b + "\r\n", policy=email.policy.compat32) for b in blocks]


def test_bounce_is_a_multipart_report_with_three_parts() -> None:
    data = _build([RecipientReport("bob@b.test", "failed", "5.1.1", "550 5.1.1 no such user", "mx.b.test",
                                   T0 + 30)])
    msg, parts = _parts(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.test>"
    assert msg["To"] == "<alice@example.test>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status",
                                                     "text/rfc822-headers"]
    per_msg, rcpt = _status_groups(parts[1])
    assert per_msg["Reporting-MTA"] == "dns; mail.example.test"
    assert per_msg["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert rcpt["Final-Recipient"] == "rfc822; bob@b.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.b.test"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert "bob@b.test" in parts[0].get_payload() and "no such user" in parts[0].get_payload()


def test_only_the_original_headers_are_returned() -> None:
    data = _build([RecipientReport("bob@b.test", "failed", "5.0.0")])
    _, parts = _parts(data)
    returned = parts[2].get_payload()
    assert "Subject: lunch" in returned and "Message-ID: <1@example.test>" in returned
    assert b"secret body text" not in data


def test_delay_warning_says_delayed_and_until_when() -> None:
    data = _build([RecipientReport("bob@b.test", "delayed", "4.4.1", "451 4.4.1 connection refused")],
                  will_retry_until=T0 + 5 * 86400)
    msg, parts = _parts(data)
    assert msg["Subject"].startswith("Delayed Mail")
    _, rcpt = _status_groups(parts[1])
    assert rcpt["Action"] == "delayed" and rcpt["Status"] == "4.4.1"
    assert rcpt["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"


def test_several_recipients_get_one_block_each() -> None:
    data = _build([RecipientReport("a@b.test", "failed", "5.1.1"), RecipientReport("c@b.test", "failed", "5.2.2")])
    _, parts = _parts(data)
    groups = _status_groups(parts[1])
    assert [g["Final-Recipient"] for g in groups[1:]] == ["rfc822; a@b.test", "rfc822; c@b.test"]


def test_hostile_diagnostic_cannot_add_fields() -> None:
    evil = "550 no\r\nAction: delivered\r\n\r\nFinal-Recipient: rfc822; x@evil"
    data = _build([RecipientReport("bob@b.test", "failed", "5.0.0", evil)])
    _, parts = _parts(data)
    groups = _status_groups(parts[1])
    assert len(groups) == 2 and groups[1].get_all("Action") == ["failed"]


def test_utf8_recipient_uses_the_global_delivery_status_type() -> None:
    data = _build([RecipientReport("jöran@b.test", "failed", "5.1.1")])
    _, parts = _parts(data)
    assert parts[1].get_content_type() == "message/global-delivery-status"  # RFC 6533 §6.1
    assert "utf-8; jöran@b.test" in data.decode("utf-8")


def test_header_section_is_bounded_at_a_line() -> None:
    big = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"x" * 60) for i in range(3000)) + b"\r\nbody\r\n"
    out = header_section(big, limit=10_000)
    assert len(out) <= 10_000 and out.endswith(b"\r\n") and out.startswith(b"X-Filler-00000")


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)


@settings(max_examples=150, deadline=None)
@given(rcpts=st.lists(st.tuples(_text, _text, _text), min_size=1, max_size=4), original=st.binary(max_size=600),
       boundary=_text)
def test_any_input_gives_a_parseable_report_with_one_block_per_recipient(
        rcpts: list[tuple[str, str, str]], original: bytes, boundary: str) -> None:
    reports = [RecipientReport(a, "failed", "5.0.0", diagnostic=d, remote_mta=m) for a, d, m in rcpts]
    data = _build(reports, original=original, boundary=boundary)
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))  # RFC 5322 §2.1.1
    msg, parts = _parts(data)
    assert msg.get_content_type() == "multipart/report"
    assert len(parts) == 3
    groups = _raw_status_groups(data)
    assert len(groups) == 1 + len(reports)
    assert all(g.keys()[:2] == ["Final-Recipient", "Action"] for g in groups[1:])
    assert all(g.get_all("Action") == ["failed"] for g in groups[1:])


# --- what the sender asked (RFC 3461) -------------------------------------------------------------


def test_ret_full_returns_the_message_in_a_failure_report_only_and_within_the_limit() -> None:
    from mailhaven.message.dsn import MAX_RETURNED_FULL, MailDsn

    failed = [RecipientReport("bob@b.test", "failed", "5.1.1", diagnostic="550 5.1.1 no")]
    full = MailDsn(ret="FULL", envid="id-1")
    _, parts = _parts(_build(failed, request=full))
    assert parts[2].get_content_type() == "message/rfc822"
    assert b"secret body text" in _build(failed, request=full)
    huge = ORIGINAL + b"x" * MAX_RETURNED_FULL
    assert _parts(_build(failed, huge, request=full))[1][2].get_content_type() == "text/rfc822-headers"
    delayed = [RecipientReport("bob@b.test", "delayed", "4.4.1")]
    assert b"secret body text" not in _build(delayed, request=full)  # §4.3: failures only


def test_envid_and_orcpt_come_back_and_success_names_itself() -> None:
    from mailhaven.message.dsn import MailDsn

    reports = [RecipientReport("bob@b.test", "delivered", "2.0.0", original_recipient="rfc822;Bob@B.test"),
               RecipientReport("carol@c.test", "relayed", "2.0.0")]
    data = _build(reports, request=MailDsn(envid="QQ314159"))
    msg, parts = _parts(data)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    per_message, bob, carol = _raw_status_groups(data)
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert bob["Original-Recipient"] == "rfc822;Bob@B.test" and bob["Action"] == "delivered"
    assert carol["Original-Recipient"] is None and carol["Action"] == "relayed"
    assert b"secret body text" not in data
