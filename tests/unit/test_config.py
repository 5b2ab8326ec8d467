"""config.py: the sample config, exact error messages, durations, and that the loader only ever
raises ConfigError."""

from __future__ import annotations

import dataclasses
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven import config
from mailhaven.auth.users import UsersFile
from mailhaven.config import ConfigError

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "mailhaven.toml"
# Keys the sample sets to site-specific example values instead of the default.
SITE_SPECIFIC = {"hostname", "tls.cert", "tls.key", "domains.*.dkim_key"}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if prefix in ("listeners.", "domains."):
            key = "*"
        path = prefix + key
        if isinstance(value, dict) and value:  # an empty table ([queue] transports = {}) is a key
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """The sample, copied beside the files it names (certificate, DKIM key)."""
    path = tmp_path / "mailhaven.toml"
    shutil.copy(SAMPLE, path)
    for name in ("tls/fullchain.pem", "tls/privkey.pem", "dkim/example.org.mh1.pem"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("placeholder\n")
    return path


def test_sample_config_loads(sample: Path) -> None:
    cfg = config.load(sample)
    assert list(cfg.domains) == ["example.org"]
    assert cfg.tls.cert == str(sample.parent / "tls" / "fullchain.pem")


def test_sample_config_sets_every_key_of_the_schema() -> None:
    data = tomllib.loads(SAMPLE.read_text())
    assert set(_flatten(data)) == {path for path, _ in config.iter_keys()}


def test_sample_config_lists_every_listener() -> None:
    data = tomllib.loads(SAMPLE.read_text())
    assert list(data["listeners"]) == list(config.LISTENER_NAMES)


def test_sample_config_shows_the_defaults(sample: Path) -> None:
    cfg = config.load(sample)
    default = config.from_dict({"listeners": {n: {} for n in config.LISTENER_NAMES},
                                "domains": {"example.org": {}},
                                "tls": {"cert": "tls/fullchain.pem", "key": "tls/privkey.pem"}}, sample.parent)
    for path, _ in config.iter_keys():
        if path in SITE_SPECIFIC or path.startswith("listeners."):
            continue
        obj_s: Any = cfg
        obj_d: Any = default
        for part in path.split("."):
            if part == "*":
                obj_s, obj_d = obj_s["example.org"], obj_d["example.org"]
            else:
                obj_s, obj_d = getattr(obj_s, part), getattr(obj_d, part)
        if path == "data_dir":
            continue
        assert obj_s == obj_d, path
    # Every listener in the sample is exactly that listener's default.
    assert cfg.listeners == default.listeners


def test_sample_config_documents_each_key_with_a_comment_above_it() -> None:
    lines = SAMPLE.read_text().splitlines()
    section = ""
    undocumented = []
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line
            continue
        if "=" in line and not line.startswith("#"):
            documented_section = not section.startswith("[listeners.") or section == "[listeners.mx]"
            if documented_section and not lines[i - 1].startswith("#"):
                undocumented.append(line)
    assert undocumented == []


# --- exact messages for broken configs -----------------------------------------------------------

BROKEN: list[tuple[str, str, str]] = [
    ("unknown key", 'hostnme = "x"\n', "hostnme: unknown key"),
    ("unknown key in a section", '[smtp]\nmax_size = 5\n', "smtp.max_size: unknown key"),
    ("wrong type", "hostname = 5\n", "hostname: expected a string, got 5"),
    ("wrong type for a section", "smtp = 5\n", "smtp: expected a table, got 5"),
    ("port not a number", '[listeners.imap]\nport = "abc"\n',
     'listeners.imap.port: expected an integer 1-65535, got "abc"'),
    ("port out of range", "[listeners.imap]\nport = 70000\n",
     "listeners.imap.port: expected an integer 1-65535, got 70000"),
    ("bad duration", 'shutdown_deadline = "5 minutes"\n',
     'shutdown_deadline: expected a duration (seconds, or "30s", "5m", "1h", "5d"), got "5 minutes"'),
    ("negative duration", "shutdown_deadline = -1\n",
     'shutdown_deadline: expected a duration (seconds, or "30s", "5m", "1h", "5d"), got -1'),
    ("infinite duration", "shutdown_deadline = inf\n",
     'shutdown_deadline: expected a duration (seconds, or "30s", "5m", "1h", "5d"), got inf'),
    ("duration below minimum", '[queue]\nlifetime = "30s"\n',
     'queue.lifetime: expected a duration >= 60 seconds, got "30s"'),
    ("bad item in a duration list", '[queue]\nretry_schedule = ["5m", "soon"]\n',
     'queue.retry_schedule[1]: expected a duration (seconds, or "30s", "5m", "1h", "5d"), got "soon"'),
    ("empty retry schedule", "[queue]\nretry_schedule = []\n", "queue.retry_schedule: expected at least one delay"),
    ("NaN number", "[queue]\njitter = nan\n", "queue.jitter: expected a number 0-1, got nan"),
    ("bad enum", '[log]\nlevel = "verbose"\n',
     'log.level: expected one of "debug", "info", "warning", "error", got "verbose"'),
    ("bad enum for tls mode", '[listeners.mx]\ntls = "yes"\n',
     'listeners.mx.tls: expected one of "none", "starttls", "implicit", got "yes"'),
    ("bad boolean", 'dev = "yes"\n', 'dev: expected true or false, got "yes"'),
    ("negative workers", "[server]\nworkers = -1\n", "server.workers: expected an integer 0-256, got -1"),
    ("too many workers", "[server]\nworkers = 257\n", "server.workers: expected an integer 0-256, got 257"),
    ("missing tls cert file", '[tls]\ncert = "nope.pem"\nkey = "nope.key"\n',
     "tls.cert: file not found: {dir}/nope.pem"),
    ("cert without key", '[tls]\ncert = "c.pem"\n', "tls.key: tls.cert and tls.key go together"),
    ("missing queue CA file", '[queue]\ntls_ca_file = "ca.pem"\n', "queue.tls_ca_file: file not found: {dir}/ca.pem"),
    ("starttls without a certificate", "[listeners.imap]\nport = 143\n",
     'listeners.imap.tls: "starttls" needs tls.cert and tls.key'),
    ("duplicate listener port",
     '[listeners.imap]\ntls = "none"\nport = 2000\n[listeners.pop3]\ntls = "none"\nport = 2000\n',
     "listeners.pop3.port: 0.0.0.0 port 2000 is also used by listeners.imap"),
    ("wildcard and loopback on one port",
     '[listeners.imap]\ntls = "none"\nport = 2000\n'
     '[listeners.pop3]\ntls = "none"\naddress = "127.0.0.1"\nport = 2000\n',
     "listeners.pop3.port: 127.0.0.1 port 2000 is also used by listeners.imap"),
    ("listener address not an IP", '[listeners.imap]\ntls = "none"\naddress = "localhost"\n',
     'listeners.imap.address: expected an IPv4 or IPv6 address, got "localhost"'),
    ("unknown listener", "[listeners.smtp]\nport = 25\n",
     "listeners.smtp: unknown listener (expected one of mx, submission, submissions, pop3, pop3s, imap, imaps, managesieve)"),
    ("unknown listener key", '[listeners.imap]\ntls = "none"\nprot = 25\n', "listeners.imap.prot: unknown key"),
    ("per-IP limit above the listener limit",
     '[listeners.imap]\ntls = "none"\nmax_connections = 5\nper_ip_connections = 10\n',
     "listeners.imap.per_ip_connections: must not exceed max_connections (5)"),
    ("PROXY protocol without trusted proxies", '[listeners.imap]\ntls = "none"\nproxy_protocol = true\n',
     'listeners.imap.proxy_trusted: proxy_protocol = true needs the addresses of the proxies allowed to send the '
     'PROXY header (e.g. ["10.0.0.5"]); connections from any other address are refused'),
    ("trusted proxy not a network", '[listeners.mx]\ntls = "none"\nproxy_trusted = ["10.0.0.0/33"]\n',
     'listeners.mx.proxy_trusted[0]: expected an address or network like "192.0.2.10" or "10.0.0.0/8", '
     'got "10.0.0.0/33"'),
    ("bad nameserver port", '[dns]\nnameservers = ["1.2.3.4:99999"]\n',
     'dns.nameservers[0]: expected "IP" or "IP:PORT", got "1.2.3.4:99999"'),
    ("nameserver by name", '[dns]\nnameservers = ["dns.google"]\n',
     'dns.nameservers[0]: expected "IP" or "IP:PORT", got "dns.google"'),
    ("bracketed nameserver with junk", '[dns]\nnameservers = ["[::1]x"]\n',
     'dns.nameservers[0]: expected "IP" or "IP:PORT", got "[::1]x"'),
    ("bad domain name", '[domains."exa mple.org"]\n', 'domains."exa mple.org": not a valid domain name'),
    ("single-label domain", "[domains.localhost]\n", "domains.localhost: not a valid domain name"),
    ("same domain twice", '[domains."example.org"]\n[domains."Example.ORG."]\n',
     'domains."Example.ORG.": same domain as domains."example.org"'),
    ("catch-all not an address", '[domains."example.org"]\ncatch_all = "postmaster"\n',
     'domains."example.org".catch_all: expected an address, got "postmaster"'),
    ("missing DKIM key file", '[domains."example.org"]\ndkim_key = "k.pem"\n',
     'domains."example.org".dkim_key: file not found: {dir}/k.pem'),
    ("bad host name", 'hostname = "bad host"\n', 'hostname: not a valid host name, got "bad host"'),
    ("bad metrics address", '[metrics]\naddress = "localhost:9154"\n',
     'metrics.address: expected "IP:PORT", got "localhost:9154"'),
    ("unknown storage backend", '[storage]\nbackend = "mysql"\n',
     'storage.backend: expected one of "sqlite", "postgresql", got "mysql"'),
    ("postgresql without a dsn", '[storage]\nbackend = "postgresql"\n',
     'storage.dsn: backend = "postgresql" needs the database\'s connection string, '
     'e.g. "host=db.example.org dbname=mailhaven user=mailhaven"'),
    ("dsn without postgresql", '[storage]\ndsn = "host=db.example.org"\n',
     'storage.dsn: only used with backend = "postgresql" (this config says "sqlite")'),
    ("dsn libpq cannot parse", '[storage]\nbackend = "postgresql"\ndsn = "host=db pasword=x"\n',
     'storage.dsn: not a valid libpq connection string: invalid connection option "pasword"'),
    ("dsn URI libpq cannot parse", '[storage]\nbackend = "postgresql"\ndsn = "postgresql://u:secret@db/m?sslmod=x"\n',
     'storage.dsn: not a valid libpq connection string: invalid URI query parameter: "sslmod"'),
    ("storage timeout too short", '[storage]\ntimeout = "10ms"\n',
     'storage.timeout: expected a duration 0.1-300 seconds, got "10ms"'),
    ("long plus separator", 'plus_separator = "++"\n', 'plus_separator: expected one character or "", got "++"'),
    ("control character in an echoed value", 'hostname = "a\\nb"\n', 'hostname: not a valid host name, got "a\\nb"'),
    ("control character in a path", '[tls]\ncert = "a\\tb"\nkey = "k"\n', "tls.cert: file not found: {dir}/a\\tb"),
    ("NUL in a string", 'hostname = "a\\u0000b"\n', "hostname: NUL character not allowed"),
    ("TOML syntax error", 'hostname = "x"\n[log\n',
     "{file}:2:5: TOML syntax error: Expected ']' at the end of a table declaration"),
    ("TOML value missing", "hostname =\n", "{file}:1:11: TOML syntax error: Invalid value"),
]


@pytest.mark.parametrize(("text", "message"), [(t, m) for _, t, m in BROKEN], ids=[n for n, _, _ in BROKEN])
def test_broken_config_gives_exact_one_line_message(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mailhaven.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == message.format(dir=tmp_path, file=path)
    assert "\n" not in str(exc.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^/.*/nope\.toml: file not found$"):
        config.load(tmp_path / "nope.toml")


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_bytes(b'hostname = "\xff"\n')
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value) == f"{path}: not UTF-8 text"


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "m.toml"
    path.write_text('users_file = "u.toml"\ndata_dir = "data"\n')
    cfg = config.load(path)
    assert cfg.users_file == str(tmp_path / "sub" / "u.toml")
    assert cfg.data_dir == str(tmp_path / "sub" / "data")


def test_default_users_file_is_beside_the_config_not_in_the_working_directory(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('hostname = "mail.example.org"\n')
    assert config.load(path).users_file == str(tmp_path / "users.toml")


def test_listener_defaults_depend_on_the_listener(tmp_path: Path) -> None:
    cfg = config.from_dict({"listeners": {"imaps": {"tls": "none"}, "submission": {"tls": "none"}}}, tmp_path)
    assert (cfg.listeners["imaps"].port, cfg.listeners["imaps"].idle_timeout) == (993, 1800.0)
    assert (cfg.listeners["submission"].port, cfg.listeners["submission"].idle_timeout) == (587, 300.0)


def test_loaded_config_is_frozen(sample: Path) -> None:
    cfg = config.load(sample)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hostname = "other.example.org"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.policy.spf_fail = "accept"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.listeners["imap"].port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.domains["example.org"].catch_all = "x@example.org"  # type: ignore[misc]
    assert cfg.hostname == "mail.example.org" and cfg.listeners["imap"].port == 143


# (port, TLS mode) of each listener when its table is empty, as README and issue 2 state them
# (README "Ports"; the MX's TLS mode is stated nowhere, so only its port is checked).
LISTENER_DEFAULTS = {
    "imap": (143, "starttls"), "imaps": (993, "implicit"),
    "pop3": (110, "starttls"), "pop3s": (995, "implicit"),
    "submission": (587, "starttls"), "submissions": (465, "implicit"),
    "managesieve": (4190, "starttls"),  # RFC 5804 §1.8
}


def test_listener_defaults_are_the_standard_ports_and_tls_modes(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("placeholder\n")
    path = tmp_path / "mailhaven.toml"
    path.write_text('[tls]\ncert = "c.pem"\nkey = "k.pem"\n'
                    + "".join(f"[listeners.{name}]\n" for name in config.LISTENER_NAMES))
    cfg = config.load(path)
    assert set(cfg.listeners) == set(LISTENER_DEFAULTS) | {"mx"}
    assert {n: (lc.port, lc.tls) for n, lc in cfg.listeners.items() if n != "mx"} == LISTENER_DEFAULTS
    assert cfg.listeners["mx"].port == 25
    assert all(lc.enabled for lc in cfg.listeners.values())


def test_ipv6_wildcard_and_ipv4_wildcard_may_share_a_port(tmp_path: Path) -> None:
    cfg = config.from_dict({"listeners": {"imap": {"tls": "none", "address": "0.0.0.0", "port": 2000},
                                          "pop3": {"tls": "none", "address": "::", "port": 2000}}}, tmp_path)
    assert cfg.listeners["pop3"].address == "::"


def test_disabled_listeners_do_not_clash(tmp_path: Path) -> None:
    cfg = config.from_dict({"listeners": {"imap": {"tls": "none", "port": 2000},
                                          "pop3": {"tls": "none", "port": 2000, "enabled": False}}}, tmp_path)
    assert not cfg.listeners["pop3"].enabled


def test_domain_names_are_normalised(tmp_path: Path) -> None:
    cfg = config.from_dict({"domains": {"Example.ORG.": {}}}, tmp_path)
    assert list(cfg.domains) == ["example.org"]
    assert cfg.is_local_domain("EXAMPLE.org.")


def test_dev_config_binds_loopback_on_the_dev_ports(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    cfg = config.dev_config(tmp_path, cert=cert, key=key, users_file=tmp_path / "users.toml")
    assert cfg.dev and cfg.auth.allow_plaintext_loopback
    assert {n: (lc.address, lc.port) for n, lc in cfg.listeners.items()} == {
        n: ("127.0.0.1", p) for n, p in config.DEV_PORTS.items()}
    assert config.DEV_PORTS == {"mx": 2525, "submission": 2587, "submissions": 2465, "pop3": 2110,
                                "pop3s": 2995, "imap": 2143, "imaps": 2993, "managesieve": 24190}


# --- durations and host:port ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    (300, 300.0), (1.5, 1.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("5d", 432000.0),
    ("1w", 604800.0), ("500ms", 0.5), (" 2 m ", 120.0), ("10", 10.0), ("0.5h", 1800.0),
])
def test_parse_duration_accepts(text: object, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 minutes", "-1s", "1y", "m", True, None, [], -3, float("nan"),
                                 float("inf"), "1e999d"])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        config.parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["", "s", "m", "h", "d", "w", "ms"]))
