"""The queue worker: schedules, delivers, records, retries, bounces.

Owns: the in-memory view of the spool (loaded at start: a restart resumes every entry), the timer
heap of next attempts, the active window (`queue.max_connections` transactions in all, at most
`queue.max_per_destination` per destination, and never more than four fifths of all slots for one
destination, served round-robin so one slow or tarpitting destination cannot starve the others; a
destination is the recipient domain, or the relay or transport host it is routed to, as in
Postfix's qmgr), the connection pool those transactions share (delivery/smtpconn.py: one per
manager, so consecutive entries to the same host reuse a connection), one transaction per
recipient domain carrying all of an entry's recipients there, recording every recipient's result durably (spool.save) before moving on, backoff
(queue/schedule.py), bounces and the one delay warning (message/dsn.py through cleanup.enqueue,
from the null sender), and removing finished entries.
Does not own: the disk format (queue/spool.py), SMTP (delivery/remote.py), headers and signing
(cleanup.py).

Two kinds of spool (spool.QueueSpool): the file spool, which this manager owns alone (worker 0;
the other workers hand entries over, queue/handoff.py), so it holds every entry in memory; or a
shared one (spool.ClaimingSpool: spool_pg.PgSpool, [storage] backend = "postgresql"), where every
worker of every node runs a manager and each holds only the due entries it claimed (every
CLAIM_EVERY seconds, and after each submit), renews their leases while working on them, and
releases each one once the round is recorded (its next attempt saved). A manager that dies keeps
its entries until their leases run out; then another claims and delivers them.

Rules (maddy's queue and Postfix's qmgr are the models):
- Per recipient: 2xx -> delivered; 5xx -> failed, bounced; anything else -> retried with backoff
  (STYLE rule 5). Only pending recipients are tried again.
- An entry older than `queue.lifetime` after a failed attempt: the pending recipients fail and
  bounce (the wake-up time is capped at the expiry, so the bounce leaves on time).
- One delay warning (RFC 3464 Action: delayed) once an entry is `queue.delay_warning` old.
- Never bounce or warn a message with a null sender (RFC 5321 §4.5.5, §6.1: no bounce loops).
- DSN requests (RFC 3461) as the sender gave them: NOTIFY decides which of bounce, delay warning
  and success notice a recipient gets (by default failures and delays; NEVER: none); RET=FULL
  returns the whole message in a bounce, ENVID and ORCPT come back in every report; a next hop that
  offers DSN gets the request passed on and reports success itself; a next hop that does not gets
  the message, and we report it "relayed".
- A finished recipient is marked `notified` only once its report is durably queued; a crash in
  between reports it again after restart (twice rather than never).
- A crash during a transaction: the result was not recorded, so the recipients are tried again
  after restart (at-least-once, as with every MTA); recorded deliveries are never repeated.
  Cancelling run() is such a crash: an interrupted round is neither finished nor released.

    manager = QueueManager(ctx)          # ctx: .config .directory .store .resolver (app.Context)
    ctx.queue = manager                  # cleanup.enqueue submits through it
    tg.create_task(manager.run())        # owned by the app's TaskGroup; stop() or cancel ends it
    await manager.submit(sender, rcpts, data, source=...) -> id   # only cleanup.enqueue calls this
    manager.wake(); manager.stop()
    manager.list_entries() / show(id) / headers(id) / retry(id) / delete(id) / flush()  # control socket
    manager.stats() -> (count, oldest_age_seconds)                       # the metrics queue probe
    QueueManager(ctx, spool=PgSpool(db, cfg.queue_root))                # shared: claims and leases
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailhaven import metrics, seams
from mailhaven.auth.users import program_argv
from mailhaven.delivery import local, program, remote, routes, tlspolicy
from mailhaven.delivery.reports import queue_report
from mailhaven.delivery.result import DeliveryResult
from mailhaven.delivery.smtpconn import SmtpConnections
from mailhaven.errors import ConfigError, DatabaseError, MailError
from mailhaven.message import dsn
from mailhaven.message import headers as msgheaders
from mailhaven.queue import schedule
from mailhaven.queue.spool import ClaimingSpool, Entry, QueueSpool, Recipient, Spool, partition_name, valid_id

log = logging.getLogger("mailhaven.queue")

# How long to wait before retrying an entry whose bounce could not be queued (disk trouble).
NOTIFY_RETRY = 60.0
PARTITION_SCAN = 1.0  # seconds between looks into the other workers' partitions (spool.py)
CLAIM_EVERY = 1.0  # seconds between claims of due entries from a shared spool (spool_pg.py)
# Seconds a claimed entry stays ours without renewal; renewed every LEASE / 3 while we hold it, so
# only a manager that stopped renewing (dead, cut off from the database) loses its entries.
LEASE = 120.0
HEADERS_READ = 64 * 1024
PROGRAMS = "|programs"  # the destination of program recipients (delivery/program.py), never a domain  # `queue show` looks for From/To/Subject/Message-ID in this much of a message


@dataclass(eq=False)
class _Round:
    """One delivery round of one entry: a job per destination domain, then `_finish`."""

    entry: Entry
    remaining: int
    _message: bytes | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def message(self, spool: QueueSpool) -> bytes:
        async with self._lock:
            if self._message is None:
                self._message = await spool.read(self.entry.id)
            return self._message

    def drop_message(self) -> None:
        self._message = None


@dataclass(eq=False)
class _Job:
    round: _Round
    domain: str
    recipients: list[Recipient]
    route: routes.Route | None = None  # None: programs, or a domain of ours
    dest: str = ""  # what concurrency is counted by: the route's next hop, else the domain

    def __post_init__(self) -> None:
        self.dest = (self.route.destination if self.route is not None else "") or self.domain


@contextlib.contextmanager
def _wake_socket(path: Path, wake: Callable[[], object]) -> Iterator[None]:
    """A Unix datagram socket at `path` whose every datagram calls `wake()` (on the loop); without
    it (cannot bind) the caller polls alone."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock.bind(str(path))
        sock.setblocking(False)
    except OSError as e:
        log.warning("queue: no wake-up socket %s (%s): looking every %gs", path, e.strerror or e, PARTITION_SCAN)
        sock.close()
        yield
        return

    def readable() -> None:
        with contextlib.suppress(OSError):
            while sock.recv(64):
                pass
        wake()

    loop.add_reader(sock.fileno(), readable)
    try:
        yield
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _owed_notice(entry: Entry, r: Recipient) -> dsn.DsnAction | None:
    """The report a finished recipient still owes its sender (RFC 3461 §4.1 NOTIFY): a bounce for a
    failure unless NOTIFY left FAILURE out; a success notice when NOTIFY=SUCCESS and no next hop
    took the request over: "relayed" when it went to another server, "delivered" when we
    delivered it. Never to the null sender (RFC 5321 §6.1: no report about a report)."""
    if r.notified or not entry.sender:
        return None
    if r.state == "failed":
        return "failed" if r.dsn.wants("FAILURE") else None
    if r.state == "delivered" and r.dsn.wants("SUCCESS") and not r.dsn_passed:
        return "relayed" if r.last is not None and r.last.remote_mta else "delivered"
    return None


