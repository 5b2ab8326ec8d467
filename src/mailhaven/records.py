"""The DNS records a domain needs for this server, in zone-file syntax (`mailhaven dns DOMAIN`).

Owns: which records we recommend and how they read (pure; mypy --strict), for both `mailhaven dns`
and the fixes `mailhaven doctor` prints (one builder per record, so the two never disagree). The
caller reads the DKIM keys (policy.dkim.public_record) and passes their TXT values in.
Does not own: checking what is published (doctor.py), generating keys (dkimkeys.py).

Records, per domain (TTL 3600, owner names absolute); only for what this server serves:
- MX: `DOMAIN. MX 10 HOSTNAME.` (RFC 5321 §5.1);
- the host: `HOSTNAME. A|AAAA public_ip` when config public_ip is set (and its PTR, as a comment:
  receivers check forward-confirmed reverse DNS);
- SPF (RFC 7208): `v=spf1 [ip4:|ip6:public_ip] mx ~all`: this host and the MX hosts send for the
  domain; "~all" (softfail), not "-all": a receiver that applies SPF before DMARC would reject
  forwarded mail on "-all" before an aligned DKIM pass could rescue it (RFC 7489 §10.1), and the
  DMARC record below already tells receivers what to do with mail that fails both;
- DKIM (RFC 6376 §3.6.1, RFC 8463): `SELECTOR._domainkey.DOMAIN. TXT "v=DKIM1; k=...; p=..."`
  for each configured key, split into strings of at most 255 octets (RFC 1035 §3.3.14; a 2048-bit
  RSA key does not fit in one);
- DMARC (RFC 7489 §6.3): `v=DMARC1; p=quarantine; rua=mailto:postmaster@DOMAIN`: quarantine rather
  than reject for a new domain (a forwarder's mistakes land in Junk, not lost), aggregate reports
  to the domain's own postmaster (same domain: no external-destination record needed, §7.1);
- TLS reporting (RFC 8460 §3): `_smtp._tls.DOMAIN. TXT "v=TLSRPTv1; rua=mailto:postmaster@DOMAIN"`,
  so servers sending to us report the TLS problems they meet (to the same postmaster as DMARC);
- client configuration: SRV records of RFC 6186 (_submission, _imap, _pop3) and RFC 8314 §5.1
  (_submissions, _imaps, _pop3s), pointing at HOSTNAME and the configured port; a service without
  an enabled listener, or whose listener is bound to loopback, gets the "not available" form
  `0 0 0 .` (RFC 6186 §4, RFC 2782), so clients do not probe for it. Priorities
  prefer implicit TLS (RFC 8314 §5.1) and IMAP over POP3 (RFC 6186 §3.4 lets clients compare them).
No autoconfig/autodiscover names: Mailhaven serves no HTTP, so nothing would answer them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from mailhaven.config import Config

TTL = 3600

# (SRV service label, listener name, priority): RFC 6186 §3.1-3.3, RFC 8314 §5.1.
SERVICES: tuple[tuple[str, str, int], ...] = (
    ("_submissions", "submissions", 0),
    ("_submission", "submission", 10),
    ("_imaps", "imaps", 0),
    ("_imap", "imap", 10),
    ("_pop3s", "pop3s", 20),
    ("_pop3", "pop3", 30),
)


@dataclass(frozen=True)
class Record:
    name: str  # absolute, with the final dot
    rtype: str
    value: str  # zone-file text of the RDATA
    comment: str = ""


def fqdn(name: str) -> str:
    return name.rstrip(".") + "."


def txt_strings(text: str) -> str:
    """A TXT value as zone-file character-strings of at most 255 octets each (RFC 1035 §3.3.14),
    quoted, with `"` and `\\` escaped (RFC 1035 §5.1)."""
    data = text.encode("utf-8")
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    out = []
    for chunk in chunks:
        s = chunk.decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'"{s}"')
    return " ".join(out)


def spf_record(config: Config) -> str:
    """`v=spf1 [ip4:X|ip6:X] mx -all` (RFC 7208 §5.6 ip4/ip6, §5.4 mx, §5.1 all)."""
    parts = ["v=spf1"]
    if config.public_ip:
        ip = ipaddress.ip_address(config.public_ip)
        parts.append(("ip6:" if ip.version == 6 else "ip4:") + str(ip))
    parts += ["mx", "~all"]  # RFC 7489 §10.1: see the module docstring
    return " ".join(parts)


def dmarc_record(domain: str) -> str:
    return f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"


def mx(config: Config, domain: str) -> Record:
    return Record(fqdn(domain), "MX", f"10 {fqdn(config.hostname)}", "mail for the domain goes to this server")


def host(config: Config) -> Record | None:
    """HOSTNAME's A or AAAA record holding public_ip; None when public_ip is not set."""
    if not config.public_ip:
        return None
    ip = ipaddress.ip_address(config.public_ip)
    return Record(fqdn(config.hostname), "AAAA" if ip.version == 6 else "A", str(ip),
                  f"and the PTR of {ip} must name {config.hostname}")


