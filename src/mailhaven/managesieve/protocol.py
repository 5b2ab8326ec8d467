"""ManageSieve session state machine, sans-IO (RFC 5804).

Owns: framing and parsing of commands (quoted strings, literals, numbers; every part bounded), the
states and the commands allowed in each, SASL PLAIN/LOGIN exchanges, every reply's wording, and
turning storage outcomes and errors into OK/NO replies (one place: `storage_failed`).
Does not own: sockets, TLS, passwords and throttling, the script files or Sieve syntax. Those are the
shell's (`managesieve/server.py`, auth/login.py, sieve_store.py); the session asks for them through
*intents* and is told the outcome.

Theory of operation (as pop3/protocol.py)
-----------------------------------------
The shell feeds bytes with `receive_data()` and calls `next_event()` until it returns None (= need
more data). Events: `Send(data)`, `Close()`, `LoginFailed(reason, login, mechanism)` (a login the
session refused itself; the shell logs and counts it), and intents, each answered by the shell:

    StartTls()                 -> the OK is already queued; the shell drops buffered input, runs the
                                  handshake, then calls tls_started() (which re-sends CAPABILITY,
                                  RFC 5804 §2.2)
    Authenticate(login, pw, m) -> auth_succeeded(user) | auth_failed()
    Storage(op, args)          -> the shell runs sieve_store for session.user, then calls
                                  storage_done(value) | storage_failed(error)

While an intent is outstanding `next_event()` raises; pipelined commands wait in the buffer.

Grammar (RFC 5804 §4): a command is an atom, then arguments separated by SP: strings (quoted,
`"..."` with `\\` and `\"` escapes, or literal `{n+}` CRLF n octets) and numbers, then CRLF. Like
Pigeonhole we also take a synchronizing literal `{n}` from the client without a continuation
response (ManageSieve has none). The session never buffers more than MAX_LINE octets of a line
outside literals, nor a literal larger than its argument allows: max_script_size for a script
(PUTSCRIPT, CHECKSCRIPT), MAX_STRING otherwise. A larger literal is refused as soon as its `{n+}`
arrives (before its octets are read: they are then skipped as they come, never stored), and one
larger than MAX_SKIP ends the session.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from mailhaven.auth import sasl
from mailhaven.sieve import SieveSyntaxError

# --- limits --------------------------------------------------------------------------------------

MAX_LINE = 8192  # one line of a command, literals excluded
MAX_STRING = 8192  # a literal that is not a script (a name, a SASL response)
MAX_ARGS = 4  # the most any command takes is 2; a few more are refused without growing anything
MAX_SKIP = 256 * 1024 * 1024  # a refused literal larger than this ends the session
MAX_NUMBER = 4294967295  # RFC 5804 §4: number = 1*DIGIT, 0 .. 4294967295
IMPLEMENTATION = "Mailhaven"

# --- replies -------------------------------------------------------------------------------------

R_OK = b"OK\r\n"
R_GREETING_OK = b'OK "Mailhaven ManageSieve ready."\r\n'
R_LOGGED_IN = b'OK "Logged in."\r\n'
R_AUTH_FAILED = b'NO "Authentication failed."\r\n'
R_AUTH_ABORTED = b'NO "Authentication aborted."\r\n'
R_AUTH_BAD_MECH = b'NO "Unsupported authentication mechanism."\r\n'
R_AUTH_BAD_SASL = b'NO "Invalid SASL response."\r\n'
R_ENCRYPT_NEEDED = b'NO (ENCRYPT-NEEDED) "Plaintext authentication disallowed on non-secure connections."\r\n'
R_STARTTLS_GO = b'OK "Begin TLS negotiation now."\r\n'
R_TLS_ACTIVE = b'NO "TLS is already active."\r\n'
R_TLS_UNAVAILABLE = b'NO "TLS support isn\'t enabled."\r\n'
R_UNKNOWN = b'NO "Unknown command."\r\n'
R_NOT_AUTHENTICATED = b'NO "Authenticate first."\r\n'
R_AUTHENTICATED = b'NO "Already authenticated."\r\n'
R_SYNTAX = b'NO "Syntax error in arguments."\r\n'
R_LINE_TOO_LONG = b'NO "Line too long."\r\n'
R_LITERAL_TOO_LONG = b'NO "String too long."\r\n'
R_SCRIPT_TOO_LARGE = b'NO (QUOTA/MAXSIZE) "Script is too large."\r\n'
R_BAD_UTF8 = b'NO "Argument is not valid UTF-8."\r\n'
R_TOO_MANY_BAD = b'BYE "Too many invalid commands."\r\n'
R_LITERAL_HUGE = b'BYE "Literal too large."\r\n'
R_LOGOUT = b'OK "Logout completed."\r\n'
R_UNAUTHENTICATED = b'OK "Unauthenticated."\r\n'
R_IDLE_TIMEOUT = b'BYE "Disconnected for inactivity."\r\n'
R_LOGIN_TIMEOUT = b'BYE "Login timed out."\r\n'
R_LINE_TIMEOUT = b'BYE "Command not completed in time."\r\n'
R_SHUTDOWN = b'BYE (TRYLATER) "Server shutting down."\r\n'
R_INTERNAL = b'BYE (TRYLATER) "Internal error occurred. Refer to server log for more information."\r\n'
R_STORAGE_FAILED = b'NO (TRYLATER) "Internal error occurred. Refer to server log for more information."\r\n'


def quoted(text: str) -> bytes:
    """A string for a reply (RFC 5804 §4): quoted, or a literal `{n}` when it cannot be quoted."""
    raw = text.encode("utf-8")
    if len(raw) > 1024 or re.search(rb"[\x00\r\n]", raw):
        return b"{%d}\r\n" % len(raw) + raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def reply(status: str, text: str = "", code: str = "") -> bytes:
    """`OK`/`NO`/`BYE` [SP "(" code ")"] [SP string] CRLF (RFC 5804 §1.3)."""
    out = status.encode()
    if code:
        out += b" (" + code.encode() + b")"
    if text:
        out += b" " + quoted(text)
    return out + b"\r\n"


# --- values and events ---------------------------------------------------------------------------


class State(Enum):
    NONAUTH = "NONAUTH"
    AUTH = "AUTH"
    CLOSED = "CLOSED"


class Atom(str):
    """A bare word (the command name), as opposed to a quoted string."""


Arg = Atom | str | bytes | int  # atom, quoted string, literal, number


class ParseError(Exception):
    """A command the session cannot parse; `reply` is what to answer."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply.decode("utf-8", "replace").strip())
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    pass


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class Authenticate:
    login: str
    password: str
    mechanism: str

    def __repr__(self) -> str:  # never log passwords
        return f"Authenticate(login={self.login!r}, mechanism={self.mechanism!r})"


