"""A validating resolver for DNSSEC tests: Debian's unbound on 127.0.0.1:<port>, in a temp dir,
as the unprivileged `unbound` user when the tests run as root, asking the test DNS server
(tests/dnsserver.py, which serves the signed zone) through a stub zone, with the zone's key as
its trust anchor. Our resolver then trusts its AD bit, as Postfix trusts a local validator's.

- `unbound_resolver(zone_name, dnskey_text)` -> "127.0.0.1:PORT" (config dns.nameservers); one
  unbound per call, stopped after the test. Skips the test when unbound is not installed
  (.ci/run installs it).
- `signed_zone(text, origin)` -> (dns.zone.Zone signed with a fresh ECDSA P-256 key, its DNSKEY in
  presentation form for the trust anchor).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer

UNBOUND = "/usr/sbin/unbound"


def signed_zone(text: str, origin: str) -> tuple[object, str]:
    import dns.dnssec
    import dns.zone
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257)
    zone = dns.zone.from_text(text, origin, relativize=False)
    dns.dnssec.sign_zone(zone, keys=[(key, dnskey)], lifetime=86400)
    return zone, f"{origin} DNSKEY {dnskey.to_text()}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int, zone: str, deadline: float, proc: subprocess.Popen[bytes]) -> bool:
    """Whether unbound answers on `port` (False: it exited, e.g. the port was taken meanwhile)."""
    import dns.exception
    import dns.message
    import dns.query

    while True:
        try:
            dns.query.udp(dns.message.make_query(zone, "SOA"), "127.0.0.1", port=port, timeout=0.3)
            return True
        except (dns.exception.Timeout, OSError):
            if proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                raise RuntimeError("unbound did not answer") from None
            time.sleep(0.05)


@pytest.fixture
def unbound_resolver(dns_server: DnsServer, tmp_path: Path) -> Iterator[Callable[[str, str], str]]:
    exe = shutil.which("unbound") or UNBOUND
    if not os.path.exists(exe):
        pytest.skip("unbound is not installed (apt install unbound)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(zone: str, anchor: str) -> str:
        for _ in range(10):  # the free port may be taken before unbound binds it: another one
            port = _start(zone, anchor)
            if port:
                return f"127.0.0.1:{port}"
        raise RuntimeError("unbound did not start")

    def _start(zone: str, anchor: str) -> int:
        folder = tmp_path / f"unbound{len(procs)}"
        folder.mkdir()
        folder.chmod(0o755)
        port = _free_port()
        user = ""
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("unbound").pw_name
            except KeyError:
                user = "nobody"
        conf = folder / "unbound.conf"
        conf.write_text(f"""server:
  interface: 127.0.0.1
  port: {port}
  do-ip6: no
  do-daemonize: no
  username: "{user}"
  chroot: ""
  directory: "{folder}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  qname-minimisation: no
  harden-dnssec-stripped: yes
  module-config: "validator iterator"
  trust-anchor: "{anchor}"
  local-zone: "{zone.split(".")[-2] + "."}" nodefault  # unbound answers "test." itself (RFC 6761) by default
  val-log-level: 2
stub-zone:
  name: "{zone}"
  stub-addr: {dns_server.host}@{dns_server.port}
""")
        proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL)
        procs.append(proc)
        return port if _ready(port, zone, time.monotonic() + 10, proc) else 0

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
