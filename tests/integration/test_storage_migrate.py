"""`mailhaven storage migrate --to postgresql` (storage_migrate.py), end to end: a server on SQLite,
an IMAP client (imaplib) makes mailboxes, messages, flags, keywords, expunges, moves and
subscriptions; the server stops; the command (a real subprocess, as an operator runs it) moves the
indexes and the file queue into a real PostgreSQL; the server starts again with backend =
"postgresql" and every IMAP answer is the same: SELECT's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ,
UID FETCH 1:* (FLAGS MODSEQ), LIST, LSUB, STATUS, and QRESYNC resynchronisation (nothing changed
since the last state; the same VANISHED (EARLIER) since a state before the expunge)."""

from __future__ import annotations

import asyncio
import imaplib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from mailhaven.queue.spool import Spool
from tests.fixtures_base import PASSWORD
from tests.fixtures_server import add_user, app_config_data, load_test_config, running_app, write_config

ALICE = "alice@example.test"
BOB = "bob@example.test"


def _msg(n: int) -> bytes:
    return (f"From: s@example.org\r\nTo: {ALICE}\r\nSubject: m{n}\r\nMessage-ID: <m{n}@example.org>\r\n\r\n"
            f"body {n}\r\n").encode()


def _client(port: int, user: str = ALICE) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    c.login(user, PASSWORD)
    typ, _ = c._simple_command("ENABLE", "QRESYNC")
    assert typ == "OK"
    return c


def _fill(port: int) -> int:
    """The changes of a user's life; returns a HIGHESTMODSEQ of INBOX from before its expunge."""
    c = _client(port)
    assert c.create("Work")[0] == "OK"
    assert c.create("Work.Old")[0] == "OK"
    assert c.subscribe("Work")[0] == "OK"
    assert c.subscribe("Gone.Yet")[0] == "OK"
    for i in range(5):
        assert c.append("INBOX", "(\\Seen $Label1)" if i % 2 else None, None, _msg(i))[0] == "OK"
    c.append("Work", "(\\Flagged)", None, _msg(10))
    c.select("INBOX")
    c.uid("STORE", "2,4", "+FLAGS", "(\\Answered Project-X)")
    c.uid("STORE", "3", "+FLAGS", "(\\Deleted)")
    c.unselect()
    c.select("INBOX")
    mid = int(c.untagged_responses["HIGHESTMODSEQ"][-1])
    c.expunge()
    c.uid("MOVE", "5", "Work")
    c.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
    c.logout()
    b = _client(port, BOB)
    b.append("INBOX", None, None, _msg(20))
    b.logout()
    return mid


def _observe(port: int, mid: int) -> dict[str, Any]:
    """Every answer the migration must keep (of both users)."""
    seen: dict[str, Any] = {}
    for user in (ALICE, BOB):
        c = _client(port, user)
        out: dict[str, Any] = {}
        out["list"] = sorted(c.list('""', "*")[1])
        out["lsub"] = sorted(c.lsub('""', "*")[1])
        for box in ("INBOX", "Work", "Work.Old") if user == ALICE else ("INBOX",):
            out[f"status {box}"] = c.status(box, "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)")[1]
            c.select(box)
            out[f"select {box}"] = {k: c.untagged_responses.get(k) for k in
                                    ("UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ", "EXISTS", "FLAGS", "PERMANENTFLAGS")}
            # \Recent is each session's (RFC 3501 §2.3.2: the first to see a message gets it, and the
            # observation before the migration is that first session), not state the migration moves
            out[f"fetch {box}"] = [x.replace(b"\\Recent", b"").replace(b"( ", b"(").replace(b" )", b")")
                                   if isinstance(x, bytes) else x for x in c.uid("FETCH", "1:*", "(FLAGS MODSEQ)")[1]]
            uidvalidity = int(out[f"select {box}"]["UIDVALIDITY"][-1])
            highest = int(out[f"select {box}"]["HIGHESTMODSEQ"][-1])
            c.unselect()
            # QRESYNC with the current state: nothing to tell; with a state before the expunge: VANISHED
            for since in (highest, mid) if box == "INBOX" and user == ALICE else (highest,):
                c.untagged_responses.clear()
                typ, _ = c._simple_command("SELECT", box, f"(QRESYNC ({uidvalidity} {since}))")
                assert typ == "OK"
                out[f"qresync {box} {since}"] = {k: c.untagged_responses.get(k) for k in ("VANISHED", "FETCH")}
                c.state = "SELECTED"  # imaplib's select() cannot send QRESYNC: it did not see this one
                c.unselect()
        c.logout()
        seen[user] = out
    return seen


async def _serve(cfg: Any, job: Any) -> Any:
    async with running_app(cfg) as ctx:
        return await asyncio.to_thread(job, ctx.port("imap"))


