"""Listener sockets, with or without the PROXY protocol in front (every listener: IMAP, POP3,
ManageSieve through lineproto.py, SMTP through smtp/server.py).

Owns: `create_server` (asyncio's, with implicit TLS, the listen backlog and, when the listener has
proxy_protocol, the header first); on a proxy_protocol listener, per connection: refusing a peer
outside proxy_trusted, reading the header within proxy_timeout and never one octet past it (a
BufferedProtocol whose buffer is `HeaderReader.wanted()` long), then the implicit-TLS handshake
(after the header, as HAProxy sends it), then handing the transport to the listener's own protocol
with the client address the header gave; `ProxiedPeer`, the one place a connection's client
address comes from (the header's, else the socket's peer). (lineproto.py and
smtp/submission.py deny such a listener the plaintext-login exception of loopback listeners.)
Does not own: the header format (proxyproto.py), the protocols, TLS contexts (tls.py).

Why not aiosmtpd's own PROXY support (`SMTP(proxy_protocol_timeout=...)`, aiosmtpd 1.4.6): it reads
the header inside the session, after `connection_made`, where our connection limits and log context
have already used the proxy's address; it has no list of trusted proxies; it accepts up to 64 KiB
of v2 TLVs; and on an implicit-TLS listener (465) asyncio's TLS layer would get the header as the
start of a handshake. So every listener, SMTP included, uses this one layer, and the protocols
never see the header.

One line is logged per refused connection (untrusted peer, malformed, oversized or late header, a
failed TLS handshake after it), at INFO (an untrusted address at most once a minute per listener,
then at DEBUG): no traceback, and the client gets no reply (it is a proxy,
or someone who should not be talking to this port).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable

from mailhaven.config import ListenerConfig
from mailhaven.netaddr import client_ip
from mailhaven.proxyproto import HeaderReader, ProxyError

log = logging.getLogger("mailhaven.proxy")

TLS_HANDSHAKE_TIMEOUT = 30.0
UNTRUSTED_LOG_INTERVAL = 60.0  # seconds; at most one INFO line per untrusted address this often
MAX_UNTRUSTED_TRACKED = 10_000
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxiedPeer:
    """Mixed into a listener's protocol: the client address, set from the PROXY header before
    `connection_made` (None: no header, or a LOCAL/UNKNOWN one)."""

    client_address: tuple[str, int] | None = None

    def peer_address(self, transport: asyncio.BaseTransport) -> tuple[str, int] | None:
        """The client's (address, port): the PROXY header's, else the socket's peer."""
        if self.client_address is not None:
            return self.client_address
        peer = transport.get_extra_info("peername")
        return (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None


def _networks(lc: ListenerConfig) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in lc.proxy_trusted)


def trusted(ip: str, networks: tuple[Network, ...]) -> bool:
    """Whether a peer address is in proxy_trusted (an IPv4-mapped IPv6 peer counts as its IPv4)."""
    try:
        addr = client_ip(ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


class _HeaderFirst(asyncio.BufferedProtocol):
    """A proxy_protocol connection until its header is read (and, for implicit TLS, its handshake
    done); then the listener's protocol takes the transport."""

    def __init__(self, server: _ProxyServer) -> None:
        self.server = server
        self.reader = HeaderReader()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._done = False
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not trusted(self.peer, self.server.networks):
            quiet = not self.server.log_untrusted(self.peer)
            self._refuse("peer not in proxy_trusted", logging.DEBUG if quiet else logging.INFO)
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.lc.proxy_timeout, self._refuse, "no PROXY header in time")

    def get_buffer(self, sizehint: int) -> bytearray:
        # Exactly what the header may still need: the first octet after it stays in the socket.
        self._buf = bytearray(max(1, self.reader.wanted()))
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        if self._done:
            return
        self._received += nbytes
        try:
            header = self.reader.feed(bytes(self._buf[:nbytes]))
        except ProxyError as e:
            self._refuse(f"bad PROXY header: {e}")
            return
        if header is None:
            return
        self._stop_timer()
        self._done = True
        assert self.transport is not None and not self.reader.leftover
        self.transport.pause_reading()
        if self.server.ssl is None:
            self.server.hand_over(self.transport, header.client, ())
        else:
            self.server.start_tls(self.transport, header.client, self.peer)

    def eof_received(self) -> bool | None:
        if not self._done:  # after nothing at all (a TCP health check): logged at DEBUG only
            self._refuse("closed before the PROXY header", logging.INFO if self._received else logging.DEBUG)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done:
            self._refuse(f"connection lost before the PROXY header ({exc})", logging.DEBUG)
        self._stop_timer()
        self._done = True

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, why: str, level: int = logging.INFO) -> None:
        self._stop_timer()
        if self._done:
            return
        self._done = True
        log.log(level, "listener %s: connection from %s closed: %s", self.server.name, self.peer, why)
        if self.transport is not None:
            self.transport.abort()


