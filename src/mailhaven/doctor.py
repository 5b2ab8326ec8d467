"""`mailhaven doctor`: is this installation ready for the Internet, and if not, what exactly to change.

Owns: the checks and their wording. Each check returns `Finding`s (ok / warn / fail, a one-line
message, and for anything not ok the fix: the DNS record to publish, the command to run). The CLI
prints them (`render`) and exits 0 when nothing failed, 1 otherwise (`exit_code`).
Does not own: DNS (dns/resolver.py, built from config `dns`), SPF evaluation (policy/spf.py), DMARC
discovery (policy/dmarc.py), DKIM keys (policy/dkim.py), loading the config (config.py).

Checks:
- config: loads, users file loads (its warnings), certificate and key load together, hostname is
  not "localhost", dev mode is off, at least one domain;
- role addresses: postmaster@ and abuse@ of each domain reach a user through their own user or
  alias, not only implicitly (the first-user fallback of an older users file, or the catch-all);
- certificate: not expired (fail under 7 days left, warn under 21), covers `hostname` (RFC 6125
  §6.4 matching, one-label wildcards), not self-signed (warn);
- files: data_dir, users file, TLS key and DKIM keys are not world-readable, data_dir belongs to
  run_as_user when one is set, and run_as_user can read what a SIGHUP reload re-reads;
- host: `hostname` has an A/AAAA record (holding public_ip when set); PTR of public_ip names
  `hostname` (forward-confirmed reverse DNS, which big receivers require);
- DNS lists (config spam.dnsbl, spam.dnswl): each lists its RFC 5782 §5 test entry 127.0.0.2 and
  not 127.0.0.1 through our resolver; a 127.255.255.x answer ("you query through an open or public
  resolver", which the server ignores) fails with the advice to use a local resolver;
- per domain: MX points to `hostname`; exactly one SPF record, and it passes for this host's IP
  (RFC 7208 §4.5); each configured DKIM key is published at SELECTOR._domainkey.DOMAIN with the
  same public key (RFC 6376 §3.6.2.1); a DMARC record applies (RFC 7489 §6.6.3).
The records a fix tells to publish come from records.py, the builders `mailhaven dns` prints with,
so the two always give the same advice.
"""

from __future__ import annotations

import asyncio
import datetime
import grp
import ipaddress
import os
import pwd
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mailhaven import records
from mailhaven.config import Config
from mailhaven.dns.resolver import DomainNotFound, Resolver
from mailhaven.errors import ConfigError, DnsTempError

if TYPE_CHECKING:
    from mailhaven.auth.users import Directory

Status = Literal["ok", "warn", "fail"]

CERT_FAIL_DAYS = 7
CERT_WARN_DAYS = 21
TTL = records.TTL  # in the records we suggest


@dataclass(frozen=True)
class Finding:
    status: Status
    topic: str
    message: str
    fix: str = ""


def _ok(topic: str, message: str) -> Finding:
    return Finding("ok", topic, message)


def _warn(topic: str, message: str, fix: str = "") -> Finding:
    return Finding("warn", topic, message, fix)


def _fail(topic: str, message: str, fix: str = "") -> Finding:
    return Finding("fail", topic, message, fix)


def publish(record: records.Record) -> str:
    """One record in zone-file form, as we print it in fixes (records.line)."""
    return f"publish: {records.line(record)}"


# --- config --------------------------------------------------------------------------------------


def check_config(path: str | Path) -> tuple[Config | None, list[Finding]]:
    """Load the config, the users file and the certificate. (None, [fail]) when it does not load."""
    from mailhaven import config as configmod

    try:
        cfg = configmod.load(path)
    except ConfigError as e:
        return None, [_fail("config", str(e), f"fix the config file, then run: mailhaven -c {path} check-config")]
    out: list[Finding] = []
    try:
        from mailhaven.auth.users import Directory, UsersFile

        directory = Directory.load(cfg)
        users = UsersFile.load(cfg.users_file)
    except ConfigError as e:
        out.append(_fail("config", f"users file: {e}", "fix the users file (mailhaven user / alias commands)"))
    else:
        n_users, n_aliases = len(users.list_users()), len(users.list_aliases())
        out.append(_ok("config", f"{path} loads; {n_users} user(s), {n_aliases} alias(es), "
                       f"domains: {', '.join(sorted(cfg.domains)) or 'none'}"))
        roles = {r.text for r in directory.role_warnings}
        for w in directory.warnings:
            if w not in roles:  # those come below, each with its fix
                out.append(_warn("config", f"users file: {w}"))
        if n_users == 0:
            out.append(_warn("config", "no accounts yet", f"mailhaven -c {path} user add you@DOMAIN"))
        out += check_roles(cfg, directory, path)
    try:
        from mailhaven.tls import server_context

        server_context(cfg)
    except ConfigError as e:
        out.append(_fail("config", str(e), "point tls.cert and tls.key at a matching certificate and key"))
    if cfg.hostname == "localhost" or "." not in cfg.hostname:
        out.append(_fail("config", f"hostname is {cfg.hostname!r}, not this server's public name",
                         'set hostname = "mail.example.org" (the name in your MX record)'))
    if cfg.dev:
        out.append(_warn("config", "dev = true: AUTH without TLS is allowed on loopback, and mail from loopback "
                         "is not checked (SPF/DKIM/DMARC)", "set dev = false"))
    if not cfg.domains:
        out.append(_fail("config", "no [domains]: this server accepts mail for no one",
                         'add [domains."example.org"]'))
    return cfg, out


