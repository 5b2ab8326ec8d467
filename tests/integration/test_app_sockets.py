"""Listening sockets made by app.bind_listener."""

from __future__ import annotations

import asyncio
import socket

from mailhaven import app
from mailhaven.config import ListenerConfig


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
