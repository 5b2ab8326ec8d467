"""A full disk refuses honestly and never half-applies (issue 10 item 8).

The data directory is a small tmpfs that the test fills to the last byte (mounting needs root:
otherwise these tests are skipped, saying so). Then:
- a flag change is in both the file name and the index, or in neither (a refused STORE \\Deleted
  must not be expunged by another session's EXPUNGE);
- APPEND and MX delivery are refused as temporary failures (IMAP NO [UNAVAILABLE], SMTP 452 4.3.1)
  and leave no file behind;
- reading needs no space: SELECT, FETCH and a POP3 login work, and POP3 DELE + QUIT removes mail,
  which is how a user makes room.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import imaplib
import os
import poplib
import re
import smtplib
import sqlite3
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailhaven import errors
from mailhaven.store import Store
from tests.fixtures_base import PASSWORD
from tests.fixtures_server import add_user, running_app

HOST = "test.host"
ALICE = "alice@example.test"
TMPFS_SIZE = "4m"


@contextlib.contextmanager
def small_tmpfs(path: Path) -> Iterator[Path]:
    """A TMPFS_SIZE tmpfs mounted on `path` for the duration; skips the test when it cannot be."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill it needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path) -> Path:
    """Fill the file system of `path` to the last byte with one file; returns that file."""
    filler = path / f"filler{len(list(path.glob('filler*')))}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    if os.write(fd, block) < size:
                        break
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)
    assert os.statvfs(path).f_bavail == 0
    return filler


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def message(n: int) -> bytes:
    return (b"From: sender@example.org\r\nTo: alice@example.test\r\nSubject: full disk %d\r\n"
            b"Message-ID: <full%d@example.org>\r\n\r\n" % (n, n)
            + b"body line\r\n" * 2000)  # 22 kB: deleting one makes room


def on_disk(folder: Path) -> dict[str, str]:
    """key -> flag letters of every message file in new/ and cur/."""
    out = {}
    for sub in ("new", "cur"):
        for name in os.listdir(folder / sub):
            key, _, info = name.partition(":2,")
            out[key] = info
    return out


def indexed(user_root: Path) -> dict[str, str]:
    """key -> flag letters as the index records them (read with SQLite, read only)."""
    db = sqlite3.connect(f"file:{user_root / 'mailhaven-index.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT m.key, m.suffix FROM message m JOIN mailbox b ON b.id = m.mailbox_id"
                          " WHERE b.name = 'INBOX'").fetchall()
    finally:
        db.close()
    return {key: suffix.partition(":2,")[2] for key, suffix in rows}


def leftovers(folder: Path) -> list[str]:
    return os.listdir(folder / "tmp")


# --- the store API ------------------------------------------------------------------------------


async def test_store_on_a_full_disk_refuses_writes_whole_and_still_reads_and_expunges(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as fs:
        store = Store(fs / "mail", hostname=HOST, fsync=True)
        await store.start()
        try:
            for n in range(4):
                await store.deliver([(ALICE, "INBOX")], message(n))
            acc = store.account(ALICE)
            mb = await acc.mailbox("INBOX")
            uids = [m.uid for m in (await mb.snapshot()).messages]
            await mb.store_flags([uids[3]], {"\\Seen"}, "add")
            filler = fill(fs)

            # a flag change that cannot be indexed is not kept in the file name either
            failure: Exception | None = None
            try:
                await mb.store_flags([uids[0]], {"\\Deleted"}, "add")
            except Exception as e:
                failure = e
            refused = failure is not None
            assert on_disk(acc.path) == indexed(acc.path)
            assert failure is None or isinstance(failure, errors.StorageFull), repr(failure)
            snap = await mb.snapshot()  # reading works at 0 bytes free
            deleted = [m.uid for m in snap.messages if "\\Deleted" in m.flags]
            assert deleted == ([] if refused else [uids[0]])
            assert [m.uid for m in snap.messages] == uids
            other = await acc.mailbox("INBOX")  # what a second session sees
            assert [m.uid for m in (await other.snapshot()).messages if "\\Deleted" in m.flags] == deleted
            assert await mb.read(uids[1]) == message(1)

            # nothing half-stored
            before = on_disk(acc.path)
            with pytest.raises(errors.StorageFull):
                await mb.append(message(9))
            with pytest.raises(errors.StorageFull) as e:
                await store.deliver([(ALICE, "INBOX")], message(10))
            assert (e.value.code, e.value.enhanced) == (452, "4.3.1")
            assert on_disk(acc.path) == before and leftovers(acc.path) == []
            assert [m.uid for m in (await mb.snapshot()).messages] == uids

            # deleting makes room, and works at 0 bytes free
            assert await mb.expunge([uids[1]]) == [uids[1]]
            assert free_bytes(fs) > 0
            assert [m.uid for m in (await mb.snapshot()).messages] == [uids[0], uids[2], uids[3]]

            filler.unlink()
            await mb.store_flags([uids[2]], {"\\Flagged"}, "add")
            assert on_disk(acc.path) == indexed(acc.path)
        finally:
            await store.close()

        # a restart sees what the clients were told
        store = Store(fs / "mail", hostname=HOST, fsync=True)
        try:
            snap = await (await store.account(ALICE).mailbox("INBOX")).snapshot()
            assert [m.uid for m in snap.messages] == [uids[0], uids[2], uids[3]]
            flags = {m.uid: m.flags for m in snap.messages}
            assert ("\\Deleted" in flags[uids[0]]) is not refused
            assert "\\Flagged" in flags[uids[2]] and "\\Seen" in flags[uids[3]]
        finally:
            await store.close()


# --- the protocols ------------------------------------------------------------------------------


def _imap(port: int, context: ssl.SSLContext) -> imaplib.IMAP4_SSL:
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=30)
    c.login(ALICE, PASSWORD)
    return c


