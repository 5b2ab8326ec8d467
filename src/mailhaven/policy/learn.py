"""Training rspamd from the user's own moves: what a move means, and telling rspamd's controller.

Owns: the rules (`for_transfer`, `for_keywords`; pure) that turn what a user did into a class,
"spam" or "ham", or nothing; and `Learner`, which sends the messages to rspamd's controller
(`spam.rspamd_controller_url`: POST /learnspam or /learnham with the message as the body, the
`Password` of `spam.rspamd_password_file` and `Deliver-To: <user>`, so rspamd keeps the statistics
per user when its Bayes classifier has `per_user = true`; rspamd.com/doc/workers/controller.html,
rspamd.com/doc/configuration/statistic.html).
Does not own: noticing the moves (imap/session.py calls `submit` after a COPY, MOVE or STORE the
store has applied), scanning (policy/rspamd.py), the verdict types (policy/spam.py).

The rules (Dovecot's IMAPSieve antispam recipe, which rspamd's docs point to):
- into Junk from any other folder (COPY or MOVE), or the keyword `$Junk` newly set: spam;
- out of Junk into any folder but Trash (COPY or MOVE), or `$NotJunk` newly set: ham. Junk ->
  Trash is the user throwing spam away, not a verdict; moves between two other folders say nothing.
Junk is the folder named "Junk" (the store's \\Junk folder) or any folder with the \\Junk
SPECIAL-USE attribute; Trash likewise (\\Trash). POP3 never moves anything, so it teaches nothing.

The user's command never waits for rspamd: `submit` only queues (user, class, message) items, at
most `max_pending` of them; beyond that items are dropped, counted (`spam_learned_total{result=
"dropped"}`) and logged. `concurrency` worker tasks (started on first use, owned here, cancelled
by `close`) read each message from the store (by the UID it has after the command) and post it,
up to `1 + len(retry_delays)` times when rspamd is unreachable, times out or answers 5xx. A 4xx is
a refusal (logged as a WARNING with rspamd's reason, not retried); 208 ("has been already learned
as ...") is fine ("already"), and so is 204 ("skipped": rspamd's learn condition said no, e.g. its
Bayes already puts the message in that class, or it has too few words). Messages over
`spam.max_scan_size` are not sent ("skipped" too), nor are messages expunged meanwhile ("gone").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from mailhaven import log as mlog
from mailhaven.errors import MailboxNotFound
from mailhaven.store.model import MessageNotFound

logger = logging.getLogger("mailhaven.policy.learn")

Verdict = Literal["spam", "ham"]
JUNK = "Junk"
TRASH = "Trash"
JUNK_KEYWORD = "$junk"  # RFC 5788 / IANA IMAP keywords registry, compared case-insensitively
NOT_JUNK_KEYWORD = "$notjunk"
RESULTS = ("learned", "already", "refused", "failed", "dropped", "skipped", "gone")
MAX_REPLY = 64 * 1024  # bytes of the controller's reply we read (a short JSON object)
MAX_HEAD = 32 * 1024  # the status line (rspamd puts its reason there) and the header fields
MAX_HEADERS = 100
DEFAULT_RETRY_DELAYS = (1.0, 4.0)


# --- the rules (pure) ---------------------------------------------------------------------------------


def for_transfer(source_junk: bool, dest_junk: bool, dest_trash: bool) -> Verdict | None:
    """The class a COPY or MOVE from a source into a destination folder teaches, or None."""
    if dest_junk and not source_junk:
        return "spam"
    if source_junk and not dest_junk and not dest_trash:
        return "ham"
    return None


def for_keywords(before: Iterable[str], after: Iterable[str]) -> Verdict | None:
    """The class a flag change teaches: $Junk newly set -> spam, $NotJunk newly set -> ham, both or
    neither -> None."""
    old = {f.lower() for f in before}
    new = {f.lower() for f in after} - old
    junk, not_junk = JUNK_KEYWORD in new, NOT_JUNK_KEYWORD in new
    if junk and not not_junk:
        return "spam"
    if not_junk and not junk:
        return "ham"
    return None


def folder_is(name: str, special_use: str | None, kind: str) -> bool:
    """Is this folder the user's Junk (kind "Junk") or Trash (kind "Trash")? By SPECIAL-USE
    attribute (RFC 6154) or by the store's folder name."""
    return special_use == "\\" + kind or name == kind


# --- the controller client ----------------------------------------------------------------------------


class MessageSource(Protocol):
    """Where a queued message is read from when its turn comes (a store Mailbox)."""

    async def read(self, uid: int) -> bytes: ...


