"""The POP3 server on 127.0.0.1 over a real Store, driven by poplib (and raw sockets where poplib
cannot say it): every RFC 1939 command, CAPA, STLS, AUTH PLAIN, implicit TLS, the maildrop lock,
durable UPDATE, the IMAP side of deletions, and the limits."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import poplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD

ALICE = "alice@example.test"
BOB = "bob@example.test"


def make_message(n: int, body_lines: int = 3, extra: bytes = b"") -> bytes:
    body = b"".join(b"line %d of message %d\r\n" % (i, n) for i in range(body_lines))
    return (b"From: sender@example.org\r\nTo: alice@example.test\r\nSubject: message %d\r\n"
            b"Message-ID: <m%d@example.org>\r\n\r\n" % (n, n)) + body + extra


class Pop3Harness:
    """Store + POP3 listeners in their own thread and event loop, so tests use blocking clients
    (poplib, fetchmail, getmail) as real users do. ctx is built here, not by app.py."""

    def __init__(self, cfg: Any, names: tuple[str, ...] = ("pop3", "pop3s")) -> None:
        self.cfg = cfg
        self.names = names
        self.ports: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pop3-harness", daemon=True)
        self.servers: list[asyncio.AbstractServer] = []

    def start(self) -> Pop3Harness:
        self.thread.start()
        self.call(self._setup())
        return self

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _setup(self) -> None:
        from mailhaven.auth.users import Directory, UsersFile
        from mailhaven.limits import Limits
        from mailhaven.pop3.server import create_server
        from mailhaven.store import Store
        from mailhaven.tls import server_context

        cfg = self.cfg
        self.store = Store(cfg.mail_root, hostname=cfg.hostname)
        await self.store.start()
        self.ctx = SimpleNamespace(
            config=cfg, store=self.store, directory=Directory(cfg, UsersFile.load(cfg.users_file)),
            limits=Limits(cfg), tls=server_context(cfg), stopping=asyncio.Event())
        for name in self.names:
            # The configured address (make_config: 127.0.0.1), on a port the kernel picks.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((cfg.listeners[name].address, 0))
            sock.listen(64)
            sock.setblocking(False)
            self.ports[name] = sock.getsockname()[1]
            self.servers.append(await create_server(self.ctx, name, cfg.listeners[name], sock))

    async def _teardown(self) -> None:
        self.ctx.stopping.set()
        for s in self.servers:
            s.close()
        for _ in range(50):  # sessions say goodbye and end
            from mailhaven.pop3 import server as pop3server

            if not pop3server._locks:
                break
            await asyncio.sleep(0.02)
        await self.store.close()

    def stop(self) -> None:
        try:
            self.call(self._teardown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    # -- store helpers (run on the server's loop) --

    def deliver(self, data: bytes, user: str = ALICE) -> None:
        self.call(self.store.deliver([(user, "INBOX")], data))

    async def _mailbox(self, user: str) -> Any:
        return await self.store.account(user).mailbox("INBOX")

    def messages(self, user: str = ALICE) -> list[Any]:
        async def go() -> list[Any]:
            snap = await (await self._mailbox(user)).snapshot()
            return list(snap.messages)
        return self.call(go())  # type: ignore[no-any-return]

    def uids(self, user: str = ALICE) -> list[int]:
        return [m.uid for m in self.messages(user)]

    def uidvalidity(self, user: str = ALICE) -> int:
        async def go() -> int:
            return int((await self._mailbox(user)).uidvalidity)
        return self.call(go())  # type: ignore[no-any-return]

    def expunge(self, uids: list[int], user: str = ALICE) -> None:
        async def go() -> None:
            await (await self._mailbox(user)).expunge(uids)
        self.call(go())

    def read(self, uid: int, user: str = ALICE) -> bytes:
        async def go() -> bytes:
            return bytes(await (await self._mailbox(user)).read(uid))
        return self.call(go())  # type: ignore[no-any-return]

    def files(self, user: str = ALICE) -> list[Path]:
        """Message files of the user's INBOX on disk (new/ and cur/ of the account folder)."""
        root = Path(self.store.account(user).path)
        return [p for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()]