@dataclass(frozen=True, slots=True)
class LoginFailed:
    """A login refused without asking the shell: "plaintext_refused", "cancelled", "bad_sasl",
    "authzid_refused"."""

    reason: str
    login: str = ""
    mechanism: str = "PLAIN"


@dataclass(frozen=True, slots=True)
class Storage:
    """A script operation for the shell (sieve_store.ScriptStore of session.user): op is one of
    "havespace" (name, size), "put" (name, data), "check" (data), "list" (), "get" (name),
    "setactive" (name), "delete" (name), "rename" (old, new). storage_done's value: the listing
    [(name, active)] for "list", the script's bytes for "get", None otherwise."""

    op: str
    args: tuple[str | bytes | int, ...]


Intent = StartTls | Authenticate | Storage
Event = Send | Close | LoginFailed | Intent


# --- the command parser ----------------------------------------------------------------------------

_TOKEN = re.compile(rb' *(?:(?P<atom>[A-Za-z][A-Za-z0-9_-]*)|"(?P<q>(?:[^"\\\r\n]|\\["\\])*)"|(?P<num>[0-9]+)'
                    rb'|\{(?P<lit>[0-9]+)(?P<plus>\+?)\}$)')
_TRAILING_LITERAL = re.compile(rb"\{([0-9]+)\+?\}$")


