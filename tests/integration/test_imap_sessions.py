"""Many sessions, one mailbox: IDLE (RFC 2177) and the updates other sessions, POP3, delivery and
other programs' disk changes cause, sent only where RFC 3501 §7.4.1 allows them."""

from __future__ import annotations

import json
import os
import poplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD
from tests.integration.test_imap_server import ALICE, ImapHarness, RawClient, make_message

WORKER = Path(__file__).resolve().parent.parent / "store_worker.py"  # another process with its own Store


@pytest.fixture
def imap(make_config: Callable[..., Any]) -> Iterator[ImapHarness]:
    h = ImapHarness(make_config("imap", "pop3", {"imaps": {"tls": "implicit"}}), names=("imap",)).start()
    try:
        yield h
    finally:
        h.stop()


def selected(h: ImapHarness) -> RawClient:
    raw = h.raw()
    raw.login()
    assert raw.cmd(b"SELECT INBOX")[-1].startswith(b"t OK")
    return raw


def idle(raw: RawClient) -> None:
    raw.send(b"i IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"


def done(raw: RawClient) -> list[bytes]:
    raw.send(b"DONE\r\n")
    return raw.until_tagged(b"i")


def test_delivery_reaches_an_idling_client_within_one_second(imap: ImapHarness) -> None:
    imap.fill(1)
    raw = selected(imap)
    idle(raw)
    started = time.monotonic()
    imap.deliver(make_message(2))
    assert raw.line(timeout=1.0) == b"* 2 EXISTS\r\n"
    assert time.monotonic() - started < 1.0
    assert raw.line(timeout=1.0) == b"* 2 RECENT\r\n"  # this session was the first to see both
    assert done(raw)[-1].startswith(b"i OK")
    lines = raw.cmd(b"FETCH 2 (UID)")
    assert lines[0] == b"* 2 FETCH (UID 2)\r\n"
    raw.close()


def _idle_hears_another_process(h: ImapHarness, tmp_path: Path, transport: dict[str, str]) -> None:
    """A delivery by another process with a Store of its own (`transport`: its bus_dir or its
    pg_dsn, the same as `h`'s) reaches an IDLE session served by `h` within 1 s."""
    other = None
    try:
        h.fill(1)
        raw = selected(h)
        idle(raw)
        go = tmp_path / "go"
        job = {"user": ALICE, "op": "deliver", "stay": True, **transport}
        other = subprocess.Popen([sys.executable, str(WORKER), str(h.cfg.mail_root), str(go), json.dumps(job)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert other.stdout is not None and json.loads(other.stdout.readline()) == "ready"
        go.touch()
        delivered_at = json.loads(other.stdout.readline())["delivered_at"]
        assert raw.line(timeout=1.0) == b"* 2 EXISTS\r\n"
        assert time.time() - delivered_at < 1.0
        assert done(raw)[-1].startswith(b"i OK")
        assert raw.cmd(b"FETCH 2 (UID)")[0] == b"* 2 FETCH (UID 2)\r\n"
        raw.close()
    finally:
        if other is not None:
            assert other.stdin is not None
            other.stdin.close()
            assert other.wait(30) == 0
        h.stop()


def test_delivery_by_another_worker_process_reaches_an_idling_client_within_one_second(
        make_config: Callable[..., Any], tmp_path: Path) -> None:
    """Issue 15: worker processes share the mail root; the store's bus carries the change."""
    bus = tmp_path / "run" / "bus"
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}}), names=("imap",), bus_dir=bus).start()
    _idle_hears_another_process(h, tmp_path, {"bus_dir": str(bus)})


def test_delivery_through_another_node_reaches_an_idling_client_within_one_second(
        make_config: Callable[..., Any], tmp_path: Path, pg_dsn: str) -> None:
    """Issue 15: two nodes share the mail root and PostgreSQL; LISTEN/NOTIFY carries the change
    (store/bus_pg.py). Node A is another process with a Store and a pool of its own."""
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}}), names=("imap",), pg_dsn=pg_dsn).start()
    _idle_hears_another_process(h, tmp_path, {"pg_dsn": pg_dsn})


def test_idle_reports_expunge_and_flag_changes_of_another_session(imap: ImapHarness) -> None:
    imap.fill(3)
    a = selected(imap)
    b = selected(imap)
    idle(a)
    b.cmd(b"STORE 2 +FLAGS (\\Flagged)")
    assert a.line(timeout=2) == b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))\r\n"
    b.cmd(b"STORE 1 +FLAGS (\\Deleted)")
    assert a.line(timeout=2) == b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))\r\n"
    b.cmd(b"EXPUNGE")
    assert a.line(timeout=2) == b"* 1 EXPUNGE\r\n"
    assert done(a) == [b"i OK Idle completed.\r\n"]
    a.close()
    b.close()


def test_expunge_by_another_session_waits_until_fetch_is_done(imap: ImapHarness) -> None:
    imap.fill(3)
    a = selected(imap)
    b = selected(imap)
    b.cmd(b"STORE 2 +FLAGS (\\Deleted)")
    assert b.cmd(b"EXPUNGE")[0] == b"* 2 EXPUNGE\r\n"
    # RFC 3501 §7.4.1: no EXPUNGE during FETCH/STORE/SEARCH; number 3 still means UID 3.
    lines = a.cmd(b"FETCH 1:3 (UID)")
    assert not any(x.endswith(b" EXPUNGE\r\n") for x in lines), lines
    assert b"* 3 FETCH (UID 3)\r\n" in lines and lines[-1].startswith(b"t NO [EXPUNGEISSUED]")
    lines = a.cmd(b"SEARCH ALL")
    assert lines[0] == b"* SEARCH 1 3\r\n"
    lines = a.cmd(b"STORE 3 +FLAGS (\\Seen)")
    assert not any(x.endswith(b" EXPUNGE\r\n") for x in lines)
    lines = a.cmd(b"NOOP")
    assert lines[0] == b"* 2 EXPUNGE\r\n" and lines[-1].startswith(b"t OK")
    assert a.cmd(b"FETCH 2 (UID)")[0] == b"* 2 FETCH (UID 3)\r\n"
    a.close()
    b.close()


