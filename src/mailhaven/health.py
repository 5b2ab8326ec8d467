"""`mailhaven health`: is the running server answering? For container HEALTHCHECKs and monitoring.

Owns: connecting to every enabled listener of the config (the wildcard addresses 0.0.0.0 and ::
are reached over loopback), doing the TLS handshake on implicit-TLS listeners (without checking the
certificate: this is a liveness probe, doctor checks certificates), reading the greeting, and
leaving politely (QUIT / LOGOUT). Healthy = every listener greets with its protocol's OK: SMTP
"220" (RFC 5321 §4.2; a "421" greeting means it is refusing service), POP3 "+OK" (RFC 1939 §4),
IMAP "* OK" or "* PREAUTH" (RFC 9051 §7.1).
The probe says nothing but goodbye after the greeting; the servers log such a session at DEBUG
(imap/server.py, pop3/server.py; SMTP logs none), so a HEALTHCHECK every 30 s leaves the log quiet.
Does not own: the listeners (app.py), certificate or DNS checks (doctor.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from mailhaven.config import Config, ListenerConfig

DEFAULT_TIMEOUT = 5.0
MAX_GREETING = 4096

_GREETING = {"mx": (b"220",), "submission": (b"220",), "submissions": (b"220",),
             "pop3": (b"+OK",), "pop3s": (b"+OK",),
             "imap": (b"* OK", b"* PREAUTH"), "imaps": (b"* OK", b"* PREAUTH"),
             "managesieve": (b'"IMPLEMENTATION"',)}
_GOODBYE = {"mx": b"QUIT\r\n", "submission": b"QUIT\r\n", "submissions": b"QUIT\r\n",
            "pop3": b"QUIT\r\n", "pop3s": b"QUIT\r\n", "imap": b"h LOGOUT\r\n", "imaps": b"h LOGOUT\r\n",
            "managesieve": b"LOGOUT\r\n"}


@dataclass(frozen=True)
class Probe:
    listener: str
    address: str
    port: int
    ok: bool
    detail: str


def probe_address(lc: ListenerConfig) -> str:
    """Where to connect: the bound address, or loopback of its family for a wildcard bind."""
    ip = ipaddress.ip_address(lc.address)
    if ip.is_unspecified:
        return "::1" if ip.version == 6 else "127.0.0.1"
    return lc.address


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def probe(name: str, lc: ListenerConfig, *, wait: float = DEFAULT_TIMEOUT,
                port: int | None = None) -> Probe:
    host, the_port = probe_address(lc), port if port is not None else lc.port
    tls = _client_tls() if lc.tls == "implicit" else None

    def result(ok: bool, detail: str) -> Probe:
        return Probe(name, host, the_port, ok, detail)

    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, the_port, ssl=tls, limit=MAX_GREETING), wait)
    except TimeoutError:
        return result(False, f"no connection within {wait:g}s")
    except (OSError, ssl.SSLError) as e:
        return result(False, f"cannot connect: {getattr(e, 'strerror', None) or e}")
    try:
        line = await asyncio.wait_for(reader.readline(), wait)
    except TimeoutError:
        writer.close()
        return result(False, f"no greeting within {wait:g}s")
    except (OSError, ssl.SSLError, ValueError) as e:
        writer.close()
        return result(False, f"greeting failed: {getattr(e, 'strerror', None) or e}")
    except BaseException:
        writer.close()
        raise
    try:
        text = line.rstrip(b"\r\n").decode("ascii", "replace")[:80]
        if not line:
            return result(False, "closed without a greeting")
        if not line.startswith(_GREETING.get(name, (b"",))):
            return result(False, f"unexpected greeting: {text}")
        writer.write(_GOODBYE.get(name, b""))
        try:
            await asyncio.wait_for(writer.drain(), wait)
            await asyncio.wait_for(reader.read(MAX_GREETING), 1.0)  # its goodbye; not required
        except (TimeoutError, OSError, ssl.SSLError):
            pass
        return result(True, text)
    finally:
        writer.close()


async def check(cfg: Config, names: Sequence[str] = (), *, wait: float = DEFAULT_TIMEOUT,
                ports: dict[str, int] | None = None) -> list[Probe]:
    """Probe the enabled listeners (or just `names`) concurrently. `ports` overrides configured
    ports (tests whose servers bound port 0)."""
    chosen = [(n, lc) for n, lc in cfg.listeners.items() if lc.enabled and (not names or n in names)]
    return list(await asyncio.gather(*(probe(n, lc, wait=wait, port=(ports or {}).get(n))
                                       for n, lc in chosen)))


def render(probes: Sequence[Probe]) -> str:
    lines = [f"{'ok  ' if p.ok else 'FAIL'}  {p.listener:<12} {p.address} port {p.port}: {p.detail}"
             for p in probes]
    if not probes:
        lines.append("FAIL  no enabled listeners in the config")
    return "\n".join(lines) + "\n"


def exit_code(probes: Sequence[Probe]) -> int:
    return 0 if probes and all(p.ok for p in probes) else 1


__all__ = ["Probe", "probe", "check", "render", "exit_code", "probe_address"]
