"""Routing of outbound mail: which next hop a destination domain goes to, and why (pure).

Owns: the syntax of `[queue] relay` and of the values of `[queue.transports]`, and the choice, per
recipient domain, between (in this order, like Postfix's transport_maps before relayhost):
- a transport for exactly that domain: `"smtp:HOST"`, `"smtp:HOST:PORT"`, `"smtp:[HOST]:PORT"`
  (that host's A/AAAA records, never its MX; port 25 unless given; TLS as for an MX), `"relay"`
  (the relay below), `"mx"` (the domain's own MX hosts, even
  when a relay is set) or `"local"` (the local delivery agent, as for a domain in [domains]);
- the relay: `"HOST:PORT"` or `"[HOST]:PORT"` (Postfix's relayhost; brackets or not, the host's
  A/AAAA records are used, never MX). Port 465 is implicit TLS (RFC 8314), any other port
  STARTTLS, required; the certificate is always verified against HOST; AUTH with
  relay_auth_file after TLS;
- the domain's MX hosts (RFC 5321 §5.1).
Does not own: the lookups or the SMTP dialogue (delivery/remote.py), the credentials
(delivery/relayauth.py), local delivery (delivery/local.py).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["mx", "relay", "transport", "local"]
TlsPolicy = Literal["may", "starttls", "implicit"]

IMPLICIT_TLS_PORT = 465  # RFC 8314 §3.3: submissions
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


@dataclass(frozen=True)
class NextHop:
    """A host given by name or address, reached at `port` through its A/AAAA records (no MX)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Route:
    """How one recipient domain is reached. `hop` is None for "mx" (the domain's MX hosts) and
    "local". `why` says which setting chose it, for logs and `queue show`."""

    kind: Kind
    why: str
    hop: NextHop | None = None
    tls: TlsPolicy = "may"  # "may": as for an MX (opportunistic, or required by require_tls_domains)
    auth: bool = False  # AUTH with [queue] relay_auth_file when set (relay only)

    @property
    def destination(self) -> str:
        """The key concurrency limits count by: the next hop when it is fixed, else the domain
        (like Postfix's qmgr, whose destination is the nexthop)."""
        return f"{self.kind}:{self.hop}" if self.hop is not None else ""

    @property
    def text(self) -> str:
        """"relay [smtp.example.net]:587", "transport smtp:[10.0.0.5]:25", "MX"."""
        if self.kind == "mx":
            return "MX"
        if self.kind == "local":
            return "local"
        return f"{self.kind} {self.hop}"


def parse_hostport(text: str, default_port: int | None) -> NextHop:
    """"host:port", "[host]:port", "[2001:db8::1]:25", "host" (when default_port is given) ->
    NextHop. Raises ValueError with the reason."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("a \"[\" without \"]\"")
        if rest and not rest.startswith(":"):
            raise ValueError("expected \":PORT\" after \"]\"")
        port_text = rest[1:] if rest else ""
        if host.lower().startswith("ipv6:"):
            host = host[5:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError("an IPv6 address goes in brackets: \"[2001:db8::1]:25\"")
    else:
        host, port_text = text, ""
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port must be 1-65535, got {port_text!r}")
        port = int(port_text)
    elif default_port is None:
        raise ValueError("expected HOST:PORT")
    else:
        port = default_port
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        name = host[:-1] if host.endswith(".") else host  # a fully qualified "host.example."
        if not _HOST.fullmatch(name):
            raise ValueError(f"not a host name or address: {host!r}") from None
        host = name.lower()
    return NextHop(host, port)


def relay_tls(port: int) -> TlsPolicy:
    return "implicit" if port == IMPLICIT_TLS_PORT else "starttls"


def parse_transport(text: str) -> tuple[Kind, NextHop | None]:
    """A [queue.transports] value -> (kind, hop). Raises ValueError with the reason."""
    t = text.strip()
    low = t.lower()
    if low == "relay":
        return "relay", None
    if low == "local":
        return "local", None
    if low == "mx":
        return "mx", None
    if low.startswith("smtp:"):
        return "transport", parse_hostport(t[5:], 25)
    raise ValueError("expected \"smtp:HOST\", \"smtp:[HOST]:PORT\", \"relay\", \"mx\" or \"local\"")


def route_for(domain: str, *, relay: str, transports: dict[str, str]) -> Route:
    """The route of `domain` with the config's `[queue] relay` and `[queue.transports]` (both
    already validated by config.py; a bad value here is a ValueError)."""
    domain = domain.lower().rstrip(".")
    for name, value in transports.items():
        if name.lower().rstrip(".") != domain:
            continue
        kind, hop = parse_transport(value)
        why = f"[queue.transports] {name}"
        if kind == "relay":
            if not relay:
                raise ValueError(f"{why} = \"relay\" but [queue] relay is not set")
            r = parse_hostport(relay, None)
            return Route("relay", why, r, relay_tls(r.port), auth=True)
        if kind == "transport":
            return Route("transport", why, hop)
        return Route(kind, why)
    if relay:
        r = parse_hostport(relay, None)
        return Route("relay", "[queue] relay", r, relay_tls(r.port), auth=True)
    return Route("mx", f"MX of {domain}")


__all__ = ["Route", "NextHop", "parse_hostport", "parse_transport", "route_for", "relay_tls", "IMPLICIT_TLS_PORT"]