def test_uid_fetch_may_carry_pending_expunge(imap: ImapHarness) -> None:
    imap.fill(2)
    a = selected(imap)
    imap.expunge([1])
    lines = a.cmd(b"UID FETCH 1:* (FLAGS)")
    assert b"* 1 EXPUNGE\r\n" in lines
    a.close()


def test_two_imapclient_sessions_one_expunges_the_other_sees_it(imap: ImapHarness) -> None:
    from imapclient import IMAPClient

    imap.fill(4)
    one = IMAPClient("127.0.0.1", port=imap.ports["imap"], ssl=False)
    two = IMAPClient("127.0.0.1", port=imap.ports["imap"], ssl=False)
    for c in (one, two):
        c.login(ALICE, PASSWORD)
        c.select_folder("INBOX")
    two.idle()
    one.delete_messages([2, 3])
    one.expunge()
    responses = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and len([r for r in responses if r[1] == b"EXPUNGE"]) < 2:
        responses += two.idle_check(timeout=0.5)
    two.idle_done()
    assert [r for r in responses if r[1] == b"EXPUNGE"] == [(2, b"EXPUNGE"), (2, b"EXPUNGE")]
    assert sorted(two.search("ALL")) == [1, 4]
    assert sorted(two.fetch([1, 4], ["FLAGS"])) == [1, 4]
    one.logout()
    two.logout()


def test_pop3_deletion_is_seen_by_an_imap_session(imap: ImapHarness, make_config: Callable[..., Any]) -> None:
    import socket

    from mailhaven.pop3.server import create_server

    imap.fill(2)

    async def start_pop3() -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        imap.servers.append(await create_server(imap.ctx, "pop3", imap.cfg.listeners["pop3"], sock))
        return int(sock.getsockname()[1])

    port = imap.call(start_pop3())
    a = selected(imap)
    idle(a)
    p = poplib.POP3("127.0.0.1", port, timeout=10)
    p.user(ALICE)
    p.pass_(PASSWORD)
    p.dele(1)
    p.quit()
    assert a.line(timeout=2) == b"* 1 EXPUNGE\r\n"
    done(a)
    a.close()


def test_messages_written_by_other_programs_are_noticed_by_polling(
        imap: ImapHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailhaven.imap import session

    monkeypatch.setattr(session, "POLL_INTERVAL", 0.3)
    imap.fill(1)
    a = selected(imap)
    idle(a)
    new = imap.cfg.mail_root / "example.test" / "alice" / "new"
    tmp = new.parent / "tmp" / "1700000000.M1P1.otherhost"
    tmp.write_bytes(make_message(9))
    os.rename(tmp, new / tmp.name)
    assert a.line(timeout=3) == b"* 2 EXISTS\r\n"
    done(a)
    a.close()


def test_idle_keeps_sequence_numbers_consistent_across_mixed_changes(imap: ImapHarness) -> None:
    imap.fill(5)
    a = selected(imap)
    b = selected(imap)
    idle(a)
    b.cmd(b"STORE 1,3 +FLAGS (\\Deleted)")
    b.cmd(b"EXPUNGE")
    imap.deliver(make_message(6))
    lines: list[bytes] = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and b"EXISTS" not in b"".join(lines):
        try:
            lines.append(a.line(timeout=0.5))
        except TimeoutError:
            pass
    done(a)
    exp = [x for x in lines if b"EXPUNGE" in x]
    assert exp == [b"* 1 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    assert b"* 4 EXISTS\r\n" in lines
    assert a.cmd(b"FETCH 1:* (UID)")[:4] == [b"* %d FETCH (UID %d)\r\n" % (i + 1, u)
                                            for i, u in enumerate((2, 4, 5, 6))]
    a.close()
    b.close()


def test_idle_ends_with_bye_when_the_server_stops(make_config: Callable[..., Any]) -> None:
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}}), names=("imap",)).start()
    try:
        raw = selected(h)
        idle(raw)
        h.loop.call_soon_threadsafe(h.ctx.stopping.set)
        assert raw.line(timeout=3).startswith(b"* BYE")
        assert raw.closed()
    finally:
        h.stop()


def test_idle_without_done_but_garbage_is_bad(imap: ImapHarness) -> None:
    raw = selected(imap)
    idle(raw)
    raw.send(b"NOPE\r\n")
    assert raw.until_tagged(b"i")[-1].startswith(b"i BAD")
    assert raw.cmd(b"NOOP")[-1].startswith(b"t OK")
    raw.close()


def test_selected_mailbox_deleted_by_another_session_ends_with_bye(imap: ImapHarness) -> None:
    c = imap.client()
    c.create("Tmp")
    c.logout()
    raw = imap.raw()
    raw.login()
    raw.cmd(b"SELECT Tmp")
    other = imap.client()
    other.delete("Tmp")
    other.logout()
    raw.send(b"t NOOP\r\n")
    assert raw.line().startswith(b"* BYE")
    assert raw.closed()
