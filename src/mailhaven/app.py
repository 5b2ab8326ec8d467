"""The running server: wiring only.

Owns: building the shared objects (`Context`) from a `Config`, binding every enabled listener's
socket, dropping root, handing each socket to its protocol module's factory, one `asyncio.TaskGroup`
that owns servers and workers, signals (SIGTERM/SIGINT = graceful stop, SIGHUP = reload) and
systemd's sd_notify (READY/STOPPING/RELOADING), and the metrics endpoint (metrics.py, bound with the
listeners when config `metrics.address` is set; `ctx.metrics` is always a Metrics, a no-op when off).
Does not own: any protocol (smtp/, imap/, pop3/), the store, accounts, TLS policy beyond loading the
configured certificate, several worker processes (supervisor.py runs `run` once per worker with
the sockets it bound, `worker=i` and a `link` to it; worker 0 alone runs the queue and the control
socket, the others hand their queue entries over through queue/handoff.py).

Listener factory contract (one per protocol module, named in `LISTENER_FACTORIES`):

    async def create_server(ctx: seams.Context, name: str, lc: ListenerConfig,
                            sock: socket.socket) -> asyncio.AbstractServer

`sock` is already bound and listening (non-blocking); the factory serves on it, e.g.
`await loop.create_server(factory, sock=sock, ssl=ctx.tls if lc.tls == "implicit" else None)`,
and returns the started server. Each accepted connection is registered with
`ctx.sessions.add(transport)` and removed with `ctx.sessions.discard(transport)` when it ends (or
`with ctx.sessions.track(transport): ...`), so a graceful stop can wait for sessions to finish.
Long-lived waits (IMAP IDLE) should also watch `ctx.stopping` (an asyncio.Event) and say goodbye.
Always read `ctx.config`, `ctx.directory`, `ctx.tls` when a session starts: SIGHUP replaces them.
The parts meet through the protocols of seams.py; this module builds the real objects directly
(store, directory, resolver, queue, the local delivery agent) and hands them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailhaven import config as configmod
from mailhaven import lineproto, seams
from mailhaven import log as logmod
from mailhaven import metrics as metricsmod
from mailhaven.auth.login import LoginService
from mailhaven.auth.users import Directory
from mailhaven.config import Config, ListenerConfig
from mailhaven.control import ControlError, relayed, serve_control
from mailhaven.delivery.forward import Forwarder
from mailhaven.delivery.local import LocalDeliveryAgent
from mailhaven.delivery.sieve import SieveFilter
from mailhaven.dns.resolver import Resolver
from mailhaven.errors import ConfigError, DatabaseError
from mailhaven.imap import server as imap_server
from mailhaven.limits import Limits
from mailhaven.managesieve import server as managesieve_server
from mailhaven.policy.dnsbl import Checker as DnsblChecker
from mailhaven.policy.learn import Learner
from mailhaven.policy.spam import Scanner
from mailhaven.pop3 import server as pop3_server
from mailhaven.queue.handoff import HandoffQueue
from mailhaven.queue.manager import QueueManager
from mailhaven.queue.spool import QueueSpool
from mailhaven.quota import QuotaService
from mailhaven.reports.dmarc_send import DmarcReporter
from mailhaven.smtp import server as smtp_server
from mailhaven.store import Store

if TYPE_CHECKING:
    from mailhaven.pg import Database
    from mailhaven.supervisor import WorkerLink

log = logging.getLogger("mailhaven.app")

ListenerFactory = Callable[[seams.Context, str, ListenerConfig, socket.socket], Awaitable[asyncio.AbstractServer]]

LISTENER_FACTORIES: dict[str, ListenerFactory] = {
    "mx": smtp_server.create_mx_server,
    "submission": smtp_server.create_submission_server,
    "submissions": smtp_server.create_submission_server,
    "pop3": pop3_server.create_server,
    "pop3s": pop3_server.create_server,
    "imap": imap_server.create_server,
    "imaps": imap_server.create_server,
    "managesieve": managesieve_server.create_server,
}


class StartupError(Exception):
    """The server cannot start (port taken, privileges); `str()` is one line."""


class Sessions:
    """Live connections of every listener, so a graceful stop can wait for them."""

    def __init__(self) -> None:
        self._live: set[asyncio.BaseTransport] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, transport: asyncio.BaseTransport) -> None:
        self._live.add(transport)
        self._idle.clear()

    def discard(self, transport: asyncio.BaseTransport) -> None:
        self._live.discard(transport)
        if not self._live:
            self._idle.set()

    @contextlib.contextmanager
    def track(self, transport: asyncio.BaseTransport) -> Iterator[None]:
        self.add(transport)
        try:
            yield
        finally:
            self.discard(transport)

    def __len__(self) -> int:
        return len(self._live)

    async def wait_idle(self, seconds: float) -> bool:
        """True if every session ended within `seconds`."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def abort_all(self) -> None:
        for transport in list(self._live):
            with contextlib.suppress(Exception):
                transport.abort()  # type: ignore[attr-defined]
            self.discard(transport)


