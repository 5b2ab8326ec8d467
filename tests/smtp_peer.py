"""A scriptable SMTP server playing the remote side of outbound delivery in tests.

Built on aiosmtpd (the real protocol engine), served on the test's own event loop. Each reply can be
scripted per stage, in order: the first MAIL gets the first scripted MAIL reply, and so on; when a
stage's script runs out the answer is 250. Everything received is recorded.

    peer = SmtpPeer("127.0.0.2", port, tls_context=server_ctx)   # tls_context -> offers STARTTLS
    await peer.start()
    peer.script_greeting("421 4.3.2 not now")        # next connections: this greeting, then close
    peer.script_mail("451 4.3.0 busy")               # next MAIL FROM
    peer.script_rcpt("bob@b.test", "550 5.1.1 no")   # next RCPT TO:<bob@b.test>
    peer.script_data("452 4.3.1 full", "250 OK")     # next two DATA ends
    peer.hold_data()  /  peer.release_data()         # stall after the message arrived, before replying
    peer.offers_dsn = True                           # EHLO says DSN; RET/ENVID/NOTIFY/ORCPT recorded in dsn_params
    peer.offers_requiretls = True                    # EHLO (inside TLS) says REQUIRETLS; MAIL's kept in mail_options
    await peer.wait_messages(1)                      # peer.messages: [Received(...)]
    await peer.stop()
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    mail_options: list[str] = field(default_factory=list)


class _Server(SMTP):
    def __init__(self, peer: SmtpPeer, **kwargs: Any) -> None:
        super().__init__(peer, **kwargs)
        self._peer = peer

    async def _handle_client(self) -> None:
        self._peer.connections += 1
        if self._peer.greetings:
            await self.push(self._peer.greetings.popleft())
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    # DSN (RFC 3461) when the peer offers it: aiosmtpd knows no such parameters, so they are taken
    # off the argument (and recorded) before it parses the rest.
    async def smtp_MAIL(self, arg: str) -> None:
        arg = self._peer.take_dsn(arg)
        if self._peer.offers_requiretls and arg and " REQUIRETLS" in arg.upper():
            arg = " ".join(w for w in arg.split(" ") if w.upper() != "REQUIRETLS")
            self._peer.requiretls_seen += 1
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str) -> None:
        await super().smtp_RCPT(self._peer.take_dsn(arg))


class SmtpPeer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tls_context: ssl.SSLContext | None = None,
                 hostname: str = "peer.test") -> None:
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.hostname = hostname
        self.messages: list[Received] = []
        self.offers_dsn = False
        self.offers_requiretls = False
        self.dsn_params: list[str] = []  # as sent, in order
        self.requiretls_seen = 0  # MAIL commands that carried REQUIRETLS (offers_requiretls)
        self.events: list[tuple[str, str]] = []  # ("MAIL", addr) ("RCPT", addr) ("DATA", "") in order
        self.connections = 0
        self.greetings: deque[str] = deque()
        self._mail: deque[str] = deque()
        self._rcpt: dict[str, deque[str]] = {}
        self._data: deque[str] = deque()
        self._gate: asyncio.Event | None = None
        self.data_arrived = asyncio.Event()  # set whenever a message body has been read
        self._server: asyncio.AbstractServer | None = None
        self._changed = asyncio.Event()

    # -- script --
    def script_greeting(self, *replies: str) -> None:
        self.greetings.extend(replies)

    def script_mail(self, *replies: str) -> None:
        self._mail.extend(replies)

    def script_rcpt(self, address: str, *replies: str) -> None:
        self._rcpt.setdefault(address.lower(), deque()).extend(replies)

    def script_data(self, *replies: str) -> None:
        self._data.extend(replies)

    def hold_data(self) -> None:
        self._gate = asyncio.Event()

    def release_data(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    # -- lifecycle --
    async def start(self) -> SmtpPeer:
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            return _Server(self, hostname=self.hostname, tls_context=self.tls_context, enable_SMTPUTF8=True,
                           require_starttls=False, data_size_limit=None, timeout=30, loop=loop)

        self._server = await loop.create_server(factory, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.release_data()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def wait_messages(self, n: int, seconds: float = 10.0) -> list[Received]:
        async with asyncio.timeout(seconds):
            while len(self.messages) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.messages

    def recipients_received(self) -> list[str]:
        return [r for m in self.messages for r in m.rcpt_tos]

    def take_dsn(self, arg: str) -> str:
        if not self.offers_dsn or not arg:
            return arg
        kept = []
        for word in arg.split(" "):
            if word.split("=", 1)[0].upper() in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                self.dsn_params.append(word)
            else:
                kept.append(word)
        return " ".join(kept)

    # -- aiosmtpd hooks --
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.offers_dsn:
            responses.insert(-1, "250-DSN")
        if self.offers_requiretls and session.ssl is not None:
            responses.insert(-1, "250-REQUIRETLS")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        self.events.append(("MAIL", address))
        if self._mail:
            reply = self._mail.popleft()
            if not reply.startswith("2"):
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        self.events.append(("RCPT", address))
        script = self._rcpt.get(address.lower())
        if script:
            reply = script.popleft()
            if not reply.startswith("2"):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.events.append(("DATA", ""))
        self.data_arrived.set()
        gate = self._gate
        if gate is not None:
            await gate.wait()
        if server.transport is None or server.transport.is_closing():
            # The client went away while we held the reply: it never saw an acceptance.
            self.events.append(("LOST", ""))
            return "421 4.4.2 connection lost"
        reply = self._data.popleft() if self._data else "250 2.0.0 queued"
        if reply.startswith("2"):
            content = envelope.original_content or b""
            self.messages.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), content,
                                          session.ssl is not None, list(envelope.mail_options)))
            self._changed.set()
        return reply


# --- helpers for queue and delivery tests ------------------------------------------------------------

def shared_port(*hosts: str) -> int:
    """A TCP port free on every one of `hosts` right now (remote MX hosts all share
    config.queue.remote_port, so peers on 127.0.0.2, 127.0.0.3 ... must use the same port)."""
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        ok = True
        for h in hosts[1:]:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no shared free port")


def server_tls_context(cert: Any, key: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def cert_files(folder: Any, *names: str, ca: Any = None) -> tuple[Any, Any]:
    """(cert_path, key_path) in `folder` for `names`: issued by `ca` (a trustme.CA), or self-signed
    when `ca` is None. For peers playing MX hosts whose certificate is checked."""
    from pathlib import Path

    from mailhaven.tls import make_self_signed

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "-".join(n.replace("*", "star") for n in names) + ("-ca" if ca is not None else "-self")
    cert, key = folder / f"{stem}.crt", folder / f"{stem}.key"
    if ca is None:
        make_self_signed(cert, key, names)
    else:
        _issue(ca, names, cert, key)
    return cert, key


def _issue(ca: Any, names: tuple[str, ...], cert_path: Any, key_path: Any) -> None:
    """A leaf certificate for `names` signed by the trustme CA, built with cryptography because
    trustme refuses names like "mx.*.test" (which the tests need, to see them refused)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                       critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


