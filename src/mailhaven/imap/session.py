"""One IMAP connection's logic: a `cmd_<verb>` method per command, over the store (RFC 3501 §6).

Owns: what every command does and the exact responses (untagged data, tagged OK/NO/BAD with RFC 5530
response codes), the connection state (state.py's table), authentication (LOGIN, AUTHENTICATE PLAIN
and LOGIN with SASL-IR), the selected mailbox and its view (view.py: sequence numbers and pending
EXPUNGE/EXISTS/FETCH updates, sent only where RFC 3501 §7.4.1 allows), who sees which message as
\\Recent, IDLE (RFC 2177), ESEARCH (RFC 4731), "$" (SEARCHRES, RFC 5182), SORT's reads and
response (RFC 5256), CONTEXT=SEARCH/SORT (RFC 5267 §4: PARTIAL; updating searches looked at again
on each new snapshot, their REMOVEFROM of expunged messages before the EXPUNGEs, the rest after the
other updates; context.py keeps them and words the lines), CONDSTORE and QRESYNC (RFC 7162: whether
the session enabled them, HIGHESTMODSEQ, MODSEQ in STORE responses, [MODIFIED], VANISHED (EARLIER) from the store's
tombstones, [CLOSED]), MULTIAPPEND (RFC 3502: all or none), COMPRESS (RFC 4978: when, not how),
UTF8=ACCEPT (RFC 6855: UTF-8 mailbox names) and IMAP4rev2 (RFC 9051: what ENABLE IMAP4rev2 changes),
the one error-to-reply mapping (`_reply_for`), output batching, and
the command loop over the client's bytes: framing.Framer -> parser.parse_command -> a handler, "+"
continuations for synchronising literals, the literal limit (small before login,
smtp.max_message_size after), a new framer at STARTTLS, the BYE after imap.max_bad_commands BADs.
Does not own: the connection (server.py: sockets, TLS handshakes, waiting, timeouts), command
syntax (framing.py, parser.py), FETCH rendering (fetch.py, fetchitems.py) and its cache
(msgcache.py), LIST/LSUB matching and LIST-EXTENDED's rows (listing.py), STATUS lines (status.py,
also after LIST-STATUS rows), OBJECTID's ids and SAVEDATE's dates (derived.py), SEARCH (search.py,
run by searchadapt.py), sort keys and order (sort.py), threading (thread.py), storage (store/).

Sans-IO (DESIGN.md, as pop3/protocol.py): the session never touches a socket. It owns the command
framing (a framing.Framer), so it takes the client's raw bytes and gives back events:

    session = Session(ctx, listener=..., ip=..., loopback=..., tls_active=..., starttls_offered=...,
                      config=cfg)
    write(session.greeting())
    while True:
        ev = await session.next_event()
        Send(data)          -> write data (flow control: await the write before asking again)
        Wait(changes, t)    -> read input and session.receive_data(it); when `changes` is set
                               (IDLE), also wake on changes.wait() or after t seconds, feeding
                               nothing (the session then looks at the store itself)
        StartTls()          -> the OK was in an earlier Send; drop unread input, handshake,
                               then session.tls_started()
        StartCompress()     -> the OK was in an earlier Send; from now on deflate every Send and
                               inflate all input (RFC 4978, compress.py)
        LoggedIn(user)      -> the connection has logged in (no login deadline, not evictable)
        Close(reason)       -> close the connection (any BYE was in an earlier Send)

Command handlers are async and await the store and the login service (through the context's
seams), so the core is not pure; what it never does is read or write the connection. Output is
handed out per command, and in OUTPUT_BATCH pieces for large FETCH/STORE responses, so the shell's
flow control bounds the memory of a client that does not read. A command that needs more input
(AUTHENTICATE's responses, IDLE's DONE) or a TLS handshake is written as an async generator: it
yields the event and resumes when the shell asks for the next one.

How changes reach a selected session: it subscribes to the store's change hub at login. Before a
command runs (and while idling) any event about the selected mailbox, or POLL_INTERVAL without one
(to notice other programs' disk changes), makes it take a new snapshot and `view.sync()` it; after
the command, before the tagged reply, `view.flush()` sends what is pending, EXPUNGE only where
allowed (not during FETCH/STORE/SEARCH by sequence number).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from mailhaven import log as mhlog
from mailhaven import metrics, seams
from mailhaven import quota as quotamod
from mailhaven.auth import login as logins
from mailhaven.auth import sasl
from mailhaven.errors import BadMailboxName, MailboxExists, MailboxNotFound, MailError, OverQuota, TempFailure
from mailhaven.imap import binary as binarymod
from mailhaven.imap import commands as C
from mailhaven.imap import context as contextmod
from mailhaven.imap import derived, fetch, listing, searchadapt, seqset
from mailhaven.imap import sort as sortmod
from mailhaven.imap import status as statusmod
from mailhaven.imap import thread as threadmod
from mailhaven.imap.commands import ParseError
from mailhaven.imap.fetchitems import header_end
from mailhaven.imap.framing import NEED_DATA, Framer, Reject, SendContinuation
from mailhaven.imap.listing import DELIMITER, wire_name
from mailhaven.imap.msgcache import CACHE
from mailhaven.imap.parser import parse_command
from mailhaven.imap.selected import (
    Selected,
    already_seen,
    keywords_of,
    match_infos,
    read_many,
    shared_snapshot,
)
from mailhaven.imap.seqset import SequenceSet
from mailhaven.imap.seqset import render as render_set
from mailhaven.imap.state import NO_EXPUNGE_DURING, State, allowed
from mailhaven.imap.view import BadSequence, View, render_flags
from mailhaven.policy import learn
from mailhaven.store import (
    Expunged,
    FlagsChanged,
    MailboxesChanged,
    MailboxHasChildren,
    MessageInfo,
    MessageNotFound,
    MessagesAdded,
    Overflow,
)
from mailhaven.store.changes import Subscription

log = logging.getLogger("mailhaven.imap")

SERVER_NAME = "Mailhaven"
SEEN, DELETED = "\\Seen", "\\Deleted"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
POLL_INTERVAL = 30.0  # seconds between snapshots with no change event (disk changes by others; Dovecot: 30 s)
IDLE_KEEPALIVE = 120.0  # "* OK Still here" while idling (NAT and firewall timers)
OUTPUT_BATCH = 256 * 1024  # write to the socket once this much output is buffered
STORE_CHUNK = 10_000  # messages per store_flags call (one transaction); other sessions get the
# account lock between steps of a larger set
FETCH_BATCH = 256  # messages read and rendered per step of a FETCH with message data
META_BATCH = 4096  # messages rendered per step of a FETCH of metadata only (FLAGS, UID, sizes, dates)

# RFC 3501 §7.2.1 capabilities, in the order sent. Only what this module implements.
BASE_CAPABILITIES = ("IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT",
                     "CHILDREN", "SPECIAL-USE", "UIDPLUS", "MOVE", "CONDSTORE", "QRESYNC", "ESEARCH",
                     "SEARCHRES", "WITHIN", "CONTEXT=SEARCH", "CONTEXT=SORT", "SORT", "SORT=DISPLAY", "ESORT",
                     "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "BINARY", "MULTIAPPEND", "UTF8=ACCEPT")
# RFC 4978 §3: after login (as Dovecot), until compression is on.
COMPRESS_CAPABILITY = "COMPRESS=DEFLATE"
AUTH_MECHANISMS = ("PLAIN", "LOGIN")
# RFC 9208 §3.1, after login (as Dovecot): GETQUOTA/GETQUOTAROOT and both resources; no QUOTASET.
QUOTA_CAPABILITIES = ("QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE")
QUOTA_ROOT = ""  # the one quota root of every user: all their folders
# Mailbox listing and identity extensions: LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819),
# STATUS=SIZE (RFC 8438), CREATE-SPECIAL-USE (RFC 6154 §3), OBJECTID (RFC 8474), SAVEDATE (RFC 8514).
MAILBOX_CAPABILITIES = ("LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE", "CREATE-SPECIAL-USE", "OBJECTID",
                        "SAVEDATE")
# RFC 6154 §3: the uses CREATE may give a mailbox; \All and \Flagged would need virtual mailboxes.
CREATE_USES = {u.lower(): u for u in ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")}


PREAUTH_MAX_LITERAL = 8 * 1024  # literals before login: a user name or password, never a message


# --------------------------------------------------------------------------- events for the shell


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes to the client."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Wait:
    """The session needs input. While idling (`changes` set) it also wants to run again when the
    store has news for the user (`await changes.wait()`) or after `timeout` seconds, with no input."""

    changes: Subscription | None = None  # the session's store subscription while idling
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class StartTls:
    """Start TLS now (RFC 3501 §6.2.1): input received before the handshake must be dropped."""


@dataclass(frozen=True, slots=True)
class StartCompress:
    """Compress both directions from now on (RFC 4978 §3: raw DEFLATE, the tagged OK was in an
    earlier Send and goes out uncompressed; input that follows it is compressed)."""


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """The session authenticated as `user`."""

    user: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection; `reason` is for the session's log line."""

    reason: str


Event = Send | Wait | StartTls | StartCompress | LoggedIn | Close
WAIT_INPUT: Final = Wait()


class Flush(enum.Enum):
    """A streaming handler's "hand out the buffered output if a batch is full" (OUTPUT_BATCH)."""

    FLUSH = "flush"


# What a streaming command handler (an async generator) yields: an event for the shell, FLUSH, or,
# last, its tagged result text ("OK ...", "NO ...").
FLUSH: Final = Flush.FLUSH
Step = Event | Flush | str