@dataclass(eq=False)
class Context:
    """What every listener and worker shares. Mutable: SIGHUP replaces config, directory and tls."""

    config: Config
    store: seams.Store  # mailhaven.store.Store
    directory: seams.Directory  # mailhaven.auth.users.Directory
    resolver: seams.Resolver  # mailhaven.dns.resolver.Resolver
    limits: Limits
    tls: ssl.SSLContext | None
    queue: seams.Queue | None = None  # queue.manager.QueueManager, set by run() once the store is up
    logins: LoginService | None = None  # the login path of every protocol (auth/login.py; login.of(ctx))
    metrics: metricsmod.Metrics = field(default_factory=lambda: metricsmod.NOOP)
    spam: Scanner | None = None  # policy/rspamd.RspamdClient when config spam.rspamd_url is set
    dnsbl: DnsblChecker | None = None  # policy/dnsbl.py Checker (its answer cache): spam.dnsbl / spam.dnswl
    greylist: seams.Greylist | None = None  # policy/greylist.py (or greylist_pg.py), when spam.greylist is on
    dmarc_reports: DmarcReporter | None = None  # reports/dmarc_send.py, when reports.dmarc is on
    database: Database | None = None  # pg.py: the PostgreSQL pool of [storage] backend = "postgresql"
    learner: Learner | None = None  # policy/learn.Learner when config spam.rspamd_controller_url is set
    sessions: Sessions = field(default_factory=Sessions)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Actual bound (address, port) by listener name: tests bind port 0 and read the real port here.
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Listener names actually serving.
    serving: dict[str, asyncio.AbstractServer] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _reload: asyncio.Event = field(default_factory=asyncio.Event)
    # The one way into mailboxes (delivery/local.py), over this store and the current directory.
    agent: seams.DeliveryAgent = field(init=False)
    # Per-user limits (quota.py): the agent's quota step, IMAP APPEND/COPY/GETQUOTA, the MX's RCPT.
    quota: QuotaService = field(init=False)

    def __post_init__(self) -> None:
        self.quota = QuotaService(self.store, lambda: self.directory)
        agent = LocalDeliveryAgent(self.store, lambda: self.directory, lambda: self.config.authserv_id,
                                   quota=self.quota,  # each user's active Sieve script:
                                   filter=SieveFilter(self, _sieve_memory(self.database)),
                                   forwarder=Forwarder(self))
        self.quota.agent = agent
        self.agent = agent

    def port(self, name: str) -> int:
        return self.addresses[name][1]

    def request_stop(self) -> None:
        """Graceful stop, as on SIGTERM."""
        self._stop.set()

    def request_reload(self) -> None:
        """Reload the config file, as on SIGHUP."""
        self._reload.set()


