"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256) compared byte for byte with a real
Dovecot 2.3: test_sort_vs_dovecot.py's awkward messages (subjects, dates and zones, missing and
broken headers) plus reply chains (References and In-Reply-To, missing parents, duplicate
Message-IDs, reference loops, replies by subject only) and seeded random reply graphs (seeds
1-14 and, with odd msg-ids, 20-29 matched when tried); both algorithms, with search keys, UID THREAD, without some
messages of the chains, and the errors; the dialogue and its normalisation are those of
test_condstore_vs_dovecot.py.

Not compared here: THREAD after EXPUNGE, because the EXPUNGE answer itself differs (Dovecot 2.3
sends the expunged numbers in descending order and then `* n RECENT`; we send them ascending,
each already shifted), which is EXPUNGE's business, not THREAD's."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.test_sort_vs_dovecot import HEADERS as AWKWARD
from tests.integration.test_sort_vs_dovecot import same_as_dovecot

D = "Tue, 14 Nov 2023 %02d:00:00 +0000"
CHAINS: list[dict[str, str]] = [  # Message-ID given here, or <s{i}@example.org>
    {"Subject": "root", "Message-ID": "<r1@x>", "Date": D % 1},
    {"Subject": "Re: root", "Message-ID": "<r2@x>", "References": "<r1@x>", "Date": D % 3},
    {"Subject": "Re: root", "Message-ID": "<r3@x>", "In-Reply-To": "<r1@x>", "Date": D % 2},
    {"Subject": "Re: root", "Message-ID": "<r4@x>", "References": "<r1@x> <r2@x>", "Date": D % 4},
    {"Subject": "Re: lost", "Message-ID": "<l2@x>", "References": "<l0@x> <l1@x>", "Date": D % 5},
    {"Subject": "Re: lost", "Message-ID": "<l3@x>", "References": "<l0@x>", "Date": D % 6},
    {"Subject": "dup", "Message-ID": "<d@x>", "Date": D % 7},
    {"Subject": "dup", "Message-ID": "<d@x>", "Date": D % 8},
    {"Subject": "Re: dup", "Message-ID": "<d2@x>", "References": "<d@x>", "Date": D % 9},
    {"Subject": "loop a", "Message-ID": "<la@x>", "References": "<lb@x>", "Date": D % 10},
    {"Subject": "loop b", "Message-ID": "<lb@x>", "References": "<la@x>", "Date": D % 11},
    {"Subject": "self", "Message-ID": "<me@x>", "References": "<me@x>", "Date": D % 12},
    {"Subject": "Re: root", "Date": D % 13},
    {"Subject": "root", "Date": D % 14},
    {"Subject": "Fwd: root", "Message-ID": "<f@x>", "Date": D % 0},
    {"Subject": "odd refs", "Message-ID": "<o@x>", "References": "junk <nope> <r2@x> trailing",
     "In-Reply-To": "<l3@x>", "Date": D % 15},
    {"Subject": "Re: b (a)", "In-Reply-To": "\"quoted\" <r4@x> <r3@x>", "Date": D % 16},
    {"Subject": "re: lost", "Message-ID": "<l1@x>", "Date": D % 17},
]
HEADERS = AWKWARD + CHAINS


def _message(i: int, fields: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    if "Message-ID" not in fields and i < len(AWKWARD):
        head += f"Message-ID: <s{i}@example.org>\r\n"
    return (head + "\r\nbody line\r\n").encode()


def _mtime(i: int) -> float:
    return 1700000000.0 + 1000 * (i // 2)  # pairs with the same internal date


SCRIPT: list[tuple[str, str]] = [("a", "SELECT INBOX")] + [
    ("a", f"{cmd} {alg} {rest}") for cmd in ("THREAD", "UID THREAD") for alg in ("ORDEREDSUBJECT", "REFERENCES")
    for rest in ("US-ASCII ALL", "UTF-8 SUBJECT root", "US-ASCII 5:25", "US-ASCII DELETED")] + [
    ("a", "thread references us-ascii all"),
    ("a", "THREAD FOO US-ASCII ALL"),
    ("a", "THREAD REFERENCES X-UNKNOWN ALL"),
    ("a", "THREAD REFERENCES US-ASCII"),
    ("a", "THREAD"),
    ("a", "STORE 13,14,20 +FLAGS.SILENT (\\Deleted)"),
    ("a", "THREAD REFERENCES US-ASCII UNDELETED"),  # parents missing from the set: dummies, merges
    ("a", "THREAD ORDEREDSUBJECT US-ASCII UNDELETED"),
    ("a", "UID THREAD REFERENCES US-ASCII NOT DELETED"),
]


def test_thread_dialogue_matches_dovecot(make_config: Callable[..., Any]) -> None:
    same_as_dovecot(make_config, [(_message(i, fields), _mtime(i)) for i, fields in enumerate(HEADERS)], SCRIPT)


ODD_IDS = ["< d@r >", "<e>", "<f@r> (comment)", "<g@[1.2.3.4]>", "(c) <k@r>", "<l@r>,<m@r>", "<A@r>", "<i@r><j@r>",
           "<\"q q\"@r>", "<h@r", "h@r>", "<n@r> <o(x)@r>"]  # as Dovecot 2.3 reads them (thread.message_ids)


def random_messages(seed: int, count: int = 40) -> list[dict[str, str]]:
    """Reply graphs no one would write by hand: few Message-IDs (so duplicates, loops and missing
    parents are common), subjects that are replies or not, equal and missing dates; from seed 20
    on, with odd msg-id syntax too."""
    rng = random.Random(seed)
    ids = [f"<{c}@r>" for c in "abcdefghijklmnop"] + (ODD_IDS if seed >= 20 else [])
    out: list[dict[str, str]] = []
    for _ in range(count):
        fields: dict[str, str] = {"Subject": rng.choice(["t", "Re: t", "u", "Fwd: u", "re: re: v", "v", "", "w (fwd)",
                                                         "[x] u", "Re: [fwd: v]"])}
        if rng.random() < 0.85:
            fields["Message-ID"] = rng.choice(ids)
        if rng.random() < 0.6:
            fields["References"] = " ".join(rng.sample(ids, rng.randint(1, 4)))
        if rng.random() < 0.3:
            fields["In-Reply-To"] = rng.choice(ids)
        if rng.random() < 0.8:
            fields["Date"] = D % rng.randint(0, 5)
        out.append(fields)
    return out


RANDOM_SCRIPT: list[tuple[str, str]] = [("a", "SELECT INBOX")] + [
    ("a", f"{cmd} {alg} US-ASCII {keys}") for cmd in ("THREAD", "UID THREAD") for alg in ("ORDEREDSUBJECT", "REFERENCES")
    for keys in ("ALL", "1:*:2", "NOT 5:15")]


# seed 1 failed with a message's own id dropped from its References; 20 and 21 with msg-ids read
# by a plain <local@domain> pattern
@pytest.mark.parametrize("seed", [1, 2, 20, 21])
def test_random_reply_graphs_match_dovecot(make_config: Callable[..., Any], seed: int) -> None:
    msgs = random_messages(seed)
    same_as_dovecot(make_config, [(_message(i + 100, fields), _mtime(i)) for i, fields in enumerate(msgs)],
                    RANDOM_SCRIPT)