def test_parse_duration_scales_by_unit(n: int, unit: str) -> None:
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "ms": 0.001}[unit]
    assert config.parse_duration(f"{n}{unit}") == pytest.approx(n * scale)


@given(st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans(), st.none()))
def test_parse_duration_only_raises_value_error(value: object) -> None:
    try:
        seconds = config.parse_duration(value)
    except ValueError:
        return
    assert seconds >= 0 and seconds == seconds and seconds != float("inf")


@pytest.mark.parametrize(("text", "expected"), [
    ("1.2.3.4", ("1.2.3.4", 53)), ("1.2.3.4:5353", ("1.2.3.4", 5353)), ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)), ("[::1]", ("::1", 53)),
])
def test_split_hostport(text: str, expected: tuple[str, int]) -> None:
    assert config.split_hostport(text, 53) == expected


# --- the loader never fails with anything but ConfigError ----------------------------------------

_scalars = st.one_of(st.text(max_size=12), st.integers(min_value=-10, max_value=70000), st.booleans(),
                     st.floats(allow_nan=True, allow_infinity=True), st.lists(st.text(max_size=5), max_size=3))
_keys = st.sampled_from(sorted({p.split(".")[-1] for p, _ in config.iter_keys()} | {"bogus"}))
_tables = st.dictionaries(_keys, _scalars, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["hostname", "dev", "shutdown_deadline", "smtp", "queue", "dns", "tls",
                                        "log", "listeners", "domains", "bogus", "imap"]),
                       st.one_of(_scalars, _tables,
                                 st.dictionaries(st.sampled_from(list(config.LISTENER_NAMES) + ["x", "a.b"]),
                                                 _tables, max_size=3)),
                       max_size=5))
