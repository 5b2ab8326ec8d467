"""IMAP command framing (sans-IO): a byte stream in, complete commands (lines + literals) out.

Owns: finding where each client command ends (RFC 3501 §2.2, §4.3: a line ends in CRLF; a line
ending in `{n}` is followed by n octets of literal and then more of the same command), literal
flow control (synchronising `{n}` needs a "+" continuation, RFC 3501 §7.5; `{n+}` does not,
RFC 7888 §3), and the limits: line length (literals excluded, summed over the command) and
literal size (summed over the command). Also raw lines for AUTHENTICATE and IDLE's "DONE".
Does not own: the grammar inside a line (parser.py) or writing anything (session.py hands the
continuation and the replies this module asks for to the shell, server.py, which writes them).

Use:
    framer = Framer(max_line=cfg.imap.max_line_length, max_literal=limit)
    framer.receive_data(data)
    while (event := framer.next_command()) is not NEED_DATA:
        RawCommand       -> parser.parse_command(event)
        SendContinuation -> write SendContinuation.LINE ("+ Ready for literal data")
        Reject           -> write event.response(); close the connection if event.close

Memory stays bounded if the shell reads from the socket only when `next_command()` returned
NEED_DATA: the buffer then never holds more than the current command (max_line + max_literal)
plus one read. `max_in_flight` adds a hard cap for shells that read ahead while a command runs:
more than max_literal + max_in_flight * max_line buffered octets -> Reject(close=True).

Line endings: CRLF, and a bare LF is accepted too (as Dovecot does); the CR is stripped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

_TAG_SPECIALS = frozenset(b'(){ %*"\\+')  # RFC 3501 §9 tag: ASTRING-CHAR except "+"


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True)
class RawCommand:
    """One complete command. `lines[i]` is followed by `literals[i]`; the last line has none.

    Line endings and the `{n}` / `{n+}` literal markers are removed, so literal octets are never
    scanned as syntax: `a LOGIN {3}\\r\\nfoo bar\\r\\n` -> lines (b"a LOGIN ", b" bar"), literals (b"foo",).
    """

    lines: tuple[bytes, ...]
    literals: tuple[bytes, ...] = ()

    @property
    def tag(self) -> str:
        """The tag if the command starts with a valid one, else "*" (for error replies)."""
        return tag_of(self.lines[0] if self.lines else b"")


@dataclass(frozen=True)
class SendContinuation:
    """A synchronising literal of `size` octets was announced: send LINE, then wait for it."""

    size: int
    LINE: ClassVar[bytes] = b"+ Ready for literal data\r\n"  # RFC 3501 §7.5


@dataclass(frozen=True)
class Reject:
    """The framer dropped (part of) a command: send `response()`; if `close`, then disconnect."""

    tag: str
    kind: Literal["BAD", "NO"]
    text: str
    code: str | None = None
    close: bool = False

    def response(self) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"{self.tag} {self.kind} {code}{self.text}\r\n".encode("ascii")


FramerEvent = RawCommand | SendContinuation | Reject | NeedData


def tag_of(line: bytes) -> str:
    """The tag at the start of `line` (RFC 3501 §9 `tag`: ASTRING-CHARs except "+"), else "*"."""
    end = line.find(b" ")
    tag = line if end < 0 else line[:end]
    if not tag or len(tag) > 64 or any(c <= 0x20 or c >= 0x7F or c in _TAG_SPECIALS for c in tag):
        return "*"
    return tag.decode("ascii")


def _verb_of(line: bytes) -> bytes:
    parts = line.split(b" ", 2)
    return parts[1].upper() if len(parts) > 1 else b""


def _literal_marker(line: bytes) -> tuple[int, int | None, bool] | None:
    """(start of the marker, size or None if absurdly large, non-synchronising) or None.

    RFC 3501 §9 literal = "{" number "}" CRLF; RFC 7888 §3 adds "{" number "+}".
    """
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    if start < 0:
        return None
    inner = line[start + 1 : -1]
    nonsync = inner.endswith(b"+")
    digits = inner[:-1] if nonsync else inner
    if not digits or not digits.isdigit():
        return None
    if len(digits) > 15:  # bound int() work; far beyond any limit anyway
        return start, None, nonsync
    return start, int(digits), nonsync


class _State(enum.Enum):
    LINE = 1
    LITERAL = 2
    DISCARD = 3  # skipping the rest of an over-long line, up to and including LF
    CLOSED = 4


class Framer:
    """Splits the client's byte stream into `RawCommand`s. Pure: no I/O, no clock."""

    def __init__(self, max_line: int, max_literal: int, max_in_flight: int | None = None) -> None:
        if max_line < 16 or max_literal < 0:
            raise ValueError("max_line must be >= 16 and max_literal >= 0")
        self.max_line = max_line
        self.max_literal = max_literal
        # One command's literals plus `max_in_flight` lines of pipelined commands.
        self.max_buffer = None if max_in_flight is None else max_in_flight * max_line + max_literal
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already searched for LF in LINE state
        self._state = _State.LINE
        self._need = 0
        self._overflow = False
        self._reset()

    def _reset(self) -> None:
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._text_len = 0
        self._literal_total = 0

    # -- input ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the connection (any fragmentation)."""
        if self._state is _State.CLOSED:
            return
        if self._state is _State.DISCARD:
            # Bounded memory: keep only from the line end onwards.
            idx = data.find(b"\n")
            if idx < 0:
                return
            data = data[idx + 1 :]
            self._state = _State.LINE
            self._scan = 0
        self._buf += data
        if self.max_buffer is not None and len(self._buf) > self.max_buffer:
            self._overflow = True

    @property
    def buffered(self) -> int:
        """Octets received and not yet handed out."""
        return len(self._buf)

    @property
    def closed(self) -> bool:
        """True once a Reject with close=True was returned; further input is ignored."""
        return self._state is _State.CLOSED

    @property
    def in_command(self) -> bool:
        """True while part of a command (a line before a literal, or the literal) was consumed."""
        return bool(self._lines) or self._state is _State.LITERAL

    # -- output ---------------------------------------------------------------------------------

    def _close(self, reject: Reject) -> Reject:
        self._state = _State.CLOSED
        self._buf.clear()
        self._reset()
        return reject

    def _take_line(self, limit: int) -> bytes | Reject | NeedData:
        """One line (CR/LF stripped) of at most `limit` octets, or a "line too long" Reject."""
        buf = self._buf
        idx = buf.find(b"\n", self._scan, limit + 2)
        if idx < 0:
            if len(buf) < limit + 2:
                self._scan = len(buf)
                return NEED_DATA
            tag = tag_of(bytes(buf[:64])) if not self._lines else tag_of(self._lines[0])
            self._reset()
            self._scan = 0
            end = buf.find(b"\n")
            if end < 0:
                buf.clear()
                self._state = _State.DISCARD
            else:
                del buf[: end + 1]
            return Reject(tag, "BAD", "Line too long")
        line = bytes(buf[:idx])
        del buf[: idx + 1]
        self._scan = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > limit:
            tag = tag_of(line if not self._lines else self._lines[0])
            self._reset()
            return Reject(tag, "BAD", "Line too long")
        return line

    def next_command(self) -> FramerEvent:
        """The next complete command, an event for the shell, or NEED_DATA."""
        while True:
            if self._state is _State.CLOSED:
                return NEED_DATA
            if self._overflow:
                return self._close(Reject("*", "BAD", "Too many pipelined commands", close=True))
            if self._state is _State.DISCARD:
                return NEED_DATA  # receive_data() leaves DISCARD when it sees LF
            if self._state is _State.LITERAL:
                if len(self._buf) < self._need:
                    return NEED_DATA
                self._literals.append(bytes(self._buf[: self._need]))
                del self._buf[: self._need]
                self._need = 0
                self._state = _State.LINE
                continue
            got = self._take_line(self.max_line - self._text_len)
            if not isinstance(got, bytes):
                return got
            line = got
            first = not self._lines
            marker = _literal_marker(line)
            if marker is None:
                lines = (*self._lines, line)
                literals = tuple(self._literals)
                self._reset()
                return RawCommand(lines, literals)
            start, size, nonsync = marker
            head = self._lines[0] if not first else line
            tag = tag_of(head)
            if size is None or self._literal_total + size > self.max_literal:
                if nonsync:
                    # RFC 7888 §4: a too-big non-synchronising literal is already on its way; we do
                    # not read it, so the only safe answer is BAD and closing the connection.
                    return self._close(Reject(tag, "BAD", "Literal too big", close=True))
                # RFC 3501 §7.5: the client waits for "+" before sending a synchronising literal,
                # so refusing now means the literal (and the rest of this command) never comes.
                self._reset()
                if _verb_of(head) == b"APPEND":
                    return Reject(tag, "NO", "Message too big", code="TOOBIG")  # RFC 7889 §4
                return Reject(tag, "BAD", "Literal too big")
            self._lines.append(line[:start])
            self._text_len += len(line)
            self._literal_total += size
            self._need = size
            self._state = _State.LITERAL
            if not nonsync:
                return SendContinuation(size)

    def next_line(self) -> bytes | Reject | NeedData:
        """A raw line (AUTHENTICATE responses, IDLE's "DONE"), CRLF stripped, at most max_line.

        Only between commands: the shell calls it after a complete RawCommand was returned.
        """
        if self._state is _State.CLOSED:
            return NEED_DATA
        if self._overflow:
            return self._close(Reject("*", "BAD", "Too many pipelined commands", close=True))
        if self._state is not _State.LINE or self._lines:
            raise RuntimeError("next_line() called in the middle of a command")
        return self._take_line(self.max_line)
