"""Fixtures: a real rspamd (Debian's package) with its own redis, for the spam-filtering tests.

- `rspamd`: an `Rspamd` started once per session under a temporary directory: redis-server and
  rspamd (normal worker + controller) on free loopback ports, both as an unprivileged user (`_rspamd`,
  the Debian package's user, when the tests run as root; else the current user), rspamd's DNS
  pointed at the tests' DNS server (tests/dnsserver.py), its network-dependent modules off (RBL/URIBL,
  fuzzy, phishing feeds, asn, reputation, maps fetched over HTTP...), and hyperscan off and a short
  TLD list so it starts in about two seconds. Stopped (SIGTERM, then SIGKILL) at the end.
  Without rspamd installed the tests that use it are skipped, or FAIL when CI=true (.ci/run installs it).
- `Rspamd.stop()` / `.start()`: tests of "rspamd is down" (call `.start()` again in a finally).
- `rspamd_bayes`: another rspamd + redis, per test module, for the training tests: Bayes per user
  (`per_user = true`, `min_learns` BAYES_MIN_LEARNS, no autolearn) and a controller without
  `secure_ip`, so it wants the password (CONTROLLER_PASSWORD; `Rspamd.password_file`) from loopback.

The configuration is Debian's stock one (/etc/rspamd, `$CONFDIR`) with our top-level rspamd.conf
(workers, logging) and `local.d`/`override.d` in the temporary directory (`$LOCAL_CONFDIR`). Test
thresholds: greylist 10, add header 20, rewrite subject 50, reject 100 (GTUBE rejects on its own),
and marker rules on the Subject: `mailhaven-test-add-header` (+30: "add header"),
`mailhaven-test-rewrite-subject` (+60: "rewrite subject") and `mailhaven-test-greylist` (+13:
"greylist"). A plain message scores a few points at most; anything SOFT_REJECT_USER submits
(rspamd's `User`) gets "soft reject", as rspamd's ratelimit answers a user over their limit.
milter_headers adds X-Spamd-Bar and X-Rspamd-Queue-Id (and removes X-Spam, its default) for every
client, loopback included.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer
from tests.fixtures_base import free_port

ADD_HEADER_MARK = "mailhaven-test-add-header"
GREYLIST_MARK = "mailhaven-test-greylist"
REWRITE_MARK = "mailhaven-test-rewrite-subject"
CONTROLLER_PASSWORD = "mailhaven-test"
SOFT_REJECT_USER = "mallory@example.test"  # rspamd answers "soft reject" to whatever this user submits
BAYES_MIN_LEARNS = 5  # of each class, per user, before BAYES_SPAM / BAYES_HAM are scored
RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
STOCK = Path("/etc/rspamd")
START_TIMEOUT = 90.0  # a loaded CI machine; it takes about 2 s when idle

# Modules that reach out to the Internet (DNS lists, feeds, maps over HTTP) or are not wanted here.
_OFF = ("rbl", "fuzzy_check", "phishing", "asn", "emails", "url_redirector", "whitelist", "multimap",
        "mime_types", "mid", "reputation", "dcc", "rspamd_update", "greylist", "neural", "clickhouse",
        "elastic", "metadata_exporter", "antivirus", "external_services", "spamassassin", "maillist")

_TOP = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    .include "$CONFDIR/logging.inc"
    log_buffer = 0;
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{normal}";
    mime = true;
    count = 1;
}}
worker "controller" {{
    bind_socket = "127.0.0.1:{controller}";
    count = 1;
    password = "{password}";
    enable_password = "{password}";
{secure_ip}    static_dir = "${{WWWDIR}}";
}}
"""

_OPTIONS = """\
dns {{ nameserver = ["{dns}"]; timeout = 1s; retransmits = 1; }}
filters = "chartable,dkim,regexp";
disable_hyperscan = true;
url_tld = "{tld}";
"""

_ACTIONS = """\
reject = 100;
rewrite_subject = 50;
add_header = 20;
greylist = 10;
subject = "***SPAM*** %s";
"""

# Headers rspamd asks the MTA to add (its milter block), for local clients too (the MX tests are).
_MILTER_HEADERS = """\
use = ["x-spamd-bar", "x-rspamd-queue-id"];
skip_local = false;
skip_authenticated = false;
"""

# Bayes per user (`Deliver-To`, rspamd's principal recipient) with few learns, for the training
# tests; autolearn off so only what we teach counts.
_BAYES = f"""\
per_user = true;
min_learns = {BAYES_MIN_LEARNS};
autolearn = false;
"""

# What rspamd's ratelimit module answers a user over their limit ("soft reject"), for one test user
# only: the settings module matches the authenticated user (rspamd's User header) and adds a
# symbol, which force_actions turns into "soft reject" with a message.
_SETTINGS = f"""\
mailhaven_test_soft_reject {{
    priority = high;
    user = "{SOFT_REJECT_USER}";
    apply {{ symbols = ["MAILHAVEN_TEST_RATELIMIT"]; }}
}}
"""
_FORCE_ACTIONS = """\
rules {
    MAILHAVEN_TEST_RATELIMIT { action = "soft reject"; expression = "MAILHAVEN_TEST_RATELIMIT";
                               message = "Ratelimit exceeded (test)"; }
}
"""

_REGEXP = f"""\
MAILHAVEN_TEST_ADD_HEADER {{ re = "Subject=/{ADD_HEADER_MARK}/H"; score = 30.0; description = "test: add header"; }}
MAILHAVEN_TEST_REWRITE {{ re = "Subject=/{REWRITE_MARK}/H"; score = 60.0; description = "test: rewrite subject"; }}
MAILHAVEN_TEST_GREYLIST {{ re = "Subject=/{GREYLIST_MARK}/H"; score = 13.0; description = "test: greylist"; }}
"""


