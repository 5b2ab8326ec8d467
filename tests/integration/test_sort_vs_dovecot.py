"""SORT (RFC 5256), SORT=DISPLAY (RFC 5957) and ESORT (RFC 5267 §3) compared byte for byte with a real Dovecot 2.3: the
same messages (awkward subjects, address forms, dates and zones, missing and broken headers) in
both servers, every criterion alone, reversed and combined, with search keys and UID SORT; the
dialogue and its normalisation are those of test_condstore_vs_dovecot.py (ESORT's MODSEQ item is
the ESEARCH one, compared in test_esearch_vs_dovecot.py; the MODSEQs of freshly filled mailboxes
differ between the servers).

Known difference (not exercised): RETURN (PARTIAL ...) of CONTEXT=SORT (RFC 5267 §4.4), which
Dovecot 2.3 answers and we do not offer (BAD, as any unknown return option)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD
from tests.integration import test_fetch_vs_dovecot as dv
from tests.integration.test_condstore_vs_dovecot import dialogue
from tests.integration.test_imap_server import ALICE, ImapHarness

HEADERS: list[dict[str, str]] = [  # one message each; internal date 1700000000 + 1000*i (some equal)
    {"Subject": "Re: [FWD: c]", "From": "Zed <zed@b.example>", "To": "x@y", "Date": "Tue, 14 Nov 2023 10:00:00 +0100"},
    {"Subject": "[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "From": "alpha@z.example", "Cc": "grp: a@b, c@d;",
     "Date": "Tue, 14 Nov 2023 09:00:00 +0000"},
    {"Subject": "=?iso-8859-1?q?RE:_C?=", "From": "=?utf-8?q?=C3=89mile?= <emile@x>", "To": "\"Bob B\" <bob@x>",
     "Date": "14 Nov 2023 10:00:00 -0500"},
    {"Subject": "re: [fwd: [fwd: re: [fwd: babylon]]]", "From": "bob@x (Bobby)", "Date": "not a date"},
    {"Subject": "[xyz]", "From": "undisclosed-recipients:;", "To": "alpha@z.example"},
    {"Subject": "   b   (a)  ", "From": "Émile <emile2@x>", "To": "émile@x", "Cc": "Zed <zed@b.example>",
     "Date": "Tue, 14 Nov 2023 08:59:59 +0000"},
    {"From": "d", "To": "group: ;", "Date": "Mon, 13 Nov 2023 23:00:00 -0200"},
    {"Subject": "=?us-ascii?b?UmU6IGM=?=", "From": "\"\" <quiet@x>", "To": "Bob <bob@x>", "Cc": "bob@x"},
    {"Subject": "Ad: Re: Ad: x", "From": "ALPHA@z.example", "To": "=?iso-8859-1?q?foo_aar?= <e@f.g>",
     "Date": "Tue, 14 Nov 2023 10:00:00 +0100"},
    {"Subject": "Re: re:Fw: Fwd:[x] [y]", "From": "<b@c>", "To": "zz@a", "Date": "Tue, 14 Nov 2023 10:00:00 GMT"},
    {"Subject": "(fwd)", "From": "mixed Case <MiXed@x>", "To": "a@b, z@y"},
    {"Subject": "Σ sigma", "From": "σ <s@x>", "To": "ς <s2@x>", "Date": "Tue, 14 Nov 2023 10:00:00 +0100"},
]


def _message(i: int, fields: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (head + f"Message-ID: <s{i}@example.org>\r\n\r\n" + "body line\r\n" * (i % 5 + 1)).encode()


def _mtime(i: int) -> float:
    return 1700000000.0 + 1000 * (i // 2)  # pairs with the same internal date


SCRIPT: list[tuple[str, str]] = [("a", "SELECT INBOX")] + [
    ("a", f"SORT ({c}) US-ASCII ALL") for c in (
        "ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO",
        "REVERSE SUBJECT", "REVERSE FROM", "REVERSE DATE", "REVERSE ARRIVAL", "REVERSE DISPLAYTO",
        "SUBJECT REVERSE SIZE", "FROM DATE", "TO REVERSE ARRIVAL", "DISPLAYFROM REVERSE CC", "CC SUBJECT SIZE",
        "REVERSE SIZE REVERSE SUBJECT",
    )] + [
    ("a", "UID SORT (SUBJECT) UTF-8 ALL"),
    ("a", "SORT (DATE) UTF-8 SUBJECT re"),
    ("a", "UID SORT (REVERSE ARRIVAL) US-ASCII 2:5"),
    ("a", "SORT (FROM) US-ASCII DELETED"),
    ("a", "sort (subject) us-ascii all"),
    ("a", "SORT (FOO) US-ASCII ALL"),
    ("a", "SORT (SUBJECT) X-UNKNOWN ALL"),
    ("a", "SORT SUBJECT US-ASCII ALL"),
    ("a", "SORT () US-ASCII ALL"),
    ("a", "SORT (REVERSE) US-ASCII ALL"),
    # ESORT (RFC 5267 §3): ESEARCH answers, MIN/MAX/ALL in sort order
    ("a", "SORT RETURN (MIN MAX ALL COUNT) (REVERSE ARRIVAL) US-ASCII ALL"),
    ("a", "SORT RETURN (ALL) (SUBJECT) US-ASCII ALL"),
    ("a", "UID SORT RETURN () (FROM REVERSE SIZE) UTF-8 2:9"),
    ("a", "UID SORT RETURN (MIN MAX) (DATE) UTF-8 ALL"),
    ("a", "SORT RETURN (MIN) (ARRIVAL) US-ASCII DELETED"),
    ("a", "SORT RETURN (COUNT) (ARRIVAL) US-ASCII DELETED"),
    ("a", "SORT RETURN (SAVE) (REVERSE SUBJECT) US-ASCII 3:6"),
    ("a", "FETCH $ (UID)"),
    ("a", "SORT RETURN (SAVE MAX) (REVERSE SUBJECT) US-ASCII 3:6"),
    ("a", "FETCH $ (UID)"),
    ("a", "SORT RETURN (FOO) (ARRIVAL) US-ASCII ALL"),
]


def same_as_dovecot(make_config: Callable[..., Any], messages: list[tuple[bytes, float]],
                    script: list[tuple[str, str]]) -> None:
    """`messages` (with their internal dates) in alice's INBOX here and in a real Dovecot 2.3; the
    `script` dialogue gives the same lines from both (our SELECT's HIGHESTMODSEQ line aside)."""
    if not os.path.exists(dv.DOVECOT):
        pytest.skip("dovecot is not installed")
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}})).start()
    try:
        async def fill() -> None:
            mb = await h.store.account(ALICE).mailbox("INBOX")
            for data, when in messages:
                await mb.append(data, internaldate=when)

        h.call(fill())
        files = [(f"m{i:02d}", data, when, "") for i, (data, when) in enumerate(messages)]
        with dv.running_dovecot(files) as dovecot:
            theirs = dialogue(dovecot.port, dv.USER, dv.PASSWORD, script, strip_uid="")
        mine = dialogue(h.ports["imap"], ALICE, PASSWORD, script, strip_uid="")
    finally:
        h.stop()
    select_ok = mine.index(b"t2 OK [READ-WRITE] Select completed\r\n")
    assert mine.pop(select_ok - 1).startswith(b"* OK [HIGHESTMODSEQ ")  # SELECT's (CONDSTORE test)
    assert b"".join(mine).decode().splitlines() == b"".join(theirs).decode().splitlines()


def test_sort_dialogue_matches_dovecot(make_config: Callable[..., Any]) -> None:
    same_as_dovecot(make_config, [(_message(i, fields), _mtime(i)) for i, fields in enumerate(HEADERS)], SCRIPT)
