"""The supervising parent of `mailhaven serve` when [server] workers > 1 (Postfix's master, in small).

Owns: binding every listener and metrics.address once (as root when started so, like app.run), the
worker processes (forked before the parent has any event loop or thread; worker i runs
`app.run(config, socks=..., worker=i, link=...)` on its own event loop, inheriting the listening
sockets: the kernel spreads connections over them), restarting a worker that dies (same index, after
a backoff of RESTART_FIRST seconds doubling to RESTART_MAX, back to the start once a worker ran
RESTART_RESET seconds), passing SIGHUP (reload) and SIGTERM/SIGINT (graceful stop: the workers get
config shutdown_deadline + STOP_MARGIN seconds, then SIGKILL) on to every worker, sd_notify for the
service (READY=1 once every worker said it serves, RELOADING=1, STOPPING=1; workers get no
NOTIFY_SOCKET), and `GET /metrics` on metrics.address: each worker's exposition, summed
(metrics.merge), plus `mailhaven_workers`.
Does not own: serving anything (app.py, in the workers), privileges (each worker drops them as app.run
does; the parent stays root to bind nothing new but fork and signal, as Postfix's master does), the
queue split (worker 0 runs the queue and the control socket: queue/handoff.py).

The parent is a plain loop over one selector (no asyncio, no threads): the signal wakeup fd, one
link per worker, the metrics socket and its HTTP clients. A link is a Unix stream socketpair:

    worker -> parent  b"ready\\n"                   once its listeners serve
                      b"reloaded ok|failed\\n"      after each reload (SIGHUP) it was passed
                      b"all N\\n" + N octets        a control command (JSON) for every other worker
                      b"error LINE\\n"              it cannot start (StartupError, ConfigError): LINE
                      b"metrics SEQ N\\n" + N octets  its exposition, answering:
    parent -> worker  b"metrics SEQ\\n"              (SEQ numbers the parent's requests)
                      b"do N\\n" + N octets         another worker's "all" command, passed on

A worker that dies before it ever served on its first start means the server cannot start: the
parent stops the others, prints the worker's error line and exits with its status (1, or 2 for a
config error), as a single process would. With workers = 1 there is no parent: app.run is the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailhaven import app
from mailhaven import config as configmod
from mailhaven import metrics as metricsmod
from mailhaven.config import Config
from mailhaven.errors import ConfigError

log = logging.getLogger("mailhaven.supervisor")

RESTART_FIRST = 1.0  # seconds before restarting a dead worker; doubles on each further death
RESTART_MAX = 30.0
RESTART_RESET = 60.0  # a worker that ran this long starts the backoff again from RESTART_FIRST
RELOAD_WAIT = 30.0  # seconds the parent waits for every worker's "reloaded" before READY=1
STOP_MARGIN = 15.0  # beyond shutdown_deadline: the workers' own closing (servers, store, queue)
METRICS_TIMEOUT = 5.0  # for the workers' answers to one scrape
MAX_MESSAGE = 256 * 1024 * 1024
MAX_COMMAND = 64 * 1024  # a control command passed on between workers (JSON)
SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


# --- the worker's end of its link ----------------------------------------------------------------


class WorkerLink:
    """In a worker: its end of the link to the parent (see the module doc)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._writer: asyncio.StreamWriter | None = None  # once serve() runs the socket

    def ready(self) -> None:
        self._send(b"ready\n")

    def broadcast(self, command: dict[str, Any]) -> None:
        """Have every other worker apply `command` (control.relayed: e.g. an `auth unblock` that
        worker 0's control socket took), through the parent."""
        body = json.dumps(command).encode()
        line = b"all %d\n" % len(body) + body
        if self._writer is not None:
            self._writer.write(line)
        else:
            with contextlib.suppress(OSError):
                self._send(line)

    def reloaded(self, ok: bool) -> None:
        """Tell the parent this worker's reload is done (it sends READY=1 once all are)."""
        line = b"reloaded ok\n" if ok else b"reloaded failed\n"
        if self._writer is not None:
            self._writer.write(line)  # a few octets: the socket buffer takes them
        else:
            with contextlib.suppress(OSError):
                self._send(line)

    def error(self, line: str) -> None:
        with contextlib.suppress(OSError):
            self._send(b"error " + " ".join(line.split()).encode("utf-8", "replace")[:4000] + b"\n")

    def _send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        self.sock.sendall(data)

    async def serve(self, metrics: metricsmod.Metrics, *, lost: Callable[[], object],
                    relayed: Callable[[dict[str, Any]], object] | None = None) -> None:
        """Answer the parent's requests and apply the commands it passes on (`relayed`); when the
        parent is gone, call `lost` (stop serving)."""
        reader, writer = await asyncio.open_connection(sock=self.sock, limit=4096)
        self._writer = writer
        try:
            while True:
                line = await reader.readline()
                if not line:
                    log.error("the supervising parent is gone: stopping")
                    lost()
                    return
                words = line.split()
                if len(words) == 2 and words[0] == b"metrics" and words[1].isdigit():
                    body = metrics.render()
                    writer.write(b"metrics %s %d\n" % (words[1], len(body)) + body)
                    await writer.drain()
                elif len(words) == 2 and words[0] == b"do" and words[1].isdigit() and int(words[1]) <= MAX_COMMAND:
                    raw = await reader.readexactly(int(words[1]))
                    try:
                        command = json.loads(raw)
                    except ValueError:
                        continue
                    if relayed is not None and isinstance(command, dict):
                        relayed(command)
        except (ConnectionError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            lost()
        finally:
            writer.close()


# --- the parent ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    index: int
    pid: int = 0
    link: socket.socket | None = None
    buf: bytearray = field(default_factory=bytearray)
    ready: bool = False
    served: bool = False  # was ready at least once
    started: float = 0.0
    backoff: float = RESTART_FIRST
    restart_at: float | None = None
    error: str = ""
    exposition: bytes | None = None


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    deadline: float
    buf: bytearray = field(default_factory=bytearray)


class StartFailed(Exception):
    """A worker could not start at all; `code` is its exit status, str() its error line."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(line)
        self.code = code


class Supervisor:
    def __init__(self, config: Config, socks: dict[str, socket.socket], metrics_sock: socket.socket | None) -> None:
        self.config = config
        self.socks = socks
        self.metrics_sock = metrics_sock
        self.workers = [_Worker(i) for i in range(config.server.processes)]
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.clients: dict[int, _Client] = {}
        self.stopping = False
        self.stop_deadline = 0.0
        self.killed = False
        self.notified_ready = False
        self.failure: StartFailed | None = None
        self.scrapes = 0  # numbers the metrics requests, so an answer matches its request
        self.reloading: set[int] = set()  # workers passed a SIGHUP that have not said "reloaded"
        self.reload_deadline = 0.0

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until they all stopped; returns the exit status."""
        for s in (self.wake_r, self.wake_w):
            s.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "signal")
        if self.metrics_sock is not None:
            self.metrics_sock.setblocking(False)
            self.sel.register(self.metrics_sock, selectors.EVENT_READ, "accept")
        old_wakeup = signal.set_wakeup_fd(self.wake_w.fileno())
        previous = {sig: signal.signal(sig, _noop) for sig in SIGNALS}
        try:
            for w in self.workers:
                self._spawn(w)
            while not (self.stopping and not any(w.pid for w in self.workers)):
                self._step()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close()
        if self.failure is not None:
            print(f"mailhaven: {self.failure}", file=sys.stderr, flush=True)
            return self.failure.code
        log.info("stopped")
        return 0

    def _step(self) -> None:
        for key, _ in self.sel.select(self._timeout()):
            what = key.data
            if what == "signal":
                self._signals()
            elif what == "accept":
                self._accept()
            elif isinstance(what, _Worker):
                if what.link is key.fileobj:  # not closed by an earlier event of this batch
                    self._read_link(what)
            elif isinstance(what, _Client):
                if self.clients.get(what.sock.fileno()) is what:
                    self._read_client(what)
        self._reap()
        now = time.monotonic()
        if not self.stopping:
            for w in self.workers:
                if w.pid == 0 and w.restart_at is not None and w.restart_at <= now:
                    self._spawn(w)
        elif not self.killed and now >= self.stop_deadline:
            self.killed = True
            for w in self.workers:
                if w.pid:
                    log.warning("worker %d (pid %d) did not stop in time: killing it", w.index, w.pid)
                    _kill(w.pid, signal.SIGKILL)
        for c in list(self.clients.values()):
            if now >= c.deadline:
                self._drop_client(c)
        if self.reloading and now >= self.reload_deadline:
            log.warning("reload: worker(s) %s did not say they reloaded in %gs",
                        ", ".join(str(i) for i in sorted(self.reloading)), RELOAD_WAIT)
            self._reload_done()

    def _timeout(self) -> float:
        now = time.monotonic()
        times = [w.restart_at for w in self.workers if w.pid == 0 and w.restart_at is not None]
        times += [c.deadline for c in self.clients.values()]
        if self.stopping and not self.killed:
            times.append(self.stop_deadline)
        if self.reloading:
            times.append(self.reload_deadline)
        return max(0.0, min(times) - now) if times else 1.0

    # -- workers ----------------------------------------------------------------------------------

    def _spawn(self, w: _Worker) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocked across the fork: a signal must not run the parent's handler in the new worker.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker
            parent_end.close()
            code = 1
            try:
                code = self._worker_main(w.index, child_end, mask)
            finally:
                with contextlib.suppress(Exception):
                    logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child_end.close()
        parent_end.setblocking(False)
        w.pid, w.link, w.ready, w.restart_at, w.error = pid, parent_end, False, None, ""
        w.buf.clear()
        w.started = time.monotonic()
        self.sel.register(parent_end, selectors.EVENT_READ, w)
        log.info("worker %d started (pid %d)", w.index, pid)

    def _worker_main(self, index: int, sock: socket.socket, mask: set[int | signal.Signals]) -> int:
        """In the forked worker: leave the parent's loop behind and run app.run; the exit status."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # app.run handles it once it serves
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.sel.close()  # closes the parent's epoll fd in this process only (no unregistering)
        for s in [self.wake_r, self.wake_w, self.metrics_sock, *(c.sock for c in self.clients.values()),
                  *(w.link for w in self.workers)]:
            if s is not None:
                s.close()
        os.environ.pop("NOTIFY_SOCKET", None)  # the parent speaks to systemd
        link = WorkerLink(sock)
        try:
            asyncio.run(app.run(self.config, socks=self.socks, worker=index, link=link, handle_signals=True,
                                configure_logging=True))
        except ConfigError as e:
            link.error(str(e))
            return 2
        except app.StartupError as e:
            link.error(str(e))
            return 1
        except BaseException as e:  # noqa: BLE001 - one line to the parent, the traceback to the log
            log.exception("worker %d failed", index)
            link.error(f"worker {index} failed: {type(e).__name__}: {e}")
            return 1
        return 0

    def _read_link(self, w: _Worker) -> None:
        assert w.link is not None
        try:
            data = w.link.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(w.link)
            w.link.close()
            w.link = None
            w.ready = False
            return
        w.buf += data
        self._messages(w)

    def _messages(self, w: _Worker) -> None:
        while True:
            nl = w.buf.find(b"\n")
            if nl < 0:
                return
            head = bytes(w.buf[:nl])
            if head.startswith(b"metrics "):
                try:
                    seq, size = (int(x) for x in head[8:].split())
                except ValueError:
                    seq, size = -1, MAX_MESSAGE + 1
                body = self._framed(w, nl, size, MAX_MESSAGE, "metrics answer")
                if body is None:
                    return
                if seq == self.scrapes:  # a late answer to an earlier scrape is dropped
                    w.exposition = body
                continue
            if head.startswith(b"all "):
                size = int(head[4:]) if head[4:].isdigit() else MAX_COMMAND + 1
                body = self._framed(w, nl, size, MAX_COMMAND, "command to pass on")
                if body is None:
                    return
                self._relay(w, body)
                continue
            del w.buf[:nl + 1]
            if head == b"ready":
                w.ready = w.served = True
                self._maybe_ready()
            elif head.startswith(b"reloaded ") and w.index in self.reloading:
                self.reloading.discard(w.index)
                if not self.reloading:
                    self._reload_done()
            elif head.startswith(b"error "):
                w.error = head[6:].decode("utf-8", "replace")

    def _framed(self, w: _Worker, nl: int, size: int, limit: int, what: str) -> bytes | None:
        """The `size` octets after the head line that ends at `nl`, taken from the buffer; None
        when they are not all here yet, or when `size` is over `limit` (the buffer is dropped)."""
        if size > limit:
            log.error("worker %d sent a broken %s", w.index, what)
            w.buf.clear()
            return None
        if len(w.buf) < nl + 1 + size:
            return None
        body = bytes(w.buf[nl + 1:nl + 1 + size])
        del w.buf[:nl + 1 + size]
        return body

    def _relay(self, sender: _Worker, body: bytes) -> None:
        """Pass a worker's control command on to every other live worker."""
        for w in self.workers:
            if w is not sender and w.pid and w.link is not None:
                try:
                    w.link.send(b"do %d\n" % len(body) + body)
                except OSError as e:
                    log.warning("worker %d: a command could not be passed on: %s", w.index, e)

    def _maybe_ready(self) -> None:
        if not self.notified_ready and all(w.ready for w in self.workers):
            self.notified_ready = True
            app.sd_notify("READY=1")
            log.info("ready: %d workers serving", len(self.workers))
        elif self.notified_ready:
            log.info("worker restarted and serving: %d of %d workers ready", sum(w.ready for w in self.workers),
                     len(self.workers))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = next((w for w in self.workers if w.pid == pid), None)
            if w is not None:
                self._exited(w, status)

    def _exited(self, w: _Worker, status: int) -> None:
        if w.link is not None:
            with contextlib.suppress(OSError):
                self._read_link(w)  # an error line still in the socket
        if w.link is not None:
            self.sel.unregister(w.link)
            w.link.close()
            w.link = None
        w.pid, w.ready = 0, False
        if w.index in self.reloading:  # it will start with the reloaded config
            self.reloading.discard(w.index)
            if not self.reloading:
                self._reload_done()
        how = _status_text(status)
        if self.stopping:
            log.info("worker %d %s", w.index, how)
            return
        if not w.served:  # its first start failed: the server cannot start
            code = os.waitstatus_to_exitcode(status)
            line = w.error or f"worker {w.index} {how} before it served"
            log.error("worker %d could not start: %s", w.index, line)
            self.failure = StartFailed(line, code if code > 0 else 1)
            self._stop()
            return
        now = time.monotonic()
        if now - w.started >= RESTART_RESET:
            w.backoff = RESTART_FIRST
        w.restart_at = now + w.backoff
        log.error("worker %d %s; restarting it in %gs", w.index, how, w.backoff)
        w.backoff = min(w.backoff * 2, RESTART_MAX)

    # -- signals ----------------------------------------------------------------------------------

    def _signals(self) -> None:
        try:
            data = self.wake_r.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("stopping: passing %s on to %d worker(s)", signal.Signals(signum).name,
                             sum(1 for w in self.workers if w.pid))
                    self._stop()
            elif signum == signal.SIGHUP and not self.stopping:
                self._reload()

    def _stop(self) -> None:
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.shutdown_deadline + STOP_MARGIN
        app.sd_notify("STOPPING=1")
        # No worker is started again, and our copies would keep the ports open (connections
        # queued for nobody) after the workers closed theirs.
        for sock in self.socks.values():
            sock.close()
        for w in self.workers:
            w.restart_at = None
            if w.pid:
                _kill(w.pid, signal.SIGTERM)

    def _reload(self) -> None:
        """Read the config again here first: a broken one is said once (one line, as a single
        process says it) and the workers keep theirs. Else keep our copy (a restarted worker starts
        with the current file) and let every worker reload itself (each logs its own outcome);
        READY=1 once they all said they are done (or RELOAD_WAIT passed)."""
        if self.reloading:
            return  # one reload at a time: the running one reads the file after this signal too
        app.sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        old = self.config
        try:
            new = configmod.load(old.source)
            app.load_directory(new)  # what each worker reads too: the users file and the
            if new.tls.cert:  # certificate must load
                app.tls_context(new)
        except Exception as e:  # noqa: BLE001 - a broken file must never stop the server
            log.error("reload failed, keeping the running config: %s", app._reason(e))
            app.sd_notify("READY=1")
            return
        self.config = dataclasses.replace(new, **{k: getattr(old, k) for k in app.RESTART_ONLY})
        live = [w for w in self.workers if w.pid]
        log.info("SIGHUP: passing it on to %d worker(s); each logs its own reload", len(live))
        self.reloading = {w.index for w in live}
        self.reload_deadline = time.monotonic() + RELOAD_WAIT
        for w in live:
            _kill(w.pid, signal.SIGHUP)
        if not self.reloading:
            self._reload_done()

    def _reload_done(self) -> None:
        self.reloading.clear()
        app.sd_notify("READY=1")

    # -- GET /metrics -----------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.metrics_sock is not None
        try:
            sock, _ = self.metrics_sock.accept()
        except OSError:
            return
        if len(self.clients) >= metricsmod.MAX_CLIENTS:  # the parent's descriptors are not for a flood
            sock.close()
            return
        sock.setblocking(False)
        client = _Client(sock, time.monotonic() + metricsmod.REQUEST_TIMEOUT)
        self.clients[sock.fileno()] = client
        self.sel.register(sock, selectors.EVENT_READ, client)

    def _drop_client(self, c: _Client) -> None:
        self.clients.pop(c.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        c.sock.close()

    def _read_client(self, c: _Client) -> None:
        try:
            data = c.sock.recv(metricsmod.MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        c.buf += data
        done = b"\r\n\r\n" in c.buf or b"\n\n" in c.buf
        if not data or done or len(c.buf) > metricsmod.MAX_REQUEST:
            reply = metricsmod.http_reply(bytes(c.buf) if done else None, self._scrape) if data else b""
            self.clients.pop(c.sock.fileno(), None)
            self.sel.unregister(c.sock)
            try:
                if reply:
                    c.sock.settimeout(metricsmod.REQUEST_TIMEOUT)
                    c.sock.sendall(reply)
            except OSError:
                pass
            finally:
                c.sock.close()

    def _scrape(self) -> bytes:
        """Every serving worker's exposition, summed, with mailhaven_workers."""
        asked = []
        self.scrapes += 1
        for w in self.workers:
            w.exposition = None
            if w.ready and w.link is not None:
                try:
                    w.link.send(b"metrics %d\n" % self.scrapes)
                except OSError:
                    continue
                asked.append(w)
        deadline = time.monotonic() + METRICS_TIMEOUT
        with selectors.DefaultSelector() as sel:
            for w in asked:
                assert w.link is not None
                sel.register(w.link, selectors.EVENT_READ, w)
            while any(w.exposition is None and w.link is not None for w in asked):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("metrics: no answer from worker(s) %s",
                                ", ".join(str(w.index) for w in asked if w.exposition is None))
                    break
                for key, _ in sel.select(left):
                    w = key.data
                    self._read_link(w)
                    if w.link is None:
                        sel.unregister(key.fileobj)
        texts = [w.exposition.decode("utf-8", "replace") for w in asked if w.exposition is not None]
        return metricsmod.merge(texts, workers=sum(1 for w in self.workers if w.pid))

    def _close(self) -> None:
        for c in list(self.clients.values()):
            self._drop_client(c)
        for w in self.workers:
            if w.link is not None:
                w.link.close()
        for s in [*self.socks.values(), self.metrics_sock, self.wake_r, self.wake_w]:
            if s is not None:
                s.close()
        self.sel.close()


def _noop(signum: int, frame: object) -> None:
    """A Python-level handler, so the signal reaches set_wakeup_fd's socket."""


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def serve(config: Config) -> int:
    """`mailhaven serve` with config.server.workers > 1: bind, prepare data_dir, fork the workers and
    supervise them; returns the exit status. Raises StartupError (one line) when a socket cannot be
    bound, ConfigError for a bad run_as_user."""
    app.setup_logging(config)
    socks = app.bind_all(config)
    metrics_sock: socket.socket | None = None
    try:
        if config.metrics.address:
            try:
                metrics_sock = metricsmod.bind(config.metrics.address)
            except metricsmod.MetricsAddressError as e:
                raise app.StartupError(str(e)) from None
        app.prepare_data_dir(config)
        if config.metrics.address:
            log.info("metrics: serving http://%s/metrics (summed over %d workers)", config.metrics.address,
                     config.server.workers)
        log.info("starting %d workers", config.server.processes)
    except BaseException:
        for s in [*socks.values(), metrics_sock]:
            if s is not None:
                s.close()
        raise
    return Supervisor(config, socks, metrics_sock).run()


__all__ = ["Supervisor", "WorkerLink", "StartFailed", "serve"]
