"""Prometheus metrics: what the server counts, and the HTTP endpoint that exposes it.

Owns: the metric names and labels, label hygiene (every label value comes from a small fixed set,
so a hostile client cannot grow the series count), one `CollectorRegistry` per `Metrics` object
(never prometheus_client's global one, so several servers can run in one test process), and a
small asyncio HTTP/1.0 server for `GET /metrics` that runs on the app's event loop (no thread).
Does not own: when things happen (protocol modules, the queue and the app call in here).

    m = Metrics(enabled=True)            # app.py: Metrics.from_config(config.metrics)
    m.connection_opened("mx"); m.connection_closed("mx")
    m.connection_refused("mx", "per_ip"); m.connection_evicted("imap")
    m.login("imap", ok=False, reason="bad_credentials")   # or m.auth_failure("imap")
    m.message_received("mx"); m.message_rejected("mx", "policy")
    m.delivery_result("remote", "delivered"); m.message_sent(); m.message_bounced()
    m.policy_result("spf", "pass")
    m.spam_verdict("add header")                         # one per scanned (or unscannable) message
    m.send_rate_limited("messages")                      # one per submission refused over a rate limit
    m.spam_verdict("reject", direction="outbound")       # the same for submitted mail
    m.spam_learned("spam", "learned")                    # one per message taught to rspamd (or not)
    m.command_latency("smtp", "RCPT", 0.003)             # or: with m.time_command("smtp", "RCPT"): ...
    m.set_queue_probe(lambda: (queue_size, oldest_age_seconds))
    m.set_imap_cache_probe(lambda: (octets, entries, budget, evictions))   # imap/msgcache.py's stats

With metrics off (`config.metrics.address = ""`), `Metrics(enabled=False)` (or `NOOP`) has the same
methods and does nothing, so callers never test for it. From a listener: `metrics.of(ctx).x(...)`
works whether `ctx.metrics` was set or not.

Exposed series (all prefixed `mailhaven_`):
    connections_total{listener}, connections_active{listener}
    connections_refused_total{listener,reason}         (reason: per_ip, total)
    connections_evicted_total{listener}                (closed to make room on a full listener)
    logins_total{proto,result}, auth_failures_total{proto,reason}
    messages_received_total{listener}, messages_rejected_total{listener,reason}
    messages_sent_total, messages_bounced_total, delivery_results_total{kind,result}
    queue_messages, queue_oldest_age_seconds            (from the queue probe, at scrape time)
    imap_cache_bytes, imap_cache_entries, imap_cache_budget_bytes, imap_cache_evictions_total
                                                        (the IMAP message cache, at scrape time;
                                                        summed over worker processes like the rest)
    policy_results_total{check,result}
    spam_verdicts_total{action}                         (no_action, add_header, reject, unknown, ...)
    send_rate_limited_total{limit}                      (messages, recipients: submission over [submission])
    spam_outbound_verdicts_total{action}                (the same, for submitted mail)
    spam_learned_total{class,result}                    (spam|ham; learned, already, refused, failed,
                                                        dropped, skipped, gone)
    command_duration_seconds{proto,verb}                (histogram)
    build_info{version}, and prometheus_client's process_* / python_* collectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from mailhaven import __version__
from mailhaven.config import LISTENER_NAMES, MetricsConfig, split_hostport

log = logging.getLogger("mailhaven.metrics")

# --- label vocabularies (anything else becomes "other") ------------------------------------------

PROTOCOLS = frozenset({"smtp", "submission", "imap", "pop3", "managesieve"})
LOGIN_RESULTS = frozenset({"success", "failure"})
AUTH_FAILURE_REASONS = frozenset({"bad_credentials", "throttled", "tls_required", "mechanism", "syntax",
                                  "cancelled", "disabled"})
REJECT_REASONS = frozenset({"policy", "unknown_user", "relay", "size", "rate", "syntax", "temporary",
                            "auth", "sender"})
REFUSAL_REASONS = frozenset({"per_ip", "total"})
DELIVERY_KINDS = frozenset({"local", "remote"})
DELIVERY_RESULTS = frozenset({"delivered", "deferred", "bounced", "expired"})
POLICY_CHECKS = frozenset({"spf", "dkim", "dmarc"})
POLICY_RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror",
                            "policy"})
SPAM_ACTIONS = frozenset({"no_action", "greylist", "add_header", "rewrite_subject", "soft_reject", "reject",
                          "unknown", "skipped"})
# Connection reputation (policy/dnsbl.py, policy/greylist.py): what happened at RCPT, once per
# transaction; and DNS list answers that were ignored (open-resolver codes, answers outside
# 127/8, lookup errors).
REPUTATION_ACTIONS = frozenset({"dnsbl_reject", "dnswl_pass", "greylist_defer", "greylist_pass"})
DNSBL_IGNORED = frozenset({"refused", "bogus", "error"})
SEND_LIMITS = frozenset({"messages", "recipients"})
LEARN_CLASSES = frozenset({"spam", "ham"})
LEARN_RESULTS = frozenset({"learned", "already", "refused", "failed", "dropped", "skipped", "gone"})
VERBS = {
    "smtp": frozenset({"HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY",
                       "EXPN", "HELP", "STARTTLS", "AUTH"}),
    "imap": frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "ENABLE",
                       "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
                       "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND", "IDLE", "CHECK", "CLOSE",
                       "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE", "UID",
                       "ID", "UID FETCH", "UID STORE", "UID SEARCH", "UID COPY", "UID MOVE",
                       "UID EXPUNGE"}),
    "pop3": frozenset({"USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET",
                       "QUIT", "TOP", "UIDL", "CAPA", "STLS"}),
}
VERBS["submission"] = VERBS["smtp"]

# Command latency buckets: from a cached lookup (0.5 ms) to a slow DATA with policy checks (30 s).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)

MAX_REQUEST = 8192  # bytes of HTTP request head we read before giving up
REQUEST_TIMEOUT = 10.0
MAX_CLIENTS = 32  # scrapers served at once; more are closed at once (a flood costs no file descriptors)


def _pick(value: str, allowed: Iterable[str]) -> str:
    v = str(value).lower()
    return v if v in allowed else "other"


def _listener(name: str) -> str:
    return name if name in LISTENER_NAMES else "other"


def _verb(proto: str, verb: str) -> str:
    v = " ".join(str(verb).upper().split())
    return v if v in VERBS.get(proto, ()) else "OTHER"


QueueProbe = Callable[[], tuple[int, float]]
CacheProbe = Callable[[], tuple[int, int, int, int]]  # (octets counted, entries, budget, evictions)


class _QueueCollector(Collector):
    """Reads the queue's size and oldest age at scrape time through the probe the queue set."""

    def __init__(self) -> None:
        self.probe: QueueProbe | None = None

    def collect(self) -> Iterator[Metric]:
        size, oldest = 0, 0.0
        if self.probe is not None:
            try:
                size, oldest = self.probe()
            except Exception:  # a broken probe must not break the scrape
                log.warning("metrics: queue probe failed", exc_info=True)
        yield GaugeMetricFamily("mailhaven_queue_messages", "Messages waiting in the outbound queue.",
                                value=float(size))
        yield GaugeMetricFamily("mailhaven_queue_oldest_age_seconds",
                                "Age of the oldest message in the outbound queue (0 when empty).",
                                value=float(oldest))