def _user() -> tuple[int, int] | None:
    """(uid, gid) to run the daemons as when we are root; None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("_rspamd", "nobody"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
    raise RuntimeError("no unprivileged user (_rspamd or nobody) to run rspamd as")


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ping", timeout=1) as r:  # noqa: S310 - our loopback port
            return bool(r.status == 200 and r.read().strip() == b"pong")
    except OSError:
        return False


class Rspamd:
    """rspamd + redis under `root`, on loopback ports chosen at start."""

    def __init__(self, root: Path, dns: str, *, bayes: bool = False, secure_ip: bool = True) -> None:
        """bayes: per-user Bayes (BAYES_MIN_LEARNS); secure_ip=False: the controller asks loopback
        clients for the password too (as from any other host)."""
        self.root, self.dns = root, dns
        self.bayes, self.secure_ip = bayes, secure_ip
        self.normal_port = free_port()
        self.controller_port = free_port()
        self.redis_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.user = _user()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.normal_port}"

    def log(self) -> str:
        """rspamd's log so far (one line per scanned message, naming qid, ip, from and rcpts)."""
        return (self.root / "log" / "rspamd.log").read_text(errors="replace")

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    def _write_config(self) -> None:
        conf = self.root / "conf"
        for d in ("conf/local.d", "conf/override.d", "db", "run", "log", "redis"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (conf / "rspamd.conf").write_text(_TOP.format(normal=self.normal_port, controller=self.controller_port,
                                                      password=CONTROLLER_PASSWORD,
                                                      secure_ip='    secure_ip = "127.0.0.1";\n'
                                                      if self.secure_ip else ""))
        (conf / "tld.dat").write_text("com\norg\nnet\ntest\nexample\ninvalid\nlocalhost\n")
        (conf / "local.d" / "options.inc").write_text(_OPTIONS.format(dns=self.dns, tld=conf / "tld.dat"))
        (conf / "local.d" / "actions.conf").write_text(_ACTIONS)
        (conf / "local.d" / "regexp.conf").write_text(_REGEXP)
        (conf / "local.d" / "milter_headers.conf").write_text(_MILTER_HEADERS)
        (conf / "local.d" / "settings.conf").write_text(_SETTINGS)
        (conf / "local.d" / "force_actions.conf").write_text(_FORCE_ACTIONS)
        if self.bayes:
            (conf / "local.d" / "classifier-bayes.conf").write_text(_BAYES)
        (conf / "local.d" / "redis.conf").write_text(f'servers = "127.0.0.1:{self.redis_port}";\n')
        for module in _OFF:
            (conf / "override.d" / f"{module}.conf").write_text("enabled = false;\n")
        (self.root / "password").write_text(CONTROLLER_PASSWORD + "\n")
        if self.user is not None:
            for p in [self.root, *self.root.rglob("*")]:
                os.chown(p, *self.user)

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        if self.user is not None:
            uid, gid = self.user
            argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
        out = open(self.root / "log" / log, "ab")  # noqa: SIM115 - the child owns it
        try:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                                    start_new_session=True)
        finally:
            out.close()
        self.procs.append(proc)
        return proc

    def rspamd_argv(self, config: Path | None = None) -> list[str]:
        """rspamd in the foreground: our top-level `conf/rspamd.conf` (or `config`, e.g. Debian's own)
        with `conf/` as $LOCAL_CONFDIR and the databases, pid file and log under `root`."""
        return [RSPAMD, "-f", "-c", str(config or self.root / "conf" / "rspamd.conf"),
                f"--var=LOCAL_CONFDIR={self.root / 'conf'}", f"--var=DBDIR={self.root / 'db'}",
                f"--var=RUNDIR={self.root / 'run'}", f"--var=LOGDIR={self.root / 'log'}"]

    def start(self) -> Rspamd:
        self._write_config()
        self._spawn([REDIS, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.root / "redis"),
                     "--save", "", "--appendonly", "no", "--protected-mode", "yes"], "redis.out")
        rspamd = self._spawn(self.rspamd_argv(), "rspamd.out")
        deadline = time.monotonic() + START_TIMEOUT
        while not (_ping(self.url) and _ping(self.controller_url)):
            if rspamd.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "log" / "rspamd.out").read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"rspamd did not start (exit {rspamd.poll()}):\n{log}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        """SIGTERM to each daemon's process group (rspamd's workers too), SIGKILL after 10 s."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs.clear()


@contextlib.contextmanager
def _started(dns: str, **options: bool) -> Iterator[Rspamd]:
    missing = [p for p in (RSPAMD, REDIS) if not Path(p).exists()] + ([] if STOCK.is_dir() else [str(STOCK)])
    if missing:
        reason = f"rspamd tests need Debian's rspamd and redis-server (missing: {', '.join(missing)})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; .ci/run installs them")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="mailhaven-rspamd-"))  # not under pytest's 0700 tmp: the user reads it
    os.chmod(root, 0o755)
    server = Rspamd(root, dns, **options)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def rspamd(_dns_server_session: DnsServer) -> Iterator[Rspamd]:
    with _started(_dns_server_session.nameserver) as server:
        yield server


@pytest.fixture(scope="module")
def rspamd_bayes(_dns_server_session: DnsServer) -> Iterator[Rspamd]:
    """An rspamd of its own (its own redis: what one module teaches stays there) with per-user Bayes
    and a controller that wants the password from loopback too."""
    with _started(_dns_server_session.nameserver, bayes=True, secure_ip=False) as server:
        yield server
