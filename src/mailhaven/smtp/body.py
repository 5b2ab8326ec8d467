"""Sans-IO readers of a message's content as SMTP carries it: the DATA block and BDAT chunks.

Owns: the checks every received message passes, the same for both commands (one `_Body`): the
message size (RFC 1870), the line length (config smtp.max_line_length, RFC 5321 §4.5.3.1.6) and
CR and LF only as CRLF (RFC 5321 §2.3.8), all bounded while reading. Once a problem is seen the
rest is counted and dropped, so memory stays within max_size and the reply can wait for the end of
the content, keeping the dialogue in step (RFC 5321 §4.2.5).
Does not own: reading the socket, timeouts and the replies' place in the dialogue (server.py).
"""

from __future__ import annotations

import re

from mailhaven.smtp import replies as R


class _Body:
    def __init__(self, max_size: int, max_line: int) -> None:
        self.max_size = max_size
        self.max_line = max_line
        self.size = 0
        self.problem: str | None = None
        self._parts: list[bytes] = []

    def _fail(self, reply: str) -> None:
        if self.problem is None:
            self.problem = reply
        self._parts.clear()

    def message(self) -> bytes:
        return b"".join(self._parts)


class DataBlock(_Body):
    """One DATA block (RFC 5321 §4.1.1.4), fed line by line.

    `feed(chunk)` takes a chunk ending in CRLF (a line) or not (a piece of a line longer than the
    reader's limit) and returns True at the end-of-data line. Only CRLF "." CRLF ends the block
    (RFC 5321 §4.1.1.4), so `\\n.\\n`, `\\r.\\r` and the like never end it.
    """

    def __init__(self, max_size: int, max_line: int) -> None:
        super().__init__(max_size, max_line)
        self._partial = False  # inside a line longer than the reader limit

    def feed(self, chunk: bytes) -> bool:
        if not chunk.endswith(b"\r\n"):
            self._partial = True
            self.size += len(chunk)
            self._fail(R.LINE_TOO_LONG)
            return False
        if self._partial:  # the end of an over-long line, never the end of data
            self._partial = False
            self.size += len(chunk)
            return False
        if chunk == b".\r\n":
            return True  # RFC 5321 §4.1.1.4 end of mail data
        if chunk[:1] == b".":
            chunk = chunk[1:]  # RFC 5321 §4.5.2 transparency
        self.size += len(chunk)
        if len(chunk) > self.max_line:
            self._fail(R.LINE_TOO_LONG)  # RFC 5321 §4.5.3.1.6 (our limit is config smtp.max_line_length)
        elif b"\r" in chunk[:-2] or b"\n" in chunk[:-2]:
            self._fail(R.BARE_NEWLINE)  # RFC 5321 §2.3.8: CR and LF only as CRLF
        elif self.size > self.max_size:
            self._fail(R.MESSAGE_TOO_BIG)  # RFC 1870 §6.3
        elif self.problem is None:
            self._parts.append(chunk)
        return False


class ChunkBody(_Body):
    """The content of one BDAT transaction (RFC 3030), fed the chunks' octets in pieces of any size.

    No dot-stuffing and no end marker in the content: the last chunk is said by `BDAT n LAST`, then
    `finish()`. A line may span pieces and chunks (the incomplete one is carried, at most max_line
    octets); content that does not end in CRLF gets one (as Postfix does), so a stored message ends
    like one received by DATA. Pieces are checked in bulk (counts and one regex, not a loop over
    lines), so a large chunk costs little Python work.
    """

    def __init__(self, max_size: int, max_line: int) -> None:
        super().__init__(max_size, max_line)
        self._carry = b""
        # A line longer than max_line with its CRLF: more than max_line - 2 octets before the CRLF.
        self._long_line = re.compile(rb"[^\r\n]{%d}" % max(1, max_line - 1))

    def feed(self, data: bytes) -> None:
        if self.problem is not None:
            self.size += len(data)
            return
        buf = self._carry + data if self._carry else data
        newline = buf.rfind(b"\r\n")
        end = newline + 2 if newline >= 0 else 0  # the end of the last complete line here
        self._carry = buf[end:]
        if end:
            self._lines(buf[:end])
        if len(self._carry) > self.max_line and self.problem is None:
            self.size += len(self._carry)
            self._carry = b""
            self._fail(R.LINE_TOO_LONG)

    def finish(self) -> None:
        """After the LAST chunk: the carried incomplete line is the content's last (with a CRLF)."""
        if self._carry and self.problem is None:
            carry, self._carry = self._carry, b""
            self._lines(carry + b"\r\n")

    def _lines(self, lines: bytes) -> None:
        """Complete lines (ending in CRLF): checked all at once, kept if they pass."""
        self.size += len(lines)
        crlf = lines.count(b"\r\n")
        if lines.count(b"\r") != crlf or lines.count(b"\n") != crlf:
            self._fail(R.BARE_NEWLINE)  # RFC 5321 §2.3.8
        elif self._long_line.search(lines):
            self._fail(R.LINE_TOO_LONG)
        elif self.size > self.max_size:
            self._fail(R.MESSAGE_TOO_BIG)  # RFC 1870 §6.3
        else:
            self._parts.append(lines)


__all__ = ["ChunkBody", "DataBlock"]
