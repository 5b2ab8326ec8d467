"""The pure parts of submission, without sockets: the From: reader (author_addresses), the MAIL
AUTH= parameter filter, the redacted Received field. Table tests plus hypothesis."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailhaven.message.headers import received_submission
from mailhaven.smtp.server import _XTEXT, drop_auth_parameter
from mailhaven.smtp.submission import MAX_AUTHOR_FIELD, author_addresses

LIMIT = 1024 * 1024


@pytest.mark.parametrize("field,expected", [
    ("alice@example.test", ["alice@example.test"]),
    ("Alice <alice@example.test>", ["alice@example.test"]),
    ('"Bob, the boss" <alice@example.test>', ["alice@example.test"]),
    ("alice@example.test (Alice)", ["alice@example.test"]),
    ("a@x.test, b@y.test", ["a@x.test", "b@y.test"]),
    ("Team: a@x.test, b@y.test;", ["a@x.test", "b@y.test"]),
    # Two readings of one odd field: every address either parser sees must be owned.
    ('"alice@example.test" <bob@example.test>', ["bob@example.test"]),
    ("alice@example.test <bob@example.test>", None),
    ("Alice", None),
    ("undisclosed-recipients:;", None),
    ("", None),
])
def test_author_addresses_table(field: str, expected: list[str] | None) -> None:
    got = author_addresses(f"From: {field}\r\nSubject: x\r\n\r\nbody\r\n".encode(), LIMIT)
    if expected is None:
        assert got is None or "bob@example.test" in got  # refused, or the foreign address is seen
    else:
        assert got == expected


def test_two_from_fields_or_none_are_refused() -> None:
    assert author_addresses(b"From: a@x.test\r\nFrom: a@x.test\r\n\r\n", LIMIT) is None
    assert author_addresses(b"Subject: x\r\n\r\nFrom: a@x.test\r\n", LIMIT) is None  # in the body: not a field


def test_from_field_over_the_limit_is_refused() -> None:
    long = "A" * MAX_AUTHOR_FIELD + " <a@x.test>"
    assert author_addresses(f"From: {long}\r\n\r\n".encode(), LIMIT) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_author_addresses_never_raises_on_any_field(value: bytes) -> None:
    out = author_addresses(b"From: " + value.replace(b"\n", b" ") + b"\r\n\r\nbody\r\n", LIMIT)
    assert out is None or (out and all("@" in a for a in out))


_ADDR = st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.test", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(addrs=st.lists(_ADDR, min_size=1, max_size=5),
       names=st.lists(st.text(alphabet="abc XYZ.", max_size=10), min_size=5, max_size=5))
def test_author_addresses_finds_every_mailbox_of_a_plain_list(addrs: list[str], names: list[str]) -> None:
    field = ", ".join(f'"{n}" <{a}>' if n.strip() else a for n, a in zip(names, addrs, strict=False))
    out = author_addresses(f"From: {field}\r\n\r\n".encode(), LIMIT)
    assert out == list(dict.fromkeys(addrs))


@pytest.mark.parametrize("arg,expected", [
    ("FROM:<a@b.test> AUTH=<>", "FROM:<a@b.test>"),
    ("FROM:<a@b.test> SIZE=10 AUTH=a+40b.test BODY=8BITMIME", "FROM:<a@b.test> SIZE=10 BODY=8BITMIME"),
    ("FROM:<a@b.test> auth=<>", "FROM:<a@b.test>"),
    ("FROM:<a@b.test> AUTH=a+4", "FROM:<a@b.test> AUTH=a+4"),  # bad xtext: left for aiosmtpd to refuse
    ("FROM:<a@b.test> AUTH=a=b", "FROM:<a@b.test> AUTH=a=b"),
    ("FROM:<a@b.test", "FROM:<a@b.test"),  # unparsable: unchanged (hooks.py answers it)
    ("nothing", "nothing"),
])
def test_drop_auth_parameter_table(arg: str, expected: str) -> None:
    assert drop_auth_parameter(arg) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
@example(": 0")  # nothing to drop: returned as sent, spaces included
def test_drop_auth_parameter_never_raises_and_only_removes(arg: str) -> None:
    out = drop_auth_parameter(arg)
    if out != arg:
        assert out.split(":", 1)[0] == arg.split(":", 1)[0]
        assert len(out) < len(arg)
        assert all(t in arg for t in out.split())  # nothing new, only removals
        assert not any(t.upper().startswith("AUTH=") and (t[5:] == "<>" or _XTEXT.match(t[5:]))
                       for t in out.split()[1:])


def test_redacted_received_names_no_client_and_keeps_rfc5321_shape() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    field = received_submission(helo="laptop.home", ip="192.0.2.7", by="mail.example.test", protocol="ESMTPSA",
                                queue_id="ABC", when=when, tls="TLSv1.3 TLS_AES_128_GCM_SHA256").decode()
    assert field.startswith("Received: from client.invalid (address hidden)\r\n")
    assert "192.0.2.7" not in field and "laptop" not in field
    assert "\tby mail.example.test (Mailhaven) with ESMTPSA id ABC;\r\n\tFri, 02 Jan 2026 03:04:05 +0000\r\n" in field
    plain = received_submission(helo="laptop.home", ip="192.0.2.7", by="mail.example.test", protocol="ESMTPSA",
                                queue_id="ABC", when=when, redact=False).decode()
    assert plain.startswith("Received: from laptop.home ([192.0.2.7])")