def check_roles(cfg: Config, directory: Directory, path: str | Path) -> list[Finding]:
    """postmaster@ (RFC 5321 §4.5.1) and abuse@ (RFC 2142 §4) of each domain: who gets their mail,
    and a warning with the alias to add where that is only implicit (auth.users.Directory)."""
    if not directory.user_names:
        return []  # "no accounts yet" says it all
    warned = {r.address: r for r in directory.role_warnings}
    out: list[Finding] = []
    for domain in sorted(cfg.domains):
        for role in ("postmaster", "abuse"):
            address = f"{role}@{domain}"
            r = warned.get(address)
            if r is not None:
                out.append(_warn(address, r.message, f"mailhaven -c {path} {r.fix}"))
                continue
            users, how = directory.postmaster(domain) if role == "postmaster" else directory.how(address)
            t = directory.targets(address)
            where = [*(users or []), *t.forward, *(command for command, _rcpt in t.programs)]
            out.append(_ok(address, f"goes to {', '.join(dict.fromkeys(where))} ({how or 'alias'})"))
    return out


# --- certificate ---------------------------------------------------------------------------------


def _name_matches(pattern: str, host: str) -> bool:
    """RFC 6125 §6.4.3: exact match, or "*" as the whole left-most label matching one label."""
    p, h = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if p == h:
        return True
    if p.startswith("*.") and "." in h:
        return h.split(".", 1)[1] == p[2:] and bool(h.split(".", 1)[0])
    return False


def check_certificate(cfg: Config, now: datetime.datetime | None = None) -> list[Finding]:
    from cryptography import x509

    topic = "certificate"
    if not cfg.tls.cert:
        return [_fail(topic, "no certificate configured: clients cannot use TLS",
                      "get a certificate for " + cfg.hostname + " (e.g. from Let's Encrypt) and set tls.cert "
                      "and tls.key")]
    try:
        certs = x509.load_pem_x509_certificates(Path(cfg.tls.cert).read_bytes())
    except (OSError, ValueError) as e:
        return [_fail(topic, f"cannot read {cfg.tls.cert}: {getattr(e, 'strerror', None) or e}")]
    leaf = certs[0]
    now = now or datetime.datetime.now(datetime.UTC)
    out: list[Finding] = []
    after, before = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    days = (after - now).total_seconds() / 86400
    renew = f"renew the certificate for {cfg.hostname}, install it at {cfg.tls.cert}, then reload (SIGHUP)"
    if now < before:
        out.append(_fail(topic, f"not valid before {before:%Y-%m-%d %H:%M} UTC (check the clock)"))
    elif days < 0:
        out.append(_fail(topic, f"expired on {after:%Y-%m-%d}", renew))
    elif days < CERT_FAIL_DAYS:
        out.append(_fail(topic, f"expires on {after:%Y-%m-%d}, in {days:.0f} day(s)", renew))
    elif days < CERT_WARN_DAYS:
        out.append(_warn(topic, f"expires on {after:%Y-%m-%d}, in {days:.0f} days", renew))
    else:
        out.append(_ok(topic, f"valid until {after:%Y-%m-%d} ({days:.0f} days)"))
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if any(_name_matches(n, cfg.hostname) for n in names):
        out.append(_ok(topic, f"covers {cfg.hostname}"))
    else:
        out.append(_fail(topic, f"does not cover {cfg.hostname} (names: {', '.join(names) or 'none'})",
                         f"get a certificate whose names include {cfg.hostname}"))
    if leaf.issuer == leaf.subject and len(certs) == 1:
        out.append(_warn(topic, "self-signed: mail clients will warn or refuse to connect",
                         f"use a certificate from a public CA for {cfg.hostname} (e.g. Let's Encrypt)"))
    return out


