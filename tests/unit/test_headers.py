"""message/headers.py: header-section bounds, field lookup, prepending, Received and Return-Path."""

from __future__ import annotations

import datetime
import email.parser
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.message import headers as H

MSG = b"From: a@x.test\r\nSubject: hi\r\n\tthere\r\nTo: b@y.test\r\n\r\nbody\r\nNot-A: header\r\n"
WHEN = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


# --- bounds --------------------------------------------------------------------------------------


def test_header_section_end_is_the_blank_line() -> None:
    assert H.header_section_end(MSG) == MSG.index(b"\r\n\r\n") + 2
    assert H.header_section_end(b"A: b\nC: d\n\nbody") == 10  # bare LF too
    assert H.header_section_end(b"A: b\r\n") == 6  # no body, no blank line
    assert H.header_section_end(b"\r\nbody") == 0  # no header at all


def test_check_counts_fields_not_continuation_lines() -> None:
    assert H.check_header_section(MSG, 3, 10_000) is None
    assert H.check_header_section(MSG, 2, 10_000) == "count"


def test_check_measures_the_header_section_with_line_breaks() -> None:
    size = H.header_section_end(MSG)
    assert H.check_header_section(MSG, 100, size) is None
    assert H.check_header_section(MSG, 100, size - 1) == "size"


def test_check_on_a_message_without_blank_line_measures_all_of_it() -> None:
    data = b"X: " + b"y" * 5000
    assert H.check_header_section(data, 10, 5003) is None
    assert H.check_header_section(data, 10, 5002) == "size"


def test_body_lines_are_not_counted() -> None:
    body = b"".join(b"H%d: v\r\n" % i for i in range(1000))
    assert H.check_header_section(b"A: b\r\n\r\n" + body, 1, 100) is None


@given(st.binary(max_size=3000), st.integers(1, 50), st.integers(1, 2000))
def test_check_never_raises_and_agrees_with_a_naive_count(data: bytes, max_count: int, max_size: int) -> None:
    result = H.check_header_section(data, max_count, max_size)
    section = data[:H.header_section_end(data)]
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in section.split(b"\n")]
    fields = 0
    for i, ln in enumerate(lines):
        if not ln:
            continue
        if ln[:1] in (b" ", b"\t") and i > 0 and fields:
            continue
        fields += 1
    if len(section) > max_size:
        assert result == "size"
    elif fields > max_count:
        assert result == "count"
    else:
        assert result is None


# --- field lookup --------------------------------------------------------------------------------


def test_field_value_unfolds_and_ignores_case_and_body() -> None:
    assert H.field_value(MSG, "subject") == "hi there"
    assert H.field_value(MSG, "SUBJECT") == "hi there"
    assert H.field_value(MSG, "Not-A") is None
    assert H.field_value(MSG, "Message-ID") is None
    assert H.field_value(b"Message-ID:   <1@x>  \r\n\r\n", "Message-ID") == "<1@x>"


@given(st.binary(max_size=2000), st.sampled_from(["Subject", "Message-ID", "From", "x"]))
def test_field_value_never_raises(data: bytes, name: str) -> None:
    value = H.field_value(data, name)
    assert value is None or isinstance(value, str)


# --- prepend -------------------------------------------------------------------------------------


def test_prepend_puts_fields_first_and_keeps_the_message() -> None:
    out = H.prepend([b"A: 1\r\n", b"B: 2\r\n\t2b\r\n"], MSG)
    assert out == b"A: 1\r\nB: 2\r\n\t2b\r\n" + MSG


def test_prepend_refuses_fields_without_crlf() -> None:
    with pytest.raises(ValueError):
        H.prepend([b"A: 1"], MSG)


# --- Received ------------------------------------------------------------------------------------


def _parse(field: bytes) -> str:
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(field + b"\r\n")
    return str(msg["Received"])


def test_received_rfc5321_shape() -> None:
    f = H.received(helo="mta.sender.test", ip="192.0.2.1", by="mx.example.test", protocol="ESMTP",
                   queue_id="ABC123", recipient="bob@example.test", when=WHEN)
    assert f == (b"Received: from mta.sender.test ([192.0.2.1])\r\n"
                 b"\tby mx.example.test (Mailhaven) with ESMTP id ABC123\r\n"
                 b"\tfor <bob@example.test>;\r\n"
                 b"\tTue, 02 Jan 2024 03:04:05 +0000\r\n")
    assert "Tue, 02 Jan 2024 03:04:05 +0000" in _parse(f)


def test_received_records_tls_and_ipv6_and_leaves_out_for_when_several() -> None:
    f = H.received(helo="[IPv6:2001:db8::1]", ip="2001:db8::1", by="mx", protocol="ESMTPS", queue_id="X",
                   recipient=None, when=WHEN, tls="TLSv1.3 TLS_AES_256_GCM_SHA384")
    assert f.startswith(b"Received: from [IPv6:2001:db8::1] ([IPv6:2001:db8::1])\r\n"
                        b"\t(using TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n\tby mx (Mailhaven) with ESMTPS id X;\r\n")
    assert b" for " not in f


@pytest.mark.parametrize("helo", ["", "evil(x)", "two words", "a\\b", "jörg.example", "x" * 300, "-bad-.test"])
def test_unusable_helo_names_go_into_a_safe_comment(helo: str) -> None:
    f = H.received(helo=helo, ip="192.0.2.1", by="mx", protocol="SMTP", queue_id="X", recipient=None, when=WHEN)
    first = f.split(b"\r\n")[0]
    assert first.startswith(b"Received: from [192.0.2.1] (helo=")
    inner = first[len(b"Received: from [192.0.2.1] (helo="):-1]
    assert b"(" not in inner and b")" not in inner and b"\\" not in inner and inner.isascii()


@given(st.text(max_size=600), st.sampled_from(["192.0.2.1", "::1"]))
def test_received_is_always_one_well_formed_field(helo: str, ip: str) -> None:
    f = H.received(helo=helo, ip=ip, by="mx.example.test", protocol="ESMTP", queue_id="ID",
                   recipient="a@b.test", when=WHEN)
    lines = f.split(b"\r\n")
    assert lines[-1] == b"" and lines[0].startswith(b"Received: from ")
    assert all(ln[:1] == b"\t" for ln in lines[1:-1])
    assert b"\n" not in b"".join(lines) and b"\r" not in b"".join(lines)
    assert all(len(ln) <= 998 for ln in lines)


@pytest.mark.parametrize(("kw", "name"), [
    ({"esmtp": False, "tls": False}, "SMTP"),
    ({"esmtp": True, "tls": False}, "ESMTP"),
    ({"esmtp": True, "tls": True}, "ESMTPS"),
    ({"esmtp": True, "tls": True, "auth": True}, "ESMTPSA"),
    ({"esmtp": True, "tls": False, "auth": True}, "ESMTPA"),
    ({"esmtp": True, "tls": True, "smtputf8": True}, "UTF8SMTPS"),
    ({"esmtp": True, "tls": False, "smtputf8": True}, "UTF8SMTP"),
])
def test_protocol_names_rfc3848_and_rfc6531(kw: dict[str, bool], name: str) -> None:
    assert H.protocol_name(**kw) == name


def test_return_path() -> None:
    assert H.return_path("a@b.test") == b"Return-Path: <a@b.test>\r\n"
    assert H.return_path("") == b"Return-Path: <>\r\n"
