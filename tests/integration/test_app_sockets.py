"""Listening sockets made by app.bind_listener."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import subprocess

import pytest

from mailhaven import app
from mailhaven.config import Config, ListenerConfig
from tests.fixtures_server import running_app


async def test_accepted_connections_have_nagle_off() -> None:
    """Without TCP_NODELAY a client waiting for a whole multi-line reply (smtplib's EHLO) stalls ~40 ms."""
    lc = ListenerConfig(address="127.0.0.1", port=_free_port())
    sock = app.bind_listener("pop3", lc)
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class P(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            s = transport.get_extra_info("socket")
            seen.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(P, sock=sock)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", lc.port)
        assert await asyncio.wait_for(seen, 5) != 0
        writer.close()
    finally:
        server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listen_backlogs() -> dict[int, int]:
    """port -> backlog of every listening TCP socket, as the kernel reports it (`ss -ltn`: for a
    listening socket Send-Q is the backlog given to listen())."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    backlogs: dict[int, int] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "LISTEN":
            backlogs[int(fields[3].rpartition(":")[2])] = int(fields[2])
    return backlogs


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
async def test_every_listener_listens_with_the_backlog_app_py_asks_for(app_config: Config) -> None:
    """Issue 10 item 12: asyncio's create_server called listen() again with its default of 100,
    so the 511 app.py gave bind_listener was lost on every listener (IMAP, POP3 and SMTP alike)."""
    listeners = {n: dataclasses.replace(lc, max_connections=1000) for n, lc in app_config.listeners.items()}
    listeners["pop3"] = dataclasses.replace(listeners["pop3"], max_connections=50)  # the smaller one wins
    cfg = dataclasses.replace(app_config, listeners=listeners)
    async with running_app(cfg) as ctx:
        backlogs = _listen_backlogs()
        seen = {name: backlogs.get(ctx.port(name)) for name in cfg.listeners}
    assert seen == {name: (50 if name == "pop3" else 511) for name in cfg.listeners}
