"""Configuration: one TOML file -> typed, frozen dataclasses.

Owns: the schema (every key, its type, range, default and documentation, next to the field), loading
and validation with the key path in every message, relative-path resolution (against the config
file's folder), and the embedded defaults for `serve --dev`.
Does not own: the users file (auth/users.py), or what each listener does with its values.

Errors are `ConfigError` with one line: `listeners.imap.port: expected an integer 1-65535, got "abc"`,
or `FILE:LINE:COL: TOML syntax error: ...`. The CLI prints it and exits 2 (STYLE rule 6).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mailhaven.errors import ConfigError

# --- field helpers -------------------------------------------------------------------------------


def opt(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None,
        duration: bool = False, path: bool = False, factory: Any = None, size: bool = False) -> Any:
    """A config field with its documentation and validation next to it."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "duration": duration, "path": path, "size": size}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


TlsMode = Literal["none", "starttls", "implicit"]
Action = Literal["reject", "junk", "accept"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


_SIZE = re.compile(r"^\s*(\d{1,15})\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: object) -> int:
    """`1048576`, `"100K"`, `"1M"`, `"1G"`, `"2T"` (binary units, as Dovecot's quota sizes) ->
    octets. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        if value < 0:
            raise ValueError
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    raise ValueError


def parse_duration(value: object) -> float:
    """`300`, `"30s"`, `"5m"`, `"1h"`, `"5d"` -> seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
            if math.isfinite(seconds):
                return seconds
    raise ValueError


# --- the schema ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenerConfig:
    """One listening socket. Listener names: mx, submission, submissions, pop3, pop3s, imap, imaps,
    managesieve."""

    enabled: bool = opt(True, "Serve this listener at all.")
    address: str = opt("0.0.0.0", "Address to bind (IPv4 or IPv6 literal; \"::\" for all IPv6).")
    port: int = opt(0, "TCP port.", lo=1, hi=65535)
    tls: TlsMode = opt("none", "TLS mode: \"none\", \"starttls\" (offered, upgrade in band) or \"implicit\".")
    max_connections: int = opt(500, "Most concurrent connections on this listener.", lo=1, hi=1_000_000)
    per_ip_connections: int = opt(20, "Most concurrent connections from one client IP.", lo=1, hi=1_000_000)
    idle_timeout: float = opt(300.0, "Close a connection idle this long (imap and imaps default to 30m, RFC 3501 §5.4).",
                              lo=1, duration=True)
    line_timeout: float = opt(60.0, "Time allowed for one line of client input (a command, an AUTH response, a "
                              "line of a message) from its first byte: trickling bytes does not extend it.",
                              lo=1, duration=True)
    login_timeout: float = opt(60.0, "Longest a session may stay unauthenticated (imap, pop3, submission); on the mx, "
                               "longest between the steps of a transaction (connect, accepted MAIL or RCPT, end of "
                               "DATA). When the listener is full, the oldest such session is closed to make room.",
                               lo=1, duration=True)
    proxy_protocol: bool = opt(False, "Expect a PROXY protocol header (HAProxy, v1 or v2) first on every connection; the "
                               "client address it gives is the one limits, throttling, SPF, DNS lists and logs see.")
    proxy_trusted: list[str] = opt(None, "Addresses or networks (CIDR) of the proxies allowed to send that header; "
                                   "with proxy_protocol, connections from anywhere else are closed.", factory=list)
    proxy_timeout: float = opt(5.0, "Time allowed for the PROXY header to arrive.", lo=0.1, hi=300, duration=True)


_LISTENER_DEFAULTS: dict[str, dict[str, Any]] = {
    "mx": {"port": 25, "tls": "starttls"},
    "submission": {"port": 587, "tls": "starttls"},
    "submissions": {"port": 465, "tls": "implicit"},
    "pop3": {"port": 110, "tls": "starttls", "idle_timeout": 600.0},  # RFC 1939 §3: >= 10 minutes
    "pop3s": {"port": 995, "tls": "implicit", "idle_timeout": 600.0},
    "imap": {"port": 143, "tls": "starttls", "idle_timeout": 1800.0},
    "imaps": {"port": 993, "tls": "implicit", "idle_timeout": 1800.0},
    "managesieve": {"port": 4190, "tls": "starttls"},  # RFC 5804 §1.8
}
DEV_PORTS = {"mx": 2525, "submission": 2587, "submissions": 2465, "pop3": 2110, "pop3s": 2995,
             "imap": 2143, "imaps": 2993, "managesieve": 24190}
LISTENER_NAMES = tuple(_LISTENER_DEFAULTS)


@dataclass(frozen=True)
class DomainConfig:
    """A domain we receive mail for (and sign outgoing mail of)."""

    catch_all: str = opt("", "Address receiving mail for unknown local parts of this domain (\"\" = none).")
    dkim_selector: str = opt("mh1", "DKIM selector for the RSA key.")
    dkim_key: str = opt("", "PEM file of the RSA private key for DKIM signing (\"\" = do not sign).", path=True)
    dkim_ed25519_selector: str = opt("mh1e", "DKIM selector for the optional ed25519 key.")
    dkim_ed25519_key: str = opt("", "PEM file of an ed25519 private key: adds a second signature.", path=True)
    quota: int = opt(0, "Default storage quota of this domain's users (octets, or \"500M\", \"1G\"; 0 = none); "
                     "a user's own `quota` in the users file wins.", lo=0, hi=2**62, size=True)
    quota_messages: int = opt(0, "Default most messages per user of this domain (0 = no limit).", lo=0, hi=2**62)


@dataclass(frozen=True)
class TlsConfig:
    cert: str = opt("", "PEM certificate chain. \"\" = no TLS (starttls listeners then offer none).", path=True)
    key: str = opt("", "PEM private key of the certificate.", path=True)
    min_version: Literal["1.2", "1.3"] = opt("1.2", "Lowest TLS version accepted.")


@dataclass(frozen=True)
class SmtpConfig:
    max_message_size: int = opt(25 * 1024 * 1024, "Largest message in octets (SIZE; 552 5.3.4 beyond).",
                                lo=1024, hi=2**31)
    max_recipients: int = opt(100, "Most RCPT per transaction (452 4.5.3 beyond).", lo=1, hi=100_000)
    max_line_length: int = opt(10_000, "Longest line of message data in octets, CRLF included.",
                               lo=1000, hi=1_000_000)
    max_header_count: int = opt(1000, "Most header fields in one message.", lo=10, hi=100_000)
    max_header_size: int = opt(1024 * 1024, "Largest header section in octets.", lo=1024, hi=2**30)
    max_bad_commands: int = opt(20, "Bad or unknown commands before 421 and disconnect.", lo=1, hi=10_000)
    command_timeout: float = opt(300.0, "Time allowed for one command or DATA block.", lo=1, duration=True)
    authserv_id: str = opt("", "authserv-id in Authentication-Results (\"\" = hostname).")
    redact_submitter: bool = opt(True, "Hide the submitting client's address in Received (submission).")


@dataclass(frozen=True)
class AuthConfig:
    """Login throttling like Dovecot's auth_penalty (auth/throttle.py), the verification cache and
    hashing (auth/login.py). Logins are delayed, never refused, for failures."""

    max_failures_per_ip: int = opt(10, "Failed logins from one client address (any account) within failure_window "
                                   "before every login from it is delayed.", lo=0, hi=1_000_000)
    max_failures_per_account: int = opt(20, "Failed logins for one account (from every address) within "
                                        "failure_window that log a warning; never refuses or delays.",
                                        lo=1, hi=1_000_000)
    failure_window: float = opt(900.0, "Failures are forgotten this long after the last one.", lo=1, duration=True)
    failure_delay: float = opt(2.0, "Delay after one failure; doubles with each further one, up to "
                               "max_failure_delay (0 = no delays).", lo=0, hi=60, duration=True)
    max_failure_delay: float = opt(15.0, "The longest a login is delayed.", lo=0, hi=300, duration=True)
    max_checks_per_ip: int = opt(2, "Password checks from one client address running at once.", lo=1, hi=1000)
    hash_threads: int = opt(0, "Threads checking passwords, apart from the store's (0 = half the CPUs, 1-4).",
                            lo=0, hi=64)
    cache_ttl: float = opt(300.0, "Remember a good login this long (0 = no cache).", lo=0, hi=86400, duration=True)
    cache_size: int = opt(10_000, "Most good logins remembered.", lo=1, hi=10_000_000)
    allow_plaintext_loopback: bool = opt(False, "Allow AUTH/LOGIN without TLS on loopback listeners "
                                         "(dev mode sets it).")


@dataclass(frozen=True)
class QueueConfig:
    retry_schedule: list[float] = opt(None, "Delays between attempts; the last one repeats.", duration=True,
                                      factory=lambda: [300.0, 600.0, 1200.0, 2400.0, 3600.0])
    jitter: float = opt(0.1, "Random spread of each delay, as a fraction.", lo=0, hi=1)
    lifetime: float = opt(5 * 86400.0, "Give up and bounce after this long.", lo=60, duration=True)
    delay_warning: float = opt(4 * 3600.0, "Send one delay warning DSN after this long (0 = never).",
                               lo=0, duration=True)
    remote_port: int = opt(25, "SMTP port of remote MX hosts (tests set another).", lo=1, hi=65535)
    max_per_destination: int = opt(4, "Connections (transactions) at once to one destination: a domain, or the "
                                   "relay or transport host it goes through. One destination never gets more than "
                                   "four fifths of max_connections, so a slow one cannot take every slot.",
                                   lo=1, hi=1000)
    max_connections: int = opt(100, "Connections to remote hosts in all, idle ones included (the older name "
                               "max_active is still read).", lo=1, hi=100_000)
    max_messages_per_connection: int = opt(100, "Transactions sent over one connection before it is closed "
                                           "(later ones to the same host reuse it, RSET first).", lo=1, hi=100_000)
    connection_idle_time: float = opt(5.0, "An unused connection is closed (QUIT) after this long (0 = one "
                                      "connection per transaction).", lo=0, hi=300, duration=True)
    relay: str = opt("", "Send all remote mail through this smarthost, \"HOST:PORT\" or \"[HOST]:PORT\" (its A/AAAA "
                     "records, never MX). Port 465 = implicit TLS, any other port = STARTTLS; TLS is required and "
                     "the certificate must name HOST (system CAs or tls_ca_file). \"\" = deliver to MX hosts.")
    relay_auth_file: str = opt("", "File with one line USER:PASSWORD for AUTH PLAIN/LOGIN at the relay (after "
                               "TLS only); mode 0600, owned by the user running the server.", path=True)
    transports: dict[str, str] = opt(None, "Routes for single domains, [queue.transports] \"DOMAIN\" = "
                                     "\"smtp:HOST\" | \"smtp:[HOST]:PORT\" (that host's A/AAAA, no MX, port 25 unless "
                                     "given) | \"relay\" | \"mx\" (the domain's MX even with a relay) | \"local\" "
                                     "(the local delivery agent).", factory=dict)
    connect_timeout: float = opt(30.0, "Connect and greeting timeout for remote SMTP.", lo=1, duration=True)
    command_timeout: float = opt(300.0, "Timeout for each remote SMTP command.", lo=1, duration=True)
    require_tls_domains: list[str] = opt(None, "Destination domains that must be reached over STARTTLS "
                                         "with a verified certificate for the MX host name.", factory=list)
    tls_ca_file: str = opt("", "PEM CA certificates trusted for require_tls_domains, MTA-STS, REQUIRETLS and "
                           "the relay instead of the system trust store (\"\" = the system store).", path=True)
    mta_sts: bool = opt(True, "Honour destination domains' MTA-STS policies (RFC 8461): fetched over HTTPS, "
                        "cached in data_dir/mta-sts.json; enforce = verified TLS to the listed MX hosts only.")
    dane: bool = opt(True, "Honour DANE TLSA records (RFC 7672) of MX hosts, when the DNS answers are "
                     "DNSSEC-validated: dns.nameservers must then be a validating resolver (unbound) on "
                     "localhost, whose AD bit is trusted.")
    lease: float = opt(120.0, "With [storage] backend = \"postgresql\": how long an entry a node claimed stays "
                       "its own without renewal (renewed every third of it); a node that dies holds its "
                       "entries this long before another node delivers them.", lo=3, hi=86400, duration=True)

    @property
    def max_active(self) -> int:
        """The older name of max_connections."""
        return self.max_connections


@dataclass(frozen=True)
class DnsConfig:
    nameservers: list[str] = opt(None, "Resolvers as \"IP\" or \"IP:PORT\"; empty = /etc/resolv.conf.",
                                 factory=list)
    timeout: float = opt(5.0, "Lifetime of one DNS query.", lo=0.1, hi=120, duration=True)
    cache_size: int = opt(5000, "Answers kept in memory, each for its TTL (0 = no cache).", lo=0,
                          hi=10_000_000)
    cache_max_ttl: float = opt(3600.0, "Longest time an answer is kept, whatever its TTL.", lo=1,
                               hi=7 * 86400, duration=True)


@dataclass(frozen=True)
class PolicyConfig:
    spf_fail: Action = opt("reject", "SPF fail with no aligned DKIM pass: reject, junk or accept.")
    dmarc_reject: Action = opt("reject", "DMARC fail where the policy is p=reject.")
    dmarc_quarantine: Action = opt("junk", "DMARC fail where the policy is p=quarantine.")
    dkim_fail: Action = opt("accept", "DKIM-signed, no signature passes and one is fail or permerror: "
                            "accept, junk or reject. accept by default: RFC 6376 §6.3 treats a failed "
                            "signature like none, and DMARC decides.")
    check_local: bool = opt(True, "Also check mail from loopback and private addresses.")


@dataclass(frozen=True)
class SpamConfig:
    rspamd_url: str = opt("", "rspamd's normal worker, e.g. \"http://127.0.0.1:11333\": every MX message is "
                          "scanned at DATA before the 250 (\"\" = no rspamd).")
    rspamd_controller_url: str = opt("", "rspamd's controller, e.g. \"http://127.0.0.1:11334\" (training).")
    rspamd_password_file: str = opt("", "File holding the controller password (\"\" = none).", path=True)
    rspamd_timeout: float = opt(20.0, "Longest wait for one scan, queueing included.", lo=0.1, hi=600,
                                duration=True)
    rspamd_max_concurrency: int = opt(32, "Scans in flight at once (pooled connections).", lo=1, hi=10_000)
    max_scan_size: int = opt(16 * 1024 * 1024, "Messages larger than this (bytes) are not scanned "
                             "(X-Spam-Status: Unknown); a cut-off copy would fail its DKIM body hash.",
                             lo=1024, hi=2**31)
    on_error: Literal["accept", "tempfail"] = opt("accept", "When the scanner does not answer: \"accept\" "
                                                  "(X-Spam-Status: Unknown, counted and logged) or "
                                                  "\"tempfail\" (451 4.7.1).")
    learn_max_pending: int = opt(1000, "Messages waiting to be taught to rspamd's controller (moves into "
                                 "or out of Junk); more are dropped, counted and logged.", lo=1, hi=1_000_000)
    learn_concurrency: int = opt(2, "Messages taught to the controller at once.", lo=1, hi=64)
    dnsbl: list[str] = opt(None, "DNS block lists (RFC 5782), e.g. [\"zen.spamhaus.org\"]: a listed client "
                           "is refused at RCPT (554 5.7.1).", factory=list)
    dnswl: list[str] = opt(None, "DNS allow lists, e.g. [\"list.dnswl.org\"]: a listed client is not "
                           "greylisted (a block listing still refuses it).", factory=list)
    dnsbl_skip: list[str] = opt(None, "Networks never looked up in dnsbl/dnswl (CIDR, e.g. "
                                "\"192.0.2.0/24\"); authenticated sessions never are.", factory=list)
    greylist: bool = opt(False, "Greylist unknown (client /24 or /64, sender, recipient) triplets at RCPT "
                         "(451 4.7.1).")
    greylist_delay: float = opt(300.0, "A retry passes this long after the first attempt.", lo=1, hi=86400,
                                duration=True)
    greylist_expire: float = opt(35 * 86400.0, "A client that passed is remembered this long after its "
                                 "last message; older state is deleted.", lo=1, duration=True)
    greylist_skip: list[str] = opt(None, "Networks never greylisted (CIDR); authenticated sessions and "
                                   "DNSWL-listed clients never are.",
                                   factory=lambda: ["127.0.0.0/8", "::1/128"])


@dataclass(frozen=True)
class DeliveryConfig:
    srs_secret_file: str = opt("", "File holding the SRS secret for forwarded mail (`init` writes one, "
                               "0640); forwarding to other servers needs it or srs_secret.", path=True)
    srs_secret: str = opt("", "The SRS secret itself (prefer srs_secret_file).")
    srs_domain: str = opt("", "Domain of rewritten senders, SRS0=...@srs_domain (\"\" = the hostname's "
                          "domain when it is one of [domains], else the first domain).")
    forward_spam: bool = opt(False, "Forward mail filed as Junk to an alias's remote targets too.")
    allow_programs: bool = opt(False, "Allow alias targets \"|/path/to/command args\" (delivery to a program, "
                               "run by the queue; no shell).")
    program_user: str = opt("nobody", "User programs run as (never root; when the server does not run as "
                            "root it must be the server's own user).")
    program_timeout: float = opt(60.0, "A program still running after this long is killed and retried.", lo=1,
                                 hi=86400, duration=True)
    program_max_output: int = opt(64 * 1024, "Most octets of a program's stdout+stderr kept (the rest is "
                                  "read and dropped).", lo=1024, hi=64 * 1024 * 1024)

    def secret(self) -> bytes:
        """The SRS secret (the file's first line, or srs_secret); b"" when none. Blocking."""
        if self.srs_secret_file:
            return Path(self.srs_secret_file).read_bytes().strip()
        return self.srs_secret.encode("utf-8")


@dataclass(frozen=True)
class SubmissionConfig:
    max_messages_per_hour: int = opt(500, "Messages one logged-in user may submit in any hour; beyond, "
                                     "451 4.7.1 (0 = no limit).", lo=0, hi=10_000_000)
    max_recipients_per_hour: int = opt(2000, "Recipients one logged-in user may give in any hour; beyond, "
                                       "451 4.7.1 at RCPT (0 = no limit).", lo=0, hi=100_000_000)


@dataclass(frozen=True)
class ImapConfig:
    max_line_length: int = opt(65_536, "Longest command line, literals excluded.", lo=1000, hi=10_000_000)
    max_nesting: int = opt(32, "Deepest parenthesised list.", lo=2, hi=1000)
    max_in_flight: int = opt(32, "Pipelined commands buffered per connection.", lo=1, hi=10_000)
    max_bad_commands: int = opt(30, "BAD replies before the connection is closed.", lo=1, hi=10_000)
    cache_bytes: int = opt(32 * 1024**2, "Memory for the message cache each server process keeps (header "
                           "blocks, ENVELOPE, BODYSTRUCTURE, SEARCH header memos; least recently used "
                           "entries are evicted beyond it; 0 = no cache), e.g. \"64M\". Exposed as "
                           "mailhaven_imap_cache_bytes.", lo=0, hi=2**40, size=True)


@dataclass(frozen=True)
class Pop3Config:
    max_bad_commands: int = opt(20, "Bad commands in a row before the connection is closed.", lo=1, hi=10_000)


@dataclass(frozen=True)
class ManageSieveConfig:
    max_script_size: int = opt(1_048_576, "Largest Sieve script a user may store (octets; RFC 5804 QUOTA/MAXSIZE); "
                               "also bounds the literal a client may send.", lo=64, hi=64 * 1_048_576)
    max_scripts: int = opt(100, "Most scripts one user may store (RFC 5804 QUOTA/MAXSCRIPTS).", lo=1, hi=100_000)
    max_bad_commands: int = opt(20, "Bad commands in a row before the connection is closed.", lo=1, hi=10_000)
    max_redirects: int = opt(4, "Most redirects one Sieve run may make (Pigeonhole's sieve_max_redirects); "
                             "more is a runtime error: the message is kept.", lo=0, hi=100)


@dataclass(frozen=True)
class LogConfig:
    format: Literal["text", "json"] = opt("text", "\"text\" for journald, \"json\" for log shippers.")
    level: Literal["debug", "info", "warning", "error"] = opt("info", "Least severe level logged.")


@dataclass(frozen=True)
class MetricsConfig:
    address: str = opt("", "Prometheus endpoint as \"127.0.0.1:9154\" (\"\" = off).")


@dataclass(frozen=True)
class ReportsConfig:
    dmarc: bool = opt(False, "Send DMARC aggregate reports (RFC 7489 §7.2) once a day to the rua addresses of the "
                      "domains whose mail the MX received (reports/dmarc_send.py has the limits).")
    dmarc_from: str = opt("", "Sender of the reports (\"\" = postmaster@ the first of [domains]).")
    dmarc_org_name: str = opt("", "org_name in the reports (\"\" = hostname).")
    dmarc_max_reports: int = opt(500, "Reports sent per day at most.", lo=0, hi=1_000_000)
    dmarc_max_rua: int = opt(2, "rua addresses of one record that get the report, at most.", lo=1, hi=10)
    dmarc_max_size: int = opt(5 * 1024 * 1024, "A gzipped report larger than this (octets) is not sent.", lo=1024)
    dmarc_folder: str = opt("DMARC Reports", "Folder for aggregate reports other servers send to our rua "
                            "(postmaster@ each domain, as `mailhaven dns` publishes it), instead of the INBOX "
                            "(\"\" = INBOX).")
    tls: bool = opt(False, "SMTP TLS reports (RFC 8460): record what outbound TLS met at destinations with "
                     "MTA-STS or DANE (data_dir/tlsrpt) and send each domain that asks (_smtp._tls TXT) a daily report.")
    tls_contact: str = opt("", "Sender and contact address of the TLS reports (\"\" = postmaster@hostname).")


@dataclass(frozen=True)
class ServerConfig:
    workers: int = opt(0, "Processes serving every listener: 0 = one per CPU (the default), 1 = one "
                       "process with no supervising parent.", lo=0, hi=256)

    @property
    def processes(self) -> int:
        """How many worker processes `serve` runs: `workers`, or one per CPU (at most 256) for 0."""
        return self.workers or max(1, min(256, os.cpu_count() or 1))


@dataclass(frozen=True)
class StorageConfig:
    """Where the server-wide state lives (mailhaven/pg.py): SQLite files under data_dir (one node, the
    default) or one PostgreSQL database that several nodes share."""

    backend: Literal["sqlite", "postgresql"] = opt("sqlite", "\"sqlite\" (files under data_dir) or \"postgresql\" "
                                                    "(the database of `dsn`, shared by every node).")
    dsn: str = opt("", "libpq connection string of the PostgreSQL database, e.g. \"host=db.example.org "
                   "dbname=mailhaven user=mailhaven\" or \"postgresql://mailhaven@db.example.org/mailhaven\" "
                   "(required with backend = \"postgresql\").")
    pool_size: int = opt(10, "Most connections of each of this server's pools to PostgreSQL (each worker "
                         "process has two: one for the greylist, queue and events, one for the mailbox index).",
                         lo=1, hi=1000)
    timeout: float = opt(5.0, "Longest wait for a database connection or one statement; beyond it the "
                         "operation fails temporarily.", lo=0.1, hi=300, duration=True)


@dataclass(frozen=True)
class Config:
    hostname: str = opt("localhost", "This server's name: greeting, Received, HELO, DKIM records.")
    data_dir: str = opt("/var/lib/mailhaven", "Where mail, the queue and indexes live.", path=True)
    users_file: str = opt("users.toml", "Users and aliases file, relative to the config file's folder.",
                          path=True)
    dev: bool = opt(False, "Developer mode: allows AUTH without TLS on loopback, and delivers mail from "
                    "loopback clients without sender checks or DNS queries.")
    plus_separator: str = opt("+", "Separator for sub-addresses (alice+tag@...); \"\" = off.")
    run_as_user: str = opt("", "When started as root: user to switch to after binding (\"\" = stay).")
    run_as_group: str = opt("", "Group for run_as_user (\"\" = that user's group).")
    shutdown_deadline: float = opt(30.0, "On SIGTERM, time allowed for sessions to finish.",
                                   lo=0, duration=True)
    public_ip: str = opt("", "Public IP of this host, for `doctor` (PTR check) and `dns` (SPF).")
    control_socket: str = opt("control.sock", "Unix socket of the running server, relative to data_dir (or "
                              "absolute); each node its own when several share data_dir.")
    server: ServerConfig = opt(None, "Worker processes.", factory=ServerConfig)
    domains: dict[str, DomainConfig] = opt(None, "Domains we accept mail for: [domains.\"example.org\"].",
                                           factory=dict)
    listeners: dict[str, ListenerConfig] = opt(None, "Listening sockets by name.", factory=dict)
    tls: TlsConfig = opt(None, "Certificate for STARTTLS and implicit TLS.", factory=TlsConfig)
    smtp: SmtpConfig = opt(None, "SMTP limits and headers.", factory=SmtpConfig)
    auth: AuthConfig = opt(None, "Login throttling.", factory=AuthConfig)
    queue: QueueConfig = opt(None, "Outbound queue.", factory=QueueConfig)
    dns: DnsConfig = opt(None, "DNS resolver.", factory=DnsConfig)
    policy: PolicyConfig = opt(None, "SPF/DKIM/DMARC actions.", factory=PolicyConfig)
    spam: SpamConfig = opt(None, "Spam filtering (rspamd).", factory=SpamConfig)
    submission: SubmissionConfig = opt(None, "Per-user sending limits on submission.", factory=SubmissionConfig)
    delivery: DeliveryConfig = opt(None, "Local delivery: program targets; forwarding to other servers (SRS).",
                                   factory=DeliveryConfig)
    imap: ImapConfig = opt(None, "IMAP limits.", factory=ImapConfig)
    pop3: Pop3Config = opt(None, "POP3 limits.", factory=Pop3Config)
    managesieve: ManageSieveConfig = opt(None, "Sieve script storage and ManageSieve limits.",
                                         factory=ManageSieveConfig)
    log: LogConfig = opt(None, "Logging.", factory=LogConfig)
    metrics: MetricsConfig = opt(None, "Prometheus metrics.", factory=MetricsConfig)
    reports: ReportsConfig = opt(None, "Reports we send: DMARC aggregate reports, SMTP TLS reports.",
                                 factory=ReportsConfig)
    storage: StorageConfig = opt(None, "Shared state: SQLite (default) or PostgreSQL.", factory=StorageConfig)
    # Not from TOML: where the file was, for messages and reloads.
    source: str = field(default="", metadata={"internal": True})

    # -- derived helpers (no stored derived state) --
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def mail_root(self) -> Path:
        return Path(self.data_dir) / "mail"

    @property
    def queue_root(self) -> Path:
        return Path(self.data_dir) / "queue"

    @property
    def control_path(self) -> Path:
        return Path(self.data_dir) / self.control_socket

    @property
    def authserv_id(self) -> str:
        return self.smtp.authserv_id or self.hostname

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    @property
    def srs_domain(self) -> str:
        """delivery.srs_domain, else the hostname's domain when it is ours, else the first domain."""
        if self.delivery.srs_domain:
            return self.delivery.srs_domain.lower().rstrip(".")
        parent = self.hostname.partition(".")[2].lower()
        if parent in self.domains:
            return parent
        return next(iter(self.domains), self.hostname.lower())


# --- loading -------------------------------------------------------------------------------------


def _describe(value: object) -> str:
    if isinstance(value, str):
        # JSON string syntax: quotes, backslashes and control characters escaped, so one line.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _range_text(lo: float | None, hi: float | None) -> str:
    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    if lo is not None and hi is not None:
        return f" {fmt(lo)}-{fmt(hi)}"
    if lo is not None:
        return f" >= {fmt(lo)}"
    return ""


class _Loader:
    def __init__(self, base: Path) -> None:
        self.base = base

    def fail(self, path: str, reason: str) -> typing.NoReturn:
        raise ConfigError(f"{path}: {reason}")

    def scalar(self, path: str, tp: Any, value: object, meta: dict[str, Any]) -> Any:
        lo, hi = meta.get("lo"), meta.get("hi")
        if typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                self.fail(path, "expected one of " + ", ".join(f'"{c}"' for c in choices)
                          + f", got {_describe(value)}")
            return value
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(path, f"expected true or false, got {_describe(value)}")
            return value
        if tp is int and meta.get("size"):
            try:
                octets = parse_size(value)
            except ValueError:
                self.fail(path, f"expected a size (octets, or \"100K\", \"50M\", \"1G\"), got {_describe(value)}")
            if (lo is not None and octets < lo) or (hi is not None and octets > hi):
                self.fail(path, f"expected a size{_range_text(lo, hi)} octets, got {_describe(value)}")
            return octets
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int) or (
                    (lo is not None and value < lo) or (hi is not None and value > hi)):
                self.fail(path, f"expected an integer{_range_text(lo, hi)}, got {_describe(value)}")
            return value
        if tp is float:
            if meta.get("duration"):
                try:
                    seconds = parse_duration(value)
                except ValueError:
                    self.fail(path, "expected a duration (seconds, or \"30s\", \"5m\", \"1h\", \"5d\"), "
                              f"got {_describe(value)}")
                if (lo is not None and seconds < lo) or (hi is not None and seconds > hi):
                    self.fail(path, f"expected a duration{_range_text(lo, hi)} seconds, got {_describe(value)}")
                return seconds
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or (
                    (lo is not None and value < lo) or (hi is not None and value > hi)):
                self.fail(path, f"expected a number{_range_text(lo, hi)}, got {_describe(value)}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                self.fail(path, f"expected a string, got {_describe(value)}")
            if "\x00" in value:
                self.fail(path, "NUL character not allowed")
            if meta.get("path") and value:
                p = Path(value).expanduser()
                return str(p if p.is_absolute() else (self.base / p))
            return value
        raise AssertionError(f"unsupported config type {tp!r}")  # schema bug, not user input

    def value(self, path: str, tp: Any, value: object, meta: dict[str, Any]) -> Any:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                self.fail(path, f"expected a table, got {_describe(value)}")
            return self.table(path, tp, value)
        if origin is list:
            (item,) = typing.get_args(tp)
            if not isinstance(value, list):
                self.fail(path, f"expected an array, got {_describe(value)}")
            return [self.value(f"{path}[{i}]", item, v, meta) for i, v in enumerate(value)]
        if origin is dict:
            _, item = typing.get_args(tp)
            if not isinstance(value, dict):
                self.fail(path, f"expected a table, got {_describe(value)}")
            return {k: self.value(f"{path}.{_key(k)}", item, v, meta) for k, v in value.items()}
        return self.scalar(path, tp, value, meta)

    def table(self, path: str, cls: Any, data: dict[str, Any], defaults: dict[str, Any] | None = None) -> Any:
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        for key in data:
            if key not in fields:
                where = f"{path}.{_key(key)}" if path else _key(key)
                self.fail(where, "unknown key")
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            where = f"{path}.{name}" if path else name
            if name in data:
                kwargs[name] = self.value(where, hints[name], data[name], dict(f.metadata))
            elif defaults and name in defaults:
                kwargs[name] = defaults[name]
            elif f.metadata.get("path") and isinstance(f.default, str) and f.default:
                # A relative default (users_file = "users.toml") is relative to the config's folder too.
                kwargs[name] = self.scalar(where, str, f.default, dict(f.metadata))
        return cls(**kwargs)


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _build(data: dict[str, Any], base: Path, source: str) -> Config:
    try:
        return _build_checked(data, base, source)
    except ConfigError as e:
        text = str(e)
        if _CONTROL.search(text):  # a value echoed in the message (a path, a name): keep it one line
            raise ConfigError(_CONTROL.sub(lambda m: json.dumps(m.group())[1:-1], text)) from None
        raise


def _build_checked(data: dict[str, Any], base: Path, source: str) -> Config:
    loader = _Loader(base)
    data = dict(data)
    queue_raw = data.get("queue")
    if isinstance(queue_raw, dict) and "max_active" in queue_raw:  # the older name of max_connections
        if "max_connections" in queue_raw:
            loader.fail("queue.max_active", "give max_connections or its older name max_active, not both")
        queue_raw = dict(queue_raw)
        queue_raw["max_connections"] = queue_raw.pop("max_active")
        data["queue"] = queue_raw
    listeners_raw = data.pop("listeners", {})
    domains_raw = data.pop("domains", {})
    cfg: Config = loader.table("", Config, data)
    if not isinstance(listeners_raw, dict):
        loader.fail("listeners", f"expected a table, got {_describe(listeners_raw)}")
    listeners: dict[str, ListenerConfig] = {}
    for name, raw in listeners_raw.items():
        if name not in _LISTENER_DEFAULTS:
            loader.fail(f"listeners.{_key(name)}", "unknown listener (expected one of "
                        + ", ".join(LISTENER_NAMES) + ")")
        if not isinstance(raw, dict):
            loader.fail(f"listeners.{name}", f"expected a table, got {_describe(raw)}")
        listeners[name] = loader.table(f"listeners.{name}", ListenerConfig, raw, _LISTENER_DEFAULTS[name])
    if not isinstance(domains_raw, dict):
        loader.fail("domains", f"expected a table, got {_describe(domains_raw)}")
    domains: dict[str, DomainConfig] = {}
    for name, raw in domains_raw.items():
        dname = name.lower().rstrip(".")
        if dname in domains:
            loader.fail(f"domains.{_key(name)}", f"same domain as domains.{_key(dname)}")
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+", dname):
            loader.fail(f"domains.{_key(name)}", "not a valid domain name")
        if not isinstance(raw, dict):
            loader.fail(f"domains.{_key(name)}", f"expected a table, got {_describe(raw)}")
        domains[dname] = loader.table(f"domains.{_key(name)}", DomainConfig, raw)
    cfg = dataclasses.replace(cfg, listeners=listeners, domains=domains, source=source)
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    """Cross-field rules and files that must exist."""
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", cfg.hostname):
        raise ConfigError(f"hostname: not a valid host name, got {_describe(cfg.hostname)}")
    if len(cfg.plus_separator) > 1:
        raise ConfigError(f"plus_separator: expected one character or \"\", got {_describe(cfg.plus_separator)}")
    bound: list[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
    for name, lst in cfg.listeners.items():
        try:
            ip = ipaddress.ip_address(lst.address)
        except ValueError:
            raise ConfigError(f"listeners.{name}.address: expected an IPv4 or IPv6 address, "
                              f"got {_describe(lst.address)}") from None
        if not lst.enabled:
            continue
        for other, oip, oport in bound:
            # Same port, same family, and the same address or either one the wildcard: the second
            # bind would fail. ("::" is bound IPv6-only, so it does not clash with 0.0.0.0.)
            if oport == lst.port and oip.version == ip.version and (
                    oip == ip or oip.is_unspecified or ip.is_unspecified):
                raise ConfigError(f"listeners.{name}.port: {lst.address} port {lst.port} is also used by "
                                  f"listeners.{other}")
        bound.append((name, ip, lst.port))
        if lst.tls != "none" and not cfg.tls.cert:
            raise ConfigError(f"listeners.{name}.tls: \"{lst.tls}\" needs tls.cert and tls.key")
        _check_proxy(name, lst)
        if lst.per_ip_connections > lst.max_connections:
            raise ConfigError(f"listeners.{name}.per_ip_connections: must not exceed max_connections "
                              f"({lst.max_connections})")
    if bool(cfg.tls.cert) != bool(cfg.tls.key):
        raise ConfigError("tls.key: tls.cert and tls.key go together")
    for key in ("cert", "key"):
        p = getattr(cfg.tls, key)
        if p and not Path(p).is_file():
            raise ConfigError(f"tls.{key}: file not found: {p}")
    if cfg.queue.tls_ca_file and not Path(cfg.queue.tls_ca_file).is_file():
        raise ConfigError(f"queue.tls_ca_file: file not found: {cfg.queue.tls_ca_file}")
    for dname, dom in cfg.domains.items():
        for key in ("dkim_key", "dkim_ed25519_key"):
            p = getattr(dom, key)
            if p and not Path(p).is_file():
                raise ConfigError(f"domains.{_key(dname)}.{key}: file not found: {p}")
        if dom.catch_all and "@" not in dom.catch_all:
            raise ConfigError(f"domains.{_key(dname)}.catch_all: expected an address, got {_describe(dom.catch_all)}")
    _check_routes(cfg.queue)
    if not cfg.queue.retry_schedule:
        raise ConfigError("queue.retry_schedule: expected at least one delay")
    for i, ns in enumerate(cfg.dns.nameservers):
        if not _valid_nameserver(ns):
            raise ConfigError(f"dns.nameservers[{i}]: expected \"IP\" or \"IP:PORT\", got {_describe(ns)}")
    for key in ("rspamd_url", "rspamd_controller_url"):
        url = getattr(cfg.spam, key)
        if url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
            raise ConfigError(f"spam.{key}: expected \"http://HOST:PORT\", got {_describe(url)}")
    if cfg.spam.rspamd_password_file and not Path(cfg.spam.rspamd_password_file).is_file():
        raise ConfigError(f"spam.rspamd_password_file: file not found: {cfg.spam.rspamd_password_file}")
    _check_reputation(cfg.spam)
    if cfg.delivery.srs_secret_file and not Path(cfg.delivery.srs_secret_file).is_file():
        raise ConfigError(f"delivery.srs_secret_file: file not found: {cfg.delivery.srs_secret_file}")
    if cfg.delivery.srs_secret_file and cfg.delivery.srs_secret:
        raise ConfigError("delivery.srs_secret: give srs_secret_file or srs_secret, not both")
    if cfg.delivery.srs_domain and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?",
                                                    cfg.delivery.srs_domain):
        raise ConfigError(f"delivery.srs_domain: not a valid domain, got {_describe(cfg.delivery.srs_domain)}")
    if cfg.metrics.address and not _valid_hostport(cfg.metrics.address):
        raise ConfigError(f"metrics.address: expected \"IP:PORT\", got {_describe(cfg.metrics.address)}")
    _check_storage(cfg.storage)


def _check_routes(q: QueueConfig) -> None:
    """[queue] relay and [queue.transports] parse (delivery/routes.py owns their syntax)."""
    from mailhaven.delivery import routes

    if q.relay:
        try:
            routes.parse_hostport(q.relay, None)
        except ValueError as e:
            raise ConfigError(f"queue.relay: {e}; expected \"HOST:PORT\" or \"[HOST]:PORT\", got "
                              f"{_describe(q.relay)}") from None
    if q.relay_auth_file and not q.relay:
        raise ConfigError("queue.relay_auth_file: only used with queue.relay")
    for name, value in q.transports.items():
        where = f"queue.transports.{_key(name)}"
        dname = name.lower().rstrip(".")
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+", dname):
            raise ConfigError(f"{where}: not a valid domain name")
        try:
            kind, _ = routes.parse_transport(value)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}, got {_describe(value)}") from None
        if kind == "relay" and not q.relay:
            raise ConfigError(f"{where}: \"relay\" needs queue.relay")


def _check_storage(storage: StorageConfig) -> None:
    """backend = "postgresql" needs psycopg and a dsn libpq can parse; a dsn without it is a mistake
    (a node left on its own SQLite files while the others share a database)."""
    if storage.backend != "postgresql":
        if storage.dsn:
            raise ConfigError("storage.dsn: only used with backend = \"postgresql\" (this config says "
                              f"\"{storage.backend}\")")
        return
    if not storage.dsn:
        raise ConfigError("storage.dsn: backend = \"postgresql\" needs the database's connection string, "
                          "e.g. \"host=db.example.org dbname=mailhaven user=mailhaven\"")
    try:
        from psycopg import conninfo
    except ImportError:
        raise ConfigError("storage.backend: \"postgresql\" needs psycopg: pip install 'mailhaven[postgresql]'") from None
    try:
        conninfo.conninfo_to_dict(storage.dsn)
    except Exception as e:  # psycopg.ProgrammingError: libpq's own words, which never repeat a password
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"storage.dsn: not a valid libpq connection string: {reason}") from None


