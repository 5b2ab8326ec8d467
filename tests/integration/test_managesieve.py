"""ManageSieve (RFC 5804) on the real server, driven by real clients: sievelib's Client and Debian's
sieve-connect (both blocking: run in a thread or a subprocess while the server runs on the test's
loop), and a raw socket where a client cannot be made to misbehave."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from mailhaven.config import Config
from tests.fixtures_base import PASSWORD, free_port
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app

sievelib = pytest.importorskip("sievelib.managesieve")

ALICE = "alice@example.test"
GOOD = 'require ["fileinto"];\r\nif header :contains "subject" "x" {\r\n  fileinto "Junk";\r\n}\r\n'
BAD = 'require ["fileinto"];\r\nif header :contains "subject" {\r\n  fileinto "Junk";\r\n}\r\n'


def make_cfg(tmp_path: Path, tls_files: tuple[Path, Path], **top: Any) -> Config:
    cfg = load_test_config(app_config_file(tmp_path, tls_files, **top))
    add_user(cfg, ALICE, PASSWORD)
    return cfg


@pytest.fixture
def ca_file(tls_ca: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test CA as a PEM file; also what Python's default context trusts (sievelib's STARTTLS)."""
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    return path


def files_named(root: Path, pattern: str) -> list[Path]:
    return list(root.rglob(pattern))


def sieve_dir(cfg: Config) -> Path:
    return cfg.mail_root / "example.test" / "alice" / "sieve"


def sievelib_session(port: int, *, starttls: bool = True, ssl_: bool = False, mech: str = "PLAIN") -> Any:
    c = sievelib.Client("127.0.0.1", port)
    assert c.connect(ALICE, PASSWORD, starttls=starttls, ssl=ssl_, authmech=mech), c.errmsg
    return c


# --- sievelib -------------------------------------------------------------------------------------


async def test_sievelib_manages_scripts_over_starttls(tmp_path: Path, tls_files: tuple[Path, Path],
                                                      ca_file: Path) -> None:
    cfg = make_cfg(tmp_path, tls_files)
    async with running_app(cfg) as ctx:
        port = ctx.port("managesieve")

        def session() -> None:
            c = sievelib_session(port)
            assert "fileinto" in c.get_sieve_capabilities() and "vacation" in c.get_sieve_capabilities()
            assert c.putscript("main", GOOD)
            # RFC 5804 §2.6: a script with an error is refused, saying where
            assert not c.putscript("broken", BAD)
            assert c.errmsg.startswith(b"line 2, column"), c.errmsg
            assert c.checkscript(GOOD)
            assert not c.checkscript(BAD) and b"line 2" in c.errmsg
            assert c.putscript("other", "keep;\r\n")
            assert c.setactive("main")
            assert c.listscripts() == ("main", ["other"])
            assert c.getscript("main") == GOOD.replace("\r\n", "\n").rstrip("\n")
            # RFC 5804 §2.10: the active script cannot be deleted
            assert not c.deletescript("main") and c.errcode == b"ACTIVE"
            # RFC 5804 §2.11.1: renaming keeps it active; a taken or missing name is refused
            assert not c.renamescript("main", "other") and c.errcode == b"ALREADYEXISTS"
            assert not c.renamescript("nothere", "x") and c.errcode == b"NONEXISTENT"
            assert c.renamescript("main", "filters")
            assert c.listscripts() == ("filters", ["other"])
            assert c.deletescript("other")
            assert not c.getscript("other") and c.errcode == b"NONEXISTENT"
            assert c.havespace("new", 100)
            assert not c.havespace("new", cfg.managesieve.max_script_size + 1) and c.errcode == b"QUOTA/MAXSIZE"
            assert c.setactive("")
            assert c.listscripts() == (None, ["filters"])
            c.logout()

        await asyncio.to_thread(session)
    d = sieve_dir(cfg)
    assert sorted(p.name for p in d.iterdir()) == ["filters.sieve"]  # durable, no temporary files left
    assert (d / "filters.sieve").read_bytes() == GOOD.encode()