class No(Exception):
    """A tagged NO: `code` is an RFC 5530 response code without brackets, or None."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class Bad(No):
    """A tagged BAD (counted towards max_bad_commands)."""


class SessionEnd(Exception):
    """Close the connection after the output so far (BYE already queued)."""


# --------------------------------------------------------------------------- \Recent registry

# RFC 3501 §2.3.2: a message is \Recent only in the first session told about it, whichever worker
# process or node it runs in: the mark (the highest UID told) is kept in the account's index and
# moved under its lock (Account.claim_recent), so it also survives a restart. In front of it, per
# Store object, (user, mailbox, uidvalidity) -> the highest UID a session of THIS process already
# asked for: only the first session of a process to see new UIDs asks the index, so waking 10,000
# IDLE sessions costs one claim per process, not one each (and none when nothing is new).
_asked: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, int], int]] = weakref.WeakKeyDictionary()


def _unasked(store: Any, key: tuple[str, str, int], uids: Sequence[int]) -> list[int]:
    """The UIDs no session of this process asked to claim yet; marks them asked."""
    try:
        asked = _asked.setdefault(store, {})
    except TypeError:  # a store that cannot be weakly referenced: no \Recent at all
        return []
    hi = asked.get(key, 0)
    new = [u for u in uids if u > hi]
    if new:
        asked[key] = max(new)
    return new


# --------------------------------------------------------------------------- helpers

_SAFE = re.compile(r"[^\x20-\x7e]")


def _safe(text: str) -> str:
    return _SAFE.sub("?", text)[:200]


_WHERE = {
    State.NOT_AUTHENTICATED: "before login",
    State.AUTHENTICATED: "in the authenticated state",
    State.SELECTED: "with a mailbox selected",
    State.LOGOUT: "after logout",
}


# --------------------------------------------------------------------------- the session


class Session:
    """One connection's IMAP state: `greeting()`, then `receive_data()` / `await next_event()`."""

    def __init__(self, ctx: seams.Context, *, listener: str, ip: str, loopback: bool, tls_active: bool,
                 starttls_offered: bool, config: Any) -> None:
        self.ctx = ctx
        self.listener = listener
        self.ip = ip
        self.loopback = loopback
        self.tls_active = tls_active
        self.starttls_offered = starttls_offered
        self.config = config
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.account: Any = None
        self.sub: Subscription | None = None  # the user's store changes, from login on
        self.sel: Selected | None = None
        self.condstore = False  # RFC 7162 §3.1: enabled by ENABLE or a CONDSTORE enabling command
        self.qresync = False  # RFC 7162 §3.2: enabled by ENABLE QRESYNC only (implies CONDSTORE)
        self._vanished_sent = False  # this command sent VANISHED: its tagged OK gets HIGHESTMODSEQ
        self.compressed = False  # RFC 4978: COMPRESS DEFLATE is on
        self.utf8 = False  # RFC 6855 §3: ENABLE UTF8=ACCEPT (or IMAP4rev2)
        self.rev2 = False  # RFC 9051: ENABLE IMAP4rev2 (no \Recent, SEARCH answered as ESEARCH)
        self.commands = 0
        self.bad = 0
        self._out: list[bytes] = []
        self._outlen = 0
        self._max_literal = PREAUTH_MAX_LITERAL
        self.framer = self._new_framer()
        self._events: AsyncIterator[Event] = self._run()
        self._closed: Close | None = None
        self._handlers: dict[str, Callable[[Any], Awaitable[str]]] = {
            "CAPABILITY": self.cmd_capability, "NOOP": self.cmd_noop, "LOGOUT": self.cmd_logout,
            "ID": self.cmd_id, "LOGIN": self.cmd_login, "ENABLE": self.cmd_enable, "SELECT": self.cmd_select,
            "EXAMINE": self.cmd_select, "CREATE": self.cmd_create, "DELETE": self.cmd_delete,
            "RENAME": self.cmd_rename, "SUBSCRIBE": self.cmd_subscribe, "UNSUBSCRIBE": self.cmd_unsubscribe,
            "LIST": self.cmd_list, "LSUB": self.cmd_lsub, "STATUS": self.cmd_status, "APPEND": self.cmd_append,
            "NAMESPACE": self.cmd_namespace, "CHECK": self.cmd_check,
            "CLOSE": self.cmd_close, "UNSELECT": self.cmd_unselect, "EXPUNGE": self.cmd_expunge,
            "SEARCH": self.cmd_search, "SORT": self.cmd_sort, "THREAD": self.cmd_thread, "COPY": self.cmd_copy,
            "GETQUOTA": self.cmd_getquota, "GETQUOTAROOT": self.cmd_getquotaroot, "SETQUOTA": self.cmd_setquota,
            "MOVE": self.cmd_move, "CANCELUPDATE": self.cmd_cancelupdate,
        }
        # Handlers that stream output, need more input or a TLS handshake: async generators of Step.
        self._streams: dict[str, Callable[[Any], AsyncIterator[Step]]] = {
            "STARTTLS": self.cmd_starttls, "AUTHENTICATE": self.cmd_authenticate, "IDLE": self.cmd_idle,
            "FETCH": self.cmd_fetch, "STORE": self.cmd_store, "COMPRESS": self.cmd_compress,
        }

    # -- input and events -----------------------------------------------------------------------

    def _new_framer(self) -> Framer:
        imap = self.config.imap
        return Framer(max_line=imap.max_line_length, max_literal=self._max_literal,
                      max_in_flight=imap.max_in_flight)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client (any fragmentation), after a Wait."""
        self.framer.receive_data(data)

    async def next_event(self) -> Event:
        """The next thing for the shell to do (see the module docstring). After Close, Close again."""
        if self._closed is not None:
            return self._closed
        ev = await anext(self._events)
        if isinstance(ev, Close):
            self._closed = ev
        return ev

    def tls_started(self) -> None:
        """The shell completed the TLS handshake asked for by StartTls."""
        self.tls_active = True

    def close(self) -> None:
        """The connection is gone: let go of the store subscription."""
        if self.sub is not None:
            self.sub.close()

    def _take(self) -> Send:
        """The output buffered so far as one Send."""
        data = b"".join(self._out)
        self._out.clear()
        self._outlen = 0
        return Send(data)

    async def _run(self) -> AsyncIterator[Event]:
        """The command loop: framer -> parser -> execute, until a Close."""
        max_bad = self.config.imap.max_bad_commands
        nesting = self.config.imap.max_nesting
        while True:
            ev = self.framer.next_command()
            if ev is NEED_DATA:
                yield WAIT_INPUT
                continue
            if isinstance(ev, SendContinuation):
                yield Send(ev.LINE)  # RFC 3501 §7.5
                continue
            if isinstance(ev, Reject):
                self.reject(ev.response())
                if ev.close:
                    yield self._take()
                    yield Close("protocol error")
                    return
            else:
                try:
                    cmd = parse_command(ev, max_nesting=nesting, utf8=self.utf8)
                except ParseError as e:
                    if e.search_save and self.sel is not None:  # RFC 5182 §2.1: a failed SAVE empties "$"
                        self.sel.saved = ()
                    self.reject(e.response())
                else:
                    async for out in self.execute(cmd):
                        yield out
                        if isinstance(out, Close):
                            return
            if self.bad >= max_bad:
                self.emit(b"* BYE Too many invalid IMAP commands.\r\n")
                yield self._take()
                yield Close("too many bad commands")
                return
            if self._out:
                yield self._take()

    # -- output ---------------------------------------------------------------------------------

    def emit(self, data: bytes) -> None:
        self._out.append(data)
        self._outlen += len(data)

    # -- capabilities ---------------------------------------------------------------------------

    @property
    def plaintext_ok(self) -> bool:
        """RFC 3501 §6.2.3, RFC 8314 §3: passwords only over TLS, or on loopback when allowed."""
        return self.tls_active or (self.loopback and self.config.auth.allow_plaintext_loopback)

    def capabilities(self) -> str:
        caps = [*BASE_CAPABILITIES, *MAILBOX_CAPABILITIES]
        if self.state is State.NOT_AUTHENTICATED:
            if self.starttls_offered and not self.tls_active:
                caps.append("STARTTLS")
            if self.plaintext_ok:
                caps.extend("AUTH=" + m for m in AUTH_MECHANISMS)
            else:
                caps.append("LOGINDISABLED")  # RFC 3501 §6.2.3
        else:
            if not self.compressed:
                caps.append(COMPRESS_CAPABILITY)
            if quotamod.of(self.ctx) is not None:
                caps.extend(QUOTA_CAPABILITIES)
        return " ".join(caps)

    def greeting(self) -> bytes:
        return f"* OK [CAPABILITY {self.capabilities()}] {SERVER_NAME} ready.\r\n".encode("ascii")

    # -- dispatch -------------------------------------------------------------------------------

    def reject(self, response: bytes) -> None:
        """A framer Reject or ParseError: queue its response and count it when it is a BAD."""
        if b" BAD " in response[:80]:
            self.bad += 1
        self.emit(response)

    async def execute(self, cmd: C.AnyCommand) -> AsyncIterator[Event]:
        """Run one parsed command: its events, its output handed out as Sends (the tagged reply
        last), LoggedIn when it logged in, Close when it ended the session."""
        self.commands += 1
        verb = cmd.verb
        tag = cmd.tag
        if not allowed(self.state, verb):
            self.bad += 1
            self.emit(f"{tag} BAD {verb} is not allowed {_WHERE[self.state]}.\r\n".encode("ascii"))
            yield self._take()
            return
        end: SessionEnd | None = None
        label = ("UID " + verb) if getattr(cmd, "uid", False) else verb
        was_authenticated = self.user is not None
        result = ""
        try:
            with metrics.of(self.ctx).time_command("imap", label):
                stream = self._streams.get(verb)
                if stream is None:
                    result = await self._handlers[verb](cmd)
                else:
                    async for step in stream(cmd):
                        if isinstance(step, str):
                            result = step
                        elif step is FLUSH:
                            if self._outlen >= OUTPUT_BATCH:
                                yield self._take()
                        else:
                            assert not isinstance(step, Flush)
                            if self._out:
                                yield self._take()
                            yield step
        except SessionEnd as e:
            result, end = "", e
        except Exception as exc:  # every other failure becomes one tagged reply
            kind, text = self._reply_for(exc, verb)
            if kind == "BAD":
                self.bad += 1
            result = f"{kind} {text}"
        if end is None and self.state is State.SELECTED:
            try:
                await self.send_updates(not (verb in NO_EXPUNGE_DURING and not getattr(cmd, "uid", False)))
            except SessionEnd as e:
                end = e
            except Exception:  # the command's own reply still goes out; updates come next time
                log.warning("imap: updates for the selected mailbox failed", exc_info=True)
        if self._vanished_sent:
            self._vanished_sent = False
            if result.startswith("OK ") and not result.startswith("OK [") and self.sel is not None:
                # RFC 7162 §3.2.10: expunges carry no MODSEQ, so the client learns the HIGHESTMODSEQ
                # that covers them here (as Dovecot 2.3)
                result = f"OK [HIGHESTMODSEQ {self.sel.view.modseq}] {result[3:]}"
        if result:
            self.emit(f"{tag} {result}\r\n".encode())
        if self._out:
            yield self._take()
        if not was_authenticated and self.user is not None:
            yield LoggedIn(self.user)
        if end is not None:
            yield Close(str(end))

    def _reply_for(self, exc: BaseException, verb: str) -> tuple[str, str]:
        """THE mapping of failures to tagged replies (STYLE rule 4). Returns (kind, text)."""
        if isinstance(exc, Bad):
            return "BAD", (f"[{exc.code}] " if exc.code else "") + _safe(exc.text)
        if isinstance(exc, No):
            return "NO", (f"[{exc.code}] " if exc.code else "") + _safe(exc.text)
        if isinstance(exc, BadSequence):
            return "BAD", "Error in IMAP command " + verb + ": Invalid messageset"
        if isinstance(exc, binarymod.UnknownCte):
            return "NO", "[UNKNOWN-CTE] Unknown Content-Transfer-Encoding"  # RFC 3516 §4.3, as Dovecot
        if isinstance(exc, binarymod.InvalidData):
            return "NO", "[PARSE] Invalid data in MIME part"  # as Dovecot 2.3
        if isinstance(exc, MailboxNotFound):
            return "NO", "[NONEXISTENT] Mailbox doesn't exist."  # RFC 5530 §3
        if isinstance(exc, MailboxExists):
            return "NO", "[ALREADYEXISTS] Mailbox already exists."
        if isinstance(exc, BadMailboxName):
            return "NO", "[CANNOT] Invalid mailbox name: " + _safe(exc.text)
        if isinstance(exc, MailboxHasChildren):
            return "NO", "[HASCHILDREN] Mailbox has children, delete them first."  # RFC 9051 §7.1
        if isinstance(exc, MessageNotFound):
            return "NO", "[EXPUNGEISSUED] Some of the requested messages no longer exist."
        if isinstance(exc, OverQuota):
            return "NO", "[OVERQUOTA] Quota exceeded (mailbox for user is full)"  # RFC 9208 §4.2
        if isinstance(exc, TempFailure):
            log.warning("imap %s failed: %s", verb, exc, exc_info=exc)
            return "NO", "[UNAVAILABLE] Temporary failure, try again later."
        if isinstance(exc, MailError):
            return "NO", "[CANNOT] " + _safe(exc.text)
        log.error("imap %s: internal error", verb, exc_info=exc)
        return "NO", "[SERVERBUG] Internal error occurred. Refer to server log for more information."

    # -- updates for the selected mailbox --------------------------------------------------------

    def _drain_events(self) -> bool:
        """Consume pending change events; True if one may concern the selected mailbox."""
        sub = self.sub
        if sub is None:
            return False
        hit = False
        name = self.sel.mailbox.name if self.sel is not None else None
        while (ev := sub.get_nowait()) is not None:
            if isinstance(ev, (MessagesAdded, FlagsChanged, Expunged)):
                this = ev.mailbox == name and not (self.sel is not None and already_seen(self.sel, ev))
            else:
                this = isinstance(ev, (Overflow, MailboxesChanged)) and name is not None
            if this and self.sel is not None:
                self.sel.event_seq = sub.last_seq
            hit = hit or this
        return hit

    async def refresh(self, *, force: bool = False) -> None:
        """Bring the view up to date with the store if anything changed. Only FLAGS for a new keyword
        is queued (allowed at any time); the rest waits for send_updates."""
        hit = self._drain_events()
        sel = self.sel
        if sel is None:
            return
        due = sel.synced_at + POLL_INTERVAL  # a read begun since then shows other programs' changes
        poll = time.monotonic() >= due
        if not (force or poll or hit or sel.snap is None):
            return
        try:
            # a read begun after the events taken (and the poll's due time) will do, shared with
            # every session they woke (selected.shared_snapshot); NOOP (force) reads anew
            snap = await (sel.mailbox.snapshot() if force else shared_snapshot(sel, due if poll else 0.0))
        except MailboxNotFound:
            self.sel = None
            self.state = State.AUTHENTICATED
            self.emit(b"* BYE Selected mailbox was deleted, have to disconnect.\r\n")
            raise SessionEnd("mailbox deleted") from None
        if snap.uidvalidity != sel.uidvalidity:  # RFC 3501 §2.3.1.1: cannot renumber in place
            self.emit(b"* BYE UIDVALIDITY changed, reconnect.\r\n")
            raise SessionEnd("uidvalidity changed")
        sel.snap = snap
        sel.generation += 1
        if force or poll:  # a shared read may be older: else the poll for other programs' changes stays due
            sel.synced_at = time.monotonic()
        new = sel.view.sync(snap)
        if new and not sel.readonly:
            sel.view.mark_recent(await self._claim_recent(sel, new))
        self._note_keywords(sel, snap.messages)

    async def send_updates(self, allow_expunge: bool) -> None:
        await self.refresh()
        sel = self.sel
        if sel is None:
            return
        if sel.updating and allow_expunge:
            self._expunged_from_contexts(sel)
        for line in sel.view.flush(allow_expunge):
            if line.startswith(b"* VANISHED "):
                self._vanished_sent = True
            self.emit(line)
        if sel.updating:
            await self._update_contexts(sel)

    def _expunged_from_contexts(self, sel: Selected) -> None:
        """RFC 5267 §4.3: an updating result loses its expunged messages before the EXPUNGEs are
        sent, in the numbers the client still holds (as Dovecot 2.3)."""
        view = sel.view
        for up in sel.updating:
            if not any(view.is_gone(u) for u in up.result):
                continue
            removed, _ = contextmod.changes(up.result, [u for u in up.result if not view.is_gone(u)],
                                            up.sort is not None)
            self.emit(contextmod.update_line(up, removed, [], self._numbering(up)))
            up.result = contextmod.uid_array(u for u in up.result if not view.is_gone(u))

    async def _update_contexts(self, sel: Selected) -> None:
        """RFC 5267 §4.3: each updating search run again on a new snapshot; what left and joined its
        result is told in one ESEARCH line."""
        memo: dict[tuple[int, int], list[int]] = {}  # the searches began together share their changes
        for up in sel.updating:
            if up.generation == sel.generation:
                continue
            new = await self._context_result(sel, up, memo)
            up.generation = sel.generation
            removed, added = contextmod.changes(up.result, new, up.sort is not None)
            up.result = contextmod.uid_array(new)
            self.emit(contextmod.update_line(up, removed, added, self._numbering(up)))

    def _numbering(self, up: contextmod.Updating) -> Callable[[int], int | None]:
        """UID -> what an update names: the UID itself, or its sequence number (every message an
        update names is numbered: removals are told before EXPUNGE, additions after EXISTS)."""
        return _same if up.uid else self._selected().view.seq

    async def _context_result(self, sel: Selected, up: contextmod.Updating,
                              memo: dict[tuple[int, int], list[int]]) -> list[int]:
        """The UIDs an updating search or sort finds now, in result order: the messages changed since
        the last evaluation (MODSEQ above it, or new) searched again, the others as they were."""
        snap = sel.current
        view = sel.view
        since, last = up.modseq, up.last_uid
        changed = memo.get((since, last))
        if changed is None:
            changed = memo[since, last] = [m.uid for m in snap.messages if m.modseq > since or m.uid > last]
        up.modseq = snap.highestmodseq
        up.last_uid = snap.messages[-1].uid if snap.messages else last
        kept = sorted(up.result)
        infos = match_infos(kept, snap.messages)
        members = {u for u, i in zip(kept, infos, strict=True) if i is not None and not view.is_gone(u)}
        if changed:
            members.difference_update(changed)
            search = C.Search(up.tag, up.criteria, uid=True)
            members.update(await searchadapt.run(self.user or "", sel, search, only=changed))
        if up.sort is None:
            return sorted(members)
        seqs = sorted(n for n in map(view.seq, members) if n is not None)
        return [view.uid(n) for n in await self._sort_order(sel, up.sort, seqs)]

    def _recent_key(self, sel: Selected) -> tuple[str, str, int]:
        return (self.user or "", sel.mailbox.name, sel.uidvalidity)

    async def _claim_recent(self, sel: Selected, uids: Sequence[int]) -> list[int]:
        """The UIDs this session tells as \\Recent (see the registry's comment)."""
        new = _unasked(self.ctx.store, self._recent_key(sel), uids)
        if not new:
            return []
        try:
            return list(await self.account.claim_recent(sel.uidvalidity, new))
        except TempFailure as e:  # no \Recent rather than a failed SELECT or NOOP (full disk, database down)
            log.warning("imap: \\Recent not claimed in %s: %s", sel.mailbox.name, e)
            return []

    async def _recent_mark(self, uidvalidity: int) -> int:
        try:
            return int(await self.account.recent_mark(uidvalidity))
        except TempFailure:
            return 1 << 62  # unknown: nothing is shown as recent

    @staticmethod
    def _keywords(messages: Iterable[MessageInfo]) -> frozenset[str]:
        return keywords_of(messages)

    def _note_keywords(self, sel: Selected, messages: Iterable[MessageInfo]) -> None:
        """RFC 3501 §7.2.6: a keyword the client was not told about gets FLAGS and PERMANENTFLAGS
        sent at once, so they come before any FETCH that shows it (as Dovecot; imaptest checks)."""
        keywords = self._keywords(messages)
        if not keywords <= sel.keywords:
            sel.keywords = sel.keywords | keywords
            self._emit_flags(sel)

    def _emit_flags(self, sel: Selected) -> None:
        kws = " ".join(sorted(sel.keywords))
        flags = " ".join(SYSTEM_FLAGS) + (" " + kws if kws else "")
        self.emit(f"* FLAGS ({flags})\r\n".encode())
        if sel.readonly:
            self.emit(b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n")
        else:
            self.emit(f"* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted.\r\n".encode())

    # -- any state (RFC 3501 §6.1) ---------------------------------------------------------------

    async def cmd_capability(self, cmd: C.Capability) -> str:
        self.emit(f"* CAPABILITY {self.capabilities()}\r\n".encode("ascii"))
        return "OK Capability completed."

    async def cmd_noop(self, cmd: C.Noop | C.Check) -> str:
        if self.sel is not None:
            await self.refresh(force=time.monotonic() - self.sel.synced_at > 1.0)
        return "OK NOOP completed."

    async def cmd_logout(self, cmd: C.Logout) -> str:
        self.emit(b"* BYE Logging out\r\n")
        self.emit(f"{cmd.tag} OK Logout completed.\r\n".encode("ascii"))
        self._leave()
        self.state = State.LOGOUT
        raise SessionEnd("logout")

    async def cmd_id(self, cmd: C.Id) -> str:
        if cmd.params:  # RFC 2971 §3.1: the client's identity, for the log
            mhlog.event(log, "imap client id", id=" ".join(f"{k}={v}" for k, v in cmd.params)[:300])
        self.emit(b'* ID ("name" "' + SERVER_NAME.encode("ascii") + b'")\r\n')
        return "OK ID completed."

    # -- not authenticated (RFC 3501 §6.2) -------------------------------------------------------

    async def cmd_starttls(self, cmd: C.StartTls) -> AsyncIterator[Step]:
        if self.tls_active:
            raise Bad("TLS is already active.")
        if not self.starttls_offered:
            raise Bad("STARTTLS is not available.")
        self.emit(f"{cmd.tag} OK Begin TLS negotiation now.\r\n".encode("ascii"))
        # RFC 3501 §6.2.1: anything pipelined after STARTTLS in plaintext is dropped: what the
        # framer holds here, what the shell has buffered when it performs StartTls.
        self.framer = self._new_framer()
        yield StartTls()

    async def _line(self) -> AsyncIterator[Step | bytes]:
        """Yields Waits until the client sent a raw line (AUTHENTICATE, IDLE), then the line."""
        while True:
            got = self.framer.next_line()
            if isinstance(got, bytes):
                yield got
                return
            if isinstance(got, Reject):
                self.emit(got.response())
                raise SessionEnd("protocol error")
            yield WAIT_INPUT

    async def cmd_login(self, cmd: C.Login) -> str:
        if not self.plaintext_ok:  # RFC 3501 §6.2.3, §7.2.1 LOGINDISABLED
            logins.of(self.ctx).refused("imap", self.ip, cmd.username, "plaintext_refused", "LOGIN")
            raise No("Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
                     "PRIVACYREQUIRED")
        return await self._login(cmd.username, cmd.password, "LOGIN")

    async def cmd_authenticate(self, cmd: C.Authenticate) -> AsyncIterator[Step]:
        service = logins.of(self.ctx)
        if cmd.mechanism not in AUTH_MECHANISMS:
            service.refused("imap", self.ip, "", "unknown_mechanism", "")
            raise No("Unsupported authentication mechanism.")
        if not self.plaintext_ok:
            service.refused("imap", self.ip, "", "plaintext_refused", cmd.mechanism)
            raise No("Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
                     "PRIVACYREQUIRED")
        exchange = sasl.Exchange(cmd.mechanism)
        try:
            if cmd.initial_response is not None:  # RFC 4959 SASL-IR
                initial = "=" if cmd.initial_response == b"" else \
                    base64.b64encode(cmd.initial_response).decode("ascii")
                out = exchange.start(initial)
            else:
                out = exchange.start(None)
            while isinstance(out, str):
                self.emit(b"+ " + out.encode("ascii") + b"\r\n")  # RFC 3501 §7.5
                line = b""
                async for step in self._line():
                    if isinstance(step, bytes):
                        line = step
                    else:
                        yield step
                out = exchange.step(line)
        except sasl.SaslCancelled:
            service.refused("imap", self.ip, "", "cancelled", cmd.mechanism)
            raise Bad("Authentication aborted by client.") from None  # RFC 3501 §6.2.2
        except ValueError:
            service.refused("imap", self.ip, "", "bad_sasl", cmd.mechanism)
            raise Bad("Invalid base64 data in continued response.") from None
        creds = out
        if creds.authzid and creds.authzid != creds.login:
            service.refused("imap", self.ip, creds.login, "authzid_refused", cmd.mechanism)
            raise No("Authorization identity not permitted.", "AUTHORIZATIONFAILED")
        yield await self._login(creds.login, creds.password, cmd.mechanism)

    async def _login(self, login: str, password: str, mechanism: str) -> str:
        ctx = self.ctx
        # auth/login.py: throttle (a delay, never a refusal), cache, check, the one log line, metrics
        outcome = await logins.of(ctx).login("imap", self.ip, login, password, mechanism)
        user = outcome.user
        if user is None:
            raise No("Authentication failed.", "AUTHENTICATIONFAILED")  # RFC 5530 §3
        self.user = user
        self.account = ctx.store.account(user)
        self.sub = ctx.store.changes.subscribe(user)
        self.state = State.AUTHENTICATED
        mhlog.set_user(user)
        # After login the literal limit becomes the message size limit (APPEND).
        self._max_literal = max_literal = self.config.smtp.max_message_size
        framer = self.framer
        framer.max_literal = max_literal
        if framer.max_buffer is not None:
            framer.max_buffer = self.config.imap.max_in_flight * framer.max_line + max_literal
        return f"OK [CAPABILITY {self.capabilities()}] Logged in"

    # -- authenticated (RFC 3501 §6.3) -----------------------------------------------------------

    async def cmd_enable(self, cmd: C.Enable) -> str:
        enabled = b""
        for cap in dict.fromkeys(cmd.capabilities):  # RFC 5161 §3.2: unknown names are ignored
            if cap == "CONDSTORE":
                self._enable_condstore()
            elif cap == "QRESYNC":  # RFC 7162 §3.2.3: implies CONDSTORE
                self._enable_condstore()
                self.qresync = True
            elif cap == "UTF8=ACCEPT":  # RFC 6855 §3
                self.utf8 = True
            elif cap == "IMAP4REV2":  # RFC 9051 §6.3.1; Appendix E: UTF-8 mailbox names, no \Recent,
                self.rev2 = self.utf8 = True  # ESEARCH answers (Dovecot 2.3 does not offer it)
                cap = "IMAP4rev2"
            else:
                continue
            enabled += b" " + cap.encode("ascii")  # as Dovecot, also when it was already on
        self.emit(b"* ENABLED" + enabled + b"\r\n")
        return "OK Enabled."

    def _enable_condstore(self) -> None:
        """RFC 7162 §3.1: CONDSTORE is on for the rest of the session (ENABLE or a CONDSTORE enabling
        command). With a mailbox selected the client is told its HIGHESTMODSEQ at once (§3.1.2.1, as
        Dovecot: before the command's own responses); from now on unsolicited FETCH and STORE
        responses carry MODSEQ (§3.1.4.1)."""
        if self.condstore:
            return
        self.condstore = True
        sel = self.sel
        if sel is not None:
            sel.view.condstore = True
            self.emit(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % sel.view.modseq)

    async def cmd_namespace(self, cmd: C.Namespace) -> str:
        self.emit(b'* NAMESPACE (("" ".")) NIL NIL\r\n')  # RFC 2342 §5: one personal namespace
        return "OK Namespace completed."

    def _leave(self) -> None:
        self.sel = None
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    async def cmd_select(self, cmd: C.Select) -> str:
        for param in cmd.params:
            if param.name != "CONDSTORE" or param.value is not None:  # RFC 7162 §3.1.8
                raise Bad("Unknown SELECT parameter.")
        if cmd.qresync is not None and not self.qresync:  # RFC 7162 §3.2.5
            raise Bad("QRESYNC is not enabled.")
        if self.sel is not None:  # RFC 3501 §6.3.1: the old mailbox is closed first, no expunge
            self._leave()
            self.emit(b"* OK [CLOSED] Previous mailbox closed.\r\n")  # RFC 7162 §3.2.11
        self._drain_events()
        mailbox = await self.account.mailbox(cmd.mailbox)
        snap = await mailbox.snapshot()
        if cmd.params:
            self._enable_condstore()  # (CONDSTORE): no mailbox selected now, so no extra OK
        sel = Selected(mailbox, mailbox.name, cmd.readonly, View(snap), snap, snap.uidvalidity,
                        self._keywords(snap.messages), time.monotonic())
        sel.view.rev2 = self.rev2
        uids = [m.uid for m in snap.messages]
        if cmd.readonly:  # RFC 3501 §6.3.2: EXAMINE must not take \Recent away from anyone
            hi = await self._recent_mark(snap.uidvalidity)
            sel.view.mark_recent(u for u in uids if u > hi)
        else:
            sel.view.mark_recent(await self._claim_recent(sel, uids))
        self._emit_flags(sel)
        self.emit(b"* %d EXISTS\r\n" % len(uids))
        if self.rev2:  # RFC 9051 §6.3.2, Appendix E: the mailbox's LIST line; no RECENT, no UNSEEN
            await self._emit_own_list(mailbox.name)
        else:
            self.emit(b"* %d RECENT\r\n" % len(sel.view.recent))
            for i, m in enumerate(snap.messages):
                if SEEN not in m.flags:  # RFC 3501 §6.3.1: the first unseen message's number
                    self.emit(b"* OK [UNSEEN %d] First unseen.\r\n" % (i + 1))
                    break
        self.emit(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % snap.uidvalidity)
        self.emit(b"* OK [MAILBOXID (%s)] Ok\r\n" % self._mailbox_id(snap.uidvalidity).encode())  # RFC 8474 §4.2
        self.emit(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % snap.uidnext)
        # RFC 7162 §3.1.2.1: every SELECT/EXAMINE of a mailbox with persistent MODSEQs (all of ours)
        # (Dovecot 2.3 sends it only once CONDSTORE is enabled; the RFC says every time).
        self.emit(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % snap.highestmodseq)
        sel.view.condstore = self.condstore
        sel.view.qresync = self.qresync
        if cmd.qresync is not None and cmd.qresync.uidvalidity == snap.uidvalidity:  # else ignored
            await self._qresync_select(sel, snap, cmd.qresync)
        self.sel = sel
        self.state = State.SELECTED
        mode = "READ-ONLY" if cmd.readonly else "READ-WRITE"
        return f"OK [{mode}] {cmd.verb.capitalize()} completed."

    async def _emit_own_list(self, name: str) -> None:
        """`* LIST (attributes) "." name` for one mailbox, as LIST would show it."""
        infos = [i for i in await self.account.list_mailboxes() if i.name == name]
        own = wire_name(name, self.utf8) + b"\r\n"
        for line in listing.list_lines(infos, "", "*", self.utf8):
            if line.endswith(b'"." ' + own):
                self.emit(line)

    async def _qresync_select(self, sel: Selected, snap: Any, q: C.Qresync) -> None:
        """RFC 7162 §3.2.5.2: what changed since the client's MODSEQ: VANISHED (EARLIER) for the UIDs
        it may know that are gone, then FETCH (UID FLAGS MODSEQ) for the messages changed since."""
        known = q.known_uids
        top = snap.uidnext - 1
        wanted = known.resolve(top) if known is not None else [(1, top)]
        await self._vanished_earlier(sel.mailbox, snap, q.modseq, wanted)
        recent = sel.view.recent
        lines: list[bytes] = []
        for seq, m in enumerate(snap.messages, 1):
            if m.modseq > q.modseq and (known is None or known.contains(m.uid, top)):
                lines.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n"
                             % (seq, m.uid, render_flags(m.flags, m.uid in recent), m.modseq))
        self.emit(b"".join(lines))

    async def _vanished_earlier(self, mailbox: Any, snap: Any, modseq: int, wanted: list[tuple[int, int]]) -> None:
        """`* VANISHED (EARLIER) uids` (RFC 7162 §3.2.10): the UIDs in `wanted` (resolved ranges)
        expunged after `modseq`, from the tombstones; where those do not reach back, every UID in
        `wanted` below UIDNEXT that is not in the mailbox."""
        gone = await mailbox.vanished_since(modseq)
        if gone is None:
            text = seqset.render_ranges(seqset.missing(wanted, [m.uid for m in snap.messages], snap.uidnext))
        else:
            text = render_set(u for u in gone if any(lo <= u <= hi for lo, hi in wanted))
        if text:
            self.emit(b"* VANISHED (EARLIER) " + text.encode("ascii") + b"\r\n")

    def _mailbox_id(self, uidvalidity: int) -> str:
        return derived.mailbox_id(self.user or "", uidvalidity)

    async def cmd_create(self, cmd: C.Create) -> str:
        name = cmd.mailbox
        if name.endswith(DELIMITER):  # RFC 3501 §6.3.3: "foo." creates foo
            name = name.rstrip(DELIMITER)
        if name.upper() == "INBOX":
            raise No("Mailbox already exists.", "ALREADYEXISTS")
        use = _create_use(cmd.use)
        await self.account.create_mailbox(name, use)
        mailbox = await self.account.mailbox(name)
        return f"OK [MAILBOXID ({self._mailbox_id(mailbox.uidvalidity)})] Create completed."  # RFC 8474 §4.1

    async def cmd_delete(self, cmd: C.Delete) -> str:
        if cmd.mailbox.upper() == "INBOX":  # RFC 3501 §6.3.4
            raise No("INBOX can't be deleted.", "CANNOT")
        if self.sel is not None and self.sel.mailbox.name == cmd.mailbox:
            self._leave()
        await self.account.delete_mailbox(cmd.mailbox)
        return "OK Delete completed."

    async def cmd_rename(self, cmd: C.Rename) -> str:
        await self.account.rename_mailbox(cmd.old, cmd.new)
        return "OK Rename completed."

    async def cmd_subscribe(self, cmd: C.Subscribe) -> str:
        await self.account.subscribe(cmd.mailbox)
        return "OK Subscribe completed."

    async def cmd_unsubscribe(self, cmd: C.Unsubscribe) -> str:
        await self.account.unsubscribe(cmd.mailbox)
        return "OK Unsubscribe completed."

    async def cmd_list(self, cmd: C.List) -> str:
        if cmd.extended:
            await self._list_extended(cmd)
            return "OK List completed."
        infos = await self.account.list_mailboxes() if cmd.pattern else []
        for line in listing.list_lines(infos, cmd.reference, cmd.pattern, self.utf8):
            self.emit(line)
        return "OK List completed."

    async def _list_extended(self, cmd: C.List) -> None:
        """RFC 5258 LIST-EXTENDED; with RETURN (STATUS (...)) a `* STATUS` after each selectable
        mailbox's LIST line (RFC 5819 §2)."""
        infos = await self.account.list_mailboxes()
        subs = await self.account.subscriptions()
        if "HIGHESTMODSEQ" in cmd.status:  # RFC 7162 §3.1: a CONDSTORE enabling command (as STATUS)
            self._enable_condstore()
        for row in listing.extended_rows(infos, subs, cmd):
            self.emit(row.line(self.utf8))
            if cmd.status and row.status:
                try:
                    mailbox = await self.account.mailbox(row.name)
                    self.emit(await self._status_line(mailbox, cmd.status))
                except MailboxNotFound:  # deleted meanwhile
                    continue

    async def _status_line(self, mailbox: Any, items: Sequence[str]) -> bytes:
        snap = await mailbox.snapshot()
        recent = 0
        if "RECENT" in items:
            hi = await self._recent_mark(snap.uidvalidity)
            recent = sum(1 for m in snap.messages if m.uid > hi)
        return statusmod.line(mailbox.name, items, snap, recent, self._mailbox_id(snap.uidvalidity), self.utf8)

    async def cmd_lsub(self, cmd: C.Lsub) -> str:
        subs = await self.account.subscriptions() if cmd.pattern else []
        uses = {i.name: i.special_use for i in await self.account.list_mailboxes()} if subs else {}
        for line in listing.lsub_lines(subs, cmd.reference, cmd.pattern, uses, self.utf8):
            self.emit(line)
        return "OK Lsub completed."

    async def cmd_status(self, cmd: C.Status) -> str:
        mailbox = await self.account.mailbox(cmd.mailbox)
        if "HIGHESTMODSEQ" in cmd.items:  # RFC 7162 §3.1: a CONDSTORE enabling command
            self._enable_condstore()
        self.emit(await self._status_line(mailbox, cmd.items))  # status.py: the items, in Dovecot's order
        return "OK Status completed."

    async def cmd_append(self, cmd: C.Append) -> str:
        """RFC 3501 §6.3.11; RFC 3502 MULTIAPPEND: all the messages are kept or none; RFC 3516 §4.4
        literal8 and RFC 6855 §4 UTF8 data are stored as sent."""
        limit = self.config.smtp.max_message_size
        for m in cmd.messages:
            if len(m.message) > limit:
                raise No("Message too big.", "TOOBIG")  # RFC 7889 §4
            if not m.message:
                raise No("Can't save a zero byte message.")
            if m.utf8 and not self.utf8:  # RFC 6855 §4: only once UTF8=ACCEPT is enabled
                raise Bad("UTF8 APPEND data needs ENABLE UTF8=ACCEPT.")
        try:
            mailbox = await self.account.mailbox(cmd.mailbox)
        except MailboxNotFound:
            raise No("Mailbox doesn't exist.", "TRYCREATE") from None  # RFC 3501 §6.3.11
        items = [(await _storable(m), m.flags, m.internal_date.timestamp() if m.internal_date is not None else None)
                 for m in cmd.messages]
        quota = quotamod.of(self.ctx)
        if quota is not None:  # RFC 9208 §4.2: NO [OVERQUOTA], nothing stored
            await quota.check(self._user(), sum(len(m.message) for m in cmd.messages), len(items))
        if len(items) == 1:
            uids = [await mailbox.append(*items[0])]  # durable before it returns
        else:
            uids = await mailbox.append_many(items)  # RFC 3502 §6.3.11: all durable, or none kept
        if quota is not None:
            await quota.delivered(self._user())
        # RFC 4315 §3: APPENDUID uidvalidity uid-set (RFC 3502 §6.3.11: one UID per message)
        return f"OK [APPENDUID {mailbox.uidvalidity} {render_set(uids)}] Append completed."

    async def cmd_compress(self, cmd: C.Compress) -> AsyncIterator[Step]:
        """RFC 4978 §3: COMPRESS DEFLATE; the shell compresses after the tagged OK (StartCompress)."""
        if self.compressed:
            raise No("COMPRESSION=DEFLATE already enabled.", "COMPRESSIONACTIVE")
        if cmd.mechanism != "DEFLATE":
            raise No("Unknown compression mechanism")
        if self.framer.buffered:  # the client must wait for the OK (as Dovecot checks)
            raise Bad("Client did not wait for COMPRESS reply before sending more data")
        self.emit(f"{cmd.tag} OK Begin compression.\r\n".encode("ascii"))
        self.compressed = True
        yield StartCompress()

    async def cmd_idle(self, cmd: C.Idle) -> AsyncIterator[Step]:
        """RFC 2177: updates as they happen until the client sends DONE."""
        self.emit(b"+ idling\r\n")
        if self.sel is not None:
            await self.send_updates(True)
        last_output = time.monotonic()
        woken = False
        while True:
            got = self.framer.next_line()
            if isinstance(got, bytes):
                if got.strip().upper() == b"DONE":
                    break
                raise Bad("Expected DONE.")
            if isinstance(got, Reject):
                self.emit(got.response())
                raise SessionEnd("protocol error")
            if woken:  # by a change event (refresh() drains it), the poll timer or a partial line
                if self.sel is not None:
                    await self.refresh()
                    await self.send_updates(True)
                    self.sel.snap = None  # an idle session keeps only its numbering in memory
                if self._out:
                    last_output = time.monotonic()
                elif time.monotonic() - last_output >= IDLE_KEEPALIVE:
                    self.emit(b"* OK Still here\r\n")
                    last_output = time.monotonic()
            yield Wait(self.sub, min(POLL_INTERVAL, IDLE_KEEPALIVE))
            woken = True
        yield "OK Idle completed."

    # -- selected (RFC 3501 §6.4) -----------------------------------------------------------------

    def _selected(self) -> Selected:
        assert self.sel is not None
        return self.sel

    async def cmd_check(self, cmd: C.Check) -> str:
        await self.cmd_noop(cmd)  # RFC 3501 §6.4.1: every change is already durable
        return "OK Check completed."

    async def cmd_close(self, cmd: C.Close) -> str:
        sel = self._selected()
        self._leave()
        if not sel.readonly:  # RFC 3501 §6.4.2: expunge silently, then leave
            await self.refresh_snapshot_of(sel)
            deleted = [m.uid for m in sel.current.messages if DELETED in m.flags]
            if deleted:
                await sel.mailbox.expunge(deleted)
        return "OK Close completed."

    async def refresh_snapshot_of(self, sel: Selected) -> None:
        sel.snap = await sel.mailbox.snapshot()

    async def cmd_unselect(self, cmd: C.Unselect) -> str:
        self._leave()  # RFC 3691: no expunge
        return "OK Unselect completed."

    def _resolve(self, seqs: SequenceSet, uid: bool) -> list[tuple[int, int]]:
        """(seq, uid) pairs the set names, ascending. Sequence numbers beyond EXISTS are BAD."""
        sel = self._selected()
        view = sel.view
        if seqs.saved:  # RFC 5182 §2.1: "$" names the same messages in UID and non-UID commands
            return view.by_uids((u, u) for u in sel.saved)
        if uid:
            last = view.uids[-1] if view.exists else 0
            return view.by_uids(seqs.resolve(last))  # RFC 3501 §6.4.8: "*" = highest UID
        if seqs.max_number(view.exists) > view.exists or (view.exists == 0 and seqs.ranges):
            raise BadSequence("Invalid messageset")
        return view.by_seqs(seqs.resolve(view.exists))

    async def cmd_expunge(self, cmd: C.Expunge) -> str:
        sel = self._selected()
        if sel.readonly:
            raise No("Mailbox is read-only.", "READ-ONLY")
        await self.refresh()
        view = sel.view
        wanted: set[int] | None = None
        if cmd.uids is not None:  # RFC 4315 §2.1 UID EXPUNGE
            wanted = {u for _, u in self._resolve(cmd.uids, True)}
        uids = [m.uid for m in sel.current.messages
                if DELETED in m.flags and view.seq(m.uid) is not None and (wanted is None or m.uid in wanted)]
        if uids:
            removed = await sel.mailbox.expunge(uids)
            view.expunged(removed)
        return "OK Expunge completed."

    async def cmd_search(self, cmd: C.Search) -> str:
        sel = self._selected()
        save = cmd.returns is not None and "SAVE" in cmd.returns
        with_modseq = _has_modseq(cmd.criteria)
        self._check_update_tag(sel, cmd)
        try:
            found = await self._matching(sel, cmd)
        except Exception:
            if save:  # RFC 5182 §2.1: a failed SEARCH ... SAVE empties "$"
                sel.saved = ()
            raise
        if cmd.returns is None and self.rev2:  # RFC 9051 §6.4.4: no RETURN means RETURN (ALL), as ESEARCH
            cmd = dataclasses.replace(cmd, returns=frozenset({"ALL"}))
        if cmd.returns is not None:
            if save:
                kept = _reported(cmd.returns - {"SAVE"}, found)
                sel.saved = tuple(kept) if cmd.uid else tuple(sel.view.uid(n) for n in kept)
            keep = "UPDATE" in cmd.returns and self._room_for_update(sel, cmd)
            self.emit(self._esearch_line(cmd, found, with_modseq))
            if keep:
                self._keep_updating(sel, cmd, cmd.criteria, None, found)
            return ("OK UID " if cmd.uid else "OK ") + "Search completed."
        line = b"* SEARCH"
        if found:
            line += b" " + b" ".join(b"%d" % n for n in found)
            if with_modseq:  # RFC 7162 §3.1.5: the highest MODSEQ of the messages found
                line += b" (MODSEQ %d)" % self._highest_modseq(cmd, found)
        self.emit(line + b"\r\n")
        return ("OK UID " if cmd.uid else "OK ") + "Search completed."

    async def _matching(self, sel: Selected, search: C.Search) -> list[int]:
        """The sequence numbers (UIDs for a UID command) `search` finds, as SEARCH, SORT and THREAD
        share it: a MODSEQ key enables CONDSTORE, changes are taken in first, "$" is the saved result."""
        if _has_modseq(search.criteria):  # RFC 7162 §3.1: a CONDSTORE enabling command
            self._enable_condstore()
        await self.refresh()
        search = dataclasses.replace(search, criteria=_resolved(search.criteria, sel))
        return await searchadapt.run(self.user or "", sel, search)

    def _check_update_tag(self, sel: Selected, cmd: C.Search | C.Sort) -> None:
        """RFC 5267 §4.3: an updating search is named by its tag, so a tag in use is BAD (as Dovecot)."""
        if cmd.returns is not None and "UPDATE" in cmd.returns and any(u.tag == cmd.tag for u in sel.updating):
            raise Bad("Duplicate search update tag")

    def _room_for_update(self, sel: Selected, cmd: C.Search | C.Sort) -> bool:
        """RFC 5267 §4.3: up to MAX_UPDATING updating searches per session; beyond, `* NO [NOUPDATE
        "tag"]` (before the result, as Dovecot 2.3) and the search stays a plain one."""
        if len(sel.updating) < contextmod.MAX_UPDATING:
            return True
        self.emit(b'* NO [NOUPDATE "%s"] Too many updating searches\r\n' % cmd.tag.encode("ascii"))
        return False

    def _keep_updating(self, sel: Selected, cmd: C.Search | C.Sort, criteria: C.SearchAnd,
                       sort: tuple[tuple[str, bool], ...] | None, found: list[int]) -> None:
        """RFC 5267 §4.3 RETURN (UPDATE): keep the result to tell its changes."""
        view = sel.view
        uids = found if cmd.uid else [view.uid(n) for n in found]
        snap = sel.current

        def uids_of(seqs: SequenceSet) -> list[int]:
            exists = view.exists
            ranges = [(lo, min(hi, exists)) for lo, hi in seqs.resolve(exists) if lo <= exists]
            return [u for _, u in view.by_seqs(ranges)]

        keys = contextmod.frozen(_resolved(criteria, sel), uids_of)
        assert isinstance(keys, C.SearchAnd)
        last = snap.messages[-1].uid if snap.messages else 0
        sel.updating.append(contextmod.Updating(cmd.tag, cmd.uid, keys, sort, contextmod.uid_array(uids),
                                                sel.generation, snap.highestmodseq, last))

    async def cmd_cancelupdate(self, cmd: C.CancelUpdate) -> str:
        """RFC 5267 §4.3: end updating searches by their tags; an unknown tag is NO (as Dovecot 2.3)."""
        sel = self._selected()
        for tag in cmd.tags:
            kept = [u for u in sel.updating if u.tag != tag]
            if len(kept) == len(sel.updating):
                return "NO Unknown tag."
            sel.updating = kept
        return "OK Updates cancelled."

    async def cmd_sort(self, cmd: C.Sort) -> str:
        """RFC 5256 §3: `* SORT` with the matching sequence numbers (UIDs for UID SORT) in the
        criteria's order, ties by sequence number."""
        sel = self._selected()
        self._check_update_tag(sel, cmd)
        seqs = await self._matching(sel, C.Search(cmd.tag, cmd.search, cmd.charset))
        view = sel.view
        ordered = await self._sort_order(sel, cmd.criteria, seqs)
        numbers = [view.uid(n) for n in ordered] if cmd.uid else ordered
        if cmd.returns is not None:  # RFC 5267 §3 ESORT: as ESEARCH, MIN/MAX/ALL in sort order
            if "SAVE" in cmd.returns:  # RFC 5182 §2.4
                kept = _reported(cmd.returns - {"SAVE"}, numbers)
                sel.saved = tuple(sorted(kept if cmd.uid else (view.uid(n) for n in kept)))
            keep = "UPDATE" in cmd.returns and self._room_for_update(sel, cmd)  # RFC 5267 §4.3 CONTEXT=SORT
            self.emit(self._esearch_line(cmd, numbers, _has_modseq(cmd.search)))
            if keep:
                self._keep_updating(sel, cmd, cmd.search, cmd.criteria, numbers)
        else:
            self.emit(b"* SORT" + b"".join(b" %d" % n for n in numbers) + b"\r\n")
        return ("OK UID " if cmd.uid else "OK ") + "Sort completed."

    async def _sort_order(self, sel: Selected, keys: tuple[tuple[str, bool], ...], seqs: list[int]) -> list[int]:
        """The sequence numbers `seqs` (ascending) in the order of the SORT criteria `keys`, ties by
        sequence number (RFC 5256 §3); messages gone from the snapshot are left out."""
        view = sel.view
        uids = [view.uid(n) for n in seqs]
        infos = match_infos(uids, sel.current.messages)
        criteria = [sortmod.Criterion(k, r) for k, r in keys]
        headers: dict[int, bytes] = {}
        if any(c.key in sortmod.HEADER_KEYS for c in criteria):
            headers = await self._header_blocks(sel, uids, infos)
        rows: list[tuple[int, list[str | float]]] = []
        for seq, uid, info in zip(seqs, uids, infos, strict=True):
            if info is None:
                continue
            header = sortmod.fields(headers.get(uid)) if headers else None
            rows.append((seq, [sortmod.key_of(c.key, header, info.internaldate, info.size) for c in criteria]))
        return sortmod.order(criteria, rows)

    async def _header_blocks(self, sel: Selected, uids: list[int],
                             infos: Sequence[MessageInfo | None]) -> dict[int, bytes]:
        """The header block of each message by UID: from the message cache when it has it, the
        rest read from the mailbox in bounded batches."""
        headers: dict[int, bytes] = {}
        missing: list[int] = []
        for uid, info in zip(uids, infos, strict=True):  # header blocks the message cache has
            entry = CACHE.peek((self.user or "", info.key)) if info is not None else None
            if entry is not None and entry.header is not None:
                headers[uid] = entry.header
            else:
                missing.append(uid)
        for i in range(0, len(missing), FETCH_BATCH):  # bounded reads per step
            datas = await read_many(sel.mailbox, missing[i:i + FETCH_BATCH])
            headers.update((u, d[:header_end(d)]) for u, d in datas.items())
        return headers

    async def cmd_thread(self, cmd: C.Thread) -> str:
        """RFC 5256 §3: `* THREAD` with the matching messages threaded by the algorithm, as
        sequence numbers (UIDs for UID THREAD)."""
        sel = self._selected()
        seqs = await self._matching(sel, C.Search(cmd.tag, cmd.search, cmd.charset))
        view = sel.view
        uids = [view.uid(n) for n in seqs]
        infos = match_infos(uids, sel.current.messages)
        headers = await self._header_blocks(sel, uids, infos)
        msgs = [threadmod.msg_of(uid if cmd.uid else seq, headers.get(uid), info.internaldate)
                for seq, uid, info in zip(seqs, uids, infos, strict=True) if info is not None]
        self.emit(b"* THREAD " + threadmod.render(threadmod.thread(cmd.algorithm, msgs)) + b"\r\n")
        return ("OK UID " if cmd.uid else "OK ") + "Thread completed."

    def _highest_modseq(self, cmd: C.Search | C.Sort, found: Sequence[int]) -> int:
        sel = self._selected()
        uids = found if cmd.uid else [sel.view.uid(n) for n in found]
        return max((i.modseq for i in match_infos(uids, sel.current.messages) if i), default=0)

    def _esearch_line(self, cmd: C.Search | C.Sort, found: list[int], with_modseq: bool) -> bytes:
        """RFC 4731 §3.1 `* ESEARCH (TAG "t") [UID] ...`, items in Dovecot 2.3's order (MIN MAX ALL
        COUNT MODSEQ); MIN, MAX and ALL are left out when nothing matched, COUNT 0 is not. Nothing
        for RETURN (SAVE) alone (RFC 5182 §2.4), unless MODSEQ (as Dovecot 2.3)."""
        opts = cmd.returns or frozenset({"ALL"})  # RFC 4731 §3.1: RETURN () means ALL
        if opts == {"SAVE"}:
            if not (with_modseq and found):
                return b""
            opts = frozenset()
        line = b'* ESEARCH (TAG "%s")' % cmd.tag.encode("ascii")
        if cmd.uid:
            line += b" UID"
        if found:
            if "MIN" in opts:
                line += b" MIN %d" % found[0]
            if "MAX" in opts:
                line += b" MAX %d" % found[-1]
            if "ALL" in opts:
                line += b" ALL " + _render_in_order(found)
        if cmd.partial is not None:  # RFC 5267 §4.4: the low-th to high-th messages found, in order
            low, high = cmd.partial
            part = found[low - 1:high]
            line += b" PARTIAL (%d:%d %s)" % (low, high, _render_in_order(part) if part else b"NIL")
        if "COUNT" in opts:
            line += b" COUNT %d" % len(found)
        if with_modseq and found:  # RFC 7162 §3.1.5: the highest MODSEQ of the messages reported
            line += b" MODSEQ %d" % self._highest_modseq(cmd, _reported(opts - {"SAVE"}, found))
        return line + b"\r\n"

    async def cmd_store(self, cmd: C.Store) -> AsyncIterator[Step]:
        sel = self._selected()
        since = cmd.unchangedsince
        if since is not None:  # RFC 7162 §3.1: a CONDSTORE enabling command
            self._enable_condstore()
        if sel.readonly:
            raise No("Mailbox is read-only.", "READ-ONLY")
        await self.refresh()
        pairs = self._resolve(cmd.set, cmd.uid)
        view = sel.view
        uids = [u for _, u in pairs if not view.is_gone(u)]
        if not uids:
            yield "OK Store completed."
            return
        learner = self._learner_for(cmd.flags) if cmd.mode != "remove" else None
        condstore = self.condstore
        known = match_infos(uids, sel.current.messages) if learner or condstore else []
        before = {i.uid: i.flags for i in known if i} if learner else {}
        # the MODSEQ of each message before the STORE: with CONDSTORE only changed ones are reported
        old = {i.uid: i.modseq for i in known if i} if condstore else {}
        infos: list[MessageInfo] = []
        modified: list[int] = []  # RFC 7162 §3.1.3: MODSEQ above UNCHANGEDSINCE, left alone
        for i in range(0, len(uids), STORE_CHUNK):  # bounded account-lock hold per step
            if since is None:
                infos += await sel.mailbox.store_flags(uids[i:i + STORE_CHUNK], cmd.flags, cmd.mode)
            else:
                got, mod = await sel.mailbox.store_flags_unchanged_since(
                    uids[i:i + STORE_CHUNK], cmd.flags, cmd.mode, since)
                infos += got
                modified += mod
        self._note_keywords(sel, infos)  # a new keyword's FLAGS before the FETCHes that show it
        if learner is not None and self.user is not None:  # $Junk / $NotJunk newly set: teach rspamd
            learn.teach_flags(learner, self.user, sel.mailbox, before, ((i.uid, i.flags) for i in infos))
        reported = view.reported
        if condstore:
            self._store_condstore_lines(pairs, infos, old, cmd)
        elif cmd.silent:
            for info in infos:
                reported(info.uid, info.modseq)
        else:
            seqs = {u: s for s, u in pairs}
            recent = view.recent
            lines: list[bytes] = []
            for info in infos:
                uid = info.uid
                reported(uid, info.modseq)
                flags = render_flags(info.flags, uid in recent)
                if cmd.uid:  # RFC 3501 §6.4.8: UID STORE responses carry the UID
                    lines.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seqs[uid], uid, flags))
                else:
                    lines.append(b"* %d FETCH (FLAGS %s)\r\n" % (seqs[uid], flags))
                if len(lines) >= 2048:
                    self.emit(b"".join(lines))
                    yield FLUSH
                    lines.clear()
            self.emit(b"".join(lines))
        if modified:  # RFC 7162 §3.1.3: sequence numbers, or UIDs for UID STORE
            left = set(modified)
            numbers = modified if cmd.uid else [s for s, u in pairs if u in left]
            yield f"OK [MODIFIED {render_set(numbers)}] Conditional store failed."
            return
        gone = len(uids) - len(infos)
        if gone:
            yield "NO [EXPUNGEISSUED] Some of the messages no longer exist."
            return
        yield "OK Store completed."

    def _store_condstore_lines(self, pairs: list[tuple[int, int]], infos: list[MessageInfo],
                               old: dict[int, int], cmd: C.Store) -> None:
        """STORE's FETCH responses once CONDSTORE is on (RFC 7162 §3.1.3, as Dovecot 2.3): only for
        messages whose flags changed, MODSEQ before FLAGS, and sent with .SILENT too (without FLAGS)."""
        view = self._selected().view
        seqs = {u: s for s, u in pairs}
        recent = view.recent
        lines: list[bytes] = []
        for info in infos:
            uid = info.uid
            view.reported(uid, info.modseq)
            if info.modseq <= old.get(uid, 0):
                continue  # nothing changed
            line = b"* %d FETCH (" % seqs[uid]
            if cmd.uid or self.qresync:  # RFC 7162 §3.2.4: UID in every FETCH once QRESYNC is on
                line += b"UID %d " % uid
            line += b"MODSEQ (%d)" % info.modseq
            if not cmd.silent:
                line += b" FLAGS " + render_flags(info.flags, uid in recent)
            lines.append(line + b")\r\n")
        self.emit(b"".join(lines))

    def _learner_for(self, flags: Iterable[str]) -> learn.Learner | None:
        """The learner when a STORE of these flags may teach rspamd ($Junk, $NotJunk), else None."""
        learner: learn.Learner | None = getattr(self.ctx, "learner", None)
        if learner is None or not {f.lower() for f in flags} & {learn.JUNK_KEYWORD, learn.NOT_JUNK_KEYWORD}:
            return None
        return learner

    async def _teach(self, source: str, dest: Any, uids: list[int], command: str) -> None:
        """A COPY or MOVE into or out of Junk teaches rspamd (issue 12 item 4; policy/learn.py)."""
        learner: learn.Learner | None = getattr(self.ctx, "learner", None)
        if learner is not None and self.user is not None and uids:
            await learn.teach_transfer(learner, self.account, self.user, source, dest, uids, command=command)

    async def _target(self, name: str) -> Any:
        try:
            return await self.account.mailbox(name)
        except MailboxNotFound:
            raise No("Mailbox doesn't exist.", "TRYCREATE") from None  # RFC 3501 §6.4.7

    async def cmd_copy(self, cmd: C.Copy) -> str:
        sel = self._selected()
        await self.refresh()
        pairs = self._resolve(cmd.set, cmd.uid)
        uids = [u for _, u in pairs if not sel.view.is_gone(u)]
        dest = await self._target(cmd.mailbox)
        if not uids:
            return "OK No messages found."  # Dovecot 2.3's text
        quota = quotamod.of(self.ctx)
        if quota is not None:  # RFC 9208 §4.2: NO [OVERQUOTA], nothing copied
            wanted = set(uids)
            size = sum(m.size for m in sel.current.messages if m.uid in wanted)
            await quota.check(self._user(), size, len(uids))
        mapping = await sel.mailbox.copy(uids, dest)  # into itself too (RFC 3501 allows it)
        if quota is not None:
            await quota.delivered(self._user())
        if not mapping:
            return "NO [EXPUNGEISSUED] Some of the requested messages no longer exist."
        await self._teach(sel.mailbox.name, dest, [d for _, d in mapping], "COPY")
        src_set = render_set(s for s, _ in mapping)
        dst_set = render_set(d for _, d in mapping)
        # RFC 4315 §3: COPYUID uidvalidity source-uids destination-uids (same order)
        return f"OK [COPYUID {dest.uidvalidity} {src_set} {dst_set}] Copy completed."

    # -- QUOTA (RFC 9208) --------------------------------------------------------------------------

    def _user(self) -> str:
        assert self.user is not None
        return self.user

    async def _quota_report(self) -> quotamod.Report | None:
        quota = quotamod.of(self.ctx)
        if quota is None or not any(quota.limits(self._user())):
            return None
        return await quota.report(self._user())

    def _emit_quota(self, report: quotamod.Report) -> None:
        # RFC 9208 §5.1: STORAGE usage and limit in units of 1024 octets; §5.2 MESSAGE in messages
        items = " ".join(f"{name} {usage} {limit}" for name, usage, limit in report.resources())
        self.emit(f'* QUOTA "{QUOTA_ROOT}" ({items})\r\n'.encode("ascii"))

    async def cmd_getquota(self, cmd: C.GetQuota) -> str:
        report = await self._quota_report()
        if report is None or cmd.root != QUOTA_ROOT:  # a user without limits has no quota root
            raise No("Quota root does not exist.", "NONEXISTENT")
        self._emit_quota(report)
        return "OK Getquota completed."

    async def cmd_getquotaroot(self, cmd: C.GetQuotaRoot) -> str:
        mailbox = await self.account.mailbox(cmd.mailbox)  # NO [NONEXISTENT] for a missing one
        report = await self._quota_report()
        # RFC 9208 §4.3: the mailbox's quota roots, then each root's QUOTA
        roots = f' "{QUOTA_ROOT}"' if report is not None else ""
        self.emit(b"* QUOTAROOT " + wire_name(mailbox.name, self.utf8) + roots.encode("ascii") + b"\r\n")
        if report is not None:
            self._emit_quota(report)
        return "OK Getquotaroot completed."

    async def cmd_setquota(self, cmd: C.SetQuota) -> str:
        # RFC 9208 §4.1: limits are the administrator's (the users file); no user may set them
        raise No("Quota can be changed only by the administrator.", "NOPERM")

    async def cmd_move(self, cmd: C.Move) -> str:
        sel = self._selected()
        if sel.readonly:
            raise No("Mailbox is read-only.", "READ-ONLY")
        await self.refresh()
        pairs = self._resolve(cmd.set, cmd.uid)
        uids = [u for _, u in pairs if not sel.view.is_gone(u)]
        dest = await self._target(cmd.mailbox)
        if not uids:
            return "OK No messages moved."
        # Into the selected mailbox itself too: RFC 6851 does not forbid it; as Dovecot, the messages
        # get new UIDs (COPYUID), the old numbers are EXPUNGEd and the new ones come as EXISTS.
        mapping = await sel.mailbox.move(uids, dest)
        if mapping:
            src_set = render_set(s for s, _ in mapping)
            dst_set = render_set(d for _, d in mapping)
            # RFC 6851 §4.3: COPYUID goes in an untagged OK before the EXPUNGEs
            self.emit(f"* OK [COPYUID {dest.uidvalidity} {src_set} {dst_set}] Moved UIDs.\r\n".encode())
            sel.view.expunged([s for s, _ in mapping])
            await self._teach(sel.mailbox.name, dest, [d for _, d in mapping], "MOVE")
        if len(mapping) < len(uids):
            return "NO [EXPUNGEISSUED] Some of the requested messages no longer exist."
        return "OK Move completed."

    # -- FETCH ----------------------------------------------------------------------------------

    async def cmd_fetch(self, cmd: C.Fetch) -> AsyncIterator[Step]:
        sel = self._selected()
        await self.refresh()
        pairs = self._resolve(cmd.set, cmd.uid)
        items = cmd.items
        modseq_item = C.FetchAttr("MODSEQ")
        since = cmd.changedsince
        if since is not None or modseq_item in items:  # RFC 7162 §3.1: a CONDSTORE enabling command
            self._enable_condstore()
        view = sel.view
        if cmd.vanished:  # RFC 7162 §3.2.6: UID FETCH with CHANGEDSINCE, QRESYNC enabled
            if not (cmd.uid and since is not None and self.qresync):
                raise Bad("VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC enabled.")
            snap = sel.current
            last = snap.messages[-1].uid if snap.messages else 0
            wanted = [(u, u) for u in sel.saved] if cmd.set.saved else cmd.set.resolve(last)  # RFC 5182 "$"
            await self._vanished_earlier(sel.mailbox, snap, since, wanted)
        infos = match_infos([u for _, u in pairs], sel.current.messages)
        if since is not None:  # RFC 7162 §3.1.4.1: only messages changed since, with their MODSEQ
            if modseq_item not in items:
                items = (*items, modseq_item)  # last, as Dovecot
            kept = [(p, i) for p, i in zip(pairs, infos, strict=True) if i is not None and i.modseq > since]
            pairs, infos = [p for p, _ in kept], [i for _, i in kept]
        missing = 0
        # \Seen first (RFC 3501 §6.4.5), so the data and the FLAGS shown agree.
        seen_set: frozenset[int] = frozenset()
        changed: dict[int, MessageInfo] = {}
        if not sel.readonly and any(fetch.sets_seen(i) for i in items):
            unseen = [info.uid for info in infos if info is not None and SEEN not in info.flags]
            if unseen:
                for k in range(0, len(unseen), STORE_CHUNK):
                    for i in await sel.mailbox.store_flags(unseen[k:k + STORE_CHUNK], {SEEN}, "add"):
                        changed[i.uid] = i
                infos = [changed.get(i.uid, i) if i is not None else None for i in infos]
                seen_set = frozenset(changed)
        want = frozenset(i.name for i in items if isinstance(i, C.FetchAttr) and i.name in fetch.STRUCT)
        needs_data = any(fetch.needs_data(i) for i in items)
        has_flags = any(isinstance(i, C.FetchAttr) and i.name == "FLAGS" for i in items) or bool(seen_set)
        user = self.user or ""
        if not want and not needs_data:  # metadata only: no disk access, rendered in bulk
            present: list[MessageInfo] = list(filter(None, infos))
            if len(present) != len(infos):
                missing += len(infos) - len(present)
                pairs = [p for p, i in zip(pairs, infos, strict=True) if i is not None]
            for start in range(0, len(pairs), META_BATCH):
                part = present[start:start + META_BATCH]
                self.emit(fetch.render_meta(pairs[start:start + META_BATCH], part, items, view.recent))
                yield FLUSH
                if has_flags:
                    view.reported_many(part)
        else:
            for start in range(0, len(pairs), FETCH_BATCH):
                chunk = list(zip(pairs[start:start + FETCH_BATCH], infos[start:start + FETCH_BATCH], strict=True))
                try:
                    lines, shown, gone = await fetch.render_stored(
                        sel.mailbox, user, chunk, items, want, needs_data, seen_set, view.is_recent)
                except binarymod.BinaryError as e:  # the messages before it are answered
                    self.emit(b"".join(e.lines))
                    raise
                missing += gone
                if has_flags:
                    for info in shown:
                        view.reported(info.uid, info.modseq)
                for line in lines:
                    self.emit(line)
                    yield FLUSH
        if changed and self.condstore and modseq_item not in items:
            # RFC 7162 §3.1: the \Seen set here gave the message a new MODSEQ; as Dovecot, in a FETCH
            # of its own after the data
            uid_part = cmd.uid or self.qresync
            self.emit(b"".join(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, b"UID %d " % uid if uid_part else b"",
                                                                     changed[uid].modseq)
                               for seq, uid in pairs if uid in changed))
        if missing:
            yield "NO [EXPUNGEISSUED] Some of the requested messages no longer exist."
            return
        yield ("OK UID " if cmd.uid else "OK ") + "Fetch completed."


