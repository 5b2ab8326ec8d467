"""message/mime.py: the MIME part tree (offsets, sizes, boundaries, Content-* fields, limits)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailhaven.message import mime

DATA = Path(__file__).resolve().parent.parent / "data" / "mime"
SAMPLES = sorted(DATA.glob("*.eml"))


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def body(msg: bytes, part: mime.Part) -> bytes:
    return msg[part.body_start:part.body_end]


def test_single_part_message_has_header_and_body_offsets_and_line_count() -> None:
    msg = crlf("Subject: x\nContent-Type: text/plain\n\nline 1\nline 2\n")
    root = mime.parse(msg)
    assert msg[root.header_start:root.header_end] == crlf("Subject: x\nContent-Type: text/plain\n\n")
    assert body(msg, root) == crlf("line 1\nline 2\n")
    assert (root.body_size, root.body_lines, root.is_text, root.children) == (16, 2, True, [])


def test_missing_content_type_defaults_to_text_plain_but_is_reported_missing() -> None:
    root = mime.parse(crlf("Subject: x\n\nhi\n"))
    assert root.ctype is None and root.is_text and not root.is_multipart


def test_multipart_children_exclude_preamble_epilogue_and_the_crlf_before_each_boundary() -> None:
    msg = crlf('Content-Type: multipart/mixed; boundary="b"\n\npreamble\n--b\n\none\n--b\n'
               "Content-Type: text/html\n\n<p>two</p>\n\n--b--\nepilogue\n")
    root = mime.parse(msg)
    assert root.is_multipart and len(root.children) == 2
    one, two = root.children
    assert body(msg, one) == b"one"
    assert body(msg, two) == b"<p>two</p>\r\n"  # RFC 2046 §5.1.1: only the last CRLF is the boundary's
    assert two.ctype == b"text" and two.csubtype == b"html"
    assert body(msg, root).endswith(b"epilogue\r\n")


def test_missing_close_delimiter_ends_the_multipart_at_the_end_of_the_message() -> None:
    msg = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo, never closed\n")
    root = mime.parse(msg)
    assert [body(msg, p) for p in root.children] == [b"one", b"two, never closed\r\n"]


def test_boundary_lines_may_carry_trailing_text_like_dovecot() -> None:
    msg = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b   \n\none\n--bogus\n\ntwo\n--b--\n")
    root = mime.parse(msg)
    # "--bogus" starts with "--b": Dovecot treats it as a boundary line too
    assert [body(msg, p) for p in root.children] == [b"one", b"two"]


def test_the_longest_matching_boundary_wins_so_an_outer_boundary_closes_an_unclosed_inner_one() -> None:
    msg = crlf("Content-Type: multipart/mixed; boundary=outer\n\n--outer\n"
               "Content-Type: multipart/alternative; boundary=out\n\n--out\n\ninner one\n--out\n\ninner two\n"
               "--outer\n\nouter two\n--outer--\n")
    root = mime.parse(msg)
    assert len(root.children) == 2
    inner, outer_two = root.children
    assert [body(msg, p) for p in inner.children] == [b"inner one", b"inner two"]
    assert body(msg, outer_two) == b"outer two"


def test_multipart_without_boundary_parameter_or_boundary_lines_has_no_children() -> None:
    assert mime.parse(crlf("Content-Type: multipart/mixed\n\n--x\n\nnot a part\n--x--\n")).children == []
    assert mime.parse(crlf("Content-Type: multipart/mixed; boundary=q\n\nno boundary\n")).children == []


def test_message_rfc822_part_has_the_encapsulated_message_as_its_only_child() -> None:
    msg = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\n"
               "Subject: inner\nContent-Type: multipart/alternative; boundary=c\n\n--c\n\ninner text\n--c--\n"
               "--b--\n")
    root = mime.parse(msg)
    (rfc822,) = root.children
    assert rfc822.is_message and len(rfc822.children) == 1
    inner = rfc822.children[0]
    assert msg[inner.header_start:inner.header_start + 14] == b"Subject: inner"
    assert inner.is_multipart and body(msg, inner.children[0]) == b"inner text"
    assert rfc822.body_start == inner.header_start and rfc822.body_end == inner.body_end


def test_parts_of_a_digest_default_to_message_rfc822() -> None:
    msg = crlf("Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: entry\n\nbody\n--d--\n")
    (entry,) = mime.parse(msg).children
    assert entry.is_message and entry.ctype == b"message" and entry.csubtype == b"rfc822"


def test_header_cut_by_a_boundary_gives_an_empty_body() -> None:
    msg = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n--b--\n")
    (part,) = mime.parse(msg).children
    assert msg[part.header_start:part.header_end] == b"Content-Type: text/plain"
    assert part.body_size == 0


def test_crlf_of_a_cut_header_belongs_to_the_parts_ending_at_that_boundary() -> None:
    msg = crlf("Content-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: multipart/mixed; boundary=i\n\n"
               "--i\n\none\n--i\nno colon header\n--o--\n")
    (inner,) = mime.parse(msg).children
    cut = inner.children[1]
    assert msg[cut.header_start:cut.header_end] == b"no colon header"
    assert body(msg, inner).endswith(b"no colon header\r\n")  # Dovecot moves the CRLF to the parent


def test_own_boundary_right_after_the_empty_line_starts_the_body() -> None:
    msg = crlf("Content-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: multipart/mixed; boundary=o\n\n"
               "--o\n\ninner\n--o--\n\n--o--\n")
    (nested,) = mime.parse(msg).children
    assert [body(msg, p) for p in nested.children] == [b"inner"]


def test_content_type_keeps_case_comments_and_quoted_parameters() -> None:
    msg = crlf('Content-Type: Text/Plain ; Charset = "UTF-8" (c) ; name="a;b \\"q\\".txt"\n\nx')
    root = mime.parse(msg)
    assert (root.ctype, root.csubtype) == (b"Text", b"Plain")
    assert root.params == [(b"Charset", b"UTF-8"), (b"name", b'a;b "q".txt')]
    assert root.param(b"charset") == b"UTF-8"


def test_broken_content_type_keeps_what_could_be_read_and_drops_parameters() -> None:
    assert (lambda p: (p.ctype, p.csubtype, p.is_text))(mime.parse(crlf("Content-Type: text\n\n"))) == \
        (b"text", b"", True)
    # but with anything after a type lacking "/", Dovecot drops the type altogether
    assert (lambda p: (p.ctype, p.params, p.is_text))(mime.parse(crlf("Content-Type: text; a=b\n\n"))) == \
        (b"", [], False)
    assert mime.parse(crlf("Content-Type: ; charset=x\n\n")).ctype == b""
    assert mime.parse(crlf("Content-Type: a/b; broken\n\n")).params == []


def test_rfc2231_continuations_are_merged_without_decoding() -> None:
    raw = [(b"filename*0*", b"utf-8''a%20"), (b"filename*1", b"b c"), (b"x", b"1"), (b"name*", b"utf-8''z")]
    assert mime.merge_rfc2231(raw) == [(b"x", b"1"), (b"filename*", b"utf-8''a%20b c"), (b"name*", b"utf-8''z")]
    # a gap in the numbering keeps the pieces separate
    assert mime.merge_rfc2231([(b"f*0", b"a"), (b"f*2", b"c")]) == [(b"f*0", b"a"), (b"f*2", b"c")]
    # plain continuations, out of order
    assert mime.merge_rfc2231([(b"n*1", b"b"), (b"n*0", b"a")]) == [(b"n", b"ab")]


def test_first_content_field_wins_except_disposition() -> None:
    msg = crlf("MIME-Version: 1.0\nContent-ID: <a>\nContent-ID: <b>\nContent-Disposition: inline\n"
               "Content-Disposition: attachment; filename=x\nContent-Language: en, de-CH (Swiss)\n"
               "Content-Transfer-Encoding: Base64 (comment)\n\n")
    root = mime.parse(msg)
    assert root.content_id == b"<a>"
    assert root.disposition == b"attachment" and root.disposition_params == [(b"filename", b"x")]
    assert root.language == [b"en", b"de-CH"]
    assert root.encoding == b"Base64"


def test_to_crlf_converts_only_bare_line_feeds() -> None:
    assert mime.to_crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    same = b"a\r\nb\r\n"
    assert mime.to_crlf(same) is same


def test_iter_fields_unfolds_nothing_and_reports_raw_offsets() -> None:
    msg = crlf("Subject: a\n  b\nX-Empty:\nNo colon here\n\nbody")
    fields = list(mime.iter_fields(msg, 0, msg.index(b"\r\n\r\n") + 4))
    assert [(f.name, f.value) for f in fields] == [
        (b"Subject", b"a\r\n  b"), (b"X-Empty", b""), (b"", b"")]  # no colon: no name (Dovecot)
    assert msg[fields[0].start:fields[0].end] == b"Subject: a\r\n  b\r\n"
    assert mime.unfold(fields[0].value) == b"a  b"


def test_nesting_is_bounded_and_deep_messages_do_not_raise() -> None:
    depth = 5000
    msg = b"".join(b"Content-Type: multipart/mixed; boundary=b%d-x\r\n\r\n--b%d-x\r\n" % (i, i)
                   for i in range(depth)) + b"\r\nleaf\r\n"
    root = mime.parse(msg)
    levels = 0
    part = root
    while part.children:
        part = part.children[0]
        levels += 1
    # as in Dovecot: the part at the limit becomes an opaque application/octet-stream leaf
    assert levels == mime.MAX_DEPTH - 1
    assert (part.ctype, part.csubtype, part.is_multipart) == (b"application", b"octet-stream", False)
    assert part.param(b"boundary") == b"b%d-x" % (mime.MAX_DEPTH - 1)


def test_part_count_is_bounded_and_the_last_part_takes_the_rest() -> None:
    msg = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * (mime.MAX_PARTS + 500)
    root = mime.parse(msg)
    assert len(root.children) == mime.MAX_PARTS - 1
    assert root.children[-1].body_end == len(msg)  # as Dovecot: no more boundaries after the limit


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_parses_into_well_formed_offsets(sample: Path) -> None:
    msg = mime.to_crlf(sample.read_bytes())
    for part in mime.walk(mime.parse(msg)):
        assert 0 <= part.header_start <= part.header_end <= part.body_start <= part.body_end <= len(msg)


def _check_tree(msg: bytes, root: mime.Part) -> None:
    n = 0
    for part in mime.walk(root):
        n += 1
        assert 0 <= part.header_start <= part.header_end <= part.body_start <= part.body_end <= len(msg)
        assert part.body_lines == msg.count(b"\n", part.body_start, part.body_end)
    assert n <= mime.MAX_PARTS + 1


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_parse_never_raises_on_random_bytes(data: bytes) -> None:
    _check_tree(data, mime.parse(data))


_PIECES = [b"--", b"\r\n", b"\n", b"Content-Type: multipart/mixed; boundary=b\r\n", b"--b", b"--b--",
           b"Content-Type: message/rfc822\r\n", b"Content-Type: multipart/digest; boundary=\"b\"\r\n",
           b"\r\n\r\n", b": ", b"(", b"\"", b";", b"=?utf-8?q?x?=", b" ", b"\t", b"x", b"\x00", b"\xff",
           b"name*0*=", b"filename*=utf-8''", b"Content-Disposition: attachment; ", b"<", b">", b"@"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), max_size=80))
def test_parse_never_raises_on_mime_shaped_garbage(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    _check_tree(data, mime.parse(data))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.data())
def test_parse_never_raises_on_mutated_samples(sample: Path, data: st.DataObject) -> None:
    msg = bytearray(sample.read_bytes())
    for _ in range(data.draw(st.integers(1, 10))):
        op = data.draw(st.sampled_from(["flip", "cut", "dup"]))
        i = data.draw(st.integers(0, max(0, len(msg) - 1)))
        if op == "flip" and msg:
            msg[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del msg[i:i + data.draw(st.integers(1, 200))]
        else:
            msg[i:i] = msg[i:i + data.draw(st.integers(1, 200))]
    raw = bytes(msg)
    _check_tree(raw, mime.parse(raw))


def test_content_fields_of_a_message_without_mime_version_or_content_type_are_ignored() -> None:
    plain = mime.parse(crlf("Content-Disposition: attachment\nContent-Transfer-Encoding: base64\n\nx"))
    assert (plain.disposition, plain.encoding) == (None, None)
    with_version = mime.parse(crlf("Content-Disposition: attachment\nMIME-Version: 1.0\n\nx"))
    assert with_version.disposition == b"attachment"
    with_type = mime.parse(crlf("Content-Disposition: attachment\nContent-Type: text/plain\n\nx"))
    assert with_type.disposition == b"attachment"
    # the parts of a multipart are MIME entities anyway
    msg = crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-ID: <g>\n\nx\n--b--\n")
    assert mime.parse(msg).children[0].content_id == b"<g>"


def test_unterminated_quoted_parameter_is_dropped() -> None:
    root = mime.parse(crlf('Content-Type: text/plain; charset=utf-8; name="abc; x=y\n\nx'))
    assert root.params == [(b"charset", b"utf-8")]


def test_empty_boundary_makes_every_dash_dash_line_a_boundary() -> None:
    msg = crlf("Content-Type: multipart/mixed; boundary=\"\"\n\n--x\n\none\n--y\n\ntwo\n")
    assert [body(msg, p) for p in mime.parse(msg).children] == [b"one", b"two\r\n"]
