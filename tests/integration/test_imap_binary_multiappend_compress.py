"""BINARY (RFC 3516), MULTIAPPEND (RFC 3502), COMPRESS=DEFLATE (RFC 4978), UTF8=ACCEPT (RFC 6855) and
IMAP4rev2 (RFC 9051) against the real IMAP listeners (tests/integration/test_imap_server.py's
ImapHarness) with imaplib and raw socket clients: literal8 both ways, several messages in one
APPEND fsynced before the OK and kept all or none on a full disk, compression (imaplib wrapped, and
a raw client) over plain TCP and over TLS, with IDLE; UTF-8 mailbox names; a rev2 session."""

from __future__ import annotations

import imaplib
import os
import re
import socket
import ssl
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD, FsyncGate
from tests.integration.test_imap_server import ALICE, ImapHarness, make_message
from tests.integration.test_store_disk_full import fill, leftovers, on_disk, small_tmpfs

MIXED = (b"From: a@b\r\nSubject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
         b"--XX\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
         b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n"
         b"--XX--\r\n")


def ok(reply: tuple[str, Any]) -> Any:
    typ, data = reply
    assert typ == "OK", reply
    return data


@pytest.fixture
def imap(make_config: Callable[..., Any]) -> Any:
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}})).start()
    try:
        yield h
    finally:
        h.stop()


def test_imaplib_fetches_binary_and_appends_a_literal8(imap: ImapHarness) -> None:
    imap.call(_append(imap, MIXED))
    c = imap.client()
    caps = ok(c.capability())[0].split()
    assert {b"BINARY", b"MULTIAPPEND", b"COMPRESS=DEFLATE"} <= set(caps)
    ok(c.select("INBOX"))
    data = ok(c.fetch("1", "(BINARY.SIZE[2] BINARY.PEEK[2] BINARY.PEEK[1])"))
    assert data[0][0] == b"1 (BINARY.SIZE[2] 4 BINARY[2] ~{4}" and data[0][1] == b"\x00\x01\x02\x03"
    assert data[1][0] == b" BINARY[1] {5}" and data[1][1] == b"plain"
    # APPEND with a literal8 (imaplib writes " {n}" after its arguments, so a raw client sends "~{n}")
    msg = b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: binary\r\n\r\nbare\nlf\x00\r\n"
    raw = imap.raw()
    raw.login()
    reply = raw.cmd(b"APPEND INBOX ~{%d+}\r\n%s" % (len(msg), msg))
    assert reply[-1].startswith(b"t OK [APPENDUID "), reply
    raw.close()
    ok(c.noop())
    data = ok(c.fetch("2", "(BINARY.PEEK[1])"))
    assert data[0][1] == b"bare\nlf\x00\r\n"  # byte for byte, bare LF and NUL included
    c.logout()


async def _append(imap: ImapHarness, data: bytes) -> None:
    mb = await imap.store.account(ALICE).mailbox("INBOX")
    await mb.append(data)


def test_multiappend_is_fsynced_before_the_ok_and_gives_one_appenduid_set(
        make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}}), names=("imap",), fsync=True).start()
    try:
        raw = h.raw()
        raw.login()
        assert raw.cmd(b"STATUS INBOX (MESSAGES)")[-1].startswith(b"t OK")
        user_dir = os.path.realpath(h.cfg.mail_root / "example.test" / "alice")
        fsyncs = FsyncGate(monkeypatch, lambda path, _: path.startswith(user_dir + "/tmp/")
                           or path == user_dir + "/cur")
        msgs = [make_message(i) for i in (1, 2, 3)]
        try:
            raw.send(b"a APPEND INBOX" + b"".join(b" (\\Seen) {%d+}\r\n%s" % (len(m), m) for m in msgs) + b"\r\n")
            held = []
            for _ in range(4):  # three message files, then cur/ once: no reply while any is pending
                held.append(fsyncs.next_held())
                with pytest.raises(TimeoutError):
                    raw.line(timeout=0.3)
                fsyncs.release(held[-1])
            reply = raw.until_tagged(b"a")
        finally:
            fsyncs.release_all()
        assert re.fullmatch(rb"a OK \[APPENDUID \d+ 1:3\] Append completed\.\r\n", reply[-1]), reply
        assert [p.startswith(user_dir + "/tmp/") for p in held] == [True, True, True, False]
        assert sorted(open(os.path.join(user_dir, "cur", n), "rb").read() for n in os.listdir(user_dir + "/cur")) \
            == sorted(msgs)
        raw.close()
    finally:
        h.stop()