def spf(config: Config, domain: str) -> Record:
    return Record(fqdn(domain), "TXT", txt_strings(spf_record(config)), "SPF: who may send for the domain")


def dkim(domain: str, selector: str, value: str) -> Record:
    return Record(fqdn(f"{selector}._domainkey.{domain}"), "TXT", txt_strings(value), "DKIM public key")


def dmarc(domain: str) -> Record:
    return Record(fqdn(f"_dmarc.{domain}"), "TXT", txt_strings(dmarc_record(domain)), "DMARC policy")


def tlsrpt_record(domain: str) -> str:
    return f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"


def tlsrpt(domain: str) -> Record:
    return Record(fqdn(f"_smtp._tls.{domain}"), "TXT", txt_strings(tlsrpt_record(domain)),
                  "TLS reports (RFC 8460) from other servers about mail to the domain")


def domain_records(config: Config, domain: str, dkim_keys: Sequence[tuple[str, str]]) -> list[Record]:
    """Every record to publish for `domain`; `dkim_keys` is [(selector, TXT value)] of the configured keys."""
    domain = domain.lower().rstrip(".")
    host_name = fqdn(config.hostname)
    out = [mx(config, domain)]
    address = host(config)
    if address is not None:
        out.append(address)
    out.append(spf(config, domain))
    out += [dkim(domain, selector, value) for selector, value in dkim_keys]
    out.append(dmarc(domain))
    out.append(tlsrpt(domain))
    for service, listener, priority in SERVICES:
        lc = config.listeners.get(listener)
        name = fqdn(f"{service}._tcp.{domain}")
        if lc is None or not lc.enabled:
            out.append(Record(name, "SRV", "0 0 0 .", "not offered"))
        elif ipaddress.ip_address(lc.address.split("%", 1)[0]).is_loopback:
            out.append(Record(name, "SRV", "0 0 0 .", f"listener {listener} is on loopback only"))
        else:
            out.append(Record(name, "SRV", f"{priority} 1 {lc.port} {host_name}"))
    return out


def line(record: Record, *, ttl: int = TTL) -> str:
    """One record as one zone-file line, without its comment (what doctor tells to publish)."""
    return f"{record.name} {ttl} IN {record.rtype} {record.value}"


def render(records: Sequence[Record], *, ttl: int = TTL, header: Sequence[str] = ()) -> str:
    """Zone-file lines: `NAME TTL IN TYPE VALUE ; comment`, names padded to one column."""
    width = max((len(r.name) for r in records), default=0)
    lines = [f"; {h}" for h in header]
    for r in records:
        line = f"{r.name:<{width}} {ttl} IN {r.rtype:<5} {r.value}"
        if r.comment:
            line += f" ; {r.comment}"
        lines.append(line)
    return "\n".join(lines) + "\n"


__all__ = ["Record", "SERVICES", "TTL", "dkim", "dmarc", "dmarc_record", "domain_records", "fqdn", "host", "line",
           "mx", "render", "spf", "spf_record", "txt_strings"]
