"""The mailbox extensions of issue 14 item 3 through a real client (imaplib) against the running
server: OBJECTID (RFC 8474), CREATE-SPECIAL-USE (RFC 6154 §3), LIST-EXTENDED with LIST-STATUS
(RFC 5258, RFC 5819), STATUS=SIZE (RFC 8438); SAVEDATE (RFC 8514) also against a real Dovecot 2.3
(the throwaway one of test_fetch_vs_dovecot.py): messages APPENDed with an old internal date have
today's save date on both, and the SAVED* search keys find the same messages.
Dovecot 2.3 offers neither OBJECTID nor CREATE-SPECIAL-USE, so those are checked on ours alone."""

from __future__ import annotations

import imaplib
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration import test_fetch_vs_dovecot as dv
from tests.integration.test_imap_server import ImapHarness

OLD = imaplib.Time2Internaldate(1500000000)  # 2017: long before any save date
MESSAGES = [b"From: a@example.org\r\nSubject: one\r\n\r\nbody\r\n", b"From: b@example.org\r\nSubject: two\r\n\r\nx\r\n"]


@pytest.fixture
def harness(make_config: Callable[..., Any]) -> Iterator[ImapHarness]:
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}})).start()
    try:
        yield h
    finally:
        h.stop()


def _ok(answer: tuple[str, list[Any]]) -> list[Any]:
    typ, data = answer
    assert typ == "OK", data
    return data


def _savedate_answers(c: imaplib.IMAP4) -> dict[str, Any]:
    """APPEND two messages with an old internal date; their save dates and what SAVED* finds."""
    before = time.time()
    for m in MESSAGES:
        _ok(c.append("INBOX", "", OLD, m))
    _ok(c.select("INBOX"))
    today = time.strftime("%d-%b-%Y")
    out: dict[str, Any] = {}
    for key in ("SAVEDATESUPPORTED", f"SAVEDSINCE {today}", f"SAVEDON {today}", f"SAVEDBEFORE {today}",
                "SAVEDBEFORE 1-Jan-2000", f"SINCE {today}", "NOT SAVEDSINCE 1-Jan-2000"):
        out[key] = _ok(c.search(None, key))
    dates = []
    for line in _ok(c.fetch("1:2", "(SAVEDATE INTERNALDATE)")):
        m = re.search(rb'SAVEDATE "([^"]+)"', line)
        assert m, line
        dates.append(time.mktime(imaplib.Internaldate2tuple(b'INTERNALDATE "' + m.group(1) + b'"')))  # type: ignore[arg-type]
    assert all(before - 2 <= d <= time.time() + 2 for d in dates), dates  # saved just now, not in 2017
    out["internaldate"] = [re.search(rb'INTERNALDATE "([^"]+)"', ln).group(1)  # type: ignore[union-attr]
                           for ln in _ok(c.fetch("1:2", "(INTERNALDATE)"))]
    return out


def test_savedate_fetch_and_search_match_dovecot(harness: ImapHarness) -> None:
    if not os.path.exists(dv.DOVECOT):
        pytest.skip("dovecot is not installed")
    c = harness.client()
    try:
        assert b"SAVEDATE" in _ok(c.capability())[0].split()
        mine = _savedate_answers(c)
    finally:
        c.logout()
    with dv.running_dovecot([]) as dovecot:
        d = dovecot.client()
        try:
            assert b"SAVEDATE" in _ok(d.capability())[0].split()  # after login, as ours
            theirs = _savedate_answers(d)
        finally:
            d.logout()
    assert mine == theirs
    assert mine["SAVEDATESUPPORTED"] == [b"1 2"] and mine["SAVEDBEFORE 1-Jan-2000"] == [b""]


def test_objectid_over_copy_move_and_rename(harness: ImapHarness) -> None:
    c = harness.client()
    try:
        assert {"OBJECTID", "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE"} <= set(c.capabilities)
        typ, data = c.create("Projects")
        created = re.search(rb"\[MAILBOXID \((F[0-9a-f]{24})\)\]", data[0])
        assert typ == "OK" and created, data
        mailboxid = created.group(1)
        for m in MESSAGES:
            _ok(c.append("Projects", "", OLD, m))
        _ok(c.rename("Projects", "Work"))
        _ok(c.select("Work"))
        assert c.untagged_responses.get("OK") and any(b"MAILBOXID (%s)" % mailboxid in r
                                                      for r in c.response("OK")[1] if r)
        status = _ok(c.status("Work", "(MAILBOXID SIZE MESSAGES)"))[0]
        assert status == b"Work (MESSAGES 2 SIZE %d MAILBOXID (%s))" % (sum(map(len, MESSAGES)), mailboxid)
        ids = [re.search(rb"EMAILID \((M[0-9a-f]{24})\) THREADID NIL", ln).group(1)  # type: ignore[union-attr]
               for ln in _ok(c.fetch("1:2", "(EMAILID THREADID)"))]
        assert len(set(ids)) == 2
        assert _ok(c.search(None, "EMAILID", ids[1].decode())) == [b"2"]
        assert _ok(c.search(None, "THREADID", "T1")) == [b""]
        _ok(c.store("1", "+FLAGS", "(\\Seen)"))  # a flag change renames the file: same EMAILID
        assert re.search(rb"EMAILID \(%s\)" % ids[0], _ok(c.fetch("1", "(EMAILID)"))[0])
        _ok(c._simple_command("MOVE", "1", "INBOX"))  # MOVE keeps the EMAILID too
        _ok(c.select("INBOX"))
        assert _ok(c.search(None, "EMAILID", ids[0].decode())) == [b"1"]
    finally:
        c.logout()


def test_create_special_use_then_list_it_with_list_extended(harness: ImapHarness) -> None:
    c = harness.client()
    try:
        _ok(c._simple_command("CREATE", "Outgoing", "(USE (\\Sent))"))
        typ, data = c._simple_command("CREATE", "Both", "(USE (\\Sent \\Junk))")
        assert typ == "NO" and b"[USEATTR]" in data[0]
        typ, data = c._simple_command("LIST", '""', "(Outgoing Both)", "RETURN", "(SPECIAL-USE STATUS (MESSAGES))")
        typ, data = c._untagged_response(typ, data, "LIST")
        assert data == [b'(\\Sent) "." Outgoing']
        assert c.untagged_responses.pop("STATUS") == [b"Outgoing (MESSAGES 0)"]
        typ, data = c._simple_command("LIST", "(SPECIAL-USE)", '""', "*")
        assert b'(\\Sent) "." Outgoing' in c._untagged_response(typ, data, "LIST")[1]
    finally:
        c.logout()