def harness_factory(make_config: Callable[..., Any]) -> Iterator[Callable[..., Pop3Harness]]:
    """Body of the `pop3_factory` fixture (other test modules define theirs with `yield from`)."""
    started: list[Pop3Harness] = []

    def build(plain: dict[str, Any] | None = None, implicit: dict[str, Any] | None = None,
              **overrides: Any) -> Pop3Harness:
        """plain / implicit: overrides of the pop3 (STLS) and pop3s listeners (e.g. address=
        "0.0.0.0": clients still connect to 127.0.0.1); the rest goes to the config table (e.g.
        auth={...}, pop3={"max_bad_commands": 3})."""
        cfg = make_config({"pop3": {"tls": "starttls", **(plain or {})}},
                          {"pop3s": {"tls": "implicit", **(implicit or {})}}, **overrides)
        h = Pop3Harness(cfg).start()
        started.append(h)
        return h

    yield build
    for h in started:
        h.stop()


@pytest.fixture
def pop3_factory(make_config: Callable[..., Any]) -> Iterator[Callable[..., Pop3Harness]]:
    yield from harness_factory(make_config)


@pytest.fixture
def pop3(pop3_factory: Callable[..., Pop3Harness]) -> Pop3Harness:
    h = pop3_factory()
    for n in range(1, 4):
        h.deliver(make_message(n, extra=b".leading dot line\r\n" if n == 2 else b""))
    return h


def client(h: Pop3Harness, name: str = "pop3", ssl_context: ssl.SSLContext | None = None) -> poplib.POP3:
    if name == "pop3s":
        return poplib.POP3_SSL("127.0.0.1", h.ports[name], context=ssl_context, timeout=10)
    return poplib.POP3("127.0.0.1", h.ports[name], timeout=10)


def login(h: Pop3Harness, user: str = ALICE) -> poplib.POP3:
    c = client(h)
    c.user(user)
    c.pass_(PASSWORD)
    return c


def raw(h: Pop3Harness, name: str = "pop3") -> tuple[socket.socket, Any]:
    s = socket.create_connection(("127.0.0.1", h.ports[name]), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"+OK")
    return s, f


def read_multiline(f: Any) -> list[bytes]:
    lines = []
    while (line := f.readline()) != b".\r\n":
        assert line, "connection closed inside a multi-line response"
        lines.append(line)
    return lines


# --- every command through poplib ----------------------------------------------------------------


def test_user_pass_stat_list_retr_top_uidl_noop_quit(pop3: Pop3Harness) -> None:
    c = login(pop3)
    count, size = c.stat()
    msgs = pop3.messages()
    assert count == 3 and size == sum(m.size for m in msgs)
    resp, listing, _ = c.list()
    assert resp.startswith(b"+OK")
    sizes = {int(n): int(s) for n, s in (ln.split() for ln in listing)}
    assert sizes == {i + 1: m.size for i, m in enumerate(msgs)}
    for n, expected_size in sizes.items():
        resp, lines, octets = c.retr(n)
        assert resp == b"+OK %d octets" % expected_size
        assert octets == expected_size  # poplib counts unstuffed octets, CRLF included
        assert b"\r\n".join(lines) + b"\r\n" == pop3.read(msgs[n - 1].uid)
    _, top_lines, _ = c.top(1, 1)
    assert top_lines[-2:] == [b"", b"line 0 of message 1"]
    assert c.noop().startswith(b"+OK")
    resp, uidls, _ = c.uidl()
    v = pop3.uidvalidity()
    assert [ln.split()[1].decode() for ln in uidls] == [f"{m.uid:08x}{v:08x}" for m in msgs]
    assert c.uidl(2) == b"+OK 2 " + f"{msgs[1].uid:08x}{v:08x}".encode()
    assert c.quit().startswith(b"+OK")


def test_retr_in_any_order_with_read_ahead_returns_the_right_messages(pop3: Pop3Harness) -> None:
    uids = pop3.uids()
    c = login(pop3)
    for n in (1, 2, 1, 3, 3, 2):  # read-ahead guesses n+1; every other order must still be right
        assert b"\r\n".join(c.retr(n)[1]) + b"\r\n" == pop3.read(uids[n - 1])
    c.dele(2)
    assert b"\r\n".join(c.retr(1)[1]) + b"\r\n" == pop3.read(uids[0])  # read-ahead skips 2
    assert b"\r\n".join(c.retr(3)[1]) + b"\r\n" == pop3.read(uids[2])
    c.quit()


