"""Real POP3 clients (Debian's fetchmail and getmail6) downloading mail from our server, over TLS
(STLS on the plain port, implicit TLS on pop3s) and plain loopback, keeping or deleting on the
server; the delivered files are compared with what the store holds."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_base import PASSWORD
from tests.integration.test_pop3_server import (
    ALICE,
    Pop3Harness,
    harness_factory,
    make_message,
)


@pytest.fixture
def pop3_factory(make_config: Callable[..., Any]) -> Iterator[Callable[..., Pop3Harness]]:
    yield from harness_factory(make_config)

pytestmark = pytest.mark.slow

FETCHMAIL = shutil.which("fetchmail")
GETMAIL = shutil.which("getmail")


def _norm(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def assert_delivered(delivered: list[bytes], originals: list[bytes]) -> None:
    """Each original arrived once, whole (clients add a Received/Delivered-To header on top)."""
    assert len(delivered) == len(originals)
    remaining = [_norm(o) for o in originals]
    for got in delivered:
        got_n = _norm(got)
        match = [o for o in remaining if got_n.endswith(o)]
        assert match, f"delivered message is not one of the originals:\n{got_n[:500]!r}"
        remaining.remove(match[0])
    assert not remaining


def originals_of(h: Pop3Harness) -> list[bytes]:
    return [h.read(uid) for uid in h.uids()]


# --- fetchmail -------------------------------------------------------------------------------------


def run_fetchmail(tmp: Path, h: Pop3Harness, *, listener: str, keep: bool, tls_files: tuple[Path, Path],
                  ca_file: Path) -> tuple[int, list[bytes], str]:
    out = tmp / "fetched"
    out.mkdir(exist_ok=True)
    home = tmp / "fetchmailhome"
    home.mkdir(exist_ok=True)
    if listener == "pop3s":
        tls = f'ssl sslcertck sslcertfile "{ca_file}" sslcommonname "localhost"'
    elif listener == "pop3":
        tls = f'sslproto "tls1.2+" sslcertck sslcertfile "{ca_file}" sslcommonname "localhost"'  # STLS required
    else:
        tls = 'sslproto ""'  # plain loopback, no STLS
    port = h.ports["pop3s" if listener == "pop3s" else "pop3"]
    rc = home / "fetchmailrc"
    rc.write_text(
        f'set no bouncemail\n'
        f'poll 127.0.0.1 with proto POP3 port {port} uidl\n'
        f'  user "{ALICE}" there with password "{PASSWORD}" is "root" here\n'
        f'  options {"keep" if keep else "nokeep"} fetchall {tls}\n'
        f'  mda "cat > $(mktemp {out}/msg.XXXXXX)"\n')
    rc.chmod(0o600)
    before = set(out.iterdir())
    env = {**os.environ, "FETCHMAILHOME": str(home), "HOME": str(home)}
    p = subprocess.run([FETCHMAIL, "-f", str(rc), "-v", "--nodetach", "--nosyslog"],
                       env=env, capture_output=True, text=True, timeout=60)
    new = sorted(set(out.iterdir()) - before)
    return p.returncode, [f.read_bytes() for f in new], p.stdout + p.stderr


@pytest.fixture
def tls_files(tls_ca: Any, tmp_path: Path) -> tuple[Path, Path]:
    """Like the base fixture, plus a subject CN: fetchmail insists on one ("Server name not
    specified in certificate!") even when the subjectAltName matches."""
    cert = tls_ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    cert_path, key_path = tmp_path / "tls-cert.pem", tmp_path / "tls-key.pem"
    cert_path.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture
def ca_file(tls_ca: object, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))  # type: ignore[attr-defined]
    return path


@pytest.mark.skipif(FETCHMAIL is None, reason="fetchmail not installed")
@pytest.mark.parametrize("listener", ["pop3", "pop3s", "plain"])
def test_fetchmail_keep_downloads_everything_and_leaves_it(
        pop3_factory: Callable[..., Pop3Harness], tmp_path: Path, tls_files: tuple[Path, Path],
        ca_file: Path, listener: str) -> None:
    h = pop3_factory()
    for n in range(1, 5):
        h.deliver(make_message(n, extra=b".dot-started line\r\n..two dots\r\n" if n == 2 else b""))
    originals = originals_of(h)
    rc, delivered, log = run_fetchmail(tmp_path, h, listener=listener, keep=True,
                                       tls_files=tls_files, ca_file=ca_file)
    assert rc == 0, log
    assert_delivered(delivered, originals)
    if listener != "plain":
        assert "STLS" in log or listener == "pop3s", log
    assert len(h.uids()) == 4  # --keep: nothing deleted on the server


