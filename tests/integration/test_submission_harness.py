"""Harness for the submission tests: real "submission" (STARTTLS) and "submissions" (implicit TLS)
listeners on 127.0.0.1, built by app.build_context (real store, directory, limits, TLS, resolver on
the test DNS server) with a running QueueManager, plus a remote MX for "remote.test": a
tests/smtp_peer.SmtpPeer on 127.0.0.6 (the test DNS server answers its MX and A records), and a
DKIM key for example.test published in the test DNS.

Used by tests/integration/test_submission*.py: they bind the fixture with `submission =
harness.submission` (a plain import would trip ruff's F811).

    async def test_x(submission):
        server = await submission()                          # or submission(auth={...}, smtp={...})
        async with server.raw("submission") as c:            # raw client, STARTTLS done: c.starttls()
            ...
        async with server.session("submissions", login=ALICE) as c:   # raw client, TLS + AUTH done
            ...
        server.messages(BOB)                                 # delivered to the store (INBOX)
        await server.peer.wait_messages(1)                   # arrived at the remote MX
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app
from mailhaven.auth.passwords import hash_password
from mailhaven.auth.users import UsersFile
from mailhaven.policy import dkim
from mailhaven.queue.manager import QueueManager
from mailhaven.smtp.server import create_submission_server
from tests.dnsserver import DnsServer
from tests.integration.test_mx_harness import RawClient, maildir_messages
from tests.smtp_peer import SmtpPeer, shared_port

DOMAIN = "example.test"
ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
SALES = "sales@example.test"  # alias -> alice
TEAM = "team@example.test"  # alias -> alice, bob
PASSWORD = "secret"
REMOTE = "remote.test"
REMOTE_IP = "127.0.0.6"
SELECTOR = "mh1"


@pytest.fixture(scope="session")
def dkim_rsa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(key file, TXT record) of a 2048-bit RSA DKIM key, made once per session."""
    pem, txt = dkim.generate_rsa(2048)
    path = tmp_path_factory.mktemp("dkim") / "example.test.mh1.key"
    path.write_bytes(pem)
    path.chmod(0o600)
    return path, txt


def plain(login: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{login}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def message(sender: str = ALICE, to: str = BOB, subject: str = "hello", body: str = "Hello.\r\n",
            extra: str = "") -> bytes:
    """A message with From/To/Subject and no Message-ID or Date (the server adds them)."""
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}\r\n{body}".encode()


class TlsRawClient(RawClient):
    async def starttls(self, context: ssl.SSLContext) -> list[str]:
        reply = await self.cmd("STARTTLS")
        assert reply and reply[0].startswith("220"), reply
        await self.writer.start_tls(context, server_hostname="localhost")
        return reply

    async def login(self, login: str = ALICE, password: str = PASSWORD) -> list[str]:
        return await self.cmd(f"AUTH PLAIN {plain(login, password)}")

    async def transaction(self, sender: str, rcpts: list[str], data: bytes) -> list[list[str]]:
        """MAIL, RCPT..., DATA and the message; every reply (stops at the first refusal of MAIL/DATA)."""
        from tests.integration.test_mx_harness import dot_stuff

        out = [await self.cmd(f"MAIL FROM:<{sender}>")]
        if not out[-1][0].startswith("250"):
            return out
        for r in rcpts:
            out.append(await self.cmd(f"RCPT TO:<{r}>"))
        out.append(await self.cmd("DATA"))
        if out[-1][0].startswith("354"):
            out.append(await self.cmd(dot_stuff(data) + b"."))
        return out


