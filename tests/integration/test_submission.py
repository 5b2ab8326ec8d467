"""Submission listeners: TLS before logins, AUTH PLAIN/LOGIN (RFC 4954), throttling, and who may
send as whom. Real listeners on 127.0.0.1 (test_submission_harness), a raw SMTP client over
real TLS."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailhaven.log import TextFormatter
from tests.integration import test_submission_harness as harness
from tests.integration.test_submission_harness import (
    ALICE,
    BOB,
    CAROL,
    PASSWORD,
    SALES,
    TEAM,
    SubmissionFactory,
    b64,
    message,
    plain,
)

submission = harness.submission
dkim_rsa = harness.dkim_rsa

STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8"
QUEUED = "250 2.0.0 Ok: queued as "


# --- TLS before anything else ------------------------------------------------------------------------

async def test_ehlo_before_starttls_offers_starttls_and_no_auth(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.raw("submission") as c:
        lines = await c.cmd("EHLO client.example")
        assert "250-STARTTLS" in lines
        assert not any("AUTH" in ln for ln in lines)
        await c.starttls(server.client_tls)
        lines = await c.cmd("EHLO client.example")
        assert "250-AUTH PLAIN LOGIN" in lines
        assert not any("STARTTLS" in ln for ln in lines)


@pytest.mark.parametrize("command", ["AUTH PLAIN " + plain(ALICE, PASSWORD), "AUTH LOGIN", f"MAIL FROM:<{ALICE}>",
                                     f"RCPT TO:<{BOB}>", "DATA", "HELO client.example", "RSET"])
async def test_everything_but_ehlo_starttls_noop_quit_needs_starttls_first(submission: SubmissionFactory,
                                                                             command: str) -> None:
    server = await submission()
    async with server.raw("submission") as c:
        await c.cmd("EHLO client.example")
        assert await c.cmd(command) == [STARTTLS_FIRST]
        assert (await c.cmd("NOOP"))[0].startswith("250")


async def test_plaintext_auth_is_refused_538_on_a_listener_without_tls(submission: SubmissionFactory) -> None:
    # allow_plaintext_loopback = false (the harness default): a loopback listener is like any other.
    server = await submission(submission_listener={"tls": "none"})
    async with server.raw("submission") as c:
        lines = await c.cmd("EHLO client.example")
        assert not any("AUTH" in ln or "STARTTLS" in ln for ln in lines)
        assert await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)) == [
            "538 5.7.11 Encryption required for requested authentication mechanism"]
        assert await c.cmd(f"MAIL FROM:<{ALICE}>") == [AUTH_REQUIRED]


async def test_plaintext_auth_works_on_a_loopback_dev_listener(submission: SubmissionFactory) -> None:
    server = await submission(submission_listener={"tls": "none"}, auth={"allow_plaintext_loopback": True})
    async with server.raw("submission") as c:
        assert "250-AUTH PLAIN LOGIN" in await c.cmd("EHLO client.example")
        assert await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)) == [AUTH_OK]
        replies = await c.transaction(ALICE, [BOB], message())
        assert replies[-1][0].startswith(QUEUED)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.25"])
async def test_dev_rule_does_not_open_plaintext_auth_on_a_listener_configured_off_loopback(
        submission: SubmissionFactory, address: str) -> None:
    # allow_plaintext_loopback is about the listener's configured address (what app.bind_all binds),
    # not the client's: the harness socket is on 127.0.0.1 and so is this client, yet a listener
    # configured on a wildcard or public address is reachable from anywhere and keeps requiring TLS.
    server = await submission(submission_listener={"tls": "none", "address": address},
                              auth={"allow_plaintext_loopback": True})
    async with server.raw("submission") as c:
        lines = await c.cmd("EHLO client.example")
        assert not any("AUTH" in ln for ln in lines)
        assert await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)) == [
            "538 5.7.11 Encryption required for requested authentication mechanism"]
        assert await c.cmd("AUTH LOGIN") == [
            "538 5.7.11 Encryption required for requested authentication mechanism"]
        assert await c.cmd(f"MAIL FROM:<{ALICE}>") == [AUTH_REQUIRED]


@pytest.mark.parametrize("address", ["0.0.0.0", "::"])
async def test_dev_rule_keeps_starttls_first_on_a_starttls_listener_configured_off_loopback(
        submission: SubmissionFactory, address: str) -> None:
    server = await submission(submission_listener={"address": address}, auth={"allow_plaintext_loopback": True})
    async with server.raw("submission") as c:
        lines = await c.cmd("EHLO client.example")
        assert "250-STARTTLS" in lines and not any("AUTH" in ln for ln in lines)
        assert await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)) == [STARTTLS_FIRST]
        assert await c.cmd(f"MAIL FROM:<{ALICE}>") == [STARTTLS_FIRST]
        await c.starttls(server.client_tls)
        assert "250-AUTH PLAIN LOGIN" in await c.cmd("EHLO client.example")
        assert await c.login() == [AUTH_OK]  # over TLS the same listener logs in


async def test_loopback_dev_listener_with_starttls_does_not_require_it(submission: SubmissionFactory) -> None:
    server = await submission(auth={"allow_plaintext_loopback": True})
    async with server.raw("submission") as c:
        lines = await c.cmd("EHLO client.example")
        assert "250-STARTTLS" in lines and "250-AUTH PLAIN LOGIN" in lines
        assert await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)) == [AUTH_OK]


async def test_starttls_resets_a_plaintext_login(submission: SubmissionFactory) -> None:
    # RFC 3207 §4.2: everything learnt before TLS is forgotten, the login included.
    server = await submission(auth={"allow_plaintext_loopback": True})
    async with server.raw("submission") as c:
        await c.cmd("EHLO client.example")
        assert await c.login() == [AUTH_OK]
        await c.starttls(server.client_tls)
        await c.cmd("EHLO client.example")
        assert await c.cmd(f"MAIL FROM:<{ALICE}>") == [AUTH_REQUIRED]


# --- AUTH ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("listener", ["submission", "submissions"])
async def test_auth_plain_with_initial_response(submission: SubmissionFactory, listener: str) -> None:
    server = await submission()
    async with server.session(listener, login=None) as c:
        assert await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)) == [AUTH_OK]


@pytest.mark.parametrize("listener", ["submission", "submissions"])
async def test_auth_plain_with_empty_challenge(submission: SubmissionFactory, listener: str) -> None:
    server = await submission()
    async with server.session(listener, login=None) as c:
        assert await c.cmd("AUTH PLAIN") == ["334 "]  # RFC 4954 §4: the space is always there
        assert await c.cmd(plain(ALICE, PASSWORD)) == [AUTH_OK]


@pytest.mark.parametrize("listener", ["submission", "submissions"])
async def test_auth_login_exchange(submission: SubmissionFactory, listener: str) -> None:
    server = await submission()
    async with server.session(listener, login=None) as c:
        assert await c.cmd("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]  # "Username:"
        assert await c.cmd(b64(ALICE)) == ["334 UGFzc3dvcmQ6"]  # "Password:"
        assert await c.cmd(b64(PASSWORD)) == [AUTH_OK]


async def test_auth_login_with_initial_user_name(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions", login=None) as c:
        assert await c.cmd(f"AUTH LOGIN {b64(ALICE)}") == ["334 UGFzc3dvcmQ6"]
        assert await c.cmd(b64(PASSWORD)) == [AUTH_OK]


async def test_mechanism_names_are_case_insensitive(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions", login=None) as c:
        assert await c.cmd("AUTH plain " + plain(ALICE, PASSWORD)) == [AUTH_OK]


async def test_login_name_is_case_insensitive(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions", login=None) as c:
        assert await c.cmd("AUTH PLAIN " + plain("ALICE@Example.Test", PASSWORD)) == [AUTH_OK]


@pytest.mark.parametrize("login,password", [(ALICE, "wrong"), ("nobody@example.test", PASSWORD),
                                            ("not an address", PASSWORD)])
async def test_bad_credentials_are_535_5_7_8(submission: SubmissionFactory, login: str, password: str) -> None:
    server = await submission()
    async with server.session("submissions", login=None) as c:
        reply = await c.cmd("AUTH PLAIN " + plain(login, password))
        assert reply == ["535 5.7.8 Authentication credentials invalid"]
        assert await c.cmd(f"MAIL FROM:<{ALICE}>") == [AUTH_REQUIRED]


async def test_unknown_mechanism_is_504(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions", login=None) as c:
        assert await c.cmd("AUTH CRAM-MD5") == ["504 5.5.4 Unrecognized authentication type"]


async def test_cancelled_exchange_is_501(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions", login=None) as c:
        assert await c.cmd("AUTH LOGIN") == ["334 VXNlcm5hbWU6"]
        assert (await c.cmd("*"))[0].startswith("501 ")  # RFC 4954 §4
        assert await c.login() == [AUTH_OK]


@pytest.mark.parametrize("response", ["not base64!", "YWJj=", "=" * 4])
async def test_undecodable_response_is_501(submission: SubmissionFactory, response: str) -> None:
    server = await submission()
    async with server.session("submissions", login=None) as c:
        await c.cmd("AUTH PLAIN")
        assert (await c.cmd(response))[0].startswith("501 5.5.2")


async def test_overlong_response_line_is_500_5_5_6_and_the_dialogue_stays_in_step(
        submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions", login=None) as c:
        await c.cmd("AUTH PLAIN")
        assert await c.cmd("A" * 50_000) == ["500 5.5.6 Authentication Exchange line is too long"]
        assert await c.cmd("NOOP") == ["250 2.0.0 OK"]
        assert await c.login() == [AUTH_OK]


async def test_proxy_authorization_is_refused(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions", login=None) as c:
        reply = await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD, authzid=BOB))
        assert reply[0].startswith("535 5.7.8")
        assert await c.cmd(f"MAIL FROM:<{BOB}>") == [AUTH_REQUIRED]


async def test_authzid_equal_to_the_login_is_accepted(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions", login=None) as c:
        assert await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD, authzid=ALICE)) == [AUTH_OK]


async def test_second_auth_is_503(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        assert (await c.cmd("AUTH PLAIN " + plain(BOB, PASSWORD)))[0].startswith("503 5.5.1")


async def test_auth_again_inside_a_transaction_is_503(submission: SubmissionFactory) -> None:
    server = await submission(auth={"allow_plaintext_loopback": True}, submission_listener={"tls": "none"})
    async with server.raw("submission") as c:
        await c.cmd("EHLO client.example")
        await c.login()
        # A second login attempt in a transaction: 503 either way (transaction or already logged in).
        await c.cmd(f"MAIL FROM:<{ALICE}>")
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)))[0].startswith("503 5.5.1")


async def test_auth_after_helo_is_refused(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.raw("submissions") as c:
        await c.cmd("HELO client.example")
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)))[0].startswith("503 5.5.1")


async def test_auth_before_ehlo_is_503(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.raw("submissions") as c:
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)))[0].startswith("503 5.5.1")


# --- throttling ----------------------------------------------------------------------------------------

async def test_failures_slow_down_the_next_attempt(submission: SubmissionFactory) -> None:
    server = await submission(auth={"failure_delay": 0.3})
    async with server.session("submissions", login=None) as c:
        start = time.monotonic()
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, "bad1")))[0].startswith(AUTH_FAILED)
        first = time.monotonic() - start
        start = time.monotonic()
        assert (await c.cmd("AUTH PLAIN " + plain(ALICE, "bad2")))[0].startswith(AUTH_FAILED)
        assert time.monotonic() - start >= 0.3 > first
        start = time.monotonic()
        assert await c.login() == [AUTH_OK]
        assert time.monotonic() - start >= 0.6  # two recent failures: twice the delay


async def test_failures_for_an_account_never_refuse_its_right_password(submission: SubmissionFactory) -> None:
    """Issue 10 item 1: the old code answered 454 to the right password after 3 failures."""
    server = await submission(auth={"max_failures_per_account": 3, "max_failures_per_ip": 100})
    async with server.session("submissions", login=None) as c:
        for i in range(3):
            assert (await c.cmd("AUTH PLAIN " + plain(ALICE, f"bad{i}")))[0].startswith(AUTH_FAILED)
        assert await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)) == [AUTH_OK]
    async with server.session("submissions", login=None) as c:
        assert await c.cmd("AUTH PLAIN " + plain(BOB, PASSWORD)) == [AUTH_OK]


async def test_an_address_over_its_failure_limit_is_delayed_not_disconnected(submission: SubmissionFactory) -> None:
    """Issue 10 item 1: the old code answered 421 and closed; now the login waits, then succeeds."""
    server = await submission(auth={"max_failures_per_ip": 3, "max_failures_per_account": 100,
                                    "failure_delay": 0.1, "max_failure_delay": 0.4})
    async with server.session("submissions", login=None) as c:
        for i in range(6):
            assert (await c.cmd("AUTH PLAIN " + plain(f"user{i}@example.test", "x")))[0].startswith(AUTH_FAILED)
        start = time.monotonic()
        assert await c.cmd("AUTH PLAIN " + plain(ALICE, PASSWORD)) == [AUTH_OK]
        assert 0.4 <= time.monotonic() - start < 5  # 3 failures over the limit: 0.1, 0.2, 0.4 (the cap)
    async with server.session("submission", login=None) as c:
        assert (await c.cmd("AUTH PLAIN " + plain(BOB, PASSWORD))) == [AUTH_OK]


async def test_a_good_login_clears_the_accounts_failures(submission: SubmissionFactory) -> None:
    server = await submission(auth={"max_failures_per_account": 3, "max_failures_per_ip": 100})
    async with server.session("submissions", login=None) as c:
        for i in range(2):
            await c.cmd("AUTH PLAIN " + plain(ALICE, f"bad{i}"))
        assert await c.login() == [AUTH_OK]
    async with server.session("submissions", login=None) as c:
        for i in range(2):
            assert (await c.cmd("AUTH PLAIN " + plain(ALICE, f"bad{i}")))[0].startswith(AUTH_FAILED)
        assert await c.login() == [AUTH_OK]


async def test_failed_logins_are_logged_with_the_login(submission: SubmissionFactory,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    server = await submission()
    with caplog.at_level("INFO", logger="mailhaven.auth"):
        async with server.session("submissions", login=None) as c:
            await c.cmd("AUTH PLAIN " + plain(ALICE, "wrong-password"))
    failed = [r for r in caplog.records if r.getMessage() == "login failed"]
    assert [r.mh_fields["user"] for r in failed] == [ALICE]  # type: ignore[attr-defined]
    assert [r.mh_fields["proto"] for r in failed] == ["submission"]  # type: ignore[attr-defined]
    assert "wrong-password" not in caplog.text and "wrong-password" not in repr([r.__dict__ for r in failed])


# --- who may send --------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [f"MAIL FROM:<{ALICE}>", f"RCPT TO:<{BOB}>", "DATA"])
async def test_nothing_but_auth_without_a_login(submission: SubmissionFactory, command: str) -> None:
    server = await submission()
    async with server.session("submission", login=None) as c:
        assert await c.cmd(command) == [AUTH_REQUIRED]


@pytest.mark.parametrize("sender", [BOB, "alice@other.test", "team-not@example.test", CAROL])
async def test_mail_from_someone_else_is_553_5_7_1(submission: SubmissionFactory, sender: str) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        reply = await c.cmd(f"MAIL FROM:<{sender}>")
        assert reply[0].startswith("553 5.7.1 ") and sender in reply[0]


@pytest.mark.parametrize("author", [BOB, f"Alice <{BOB}>", f"{ALICE}, {BOB}", f'"{ALICE}" <{BOB}>',
                                    f"Alice <{ALICE}> (and {BOB})" + f", <{BOB}>", "eve@evil.test"])
async def test_from_header_of_someone_else_is_553_5_7_1_and_nothing_is_sent(
        submission: SubmissionFactory, author: str) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        replies = await c.transaction(ALICE, [BOB, "x@remote.test"], message(sender=author))
    assert replies[-1][0].startswith("553 5.7.1 From: header"), replies
    assert server.messages(BOB) == []
    assert not server.ctx.queue.list_entries()


def _send_as_refusals(caplog: pytest.LogCaptureFixture) -> list[tuple[int, dict[str, str]]]:
    return [(r.levelno, r.mh_fields) for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "mailhaven.smtp.submission" and r.getMessage() == "send-as refused"]


async def test_refused_send_as_is_logged_at_info_with_user_address_and_reason(
        submission: SubmissionFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10 item 7: each 553 of MAIL FROM or From: gives one INFO line saying who tried which
    address and why (Postfix logs its reject_sender_login_mismatch the same way)."""
    server = await submission()
    with caplog.at_level("INFO", logger="mailhaven.smtp.submission"):
        async with server.session("submissions") as c:
            assert (await c.cmd(f"MAIL FROM:<{BOB}>"))[0].startswith("553 5.7.1")
            replies = await c.transaction(ALICE, [BOB], message(sender=f"Alice <{ALICE}>, Carol <{CAROL}>"))
            assert replies[-1][0].startswith("553 5.7.1 From: header")
            ok = await c.transaction(ALICE, [BOB], message())  # an owned sender logs no refusal
            assert ok[-1][0].startswith(QUEUED)
    assert _send_as_refusals(caplog) == [
        (20, {"user": ALICE, "address": BOB, "reason": "envelope sender (MAIL FROM) not owned by the user"}),
        (20, {"user": ALICE, "address": CAROL, "reason": "From: header address not owned by the user"}),
    ]
    line = next(r for r in caplog.records if r.getMessage() == "send-as refused")
    text = TextFormatter(journald=False).format(line)
    assert f"address={BOB}" in text and f"user={ALICE}" in text and "reason=" in text, text