def _check_proxy(name: str, lst: ListenerConfig) -> None:
    """proxy_trusted holds networks; proxy_protocol needs at least one (Postfix and Dovecot accept the
    header from anyone listed; nobody listed would refuse every connection)."""
    for i, net in enumerate(lst.proxy_trusted):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"listeners.{name}.proxy_trusted[{i}]: expected an address or network like "
                              f"\"192.0.2.10\" or \"10.0.0.0/8\", got {_describe(net)}") from None
    if lst.proxy_protocol and not lst.proxy_trusted:
        raise ConfigError(f"listeners.{name}.proxy_trusted: proxy_protocol = true needs the addresses of the "
                          f"proxies allowed to send the PROXY header (e.g. [\"10.0.0.5\"]); connections from "
                          f"any other address are refused")


_ZONE = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)+")


def _check_reputation(spam: SpamConfig) -> None:
    """spam.dnsbl / dnswl are DNS zones; spam.dnsbl_skip / greylist_skip are networks."""
    for key in ("dnsbl", "dnswl"):
        for i, zone in enumerate(getattr(spam, key)):
            if not _ZONE.fullmatch(zone.lower().strip(".")) or len(zone) > 200:
                raise ConfigError(f"spam.{key}[{i}]: expected a DNS list zone like \"zen.spamhaus.org\", "
                                  f"got {_describe(zone)}")
    for key in ("dnsbl_skip", "greylist_skip"):
        for i, net in enumerate(getattr(spam, key)):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"spam.{key}[{i}]: expected a network like \"192.0.2.0/24\" or "
                                  f"\"2001:db8::/32\", got {_describe(net)}") from None


