"""The ManageSieve session without sockets: bytes in, replies and intents out (RFC 5804)."""

from __future__ import annotations

import base64

import pytest

from mailhaven.managesieve import protocol as P
from mailhaven.managesieve.protocol import (
    Authenticate,
    Close,
    LoginFailed,
    Send,
    Session,
    StartTls,
    State,
    Storage,
)
from mailhaven.sieve import SieveSyntaxError
from mailhaven.sieve_store import NoSuchScript, QuotaExceeded, ScriptActive

PLAIN = base64.b64encode(b"\0alice@example.test\0pw").decode()


class Driver:
    """Plays the shell: answers intents from memory, records what the session sent."""

    def __init__(self, *, tls: bool = False, plaintext: bool = True, max_script_size: int = 1000,
                 max_bad: int = 5) -> None:
        self.s = Session(tls_active=tls, starttls_available=True, insecure_auth_allowed=plaintext,
                         sieve_extensions=["fileinto", "vacation"], max_script_size=max_script_size,
                         max_redirects=4, max_bad_commands=max_bad)
        self.ops: list[Storage] = []
        self.failures: list[str] = []
        self.closed = False
        self.fail_next: Exception | None = None
        self.scripts: dict[str, bytes] = {}

    def feed(self, data: bytes) -> bytes:
        self.s.receive_data(data)
        out = b""
        while (ev := self.s.next_event()) is not None:
            if isinstance(ev, Send):
                out += ev.data
            elif isinstance(ev, Close):
                self.closed = True
            elif isinstance(ev, LoginFailed):
                self.failures.append(ev.reason)
            elif isinstance(ev, Authenticate):
                if ev.password == "pw":
                    self.s.auth_succeeded(ev.login)
                else:
                    self.s.auth_failed()
            elif isinstance(ev, StartTls):
                self.s.tls_started()
            elif isinstance(ev, Storage):
                self.ops.append(ev)
                if self.fail_next is not None:
                    e, self.fail_next = self.fail_next, None
                    self.s.storage_failed(e)
                elif ev.op == "list":
                    self.s.storage_done([("a", True), ('q"uote', False)])
                elif ev.op == "get":
                    self.s.storage_done(b"keep;\r\n")
                else:
                    self.s.storage_done()
        return out

    def login(self) -> None:
        assert self.feed(f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\n'.encode()) == P.R_LOGGED_IN


def test_greeting_is_the_capability_list_then_ok() -> None:
    d = Driver(plaintext=False)
    g = d.s.greeting()
    assert g.startswith(b'"IMPLEMENTATION" "Mailhaven"\r\n"SIEVE" "fileinto vacation"\r\n')
    assert b'"SASL" ""\r\n' in g and b'"STARTTLS"\r\n' in g and b'"VERSION" "1.0"\r\n' in g
    assert g.endswith(b'OK "Mailhaven ManageSieve ready."\r\n')


def test_starttls_then_capabilities_again_without_starttls() -> None:
    d = Driver(plaintext=False)
    out = d.feed(b"STARTTLS\r\n")
    assert out.startswith(P.R_STARTTLS_GO)
    after = out[len(P.R_STARTTLS_GO):]
    assert b'"SASL" "PLAIN LOGIN"' in after and b"STARTTLS" not in after and after.endswith(b"OK\r\n")
    assert d.feed(b"STARTTLS\r\n").startswith(b"NO")


def test_input_pipelined_after_starttls_is_dropped() -> None:
    d = Driver(plaintext=False)
    out = d.feed(f'STARTTLS\r\nAUTHENTICATE "PLAIN" "{PLAIN}"\r\n'.encode())
    assert b"Logged in" not in out and d.s.state is State.NONAUTH


def test_plaintext_auth_refused_before_tls() -> None:
    d = Driver(plaintext=False)
    assert d.feed(f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\n'.encode()).startswith(b"NO (ENCRYPT-NEEDED)")
    assert d.failures == ["plaintext_refused"] and d.s.state is State.NONAUTH


@pytest.mark.parametrize("command", [
    f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\n',
    f'AUTHENTICATE "PLAIN" {{{len(PLAIN)}+}}\r\n{PLAIN}\r\n',
    'AUTHENTICATE "PLAIN"\r\n"' + PLAIN + '"\r\n',
    'AUTHENTICATE "LOGIN"\r\n"' + base64.b64encode(b"alice@example.test").decode() + '"\r\n"'
    + base64.b64encode(b"pw").decode() + '"\r\n',
])
def test_authenticate_forms(command: str) -> None:
    d = Driver()
    assert d.feed(command.encode()).endswith(P.R_LOGGED_IN)
    assert d.s.user == "alice@example.test" and d.s.state is State.AUTH


def test_wrong_password_and_cancel() -> None:
    d = Driver()
    bad = base64.b64encode(b"\0alice@example.test\0nope").decode()
    assert d.feed(f'AUTHENTICATE "PLAIN" "{bad}"\r\n'.encode()) == P.R_AUTH_FAILED
    assert d.feed(b'AUTHENTICATE "PLAIN"\r\n"*"\r\n') == b'""\r\n' + P.R_AUTH_ABORTED
    assert d.failures == ["cancelled"]


def test_commands_need_authentication() -> None:
    d = Driver()
    assert d.feed(b"LISTSCRIPTS\r\n") == P.R_NOT_AUTHENTICATED
    assert d.ops == []


def test_storage_intents_and_replies() -> None:
    d = Driver()
    d.login()
    assert d.feed(b'PUTSCRIPT "x" {5+}\r\nkeep;\r\n') == b"OK\r\n"
    assert d.ops[-1] == Storage("put", ("x", b"keep;"))
    assert d.feed(b"LISTSCRIPTS\r\n") == b'"a" ACTIVE\r\n"q\\"uote"\r\nOK\r\n'
    assert d.feed(b'GETSCRIPT "a"\r\n') == b"{7}\r\nkeep;\r\n\r\nOK\r\n"
    assert d.feed(b'HAVESPACE "a" 10\r\n') == b"OK\r\n" and d.ops[-1] == Storage("havespace", ("a", 10))
    assert d.feed(b'RENAMESCRIPT "a" "b"\r\n') == b"OK\r\n" and d.ops[-1] == Storage("rename", ("a", "b"))
    assert d.feed(b'SETACTIVE ""\r\n') == b"OK\r\n" and d.ops[-1] == Storage("setactive", ("",))
    assert d.feed(b'CHECKSCRIPT "keep;"\r\n') == b"OK\r\n" and d.ops[-1] == Storage("check", (b"keep;",))


@pytest.mark.parametrize(("error", "reply"), [
    (SieveSyntaxError(2, 7, 'missing "'), b'NO "line 2, column 7: missing \\""\r\n'),
    (ScriptActive("You may not delete the active script."), b'NO (ACTIVE) "You may not delete the active script."\r\n'),
    (NoSuchScript("There is no script by that name."), b'NO (NONEXISTENT) "There is no script by that name."\r\n'),
    (QuotaExceeded("QUOTA/MAXSCRIPTS", "Too many."), b'NO (QUOTA/MAXSCRIPTS) "Too many."\r\n'),
    (OSError(28, "No space left on device"), P.R_STORAGE_FAILED),
])
def test_storage_errors_become_no_replies(error: Exception, reply: bytes) -> None:
    d = Driver()
    d.login()
    d.fail_next = error
    assert d.feed(b'DELETESCRIPT "a"\r\n') == reply


def test_literal_over_the_script_limit_is_refused_at_once_and_skipped() -> None:
    d = Driver(max_script_size=10)
    d.login()
    assert d.feed(b'PUTSCRIPT "x" {11+}\r\n').startswith(b"NO (QUOTA/MAXSIZE)")
    assert d.feed(b"NOOP\r\nNOOP\r") == b""  # the 11 octets: skipped
    assert d.feed(b"\nNOOP\r\n") == b'OK "Done."\r\n'
    assert d.ops == []


def test_huge_literal_ends_the_session() -> None:
    d = Driver()
    assert d.feed(b'NOOP {999999999999+}\r\n').startswith(b"BYE")
    assert d.closed


def test_long_line_refused_without_waiting_for_its_end() -> None:
    d = Driver()
    assert d.feed(b"NOOP " + b"a" * (P.MAX_LINE + 10)) == P.R_LINE_TOO_LONG
    assert d.feed(b"b" * 100000) == b""
    assert d.feed(b"\r\nNOOP\r\n") == b'OK "Done."\r\n'


def test_noop_tag_and_bad_commands_in_a_row_end_with_bye() -> None:
    d = Driver(max_bad=3)
    assert d.feed(b'NOOP "t1"\r\n') == b'OK (TAG "t1") "Done."\r\n'
    assert d.feed(b"FOO\r\n").startswith(b"NO")
    assert d.feed(b'"x"\r\n').startswith(b"NO")
    assert d.feed(b"NOOP\r\n").startswith(b"OK")  # a good command starts the count again
    d.feed(b"FOO\r\nFOO\r\n")
    assert d.feed(b"FOO\r\n") == P.R_TOO_MANY_BAD and d.closed


def test_unauthenticate_and_logout() -> None:
    d = Driver()
    d.login()
    assert d.feed(b"UNAUTHENTICATE\r\n") == P.R_UNAUTHENTICATED
    assert d.s.user is None and d.s.state is State.NONAUTH
    assert d.feed(b"LOGOUT\r\nNOOP\r\n") == P.R_LOGOUT and d.closed


def test_replies_quote_or_use_a_literal() -> None:
    assert P.quoted('a"b\\c') == b'"a\\"b\\\\c"'
    assert P.quoted("x\r\ny") == b"{4}\r\nx\r\ny"
    assert P.reply("NO", "x", "ACTIVE") == b'NO (ACTIVE) "x"\r\n'