def test_retr_of_a_whole_maildrop_in_batches_is_exact_and_skips_deleted(pop3: Pop3Harness) -> None:
    for n in range(4, 151):  # more than one read-ahead window
        pop3.deliver(make_message(n, body_lines=n % 7, extra=b".dot\r\n..two dots\r\n" if n % 3 else b""))
    uids = pop3.uids()
    c = login(pop3)
    _, listing, _ = c.list()
    sizes = [int(ln.split()[1]) for ln in listing]
    c.dele(60)
    c.dele(61)
    for n in range(1, 151):
        if n in (60, 61):
            with pytest.raises(poplib.error_proto, match="deleted"):
                c.retr(n)
            continue
        resp, lines, octets = c.retr(n)
        assert resp == b"+OK %d octets" % sizes[n - 1] and octets == sizes[n - 1]  # LIST == RETR
        assert b"\r\n".join(lines) + b"\r\n" == pop3.read(uids[n - 1])
    assert c.quit() == b"+OK Logging out, 148 messages left."
    assert len(pop3.uids()) == 148


def test_retr_unstuffs_a_leading_dot_line_exactly(pop3: Pop3Harness) -> None:
    c = login(pop3)
    _, lines, _ = c.retr(2)
    assert lines[-1] == b".leading dot line"
    c.quit()


def test_capa_over_plain_and_tls(pop3: Pop3Harness, client_ssl_context: ssl.SSLContext) -> None:
    c = client(pop3)
    caps = c.capa()
    for cap in ("TOP", "UIDL", "USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                "IMPLEMENTATION", "STLS"):
        assert cap in caps
    assert caps["SASL"] == ["PLAIN"]
    c.stls(client_ssl_context)
    assert "STLS" not in c.capa()
    c.user(ALICE)
    c.pass_(PASSWORD)
    assert c.stat()[0] == 3
    c.quit()


def test_implicit_tls_listener(pop3: Pop3Harness, client_ssl_context: ssl.SSLContext) -> None:
    c = client(pop3, "pop3s", client_ssl_context)
    caps = c.capa()
    assert "STLS" not in caps and "USER" in caps
    c.user(ALICE)
    c.pass_(PASSWORD)
    assert c.stat()[0] == 3
    c.quit()


def test_plaintext_login_refused_without_tls_when_loopback_exception_is_off(
        pop3_factory: Callable[..., Pop3Harness], client_ssl_context: ssl.SSLContext) -> None:
    h = pop3_factory(auth={"allow_plaintext_loopback": False})
    h.deliver(make_message(1))
    c = client(h)
    assert "USER" not in c.capa()
    with pytest.raises(poplib.error_proto) as e:
        c.user(ALICE)
    assert e.value.args[0] == (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure "
                               b"(SSL/TLS) connections.")
    s, f = raw(h)
    s.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0secret") + b"\r\n")
    assert f.readline().startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
    s.close()
    c.stls(client_ssl_context)  # after STLS the same connection may log in
    c.user(ALICE)
    c.pass_(PASSWORD)
    assert c.stat()[0] == 1
    c.quit()


def test_plaintext_exception_applies_only_to_loopback_listeners() -> None:
    from mailhaven.lineproto import is_loopback as _is_loopback

    with socket.socket(socket.AF_INET) as unbound:  # getsockname() is 0.0.0.0: not loopback
        assert not _is_loopback(unbound)
    with socket.socket(socket.AF_INET) as s:
        s.bind(("127.0.0.1", 0))
        assert _is_loopback(s)
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6) as s6:
            try:
                s6.bind(("::1", 0))
            except OSError:
                return
            assert _is_loopback(s6)