@dataclass(frozen=True)
class _Item:
    user: str
    verdict: Verdict
    source: MessageSource
    uid: int


Counter = Callable[[str, str], None]  # (class, result): metrics.spam_learned


class Learner:
    """Sends messages to rspamd's controller in the background. Use from one event loop."""

    def __init__(self, url: str, *, password: str, timeout: float, max_pending: int, concurrency: int,
                 max_size: int, count: Counter | None = None,
                 retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS) -> None:
        self.url = url.rstrip("/")
        self.password = password
        self.timeout = timeout
        self.max_pending = max_pending
        self.concurrency = concurrency
        self.max_size = max_size
        self.retry_delays = tuple(retry_delays)
        self._count = count
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pending = 0  # queued + being worked on
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        return self._pending

    def counted(self, verdict: str, result: str, n: int = 1) -> None:
        if self._count is not None:
            for _ in range(n):
                self._count(verdict, result)

    def submit(self, user: str, verdict: Verdict, source: MessageSource, uids: Sequence[int]) -> int:
        """Queue these messages for learning; never blocks. Returns how many were queued (the rest
        were dropped: the queue holds at most max_pending)."""
        if self._closed or not uids:
            return 0
        room = max(0, self.max_pending - self._pending)
        taken, dropped = list(uids[:room]), len(uids) - min(room, len(uids))
        if dropped:
            self.counted(verdict, "dropped", dropped)
            mlog.event(logger, "spam learn dropped", level=logging.WARNING, learn_user=user, learn=verdict,
                       messages=dropped, reason=f"{self._pending} messages already waiting (spam.learn_max_pending)")
        if not taken:
            return 0
        self._start_workers()
        for uid in taken:
            self._queue.put_nowait(_Item(user, verdict, source, uid))
        self._pending += len(taken)
        self._idle.clear()
        return len(taken)

    async def wait_idle(self, seconds: float) -> bool:
        """True once nothing is queued or in flight (within `seconds`)."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _start_workers(self) -> None:
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        for i in range(self.concurrency):
            # A fresh context: the workers outlive the session that first submitted, and the log
            # must not stamp that session's user and connection on every later line.
            task = loop.create_task(self._work(), name=f"spam-learn-{i}", context=contextvars.Context())
            self._tasks.add(task)

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                result = await self._learn(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a worker never dies of one message
                logger.exception("spam learn: unexpected error")
                result = "failed"
            finally:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()
            self.counted(item.verdict, result)

    async def _learn(self, item: _Item) -> str:
        try:
            message = await item.source.read(item.uid)
        except (MessageNotFound, MailboxNotFound):  # expunged, or its folder deleted, meanwhile
            return "gone"
        if len(message) > self.max_size:
            return "skipped"
        attempts = 1 + len(self.retry_delays)
        why = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self.retry_delays[attempt - 1])
            status, text, why = await self._post(item, message)
            if status == 200:
                mlog.event(logger, "spam learned", level=logging.DEBUG, learn_user=item.user, learn=item.verdict)
                return "learned"
            if status == 208:  # "<message-id> has been already learned as spam, ignore it"
                return "already"
            if status == 204:  # rspamd's learn condition said no: "already in class ham", too few tokens
                mlog.event(logger, "spam learn skipped by rspamd", level=logging.DEBUG, learn_user=item.user,
                           learn=item.verdict, reason=text)
                return "skipped"
            if 400 <= status < 500:
                mlog.event(logger, "spam learn refused", level=logging.WARNING, learn_user=item.user,
                           learn=item.verdict, status=status, reason=text)
                return "refused"
        mlog.event(logger, "spam learn failed", level=logging.WARNING, learn_user=item.user, learn=item.verdict,
                   attempts=attempts, reason=why)
        return "failed"

    async def _post(self, item: _Item, message: bytes) -> tuple[int, str, str]:
        """(HTTP status or 0, rspamd's error text, why it failed when status is 0 or 5xx)."""
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                status, text = await _http_post(self.url, f"/learn{item.verdict}", message,
                                                {"Deliver-To": item.user, "Password": self.password})
        except TimeoutError:
            return 0, "", f"no answer within {time.monotonic() - t0:.1f}s"
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            return 0, "", f"unreachable: {type(e).__name__}"
        return status, text, f"HTTP {status} {text}".strip()

    async def close(self) -> None:
        """Stop the workers (what is still queued is not learned) and close the connections."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


# --- what the IMAP session calls after a command the store applied ----------------------------------------


class _Folders(Protocol):
    async def list_mailboxes(self) -> Sequence[_FolderInfo]: ...


class _FolderInfo(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def special_use(self) -> str | None: ...


class _Folder(MessageSource, Protocol):
    @property
    def name(self) -> str: ...


async def teach_transfer(learner: Learner, account: _Folders, user: str, source: str, dest: _Folder,
                         uids: Sequence[int], *, command: str) -> None:
    """After a COPY or MOVE from folder `source` into `dest` that gave `dest` these UIDs: queue them
    as spam or ham when the rules say so. Never raises (the command has succeeded already)."""
    try:
        uses = {info.name: info.special_use for info in await account.list_mailboxes()}
        verdict = for_transfer(folder_is(source, uses.get(source), JUNK), folder_is(dest.name, uses.get(dest.name), JUNK),
                               folder_is(dest.name, uses.get(dest.name), TRASH))
    except Exception:  # noqa: BLE001 - learning is best effort; the user's command stands
        logger.exception("spam learn: could not list the folders of %s", user)
        return
    if verdict is not None:
        _queue(learner, user, verdict, dest, uids, why=f"{command} {source} -> {dest.name}")


def teach_flags(learner: Learner, user: str, mailbox: _Folder, before: dict[int, frozenset[str]],
                after: Iterable[tuple[int, frozenset[str]]]) -> None:
    """After a STORE: queue the messages that newly got $Junk (spam) or $NotJunk (ham)."""
    by_class: dict[Verdict, list[int]] = {"spam": [], "ham": []}
    for uid, flags in after:
        verdict = for_keywords(before.get(uid, frozenset()), flags)
        if verdict is not None:
            by_class[verdict].append(uid)
    for verdict, uids in by_class.items():
        if uids:
            _queue(learner, user, verdict, mailbox, uids, why=f"STORE {mailbox.name}")


def _queue(learner: Learner, user: str, verdict: Verdict, source: MessageSource, uids: Sequence[int],
           why: str) -> None:
    queued = learner.submit(user, verdict, source, uids)
    if queued:
        mlog.event(logger, "spam learn queued", learn=verdict, messages=queued, command=why)


async def _http_post(base: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """One POST to the controller on a connection of its own: (status, rspamd's reason). Our own few
    lines of HTTP/1.1, because rspamd 3.4's controller answers a skipped learn with a 204 that has
    a body (its reason in the status line and as JSON), which strict HTTP parsers such as aiohttp's
    refuse; it closes the connection after every reply anyway. Every read is bounded. Raises
    OSError (connection), ValueError (not an HTTP reply, or a header value with a line break)."""
    url = urllib.parse.urlsplit(base)
    host, port = url.hostname or "", url.port or 80
    lines = [f"POST {url.path.rstrip('/')}{path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close",
             f"Content-Length: {len(body)}"]
    for name, value in headers.items():
        if value:
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"line break in {name}")
            lines.append(f"{name}: {value}")
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        writer.write(body)
        await writer.drain()
        status, reason, length = parse_head(await reader.readuntil(b"\r\n\r\n"))
        want, chunks = min(length if length is not None else MAX_REPLY, MAX_REPLY), []
        while want > 0 and (chunk := await reader.read(want)):  # to Content-Length, or the close
            chunks.append(chunk)
            want -= len(chunk)
        reply = b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return status, _error_text(reply) or _printable(reason)


def parse_head(head: bytes) -> tuple[int, str, int | None]:
    """An HTTP/1.x reply's status line and header fields (RFC 9112 §4, §5) -> (status, reason
    phrase, Content-Length or None). Raises ValueError for anything else."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isascii() or not code.isdigit():
        raise ValueError("not an HTTP reply")
    if len(lines) > MAX_HEADERS:
        raise ValueError("too many header fields")
    length: int | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        value = value.strip(" \t")
        if colon and name.lower() == "content-length" and value.isascii() and value.isdigit() and len(value) < 19:
            length = int(value)
    return int(code), reason, length


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)[:300]


def _error_text(body: bytes) -> str:
    """rspamd's {"error": "..."} as one short printable line ("" when there is none)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, str):
        return ""
    return _printable(error)


def read_password(path: str) -> str:
    """The controller password: the file's first line, without surrounding white space."""
    if not path:
        return ""
    with open(path, encoding="utf-8") as f:
        return f.readline().strip()


__all__ = ["Learner", "MessageSource", "Verdict", "for_transfer", "for_keywords", "folder_is", "read_password",
           "teach_transfer", "teach_flags", "parse_head", "RESULTS", "JUNK", "TRASH"]