# --- sd_notify -----------------------------------------------------------------------------------


def sd_notify(state: str) -> bool:
    """Tell systemd our state (`READY=1`, ...) if NOTIFY_SOCKET is set; never fails the server."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        log.warning("sd_notify %s failed: %s", state.split("=")[0], e.strerror or e)
        return False
    return True


# --- building the shared objects -----------------------------------------------------------------


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """Server SSLContext from `tls.cert`/`tls.key` (tls.py), or None when none is configured."""
    from mailhaven.tls import server_context

    return server_context(cfg)


def _load_cert(ctx: ssl.SSLContext, cfg: Config) -> None:
    from mailhaven.tls import load_cert_chain

    load_cert_chain(ctx, cfg.tls.cert, cfg.tls.key)  # ConfigError names tls.cert or tls.key


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


def load_directory(cfg: Config) -> Directory:
    """auth.users.Directory over the users file (ConfigError if broken); logs its warnings."""
    directory = Directory.load(cfg)
    if cfg.delivery.allow_programs:
        from mailhaven.delivery.program import check_user

        check_user(cfg)  # [delivery] program_user: exists, not root, one we can run programs as
    for warning in directory.warnings:
        log.warning("users: %s", warning)
    return directory


def build_limits(cfg: Config) -> Limits:
    return Limits(cfg)


def build_context(cfg: Config, *, bus_dir: Path | None = None) -> Context:
    """Everything but the store's start and the sockets (no I/O beyond reading files).

    `bus_dir`: this process is one of several worker processes over the same data_dir; their
    stores send each other change events through sockets there (store/bus.py), e.g.
    `<data_dir>/run/bus`, the same for every worker. None: a single process. With PostgreSQL the
    change events of every store (this node's workers and other nodes) go through LISTEN/NOTIFY
    instead (store/bus_pg.py), and `bus_dir` is not used."""
    database = _database(cfg)
    ctx = Context(
        config=cfg,
        store=_store(cfg, bus_dir, database),
        directory=load_directory(cfg),
        resolver=Resolver.from_config(cfg.dns),
        limits=build_limits(cfg),
        tls=tls_context(cfg),
        metrics=metricsmod.Metrics.from_config(cfg.metrics),
        spam=rspamd_client(cfg),
        dnsbl=_dnsbl_checker(),
        greylist=_greylist(cfg, database),
        database=database,
    )
    # It reads ctx.config and ctx.directory at each login: a reload or a users file change (a new
    # directory) empties its verification cache.
    if cfg.reports.dmarc:
        ctx.dmarc_reports = DmarcReporter(ctx, cfg.data_path / "reports" / "dmarc.sqlite")
    ctx.logins = LoginService(lambda: ctx.config, lambda: ctx.directory, ctx, failures=_login_failures(database))
    ctx.learner = spam_learner(cfg, lambda cls, result: ctx.metrics.spam_learned(cls, result))
    return ctx


def spam_learner(cfg: Config, count: Callable[[str, str], None]) -> Learner | None:
    """Training from the users' moves (policy/learn.py), or None when spam.rspamd_controller_url is
    empty. Reads the password file now (still root: it may be readable by root only)."""
    from mailhaven.policy.learn import read_password

    spam = cfg.spam
    if not spam.rspamd_controller_url:
        return None
    try:
        password = read_password(spam.rspamd_password_file)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"spam.rspamd_password_file: {_reason(e)}") from None
    return Learner(spam.rspamd_controller_url, password=password, timeout=spam.rspamd_timeout,
                   max_pending=spam.learn_max_pending, concurrency=spam.learn_concurrency,
                   max_size=spam.max_scan_size, count=count)


def rspamd_client(cfg: Config) -> Scanner | None:
    """The pooled rspamd client of config [spam] (None when spam.rspamd_url is empty). Its module
    (and aiohttp, ~7 MiB resident) is imported only when one is configured."""
    if not cfg.spam.rspamd_url:
        return None
    from mailhaven.policy import rspamd

    return rspamd.from_config(cfg.spam)


def _dnsbl_checker() -> DnsblChecker:
    return DnsblChecker()


def _database(cfg: Config) -> Database | None:
    """pg.Database, the PostgreSQL pool of [storage] backend = "postgresql" (opened in run, once root
    is dropped: a passfile is read as run_as_user), or None with SQLite. psycopg is imported only then."""
    if cfg.storage.backend != "postgresql":
        return None
    from mailhaven import pg

    return pg.Database.from_config(cfg.storage)


def _store(cfg: Config, bus_dir: Path | None, database: Database | None) -> Store:
    """The Store; with PostgreSQL its change events travel through LISTEN/NOTIFY (bus_pg.py: one
    transport for the workers of this node and the other nodes alike, each event heard once) and
    its per-user index lives in the database (store/index_pg.py; the SQLite files otherwise)."""
    if database is None:
        return Store(cfg.mail_root, hostname=cfg.hostname, bus_dir=bus_dir)
    from mailhaven.store.bus_pg import PgBus
    from mailhaven.store.index_pg import PgIndexes

    return Store(cfg.mail_root, hostname=cfg.hostname, peers=PgBus(database), indexes=PgIndexes(database))


def _queue_spool(ctx: Context) -> QueueSpool | None:
    """The queue's storage: with PostgreSQL its envelopes in the database (queue/spool_pg.py) and
    its message files in queue_root, a path every node shares; else None (the manager's file
    spool, with worker partitions)."""
    if ctx.database is None:
        return None
    from mailhaven.queue.spool_pg import PgSpool

    return PgSpool(ctx.database, ctx.config.queue_root)


def _sieve_memory(database: Database | None) -> seams.SieveMemory | None:
    """Sieve's vacation and duplicate marks: in the shared database with PostgreSQL (one reply per
    period whichever node delivers; delivery/sievetrack_pg.py), else None: each user's tracker file."""
    if database is None:
        return None
    from mailhaven.delivery.sievetrack_pg import PgSieveMemory

    return PgSieveMemory(database)