def test_any_table_either_loads_or_raises_one_line_config_error(data: dict[str, Any]) -> None:
    try:
        cfg = config.from_dict(data, Path("/nonexistent"))
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert dataclasses.is_dataclass(cfg)


# --- the users file: its load errors are ConfigError too -----------------------------------------


@pytest.mark.parametrize(("text", "reason"), [
    ("[users\n", "{file}:1:7: TOML syntax error: Expected ']' at the end of a table declaration"),
    ('owner = "me"\n', '{file}: owner: unknown key (expected [users."ADDRESS"] or [aliases])'),
    ('[users."alice@example.test"]\npassword = 5\n',
     '{file}: users."alice@example.test".password: expected a password hash string'),
    ('[users."not an address"]\npassword = "x"\n', None),
    ('[aliases]\n"team@example.test" = []\n',
     '{file}: aliases."team@example.test": expected a non-empty array of addresses'),
])
def test_users_file_errors_are_one_line_config_errors(tmp_path: Path, text: str, reason: str | None) -> None:
    path = tmp_path / "users.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        UsersFile.load(path)
    assert "\n" not in str(exc.value)
    if reason is None:
        assert str(exc.value).startswith(f'{path}: users."not an address": not a valid address')
    else:
        assert str(exc.value) == reason.format(file=path)


