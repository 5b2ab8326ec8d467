"""The IMAP server on 127.0.0.1 over a real Store, driven by imaplib (and raw sockets where imaplib
cannot say it): login, capabilities, SELECT/EXAMINE, FETCH, STORE, SEARCH, APPEND, EXPUNGE, CLOSE,
COPY/MOVE, UID forms, mailbox management, and the shell's limits.

`ImapHarness` (also used by the other test_imap_* modules) runs the Store and the imap/imaps listeners
in their own thread and event loop, so blocking clients work as real users' do. The tests marked
`over_both_indexes` run twice: with the SQLite index and with the index in PostgreSQL
(store/index_pg.py), a representative smoke of the protocol over the second backend.
"""

from __future__ import annotations

import asyncio
import email.utils
import imaplib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD, FsyncGate

ALICE = "alice@example.test"
BOB = "bob@example.test"


def make_message(n: int, *, subject: str | None = None, sender: str = "sender@example.org",
                 body: bytes | None = None, date: int = 1700000000) -> bytes:
    subject = f"message {n}" if subject is None else subject
    text = body if body is not None else b"".join(b"line %d of message %d\r\n" % (i, n) for i in range(3))
    return (f"From: Sender <{sender}>\r\nTo: Alice <alice@example.test>\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate(date + n * 60)}\r\nMessage-ID: <m{n}@example.org>\r\n\r\n"
            ).encode() + text


