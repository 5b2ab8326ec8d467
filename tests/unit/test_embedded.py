"""policy/embedded.py: the GTUBE finder and the embedded verdict (issue 12 item 5)."""

from __future__ import annotations

import base64
import quopri

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.policy import embedded
from mailhaven.policy.spam import error_for, outcome, status_fields

GTUBE = embedded.GTUBE.decode()


def _msg(body: str, headers: str = "") -> bytes:
    return (f"From: a@b.example\r\nTo: c@d.example\r\nSubject: t\r\n{headers}\r\n{body}").encode()


def _multipart(part_headers: str, part_body: str) -> bytes:
    return _msg(f"--b\r\nContent-Type: text/plain\r\n\r\nHello.\r\n--b\r\n{part_headers}\r\n{part_body}\r\n--b--\r\n",
                "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n")


def test_gtube_in_a_plain_body_is_found() -> None:
    assert embedded.find_gtube(_msg(f"Hi\r\n{GTUBE}\r\n"))


def test_gtube_in_a_base64_text_part_is_found() -> None:
    b64 = base64.encodebytes(f"test {GTUBE} end".encode()).decode().replace("\n", "\r\n")
    assert embedded.find_gtube(_multipart("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n", b64))


def test_gtube_in_a_quoted_printable_text_part_split_by_soft_breaks_is_found() -> None:
    qp = quopri.encodestring(("x" * 60 + GTUBE).encode()).decode().replace("\n", "\r\n")
    assert "=\r\n" in qp  # the string is cut across lines as written
    assert embedded.find_gtube(_msg(qp, "MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n"))


def test_gtube_in_an_attached_message_is_found() -> None:
    inner = base64.encodebytes(GTUBE.encode()).decode().replace("\n", "\r\n")
    attached = ("Content-Type: message/rfc822\r\n",
                f"Subject: inner\r\nMIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n\r\n{inner}")
    assert embedded.find_gtube(_multipart(*attached))


def test_gtube_only_in_the_header_or_in_a_base64_attachment_is_not_found() -> None:
    assert not embedded.find_gtube(_msg("Hello.\r\n", f"X-Test: {GTUBE}\r\n"))
    b64 = base64.encodebytes(GTUBE.encode()).decode()
    assert not embedded.find_gtube(_multipart("Content-Type: application/octet-stream\r\n"
                                              "Content-Transfer-Encoding: base64\r\n", b64))
    assert not embedded.find_gtube(_msg(GTUBE[:-1] + "\r\n"))


def test_the_verdicts_render_like_rspamds() -> None:
    hit = embedded.scan(_msg(GTUBE))
    assert outcome(hit) == "reject" and hit.symbols == ("GTUBE",)
    err = error_for(hit)
    assert err is not None and err.code == 550 and err.enhanced == "5.7.1"
    clean = embedded.scan(_msg("Hello.\r\n"))
    assert outcome(clean) == "inbox" and error_for(clean) is None
    assert status_fields(clean) == b"X-Spam-Status: No, score=0.00, required=5.00\r\nX-Spam-Score: 0.00\r\n"


@given(st.binary(max_size=2000))
def test_any_bytes_give_an_answer_never_an_exception(data: bytes) -> None:
    assert embedded.find_gtube(data) in (True, False)


@given(st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=200),
       st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=200),
       st.sampled_from(["7bit", "base64", "quoted-printable"]))
def test_gtube_anywhere_in_a_text_part_in_any_encoding_is_found(before: str, after: str, encoding: str) -> None:
    text = (before + GTUBE + after).encode()
    if encoding == "base64":
        body = base64.encodebytes(text).decode("ascii")
    elif encoding == "quoted-printable":
        body = quopri.encodestring(text).decode("ascii")
    else:
        body = text.decode()
    part = _multipart(f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n",
                      body.replace("\n", "\r\n"))
    assert embedded.find_gtube(part)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_without_gtube_nothing_is_found(n: int) -> None:
    assert not embedded.find_gtube(_msg("spam " * n + "\r\n"))
