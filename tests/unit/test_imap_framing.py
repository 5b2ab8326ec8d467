"""IMAP framing: lines, synchronising and LITERAL+ literals, limits, raw lines, fragmentation."""

from __future__ import annotations

import pytest

from mailhaven.imap.framing import (
    NEED_DATA,
    Framer,
    FramerEvent,
    RawCommand,
    Reject,
    SendContinuation,
)

CONTINUE = SendContinuation.LINE


def drain(framer: Framer) -> list[FramerEvent]:
    out: list[FramerEvent] = []
    while (event := framer.next_command()) is not NEED_DATA:
        out.append(event)
    return out


def feed(data: bytes, *, max_line: int = 1000, max_literal: int = 1000, chunks: list[int] | None = None,
         max_in_flight: int | None = None) -> list[FramerEvent]:
    """Feed `data` split at `chunks` offsets, draining after every piece (like the shell)."""
    framer = Framer(max_line=max_line, max_literal=max_literal, max_in_flight=max_in_flight)
    cuts = [0, *(chunks or []), len(data)]
    events: list[FramerEvent] = []
    for start, end in zip(cuts, cuts[1:], strict=False):
        framer.receive_data(data[start:end])
        events.extend(drain(framer))
    return events


def test_simple_line_is_one_command() -> None:
    assert feed(b"a1 NOOP\r\n") == [RawCommand((b"a1 NOOP",))]


def test_bare_lf_is_accepted_like_dovecot() -> None:
    assert feed(b"a1 NOOP\na2 LOGOUT\n") == [RawCommand((b"a1 NOOP",)), RawCommand((b"a2 LOGOUT",))]


def test_incomplete_line_needs_data() -> None:
    framer = Framer(max_line=100, max_literal=100)
    framer.receive_data(b"a1 NO")
    assert framer.next_command() is NEED_DATA
    framer.receive_data(b"OP\r")
    assert framer.next_command() is NEED_DATA
    framer.receive_data(b"\n")
    assert framer.next_command() == RawCommand((b"a1 NOOP",))


def test_synchronising_literal_asks_for_continuation_then_yields_command() -> None:
    framer = Framer(max_line=100, max_literal=100)
    framer.receive_data(b"a LOGIN {5}\r\n")
    assert framer.next_command() == SendContinuation(5)
    assert framer.next_command() is NEED_DATA
    framer.receive_data(b"alice {6}\r\n")
    assert framer.next_command() == SendContinuation(6)
    framer.receive_data(b"s3cr\r\n\r\n")
    assert framer.next_command() == RawCommand((b"a LOGIN ", b" ", b""), (b"alice", b"s3cr\r\n"))


def test_literal_plus_does_not_ask_for_continuation() -> None:
    assert feed(b"a LOGIN {5+}\r\nalice {3+}\r\npwd\r\n") == [
        RawCommand((b"a LOGIN ", b" ", b""), (b"alice", b"pwd"))]