class _ProxyServer:
    """What the connections of one proxy_protocol listener share."""

    def __init__(self, name: str, lc: ListenerConfig, factory: Callable[[], asyncio.BaseProtocol],
                 ssl_ctx: ssl.SSLContext | None) -> None:
        self.name = name
        self.lc = lc
        self.networks = _networks(lc)
        self.factory = factory
        self.ssl = ssl_ctx
        self.tasks: set[asyncio.Task[None]] = set()
        self._untrusted: dict[str, float] = {}  # peer -> when its refusal was last logged at INFO

    def log_untrusted(self, peer: str) -> bool:
        """Whether to log this untrusted peer's refusal at INFO: once a minute per address (a
        scanner must not fill the log), within bounded memory."""
        now = time.monotonic()
        last = self._untrusted.get(peer)
        if last is not None and now - last < UNTRUSTED_LOG_INTERVAL:
            return False
        if len(self._untrusted) >= MAX_UNTRUSTED_TRACKED:
            self._untrusted.clear()
        self._untrusted[peer] = now
        return True

    def hand_over(self, transport: asyncio.Transport, client: tuple[str, int] | None, data: Iterable[bytes]) -> None:
        """The listener's protocol, made now, takes the (paused) transport with `client` as its
        client address, then any input already decrypted, then reading resumes. (Made only now, it
        never sees connection_lost before its connection_made.)"""
        protocol = self.factory()
        assert isinstance(protocol, ProxiedPeer), "a listener's protocol takes its client address from ProxiedPeer"
        assert isinstance(protocol, asyncio.Protocol)
        protocol.client_address = client
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        for chunk in data:
            if transport.is_closing():
                return
            protocol.data_received(chunk)
        transport.resume_reading()

    def start_tls(self, transport: asyncio.Transport, client: tuple[str, int] | None, peer: str) -> None:
        task = asyncio.get_running_loop().create_task(self._tls(transport, client, peer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _tls(self, transport: asyncio.Transport, client: tuple[str, int] | None, peer: str) -> None:
        """Implicit TLS after the header; the listener's protocol is made once it succeeded."""
        assert self.ssl is not None
        waiting = _Handshake()
        # A LOCAL (v2) or UNKNOWN (v1) header is the balancer's own connection: its health check
        # (HAProxy's `check` on a send-proxy-v2 server) closes after the header, every few seconds
        # per node and listener: DEBUG, not a line each time in the log.
        level = logging.DEBUG if client is None else logging.INFO
        try:
            new = await asyncio.get_running_loop().start_tls(transport, waiting, self.ssl, server_side=True,
                                                             ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, OSError) as e:  # not TLS, a timeout, a reset: the client's doing
            log.log(level, "listener %s: connection from %s closed: TLS handshake failed: %s", self.name, peer, e)
            transport.abort()
            return
        if new is None or new.is_closing() or waiting.closed:
            log.log(level, "listener %s: connection from %s closed: TLS handshake failed: connection lost",
                    self.name, peer)
            transport.abort()
            return
        new.pause_reading()
        self.hand_over(new, client, waiting.data)


class _Handshake(asyncio.Protocol):
    """The application side of an implicit-TLS connection between its handshake and the listener's
    protocol taking it: keeps what arrives meanwhile."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.closed = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool | None:
        self.closed = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


async def create_server(name: str, lc: ListenerConfig, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol],
                        ssl_ctx: ssl.SSLContext | None, backlog: int) -> asyncio.AbstractServer:
    """Serve `factory`'s protocol on an already bound, listening socket: with implicit TLS when
    `ssl_ctx` is given, after a PROXY header when lc.proxy_protocol."""
    loop = asyncio.get_running_loop()
    if not lc.proxy_protocol:
        return await loop.create_server(factory, sock=sock, ssl=ssl_ctx, backlog=backlog,
                                        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if ssl_ctx else None)
    server = _ProxyServer(name, lc, factory, ssl_ctx)
    return await loop.create_server(lambda: _HeaderFirst(server), sock=sock, backlog=backlog)


__all__ = ["ProxiedPeer", "TLS_HANDSHAKE_TIMEOUT", "create_server", "trusted"]
