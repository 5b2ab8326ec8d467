"""IMAP command parser: one small test per grammar corner (RFC 3501 §9 and the extensions we take)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from mailhaven.imap.commands import (
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Compress,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttr,
    FetchBinary,
    FetchBody,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    ParseError,
    Qresync,
    Rename,
    Search,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchNot,
    SearchOr,
    SearchSet,
    SearchSize,
    SearchText,
    Section,
    Select,
    SelectParam,
    StartTls,
    Status,
    Store,
    Subscribe,
    Unselect,
    Unsubscribe,
)
from mailhaven.imap.framing import RawCommand
from mailhaven.imap.parser import decode_sasl, parse_bytes, parse_command
from mailhaven.imap.seqset import SequenceSet

P = parse_bytes


def bad(data: bytes, *, max_nesting: int = 32) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_bytes(data, max_nesting=max_nesting)
    return info.value


def seq(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


def fetch_items(data: bytes) -> tuple[object, ...]:
    cmd = P(data)
    assert isinstance(cmd, Fetch)
    return cmd.items


def criteria(data: bytes) -> tuple[object, ...]:
    cmd = P(data)
    assert isinstance(cmd, Search)
    return cmd.criteria.keys


# --- simple commands and the tag -------------------------------------------------------------------

@pytest.mark.parametrize(("line", "cls"), [
    (b"a CAPABILITY", Capability), (b"a noop", Noop), (b"a LOGOUT", Logout), (b"a StartTLS", StartTls),
    (b"a CHECK", Check), (b"a CLOSE", Close), (b"a IDLE", Idle), (b"a NAMESPACE", Namespace),
    (b"a UNSELECT", Unselect),
])
def test_commands_without_arguments(line: bytes, cls: type) -> None:
    assert P(line) == cls("a")


def test_command_names_are_case_insensitive_and_verb_is_upper() -> None:
    cmd = P(b"A001 cApAbIlItY")
    assert cmd == Capability("A001") and cmd.verb == "CAPABILITY"


def test_tag_may_contain_close_bracket_but_not_plus() -> None:
    assert P(b"a] NOOP").tag == "a]"
    err = bad(b"a+ NOOP")
    assert err.tag == "*" and err.kind == "BAD"


def test_arguments_after_argumentless_command_are_bad() -> None:
    err = bad(b"t7 NOOP now")
    assert err.response() == b"t7 BAD Unexpected extra arguments\r\n"


def test_unknown_command_is_bad_with_tag() -> None:
    err = bad(b"x1 FROBNICATE 1 2")
    assert (err.tag, err.kind, err.text) == ("x1", "BAD", "Unknown command")


def test_missing_command_name() -> None:
    assert bad(b"x1").tag == "x1"
    assert bad(b"x1 ").tag == "x1"


def test_empty_line_is_bad_untagged() -> None:
    assert bad(b"").response() == b"* BAD Empty command\r\n"


def test_double_space_is_bad() -> None:
    assert bad(b"a  NOOP").kind == "BAD"
    assert bad(b"a SELECT  INBOX").kind == "BAD"


# --- strings: atoms, quoted, literals, NIL --------------------------------------------------------------

def test_login_with_atoms() -> None:
    assert P(b"a LOGIN alice s3cret") == Login("a", "alice", "s3cret")


def test_login_password_repr_is_hidden() -> None:
    assert "s3cret" not in repr(P(b"a LOGIN alice s3cret"))


def test_quoted_string_with_escaped_quote_and_backslash() -> None:
    assert P(b'a LOGIN "al ice" "p\\"w\\\\d"') == Login("a", "al ice", 'p"w\\d')


def test_quoted_string_rejects_other_escapes() -> None:
    assert bad(b'a LOGIN "a\\nb" x').text == "Invalid escape in quoted string"


def test_unterminated_quoted_string() -> None:
    assert bad(b'a LOGIN "alice x').text == "Unterminated quoted string"


def test_quoted_string_accepts_8bit_utf8_like_dovecot() -> None:
    assert P('a LOGIN "jürgen" "pässword"'.encode()) == Login("a", "jürgen", "pässword")


def test_invalid_utf8_is_bad() -> None:
    assert bad(b'a LOGIN "j\xfcrgen" x').text == "Invalid UTF-8"


def test_quoted_string_rejects_nul() -> None:
    assert bad(b'a LOGIN "a\x00b" x').kind == "BAD"


def test_atom_rejects_8bit() -> None:
    assert bad("a LOGIN jürgen x".encode()).kind == "BAD"


def test_literal_with_more_arguments_after_it() -> None:
    assert P(b"a LOGIN {5}\r\nalice secret") == Login("a", "alice", "secret")


def test_two_literals() -> None:
    assert P(b"a LOGIN {5}\r\nalice {6}\r\nsecret") == Login("a", "alice", "secret")


def test_literal_plus() -> None:
    assert P(b"a LOGIN {5+}\r\nalice {6+}\r\nsecret") == Login("a", "alice", "secret")


def test_literal_may_hold_anything_including_crlf_and_quotes() -> None:
    assert P(b'a LOGIN {5}\r\na"\r\n} "x"') == Login("a", 'a"\r\n}', "x")


def test_empty_literal() -> None:
    assert P(b"a LOGIN {0}\r\n x") == Login("a", "", "x")


def test_empty_quoted_string() -> None:
    assert P(b'a LOGIN "" ""') == Login("a", "", "")


def test_literal_not_preceded_by_space_is_bad() -> None:
    assert bad(b"a LOGIN x{3}\r\nabc y").kind == "BAD"


def test_unexpected_trailing_literal() -> None:
    assert bad(b"a NOOP {3}\r\nabc").text in ("Unexpected literal", "Unexpected extra arguments")


def test_literal_parsed_from_raw_segments_is_never_rescanned() -> None:
    raw = RawCommand((b"a LOGIN ", b" ", b""), (b'" {3}\r\n', b"x"))
    assert parse_command(raw) == Login("a", '" {3}\r\n', "x")


def test_nil_in_id_and_nstring() -> None:
    assert P(b"a ID NIL") == Id("a", None)
    assert P(b'a ID ("name" "mutt" "version" NIL)') == Id("a", (("name", "mutt"), ("version", None)))
    assert P(b"a ID ()") == Id("a", ())


def test_id_with_literal_values() -> None:
    assert P(b'a ID ({4}\r\nname "x")') == Id("a", (("name", "x"),))


def test_id_field_must_be_a_string_not_an_atom() -> None:
    assert bad(b"a ID (name x)").kind == "BAD"


def test_id_more_than_30_pairs_is_bad() -> None:
    pairs = b" ".join(b'"k%d" "v"' % i for i in range(31))
    assert bad(b"a ID (" + pairs + b")").text == "Too many ID fields"


# --- AUTHENTICATE / SASL-IR -------------------------------------------------------------------------

def test_authenticate_without_initial_response() -> None:
    assert P(b"a AUTHENTICATE plain") == Authenticate("a", "PLAIN", None)


def test_authenticate_with_initial_response() -> None:
    assert P(b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==") == Authenticate("a", "PLAIN", b"\0alice\0secret")


def test_authenticate_empty_initial_response_is_equals_sign() -> None:
    assert P(b"a AUTHENTICATE EXTERNAL =") == Authenticate("a", "EXTERNAL", b"")


def test_authenticate_bad_base64() -> None:
    assert bad(b"a AUTHENTICATE PLAIN AGFsaWNl!").kind == "BAD"
    assert bad(b"a AUTHENTICATE PLAIN AGF").text == "Invalid base64"


def test_decode_sasl_continuation_lines() -> None:
    assert decode_sasl(b"*") is None
    assert decode_sasl(b"=") == b""
    assert decode_sasl(b"Zm9v") == b"foo"
    with pytest.raises(ParseError):
        decode_sasl(b"Zm9")
    with pytest.raises(ParseError):
        decode_sasl(b"")


# --- mailboxes ----------------------------------------------------------------------------------------

def test_inbox_is_case_insensitive() -> None:
    assert P(b"a SELECT inBox") == Select("a", "INBOX")
    assert P(b'a SELECT "INBOX"') == Select("a", "INBOX")


def test_other_names_keep_their_case() -> None:
    assert P(b"a SELECT Inbox.Sub") == Select("a", "Inbox.Sub")


def test_examine_is_readonly_select() -> None:
    cmd = P(b"a EXAMINE Sent")
    assert cmd == Select("a", "Sent", readonly=True) and cmd.verb == "EXAMINE"


def test_select_with_condstore_parameter() -> None:
    assert P(b"a SELECT INBOX (CONDSTORE)") == Select("a", "INBOX", params=(SelectParam("CONDSTORE"),))


def test_select_with_nested_parameter_value() -> None:
    cmd = P(b"a SELECT INBOX (X-OTHER (67890007 20050715194045000 41,43:211))")
    assert cmd == Select("a", "INBOX", params=(
        SelectParam("X-OTHER", ("67890007", "20050715194045000", "41,43:211")),))


def test_select_qresync_parameter_is_parsed() -> None:  # RFC 7162 §3.2.5
    cmd = P(b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211 (1:3 41,43:44)))")
    assert cmd == Select("a", "INBOX", qresync=Qresync(
        67890007, 20050715194045000, SequenceSet.parse("41,43:211"),
        (SequenceSet.parse("1:3"), SequenceSet.parse("41,43:44"))))
    assert P(b"a EXAMINE INBOX (CONDSTORE QRESYNC (1 2))") == Select(
        "a", "INBOX", True, (SelectParam("CONDSTORE"),), Qresync(1, 2))


def test_mailbox_names_are_modified_utf7_decoded() -> None:
    assert P(b"a CREATE Entw&APw-rfe") == Create("a", "Entwürfe")
    assert P(b'a DELETE "Tom &- Jerry"') == Delete("a", "Tom & Jerry")


def test_mailbox_name_not_in_modified_utf7_is_no_not_bad() -> None:
    # RFC 3501 §5.1.3: modified UTF-7 is a convention, not grammar. Such a name names no mailbox
    # that exists or can be created: NO, as Dovecot answers (imaptest "atoms"); it was BAD.
    e = bad(b"a5 SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}")
    assert e.response() == b"a5 NO [NONEXISTENT] Mailbox name is not valid modified UTF-7\r\n"
    for line in (b"a EXAMINE a&b", b"a STATUS a&b (MESSAGES)", b"a DELETE &Jjo", b"a UNSUBSCRIBE a&b",
                 b"a APPEND a&b {1+}\r\nx", b"a COPY 1 a&b", b"a UID MOVE 1 a&b", b"a RENAME a&b c"):
        e = bad(line)
        assert (e.kind, e.code) == ("NO", "NONEXISTENT"), line
    for line in (b"a CREATE a&b", 'a CREATE "Entwürfe"'.encode(), b"a RENAME c a&b", b"a SUBSCRIBE a&b"):
        e = bad(line)
        assert (e.kind, e.code) == ("NO", "CANNOT"), line  # a name no mailbox can be given


def test_syntax_error_after_a_name_not_in_modified_utf7_is_still_bad() -> None:
    assert bad(b"a STATUS a&b (NOSUCHITEM)").kind == "BAD"
    assert bad(b"a SELECT a&b extra").kind == "BAD"


def test_list_patterns_not_in_modified_utf7_are_accepted() -> None:
    # imaptest "atoms": every atom character in a pattern, "&" in a broken shift included.
    assert P(b"a LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*") == \
        List("a", "", "!#$&'+,-.0123456789:;<=>?@^_`|[}%*")
    assert P(b"a LIST \"\" ~foo") == List("a", "", "~foo")
    assert P(b"a LSUB &Jjo &AOQ-*") == Lsub("a", "&Jjo", "ä*")  # valid shifts are still decoded


def test_mailbox_name_may_contain_close_bracket_atom() -> None:
    assert P(b"a SUBSCRIBE [Gmail]/Sent]") == Subscribe("a", "[Gmail]/Sent]")


def test_rename_subscribe_unsubscribe() -> None:
    assert P(b'a RENAME "Old" {3}\r\nNew') == Rename("a", "Old", "New")
    assert P(b"a UNSUBSCRIBE Foo") == Unsubscribe("a", "Foo")


def test_list_with_wildcards_and_empty_reference() -> None:
    assert P(b'a LIST "" *') == List("a", "", "*")
    assert P(b"a LIST ~/Mail/ %/Sub*") == List("a", "~/Mail/", "%/Sub*")
    assert P(b'a LSUB "" "inbox"') == Lsub("a", "", "inbox")


def test_list_pattern_as_literal() -> None:
    assert P(b'a LIST "" {3}\r\nx.*') == List("a", "", "x.*")


def test_list_missing_pattern() -> None:
    assert bad(b'a LIST ""').text == "Missing arguments"


def test_status_items() -> None:
    assert P(b"a STATUS INBOX (messages UIDNEXT unseen)") == Status(
        "a", "INBOX", ("MESSAGES", "UIDNEXT", "UNSEEN"))


def test_status_unknown_item_is_bad() -> None:
    assert bad(b"a STATUS INBOX (MESSAGES BOGUS)").text == "Unknown status item BOGUS"


def test_status_empty_list_is_bad() -> None:
    assert bad(b"a STATUS INBOX ()").kind == "BAD"


# --- APPEND -------------------------------------------------------------------------------------------

def test_append_minimal() -> None:
    assert P(b"a APPEND INBOX {5}\r\nhello") == Append("a", "INBOX", (AppendMessage(frozenset(), None, b"hello"),))


def test_append_with_flags_and_date() -> None:
    cmd = P(b'a APPEND Drafts (\\seen \\DRAFT $Label1) "05-Jul-2024 10:11:12 +0200" {3+}\r\nabc')
    tz = timezone(timedelta(hours=2))
    assert cmd == Append("a", "Drafts", (AppendMessage(frozenset({"\\Seen", "\\Draft", "$Label1"}),
                                                       datetime(2024, 7, 5, 10, 11, 12, tzinfo=tz), b"abc"),))


def test_append_date_time_with_space_padded_day_and_negative_zone() -> None:
    cmd = P(b'a APPEND INBOX " 1-Feb-1994 21:52:25 -0800" {1}\r\nx')
    assert isinstance(cmd, Append)
    assert cmd.messages[0].internal_date == datetime(1994, 2, 1, 21, 52, 25, tzinfo=timezone(timedelta(hours=-8)))


def test_append_empty_flag_list() -> None:
    assert P(b"a APPEND INBOX () {1}\r\nx") == Append("a", "INBOX", (AppendMessage(frozenset(), None, b"x"),))


def test_multiappend_several_messages_each_with_its_options() -> None:  # RFC 3502 §6.3.11
    cmd = P(b'a APPEND INBOX (\\Seen) {2}\r\nm1 "05-Jul-2024 10:11:12 +0000" {2+}\r\nm2 ~{3}\r\nm\x003')
    assert isinstance(cmd, Append)
    assert [(m.flags, m.message, m.binary) for m in cmd.messages] == [
        (frozenset({"\\Seen"}), b"m1", False), (frozenset(), b"m2", False), (frozenset(), b"m\x003", True)]
    assert cmd.messages[1].internal_date is not None


def test_append_literal8_and_utf8_data() -> None:  # RFC 3516 §4.4, RFC 6855 §4
    cmd = P(b"a APPEND INBOX ~{2}\r\nhi")
    assert isinstance(cmd, Append) and cmd.messages[0].binary and not cmd.messages[0].utf8
    cmd = P(b"a APPEND INBOX () UTF8 (~{2}\r\nhi) UTF8 (~{2+}\r\nho)")
    assert isinstance(cmd, Append) and [(m.utf8, m.message) for m in cmd.messages] == [(True, b"hi"), (True, b"ho")]
    assert bad(b"a APPEND INBOX UTF8 ({2}\r\nhi)").kind == "BAD"  # UTF8 takes a literal8 only
    assert bad(b"a APPEND INBOX UTF8 (~{2}\r\nhi").kind == "BAD"
    assert bad(b"a APPEND INBOX {2}\r\nhi ").kind == "BAD"  # a space promises another message


def test_fetch_binary_items() -> None:  # RFC 3516 §4.2
    cmd = P(b"a FETCH 1 (BINARY[1.2]<0.10> binary.peek[] BINARY.SIZE[3])")
    assert isinstance(cmd, Fetch)
    assert cmd.items == (FetchBinary((1, 2), (0, 10)), FetchBinary((), peek=True), FetchBinary((3,), size=True))
    assert [i.response_name for i in cmd.items] == ["BINARY[1.2]<0>", "BINARY[]", "BINARY.SIZE[3]"]
    for wrong in (b"BINARY[1.TEXT]", b"BINARY[0]", b"BINARY", b"BINARY.SIZE[1]<0.1>", b"BINARY[1]<1>"):
        assert bad(b"a FETCH 1 (" + wrong + b")").kind == "BAD", wrong


def test_compress() -> None:  # RFC 4978 §3
    assert P(b"a COMPRESS deflate") == Compress("a", "DEFLATE")
    assert bad(b"a COMPRESS").kind == "BAD"


def test_append_message_must_be_a_literal() -> None:
    assert bad(b'a APPEND INBOX "hello"').kind == "BAD"


def test_append_recent_flag_is_bad() -> None:
    assert bad(b"a APPEND INBOX (\\Recent) {1}\r\nx").text == "Invalid system flag \\Recent"


@pytest.mark.parametrize("when", [b'"31-Feb-2024 10:00:00 +0000"', b'"01-Foo-2024 10:00:00 +0000"',
                                  b'"01-Feb-2024 25:00:00 +0000"', b'"01-Feb-2024 10:00:00 0000"',
                                  b'"01-Feb-2024 10:00:00 +2400"', b'"01-Feb-24 10:00:00 +0000"',
                                  b'"01-Feb-2024 10:00 +0000"'])
def test_append_invalid_date_time_is_bad(when: bytes) -> None:
    assert bad(b"a APPEND INBOX " + when + b" {1}\r\nx").kind == "BAD"


def test_append_of_several_messages_needs_a_space_between() -> None:
    assert bad(b"a APPEND INBOX {1}\r\nx{1}\r\ny").kind == "BAD"


# --- sequence sets ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["*:4", "4:*", "1,3:5,7:*", "*", "1", "5:3", "4294967295"])
def test_sequence_sets_in_fetch(text: str) -> None:
    cmd = P(b"a FETCH " + text.encode() + b" FLAGS")
    assert isinstance(cmd, Fetch) and cmd.set == seq(text)


@pytest.mark.parametrize("text", ["0", "4294967296", "1:0", "1,,2", "99999999999999999999", "1:"])
def test_invalid_sequence_sets_are_bad(text: str) -> None:
    err = bad(b"a FETCH " + text.encode() + b" FLAGS")
    assert err.tag == "a" and err.kind == "BAD"


# --- FETCH --------------------------------------------------------------------------------------------

def test_fetch_macros_expand() -> None:
    assert fetch_items(b"a FETCH 1 ALL") == tuple(FetchAttr(n) for n in (
        "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"))
    assert fetch_items(b"a FETCH 1 fast") == tuple(FetchAttr(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE"))
    assert fetch_items(b"a FETCH 1 FULL")[-1] == FetchAttr("BODY")


def test_fetch_macro_inside_list_is_bad() -> None:
    assert bad(b"a FETCH 1 (ALL)").kind == "BAD"


def test_fetch_single_attribute_without_parens() -> None:
    assert fetch_items(b"a FETCH 1 rfc822.size") == (FetchAttr("RFC822.SIZE"),)


def test_fetch_simple_attributes() -> None:
    names = ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE", "UID", "RFC822",
             "RFC822.HEADER", "RFC822.TEXT")
    assert fetch_items(b"a FETCH 1 (" + " ".join(names).encode() + b")") == tuple(FetchAttr(n) for n in names)


def test_fetch_body_whole_message() -> None:
    assert fetch_items(b"a FETCH 1 BODY[]") == (FetchBody(Section()),)


def test_fetch_body_peek_header() -> None:
    item = fetch_items(b"a FETCH 1 (BODY.PEEK[HEADER])")[0]
    assert item == FetchBody(Section(text="HEADER"), peek=True)
    assert isinstance(item, FetchBody) and item.response_name == "BODY[HEADER]"


def test_fetch_partial() -> None:
    item = fetch_items(b"a FETCH 1 BODY[]<0.1024>")[0]
    assert item == FetchBody(Section(), (0, 1024))
    assert isinstance(item, FetchBody) and item.response_name == "BODY[]<0>"


def test_fetch_partial_length_must_be_non_zero() -> None:
    assert bad(b"a FETCH 1 BODY[]<0.0>").text == "Number must not be zero"


def test_fetch_partial_overflow_is_bad() -> None:
    assert bad(b"a FETCH 1 BODY[]<4294967296.1>").text == "Number out of range"


def test_fetch_header_fields_list() -> None:
    item = fetch_items(b"a FETCH 1 BODY.PEEK[HEADER.FIELDS (From to Message-ID)]")[0]
    assert item == FetchBody(Section(text="HEADER.FIELDS", fields=("FROM", "TO", "MESSAGE-ID")), peek=True)
    assert isinstance(item, FetchBody)
    assert item.response_name == "BODY[HEADER.FIELDS (FROM TO MESSAGE-ID)]"


def test_fetch_header_fields_not() -> None:
    assert fetch_items(b"a FETCH 1 BODY[HEADER.FIELDS.NOT (Received)]") == (
        FetchBody(Section(text="HEADER.FIELDS.NOT", fields=("RECEIVED",))),)


def test_fetch_header_fields_with_literal_and_quoted_field_names() -> None:
    items = fetch_items(b'a FETCH 1 (BODY[HEADER.FIELDS ({7}\r\nSubject "Date")] FLAGS)')
    assert items == (FetchBody(Section(text="HEADER.FIELDS", fields=("SUBJECT", "DATE"))), FetchAttr("FLAGS"))


def test_fetch_header_fields_needs_a_list() -> None:
    assert bad(b"a FETCH 1 BODY[HEADER.FIELDS]").kind == "BAD"
    assert bad(b"a FETCH 1 BODY[HEADER.FIELDS ()]").kind == "BAD"


def test_fetch_header_field_name_with_colon_is_bad() -> None:
    assert bad(b'a FETCH 1 BODY[HEADER.FIELDS ("From:")]').text == "Invalid header field name"


@pytest.mark.parametrize(("section", "expected"), [
    (b"1", Section((1,))),
    (b"1.2.3", Section((1, 2, 3))),
    (b"1.2.HEADER", Section((1, 2), "HEADER")),
    (b"1.2.TEXT", Section((1, 2), "TEXT")),
    (b"4.MIME", Section((4,), "MIME")),
    (b"text", Section((), "TEXT")),
    (b"3.header.fields (x-spam)", Section((3,), "HEADER.FIELDS", ("X-SPAM",))),
])
def test_fetch_nested_part_sections(section: bytes, expected: Section) -> None:
    assert fetch_items(b"a FETCH 1 BODY[" + section + b"]") == (FetchBody(expected),)


@pytest.mark.parametrize("section", [b"0", b"1.0", b"MIME", b"1.", b".1", b"1..2", b"HEADERS", b"1.FOO",
                                     b"4294967296", b"1.2.HEADER.TEXT"])
def test_fetch_invalid_sections_are_bad(section: bytes) -> None:
    assert bad(b"a FETCH 1 BODY[" + section + b"]").kind == "BAD"


def test_fetch_body_peek_needs_a_section() -> None:
    assert bad(b"a FETCH 1 BODY.PEEK").text == "Unknown fetch item BODY.PEEK"


def test_fetch_unknown_item_is_bad() -> None:
    assert bad(b"a FETCH 1 (FLAGS BOGUS)").text == "Unknown fetch item BOGUS"


def test_fetch_unclosed_list_is_bad() -> None:
    assert bad(b"a FETCH 1 (FLAGS UID").kind == "BAD"


def test_section_str_renders_canonical_form() -> None:
    assert str(Section((1, 2), "HEADER.FIELDS", ("A", "B"))) == "1.2.HEADER.FIELDS (A B)"
    assert str(Section()) == ""


# --- STORE / COPY / MOVE / EXPUNGE / UID ---------------------------------------------------------

def test_store_modes() -> None:
    assert P(b"a STORE 1 FLAGS (\\Seen)") == Store("a", seq("1"), "set", frozenset({"\\Seen"}))
    assert P(b"a STORE 1:* +FLAGS.SILENT (\\Deleted)") == Store(
        "a", seq("1:*"), "add", frozenset({"\\Deleted"}), silent=True)
    assert P(b"a STORE 2 -flags \\flagged $Work") == Store(
        "a", seq("2"), "remove", frozenset({"\\Flagged", "$Work"}))


def test_store_empty_flag_list_clears() -> None:
    assert P(b"a STORE 1 FLAGS ()") == Store("a", seq("1"), "set", frozenset())


def test_store_unknown_system_flag_is_bad() -> None:
    assert bad(b"a STORE 1 +FLAGS (\\Bogus)").kind == "BAD"


def test_store_bad_item() -> None:
    assert bad(b"a STORE 1 +LABELS (x)").text == "Expected FLAGS, +FLAGS or -FLAGS"


def test_copy_and_move() -> None:
    assert P(b"a COPY 2:4 Archive") == Copy("a", seq("2:4"), "Archive")
    assert P(b'a MOVE 1 "Trash"') == Move("a", seq("1"), "Trash")


def test_uid_commands() -> None:
    assert P(b"a UID COPY 1:* Archive") == Copy("a", seq("1:*"), "Archive", uid=True)
    assert P(b"a uid move 7 Trash") == Move("a", seq("7"), "Trash", uid=True)
    assert P(b"a UID STORE 5 +FLAGS (\\Seen)") == Store("a", seq("5"), "add", frozenset({"\\Seen"}), uid=True)
    assert P(b"a UID EXPUNGE 3:5") == Expunge("a", seq("3:5"))
    assert P(b"a UID SEARCH ALL") == Search("a", SearchAnd((SearchAll(),)), uid=True)


def test_uid_fetch_adds_uid_item_first() -> None:
    cmd = P(b"a UID FETCH 1:* (FLAGS)")
    assert cmd == Fetch("a", seq("1:*"), (FetchAttr("UID"), FetchAttr("FLAGS")), uid=True)
    assert P(b"a UID FETCH 1 (FLAGS UID)") == Fetch("a", seq("1"), (FetchAttr("FLAGS"), FetchAttr("UID")),
                                                    uid=True)


def test_uid_with_unknown_subcommand() -> None:
    assert bad(b"a UID NOOP").text == "Unknown UID command NOOP"


def test_expunge_plain_and_uid() -> None:
    cmd = P(b"a EXPUNGE")
    assert cmd == Expunge("a") and isinstance(cmd, Expunge) and not cmd.uid
    assert bad(b"a UID EXPUNGE").text == "Missing arguments"


# --- ENABLE ---------------------------------------------------------------------------------------

def test_enable() -> None:
    assert P(b"a ENABLE condstore UTF8=ACCEPT") == Enable("a", ("CONDSTORE", "UTF8=ACCEPT"))
    assert bad(b"a ENABLE").kind == "BAD"


# --- SEARCH ---------------------------------------------------------------------------------------

def test_search_simple_flag_keys() -> None:
    assert criteria(b"a SEARCH UNSEEN deleted") == (SearchFlag("\\Seen", False), SearchFlag("\\Deleted"))


def test_search_new_is_recent_and_unseen() -> None:
    assert criteria(b"a SEARCH NEW") == (SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False))),)
    assert criteria(b"a SEARCH OLD") == (SearchFlag("\\Recent", False),)


def test_search_keyword() -> None:
    assert criteria(b"a SEARCH KEYWORD $Junk UNKEYWORD \\Seen") == (
        SearchFlag("$Junk"), SearchFlag("\\Seen", False))


def test_search_header_keys_and_strings() -> None:
    assert criteria(b'a SEARCH FROM alice SUBJECT "hello world" HEADER X-Spam {3}\r\nyes') == (
        SearchHeader("From", "alice"), SearchHeader("Subject", "hello world"), SearchHeader("X-Spam", "yes", "header"))


def test_search_header_empty_value() -> None:
    assert criteria(b'a SEARCH HEADER List-Id ""') == (SearchHeader("List-Id", "", "header"),)


def test_search_body_and_text() -> None:
    assert criteria(b"a SEARCH BODY x TEXT y") == (SearchText("x", False), SearchText("y", True))


def test_search_dates_quoted_or_not() -> None:
    assert criteria(b'a SEARCH SINCE 1-Feb-1994 BEFORE "15-mar-2024" SENTON 01-Jan-2000') == (
        SearchDate("since", date(1994, 2, 1)), SearchDate("before", date(2024, 3, 15)),
        SearchDate("on", date(2000, 1, 1), sent=True))


def test_search_invalid_date() -> None:
    assert bad(b"a SEARCH SINCE 30-Feb-2024").text == "Invalid date"
    assert bad(b"a SEARCH ON 1-Feb-94").text == "Invalid year"


def test_search_sizes() -> None:
    assert criteria(b"a SEARCH LARGER 1000 SMALLER 5000000000") == (
        SearchSize("larger", 1000), SearchSize("smaller", 5000000000))


def test_search_sequence_set_and_uid_keys() -> None:
    assert criteria(b"a SEARCH 1:5,* UID 4:*") == (
        SearchSet(seq("1:5,*")), SearchSet(seq("4:*"), uid=True))


def test_search_nested_or_not_and_parens() -> None:
    assert criteria(b"a SEARCH OR (FROM a NOT SEEN) OR DELETED NOT (TO b LARGER 5) ALL") == (
        SearchOr(
            SearchAnd((SearchHeader("From", "a"), SearchNot(SearchFlag("\\Seen")))),
            SearchOr(SearchFlag("\\Deleted"),
                     SearchNot(SearchAnd((SearchHeader("To", "b"), SearchSize("larger", 5)))))),
        SearchAll())


def test_search_not_not() -> None:
    assert criteria(b"a SEARCH NOT NOT SEEN") == (SearchNot(SearchNot(SearchFlag("\\Seen"))),)


def test_search_charset_accepted_case_insensitively() -> None:
    cmd = P(b"a SEARCH charset utf-8 SUBJECT {6}\r\n\xc3\xa4pfel")
    assert cmd == Search("a", SearchAnd((SearchHeader("Subject", "äpfel"),)), charset="UTF-8")
    assert P(b'a SEARCH CHARSET "US-ASCII" ALL') == Search("a", SearchAnd((SearchAll(),)), charset="US-ASCII")


def test_search_unknown_charset_is_no_badcharset() -> None:
    err = bad(b"a SEARCH CHARSET ISO-8859-1 ALL")
    assert err.kind == "NO" and err.code == "BADCHARSET (US-ASCII UTF-8)"
    assert err.response() == b"a NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n"


def test_search_unknown_key_is_bad() -> None:
    assert bad(b"a SEARCH FOO").text == "Unknown search key FOO"


def test_search_missing_argument() -> None:
    assert bad(b"a SEARCH FROM").text == "Missing arguments"
    assert bad(b"a SEARCH OR SEEN").text == "Missing arguments"
    assert bad(b"a SEARCH").text == "Missing arguments"


def test_search_unbalanced_parens() -> None:
    assert bad(b"a SEARCH (SEEN").kind == "BAD"
    assert bad(b"a SEARCH SEEN)").kind == "BAD"
    assert bad(b"a SEARCH ()").kind == "BAD"


def test_search_nesting_depth_is_bounded() -> None:
    assert criteria(b"a SEARCH " + b"(" * 31 + b"SEEN" + b")" * 31)
    assert bad(b"a SEARCH " + b"(" * 32 + b"SEEN" + b")" * 32).text == "Search criteria too deeply nested"
    assert bad(b"a SEARCH " + b"NOT " * 5000 + b"SEEN").text == "Search criteria too deeply nested"
    assert bad(b"a SEARCH " + b"OR SEEN " * 5000 + b"SEEN").kind == "BAD"


def test_search_nesting_depth_follows_config() -> None:
    assert bad(b"a SEARCH NOT NOT NOT SEEN", max_nesting=3).kind == "BAD"
    assert criteria(b"a SEARCH NOT NOT SEEN")


# --- numbers ----------------------------------------------------------------------------------------

def test_number_overflow_is_bad_not_a_crash() -> None:
    assert bad(b"a SEARCH LARGER 99999999999999999999999").text == "Number out of range"
    assert bad(b"a SEARCH LARGER " + b"9" * 10000).text == "Number out of range"
    assert bad(b"a FETCH " + b"9" * 10000 + b" FLAGS").kind == "BAD"


def test_tab_inside_a_quoted_string_is_a_text_char() -> None:
    # RFC 3501 §9: QUOTED-CHAR is any TEXT-CHAR (CHAR but CR/LF) except quoted-specials; Dovecot agrees.
    cmd = parse_bytes(b'a LOGIN "al\tice" "pa\x01ss"')
    assert cmd.username == "al\tice" and cmd.password == "pa\x01ss"


def test_nul_inside_a_quoted_string_is_bad() -> None:
    with pytest.raises(ParseError):
        parse_bytes(b'a LOGIN "al\x00ice" "x"')
