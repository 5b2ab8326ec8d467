"""tls.py: server/client contexts, self-signed certificates, tls_summary, over real TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mailhaven.config import from_dict
from mailhaven.errors import ConfigError
from mailhaven.tls import client_context, make_self_signed, server_context, tls_summary


def _cfg(tmp_path: Path, cert: Path, key: Path, **tls: Any) -> Any:
    return from_dict({"data_dir": str(tmp_path), "tls": {"cert": str(cert), "key": str(key), **tls}}, tmp_path)


@pytest.fixture
async def tls_server() -> AsyncIterator[Callable[[ssl.SSLContext], Any]]:
    """Start an echo-ish TLS server on 127.0.0.1 that answers with its tls_summary()."""
    servers: list[asyncio.base_events.Server] = []

    async def start(ctx: ssl.SSLContext) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                summary = tls_summary(writer.get_extra_info("ssl_object"))
                writer.write((summary or "none").encode() + b"\r\n")
                await writer.drain()
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


async def _fetch(port: int, ctx: ssl.SSLContext, hostname: str | None = "localhost") -> str:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=hostname), 5)
    try:
        return (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    finally:
        writer.close()


async def test_self_signed_certificate_serves_a_verified_tls_connection(tmp_path: Path, tls_server: Any) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(cert, key, ["mail.example.test", "localhost"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ctx = server_context(_cfg(tmp_path, cert, key))
    assert ctx is not None
    port = await tls_server(ctx)
    verifying = client_context(verify=True, cafile=str(cert))
    line = await _fetch(port, verifying, "localhost")
    assert line.startswith(("TLSv1.2 ", "TLSv1.3 "))
    assert await _fetch(port, verifying, "127.0.0.1")  # IP SAN
    with pytest.raises(ssl.SSLCertVerificationError):
        await _fetch(port, verifying, "other.example.test")


def test_self_signed_certificate_names(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    make_self_signed(cert, key, ["mx.example.test", "192.0.2.7"])
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx.example.test"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "192.0.2.7"}


async def test_opportunistic_client_connects_without_verification(tls_files: tuple[Path, Path], tmp_path: Path,
                                                                  tls_server: Any) -> None:
    port = await tls_server(server_context(_cfg(tmp_path, *tls_files)))
    assert (await _fetch(port, client_context(verify=False), None)).startswith("TLSv1.")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _fetch(port, client_context(verify=True))  # the test CA is not in the system store


async def test_trustme_files_work_with_the_shared_client_context(tls_files: tuple[Path, Path], tmp_path: Path,
                                                                 tls_server: Any,
                                                                 client_ssl_context: ssl.SSLContext) -> None:
    port = await tls_server(server_context(_cfg(tmp_path, *tls_files)))
    assert (await _fetch(port, client_ssl_context)).startswith("TLSv1.")


async def test_min_version_13_refuses_tls12_clients(tls_files: tuple[Path, Path], tmp_path: Path,
                                                    tls_server: Any) -> None:
    port = await tls_server(server_context(_cfg(tmp_path, *tls_files, min_version="1.3")))
    old = client_context(verify=False)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _fetch(port, old, None)
    assert (await _fetch(port, client_context(verify=False), None)).startswith("TLSv1.3 ")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_server_refuses_tls11(tls_files: tuple[Path, Path], tmp_path: Path, tls_server: Any) -> None:
    port = await tls_server(server_context(_cfg(tmp_path, *tls_files)))
    ancient = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ancient.check_hostname = False
    ancient.verify_mode = ssl.CERT_NONE
    try:
        ancient.minimum_version = ssl.TLSVersion.TLSv1_1
        ancient.maximum_version = ssl.TLSVersion.TLSv1_1
        ancient.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _fetch(port, ancient, None)


def test_server_context_options(tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    ctx = server_context(_cfg(tmp_path, *tls_files))
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and all(("GCM" in n or "CHACHA20" in n) and ("ECDHE" in n or "DHE" in n) for n in names)


def test_no_certificate_means_no_context(tmp_path: Path) -> None:
    assert server_context(from_dict({"data_dir": str(tmp_path)}, tmp_path)) is None


def test_unusable_key_is_a_config_error(tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad-key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=r"^tls\.key: "):
        server_context(_cfg(tmp_path, tls_files[0], bad))
    other_cert, other_key = tmp_path / "o.pem", tmp_path / "ok.pem"
    make_self_signed(other_cert, other_key, ["localhost"])
    with pytest.raises(ConfigError, match=r"^tls\.key: "):
        server_context(_cfg(tmp_path, tls_files[0], other_key))  # key does not match the certificate


def test_tls_summary_without_tls() -> None:
    assert tls_summary(None) is None
    assert tls_summary(object()) is None


def test_a_key_that_cannot_be_parsed_is_reported_as_tls_key(tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad-key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=r"^tls\.key: .*bad-key\.pem: not a PEM private key$"):
        server_context(_cfg(tmp_path, tls_files[0], bad))


def test_a_certificate_that_cannot_be_parsed_is_reported_as_tls_cert(tls_files: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    bad = tmp_path / "bad-cert.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^tls\.cert: .*bad-cert\.pem: not a PEM certificate$"):
        server_context(_cfg(tmp_path, bad, tls_files[1]))


@pytest.mark.skipif(not Path("/usr/bin/setpriv").exists(), reason="needs setpriv to run as nobody")
def test_an_unreadable_key_is_reported_as_tls_key_by_check_config(tls_files: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    """The container case: the key belongs to root, mode 0600, and the server runs as another user."""
    import os
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root to hand files to nobody")
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as where:  # pytest's tmp_path is root's alone
        folder = Path(where)
        folder.chmod(0o755)
        cert, key = folder / "cert.pem", folder / "key.pem"
        shutil.copy(tls_files[0], cert)
        shutil.copy(tls_files[1], key)
        cert.chmod(0o644)
        key.chmod(0o600)  # root's: nobody cannot read it
        conf = folder / "mailhaven.toml"
        conf.write_text(f'data_dir = "{folder}"\nusers_file = "/dev/null"\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')
        conf.chmod(0o644)
        r = subprocess.run(["/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            sys.executable, "-c", "from mailhaven.config import load; from mailhaven.tls import "
                            f"server_context; server_context(load({str(conf)!r}))"],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert f"ConfigError: tls.key: cannot read {key}: Permission denied" in r.stderr, r.stderr
