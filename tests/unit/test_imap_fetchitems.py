"""imap/fetchitems.py and imap/encode.py: FETCH item bytes (the Dovecot comparison is in
tests/integration/test_fetch_vs_dovecot.py; these pin the rules without a server)."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhaven.imap import encode, fetchitems, parser
from mailhaven.imap.fetchitems import Address, InvalidSection, Section
from mailhaven.message import mime

DATA = Path(__file__).resolve().parent.parent / "data" / "mime"
SAMPLES = sorted(DATA.glob("*.eml"))


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


# --------------------------------------------------------------------------- encode

def test_string_is_quoted_with_escapes_when_7bit_and_a_literal_otherwise() -> None:
    assert encode.string(b'a "b" \\c') == b'"a \\"b\\" \\\\c"'
    assert encode.string("Zoë") == b"{4}\r\nZo\xc3\xab"
    assert encode.string(b"two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert encode.string(b"") == b'""'


def test_nstring_astring_and_lists() -> None:
    assert encode.nstring(None) == b"NIL"
    assert encode.astring("INBOX") == b"INBOX"
    assert encode.astring("My Folder") == b'"My Folder"'
    assert encode.astring("NIL") == b'"NIL"' and encode.astring("") == b'""'
    assert encode.astring("a]b") == b"a]b"  # resp-specials are ASTRING-CHAR (RFC 3501 §9)
    assert encode.plist([b"a", b"b"]) == b"(a b)" and encode.nlist([]) == b"NIL"


def test_human_string_collapses_whitespace_and_uses_a_literal_when_it_changed_the_text() -> None:
    assert encode.human_string(b"plain text") == b'"plain text"'
    assert encode.human_string(b"folded\r\n  twice\t x ") == b"{14}\r\nfolded twice x"
    assert encode.human_string(b'say "hi"') == b'{8}\r\nsay "hi"'
    assert encode.human_string(b"   ") == b'""'
    assert encode.human_string(b"nul\x00") == b"{4}\r\nnul\x80"


# --------------------------------------------------------------------------- ENVELOPE

def test_envelope_defaults_sender_and_reply_to_to_from_and_keeps_raw_strings() -> None:
    msg = crlf("Date: Tue, 2 Jan 2024 10:00:00 +0000\nSubject: =?UTF-8?B?w6k=?=\n"
               "From: =?UTF-8?Q?J=C3=BCrgen?= <j@example.de>\nTo: a@b.example\n"
               "Message-ID: <m@x>\n\nbody")
    assert fetchitems.envelope(msg) == (
        b'("Tue, 2 Jan 2024 10:00:00 +0000" "=?UTF-8?B?w6k=?=" '
        b'(("=?UTF-8?Q?J=C3=BCrgen?=" NIL "j" "example.de")) (("=?UTF-8?Q?J=C3=BCrgen?=" NIL "j" "example.de")) '
        b'(("=?UTF-8?Q?J=C3=BCrgen?=" NIL "j" "example.de")) ((NIL NIL "a" "b.example")) NIL NIL NIL "<m@x>")')


def test_envelope_of_message_without_headers_is_all_nil() -> None:
    assert fetchitems.envelope(b"\r\nbody") == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_envelope_uses_the_last_subject_but_every_from_field() -> None:
    msg = crlf("Subject: one\nSubject: two\nFrom: a@x\nFrom: b@x\n\n")
    env = fetchitems.envelope(msg)
    assert env.startswith(b'(NIL "two" ((NIL NIL "a" "x")(NIL NIL "b" "x"))')


def test_envelope_date_and_message_id_are_unfolded_only() -> None:
    msg = crlf("Date: Fri,\n 12 Jan 2024\nMessage-ID:\n <id@x>\n\n")
    assert fetchitems.envelope(msg) == b'("Fri, 12 Jan 2024" NIL NIL NIL NIL NIL NIL NIL NIL " <id@x>")'


@pytest.mark.parametrize(("value", "expected"), [
    (b"undisclosed-recipients:;", [Address(None, None, b"undisclosed-recipients", None), fetchitems.GROUP_END]),
    (b"G: a@b, \"C D\" <c@d>;", [Address(None, None, b"G", None), Address(None, None, b"a", b"b"),
                                 Address(b"C D", None, b"c", b"d"), fetchitems.GROUP_END]),
    (b"<@r1,@r2:u@h>", [Address(None, b"@r1,@r2", b"u", b"h")]),
    (b"local-only", [Address(None, None, b"local-only", b"MISSING_DOMAIN")]),
    (b"<>", [Address(None, None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")]),
    (b'"Only Name"', [Address(b"Only Name", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")]),
    (b"u@h (Comment Name)", [Address(b"Comment Name", None, b"u", b"h")]),
    (b"(ignored) <u@h>", [Address(None, None, b"u", b"h")]),
    (b'"Doe, John" <j@d>, x@y', [Address(b"Doe, John", None, b"j", b"d"), Address(None, None, b"x", b"y")]),
    (b"a@b, [junk]@c, d@e", [Address(None, None, b"a", b"b"), Address(None, None, b"MISSING_MAILBOX",
                                                                     b"MISSING_DOMAIN")]),
    (b"", []),
    (b'"Long Name" more@x.y', [Address(b"Long Name more", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN")]),
    (b"bob@example.", [Address(None, None, b"bob", b"MISSING_DOMAIN")]),  # trailing dot: no domain
    (b"a..b@c, .a@c", [Address(None, None, b"a..b", b"c"), Address(None, None, b".a", b"c")]),
    (b"A <@r1 u@h>, z@z", [Address(b"A", b"INVALID_ROUTE", b"u", b"h"), Address(None, None, b"z", b"z")]),
    (b"A <@r1,@r2:u@h>", [Address(b"A", b"@r1,@r2", b"u", b"h")]),
    (b"A <abc>", [Address(b"A", None, b"abc", b"MISSING_DOMAIN")]),
    (b"A <u@h", [Address(b"A", None, b"u", b"SYNTAX_ERROR")]),
    (b"a@b junk, c@d", [Address(None, None, b"a", b"b")]),  # the list ends at garbage
    (b"a@b, (unclosed", [Address(None, None, b"a", b"b"), Address(None, None, b"MISSING_MAILBOX",
                                                                     b"MISSING_DOMAIN")]),
])
def test_address_lists_parse_like_dovecot(value: bytes, expected: list[Address]) -> None:
    assert fetchitems.parse_address_list(value) == expected


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["", "Bob", "Bob  Smith", "Mary.Q", "Zoë"]),
                          st.from_regex(r"[a-z0-9.+-]{1,8}", fullmatch=True),
                          st.from_regex(r"[a-z0-9.-]{1,8}", fullmatch=True)), min_size=1, max_size=4),
       st.sampled_from([",", " , ", ",\t"]))
def test_address_fast_path_agrees_with_the_full_parser(addrs: list[tuple[str, str, str]], sep: str) -> None:
    value = sep.join(f"{n} <{lp}@{d}>" if n else f"{lp}@{d}" for n, lp, d in addrs).encode()
    fast = fetchitems._simple_addresses(value)
    if fast is not None:
        assert fast == fetchitems.parse_address_list_slow(value)


# --------------------------------------------------------------------------- BODYSTRUCTURE

def test_bodystructure_of_plain_message_adds_default_charset_and_encoding() -> None:
    msg = crlf("Subject: x\n\nhello\nworld\n")
    assert fetchitems.bodystructure(msg) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 2 NIL NIL NIL NIL)'
    assert fetchitems.body(msg) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 14 2)'


def test_bodystructure_keeps_type_case_and_appends_charset_after_other_parameters() -> None:
    msg = crlf("Content-Type: TEXT/Plain; format=flowed\nContent-Transfer-Encoding: QUOTED-PRINTABLE\n\nx")
    assert fetchitems.bodystructure(msg) == \
        b'("TEXT" "Plain" ("format" "flowed" "charset" "us-ascii") NIL NIL "QUOTED-PRINTABLE" 1 0 NIL NIL NIL NIL)'


def test_bodystructure_of_multipart_with_attachment_and_extension_data() -> None:
    msg = crlf('Content-Type: multipart/mixed; boundary="b"\n\n--b\n\nhi\n--b\n'
               'Content-Type: application/pdf; name="r.pdf"\nContent-Disposition: attachment; filename="r.pdf"\n'
               "Content-ID: <c@x>\nContent-Description: Report\nContent-Transfer-Encoding: base64\n"
               "Content-Language: en, de\nContent-Location: http://x/r\nContent-MD5: abc=\n\nAAAA\n--b--\n")
    assert fetchitems.bodystructure(msg) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 2 0 NIL NIL NIL NIL)'
        b'("application" "pdf" ("name" "r.pdf") "<c@x>" "Report" "base64" 4 "abc=" '
        b'("attachment" ("filename" "r.pdf")) ("en" "de") "http://x/r") "mixed" ("boundary" "b") NIL NIL NIL)')
    assert fetchitems.body(msg) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 2 0)'
        b'("application" "pdf" ("name" "r.pdf") "<c@x>" "Report" "base64" 4) "mixed")')


def test_bodystructure_of_multipart_without_parts_shows_one_empty_text_part() -> None:
    msg = crlf("Content-Type: multipart/mixed\n\nno parts\n")
    assert fetchitems.body(msg) == b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'


def test_bodystructure_of_message_rfc822_has_envelope_body_and_lines() -> None:
    msg = crlf("Content-Type: Message/RFC822\n\nSubject: in\n\ninner\n")
    assert fetchitems.body(msg) == (
        b'("message" "rfc822" NIL NIL NIL "7bit" 22 (NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 7 1) 3)')


# --------------------------------------------------------------------------- BODY[section]

NESTED = crlf("Subject: outer\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nfirst\n--b\n"
              "Content-Type: message/rfc822\n\nSubject: inner\nContent-Type: multipart/alternative; boundary=c\n\n"
              "--c\nContent-Type: text/plain\n\ninner text\n--c--\n--b--\n")


@pytest.mark.parametrize(("section", "expected"), [
    ("", NESTED),
    ("HEADER", crlf("Subject: outer\nContent-Type: multipart/mixed; boundary=b\n\n")),
    ("1", b"first"),
    ("1.1", b"first"),  # a leaf answers to ".1" once (Dovecot)
    ("1.1.1", b""),
    ("1.MIME", b"\r\n"),
    ("2.HEADER", crlf("Subject: inner\nContent-Type: multipart/alternative; boundary=c\n\n")),
    ("2.HEADER.FIELDS (subject)", crlf("Subject: inner\n\n")),
    ("2.HEADER.FIELDS.NOT (Subject)", crlf("Content-Type: multipart/alternative; boundary=c\n\n")),
    ("2.TEXT", crlf("--c\nContent-Type: text/plain\n\ninner text\n--c--\n")),  # close line keeps its CRLF
    ("2.1", b"inner text"),
    ("2.1.MIME", crlf("Content-Type: text/plain\n\n")),
    ("2.1.TEXT", b""),  # TEXT exists only for message/rfc822 parts
    ("1.HEADER", b""),
    ("3", b""),
    ("HEADER.FIELDS (X-NONE)", b"\r\n"),
])
def test_body_sections_resolve_parts_like_dovecot(section: str, expected: bytes) -> None:
    assert fetchitems.body_section(NESTED, section) == expected


def test_partial_fetch_cuts_the_section_and_names_only_the_origin() -> None:
    sec = fetchitems.parse_section("1")
    assert fetchitems.body_section(NESTED, sec, (1, 3)) == b"irs"
    assert fetchitems.body_section(NESTED, sec, (100, 3)) == b""
    assert fetchitems.body_section(NESTED, sec, (2, None)) == b"rst"
    assert fetchitems.section_item(sec, (1, 3)) == b"BODY[1]<1>"
    assert fetchitems.section_item(fetchitems.parse_section("header.fields (from to)")) == \
        b"BODY[HEADER.FIELDS (FROM TO)]"


def test_body_section_accepts_the_parsers_section_objects() -> None:
    cmd = parser.parse_bytes(b"a FETCH 1 (BODY.PEEK[2.HEADER.FIELDS (subject)]<0.7>)")
    assert isinstance(cmd, parser.Fetch)
    item = cmd.items[0]
    assert isinstance(item, parser.FetchBody)
    assert fetchitems.body_section(NESTED, item.section, item.partial) == b"Subject"


@pytest.mark.parametrize("text", ["MIME", "HEADER.FIELDS", "0", "1.X", "TEXT (a)", "1..2"])
def test_invalid_sections_raise(text: str) -> None:
    with pytest.raises(InvalidSection):
        fetchitems.parse_section(text)
    with pytest.raises(InvalidSection):
        Section((), "MIME")


def test_nul_bytes_are_sent_as_0x80() -> None:
    msg = b"Subject: x\r\n\r\na\x00b"
    assert fetchitems.body_section(msg, "TEXT") == b"a\x80b"
    assert encode.literal(b"\x00") == b"{1}\r\n\x80"


def test_header_fields_of_a_nested_header_without_empty_line_read_on_like_dovecot() -> None:
    msg = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\n"
               "Subject: inner\nX: y\n--b\nContent-Type: text/plain\n\nz\n--b--\n")
    assert fetchitems.body_section(msg, "1.HEADER") == b"Subject: inner\r\nX: y"
    assert fetchitems.body_section(msg, "1.HEADER.FIELDS (X)") == b"X: y\r\n\r\n"
    # Dovecot's filter continues to the next empty line, into the following part
    assert fetchitems.body_section(msg, "1.HEADER.FIELDS (CONTENT-TYPE)") == b"Content-Type: text/plain\r\n\r\n"


def test_bare_lf_messages_are_served_with_crlf() -> None:
    msg = b"Subject: x\n\na\nb\n"
    assert fetchitems.body_section(msg, "TEXT") == b"a\r\nb\r\n"
    assert fetchitems.rfc822_size(msg) == len(msg) + 4


# --------------------------------------------------------------------------- simple items

def test_internaldate_uses_the_given_zone_and_zero_padded_day() -> None:
    assert fetchitems.internaldate(837596665, timezone(timedelta(hours=-7))) == b'"17-Jul-1996 02:44:25 -0700"'
    assert fetchitems.internaldate(1704153600, UTC) == b'"02-Jan-2024 00:00:00 +0000"'
    assert fetchitems.internaldate(1704153600, timezone(timedelta(hours=5, minutes=30))) == \
        b'"02-Jan-2024 05:30:00 +0530"'


def test_flags_list() -> None:
    assert fetchitems.flags(["\\Seen", "$Label"]) == b"(\\Seen $Label)"
    assert fetchitems.flags([]) == b"()"


# --------------------------------------------------------------------------- robustness

@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.binary(max_size=40), st.integers(0, 4000))
def test_rendering_never_raises_on_damaged_messages(sample: Path, junk: bytes, where: int) -> None:
    raw = sample.read_bytes()
    msg = raw[:where] + junk + raw[where + len(junk):]
    fetchitems.envelope(msg)
    tree = mime.parse(mime.to_crlf(msg))
    fetchitems.bodystructure(mime.to_crlf(msg), tree=tree)
    for section in ("", "1", "1.MIME", "2.1", "2.HEADER", "1.TEXT", "HEADER.FIELDS (FROM)"):
        fetchitems.body_section(msg, section)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_address_parser_never_raises_and_always_terminates(value: bytes) -> None:
    for a in fetchitems.parse_address_list(value):
        assert isinstance(a, Address)


# --------------------------------------------------------------------------- ENVELOPE cost

@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_envelope_needs_only_the_header_bytes(sample: Path) -> None:
    msg = mime.to_crlf(sample.read_bytes())
    header = msg[:fetchitems.header_end(msg)]
    assert fetchitems.envelope(header) == fetchitems.envelope(msg)


def test_ten_thousand_envelopes_render_quickly() -> None:
    import time

    headers = [mime.to_crlf(p.read_bytes()) for p in SAMPLES]
    headers = [h[:fetchitems.header_end(h)] for h in headers]
    start = time.process_time()
    for i in range(10_000):
        fetchitems.envelope(headers[i % len(headers)])
    # about 1 s on a 2-vCPU machine; the bound only catches pathological slowdowns
    assert time.process_time() - start < 15