@pytest.mark.parametrize("headers", ["To: bob@example.test\r\n",  # no From
                                     f"From: {ALICE}\r\nFrom: {ALICE}\r\n",  # two From fields
                                     "From: undisclosed-senders:;\r\n",  # a group, no address
                                     "From: Alice\r\n"])  # no address at all
async def test_message_without_exactly_one_from_address_is_refused(submission: SubmissionFactory,
                                                                    headers: str) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        replies = await c.transaction(ALICE, [BOB], f"{headers}Subject: x\r\n\r\nbody\r\n".encode())
    assert replies[-1][0].startswith("550 5.6.0"), replies
    assert server.messages(BOB) == []


@pytest.mark.parametrize("sender", [ALICE, "alice+lists@example.test", SALES, TEAM, "Alice@EXAMPLE.test"])
async def test_own_plus_and_alias_senders_are_accepted(submission: SubmissionFactory, sender: str) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        replies = await c.transaction(sender, [BOB], message(sender=f"Alice <{sender}>"))
    assert replies[0] == ["250 2.1.0 Sender OK"]
    assert replies[-1][0].startswith(QUEUED), replies
    assert len(server.messages(BOB)) == 1


async def test_an_alias_of_another_user_is_not_owned(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions", login=BOB) as c:
        assert (await c.cmd(f"MAIL FROM:<{SALES}>"))[0].startswith("553 5.7.1")


async def test_null_sender_is_allowed_but_from_must_still_be_owned(submission: SubmissionFactory) -> None:
    # RFC 8098 §3: MDNs go out with MAIL FROM:<>.
    server = await submission()
    async with server.session("submissions") as c:
        ok = await c.transaction("", [BOB], message(subject="read receipt"))
        bad = await c.transaction("", [BOB], message(sender=BOB, subject="forged"))
    assert ok[-1][0].startswith(QUEUED)
    assert bad[-1][0].startswith("553 5.7.1")


async def test_recipients_in_any_domain_are_accepted_after_login(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        await c.cmd(f"MAIL FROM:<{ALICE}>")
        for rcpt in ("x@remote.test", "y@elsewhere.example", BOB, TEAM, "bob+tag@example.test"):
            assert await c.cmd(f"RCPT TO:<{rcpt}>") == ["250 2.1.5 Recipient OK"]
        assert await c.cmd("RCPT TO:<Postmaster>") == ["250 2.1.5 Recipient OK"]


async def test_unknown_local_recipient_is_550_5_1_1_at_rcpt(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        await c.cmd(f"MAIL FROM:<{ALICE}>")
        assert await c.cmd("RCPT TO:<nobody@example.test>") == ["550 5.1.1 No such user here"]


@pytest.mark.parametrize("rcpt", ["x@[127.0.0.1]", "x@[IPv6:::1]"])
async def test_address_literal_recipients_are_refused(submission: SubmissionFactory, rcpt: str) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        await c.cmd(f"MAIL FROM:<{ALICE}>")
        assert (await c.cmd(f"RCPT TO:<{rcpt}>"))[0].startswith("550 5.1.2")


async def test_remote_recipient_without_a_running_queue_is_451_and_nothing_is_kept(
        submission: SubmissionFactory) -> None:
    server = await submission(no_queue=True)
    async with server.session("submissions") as c:
        replies = await c.transaction(ALICE, [BOB, "x@remote.test"], message())
    assert replies[-1][0].startswith("451 4.3.0")
    assert server.messages(BOB) == []


async def test_many_sessions_submit_concurrently(submission: SubmissionFactory) -> None:
    server = await submission()

    async def one(i: int) -> list[list[str]]:
        async with server.session("submissions") as c:
            return await c.transaction(ALICE, [BOB], message(subject=f"n{i}"))

    results = await asyncio.gather(*(one(i) for i in range(10)))
    assert all(r[-1][0].startswith(QUEUED) for r in results)
    assert len(server.messages(BOB)) == 10


@pytest.mark.parametrize("param", ["AUTH=<>", f"AUTH={ALICE.replace('@', '+40')}", "auth=<> SIZE=100"])
async def test_mail_from_auth_parameter_is_accepted_and_ignored(submission: SubmissionFactory, param: str) -> None:
    # RFC 4954 §5: a server that offers AUTH accepts the AUTH parameter of MAIL FROM.
    server = await submission()
    async with server.session("submissions") as c:
        assert await c.cmd(f"MAIL FROM:<{ALICE}> {param}") == ["250 2.1.0 Sender OK"]
        assert await c.cmd(f"RCPT TO:<{BOB}>") == ["250 2.1.5 Recipient OK"]


async def test_mail_from_auth_parameter_does_not_change_who_is_checked(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session("submissions") as c:
        reply = await c.cmd(f"MAIL FROM:<{BOB}> AUTH={BOB.replace('@', '+40')}")
        assert reply[0].startswith("553 5.7.1")


@pytest.mark.parametrize("value", ["(" * 3000 + ALICE, f"{ALICE} " + "(" * 1500 + ")" * 1500, "@" * 4000,
                                   ",\r\n ".join([ALICE] * 300)],
                         ids=["open-comments", "nested-comments", "at-signs", "300-addresses-folded"])
async def test_hostile_from_fields_are_refused_quickly_without_a_traceback(
        submission: SubmissionFactory, caplog: pytest.LogCaptureFixture, value: str) -> None:
    server = await submission()
    started = time.monotonic()
    async with server.session("submissions") as c:
        replies = await c.transaction(ALICE, [BOB], f"From: {value}\r\nSubject: x\r\n\r\nbody\r\n".encode())
    assert replies[-1][0].startswith("550 5.6.0"), replies
    assert time.monotonic() - started < 5
    assert not [r for r in caplog.records if r.exc_info]
