"""The caches behind the fast IMAP paths never serve stale answers: the SEARCH memo of header
lines per message, the FETCH FLAGS column rendering and the batched STORE, seen through a real
server and a raw client, with other sessions, POP3-like store changes and other programs changing
the Maildir."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.test_imap_server import ImapHarness, RawClient, make_message


@pytest.fixture
def imap(make_config: Callable[..., Any]) -> Iterator[ImapHarness]:
    h = ImapHarness(make_config("imap"), names=("imap",)).start()
    try:
        yield h
    finally:
        h.stop()


def selected(h: ImapHarness) -> RawClient:
    raw = h.raw()
    raw.login()
    assert raw.cmd(b"SELECT INBOX")[-1].startswith(b"t OK")
    return raw


def search(raw: RawClient, criteria: bytes) -> list[bytes]:
    lines = raw.cmd(b"UID SEARCH " + criteria)
    assert lines[-1].startswith(b"t OK"), lines
    return lines[:-1]


def test_repeated_header_searches_answer_each_needle_from_the_memo(imap: ImapHarness) -> None:
    imap.fill(30, subject=None)
    raw = selected(imap)
    raw.cmd(b"FETCH 1:* (ENVELOPE)")  # headers in the message cache
    for _ in range(2):  # the second round runs on the memo
        assert search(raw, b"SUBJECT \"message 7\"") == [b"* SEARCH 7\r\n"]
        assert search(raw, b"SUBJECT \"message 2\"") == [b"* SEARCH 2 20 21 22 23 24 25 26 27 28 29\r\n"]
        assert search(raw, b'HEADER Subject "MESSAGE 30"') == [b"* SEARCH 30\r\n"]
        assert search(raw, b"SUBJECT nothing-like-this") == [b"* SEARCH\r\n"]
        assert search(raw, b'HEADER Message-ID "m12@"') == [b"* SEARCH 12\r\n"]
        assert search(raw, b"NOT SUBJECT \"message 1\"") == [b"* SEARCH 2 3 4 5 6 7 8 9 20 21 22 23 24 25 26 27 28 29 30\r\n"]
    raw.close()


def test_search_sees_a_message_another_program_replaced_on_disk(imap: ImapHarness) -> None:
    imap.fill(3)
    raw = selected(imap)
    assert search(raw, b"SUBJECT \"message 2\"") == [b"* SEARCH 2\r\n"]
    # Another program rewrites message 2 (a new file, the old one removed), as Maildir tools do.
    [m2] = [m for m in imap.messages() if m.uid == 2]
    root = imap.store.account("alice@example.test").path
    [old] = [os.path.join(root, sub, f) for sub in ("cur", "new") for f in os.listdir(os.path.join(root, sub))
             if f.startswith(m2.key)]
    new = os.path.join(root, "new", f"{int(time.time())}.M1P99.elsewhere")
    with open(new, "wb") as fh:
        fh.write(make_message(2, subject="rewritten by a filter"))
    os.unlink(old)
    time.sleep(1.1)  # NOOP looks at the disk when the last look is over a second old
    lines = raw.cmd(b"NOOP")
    assert b"* 2 EXPUNGE\r\n" in lines and b"* 3 EXISTS\r\n" in lines
    assert search(raw, b"SUBJECT \"message 2\"") == [b"* SEARCH\r\n"]
    assert search(raw, b"SUBJECT rewritten") == [b"* SEARCH 4\r\n"]
    raw.close()


def test_fetch_flags_shows_changes_by_another_session_and_by_the_store(imap: ImapHarness) -> None:
    imap.fill(5)
    a = selected(imap)
    b = selected(imap)
    assert a.cmd(b"UID FETCH 1:* (FLAGS)")[:5] == [b"* %d FETCH (UID %d FLAGS (\\Recent))\r\n" % (n, n)
                                                    for n in range(1, 6)]
    b.cmd(b"STORE 2:3 +FLAGS.SILENT (\\Seen)")
    imap.store_flags([5], {"\\Flagged", "Work"})  # e.g. a POP3 session or a sieve run
    imap.expunge([4])  # removed by POP3: EXPUNGE waits, the number stays until it may be sent
    lines = a.cmd(b"FETCH 1:* (FLAGS)")
    # The new keyword "Work" is announced first (RFC 3501 §7.2.6), then the FETCHes that show it.
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Work)\r\n"
    assert lines[1].startswith(b"* OK [PERMANENTFLAGS (")
    assert lines[2:6] == [b"* 1 FETCH (FLAGS (\\Recent))\r\n", b"* 2 FETCH (FLAGS (\\Seen \\Recent))\r\n",
                          b"* 3 FETCH (FLAGS (\\Seen \\Recent))\r\n",
                          b"* 5 FETCH (FLAGS (\\Flagged \\Recent Work))\r\n"]
    assert lines[-1].startswith(b"t NO [EXPUNGEISSUED]")
    assert b"* 4 EXPUNGE\r\n" in a.cmd(b"NOOP")
    a.close()
    b.close()


def test_store_over_many_messages_reports_each_once_and_other_sessions_see_it(imap: ImapHarness) -> None:
    imap.fill(40)
    a = selected(imap)
    b = selected(imap)
    lines = a.cmd(b"STORE 1:* +FLAGS (\\Deleted)")
    assert lines[:-1] == [b"* %d FETCH (FLAGS (\\Deleted \\Recent))\r\n" % n for n in range(1, 41)]
    assert lines[-1].startswith(b"t OK")
    got = b.cmd(b"NOOP")
    assert got[:-1] == [b"* %d FETCH (UID %d FLAGS (\\Deleted))\r\n" % (n, n) for n in range(1, 41)]
    assert a.cmd(b"STORE 1:* -FLAGS.SILENT (\\Deleted)")[:-1] == []
    assert all(not m.flags for m in imap.messages())
    a.close()
    b.close()
