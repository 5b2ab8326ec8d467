"""The `mailhaven` command line (argparse).

Owns: parsing arguments, `init` (a working config, users file, DKIM key and data folder; with
`--run-as-user` as root, that user's read access to them, access.py; with `--postmaster ADDRESS`
the postmaster@/abuse@ aliases, which otherwise the first `user add` in a domain writes:
auth.users.UsersFile.add_role_aliases), `serve [--dev]`
(the dev environment under ./mailhaven-dev), `check-config`, `user` and `alias` editing through
auth.users.UsersFile, `doctor [DOMAIN...]` (doctor.py: exit 0 all good, 1 problems), `health
[LISTENER...]` (health.py: exit 0 every listener greets, 1 not), and turning every failure into one
line on stderr: exit 2 for configuration errors, 1 for anything else, never a traceback.
`dkim keygen DOMAIN [--selector S] [--ed25519]` (a new key file and the config keys naming it,
dkimkeys.py) and `dns [DOMAIN...]` (the records to publish, records.py), `queue ...` and `auth
blocks|unblock IP|ADDRESS` (the running server's queue and login delays, through control.py).
`spam block|unblock|allow|disallow USER ADDRESS|@DOMAIN...` and `spam list USER`: a user's sender
lists (policy/senderlists.py).
`sieve ...`: users' Sieve scripts on disk (sievecmd.py).
`storage migrate --to postgresql [--force]`: the SQLite indexes and the file queue into PostgreSQL
(storage_migrate.py).
Does not own: what the server does (app.py), the config schema (config.py), the users file format
(auth/users.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mailhaven import __version__, seams
from mailhaven import config as configmod
from mailhaven.config import Config
from mailhaven.errors import ConfigError

DEFAULT_CONFIG = "/etc/mailhaven/mailhaven.toml"
DEV_DIR = "mailhaven-dev"
DEV_USER = "dev@example.test"


class CliError(Exception):
    """A user-facing failure that is not a config error: one line, exit 1."""


# --- helpers -------------------------------------------------------------------------------------


def _load_config(args: argparse.Namespace) -> Config:
    return configmod.load(args.config)


def _users_module() -> Any:
    try:
        from mailhaven.auth import users
    except ModuleNotFoundError as e:  # pragma: no cover - only while auth/users.py is being written
        raise CliError("user management is not available in this build") from e
    return users


def _open_users(cfg: Config) -> Any:
    """The users file named by the config (ConfigError if it is broken)."""
    return _users_module().UsersFile.load(cfg.users_file)


def _hash(password: str) -> str:
    from mailhaven.auth.passwords import hash_password

    return hash_password(password)


def _local_address(cfg: Config, address: str, what: str = "address") -> str:
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise CliError(f"{address!r}: expected an {what} like alice@example.org")
    domain = domain.lower().rstrip(".")
    if not cfg.is_local_domain(domain):
        known = ", ".join(sorted(cfg.domains)) or "none"
        raise CliError(f"{address}: domain {domain} is not one of this server's domains ({known})")
    return f"{local}@{domain}"


def _read_password(prompt_confirm: bool = True) -> str:
    """From a terminal: prompt twice with getpass. Otherwise: one line from stdin."""
    if sys.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if prompt_confirm and getpass.getpass("Password (again): ") != pw:
            raise CliError("passwords do not match")
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    if not pw.strip():
        raise CliError("empty password refused")
    return pw


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file atomically (temp file, fsync, rename) with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _make_cert(cert: Path, key: Path, hostnames: Sequence[str]) -> None:
    """A self-signed certificate for `hostnames`, unless both files already exist."""
    if cert.exists() and key.exists():
        return
    cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    from mailhaven.tls import make_self_signed

    make_self_signed(cert, key, list(hostnames))


# --- init ----------------------------------------------------------------------------------------


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def render_config(*, domain: str, hostname: str, data_dir: str, dev: bool, run_as_user: str = "") -> str:
    """The config `init` writes: the essentials set, everything else at its default (see the sample)."""
    address = "127.0.0.1" if dev else "0.0.0.0"
    lines = [
        "# Mailhaven configuration written by `mailhaven init`.",
        "# Every key, with its documentation and default: config/mailhaven.toml in the source tree.",
        "# Check it with `mailhaven -c THIS_FILE check-config`; reload a running server with SIGHUP.",
        "",
        f"hostname = {_toml_str(hostname)}",
        f"data_dir = {_toml_str(data_dir)}",
        "# Users and aliases: edit with `mailhaven user ...` and `mailhaven alias ...`.",
        'users_file = "users.toml"',
        f"dev = {'true' if dev else 'false'}",
    ]
    if run_as_user:
        lines += ["# The service user (systemd's User=; a start as root switches to it after binding).",
                  "# `init --run-as-user` gave it read access to this file, users.toml and the keys.",
                  f"run_as_user = {_toml_str(run_as_user)}"]
    lines += [
        "",
        "[delivery]",
        "# Forwarding to other servers: the secret of the rewritten senders (SRS), made by init.",
        'srs_secret_file = "srs.secret"',
        "",
        "[domains." + _toml_str(domain) + "]",
        "# DKIM signing key made by init. New key: `mailhaven dkim keygen DOMAIN`; the DNS records to",
        "# publish (DKIM, SPF, DMARC, MX, client SRV): `mailhaven dns DOMAIN`.",
        "",
        "[tls]",
        "# A self-signed certificate made by init. Replace it with a real one (e.g. from an ACME",
        "# client) and send SIGHUP; clients verify the certificate of IMAP, POP3 and submission.",
        'cert = "tls/cert.pem"',
        'key = "tls/key.pem"',
        "",
    ]
    if dev:
        lines += ["[auth]", "# Dev only: logins without TLS on loopback.", "allow_plaintext_loopback = true", ""]
    for name in configmod.LISTENER_NAMES:
        port = configmod.DEV_PORTS[name] if dev else configmod._LISTENER_DEFAULTS[name]["port"]
        lines += [f"[listeners.{name}]", f"address = {_toml_str(address)}", f"port = {port}", ""]
    return "\n".join(lines)


def init_dkim_hook(config_dir: Path, domain: str) -> dict[str, str]:
    """Make the domain's RSA DKIM key under `config_dir` (dkimkeys.py: dkim/DOMAIN.SELECTOR.key,
    0600) and return the `[domains.D]` keys that enable signing with it."""
    from mailhaven import dkimkeys

    try:
        selector = dkimkeys.new_selector(config_dir, domain, set(), "rsa")
        path = dkimkeys.key_path(config_dir, domain, selector)
        pem, _ = dkimkeys.generate("rsa")
        dkimkeys.write_key(path, pem)
    except dkimkeys.DkimSetupError as e:
        raise CliError(str(e)) from None
    return {"dkim_selector": selector, "dkim_key": dkimkeys.relative_to(config_dir, path)}


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if path.exists() and not args.force:
        raise CliError(f"{path} already exists (use --force to overwrite it)")
    config_dir = path.resolve().parent
    config_dir.mkdir(parents=True, exist_ok=True)
    domain = args.domain.lower().rstrip(".")
    hostname = args.hostname or f"mail.{domain}"
    if args.data_dir:
        data_dir = Path(args.data_dir).expanduser().absolute()
    else:
        data_dir = config_dir / "data" if args.dev else Path("/var/lib/mailhaven")
    text = render_config(domain=domain, hostname=hostname, data_dir=str(data_dir), dev=args.dev,
                         run_as_user=args.run_as_user or "")
    # Validate the names before anything is written (ConfigError = exit 2, nothing left behind).
    checked = configmod.from_dict({"hostname": hostname, "domains": {domain: {}}}, config_dir)
    if args.run_as_user:
        _service_ids(args.run_as_user)
    postmaster = _init_postmaster(args.postmaster, next(iter(checked.domains))) if args.postmaster else ""
    extra = init_dkim_hook(config_dir, domain)
    if extra:
        text = text.replace("[domains." + _toml_str(domain) + "]\n",
                            "[domains." + _toml_str(domain) + "]\n"
                            + "".join(f"{k} = {_toml_str(v)}\n" for k, v in extra.items()), 1)
    _make_cert(config_dir / "tls" / "cert.pem", config_dir / "tls" / "key.pem", [hostname, domain])
    srs_file = config_dir / "srs.secret"
    if not srs_file.exists():  # never replaced: addresses made with it must still reverse (21 days)
        _write_private(srs_file, secrets.token_urlsafe(32) + "\n", mode=0o640)
    users_file = config_dir / "users.toml"
    if not users_file.exists():  # never overwrite accounts, even with --force
        _users_module().UsersFile(users_file).save()  # empty, mode 0600
    roles: list[tuple[str, str]] = []
    needs_user = bool(postmaster)
    if postmaster:  # aliases only where the names are free: an existing users file keeps its own
        with _users_module().UsersFile.edit(users_file, create=False) as uf:
            roles = uf.add_role_aliases(domain, postmaster)
            needs_user = uf.get_user(postmaster) is None
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    _write_private(path, text, mode=0o640)
    cfg = configmod.load(path)  # what we wrote must load
    print(f"wrote {path}")
    print(f"users file {users_file}, data folder {data_dir}")
    if extra:
        print(f"DKIM key {config_dir / extra['dkim_key']} (selector {extra['dkim_selector']})")
    _init_access(cfg, path.resolve(), users_file, args.run_as_user or "")
    for alias, target in roles:
        print(f"alias {alias} -> {target}")
    if needs_user:
        print(f"next: mailhaven -c {path} user add {postmaster}")
    elif not postmaster:
        print(f"next: mailhaven -c {path} user add you@{domain} (the first user of {domain} also gets the mail "
              f"for postmaster@{domain} and abuse@{domain})")
    print(f"then publish the DNS records printed by: mailhaven -c {path} dns {domain}")
    return 0


def _service_ids(user: str, group: str = "") -> tuple[int, int]:
    from mailhaven import access

    try:
        return access.service_ids(user, group)
    except access.AccessError as e:
        raise CliError(str(e)) from None


def _init_access(cfg: Config, config_file: Path, users_file: Path, user: str) -> None:
    """As root with --run-as-user: give that user read access to what the server reads and its
    data folder (access.py), and print each path with its new owner and mode."""
    from mailhaven import access

    if not user:
        if os.geteuid() == 0:
            print("these files are root's alone: to run the server as another user (the systemd unit's "
                  "User=mailhaven), run init again with --force --run-as-user mailhaven")
        return
    if os.geteuid() != 0:
        print(f"not run as root: owners and modes left as they are (run init as root to give {user} "
              "read access)")
        return
    shared = [(config_file, access.SECRET_MODE), (users_file, access.SECRET_MODE)]
    if cfg.tls.cert and cfg.tls.key:
        shared += [(Path(cfg.tls.cert), access.PUBLIC_MODE), (Path(cfg.tls.key), access.SECRET_MODE)]
    for dom in cfg.domains.values():
        shared += [(Path(k), access.SECRET_MODE) for k in (dom.dkim_key, dom.dkim_ed25519_key) if k]
    if cfg.delivery.srs_secret_file:
        shared.append((Path(cfg.delivery.srs_secret_file), access.SECRET_MODE))
    try:
        lines = access.grant(config_dir=config_file.parent, shared=shared, data_dir=Path(cfg.data_dir),
                             user=user, group=cfg.run_as_group)
    except access.AccessError as e:
        raise CliError(str(e)) from None
    print(f"gave {user} read access (owner:group mode):")
    for line in lines:
        print(f"  {line}")


def _init_postmaster(address: str, domain: str) -> str:
    """`init --postmaster ADDRESS`: a valid address in the domain being set up (its user is added
    next; a postmaster elsewhere is an alias to forward, made with `alias add` once SRS is set up)."""
    users = _users_module()
    try:
        canon = users.canonical(address.strip())
    except ValueError as e:
        raise CliError(f"--postmaster {address}: not a valid address ({e})") from None
    if canon.rpartition("@")[2] != domain:
        raise CliError(f"--postmaster {address}: must be an address in {domain} (to forward it elsewhere: "
                       f"mailhaven alias add postmaster@{domain} {address})")
    return str(canon)


# --- check-config --------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    directory = _users_module().Directory.load(cfg)
    from mailhaven.tls import server_context

    server_context(cfg)  # the certificate and key must load together
    _check_dkim_keys(cfg)
    if cfg.queue.relay_auth_file:
        from mailhaven.delivery import relayauth

        relayauth.load(cfg.queue.relay_auth_file, cfg.run_as_user)  # private (0600, ours) and USER:PASSWORD
    if cfg.delivery.allow_programs:
        from mailhaven.delivery.program import check_user

        check_user(cfg)  # [delivery] program_user: exists, not root, one we can run programs as
    for warning in directory.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("OK")
    return 0


def _check_dkim_keys(cfg: Config) -> None:
    """Every configured DKIM key can be read (by whoever runs us: check as the service user) and
    is an RSA or ed25519 private key; ConfigError naming the key and file otherwise."""
    from mailhaven.policy.dkim import public_record

    for name, dom in sorted(cfg.domains.items()):
        for key in ("dkim_key", "dkim_ed25519_key"):
            path = getattr(dom, key)
            if not path:
                continue
            try:
                public_record(Path(path).read_bytes())
            except OSError as e:
                raise ConfigError(f"domains.{name}.{key}: cannot read {path}: {e.strerror}") from None
            except (ValueError, TypeError) as e:  # TypeError: a key that needs a password
                raise ConfigError(f"domains.{name}.{key}: {path} is not a usable private key ({e})") from None


# --- serve ---------------------------------------------------------------------------------------


def _dev_environment(cwd: Path) -> tuple[Config, str]:
    """./mailhaven-dev: certificate, users file with dev@example.test, stable password, data."""
    work = cwd / DEV_DIR
    work.mkdir(mode=0o700, exist_ok=True)
    cert, key = work / "tls" / "cert.pem", work / "tls" / "key.pem"
    _make_cert(cert, key, ["localhost", "127.0.0.1", "::1"])
    users_file = work / "users.toml"
    pw_file = work / "dev-password"
    fresh = not pw_file.exists()
    if fresh:
        _write_private(pw_file, secrets.token_urlsafe(12) + "\n")
    password = pw_file.read_text(encoding="utf-8").strip()
    cfg = configmod.dev_config(work, cert=cert, key=key, users_file=users_file)
    users = _users_module()
    with users.UsersFile.edit(users_file, create=True) as uf:
        if uf.get_user(DEV_USER) is None:
            uf.add_user(DEV_USER, _hash(password))
            uf.add_role_aliases(DEV_USER.rpartition("@")[2], DEV_USER)
        elif fresh:  # the password file was removed: the new password replaces the old one
            uf.set_password(DEV_USER, _hash(password))
    return cfg, password


def _banner(cfg: Config, password: str) -> Callable[[Any], None]:
    def show(ctx: seams.Context) -> None:
        print("Mailhaven dev server")
        for name in configmod.LISTENER_NAMES:
            if name in ctx.addresses:
                host, port = ctx.addresses[name]
                print(f"  {name:<12} {host} port {port}")
            elif name in cfg.listeners:
                print(f"  {name:<12} (not available in this build)")
        print(f"  account      {DEV_USER}")
        print(f"  password     {password}")
        print(f"  data         {cfg.data_dir}")
        print("Stop with Ctrl-C.", flush=True)

    return show


GC_THRESHOLDS = (50_000, 20, 20)  # CPython's default is (700, 10, 10)


def _tune_gc() -> None:
    """Fewer cyclic garbage collections in the server (workers inherit it). Its heap holds about 100
    container objects per connection, so at 10,000 IDLE connections a full collection takes 0.4 s
    of the event loop, and the wake-ups of one delivery's fan-out (a few objects per connection)
    used to set off collections of every generation: 0.45 s of the 1.3 s of CPU that fan-out took
    (bench/bench_idle.py, issue 14 item 5). Objects without cycles are freed at once either way;
    cycles live a little longer."""
    import gc

    gc.set_threshold(*GC_THRESHOLDS)


def cmd_serve(args: argparse.Namespace) -> int:
    from mailhaven import app

    if args.dev:
        cfg, password = _dev_environment(Path.cwd())
        ready: Callable[[Any], None] | None = _banner(cfg, password)
    else:
        cfg = _load_config(args)
        ready = None
    os.umask(0o077)  # everything the server creates is private (systemd's UMask=0077 does the same)
    _tune_gc()
    if cfg.server.processes > 1 and not args.dev:  # --dev: always one process
        from mailhaven import supervisor

        return supervisor.serve(cfg)
    asyncio.run(app.run(cfg, ready=ready, handle_signals=True, configure_logging=True))
    return 0


# --- doctor / health -----------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from mailhaven import doctor

    findings = asyncio.run(doctor.diagnose(args.config, args.domains))  # a broken config is a finding
    sys.stdout.write(doctor.render(findings))
    return doctor.exit_code(findings)


def cmd_health(args: argparse.Namespace) -> int:
    from mailhaven import health

    cfg = _load_config(args)
    unknown = [n for n in args.listeners if n not in cfg.listeners]
    if unknown:
        raise CliError(f"health: no such listener in the config: {', '.join(unknown)}")
    probes = asyncio.run(health.check(cfg, args.listeners, wait=args.timeout))
    sys.stdout.write(health.render(probes))
    return health.exit_code(probes)


def cmd_auth(args: argparse.Namespace) -> int:
    from mailhaven import control

    cfg = _load_config(args)
    status, text = control.auth_command(cfg.control_path, args.action, args.target)
    (sys.stdout if status == 0 else sys.stderr).write(text.rstrip("\n") + "\n")
    return status


def cmd_queue(args: argparse.Namespace) -> int:
    from mailhaven import control

    cfg = _load_config(args)
    status, text = control.queue_command(cfg.control_path, args.action, args.id, as_json=args.json)
    (sys.stdout if status == 0 else sys.stderr).write(text.rstrip("\n") + "\n")
    return status


# --- dkim / dns ----------------------------------------------------------------------------------


def _configured_domain(cfg: Config, domain: str) -> str:
    d = domain.lower().rstrip(".")
    if not cfg.is_local_domain(d):
        known = ", ".join(sorted(cfg.domains)) or "none"
        raise CliError(f"{domain}: not one of this server's domains ({known})")
    return d


def cmd_dkim(args: argparse.Namespace) -> int:
    """`dkim keygen DOMAIN`: a new key file and selector, the config pointing at them (the running
    server signs with them after its next reload), and the TXT record to publish first."""
    from mailhaven import dkimkeys, records

    cfg = _load_config(args)
    domain = _configured_domain(cfg, args.domain)
    config_path = Path(args.config)
    config_dir = config_path.resolve().parent
    algorithm: dkimkeys.Algorithm = "ed25519" if args.ed25519 else "rsa"
    key_name, selector_name = dkimkeys.config_keys(algorithm)
    dom = cfg.domains[domain]
    try:
        taken = {sel for sel, key in ((dom.dkim_selector, dom.dkim_key),
                                      (dom.dkim_ed25519_selector, dom.dkim_ed25519_key)) if key}
        if args.selector:
            selector = dkimkeys.check_selector(args.selector)
            if selector in taken:  # the current key of either algorithm is published under it
                raise dkimkeys.DkimSetupError(f"selector {selector} is in use by a configured key; "
                                              "a new key needs a new selector")
        else:
            selector = dkimkeys.new_selector(config_dir, domain, taken, algorithm)
        path = dkimkeys.key_path(config_dir, domain, selector)
        pem, txt = dkimkeys.generate(algorithm)
        values = {selector_name: selector, key_name: dkimkeys.relative_to(config_dir, path)}
        with open(config_path, encoding="utf-8", newline="") as f:  # refuse before writing anything
            dkimkeys.set_domain_keys(f.read(), domain, values)
        dkimkeys.write_key(path, pem, run_as_user=cfg.run_as_user, run_as_group=cfg.run_as_group)
        dkimkeys.update_config_file(config_path, domain, values)
    except dkimkeys.DkimSetupError as e:
        raise CliError(str(e)) from None
    configmod.load(config_path)  # what we wrote must load
    name = records.fqdn(f"{selector}._domainkey.{domain}")
    kind = "ed25519" if args.ed25519 else f"{dkimkeys.RSA_BITS}-bit RSA"
    print(f"wrote {path} ({kind} key)")
    print(f'set {selector_name} = "{selector}" and {key_name} in [domains."{domain}"] of {config_path}')
    print("1. publish this record:")
    print(records.render([records.Record(name, "TXT", records.txt_strings(txt))]), end="")
    print(f"   (as one value: {txt})")
    print("2. once it is visible in DNS, reload the server (systemctl reload mailhaven, or SIGHUP) to sign")
    print("   with the new key; keep the old record published a few days for mail still in transit.")
    return 0


def cmd_dns(args: argparse.Namespace) -> int:
    """The records to publish for each domain (records.py), in zone-file syntax."""
    from mailhaven import records
    from mailhaven.policy.dkim import public_record

    cfg = _load_config(args)
    domains = [_configured_domain(cfg, d) for d in args.domains] or sorted(cfg.domains)
    if not domains:
        raise CliError("no [domains] in the config")
    out: list[str] = []
    for domain in domains:
        dom = cfg.domains[domain]
        dkim: list[tuple[str, str]] = []
        for selector, key in ((dom.dkim_selector, dom.dkim_key), (dom.dkim_ed25519_selector, dom.dkim_ed25519_key)):
            if key:
                try:
                    dkim.append((selector, public_record(Path(key).read_bytes())))
                except ValueError as e:
                    raise CliError(f"{key}: not a usable DKIM private key ({e})") from None
        header = [f"DNS records for {domain} (mailhaven dns; zone-file syntax, TTL {records.TTL})"]
        if not dkim:
            header.append(f"no DKIM key configured: `mailhaven dkim keygen {domain}` makes one")
        if not cfg.public_ip:
            header.append("public_ip is not set in the config: add this host's A/AAAA record and its IP to SPF "
                          "yourself")
        out.append(records.render(records.domain_records(cfg, domain, dkim), header=header))
    sys.stdout.write("\n".join(out))
    return 0


# --- user / alias --------------------------------------------------------------------------------


@contextlib.contextmanager
def _editing(cfg: Config) -> Iterator[Any]:
    """The users file, locked, saved atomically when the block succeeds (UsersFile.edit)."""
    users = _users_module()
    if not Path(cfg.users_file).exists():
        raise ConfigError(f"users_file: file not found: {cfg.users_file} (`mailhaven init` creates it)")
    try:
        with users.UsersFile.edit(cfg.users_file, create=False) as uf:
            yield uf
    except ValueError as e:  # the UsersFile API refuses an edit (exists, no such user, bad address)
        raise CliError(str(e)) from None


def cmd_user(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    if args.action == "list":
        for name in _open_users(cfg).list_users():
            print(name)
        return 0
    if not args.address:
        raise CliError(f"user {args.action}: an ADDRESS is required")
    address = _local_address(cfg, args.address)
    if args.action == "del":
        with _editing(cfg) as uf:
            changed = uf.delete_user(address)
        print(f"deleted {address}" + (f" (removed from aliases: {', '.join(changed)})" if changed else ""))
        return 0
    # Check before asking for a password; the edit below checks again under the lock.
    entry = _open_users(cfg).get_user(address)
    if args.action == "add" and entry is not None:
        raise CliError(f"user {entry.address} already exists")
    if args.action == "passwd" and entry is None:
        raise CliError(f"no such user: {address}")
    hashed = _hash(_read_password())
    roles: list[tuple[str, str]] = []
    with _editing(cfg) as uf:
        if args.action == "add":
            domain = address.rpartition("@")[2]
            first = not any(u.rpartition("@")[2] == domain for u in uf.list_users())
            address = uf.add_user(address, hashed)
            if first:  # the first user of a domain gets its postmaster@ and abuse@ mail, where unset
                roles = uf.add_role_aliases(domain, address)
        else:
            uf.set_password(address, hashed)
    print(f"{'added' if args.action == 'add' else 'password changed for'} {address}")
    for alias, target in roles:
        print(f"alias {alias} -> {target} (the first user of the domain; change it with `mailhaven alias`)")
    return 0


def cmd_quota(args: argparse.Namespace) -> int:
    """`quota show USER`: the limits (users file, else the domain's default) and the usage, read
    from the index (SQLite file, or PostgreSQL with that backend) without the server (read-only; messages delivered since a folder was last
    opened are counted from its new/ directory), like `doveadm quota get`."""
    from mailhaven.store import maildir, names
    from mailhaven.store.index import read_usage

    cfg = _load_config(args)
    directory = _users_module().Directory(cfg, _open_users(cfg))
    user = directory.user(_local_address(cfg, args.user, "account"))
    if user is None:
        raise CliError(f"no such user: {args.user}")
    domain, localpart = names.split_user(user)
    root = cfg.mail_root / domain / localpart
    if cfg.storage.backend == "postgresql":
        from mailhaven.errors import DatabaseError
        from mailhaven.store import index_pg

        try:
            indexed = index_pg.read_usage(cfg.storage.dsn, user, timeout=cfg.storage.timeout) or {}
        except DatabaseError as e:
            raise CliError(f"storage.dsn: {e.detail}") from None
    else:
        indexed = read_usage(root) or {}
    octets = sum(b for b, _, _ in indexed.values())
    count = sum(n for _, n, _ in indexed.values())
    for folder in [root, *(p for p in (root.iterdir() if root.is_dir() else ()) if p.name.startswith(".")
                          and (p / "new").is_dir())]:
        name = "INBOX" if folder == root else names.name_from_dirname(folder.name)
        if name is None:
            continue
        known = indexed.get(name, (0, 0, frozenset()))[2]
        for entry in (os.scandir(folder / "new") if (folder / "new").is_dir() else ()):
            key, _ = maildir.split_name(entry.name)
            if key not in known and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    octets += entry.stat().st_size
                    count += 1
    max_octets, max_messages = directory.quota_limits(user)

    def pct(used: int, limit: int) -> str:
        return str(used * 100 // limit) if limit else "-"

    print(f"{'Quota name':<12}{'Type':<10}{'Value':>14}{'Limit':>14}{'%':>5}")
    # As doveadm: STORAGE in KiB (RFC 9208 §5.1 units), MESSAGE in messages; "-" = no limit
    print(f"{'User quota':<12}{'STORAGE':<10}{-(-octets // 1024):>14}"
          f"{max_octets // 1024 if max_octets else '-':>14}{pct(octets, max_octets):>5}")
    print(f"{'User quota':<12}{'MESSAGE':<10}{count:>14}{max_messages or '-':>14}{pct(count, max_messages):>5}")
    return 0


def cmd_storage(args: argparse.Namespace) -> int:
    """`storage migrate --to postgresql [--force]`: every user's SQLite index and the file queue
    into the PostgreSQL of [storage] (storage_migrate.py), with the server stopped."""
    cfg = _load_config(args)
    if cfg.storage.backend != "postgresql":
        raise CliError("storage migrate --to postgresql: set [storage] backend = \"postgresql\" and dsn in "
                       f"{args.config} first (with the server stopped)")
    from mailhaven import storage_migrate

    asyncio.run(storage_migrate.migrate(cfg, force=args.force, say=print))
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    cfg = _load_config(args)
    if args.action == "list":
        for alias, targets in _open_users(cfg).list_aliases().items():
            print(f"{alias} -> {', '.join(targets)}")
        return 0
    if not args.alias:
        raise CliError(f"alias {args.action}: an ALIAS is required")
    alias = _local_address(cfg, args.alias, "alias")
    if args.action == "del":
        if args.targets:
            raise CliError("alias del: takes only the ALIAS")
        with _editing(cfg) as uf:
            uf.delete_alias(alias)
        print(f"deleted alias {alias}")
        return 0
    if not args.targets:
        raise CliError("alias add: at least one TARGET address is required")
    # Targets in our domains are delivered here; others are forwarded (delivery/forward.py, SRS);
    # "|/path args" is a program (delivery/program.py).
    targets = [_program_target(cfg, alias, t) if t.lstrip().startswith("|") else
               _alias_target(cfg, t) for t in args.targets]
    with _editing(cfg) as uf:
        alias = uf.add_alias(alias, targets)
        now = uf.get_alias(alias) or targets
    print(f"alias {alias} -> {', '.join(now)}")
    remote = [t for t in now if not t.startswith("|") and not cfg.is_local_domain(t.rpartition("@")[2])]
    if remote:
        print(f"forwarded to other servers (sender rewritten with SRS): {', '.join(remote)}")
        if not (cfg.delivery.srs_secret_file or cfg.delivery.srs_secret):
            print("warning: no [delivery] srs_secret_file: forwarding needs one (mailhaven init writes it)",
                  file=sys.stderr)
    return 0


def _alias_target(cfg: Config, address: str) -> str:
    """An alias target: an address in our domains (as _local_address), or a valid address
    elsewhere (forwarding; no address literals, no source routes)."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if at and cfg.is_local_domain(domain.lower().rstrip(".")):
        return _local_address(cfg, address, "alias target")
    from mailhaven.message.address import parse_mailbox

    try:
        addr = parse_mailbox(address)
    except ValueError as e:
        raise CliError(f"{address!r}: expected an alias target like alice@example.org ({e})") from None
    if addr.is_literal:
        raise CliError(f"{address}: an address literal cannot be a forwarding target")
    return str(addr)


def _program_target(cfg: Config, alias: str, target: str) -> str:
    """`|/path args`: only with [delivery] allow_programs (delivery/program.py), an absolute path."""
    users = _users_module()
    if not cfg.delivery.allow_programs:
        raise CliError(f"alias {alias}: program target {target.strip()} refused ([delivery] allow_programs = false)")
    try:
        return str(users.canonical_target(target))
    except ValueError as e:
        raise CliError(f"alias {alias}: {target.strip()}: {e}") from None


_SPAM_LIST: dict[str, tuple[str, bool]] = {  # action -> (list, add)
    "block": ("block", True), "unblock": ("block", False), "allow": ("allow", True), "disallow": ("allow", False),
}


def cmd_spam(args: argparse.Namespace) -> int:
    """`spam block|unblock|allow|disallow USER ADDRESS|@DOMAIN...` and `spam list USER`: the user's
    sender lists (policy/senderlists.py), a file in the user's Maildir that the running server
    reads at the next message; no server needed."""
    import fcntl

    from mailhaven.policy import senderlists
    from mailhaven.store import names

    cfg = _load_config(args)
    user = _local_address(cfg, args.user, "user")
    entry = _open_users(cfg).get_user(user)
    if entry is None:
        raise CliError(f"no such user: {user} (sender lists belong to users, not aliases)")
    path = senderlists.path_for(names.user_root(cfg.mail_root, entry.address))
    if args.action == "list":
        if args.entries:
            raise CliError("spam list: takes only the USER")
        lists = senderlists.load(path)
        for which in ("block", "allow"):
            for item in lists.entries(which):
                print(f"{which} {item}")
        return 0
    if not args.entries:
        raise CliError(f"spam {args.action}: an ADDRESS or @DOMAIN is required")
    try:
        wanted = [senderlists.normalize_entry(e) for e in args.entries]
    except ValueError as e:
        raise CliError(f"spam {args.action}: {e}") from None
    which, add = _SPAM_LIST[args.action]
    senderlists.make_root(path.parent)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # two edits at once: the second sees the first
        lists = senderlists.load(path)
        current = list(lists.entries(which))
        if add:
            new = current + [e for e in wanted if e not in current]
            if len(new) > senderlists.MAX_ENTRIES:
                raise CliError(f"spam {args.action}: at most {senderlists.MAX_ENTRIES} entries per list")
        else:
            missing = [e for e in wanted if e not in current]
            if missing:
                raise CliError(f"spam {args.action}: not on {entry.address}'s {which} list: {', '.join(missing)}")
            new = [e for e in current if e not in wanted]
        senderlists.save(path, lists.with_entries(which, new))
    finally:
        os.close(fd)
    verb = {"block": "blocked", "unblock": "unblocked", "allow": "allowed", "disallow": "no longer allowed"}
    print(f"{entry.address}: {verb[args.action]} {', '.join(wanted)}")
    return 0


def cmd_sieve(args: argparse.Namespace) -> int:
    from mailhaven import sievecmd

    cfg = _load_config(args)
    user: str | None = None
    file = args.file
    if args.action == "check" and file is None and Path(args.user).is_file():
        file = args.user  # `check FILE`
    else:
        entry = _open_users(cfg).get_user(_local_address(cfg, args.user))
        if entry is None:
            raise CliError(f"no such user: {args.user}")
        user = str(entry.address)
    if args.action in ("get", "activate", "delete"):
        if args.file is None:
            raise CliError(f"sieve {args.action}: a script NAME is required")
        name, file = args.file, None
    else:
        name = args.name
    if args.action == "put" and file is None:
        raise CliError("sieve put: a FILE is required (- for stdin)")
    try:
        code = sievecmd.run(cfg, args.action, user, name, file, args.activate)
    except sievecmd.SieveCommandError as e:
        raise CliError(str(e)) from None
    finally:
        if user is not None and args.action in ("put", "activate", "deactivate", "delete"):
            sievecmd.owner_fix(cfg, user)
    return code


# --- argument parsing ----------------------------------------------------------------------------


def _config_after_command() -> argparse.ArgumentParser:
    """A parent parser giving a command its own -c/--config, so `mailhaven check-config -c FILE`
    works as well as `mailhaven -c FILE check-config`. SUPPRESS: the command's parser sets
    `config` only when the option is given after the command, and then it wins (argparse copies a
    subparser's namespace over the main one); otherwise the global -c (or its default) stays."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", dest="config", default=argparse.SUPPRESS, metavar="FILE",
                        help="config file (also accepted before the command)")
    return common


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailhaven", description="Mailhaven: a mail server in one process.")
    p.add_argument("-c", "--config", default=os.environ.get("MAILHAVEN_CONFIG", DEFAULT_CONFIG),
                   metavar="FILE", help="config file (default: $MAILHAVEN_CONFIG or %(default)s; "
                   "may also follow the command)")
    p.add_argument("--version", action="version", version=f"mailhaven {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = [_config_after_command()]  # every command but init, which has its own --config

    s = sub.add_parser("init", help="write a new config, users file and data folder")
    s.add_argument("--domain", required=True, help="mail domain, e.g. example.org")
    s.add_argument("--hostname", help="this server's name (default: mail.DOMAIN)")
    s.add_argument("--config", "-c", dest="config", default=argparse.SUPPRESS, metavar="FILE",
                   help="config file to write (default: the global -c)")
    s.add_argument("--data-dir", metavar="DIR",
                   help="where mail lives (default: /var/lib/mailhaven; with --dev: data/ beside the config)")
    s.add_argument("--dev", action="store_true", help="loopback and dev ports (2525, 2143, ...)")
    s.add_argument("--postmaster", metavar="ADDRESS",
                   help="who gets postmaster@DOMAIN and abuse@DOMAIN mail (an address in DOMAIN; default: "
                   "the first user added)")
    s.add_argument("--force", action="store_true", help="overwrite an existing config file")
    s.add_argument("--run-as-user", metavar="USER",
                   help="the service user (e.g. mailhaven): set run_as_user and, as root, give it read access "
                        "to the config, users file and keys (group, 0640) and the data folder (0700)")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("serve", parents=common, help="run the server")
    s.add_argument("--dev", action="store_true",
                   help="no config needed: loopback, dev ports, ./mailhaven-dev, a test account")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("check-config", parents=common, help="validate the config and users file")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("user", parents=common, help="manage accounts: add, passwd, del, list")
    s.add_argument("action", choices=["add", "passwd", "del", "list"])
    s.add_argument("address", nargs="?", metavar="ADDRESS")
    s.set_defaults(func=cmd_user)

    s = sub.add_parser("quota", parents=common, help="quota show USER: storage and message usage and limits")
    s.add_argument("action", choices=["show"])
    s.add_argument("user", metavar="USER")
    s.set_defaults(func=cmd_quota)

    s = sub.add_parser("storage", parents=common, help="storage migrate --to postgresql: move the mailbox indexes "
                       "and the queue from SQLite and files into PostgreSQL (server stopped)")
    s.add_argument("action", choices=["migrate"])
    s.add_argument("--to", required=True, choices=["postgresql"], help="the backend to move to")
    s.add_argument("--force", action="store_true", help="replace users already in PostgreSQL (default: skip them)")
    s.set_defaults(func=cmd_storage)

    s = sub.add_parser("alias", parents=common, help="manage aliases: add ALIAS TARGET..., del ALIAS, list")
    s.add_argument("action", choices=["add", "del", "list"])
    s.add_argument("alias", nargs="?", metavar="ALIAS")
    s.add_argument("targets", nargs="*", metavar="TARGET")
    s.set_defaults(func=cmd_alias)

    s = sub.add_parser("spam", parents=common,
                       help="a user's sender lists: block|unblock|allow|disallow USER ADDRESS|@DOMAIN..., list USER")
    s.add_argument("action", choices=["block", "unblock", "allow", "disallow", "list"])
    s.add_argument("user", metavar="USER")
    s.add_argument("entries", nargs="*", metavar="ADDRESS|@DOMAIN")
    s.set_defaults(func=cmd_spam)

    s = sub.add_parser("sieve", parents=common, help="users' Sieve scripts: put USER FILE, get USER NAME, list USER, "
                       "activate USER NAME, deactivate USER, delete USER NAME, check [USER] FILE")
    s.add_argument("action", choices=["put", "get", "list", "activate", "deactivate", "delete", "check"])
    s.add_argument("user", metavar="USER", help="the account (check: a FILE alone checks just the file)")
    s.add_argument("file", nargs="?", metavar="FILE|NAME", help="put, check: the script file (- = stdin); "
                   "get, activate, delete: the script's name")
    s.add_argument("--name", metavar="NAME", help="put: the script's name (default: FILE without .sieve)")
    s.add_argument("--activate", action="store_true", help="put: make it the active script")
    s.set_defaults(func=cmd_sieve)

    s = sub.add_parser("doctor", parents=common, help="check config, certificate, permissions and public DNS; say what to fix")
    s.add_argument("domains", nargs="*", metavar="DOMAIN", help="domains to check (default: all configured)")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("health", parents=common, help="is the running server answering? (exit 0 yes, 1 no)")
    s.add_argument("listeners", nargs="*", metavar="LISTENER", help="listeners to probe (default: all enabled)")
    s.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per listener (default: 5)")
    s.set_defaults(func=cmd_health)

    s = sub.add_parser("dkim", parents=common, help="DKIM keys: keygen DOMAIN [--selector S] [--ed25519]")
    dsub = s.add_subparsers(dest="dkim_command", metavar="ACTION", required=True)
    k = dsub.add_parser("keygen", parents=common, help="make a new signing key for DOMAIN and print its DNS record")
    k.add_argument("domain", metavar="DOMAIN")
    k.add_argument("--selector", metavar="S", help="DKIM selector (default: mhYYYYMMDD, a new one each time)")
    k.add_argument("--ed25519", action="store_true", help="an ed25519 key (a second signature, RFC 8463)")
    k.set_defaults(func=cmd_dkim)

    s = sub.add_parser("dns", parents=common, help="print the DNS records to publish (MX, SPF, DKIM, DMARC, client SRV)")
    s.add_argument("domains", nargs="*", metavar="DOMAIN", help="domains (default: all configured)")
    s.set_defaults(func=cmd_dns)

    s = sub.add_parser("queue", parents=common, help="the running server's outbound queue: list, show ID, retry ID, delete ID, flush")
    s.add_argument("action", choices=["list", "show", "retry", "delete", "flush"])
    s.add_argument("id", nargs="?", metavar="ID", help="queue ID (show, retry, delete)")
    s.add_argument("--json", action="store_true", help="show: the entry as JSON, for scripts")
    s.set_defaults(func=cmd_queue)

    s = sub.add_parser("auth", parents=common, help="the running server's login delays: blocks, unblock IP|ADDRESS")
    s.add_argument("action", choices=["blocks", "unblock"])
    s.add_argument("target", nargs="?", metavar="IP|ADDRESS", help="unblock: a client IP address or an account")
    s.set_defaults(func=cmd_auth)
    return p


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    return str(e).strip().replace("\n", " ") or type(e).__name__


def _innermost(e: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups from TaskGroups."""
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def main(argv: Sequence[str] | None = None) -> int:
    from mailhaven.app import StartupError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BaseException as raised:  # every failure becomes one line; never a traceback
        e = _innermost(raised)
        if isinstance(e, SystemExit):
            raise
        if isinstance(e, ConfigError):
            print(f"mailhaven: {_one_line(e)}", file=sys.stderr)
            return 2
        if isinstance(e, KeyboardInterrupt):
            print("mailhaven: interrupted", file=sys.stderr)
            return 130
        if isinstance(e, CliError | StartupError | OSError):
            print(f"mailhaven: {_one_line(e)}", file=sys.stderr)
            return 1
        print(f"mailhaven: internal error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 1
