"""CONTEXT=SEARCH (RFC 5267 §4) compared byte for byte with a real Dovecot 2.3: RETURN (PARTIAL
low:high) of SEARCH, UID SEARCH and SORT (and the ranges Dovecot refuses), RETURN (CONTEXT) as a
no-op, and RETURN (UPDATE): the unsolicited `* ESEARCH (TAG "t") [UID] REMOVEFROM (0 ...) ADDTO
(0 ...)` after this session's STOREs, another session's changes and an EXPUNGE (the removal before
the EXPUNGE), CANCELUPDATE and its NO for an unknown tag, the NOUPDATE beyond ten updating searches. The dialogue and its normalisation are
those of test_condstore_vs_dovecot.py.

Not compared, deliberately: SORT ... RETURN (UPDATE). Dovecot 2.3 does not offer CONTEXT=SORT (it
answers a sorted update with position 0 and a set); ours tells positions (context.py). And
Dovecot's own `UPDATE (fetch-att)` extension, which we do not parse."""

from __future__ import annotations

import os
import re

import pytest

from tests.fixtures_base import PASSWORD
from tests.integration import test_condstore_vs_dovecot
from tests.integration import test_fetch_vs_dovecot as dv
from tests.integration.test_condstore_vs_dovecot import dialogue
from tests.integration.test_imap_server import ALICE, ImapHarness, make_message

# Connection a's commands are tagged t2, t3, ... in order (t1 is its LOGIN): the UPDATE searches
# below are t15 and t16.
SCRIPT: list[tuple[str, str]] = [
    ("a", "SELECT INBOX"),  # t2
    ("b", "SELECT INBOX"),
    ("a", "SEARCH RETURN (PARTIAL 1:1) ALL"),  # t3
    ("a", "SEARCH RETURN (PARTIAL 4:2) ALL"),
    ("a", "SEARCH RETURN (PARTIAL 2:10) 1:2,4"),
    ("a", "SEARCH RETURN (PARTIAL 5:6) ALL"),
    ("a", "SEARCH RETURN (COUNT PARTIAL 2:3 MAX MIN) ALL"),
    ("a", "UID SEARCH RETURN (PARTIAL 2:3) ALL"),
    ("a", "SORT RETURN (PARTIAL 2:3) (REVERSE SUBJECT) US-ASCII ALL"),
    ("a", "UID SORT RETURN (PARTIAL 1:9 COUNT) (SUBJECT) US-ASCII ALL"),
    ("a", "SEARCH RETURN (PARTIAL 1) ALL"),
    ("a", "SEARCH RETURN (PARTIAL 1:*) ALL"),
    ("a", "SEARCH RETURN (PARTIAL 1:2 ALL) ALL"),
    ("a", "SEARCH RETURN (CONTEXT) 1:2"),  # t14
    ("a", "SEARCH RETURN (UPDATE) SEEN"),  # t15
    ("a", "UID SEARCH RETURN (UPDATE ALL COUNT) FLAGGED"),  # t16
    ("a", "STORE 1,3 +FLAGS (\\Seen)"),
    ("a", "STORE 2 +FLAGS (\\Flagged)"),
    ("b", "STORE 4 +FLAGS.SILENT (\\Seen \\Flagged)"),
    ("a", "NOOP"),
    ("a", "STORE 1 -FLAGS (\\Seen)"),
    ("a", "STORE 3 +FLAGS (\\Deleted)"),
    ("a", "EXPUNGE"),
    ("a", 'CANCELUPDATE "t15"'),
    ("a", "STORE 1 +FLAGS (\\Seen)"),
    ("a", 'CANCELUPDATE "t15"'),
    ("a", "STORE 2 -FLAGS (\\Flagged)"),
    ("a", 'CANCELUPDATE "t16"'),
    ("a", "STORE 3 -FLAGS (\\Flagged)"),  # no update: t16 was cancelled
    *[("a", "SEARCH RETURN (UPDATE) DELETED")] * 11,  # the 11th: NO [NOUPDATE], before its ESEARCH
    ("a", "STORE 2 +FLAGS.SILENT (\\Deleted)"),  # 10 updates (one message: Dovecot sends several EXPUNGEs
    # highest first, we lowest first, a difference kept out of this test)
    ("a", "EXPUNGE"),
]


ours = test_condstore_vs_dovecot.ours  # the fixture: our server over four messages


def test_context_dialogue_matches_dovecot(ours: ImapHarness) -> None:
    if not os.path.exists(dv.DOVECOT):
        pytest.skip("dovecot is not installed")
    files = [(f"m{i}", make_message(i), 1700000000.0 + i, "") for i in (1, 2, 3, 4)]
    with dv.running_dovecot(files) as dovecot:
        theirs = dialogue(dovecot.port, dv.USER, dv.PASSWORD, SCRIPT, drop_recent=True)
    mine = dialogue(ours.ports["imap"], ALICE, PASSWORD, SCRIPT, drop_recent=True)
    mine = [ln for ln in mine if not ln.startswith(b"* OK [HIGHESTMODSEQ ")]  # SELECT's (see test_esearch_vs_dovecot)
    # RFC 3501 §9 resp-text needs text after the code; Dovecot 2.3 sends `* NO [NOUPDATE "t"]` alone
    mine = [re.sub(rb'^(\* NO \[NOUPDATE "t\d+"\]) .*\r\n', rb"\1\r\n", ln) for ln in mine]
    assert b"".join(mine).decode().splitlines() == b"".join(theirs).decode().splitlines()
