"""`mailhaven doctor` tests every configured DNS list (RFC 5782 §5 test entries) through the
configured resolver, the tests' DNS server: a list answering 127.255.255.x refuses our resolver and
is reported; one listing 127.0.0.1 lists everything."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from mailhaven import doctor
from tests.dnsserver import DnsServer
from tests.integration import test_doctor
from tests.integration.test_doctor import by_topic, publish_all, run

setup = test_doctor.setup  # the fixtures
dkim_key = test_doctor.dkim_key


def _list(dns: DnsServer, zone: str, positive: str | None, negative: str | None = None) -> None:
    if positive:
        dns.add(f"2.0.0.127.{zone}", "A", positive)
    if negative:
        dns.add(f"1.0.0.127.{zone}", "A", negative)


async def test_each_list_is_tested_with_its_rfc5782_test_entries(setup: Any, dns_server: DnsServer,
                                                                 dkim_key: tuple[bytes, str]) -> None:
    publish_all(dns_server, dkim_key[1])
    _list(dns_server, "good.test", "127.0.0.2")
    _list(dns_server, "wl.test", "127.0.0.2")
    _list(dns_server, "refusing.test", "127.255.255.254", "127.255.255.254")
    _list(dns_server, "everything.test", "127.0.0.2", "127.0.0.2")
    _list(dns_server, "hijacked.test", "198.51.100.80", "198.51.100.80")
    _list(dns_server, "typo.test", None)
    path = setup(spam={"dnsbl": ["good.test", "refusing.test", "everything.test", "hijacked.test", "typo.test"],
                       "dnswl": ["wl.test"]})
    findings = await run(path)
    [good] = by_topic(findings, "dnsbl good.test")
    assert good.status == "ok"
    assert by_topic(findings, "dnswl wl.test")[0].status == "ok"
    [refused] = by_topic(findings, "dnsbl refusing.test")
    assert refused.status == "fail"
    assert "this list refuses queries through your resolver (open/public resolver): use a local resolver" \
        in refused.message and "127.255.255.254" in refused.message
    assert "nameservers" in refused.fix
    [everything] = by_topic(findings, "dnsbl everything.test")
    assert everything.status == "fail" and "127.0.0.1" in everything.message
    assert by_topic(findings, "dnsbl hijacked.test")[0].status == "fail"
    [typo] = by_topic(findings, "dnsbl typo.test")
    assert typo.status == "warn" and "127.0.0.2" in typo.message
    assert doctor.exit_code(findings) == 1


async def test_doctor_command_prints_the_advice(setup: Any, dns_server: DnsServer,
                                               dkim_key: tuple[bytes, str]) -> None:
    publish_all(dns_server, dkim_key[1])
    _list(dns_server, "zen.test", "127.255.255.254", "127.255.255.254")
    path = setup(spam={"dnsbl": ["zen.test"]})
    r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mailhaven", "-c", str(path), "doctor"],
                                capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL  dnsbl zen.test" in r.stdout and "use a local resolver" in r.stdout, r.stdout