def test_migrating_to_postgresql_keeps_every_imap_answer_and_the_queue(tmp_path: Path, pg_dsn: str) -> None:
    data = app_config_data(tmp_path, None, auth={"failure_delay": 0, "allow_plaintext_loopback": True})
    path = write_config(tmp_path / "mailhaven.toml", data)
    from mailhaven.auth.users import UsersFile

    UsersFile(Path(data["users_file"])).save()
    cfg = load_test_config(path)
    add_user(cfg, ALICE, PASSWORD)
    add_user(cfg, BOB, PASSWORD)

    mid = asyncio.run(_serve(cfg, _fill))
    before = asyncio.run(_serve(cfg, lambda port: _observe(port, mid)))
    assert before[ALICE]["qresync INBOX " + str(mid)]["VANISHED"]  # the expunge and the move are tombstones
    assert before[ALICE]["lsub"]  # subscriptions exist
    # An entry waiting in the file queue (server stopped), in a worker's partition.
    entry = asyncio.run(Spool(cfg.queue_root / "worker-1").add("s@example.test", ["r@example.net"], _msg(99),
                                                                  next_attempt=time.time() + 3600))

    write_config(path, {**data, "storage": {"backend": "postgresql", "dsn": pg_dsn}})
    r = _cli(path, "storage", "migrate", "--to", "postgresql")
    assert r.returncode == 0, r.stderr
    # the folders opened so far (INBOX, Work, Work.Old: the others get their rows when first opened)
    assert f"index: {ALICE}: 3 mailboxes, 5 messages, 2 tombstones, 2 subscriptions" in r.stdout
    assert f"index: {BOB}:" in r.stdout
    assert f"queue: {entry.id}: from s@example.test to 1 recipient(s)" in r.stdout
    user_root = cfg.mail_root / "example.test" / "alice"
    assert (user_root / "mailhaven-index.sqlite").exists()  # left in place for going back
    assert (cfg.queue_root / f"{entry.id}.msg").exists()  # out of the partition
    assert (cfg.queue_root / "worker-1" / f"{entry.id}.env.migrated").exists()
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT envelope FROM queue_entry WHERE id = %s", (entry.id,)).fetchone()
    assert row is not None and row[0]["recipients"][0]["address"] == "r@example.net"

    # A second run changes nothing: users already there are skipped, the queue entry is not added twice.
    again = _cli(path, "storage", "migrate", "--to", "postgresql")
    assert again.returncode == 0, again.stderr
    assert f"index: {ALICE}: already in PostgreSQL, skipped (--force replaces it)" in again.stdout
    assert "queue:" not in again.stdout
    forced = _cli(path, "storage", "migrate", "--to", "postgresql", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"index: {ALICE}: 3 mailboxes, 5 messages, 2 tombstones, 2 subscriptions" in forced.stdout

    pg_cfg = load_test_config(path)
    (user_root / "subscriptions").unlink()  # with PostgreSQL the file is not read: it is in the database
    sqlite_files = {p.name: p.stat().st_mtime_ns for p in user_root.glob("mailhaven-index.sqlite*")}
    after = asyncio.run(_serve(pg_cfg, lambda port: _observe(port, mid)))
    assert after == before

    # The server on PostgreSQL writes its index there and never touches the SQLite files.
    def new_folder(port: int) -> None:
        c = _client(port)
        assert c.create("Fresh")[0] == "OK"
        c.select("Fresh")
        assert c.append("Fresh", "(Urgent)", None, _msg(30))[0] == "OK"
        c.logout()

    asyncio.run(_serve(pg_cfg, new_folder))
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT b.name, b.uidvalidity, m.keywords FROM mh_mailbox b JOIN mh_user u"
                            " ON u.id = b.user_id LEFT JOIN mh_message m ON m.mailbox_id = b.id WHERE u.name = %s",
                            (ALICE,)).fetchall()
    assert {"INBOX", "Work", "Work.Old", "Fresh"} <= {r[0] for r in rows}
    fresh = [r for r in rows if r[0] == "Fresh"]
    assert fresh[0][2] == "Urgent"
    uidvalidities = {r[0]: r[1] for r in rows}
    assert uidvalidities["Fresh"] > max(v for n, v in uidvalidities.items() if n != "Fresh")
    assert {p.name: p.stat().st_mtime_ns for p in user_root.glob("mailhaven-index.sqlite*")} == sqlite_files


def test_migrate_refuses_a_config_still_on_sqlite(tmp_path: Path) -> None:
    data = app_config_data(tmp_path, None)
    path = write_config(tmp_path / "mailhaven.toml", data)
    from mailhaven.auth.users import UsersFile

    UsersFile(Path(data["users_file"])).save()
    r = _cli(path, "storage", "migrate", "--to", "postgresql")
    assert r.returncode == 1
    assert r.stderr.startswith("mailhaven: storage migrate --to postgresql: set [storage] backend")
    assert len(r.stderr.splitlines()) == 1


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "mailhaven", "-c", str(config), *args], capture_output=True,
                          text=True, timeout=120, env=env)


async def test_a_user_without_an_index_keeps_the_subscriptions_and_the_uidvalidity_floor(
        tmp_path: Path, pg_dsn: str) -> None:
    from mailhaven import pg
    from mailhaven.auth.users import UsersFile
    from mailhaven.store import Store
    from mailhaven.store.index_pg import PgIndexes

    data = app_config_data(tmp_path, None, storage={"backend": "postgresql", "dsn": pg_dsn})
    path = write_config(tmp_path / "mailhaven.toml", data)
    UsersFile(Path(data["users_file"])).save()
    cfg = load_test_config(path)
    root = cfg.mail_root / "example.test" / "carol"
    root.mkdir(parents=True)
    (root / "subscriptions").write_text("V\t2\n\nWork\tX\n")  # Dovecot 2.x's form
    (root / "mailhaven-uidvalidity").write_text("4000000000\n")
    r = await asyncio.to_thread(_cli, path, "storage", "migrate", "--to", "postgresql")
    assert r.returncode == 0, r.stderr
    assert ("index: carol@example.test: 0 mailboxes, 0 messages, 0 tombstones, 1 subscriptions, "
            "UIDVALIDITY floor 4000000000") in r.stdout
    for name in ("subscriptions", "mailhaven-uidvalidity"):
        (root / name).unlink()  # from now on the database alone knows them
    store = Store(cfg.mail_root, hostname="test.host", fsync=False,
                  indexes=PgIndexes(pg.Database(pg_dsn), owns_database=True))
    await store.start()
    try:
        acc = store.account("carol@example.test")
        assert await acc.subscriptions() == ["Work.X"]
        assert (await acc.mailbox("INBOX")).uidvalidity == 4000000001
    finally:
        await store.close()
