"""smtp/replies.py: exceptions -> replies, enhanced codes on aiosmtpd's replies, and DataBlock
(server.py's sans-IO DATA reader)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.errors import DnsTempError, MailError, PolicyReject, StoreError, UnknownUser
from mailhaven.smtp import replies as R
from mailhaven.smtp.hooks import split_path
from mailhaven.smtp.server import DataBlock

REPLY = re.compile(r"^[245]\d\d [245]\.\d{1,3}\.\d{1,3} [^\r\n]+$")


@pytest.mark.parametrize(("error", "reply"), [
    (StoreError("the message could not be stored"), "451 4.3.0 the message could not be stored"),
    (DnsTempError("DNS lookup failed"), "451 4.4.3 DNS lookup failed"),
    (PolicyReject("Message rejected by the DMARC policy of x.test"),
     "550 5.7.1 Message rejected by the DMARC policy of x.test"),
    (UnknownUser(), "550 5.1.1 No such user here."),
    (MailError("custom", code=552, enhanced="5.3.4"), "552 5.3.4 custom"),
])
def test_mail_errors_carry_their_own_reply(error: Exception, reply: str) -> None:
    assert R.reply_for(error) == reply


@pytest.mark.parametrize("error", [RuntimeError("/var/lib/secret"), KeyError("x"), OSError(13, "denied"),
                                   ValueError("bad"), TimeoutError()])
def test_unknown_exceptions_become_the_generic_451_without_details(error: Exception) -> None:
    assert R.reply_for(error) == "451 4.3.0 Temporary local problem, try again later"


def test_inconsistent_codes_in_a_mail_error_fall_back_to_internal() -> None:
    assert R.reply_for(MailError("x", code=250, enhanced="2.0.0")) == R.INTERNAL
    assert R.reply_for(MailError("x", code=550, enhanced="4.3.0")) == R.INTERNAL
    assert R.reply_for(MailError("x", code=550, enhanced="five")) == R.INTERNAL


def test_reply_text_cannot_inject_lines() -> None:
    reply = R.reply_for(PolicyReject("evil\r\n250 2.0.0 ok"))
    assert "\r" not in reply and "\n" not in reply and reply.startswith("550 5.7.1 evil")


@given(st.text())
def test_every_exception_reply_is_one_well_formed_line(text: str) -> None:
    for err in (PolicyReject(text), StoreError(text), RuntimeError(text)):
        reply = R.reply_for(err)
        assert REPLY.match(reply), reply
        assert len(reply.encode()) <= 512  # RFC 5321 §4.5.3.1.5


@pytest.mark.parametrize(("raw", "enhanced"), [
    ("250 OK", "250 2.0.0 OK"),
    ("221 Bye", "221 2.0.0 Bye"),
    ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
    ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
    ("502 EXPN not implemented", "502 5.5.1 EXPN not implemented"),
    ("503 Error: send HELO first", "503 5.5.1 Error: send HELO first"),
    ("552 Error: message size exceeds fixed maximum message size",
     "552 5.3.4 Error: message size exceeds fixed maximum message size"),
    ("555 MAIL FROM parameters not recognized or not implemented",
     "555 5.5.4 MAIL FROM parameters not recognized or not implemented"),
    ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS"),
    ("454 TLS not available", "454 4.7.0 TLS not available"),
    ("553 5.1.3 Error: malformed address", "553 5.1.3 Error: malformed address"),  # already has one
    ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),  # intermediate
    ("250-SIZE 1000", "250-2.0.0 SIZE 1000"),
    ("garbage", "garbage"),
])
def test_enhance_adds_the_default_enhanced_code(raw: str, enhanced: str) -> None:
    assert R.enhance(raw) == enhanced


@given(st.integers(200, 599), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)))
def test_enhance_is_idempotent(code: int, text: str) -> None:
    once = R.enhance(f"{code} {text}")
    assert R.enhance(once) == once


# --- split_path (hooks.py) -----------------------------------------------------------------------


@pytest.mark.parametrize(("arg", "path", "params"), [
    ("<a@b.test>", "<a@b.test>", ""),
    ("<a@b.test> SIZE=10 BODY=8BITMIME", "<a@b.test>", "SIZE=10 BODY=8BITMIME"),
    (" <a@b.test>", "<a@b.test>", ""),  # a space after the colon, as many clients send
    ('<"a>b c"@b.test> SMTPUTF8', '<"a>b c"@b.test>', "SMTPUTF8"),
    ('<"a\\"> x"@b.test>', '<"a\\"> x"@b.test>', ""),
    ("<>", "<>", ""),
    ("a@b.test SIZE=1", "a@b.test", "SIZE=1"),
])
def test_split_path_finds_the_end_of_the_path(arg: str, path: str, params: str) -> None:
    assert split_path(arg) == (path, params)


@pytest.mark.parametrize("arg", ["<a@b.test", "<a@b.test>x", '<"a@b.test>', "<a@b.test>>"])
def test_split_path_refuses_unterminated_or_glued_paths(arg: str) -> None:
    with pytest.raises(ValueError):
        split_path(arg)


@given(st.text(max_size=300))
def test_split_path_returns_a_prefix_or_raises_value_error(arg: str) -> None:
    try:
        path, params = split_path(arg)
    except ValueError:
        return
    assert arg.lstrip(" ").startswith(path)


# --- DataBlock (server.py) -----------------------------------------------------------------------


def _feed(block: DataBlock, chunks: list[bytes]) -> bool:
    for c in chunks:
        if block.feed(c):
            return True
    return False


def test_data_ends_only_at_crlf_dot_crlf_and_is_unstuffed() -> None:
    b = DataBlock(10_000, 1000)
    assert not _feed(b, [b"Subject: x\r\n", b"\r\n", b"..dot\r\n"])
    assert b.feed(b".\r\n")
    assert b.problem is None and b.message() == b"Subject: x\r\n\r\n.dot\r\n"


@pytest.mark.parametrize("line", [b"a\n.\nb\r\n", b"a\r.\rb\r\n", b".\n\r\n", b"x\ry\r\n", b"\n\r\n"])
def test_bare_cr_or_lf_in_a_line_is_refused(line: bytes) -> None:
    b = DataBlock(10_000, 1000)
    assert not b.feed(line)
    assert b.feed(b".\r\n")
    assert b.problem == R.BARE_NEWLINE and b.message() == b""


def test_size_limit_counts_the_unstuffed_message() -> None:
    b = DataBlock(10, 1000)
    assert not _feed(b, [b"12345678\r\n"])  # 10 octets: at the limit
    assert b.problem is None
    assert not b.feed(b"x\r\n")
    assert b.problem == R.MESSAGE_TOO_BIG and b.message() == b""


def test_line_limit_and_fragments_of_long_lines() -> None:
    b = DataBlock(10_000, 10)
    assert not b.feed(b"12345678\r\n")
    assert b.problem is None
    assert not b.feed(b"123456789\r\n")
    assert b.problem == R.LINE_TOO_LONG
    b = DataBlock(10_000, 10)
    assert not b.feed(b"a" * 50)  # a piece of a line longer than the reader's limit
    assert not b.feed(b".\r\n")  # the end of that long line, not the end of data
    assert b.feed(b".\r\n")
    assert b.problem == R.LINE_TOO_LONG


@given(st.lists(st.binary(max_size=40), max_size=30))
def test_data_block_ends_exactly_at_a_dot_line_that_starts_a_line(chunks: list[bytes]) -> None:
    b = DataBlock(10**6, 100)
    at_line_start = True
    for c in chunks:
        expected = at_line_start and c == b".\r\n"
        assert b.feed(c) == expected
        if expected:
            break
        at_line_start = c.endswith(b"\r\n")


@given(st.lists(st.binary(max_size=60).filter(lambda x: b"\r" not in x and b"\n" not in x), max_size=20))
def test_clean_lines_round_trip_through_dot_stuffing(lines: list[bytes]) -> None:
    b = DataBlock(10**6, 1000)
    for line in lines:
        assert not b.feed((b"." + line if line.startswith(b".") else line) + b"\r\n")
    assert b.feed(b".\r\n")
    assert b.problem is None
    assert b.message() == b"".join(line + b"\r\n" for line in lines)
