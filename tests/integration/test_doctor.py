"""`mailhaven doctor`: every check against a real DNS server (tests/dnsserver.py), real files and
real certificates; and the command's output and exit status."""

from __future__ import annotations

import asyncio
import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mailhaven import doctor
from mailhaven.doctor import Finding
from mailhaven.policy.dkim import generate_rsa
from tests.dnsserver import DnsServer
from tests.fixtures_server import app_config_data, write_config
from tests.integration.test_dkim_dns_cli import mh, zone

HOST = "mail.example.test"
DOMAIN = "example.test"
IP = "192.0.2.25"


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, str]:
    return generate_rsa(1024)


@pytest.fixture
def setup(tmp_path: Path, tls_files: tuple[Path, Path], dns_nameserver: str,
          dkim_key: tuple[bytes, str]) -> Any:
    """setup(**top) -> config path: hostname mail.example.test, public_ip 192.0.2.25, one domain
    with an RSA DKIM key, TLS from tls_files (issued for mail.example.test by the test CA)."""
    from mailhaven.auth.passwords import hash_password
    from mailhaven.auth.users import UsersFile

    tls_dir = tmp_path / "tls"  # private copies: the shared fixture's key is 0644
    tls_dir.mkdir()
    cert, key = shutil.copy(tls_files[0], tls_dir / "cert.pem"), shutil.copy(tls_files[1], tls_dir / "key.pem")
    Path(key).chmod(0o600)
    key_path = tmp_path / "dkim.pem"
    key_path.write_bytes(dkim_key[0])
    key_path.chmod(0o600)
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700, exist_ok=True)
    users = tmp_path / "users.toml"
    with UsersFile.edit(users) as uf:
        if not uf.list_users():
            uf.add_user("postmaster@example.test", hash_password("x"))
            uf.add_role_aliases(DOMAIN, "postmaster@example.test")  # abuse@ -> postmaster@

    def make(**top: Any) -> Path:
        data = app_config_data(tmp_path, (Path(cert), Path(key)), dns_nameserver, hostname=HOST, public_ip=IP)
        data["domains"] = {DOMAIN: {"dkim_key": str(key_path)}}
        data.update(top)
        return write_config(tmp_path / "mailhaven.toml", data)

    return make


def publish_all(dns: DnsServer, dkim_record: str, *, spf: str = "v=spf1 mx ~all") -> None:
    dns.add(HOST, "A", IP)
    dns.add_ptr(IP, HOST)
    dns.add(DOMAIN, "MX", f"10 {HOST}.")
    dns.add(DOMAIN, "TXT", spf)
    dns.add(f"mh1._domainkey.{DOMAIN}", "TXT", dkim_record)
    dns.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=reject")


async def run(path: Path, *domains: str, **kw: Any) -> list[Finding]:
    return await doctor.diagnose(path, domains, **kw)


def by_topic(findings: list[Finding], topic: str) -> list[Finding]:
    return [f for f in findings if f.topic == topic]


def fails(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == "fail"]


async def test_everything_published_is_all_good_and_exit_0(setup: Any, dns_server: DnsServer,
                                                           dkim_key: tuple[bytes, str]) -> None:
    publish_all(dns_server, dkim_key[1])
    findings = await run(setup())
    assert fails(findings) == []
    assert doctor.exit_code(findings) == 0
    text = doctor.render(findings)
    assert text.endswith("All good (0 warning(s)).\n"), text
    assert by_topic(findings, f"dns {DOMAIN} MX")[0].message == f"10 {HOST}"
    assert by_topic(findings, f"dns PTR {IP}")[0].message == f"points to {HOST}"
    assert by_topic(findings, f"dns _dmarc.{DOMAIN}")[0].message == "p=reject"
    assert "passes for 192.0.2.25" in by_topic(findings, f"dns {DOMAIN} SPF")[0].message