async def until(predicate: Any, seconds: float = 10.0, interval: float = 0.02) -> Any:
    """Poll `predicate()` (sync or async) until it is truthy; returns its value. TimeoutError after
    `seconds` (for state on disk or in other processes, which has no event to wait on)."""
    import inspect
    import time

    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(interval)


SMTP_SINK = "/usr/sbin/smtp-sink"


class SmtpSink:
    """Postfix's smtp-sink on host:port (a fast SMTP server that accepts everything). With
    `dump_dir`, each message is written to a file there (the folder must be writable by `nobody`
    when running as root: smtp-sink drops privileges)."""

    def __init__(self, host: str, port: int, *, dump_dir: Any = None, hostname: str = "smtp-sink",
                 backlog: int = 256) -> None:
        import os
        import shutil

        self.host, self.port = host, port
        exe = shutil.which("smtp-sink") or SMTP_SINK
        self.args = [exe, "-h", hostname]
        if dump_dir is not None:
            self.args += ["-d", f"{dump_dir}/%H%M%S."]
        if os.geteuid() == 0:
            self.args += ["-u", "nobody"]
        self.args += [f"{host}:{port}", str(backlog)]
        self.proc: Any = None

    @staticmethod
    def available() -> bool:
        import os
        import shutil

        return bool(shutil.which("smtp-sink")) or os.path.exists(SMTP_SINK)

    def start(self) -> SmtpSink:
        import socket
        import subprocess
        import time

        self.proc = subprocess.Popen(self.args)
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("smtp-sink did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
