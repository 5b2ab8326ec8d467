"""policy/learn.py's pure parts: which user action teaches rspamd spam, ham or nothing (issue 12 item 4),
and reading the controller's reply head."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.policy.learn import folder_is, for_keywords, for_transfer, parse_head


@pytest.mark.parametrize(("source_junk", "dest_junk", "dest_trash", "expected"), [
    (False, True, False, "spam"),  # INBOX (or any folder) -> Junk
    (True, False, False, "ham"),  # Junk -> INBOX, Archive, any folder but Trash
    (True, False, True, None),  # Junk -> Trash: thrown away, no verdict (Dovecot's antispam recipe)
    (True, True, False, None),  # Junk -> Junk (COPY into itself, or a second \Junk folder)
    (False, False, False, None),  # INBOX -> Archive
    (False, False, True, None),  # INBOX -> Trash
])
def test_transfers(source_junk: bool, dest_junk: bool, dest_trash: bool, expected: str | None) -> None:
    assert for_transfer(source_junk, dest_junk, dest_trash) == expected


@pytest.mark.parametrize(("before", "after", "expected"), [
    (set(), {"$Junk"}, "spam"),
    (set(), {"$junk", "\\Seen"}, "spam"),  # keywords compare case-insensitively
    (set(), {"$NotJunk"}, "ham"),
    ({"$Junk"}, {"$Junk", "\\Seen"}, None),  # not newly set: already taught
    ({"$Junk"}, {"$NotJunk"}, "ham"),  # the user changed their mind
    (set(), {"$Junk", "$NotJunk"}, None),  # contradictory
    (set(), {"\\Flagged"}, None),
    ({"$NotJunk"}, set(), None),  # removing teaches nothing
])
def test_keywords(before: set[str], after: set[str], expected: str | None) -> None:
    assert for_keywords(before, after) == expected


def test_junk_and_trash_are_the_special_use_folders_or_the_stores_names() -> None:
    assert folder_is("Junk", "\\Junk", "Junk") and folder_is("Junk", None, "Junk")
    assert folder_is("Spam", "\\Junk", "Junk")  # created with USE (\Junk) (RFC 6154 §3)
    assert not folder_is("Spam", None, "Junk") and not folder_is("INBOX", None, "Junk")
    assert folder_is("Deleted Items", "\\Trash", "Trash") and folder_is("Trash", "\\Trash", "Trash")
    assert not folder_is("Junk", "\\Junk", "Trash")


# --- the controller's reply head (policy/learn.parse_head) -------------------------------------------


def test_parse_head_reads_rspamds_204_with_its_reason_and_length() -> None:
    head = (b"HTTP/1.1 204 <undef> contains less tokens than required for bayes classifier: 3 < 11\r\n"
            b"Connection: close\r\nServer: rspamd/3.4\r\nContent-Length: 83\r\n"
            b"Content-Type: application/json\r\n\r\n")
    assert parse_head(head) == (204, "<undef> contains less tokens than required for bayes classifier: 3 < 11", 83)
    assert parse_head(b"HTTP/1.0 200 OK\r\n\r\n") == (200, "OK", None)
    assert parse_head(b"HTTP/1.1 401\r\ncontent-length:  24 \r\n\r\n") == (401, "", 24)


@pytest.mark.parametrize("head", [b"", b"\r\n\r\n", b"SMTP/1.1 200 OK\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n",
                                  b"HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 ２００ OK\r\n\r\n".encode(),
                                  b"HTTP/1.1 " + b"200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n"])
def test_parse_head_refuses_what_is_no_http_reply(head: bytes) -> None:
    with pytest.raises(ValueError):
        parse_head(head)


@given(st.binary(max_size=2000))
def test_parse_head_never_fails_otherwise(head: bytes) -> None:
    try:
        status, reason, length = parse_head(head)
    except ValueError:
        return
    assert 0 <= status <= 999 and isinstance(reason, str) and (length is None or length >= 0)


@given(st.integers(100, 599), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=100),
       st.integers(0, 10**12))
def test_parse_head_reads_what_a_server_writes(status: int, reason: str, length: int) -> None:
    head = f"HTTP/1.1 {status} {reason}\r\nServer: x\r\nContent-Length: {length}\r\n\r\n".encode()
    assert parse_head(head) == (status, reason, length)