async def test_nothing_published_prints_every_record_to_publish(setup: Any, dns_server: DnsServer,
                                                                dkim_key: tuple[bytes, str]) -> None:
    dns_server.add(DOMAIN, "NS", "ns.example.test.")  # the zone exists, with nothing in it
    findings = await run(setup())
    assert doctor.exit_code(findings) == 1
    fixes = {f.topic: f.fix for f in fails(findings)}
    assert fixes[f"dns {HOST}"] == f"publish: {HOST}. 3600 IN A {IP}"
    assert fixes[f"dns {DOMAIN} MX"] == f"publish: {DOMAIN}. 3600 IN MX 10 {HOST}."
    assert fixes[f"dns {DOMAIN} SPF"] == f'publish: {DOMAIN}. 3600 IN TXT "v=spf1 ip4:{IP} mx ~all"'
    assert fixes[f"dns _dmarc.{DOMAIN}"] == (
        f'publish: _dmarc.{DOMAIN}. 3600 IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@{DOMAIN}"')
    dkim_fix = fixes[f"dns mh1._domainkey.{DOMAIN}"]
    assert dkim_fix.startswith(f"publish: mh1._domainkey.{DOMAIN}. 3600 IN TXT \"v=DKIM1; k=rsa; p=")
    # The record as printed (strings of <= 255 characters) is the key's public record.
    quoted = dkim_fix.split(" TXT ", 1)[1]
    assert "".join(part.strip('"') for part in quoted.split('" "')) == dkim_key[1]
    assert "ask whoever provides 192.0.2.25" in fixes[f"dns PTR {IP}"]
    text = doctor.render(findings)
    assert f"-> publish: {DOMAIN}. 3600 IN MX 10 {HOST}." in text
    assert "problem(s) to fix" in text.splitlines()[-1]


async def test_a_different_dkim_key_in_dns_is_a_failure(setup: Any, dns_server: DnsServer) -> None:
    other = generate_rsa(1024)[1]
    publish_all(dns_server, other)
    findings = fails(await run(setup()))
    assert [(f.topic, f.message.split(" (")[0]) for f in findings] == [
        (f"dns mh1._domainkey.{DOMAIN}", f"the published key is not the one in {Path(setup().parent / 'dkim.pem')}")]
    assert findings[0].fix.startswith("replace it: publish: ")


async def test_dkim_record_split_into_strings_and_spaced_still_matches(
        setup: Any, dns_server: DnsServer, dkim_key: tuple[bytes, str]) -> None:
    record = dkim_key[1].replace("; p=", ";  p= ")
    publish_all(dns_server, record)
    assert fails(await run(setup())) == []


async def test_spf_that_does_not_cover_this_host_gets_a_corrected_record(
        setup: Any, dns_server: DnsServer, dkim_key: tuple[bytes, str]) -> None:
    publish_all(dns_server, dkim_key[1], spf="v=spf1 ip4:198.51.100.1 -all")
    [f] = fails(await run(setup()))
    assert f.topic == f"dns {DOMAIN} SPF"
    assert f.message == "'v=spf1 ip4:198.51.100.1 -all' does not pass for this host (192.0.2.25: fail)"
    assert f.fix == f'replace it: publish: {DOMAIN}. 3600 IN TXT "v=spf1 ip4:{IP} ip4:198.51.100.1 -all"'


async def test_two_spf_records_or_two_dmarc_records_are_failures(
        setup: Any, dns_server: DnsServer, dkim_key: tuple[bytes, str]) -> None:
    publish_all(dns_server, dkim_key[1])
    dns_server.add(DOMAIN, "TXT", "v=spf1 a -all")
    dns_server.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none")
    found = {f.topic: f.message for f in fails(await run(setup()))}
    assert found == {f"dns {DOMAIN} SPF": "2 SPF records (receivers treat that as an error)",
                     f"dns _dmarc.{DOMAIN}": "2 DMARC records (receivers then apply none)"}


