"""The POP3 session state machine without sockets: lines in, reply bytes and intents out."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.pop3 import protocol as P
from mailhaven.pop3.protocol import (
    Authenticate,
    Close,
    Commit,
    LoadMaildrop,
    LoginFailed,
    MessageEntry,
    Retrieve,
    Send,
    Session,
    StartTls,
    State,
)

MSG1 = b"From: a@example.test\r\nSubject: one\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n"
MSG2 = b"Subject: two\r\n\r\n.\r\n..\r\nend"
MSG3 = b"Subject: three\r\n\r\nbody\r\n"
MESSAGES = {101: MSG1, 102: MSG2, 205: MSG3}
TOTAL = sum(map(len, MESSAGES.values())) + 2  # octets RETR sends: MSG2 gets the final CRLF it lacks
UIDVALIDITY = 0x5F00AB12


def entries(msgs: dict[int, bytes] = MESSAGES) -> list[MessageEntry]:
    """What the store reports: the size RETR sends (MSG2 has no final CRLF: RETR adds one)."""
    return [MessageEntry(uid, P.retr_size(data)) for uid, data in msgs.items()]


class Driver:
    """Plays the shell: answers intents like server.py does, from in-memory data."""

    def __init__(self, *, tls: bool = False, stls: bool = True, insecure_ok: bool = True,
                 max_bad: int = 5, in_use: bool = False, password: str = "secret",
                 vanished: frozenset[int] = frozenset(), commit_ok: bool = True) -> None:
        self.s = Session(tls_active=tls, stls_available=stls, insecure_auth_allowed=insecure_ok,
                         max_bad_commands=max_bad)
        self.password = password
        self.in_use = in_use
        self.vanished = vanished
        self.commit_ok = commit_ok
        self.intents: list[object] = []
        self.failures: list[LoginFailed] = []  # what the shell logs as "pop3 login failed"
        self.closed = False

    def feed(self, data: bytes) -> bytes:
        self.s.receive_data(data)
        return self.pump()

    def pump(self) -> bytes:
        out = bytearray()
        while (ev := self.s.next_event()) is not None:
            if isinstance(ev, Send):
                out += ev.data
                continue
            if isinstance(ev, LoginFailed):
                self.failures.append(ev)
                continue
            self.intents.append(ev)
            if isinstance(ev, Close):
                self.closed = True
            elif isinstance(ev, Authenticate):
                if ev.login == "alice" and ev.password == self.password:
                    self.s.auth_succeeded("alice@example.test")
                else:
                    self.s.auth_failed()
            elif isinstance(ev, LoadMaildrop):
                if self.in_use:
                    self.s.maildrop_in_use()
                else:
                    self.s.maildrop_loaded(UIDVALIDITY, entries())
            elif isinstance(ev, Retrieve):
                if ev.uid in self.vanished:
                    self.s.message_missing()
                else:
                    self.s.message_data(MESSAGES[ev.uid])
            elif isinstance(ev, StartTls):
                self.s.tls_started()
            elif isinstance(ev, Commit):
                if self.commit_ok:
                    self.s.commit_done()
                else:
                    self.s.commit_failed()
        return bytes(out)

    def login(self) -> None:
        assert self.feed(b"USER alice\r\nPASS secret\r\n") == b"+OK\r\n+OK Logged in.\r\n"


def unstuff(body: bytes) -> bytes:
    """What a client does with a multi-line response body (RFC 1939 §3)."""
    assert body.endswith(b".\r\n")
    lines = body[:-3].split(b"\r\n")
    assert lines[-1] == b""
    return b"\r\n".join(ln[1:] if ln.startswith(b".") else ln for ln in lines[:-1]) + b"\r\n"


# --- greeting, CAPA, STLS, plaintext rules ---------------------------------------------------------


def test_greeting_is_ok_line() -> None:
    assert Driver().s.greeting().startswith(b"+OK ")


def test_capa_before_tls_lists_stls_and_required_capabilities() -> None:
    d = Driver(insecure_ok=False)
    out = d.feed(b"CAPA\r\n")
    lines = out.split(b"\r\n")
    assert lines[0].startswith(b"+OK")
    caps = set(lines[1:-2])
    assert {b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"STLS"} <= caps
    assert b"USER" not in caps and b"SASL PLAIN" not in caps  # not usable before TLS here
    assert any(c.startswith(b"IMPLEMENTATION ") for c in caps)
    assert out.endswith(b"\r\n.\r\n")


def test_capa_after_tls_lists_user_and_sasl_plain_but_not_stls() -> None:
    d = Driver(tls=True, insecure_ok=False)
    caps = set(d.feed(b"CAPA\r\n").split(b"\r\n")[1:-2])
    assert {b"USER", b"SASL PLAIN", b"TOP", b"UIDL"} <= caps
    assert b"STLS" not in caps


def test_capa_in_transaction_has_no_stls() -> None:
    d = Driver()
    d.login()
    caps = set(d.feed(b"CAPA\r\n").split(b"\r\n")[1:-2])
    assert b"STLS" not in caps and b"UIDL" in caps and b"USER" in caps


def test_capa_without_certificate_does_not_offer_stls() -> None:
    d = Driver(stls=False)
    assert b"STLS" not in d.feed(b"CAPA\r\n")
    assert d.feed(b"STLS\r\n") == P.R_STLS_UNAVAILABLE


@pytest.mark.parametrize("cmd", [b"USER alice\r\n", b"PASS secret\r\n",
                                 b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n",
                                 b"AUTH PLAIN\r\n"])
def test_plaintext_auth_is_refused_before_tls_with_dovecot_wording(cmd: bytes) -> None:
    d = Driver(insecure_ok=False)
    assert d.feed(cmd) == (b"-ERR [AUTH] Plaintext authentication disallowed on non-secure "
                           b"(SSL/TLS) connections.\r\n")
    assert not any(isinstance(i, Authenticate) for i in d.intents)
    assert [f.reason for f in d.failures] == ["plaintext_refused"]
    assert [f.mechanism for f in d.failures] == ["PLAIN" if cmd.startswith(b"AUTH") else "USER"]


def test_stls_then_login_works() -> None:
    d = Driver(insecure_ok=False)
    assert d.feed(b"STLS\r\n") == P.R_STLS_GO
    assert isinstance(d.intents[-1], StartTls) and d.s.tls_active
    d.login()
    assert d.s.state is State.TRANSACTION


def test_stls_drops_commands_pipelined_before_the_handshake() -> None:
    d = Driver(insecure_ok=False)
    out = d.feed(b"STLS\r\nUSER alice\r\nPASS secret\r\n")
    assert out == P.R_STLS_GO  # nothing after STLS was acted on
    assert d.feed(b"STAT\r\n") == P.R_WRONG_STATE


def test_stls_twice_is_refused() -> None:
    d = Driver()
    d.feed(b"STLS\r\n")
    assert d.feed(b"STLS\r\n") == P.R_STLS_ACTIVE


def test_stls_after_login_is_not_valid() -> None:
    d = Driver()
    d.login()
    assert d.feed(b"STLS\r\n") == P.R_WRONG_STATE


# --- USER/PASS and AUTH PLAIN ---------------------------------------------------------------------


def test_user_pass_logs_in_and_loads_maildrop() -> None:
    d = Driver()
    d.login()
    assert [type(i) for i in d.intents] == [Authenticate, LoadMaildrop]
    assert d.intents[0] == Authenticate("alice", "secret")
    assert d.intents[1] == LoadMaildrop("alice@example.test")
    assert d.s.user == "alice@example.test"


def test_password_may_contain_spaces() -> None:
    d = Driver(password="a b  c ")
    assert d.feed(b"USER alice\r\nPASS a b  c \r\n").endswith(P.R_LOGGED_IN)


def test_wrong_password_gets_auth_code_and_stays_in_authorization() -> None:
    d = Driver()
    assert d.feed(b"USER alice\r\nPASS nope\r\n") == b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
    assert d.s.state is State.AUTHORIZATION
    assert d.feed(b"PASS secret\r\n") == P.R_PASS_WITHOUT_USER  # USER must be given again
    d.login()


def test_pass_without_user_is_refused() -> None:
    assert Driver().feed(b"PASS secret\r\n") == P.R_PASS_WITHOUT_USER


def test_auth_plain_with_initial_response() -> None:
    d = Driver()
    ir = base64.b64encode(b"\0alice\0secret")
    assert d.feed(b"AUTH PLAIN " + ir + b"\r\n") == P.R_LOGGED_IN
    assert d.intents[0] == Authenticate("alice", "secret", "PLAIN")


def test_auth_plain_with_continuation() -> None:
    d = Driver()
    assert d.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert d.feed(base64.b64encode(b"alice\0alice\0secret") + b"\r\n") == P.R_LOGGED_IN


def test_auth_plain_continuation_can_be_cancelled() -> None:
    d = Driver()
    d.feed(b"AUTH PLAIN\r\n")
    assert d.feed(b"*\r\n") == P.R_AUTH_ABORTED
    assert d.s.state is State.AUTHORIZATION
    assert d.failures == [LoginFailed("cancelled", "", "PLAIN")]


def test_auth_plain_with_other_authzid_fails() -> None:
    d = Driver()
    ir = base64.b64encode(b"bob\0alice\0secret")
    assert d.feed(b"AUTH PLAIN " + ir + b"\r\n") == P.R_AUTH_FAILED
    assert not d.intents
    assert d.failures == [LoginFailed("authzid_refused", "alice", "PLAIN")]


@pytest.mark.parametrize("resp", [b"!!!notbase64", b"=", base64.b64encode(b"alice\0secret"),
                                  base64.b64encode(b"\0alice\0"), base64.b64encode(b"\0\xff\xfe\0pw")])
def test_auth_plain_malformed_response_fails_without_asking_the_directory(resp: bytes) -> None:
    d = Driver()
    out = d.feed(b"AUTH PLAIN " + resp + b"\r\n")
    assert out.startswith(b"-ERR")
    assert not d.intents
    assert [f.reason for f in d.failures] == ["bad_sasl"]


def test_auth_unknown_mechanism() -> None:
    assert Driver().feed(b"AUTH CRAM-MD5\r\n") == P.R_AUTH_BAD_MECH


def test_bare_auth_lists_mechanisms() -> None:
    assert Driver().feed(b"AUTH\r\n") == b"+OK\r\nPLAIN\r\n.\r\n"


def test_second_session_for_same_maildrop_gets_in_use() -> None:
    d = Driver(in_use=True)
    assert d.feed(b"USER alice\r\nPASS secret\r\n").endswith(
        b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n")
    assert d.s.state is State.AUTHORIZATION and d.s.user is None


def test_quit_in_authorization_closes_without_update() -> None:
    d = Driver()
    assert d.feed(b"QUIT\r\n") == P.R_BYE
    assert d.closed and not any(isinstance(i, Commit) for i in d.intents)


def test_transaction_commands_before_login_are_refused() -> None:
    d = Driver(max_bad=100)
    for cmd in (b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"RSET", b"TOP 1 0", b"UIDL"):
        assert d.feed(cmd + b"\r\n") == P.R_WRONG_STATE


# --- TRANSACTION ----------------------------------------------------------------------------------


def test_stat_counts_messages_and_octets() -> None:
    d = Driver()
    d.login()
    assert d.feed(b"STAT\r\n") == f"+OK 3 {TOTAL}\r\n".encode()


def test_list_sizes_are_exact_octets_of_retr() -> None:
    d = Driver()
    d.login()
    out = d.feed(b"LIST\r\n")
    lines = out.split(b"\r\n")
    assert lines[0].startswith(b"+OK 3 messages")
    sizes = {int(a): int(b) for a, b in (ln.split() for ln in lines[1:4])}
    assert lines[4:] == [b".", b""]
    for n, size in sizes.items():
        resp = d.feed(f"RETR {n}\r\n".encode())
        first, _, body = resp.partition(b"\r\n")
        assert first == f"+OK {size} octets".encode()
        data = unstuff(body)
        assert len(data) == size  # RFC 1939 §11: exact, a final CRLF RETR adds included
        msg = list(MESSAGES.values())[n - 1]
        assert data == (msg if msg.endswith(b"\r\n") else msg + b"\r\n")


def test_list_and_uidl_single_message() -> None:
    d = Driver()
    d.login()
    assert d.feed(b"LIST 2\r\n") == f"+OK 2 {len(MSG2) + 2}\r\n".encode()
    assert d.feed(b"UIDL 3\r\n") == f"+OK 3 {205:08x}{UIDVALIDITY:08x}\r\n".encode()


def test_uidl_is_dovecot_format_uid_then_uidvalidity() -> None:
    assert P.uidl_for(0x5F00AB12, 101) == "000000655f00ab12"
    d = Driver()
    d.login()
    out = d.feed(b"UIDL\r\n")
    assert out == (b"+OK 3 messages (%d octets)\r\n" % TOTAL
                   + b"".join(b"%d %s\r\n" % (i + 1, P.uidl_for(UIDVALIDITY, u).encode())
                              for i, u in enumerate(MESSAGES)) + b".\r\n")


def test_retr_dot_stuffs_and_terminates() -> None:
    d = Driver()
    d.login()
    out = d.feed(b"RETR 1\r\n")
    assert out == (f"+OK {len(MSG1)} octets\r\n".encode()
                   + b"From: a@example.test\r\nSubject: one\r\n\r\nline 1\r\n..dot line\r\nline 3\r\n.\r\n")
    assert isinstance(d.intents[-1], Retrieve) and d.intents[-1] == Retrieve(1, 101, None)


def test_retr_of_message_without_final_crlf_still_terminates_on_own_line() -> None:
    d = Driver()
    d.login()
    out = d.feed(b"RETR 2\r\n")
    assert out.endswith(b"\r\n...\r\nend\r\n.\r\n")
    assert b"\r\n..\r\n" in out


def test_top_sends_headers_blank_line_and_n_body_lines() -> None:
    d = Driver()
    d.login()
    assert d.feed(b"TOP 1 0\r\n") == b"+OK\r\nFrom: a@example.test\r\nSubject: one\r\n\r\n.\r\n"
    assert d.feed(b"TOP 1 2\r\n") == (b"+OK\r\nFrom: a@example.test\r\nSubject: one\r\n\r\n"
                                      b"line 1\r\n..dot line\r\n.\r\n")
    assert d.feed(b"TOP 1 100\r\n") == b"+OK\r\n" + P.dot_stuff(MSG1)
    assert d.feed(b"TOP 1 99999999999999999999\r\n") == b"+OK\r\n" + P.dot_stuff(MSG1)


def test_dele_marks_and_hides_message_until_rset() -> None:
    d = Driver()
    d.login()
    assert d.feed(b"DELE 2\r\n") == P.R_DELE_OK
    assert d.feed(b"RETR 2\r\n") == P.R_DELETED
    assert d.feed(b"DELE 2\r\n") == P.R_DELETED
    assert d.feed(b"LIST 2\r\n") == P.R_DELETED
    listing = d.feed(b"LIST\r\n")
    assert b"\r\n2 " not in listing and b"\r\n1 " in listing and b"\r\n3 " in listing
    assert d.feed(b"STAT\r\n") == f"+OK 2 {len(MSG1) + len(MSG3)}\r\n".encode()
    assert d.feed(b"RSET\r\n") == f"+OK 3 messages ({TOTAL} octets)\r\n".encode()
    assert d.feed(b"LIST 2\r\n") == f"+OK 2 {len(MSG2) + 2}\r\n".encode()


def test_quit_commits_marked_deletions_and_seen_then_closes() -> None:
    d = Driver()
    d.login()
    d.feed(b"RETR 1\r\nRETR 3\r\nDELE 3\r\nDELE 2\r\n")
    out = d.feed(b"QUIT\r\n")
    commit = next(i for i in d.intents if isinstance(i, Commit))
    assert commit == Commit(expunge=(102, 205), seen=(101,))
    assert out == b"+OK Logging out, 1 messages left.\r\n"
    assert d.closed and d.s.deleted_count == 2 and d.s.retrieved_count == 2


def test_quit_without_deletions_still_commits_nothing() -> None:
    d = Driver()
    d.login()
    d.feed(b"QUIT\r\n")
    assert Commit((), ()) in d.intents


def test_failed_commit_answers_err() -> None:
    d = Driver(commit_ok=False)
    d.login()
    d.feed(b"DELE 1\r\n")
    assert d.feed(b"QUIT\r\n") == P.R_COMMIT_FAILED
    assert d.closed and d.s.deleted_count == 0


def test_retr_of_message_removed_by_another_client_is_err() -> None:
    d = Driver(vanished=frozenset({102}))
    d.login()
    assert d.feed(b"RETR 2\r\n") == P.R_VANISHED
    assert d.feed(b"NOOP\r\n") == P.R_NOOP


def test_noop() -> None:
    d = Driver()
    d.login()
    assert d.feed(b"noop\r\n") == b"+OK\r\n"


@pytest.mark.parametrize("cmd", [b"RETR 99999999999999999999", b"RETR 0", b"RETR 4", b"LIST 0",
                                 b"DELE 0", b"UIDL 4", b"TOP 9 1", b"DELE 4294967297"])
def test_message_number_out_of_range_is_err(cmd: bytes) -> None:
    d = Driver()
    d.login()
    assert d.feed(cmd + b"\r\n") == P.R_NO_MESSAGE
    assert d.s.state is State.TRANSACTION


@pytest.mark.parametrize("cmd", [b"LIST -1", b"RETR", b"RETR 1 2", b"TOP 1 -5", b"TOP 1", b"DELE x",
                                 b"RETR +1", b"RETR 0x1", b"LIST 1 2", b"TOP 1 1.5",
                                 b"RETR \xd9\xa1"])
def test_malformed_arguments_are_err(cmd: bytes) -> None:
    d = Driver()
    d.login()
    out = d.feed(cmd + b"\r\n")
    assert out.startswith(b"-ERR")
    assert not any(isinstance(i, Retrieve) for i in d.intents)


@pytest.mark.parametrize("cmd", [b"STAT 1", b"NOOP x", b"RSET now", b"CAPA please"])
def test_argument_to_a_command_without_one_is_ignored_like_dovecot(cmd: bytes) -> None:
    d = Driver(max_bad=1)  # and it is not a bad command
    d.login()
    assert d.feed(cmd + b"\r\n").startswith(b"+OK")
    assert d.s.state is State.TRANSACTION


def test_unknown_command_is_err() -> None:
    d = Driver()
    assert d.feed(b"XYZZY\r\n") == P.R_UNKNOWN
    assert d.feed(b"\r\n") == P.R_UNKNOWN


def test_too_many_bad_commands_disconnects() -> None:
    d = Driver(max_bad=3)
    assert d.feed(b"FOO\r\nBAR\r\n") == P.R_UNKNOWN * 2
    assert d.feed(b"BAZ\r\nUSER alice\r\n") == P.R_TOO_MANY_BAD
    assert d.closed and d.s.state is State.CLOSED
    assert d.feed(b"USER alice\r\n") == b""


def test_out_of_range_and_deleted_message_numbers_count_as_bad_commands_like_dovecot() -> None:
    d = Driver(max_bad=3)
    d.login()
    d.feed(b"DELE 1\r\n")
    assert d.feed(b"RETR 4\r\nLIST 1\r\n") == P.R_NO_MESSAGE + P.R_DELETED
    assert d.feed(b"DELE 99999999999999999999\r\n") == P.R_TOO_MANY_BAD
    assert d.closed


def test_a_good_command_resets_the_bad_command_count_like_dovecot() -> None:
    d = Driver(max_bad=3)
    d.login()
    for _ in range(5):  # two bad ones in a row at most: never three
        assert d.feed(b"RETR 0\r\nFOO\r\nNOOP\r\n") == P.R_NO_MESSAGE + P.R_UNKNOWN + P.R_NOOP
    assert not d.closed
    assert d.feed(b"UIDL 7\r\nLIST 1 2\r\nTOP 1 -1\r\n").endswith(P.R_TOO_MANY_BAD)
    assert d.closed


def test_over_long_line_is_discarded_whole_and_answered_once() -> None:
    d = Driver()
    out = d.feed(b"USER " + b"a" * (P.MAX_LINE + 10))
    assert out == P.R_LINE_TOO_LONG
    assert d.feed(b"b" * 100_000) == b""  # still inside that line: dropped, not buffered
    assert len(d.s._buf) == 0
    assert d.feed(b"bbb\r\nNOOP\r\n") == P.R_WRONG_STATE  # rest of the long line ignored; NOOP runs
    assert not any(isinstance(i, Authenticate) for i in d.intents)


@pytest.mark.parametrize("chunks", [[b"A" * (P.MAX_LINE + 10) + b"\r\n"],
                                    [b"A" * (P.MAX_LINE + 10), b"AAAA\r\n"]])
def test_over_long_sasl_response_ends_the_exchange(chunks: list[bytes]) -> None:
    d = Driver()
    assert d.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert b"".join(d.feed(c) for c in chunks) == P.R_LINE_TOO_LONG
    assert d.feed(b"QUIT\r\n") == P.R_BYE  # a command again, not a SASL response
    assert not any(isinstance(i, Authenticate) for i in d.intents)


def test_over_long_line_in_one_chunk_is_answered() -> None:
    d = Driver()
    assert d.feed(b"X" * (P.MAX_LINE + 1) + b"\r\nQUIT\r\n") == P.R_LINE_TOO_LONG + P.R_BYE


def test_line_of_exactly_max_length_is_accepted() -> None:
    d = Driver()
    assert d.feed(b"USER " + b"a" * (P.MAX_LINE - 5) + b"\r\n") == b"+OK\r\n"


def test_non_utf8_and_nul_commands_are_err() -> None:
    d = Driver()
    assert d.feed(b"USER \xff\r\n") == P.R_BAD_ENCODING
    assert d.feed(b"USER a\x00b\r\n") == P.R_SYNTAX


def test_pipelined_commands_get_replies_in_order() -> None:
    d = Driver()
    out = d.feed(b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST 1\r\nDELE 1\r\nQUIT\r\n")
    assert out.split(b"\r\n")[:-1] == [b"+OK", b"+OK Logged in.",
                                       f"+OK 3 {TOTAL}".encode(),
                                       f"+OK 1 {len(MSG1)}".encode(), b"+OK Marked to be deleted.",
                                       b"+OK Logging out, 2 messages left."]


def test_lf_only_line_endings_are_accepted() -> None:
    d = Driver()
    assert d.feed(b"USER alice\nPASS secret\n") == b"+OK\r\n+OK Logged in.\r\n"


def test_next_event_while_intent_outstanding_is_a_shell_bug() -> None:
    s = Session(tls_active=True, stls_available=False, insecure_auth_allowed=False, max_bad_commands=5)
    s.receive_data(b"USER a\r\nPASS b\r\n")
    assert s.next_event() == Send(b"+OK\r\n")
    assert isinstance(s.next_event(), Authenticate)
    with pytest.raises(RuntimeError):
        s.next_event()
    with pytest.raises(RuntimeError):
        s.message_data(b"x")


def test_authenticate_repr_hides_password() -> None:
    assert "secret" not in repr(Authenticate("alice", "secret"))


def test_abort_stops_everything() -> None:
    d = Driver()
    d.login()
    d.feed(b"DELE 1\r\n")
    assert d.s.abort(P.R_IDLE_TIMEOUT) == P.R_IDLE_TIMEOUT
    assert d.feed(b"QUIT\r\n") == b""
    assert not any(isinstance(i, Commit) for i in d.intents)


# --- pure helpers and properties ------------------------------------------------------------------


def test_dot_stuff_examples() -> None:
    assert P.dot_stuff(b"") == b".\r\n"
    assert P.dot_stuff(b".\r\n") == b"..\r\n.\r\n"
    assert P.dot_stuff(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    assert P.dot_stuff(b"a\n.\r\n") == b"a\n..\r\n.\r\n"  # a bare LF starts a line too


@given(st.lists(st.sampled_from([b".", b"..", b"a", b"", b".x", b" .", b"\r"]), max_size=12))
def test_dot_stuff_roundtrips_and_never_contains_early_terminator(parts: list[bytes]) -> None:
    data = b"".join(p + b"\r\n" for p in parts)
    stuffed = P.dot_stuff(data)
    assert stuffed.endswith(b".\r\n")
    assert b"\r\n.\r\n" not in b"\r\n" + stuffed[:-3]
    assert unstuff(stuffed) == data or (data == b"" and stuffed == b".\r\n")


@given(st.binary(max_size=300))
def test_dot_stuffed_body_has_terminator_only_at_end(data: bytes) -> None:
    stuffed = P.dot_stuff(data)
    body = stuffed[:-3]
    assert not body.startswith(b".\r\n") and b"\n.\r\n" not in body and b"\n.\n" not in body


@given(st.binary(max_size=300), st.sampled_from([b"", b"+OK\r\n", b"+OK 12 octets\r\n"]))
def test_dot_stuff_with_prefix_is_the_prefix_then_the_stuffed_body(data: bytes, prefix: bytes) -> None:
    assert P.dot_stuff(data, prefix) == prefix + P.dot_stuff(data)


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=40))
def test_replies_do_not_depend_on_how_input_is_fragmented(cuts: list[int]) -> None:
    script = (b"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL 2\r\nTOP 1 1\r\nRETR 2\r\n"
              b"DELE 1\r\nBOGUS\r\nRSET\r\nQUIT\r\n")
    whole = Driver().feed(script)
    d = Driver()
    out = bytearray()
    pos = 0
    for c in cuts:
        out += d.feed(script[pos:pos + c])
        pos += c
    out += d.feed(script[pos:])
    assert bytes(out) == whole


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=60), max_size=20), st.booleans())
def test_arbitrary_input_never_raises_and_replies_are_lines(chunks: list[bytes], login: bool) -> None:
    d = Driver(max_bad=1000)
    if login:
        d.login()
    for c in chunks:
        out = d.feed(c)
        if out and not any(isinstance(i, Retrieve) for i in d.intents):
            assert out.endswith(b"\r\n") and (out.startswith((b"+OK", b"-ERR", b"+ ")))


@given(st.text(alphabet="0123456789-+ x", max_size=25))
def test_message_number_arguments_never_raise(arg: str) -> None:
    d = Driver(max_bad=1000)
    d.login()
    for verb in ("RETR", "LIST", "DELE", "UIDL", "TOP 1", "TOP"):
        out = d.feed(f"{verb} {arg}\r\n".encode())
        assert out.startswith((b"+OK", b"-ERR"))


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=20))
def test_top_is_a_prefix_of_the_message(data: bytes, n: int) -> None:
    assert data.startswith(P.top_of(data, n))


@given(st.lists(st.one_of(st.integers(min_value=1, max_value=3).map(lambda n: f"DELE {n}"),
                          st.just("RSET")), max_size=15))
def test_stat_and_list_agree_with_marks_after_any_dele_rset_sequence(cmds: list[str]) -> None:
    d = Driver(max_bad=1000)
    d.login()
    marked: set[int] = set()
    for cmd in cmds:
        d.feed(cmd.encode() + b"\r\n")
        if cmd == "RSET":
            marked.clear()
        else:
            marked.add(int(cmd.split()[1]))
    live = [(i + 1, e.pop3_size) for i, e in enumerate(entries()) if i + 1 not in marked]
    assert d.feed(b"STAT\r\n") == f"+OK {len(live)} {sum(s for _, s in live)}\r\n".encode()
    listing = d.feed(b"LIST\r\n").split(b"\r\n")[1:-2]
    assert listing == [f"{n} {s}".encode() for n, s in live]
    uidls = d.feed(b"UIDL\r\n").split(b"\r\n")[1:-2]
    assert [int(u.split()[0]) for u in uidls] == [n for n, _ in live]


def test_read_ahead_candidates_skip_marked_messages_and_respect_bounds() -> None:
    d = Driver()
    d.login()
    assert d.s.following(1, 4, 10**6) == [102, 205]
    assert d.s.following(1, 1, 10**6) == [102]
    assert d.s.following(0, 4, len(MSG1) + len(MSG2) + 2) == [101, 102]  # + the CRLF RETR adds to MSG2
    assert d.s.following(0, 4, len(MSG1) + len(MSG2) + 1) == [101]
    d.feed(b"DELE 2\r\n")
    assert d.s.following(1, 4, 10**6) == [205]
    assert d.s.following(3, 4, 10**6) == []


@given(st.binary(max_size=300))
def test_retr_size_is_the_octets_a_client_gets_before_the_terminator(raw: bytes) -> None:
    """RFC 1939 §11: LIST's size (the store's pop3_size) is exactly what RETR sends, for any
    message as the store hands it over (CRLF line ends; bare CR, no final line break possible)."""
    from mailhaven.store import maildir

    data = maildir.to_crlf(raw)
    body = P.dot_stuff(data)
    assert len(unstuff(body) if data else body[:-3]) == P.retr_size(data)
    assert P.retr_size(data) == len(data) + (2 if maildir.unterminated(raw) else 0)