def _login_failures(database: Database | None) -> seams.LoginFailures | None:
    """Login failures counted by every node with PostgreSQL (auth/throttle_pg.py), else None: each
    process counts its own (auth/throttle.py)."""
    if database is None:
        return None
    from mailhaven.auth.throttle_pg import PgLoginFailures

    return PgLoginFailures(database)


def _greylist(cfg: Config, database: Database | None) -> seams.Greylist | None:
    """The greylist (policy/greylist.py) over data_dir/greylist.sqlite, or over `database` with
    PostgreSQL (opened in run), or None when off."""
    from mailhaven.policy import greylist

    return greylist.from_config(cfg, database)


# --- sockets and privileges ----------------------------------------------------------------------


def bind_listener(name: str, lc: ListenerConfig) -> socket.socket:
    ip = ipaddress.ip_address(lc.address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) on accepted sockets only then, and
    # a multi-line reply (EHLO, CAPA) otherwise waits 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" means IPv6 only, so 0.0.0.0 on the same port can be a separate listener.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((lc.address, lc.port))
        sock.listen(lineproto.backlog(lc))  # the listener factories pass the same to create_server
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise StartupError(f"listeners.{name}: cannot listen on {lc.address} port {lc.port}: "
                           f"{e.strerror or e}") from None
    return sock


def bind_all(cfg: Config) -> dict[str, socket.socket]:
    """Bind every enabled listener first, so a taken port fails before anything starts."""
    socks: dict[str, socket.socket] = {}
    try:
        for name, lc in cfg.listeners.items():
            if lc.enabled:
                socks[name] = bind_listener(name, lc)
    except BaseException:
        for s in socks.values():
            s.close()
        raise
    return socks