def _report_request(mail: dsn.MailDsn) -> dsn.MailDsn:
    """What the sender's report returns: as asked, but only the header section of a REQUIRETLS
    message (RFC 8689 §5): the report itself may travel without TLS."""
    return dataclasses.replace(mail, ret="HDRS") if mail.requiretls else mail


TLS_REPORT_CHECK = 3600.0  # seconds between looks for finished days of TLS-RPT data


class QueueManager:
    def __init__(self, ctx: seams.Context, *, spool: QueueSpool | None = None, clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random, lease: float = LEASE,
                 claim_every: float = CLAIM_EVERY) -> None:
        """With a ClaimingSpool (spool_pg.PgSpool) the manager shares the queue with others (other
        workers, other nodes): `entries` holds only what it claimed, for `lease` seconds renewed
        while it works on them, and it claims due entries every `claim_every` seconds and after
        each submit; a finished round saves the entry and releases it."""
        self.ctx = ctx
        if spool is None:
            workers = ctx.config.server.workers
            spool = Spool(ctx.config.queue_root, partitions=[partition_name(i) for i in range(1, workers)])
        self.spool: QueueSpool = spool
        self._claims: ClaimingSpool | None = spool if isinstance(spool, ClaimingSpool) else None
        self.lease, self.claim_every = lease, claim_every
        self._claim_now = asyncio.Event()
        self._claim_failing = False
        self.clock = clock
        self.rand = rand
        self.entries: dict[str, Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._stopping = False
        self._load_lock = asyncio.Lock()
        self.loaded = asyncio.Event()
        self.load_seconds: float | None = None
        self._jobs: dict[str, deque[_Job]] = {}  # destination -> jobs waiting for a slot
        self._active = 0
        self._domain_active: dict[str, int] = {}  # destination -> transactions running
        self.connections = SmtpConnections()
        self._tg: asyncio.TaskGroup | None = None
        self._tls: Any = None
        self._verified: tuple[Any, Any] | None = None  # (the Config it was built from, its verifying context)
        self._policies: tlspolicy.TlsPolicies | None = None  # MTA-STS cache, DANE (built on first use)

    # -- lifecycle --------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the spool once (run() and the first submit() both wait for it)."""
        async with self._load_lock:
            if self.loaded.is_set():
                return
            started = time.monotonic()
            loaded = await self.spool.load()
            if self._claims is not None:
                loaded = []  # shared: entries are claimed when due (run), not owned by loading
            for entry in loaded:
                if entry.id not in self.entries:
                    self.entries[entry.id] = entry
                    self._schedule(entry)
            self.load_seconds = time.monotonic() - started
            self.loaded.set()
            log.info("queue: %d entr%s loaded in %.3fs", len(self.entries),
                     "y" if len(self.entries) == 1 else "ies", self.load_seconds)

    async def run(self) -> None:
        """Work until stop() (in-flight transactions finish) or cancellation (they are abandoned
        unrecorded and retried after the next start)."""
        await self.load()
        try:
            await self._run_until_stopped()
        finally:
            if self._policies is not None:
                await self._policies.close()  # background MTA-STS refreshes

    async def _run_until_stopped(self) -> None:
        if self._claims is None:
            await self._run()
            return
        # Leases are renewed until every transaction has ended, also those stop() lets finish.
        renewer = asyncio.create_task(self._renew_loop(self._claims), name="queue leases")
        try:
            await self._run()
            await self._release_all()  # stopped: what we hold and did not start goes back
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _run(self) -> None:
        try:
            await self._run_jobs()
        except BaseException:
            self.connections.abort_all()  # cancelled: no QUITs, the process is going away
            raise
        await self.connections.close_all()

    async def _run_jobs(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            scanner = tg.create_task(self._scan_partitions(), name="queue partitions") if self.spool.partitions else None
            claimer = tg.create_task(self._claim_loop(self._claims), name="queue claims") \
                if self._claims is not None else None
            reporter = tg.create_task(self._tls_reports(), name="tls reports") \
                if self.ctx.config.reports.tls else None
            try:
                while not self._stopping:
                    self._wake.clear()
                    self._dispatch(tg)
                    delay = self._until_next()
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                    except TimeoutError:
                        pass
            finally:
                self._tg = None
                if scanner is not None:
                    scanner.cancel()
                if claimer is not None:
                    claimer.cancel()
                if reporter is not None:
                    reporter.cancel()

    async def _tls_reports(self) -> None:
        """[reports] tls: send the finished days' TLS reports (delivery/tlsrpt.py), checked every
        TLS_REPORT_CHECK seconds; the day files are claimed by rename, so one worker sends each."""
        from mailhaven.delivery import tlsrpt

        while not self._stopping:
            try:
                await tlsrpt.send_due(self.ctx, self.ctx.config.data_path / "tlsrpt")
            except Exception:  # noqa: BLE001 - reports are best effort; the queue goes on
                log.exception("queue: sending TLS reports failed")
            await asyncio.sleep(TLS_REPORT_CHECK)

    async def _scan_partitions(self) -> None:
        """Pick up what the other workers queued (spool.scan_partitions): at once when a worker
        sends its wake-up datagram (queue/handoff.py, to spool.wake_path), else every
        PARTITION_SCAN seconds. Their entries are scheduled here, so exactly one process
        delivers each."""
        now = asyncio.Event()
        with _wake_socket(self.spool.wake_path, now.set):
            while not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(now.wait(), PARTITION_SCAN)
                now.clear()
                await self._scan_once()

    async def _scan_once(self) -> None:
        try:
            found = await self.spool.scan_partitions()
        except OSError as e:
            log.error("queue: cannot read the workers' partitions: %s", e.strerror or e)
            return
        self._adopt(found)

    def _adopt(self, found: list[Entry]) -> None:
        """Entries found in the workers' partitions or claimed from the shared spool: ours now."""
        for entry in found:
            if entry.id not in self.entries:
                self.entries[entry.id] = entry
                self._schedule(entry)
        if found:
            self.wake()

    async def _claim_loop(self, spool: ClaimingSpool) -> None:
        """Claim due entries of the shared spool: every claim_every seconds, at once after a submit."""
        while not self._stopping:
            await self._claim_once(spool)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._claim_now.wait(), self.claim_every)
            self._claim_now.clear()

    async def _claim_once(self, spool: ClaimingSpool) -> None:
        room = self.ctx.config.queue.max_connections - len(self.entries)  # hold no more than we can start
        if room <= 0:
            return
        try:
            found = await spool.claim(room, self.lease, self.clock())
        except DatabaseError as e:
            if not self._claim_failing:  # once per outage, not every second
                log.warning("queue: cannot claim entries (trying every %gs): %s", self.claim_every, e.detail)
            self._claim_failing = True
            return
        if self._claim_failing:
            log.info("queue: claiming entries again")
            self._claim_failing = False
        self._adopt(found)

    async def _renew_loop(self, spool: ClaimingSpool) -> None:
        """Keep the leases of what we hold (LEASE / 3 apart: two renewals may fail before one expires)."""
        while True:  # cancelled by run() once no transaction is left
            await asyncio.sleep(self.lease / 3)
            held = list(self.entries)
            try:
                kept = await spool.renew(held, self.lease)
            except DatabaseError as e:
                log.warning("queue: cannot renew the leases of %d entries: %s", len(held), e.detail)
                continue
            for eid in held:
                if eid not in kept and eid in self.entries:
                    log.error("queue: lost the lease of %s (another node may deliver it too)", eid)

    async def _release_all(self) -> None:
        """After _run: no transaction runs any more, so every entry still here (claimed, maybe
        given a round whose jobs never got a slot) goes back."""
        self._jobs.clear()
        for entry in list(self.entries.values()):
            entry.busy = False
            try:
                await self._give_back(entry)
            except DatabaseError as e:  # its lease runs out instead
                log.warning("queue: cannot release %s: %s", entry.id, e.detail)

    async def _give_back(self, entry: Entry) -> None:
        """A claimed entry leaves our hands: any manager may claim it when it is due."""
        if self.entries.get(entry.id) is entry:
            del self.entries[entry.id]
        if self._claims is not None:
            await self._claims.release(entry.id)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- entry points -----------------------------------------------------------------------------

    async def submit(self, sender: str, recipients: list[str], message: bytes, *, source: str = "",
                     entry_id: str | None = None, programs: Sequence[tuple[str, str, str]] = (),
                     dsn: dsn.DsnRequest | None = None) -> str:
        """Store a new entry durably (under `entry_id` if given) and schedule it now; returns its id.
        `programs`: recipients delivered to a program, (envelope recipient, command, RECIPIENT);
        `dsn`: what the sender asked to be told (RFC 3461). Raises TempFailure on disk trouble."""
        await self.load()
        entry = await self.spool.add(sender, recipients, message, source=source, next_attempt=self.clock(),
                                     entry_id=entry_id, programs=programs, dsn=dsn)
        if self._claims is not None:
            self._claim_now.set()  # whoever claims it first delivers it
            return entry.id
        self.entries[entry.id] = entry
        self._schedule(entry)
        self.wake()
        return entry.id

    def list_entries(self) -> list[dict[str, Any]]:
        """The entries this manager holds (with a shared spool: only those it claimed)."""
        return [self._summary(e) for e in sorted(self.entries.values(), key=lambda e: e.created)]

    async def overview(self) -> list[dict[str, Any]]:
        """`queue list`: every entry of the queue; with a shared spool every node's, from the table
        ("busy": a node is delivering it now)."""
        if self._claims is None:
            return self.list_entries()
        return [{**self._summary(e), "busy": held} for e, held in await self._claims.snapshot()]

    async def show(self, entry_id: str) -> dict[str, Any] | None:
        """`queue show`: one entry as stored, whichever node holds it; None when unknown."""
        if not valid_id(entry_id):
            return None
        entry = self.entries.get(entry_id)
        if entry is not None:
            return {**entry.to_json(), "busy": entry.busy}
        if self._claims is None:
            return None
        found = await self._claims.snapshot(entry_id)
        return {**found[0][0].to_json(), "busy": found[0][1]} if found else None

    async def headers(self, entry_id: str) -> dict[str, str] | None:
        """From, To, Subject and Message-ID of an entry's message as written (RFC 2047 words not
        decoded), for `queue show`; reads at most HEADERS_READ octets, off the loop. None if unknown."""
        if not valid_id(entry_id) or (entry_id not in self.entries and await self.show(entry_id) is None):
            return None

        def read() -> bytes:
            with open(self.spool.msg_path(entry_id), "rb") as f:
                return f.read(HEADERS_READ)

        try:
            head = await asyncio.to_thread(read)
        except OSError:
            return {}
        out: dict[str, str] = {}
        for name in ("From", "To", "Subject", "Message-ID"):
            value = msgheaders.field_value(head, name, limit=HEADERS_READ)
            if value is not None:
                out[name] = value
        return out

    async def retry(self, entry_id: str) -> bool:
        """Next attempt now (an entry in delivery right now is left alone). False if unknown."""
        entry = self.entries.get(entry_id) if valid_id(entry_id) else None
        if entry is None:  # with a shared spool: an entry no node holds is made due in the table
            return self._claims is not None and valid_id(entry_id) and await self._wake_shared(entry_id)
        if not entry.busy:
            entry.next_attempt = self.clock()
            await self.spool.save(entry)
            self._schedule(entry)
            self.wake()
        return True

    async def _wake_shared(self, entry_id: str) -> bool:
        assert self._claims is not None
        if await self._claims.reschedule(entry_id, self.clock()):
            self._claim_now.set()
            return True
        return bool(await self._claims.snapshot(entry_id))  # held by a node: delivering it now

    async def flush(self) -> int:
        n = 0
        ids = list(self.entries) if self._claims is None else [e["id"] for e in await self.overview()]
        for entry_id in ids:
            if await self.retry(entry_id):
                n += 1
        return n

    async def delete(self, entry_id: str) -> bool:
        """Remove an entry without delivering or bouncing it (an in-flight transaction finishes,
        its result is dropped)."""
        entry = self.entries.pop(entry_id, None) if valid_id(entry_id) else None
        if entry is None:  # with a shared spool: held by another node or by none
            if self._claims is None or not valid_id(entry_id) or not await self._claims.snapshot(entry_id):
                return False
            await self.spool.remove(entry_id)  # the holder's next save or renewal finds it gone
            log.info("queue: %s deleted by the operator", entry_id)
            return True
        entry.deleted = True
        await self.spool.remove(entry_id)
        log.info("queue: %s deleted by the operator", entry_id)
        return True

    # -- scheduling -------------------------------------------------------------------------------

    def _schedule(self, entry: Entry) -> None:
        heapq.heappush(self._heap, (entry.next_attempt, next(self._seq), entry.id))

    def _until_next(self) -> float | None:
        while self._heap:
            when, _, eid = self._heap[0]
            entry = self.entries.get(eid)
            if entry is None or entry.busy or entry.next_attempt != when:
                heapq.heappop(self._heap)  # stale
                continue
            return max(0.0, when - self.clock())
        return None

    def _dispatch(self, tg: asyncio.TaskGroup) -> None:
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            when, _, eid = heapq.heappop(self._heap)
            entry = self.entries.get(eid)
            if entry is None or entry.busy or entry.next_attempt != when:
                continue
            self._start_round(tg, entry)
        self._start_jobs(tg)

    def _start_round(self, tg: asyncio.TaskGroup, entry: Entry) -> None:
        entry.busy = True
        by_domain: dict[str, list[Recipient]] = {}
        jobs: list[tuple[str, list[Recipient]]] = []
        for r in entry.pending():
            if r.program:  # one run per program recipient, at most max_per_destination at once
                jobs.append((PROGRAMS, [r]))
            else:
                by_domain.setdefault(_domain(r.address), []).append(r)
        jobs += by_domain.items()
        rnd = _Round(entry, len(jobs))
        if not jobs:
            # Nothing to deliver (a restart after the last result): only bounces and removal remain.
            tg.create_task(self._finish_safely(rnd))
            return
        for domain, rcpts in jobs:
            job = _Job(rnd, domain, rcpts, self._route(domain))
            self._jobs.setdefault(job.dest, deque()).append(job)

    def _route(self, domain: str) -> routes.Route | None:
        """The route of a remote domain (routes.route_for); None for programs and our own domains."""
        cfg = self.ctx.config
        if domain == PROGRAMS or cfg.is_local_domain(domain):
            return None
        try:
            return routes.route_for(domain, relay=cfg.queue.relay, transports=cfg.queue.transports)
        except ValueError as e:  # config.py validated both: only a broken reload gets here
            log.error("queue: no route for %s (%s): delivering to its MX", domain, e)
            return routes.Route("mx", f"MX of {domain}")

    def _start_jobs(self, tg: asyncio.TaskGroup) -> None:
        q = self.ctx.config.queue
        # One destination never holds more than 4/5 of the slots (Postfix: 20 of 100 by default),
        # so a tarpit with a large max_per_destination still leaves room for the others.
        per_dest = min(q.max_per_destination, max(1, q.max_connections * 4 // 5))
        progress = True
        while progress and self._jobs and self._active < q.max_connections:
            progress = False
            for dest in list(self._jobs):  # round-robin over destinations
                if self._active >= q.max_connections:
                    break
                if self._domain_active.get(dest, 0) >= per_dest:
                    continue
                jobs = self._jobs[dest]
                job = jobs.popleft()
                if not jobs:
                    del self._jobs[dest]
                self._active += 1
                self._domain_active[dest] = self._domain_active.get(dest, 0) + 1
                tg.create_task(self._run_job(job), name=f"deliver {job.round.entry.id} {job.domain}")
                progress = True

    # -- one transaction ------------------------------------------------------------------------------

    async def _run_job(self, job: _Job) -> None:
        entry = job.round.entry
        try:
            addrs = [r.address for r in job.recipients]
            try:
                message = await job.round.message(self.spool)
                if job.domain == PROGRAMS:
                    results = [await self._deliver_program(entry, r, message) for r in job.recipients]
                else:
                    results = await self._deliver(entry, job.domain, addrs, message, job.route)
            except Exception as e:  # noqa: BLE001 - STYLE rule 5: unknown failures are temporary
                log.exception("queue: delivery of %s to %s failed unexpectedly", entry.id, job.domain)
                results = [DeliveryResult.from_error(a, e) for a in addrs]
            kind = "local" if job.route is None or job.route.kind == "local" else "remote"
            await self._record(entry, job.recipients, results, last=job.round.remaining == 1, kind=kind)
        except Exception:  # noqa: BLE001 - the worker must survive anything one entry does
            log.exception("queue: recording results of %s failed", entry.id)
        finally:
            self._active -= 1
            left = self._domain_active.get(job.dest, 1) - 1
            if left > 0:
                self._domain_active[job.dest] = left
            else:
                self._domain_active.pop(job.dest, None)
            job.round.remaining -= 1
            task = asyncio.current_task()
            # Cancelled (run() cancelled: the process stops or dies): the round is abandoned
            # unrecorded, neither finished nor, with a shared spool, released (its lease runs out).
            if job.round.remaining == 0 and not (task is not None and task.cancelling()):
                await self._finish_safely(job.round)
            self.wake()

    async def _deliver(self, entry: Entry, domain: str, addrs: list[str], message: bytes,
                       route: routes.Route | None = None) -> list[DeliveryResult]:
        ctx = self.ctx
        if route is None and not ctx.config.is_local_domain(domain):
            route = self._route(domain)
        if route is None or route.kind == "local":  # ours, or [queue.transports] "local"
            agent = local.agent_of(ctx)  # per recipient: one user's failure does not fail the others
            resolved = [agent.resolve(a) for a in addrs]
            results = await agent.deliver(resolved, message, sender=entry.sender)
            if any(r.programs for r in resolved):
                results = await self._local_programs(entry, resolved, results, message)
            return results
        from mailhaven.tls import client_context

        if self._tls is None:
            self._tls = client_context(verify=False)
        # The relay and require_tls_domains always verify; MTA-STS, DANE and REQUIRETLS ask
        # TlsPolicies for the same context when their plan needs it (remote.py).
        verified = self._verified_context() \
            if route.kind == "relay" or remote.requires_tls(ctx.config, domain) else None
        request = dsn.DsnRequest(entry.dsn, {r.address: r.dsn for r in entry.recipients})
        return await remote.deliver(ctx.config, ctx.resolver, entry.sender, domain, addrs, message,
                                    tls_context=self._tls, verified_context=verified, dsn=request,
                                    policies=self._tls_policies(), requiretls=entry.dsn.requiretls,
                                    tls_optional=tlspolicy.tls_required_no(message), route=route,
                                    pool=self.connections)

    def _tls_policies(self) -> tlspolicy.TlsPolicies:
        """MTA-STS and DANE for remote delivery; rebuilt when a reload brought a new config or
        resolver (the MTA-STS cache lives on in its file)."""
        ctx = self.ctx
        p = self._policies
        if p is None or p.config is not ctx.config or p.resolver is not ctx.resolver:
            p = self._policies = tlspolicy.TlsPolicies(ctx.config, ctx.resolver)
        return p

    def _verified_context(self) -> Any:
        """tls.mx_verify_context for the current config (SIGHUP reads the CAs again); None when it
        cannot be built (remote.deliver then says why, in the log and in the result)."""
        from mailhaven.tls import mx_verify_context

        ctx = self.ctx
        if self._verified is None or self._verified[0] is not ctx.config:
            try:
                self._verified = (ctx.config, mx_verify_context(ctx.config.queue.tls_ca_file))
            except ConfigError:
                self._verified = None
        return self._verified[1] if self._verified is not None else None

    async def _local_programs(self, entry: Entry, resolved: list[seams.Recipient], results: list[DeliveryResult],
                              message: bytes) -> list[DeliveryResult]:
        """A queued local recipient whose alias also names programs: they run here (already in the
        queue, so retried). Its result is the worst of its mailbox and program results (a retry
        may then store its mailbox copy again: at least once, never lost)."""
        body = await local.agent_of(self.ctx).program_body(message, sender=entry.sender)
        out: list[DeliveryResult] = []
        for r, res in zip(resolved, results, strict=True):
            parts = [res] if r.users or r.forward else []  # res carries the forward result too
            for p in r.programs:
                parts.append(await self._deliver_program(entry, Recipient(r.address, program=p.command,
                                                                          program_rcpt=p.recipient), body))
            out.append(next((x for x in parts if x.temporary), None)
                       or next((x for x in parts if x.permanent), None) or (parts[0] if parts else res))
        return out

    async def _deliver_program(self, entry: Entry, r: Recipient, message: bytes) -> DeliveryResult:
        """Run the program of a program recipient (delivery/program.py), once the alias still
        names it and programs are still allowed (Postfix expands aliases at delivery time too)."""
        cfg = self.ctx.config
        if not cfg.delivery.allow_programs:
            return DeliveryResult.perm(r.address, "delivery to programs is not allowed here", enhanced="5.7.1")
        agent = local.agent_of(self.ctx)
        current = agent.resolve(r.address).programs
        if not any(p.command == r.program for p in current):
            return DeliveryResult.perm(r.address, "the alias no longer delivers to this program", enhanced="5.1.1")
        rcpt = r.program_rcpt or r.address
        try:
            user = await asyncio.to_thread(program.check_user, cfg)  # pwd and group lookups: off the loop
            argv = program_argv(r.program)
        except (ConfigError, ValueError) as e:
            log.error("queue: %s to=<%s> program %s: %s", entry.id, r.address, r.program, e)
            return DeliveryResult.temp(r.address, "program delivery is misconfigured", enhanced="4.3.5")
        data = local.with_head(message, sender=entry.sender, recipient=rcpt)
        env = program.environment(user, sender=entry.sender, recipient=rcpt, original_recipient=r.address,
                                  queue_id=entry.id)
        d = cfg.delivery
        outcome = await program.run(argv, data, env, user, time_limit=d.program_timeout,
                                    max_output=d.program_max_output)
        if outcome.output:
            log.info("queue: %s to=<%s> program %s said: %s", entry.id, r.address, argv[0],
                     program.first_line(outcome.output))
        return program.result_of(r.address, r.program, outcome, d.program_timeout)

    async def _record(self, entry: Entry, rcpts: list[Recipient], results: list[DeliveryResult], *,
                      last: bool = False, kind: str = "remote") -> None:
        """Apply one transaction's results and save them before anything else happens.

        When this was the entry's last transaction and every recipient is now delivered (or failed
        with nothing to bounce), the save is skipped: `_finish` removes the entry next, and the
        removal is the durable record (a crash in between repeats the delivery, as any crash
        before a save does)."""
        now = self.clock()
        for r, res in zip(rcpts, results, strict=True):
            r.attempts += 1
            r.last_attempt = now
            r.last = res
            if res.delivered:
                r.state = "delivered"
                r.dsn_passed = res.dsn_passed
                what = "delivered"
            elif res.permanent:
                r.state = "failed"
                what = "bounced"
            else:
                what = "deferred"
            how = f" [route {res.route}{', at ' + res.stage if res.stage and not res.delivered else ''}]" \
                if res.route else ""  # which next hop (delivery/routes.py), where a failure stopped
            log.info("queue: %s to=<%s> %s via %s: %s%s", entry.id, r.address, what, res.remote_mta or "-",
                     res.reply, how)
            metrics.of(self.ctx).delivery_result(kind, what)  # one per recipient per attempt
        finished = last and entry.done() and not any(_owed_notice(entry, r) for r in entry.recipients)
        if not entry.deleted and not finished:
            await self.spool.save(entry)

    # -- after a round ------------------------------------------------------------------------------

    async def _finish_safely(self, rnd: _Round) -> None:
        entry = rnd.entry
        try:
            await self._finish(rnd)
        except Exception:  # noqa: BLE001
            log.exception("queue: finishing %s failed; retrying later", entry.id)
            if not entry.deleted and entry.id in self.entries:
                # Kept here, also with a shared spool (its lease renewed): what was recorded only
                # in memory (a delivery whose record is the removal) is not repeated elsewhere.
                entry.next_attempt = self.clock() + NOTIFY_RETRY
                entry.busy = False
                self._schedule(entry)
        finally:
            entry.busy = False
            self.wake()

    async def _finish(self, rnd: _Round) -> None:
        entry = rnd.entry
        if entry.deleted:
            return
        now = self.clock()
        cfg = self.ctx.config.queue
        if entry.pending():
            entry.attempts += 1
            if schedule.expired(entry.created, now, cfg.lifetime):
                for r in entry.pending():
                    last = r.last.reply if r.last is not None else "no attempt made"
                    r.state = "failed"
                    r.last = DeliveryResult(r.address, 550, "5.4.7",  # RFC 3463: delivery time expired
                                            f"gave up after {(now - entry.created) / 3600:.0f} h; last "
                                            f"reply: {last}", False,
                                            r.last.remote_mta if r.last is not None else "")
                    metrics.of(self.ctx).delivery_result(
                        "local" if self.ctx.config.is_local_domain(_domain(r.address)) else "remote", "expired")
                log.info("queue: %s expired after %.0f s", entry.id, now - entry.created)
                await self.spool.save(entry)
        notified = await self._notify(entry, rnd)
        if entry.done() and notified:
            await self.spool.remove(entry.id)
            self.entries.pop(entry.id, None)
            if any(r.state == "delivered" for r in entry.recipients):
                metrics.of(self.ctx).message_sent()  # messages_sent_total: an entry done, delivered to someone
            log.info("queue: %s done", entry.id)
            return
        if entry.pending() and schedule.delay_warning_due(entry.created, now, cfg.delay_warning, cfg.lifetime,
                                                          entry.delay_warning_sent):
            delayed: list[tuple[Recipient, dsn.DsnAction]] = [
                (r, "delayed") for r in entry.pending() if r.dsn.wants("DELAY")]
            if entry.sender and delayed:
                await self._send_dsn(entry, rnd, delayed)
            entry.delay_warning_sent = True
        if entry.pending():
            planned = schedule.next_attempt(entry.attempts, now, cfg.retry_schedule, cfg.jitter, self.rand())
            entry.next_attempt = schedule.next_wakeup(entry.created, planned, cfg.lifetime)
        else:
            entry.next_attempt = now + NOTIFY_RETRY  # only a bounce is left to queue
        await self.spool.save(entry)
        entry.busy = False  # before scheduling: the timer heap skips busy entries
        rnd.drop_message()
        if self._claims is not None:
            await self._give_back(entry)  # claimed again when due, here or elsewhere
            return
        self._schedule(entry)

    async def _notify(self, entry: Entry, rnd: _Round) -> bool:
        """Queue one report for the recipients that owe one (_owed_notice: bounces, and success
        notices asked with NOTIFY=SUCCESS). False if it could not be queued (tried again later)."""
        owed = [(r, action) for r in entry.recipients if (action := _owed_notice(entry, r)) is not None]
        if not owed:
            return True
        try:
            await self._send_dsn(entry, rnd, owed)
        except MailError as e:
            if e.temporary:
                log.warning("queue: report for %s could not be queued (%s); will retry", entry.id, e.text)
                return False
            log.warning("queue: report for %s to <%s> dropped: %s", entry.id, entry.sender, e.text)
        for r, _ in owed:
            r.notified = True
        await self.spool.save(entry)
        return True

    async def _send_dsn(self, entry: Entry, rnd: _Round, owed: Sequence[tuple[Recipient, dsn.DsnAction]]) -> None:
        reports = []
        for r, action in owed:
            last = r.last
            status = last.enhanced if last is not None else ("5.0.0" if action == "failed" else "4.0.0")
            reports.append(dsn.RecipientReport(
                r.address, action, status, diagnostic=last.reply if last is not None else "",
                remote_mta=last.remote_mta if last is not None else "", last_attempt=r.last_attempt,
                original_recipient=r.dsn.orcpt or ""))
        await queue_report(self.ctx, about=entry.id, to=entry.sender, reports=reports,
                           original=await rnd.message(self.spool), arrival=entry.created, now=self.clock(),
                           request=_report_request(entry.dsn),
                           will_retry_until=entry.created + self.ctx.config.queue.lifetime)

    # -- views ------------------------------------------------------------------------------------

    def _summary(self, e: Entry) -> dict[str, Any]:
        return {"id": e.id, "sender": e.sender, "created": e.created, "next_attempt": e.next_attempt,
                "attempts": e.attempts, "size": e.size, "busy": e.busy,
                "recipients": [{"address": r.address, "state": r.state,
                                "last": r.last.reply if r.last is not None else ""} for r in e.recipients]}

    @property
    def active(self) -> int:
        return self._active

    def stats(self) -> tuple[int, float]:
        """(entries in the queue, age in seconds of the oldest; 0.0 when empty): the metrics probe
        (metrics.set_queue_probe), called at scrape time on the loop: memory only, no disk."""
        if not self.entries:
            return 0, 0.0
        oldest = min(e.created for e in self.entries.values())
        return len(self.entries), max(0.0, self.clock() - oldest)


__all__ = ["QueueManager"]
