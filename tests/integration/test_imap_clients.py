"""Real IMAP clients against the server: mbsync (Debian isync) syncing both ways over STARTTLS, flags
included, with a second sync changing nothing; and mutt driven through tmux."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD
from tests.integration.test_imap_server import ALICE, ImapHarness, make_message

MBSYNC = shutil.which("mbsync")
MUTT = shutil.which("mutt")
TMUX = shutil.which("tmux")


@pytest.fixture
def imap(make_config: Callable[..., Any], tls_ca: Any, tmp_path: Path) -> Iterator[ImapHarness]:
    # mbsync 1.4 insists on a certificate common name: issue one that has it.
    cert = tls_ca.issue_cert("localhost", "127.0.0.1", common_name="127.0.0.1")
    cert_path, key_path = tmp_path / "cn-cert.pem", tmp_path / "cn-key.pem"
    cert_path.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    cfg = make_config("imap", {"imaps": {"tls": "implicit"}}, tls={"cert": str(cert_path), "key": str(key_path)})
    h = ImapHarness(cfg).start()
    try:
        yield h
    finally:
        h.stop()


# --------------------------------------------------------------------------- mbsync


def _mbsyncrc(tmp: Path, port: int, ca: Path, local: Path) -> Path:
    rc = tmp / "mbsyncrc"
    rc.write_text(f"""IMAPAccount mh
Host 127.0.0.1
Port {port}
User {ALICE}
Pass {PASSWORD}
SSLType STARTTLS
CertificateFile {ca}
AuthMechs PLAIN

IMAPStore remote
Account mh

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel ch
Far :remote:
Near :local:
Patterns *
Create Both
Remove None
Expunge Both
SyncState *
""")
    return rc


def _mbsync(rc: Path) -> str:
    proc = subprocess.run([MBSYNC or "mbsync", "-V", "-c", str(rc), "-a"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _local_state(folder: Path) -> dict[str, str]:
    """Message-ID -> maildir flag letters, for every message of a local Maildir folder."""
    out = {}
    for sub in ("cur", "new"):
        for f in (folder / sub).iterdir():
            mid = re.search(rb"^Message-ID: (.*)$", f.read_bytes(), re.M | re.I)
            assert mid
            flags = f.name.split(":2,", 1)[1] if ":2," in f.name else ""
            out[mid.group(1).strip().decode()] = flags
    return out


def _server_state(h: ImapHarness, folder: str = "INBOX") -> dict[str, set[str]]:
    async def go() -> dict[str, set[str]]:
        mb = await h.store.account(ALICE).mailbox(folder)
        out = {}
        for m in (await mb.snapshot()).messages:
            data = await mb.read(m.uid)
            mid = re.search(rb"^Message-ID: (.*)$", data, re.M | re.I)
            assert mid
            out[mid.group(1).strip().decode()] = set(m.flags)
        return out
    return h.call(go())  # type: ignore[no-any-return]


LETTERS = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R", "\\Draft": "D", "\\Deleted": "T"}


@pytest.mark.skipif(MBSYNC is None, reason="mbsync (isync) not installed")
def test_mbsync_syncs_both_ways_with_flags_and_a_second_sync_changes_nothing(
        imap: ImapHarness, tmp_path: Path, tls_ca: Any) -> None:
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))
    local = tmp_path / "local"
    local.mkdir()
    imap.fill(5)
    imap.store_flags([2], {"\\Seen"})
    imap.store_flags([3], {"\\Flagged", "\\Answered"})
    rc = _mbsyncrc(tmp_path, imap.ports["imap"], ca, local)

    # 1. server -> local, flags included
    _mbsync(rc)
    state = _local_state(local / "INBOX")
    assert len(state) == 5
    server = _server_state(imap)
    for mid, flags in server.items():
        assert set(state[mid]) == {LETTERS[f] for f in flags}
    assert (local / "Sent").is_dir() and (local / "Trash").is_dir()

    # 2. a second sync changes nothing on either side
    before_local = sorted(p.name for p in (local / "INBOX").rglob("*") if p.is_file())
    before_server = _server_state(imap)
    _mbsync(rc)
    assert sorted(p.name for p in (local / "INBOX").rglob("*") if p.is_file() and p.name != ".mbsyncstate") == \
        sorted(n for n in before_local if n != ".mbsyncstate")
    assert _server_state(imap) == before_server

    # 3. local changes go up: a new message, a flag, a deletion
    files = {f.name: f for f in (local / "INBOX" / "cur").iterdir()} | \
        {f.name: f for f in (local / "INBOX" / "new").iterdir()}
    by_mid = {}
    for f in files.values():
        mid = re.search(rb"^Message-ID: (.*)$", f.read_bytes(), re.M | re.I)
        assert mid
        by_mid[mid.group(1).strip().decode()] = f
    f1 = by_mid["<m1@example.org>"]
    base = f1.name.split(":2,")[0]
    os.rename(f1, local / "INBOX" / "cur" / (base + ":2,FS"))  # flag + seen
    f4 = by_mid["<m4@example.org>"]
    base = f4.name.split(":2,")[0]
    os.rename(f4, local / "INBOX" / "cur" / (base + ":2,T"))  # trashed -> expunged (Expunge Both)
    (local / "INBOX" / "new" / "1700000000.local1.host").write_bytes(make_message(100))
    (local / "Projects").mkdir()
    for sub in ("cur", "new", "tmp"):
        (local / "Projects" / sub).mkdir()
    (local / "Projects" / "new" / "1700000001.local2.host").write_bytes(make_message(101))
    # and server-side changes come down
    imap.deliver(make_message(200))
    imap.store_flags([5], {"\\Seen"})
    _mbsync(rc)
    server = _server_state(imap)
    assert server["<m1@example.org>"] == {"\\Seen", "\\Flagged"}
    assert "<m4@example.org>" not in server
    assert "<m100@example.org>" in server
    assert server["<m5@example.org>"] == {"\\Seen"}
    assert _server_state(imap, "Projects") == {"<m101@example.org>": set()}
    state = _local_state(local / "INBOX")
    assert "<m200@example.org>" in state and "S" in state["<m5@example.org>"]
    assert "<m4@example.org>" not in state
    assert set(state) == set(server)

    # 4. and once more: nothing changes
    before_server = _server_state(imap)
    before_local = _local_state(local / "INBOX")
    _mbsync(rc)
    assert _server_state(imap) == before_server
    assert _local_state(local / "INBOX") == before_local


# --------------------------------------------------------------------------- mutt (through tmux)


class Tmux:
    """A detached tmux session running one interactive program, read through capture-pane."""

    def __init__(self, name: str, command: str, env: dict[str, str]) -> None:
        self.name = name
        subprocess.run([TMUX or "tmux", "kill-session", "-t", name], capture_output=True)
        subprocess.run([TMUX or "tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "40", command],
                       check=True, env=env)

    def screen(self) -> str:
        return subprocess.run([TMUX or "tmux", "capture-pane", "-t", self.name, "-p"], capture_output=True,
                              text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([TMUX or "tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, pattern: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen, re.M):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not on screen:\n{screen}")

    def close(self) -> None:
        subprocess.run([TMUX or "tmux", "kill-session", "-t", self.name], capture_output=True)


def _wait(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.skipif(MUTT is None or TMUX is None, reason="mutt and tmux needed")
def test_mutt_reads_deletes_and_sees_new_mail_over_starttls(imap: ImapHarness, tmp_path: Path, tls_ca: Any
                                                            ) -> None:
    ca = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca))
    imap.fill(3)
    muttrc = tmp_path / "muttrc"
    muttrc.write_text(f"""set folder="imap://alice%40example.test@127.0.0.1:{imap.ports['imap']}/"