async def test_sievelib_login_mechanism_and_unauthenticate(tmp_path: Path, tls_files: tuple[Path, Path],
                                                           ca_file: Path) -> None:
    cfg = make_cfg(tmp_path, tls_files)
    async with running_app(cfg) as ctx:
        port = ctx.port("managesieve")

        def session() -> tuple[bytes, bytes]:
            c = sievelib_session(port, mech="LOGIN")
            assert c.putscript("a", "keep;\r\n")
            code, data, caps = c._Client__send_command("UNAUTHENTICATE", withcontent=True)
            assert code == "OK"
            code2, _ = c._Client__send_command("LISTSCRIPTS")
            c.logout()
            return caps, code2.encode()

        _, after = await asyncio.to_thread(session)
        assert after == b"NO"  # RFC 5804 §2.14.1: back to the non-authenticated state


async def test_sievelib_over_implicit_tls(tmp_path: Path, tls_files: tuple[Path, Path], ca_file: Path) -> None:
    cfg = make_cfg(tmp_path, tls_files)
    import dataclasses

    lc = dataclasses.replace(cfg.listeners["managesieve"], tls="implicit")
    cfg = dataclasses.replace(cfg, listeners={**cfg.listeners, "managesieve": lc})
    async with running_app(cfg) as ctx:
        port = ctx.port("managesieve")

        def session() -> Any:
            c = sievelib_session(port, starttls=False, ssl_=True)
            assert not c.has_tls_support()  # no STARTTLS inside TLS
            assert c.putscript("a", "keep;\r\n")
            listing = c.listscripts()
            c.logout()
            return listing

        assert await asyncio.to_thread(session) == (None, ["a"])