@pytest.mark.skipif(FETCHMAIL is None, reason="fetchmail not installed")
@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_fetchmail_default_deletes_downloaded_mail_on_server(
        pop3_factory: Callable[..., Pop3Harness], tmp_path: Path, tls_files: tuple[Path, Path],
        ca_file: Path, listener: str) -> None:
    h = pop3_factory()
    for n in range(1, 4):
        h.deliver(make_message(n, body_lines=200))
    originals = originals_of(h)
    rc, delivered, log = run_fetchmail(tmp_path, h, listener=listener, keep=False,
                                       tls_files=tls_files, ca_file=ca_file)
    assert rc == 0, log
    assert_delivered(delivered, originals)
    assert h.uids() == [] and h.files() == []
    rc, delivered, log = run_fetchmail(tmp_path, h, listener=listener, keep=False,
                                       tls_files=tls_files, ca_file=ca_file)
    assert rc == 1 and delivered == [], log  # 1 = no mail


# --- getmail6 --------------------------------------------------------------------------------------


def run_getmail(tmp: Path, h: Pop3Harness, *, ssl: bool, delete: bool, ca_file: Path) -> tuple[int, list[bytes], str]:
    gdir = tmp / "getmail"
    out = tmp / "gm-delivered"
    out.mkdir(exist_ok=True)
    gdir.mkdir(exist_ok=True)
    retriever = (f"type = SimplePOP3SSLRetriever\nport = {h.ports['pop3s']}\nca_certs = {ca_file}\n"
                 f"ssl_cert_hostname = localhost\n"
                 if ssl else f"type = SimplePOP3Retriever\nport = {h.ports['pop3']}\n")
    rc = gdir / "getmailrc"
    # An external MDA, not getmail's Maildir destination: that one refuses to run as root.
    rc.write_text(
        "[retriever]\n" + retriever
        + f"server = 127.0.0.1\nusername = {ALICE}\npassword = {PASSWORD}\n\n"
        f"[destination]\ntype = MDA_external\npath = /bin/sh\n"
        f"arguments = (\"-c\", \"cat > $(mktemp {out}/msg.XXXXXX)\")\nallow_root_commands = true\n\n"
        f"[options]\ndelete = {'true' if delete else 'false'}\nread_all = false\nverbose = 2\n")
    before = set(out.iterdir())
    p = subprocess.run([GETMAIL, f"--getmaildir={gdir}", f"--rcfile={rc}"],
                       capture_output=True, text=True, timeout=60)
    new = sorted(set(out.iterdir()) - before)
    return p.returncode, [f.read_bytes() for f in new], p.stdout + p.stderr


@pytest.mark.skipif(GETMAIL is None, reason="getmail not installed")
@pytest.mark.parametrize("use_ssl", [True, False], ids=["pop3s", "plain-loopback"])
def test_getmail_without_delete_fetches_new_mail_once(
        pop3_factory: Callable[..., Pop3Harness], tmp_path: Path, ca_file: Path, use_ssl: bool) -> None:
    h = pop3_factory()
    for n in range(1, 4):
        h.deliver(make_message(n))
    originals = originals_of(h)
    rc, delivered, log = run_getmail(tmp_path, h, ssl=use_ssl, delete=False, ca_file=ca_file)
    assert rc == 0, log
    assert_delivered(delivered, originals)
    assert len(h.uids()) == 3
    # getmail remembers UIDLs: a second run fetches only the message that arrived since.
    h.deliver(make_message(4, extra=b".\r\n"))
    rc, delivered, log = run_getmail(tmp_path, h, ssl=use_ssl, delete=False, ca_file=ca_file)
    assert rc == 0, log
    assert_delivered(delivered, [h.read(h.uids()[-1])])
    assert len(h.uids()) == 4


@pytest.mark.skipif(GETMAIL is None, reason="getmail not installed")
@pytest.mark.parametrize("use_ssl", [True, False], ids=["pop3s", "plain-loopback"])
def test_getmail_with_delete_empties_the_mailbox(
        pop3_factory: Callable[..., Pop3Harness], tmp_path: Path, ca_file: Path, use_ssl: bool) -> None:
    h = pop3_factory()
    for n in range(1, 4):
        h.deliver(make_message(n, body_lines=50))
    originals = originals_of(h)
    rc, delivered, log = run_getmail(tmp_path, h, ssl=use_ssl, delete=True, ca_file=ca_file)
    assert rc == 0, log
    assert_delivered(delivered, originals)
    assert h.uids() == [] and h.files() == []