async def test_wrong_mx_and_wrong_ptr_name_what_is_there(setup: Any, dns_server: DnsServer,
                                                         dkim_key: tuple[bytes, str]) -> None:
    dns_server.add(HOST, "A", IP)
    dns_server.add_ptr(IP, "host-192-0-2-25.isp.example")
    dns_server.add(DOMAIN, "MX", "10 mx.elsewhere.example.")
    dns_server.add(DOMAIN, "TXT", f"v=spf1 ip4:{IP} -all")
    dns_server.add(f"mh1._domainkey.{DOMAIN}", "TXT", dkim_key[1])
    dns_server.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none")
    findings = await run(setup())
    found = {f.topic: f.message for f in fails(findings)}
    assert found == {f"dns {DOMAIN} MX": f"points to mx.elsewhere.example, not {HOST}",
                     f"dns PTR {IP}": f"points to host-192-0-2-25.isp.example, not {HOST}"}
    [warn] = [f for f in findings if f.status == "warn"]
    assert warn.topic == f"dns _dmarc.{DOMAIN}" and warn.message.startswith("p=none")


async def test_dmarc_of_the_organizational_domain_covers_a_subdomain(
        setup: Any, tmp_path: Path, dns_server: DnsServer) -> None:
    dns_server.add("example.test", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    cfg = doctor.check_config(setup())[0]
    assert cfg is not None
    from mailhaven.dns.resolver import Resolver

    [f] = await doctor.check_dmarc(cfg, Resolver.from_config(cfg.dns), "sub.example.test")
    assert f.status == "fail"  # the record must be at _dmarc., not at the apex
    dns_server.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    [f] = await doctor.check_dmarc(cfg, Resolver.from_config(cfg.dns), "sub.example.test")
    assert (f.status, f.message) == ("ok", "p=quarantine (from _dmarc.example.test)")


async def test_dns_failure_is_reported_not_raised(setup: Any, dns_server: DnsServer) -> None:
    dns_server.set_servfail(DOMAIN)
    findings = await run(setup())
    mx = by_topic(findings, f"dns {DOMAIN} MX")[0]
    assert mx.status == "fail" and mx.message.startswith("lookup failed: ")


async def test_a_domain_not_configured_is_a_failure(setup: Any, dns_server: DnsServer,
                                                    dkim_key: tuple[bytes, str]) -> None:
    publish_all(dns_server, dkim_key[1])
    findings = await run(setup(), "other.test")
    assert by_topic(findings, "domain other.test")[0].message == "not one of this server's [domains]"


# --- one source of DNS advice: `mailhaven dns` and doctor (issue 11 item 3) ------------------------


def printed(path: Path) -> dict[tuple[str, str], list[str]]:
    """The records `mailhaven dns` prints for the config at `path`, parsed as a zone."""
    r = mh("-c", str(path), "dns")
    assert r.returncode == 0, r.stderr
    return zone(r.stdout, DOMAIN)


def serve(server: DnsServer, records: dict[tuple[str, str], list[str]]) -> None:
    """Publish exactly these records on the test DNS server."""
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    for (name, rtype), values in records.items():
        for value in values:
            if rtype == "TXT":  # the server takes TXT as plain text and splits it itself
                rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, value)
                value = b"".join(rd.strings).decode()
            server.add(name, rtype, value)


@pytest.mark.parametrize("public_ip", [IP, ""])
async def test_doctor_is_satisfied_by_exactly_what_dns_prints(setup: Any, dns_server: DnsServer,
                                                              public_ip: str) -> None:
    path = setup(public_ip=public_ip)
    serve(dns_server, printed(path))
    if public_ip:
        dns_server.add_ptr(IP, HOST)  # reverse DNS belongs to whoever provides the IP, not the zone
    else:
        dns_server.add(HOST, "A", IP)  # `dns` says to add it by hand when public_ip is not set
    findings = await run(path)
    dns_findings = {f.topic: f for f in findings if f.topic.startswith("dns ") and f.topic != f"dns {HOST}"}
    assert {t: f.message for t, f in dns_findings.items() if f.status != "ok"} == {}
    assert {f"dns {DOMAIN} MX", f"dns {DOMAIN} SPF", f"dns mh1._domainkey.{DOMAIN}",
            f"dns _dmarc.{DOMAIN}"} <= set(dns_findings)
    assert dns_findings[f"dns _dmarc.{DOMAIN}"].message == "p=quarantine"