def _select(c: imaplib.IMAP4_SSL) -> int:
    typ, data = c.select("INBOX")
    assert typ == "OK", data
    return int(data[0])  # type: ignore[arg-type]


def _flags(c: imaplib.IMAP4_SSL) -> dict[int, str]:
    typ, lines = c.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK", lines
    out = {}
    for line in lines:
        assert isinstance(line, bytes)
        m = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", line)
        assert m, line
        uid = int(m.group(1) or m.group(4))
        out[uid] = (m.group(2) if m.group(2) is not None else m.group(3)).decode()
    return out


def _mx_send(port: int, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.net", timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.mail("sender@example.org")[0] == 250
        assert smtp.rcpt(ALICE)[0] == 250
        try:
            return smtp.data(data)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error


def _pop3_delete_first(port: int, context: ssl.SSLContext, count: int) -> tuple[bytes, bytes]:
    c = poplib.POP3_SSL("127.0.0.1", port, context=context, timeout=30)
    c.user(ALICE)
    c.pass_(PASSWORD)
    assert c.stat()[0] == count
    dele = c.dele(1)
    return dele, c.quit()


def _imap_at_full_disk(port: int, context: ssl.SSLContext, user_root: Path) -> dict[str, Any]:
    """Everything IMAP does once the disk is full; returns what the later steps check."""
    a, b = _imap(port, context), _imap(port, context)
    try:
        assert _select(a) == 4
        first = min(_flags(a))
        typ, data = a.uid("STORE", str(first), "+FLAGS", r"(\Deleted)")
        # refused as a temporary failure (or done, if it really fit), never SERVERBUG
        assert (typ, data[-1]) == ("NO", b"[UNAVAILABLE] Temporary failure, try again later.") or typ == "OK", data
        refused = typ == "NO"
        assert on_disk(user_root) == indexed(user_root)
        assert ("\\Deleted" in _flags(a)[first]) is not refused  # the session itself agrees
        # a second session: SELECT and FETCH work at 0 bytes free, and see the same flags
        assert _select(b) == 4
        flags = _flags(b)
        assert ("\\Deleted" in flags[first]) is not refused
        typ, parts = b.uid("FETCH", str(first), "(BODY.PEEK[])")
        assert typ == "OK" and parts[0][1] == message(0)  # type: ignore[index]
        # its EXPUNGE removes only what really has \Deleted
        typ, _ = b.expunge()
        assert typ == "OK"
        assert _select(b) == (4 if refused else 3)
        # APPEND is refused and stores nothing
        before = on_disk(user_root)
        typ, data = b.append("INBOX", None, None, message(20))
        assert (typ, data[-1]) == ("NO", b"[UNAVAILABLE] Temporary failure, try again later."), data
        assert on_disk(user_root) == before and leftovers(user_root) == []
        return {"refused": refused, "first": first}
    finally:
        for c in (a, b):
            with contextlib.suppress(Exception):
                c.logout()


async def test_protocols_on_a_full_disk_refuse_honestly_and_pop3_makes_room(
        app_config: Any, client_ssl_context: ssl.SSLContext) -> None:
    add_user(app_config, ALICE, PASSWORD)
    with small_tmpfs(Path(app_config.data_dir)) as fs:
        async with running_app(app_config) as ctx:
            for n in range(4):
                await ctx.store.deliver([(ALICE, "INBOX")], message(n))
            user_root = Path(app_config.mail_root) / "example.test" / "alice"
            c = await asyncio.to_thread(_imap, ctx.port("imaps"), client_ssl_context)
            assert await asyncio.to_thread(_select, c) == 4  # indexed while there is room
            await asyncio.to_thread(c.uid, "STORE", "4", "+FLAGS", r"(\Seen)")
            await asyncio.to_thread(c.logout)
            filler = fill(fs)

            seen = await asyncio.to_thread(_imap_at_full_disk, ctx.port("imaps"), client_ssl_context, user_root)

            # MX: 452 4.3.1, nothing half-stored
            before = on_disk(user_root)
            code, text = await asyncio.to_thread(_mx_send, ctx.port("mx"), message(30))
            assert (code, text.split(b" ", 1)[0]) == (452, b"4.3.1"), (code, text)
            assert on_disk(user_root) == before and leftovers(user_root) == []

            # POP3 at 0 bytes free: login, DELE, QUIT, and the space is back
            count = 4 if seen["refused"] else 3
            refill = fill(fs) if free_bytes(fs) else None  # the EXPUNGE above may have freed some
            dele, bye = await asyncio.to_thread(_pop3_delete_first, ctx.port("pop3s"), client_ssl_context, count)
            assert dele.startswith(b"+OK") and bye.startswith(b"+OK"), (dele, bye)
            assert free_bytes(fs) > 0
            assert len(on_disk(user_root)) == count - 1
            snap = await (await ctx.store.account(ALICE).mailbox("INBOX")).snapshot()
            assert len(snap.messages) == count - 1
            assert on_disk(user_root) == indexed(user_root)

            filler.unlink()
            if refill is not None:
                refill.unlink()
            code, text = await asyncio.to_thread(_mx_send, ctx.port("mx"), message(31))
            assert code == 250, (code, text)


async def test_reading_at_0_bytes_free_writes_nothing_also_after_a_restart(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as fs:
        store = Store(fs / "mail", hostname=HOST, fsync=True)
        for n in range(3):
            await store.deliver([(ALICE, "INBOX")], message(n))
        mb = await store.account(ALICE).mailbox("INBOX")
        uids = [m.uid for m in (await mb.snapshot()).messages]
        await mb.store_flags([uids[0]], {"\\Seen"}, "add")  # cur/ changed since the last scan
        await store.close()
        for restart in (False, True):
            store = Store(fs / "mail", hostname=HOST, fsync=True)
            try:
                if not restart:  # the index open before the disk fills, as in a running server
                    await (await store.account(ALICE).mailbox("INBOX")).snapshot()
                filler = fill(fs)
                acc = store.account(ALICE)
                mb = await acc.mailbox("INBOX")
                snap = await mb.snapshot()
                assert [m.uid for m in snap.messages] == uids
                assert [await mb.read(u) for u in uids] == [message(n) for n in range(3)]
                assert "\\Seen" in snap.messages[0].flags
                assert [b.name for b in await acc.list_mailboxes()][0] == "INBOX"
            finally:
                await store.close()
            filler.unlink()


def indexed_in(user_root: Path, name: str) -> set[str]:
    db = sqlite3.connect(f"file:{user_root / 'mailhaven-index.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT m.key FROM message m JOIN mailbox b ON b.id = m.mailbox_id WHERE b.name = ?",
                          (name,)).fetchall()
    finally:
        db.close()
    return {key for (key,) in rows}


async def test_copy_and_move_on_a_full_disk_are_whole_or_not_at_all(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as fs:
        store = Store(fs / "mail", hostname=HOST, fsync=True)
        try:
            for n in range(3):
                await store.deliver([(ALICE, "INBOX")], message(n))
            acc = store.account(ALICE)
            inbox, archive = await acc.mailbox("INBOX"), await acc.mailbox("Archive")
            uids = [m.uid for m in (await inbox.snapshot()).messages]
            await archive.snapshot()
            fill(fs)
            expected = 0
            for op in (inbox.copy, inbox.move):
                try:
                    pairs = await op([uids[0]], archive)
                except errors.StorageFull:
                    pairs = []
                expected += len(pairs)
                archived = set(on_disk(acc.path / ".Archive"))
                assert len(archived) == expected
                # whole or not at all: files, index and what the API shows agree in both folders
                assert archived == indexed_in(acc.path, "Archive")
                assert {m.key for m in (await archive.snapshot()).messages} == archived
                assert set(on_disk(acc.path)) == {m.key for m in (await inbox.snapshot()).messages}
                assert leftovers(acc.path / ".Archive") == []
        finally:
            await store.close()


async def test_expunge_at_0_bytes_free_removes_mail_even_before_the_index_can_record_it(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as fs:
        store = Store(fs / "mail", hostname=HOST, fsync=True)
        try:
            for n in range(3):
                await store.deliver([(ALICE, "INBOX")], b"Subject: small %d\r\n\r\nsmall\r\n" % n)
            acc = store.account(ALICE)
            mb = await acc.mailbox("INBOX")
            uids = [m.uid for m in (await mb.snapshot()).messages]
            await mb.store_flags([uids[2]], {"\\Seen"}, "add")
            filler = fill(fs)
            assert await mb.expunge([uids[0]]) == [uids[0]]  # one page freed: maybe not enough for the index
            assert [m.uid for m in (await mb.snapshot()).messages] == uids[1:]
            assert len(on_disk(acc.path)) == 2
            filler.unlink()
            await mb.snapshot()  # the next write that works records the removal
            assert set(on_disk(acc.path)) == indexed_in(acc.path, "INBOX")
        finally:
            await store.close()
        store = Store(fs / "mail", hostname=HOST, fsync=True)
        try:
            assert [m.uid for m in (await (await store.account(ALICE).mailbox("INBOX")).snapshot()).messages] \
                == uids[1:]
        finally:
            await store.close()
