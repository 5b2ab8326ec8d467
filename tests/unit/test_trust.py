"""message/trust.py: the fields only we may write are removed, Return-Path goes on top (RFC 8601 §5,
RFC 7208 §9.1, RFC 5321 §4.4), and nothing else of the message changes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.message.headers import field_values, header_section_end
from mailhaven.message.trust import for_mailbox, is_ours, remove_forged, spf_receiver
from mailhaven.policy.authresults import format_received_spf

ID = "mx.example.org"

MSG = (b"Received: from x\r\n"
       b"Authentication-Results: MX.example.org; spf=pass\r\n smtp.mailfrom=forged.example\r\n"
       b"Authentication-Results: other.example; dkim=pass\r\n"
       b"Authentication-Results: (comment) mx.example.org;\r\n\tdmarc=pass\r\n"
       b"Authentication-Results: mx.example.org.evil; none\r\n"
       b"Subject: s\r\n"
       b"\r\n"
       b"Authentication-Results: mx.example.org; in the body stays\r\n")


def test_authentication_results_with_our_authserv_id_are_removed_others_kept() -> None:
    assert remove_forged(MSG, ID) == (b"Received: from x\r\n"
                                      b"Authentication-Results: other.example; dkim=pass\r\n"
                                      b"Authentication-Results: mx.example.org.evil; none\r\n"
                                      b"Subject: s\r\n"
                                      b"\r\n"
                                      b"Authentication-Results: mx.example.org; in the body stays\r\n")


def test_every_x_spam_field_and_return_path_is_removed_whatever_the_case_and_folding() -> None:
    msg = (b"Return-Path: <forged@x>\r\n"
           b"X-Spam-Status: No, score=-5.0\r\n\trequired=5.0 tests=ALL_TRUSTED\r\n"
           b"x-spam-flag: NO\r\n"
           b"X-SPAM-SCORE: -5\r\n"
           b"X-Spam-Level: \r\n"
           b"X-Spam-Report : folded\r\n over\r\n  three lines\r\n"
           b"RETURN-PATH:<other@x>\r\n"
           b"X-Spamd-Result: default: False [0.00 / 15.00]\r\n"  # rspamd's name without the dash: kept
           b"X-Spam: yes\r\n"  # not an X-Spam-* name: kept
           b"Subject: X-Spam-Status: Yes\r\n"
           b"\r\n"
           b"X-Spam-Status: No\r\nReturn-Path: <body@x>\r\n")
    assert remove_forged(msg, ID) == (b"X-Spamd-Result: default: False [0.00 / 15.00]\r\n"
                                      b"X-Spam: yes\r\n"
                                      b"Subject: X-Spam-Status: Yes\r\n"
                                      b"\r\n"
                                      b"X-Spam-Status: No\r\nReturn-Path: <body@x>\r\n")


def test_received_spf_naming_us_as_receiver_is_removed() -> None:
    ours = format_received_spf(ID, "pass", "192.0.2.1", "a@bank.test", "bank.test", "mailfrom")
    theirs = format_received_spf("mx.other.example", "pass", "192.0.2.1", "a@bank.test", "bank.test", "mailfrom")
    quoted = b'Received-SPF: pass (comment receiver=elsewhere) client-ip=192.0.2.1; receiver="MX.Example.Org"\r\n'
    in_comment_only = b"Received-SPF: pass (receiver=mx.example.org) client-ip=192.0.2.1\r\n"
    msg = ours + theirs + quoted + in_comment_only + b"Subject: s\r\n\r\nbody\r\n"
    assert remove_forged(msg, ID) == theirs + in_comment_only + b"Subject: s\r\n\r\nbody\r\n"


def test_spf_receiver_and_is_ours() -> None:
    assert spf_receiver(b" pass (x) client-ip=1.2.3.4; receiver=MX.example.org; identity=mailfrom") == ID
    assert spf_receiver(b" pass (receiver=a (nested receiver=b)) helo=x") == ""
    assert spf_receiver(b' pass receiver = "a\\"b"') == 'a"b'
    assert is_ours(b"Return-Path ", b" <>", ID) and is_ours(b"X-Spam-Anything", b" 1", ID)
    assert not is_ours(b"X-Spam", b" 1", ID) and not is_ours(b"Subject", b" x", ID)
    assert is_ours(b"Authentication-Results", b' "mx.example.org"; none', ID)


def test_lf_only_messages_and_messages_without_a_body() -> None:
    assert remove_forged(b"Authentication-Results: mx; x\nA: b\n", "mx") == b"A: b\n"
    assert remove_forged(b"A: b\n\nbody", "mx") == b"A: b\n\nbody"
    assert remove_forged(b"X-Spam-Flag: YES\r\nA: b\r\n", "mx") == b"A: b\r\n"
    assert remove_forged(b"Return-Path: <x>", "mx") == b""


def test_the_message_itself_is_returned_when_nothing_is_removed() -> None:
    msg = b"Authentication-Results: other.example; none\r\nSubject: s\r\n\r\nAuthentication-Results: mx; body\r\n"
    assert remove_forged(msg, "mx") is msg  # no copy of the message for the common case
    plain = b"Subject: s\r\n\r\nX-Spam-Status: Yes\r\n"
    assert remove_forged(plain, "mx") is plain
    assert remove_forged(b"AUTHENTICATION-RESULTS: MX; x\r\n\r\nb", "mx") == b"\r\nb"


def test_for_mailbox_has_one_return_path_on_top_then_the_trace_fields() -> None:
    msg = b"Return-Path: <forged@x>\r\nSubject: s\r\nReturn-Path: <again@x>\r\n\r\nbody\r\n"
    out = for_mailbox(msg, sender="alice@example.test", authserv_id=ID,
                      trace=[b"Received: from a\r\n", b"Authentication-Results: mx.example.org; none\r\n"])
    assert out == (b"Return-Path: <alice@example.test>\r\n"
                   b"Received: from a\r\n"
                   b"Authentication-Results: mx.example.org; none\r\n"  # ours, added after the removal
                   b"Subject: s\r\n\r\nbody\r\n")
    bounce = for_mailbox(b"Subject: s\r\n\r\nbody\r\n", sender="", authserv_id=ID)
    assert bounce == b"Return-Path: <>\r\nSubject: s\r\n\r\nbody\r\n"  # RFC 5321 §4.5.5 null reverse-path
    with pytest.raises(ValueError):
        for_mailbox(b"\r\n", sender="", authserv_id=ID, trace=[b"Received: no line end"])


_PARTS = st.lists(st.sampled_from([
    b"A: b\r\n", b"A: b\n", b" folded\r\n", b"\tfolded\n", b"\r\n", b"\n", b"\r", b"x", b":",
    b"Authentication-Results: mx; y\r\n", b"authentication-results : (c) \"mx\";\r\n", b"X-Spam-Flag: YES\r\n",
    b"x-spam-status:No\n", b"Return-Path: <a@b>\r\n", b"Received-SPF: pass receiver=mx\r\n",
    b"Authentication-Results: other; y\r\n", b"\r\r\n",
]), max_size=14)


@given(st.one_of(_PARTS.map(b"".join), st.binary(max_size=400)))
def test_only_whole_header_fields_go_and_the_body_stays_byte_identical(data: bytes) -> None:
    out = remove_forged(data, "mx")
    end = header_section_end(data)
    assert out.endswith(data[end:])  # the blank line and the body, untouched
    head = out[:len(out) - (len(data) - end)]
    assert len(head) <= end
    # What is left of the header section is the original's lines in order, minus whole fields.
    lines = data[:end].splitlines(keepends=True)
    it = iter(lines)
    assert all(any(kept == line for line in it) for kept in head.splitlines(keepends=True))
    for name in ("Return-Path", "X-Spam-Flag", "X-Spam-Status"):
        assert field_values(out[:len(head)] + b"\r\n", name) == []
    assert remove_forged(out, "mx") == out  # idempotent


@given(st.one_of(_PARTS.map(b"".join), st.binary(max_size=300)), st.sampled_from(["", "a@b.example"]))
def test_for_mailbox_always_gives_exactly_one_return_path_first(data: bytes, sender: str) -> None:
    out = for_mailbox(data, sender=sender, authserv_id="mx")
    assert out.startswith(f"Return-Path: <{sender}>\r\n".encode())
    section = out[:header_section_end(out)]
    assert field_values(section + b"\r\n", "Return-Path") == [f"<{sender}>"]


def test_white_space_before_the_first_field_cannot_continue_our_return_path() -> None:
    out = for_mailbox(b"\t<forged@x>\r\n more\r\nSubject: s\r\n\r\n body\r\n", sender="a@b.example", authserv_id=ID)
    assert out == b"Return-Path: <a@b.example>\r\nSubject: s\r\n\r\n body\r\n"
    assert field_values(out, "Return-Path") == ["<a@b.example>"]