def test_multiappend_on_a_full_disk_keeps_none(make_config: Callable[..., Any], tmp_path: Path) -> None:
    cfg = make_config("imap", {"imaps": {"tls": "implicit"}})
    with small_tmpfs(cfg.mail_root) as fs:
        h = ImapHarness(cfg, names=("imap",), fsync=True).start()
        try:
            big = [make_message(i, body=b"body line\r\n" * 2000) for i in range(3)]  # 22 kB each
            raw = h.raw()
            raw.login()
            assert raw.cmd(b"SELECT INBOX")[-1].startswith(b"t OK")  # Maildir and index made
            acc_dir = Path(os.path.realpath(fs / "example.test" / "alice"))
            reserve = fs / "reserve"
            reserve.write_bytes(b"r" * 48 * 1024)
            filler = fill(fs)
            reserve.unlink()  # room for about two messages, not three: the third fails
            before = on_disk(acc_dir)
            reply = raw.cmd(b"APPEND INBOX" + b"".join(b" {%d+}\r\n%s" % (len(m), m) for m in big))
            assert reply[-1].startswith(b"t NO [UNAVAILABLE]"), reply
            assert on_disk(acc_dir) == before and leftovers(acc_dir) == []
            assert raw.cmd(b"SEARCH ALL") == [b"* SEARCH\r\n", b"t OK Search completed.\r\n"]  # none kept
            reply = raw.cmd(b"APPEND INBOX {%d+}\r\n%s" % (len(big[0]), big[0]))
            assert reply[-1].startswith(b"t OK [APPENDUID"), reply  # while one alone fits
            filler.unlink()
            raw.close()
        finally:
            h.stop()