def _create_use(uses: Sequence[str] | None) -> str | None:
    """The special use CREATE gives the new mailbox (RFC 6154 §3): NO [USEATTR] for an attribute
    we cannot give (unknown, \\All, \\Flagged) or for more than one (the store keeps one per mailbox)."""
    if not uses:
        return None
    known = []
    for use in uses:
        canon = CREATE_USES.get(use.lower())
        if canon is None:
            raise No(f"Special-use attribute {use} is not supported.", "USEATTR")
        if canon not in known:
            known.append(canon)
    if len(known) > 1:
        raise No("A mailbox can have only one special-use attribute.", "USEATTR")
    return known[0]


async def _storable(m: C.AppendMessage) -> bytes:
    """The octets to store: a literal8's binary parts base64-encoded (binary.storable, as Dovecot),
    in a worker thread when large."""
    if not m.binary:
        return m.message
    if len(m.message) > fetch.OFFLOAD_OCTETS:
        return await asyncio.to_thread(binarymod.storable, m.message)
    return binarymod.storable(m.message)


def _render_in_order(numbers: list[int]) -> bytes:
    """A sequence set keeping the given order (RFC 5267 §3.1 ESORT's ALL; SEARCH's is ascending):
    only ascending runs of consecutive numbers become ranges, as Dovecot 2.3: 5,4,3 / 1:3,7,5."""
    parts: list[bytes] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(b"%d" % numbers[i] if i == j else b"%d:%d" % (numbers[i], numbers[j]))
        i = j + 1
    return b",".join(parts)