class Parser:
    """Bytes -> commands (lists of arguments), incrementally and bounded. `literal_limit(args)` says
    how large a literal the argument after `args` may be, and the refusal of a larger one."""

    def __init__(self, literal_limit: Callable[[list[Arg]], tuple[int, bytes]], max_line: int = MAX_LINE) -> None:
        self._limit = literal_limit
        self._max_line = max_line
        self._buf = bytearray()
        self._args: list[Arg] = []
        self._literal: int | None = None  # octets of the literal being read
        self._skip = 0  # octets of a refused literal still to drop
        self._skip_line = False  # drop everything up to the end of the current command
        self._pending_error: bytes | None = None  # the reply for the command being skipped
        self._discard_to_lf = False  # inside an over-long line

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self._buf.clear()
        self._args = []
        self._literal = None
        self._skip = 0
        self._skip_line = False
        self._pending_error = None
        self._discard_to_lf = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next(self) -> list[Arg] | ParseError | None:
        """The next complete command, a ParseError for a command refused, or None (need more)."""
        while True:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                if self._skip:
                    return None
            if self._literal is not None:
                if len(self._buf) < self._literal:
                    return None
                self._args.append(bytes(self._buf[: self._literal]))
                del self._buf[: self._literal]
                self._literal = None
            nl = self._buf.find(b"\n")
            if self._discard_to_lf:  # the rest of an over-long line, already answered
                if nl < 0:
                    self._buf.clear()
                    return None
                del self._buf[: nl + 1]
                self._discard_to_lf = False
                self._end()  # a literal announced in the dropped part is lost: it reads as commands
                continue
            if nl < 0:
                if len(self._buf) > self._max_line:
                    # Too long: answer now, drop it up to its LF (bounded memory).
                    self._buf.clear()
                    self._discard_to_lf = True
                    self._fail(R_LINE_TOO_LONG, skip_line=True)
                    return self._early_error()
                return None
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            result = self._segment(line)
            if result is not None:
                return result

    def _fail(self, reply: bytes, *, skip_line: bool) -> None:
        if self._pending_error is None:
            self._pending_error = reply
        self._args = []
        self._skip_line = skip_line

    def _segment(self, line: bytes) -> list[Arg] | ParseError | None:
        """One line of a command (up to CRLF or a literal's `{n+}`). None: the command goes on."""
        if len(line) > self._max_line:
            self._fail(R_LINE_TOO_LONG, skip_line=True)
        if self._skip_line:
            m = _TRAILING_LITERAL.search(line)
            if m is not None:  # the command goes on after a literal we must skip
                self._skip = min(int(m.group(1)), MAX_SKIP) if len(m.group(1)) <= 10 else MAX_SKIP
                return None
            return self._end()
        pos = 0
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if m is None or m.end() == pos:
                self._fail(R_SYNTAX, skip_line=True)
                return self._segment(line)  # skip mode: honour a trailing literal
            pos = m.end()
            if len(self._args) >= MAX_ARGS:
                self._fail(R_SYNTAX, skip_line=True)
                return self._segment(line)
            if m.group("atom") is not None:
                self._args.append(Atom(m.group("atom").decode("ascii")))
            elif m.group("q") is not None:
                raw = re.sub(rb"\\([\"\\])", rb"\1", m.group("q"))
                try:
                    self._args.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    self._fail(R_BAD_UTF8, skip_line=True)
                    return self._segment(line)
            elif m.group("num") is not None:
                digits = m.group("num")
                if len(digits) > 10 or int(digits) > MAX_NUMBER:
                    self._fail(R_SYNTAX, skip_line=True)
                    return self._segment(line)
                self._args.append(int(digits))
            else:
                size = int(m.group("lit")) if len(m.group("lit")) <= 12 else MAX_SKIP + 1
                limit, refusal = self._limit(self._args)
                if size > limit:
                    # Refused before its octets are read (they are skipped as they arrive).
                    self._fail(refusal, skip_line=True)
                    if size > MAX_SKIP:
                        return ParseError(R_LITERAL_HUGE)
                    self._skip = size
                    return self._early_error()
                self._literal = size
                return None
        return self._end()

    def _early_error(self) -> ParseError:
        """The refusal is answered now; the rest of the command is skipped silently."""
        reply, self._pending_error = self._pending_error, b""
        assert reply is not None
        return ParseError(reply)

    def _end(self) -> list[Arg] | ParseError | None:
        args, self._args = self._args, []
        error, self._pending_error = self._pending_error, None
        self._skip_line = False
        if error is not None:
            return ParseError(error) if error else None  # b"": already answered
        return args if args else None  # an empty line is ignored


