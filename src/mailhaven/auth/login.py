"""The one login path of IMAP, POP3 and submission: throttle, cache, check, rehash, log, count.

Owns: `LoginService.login(proto, ip, login, password, mechanism) -> Outcome`, which registers the
attempt with the throttle as it starts (auth/throttle.py) and waits the penalty, answers from the
verification cache when it can, else checks the password on the hash executor (its own bounded
thread pool, never the default one the store and the MX policy checks use) with at most
`auth.max_checks_per_ip` checks of one client address running at once, rewrites a hash made with
old parameters after a good login, counts the metrics and writes the log line; `refused(...)` for
logins that end before a password is checked (TLS required, bad SASL, cancelled...); the penalties
listing for the control socket. The protocols only map an Outcome to their replies.
Does not own: hash formats (auth/passwords.py), the users file (auth/users.py), penalty arithmetic
(auth/throttle.py), SASL (auth/sasl.py).

Several nodes (PostgreSQL): `failures` (auth/throttle_pg.py) holds the failures every node
counted; they are read as an attempt starts (the throttle uses them instead of its own) and
written as it ends, before the reply, so the next attempt on any node sees them. A database that
fails costs a log line (at most one a minute) and leaves this process's own counts: for
SHARED_PAUSE seconds the logins do not ask it (only the first waits for its timeout), then it is tried again.

Verification cache (like Dovecot's auth_cache): good logins only, keyed by HMAC-SHA256 of the
normalised login and the password under a random key made at process start (the password is never
kept), valid `auth.cache_ttl`, at most `auth.cache_size` entries (least recently used dropped), and
only while the user's hash is still the one it was checked against; emptied whenever the directory
is replaced (users file reload, SIGHUP). A hit still waits the throttle's penalty first, so it is
no faster oracle than a check. Attempts with the same login and password in flight at once share one
check (a client opening 5 connections pays one hash).

One line per login, the same on every protocol (fail2ban matches it; docs/production.md):

    login failed proto=imap user=LOGIN ip=ADDR reason=REASON mechanism=MECH delay=SECONDS  (WARNING)
    login ok proto=imap user=CANONICAL ip=ADDR mechanism=MECH login=LOGIN cached=BOOL delay=SECONDS

reason: bad_password, unknown_user (a password was checked), and, before any check: authzid_refused,
plaintext_refused, bad_sasl, unknown_mechanism, cancelled. Every failure is one WARNING line, whatever
the protocol and the reason, so one level and one filter serve them all. The connection's cid ends
the line. Never the password.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from mailhaven import log as mlog
from mailhaven import metrics, seams
from mailhaven.auth import passwords
from mailhaven.auth.throttle import Attempt, Block, Policy, Throttle, account_key, ip_key
from mailhaven.config import AuthConfig, Config
from mailhaven.errors import ConfigError, DatabaseError

log = logging.getLogger("mailhaven.auth")

MAX_LOGIN_LENGTH = 512
# log reason -> metrics auth_failures_total{reason} (metrics.AUTH_FAILURE_REASONS)
METRIC_REASONS = {
    "bad_password": "bad_credentials", "unknown_user": "bad_credentials", "authzid_refused": "bad_credentials",
    "plaintext_refused": "tls_required", "bad_sasl": "syntax", "unknown_mechanism": "mechanism",
    "cancelled": "cancelled",
}
PASSWORD_CHECKED = frozenset({"bad_password", "unknown_user"})  # a password was checked
SHARED_PAUSE = 10.0  # seconds the shared login failures are left alone after the database failed


class UserRecord(Protocol):
    address: str  # canonical
    password: str  # hash


class Users(Protocol):
    """What the service needs of the user directory (auth/users.Directory)."""

    def entry(self, login: str) -> UserRecord | None: ...


@dataclass(frozen=True)
class Outcome:
    user: str | None  # canonical user when the password was right
    reason: str = ""  # why not: bad_password or unknown_user
    cached: bool = False  # answered from the verification cache
    delay: float = 0.0  # the penalty waited

    @property
    def ok(self) -> bool:
        return self.user is not None


def policy_of(a: AuthConfig) -> Policy:
    return Policy(failure_delay=a.failure_delay, max_delay=a.max_failure_delay, window=a.failure_window,
                  ip_free=a.max_failures_per_ip, account_alarm=a.max_failures_per_account)


_executors: dict[int, ThreadPoolExecutor] = {}


def hash_executor(threads: int) -> Executor:
    """The process's password-hashing pool of that size (0 = half the CPUs, 1 to 4)."""
    if threads <= 0:
        threads = max(1, min(4, (os.cpu_count() or 2) // 2))
    ex = _executors.get(threads)
    if ex is None:
        ex = _executors[threads] = ThreadPoolExecutor(threads, thread_name_prefix="mailhaven-hash")
    return ex


class _Cache:
    """Good verifications: fingerprint -> (canonical user, hash checked, expiry). LRU, bounded."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._data: collections.OrderedDict[bytes, tuple[str, str, float]] = collections.OrderedDict()

    def get(self, fp: bytes, current_hash: str) -> str | None:
        hit = self._data.get(fp)
        if hit is None:
            return None
        user, hashed, expires = hit
        if hashed != current_hash or self._clock() >= expires:
            del self._data[fp]  # the password changed, or too old
            return None
        self._data.move_to_end(fp)
        return user

    def put(self, fp: bytes, user: str, hashed: str, ttl: float, size: int) -> None:
        if ttl <= 0:
            return
        self._data[fp] = (user, hashed, self._clock() + ttl)
        self._data.move_to_end(fp)
        while len(self._data) > size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class LoginService:
    """One per server. `config()` and `directory()` return the current ones (they change on
    reload); `ctx` is asked for `metrics` (metrics.of)."""

    def __init__(self, config: Callable[[], Config], directory: Callable[[], Users | None], ctx: object = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 failures: seams.LoginFailures | None = None) -> None:
        """`failures`: the counts every node shares (PostgreSQL), or None: this process's alone."""
        self._config = config
        self.failures = failures
        self._shared_warned = float("-inf")
        self._shared_paused_until = float("-inf")
        self._directory = directory
        self._ctx = ctx
        self._sleep = sleep
        self.throttle = Throttle(policy_of(config().auth), clock=clock)
        self._policy_from = config().auth
        self._cache = _Cache(clock)
        self._key = secrets.token_bytes(32)  # per process: cache keys mean nothing elsewhere
        self._seen_directory: object = None
        self._pending: dict[bytes, asyncio.Future[str | None]] = {}
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._rehashing: set[str] = set()
        self._rehash_warned = False
        self.checks = 0  # password hashes computed (tests and the benchmark read it)

    # -- the login --

    async def login(self, proto: str, ip: str, login: str, password: str, mechanism: str) -> Outcome:
        """Check a login: waits the throttle's penalty, never refuses for past failures."""
        self._refresh()
        users = self._directory()
        fp = self._fingerprint(login, password)
        elsewhere = await self._shared_counts(ip, login)
        attempt = self.throttle.start(ip, login, fp, elsewhere)  # counted from now on, while in flight too
        ok, user, cached, ended = False, None, False, False
        try:
            if attempt.delay > 0:
                await self._sleep(attempt.delay)
            user, cached = await self._verify(users, login, password, fp, attempt.ip)
            ok = user is not None
            ended = True
        finally:
            alarm = self.throttle.finish(attempt, ok)  # a cancelled attempt counts as a failure
            if not ended:  # cancelled or failed: record it for the other nodes in the background
                self._background(self._share(attempt, ok))
        shared_alarm = await self._share(attempt, ok)
        if shared_alarm is not None:
            alarm = shared_alarm  # every node's count: one node raises it
        if alarm:
            mlog.event(log, "login failures for one account", level=logging.WARNING, account=login,
                       failures=self.throttle.account_failures(login), within=self._config().auth.failure_window)
        if user is None:
            known = users is not None and self._entry(users, login) is not None
            reason = "bad_password" if known else "unknown_user"
            self.refused(proto, ip, login, reason, mechanism, delay=attempt.delay)
            return Outcome(None, reason, delay=attempt.delay)
        metrics.of(self._ctx).login(proto, ok=True)
        with self._own_line():
            mlog.event(log, "login ok", proto=proto, user=user, ip=ip, mechanism=mechanism, login=login,
                       cached=cached, delay=round(attempt.delay, 3))
        return Outcome(user, cached=cached, delay=attempt.delay)

    def refused(self, proto: str, ip: str, login: str, reason: str, mechanism: str, *, delay: float = 0.0) -> None:
        """A failed login: the one log line and the metrics (also for failures before a check)."""
        with self._own_line():
            mlog.event(log, "login failed", level=logging.WARNING, proto=proto, user=login, ip=ip, reason=reason,
                       mechanism=mechanism, delay=round(delay, 3))
        metrics.of(self._ctx).login(proto, ok=False, reason=METRIC_REASONS.get(reason, "bad_credentials"))

    # -- operators (control socket) --

    def blocks(self) -> list[Block]:
        self._refresh()
        return self.throttle.blocks()

    def unblock(self, target: str) -> int:
        """Lift this process's penalties for `target`, and (in the background) the shared counts."""
        if self.failures is not None:
            self._background(self._forget(target))
        return self.throttle.unblock(target)

    async def drain(self) -> None:
        """Wait for background rehashes (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def cache_size(self) -> int:
        return len(self._cache)

    # -- the counts every node shares --

    async def _shared_counts(self, ip: str, login: str) -> tuple[int, int] | None:
        """Every node's failures of the pair and of the address; None: this process's own."""
        if self.failures is None or self._shared_paused():
            return None
        try:
            return await self.failures.counts(ip_key(ip), account_key(login), self._config().auth.failure_window)
        except DatabaseError as e:
            self._shared_failed(e)
            return None

    async def _share(self, attempt: Attempt, ok: bool) -> bool | None:
        """Pass the attempt's end on to every node; the alarm by every node's count (None: no
        shared counts, or they failed)."""
        if self.failures is None or self._shared_paused():
            return None
        try:
            if ok:
                await self.failures.succeeded(attempt.ip, attempt.account)
                return False
            if not attempt.counted:
                return False
            n = await self.failures.failed(attempt.ip, attempt.account, self._config().auth.failure_window)
            return n == self._config().auth.max_failures_per_account
        except DatabaseError as e:
            self._shared_failed(e)
            return None

    async def _forget(self, target: str) -> None:
        assert self.failures is not None
        target = target.strip()
        try:
            ipaddress.ip_network(target, strict=False)
        except ValueError:
            ip, account = "", account_key(target)
        else:
            ip, account = (target if "/" in target else ip_key(target)), ""
        try:
            await self.failures.forget(ip, account)
        except DatabaseError as e:
            self._shared_failed(e)

    def _shared_paused(self) -> bool:
        return time.monotonic() < self._shared_paused_until

    def _shared_failed(self, e: DatabaseError) -> None:
        now = time.monotonic()
        self._shared_paused_until = now + SHARED_PAUSE
        if now - self._shared_warned >= 60:
            self._shared_warned = now
            log.warning("login failures of the other nodes unavailable (this process counts alone): %s", e.detail)

    def _background(self, work: Awaitable[object]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- internals --

    @contextlib.contextmanager
    def _own_line(self) -> Any:
        """The login line names proto, user and ip itself, in that order: the connection's context
        keeps only its cid, so these keys are not repeated at the end."""
        with mlog.context(proto="", remote="", user=""):
            yield

    def _refresh(self) -> None:
        """Follow reloads: a new directory empties the cache; new [auth] settings apply."""
        d = self._directory()
        if d is not self._seen_directory:
            self._seen_directory = d
            self._cache.clear()
        a = self._config().auth
        if a is not self._policy_from:
            self._policy_from = a
            self.throttle.update_policy(policy_of(a))

    def _fingerprint(self, login: str, password: str) -> bytes:
        data = account_key(login).encode("utf-8", "surrogatepass") + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).digest()[:16]

    @staticmethod
    def _entry(users: Users, login: str) -> UserRecord | None:
        if len(login) > MAX_LOGIN_LENGTH:
            return None
        return users.entry(login)

    async def _verify(self, users: Users | None, login: str, password: str, fp: bytes,
                      ipk: str) -> tuple[str | None, bool]:
        entry = self._entry(users, login) if users is not None else None
        if entry is not None:
            hit = self._cache.get(fp, entry.password)
            if hit is not None:
                return hit, True
        while True:
            pending = self._pending.get(fp)
            if pending is None:
                break
            await asyncio.wait([pending])  # the same login and password is being checked: share it
            if not pending.cancelled():
                return pending.result(), False
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[fp] = fut
        try:
            async with self._slot(ipk):
                user = await self._check(entry, password)
        except BaseException:
            fut.cancel()  # waiters check again themselves
            raise
        finally:
            if self._pending.get(fp) is fut:
                del self._pending[fp]
        fut.set_result(user)
        if user is not None and entry is not None:
            a = self._config().auth
            self._cache.put(fp, user, entry.password, a.cache_ttl, a.cache_size)
            if passwords.needs_rehash(entry.password):
                self._start_rehash(user, entry.password, password)
        return user, False

    async def _check(self, entry: UserRecord | None, password: str) -> str | None:
        ex = hash_executor(self._config().auth.hash_threads)
        loop = asyncio.get_running_loop()
        self.checks += 1
        if entry is None:  # spend the same time as for a user (no user enumeration by timing)
            dummy = await loop.run_in_executor(ex, passwords.dummy_hash)
            await passwords.verify(dummy, password, executor=ex)
            return None
        return entry.address if await passwords.verify(entry.password, password, executor=ex) else None

    @contextlib.asynccontextmanager
    async def _slot(self, ipk: str) -> AsyncIterator[None]:
        """At most auth.max_checks_per_ip checks of one address at once."""
        slot = self._slots.get(ipk)
        if slot is None:
            slot = self._slots[ipk] = (asyncio.Semaphore(self._config().auth.max_checks_per_ip), [0])
        sem, users = slot
        users[0] += 1
        try:
            async with sem:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._slots[ipk]

    # -- rehash after a good login --

    def _start_rehash(self, user: str, old_hash: str, password: str) -> None:
        if user in self._rehashing:
            return
        self._rehashing.add(user)
        task = asyncio.get_running_loop().create_task(self._rehash(user, old_hash, password))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rehash(self, user: str, old_hash: str, password: str) -> None:
        """Hash again with the current parameters and write it into the users file (locked edit),
        unless the hash changed meanwhile. A file we cannot write is logged once, then left alone."""
        try:
            ex = hash_executor(self._config().auth.hash_threads)
            new = await asyncio.get_running_loop().run_in_executor(ex, passwords.hash_password, password)
            path = self._config().users_file
            changed = await asyncio.to_thread(_write_hash, path, user, old_hash, new)
            if changed:
                mlog.event(log, "password rehashed", user=user)
        except (OSError, ConfigError, ValueError) as e:
            if not self._rehash_warned:
                self._rehash_warned = True
                log.warning("cannot rewrite password hashes with the current parameters in the users file "
                            "(%s); logins work, hashes stay as they are", getattr(e, "strerror", None) or e)
        finally:
            self._rehashing.discard(user)


class _Unchanged(Exception):
    """Leaves UsersFile.edit without saving."""


def _write_hash(path: str, user: str, old_hash: str, new_hash: str) -> bool:
    from mailhaven.auth.users import UsersFile

    try:
        with UsersFile.edit(path, create=False) as uf:
            entry = uf.get_user(user)
            if entry is None or entry.password != old_hash:
                raise _Unchanged  # changed meanwhile (`mailhaven user passwd`): keep theirs
            uf.set_password(user, new_hash)
    except _Unchanged:
        return False
    return True


def of(ctx: seams.Context) -> LoginService:
    """`ctx.logins`, made on first use for contexts built without one (test harnesses)."""
    service = getattr(ctx, "logins", None)
    if not isinstance(service, LoginService):
        service = LoginService(lambda: ctx.config, lambda: getattr(ctx, "directory", None), ctx)
        ctx.logins = service
    return service


__all__ = ["LoginService", "Outcome", "Users", "of", "hash_executor", "policy_of", "METRIC_REASONS"]