def split_hostport(text: str, default_port: int) -> tuple[str, int]:
    """"1.2.3.4", "1.2.3.4:53", "[::1]:53", "::1" -> (host, port). Raises ValueError."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError
        port = int(rest[1:]) if rest else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host)
    if not 1 <= port <= 65535:
        raise ValueError
    return host, port


def _valid_nameserver(text: str) -> bool:
    try:
        split_hostport(text, 53)
    except ValueError:
        return False
    return True


def _valid_hostport(text: str) -> bool:
    try:
        split_hostport(text, 0)
    except ValueError:
        return False
    return True


def load(path: str | Path) -> Config:
    """Read and validate a config file. Raises ConfigError with one line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    return _build(parse_toml(raw, p), p.resolve().parent, str(p))


def parse_toml(raw: bytes, p: Path) -> dict[str, Any]:
    """TOML bytes -> table; errors are one ConfigError line, `FILE:LINE:COL: TOML syntax error: ...`."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line L, column C)"; put the position first.
        m = re.search(r"^(.*) \(at line (\d+), column (\d+)\)$", str(e))
        if m:
            raise ConfigError(f"{p}:{m.group(2)}:{m.group(3)}: TOML syntax error: {m.group(1)}") from None
        raise ConfigError(f"{p}: TOML syntax error: {e}") from None


def from_dict(data: dict[str, Any], base: Path) -> Config:
    """Build a Config from an already parsed table (tests, dev defaults)."""
    return _build(data, base, "<dict>")


def dev_config(workdir: Path, *, cert: Path, key: Path, users_file: Path) -> Config:
    """The embedded config of `serve --dev`: loopback, high ports, data under workdir."""
    data: dict[str, Any] = {
        "hostname": "localhost",
        "data_dir": str(workdir / "data"),
        "users_file": str(users_file),
        "dev": True,
        "domains": {"example.test": {}},
        "tls": {"cert": str(cert), "key": str(key)},
        "auth": {"allow_plaintext_loopback": True},
        "server": {"workers": 1},  # one process, whatever the default
        "listeners": {name: {"address": "127.0.0.1", "port": port} for name, port in DEV_PORTS.items()},
    }
    return from_dict(data, workdir)


def iter_keys(cls: Any = Config, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field[Any]]]:
    """Every documented key path of the schema (for the sample-config test and docs)."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = typing.get_type_hints(cls)[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from iter_keys(tp, path + ".")
        elif typing.get_origin(tp) is dict and f.name == "listeners":
            yield from iter_keys(ListenerConfig, "listeners.*.")
        elif typing.get_origin(tp) is dict and f.name == "domains":
            yield from iter_keys(DomainConfig, "domains.*.")
        else:
            yield path, f


__all__ = [
    "Config", "ListenerConfig", "DomainConfig", "TlsConfig", "SmtpConfig", "AuthConfig", "QueueConfig",
    "DnsConfig", "PolicyConfig", "SpamConfig", "SubmissionConfig", "ImapConfig", "Pop3Config", "ManageSieveConfig",
    "LogConfig", "MetricsConfig", "ReportsConfig", "StorageConfig",
    "ConfigError", "load", "from_dict", "dev_config", "parse_duration", "split_hostport", "iter_keys",
    "LISTENER_NAMES", "DEV_PORTS",
]