# --- the session ---------------------------------------------------------------------------------


class Session:
    """One ManageSieve connection. See the module docstring for the event contract."""

    def __init__(self, *, tls_active: bool, starttls_available: bool, insecure_auth_allowed: bool,
                 sieve_extensions: Sequence[str], max_script_size: int, max_redirects: int,
                 max_bad_commands: int) -> None:
        self.state = State.NONAUTH
        self.tls_active = tls_active
        self._starttls_available = starttls_available
        self._insecure_auth_allowed = insecure_auth_allowed
        self._extensions = " ".join(sorted(sieve_extensions))
        self._max_script_size = max_script_size
        self._max_redirects = max_redirects
        self._max_bad = max_bad_commands
        self._parser = Parser(self._literal_limit)
        self._out: deque[Event] = deque()
        self._pending: Intent | None = None
        self._bad = 0
        self._sasl: sasl.Exchange | None = None
        self.user: str | None = None
        self.commands = 0
        self.logout_received = False

    # -- capabilities -----------------------------------------------------------------------------

    @property
    def plaintext_allowed(self) -> bool:
        return self.tls_active or self._insecure_auth_allowed

    def capability(self) -> bytes:
        """RFC 5804 §1.7: the capability lines (without the final OK)."""
        lines = [b'"IMPLEMENTATION" ' + quoted(IMPLEMENTATION),
                 b'"SIEVE" ' + quoted(self._extensions)]
        if self.state is not State.AUTH:
            # As Dovecot: no mechanism is offered where it may not be used.
            mechs = " ".join(sasl.MECHANISMS) if self.plaintext_allowed else ""
            lines.append(b'"SASL" ' + quoted(mechs))
        if self.state is State.NONAUTH and self._starttls_available and not self.tls_active:
            lines.append(b'"STARTTLS"')  # RFC 5804 §1.7: only before TLS
        if self.user is not None:
            lines.append(b'"OWNER" ' + quoted(self.user))  # RFC 5804 §1.7: after login only
        lines += [b'"MAXREDIRECTS" ' + quoted(str(self._max_redirects)), b'"VERSION" "1.0"',
                  b'"UNAUTHENTICATE"']
        return b"".join(line + b"\r\n" for line in lines)

    def greeting(self) -> bytes:
        return self.capability() + R_GREETING_OK  # RFC 5804 §1.7: capabilities, then OK

    # -- input ------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._parser.feed(data)

    @property
    def awaiting(self) -> Intent | None:
        return self._pending

    def next_event(self) -> Event | None:
        if self._pending is not None:
            raise RuntimeError(f"ManageSieve session: {self._pending!r} not completed")
        while not self._out:
            if self.state is State.CLOSED:
                return None
            item = self._parser.next()
            if item is None:
                return None
            if isinstance(item, ParseError):
                self._refused(item.reply)
            else:
                self._command(item)
        ev = self._out.popleft()
        if isinstance(ev, StartTls | Authenticate | Storage):
            self._pending = ev
        return ev

    def _literal_limit(self, args: list[Arg]) -> tuple[int, bytes]:
        verb = args[0].upper() if args and isinstance(args[0], Atom) else ""
        # PUTSCRIPT name {script}, CHECKSCRIPT {script}: RFC 5804 §2.6 QUOTA/MAXSIZE
        if (verb == "PUTSCRIPT" and len(args) == 2) or (verb == "CHECKSCRIPT" and len(args) == 1):
            return self._max_script_size, R_SCRIPT_TOO_LARGE
        return MAX_STRING, R_LITERAL_TOO_LONG

    # -- output helpers ---------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._out.append(Send(data))

    def _close(self) -> None:
        self.state = State.CLOSED
        self._parser.clear()
        self._out.append(Close())

    def _refused(self, reply: bytes) -> None:
        """A command refused before it ran; counted against max_bad_commands (in a row)."""
        if self._sasl is not None:  # a bad line ends a SASL exchange too
            self._sasl = None
            self._out.append(LoginFailed("bad_sasl", "", "PLAIN"))
        if reply.startswith(b"BYE"):
            self._send(reply)
            self._close()
            return
        self._bad += 1
        if self._bad >= self._max_bad:
            self._send(R_TOO_MANY_BAD)
            self._close()
        else:
            self._send(reply)

    def _complete(self, kind: type) -> None:
        if not isinstance(self._pending, kind):
            raise RuntimeError(f"ManageSieve session: no {kind.__name__} outstanding")
        self._pending = None

    # -- commands ---------------------------------------------------------------------------------

    def _command(self, args: list[Arg]) -> None:
        if self._sasl is not None:
            self._sasl_response(args)
            return
        self.commands += 1
        verb = args[0]
        if not isinstance(verb, Atom):
            self._refused(R_UNKNOWN)
            return
        name = verb.upper()
        handler = _COMMANDS.get(name)
        if handler is None:
            self._refused(R_UNKNOWN)
            return
        allowed = _STATES[name]
        if self.state not in allowed:
            self._refused(R_NOT_AUTHENTICATED if State.AUTH in allowed else R_AUTHENTICATED)
            return
        bad = self._bad
        handler(self, args[1:])
        if self._bad == bad:
            self._bad = 0

    @staticmethod
    def _strings(args: list[Arg], *kinds: type) -> list[str | bytes | int] | None:
        """The arguments if they are of these kinds (str covers quoted strings and UTF-8 literals,
        bytes literals only), else None."""
        if len(args) != len(kinds):
            return None
        out: list[str | bytes | int] = []
        for a, kind in zip(args, kinds, strict=True):
            if isinstance(a, Atom):
                return None
            if kind is str and isinstance(a, bytes):
                try:
                    a = a.decode("utf-8")
                except UnicodeDecodeError:
                    return None
            if kind is bytes and isinstance(a, str):
                a = a.encode("utf-8")
            if not isinstance(a, kind) or isinstance(a, bool):
                return None
            out.append(a)
        return out

    def _args(self, args: list[Arg], *kinds: type) -> list[str | bytes | int] | None:
        got = self._strings(args, *kinds)
        if got is None:
            self._refused(R_SYNTAX)
        return got

    # any state (RFC 5804 §2.4, §2.3, §2.15)

    def cmd_capability(self, args: list[Arg]) -> None:
        if self._args(args) is not None:
            self._send(self.capability() + R_OK)

    def cmd_logout(self, args: list[Arg]) -> None:
        if self._args(args) is not None:
            self.logout_received = True
            self._send(R_LOGOUT)
            self._close()

    def cmd_noop(self, args: list[Arg]) -> None:
        if not args:
            self._send(b'OK "Done."\r\n')
            return
        got = self._args(args, str)
        if got is not None:  # RFC 5804 §2.15: the string comes back in a TAG response code
            self._send(b"OK (TAG " + quoted(str(got[0])) + b') "Done."\r\n')

    # non-authenticated (RFC 5804 §2.1, §2.2)

    def cmd_starttls(self, args: list[Arg]) -> None:
        if self._args(args) is None:
            return
        if self.tls_active:
            self._send(R_TLS_ACTIVE)
        elif not self._starttls_available:
            self._send(R_TLS_UNAVAILABLE)
        else:
            self._send(R_STARTTLS_GO)
            # Nothing sent before the handshake may be acted on after it (CVE-2011-0411 class).
            self._parser.clear()
            self._out.append(StartTls())

    def tls_started(self) -> None:
        self._complete(StartTls)
        self.tls_active = True
        self._parser.clear()
        self._send(self.capability() + R_OK)  # RFC 5804 §2.2: capabilities again after TLS

    def cmd_authenticate(self, args: list[Arg]) -> None:
        if not args or len(args) > 2 or isinstance(args[0], Atom | int) \
                or (len(args) == 2 and isinstance(args[1], Atom | int)):
            self._refused(R_SYNTAX)
            return
        mech = args[0].decode("ascii", "replace") if isinstance(args[0], bytes) else str(args[0])
        if not self.plaintext_allowed:
            self._out.append(LoginFailed("plaintext_refused", "", mech.upper()[:20]))
            self._send(R_ENCRYPT_NEEDED)  # RFC 5804 §1.3 ENCRYPT-NEEDED
            return
        try:
            exchange = sasl.Exchange(mech)
        except ValueError:
            self._send(R_AUTH_BAD_MECH)
            return
        initial = args[1] if len(args) == 2 else None
        if isinstance(initial, bytes):
            initial = initial.decode("ascii", "replace")
        try:
            out = exchange.start(initial if isinstance(initial, str) else None)
        except ValueError as e:
            self._sasl_error(e, exchange.mechanism)
            return
        self._sasl_step(exchange, out)

    def _sasl_step(self, exchange: sasl.Exchange, out: str | sasl.Credentials) -> None:
        if isinstance(out, str):
            self._sasl = exchange
            self._send(quoted(out) + b"\r\n")  # RFC 5804 §2.1: a challenge is a string line
            return
        self._sasl = None
        if out.authzid and out.authzid != out.login:  # no acting as another user
            self._out.append(LoginFailed("authzid_refused", out.login, exchange.mechanism))
            self._send(R_AUTH_FAILED)
            return
        self._out.append(Authenticate(out.login, out.password, exchange.mechanism))

    def _sasl_response(self, args: list[Arg]) -> None:
        exchange = self._sasl
        assert exchange is not None
        self._sasl = None
        got = self._strings(args, str)
        if got is None:
            self._out.append(LoginFailed("bad_sasl", "", exchange.mechanism))
            self._send(R_AUTH_BAD_SASL)
            return
        try:
            out = exchange.step(str(got[0]))
        except ValueError as e:
            self._sasl_error(e, exchange.mechanism)
            return
        self._sasl_step(exchange, out)

    def _sasl_error(self, e: ValueError, mechanism: str) -> None:
        self._sasl = None
        if isinstance(e, sasl.SaslCancelled):  # RFC 5804 §2.1: "*" cancels
            self._out.append(LoginFailed("cancelled", "", mechanism))
            self._send(R_AUTH_ABORTED)
        else:
            self._out.append(LoginFailed("bad_sasl", "", mechanism))
            self._send(R_AUTH_BAD_SASL)

    def auth_succeeded(self, user: str) -> None:
        self._complete(Authenticate)
        self.user = user
        self.state = State.AUTH
        self._send(R_LOGGED_IN)

    def auth_failed(self) -> None:
        self._complete(Authenticate)
        self._send(R_AUTH_FAILED)

    # authenticated (RFC 5804 §2.5 - §2.14)

    def _storage(self, op: str, args: list[Arg], *kinds: type) -> None:
        got = self._args(args, *kinds)
        if got is not None:
            self._out.append(Storage(op, tuple(got)))

    def cmd_havespace(self, args: list[Arg]) -> None:
        self._storage("havespace", args, str, int)

    def cmd_putscript(self, args: list[Arg]) -> None:
        self._storage("put", args, str, bytes)

    def cmd_checkscript(self, args: list[Arg]) -> None:
        self._storage("check", args, bytes)

    def cmd_listscripts(self, args: list[Arg]) -> None:
        self._storage("list", args)

    def cmd_getscript(self, args: list[Arg]) -> None:
        self._storage("get", args, str)

    def cmd_setactive(self, args: list[Arg]) -> None:
        self._storage("setactive", args, str)

    def cmd_deletescript(self, args: list[Arg]) -> None:
        self._storage("delete", args, str)

    def cmd_renamescript(self, args: list[Arg]) -> None:
        self._storage("rename", args, str, str)

    def cmd_unauthenticate(self, args: list[Arg]) -> None:
        if self._args(args) is not None:  # RFC 5804 §2.14.1: back to the non-authenticated state
            self.user = None
            self.state = State.NONAUTH
            self._send(R_UNAUTHENTICATED)

    def storage_done(self, value: object = None) -> None:
        """The outstanding Storage intent succeeded; `value` as the Storage docstring says."""
        pending = self._pending
        self._complete(Storage)
        assert isinstance(pending, Storage)
        if pending.op == "list" and isinstance(value, list):
            # RFC 5804 §2.7: one name per line, the active one marked
            self._send(b"".join(quoted(n) + (b" ACTIVE" if active else b"") + b"\r\n" for n, active in value)
                       + R_OK)
        elif pending.op == "get" and isinstance(value, bytes):
            # RFC 5804 §2.9: the script as a literal, then OK
            self._send(b"{%d}\r\n" % len(value) + value + b"\r\n" + R_OK)
        else:
            self._send(R_OK)

    def storage_failed(self, error: Exception) -> None:
        """The outstanding Storage intent was refused: the one place errors become replies. A
        sieve_store.ScriptError (`code`, `message`) or a SieveSyntaxError (str: "line L, column C:
        ...", RFC 5804 §2.6) is the client's; anything else is ours (NO (TRYLATER))."""
        self._complete(Storage)
        code = getattr(error, "code", None)
        message = getattr(error, "message", None)
        if isinstance(code, str) and isinstance(message, str):
            self._send(reply("NO", message, code))
        elif isinstance(error, SieveSyntaxError):
            self._send(reply("NO", str(error)))
        else:
            self._send(R_STORAGE_FAILED)

    # -- shell-initiated endings ------------------------------------------------------------------

    def abort(self, reply: bytes) -> bytes:
        """The shell ends the session (timeout, shutdown): the last words to send."""
        self.state = State.CLOSED
        self._parser.clear()
        self._out.clear()
        self._pending = None
        return reply


