"""imap.searchadapt's header prefilter is only an optimisation: it must never drop a message that
search.py would match (hypothesis over generated headers and needles), and it must drop the obvious
non-matches."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from mailhaven.imap import commands as C
from mailhaven.imap import search
from mailhaven.imap.searchadapt import header_prefilter

FIELDS = ["Subject", "X-Group", "Message-ID", "Comments", "In-Reply-To"]
words = st.text(alphabet=st.sampled_from("abcXYZ019 -_.:<>@=?\\\"'\t\u00e9\u017f\u212a"), min_size=0, max_size=12)


def _msg(header: bytes) -> search.Message:
    return search.Message(1, 1, frozenset(), 0.0, len(header), header_bytes=header)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(FIELDS + ["subject", "SUBJECT ", "X-Other"]))
        value = draw(words)
        if draw(st.booleans()):
            value += "\r\n " + draw(words)  # folded
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


@settings(max_examples=600, deadline=None)
@given(header=headers(), field=st.sampled_from(FIELDS), needle=words)
def test_prefilter_never_drops_a_match(header: bytes, field: str, needle: str) -> None:
    key = C.SearchHeader(field, needle)
    check = header_prefilter(key)
    ctx = search.SearchContext(1, 1)
    if check is not None and search.evaluate(key, _msg(header), ctx):
        assert check(header)


def test_prefilter_drops_messages_without_the_words() -> None:
    check = header_prefilter(C.SearchHeader("Subject", "bench message 004242"))
    assert check is not None
    assert check(b"Subject: bench message 004242\r\nFrom: a@b\r\n\r\n")
    assert check(b"Subject: bench\r\n message   004242\r\n\r\n")  # folded
    assert not check(b"Subject: bench message 004243\r\n\r\n")
    assert not check(b"X-Subject: bench message 004242\r\n\r\n")
    assert check(b"Subject: =?utf-8?q?bench?= message 004242\r\n\r\n")  # encoded-words: always evaluated


def test_no_prefilter_for_address_fields_or_empty_values() -> None:
    assert header_prefilter(C.SearchHeader("From", "alice")) is None
    assert header_prefilter(C.SearchHeader("Subject", "")) is None
    assert header_prefilter(C.SearchFlag("\\Seen")) is None
