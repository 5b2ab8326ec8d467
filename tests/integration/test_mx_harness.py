"""Harness for the MX tests: a real MX on 127.0.0.1 with a real store, directory, limits and TLS,
its resolver pointed at the test DNS server, plus a raw line-oriented SMTP client.

Used by tests/integration/test_mx*.py and tests/regress/test_smtp_*.py: they bind the fixture
with `mx = harness.mx` (a plain import would trip ruff's F811). It builds its own context, so it does not depend on app.py.

    async def test_x(mx):                       # default: domain example.test, users alice and bob
        server = await mx()                     # or mx(smtp={"max_recipients": 2}, mx_listener={...})
        async with server.raw() as c:           # raw SMTP client
            await c.cmd("EHLO client.example")  # -> list of reply lines
        server.messages("alice@example.test")   # delivered messages (bytes), INBOX or folder="Junk"
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mailhaven.auth.passwords import hash_password
from mailhaven.auth.users import Directory, UsersFile
from mailhaven.dns.resolver import Resolver
from mailhaven.limits import Limits
from mailhaven.policy import rspamd
from mailhaven.smtp.server import create_mx_server
from mailhaven.store import Store
from mailhaven.tls import server_context

DOMAIN = "example.test"
CATCHALL_DOMAIN = "catchall.test"
ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"


def maildir_messages(mail_root: Path, user: str, folder: str = "INBOX") -> list[bytes]:
    """Messages delivered to a user's folder, read straight from the Maildir (new/ and cur/)."""
    local, _, domain = user.partition("@")
    base = mail_root / domain / local
    if folder != "INBOX":
        base = base / ("." + folder)
    files = [p for sub in ("new", "cur") if (base / sub).is_dir() for p in (base / sub).iterdir()]
    return [p.read_bytes() for p in sorted(files, key=_delivery_order)]


def _delivery_order(path: Path) -> tuple[int, ...]:
    """`<secs>.M<usec>P<pid>Q<n>`: in the order delivered (the microseconds are not zero-padded,
    so the names' own order puts M100000 before M99999 within a second)."""
    m = re.match(r"(\d+)\.M(\d+)P(\d+)Q(\d+)", path.name)
    return tuple(int(g) for g in m.groups()) if m else (1 << 62, 0, 0, 0)


def all_files(mail_root: Path) -> list[Path]:
    """Every file under the mail root that is a message or a temporary message (tmp/, new/, cur/)."""
    return [p for p in mail_root.rglob("*") if p.is_file() and p.parent.name in ("tmp", "new", "cur")]


class RawClient:
    """A line-oriented SMTP client over a real socket: send raw bytes, read whole replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def reply(self, wait: float = 10.0) -> list[str]:
        """One (possibly multi-line) reply; [] when the server closed the connection."""
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), wait)
            if not raw:
                return lines
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    async def cmd(self, line: str | bytes, wait: float = 10.0) -> list[str]:
        await self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply(wait)

    async def closed(self, wait: float = 10.0) -> bool:
        """True when the server closes the connection (EOF or reset, after any pending output) within
        `wait` seconds; False when it is still open then. TimeoutError is an OSError since Python
        3.11, so it is caught first: a timeout must never count as a close."""
        try:
            async with asyncio.timeout(wait):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except OSError:  # ConnectionResetError and friends (ssl.SSLError too): the server went away
            pass
        return True


class MxServer:
    def __init__(self, ctx: Any, server: asyncio.AbstractServer, port: int) -> None:
        self.ctx, self.server, self.port = ctx, server, port

    @property
    def mail_root(self) -> Path:
        return Path(self.ctx.config.mail_root)

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        return maildir_messages(self.mail_root, user, folder)

    @contextlib.asynccontextmanager
    async def raw(self, greet: bool = True, source: str | None = None) -> AsyncIterator[RawClient]:
        """A raw client; `source` binds its end to another loopback address (e.g. "127.0.0.2"), so
        the server sees another client IP."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=2**20,
                                                       local_addr=(source, 0) if source else None)
        client = RawClient(reader, writer)
        try:
            if greet:
                banner = await client.reply()
                assert banner and banner[0].startswith("220 "), banner
            yield client
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def send(self, sender: str, rcpts: list[str], data: bytes, *, helo: str = "client.example",
                   ehlo: bool = True) -> list[list[str]]:
        """A whole transaction over the raw client; returns each reply (MAIL, RCPT..., DATA, end)."""
        out: list[list[str]] = []
        async with self.raw() as c:
            await c.cmd(f"{'EHLO' if ehlo else 'HELO'} {helo}")
            out.append(await c.cmd(f"MAIL FROM:<{sender}>"))
            for r in rcpts:
                out.append(await c.cmd(f"RCPT TO:<{r}>"))
            out.append(await c.cmd("DATA"))
            if out[-1][0].startswith("354"):
                out.append(await c.cmd(dot_stuff(data) + b"."))
            await c.cmd("QUIT")
        return out


