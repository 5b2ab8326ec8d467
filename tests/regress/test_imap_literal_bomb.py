"""Literal bomb: a client announces a gigantic literal hoping the server allocates or buffers it.

`a APPEND INBOX {4294967296}` must be refused at once (NO [TOOBIG]) with nothing buffered and no
"+ " continuation; a non-synchronising one ({n+}) must get BAD and close the connection (RFC 7888 §4),
and neither may make the framer keep the octets that follow.
"""

from __future__ import annotations

import pytest

from mailhaven.config import ImapConfig
from mailhaven.imap.framing import NEED_DATA, Framer, RawCommand, Reject, SendContinuation

LIMIT = 25 * 1024 * 1024


def framer() -> Framer:
    cfg = ImapConfig()
    return Framer(max_line=cfg.max_line_length, max_literal=LIMIT, max_in_flight=cfg.max_in_flight)


@pytest.mark.parametrize("size", [b"4294967296", b"99999999999999999999", str(LIMIT + 1).encode(),
                                  b"9" * 4400])
def test_synchronising_literal_bomb_is_refused_without_buffering(size: bytes) -> None:
    f = framer()
    f.receive_data(b"a APPEND INBOX {" + size + b"}\r\n")
    event = f.next_command()
    assert isinstance(event, Reject) and not isinstance(event, SendContinuation)
    assert event.response() == b"a NO [TOOBIG] Message too big\r\n"
    assert not event.close
    assert f.buffered == 0 and not f.in_command
    assert f.next_command() is NEED_DATA
    # The connection goes on: the next command is framed normally.
    f.receive_data(b"b NOOP\r\n")
    assert f.next_command() == RawCommand((b"b NOOP",))


def test_non_synchronising_literal_bomb_closes_the_connection() -> None:
    f = framer()
    f.receive_data(b"a APPEND INBOX {4294967296+}\r\n" + b"x" * 100_000)
    event = f.next_command()
    assert event == Reject("a", "BAD", "Literal too big", close=True)
    assert f.closed and f.buffered == 0
    for _ in range(10):
        f.receive_data(b"x" * 100_000)
        assert f.buffered == 0
        assert f.next_command() is NEED_DATA


def test_literal_bomb_in_login_is_bad() -> None:
    f = framer()
    f.receive_data(b"a LOGIN {4294967296}\r\n")
    assert f.next_command() == Reject("a", "BAD", "Literal too big")
    assert f.buffered == 0


def test_many_small_literals_cannot_add_up_past_the_limit() -> None:
    f = Framer(max_line=1000, max_literal=100)
    f.receive_data(b"a LOGIN {60+}\r\n" + b"u" * 60 + b" {60}\r\n")
    assert f.next_command() == Reject("a", "BAD", "Literal too big")
    assert f.buffered == 0


def test_accepted_literal_is_only_buffered_up_to_its_size() -> None:
    f = Framer(max_line=1000, max_literal=100)
    f.receive_data(b"a APPEND INBOX {10}\r\n")
    assert f.next_command() == SendContinuation(10)
    f.receive_data(b"0123456789\r\n")
    assert f.next_command() == RawCommand((b"a APPEND INBOX ", b""), (b"0123456789",))
    assert f.buffered == 0