class Deflating:
    """A client over a socket that speaks COMPRESS=DEFLATE after its OK (raw deflate each way)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.out: Any = None
        self.inf: Any = None
        self.line()  # greeting

    def send(self, data: bytes) -> None:
        if self.out is not None:
            data = self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += self.inf.decompress(chunk) if self.inf is not None else chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"

    def cmd(self, text: bytes, tag: bytes = b"t") -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        out = []
        while not (out and out[-1].startswith(tag + b" ")):
            out.append(self.line())
        return out

    def start(self) -> list[bytes]:
        reply = self.cmd(b"COMPRESS DEFLATE", b"z")  # the OK comes uncompressed
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inf = zlib.decompressobj(-15)
        assert not self.buf
        return reply


@pytest.mark.parametrize("listener", ["imap", "imaps"])
def test_compress_deflate_both_ways_with_idle(imap: ImapHarness, listener: str) -> None:
    sock = socket.create_connection(("127.0.0.1", imap.ports[listener]), timeout=10)
    if listener == "imaps":  # compression on top of TLS
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)
    c = Deflating(sock)
    assert c.cmd(f'LOGIN {ALICE} "{PASSWORD}"'.encode(), b"L")[-1].startswith(b"L OK")
    assert c.start() == [b"z OK Begin compression.\r\n"]
    assert c.cmd(b"COMPRESS DEFLATE", b"y") == [b"y NO [COMPRESSIONACTIVE] COMPRESSION=DEFLATE already enabled.\r\n"]
    imap.fill(3)
    reply = c.cmd(b"SELECT INBOX", b"s")
    assert b"* 3 EXISTS\r\n" in reply and reply[-1].startswith(b"s OK [READ-WRITE]")
    big = c.cmd(b"FETCH 1:3 (BODY.PEEK[])", b"f")
    assert big[-1] == b"f OK Fetch completed.\r\n" and sum(ln.startswith(b"* ") for ln in big) == 3
    c.send(b"i IDLE\r\n")
    assert c.line() == b"+ idling\r\n"
    imap.deliver(make_message(9))  # reaches the idling client, compressed and flushed at once
    assert c.line() == b"* 4 EXISTS\r\n"
    c.send(b"DONE\r\n")
    rest = [c.line()]
    while not rest[-1].startswith(b"i "):
        rest.append(c.line())
    assert rest[-1] == b"i OK Idle completed.\r\n", rest
    assert c.cmd(b"LOGOUT", b"o")[-1] == b"o OK Logout completed.\r\n"
    sock.close()


def test_corrupt_deflate_input_ends_the_connection(imap: ImapHarness) -> None:
    sock = socket.create_connection(("127.0.0.1", imap.ports["imap"]), timeout=10)
    c = Deflating(sock)
    c.cmd(f'LOGIN {ALICE} "{PASSWORD}"'.encode(), b"L")
    c.start()
    sock.sendall(b"\xff" * 64)  # not a DEFLATE stream
    sock.settimeout(5)
    while sock.recv(4096):  # the server closes (a BYE may come first): no hang, no traceback
        pass
    sock.close()


class DeflateIMAP4(imaplib.IMAP4):
    """imaplib with its socket wrapped in raw DEFLATE once COMPRESS DEFLATE succeeded."""

    _out: Any = None
    _in: Any = None
    _buf = b""

    def compress(self) -> tuple[str, list[Any]]:
        imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))  # imaplib does not know RFC 4978
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        if typ == "OK":
            self._out = zlib.compressobj(6, zlib.DEFLATED, -15)
            self._in = zlib.decompressobj(-15)
        return typ, data

    def send(self, data: bytes) -> None:
        if self._out is not None:
            data = self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self._buf += self._in.decompress(chunk)

    def readline(self) -> bytes:
        if self._in is None:
            return super().readline()
        while b"\n" not in self._buf:
            self._more()
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def read(self, size: int) -> bytes:
        if self._in is None:
            return super().read(size)
        while len(self._buf) < size:
            self._more()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data


def test_imaplib_over_compress_deflate(imap: ImapHarness) -> None:
    imap.fill(20)
    c = DeflateIMAP4("127.0.0.1", imap.ports["imap"], timeout=30)
    ok(c.login(ALICE, PASSWORD))
    assert ok(c.compress()) == [b"Begin compression."]
    ok(c.select("INBOX"))
    data = ok(c.fetch("1:20", "(BODY.PEEK[])"))
    bodies = [d[1] for d in data if isinstance(d, tuple)]
    assert bodies == [make_message(i + 1) for i in range(20)]
    assert ok(c.search(None, "ALL")) == [" ".join(str(i) for i in range(1, 21)).encode()]
    c.logout()


def test_imaplib_in_utf8_mode_uses_utf8_mailbox_names(imap: ImapHarness) -> None:
    """UTF8=ACCEPT (RFC 6855) with imaplib's own UTF-8 mode (after its enable())."""
    c = imap.client()
    typ, data = c.enable("UTF8=ACCEPT")
    assert typ == "OK" and c.utf8_enabled, (typ, data)
    assert c.untagged_responses.get("ENABLED") == [b"UTF8=ACCEPT"]
    ok(c.create('"Grüße"'))
    listed = ok(c.list('""', '"Gr*"'))
    assert listed == ['(\\HasNoChildren) "." "Grüße"'.encode()]
    assert ok(c.select('"Grüße"'))
    c.logout()
    other = imap.client()  # not enabled: modified UTF-7 (RFC 3501 §5.1.3)
    assert ok(other.list('""', '"Gr*"')) == [b'(\\HasNoChildren) "." Gr&APwA3w-e']
    other.logout()


def test_imap4rev2_session_beside_an_imap4rev1_one(imap: ImapHarness) -> None:
    imap.fill(2)
    raw = imap.raw()
    raw.login()
    assert raw.cmd(b"ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2\r\n", b"t OK Enabled.\r\n"]
    lines = raw.cmd(b"SELECT INBOX")
    assert not any(b"RECENT" in ln for ln in lines) and b'* LIST (\\HasNoChildren) "." INBOX\r\n' in lines
    assert raw.cmd(b"UID SEARCH ALL") == [b'* ESEARCH (TAG "t") UID ALL 1:2\r\n', b"t OK UID Search completed.\r\n"]
    imap.fill(1)
    assert raw.cmd(b"NOOP") == [b"* 3 EXISTS\r\n", b"t OK NOOP completed.\r\n"]
    raw.close()
    c = imap.client()  # imaplib speaks IMAP4rev1 and gets it
    ok(c.select("INBOX"))
    assert ok(c.search(None, "ALL")) == [b"1 2 3"]
    c.logout()