_Handler = Callable[[Session, list[Arg]], None]
_ANY = frozenset({State.NONAUTH, State.AUTH})
_NONAUTH = frozenset({State.NONAUTH})
_AUTH = frozenset({State.AUTH})

# RFC 5804 §2: every command and the states it is valid in.
_COMMANDS: dict[str, _Handler] = {
    "CAPABILITY": Session.cmd_capability, "LOGOUT": Session.cmd_logout, "NOOP": Session.cmd_noop,
    "STARTTLS": Session.cmd_starttls, "AUTHENTICATE": Session.cmd_authenticate,
    "HAVESPACE": Session.cmd_havespace, "PUTSCRIPT": Session.cmd_putscript,
    "CHECKSCRIPT": Session.cmd_checkscript, "LISTSCRIPTS": Session.cmd_listscripts,
    "GETSCRIPT": Session.cmd_getscript, "SETACTIVE": Session.cmd_setactive,
    "DELETESCRIPT": Session.cmd_deletescript, "RENAMESCRIPT": Session.cmd_renamescript,
    "UNAUTHENTICATE": Session.cmd_unauthenticate,
}
_STATES: dict[str, frozenset[State]] = {
    "CAPABILITY": _ANY, "LOGOUT": _ANY, "NOOP": _ANY, "STARTTLS": _NONAUTH, "AUTHENTICATE": _NONAUTH,
    "HAVESPACE": _AUTH, "PUTSCRIPT": _AUTH, "CHECKSCRIPT": _AUTH, "LISTSCRIPTS": _AUTH, "GETSCRIPT": _AUTH,
    "SETACTIVE": _AUTH, "DELETESCRIPT": _AUTH, "RENAMESCRIPT": _AUTH, "UNAUTHENTICATE": _AUTH,
}

__all__ = [
    "Arg", "Atom", "Authenticate", "Close", "Event", "Intent", "LoginFailed", "MAX_LINE", "MAX_SKIP", "MAX_STRING",
    "ParseError", "Parser", "Send", "Session", "StartTls", "State", "Storage", "quoted", "reply",
]