def test_missing_users_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        UsersFile.load(tmp_path / "users.toml")
    assert str(exc.value) == f"{tmp_path / 'users.toml'}: users file not found"


# --- [spam] (issue 12 item 3) --------------------------------------------------------------------


def test_spam_defaults_scan_nothing_and_accept_on_error(tmp_path: Path) -> None:
    cfg = config.from_dict({}, tmp_path)
    assert cfg.spam.rspamd_url == "" and cfg.spam.on_error == "accept" and cfg.spam.rspamd_timeout == 20.0


def test_spam_rspamd_keys_load(tmp_path: Path) -> None:
    (tmp_path / "rspamd.pw").write_text("secret\n")
    cfg = config.from_dict({"spam": {"rspamd_url": "http://127.0.0.1:11333", "on_error": "tempfail",
                                     "rspamd_controller_url": "http://127.0.0.1:11334",
                                     "rspamd_password_file": "rspamd.pw", "rspamd_timeout": "5s"}}, tmp_path)
    assert cfg.spam.rspamd_url == "http://127.0.0.1:11333" and cfg.spam.on_error == "tempfail"
    assert cfg.spam.rspamd_password_file == str(tmp_path / "rspamd.pw") and cfg.spam.rspamd_timeout == 5.0


@pytest.mark.parametrize(("spam", "message"), [
    ({"rspamd_url": "127.0.0.1:11333"}, r'^spam\.rspamd_url: expected "http://HOST:PORT", got "127\.0\.0\.1:11333"$'),
    ({"rspamd_controller_url": "ftp://x"}, r"^spam\.rspamd_controller_url: expected"),
    ({"on_error": "drop"}, r'^spam\.on_error: expected one of "accept", "tempfail", got "drop"$'),
    ({"rspamd_password_file": "missing.pw"}, r"^spam\.rspamd_password_file: file not found: "),
    ({"rspamd_timeout": 0}, r"^spam\.rspamd_timeout: expected a duration"),
    ({"rspamd_max_concurrency": 0}, r"^spam\.rspamd_max_concurrency: expected an integer"),
])
def test_spam_bad_values_are_one_line_errors(tmp_path: Path, spam: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.from_dict({"spam": spam}, tmp_path)


def test_workers_default_to_one_per_cpu() -> None:
    import os

    assert config.ServerConfig().workers == 0  # the default: one per CPU
    assert config.ServerConfig().processes == max(1, min(256, os.cpu_count() or 1))
    assert config.ServerConfig(workers=3).processes == 3
    assert config.ServerConfig(workers=1).processes == 1  # one process, no supervising parent


def test_postgresql_storage_keeps_the_dsn_as_written(tmp_path: Path) -> None:
    path = tmp_path / "mailhaven.toml"
    path.write_text('[storage]\nbackend = "postgresql"\n'
                    'dsn = "postgresql://mailhaven@db.example.org/mailhaven?passfile=/etc/mailhaven/pgpass"\n')
    storage = config.load(path).storage
    assert (storage.backend, storage.pool_size, storage.timeout) == ("postgresql", 10, 5.0)
    assert storage.dsn == "postgresql://mailhaven@db.example.org/mailhaven?passfile=/etc/mailhaven/pgpass"
