"""POP3 session state machine, sans-IO (RFC 1939, RFC 2449, RFC 2595, RFC 5034).

Owns: line framing (bounded), command parsing, the state machine, every reply's wording, dot-stuffing,
the maildrop view of one session (message numbers, deletion marks) and UIDL values.
Does not own: sockets, TLS, passwords, the store, locking or throttling. Those are the shell's
(`pop3/server.py`); the session asks for them through *intents* and is told the outcome.

Theory of operation
-------------------
The shell feeds received bytes with `receive_data()` and then calls `next_event()` until it
returns None (= need more data). Each event is either `Send(data)` (write these bytes),
`LoginFailed(reason, login, mechanism)` (a login the session refused itself: the shell logs it and
counts it; nothing to complete), or an intent:

    Authenticate(login, password)  -> shell checks limits + password, then calls
                                      auth_succeeded(user) | auth_failed()
    LoadMaildrop(user)             -> shell locks the user's maildrop and snapshots INBOX, then calls
                                      maildrop_loaded(uidvalidity, messages) | maildrop_in_use()
                                      | maildrop_failed()
    Retrieve(number, uid, lines)   -> shell reads the message, then calls
                                      message_data(data) | message_missing()
    StartTls()                     -> shell has already written the +OK; it drops any input it has
                                      buffered and not fed (the session dropped what it had), runs
                                      the TLS handshake, then calls tls_started()
    Commit(expunge, seen)          -> shell expunges (durably) and sets \\Seen, then calls
                                      commit_done() | commit_failed()
    Close()                        -> shell closes the connection (any Send before it is written first)

While an intent is outstanding, `next_event()` must not be called (it raises): the shell handles one
event fully, calling the completion method, before asking for the next. Pipelined commands
(RFC 2449 §6.6) simply wait in the buffer, so replies keep their order.

The shell must feed data only after `next_event()` returned None; the buffer then holds at most one
partial line, so memory per session is bounded by MAX_LINE plus one read.

States (RFC 1939 §3): AUTHORIZATION -> TRANSACTION -> UPDATE; CLOSED after QUIT or a fatal error.
Deletions are only marks until QUIT in TRANSACTION (RFC 1939 §6); a connection that drops without QUIT
never reaches UPDATE, so nothing is deleted.

UIDL format: Dovecot's default `pop3_uidl_format = %08Xu%08Xv`, that is the IMAP UID then the
UIDVALIDITY, each as 8 hex digits. Dovecot's %X prints lower-case hex (checked against Dovecot
2.3 by bench/bench_pop3.py), so we do too. The same message keeps the same UIDL across sessions
and across IMAP, and a Maildir migrated from Dovecot (UIDs kept from dovecot-uidlist) keeps the
UIDLs clients already know, so they do not download everything again.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from mailhaven.auth import sasl

# --- limits --------------------------------------------------------------------------------------

# Longest command line accepted, terminator excluded. RFC 2449 §4 allows 255 octets for commands,
# but SASL responses (RFC 5034 §4) may be longer; Dovecot accepts a few KiB. Longer lines are
# discarded whole and answered with -ERR.
MAX_LINE = 8192
# Message numbers are 1..count; anything with more digits than this is out of range, whatever it is.
_MAX_NUMBER_DIGITS = 10
IMPLEMENTATION = "Mailhaven"

# --- replies (wording follows Dovecot where clients may parse it) ---------------------------------

R_GREETING = b"+OK Mailhaven POP3 ready.\r\n"
R_PLAINTEXT_DISALLOWED = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
R_AUTH_FAILED = b"-ERR [AUTH] Authentication failed.\r\n"
R_AUTH_ABORTED = b"-ERR Authentication aborted.\r\n"
R_AUTH_BAD_MECH = b"-ERR Unsupported authentication mechanism.\r\n"
R_AUTH_BAD_BASE64 = b"-ERR Invalid base64 data in SASL response.\r\n"
R_IN_USE = b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"
R_MAILDROP_FAILED = b"-ERR [SYS/TEMP] Cannot open the mailbox, try again later.\r\n"
R_LOGGED_IN = b"+OK Logged in.\r\n"
R_USER_OK = b"+OK\r\n"
R_NO_USER = b"-ERR No username given.\r\n"
R_PASS_WITHOUT_USER = b"-ERR USER first.\r\n"
R_STLS_GO = b"+OK Begin TLS negotiation now.\r\n"
R_STLS_ACTIVE = b"-ERR TLS is already active.\r\n"
R_STLS_UNAVAILABLE = b"-ERR TLS support isn't enabled.\r\n"
R_UNKNOWN = b"-ERR Unknown command.\r\n"
R_WRONG_STATE = b"-ERR Command not valid in this state.\r\n"
R_SYNTAX = b"-ERR Syntax error in arguments.\r\n"
R_NO_MESSAGE = b"-ERR There's no message with that number.\r\n"
R_DELETED = b"-ERR Message is deleted.\r\n"
R_VANISHED = b"-ERR Message was removed by another client.\r\n"
R_LINE_TOO_LONG = b"-ERR Line too long.\r\n"
R_BAD_ENCODING = b"-ERR Command is not valid UTF-8.\r\n"
R_TOO_MANY_BAD = b"-ERR Too many bad commands.\r\n"
R_NOOP = b"+OK\r\n"
R_DELE_OK = b"+OK Marked to be deleted.\r\n"
R_BYE = b"+OK Logging out.\r\n"
R_COMMIT_FAILED = b"-ERR [SYS/TEMP] Some deleted messages could not be removed.\r\n"
R_IDLE_TIMEOUT = b"-ERR Disconnected for inactivity.\r\n"
R_LOGIN_TIMEOUT = b"-ERR Login timed out.\r\n"
R_LINE_TIMEOUT = b"-ERR Command line not completed in time.\r\n"
R_SHUTDOWN = b"-ERR [SYS/TEMP] Server shutting down.\r\n"
R_INTERNAL = b"-ERR [SYS/TEMP] Internal error occurred. Refer to server log for more information.\r\n"


# --- values and events ---------------------------------------------------------------------------


def uidl_for(uidvalidity: int, uid: int) -> str:
    """The UIDL of a message: Dovecot's `%08Xu%08Xv` (UID, then UIDVALIDITY, lower-case hex as
    Dovecot prints it)."""
    return f"{uid:08x}{uidvalidity:08x}"


class MessageRef(Protocol):
    """What the session needs of one message: its UID and exact size as RETR sends it (CRLF
    octets, the final CRLF included even when the message lacks one, before dot-stuffing; see
    `retr_size`). The store's MessageInfo is one (its pop3_size is recorded, not read, at LIST time);
    the session keeps the objects it is given, so a 10,000-message login builds nothing per message."""

    @property
    def uid(self) -> int: ...

    @property
    def pop3_size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class MessageEntry:
    """A plain MessageRef (tests, other shells)."""

    uid: int
    pop3_size: int


class State(Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Authenticate:
    login: str
    password: str = ""
    mechanism: str = "USER"  # "USER" (USER/PASS) or the SASL mechanism, for the login log line

    def __repr__(self) -> str:  # never log passwords
        return f"Authenticate(login={self.login!r})"


@dataclass(frozen=True, slots=True)
class LoadMaildrop:
    user: str


@dataclass(frozen=True, slots=True)
class Retrieve:
    number: int
    uid: int
    lines: int | None  # None = RETR (whole message); n = TOP n


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class Commit:
    expunge: tuple[int, ...]  # UIDs marked with DELE
    seen: tuple[int, ...]  # UIDs retrieved and not deleted: get \Seen, as Dovecot does


@dataclass(frozen=True, slots=True)
class Close:
    pass


@dataclass(frozen=True, slots=True)
class LoginFailed:
    """A login refused without asking the shell: reason is "plaintext_refused" (USER, PASS or AUTH
    before TLS where that is not allowed), "cancelled" (AUTH answered with "*"), "bad_sasl" (an
    AUTH PLAIN response that is not base64 or not PLAIN) or "authzid_refused" (acting as another
    user). Failures the shell decides (password, throttling) it logs itself."""

    reason: str
    login: str = ""
    mechanism: str = "USER"


Intent = Authenticate | LoadMaildrop | Retrieve | StartTls | Commit
Event = Send | LoginFailed | Intent | Close


# --- pure helpers --------------------------------------------------------------------------------


def retr_size(data: bytes) -> int:
    """The octets of `data` (CRLF line endings) in a multi-line response before the terminating
    ".CRLF", byte-stuffing aside: `dot_stuff` adds a CRLF to a message that does not end with one.
    RFC 1939 §11: LIST and STAT sizes must be these (the shell's MessageRef.pop3_size)."""
    return len(data) + 2 if data and not data.endswith(b"\r\n") else len(data)


def dot_stuff(data: bytes, prefix: bytes = b"") -> bytes:
    """Body of a multi-line response (RFC 1939 §3): byte-stuff lines starting with "." and terminate.

    A line is anything after LF (a bare LF included, so no client that splits on LF can be fooled
    into seeing an early terminator). A message without a final CRLF gets one before ".\r\n".
    `prefix` (the +OK line) is put in front in the same copy: one buffer per response, built with
    whole-buffer bytes operations (a multi-megabyte message is copied twice, not once per step).
    """
    stuffed = data.replace(b"\n.", b"\n..")  # RFC 1939 §3: every line starting with "."
    parts = [prefix]
    if stuffed.startswith(b"."):
        parts.append(b".")  # the first line has no LF before it
    parts.append(stuffed)
    if stuffed and not stuffed.endswith(b"\r\n"):
        parts.append(b"\r\n")
    parts.append(b".\r\n")  # RFC 1939 §3: the termination octets
    return b"".join(parts)


def top_of(data: bytes, lines: int) -> bytes:
    """The header section, the blank line, and the first `lines` lines of the body (RFC 1939 §7 TOP)."""
    m = re.search(rb"\r?\n\r?\n", data)
    if m is None:  # no body at all: the whole thing is header
        return data
    head_end = m.end()
    if lines == 0:
        return data[:head_end]
    pos = head_end
    for _ in range(lines):
        nl = data.find(b"\n", pos)
        if nl < 0:
            return data
        pos = nl + 1
    return data[:pos]


_NUMBER = re.compile(rf"[0-9]{{1,{_MAX_NUMBER_DIGITS}}}")


def _parse_nonneg(text: str) -> int | None:
    """A decimal with no sign, no spaces, at most _MAX_NUMBER_DIGITS digits; else None."""
    if not _NUMBER.fullmatch(text):
        return None
    return int(text)


# --- the session ---------------------------------------------------------------------------------


class Session:
    """One POP3 connection's protocol state. See the module docstring for the event contract."""

    def __init__(self, *, tls_active: bool, stls_available: bool, insecure_auth_allowed: bool,
                 max_bad_commands: int, max_line: int = MAX_LINE) -> None:
        """tls_active: implicit TLS (port 995). stls_available: STLS may be offered (listener mode
        "starttls" and a certificate). insecure_auth_allowed: plaintext auth without TLS is allowed
        (loopback listener and auth.allow_plaintext_loopback)."""
        self.state = State.AUTHORIZATION
        self.tls_active = tls_active
        self._stls_available = stls_available
        self._insecure_auth_allowed = insecure_auth_allowed
        self._max_bad = max_bad_commands
        self._max_line = max_line
        self._buf = bytearray()
        self._discarding = False  # inside an over-long line, dropping bytes until LF
        self._out: deque[Event] = deque()
        self._pending: Intent | None = None
        self._bad = 0
        self._user_arg: str | None = None  # from USER, waiting for PASS
        self._sasl_pending = False  # AUTH PLAIN sent "+ ", the next line is the response
        self._login: str | None = None  # the login being tried
        # after login
        self.user: str | None = None
        self._messages: list[MessageRef] = []
        self._uidvalidity = 0
        self._deleted: set[int] = set()  # indexes into _messages
        self._count = self._octets = 0  # messages not marked deleted, and their size
        self._retrieved: set[int] = set()
        self.retrieved_count = 0  # RETR that sent a message
        self.commands = 0  # command lines received (SASL responses not counted)
        self.quit_received = False
        self.deleted_count = 0  # messages removed in UPDATE

    # -- input ------------------------------------------------------------------------------------

    def greeting(self) -> bytes:
        return R_GREETING

    @property
    def plaintext_allowed(self) -> bool:
        return self.tls_active or self._insecure_auth_allowed

    @property
    def awaiting(self) -> Intent | None:
        """The intent the shell has not completed yet, if any."""
        return self._pending

    def receive_data(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return
            data = data[nl + 1:]
            self._discarding = False
        self._buf += data

    def next_event(self) -> Event | None:
        """The next thing for the shell to do, or None when more input is needed."""
        if self._pending is not None:
            raise RuntimeError(f"POP3 session: {self._pending!r} not completed")
        while not self._out:
            if self.state is State.CLOSED or not self._step():
                return None
        ev = self._out.popleft()
        if isinstance(ev, Authenticate | LoadMaildrop | Retrieve | StartTls | Commit):
            self._pending = ev
        return ev

    def _step(self) -> bool:
        """Consume one line from the buffer; False if there is no complete line yet."""
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) <= self._max_line:
                return False
            self._buf.clear()
            self._discarding = True
            self._line_too_long()
            return True
        line = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self._max_line:
            self._line_too_long()
        else:
            self._handle_line(line)
        return True

    def _line_too_long(self) -> None:
        # RFC 5034 §4: the -ERR ends an AUTH exchange too, so the next line is a command again
        # (not taken as the SASL response the client has given up on).
        self._sasl_pending = False
        self._bad_command(R_LINE_TOO_LONG)

    # -- output helpers ---------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._out.append(Send(data))

    def _close(self) -> None:
        self.state = State.CLOSED
        self._buf.clear()
        self._out.append(Close())

    def _bad_command(self, reply: bytes) -> None:
        """A reply counted against max_bad_commands (RFC 1939 gives no limit; Dovecot has one, for
        bad commands in a row: unknown, wrong state, bad syntax, a message number out of range or
        of a deleted message; any other command starts the count again)."""
        self._bad += 1
        if self._bad >= self._max_bad:
            self._send(R_TOO_MANY_BAD)
            self._close()
        else:
            self._send(reply)

    def _complete(self, kind: type) -> None:
        if not isinstance(self._pending, kind):
            raise RuntimeError(f"POP3 session: no {kind.__name__} outstanding")
        self._pending = None

    # -- commands ---------------------------------------------------------------------------------

    def _handle_line(self, raw: bytes) -> None:
        if self._sasl_pending:
            self._sasl_pending = False
            self._sasl_response(raw)
            return
        self.commands += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._bad_command(R_BAD_ENCODING)
            return
        if "\x00" in line:
            self._bad_command(R_SYNTAX)
            return
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        handlers = _COMMANDS.get(self.state)
        handler = handlers.get(verb) if handlers else None
        if handler is None:
            known = any(verb in table for table in _COMMANDS.values())
            self._bad_command(R_WRONG_STATE if known else R_UNKNOWN)
            return
        bad = self._bad
        handler(self, arg)
        if self._bad == bad:
            self._bad = 0  # as Dovecot: max_bad_commands counts bad commands in a row

    # AUTHORIZATION (RFC 1939 §4, §7; RFC 2449; RFC 2595; RFC 5034)

    # STAT, NOOP, RSET and CAPA take no argument (RFC 1939 §5, RFC 2449 §5); like Dovecot, one that
    # is given anyway is ignored rather than refused (the RFCs do not say which).

    def cmd_capa(self, arg: str) -> None:
        # RFC 2449 §5: capabilities of the AUTHORIZATION state are announced in both states.
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.plaintext_allowed:
            # Like Dovecot, USER and SASL PLAIN are listed only where they may be used.
            caps += ["USER", "SASL PLAIN"]
        if self.state is State.AUTHORIZATION and self._stls_available and not self.tls_active:
            caps.append("STLS")  # RFC 2595 §4: only before TLS, only in AUTHORIZATION
        caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        self._send(b"+OK Capability list follows\r\n" + "".join(c + "\r\n" for c in caps).encode() + b".\r\n")

    def cmd_stls(self, arg: str) -> None:
        if arg.strip():
            self._bad_command(R_SYNTAX)
        elif self.tls_active:
            self._send(R_STLS_ACTIVE)
        elif not self._stls_available:
            self._send(R_STLS_UNAVAILABLE)
        else:
            self._send(R_STLS_GO)
            # RFC 2595 §4 / RFC 3207 §6 reasoning: nothing sent before the handshake may be acted on
            # after it (STARTTLS command injection, CVE-2011-0411 class).
            self._buf.clear()
            self._user_arg = None
            self._out.append(StartTls())

    def tls_started(self) -> None:
        self._complete(StartTls)
        self.tls_active = True
        self._buf.clear()

    def _plaintext_refused(self, login: str, mechanism: str) -> None:
        self._out.append(LoginFailed("plaintext_refused", login, mechanism))
        self._send(R_PLAINTEXT_DISALLOWED)

    def cmd_user(self, arg: str) -> None:
        if not self.plaintext_allowed:
            self._plaintext_refused(arg.strip(), "USER")
            return
        name = arg.strip()
        if not name:
            self._bad_command(R_NO_USER)
            return
        self._user_arg = name
        self._send(R_USER_OK)

    def cmd_pass(self, arg: str) -> None:
        if not self.plaintext_allowed:
            self._plaintext_refused("", "USER")
            return
        if self._user_arg is None:
            self._bad_command(R_PASS_WITHOUT_USER)
            return
        login, self._user_arg = self._user_arg, None
        # RFC 1939 §7: the password is the rest of the line; it may contain spaces.
        self._start_auth(login, arg, "USER")

    def cmd_auth(self, arg: str) -> None:
        args = arg.split()
        if not args:
            # Pre-RFC 5034 clients (fetchmail) send a bare AUTH to list mechanisms.
            mechs = b"PLAIN\r\n" if self.plaintext_allowed else b""
            self._send(b"+OK\r\n" + mechs + b".\r\n")
            return
        if len(args) > 2:
            self._bad_command(R_SYNTAX)
            return
        if not self.plaintext_allowed:
            self._plaintext_refused("", args[0].upper()[:20])
            return
        if args[0].upper() != "PLAIN":
            self._send(R_AUTH_BAD_MECH)
            return
        if len(args) == 1:
            self._sasl_pending = True
            self._send(b"+ \r\n")  # RFC 5034 §4: empty challenge
            return
        # RFC 5034 §4: initial response; "=" stands for an empty one.
        self._sasl_response(args[1].encode("ascii", "replace"))

    def _sasl_response(self, raw: bytes) -> None:
        try:
            message = sasl.decode_response(raw)  # "=" is empty (RFC 5034 §4)
        except sasl.SaslCancelled:  # RFC 5034 §4: "*" cancels
            self._out.append(LoginFailed("cancelled", "", "PLAIN"))
            self._send(R_AUTH_ABORTED)
            return
        except ValueError:
            self._out.append(LoginFailed("bad_sasl", "", "PLAIN"))
            self._send(R_AUTH_BAD_BASE64)
            return
        try:
            creds = sasl.parse_plain(message)
        except ValueError:
            self._out.append(LoginFailed("bad_sasl", "", "PLAIN"))
            self._send(R_AUTH_FAILED)
            return
        if creds.authzid and creds.authzid != creds.login:  # no acting as another user
            self._out.append(LoginFailed("authzid_refused", creds.login, "PLAIN"))
            self._send(R_AUTH_FAILED)
            return
        self._start_auth(creds.login, creds.password, "PLAIN")

    def _start_auth(self, login: str, password: str, mechanism: str) -> None:
        self._login = login
        self._out.append(Authenticate(login, password, mechanism))

    def auth_succeeded(self, user: str) -> None:
        """The password was right; `user` is the canonical account name."""
        self._complete(Authenticate)
        self.user = user
        self._out.append(LoadMaildrop(user))

    def auth_failed(self) -> None:
        self._complete(Authenticate)
        self._login = None
        self._send(R_AUTH_FAILED)

    def maildrop_loaded(self, uidvalidity: int, messages: Sequence[MessageRef]) -> None:
        """The maildrop is locked for this session; `messages` is INBOX at this moment, in UID order."""
        self._complete(LoadMaildrop)
        self._uidvalidity = uidvalidity
        self._messages = list(messages)
        self._count, self._octets = len(self._messages), sum(m.pop3_size for m in self._messages)
        self.state = State.TRANSACTION
        self._send(R_LOGGED_IN)

    def maildrop_in_use(self) -> None:
        self._complete(LoadMaildrop)
        self.user = None
        self._send(R_IN_USE)  # RFC 2449 §8.1.1

    def maildrop_failed(self) -> None:
        self._complete(LoadMaildrop)
        self.user = None
        self._send(R_MAILDROP_FAILED)

    def cmd_quit(self, arg: str) -> None:
        self.quit_received = True
        if self.state is State.TRANSACTION:
            # RFC 1939 §6: QUIT in TRANSACTION enters UPDATE: remove the marked messages now.
            self.state = State.UPDATE
            expunge = tuple(self._messages[i].uid for i in sorted(self._deleted))
            seen = tuple(self._messages[i].uid for i in sorted(self._retrieved - self._deleted))
            self._out.append(Commit(expunge, seen))
            return
        self._send(R_BYE)  # RFC 1939 §4: QUIT in AUTHORIZATION ends without UPDATE
        self._close()

    def commit_done(self) -> None:
        """Every message of Commit.expunge is gone from disk (fsynced)."""
        self._complete(Commit)
        self.deleted_count = len(self._deleted)
        n = len(self._messages) - len(self._deleted)
        self._send(f"+OK Logging out, {n} messages left.\r\n".encode())
        self._close()

    def commit_failed(self) -> None:
        self._complete(Commit)
        self._send(R_COMMIT_FAILED)  # RFC 1939 §6: -ERR if some messages could not be removed
        self._close()

    # TRANSACTION (RFC 1939 §5, §7)

    def _visible(self) -> tuple[int, int]:
        """(messages, octets) not marked deleted; kept up to date by DELE and RSET."""
        return self._count, self._octets

    def _message_arg(self, text: str) -> int | None:
        """A message-number argument -> index, or None after sending the -ERR."""
        n = _parse_nonneg(text)
        if n is None:
            if re.fullmatch(r"[0-9]+", text):  # all digits, just huge: out of range
                self._bad_command(R_NO_MESSAGE)
            else:
                self._bad_command(R_SYNTAX)
            return None
        if not 1 <= n <= len(self._messages):
            self._bad_command(R_NO_MESSAGE)  # counted, as Dovecot does
            return None
        if n - 1 in self._deleted:  # RFC 1939 §5: deleted messages may not be referred to
            self._bad_command(R_DELETED)
            return None
        return n - 1

    def cmd_stat(self, arg: str) -> None:
        count, size = self._visible()
        self._send(f"+OK {count} {size}\r\n".encode())

    def _listing(self, arg: str, uidl: bool) -> None:
        args = arg.split()
        if len(args) > 1:
            self._bad_command(R_SYNTAX)
            return
        if args:
            i = self._message_arg(args[0])
            if i is not None:
                m = self._messages[i]
                value = uidl_for(self._uidvalidity, m.uid) if uidl else str(m.pop3_size)
                self._send(f"+OK {i + 1} {value}\r\n".encode())
            return
        # One comprehension per case: LIST/UIDL of 10,000 messages stays a few milliseconds.
        msgs, deleted = self._messages, self._deleted
        if uidl:
            v = f"{self._uidvalidity:08x}"  # uidl_for(), inlined: one f-string per message
            lines = [f"{n} {m.uid:08x}{v}\r\n" for n, m in enumerate(msgs, 1) if n - 1 not in deleted] \
                if deleted else [f"{n} {m.uid:08x}{v}\r\n" for n, m in enumerate(msgs, 1)]
        else:
            lines = [f"{n} {m.pop3_size}\r\n" for n, m in enumerate(msgs, 1) if n - 1 not in deleted] \
                if deleted else [f"{n} {m.pop3_size}\r\n" for n, m in enumerate(msgs, 1)]
        count, size = self._visible()
        self._send(f"+OK {count} messages ({size} octets)\r\n{''.join(lines)}.\r\n".encode())

    def cmd_list(self, arg: str) -> None:
        self._listing(arg, uidl=False)

    def cmd_uidl(self, arg: str) -> None:
        self._listing(arg, uidl=True)

    def cmd_retr(self, arg: str) -> None:
        args = arg.split()
        if len(args) != 1:
            self._bad_command(R_SYNTAX)
            return
        i = self._message_arg(args[0])
        if i is not None:
            self._out.append(Retrieve(i + 1, self._messages[i].uid, None))

    def cmd_top(self, arg: str) -> None:
        args = arg.split()
        if len(args) != 2:
            self._bad_command(R_SYNTAX)
            return
        lines = _parse_nonneg(args[1])
        if lines is None:
            if re.fullmatch(r"[0-9]+", args[1]):
                lines = 2**63  # more lines than any message has
            else:
                self._bad_command(R_SYNTAX)
                return
        i = self._message_arg(args[0])
        if i is not None:
            self._out.append(Retrieve(i + 1, self._messages[i].uid, lines))

    def message_data(self, data: bytes) -> None:
        """The message of the outstanding Retrieve, with CRLF line endings."""
        pending = self._pending
        self._complete(Retrieve)
        assert isinstance(pending, Retrieve)
        if pending.lines is None:
            self._retrieved.add(pending.number - 1)
            self.retrieved_count += 1
            # RFC 1939 §7 RETR: the size in the +OK line is the message's, before byte-stuffing
            # (as LIST gives it: what is sent, a final CRLF added by dot_stuff included).
            self._send(dot_stuff(data, b"+OK %d octets\r\n" % retr_size(data)))
        else:
            self._send(dot_stuff(top_of(data, pending.lines), b"+OK\r\n"))

    def following(self, number: int, count: int, max_octets: int) -> list[int]:
        """UIDs of up to `count` messages after `number`, not marked deleted, within `max_octets`
        in all: what a shell may read ahead while the client takes in message `number`."""
        uids: list[int] = []
        octets = 0
        for i in range(number, len(self._messages)):
            if len(uids) >= count:
                break
            if i in self._deleted:
                continue
            m = self._messages[i]
            octets += m.pop3_size
            if octets > max_octets:
                break
            uids.append(m.uid)
        return uids

    def message_missing(self) -> None:
        """The message was expunged by another client since login."""
        self._complete(Retrieve)
        self._send(R_VANISHED)

    def cmd_dele(self, arg: str) -> None:
        args = arg.split()
        if len(args) != 1:
            self._bad_command(R_SYNTAX)
            return
        i = self._message_arg(args[0])
        if i is not None:
            self._deleted.add(i)  # RFC 1939 §5: only marked; removed in UPDATE
            self._count -= 1
            self._octets -= self._messages[i].pop3_size
            self._send(R_DELE_OK)

    def cmd_noop(self, arg: str) -> None:
        self._send(R_NOOP)

    def cmd_rset(self, arg: str) -> None:
        self._deleted.clear()  # RFC 1939 §5 RSET: unmark every message
        self._count, self._octets = len(self._messages), sum(m.pop3_size for m in self._messages)
        count, size = self._visible()
        self._send(f"+OK {count} messages ({size} octets)\r\n".encode())

    # -- shell-initiated endings ------------------------------------------------------------------

    def abort(self, reply: bytes) -> bytes:
        """The shell ends the session (idle timeout, shutdown): the last words to send. No UPDATE."""
        self.state = State.CLOSED
        self._buf.clear()
        self._out.clear()
        self._pending = None
        return reply


_Handler = Callable[[Session, str], None]

# RFC 1939: the commands of each state (APOP is not offered).
_COMMANDS: dict[State, dict[str, _Handler]] = {
    State.AUTHORIZATION: {
        "USER": Session.cmd_user, "PASS": Session.cmd_pass, "AUTH": Session.cmd_auth,
        "STLS": Session.cmd_stls, "CAPA": Session.cmd_capa, "QUIT": Session.cmd_quit,
    },
    State.TRANSACTION: {
        "STAT": Session.cmd_stat, "LIST": Session.cmd_list, "RETR": Session.cmd_retr,
        "DELE": Session.cmd_dele, "NOOP": Session.cmd_noop, "RSET": Session.cmd_rset,
        "TOP": Session.cmd_top, "UIDL": Session.cmd_uidl, "CAPA": Session.cmd_capa,
        "QUIT": Session.cmd_quit,
    },
}