def _run_as(cfg: Config) -> tuple[str, int, int] | None:
    """(user name, uid, gid) to switch to: only when started as root with run_as_user set."""
    if os.geteuid() != 0 or not cfg.run_as_user:
        return None
    import grp
    import pwd

    try:
        pw = pwd.getpwnam(cfg.run_as_user)
    except KeyError:
        raise ConfigError(f"run_as_user: no such user: {cfg.run_as_user}") from None
    try:
        gid = grp.getgrnam(cfg.run_as_group).gr_gid if cfg.run_as_group else pw.pw_gid
    except KeyError:
        raise ConfigError(f"run_as_group: no such group: {cfg.run_as_group}") from None
    return pw.pw_name, pw.pw_uid, gid


def prepare_data_dir(cfg: Config) -> None:
    """Still root, before dropping: create data_dir (0700) and hand it to run_as_user when it is
    new or empty. A data_dir with content keeps its owner (no recursive chown behind the admin's
    back); check_data_dir then refuses it if the user cannot write there."""
    run = _run_as(cfg)
    if run is None:
        return
    _, uid, gid = run
    path = cfg.data_dir
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if (st.st_uid, st.st_gid) != (uid, gid) and not os.listdir(path):
        os.chown(path, uid, gid)
        os.chmod(path, 0o700)


def check_data_dir(cfg: Config) -> None:
    """After dropping: data_dir must exist and be writable by us, or we refuse to start."""
    path = cfg.data_dir
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise StartupError(f"data_dir: cannot create {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        import pwd

        st = os.stat(path)
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        me = pwd.getpwuid(os.geteuid()).pw_name
        raise StartupError(f"data_dir: {path} is not writable by {me} (owner {owner}, mode "
                           f"{st.st_mode & 0o7777:04o}): chown -R {me}: {path}")


def drop_privileges(cfg: Config) -> None:
    """After binding and reading what needs root: become `run_as_user` (its group, or
    `run_as_group`, plus its supplementary groups, e.g. ssl-cert for reading keys on reload).
    Every id is switched (real, effective, saved), so root cannot be regained; checked after."""
    run = _run_as(cfg)
    if run is None:
        if os.geteuid() == 0:
            log.warning("running as root: set run_as_user to drop privileges after binding")
        return
    name, uid, gid = run
    os.initgroups(name, gid)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):  # pragma: no cover
        raise StartupError(f"run_as_user: could not switch to {name}")
    log.info("running as %s (uid %d, gid %d)", name, uid, gid)


# --- reload --------------------------------------------------------------------------------------


# What SIGHUP cannot apply: bound sockets (listeners, metrics.address, control_socket under
# data_dir), the store and queue on disk (data_dir), the process's user (run_as_*). The running
# server keeps these as they were; config/mailhaven.toml marks each "restart needed".
RESTART_ONLY = ("listeners", "data_dir", "control_socket", "metrics", "run_as_user", "run_as_group",
                "spam", "server", "storage")  # spam, storage: pooled connections made from the old values


def _changed(prefix: str, old: Any, new: Any) -> list[str]:
    """Dotted names of the keys that differ between two config values (tables recursed into)."""
    if old == new:
        return []
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        return [k for f in dataclasses.fields(old)
                for k in _changed(f"{prefix}.{f.name}", getattr(old, f.name), getattr(new, f.name))]
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for name in sorted(set(old) | set(new))
                for k in (_changed(f"{prefix}.{name}", old[name], new[name]) if name in old and name in new
                          else [f"{prefix}.{name}"])]
    return [prefix]


def restart_needed(old: Config, new: Config) -> list[str]:
    """The keys changed from `old` to `new` that take effect only after a restart."""
    keys = [k for name in RESTART_ONLY for k in _changed(name, getattr(old, name), getattr(new, name))]
    if bool(old.tls.cert) != bool(new.tls.cert):
        keys.append("tls.cert")  # turning TLS on or off: the listeners were set up with or without it
    return keys


