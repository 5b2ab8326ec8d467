"""`mailhaven init` (its DKIM key), `mailhaven dkim keygen` and `mailhaven dns`, run as real
subprocesses; the zone text is read back with dnspython's zone parser; the config rewriting of
dkimkeys.py gets property tests."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailhaven import config, dkimkeys, records
from mailhaven.policy import dkim

ENV = {**os.environ, "MAILHAVEN_FAST_HASH": "1"}
ENV.pop("MAILHAVEN_CONFIG", None)
DOMAIN = "example.org"


def mh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailhaven", *args], capture_output=True, text=True,
                          timeout=120, env=ENV)


@pytest.fixture
def initialised(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "mailhaven.toml"
    r = mh("init", "--domain", DOMAIN, "--config", str(path), "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    return path


def zone(text: str, origin: str = DOMAIN) -> dict[tuple[str, str], list[str]]:
    """(owner, type) -> RDATA texts, parsed by dnspython (fails on anything that is not zone syntax)."""
    z = dns.zone.from_text(text, origin=origin + ".", relativize=False, check_origin=False)
    out: dict[tuple[str, str], list[str]] = {}
    for name, rdataset in z.iterate_rdatasets():
        out[(str(name), dns.rdatatype.to_text(rdataset.rdtype))] = [rd.to_text() for rd in rdataset]
    return out


def txt_value(rdata_text: str) -> str:
    """A TXT RDATA in zone text ("a" "b") -> the joined value (RFC 6376 §3.6.2.2)."""
    return "".join(json.loads(part) for part in _strings(rdata_text))


def _strings(text: str) -> list[str]:
    parts, i = [], 0
    while i < len(text):
        if text[i] == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            parts.append(text[i:j + 1])
            i = j + 1
        else:
            i += 1
    return parts


# --- init ---------------------------------------------------------------------------------------------

def test_init_makes_a_private_2048_bit_rsa_key_and_enables_signing(initialised: Path) -> None:
    cfg = config.load(initialised)
    dom = cfg.domains[DOMAIN]
    key = Path(dom.dkim_key)
    assert key.parent == initialised.parent / "dkim"
    assert key.name == f"{DOMAIN}.{dom.dkim_selector}.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    raw = tomllib.loads(initialised.read_text())["domains"][DOMAIN]
    assert raw["dkim_key"] == f"dkim/{key.name}"  # relative: the config folder can move


def test_init_tells_where_the_dns_records_come_from(tmp_path: Path) -> None:
    path = tmp_path / "mailhaven.toml"
    r = mh("init", "--domain", DOMAIN, "--config", str(path), "--data-dir", str(tmp_path / "data"))
    assert f"dns {DOMAIN}" in r.stdout and "DKIM key " in r.stdout


# --- dkim keygen --------------------------------------------------------------------------------------

def test_keygen_writes_a_new_key_under_a_new_selector_and_points_the_config_at_it(initialised: Path) -> None:
    before = config.load(initialised).domains[DOMAIN]
    text_before = initialised.read_text()
    mode_before = stat.S_IMODE(initialised.stat().st_mode)
    r = mh("-c", str(initialised), "dkim", "keygen", DOMAIN)
    assert r.returncode == 0, r.stderr
    after = config.load(initialised).domains[DOMAIN]
    assert after.dkim_selector != before.dkim_selector
    assert Path(before.dkim_key).exists()  # the running server may still sign with it
    key = Path(after.dkim_key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The record printed is the new key's, under the new selector, in zone syntax.
    expected = dkim.public_record(key.read_bytes())
    printed = zone("\n".join(ln for ln in r.stdout.splitlines() if "._domainkey." in ln))
    assert txt_value(printed[(f"{after.dkim_selector}._domainkey.{DOMAIN}.", "TXT")][0]) == expected
    assert "reload" in r.stdout
    # Only the two keys changed: comments and everything else are as they were.
    changed = [ln for ln in initialised.read_text().splitlines() if ln not in text_before.splitlines()]
    assert sorted(ln.split(" = ")[0] for ln in changed) == ["dkim_key", "dkim_selector"]
    assert [ln for ln in text_before.splitlines() if ln.startswith("#")] == \
        [ln for ln in initialised.read_text().splitlines() if ln.startswith("#")]
    assert stat.S_IMODE(initialised.stat().st_mode) == mode_before
    assert mh("-c", str(initialised), "check-config").returncode == 0


def test_keygen_twice_gives_two_selectors(initialised: Path) -> None:
    selectors = set()
    for _ in range(2):
        assert mh("-c", str(initialised), "dkim", "keygen", DOMAIN).returncode == 0
        selectors.add(config.load(initialised).domains[DOMAIN].dkim_selector)
    assert len(selectors) == 2
    assert len(list((initialised.parent / "dkim").iterdir())) == 3  # init's key and both new ones


def test_keygen_with_a_selector_and_ed25519(initialised: Path) -> None:
    r = mh("-c", str(initialised), "dkim", "keygen", DOMAIN, "--ed25519", "--selector", "Ed2026")
    assert r.returncode == 0, r.stderr
    dom = config.load(initialised).domains[DOMAIN]
    assert dom.dkim_ed25519_selector == "ed2026"
    assert dkim.public_record(Path(dom.dkim_ed25519_key).read_bytes()).startswith("v=DKIM1; k=ed25519; p=")
    assert dom.dkim_key  # the RSA key stays: ed25519 is a second signature


@pytest.mark.parametrize("args,message", [
    (["nope.example"], "nope.example: not one of this server's domains (example.org)"),
    ([DOMAIN, "--selector", "bad_selector!"], "selector 'bad_selector!': expected DNS labels"),
])
def test_keygen_refusals_are_one_line_and_write_nothing(initialised: Path, args: list[str], message: str) -> None:
    text = initialised.read_text()
    keys = sorted((initialised.parent / "dkim").iterdir())
    r = mh("-c", str(initialised), "dkim", "keygen", *args)
    assert r.returncode == 1
    assert r.stderr.startswith(f"mailhaven: {message}") and r.stderr.count("\n") == 1
    assert initialised.read_text() == text and sorted((initialised.parent / "dkim").iterdir()) == keys


def test_keygen_refuses_the_selector_of_the_current_key(initialised: Path) -> None:
    current = config.load(initialised).domains[DOMAIN].dkim_selector
    r = mh("-c", str(initialised), "dkim", "keygen", DOMAIN, "--selector", current)
    assert r.returncode == 1 and "in use" in r.stderr


def test_keygen_leaves_a_config_it_cannot_edit_alone(initialised: Path) -> None:
    # The domain as an inline table (top-level, before the first table): no section to edit.
    text = initialised.read_text()
    section = text[text.index('[domains."example.org"]'):text.index("[tls]")]
    initialised.write_text('domains = { "example.org" = {} }\n' + text.replace(section, ""))
    assert mh("-c", str(initialised), "check-config").returncode == 0
    before = initialised.read_text()
    keys = sorted((initialised.parent / "dkim").iterdir())
    r = mh("-c", str(initialised), "dkim", "keygen", DOMAIN)
    assert r.returncode == 1
    assert "set by hand" in r.stderr and "dkim_key = " in r.stderr
    assert initialised.read_text() == before
    assert sorted((initialised.parent / "dkim").iterdir()) == keys


# --- dns ------------------------------------------------------------------------------------------------

def test_dns_prints_every_record_to_publish_in_zone_syntax(initialised: Path) -> None:
    text = initialised.read_text().replace('hostname = "mail.example.org"',
                                           'hostname = "mail.example.org"\npublic_ip = "192.0.2.25"')
    text = text.replace("[listeners.pop3]\naddress = \"0.0.0.0\"", "[listeners.pop3]\nenabled = false\naddress = \"0.0.0.0\"")
    initialised.write_text(text)
    r = mh("-c", str(initialised), "dns", DOMAIN)
    assert r.returncode == 0, r.stderr
    z = zone(r.stdout)
    cfg = config.load(initialised)
    dom = cfg.domains[DOMAIN]
    assert z[("example.org.", "MX")] == ["10 mail.example.org."]
    assert z[("mail.example.org.", "A")] == ["192.0.2.25"]
    assert [txt_value(t) for t in z[("example.org.", "TXT")]] == ["v=spf1 ip4:192.0.2.25 mx ~all"]
    assert [txt_value(t) for t in z[(f"{dom.dkim_selector}._domainkey.example.org.", "TXT")]] == [
        dkim.public_record(Path(dom.dkim_key).read_bytes())]
    assert [txt_value(t) for t in z[("_dmarc.example.org.", "TXT")]] == [
        "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org"]
    assert [txt_value(t) for t in z[("_smtp._tls.example.org.", "TXT")]] == [  # RFC 8460 §3
        "v=TLSRPTv1; rua=mailto:postmaster@example.org"]
    assert z[("_submissions._tcp.example.org.", "SRV")] == ["0 1 465 mail.example.org."]
    assert z[("_submission._tcp.example.org.", "SRV")] == ["10 1 587 mail.example.org."]
    assert z[("_imaps._tcp.example.org.", "SRV")] == ["0 1 993 mail.example.org."]
    assert z[("_imap._tcp.example.org.", "SRV")] == ["10 1 143 mail.example.org."]
    assert z[("_pop3s._tcp.example.org.", "SRV")] == ["20 1 995 mail.example.org."]
    assert z[("_pop3._tcp.example.org.", "SRV")] == ["0 0 0 ."]  # disabled: RFC 6186 §4 "not available"
    # Only what this server serves: no autoconfig/autodiscover names, since nothing answers them.
    assert {name for name, _ in z} <= {"example.org.", "mail.example.org.", "_dmarc.example.org.",
                                       "_smtp._tls.example.org.",
                                       f"{dom.dkim_selector}._domainkey.example.org."} | {
        f"{svc}._tcp.example.org." for svc, _, _ in records.SERVICES}
    assert "autoconfig" not in r.stdout and "autodiscover" not in r.stdout


def test_dns_without_public_ip_says_so_and_lists_ed25519_keys(initialised: Path) -> None:
    assert mh("-c", str(initialised), "dkim", "keygen", DOMAIN, "--ed25519").returncode == 0
    r = mh("-c", str(initialised), "dns")
    assert r.returncode == 0, r.stderr
    assert "; public_ip is not set" in r.stdout
    z = zone(r.stdout)
    dom = config.load(initialised).domains[DOMAIN]
    assert [txt_value(t) for t in z[("example.org.", "TXT")]] == ["v=spf1 mx ~all"]
    assert txt_value(z[(f"{dom.dkim_ed25519_selector}._domainkey.example.org.", "TXT")][0]).startswith(
        "v=DKIM1; k=ed25519; p=")


def test_dns_on_a_dev_config_offers_no_loopback_services(tmp_path: Path) -> None:
    path = tmp_path / "mailhaven.toml"
    assert mh("init", "--domain", DOMAIN, "--config", str(path), "--dev").returncode == 0
    z = zone(mh("-c", str(path), "dns").stdout)
    assert all(z[(f"{svc}._tcp.example.org.", "SRV")] == ["0 0 0 ."] for svc, _, _ in records.SERVICES)


def test_dns_for_an_unknown_domain_is_one_line_exit_1(initialised: Path) -> None:
    r = mh("-c", str(initialised), "dns", "other.example")
    assert r.returncode == 1 and r.stderr.startswith("mailhaven: other.example: not one of this server's domains")


# --- pure parts: properties -----------------------------------------------------------------------------

def test_long_txt_values_are_split_into_255_octet_strings() -> None:
    value = "v=DKIM1; k=rsa; p=" + "A" * 600
    text = records.txt_strings(value)
    parts = _strings(text)
    assert all(len(json.loads(p)) <= 255 for p in parts) and len(parts) == 3
    assert txt_value(text) == value


_values = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
_comment = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@settings(max_examples=150, deadline=None)
@given(existing=st.dictionaries(st.sampled_from(["dkim_key", "dkim_selector", "catch_all"]), _values),
       other=st.dictionaries(st.sampled_from(["dkim_key", "catch_all"]), _values),
       comment=_comment, new=st.dictionaries(st.sampled_from(["dkim_key", "dkim_selector"]), _values, min_size=1),
       crlf=st.booleans())
@example(existing={}, other={}, comment="", new={"dkim_key": "# "}, crlf=False)  # the value once counted as a comment
def test_set_domain_keys_changes_exactly_the_given_keys(existing: dict[str, str], other: dict[str, str],
                                                         comment: str, new: dict[str, str], crlf: bool) -> None:
    def table(values: dict[str, str]) -> str:
        return "".join(f"{k} = {dkimkeys.toml_string(v)}\n" for k, v in values.items())

    # "#\t": a tab never appears unescaped in a TOML string, so a value (dkim_key = "# ") cannot
    # look like one of the comments counted below.
    text = (f"#\t{comment}\nhostname = \"mail.example.org\"\n\n[domains.\"other.example\"]\n{table(other)}\n"
            f"[domains.\"example.org\"]  #\t{comment}\n{table(existing)}#\t{comment}\n\n[tls]\ncert = \"c\"\n")
    if crlf:
        text = text.replace("\n", "\r\n")
    out = dkimkeys.set_domain_keys(text, "example.org", new)
    before, after = tomllib.loads(text), tomllib.loads(out)
    before["domains"]["example.org"].update(new)
    assert after == before
    assert out.count(f"#\t{comment}") == text.count(f"#\t{comment}") == 3  # comments survive
    if crlf:
        assert "\n" not in out.replace("\r\n", "")  # line ends kept
    else:
        assert "\r" not in out


@settings(max_examples=100, deadline=None)
@given(garbage=st.text(max_size=200))
def test_set_domain_keys_never_writes_something_it_cannot_read_back(garbage: str) -> None:
    text = f"[domains.\"example.org\"]\n{garbage}\n"
    try:
        out = dkimkeys.set_domain_keys(text, "example.org", {"dkim_key": "k"})
    except dkimkeys.DkimSetupError:
        return
    assert tomllib.loads(out)["domains"]["example.org"]["dkim_key"] == "k"