async def wait_until(cond: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll `cond` until true; AssertionError after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency, and a final CRLF."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    lines = data.split(b"\r\n")
    return b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)


def message(subject: str = "hello", sender: str = "sender@sender.test", to: str = ALICE,
            body: str = "Hello.\r\n", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@sender.test>\r\n{extra}\r\n{body}").encode()


MxFactory = Callable[..., Awaitable[MxServer]]


@pytest.fixture
async def mx(make_config: Callable[..., Any], dns_nameserver: str, tmp_path: Path) -> AsyncIterator[MxFactory]:
    """Factory: `await mx(**config_overrides, mx_listener={...}, store=..., limits=..., no_tls=True)`
    (no_tls: the context has no certificate loaded, ctx.tls is None)."""
    started: list[tuple[MxServer, Any]] = []

    async def start(*, mx_listener: dict[str, Any] | None = None, store: Any = None,
                    limits: Any = None, no_tls: bool = False, **overrides: Any) -> MxServer:
        listener = {"tls": "starttls", **(mx_listener or {})}
        overrides.setdefault("dns", {"nameservers": [dns_nameserver], "timeout": 1.0})
        domains = {DOMAIN: {}, CATCHALL_DOMAIN: {"catch_all": ALICE}}
        domains.update(overrides.pop("domains", {}))
        cfg = make_config({"mx": listener}, domains=domains, **overrides)
        with UsersFile.edit(cfg.users_file) as uf:
            if CAROL not in uf.list_users():
                uf.add_user(CAROL, hash_password("secret"))
                uf.add_alias("team@example.test", [ALICE, BOB])
                uf.add_alias("postmaster@example.test", [ALICE])
        the_store = store or Store(cfg.mail_root, hostname=cfg.hostname)
        await the_store.start()
        ctx = SimpleNamespace(
            config=cfg, store=the_store, directory=Directory.load(cfg),
            resolver=Resolver(cfg.dns.nameservers, cfg.dns.timeout),
            limits=limits or Limits(cfg), tls=None if no_tls else server_context(cfg),
            spam=rspamd.from_config(cfg.spam),  # None unless the test sets spam.rspamd_url
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        server = await create_mx_server(ctx, "mx", cfg.listeners["mx"], sock)
        mxs = MxServer(ctx, server, sock.getsockname()[1])
        started.append((mxs, the_store))
        return mxs

    yield start
    for mxs, the_store in started:
        mxs.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(mxs.server.wait_closed(), 5)
        with contextlib.suppress(Exception):
            await the_store.close()
        if mxs.ctx.spam is not None:
            await mxs.ctx.spam.close()
        if getattr(mxs.ctx, "greylist", None) is not None:
            await mxs.ctx.greylist.close()


# --- the harness itself ----------------------------------------------------------------------------


async def test_closed_is_false_while_the_server_keeps_the_connection_open(mx: MxFactory) -> None:
    # The disconnect checks of the other tests rest on this: a timeout is not a close.
    server = await mx()
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        assert await c.closed(wait=0.3) is False
        assert (await c.cmd("NOOP"))[0].startswith("250")  # still open, still in step
        assert (await c.cmd("QUIT"))[0].startswith("221")
        assert await c.closed(wait=5) is True