def reload(ctx: Context, *, configure_logging: bool = False) -> bool:
    """Load the config file again and swap it in; on any error keep the old one. True if swapped.
    Everything is applied (users, certificate, DKIM keys, limits, a new DNS resolver, ...) except
    the RESTART_ONLY keys, which the one log line names when they changed."""
    old = ctx.config
    if not old.source or old.source == "<dict>":
        log.warning("reload: this server was not started from a config file; nothing to reload")
        return False
    try:
        new = configmod.load(old.source)
        directory = load_directory(new)
        new_tls: ssl.SSLContext | None = tls_context(new) if new.tls.cert else None
        # A new resolver every time: [dns] changes apply, and with no nameservers configured
        # /etc/resolv.conf is read again. Lookups in flight finish on the old one. Its answer
        # cache starts empty (dns/resolver.py says why).
        resolver = Resolver.from_config(new.dns)
    except ConfigError as e:
        log.error("reload failed, keeping the running config: %s", e)
        return False
    except Exception as e:  # a broken users file or certificate must not stop the server
        log.error("reload failed, keeping the running config: %s", _reason(e))
        return False
    pending = restart_needed(old, new)
    # What is bound stays bound: ctx.config keeps describing the running sockets and store.
    new = dataclasses.replace(new, **{name: getattr(old, name) for name in RESTART_ONLY})
    if bool(old.tls.cert) != bool(new.tls.cert):
        new = dataclasses.replace(new, tls=old.tls)
    if ctx.tls is not None and new_tls is not None:
        # Load into the live context: servers hold it, and new handshakes then use the new cert.
        # (It loaded into new_tls just now, so this cannot fail halfway for a bad file.)
        _load_cert(ctx.tls, new)
        ctx.tls.minimum_version = new_tls.minimum_version
    ctx.config = new
    ctx.directory = directory
    ctx.limits.update_config(new)  # counts and failure history are kept
    ctx.resolver = resolver
    if configure_logging and new.log != old.log:
        setup_logging(new)
    if pending:
        log.warning("reloaded %s; these changes need a restart and are not applied: %s", new.source,
                    ", ".join(pending))
    else:
        log.info("reloaded %s", new.source)
    return True


def setup_logging(cfg: Config) -> None:
    """mailhaven.log.setup(config.log)."""
    logmod.setup(cfg.log)


# --- run -----------------------------------------------------------------------------------------