async def test_every_record_doctor_tells_to_publish_is_the_one_dns_prints(setup: Any,
                                                                          dns_server: DnsServer) -> None:
    path = setup()
    dns_server.add(DOMAIN, "NS", "ns.example.test.")  # the zone exists, with nothing in it
    want = printed(path)
    fixes = [f.fix.removeprefix("publish: ") for f in fails(await run(path)) if f.fix.startswith("publish: ")]
    told: dict[tuple[str, str], list[str]] = {}
    for fix in fixes:
        told.update(zone(fix, DOMAIN))
    assert set(told) == {(f"{HOST}.", "A"), (f"{DOMAIN}.", "MX"), (f"{DOMAIN}.", "TXT"),
                         (f"mh1._domainkey.{DOMAIN}.", "TXT"), (f"_dmarc.{DOMAIN}.", "TXT")}
    assert told == {key: want[key] for key in told}


# --- postmaster@ and abuse@ (issue 11 item 4) -------------------------------------------------------


async def test_role_addresses_reached_only_implicitly_are_warnings_with_the_alias_to_add(
        setup: Any, tmp_path: Path, dns_server: DnsServer, dkim_key: tuple[bytes, str]) -> None:
    from mailhaven.auth.passwords import hash_password
    from mailhaven.auth.users import UsersFile

    path = setup()
    users = tmp_path / "users.toml"
    UsersFile(users).save()
    with UsersFile.edit(users) as uf:  # a users file from before init/user add wrote role aliases
        uf.add_user("alice@example.test", hash_password("x"))
    publish_all(dns_server, dkim_key[1])
    findings = await run(path)
    warned = {f.topic: (f.message, f.fix) for f in findings if f.status == "warn"}
    assert warned == {
        f"postmaster@{DOMAIN}": (f"postmaster@{DOMAIN} is not a user or alias: its mail goes to alice@{DOMAIN} "
                                 "(the first user) only implicitly",
                                 f"mailhaven -c {path} alias add postmaster@{DOMAIN} alice@{DOMAIN}"),
        f"abuse@{DOMAIN}": (f"abuse@{DOMAIN} reaches no one: abuse reports (RFC 2142) are refused",
                            f"mailhaven -c {path} alias add abuse@{DOMAIN} postmaster@{DOMAIN}")}
    assert doctor.exit_code(findings) == 0  # mail still flows: a warning, not a failure
    # The fixes, run as printed, make it all good.
    for topic in (f"postmaster@{DOMAIN}", f"abuse@{DOMAIN}"):
        argv = warned[topic][1].split()[1:]
        r = await asyncio.to_thread(mh, *argv)
        assert r.returncode == 0, r.stderr
    findings = await run(path)
    assert [f for f in findings if f.status != "ok"] == []
    assert by_topic(findings, f"postmaster@{DOMAIN}")[0].message == f"goes to alice@{DOMAIN} (alias)"
    assert by_topic(findings, f"abuse@{DOMAIN}")[0].message == f"goes to alice@{DOMAIN} (alias)"


# --- certificate ---------------------------------------------------------------------------------


def _cert_findings(path: Path, now: datetime.datetime | None = None) -> list[Finding]:
    cfg = doctor.check_config(path)[0]
    assert cfg is not None
    return doctor.check_certificate(cfg, now)


def test_certificate_expiry_fails_near_the_end_and_warns_before(setup: Any, tls_files: tuple[Path, Path]) -> None:
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(tls_files[0].read_bytes())[0]
    end = leaf.not_valid_after_utc
    status = lambda days: _cert_findings(setup(), end - datetime.timedelta(days=days))[0]  # noqa: E731
    assert status(60).status == "ok"
    assert status(10).status == "warn" and status(10).message.startswith("expires on ")
    assert status(3).status == "fail"
    expired = status(-1)
    assert (expired.status, expired.message) == ("fail", f"expired on {end:%Y-%m-%d}")
    assert "renew the certificate for mail.example.test" in expired.fix