def test_plaintext_exception_is_per_listener_not_per_client_address(
        pop3_factory: Callable[..., Pop3Harness], client_ssl_context: ssl.SSLContext) -> None:
    """A listener on 0.0.0.0 is not a loopback listener, even for a client that reaches it through
    127.0.0.1: with allow_plaintext_loopback on, USER/PASS/AUTH are still refused before STLS."""
    h = pop3_factory(plain={"address": "0.0.0.0"}, auth={"allow_plaintext_loopback": True})
    h.deliver(make_message(1))
    assert h.servers[0].sockets[0].getsockname()[0] == "0.0.0.0"
    c = client(h)  # connects to 127.0.0.1
    assert c.sock.getpeername()[0] == "127.0.0.1"
    caps = c.capa()
    assert "USER" not in caps and "SASL" not in caps and "STLS" in caps
    for line in ("USER " + ALICE, "PASS " + PASSWORD,
                 "AUTH PLAIN " + base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()):
        with pytest.raises(poplib.error_proto) as e:
            c._shortcmd(line)
        assert e.value.args[0].startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
    c.stls(client_ssl_context)
    c.user(ALICE)
    c.pass_(PASSWORD)
    assert c.stat()[0] == 1
    c.quit()


def test_auth_plain_with_initial_response_and_with_continuation(pop3: Pop3Harness) -> None:
    token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
    s, f = raw(pop3)
    s.sendall(b"AUTH PLAIN " + token + b"\r\n")
    assert f.readline() == b"+OK Logged in.\r\n"
    s.sendall(b"QUIT\r\n")
    assert f.readline().startswith(b"+OK")
    s.close()
    s, f = raw(pop3)
    s.sendall(b"AUTH PLAIN\r\n")
    assert f.readline() == b"+ \r\n"
    s.sendall(token + b"\r\n")
    assert f.readline() == b"+OK Logged in.\r\n"
    s.sendall(b"STAT\r\n")
    assert f.readline().startswith(b"+OK 3 ")
    s.close()


def test_wrong_password_gets_auth_response_code(pop3: Pop3Harness) -> None:
    c = client(pop3)
    c.user(ALICE)
    with pytest.raises(poplib.error_proto) as e:
        c.pass_("wrong")
    assert e.value.args[0] == b"-ERR [AUTH] Authentication failed."
    c.user(ALICE)
    c.pass_(PASSWORD)
    c.quit()