class ImapHarness:
    """Store + IMAP listeners in a thread with their own event loop. ctx is built here, not by app.py."""

    def __init__(self, cfg: Any, names: tuple[str, ...] = ("imap", "imaps"), *, fsync: bool = False,
                 bus_dir: Path | None = None, pg_dsn: str | None = None, pg_index: bool = False) -> None:
        self.cfg = cfg
        self.names = names
        self.fsync = fsync  # the Store's durability (off by default: the tests run faster without it)
        self.bus_dir = bus_dir  # the Store's change bus (other processes over the same mail root)
        self.pg_dsn = pg_dsn  # or LISTEN/NOTIFY there (store/bus_pg.py: other nodes), with a pool of its own
        self.pg_index = pg_index  # and the index there too (store/index_pg.py)
        self.database: Any = None
        self.ports: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="imap-harness", daemon=True)
        self.servers: list[asyncio.AbstractServer] = []

    def start(self) -> ImapHarness:
        self.thread.start()
        self.call(self._setup())
        return self

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _setup(self) -> None:
        from mailhaven.auth.users import Directory, UsersFile
        from mailhaven.imap.server import create_server
        from mailhaven.limits import Limits
        from mailhaven.store import Store
        from mailhaven.tls import server_context

        cfg = self.cfg
        extra: dict[str, Any] = {"bus_dir": self.bus_dir} if self.bus_dir else {}
        if self.pg_dsn:
            from mailhaven.pg import Database
            from mailhaven.store.bus_pg import PgBus

            self.database = Database(self.pg_dsn, pool_size=2)
            await self.database.open()
            extra["peers"] = PgBus(self.database)
            if self.pg_index:
                from mailhaven.store.index_pg import PgIndexes

                extra["indexes"] = PgIndexes(self.database)
        self.store = Store(cfg.mail_root, hostname=cfg.hostname, fsync=self.fsync, **extra)
        await self.store.start()
        self.ctx = SimpleNamespace(
            config=cfg, store=self.store, directory=Directory(cfg, UsersFile.load(cfg.users_file)),
            limits=Limits(cfg), tls=server_context(cfg), stopping=asyncio.Event())
        for name in self.names:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.setblocking(False)
            self.ports[name] = sock.getsockname()[1]
            self.servers.append(await create_server(self.ctx, name, cfg.listeners[name], sock))

    async def _teardown(self) -> None:
        self.ctx.stopping.set()
        for s in self.servers:
            s.close()
        for _ in range(100):
            if not self.store.changes.subscriber_count():
                break
            await asyncio.sleep(0.02)
        await self.store.close()
        if self.database is not None:
            await self.database.close()

    def stop(self) -> None:
        try:
            self.call(self._teardown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    # -- store helpers (run on the server's loop) --

    def deliver(self, data: bytes, user: str = ALICE, folder: str = "INBOX") -> None:
        self.call(self.store.deliver([(user, folder)], data))

    def fill(self, n: int, user: str = ALICE, folder: str = "INBOX", **kw: Any) -> list[int]:
        async def go() -> list[int]:
            mb = await self.store.account(user).mailbox(folder)
            return [await mb.append(make_message(i + 1, **kw)) for i in range(n)]
        return self.call(go())  # type: ignore[no-any-return]

    def messages(self, user: str = ALICE, folder: str = "INBOX") -> list[Any]:
        async def go() -> list[Any]:
            mb = await self.store.account(user).mailbox(folder)
            return list((await mb.snapshot()).messages)
        return self.call(go())  # type: ignore[no-any-return]

    def store_flags(self, uids: list[int], flags: set[str], mode: str = "add", user: str = ALICE,
                    folder: str = "INBOX") -> None:
        async def go() -> None:
            mb = await self.store.account(user).mailbox(folder)
            await mb.store_flags(uids, flags, mode)  # type: ignore[arg-type]
        self.call(go())

    def expunge(self, uids: list[int], user: str = ALICE, folder: str = "INBOX") -> None:
        async def go() -> None:
            mb = await self.store.account(user).mailbox(folder)
            await mb.expunge(uids)
        self.call(go())

    # -- clients --

    def client(self, name: str = "imap", login: str | None = ALICE) -> imaplib.IMAP4:
        if name == "imaps":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            c: imaplib.IMAP4 = imaplib.IMAP4_SSL("127.0.0.1", self.ports[name], ssl_context=ctx, timeout=30)
        else:
            c = imaplib.IMAP4("127.0.0.1", self.ports[name], timeout=30)
        if login:
            c.login(login, PASSWORD)
        return c

    def raw(self, name: str = "imap") -> RawClient:
        return RawClient(self.ports[name])


class RawClient:
    """A line-level client for what imaplib cannot send (bad syntax, pipelining, IDLE)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self, timeout: float = 10) -> bytes:
        self.sock.settimeout(timeout)
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def until_tagged(self, tag: bytes, timeout: float = 10) -> list[bytes]:
        out = []
        while True:
            line = self.line(timeout)
            out.append(line)
            if line.startswith(tag + b" "):
                return out

    def cmd(self, text: bytes, tag: bytes = b"t") -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until_tagged(tag)

    def login(self, user: str = ALICE) -> None:
        assert self.cmd(f'LOGIN {user} "{PASSWORD}"'.encode(), b"L")[-1].startswith(b"L OK")

    def closed(self, timeout: float = 5) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def imap_cfg(make_config: Callable[..., Any]) -> Any:
    return make_config("imap", {"imaps": {"tls": "implicit"}})


@pytest.fixture
def imap(imap_cfg: Any, request: pytest.FixtureRequest) -> Iterator[ImapHarness]:
    backend = getattr(request, "param", "sqlite")  # over_both_indexes: "postgresql" too
    dsn = request.getfixturevalue("pg_dsn") if backend == "postgresql" else None
    h = ImapHarness(imap_cfg, pg_dsn=dsn, pg_index=dsn is not None).start()
    try:
        yield h
    finally:
        h.stop()


over_both_indexes = pytest.mark.parametrize("imap", ["sqlite", "postgresql"], indirect=True)


def ok(resp: tuple[str, Any]) -> Any:
    typ, data = resp
    assert typ == "OK", resp
    return data


# --------------------------------------------------------------------------- greeting, login


def test_greeting_carries_capabilities_and_logindisabled_is_absent_on_loopback(imap: ImapHarness) -> None:
    raw = imap.raw()
    assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
    caps = raw.greeting.split(b"]")[0].split()[2:]
    for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"LITERAL+", b"SPECIAL-USE", b"NAMESPACE", b"ID", b"ENABLE",
                b"UNSELECT", b"CHILDREN", b"SASL-IR", b"STARTTLS", b"AUTH=PLAIN"):
        assert cap in caps
    assert b"LOGINDISABLED" not in caps  # loopback with allow_plaintext_loopback
    raw.close()


def test_login_disabled_before_tls_without_loopback_exception(make_config: Callable[..., Any]) -> None:
    cfg = make_config("imap", {"imaps": {"tls": "implicit"}}, auth={"allow_plaintext_loopback": False})
    h = ImapHarness(cfg).start()
    try:
        raw = h.raw()
        assert b"LOGINDISABLED" in raw.greeting and b"AUTH=PLAIN" not in raw.greeting
        resp = raw.cmd(f"LOGIN {ALICE} {PASSWORD}".encode())
        assert resp[-1].startswith(b"t NO [PRIVACYREQUIRED]")
        resp = raw.cmd(b"AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=")
        assert resp[-1].startswith(b"t NO [PRIVACYREQUIRED]")
        raw.close()
        c = h.client("imap", login=None)
        c.starttls(ssl_context=_insecure_ctx())
        assert "LOGINDISABLED" not in c.capabilities and "AUTH=PLAIN" in c.capabilities
        ok(c.login(ALICE, PASSWORD))
        c.logout()
        c = h.client("imaps")  # implicit TLS: login allowed at once
        ok(c.noop())
        c.logout()
    finally:
        h.stop()


def _insecure_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_login_wrong_password_is_no_authenticationfailed(imap: ImapHarness) -> None:
    c = imap.client(login=None)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login(ALICE, "wrong")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login("nobody@example.test", PASSWORD)
    ok(c.login(ALICE, PASSWORD))
    c.logout()


def test_capability_after_login_lists_no_auth_or_starttls(imap: ImapHarness) -> None:
    c = imap.client()
    caps = ok(c.capability())[0].split()
    assert b"STARTTLS" not in caps and not any(x.startswith(b"AUTH=") for x in caps)
    assert b"IDLE" in caps and b"MOVE" in caps
    c.logout()


def test_login_response_carries_capability(imap: ImapHarness) -> None:
    raw = imap.raw()
    resp = raw.cmd(f"LOGIN {ALICE} {PASSWORD}".encode())
    assert resp[-1].startswith(b"t OK [CAPABILITY IMAP4rev1 ")
    raw.close()


def test_authenticate_plain_with_and_without_initial_response(imap: ImapHarness) -> None:
    import base64

    token = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode())
    raw = imap.raw()
    assert raw.cmd(b"AUTHENTICATE PLAIN " + token)[-1].startswith(b"t OK")  # SASL-IR (RFC 4959)
    raw.close()
    raw = imap.raw()
    raw.send(b"a AUTHENTICATE PLAIN\r\n")
    assert raw.line() == b"+ \r\n"
    raw.send(token + b"\r\n")
    assert raw.until_tagged(b"a")[-1].startswith(b"a OK")
    raw.close()
    raw = imap.raw()
    raw.send(b"a AUTHENTICATE PLAIN\r\n")
    raw.line()
    raw.send(b"*\r\n")  # RFC 3501 §6.2.2: cancel -> BAD
    assert raw.until_tagged(b"a")[-1].startswith(b"a BAD")
    raw.close()
    c = imap.client(login=None)
    ok(c.authenticate("PLAIN", lambda _: b"\0alice@example.test\0" + PASSWORD.encode()))
    c.logout()


def test_authenticate_login_mechanism(imap: ImapHarness) -> None:
    raw = imap.raw()
    raw.send(b"a AUTHENTICATE LOGIN\r\n")
    assert raw.line() == b"+ VXNlcm5hbWU6\r\n"
    raw.send(b"YWxpY2VAZXhhbXBsZS50ZXN0\r\n")
    assert raw.line() == b"+ UGFzc3dvcmQ6\r\n"
    raw.send(b"c2VjcmV0\r\n")
    assert raw.until_tagged(b"a")[-1].startswith(b"a OK")
    raw.close()


def test_commands_outside_their_state_are_bad(imap: ImapHarness) -> None:
    raw = imap.raw()
    assert raw.cmd(b"SELECT INBOX")[-1].startswith(b"t BAD")
    raw.login()
    assert raw.cmd(b"FETCH 1 FLAGS")[-1].startswith(b"t BAD")
    assert raw.cmd(b"LOGIN a b")[-1].startswith(b"t BAD")
    assert raw.cmd(b"SELECT INBOX")[-1].startswith(b"t OK")
    assert raw.cmd(b"ENABLE CONDSTORE")[-1].startswith(b"t BAD")
    raw.close()


def test_logout_says_bye_and_closes(imap: ImapHarness) -> None:
    raw = imap.raw()
    lines = raw.cmd(b"LOGOUT")
    assert lines[0].startswith(b"* BYE") and lines[-1].startswith(b"t OK")
    assert raw.closed()


# --------------------------------------------------------------------------- SELECT / EXAMINE


@over_both_indexes
def test_recent_goes_to_one_session_across_processes_and_restarts(imap: ImapHarness) -> None:
    """RFC 3501 §2.3.2 with several worker processes (here two Stores over one mail root, as two
    workers have): a message is \\Recent in the first session told about it, in whichever process;
    the mark is in the index, so a restart does not hand it out again."""
    imap.fill(2)
    other = ImapHarness(imap.cfg, pg_dsn=imap.pg_dsn, pg_index=imap.pg_index).start()
    try:
        a = imap.raw()
        a.login()
        assert b"* 2 RECENT" in b"".join(a.cmd(b"SELECT INBOX"))
        b = other.raw()
        b.login()
        assert b"* 0 RECENT" in b"".join(b.cmd(b"SELECT INBOX"))  # the other process: already told
        imap.fill(1)  # a third message: the first session (of either process) to look gets it
        told = [b"".join(c.cmd(b"NOOP")) for c in (b, a)]
        assert b"* 3 RECENT" in told[1] and b"RECENT" not in told[0], told  # a's: its two and the new one
        status = b"".join(b.cmd(b"STATUS INBOX (RECENT)"))
        assert b"(RECENT 0)" in status, status
        a.close()
        b.close()
    finally:
        other.stop()
    again = ImapHarness(imap.cfg, pg_dsn=imap.pg_dsn, pg_index=imap.pg_index).start()  # a restart
    try:
        c = again.raw()
        c.login()
        assert b"* 0 RECENT" in b"".join(c.cmd(b"SELECT INBOX"))
        c.close()
    finally:
        again.stop()


@over_both_indexes
def test_select_reports_flags_exists_recent_unseen_uidvalidity_uidnext(imap: ImapHarness) -> None:
    uids = imap.fill(4)
    imap.store_flags(uids[:2], {"\\Seen"})
    imap.store_flags([uids[3]], {"Important"})
    raw = imap.raw()
    raw.login()
    lines = raw.cmd(b"SELECT INBOX")
    text = b"".join(lines)
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Important)" in text
    assert b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Important \\*)]" in text
    assert b"* 4 EXISTS" in text and b"* 4 RECENT" in text
    assert b"* OK [UNSEEN 3]" in text
    assert re.search(rb"\* OK \[UIDVALIDITY \d+\]", text)
    assert b"* OK [UIDNEXT 5]" in text
    assert lines[-1].startswith(b"t OK [READ-WRITE]")
    raw2 = imap.raw()
    raw2.login()
    text2 = b"".join(raw2.cmd(b"EXAMINE INBOX"))
    assert b"* 0 RECENT" in text2  # the first session took \Recent (RFC 3501 §2.3.2)
    assert b"[READ-ONLY]" in text2 and b"[PERMANENTFLAGS ()]" in text2
    raw.close()
    raw2.close()


def test_select_missing_mailbox_is_no_and_leaves_selected_state(imap: ImapHarness) -> None:
    c = imap.client()
    ok(c.select("INBOX"))
    typ, data = c.select("Nope")
    assert typ == "NO" and b"NONEXISTENT" in data[0]
    raw = imap.raw()
    raw.login()
    raw.cmd(b"SELECT INBOX")
    raw.cmd(b"SELECT Nope")
    assert raw.cmd(b"FETCH 1 FLAGS")[-1].startswith(b"t BAD")  # RFC 3501 §6.3.1: no longer selected
    raw.close()
    c.logout()


def test_examine_refuses_store_expunge_and_does_not_set_seen(imap: ImapHarness) -> None:
    imap.fill(1)
    c = imap.client()
    ok(c.select("INBOX", readonly=True))
    typ, _ = c.store("1", "+FLAGS", "\\Deleted")
    assert typ == "NO"
    ok(c.fetch("1", "(BODY[])"))
    assert "\\Seen" not in imap.messages()[0].flags
    c.logout()


# --------------------------------------------------------------------------- FETCH


@over_both_indexes
def test_fetch_flags_internaldate_size_uid(imap: ImapHarness) -> None:
    uids = imap.fill(3)
    imap.store_flags([uids[1]], {"\\Flagged"})
    c = imap.client()
    ok(c.select("INBOX"))
    data = ok(c.fetch("1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE)"))
    assert len(data) == 3
    assert re.match(rb'2 \(UID 2 FLAGS \(\\Flagged \\Recent\) RFC822.SIZE \d+ INTERNALDATE "[^"]+"\)', data[1])
    size = imap.messages()[0].size
    assert b"RFC822.SIZE %d" % size in data[0]
    c.logout()


def test_uid_fetch_always_includes_uid(imap: ImapHarness) -> None:
    imap.fill(2)
    c = imap.client()
    ok(c.select("INBOX"))
    data = ok(c.uid("FETCH", "1:*", "(FLAGS)"))
    assert all(b"UID " in d for d in data)
    data = ok(c.uid("FETCH", "2", "(FLAGS)"))
    assert data[0].startswith(b"2 (UID 2 ")
    c.logout()


def test_fetch_body_sections_and_seen(imap: ImapHarness) -> None:
    imap.fill(1)
    msg = make_message(1)
    c = imap.client()
    ok(c.select("INBOX"))
    data = ok(c.fetch("1", "(BODY.PEEK[])"))
    assert data[0][1] == msg
    assert "\\Seen" not in imap.messages()[0].flags
    data = ok(c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject)])"))
    assert data[0][1] == b"Subject: message 1\r\n\r\n"
    data = ok(c.fetch("1", "(BODY.PEEK[TEXT]<5.10>)"))
    assert b"BODY[TEXT]<5>" in data[0][0] and data[0][1] == msg.split(b"\r\n\r\n", 1)[1][5:15]
    data = ok(c.fetch("1", "(RFC822.HEADER)"))
    assert data[0][1] == msg.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    data = ok(c.fetch("1", "(BODY[TEXT])"))  # not PEEK: sets \Seen, and FLAGS come along (Dovecot)
    assert b"FLAGS (\\Seen" in b"".join(x if isinstance(x, bytes) else x[0] for x in data)
    assert "\\Seen" in imap.messages()[0].flags
    data = ok(c.fetch("1", "(RFC822)"))
    assert data[0][1] == msg
    c.logout()


# RFC 3501 §6.4.5: BODY[<section>]<partial>, RFC822 and RFC822.TEXT set \Seen; BODY.PEEK and
# RFC822.HEADER (which is BODY.PEEK[HEADER]) do not, and neither does any metadata item. RFC 3516
# §4.2: BINARY[] does, BINARY.PEEK and BINARY.SIZE do not.
SETS_SEEN = ["RFC822", "RFC822.TEXT", "BODY[TEXT]", "BODY[HEADER]", "BODY[]", "BODY[1]", "BODY[]<0.10>",
             "BODY[HEADER.FIELDS (SUBJECT)]", "BODY[HEADER.FIELDS.NOT (SUBJECT)]", "BINARY[1]", "BINARY[]<0.10>"]
KEEPS_UNSEEN = ["RFC822.HEADER", "BODY.PEEK[]", "BODY.PEEK[TEXT]", "BODY.PEEK[HEADER]", "BODY.PEEK[1]",
                "BINARY.PEEK[]", "BINARY.SIZE[1]",
                "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "FLAGS", "INTERNALDATE UID BODY"]


def _fetch_text(raw: RawClient, command: bytes) -> bytes:
    lines = raw.cmd(command)
    assert lines[-1].startswith(b"t OK"), lines
    return b"".join(lines[:-1])


@pytest.mark.parametrize("item", SETS_SEEN)
@pytest.mark.parametrize("uid", [False, True], ids=["seq", "uid"])
def test_non_peek_fetch_sets_seen_and_sends_the_new_flags(imap: ImapHarness, item: str, uid: bool) -> None:
    imap.fill(2)
    imap.store_flags([2], {"\\Seen"})
    raw = imap.raw()
    raw.login()
    raw.cmd(b"SELECT INBOX")
    prefix = b"UID FETCH" if uid else b"FETCH"
    text = _fetch_text(raw, prefix + b" 1 (" + item.encode() + b")")
    # the change comes with the data, before it (as Dovecot 2.3: its FLAGS is a "buffered" item)
    assert text.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) " if uid
                           else b"* 1 FETCH (FLAGS (\\Seen \\Recent) "), text
    assert imap.messages()[0].flags == {"\\Seen"}
    text = _fetch_text(raw, prefix + b" 2 (" + item.encode() + b")")  # already \Seen: no FLAGS (Dovecot)
    assert b"FLAGS" not in text
    text = _fetch_text(raw, prefix + b" 1 (" + item.encode() + b")")
    assert b"FLAGS" not in text
    raw.close()


@pytest.mark.parametrize("item", KEEPS_UNSEEN)
def test_peek_and_metadata_fetches_do_not_set_seen(imap: ImapHarness, item: str) -> None:
    imap.fill(1)
    raw = imap.raw()
    raw.login()
    raw.cmd(b"SELECT INBOX")
    text = _fetch_text(raw, b"FETCH 1 (" + item.encode() + b")")
    assert b"\\Seen" not in text
    assert b"\\Seen" not in _fetch_text(raw, b"FETCH 1 (FLAGS)")
    assert imap.messages()[0].flags == set()
    raw.close()


def test_nothing_sets_seen_in_an_examined_mailbox(imap: ImapHarness) -> None:
    imap.fill(2)
    raw = imap.raw()
    raw.login()
    assert raw.cmd(b"EXAMINE INBOX")[-1].startswith(b"t OK [READ-ONLY]")
    for item in SETS_SEEN:
        text = _fetch_text(raw, b"FETCH 1:2 (" + item.encode() + b")")
        assert b"FLAGS" not in text, (item, text)
        text = _fetch_text(raw, b"UID FETCH 1:2 (" + item.encode() + b")")
        assert b"FLAGS" not in text, (item, text)
    assert b"\\Seen" not in _fetch_text(raw, b"FETCH 1:2 (FLAGS)")
    assert [m.flags for m in imap.messages()] == [set(), set()]
    other = imap.raw()  # a read-write session sees no \Seen either
    other.login()
    other.cmd(b"SELECT INBOX")
    assert _fetch_text(other, b"FETCH 1:2 (FLAGS)") == \
        b"* 1 FETCH (FLAGS (\\Recent))\r\n* 2 FETCH (FLAGS (\\Recent))\r\n"
    other.close()
    raw.close()


def test_fetch_envelope_bodystructure_body(imap: ImapHarness) -> None:
    imap.fill(1)
    c = imap.client()
    ok(c.select("INBOX"))
    data = ok(c.fetch("1", "(ENVELOPE)"))
    assert b'"message 1"' in data[0] and b'"sender" "example.org"' in data[0]
    data = ok(c.fetch("1", "(BODYSTRUCTURE)"))
    assert b'BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit"' in data[0]
    data = ok(c.fetch("1", "(BODY)"))
    assert b'BODY ("text" "plain"' in data[0]
    data = ok(c.fetch("1", "ALL"))
    assert b"ENVELOPE" in data[0] and b"FLAGS" in data[0]
    c.logout()


def test_fetch_sequence_number_beyond_exists_is_bad(imap: ImapHarness) -> None:
    imap.fill(2)
    raw = imap.raw()
    raw.login()
    raw.cmd(b"SELECT INBOX")
    assert raw.cmd(b"FETCH 3 FLAGS")[-1].startswith(b"t BAD")
    assert raw.cmd(b"UID FETCH 3:9 FLAGS")[-1].startswith(b"t OK")  # UIDs that do not exist: nothing
    raw.close()


# --------------------------------------------------------------------------- STORE


@over_both_indexes
def test_store_add_remove_set_silent(imap: ImapHarness) -> None:
    imap.fill(3)
    c = imap.client()
    ok(c.select("INBOX"))
    data = ok(c.store("1:2", "+FLAGS", "(\\Flagged $Work)"))
    assert data[0] == b"1 (FLAGS (\\Flagged \\Recent $Work))"
    data = ok(c.store("1", "-FLAGS", "(\\Flagged)"))
    assert data[0] == b"1 (FLAGS (\\Recent $Work))"
    data = ok(c.store("3", "FLAGS.SILENT", "(\\Answered)"))
    assert data == [None]
    data = ok(c.uid("STORE", "2", "FLAGS", "(\\Seen)"))
    assert data[0] == b"2 (UID 2 FLAGS (\\Seen \\Recent))"
    flags = {m.uid: m.flags for m in imap.messages()}
    assert flags == {1: {"$Work"}, 2: {"\\Seen"}, 3: {"\\Answered"}}
    c.logout()


# --------------------------------------------------------------------------- SEARCH


@over_both_indexes
def test_search_keys(imap: ImapHarness) -> None:
    imap.fill(5)
    imap.deliver(make_message(6, subject="Quarterly report", sender="boss@corp.example"))
    imap.store_flags([1, 2], {"\\Seen"})
    imap.store_flags([3], {"\\Deleted"})
    c = imap.client()
    ok(c.select("INBOX"))
    assert ok(c.search(None, "ALL"))[0] == b"1 2 3 4 5 6"
    assert ok(c.search(None, "SEEN"))[0] == b"1 2"
    assert ok(c.search(None, "UNSEEN", "UNDELETED"))[0] == b"4 5 6"
    assert ok(c.search(None, "SUBJECT", "quarterly"))[0] == b"6"
    assert ok(c.search(None, "FROM", "boss"))[0] == b"6"
    assert ok(c.search(None, "OR", "DELETED", "SEEN"))[0] == b"1 2 3"
    assert ok(c.search(None, "NOT", "SEEN", "2:4"))[0] == b"3 4"
    assert ok(c.search(None, "BODY", '"line 2 of message 4"'))[0] == b"4"
    assert ok(c.search(None, "LARGER", "10"))[0] == b"1 2 3 4 5 6"
    assert ok(c.search("UTF-8", "SUBJECT", "report"))[0] == b"6"
    assert ok(c.uid("SEARCH", "SUBJECT", "report"))[0] == b"6"
    assert ok(c.search(None, "HEADER", "Message-ID", "<m5@"))[0] == b"5"
    typ, data = c.search("KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[0]
    c.logout()


# --------------------------------------------------------------------------- APPEND


@over_both_indexes
def test_append_with_flags_and_date_returns_appenduid(imap: ImapHarness) -> None:
    c = imap.client()
    msg = make_message(1)
    typ, data = c.append("INBOX", "(\\Seen $Label)", imaplib.Time2Internaldate(1600000000), msg)
    assert typ == "OK"
    m = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
    assert m and int(m.group(2)) == 1
    info = imap.messages()[0]
    assert info.flags == {"\\Seen", "$Label"} and int(info.internaldate) == 1600000000
    typ, data = c.append("NoSuchBox", None, None, msg)
    assert typ == "NO" and b"TRYCREATE" in data[0]
    c.logout()


def test_append_to_selected_mailbox_announces_exists(imap: ImapHarness) -> None:
    c = imap.client()
    ok(c.select("INBOX"))
    ok(c.append("INBOX", None, None, make_message(1)))
    assert c.untagged_responses.get("EXISTS", [])[-1:] == [b"1"]
    c.logout()


def test_append_too_big_literal_is_refused_without_reading(make_config: Callable[..., Any]) -> None:
    cfg = make_config("imap", {"imaps": {"tls": "implicit"}}, smtp={"max_message_size": 2048})
    h = ImapHarness(cfg).start()
    try:
        raw = h.raw()
        raw.login()
        raw.send(b"a APPEND INBOX {5000}\r\n")
        assert raw.line().startswith(b"a NO [TOOBIG]")  # RFC 7889: no "+", literal never read
        assert raw.cmd(b"NOOP")[-1].startswith(b"t OK")
        raw.send(b"b APPEND INBOX {5000+}\r\n" + b"x" * 5000 + b"\r\n")  # LITERAL+: too late to refuse
        assert raw.line().startswith(b"b BAD")
        assert raw.closed()
    finally:
        h.stop()


def test_append_ok_comes_only_after_the_file_and_its_directory_are_fsynced(
        make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}}), names=("imap",), fsync=True).start()
    try:
        raw = h.raw()
        raw.login()
        assert raw.cmd(b"STATUS INBOX (MESSAGES)")[-1].startswith(b"t OK")  # Maildir made (and synced) now
        user_dir = os.path.realpath(h.cfg.mail_root / "example.test" / "alice")
        fsyncs = FsyncGate(monkeypatch, lambda path, _: path.startswith(user_dir + "/tmp/")
                           or path == user_dir + "/cur")
        synced = fsyncs.synced
        msg = make_message(1)
        try:
            raw.send(b"a APPEND INBOX (\\Flagged) {%d+}\r\n" % len(msg) + msg + b"\r\n")  # LITERAL+
            held = []
            for _ in range(2):  # the message file, then cur/: no reply while either fsync is pending
                held.append(fsyncs.next_held())
                with pytest.raises(TimeoutError):
                    raw.line(timeout=0.3)
                fsyncs.release(held[-1])
            reply = raw.until_tagged(b"a")
            assert reply[-1].startswith(b"a OK [APPENDUID "), reply
        finally:
            fsyncs.release_all()
        tmp_file, cur_dir = held
        assert tmp_file.startswith(user_dir + "/tmp/") and cur_dir == user_dir + "/cur"
        assert synced.index(tmp_file) < synced.index(cur_dir)
        [name] = os.listdir(cur_dir)  # the fsynced file itself, renamed into cur/ with its flag
        assert name.startswith(tmp_file.rsplit("/", 1)[1] + ":2,") and name.endswith("F")
        with open(os.path.join(cur_dir, name), "rb") as f:
            assert f.read() == msg
        raw.close()
    finally:
        h.stop()


MIB = 1 << 20


def message_of_size(size: int) -> bytes:
    """A well-formed CRLF message of exactly `size` octets (printable lines of 78 + CRLF)."""
    head = make_message(1, subject="big", body=b"")
    body = b"".join(b"%078d\r\n" % i for i in range((size - len(head)) // 80 + 1))
    msg = head + body[:size - len(head) - 2]
    return msg + b"\r\n"


def test_append_of_exactly_the_size_limit_is_stored_byte_for_byte(make_config: Callable[..., Any]) -> None:
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}}, smtp={"max_message_size": MIB}),
                    names=("imap",)).start()
    try:
        msg = message_of_size(MIB)
        assert len(msg) == MIB and b"\r\n\r\n" in msg and msg.count(b"\n") == msg.count(b"\r\n")
        c = h.client()
        typ, data = c.append("INBOX", None, None, msg)  # synchronising literal {1048576}
        assert typ == "OK" and b"[APPENDUID " in data[0], (typ, data)
        ok(c.select("INBOX"))
        data = ok(c.fetch("1", "(RFC822.SIZE BODY.PEEK[])"))
        assert data[0][0].endswith(b"BODY[] {%d}" % MIB) and b"RFC822.SIZE %d " % MIB in data[0][0]
        assert data[0][1] == msg
        c.logout()
    finally:
        h.stop()


def test_append_one_octet_over_the_limit_is_toobig_unread_and_the_session_goes_on(
        make_config: Callable[..., Any]) -> None:
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}}, smtp={"max_message_size": MIB}),
                    names=("imap",)).start()
    try:
        raw = h.raw()
        raw.login()
        # RFC 7889 §4 (as Dovecot): a synchronising literal over the limit is refused before any "+",
        # so the client never sends it; the server does not wait for it either.
        raw.send(b"a APPEND INBOX {%d}\r\n" % (MIB + 1))
        assert raw.line(timeout=3).startswith(b"a NO [TOOBIG]")
        assert raw.cmd(b"NOOP") == [b"t OK NOOP completed.\r\n"]
        msg = message_of_size(MIB + 1)
        assert len(msg) == MIB + 1
        c = h.client()
        typ, data = c.append("INBOX", None, None, msg)  # imaplib sends no literal without the "+"
        assert typ == "NO" and data[0].startswith(b"[TOOBIG]")
        ok(c.noop())
        typ, data = c.append("INBOX", None, None, msg[:MIB - 2] + b"\r\n")  # and the limit itself goes in
        assert typ == "OK"
        assert [m.size for m in h.messages()] == [MIB]
        c.logout()
        raw.close()
    finally:
        h.stop()


def test_literal_plus_append(imap: ImapHarness) -> None:
    msg = make_message(1)
    raw = imap.raw()
    raw.login()
    raw.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert raw.until_tagged(b"a")[-1].startswith(b"a OK [APPENDUID")
    raw.close()


# --------------------------------------------------------------------------- EXPUNGE / CLOSE


@over_both_indexes
def test_expunge_removes_deleted_and_reports_numbers(imap: ImapHarness) -> None:
    imap.fill(5)
    c = imap.client()
    ok(c.select("INBOX"))
    ok(c.store("2,4", "+FLAGS", "\\Deleted"))
    data = ok(c.expunge())
    assert data == [b"2", b"3"]  # 4 became 3 after 2 went (RFC 3501 §7.4.1)
    assert [m.uid for m in imap.messages()] == [1, 3, 5]
    c.logout()


def test_uid_expunge_only_removes_named_uids(imap: ImapHarness) -> None:
    imap.fill(3)
    c = imap.client()
    ok(c.select("INBOX"))
    ok(c.store("1:3", "+FLAGS", "\\Deleted"))
    ok(c.uid("EXPUNGE", "2"))
    assert [m.uid for m in imap.messages()] == [1, 3]
    c.logout()


def test_close_expunges_silently_and_unselect_does_not(imap: ImapHarness) -> None:
    imap.fill(3)
    raw = imap.raw()
    raw.login()
    raw.cmd(b"SELECT INBOX")
    raw.cmd(b"STORE 1 +FLAGS (\\Deleted)")
    lines = raw.cmd(b"UNSELECT")
    assert lines[-1].startswith(b"t OK") and len(imap.messages()) == 3
    raw.cmd(b"SELECT INBOX")
    lines = raw.cmd(b"CLOSE")
    assert lines == [b"t OK Close completed.\r\n"]  # no EXPUNGE responses
    assert [m.uid for m in imap.messages()] == [2, 3]
    raw.cmd(b"EXAMINE INBOX")
    raw.cmd(b"CLOSE")  # read-only: nothing expunged
    raw.close()


def test_check_is_ok_when_selected_and_bad_when_only_authenticated(imap: ImapHarness) -> None:
    imap.fill(1)
    raw = imap.raw()
    raw.login()
    # RFC 3501 §6.4.1: CHECK is a selected-state command (Dovecot: BAD "No mailbox selected.")
    assert raw.cmd(b"CHECK")[-1].startswith(b"t BAD")
    raw.cmd(b"SELECT INBOX")
    imap.deliver(make_message(2))
    lines = raw.cmd(b"CHECK")
    assert lines[-1] == b"t OK Check completed.\r\n"
    assert b"* 2 EXISTS\r\n" in lines  # like NOOP, CHECK brings the session up to date
    raw.cmd(b"UNSELECT")
    assert raw.cmd(b"CHECK")[-1].startswith(b"t BAD")
    raw.close()


# --------------------------------------------------------------------------- COPY / MOVE


@over_both_indexes
def test_copy_returns_copyuid_and_keeps_flags(imap: ImapHarness) -> None:
    imap.fill(3)
    imap.store_flags([2], {"\\Flagged"})
    c = imap.client()
    ok(c.select("INBOX"))
    typ, data = c.copy("2:3", "Archive")
    assert typ == "OK"
    m = re.search(rb"\[COPYUID (\d+) 2:3 1:2\]", data[0])
    assert m
    assert [(x.uid, x.flags) for x in imap.messages(folder="Archive")] == [(1, {"\\Flagged"}), (2, set())]
    typ, data = c.copy("1", "Missing")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    typ, data = c.copy("1", "INBOX")  # into itself: allowed, a second message
    assert typ == "OK" and b"COPYUID" in data[0]
    c.logout()


@over_both_indexes
def test_move_sends_copyuid_then_expunges(imap: ImapHarness) -> None:
    imap.fill(3)
    raw = imap.raw()
    raw.login()
    raw.cmd(b"SELECT INBOX")
    lines = raw.cmd(b"MOVE 1:2 Trash")
    assert lines[0].startswith(b"* OK [COPYUID ")
    assert lines[1:3] == [b"* 1 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n"]
    assert lines[-1].startswith(b"t OK")
    lines = raw.cmd(b"UID MOVE 3 Trash")
    assert lines[0].startswith(b"* OK [COPYUID ") and lines[1] == b"* 1 EXPUNGE\r\n"
    assert imap.messages() == [] and len(imap.messages(folder="Trash")) == 3
    raw.close()


def test_move_into_the_selected_mailbox_itself_gives_new_uids(imap: ImapHarness) -> None:
    # RFC 6851 does not forbid it; Dovecot performs it (imaptest "move"). It was NO [CANNOT].
    imap.fill(3)
    imap.store_flags([1], {"\\Flagged", "$Work"})
    raw = imap.raw()
    raw.login()
    found = re.search(rb"UIDVALIDITY (\d+)", b"".join(raw.cmd(b"SELECT INBOX")))
    assert found
    uidvalidity = found.group(1)
    lines = raw.cmd(b"MOVE 1 INBOX")
    assert lines[0] == b"* OK [COPYUID %s 1 4] Moved UIDs.\r\n" % uidvalidity  # RFC 6851 §4.3: before EXPUNGE
    assert lines[1:3] == [b"* 1 EXPUNGE\r\n", b"* 3 EXISTS\r\n"]
    assert lines[-1] == b"t OK Move completed.\r\n"
    lines = raw.cmd(b"UID MOVE 2 INBOX")
    assert lines[0] == b"* OK [COPYUID %s 2 5] Moved UIDs.\r\n" % uidvalidity
    assert lines[1:3] == [b"* 1 EXPUNGE\r\n", b"* 3 EXISTS\r\n"]
    assert raw.cmd(b"UID FETCH 1:* (FLAGS)")[:3] == [
        b"* 1 FETCH (UID 3 FLAGS (\\Recent))\r\n", b"* 2 FETCH (UID 4 FLAGS (\\Flagged \\Recent $Work))\r\n",
        b"* 3 FETCH (UID 5 FLAGS (\\Recent))\r\n"]
    raw.close()
    assert [(m.uid, m.flags) for m in imap.messages()] == [(3, set()), (4, {"\\Flagged", "$Work"}), (5, set())]
    inbox = imap.cfg.mail_root / "example.test" / "alice"
    assert len([*(inbox / "cur").iterdir(), *(inbox / "new").iterdir()]) == 3  # no file lost or doubled


@over_both_indexes
def test_new_keyword_flags_come_before_the_fetch_that_shows_it(imap: ImapHarness) -> None:
    # RFC 3501 §7.2.6: FLAGS lists the keywords; a FETCH must not show one the client was not told
    # about (imaptest: "Keyword used without being in FLAGS"). FLAGS came after the FETCH.
    imap.fill(2)
    a, b = imap.raw(), imap.raw()
    a.login()
    b.login()
    a.cmd(b"SELECT INBOX")
    b.cmd(b"SELECT INBOX")
    lines = a.cmd(b"STORE 1 +FLAGS ($one)")  # the session's own STORE
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $one)\r\n"
    assert lines[1].startswith(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $one \\*)]")
    assert lines[2] == b"* 1 FETCH (FLAGS (\\Recent $one))\r\n"
    lines = b.cmd(b"FETCH 1 (FLAGS)")  # another session's keyword, seen by a FETCH
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $one)\r\n"
    assert lines[1].startswith(b"* OK [PERMANENTFLAGS (")
    assert lines[2] == b"* 1 FETCH (FLAGS ($one))\r\n" and len(lines) == 4
    a.cmd(b"STORE 2 +FLAGS.SILENT ($two)")
    lines = b.cmd(b"UID FETCH 1:* (FLAGS)")
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $one $two)\r\n"
    assert [x for x in lines if b"FETCH" in x] == [b"* 1 FETCH (UID 1 FLAGS ($one))\r\n",
                                                  b"* 2 FETCH (UID 2 FLAGS ($two))\r\n"]
    assert not any(b"FLAGS (" in x and not x.startswith((b"* 1 FETCH", b"* 2 FETCH")) for x in lines[2:])
    a.close()
    b.close()


def test_mailbox_names_not_in_modified_utf7_are_no_and_list_patterns_ok(imap: ImapHarness) -> None:
    # RFC 3501 §5.1.3: modified UTF-7 is a convention. imaptest "atoms": SELECT of such a name is NO
    # (it was BAD, which also counted towards max_bad_commands), LIST with such a pattern is OK.
    raw = imap.raw()
    raw.login()
    assert raw.cmd(b"SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}") == [
        b"t NO [NONEXISTENT] Mailbox name is not valid modified UTF-7\r\n"]
    assert raw.cmd(b"CREATE a&b")[-1] == b"t NO [CANNOT] Mailbox name is not valid modified UTF-7\r\n"
    assert raw.cmd(b"LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*") == [b"t OK List completed.\r\n"]
    assert raw.cmd(b'CREATE "&-Jjo"')[-1].startswith(b"t OK")  # the mailbox named "&Jjo"
    # A broken shift in a pattern stands for itself, as Dovecot matches it.
    assert raw.cmd(b"LIST \"\" &Jjo") == [b'* LIST (\\HasNoChildren) "." &-Jjo\r\n', b"t OK List completed.\r\n"]
    assert raw.cmd(b"NOOP") == [b"t OK NOOP completed.\r\n"]  # still connected
    raw.close()


# --------------------------------------------------------------------------- mailboxes


@over_both_indexes
def test_list_patterns_special_use_and_children(imap: ImapHarness) -> None:
    c = imap.client()
    ok(c.create("Work"))
    ok(c.create("Work.Projects"))
    ok(c.create("Entwürfe".encode("utf-7").decode().replace("+", "&")))  # any mUTF-7-ish name
    lines = ok(c.list('""', "*"))
    text = b"\n".join(lines)
    assert b'(\\HasNoChildren) "." INBOX' in text
    assert b'(\\HasNoChildren \\Sent) "." Sent' in text
    for su in (b"\\Drafts", b"\\Trash", b"\\Junk", b"\\Archive"):
        assert su in text
    assert b'(\\HasChildren) "." Work' in text
    assert b'(\\HasNoChildren) "." Work.Projects' in text
    top = ok(c.list('""', "%"))
    assert not any(b"Work.Projects" in x for x in top)
    assert len(ok(c.list("Work.", "%"))) == 1
    assert ok(c.list('""', "inbox"))[0].endswith(b"INBOX")
    data = ok(c.list('""', '""'))
    assert data == [b'(\\Noselect) "." ""']
    c.logout()


@over_both_indexes
def test_create_delete_rename_subscribe_lsub_status(imap: ImapHarness) -> None:
    c = imap.client()
    ok(c.create("Box"))
    typ, data = c.create("Box")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    ok(c.rename("Box", "Box2"))
    ok(c.subscribe("Box2"))
    assert ok(c.lsub('""', "*")) == [b'() "." Box2']
    imap.fill(2, folder="Box2")
    imap.store_flags([1], {"\\Seen"}, folder="Box2")
    data = ok(c.status("Box2", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)"))
    assert re.match(rb"Box2 \(MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY \d+ UNSEEN 1\)", data[0])
    ok(c.unsubscribe("Box2"))
    assert ok(c.lsub('""', "*")) == [None]
    ok(c.delete("Box2"))
    typ, data = c.delete("INBOX")
    assert typ == "NO"
    typ, data = c.select("Box2")
    assert typ == "NO"
    c.logout()


@over_both_indexes
def test_rename_inbox_moves_messages(imap: ImapHarness) -> None:
    imap.fill(2)
    c = imap.client()
    ok(c.rename("INBOX", "Old"))
    assert imap.messages() == [] and len(imap.messages(folder="Old")) == 2
    c.logout()


def test_namespace_id_enable(imap: ImapHarness) -> None:
    raw = imap.raw()
    raw.login()
    assert raw.cmd(b"NAMESPACE")[0] == b'* NAMESPACE (("" ".")) NIL NIL\r\n'
    lines = raw.cmd(b'ID ("name" "pytest")')
    assert lines[0].startswith(b'* ID ("name" "Mailhaven"')
    assert raw.cmd(b"ENABLE X-NONE")[0] == b"* ENABLED\r\n"
    assert raw.cmd(b"ENABLE CONDSTORE")[0] == b"* ENABLED CONDSTORE\r\n"
    raw.close()


def test_imaplib_own_methods_check_close_namespace_enable_unselect_uid_copy_move_and_id(
        imap: ImapHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of these through imaplib's own method (not raw lines), so imaplib's parsing of our
    responses (response codes into untagged_responses, NAMESPACE, ENABLED) is part of the test."""
    imap.fill(4)
    c = imap.client()
    assert "NAMESPACE" in c.capabilities and "ENABLE" in c.capabilities
    assert ok(c.namespace()) == [b'(("" ".")) NIL NIL']  # RFC 2342
    typ, _ = c.enable("CONDSTORE")  # RFC 5161 §3.2: ENABLED names what it enabled
    assert typ == "OK" and c.untagged_responses.pop("ENABLED") == [b"CONDSTORE"]
    # ID (RFC 2971) has no imaplib method: xatom sends it (registered for every state, undone after)
    monkeypatch.setitem(imaplib.Commands, "ID", ("NONAUTH", "AUTH", "SELECTED"))
    typ, _ = c.xatom("ID", '("name" "imaplib" "version" "3")')
    assert typ == "OK"
    assert c.response("ID")[1][0].startswith(b'("name" "Mailhaven"')

    assert ok(c.select("INBOX")) == [b"4"]
    c.untagged_responses.clear()  # select() leaves its EXISTS there
    imap.deliver(make_message(5))
    assert ok(c.check()) == [b"Check completed."]
    assert c.response("EXISTS")[1] == [b"5"]
    ok(c.uid("STORE", "1", "+FLAGS", "(\\Flagged)"))
    typ, data = c.uid("COPY", "1,3", "Archive")  # RFC 4315: COPYUID in the tagged OK
    assert typ == "OK"
    m = re.fullmatch(rb"(\d+) 1,3 1:2", c.response("COPYUID")[1][0])
    assert m and int(m.group(1)) == h_uidvalidity(imap, "Archive")
    assert [(x.uid, x.flags) for x in imap.messages(folder="Archive")] == [(1, {"\\Flagged"}), (2, set())]
    typ, data = c.uid("MOVE", "2:4", "Trash")  # RFC 6851: COPYUID untagged, then EXPUNGEs
    assert typ == "OK"
    m = re.fullmatch(rb"(\d+) 2:4 1:3", c.response("COPYUID")[1][0])
    assert m and int(m.group(1)) == h_uidvalidity(imap, "Trash")
    assert c.response("EXPUNGE")[1] == [b"2", b"2", b"2"]
    assert [x.uid for x in imap.messages()] == [1, 5]
    ok(c.store("1", "+FLAGS", "(\\Deleted)"))
    ok(c.unselect())  # RFC 3691: leaves without expunging
    assert c.state == "AUTH" and [x.uid for x in imap.messages()] == [1, 5]
    with pytest.raises(imaplib.IMAP4.error):
        c.check()  # selected state only
    ok(c.select("INBOX"))
    ok(c.close())  # RFC 3501 §6.4.2: expunges \Deleted silently
    assert c.state == "AUTH" and [x.uid for x in imap.messages()] == [5]
    assert c.response("EXPUNGE")[1] == [None]
    c.logout()


def h_uidvalidity(h: ImapHarness, folder: str) -> int:
    async def go() -> int:
        mb = await h.store.account(ALICE).mailbox(folder)
        return int(mb.uidvalidity)
    return h.call(go())  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- shell limits


def test_parse_errors_are_bad_and_too_many_close_the_connection(make_config: Callable[..., Any]) -> None:
    cfg = make_config("imap", {"imaps": {"tls": "implicit"}}, imap={"max_bad_commands": 3})
    h = ImapHarness(cfg).start()
    try:
        raw = h.raw()
        assert raw.cmd(b"FOO")[-1].startswith(b"t BAD")
        assert raw.cmd(b"FETCH (")[-1].startswith(b"t BAD")
        raw.send(b"t SEARCH (((\r\n")
        assert raw.line().startswith(b"t BAD")
        assert raw.line().startswith(b"* BYE")
        assert raw.closed()
    finally:
        h.stop()


def test_synchronising_literal_gets_continuation(imap: ImapHarness) -> None:
    raw = imap.raw()
    raw.send(b"a LOGIN {18}\r\n")
    assert raw.line() == b"+ Ready for literal data\r\n"
    raw.send(ALICE.encode() + b" " + PASSWORD.encode() + b"\r\n")
    assert raw.until_tagged(b"a")[-1].startswith(b"a OK")
    raw.close()


def test_preauth_literal_is_small(imap: ImapHarness) -> None:
    raw = imap.raw()
    raw.send(b"a LOGIN {100000}\r\n")
    assert raw.line().startswith(b"a BAD")  # no "+": a big literal before login is never read
    raw.close()


def test_garbage_and_binary_never_kill_the_server(imap: ImapHarness) -> None:
    raw = imap.raw()
    raw.send(b"\x00\xff\xfe garbage\r\n\r\n* FETCH\r\n")
    for _ in range(3):
        assert b"BAD" in raw.line()
    raw.close()
    c = imap.client()
    ok(c.noop())
    c.logout()


def test_session_end_is_logged(imap: ImapHarness, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="mailhaven.imap")
    c = imap.client()
    c.noop()
    c.logout()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("imap session end" in r.getMessage() for r in caplog.records):
        time.sleep(0.05)
    rec = [r for r in caplog.records if "imap session end" in r.getMessage()][-1]
    fields = rec.mh_fields  # type: ignore[attr-defined]
    assert fields["user"] == ALICE and fields["ip"] == "127.0.0.1" and fields["commands"] >= 3
    assert "duration" in fields


# --------------------------------------------------------------------------- through app.py


async def test_app_serves_imap_with_starttls_and_imaps_and_says_bye_on_stop(
        app_config: Any, client_ssl_context: ssl.SSLContext) -> None:
    from tests.fixtures_server import add_user, running_app

    add_user(app_config, ALICE, PASSWORD)
    async with running_app(app_config) as ctx:
        await ctx.store.deliver([(ALICE, "INBOX")], make_message(1))

        def plain_then_starttls() -> list[Any]:
            c = imaplib.IMAP4("127.0.0.1", ctx.port("imap"), timeout=30)
            assert "LOGINDISABLED" in c.capabilities  # not loopback-exempt in this config
            c.starttls(ssl_context=client_ssl_context)
            c.login(ALICE, PASSWORD)
            c.select("INBOX")
            data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]
            c.logout()
            s = imaplib.IMAP4_SSL("127.0.0.1", ctx.port("imaps"), ssl_context=client_ssl_context, timeout=30)
            s.login(ALICE, PASSWORD)
            s.logout()
            return data  # type: ignore[no-any-return]

        data = await asyncio.to_thread(plain_then_starttls)
        assert data[0][1] == b"Subject: message 1\r\n\r\n"

        reader, writer = await asyncio.open_connection("127.0.0.1", ctx.port("imaps"), ssl=client_ssl_context,
                                                       server_hostname="localhost")
        await reader.readline()
        writer.write(f"a LOGIN {ALICE} {PASSWORD}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
        while not (await reader.readline()).startswith(b"+ "):
            pass
        ctx.request_stop()
        line = await asyncio.wait_for(reader.readline(), 10)
        assert line.startswith(b"* BYE")
        writer.close()


# --------------------------------------------------------------------------- more keys and items


MULTIPART = (b"From: Carol <carol@example.net>\r\nTo: alice@example.test\r\nCc: Dave <dave@example.net>\r\n"
             b"Bcc: eve@example.net\r\nSubject: with attachment\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\n"
             b"Message-ID: <mp@example.net>\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
             b"preamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello wonderful world\r\n"
             b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
             b"Content-Disposition: attachment; filename=\"a.bin\"\r\n\r\nAAECAw==\r\n--XX--\r\n")


def test_fetch_parts_of_a_multipart_message(imap: ImapHarness) -> None:
    imap.deliver(MULTIPART)
    c = imap.client()
    ok(c.select("INBOX"))
    data = ok(c.fetch("1", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[2])"))
    # imaplib splits one FETCH response at each literal: (prefix, literal) tuples in order
    chunks = [item for item in data if isinstance(item, tuple)]
    assert [re.search(rb"BODY\[[^\]]*\]", p).group(0) for p, _ in chunks] == \
        [b"BODY[1]", b"BODY[2.MIME]", b"BODY[2]"]  # type: ignore[union-attr]
    assert [v for _, v in chunks] == [
        b"Hello wonderful world",
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=\"a.bin\"\r\n\r\n",
        b"AAECAw=="]
    bs = ok(c.fetch("1", "(BODYSTRUCTURE)"))[0]
    assert b'"mixed"' in bs and b'"attachment" ("filename" "a.bin")' in bs
    data = ok(c.fetch("1", "(RFC822.TEXT)"))
    assert data[0][1].startswith(b"preamble")
    c.logout()


def test_search_every_rfc3501_key_family(imap: ImapHarness) -> None:
    imap.fill(3)  # Dates: 14 Nov 2023 (+n minutes)
    imap.deliver(MULTIPART)  # message 4, sent 2 Jan 2024
    imap.store_flags([1], {"\\Answered", "\\Draft", "Work"})
    imap.store_flags([2], {"\\Flagged"})
    c = imap.client()
    ok(c.select("INBOX"))

    def s(*keys: str) -> bytes:
        return ok(c.search(None, *keys))[0]  # type: ignore[no-any-return]

    assert s("ANSWERED") == b"1" and s("UNANSWERED") == b"2 3 4"
    assert s("DRAFT") == b"1" and s("UNDRAFT") == b"2 3 4"
    assert s("FLAGGED") == b"2" and s("UNFLAGGED") == b"1 3 4"
    assert s("KEYWORD", "Work") == b"1" and s("UNKEYWORD", "Work") == b"2 3 4"
    assert s("RECENT") == b"1 2 3 4" and s("NEW") == b"1 2 3 4" and s("OLD") == b""
    assert s("SENTBEFORE", "1-Jan-2024") == b"1 2 3" and s("SENTON", "2-Jan-2024") == b"4"
    assert s("SENTSINCE", "2-Jan-2024") == b"4"
    assert s("SINCE", "1-Jan-2000") == b"1 2 3 4" and s("BEFORE", "1-Jan-2000") == b""
    assert s("CC", "dave") == b"4" and s("BCC", "eve@") == b"4" and s("TO", "alice") == b"1 2 3 4"
    assert s("TEXT", "wonderful") == b"4" and s("BODY", "wonderful") == b"4"
    assert s("TEXT", "Carol") == b"4" and s("BODY", "Carol") == b""
    assert s("SMALLER", "100") == b"" and s("LARGER", "100000") == b""
    assert s("UID", "2:3") == b"2 3" and s("2,4") == b"2 4" and s("*") == b"4"
    assert s("OR", "FLAGGED", "(ANSWERED DRAFT)") == b"1 2"
    assert s("NOT", "OR", "FLAGGED", "ANSWERED") == b"3 4"
    assert s("HEADER", "Content-Type", "multipart") == b"4" and s("HEADER", "MIME-Version", '""') == b"4"
    assert ok(c.uid("SEARCH", "UID", "3:*"))[0] == b"3 4"
    assert s("ON", time.strftime("%d-%b-%Y", time.localtime(imap.messages()[0].internaldate))) == b"1 2 3 4"
    c.logout()


def test_list_shows_parents_made_by_other_tools_as_noselect(imap: ImapHarness) -> None:
    c = imap.client()
    ok(c.list())  # the account exists on disk now
    root = imap.cfg.mail_root / "example.test" / "alice"
    for sub in ("cur", "new", "tmp"):
        (root / ".Lonely.Child" / sub).mkdir(parents=True)
    (root / ".Lonely.Child" / "maildirfolder").touch()
    text = b"\n".join(ok(c.list('""', "*")))
    assert b'(\\HasNoChildren) "." Lonely.Child' in text
    assert b'(\\Noselect \\HasChildren) "." Lonely' in text
    assert ok(c.list('""', "Lonely"))[0].startswith(b"(\\Noselect")
    c.logout()


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham", "Europe/Berlin"])
def test_fast_internaldate_matches_fetchitems_in_every_zone(zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from mailhaven.imap import fetchitems
    from mailhaven.imap.fetch import internaldate

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        rnd = random.Random(zone)
        stamps = [0, 1e9, 1700000000.5, 2**31 - 1, 1711846800, 1711850400, 1729990800, 1729994400]
        for ts in stamps + [rnd.uniform(-1e9, 4e9) for _ in range(3000)]:
            assert internaldate(ts) == fetchitems.internaldate(ts), (zone, ts)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