def _reported(opts: frozenset[str], found: list[int]) -> list[int]:
    """The messages an ESEARCH reports on (RFC 7162 §3.1.5) and RETURN (SAVE) keeps (RFC 5182
    §2.4): with only MIN and/or MAX, those; otherwise all found."""
    if found and opts and opts <= {"MIN", "MAX"}:
        return sorted({found[0] if "MIN" in opts else found[-1], found[-1] if "MAX" in opts else found[0]})
    return found


def _any_key(key: C.SearchKey, pred: Callable[[C.SearchKey], bool]) -> bool:
    """Does `pred` hold for `key` or any key inside it (AND, NOT, OR)?"""
    if pred(key):
        return True
    if isinstance(key, C.SearchAnd):
        return any(_any_key(k, pred) for k in key.keys)
    if isinstance(key, C.SearchNot):
        return _any_key(key.key, pred)
    if isinstance(key, C.SearchOr):
        return _any_key(key.left, pred) or _any_key(key.right, pred)
    return False


def _uses_saved(key: C.SearchKey) -> bool:
    """Does a SEARCH use "$" (RFC 5182) anywhere?"""
    return _any_key(key, lambda k: isinstance(k, C.SearchSet) and k.set.saved)


def _with_saved(key: C.SearchKey, saved: Sequence[int]) -> C.SearchKey:
    """`key` with every "$" replaced by the UID set it names (RFC 5182 §2.1)."""
    return C.map_sets(key, lambda s: C.SearchSet(SequenceSet.of(saved), uid=True) if s.set.saved else s)


def _resolved(criteria: C.SearchAnd, sel: Selected) -> C.SearchAnd:
    """`criteria` with "$" as the UIDs it names now (RFC 5182 §2.1)."""
    if not _uses_saved(criteria):
        return criteria
    return C.SearchAnd(tuple(_with_saved(k, sel.saved) for k in criteria.keys))


def _same(n: int) -> int | None:
    return n


def _has_modseq(key: C.SearchKey) -> bool:
    """Does a SEARCH use the MODSEQ key anywhere (RFC 7162 §3.1.5)?"""
    return _any_key(key, lambda k: isinstance(k, C.SearchModseq))


__all__ = ["Bad", "Close", "Event", "LoggedIn", "No", "POLL_INTERVAL", "Send", "Session", "SessionEnd",
           "StartCompress", "StartTls", "Wait"]
