"""imap/search.py: SEARCH key evaluation (the Dovecot comparison is in
tests/integration/test_fetch_vs_dovecot.py; these pin each rule and the lazy loading)."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.imap import commands as c
from mailhaven.imap import parser, search
from mailhaven.imap.seqset import SequenceSet


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


MSG = crlf(
    "Date: Mon, 29 Jan 2024 23:30:00 -0800\n"
    "From: =?UTF-8?Q?J=C3=BCrgen?= Search <needle@haystack.example>\n"
    'To: "Doe, Jane" <jane@example.net>, team: a@b.example, c@d.example;\n'
    "Subject: =?UTF-8?Q?Pr=C3=BCfung?=\n of   SEARCH\n"
    "X-Custom: MagicValue42\n"
    "X-Empty:\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="s"\n'
    "\n"
    "preamble text\n"
    "--s\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    + base64.encodebytes("Hidden treasure: Übergrößenträger.\n".encode()).decode()
    + "--s\n"
    "Content-Type: text/html; charset=iso-8859-1\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "<p>Caf=E9 society</p>\n"
    "--s\n"
    "Content-Type: application/octet-stream\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    + base64.encodebytes(b"attachment-needle").decode()
    + "--s--\n"
)

INTERNAL = datetime(2024, 1, 30, 7, 30, tzinfo=UTC).timestamp()


class Counting:
    """A SearchMessage that counts how often the bytes were needed."""

    def __init__(self, data: bytes = MSG, flags: frozenset[str] = frozenset({"\\Seen", "$Work"}),
                 seq: int = 3, uid: int = 30) -> None:
        self.seq, self.uid, self.flags = seq, uid, flags
        self.internaldate = INTERNAL
        self.size = len(data)
        self.data = data
        self.header_calls = 0
        self.message_calls = 0

    def header(self) -> bytes:
        self.header_calls += 1
        return self.data

    def message(self) -> bytes:
        self.message_calls += 1
        return self.data


CTX = search.SearchContext(max_seq=10, max_uid=100, tz=UTC)


def key(text: str) -> c.SearchKey:
    cmd = parser.parse_bytes(b"t SEARCH CHARSET UTF-8 " + text.encode())
    assert isinstance(cmd, c.Search)
    return cmd.criteria


def matches(text: str, msg: Counting | None = None, ctx: search.SearchContext = CTX) -> bool:
    return search.evaluate(key(text), msg or Counting(), ctx)


@pytest.mark.parametrize(("criteria", "expected"), [
    ("ALL", True), ("SEEN", True), ("UNSEEN", False), ("FLAGGED", False), ("UNFLAGGED", True),
    ("KEYWORD $work", True), ("UNKEYWORD $Work", False), ("RECENT", False), ("OLD", True), ("NEW", False),
    ("3", True), ("1:2", False), ("2:*", True), ("UID 30", True), ("UID 31:*", False), ("UID *", False),
    ("LARGER 100", True), ("SMALLER 100", False), ("NOT SEEN", False), ("OR FLAGGED SEEN", True),
    ("(SEEN UNFLAGGED)", True), ("(SEEN FLAGGED)", False),
])
def test_metadata_keys(criteria: str, expected: bool) -> None:
    assert matches(criteria) is expected


def test_star_means_the_largest_number_in_use() -> None:
    assert matches("*", Counting(seq=10))
    assert matches("UID *", Counting(uid=100))


def test_size_keys_are_strict() -> None:
    m = Counting()
    assert not matches(f"LARGER {m.size}", m) and not matches(f"SMALLER {m.size}", m)
    assert matches(f"LARGER {m.size - 1}", m) and matches(f"SMALLER {m.size + 1}", m)


def test_metadata_keys_never_load_the_message() -> None:
    m = Counting()
    assert search.evaluate(key("OR (SEEN LARGER 5) NOT UID 1:5 SINCE 1-Jan-2024"), m, CTX)
    assert (m.header_calls, m.message_calls) == (0, 0)
    assert search.needs(key("OR SEEN UID 1 BEFORE 1-Jan-2020")) == frozenset()


def test_header_keys_load_only_the_header() -> None:
    m = Counting()
    assert search.evaluate(key('SUBJECT "prüfung"'), m, CTX)
    assert search.evaluate(key("SENTON 29-Jan-2024"), m, CTX)
    assert m.message_calls == 0 and m.header_calls == 2
    assert search.needs(key('OR SUBJECT x SENTSINCE 1-Jan-2000')) == {"header"}
    assert search.needs(key('NOT BODY x')) == {"body"}


@pytest.mark.parametrize(("criteria", "expected"), [
    ('SUBJECT "prüfung of search"', True),  # decoded, unfolded, whitespace compressed, any case
    ('SUBJECT "PRUFUNG"', False),  # decomposed ü is not u
    ('SUBJECT "=?UTF-8?Q"', False),  # the encoded form is not searched
    ('FROM "jürgen search"', True), ('FROM "needle@haystack"', True), ('FROM "<needle@"', True),
    ('TO "doe, jane"', True), ('TO "team: <a@b.example>"', True), ('TO "<c@d.example>;"', True), ('TO "team: a@b"', False),
    ('CC "jane"', False),
    ('HEADER X-Custom "magicvalue"', True), ('HEADER x-custom "magicvalue43"', False),
    ('HEADER X-Empty ""', True), ('HEADER X-Missing ""', False), ('HEADER Content-Type "MULTIPART"', True),
    ('HEADER Content-Transfer-Encoding ""', False),  # MIME part headers are not the message header
])
def test_header_keys(criteria: str, expected: bool) -> None:
    assert matches(criteria) is expected


@pytest.mark.parametrize(("criteria", "expected"), [
    ('BODY "hidden TREASURE"', True),  # base64 text part, decoded
    ('BODY "übergrößenträger"', True), ('BODY "ÜBERGRÖSSENTRÄGER"', False),  # ß has no simple upper case
    ('BODY "café society"', True),  # quoted-printable, ISO-8859-1 converted
    ('BODY "attachment-needle"', False),  # non-text parts are not searched
    ('BODY "preamble"', False), ('BODY "Content-Type"', False), ('BODY "MagicValue42"', False),
    ('TEXT "MagicValue42"', True), ('TEXT "content-transfer-encoding: quoted"', True),
    ('TEXT "prüfung"', True), ('TEXT "treasure"', True), ('TEXT "preamble"', False),
])
def test_body_and_text_keys(criteria: str, expected: bool) -> None:
    assert matches(criteria) is expected


@pytest.mark.parametrize(("criteria", "expected"), [
    ("ON 30-Jan-2024", True), ("BEFORE 30-Jan-2024", False), ("SINCE 30-Jan-2024", True),
    ("BEFORE 31-Jan-2024", True), ("SINCE 31-Jan-2024", False),
    # the Date: field's own calendar date, its -0800 zone ignored (UTC would be 30 Jan)
    ("SENTON 29-Jan-2024", True), ("SENTON 30-Jan-2024", False), ("SENTSINCE 29-Jan-2024", True),
    ("SENTBEFORE 29-Jan-2024", False), ("SENTBEFORE 30-Jan-2024", True),
])
def test_date_keys(criteria: str, expected: bool) -> None:
    assert matches(criteria) is expected


def test_internal_date_is_compared_in_the_servers_time_zone() -> None:
    west = search.SearchContext(10, 100, tz=timezone(timedelta(hours=-10)))
    assert matches("ON 29-Jan-2024", ctx=west) and not matches("ON 30-Jan-2024", ctx=west)


def test_message_without_date_counts_as_sent_in_1970_like_dovecot() -> None:
    m = Counting(crlf("Subject: x\n\nbody\n"))
    assert matches("SENTBEFORE 1-Jan-1971", m) and matches("SENTON 1-Jan-1970", m)


def test_sent_date_uses_the_first_date_field() -> None:
    m = Counting(crlf("Date: Fri, 19 Jan 2024 21:00:00 +0000\nDate: Sat, 20 Jan 2024 21:00:00 +0000\n\n"))
    assert matches("SENTON 19-Jan-2024", m) and not matches("SENTON 20-Jan-2024", m)


def test_decode_header_value_joins_adjacent_encoded_words_and_tolerates_junk() -> None:
    assert search.decode_header_value(b"=?utf-8?q?a?= =?utf-8?q?_b?= c") == "a b c"
    assert search.decode_header_value(b"=?bogus?x?zz?=") == "=?bogus?x?zz?="
    assert search.decode_header_value(b"=?no-such-charset?q?x?=") == "x"
    assert search.decode_header_value(b"=?utf-8?b?not base64?=") == "=?utf-8?b?not base64?="
    assert search.decode_header_value(b"raw \xc3\xa9 \xff") == "raw é \ufffd"


def test_fold_is_case_insensitive_after_decomposition() -> None:
    assert search.fold("Straße") == search.fold("STRAßE") != search.fold("STRASSE")
    assert search.fold("É") == search.fold("é")


def test_message_helper_loads_once_and_derives_the_header() -> None:
    calls = []

    def load() -> bytes:
        calls.append(1)
        return MSG

    m = search.Message(seq=1, uid=1, flags=(), internaldate=INTERNAL, size=len(MSG), load=load)
    assert search.evaluate(key('SUBJECT "search" BODY "treasure"'), m, CTX)
    assert m.header().startswith(b"Date:") and m.header().endswith(b"\r\n\r\n")
    assert calls == [1]


def test_search_returns_matching_messages_in_order() -> None:
    msgs = [Counting(seq=i, uid=i * 10) for i in range(1, 6)]
    assert [m.seq for m in search.search(key("2:4 NOT 3"), msgs, CTX)] == [2, 4]


def test_unknown_key_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        search.evaluate(object(), Counting(), CTX)  # type: ignore[arg-type]


@settings(max_examples=150)
@given(st.binary(max_size=600), st.sampled_from([
    'BODY "a"', 'TEXT "x"', 'SUBJECT "s"', 'FROM "f"', 'HEADER X ""', "SENTSINCE 1-Jan-2000", 'CC "@"']))
def test_evaluation_never_raises_on_arbitrary_messages(data: bytes, criteria: str) -> None:
    search.evaluate(key(criteria), Counting(data), CTX)


def test_searchset_keys_built_directly() -> None:
    k = c.SearchAnd((c.SearchSet(SequenceSet.parse("1:*"), uid=True), c.SearchDate("on", date(2024, 1, 30))))
    assert search.evaluate(k, Counting(), CTX)


@pytest.mark.parametrize(("value", "expected"), [
    (b"Mon, 29 Jan 2024 23:30:00 -0800", date(2024, 1, 29)),
    (b"29 Jan 2024 23:30 +0000", date(2024, 1, 29)),
    (b"5 Feb 24 9:05 EST (Eastern)", date(2024, 2, 5)),
    (b"5 February 99 09.05.00", date(1999, 2, 5)),  # no zone, "." separators
    (b"Fri,\r\n 12 Jan 2024 14:00:00\r\n +0000", date(2024, 1, 12)),
    (b"31 Feb 2024 00:00:00 +0000", date(2024, 3, 2)),  # rolls over like timegm()
    (b"Thu 1 Feb 2024 10:00:00 +0000", None),  # a 3-letter first word must be a weekday + ","
    (b"01 Jan 2001 00:01+0000", None),  # zone glued to the time
    (b"1 Jan 1850 00:00 +0000", None), (b"", None), (b"yesterday", None), (b"1 Foo 2024 1:00", None),
])
def test_sent_date_parsing_is_as_strict_as_dovecot(value: bytes, expected: date | None) -> None:
    assert search.parse_date(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (b"Jean Luc <a@b>", '"Jean Luc" <a@b>'),  # more than one atom: quoted
    (b'"quoted" <x@y>', "quoted <x@y>"),  # one atom: bare, whatever the source did
    (b"O'Brien <o@b>", "O'Brien <o@b>"),
    (b'"Mc\'Q. x" <e@f>', '"Mc\\\'Q. x" <e@f>'),  # inside quotes ' " and \\ are escaped
    (b"=?utf-8?q?enc_two?= <f@f>", "enc two <f@f>"),  # quoting is decided before decoding
    (b"=?utf-8?q?J=C3=BCrgen?= Search <j@x>", "Jürgen Search <j@x>"),  # encoded-words: never quoted
    (b"bob@example.net", "<bob@example.net>"),  # no name: still in angle brackets
    (b'"" <x@x>, <@r1,@r2:u@h>', "<x@x>, <@r1,@r2:u@h>"),
    (b"Empty:;, G: x@y;", "Empty:;, G: <x@y>;"),
    (b"team: a@b, c@d;, e@f", "team: <a@b>, <c@d>;, <e@f>"),
    (b"u@h (Comment)", "Comment <u@h>"),
])
def test_address_fields_are_matched_in_dovecots_rewritten_form(value: bytes, expected: str) -> None:
    assert search._addresses_text(value) == expected


def test_header_key_kind_follows_the_dedicated_field_names_or_an_explicit_kind() -> None:
    from dataclasses import dataclass

    assert search.header_kind(c.SearchHeader("Subject", "x")) == "subject"
    assert search.header_kind(c.SearchHeader("From", "x")) == "address"
    assert search.header_kind(c.SearchHeader("SUBJECT", "x")) == "header"  # from HEADER SUBJECT x

    @dataclass(frozen=True)
    class WithKind:
        field: str
        value: str
        kind: str

    assert search.header_kind(WithKind("Subject", "x", "header")) == "header"  # type: ignore[arg-type]
    m = Counting(crlf("Subject: two  spaces\n\n"))
    assert matches('HEADER SUBJECT "two  spaces"', m) and not matches('HEADER SUBJECT "two spaces"', m)
    assert matches('SUBJECT "two spaces"', m) and not matches('SUBJECT "two  spaces"', m)


def test_text_sees_header_names_and_separators_as_written() -> None:
    m = Counting(crlf("Subject:\tTabbed\nX-A:b\n\nbody\n"))
    assert matches('TEXT "X-A:b"', m) and not matches('TEXT "X-A: b"', m)


@pytest.mark.parametrize(("data", "expected"), [
    (b"aGVsbG8g\r\nd29ybGQ=\r\n", b"hello world"),
    (b"aGVsbG8g!!!d29ybGQ=", b"hello "),  # stops at a byte outside the alphabet
    (b"aGk=\r\naGk=", b"hi"),  # and at the padding
    (b"w7w", b"\xc3\xbc"),  # a trailing partial group still counts
    (b"", b""),
])
def test_base64_bodies_decode_like_dovecot(data: bytes, expected: bytes) -> None:
    assert search.decode_base64(data) == expected


def test_parts_in_unknown_transfer_encodings_are_not_searched() -> None:
    m = Counting(crlf("Content-Transfer-Encoding: x-uuencode\n\nbegin 644 needle\n"))
    assert not matches('BODY "needle"', m)
    assert matches('TEXT "x-uuencode"', m)


def test_fold_titlecases_and_decomposes_one_level_like_dovecot() -> None:
    assert search.fold("é") == "E\u0301"
    assert search.fold("Ǻ") == "\u00c5\u0301"  # not "A" + two marks: one level only
    assert "A" not in search.fold("ǻ")
    assert search.fold("ǆ") == search.fold("ǅ")  # titlecase, not uppercase


def test_us_ascii_labelled_8bit_text_is_read_as_utf8() -> None:
    m = Counting(crlf("Content-Type: text/plain; charset=us-ascii\n\n李小龙 writes\n"))
    assert matches('BODY "李小龙"', m)


@pytest.mark.parametrize("charset", ["x\x00y", "base64", "zlib", "rot13", "idna", "utf-16", "", "*", "utf-8*en"])
def test_odd_charsets_never_raise(charset: str) -> None:
    value = f"=?{charset}?q?caf=C3=A9?= tail".encode("utf-8", "surrogateescape")
    assert search.decode_header_value(value).endswith(" tail")
    m = Counting(crlf(f"Content-Type: text/plain; charset=\"{charset}\"\n\ncafé\n"))
    search.evaluate(key('BODY "x"'), m, CTX)


@settings(max_examples=200)
@given(st.text(max_size=12), st.sampled_from(["q", "b", "Q", "B"]), st.binary(max_size=20),
       st.sampled_from(['SUBJECT "x"', 'FROM "x"', 'TEXT "x"', 'BODY "x"']))
def test_encoded_words_with_arbitrary_charsets_never_raise(charset: str, enc: str, text: bytes, criteria: str) -> None:
    word = b"=?" + charset.encode("utf-8", "surrogatepass") + b"?" + enc.encode() + b"?" + text + b"?="
    msg = (b"Subject: " + word + b"\r\nFrom: " + word + b" <a@b>\r\nContent-Type: text/plain; charset=\""
           + charset.encode("utf-8", "surrogatepass") + b"\"\r\n\r\n" + text)
    search.evaluate(key(criteria), Counting(msg), CTX)


def test_sent_dates_with_nul_or_unclosed_comments_read_like_dovecot() -> None:
    assert search.parse_date(b"2 Feb 2024 11:00 \x00MT") == date(2024, 2, 2)  # NUL stored as U+FFFD
    assert search.parse_date(b"5 Feb 24 9:05 EST (East") is None  # unclosed comment: unreadable


def test_encoded_word_charset_with_nul_is_not_an_encoded_word() -> None:
    assert search.decode_header_value(b"=?utf\x00-8?q?x?=").startswith("=?utf")


def test_text_prefix_survives_a_lone_cr_at_the_end() -> None:
    m = Counting(b"Date: Thu, 11 Jan 2024\r")
    assert matches('TEXT "Date: Thu"', m) and not matches('TEXT "Date:Thu"', m)


def test_cr_inside_a_date_separates_words() -> None:
    assert search.parse_date(b"Fri, 20 Apr\r2001 19:35:02 -0400") == date(2001, 4, 20)


def test_uid_range_beyond_the_highest_uid_still_contains_it() -> None:
    # RFC 3501 §6.4.8 (Dovecot finds nothing here; documented in test_fetch_vs_dovecot)
    ctx = search.SearchContext(max_seq=3, max_uid=30)
    assert matches("UID 31:*", Counting(uid=30), ctx)