async def test_plaintext_allowed_on_loopback_in_dev_mode(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cfg = make_cfg(tmp_path, tls_files, auth={"allow_plaintext_loopback": True, "failure_delay": 0})
    async with running_app(cfg) as ctx:
        port = ctx.port("managesieve")

        def session() -> Any:
            c = sievelib_session(port, starttls=False)
            assert c.putscript("a", "keep;\r\n")
            c.logout()

        with pytest.warns(UserWarning):  # sievelib's own warning about an unencrypted connection
            await asyncio.to_thread(session)


async def test_logins_share_the_login_service_metrics_and_log_line(tmp_path: Path, tls_files: tuple[Path, Path],
                                                                  ca_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mailhaven import metrics

    cfg = make_cfg(tmp_path, tls_files, metrics={"address": f"127.0.0.1:{free_port()}"})
    with caplog.at_level(logging.INFO):
        async with running_app(cfg) as ctx:
            port = ctx.port("managesieve")

            def session() -> tuple[bool, bool]:
                bad = sievelib.Client("127.0.0.1", port)
                refused = bad.connect(ALICE, "wrong", starttls=True, authmech="PLAIN")
                good = sievelib_session(port)
                good.logout()
                return refused, True

            refused, _ = await asyncio.to_thread(session)
            reg = metrics.of(ctx).registry
            ok = reg.get_sample_value("mailhaven_logins_total", {"proto": "managesieve", "result": "success"})
            failed = reg.get_sample_value("mailhaven_logins_total", {"proto": "managesieve", "result": "failure"})
            conns = reg.get_sample_value("mailhaven_connections_total", {"listener": "managesieve"})
    assert not refused
    assert (ok, failed, conns) == (1.0, 1.0, 2.0)
    failures = [getattr(r, "mh_fields", {}) for r in caplog.records if r.getMessage() == "login failed"]
    assert [(f.get("proto"), f.get("reason")) for f in failures] == [("managesieve", "bad_password")], failures


# --- sieve-connect ---------------------------------------------------------------------------------

needs_sieve_connect = pytest.mark.skipif(shutil.which("sieve-connect") is None,
                                         reason="sieve-connect not installed (apt-get install sieve-connect)")


async def sieve_connect(port: int, ca_file: Path, *args: str) -> tuple[int, str]:
    r, w = os.pipe()
    os.write(w, PASSWORD.encode() + b"\n")
    os.close(w)
    try:
        proc = await asyncio.create_subprocess_exec(
            "sieve-connect", "--server", "127.0.0.1", "--port", str(port), "--user", ALICE,
            "--passwordfd", str(r), "--tlscafile", str(ca_file), "--tlshostname", "localhost",
            "--authmech", "PLAIN", *args, pass_fds=(r,),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        os.close(r)
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace")


@needs_sieve_connect
async def test_sieve_connect_uploads_lists_downloads_activates(tmp_path: Path, tls_files: tuple[Path, Path],
                                                               ca_file: Path) -> None:
    cfg = make_cfg(tmp_path, tls_files)
    local = tmp_path / "filters.sieve"
    local.write_text(GOOD)
    bad = tmp_path / "bad.sieve"
    bad.write_text(BAD)
    async with running_app(cfg) as ctx:
        port = ctx.port("managesieve")
        rc, out = await sieve_connect(port, ca_file, "--upload", "--localsieve", str(local), "--remotesieve", "filters")
        assert rc == 0, out
        rc, out = await sieve_connect(port, ca_file, "--activate", "--remotesieve", "filters")
        assert rc == 0, out
        rc, out = await sieve_connect(port, ca_file, "--list")
        assert rc == 0 and "filters" in out and "ACTIVE" in out.upper(), out
        back = tmp_path / "back.sieve"
        rc, out = await sieve_connect(port, ca_file, "--download", "--remotesieve", "filters",
                                      "--localsieve", str(back))
        assert rc == 0, out
        assert back.read_bytes().replace(b"\r\n", b"\n") == GOOD.replace("\r\n", "\n").encode()
        rc, out = await sieve_connect(port, ca_file, "--upload", "--localsieve", str(bad), "--remotesieve", "bad")
        assert rc != 0 and "line 2, column" in out, out
        rc, out = await sieve_connect(port, ca_file, "--delete", "--remotesieve", "filters")
        assert rc != 0, out  # the active script
        rc, out = await sieve_connect(port, ca_file, "--deactivate")
        assert rc == 0, out
        rc, out = await sieve_connect(port, ca_file, "--delete", "--remotesieve", "filters")
        assert rc == 0, out
    assert not list(sieve_dir(cfg).glob("*.sieve"))


# --- raw protocol: hostile input ------------------------------------------------------------------


class Raw:
    """A blocking line client for what real clients never send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def until_status(self) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.split(b" ", 1)[0] in (b"OK", b"NO", b"BYE"):
                return lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def starttls(self, context: ssl.SSLContext) -> list[bytes]:
        self.send(b"STARTTLS\r\n")
        assert self.until_status()[-1].startswith(b"OK")
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        return self.until_status()  # RFC 5804 §2.2: capabilities again

    def login(self) -> None:
        token = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + PASSWORD.encode())
        self.send(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')
        assert self.until_status()[-1].startswith(b"OK"), "login failed"

    def close(self) -> None:
        self.sock.close()


async def raw(port: int, fn: Any) -> Any:
    def run() -> Any:
        c = Raw(port)
        try:
            return fn(c)
        finally:
            c.close()
    return await asyncio.to_thread(run)


async def test_plaintext_auth_refused_without_tls(tmp_path: Path, tls_files: tuple[Path, Path],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(tmp_path, tls_files)  # loopback, but allow_plaintext_loopback is off (production)

    def session(c: Raw) -> tuple[list[bytes], list[bytes]]:
        greeting = c.until_status()
        token = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + PASSWORD.encode())
        c.send(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\nLISTSCRIPTS\r\n')
        return greeting, c.until_status() + c.until_status()

    with caplog.at_level(logging.INFO):
        async with running_app(cfg) as ctx:
            greeting, replies = await raw(ctx.port("managesieve"), session)
    assert b'"SASL" ""' in greeting and b'"STARTTLS"' in greeting  # no mechanism offered before TLS
    assert replies[0].startswith(b"NO (ENCRYPT-NEEDED)")
    assert replies[1].startswith(b"NO")
    failed = [getattr(r, "mh_fields", {}) for r in caplog.records if r.getMessage() == "login failed"]
    assert [(f.get("proto"), f.get("reason")) for f in failed] == [("managesieve", "plaintext_refused")], failed


async def test_oversized_literal_refused_before_it_is_read(tmp_path: Path, tls_files: tuple[Path, Path],
                                                           client_ssl_context: ssl.SSLContext) -> None:
    cfg = make_cfg(tmp_path, tls_files, managesieve={"max_script_size": 1000})

    def session(c: Raw) -> list[bytes]:
        c.until_status()
        c.starttls(client_ssl_context)
        c.login()
        got = []
        # The refusal comes at once, without the client sending one octet of the script...
        c.send(b'PUTSCRIPT "big" {5000+}\r\n')
        got.append(c.until_status()[-1])
        # ... and the octets that follow are skipped, not taken for commands.
        c.send(b"NOOP\r\n" * 833 + b"xx" + b"\r\nNOOP\r\n")  # 5000 octets, the end of the command, NOOP
        got.append(c.until_status()[-1])
        # A literal no one should skip through ends the session.
        c.send(b'PUTSCRIPT "huge" {99999999999+}\r\n')
        got.append(c.until_status()[-1])
        return got

    async with running_app(cfg) as ctx:
        too_big, after, huge = await raw(ctx.port("managesieve"), session)
    assert too_big.startswith(b"NO (QUOTA/MAXSIZE)")
    assert after == b'OK "Done."'
    assert huge.startswith(b"BYE")
    assert not sieve_dir(cfg).exists() or not list(sieve_dir(cfg).iterdir())


async def test_names_that_escape_the_folder_are_refused(tmp_path: Path, tls_files: tuple[Path, Path],
                                                        client_ssl_context: ssl.SSLContext) -> None:
    cfg = make_cfg(tmp_path, tls_files)

    def session(c: Raw) -> list[bytes]:
        c.until_status()
        c.starttls(client_ssl_context)
        c.login()
        out = []
        for name in (b"../../../x", b"a/b", b"..", b".active", b"tab\\there", b"a\x01b", b""):
            c.send(b'PUTSCRIPT "' + name + b'" {6+}\r\nkeep;\n\r\n')
            out.append(c.until_status()[-1])
        c.send(b'GETSCRIPT "../../../../etc/passwd"\r\n')
        out.append(c.until_status()[-1])
        return out

    async with running_app(cfg) as ctx:
        replies = await raw(ctx.port("managesieve"), session)
    assert all(r.startswith(b"NO") for r in replies), replies
    assert replies[-1].startswith(b"NO (NONEXISTENT)")
    assert not files_named(tmp_path, "x") and not files_named(cfg.mail_root, "*.sieve")


async def test_too_many_scripts_are_refused_with_quota_maxscripts(tmp_path: Path, tls_files: tuple[Path, Path],
                                                                  client_ssl_context: ssl.SSLContext) -> None:
    cfg = make_cfg(tmp_path, tls_files, managesieve={"max_scripts": 2})

    def session(c: Raw) -> list[bytes]:
        c.until_status()
        c.starttls(client_ssl_context)
        c.login()
        out = []
        for name in (b"a", b"b", b"c", b"a"):
            c.send(b'PUTSCRIPT "' + name + b'" {5+}\r\nkeep;\r\n')
            out.append(c.until_status()[-1])
        c.send(b'HAVESPACE "d" 10\r\n')
        out.append(c.until_status()[-1])
        return out

    async with running_app(cfg) as ctx:
        replies = await raw(ctx.port("managesieve"), session)
    assert replies[0] == replies[1] == b"OK"
    assert replies[2].startswith(b"NO (QUOTA/MAXSCRIPTS)")
    assert replies[3] == b"OK"  # replacing an existing script is not a new one
    assert replies[4].startswith(b"NO (QUOTA/MAXSCRIPTS)")


async def test_garbage_gets_no_then_bye_and_never_a_traceback(tmp_path: Path, tls_files: tuple[Path, Path],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(tmp_path, tls_files, managesieve={"max_bad_commands": 5})

    def session(c: Raw) -> list[bytes]:
        c.until_status()
        out = []
        for junk in (b"\x00\xff\xfe garbage", b'"unterminated', b"{12", b"LISTSCRIPTS", b"PUTSCRIPT \"x\""):
            c.send(junk + b"\r\n")
            out.append(c.until_status()[-1])
        return out

    with caplog.at_level(logging.INFO):
        async with running_app(cfg) as ctx:
            replies = await raw(ctx.port("managesieve"), session)
    assert all(r.startswith(b"NO") for r in replies[:4]), replies
    assert replies[4].startswith(b"BYE")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_login_timeout_says_bye(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    import dataclasses

    cfg = make_cfg(tmp_path, tls_files)
    lc = dataclasses.replace(cfg.listeners["managesieve"], login_timeout=1.0)
    cfg = dataclasses.replace(cfg, listeners={**cfg.listeners, "managesieve": lc})

    def session(c: Raw) -> bytes:
        c.until_status()
        return c.until_status()[-1]  # nothing sent: the login deadline ends the session

    async with running_app(cfg) as ctx:
        assert await raw(ctx.port("managesieve"), session) == b'BYE "Login timed out."'