def test_certificate_must_cover_the_hostname(setup: Any) -> None:
    findings = _cert_findings(setup(hostname="mx9.example.test"))
    [f] = [f for f in findings if f.status == "fail"]
    assert f.message.startswith("does not cover mx9.example.test (names: localhost, ")
    assert _cert_findings(setup())[1].message == "covers mail.example.test"


def test_wildcard_names_match_one_label() -> None:
    assert doctor._name_matches("*.example.test", "mail.example.test")
    assert not doctor._name_matches("*.example.test", "a.b.example.test")
    assert not doctor._name_matches("*.example.test", "example.test")
    assert doctor._name_matches("MAIL.example.test.", "mail.EXAMPLE.test")


def test_self_signed_certificate_is_a_warning(setup: Any, tmp_path: Path) -> None:
    from mailhaven.tls import make_self_signed

    make_self_signed(tmp_path / "ss.pem", tmp_path / "ss.key", [HOST])
    findings = _cert_findings(setup(tls={"cert": str(tmp_path / "ss.pem"), "key": str(tmp_path / "ss.key")}))
    assert [f.status for f in findings] == ["ok", "ok", "warn"]
    assert findings[2].message.startswith("self-signed")


# --- config and files ----------------------------------------------------------------------------


async def test_a_broken_config_is_one_failure_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("hostname = 3\n")
    findings = await run(path)
    assert findings == [Finding("fail", "config", "hostname: expected a string, got 3",
                                f"fix the config file, then run: mailhaven -c {path} check-config")]


def test_world_readable_secrets_fail_and_data_dir_mode_is_checked(setup: Any, tmp_path: Path) -> None:
    path = setup()
    (tmp_path / "users.toml").chmod(0o644)
    (tmp_path / "data").chmod(0o755)
    cfg = doctor.check_config(path)[0]
    assert cfg is not None
    findings = doctor.check_files(cfg)
    bad = {f.message: f.fix for f in findings if f.status != "ok"}
    assert bad == {f"users file {tmp_path / 'users.toml'} is world-readable (mode 0644)":
                   f"chmod o-rwx {tmp_path / 'users.toml'}",
                   f"data_dir {tmp_path / 'data'} is open to others (mode 0755)": f"chmod 700 {tmp_path / 'data'}"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files for another user")
def test_run_as_user_must_own_data_dir_and_read_what_reload_rereads(setup: Any, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    cfg = doctor.check_config(setup(run_as_user="nobody"))[0]
    assert cfg is not None
    findings = {f.message: f.fix for f in doctor.check_files(cfg) if f.status == "fail"}
    data = tmp_path / "data"
    assert findings[f"data_dir {data} belongs to root, not nobody"] == f"chown -R nobody: {data}"
    key = tmp_path / "dkim.pem"
    assert findings[f"domains.example.test.dkim_key {key} is not readable by nobody (a reload would fail)"] == (
        f"chgrp nobody {key} && chmod 640 {key}")
    import pwd

    nobody = pwd.getpwnam("nobody")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    for p in (key, tmp_path / "users.toml", Path(cfg.tls.key)):
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    try:
        assert [f for f in doctor.check_files(cfg) if f.status == "fail"] == []
    finally:
        os.chown(Path(cfg.tls.key), 0, 0)


# --- the command ---------------------------------------------------------------------------------


def test_doctor_command_prints_findings_and_exits_1_then_0_when_fixed(
        setup: Any, dns_server: DnsServer, dkim_key: tuple[bytes, str]) -> None:
    path = setup()
    dns_server.add(DOMAIN, "NS", "ns.example.test.")
    env = {**os.environ, "MAILHAVEN_FAST_HASH": "1"}
    r = subprocess.run([sys.executable, "-m", "mailhaven", "-c", str(path), "doctor", DOMAIN],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1, r.stderr
    assert f"-> publish: {DOMAIN}. 3600 IN MX 10 {HOST}." in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    publish_all(dns_server, dkim_key[1])
    # The second run goes through the console script the advice names (`mailhaven -c ...`), taken
    # from this interpreter's environment rather than from PATH.
    script = Path(sys.executable).parent / "mailhaven"
    r = subprocess.run([str(script), "-c", str(path), "doctor"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "All good (0 warning(s))."
