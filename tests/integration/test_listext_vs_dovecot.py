"""LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819) and STATUS with SIZE (RFC 8438) compared with
a real Dovecot 2.3 (the throwaway one of test_fetch_vs_dovecot.py), over raw sockets.

Both servers get the same mailboxes: three messages in INBOX (one \\Seen), `t`, `t.p`, `t.p.q`
made by CREATE, `t.x.y` made on disk by another program (so `t.x` is a parent that is no mailbox),
`t.s` subscribed and then deleted (a subscription without a mailbox), `t.u` with the special use
\\Junk (ours by CREATE (USE ...), Dovecot's from its configuration, as its Sent, Drafts, Trash, Junk
and Archive, the default folders of our accounts). The same script of LIST, LSUB and STATUS
commands then runs on both, and each answer must be the same lines.

Normalised: the lines of one LIST are compared as a set, each `* STATUS` kept with the `* LIST`
before it (Dovecot lists Maildir++ folders in directory order, we list INBOX first and then by
name); timing texts and the BAD/NO texts (test_condstore_vs_dovecot.normalise).

Known differences, not exercised: our SUBSCRIBE accepts a name that does not exist (RFC 3501
§6.3.6 allows it; Dovecot refuses).
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD
from tests.integration import test_fetch_vs_dovecot as dv
from tests.integration.test_condstore_vs_dovecot import Conn, normalise
from tests.integration.test_imap_server import ALICE, ImapHarness

MESSAGES = [(b"From: a@example.org\r\nSubject: one\r\n\r\nbody one\r\n", ""),
            (b"From: b@example.org\r\nSubject: two\r\n\r\nthe second body\r\n", "S"),
            (b"From: c@example.org\r\nSubject: three\r\n\r\nthree\r\nlines\r\nhere\r\n", "")]
SETUP = ["CREATE t", "CREATE t.p", "CREATE t.p.q", "CREATE t.s", "SUBSCRIBE t.s", "DELETE t.s", "SUBSCRIBE t.x.y",
         "SUBSCRIBE t.p.q", "SUBSCRIBE INBOX", "SUBSCRIBE t", "SUBSCRIBE Sent"]
DOVECOT_SPECIAL_USE = """
namespace inbox {
  inbox = yes
  separator = .
""" + "".join(f"  mailbox {name} {{\n    special_use = \\{use}\n    auto = create\n  }}\n" for name, use in (
    ("Sent", "Sent"), ("Drafts", "Drafts"), ("Trash", "Trash"), ("Junk", "Junk"), ("Archive", "Archive"))) + """\
  mailbox t.u {
    special_use = \\Junk
  }
}
"""
SCRIPT = [
    'LIST "" *', 'LIST "" * RETURN (SPECIAL-USE)', 'LIST (SPECIAL-USE) "" *', 'LIST (SPECIAL-USE) "" * RETURN (CHILDREN)',
    'LIST (SPECIAL-USE RECURSIVEMATCH) "" %', 'LIST (SPECIAL-USE RECURSIVEMATCH) "" % RETURN (CHILDREN SPECIAL-USE)',
    'LIST (SPECIAL-USE) "" t* RETURN (STATUS (MESSAGES))', 'LIST "" (S* J*) RETURN (SPECIAL-USE CHILDREN)',
    'LIST (SUBSCRIBED) "" *', 'LIST (SUBSCRIBED SPECIAL-USE) "" *', 'LSUB "" *',
    'LIST "" t*', 'LIST () "" t*', 'LIST "" t* RETURN ()', 'LIST "" t* RETURN (CHILDREN)',
    'LIST "" t* RETURN (SUBSCRIBED)', 'LIST "" t* RETURN (CHILDREN SUBSCRIBED)',
    'LIST (SUBSCRIBED) "" (INBOX t*)', 'LIST (SUBSCRIBED) "" t% RETURN (CHILDREN)',
    'LIST (SUBSCRIBED RECURSIVEMATCH) "" t%', 'LIST (SUBSCRIBED RECURSIVEMATCH) "" t.%',
    'LIST (SUBSCRIBED RECURSIVEMATCH) "" t.% RETURN (CHILDREN)', 'LIST (SUBSCRIBED RECURSIVEMATCH) "" (t.x t.x.y)',
    'LIST (SUBSCRIBED RECURSIVEMATCH) "" (t.p t.x)', 'LIST (subscribed recursivematch) "" t.p%',
    'LIST (REMOTE) "" t%', 'LIST (REMOTE SUBSCRIBED) "" t*', 'LIST "" (INBOX t.p*)', 'LIST "" (t.p* INBOX t.p)',
    'LIST "t." (p x*)', 'LIST () "t.p" ""', 'LIST "t." ("" p)', 'LIST "" ()', 'LIST () "" ""', 'LIST "" ("")',
    'LIST "" ""', 'LIST "" t.nothere',
    'LIST "" (INBOX t*) RETURN (STATUS (MESSAGES UNSEEN UIDNEXT SIZE))',
    'LIST (SUBSCRIBED) "" (INBOX t*) RETURN (STATUS (SIZE MESSAGES))',
    'LIST (SUBSCRIBED RECURSIVEMATCH) "" t% RETURN (CHILDREN STATUS (UNSEEN))',
    'LIST "" t% RETURN (STATUS (MESSAGES) SUBSCRIBED CHILDREN)',
    'STATUS INBOX (SIZE UNSEEN MESSAGES UIDNEXT)', 'STATUS t.p (SIZE)', 'STATUS INBOX (UIDNEXT SIZE UNSEEN)',
    'LIST (RECURSIVEMATCH) "" %', 'LIST (RECURSIVEMATCH REMOTE) "" %', 'LIST (FOO) "" %', 'LIST "" % RETURN (FOO)',
    'LIST "" % RETURN (STATUS ())', 'LIST "" % RETURN (STATUS (FOO))', 'LIST "" % RETURN (STATUS)',
    'LIST "" % EXTRA', 'LSUB "" t*', 'LSUB "" t%', 'LSUB "" t.%',
]


def _maildir_folder(path: Path, owner: tuple[int, int] | None) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True)
    (path / "maildirfolder").touch()
    if owner is not None:
        for p in (path, *path.iterdir()):
            os.chown(p, *owner)


def _answers(port: int, user: str, password: str, setup: list[str]) -> list[list[bytes]]:
    conn = Conn(port, user, password)
    try:
        for text in setup:
            assert b" OK " in conn.cmd(text)[-1], text
        out = []
        for text in SCRIPT:
            lines = [normalise(ln, 0) for ln in conn.cmd(text)]
            groups: list[bytes] = []
            for ln in lines[:-1]:
                if ln.startswith(b"* STATUS ") and groups:
                    groups[-1] += ln  # a LIST-STATUS answer stays with its LIST line
                else:
                    groups.append(ln)
            out.append([text.encode() + b"\r\n", *sorted(groups), lines[-1]])
        return out
    finally:
        conn.close()


def test_list_extended_and_list_status_match_dovecot(make_config: Callable[..., Any]) -> None:
    if not os.path.exists(dv.DOVECOT):
        pytest.skip("dovecot is not installed")
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}})).start()
    root = Path(tempfile.mkdtemp(prefix="mh-dovecot-"))
    dovecot = dv.Dovecot(root)
    try:
        async def fill() -> Path:
            account = h.store.account(ALICE)
            mb = await account.mailbox("INBOX")
            for data, flags in MESSAGES:
                await mb.append(data, frozenset({"\\Seen"}) if flags else frozenset(), 1700000000.0)
            return Path(account.path)

        _maildir_folder(h.call(fill()) / ".t.x.y", None)
        for i, (data, flags) in enumerate(MESSAGES):
            (dovecot.maildir / "cur").mkdir(parents=True, exist_ok=True)
            dovecot.add_message(f"m{i}", data, 1700000000 + i, flags)
        owner = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
        _maildir_folder(dovecot.maildir / ".t.x.y", (owner.pw_uid, owner.pw_gid))
        dovecot.extra_conf = DOVECOT_SPECIAL_USE
        dovecot.start()
        theirs = _answers(dovecot.port, dv.USER, dv.PASSWORD, [*SETUP, "CREATE t.u"])
        mine = _answers(h.ports["imap"], ALICE, PASSWORD, [*SETUP, "CREATE t.u (USE (\\Junk))"])
    finally:
        dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)
        h.stop()
    differences = [(ours, dovecots) for ours, dovecots in zip(mine, theirs, strict=True) if ours != dovecots]
    assert not differences
    text = b"".join(b"".join(answer) for answer in mine)  # the script did reach what it is about
    for part in (b'* LIST () "." INBOX\r\n* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UNSEEN 2 SIZE 160)',
                 b'(CHILDINFO ("SUBSCRIBED"))', b"\\NonExistent", b'* LIST (\\Subscribed \\NonExistent) "." t.s'):
        assert part in text, part