async def run(config: Config, *, ready: Callable[[Context], object] | None = None,
              handle_signals: bool = True, configure_logging: bool = False,
              socks: dict[str, socket.socket] | None = None, worker: int = 0,
              link: WorkerLink | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `ctx.request_stop()`), then stop gracefully.

    `ready(ctx)` is called once every available listener is serving. Raises StartupError (one
    line) when a socket cannot be bound, ConfigError when the certificate or users file is broken.

    As a worker of supervisor.py ([server] workers > 1): `socks` are the listeners the parent bound
    (this run owns them from here on), `worker` its index and `link` the parent's line to it. Worker
    0 runs the queue and the control socket; the others hand their queue entries over
    (queue/handoff.py). The parent serves metrics.address, asking each worker over `link`.
    """
    if configure_logging:
        setup_logging(config)
    socks = bind_all(config) if socks is None else dict(socks)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    ctx: Context | None = None
    metrics_sock: socket.socket | None = None
    metrics_server: asyncio.AbstractServer | None = None
    control_server: asyncio.AbstractServer | None = None
    try:
        if config.metrics.address and link is None:
            try:
                metrics_sock = metricsmod.bind(config.metrics.address)
            except metricsmod.MetricsAddressError as e:
                raise StartupError(str(e)) from None
        # One of several workers (supervisor.py): the store's change events reach the others.
        bus = config.data_path / "run" / "bus" if link is not None else None
        ctx = build_context(config, bus_dir=bus)  # reads the certificate and users file while still root
        prepare_data_dir(config)
        drop_privileges(config)
        check_data_dir(config)  # from here on we touch mail, as run_as_user
        try:
            if ctx.database is not None:
                await ctx.database.open()  # as run_as_user, before anything that keeps state there
            await ctx.store.start()
            if ctx.greylist is not None:
                await ctx.greylist.open()  # data_dir/greylist.sqlite as run_as_user, or its tables
        except DatabaseError as e:
            raise StartupError(f"storage.dsn: {e.detail}") from None
        # The queue comes up before the listeners, so the first submission can be queued.
        # With PostgreSQL every worker runs a queue manager (they claim entries from the table);
        # with files worker 0 alone does, and the others hand their entries to it.
        if worker == 0 or ctx.database is not None:
            queue = ctx.queue = QueueManager(ctx, spool=_queue_spool(ctx), lease=config.queue.lease)
            try:
                await queue.load()
            except DatabaseError as e:
                raise StartupError(f"storage.dsn: {e.detail}") from None
            if worker == 0:
                ctx.metrics.set_queue_probe(queue.stats)  # queue_messages, queue_oldest_age_seconds
                try:
                    control_server = await serve_control(ctx, queue, others=link.broadcast if link else None)
                except (ControlError, OSError) as e:
                    raise StartupError(f"control socket {config.control_path}: {_reason(e)}") from None
        else:
            ctx.queue = HandoffQueue(config.queue_root, worker=worker)  # worker 0 delivers
        for name in list(socks):
            factory = LISTENER_FACTORIES[name]
            sock = socks.pop(name)  # the server owns it from here on
            host, port = sock.getsockname()[:2]
            try:
                ctx.serving[name] = await factory(ctx, name, config.listeners[name], sock)
            except BaseException:
                sock.close()
                raise
            ctx.addresses[name] = (host, port)
            log.info("listening: %s on %s port %d", name, host, port)
        if metrics_sock is not None:
            metrics_server = await metricsmod.serve(ctx.metrics, metrics_sock)
            metrics_sock = None  # the server owns it
            log.info("metrics: serving http://%s/metrics", config.metrics.address)
        if handle_signals:
            for sig, cb in ((signal.SIGTERM, ctx.request_stop), (signal.SIGINT, ctx.request_stop),
                            (signal.SIGHUP, ctx.request_reload)):
                loop.add_signal_handler(sig, cb)
                installed.append(sig)
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(_reloader(ctx, configure_logging, link), name="reloader"),
                       tg.create_task(_users_watcher(ctx), name="users-watcher")]
            queue_task: asyncio.Task[None] | None = None
            if ctx.queue is not None and (worker == 0 or ctx.database is not None):
                # On stop it is asked to stop first (its transactions in flight finish and are
                # recorded, else each would be delivered again after the restart), and cancelled
                # only past QUEUE_STOP_GRACE (an unrecorded transaction is retried at next start).
                queue_task = tg.create_task(ctx.queue.run(), name="queue")
                workers.append(queue_task)
            if ctx.dmarc_reports is not None and worker == 0:  # one sender per data_dir (its SQLite file)
                workers.append(tg.create_task(ctx.dmarc_reports.run(), name="dmarc-reports"))
            sd_notify("READY=1")
            if link is None:
                log.info("ready: %d listener(s) serving", len(ctx.serving))
            else:
                log.info("ready: %d listener(s) serving in worker %d", len(ctx.serving), worker)
                link.ready()
                workers.append(tg.create_task(link.serve(ctx.metrics, lost=ctx.request_stop,
                                                    relayed=lambda c: relayed(ctx, c)), name="link"))
            if ready is not None:
                ready(ctx)
            await ctx._stop.wait()
            sd_notify("STOPPING=1")
            await _drain(ctx)
            if queue_task is not None and isinstance(ctx.queue, QueueManager):
                await _stop_queue(ctx.queue, queue_task, min(QUEUE_STOP_GRACE, ctx.config.shutdown_deadline))
            for task in workers:
                task.cancel()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for sock in socks.values():
            sock.close()
        if metrics_sock is not None:
            metrics_sock.close()
        if metrics_server is not None:
            metrics_server.close()
        if control_server is not None:
            control_server.close()
        if ctx is not None:
            for server in ctx.serving.values():
                server.close()
            if ctx.learner is not None:  # before the store: its workers read messages from it
                await ctx.learner.close()
            await ctx.store.close()
            if ctx.spam is not None:
                await ctx.spam.close()
            if ctx.greylist is not None:
                await ctx.greylist.close()
            if ctx.dmarc_reports is not None:
                await ctx.dmarc_reports.close()
            if ctx.database is not None:  # last: whatever keeps state there is closed by now
                await ctx.database.close()
    log.info("stopped")


QUEUE_STOP_GRACE = 10.0  # seconds the queue's transactions in flight get to finish at a stop


async def _stop_queue(queue: QueueManager, task: asyncio.Task[None], grace: float) -> None:
    """Let the queue's transactions in flight end and be recorded (a delivery whose result is not
    recorded is made again after the restart), at most `grace` seconds."""
    queue.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), grace)
    except TimeoutError:
        log.warning("queue: transactions still running after %gs: left for the next start", grace)
    except Exception:  # noqa: BLE001 - the TaskGroup reports the task's own failure
        pass


async def _drain(ctx: Context) -> None:
    """Stop accepting, let sessions finish until the deadline, then close the rest."""
    deadline = ctx.config.shutdown_deadline
    log.info("stopping: no new connections; waiting up to %gs for %d session(s)", deadline, len(ctx.sessions))
    for server in ctx.serving.values():
        server.close()
    ctx.stopping.set()
    if not await ctx.sessions.wait_idle(deadline):
        log.warning("shutdown deadline passed: closing %d session(s)", len(ctx.sessions))
        ctx.sessions.abort_all()
    for server in ctx.serving.values():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)


USERS_POLL_INTERVAL = 1.0  # seconds between looks at the users file


def _file_state(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


async def _users_watcher(ctx: Context) -> None:
    """`mailhaven user add` (or an edit) takes effect without SIGHUP: when the users file changes,
    load it into a new Directory; a broken file is logged once and the running directory kept."""
    path = ctx.config.users_file
    seen = _file_state(path)
    while True:
        await asyncio.sleep(USERS_POLL_INTERVAL)
        if ctx.config.users_file != path:  # a reload pointed elsewhere (and loaded it)
            path = ctx.config.users_file
            seen = _file_state(path)
            continue
        now = _file_state(path)
        if now == seen:
            continue
        seen = now
        cfg = ctx.config
        try:
            directory = await asyncio.to_thread(load_directory, cfg)
        except ConfigError as e:
            log.error("users file changed but is broken, keeping the previous one: %s", e)
            continue
        if ctx.config is cfg:
            ctx.directory = directory
            log.info("users file reloaded: %s", path)


async def _reloader(ctx: Context, configure_logging: bool, link: WorkerLink | None = None) -> None:
    while True:
        await ctx._reload.wait()
        ctx._reload.clear()
        # MONOTONIC_USEC lets Type=notify-reload units match this reload to the SIGHUP (sd_notify(3)).
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        ok = False
        try:
            ok = reload(ctx, configure_logging=configure_logging)
        finally:
            sd_notify("READY=1")  # a worker has no NOTIFY_SOCKET: its parent notifies
            if link is not None:
                link.reloaded(ok)


__all__ = ["Context", "Sessions", "StartupError", "LISTENER_FACTORIES", "run", "reload", "restart_needed", "sd_notify",
           "bind_listener", "bind_all", "build_context", "tls_context"]