def test_literal_octets_are_not_scanned_for_line_ends_or_markers() -> None:
    body = b"x {3}\r\n\r\n\n"
    events = feed(b"a APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
    assert events == [RawCommand((b"a APPEND INBOX ", b""), (body,))]


def test_empty_literal() -> None:
    assert feed(b"a LOGIN {0}\r\n {0}\r\n\r\n") == [
        SendContinuation(0), SendContinuation(0), RawCommand((b"a LOGIN ", b" ", b""), (b"", b""))]


def test_pipelined_commands_come_out_in_order() -> None:
    events = feed(b"a NOOP\r\nb LOGIN {1+}\r\nx y\r\nc LOGOUT\r\n")
    assert events == [RawCommand((b"a NOOP",)), RawCommand((b"b LOGIN ", b" y"), (b"x",)),
                      RawCommand((b"c LOGOUT",))]


def test_braces_not_at_line_end_are_not_literals() -> None:
    assert feed(b"a SELECT {3}x\r\n") == [RawCommand((b"a SELECT {3}x",))]
    assert feed(b"a SELECT {}\r\n") == [RawCommand((b"a SELECT {}",))]
    assert feed(b"a SELECT {1a}\r\n") == [RawCommand((b"a SELECT {1a}",))]


def test_too_big_synchronising_append_is_refused_toobig_without_reading() -> None:
    framer = Framer(max_line=100, max_literal=10)
    framer.receive_data(b"a APPEND INBOX {11}\r\n")
    event = framer.next_command()
    assert event == Reject("a", "NO", "Message too big", code="TOOBIG")
    assert isinstance(event, Reject) and event.response() == b"a NO [TOOBIG] Message too big\r\n"
    assert framer.buffered == 0 and not framer.in_command
    # The client never sends the literal; the next command is read normally.
    framer.receive_data(b"b NOOP\r\n")
    assert framer.next_command() == RawCommand((b"b NOOP",))


def test_too_big_synchronising_literal_outside_append_is_bad() -> None:
    assert feed(b"a LOGIN {2000}\r\nb NOOP\r\n") == [
        Reject("a", "BAD", "Literal too big"), RawCommand((b"b NOOP",))]


def test_absurd_literal_sizes_are_refused() -> None:
    for size in (b"4294967296", b"99999999999999999999", b"9" * 5000):
        assert feed(b"t1 APPEND INBOX {" + size + b"}\r\n", max_line=10000) == [
            Reject("t1", "NO", "Message too big", code="TOOBIG")]


def test_literal_sizes_add_up_over_one_command() -> None:
    events = feed(b"a LOGIN {6+}\r\nabcdef {6}\r\n", max_literal=10)
    assert events == [Reject("a", "BAD", "Literal too big")]


def test_too_big_literal_plus_is_bad_and_closes() -> None:
    framer = Framer(max_line=100, max_literal=10)
    framer.receive_data(b"a APPEND INBOX {11+}\r\n01234567890\r\nb NOOP\r\n")
    event = framer.next_command()
    assert event == Reject("a", "BAD", "Literal too big", close=True)
    assert framer.closed and framer.buffered == 0
    framer.receive_data(b"c NOOP\r\n")
    assert framer.next_command() is NEED_DATA


def test_line_too_long_is_bad_and_resynchronises() -> None:
    events = feed(b"a1 NOOP " + b"x" * 200 + b"\r\na2 NOOP\r\n", max_line=50)
    assert events == [Reject("a1", "BAD", "Line too long"), RawCommand((b"a2 NOOP",))]


def test_line_too_long_discards_with_bounded_memory() -> None:
    framer = Framer(max_line=50, max_literal=10)
    framer.receive_data(b"a1 NOOP " + b"x" * 100)
    assert framer.next_command() == Reject("a1", "BAD", "Line too long")
    for _ in range(100):
        framer.receive_data(b"y" * 1000)
        assert framer.next_command() is NEED_DATA
        assert framer.buffered == 0
    framer.receive_data(b"yyy\r\na2 NOOP\r\n")
    assert framer.next_command() == RawCommand((b"a2 NOOP",))


def test_line_at_exactly_the_limit_is_accepted() -> None:
    line = b"a1 NOOP " + b"x" * 42
    assert len(line) == 50
    assert feed(line + b"\r\n", max_line=50) == [RawCommand((line,))]
    assert feed(line + b"x\r\n", max_line=50) == [Reject("a1", "BAD", "Line too long")]


def test_line_limit_counts_all_lines_of_a_command() -> None:
    data = b"a LOGIN {1+}\r\nx " + b"y" * 60 + b"\r\nb NOOP\r\n"
    assert feed(data, max_line=60) == [Reject("a", "BAD", "Line too long"), RawCommand((b"b NOOP",))]


def test_too_long_line_with_invalid_tag_is_rejected_untagged() -> None:
    assert feed(b"+" * 100 + b"\r\n", max_line=50) == [Reject("*", "BAD", "Line too long")]


def test_many_literals_in_one_command_are_bounded_by_the_line_limit() -> None:
    data = b"a LOGIN" + b" {0+}\r\n" * 100 + b"\r\n"
    events = feed(data, max_line=100)
    assert Reject("a", "BAD", "Line too long") in events


def test_pipelining_cap_closes_connection() -> None:
    framer = Framer(max_line=20, max_literal=10, max_in_flight=2)
    framer.receive_data(b"a NOOP\r\n" * 6)  # 48 <= 10 + 2 * 20: fine
    assert framer.next_command() == RawCommand((b"a NOOP",))
    framer.receive_data(b"a NOOP\r\n" * 2)  # 40 + 16 > 50
    assert framer.next_command() == Reject("*", "BAD", "Too many pipelined commands", close=True)
    assert framer.closed


def test_pipelining_cap_does_not_count_the_awaited_literal() -> None:
    framer = Framer(max_line=20, max_literal=1000, max_in_flight=2)
    framer.receive_data(b"a APPEND x {500+}\r\n" + b"m" * 500 + b"\r\n")
    assert framer.next_command() == RawCommand((b"a APPEND x ", b""), (b"m" * 500,))


def test_next_line_reads_raw_lines_between_commands() -> None:
    framer = Framer(max_line=100, max_literal=100)
    framer.receive_data(b"a AUTHENTICATE PLAIN\r\nAGZvbwBiYXI=\r\nb IDLE\r\nDONE\nc NOOP\r\n")
    assert framer.next_command() == RawCommand((b"a AUTHENTICATE PLAIN",))
    assert framer.next_line() == b"AGZvbwBiYXI="
    assert framer.next_command() == RawCommand((b"b IDLE",))
    assert framer.next_line() == b"DONE"
    assert framer.next_line() == b"c NOOP"
    assert framer.next_line() is NEED_DATA


def test_next_line_does_not_interpret_literal_markers() -> None:
    framer = Framer(max_line=100, max_literal=100)
    framer.receive_data(b"xyz {5}\r\n")
    assert framer.next_line() == b"xyz {5}"


def test_next_line_too_long() -> None:
    framer = Framer(max_line=20, max_literal=100)
    framer.receive_data(b"A" * 30 + b"\r\nDONE\r\n")
    assert framer.next_line() == Reject("*", "BAD", "Line too long")
    assert framer.next_line() == b"DONE"


def test_next_line_in_the_middle_of_a_command_is_a_programming_error() -> None:
    framer = Framer(max_line=100, max_literal=100)
    framer.receive_data(b"a LOGIN {3}\r\n")
    assert framer.next_command() == SendContinuation(3)
    with pytest.raises(RuntimeError):
        framer.next_line()


def test_continuation_line_constant() -> None:
    assert CONTINUE == b"+ Ready for literal data\r\n"


# h11-style: every split point of a stream gives the same events.
STREAM = (b"a1 LOGIN {5}\r\nalice {3+}\r\npwd\r\n"
          b"a2 APPEND INBOX (\\Seen) {13+}\r\nhi\r\n{3}\r\nbye\n\r\n"
          b"a3 NOOP\na4 FETCH 1 BODY[]\r\n")
EXPECTED = [
    SendContinuation(5),
    RawCommand((b"a1 LOGIN ", b" ", b""), (b"alice", b"pwd")),
    RawCommand((b"a2 APPEND INBOX (\\Seen) ", b""), (b"hi\r\n{3}\r\nbye\n",)),
    RawCommand((b"a3 NOOP",)),
    RawCommand((b"a4 FETCH 1 BODY[]",)),
]


def test_every_single_split_point_gives_the_same_events() -> None:
    for cut in range(len(STREAM) + 1):
        assert feed(STREAM, chunks=[cut]) == EXPECTED, cut


def test_every_pair_of_split_points_gives_the_same_events() -> None:
    n = len(STREAM)
    for i in range(0, n + 1, 3):
        for j in range(i, n + 1, 5):
            assert feed(STREAM, chunks=[i, j]) == EXPECTED, (i, j)


def test_byte_at_a_time() -> None:
    assert feed(STREAM, chunks=list(range(1, len(STREAM)))) == EXPECTED


def test_pipelining_cap_applies_to_raw_lines_too() -> None:
    framer = Framer(max_line=20, max_literal=10, max_in_flight=2)
    framer.receive_data(b"DONE\r\n" * 20)
    assert framer.next_line() == Reject("*", "BAD", "Too many pipelined commands", close=True)
    assert framer.closed and framer.next_line() is NEED_DATA