class _CacheCollector(Collector):
    """Reads the IMAP message cache's figures at scrape time through the probe imap/server.py set."""

    def __init__(self) -> None:
        self.probe: CacheProbe | None = None

    def collect(self) -> Iterator[Metric]:
        octets = entries = budget = evictions = 0
        if self.probe is not None:
            try:
                octets, entries, budget, evictions = self.probe()
            except Exception:  # a broken probe must not break the scrape
                log.warning("metrics: imap cache probe failed", exc_info=True)
        yield GaugeMetricFamily("mailhaven_imap_cache_bytes", "Memory the IMAP message cache holds "
                                "(octets and per-entry overhead, as counted against its budget).",
                                value=float(octets))
        yield GaugeMetricFamily("mailhaven_imap_cache_entries", "Messages in the IMAP message cache.",
                                value=float(entries))
        yield GaugeMetricFamily("mailhaven_imap_cache_budget_bytes", "The IMAP message cache's budget "
                                "([imap] cache_bytes, per process).", value=float(budget))
        yield CounterMetricFamily("mailhaven_imap_cache_evictions", "Entries evicted from the IMAP message "
                                  "cache to stay within its budget.", value=float(evictions))


class Metrics:
    """Every counter the server keeps, in its own registry. enabled=False: every method is a no-op."""

    def __init__(self, *, enabled: bool = True, process: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry(auto_describe=True)
        if not enabled:
            return
        r = self.registry
        self._connections = Counter("mailhaven_connections", "Connections accepted, by listener.",
                                    ["listener"], registry=r)
        self._active = Gauge("mailhaven_connections_active", "Connections open now, by listener.",
                             ["listener"], registry=r)
        self._refused = Counter("mailhaven_connections_refused",
                                "Connections refused over a connection limit, by listener and limit.",
                                ["listener", "reason"], registry=r)
        self._evicted = Counter("mailhaven_connections_evicted",
                                "Sessions closed to make room for a new connection on a full listener.",
                                ["listener"], registry=r)
        self._logins = Counter("mailhaven_logins", "Login attempts, by protocol and result.",
                               ["proto", "result"], registry=r)
        self._auth_failures = Counter("mailhaven_auth_failures", "Failed logins, by protocol and reason.",
                                      ["proto", "reason"], registry=r)
        self._received = Counter("mailhaven_messages_received",
                                 "Messages accepted (250 after DATA), by listener.", ["listener"], registry=r)
        self._rejected = Counter("mailhaven_messages_rejected", "Messages or recipients refused, by reason.",
                                 ["listener", "reason"], registry=r)
        self._sent = Counter("mailhaven_messages_sent", "Messages delivered to remote servers.", registry=r)
        self._bounced = Counter("mailhaven_messages_bounced", "Bounce messages (DSNs) generated.",
                                registry=r)
        self._delivery = Counter("mailhaven_delivery_results", "Delivery attempts per recipient, by result.",
                                 ["kind", "result"], registry=r)
        self._policy = Counter("mailhaven_policy_results", "SPF, DKIM and DMARC results of inbound mail.",
                               ["check", "result"], registry=r)
        self._spam = Counter("mailhaven_spam_verdicts", "Spam verdicts of inbound mail, by action "
                             "(unknown: the scanner did not answer; skipped: too big to scan).", ["action"],
                             registry=r)
        self._reputation = Counter("mailhaven_reputation_verdicts", "DNS list and greylisting verdicts at RCPT, "
                                   "by action (once per transaction).", ["action"], registry=r)
        self._dnsbl_ignored = Counter("mailhaven_dnsbl_ignored", "DNS list answers ignored, by list and reason "
                                      "(refused: 127.255.255.x, the list refuses our resolver; bogus: outside "
                                      "127.0.0.0/8; error: no answer).", ["list", "reason"], registry=r)
        self._send_rate = Counter("mailhaven_send_rate_limited", "Submissions refused (451 4.7.1) over a per-user "
                                  "hourly limit, by limit.", ["limit"], registry=r)
        self._spam_out = Counter("mailhaven_spam_outbound_verdicts", "Spam verdicts of submitted mail, by "
                                 "action.", ["action"], registry=r)
        self._learned = Counter("mailhaven_spam_learned", "Messages taught to rspamd from the users' moves, by "
                                "class and result.", ["class", "result"], registry=r)
        self._latency = Histogram("mailhaven_command_duration_seconds",
                                  "Time from a command's arrival to its reply.", ["proto", "verb"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        info = Gauge("mailhaven_build_info", "Mailhaven version (value is always 1).", ["version"],
                     registry=r)
        info.labels(__version__).set(1)
        self._queue = _QueueCollector()
        r.register(self._queue)
        self._imap_cache = _CacheCollector()
        r.register(self._imap_cache)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    @classmethod
    def from_config(cls, cfg: MetricsConfig) -> Metrics:
        return cls(enabled=bool(cfg.address))

    # -- connections --------------------------------------------------------------------------------

    def connection_opened(self, listener: str) -> None:
        if self.enabled:
            name = _listener(listener)
            self._connections.labels(name).inc()
            self._active.labels(name).inc()

    def connection_closed(self, listener: str) -> None:
        if self.enabled:
            self._active.labels(_listener(listener)).dec()

    def connection_refused(self, listener: str, reason: str) -> None:
        """reason: per_ip (the address's per_ip_connections) or total (max_connections)."""
        if self.enabled:
            self._refused.labels(_listener(listener), _pick(reason, REFUSAL_REASONS)).inc()

    def connection_evicted(self, listener: str) -> None:
        if self.enabled:
            self._evicted.labels(_listener(listener)).inc()

    @contextlib.contextmanager
    def connection(self, listener: str) -> Iterator[None]:
        """connection_opened on entry, connection_closed on exit."""
        self.connection_opened(listener)
        try:
            yield
        finally:
            self.connection_closed(listener)

    # -- logins -------------------------------------------------------------------------------------

    def login(self, proto: str, *, ok: bool, reason: str = "bad_credentials") -> None:
        """One login attempt; a failure also counts in auth_failures_total{reason}."""
        if self.enabled:
            p = _pick(proto, PROTOCOLS)
            self._logins.labels(p, "success" if ok else "failure").inc()
            if not ok:
                self._auth_failures.labels(p, _pick(reason, AUTH_FAILURE_REASONS)).inc()

    def auth_failure(self, proto: str, reason: str = "bad_credentials") -> None:
        self.login(proto, ok=False, reason=reason)

    # -- messages -----------------------------------------------------------------------------------

    def message_received(self, listener: str) -> None:
        if self.enabled:
            self._received.labels(_listener(listener)).inc()

    def message_rejected(self, listener: str, reason: str) -> None:
        if self.enabled:
            self._rejected.labels(_listener(listener), _pick(reason, REJECT_REASONS)).inc()

    def message_sent(self) -> None:
        if self.enabled:
            self._sent.inc()

    def message_bounced(self) -> None:
        if self.enabled:
            self._bounced.inc()

    def delivery_result(self, kind: str, result: str) -> None:
        """kind: local|remote; result: delivered|deferred|bounced|expired (one per recipient)."""
        if self.enabled:
            self._delivery.labels(_pick(kind, DELIVERY_KINDS), _pick(result, DELIVERY_RESULTS)).inc()

    def policy_result(self, check: str, result: str) -> None:
        """check: spf|dkim|dmarc; result: the RFC term (pass, fail, softfail, none, temperror, ...)."""
        if self.enabled:
            self._policy.labels(_pick(check, POLICY_CHECKS), _pick(result, POLICY_RESULTS)).inc()

    def spam_verdict(self, action: str, direction: str = "inbound") -> None:
        """action: rspamd's ("no action", "add header", "reject", ...), "unknown" or "skipped";
        direction "outbound": a submitted message (its own series)."""
        if self.enabled:
            counter = self._spam_out if direction == "outbound" else self._spam
            counter.labels(_pick(str(action).replace(" ", "_"), SPAM_ACTIONS)).inc()

    def spam_learned(self, cls: str, result: str) -> None:
        """cls: "spam" or "ham"; result: policy/learn.RESULTS."""
        if self.enabled:
            self._learned.labels(_pick(cls, LEARN_CLASSES), _pick(result, LEARN_RESULTS)).inc()

    def reputation_verdict(self, action: str) -> None:
        """action: dnsbl_reject, dnswl_pass, greylist_defer, greylist_pass."""
        if self.enabled:
            self._reputation.labels(_pick(action, REPUTATION_ACTIONS)).inc()

    def dnsbl_ignored(self, zone: str, reason: str) -> None:
        """An answer of list `zone` (a configured list: bounded) that was not taken as a listing."""
        if self.enabled:
            self._dnsbl_ignored.labels(str(zone)[:100].lower(), _pick(reason, DNSBL_IGNORED)).inc()

    def send_rate_limited(self, limit: str) -> None:
        """limit: messages|recipients ([submission] max_messages_per_hour / max_recipients_per_hour)."""
        if self.enabled:
            self._send_rate.labels(_pick(limit, SEND_LIMITS)).inc()

    # -- latency ------------------------------------------------------------------------------------

    def command_latency(self, proto: str, verb: str, seconds: float) -> None:
        if self.enabled:
            p = _pick(proto, PROTOCOLS)
            self._latency.labels(p, _verb(p, verb)).observe(max(0.0, seconds))

    @contextlib.contextmanager
    def time_command(self, proto: str, verb: str) -> Iterator[None]:
        """Observe the block's duration as the command's latency (also when it raises)."""
        if not self.enabled:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.command_latency(proto, verb, time.perf_counter() - t0)

    # -- queue --------------------------------------------------------------------------------------

    def set_queue_probe(self, probe: QueueProbe | None) -> None:
        """probe() -> (messages in the queue, age in seconds of the oldest); called at scrape time
        on the event loop, so it must be quick and must not block."""
        if self.enabled:
            self._queue.probe = probe

    def set_imap_cache_probe(self, probe: CacheProbe | None) -> None:
        """probe() -> (octets counted, entries, budget, evictions) of the IMAP message cache; called
        at scrape time on the event loop."""
        if self.enabled:
            self._imap_cache.probe = probe

    # -- exposition ---------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format (version 0.0.4)."""
        return generate_latest(self.registry)


NOOP = Metrics(enabled=False)


def of(ctx: object) -> Metrics:
    """`ctx.metrics`, or the no-op Metrics when the context has none."""
    m = getattr(ctx, "metrics", None)
    return m if isinstance(m, Metrics) else NOOP


# --- the HTTP endpoint ---------------------------------------------------------------------------


class MetricsAddressError(ValueError):
    """metrics.address cannot be bound; str() is one line naming the key."""


def bind(address: str) -> socket.socket:
    """Bind and listen on "IP:PORT" (non-blocking); MetricsAddressError with one line on failure."""
    try:
        host, port = split_hostport(address, 9154)
    except ValueError:
        raise MetricsAddressError(f"metrics.address: expected \"IP:PORT\", got {address!r}") from None
    ip = ipaddress.ip_address(host)
    if not ip.is_loopback:
        log.warning("metrics endpoint on non-loopback address %s: anyone who can reach it reads the "
                    "counters; keep it behind a firewall", host)
    sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise MetricsAddressError(f"metrics.address: cannot listen on {host} port {port}: "
                                  f"{e.strerror or e}") from None
    return sock


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
              head_only: bool = False, extra: str = "") -> bytes:
    head = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("ascii") + (b"" if head_only else body)


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
    except asyncio.LimitOverrunError:
        return None
    except asyncio.IncompleteReadError as e:
        return e.partial if b"\n" in e.partial else None


def http_reply(head: bytes | None, render: Callable[[], bytes]) -> bytes:
    """The whole HTTP/1.0 response to a request head (None: unreadable); `render()` gives the
    exposition for GET /metrics (supervisor.py answers with this too, outside any event loop)."""
    if head is None:
        return _response("400 Bad Request", b"bad request\n")
    request_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response("400 Bad Request", b"bad request\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"GET only\n", extra="Allow: GET, HEAD\r\n")
    head_only = method == "HEAD"
    if target == "/metrics":
        return _response("200 OK", render(), CONTENT_TYPE_PLAIN_0_0_4, head_only)
    if target == "/":
        return _response("200 OK", b"Mailhaven metrics: /metrics\n", head_only=head_only)
    return _response("404 Not Found", b"not found\n", head_only=head_only)


async def serve(metrics: Metrics, sock: socket.socket) -> asyncio.AbstractServer:
    """Serve GET /metrics on the bound socket from the running loop; returns the started server.
    At most MAX_CLIENTS requests at once: one more is closed unanswered."""
    active = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        if active >= MAX_CLIENTS:
            writer.close()
            return
        active += 1
        try:
            writer.write(http_reply(await _read_head(reader), metrics.render))
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            active -= 1
            writer.close()

    return await asyncio.start_server(handle, sock=sock, limit=MAX_REQUEST)


# --- summing the workers' expositions (supervisor.py) --------------------------------------------

# Series that are not summed over workers: the earliest start / creation time, and values that
# every worker reports the same or that only one can have.
_MIN_SERIES = frozenset({"process_start_time_seconds"})
_MAX_SERIES = frozenset({"mailhaven_build_info", "python_info", "process_max_fds",
                         "mailhaven_queue_oldest_age_seconds"})


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _combine(name: str, old: float, new: float) -> float:
    if name.endswith("_created") or name in _MIN_SERIES:
        return min(old, new)
    if name in _MAX_SERIES:
        return max(old, new)
    return old + new


def merge(texts: Iterable[str], *, workers: int) -> bytes:
    """One exposition from the workers' (text format 0.0.4): every series summed per identical
    label set (counters, gauges, histogram buckets, sums and counts); start and creation times
    take the earliest, build and version info the one value. Plus `mailhaven_workers`, the
    number of live worker processes."""
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], tuple[dict[str, str], float]]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name not in families:
                families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                values[fam.name] = {}
            series = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = series.get(key)
                series[key] = (s.labels, s.value if old is None else _combine(s.name, old[1], s.value))
    for name, fam in families.items():
        for (sample, _), (labels, value) in values[name].items():
            fam.add_sample(sample, labels, value)
    out = list(families.values())
    out.append(GaugeMetricFamily("mailhaven_workers", "Worker processes running ([server] workers).",
                                 value=float(workers)))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(out))
    return generate_latest(registry)


__all__ = ["merge", "http_reply", "Metrics", "NOOP", "of", "bind", "serve", "MetricsAddressError", "QueueProbe", "LATENCY_BUCKETS"]