class SubmissionServer:
    def __init__(self, ctx: Any, ports: dict[str, int], peer: SmtpPeer, client_tls: ssl.SSLContext) -> None:
        self.ctx, self.ports, self.peer, self.client_tls = ctx, ports, peer, client_tls

    @property
    def mail_root(self) -> Path:
        return Path(self.ctx.config.mail_root)

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        return maildir_messages(self.mail_root, user, folder)

    @contextlib.asynccontextmanager
    async def raw(self, listener: str = "submission", *, greet: bool = True) -> AsyncIterator[TlsRawClient]:
        """A raw client; on "submissions" TLS is up from the start (server name "localhost")."""
        implicit = self.ctx.config.listeners[listener].tls == "implicit"
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.ports[listener], limit=2**20,
            ssl=self.client_tls if implicit else None, server_hostname="localhost" if implicit else None)
        client = TlsRawClient(reader, writer)
        try:
            if greet:
                banner = await client.reply()
                assert banner and banner[0].startswith("220 "), banner
            yield client
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def session(self, listener: str = "submission", *, login: str | None = ALICE,
                      password: str = PASSWORD) -> AsyncIterator[TlsRawClient]:
        """EHLO, STARTTLS where needed, EHLO again and AUTH PLAIN (when `login`)."""
        async with self.raw(listener) as c:
            await c.cmd("EHLO client.example")
            if self.ctx.config.listeners[listener].tls == "starttls":
                await c.starttls(self.client_tls)
                await c.cmd("EHLO client.example")
            if login is not None:
                reply = await c.login(login, password)
                assert reply[0].startswith("235 2.7.0"), reply
            yield c


SubmissionFactory = Callable[..., Awaitable[SubmissionServer]]


@pytest.fixture
async def submission(make_config: Callable[..., Any], dns_server: DnsServer, dns_nameserver: str,
                     dkim_rsa: tuple[Path, str], client_ssl_context: ssl.SSLContext) -> AsyncIterator[SubmissionFactory]:
    """Factory: `await submission(submission_listener={...}, submissions_listener={...}, no_queue=True,
    **config_overrides)`."""
    started: list[tuple[Any, list[asyncio.AbstractServer], asyncio.Task[None] | None, SmtpPeer]] = []

    async def start(*, submission_listener: dict[str, Any] | None = None,
                    submissions_listener: dict[str, Any] | None = None, no_queue: bool = False,
                    **overrides: Any) -> SubmissionServer:
        peer = await SmtpPeer(REMOTE_IP, shared_port(REMOTE_IP), hostname="mx.remote.test").start()
        dns_server.add(REMOTE, "MX", "10 mx.remote.test.")
        dns_server.add("mx.remote.test", "A", REMOTE_IP)
        dns_server.add(f"{SELECTOR}._domainkey.{DOMAIN}", "TXT", dkim_rsa[1])
        overrides.setdefault("dns", {"nameservers": [dns_nameserver], "timeout": 1.0})
        overrides.setdefault("hostname", "mail.example.test")
        queue = {"remote_port": peer.port, "retry_schedule": ["1s"], **overrides.pop("queue", {})}
        auth = {"allow_plaintext_loopback": False, **overrides.pop("auth", {})}
        domains = {DOMAIN: {"dkim_key": str(dkim_rsa[0]), "dkim_selector": SELECTOR}}
        domains.update(overrides.pop("domains", {}))
        # The ports in the config are never bound (the sockets below are): fixed, distinct values.
        cfg = make_config({"submission": {"tls": "starttls", "port": 10587, **(submission_listener or {})}},
                          {"submissions": {"tls": "implicit", "port": 10465, **(submissions_listener or {})}},
                          queue=queue, auth=auth, domains=domains, **overrides)
        with UsersFile.edit(cfg.users_file) as uf:
            if CAROL not in uf.list_users():
                uf.add_user(CAROL, hash_password(PASSWORD))
                uf.add_alias(SALES, [ALICE])
                uf.add_alias(TEAM, [ALICE, BOB])
                uf.add_alias(f"postmaster@{DOMAIN}", [ALICE])
        ctx = app.build_context(cfg)
        await ctx.store.start()
        task: asyncio.Task[None] | None = None
        if not no_queue:
            manager = QueueManager(ctx)
            ctx.queue = manager
            task = asyncio.create_task(manager.run())
        servers: list[asyncio.AbstractServer] = []
        ports: dict[str, int] = {}
        started.append((ctx, servers, task, peer))
        for name in ("submission", "submissions"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.setblocking(False)
            servers.append(await create_submission_server(ctx, name, cfg.listeners[name], sock))
            ports[name] = sock.getsockname()[1]
        return SubmissionServer(ctx, ports, peer, client_ssl_context)

    yield start
    for ctx, servers, task, peer in started:
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        if task is not None:
            ctx.queue.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        await peer.stop()
        with contextlib.suppress(Exception):
            await ctx.store.close()