# --- files ---------------------------------------------------------------------------------------


def _secret_files(cfg: Config) -> list[tuple[str, str]]:
    files = [("users file", cfg.users_file)]
    if cfg.tls.key:
        files.append(("tls.key", cfg.tls.key))
    for name, dom in sorted(cfg.domains.items()):
        for key in ("dkim_key", "dkim_ed25519_key"):
            path = getattr(dom, key)
            if path:
                files.append((f"domains.{name}.{key}", path))
    return files


def _can_read(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def _run_user(cfg: Config) -> tuple[str, int, set[int]] | None:
    """(name, uid, gids) of run_as_user, None when not set or unknown."""
    if not cfg.run_as_user:
        return None
    try:
        pw = pwd.getpwnam(cfg.run_as_user)
        gid = grp.getgrnam(cfg.run_as_group).gr_gid if cfg.run_as_group else pw.pw_gid
    except KeyError:
        return None
    return pw.pw_name, pw.pw_uid, set(os.getgrouplist(pw.pw_name, gid)) | {gid}


def check_files(cfg: Config) -> list[Finding]:
    topic = "files"
    out: list[Finding] = []
    run = _run_user(cfg)
    if cfg.run_as_user and run is None:
        out.append(_fail(topic, f"run_as_user {cfg.run_as_user!r} (group {cfg.run_as_group or '-'}) does not exist",
                         f"useradd --system --home-dir {cfg.data_dir} --shell /usr/sbin/nologin {cfg.run_as_user}"))
    data = Path(cfg.data_dir)
    try:
        st = data.stat()
    except FileNotFoundError:
        out.append(_warn(topic, f"data_dir {data} does not exist yet (the server creates it)"))
    except OSError as e:
        out.append(_fail(topic, f"data_dir {data}: {e.strerror}"))
    else:
        owner = _owner(st.st_uid)
        if run is not None and st.st_uid != run[1]:
            out.append(_fail(topic, f"data_dir {data} belongs to {owner}, not {run[0]}",
                             f"chown -R {run[0]}: {data}"))
        elif st.st_mode & 0o077:
            out.append(_warn(topic, f"data_dir {data} is open to others (mode {stat.S_IMODE(st.st_mode):04o})",
                             f"chmod 700 {data}"))
        else:
            out.append(_ok(topic, f"data_dir {data}: owner {owner}, mode {stat.S_IMODE(st.st_mode):04o}"))
    if cfg.queue.relay_auth_file:
        out.append(_relay_auth_finding(cfg))
    for what, path in _secret_files(cfg):
        try:
            st = os.stat(path)
        except OSError as e:
            out.append(_fail(topic, f"{what} {path}: {e.strerror}"))
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o004:
            out.append(_fail(topic, f"{what} {path} is world-readable (mode {mode:04o})", f"chmod o-rwx {path}"))
        elif run is not None and not _can_read(st, run[1], run[2]):
            out.append(_fail(topic, f"{what} {path} is not readable by {run[0]} (a reload would fail)",
                             f"chgrp {run[0]} {path} && chmod 640 {path}"))
        else:
            out.append(_ok(topic, f"{what} {path}: mode {mode:04o}, owner {_owner(st.st_uid)}"))
    return out


def _relay_auth_finding(cfg: Config) -> Finding:
    """[queue] relay_auth_file: private (mode 0600, owned by the user running the server) and one
    USER:PASSWORD line (delivery/relayauth.py, which delivery applies too)."""
    from mailhaven.delivery import relayauth

    path = cfg.queue.relay_auth_file
    try:
        creds = relayauth.load(path, cfg.run_as_user)
    except ConfigError as e:
        owner = cfg.run_as_user or _owner(os.geteuid())
        return _fail("files", f"{e}; mail through the relay waits (4.7.0) until this is fixed",
                     f"chown {owner} {path} && chmod 600 {path}")
    return _ok("files", f"queue.relay_auth_file {path}: mode 0600, login {creds.user}")


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --- DNS -----------------------------------------------------------------------------------------


async def _host_addresses(resolver: Resolver, host: str) -> list[str]:
    return await resolver.addresses(host)


def _ip_mechanism(ip: str) -> str:
    return ("ip6:" if ipaddress.ip_address(ip).version == 6 else "ip4:") + ip


async def check_host(cfg: Config, resolver: Resolver) -> list[Finding]:
    """hostname's addresses and the PTR of public_ip."""
    host = cfg.hostname
    topic = f"dns {host}"
    out: list[Finding] = []
    try:
        addrs = await _host_addresses(resolver, host)
    except DnsTempError as e:
        return [_fail(topic, f"lookup failed: {e.text}", "check dns.nameservers and try again")]
    wanted = records.host(cfg)
    if wanted is not None:
        if cfg.public_ip in addrs:
            out.append(_ok(topic, f"{wanted.rtype} {cfg.public_ip}"))
        else:
            out.append(_fail(topic, f"has {', '.join(addrs) or 'no address'}, not public_ip {cfg.public_ip}",
                             publish(wanted)))
    elif addrs:
        out.append(_ok(topic, f"addresses {', '.join(addrs)}"))
        out.append(_warn(topic, "public_ip is not set, so the PTR check is skipped",
                         f'set public_ip = "{addrs[-1]}" (this server\'s public address)'))
    else:
        out.append(_fail(topic, "has no A or AAAA record",
                         publish(records.Record(records.fqdn(host), "A", "YOUR.PUBLIC.IP"))))
    if cfg.public_ip:
        ptopic = f"dns PTR {cfg.public_ip}"
        try:
            names = await resolver.ptr(cfg.public_ip)
        except DnsTempError as e:
            out.append(_fail(ptopic, f"lookup failed: {e.text}", "check dns.nameservers and try again"))
        else:
            if host.lower() in (n.lower() for n in names):
                out.append(_ok(ptopic, f"points to {host}"))
            else:
                out.append(_fail(ptopic, f"points to {', '.join(names) or 'nothing'}, not {host}",
                                 f"ask whoever provides {cfg.public_ip} (your hosting provider) to set its reverse "
                                 f"DNS (PTR) to {host}"))
    return out


def _spf_records(txts: Iterable[str]) -> list[str]:
    # RFC 7208 §4.5: "v=spf1" exactly, then a space or the end (case-insensitive).
    return [t for t in txts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]


def _publish_txt(name: str, value: str) -> str:
    return publish(records.Record(records.fqdn(name), "TXT", records.txt_strings(value)))


def _spf_with(record: str, mechanism: str) -> str:
    """The published record amended to cover this host (the admin's other senders stay)."""
    head, _, rest = record.partition(" ")
    return f"{head} {mechanism} {rest}".rstrip() if rest else f"{head} {mechanism} ~all"


async def check_mx(cfg: Config, resolver: Resolver, domain: str) -> list[Finding]:
    topic = f"dns {domain} MX"
    fix = publish(records.mx(cfg, domain))
    try:
        mx = await resolver.mx(domain)
    except DomainNotFound:
        return [_fail(topic, f"{domain} does not exist in DNS", "register the domain / create its zone; then " + fix)]
    except DnsTempError as e:
        return [_fail(topic, f"lookup failed: {e.text}", "check dns.nameservers and try again")]
    hosts = [h for _, h in sorted(mx)]
    if cfg.hostname.lower() in hosts:
        pref = min(p for p, h in mx if h == cfg.hostname.lower())
        return [_ok(topic, f"{pref} {cfg.hostname}")]
    if not mx:
        return [_fail(topic, "no MX record", fix)]
    return [_fail(topic, f"points to {', '.join(hosts)}, not {cfg.hostname}", fix)]


async def check_spf(cfg: Config, resolver: Resolver, domain: str) -> list[Finding]:
    from mailhaven.policy.spf import check_host as spf_check

    topic = f"dns {domain} SPF"
    try:
        found = _spf_records(await resolver.txt(domain))
        ips = [cfg.public_ip] if cfg.public_ip else await _host_addresses(resolver, cfg.hostname)
    except DnsTempError as e:
        return [_fail(topic, f"lookup failed: {e.text}", "check dns.nameservers and try again")]
    mechanism = _ip_mechanism(ips[0]) if ips else f"a:{cfg.hostname}"
    if not found:
        return [_fail(topic, "no SPF record", publish(records.spf(cfg, domain)))]
    if len(found) > 1:  # RFC 7208 §4.5: more than one record is a permerror
        return [_fail(topic, f"{len(found)} SPF records (receivers treat that as an error)",
                      "keep exactly one; " + _publish_txt(domain, _spf_with(found[0], mechanism)))]
    record = found[0]
    if not ips:
        return [_warn(topic, f"{record!r} found, but this host's IP is unknown (set public_ip)")]
    bad: list[str] = []
    for ip in ips:
        result = await spf_check(resolver, ip, f"postmaster@{domain}", cfg.hostname)
        if result.result != "pass":
            bad.append(f"{ip}: {result.result}")
    if not bad:
        return [_ok(topic, f"{record!r} passes for {', '.join(ips)}")]
    return [_fail(topic, f"{record!r} does not pass for this host ({'; '.join(bad)})",
                  "replace it: " + _publish_txt(domain, _spf_with(record, mechanism)))]


def _dkim_tags(record: str) -> dict[str, str]:
    # RFC 6376 §3.2 tag-list; whitespace inside p= is ignored (§3.6.1 "base64string" allows FWS).
    tags: dict[str, str] = {}
    for part in record.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            tags.setdefault(k.strip().lower(), "".join(v.split()))
    return tags


def _load_public_record(path: str) -> str:
    from mailhaven.policy.dkim import public_record

    return public_record(Path(path).read_bytes())


async def check_dkim(cfg: Config, resolver: Resolver, domain: str) -> list[Finding]:
    dom = cfg.domains.get(domain)
    keys = [] if dom is None else [(dom.dkim_selector, dom.dkim_key), (dom.dkim_ed25519_selector, dom.dkim_ed25519_key)]
    keys = [(sel, path) for sel, path in keys if path]
    if not keys:
        return [_warn(f"dns {domain} DKIM", "no DKIM key configured: outgoing mail is not signed",
                      f'create a key and set domains."{domain}".dkim_key')]
    out: list[Finding] = []
    for selector, path in keys:
        name = f"{selector}._domainkey.{domain}"
        topic = f"dns {name}"
        try:
            expected = await asyncio.to_thread(_load_public_record, path)
        except (OSError, ValueError) as e:
            out.append(_fail(topic, f"cannot read the key {path}: {getattr(e, 'strerror', None) or e}"))
            continue
        fix = publish(records.dkim(domain, selector, expected))
        try:
            txts = await resolver.txt(name)
        except DnsTempError as e:
            out.append(_fail(topic, f"lookup failed: {e.text}", "check dns.nameservers and try again"))
            continue
        want = _dkim_tags(expected)
        found = [_dkim_tags(t) for t in txts]
        if any(t.get("p") == want["p"] and t.get("k", "rsa") == want["k"] for t in found):
            out.append(_ok(topic, f"publishes the {want['k']} key of {path}"))
        elif not txts:
            out.append(_fail(topic, "no DKIM record", fix))
        else:
            out.append(_fail(topic, f"the published key is not the one in {path}", "replace it: " + fix))
    return out


async def check_dmarc(cfg: Config, resolver: Resolver, domain: str) -> list[Finding]:
    from mailhaven.policy.dmarc import discover, parse_record

    topic = f"dns _dmarc.{domain}"
    fix = publish(records.dmarc(domain))
    try:
        txts = await resolver.txt(f"_dmarc.{domain}")
        record, where = await discover(resolver, domain)
    except DnsTempError as e:
        return [_fail(topic, f"lookup failed: {e.text}", "check dns.nameservers and try again")]
    own = [t for t in txts if parse_record(t) is not None]
    if len(own) > 1:  # RFC 7489 §6.6.3: several records -> no policy at all
        return [_fail(topic, f"{len(own)} DMARC records (receivers then apply none)", "keep exactly one; " + fix)]
    if record is None:
        return [_fail(topic, "no DMARC record", fix)]
    where_text = "" if where == domain else f" (from _dmarc.{where})"
    policy = record.p if where == domain else record.sp
    if policy == "none":
        return [_warn(topic, f"p=none{where_text}: receivers only report, they do not act",
                      "once reports look right: " + fix)]
    return [_ok(topic, f"p={policy}{where_text}")]


async def check_domain(cfg: Config, resolver: Resolver, domain: str) -> list[Finding]:
    out: list[Finding] = []
    if domain not in cfg.domains:
        out.append(_fail(f"domain {domain}", "not one of this server's [domains]",
                         f'add [domains."{domain}"] to the config'))
    for check in (check_mx, check_spf, check_dkim, check_dmarc):
        out += await check(cfg, resolver, domain)
    return out


# --- DNS block and allow lists ([spam] dnsbl, dnswl) ------------------------------------------------


async def _list_answer(resolver: Resolver, ip: str, zone: str) -> tuple[str, list[str]]:
    """(status, addresses) of one list for one test address (policy/dnsbl.py's classify)."""
    from mailhaven.policy import dnsbl

    try:
        addresses, _ = await resolver.a_ttl(dnsbl.query_name(ip, zone))
    except DnsTempError as e:
        return "error", [str(e)]
    return dnsbl.classify(addresses), addresses


async def check_dns_list(resolver: Resolver, zone: str, kind: str) -> Finding:
    """RFC 5782 §5: a list must list its test entry 127.0.0.2 and must not list 127.0.0.1. An
    answer of 127.255.255.x means the list refuses our resolver (Spamhaus answers so to queries
    through public resolvers); the server then ignores that list's answers."""
    from mailhaven.policy import dnsbl

    topic = f"{kind} {zone}"
    (positive, pos_codes), (negative, _) = await asyncio.gather(
        _list_answer(resolver, "127.0.0.2", zone), _list_answer(resolver, "127.0.0.1", zone))
    if "refused" in (positive, negative):
        return _fail(topic, f"answers {', '.join(pos_codes) or '127.255.255.x'}: {dnsbl.ADVICE['refused']}; "
                     "the server ignores this list's answers until then",
                     "run a local resolver (unbound) and set [dns] nameservers = [\"127.0.0.1\"], or remove "
                     "the list")
    if "bogus" in (positive, negative):
        return _fail(topic, dnsbl.ADVICE["bogus"] + "; the server ignores those answers",
                     "use a resolver that answers NXDOMAIN as it is ([dns] nameservers)")
    if negative == "listed":
        return _fail(topic, "lists 127.0.0.1, which RFC 5782 §5 forbids: the list is shut down or lists "
                     "everything; it would refuse every client", f"remove {zone!r} from spam.{kind}")
    if "error" in (positive, negative):
        return _warn(topic, dnsbl.ADVICE["error"], "check the list name and [dns] nameservers")
    if positive != "listed":
        return _warn(topic, "does not list its test entry 127.0.0.2 (RFC 5782 §5): wrong list name, or "
                     "the list does not answer you", f"check the name {zone!r} in spam.{kind}")
    return _ok(topic, "answers: test entry 127.0.0.2 listed, 127.0.0.1 not")


async def check_dns_lists(cfg: Config, resolver: Resolver) -> list[Finding]:
    """Every configured block and allow list, tested through our resolver."""
    pairs = [(z, "dnsbl") for z in cfg.spam.dnsbl] + [(z, "dnswl") for z in cfg.spam.dnswl]
    return list(await asyncio.gather(*(check_dns_list(resolver, z, kind) for z, kind in pairs)))


# --- running it all ------------------------------------------------------------------------------


async def diagnose(config_path: str | Path, domains: Sequence[str] = (), *,
                   now: datetime.datetime | None = None) -> list[Finding]:
    """Every check, in order. Domains default to the config's [domains]."""
    cfg, out = check_config(config_path)
    if cfg is None:
        return out
    out += check_certificate(cfg, now)
    out += check_files(cfg)
    resolver = Resolver.from_config(cfg.dns)
    out += await check_host(cfg, resolver)
    out += await check_dns_lists(cfg, resolver)
    wanted = [d.lower().rstrip(".") for d in domains] or sorted(cfg.domains)
    for domain in wanted:
        out += await check_domain(cfg, resolver, domain)
    return out


_LABEL = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def render(findings: Sequence[Finding]) -> str:
    lines: list[str] = []
    width = max((len(f.topic) for f in findings), default=0)
    for f in findings:
        lines.append(f"{_LABEL[f.status]}  {f.topic:<{width}}  {f.message}")
        if f.fix and f.status != "ok":
            lines.append(f"      {'':<{width}}  -> {f.fix}")
    fails = sum(f.status == "fail" for f in findings)
    warns = sum(f.status == "warn" for f in findings)
    if fails:
        lines.append(f"{fails} problem(s) to fix, {warns} warning(s).")
    else:
        lines.append(f"All good ({warns} warning(s)).")
    return "\n".join(lines) + "\n"


def exit_code(findings: Sequence[Finding]) -> int:
    return 1 if any(f.status == "fail" for f in findings) else 0


__all__ = ["Finding", "diagnose", "render", "exit_code", "check_config", "check_roles", "check_certificate", "check_files",
           "check_host", "check_dns_lists", "check_dns_list", "check_domain", "check_mx", "check_spf", "check_dkim", "check_dmarc", "publish"]