def _failed_login_records(caplog: pytest.LogCaptureFixture, n: int) -> list[logging.LogRecord]:
    """The first n "login failed" records (the server logs them in its own thread)."""
    deadline = time.monotonic() + 5
    while True:
        records = [r for r in caplog.records if r.getMessage() == "login failed"]
        if len(records) >= n or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def test_failed_logins_are_logged_with_a_reason_and_never_the_password(
        pop3_factory: Callable[..., Pop3Harness], client_ssl_context: ssl.SSLContext,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven.auth")
    h = pop3_factory(auth={"allow_plaintext_loopback": False, "max_failures_per_ip": 2})
    s, f = raw(h)
    s.sendall(b"USER " + ALICE.encode() + b"\r\n")  # before STLS, where that is not allowed
    assert f.readline().startswith(b"-ERR [AUTH] Plaintext")
    s.close()
    tls = client(h, "pop3s", client_ssl_context)
    tls.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        tls.pass_("Wrong-Secret-1")
    tls.user("nobody@example.test")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        tls.pass_("Wrong-Secret-2")
    tls.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        tls.pass_("Wrong-Secret-3")  # over max_failures_per_ip: delayed, never refused unchecked
    tls.quit()
    records = _failed_login_records(caplog, 4)
    fields = [r.mh_fields for r in records]  # type: ignore[attr-defined]
    assert [(x["reason"], x["user"], x["mechanism"]) for x in fields] == [
        ("plaintext_refused", ALICE, "USER"), ("bad_password", ALICE, "USER"),
        ("unknown_user", "nobody@example.test", "USER"), ("bad_password", ALICE, "USER")]
    text = caplog.text + " ".join(repr(r.__dict__) for r in caplog.records)
    assert "Wrong-Secret" not in text


# --- maildrop: lock, DELE/RSET/QUIT, durability ------------------------------------------------


def test_second_session_for_same_mailbox_is_in_use_until_first_ends(pop3: Pop3Harness) -> None:
    first = login(pop3)
    second = client(pop3)
    second.user(ALICE)
    with pytest.raises(poplib.error_proto) as e:
        second.pass_(PASSWORD)
    assert e.value.args[0].startswith(b"-ERR [IN-USE]")
    bob = login(pop3, BOB)  # other users are not affected
    assert bob.stat() == (0, 0)
    first.quit()
    second.user(ALICE)
    second.pass_(PASSWORD)
    assert second.stat()[0] == 3
    second.quit()
    bob.quit()


def test_lock_is_shared_by_both_listeners(pop3: Pop3Harness, client_ssl_context: ssl.SSLContext) -> None:
    first = login(pop3)
    tls = client(pop3, "pop3s", client_ssl_context)
    tls.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        tls.pass_(PASSWORD)
    first.quit()
    tls.quit()


def test_dele_then_quit_removes_files_before_the_final_ok(pop3: Pop3Harness) -> None:
    uids = pop3.uids()
    files_before = pop3.files()
    assert len(files_before) == 3
    c = login(pop3)
    c.dele(1)
    c.dele(3)
    assert pop3.uids() == uids  # marks only: nothing removed before QUIT
    assert len(pop3.files()) == 3
    assert c.quit().startswith(b"+OK")
    # The +OK came after the expunge: the files are already gone, no waiting needed.
    assert len(pop3.files()) == 1
    assert pop3.uids() == [uids[1]]


def test_expunge_is_fsynced_before_the_final_ok(pop3: Pop3Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 1939 §6 + STYLE rule 11: the directory entries of the deleted files are gone on disk
    (the folder directory fsynced after the unlinks) before the client gets +OK to QUIT."""
    from mailhaven.store import maildir

    by_subject = {p.read_bytes().split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]: p for p in pop3.files()}
    doomed = {by_subject[b"message 1"], by_subject[b"message 3"]}
    synced: list[tuple[Path, float, set[str]]] = []  # (directory, when the fsync ended, its entries then)
    real_fsync_dir = maildir.fsync_dir

    def slow_recorded_fsync_dir(path: Path) -> None:
        time.sleep(0.3)  # a slow disk: +OK sent before (or without) this fsync would arrive first
        real_fsync_dir(path)
        synced.append((Path(path), time.monotonic(), set(os.listdir(path))))

    monkeypatch.setattr(maildir, "fsync_dir", slow_recorded_fsync_dir)
    s, f = raw(pop3)
    s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nDELE 1\r\nDELE 3\r\n".encode())
    assert [f.readline() for _ in range(4)] == [b"+OK\r\n", b"+OK Logged in.\r\n",
                                                b"+OK Marked to be deleted.\r\n", b"+OK Marked to be deleted.\r\n"]
    folders = {p.parent for p in doomed}
    assert not [x for x in synced if x[0] in folders] and all(p.exists() for p in doomed)  # DELE only marks
    s.sendall(b"QUIT\r\n")
    assert f.readline() == b"+OK Logging out, 1 messages left.\r\n"
    ok_at = time.monotonic()
    s.close()
    for folder in folders:
        names = {p.name for p in doomed if p.parent == folder}
        done = [at for path, at, entries in synced if path == folder and not names & entries]
        assert done and min(done) < ok_at, (folder, synced, ok_at)


def test_new_mail_during_the_session_survives_dele_and_quit(pop3: Pop3Harness) -> None:
    """RFC 1939 §8: the maildrop is the INBOX at login. A message delivered during the session is
    neither listed nor touched by the UPDATE (deleted, or given \\Seen), whether or not it got
    its UID (an IMAP snapshot) before the QUIT."""
    for n, uid_before_quit in ((10, False), (11, True)):
        before = pop3.messages()
        c = login(pop3)
        pop3.deliver(make_message(n))
        if uid_before_quit:
            assert len(pop3.uids()) == len(before) + 1
        assert c.stat()[0] == len(before)
        c.retr(len(before))  # the last one of the maildrop: gets \Seen at QUIT
        c.dele(1)
        assert c.quit() == b"+OK Logging out, %d messages left." % (len(before) - 1)
        after = pop3.messages()
        assert [m.uid for m in after[:-1]] == [m.uid for m in before[1:]]  # only message 1 went
        new = after[-1]
        assert new.uid > before[-1].uid and b"Subject: message %d\r\n" % n in pop3.read(new.uid)
        assert "\\Seen" in after[-2].flags and "\\Seen" not in new.flags


def test_dropped_connection_deletes_nothing(pop3: Pop3Harness) -> None:
    c = login(pop3)
    c.dele(1)
    c.dele(2)
    c.sock.close()
    c.file.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the lock is released once the server saw the close
        again = client(pop3)
        again.user(ALICE)
        try:
            again.pass_(PASSWORD)
            break
        except poplib.error_proto:
            again.quit()
            time.sleep(0.05)
    assert again.stat()[0] == 3
    again.quit()
    assert len(pop3.uids()) == 3 and len(pop3.files()) == 3


def test_rset_unmarks_deletions(pop3: Pop3Harness) -> None:
    c = login(pop3)
    c.dele(2)
    assert c.stat()[0] == 2
    with pytest.raises(poplib.error_proto, match=r"deleted"):
        c.retr(2)
    c.rset()
    assert c.stat()[0] == 3
    c.quit()
    assert len(pop3.uids()) == 3


def test_retrieved_messages_get_seen_flag(pop3: Pop3Harness) -> None:
    c = login(pop3)
    c.retr(1)
    c.quit()
    flags = {m.uid: m.flags for m in pop3.messages()}
    first = pop3.uids()[0]
    assert "\\Seen" in flags[first]
    assert all("\\Seen" not in f for uid, f in flags.items() if uid != first)


def test_uidl_is_stable_across_sessions_and_after_deletions(pop3: Pop3Harness) -> None:
    c = login(pop3)
    first = [ln.split()[1] for ln in c.uidl()[1]]
    c.dele(1)
    c.quit()
    c = login(pop3)
    second = [ln.split()[1] for ln in c.uidl()[1]]
    c.quit()
    assert second == first[1:]


# --- with IMAP (the store) ---------------------------------------------------------------------


def test_pop3_deletions_are_expunged_for_imap_with_change_events(pop3: Pop3Harness) -> None:
    uids = pop3.uids()

    async def subscribe() -> Any:
        return pop3.store.changes.subscribe(ALICE)

    sub = pop3.call(subscribe())
    c = login(pop3)
    c.dele(2)
    c.quit()
    assert pop3.uids() == [uids[0], uids[2]]

    async def next_change() -> Any:
        return await asyncio.wait_for(sub.get(), 5)

    seen: list[Any] = []
    for _ in range(5):
        ev = pop3.call(next_change())
        seen.append(ev)
        if "xpunge" in type(ev).__name__:
            break
    assert any("xpunge" in type(ev).__name__ and uids[1] in tuple(getattr(ev, "uids", ())) for ev in seen), seen


def test_new_mail_during_session_shows_in_next_session_only(pop3: Pop3Harness) -> None:
    c = login(pop3)
    assert c.stat()[0] == 3
    pop3.deliver(make_message(4))
    assert c.stat()[0] == 3
    assert len(c.list()[1]) == 3
    with pytest.raises(poplib.error_proto):
        c.retr(4)
    c.quit()
    c = login(pop3)
    assert c.stat()[0] == 4
    c.quit()


def test_message_expunged_by_another_client_gives_err_and_session_continues(pop3: Pop3Harness) -> None:
    uids = pop3.uids()
    c = login(pop3)
    pop3.expunge([uids[1]])
    with pytest.raises(poplib.error_proto, match=r"removed by another client"):
        c.retr(2)
    with pytest.raises(poplib.error_proto):
        c.top(2, 0)
    assert c.retr(3)[0].startswith(b"+OK")
    c.dele(2)  # deleting what is already gone is harmless
    c.dele(1)
    assert c.quit().startswith(b"+OK")
    assert pop3.uids() == [uids[2]]


# --- bounded input and limits --------------------------------------------------------------------


@pytest.mark.parametrize("cmd", [b"RETR 99999999999999999999", b"LIST -1", b"DELE 0", b"TOP 1 -5",
                                 b"RETR 4", b"UIDL 0", b"XTND XMIT", b"LIST 1 2"])
def test_bad_arguments_and_unknown_commands_get_err(pop3: Pop3Harness, cmd: bytes) -> None:
    c = login(pop3)
    with pytest.raises(poplib.error_proto):
        c._shortcmd(cmd.decode())
    assert c.stat()[0] == 3  # the session goes on
    c.quit()


def test_over_long_line_gets_err_and_session_goes_on(pop3: Pop3Harness) -> None:
    s, f = raw(pop3)
    s.sendall(b"USER " + b"x" * 100_000 + b"\r\n")
    assert f.readline() == b"-ERR Line too long.\r\n"
    s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nSTAT\r\n".encode())
    assert f.readline() == b"+OK\r\n"
    assert f.readline() == b"+OK Logged in.\r\n"
    assert f.readline().startswith(b"+OK 3 ")
    s.close()


def test_too_many_bad_commands_disconnects(pop3_factory: Callable[..., Pop3Harness]) -> None:
    h = pop3_factory(pop3={"max_bad_commands": 3})
    s, f = raw(h)
    s.sendall(b"BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n")
    assert f.readline().startswith(b"-ERR")
    assert f.readline().startswith(b"-ERR")
    assert f.readline() == b"-ERR Too many bad commands.\r\n"
    assert f.readline() == b""  # closed
    s.close()


def test_wrong_passwords_never_refuse_the_right_one(pop3_factory: Callable[..., Pop3Harness]) -> None:
    """Issue 10 item 1: the old code answered -ERR [SYS/TEMP] to the right password here."""
    h = pop3_factory(auth={"max_failures_per_ip": 2, "failure_delay": 0})
    c = client(h)
    for i in range(5):
        c.user(ALICE)
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            c.pass_(f"wrong{i}")
    c.user(ALICE)
    assert c.pass_(PASSWORD).startswith(b"+OK")
    c.quit()


def test_failed_logins_are_delayed(pop3_factory: Callable[..., Pop3Harness]) -> None:
    h = pop3_factory(auth={"failure_delay": 0.3})
    c = client(h)
    c.user(ALICE)
    with pytest.raises(poplib.error_proto):
        c.pass_("wrong")
    c.user(ALICE)
    t0 = time.monotonic()
    with pytest.raises(poplib.error_proto):
        c.pass_("wrong")
    assert time.monotonic() - t0 >= 0.25
    c.quit()


def test_per_ip_connection_limit(pop3_factory: Callable[..., Pop3Harness]) -> None:
    h = pop3_factory(plain={"per_ip_connections": 2, "max_connections": 10})
    a, b = client(h), client(h)
    s = socket.create_connection(("127.0.0.1", h.ports["pop3"]), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"-ERR [SYS/TEMP]")
    assert f.readline() == b""
    s.close()
    a.quit()
    deadline = time.monotonic() + 5
    while True:  # a slot frees once the server processed the QUIT
        c = socket.create_connection(("127.0.0.1", h.ports["pop3"]), timeout=10)
        line = c.makefile("rb").readline()
        c.close()
        if line.startswith(b"+OK") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert line.startswith(b"+OK")
    b.quit()


def test_idle_timeout_disconnects_without_update(pop3_factory: Callable[..., Pop3Harness]) -> None:
    h = pop3_factory(plain={"idle_timeout": 1})
    h.deliver(make_message(1))
    s, f = raw(h)
    s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nDELE 1\r\n".encode())
    assert [f.readline() for _ in range(3)] == [b"+OK\r\n", b"+OK Logged in.\r\n",
                                                b"+OK Marked to be deleted.\r\n"]
    t0 = time.monotonic()
    assert f.readline() == b"-ERR Disconnected for inactivity.\r\n"
    assert 0.8 <= time.monotonic() - t0 < 5
    assert f.readline() == b""
    s.close()
    assert len(h.uids()) == 1


def test_idle_timeout_counts_from_the_last_command_not_from_login(
        pop3_factory: Callable[..., Pop3Harness]) -> None:
    h = pop3_factory(plain={"idle_timeout": 1})
    s, f = raw(h)
    for _ in range(6):  # 2.4 s of activity, longer than the timeout, in steps shorter than it
        s.sendall(b"CAPA\r\n")
        assert f.readline().startswith(b"+OK")
        read_multiline(f)
        time.sleep(0.4)
    t0 = time.monotonic()
    assert f.readline() == b"-ERR Disconnected for inactivity.\r\n"
    assert 0.5 <= time.monotonic() - t0 < 5
    s.close()


def test_pipelined_commands_are_answered_in_order(pop3: Pop3Harness) -> None:
    s, f = raw(pop3)
    s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 1\r\nLIST 2\r\nDELE 3\r\nNOOP\r\nQUIT\r\n".encode())
    assert f.readline() == b"+OK\r\n"
    assert f.readline() == b"+OK Logged in.\r\n"
    assert f.readline().startswith(b"+OK 3 ")
    assert f.readline().startswith(b"+OK ")
    read_multiline(f)
    assert f.readline().startswith(b"+OK 2 ")
    assert f.readline() == b"+OK Marked to be deleted.\r\n"
    assert f.readline() == b"+OK\r\n"
    assert f.readline().startswith(b"+OK Logging out")
    assert f.readline() == b""
    s.close()
    assert len(pop3.uids()) == 2


def test_half_closed_client_still_gets_its_replies(pop3: Pop3Harness) -> None:
    s, f = raw(pop3)
    s.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\nDELE 1\r\nQUIT\r\n".encode())
    s.shutdown(socket.SHUT_WR)
    assert [f.readline()[:3] for _ in range(4)] == [b"+OK"] * 4
    s.close()
    assert len(pop3.uids()) == 2


def test_session_end_is_logged_with_counts(pop3: Pop3Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailhaven.pop3")
    c = login(pop3)
    c.retr(1)
    c.retr(2)
    c.dele(1)
    c.quit()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("session end" in r.message for r in caplog.records):
        time.sleep(0.02)
    record = next(r for r in caplog.records if "session end" in r.message)
    fields = record.mh_fields  # type: ignore[attr-defined]
    assert fields["user"] == ALICE and fields["ip"] == "127.0.0.1"
    assert fields["retrieved"] == 2 and fields["deleted"] == 1 and fields["reason"] == "logout"
    assert getattr(record, "mh_proto", "pop3") == "pop3"


# --- through app.py -------------------------------------------------------------------------------


async def test_app_serves_pop3s_and_a_stop_says_goodbye_without_update(
        app_config: Any, client_ssl_context: ssl.SSLContext) -> None:
    from tests.fixtures_server import add_user, running_app

    add_user(app_config, ALICE, PASSWORD)
    async with running_app(app_config) as ctx:
        await ctx.store.deliver([(ALICE, "INBOX")], make_message(1))
        await ctx.store.deliver([(ALICE, "INBOX")], make_message(2))
        port = ctx.port("pop3s")

        def fetch() -> tuple[int, bytes]:
            c = poplib.POP3_SSL("127.0.0.1", port, context=client_ssl_context, timeout=10)
            c.user(ALICE)
            c.pass_(PASSWORD)
            n = c.stat()[0]
            _, lines, _ = c.retr(1)
            c.quit()
            return n, b"\r\n".join(lines)

        n, first = await asyncio.to_thread(fetch)
        assert n == 2 and b"Subject: message 1" in first

        def open_session() -> Any:
            c = poplib.POP3_SSL("127.0.0.1", port, context=client_ssl_context, timeout=10)
            c.user(ALICE)
            c.pass_(PASSWORD)
            c.dele(1)
            return c

        c = await asyncio.to_thread(open_session)
        t0 = time.monotonic()
        ctx.request_stop()
        line = await asyncio.to_thread(c.file.readline)
        assert line == b"-ERR [SYS/TEMP] Server shutting down.\r\n"
        assert time.monotonic() - t0 < app_config.shutdown_deadline
        c.close()
    from mailhaven.store import Store

    store = Store(app_config.mail_root, hostname="x")
    await store.start()
    try:
        mailbox = await store.account(ALICE).mailbox("INBOX")
        assert len((await mailbox.snapshot()).messages) == 2  # the DELE was never committed
    finally:
        await store.close()