set imap_pass="{PASSWORD}"
set spoolfile="+INBOX"
set ssl_starttls=yes
set ssl_force_tls=yes
set ssl_ca_certificates_file="{ca}"
set certificate_file="{tmp_path / 'certs'}"
set header_cache=""
set message_cachedir=""
set mail_check=1
set timeout=1
set index_format="%4C %Z %s"
set delete=yes
set mark_old=no
set move=no
set quit=yes
set pager_stop=yes
set imap_idle=yes
""")
    env = dict(os.environ, HOME=str(tmp_path), TERM="xterm")
    mutt = Tmux(f"mh-mutt-{os.getpid()}", f"mutt -n -F {muttrc}", env)
    try:
        screen = mutt.wait_for(r"message 3")
        assert "message 1" in screen and "message 2" in screen
        # read message 1: \Seen reaches the server
        mutt.keys("Enter")
        mutt.wait_for(r"line 2 of message 1")
        mutt.keys("q")
        mutt.wait_for(r"message 3")
        mutt.keys("$")
        _wait(lambda: "\\Seen" in imap.messages()[0].flags)
        # delete message 2 and sync: expunged on the server
        mutt.keys("2", "Enter")
        mutt.keys("d")
        mutt.keys("$")
        _wait(lambda: [m.uid for m in imap.messages()] == [1, 3])
        # new mail delivered while mutt is open shows up
        imap.deliver(make_message(9))
        mutt.wait_for(r"message 9", timeout=20)
        screen = mutt.screen()
        assert "message 2" not in screen
        mutt.keys("q")
        _wait(lambda: imap.store.changes.subscriber_count() == 0)
    finally:
        mutt.close()
