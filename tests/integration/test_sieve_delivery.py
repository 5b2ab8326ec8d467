"""Delivery-time Sieve (issue 13 items 4, 5, 8 in part): each user's active script runs at the MX.

The whole server runs in-process (running_app); mail arrives over SMTP with smtplib; scripts are
stored with sieve_store.ScriptStore (what ManageSieve and `mailhaven sieve put` use); remote mail
(redirects, vacation replies, rejection notices) leaves through the real queue to an SmtpPeer
that the test DNS server names as remote.test's MX. Flags are read over IMAP with imaplib.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app
from mailhaven.config import Config
from mailhaven.delivery import srs
from mailhaven.dns.resolver import Resolver
from mailhaven.message.headers import field_value
from mailhaven.policy import dkim
from mailhaven.sieve_store import ScriptStore
from tests.dnsserver import DnsServer
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.smtp_peer import SmtpPeer, shared_port, until

ALICE = "alice@example.test"
BOB = "bob@example.test"
SENDER = "sender@remote.test"


def message(subject: str = "hello", *, to: str = ALICE, extra: str = "", mid: str = "<m1@remote.test>") -> bytes:
    return (f"From: Sender <{SENDER}>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n{extra}"
            "\r\nHello there.\r\n").encode()


@dataclass
class Server:
    ctx: app.Context
    peer: SmtpPeer
    cfg: Config

    def put(self, user: str, script: str) -> None:
        ms = self.cfg.managesieve
        store = ScriptStore(Path(self.cfg.mail_root), user, max_scripts=ms.max_scripts, max_size=ms.max_script_size)
        store.put("main", script.encode())
        store.set_active("main")

    async def send(self, rcpts: list[str], msg: bytes, sender: str = SENDER) -> tuple[int, str]:
        port = self.ctx.port("mx")

        def run() -> tuple[int, str]:
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
                s.ehlo("client.remote.test")
                s.mail(sender)
                for r in rcpts:
                    code, text = s.rcpt(r)
                    assert code == 250, (code, text)
                code, text = s.data(msg)
                return code, text.decode()
        return await asyncio.to_thread(run)

    async def folder(self, user: str, name: str = "INBOX") -> list[bytes]:
        try:
            mb = await self.ctx.store.account(user).mailbox(name)
        except Exception:  # noqa: BLE001 - no such folder: nothing in it
            return []
        return [await mb.read(m.uid) for m in (await mb.snapshot()).messages]

    def folder_exists(self, user: str, name: str) -> bool:
        return (Path(self.cfg.mail_root) / "example.test" / user.split("@")[0] / f".{name}").is_dir()


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("dkim")
    pem, txt = dkim.generate_rsa(1024)
    (folder / "rsa.pem").write_bytes(pem)
    return str(folder / "rsa.pem"), txt


async def _start(tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer, key: tuple[str, str],
                 **top: Any) -> tuple[Config, SmtpPeer]:
    port = shared_port("127.0.0.2")
    dns_server.add("remote.test", "MX", "10 mx.remote.test.")
    dns_server.add("mx.remote.test", "A", "127.0.0.2")
    dns_server.add("mh1._domainkey.example.test", "TXT", key[1])
    path = app_config_file(tmp_path, tls_files, dns_server.nameserver,
                           queue={"remote_port": port, "connect_timeout": 2, "retry_schedule": ["1h"]},
                           domains={"example.test": {"dkim_key": key[0]}}, **top)
    cfg = load_test_config(path)
    add_user(cfg, ALICE, "secret-alice")
    add_user(cfg, BOB, "secret-bob")
    peer = await SmtpPeer("127.0.0.2", port).start()
    return cfg, peer


@pytest.fixture
async def server(tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer,
                 dkim_key: tuple[str, str]) -> AsyncIterator[Server]:
    cfg, peer = await _start(tmp_path, tls_files, dns_server, dkim_key)
    try:
        async with running_app(cfg) as ctx:
            yield Server(ctx, peer, cfg)
    finally:
        await peer.stop()


# --- filing --------------------------------------------------------------------------------------


async def test_without_a_script_mail_goes_to_inbox(server: Server) -> None:
    assert (await server.send([ALICE], message()))[0] == 250
    assert len(await server.folder(ALICE)) == 1


async def test_fileinto_with_create_makes_the_folder_and_files_there(server: Server) -> None:
    server.put(ALICE, 'require ["fileinto", "mailbox"];\nif header :contains "subject" "report" '
                      '{ fileinto :create "Reports.Daily"; }\n')
    assert (await server.send([ALICE], message("daily report")))[0] == 250
    assert (await server.send([ALICE], message("other", mid="<m2@remote.test>")))[0] == 250
    [filed] = await server.folder(ALICE, "Reports.Daily")
    assert b"Subject: daily report" in filed
    [kept] = await server.folder(ALICE)
    assert b"Subject: other" in kept


async def test_fileinto_a_missing_folder_without_create_keeps_and_logs(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mailhaven.sieve")
    server.put(ALICE, 'require "fileinto";\nfileinto "Nowhere";\n')
    assert (await server.send([ALICE], message()))[0] == 250
    assert len(await server.folder(ALICE)) == 1
    assert not server.folder_exists(ALICE, "Nowhere")
    assert any("no such folder" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["../bob@example.test/INBOX", "../../example.test/bob", "a/../../b", "\x00x"])
async def test_fileinto_cannot_reach_outside_the_users_own_folders(server: Server, name: str) -> None:
    server.put(ALICE, f'require ["fileinto", "mailbox"];\nfileinto :create "{name.replace(chr(0), "")}";\n')
    assert (await server.send([ALICE], message()))[0] == 250
    assert await server.folder(BOB) == []
    stored = _stored_files(Path(server.cfg.mail_root))
    assert stored and all(p.startswith("example.test/alice/") for p in stored), stored


def _stored_files(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parent.name == "new"]


async def test_explicit_keep_and_discard(server: Server) -> None:
    server.put(ALICE, 'if header :contains "subject" "spam" { discard; stop; }\nkeep;\n')
    assert (await server.send([ALICE], message("buy spam now")))[0] == 250
    assert await server.folder(ALICE) == []
    assert (await server.send([ALICE], message("real mail", mid="<m2@remote.test>")))[0] == 250
    [kept] = await server.folder(ALICE)
    assert b"Subject: real mail" in kept


async def test_a_runtime_error_keeps_in_inbox_and_logs_one_line(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mailhaven.sieve")
    # RFC 5429 §2.1 / RFC 5228 §2.10.6: reject after fileinto is a runtime error -> implicit keep
    server.put(ALICE, 'require ["fileinto", "reject", "mailbox"];\nfileinto :create "X";\nreject "no";\n')
    assert (await server.send([ALICE], message()))[0] == 250
    assert len(await server.folder(ALICE)) == 1
    assert not server.folder_exists(ALICE, "X")
    lines = [r.getMessage() for r in caplog.records if "runtime error" in r.getMessage()]
    assert len(lines) == 1 and ALICE in lines[0]


async def test_a_script_that_no_longer_compiles_is_skipped_with_a_log_line(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mailhaven.sieve")
    server.put(ALICE, "discard;\n")
    folder = Path(server.cfg.mail_root) / "example.test" / "alice" / "sieve"
    (folder / "main.sieve").write_bytes(b"if true {\n")  # broken behind the store's back
    assert (await server.send([ALICE], message()))[0] == 250
    assert len(await server.folder(ALICE)) == 1
    assert any("does not compile" in r.getMessage() for r in caplog.records)


async def test_a_changed_script_is_used_at_the_next_delivery(server: Server) -> None:
    server.put(ALICE, "discard;\n")
    assert (await server.send([ALICE], message()))[0] == 250
    assert await server.folder(ALICE) == []
    server.put(ALICE, "keep;\n")
    assert (await server.send([ALICE], message(mid="<m2@remote.test>")))[0] == 250
    assert len(await server.folder(ALICE)) == 1


# --- reject ----------------------------------------------------------------------------------------


async def test_reject_with_one_recipient_is_550_5_7_1_at_data_and_nothing_is_stored(server: Server) -> None:
    server.put(ALICE, 'require "reject";\nreject "I do not want this";\n')
    code, text = await server.send([ALICE], message())
    assert code == 550 and text.startswith("5.7.1") and "I do not want this" in text, (code, text)
    assert await server.folder(ALICE) == []
    await asyncio.sleep(0.3)
    assert server.peer.messages == [] and not server.ctx.queue.entries  # no notice: the SMTP reply said it


async def test_reject_with_two_recipients_accepts_and_sends_a_rejection_notice(server: Server) -> None:
    server.put(ALICE, 'require "ereject";\nereject "Not from you, thanks";\n')
    code, _ = await server.send([ALICE, BOB], message("the offer"))
    assert code == 250
    assert await server.folder(ALICE) == []
    assert len(await server.folder(BOB)) == 1
    [notice] = await server.peer.wait_messages(1, 20)
    assert notice.mail_from == "<>" and notice.rcpt_tos == [SENDER]
    data = notice.data
    assert field_value(data, "To") == f"<{SENDER}>"
    assert field_value(data, "Subject") == "Rejected: the offer"
    assert b"report-type=disposition-notification" in data
    assert b"Disposition: automatic-action/MDN-sent-automatically; deleted" in data
    assert b"Not from you, thanks" in data
    assert field_value(data, "From") == "Mail Delivery System <MAILER-DAEMON@example.test>"
    assert data.startswith(b"DKIM-Signature:") and b"d=example.test" in data


# --- redirect --------------------------------------------------------------------------------------


async def test_redirect_is_queued_to_the_target_with_the_original_sender(server: Server) -> None:
    server.put(ALICE, 'redirect "fwd@remote.test";\n')
    assert (await server.send([ALICE], message("forward me")))[0] == 250
    assert await server.folder(ALICE) == []  # redirect cancels the implicit keep
    [fwd] = await server.peer.wait_messages(1, 20)
    assert fwd.mail_from == SENDER and fwd.rcpt_tos == ["fwd@remote.test"]
    assert b"Subject: forward me" in fwd.data and b"Hello there." in fwd.data
    assert not fwd.data.startswith(b"Return-Path:")
    assert field_value(fwd.data, "Delivered-To") == ALICE  # loop detection downstream (as Postfix)


async def test_redirect_elsewhere_gets_an_srs_sender_when_a_secret_is_set(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer, dkim_key: tuple[str, str]) -> None:
    # delivery/sieve.py forward(): a redirect to another server is SRS-rewritten like an alias's
    # forward (delivery/forward.py), so SPF at the destination checks our domain
    cfg, peer = await _start(tmp_path, tls_files, dns_server, dkim_key, delivery={"srs_secret": "s3cret"})
    try:
        async with running_app(cfg) as ctx:
            s = Server(ctx, peer, cfg)
            s.put(ALICE, 'redirect "fwd@remote.test";\n')
            assert (await s.send([ALICE], message("forward me")))[0] == 250
            [fwd] = await peer.wait_messages(1, 20)
            assert fwd.rcpt_tos == ["fwd@remote.test"]
            assert fwd.mail_from.startswith("SRS0=") and fwd.mail_from.endswith(f"@{cfg.srs_domain}")
            assert srs.Srs(b"s3cret", cfg.srs_domain).reverse(fwd.mail_from) == SENDER
    finally:
        await peer.stop()


async def test_redirect_copy_keeps_too(server: Server) -> None:
    server.put(ALICE, 'require "copy";\nredirect :copy "fwd@remote.test";\n')
    assert (await server.send([ALICE], message()))[0] == 250
    assert len(await server.folder(ALICE)) == 1
    await server.peer.wait_messages(1, 20)


async def test_five_redirects_are_a_runtime_error_nothing_forwarded_and_kept(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mailhaven.sieve")
    server.put(ALICE, "".join(f'redirect "r{i}@remote.test";\n' for i in range(5)))
    assert (await server.send([ALICE], message()))[0] == 250
    assert len(await server.folder(ALICE)) == 1
    assert any("more than 4 redirects" in r.getMessage() for r in caplog.records)
    await asyncio.sleep(0.5)
    assert server.peer.messages == [] and not server.ctx.queue.entries


async def test_four_redirects_all_go_out(server: Server) -> None:
    server.put(ALICE, "".join(f'redirect "r{i}@remote.test";\n' for i in range(4)))
    assert (await server.send([ALICE], message()))[0] == 250
    got = await server.peer.wait_messages(4, 20)
    assert sorted(r for m in got for r in m.rcpt_tos) == [f"r{i}@remote.test" for i in range(4)]


async def test_a_redirect_loop_back_to_the_user_is_kept_not_forwarded_again(server: Server) -> None:
    server.put(ALICE, f'redirect "{BOB}";\n')
    server.put(BOB, f'redirect "{ALICE}";\n')
    assert (await server.send([ALICE], message()))[0] == 250
    # alice -> bob -> alice again: alice's second copy carries her Delivered-To twice and is kept
    [kept] = await until(lambda: server.folder(ALICE), 10)
    assert kept.count(f"Delivered-To: {ALICE}".encode()) == 2
    assert await server.folder(BOB) == []


# --- vacation -------------------------------------------------------------------------------------

VACATION = 'require "vacation";\nvacation :days 7 :subject "Away" "I am away until Monday.";\n'


async def test_vacation_replies_once_signed_and_threaded(server: Server, dns_server: DnsServer) -> None:
    server.put(ALICE, VACATION)
    assert (await server.send([ALICE], message("question", extra="References: <m0@remote.test>\r\n")))[0] == 250
    assert len(await server.folder(ALICE)) == 1  # vacation keeps the message
    [reply] = await server.peer.wait_messages(1, 20)
    assert reply.mail_from == "<>" and reply.rcpt_tos == [SENDER]  # RFC 5230 §5.1: null sender
    data = reply.data
    assert field_value(data, "From") == f"<{ALICE}>"
    assert field_value(data, "To") == f"<{SENDER}>"
    assert field_value(data, "Subject") == "Away"
    assert field_value(data, "Auto-Submitted", ).startswith("auto-replied")  # type: ignore[union-attr]
    assert field_value(data, "In-Reply-To") == "<m1@remote.test>"
    assert field_value(data, "References") == "<m0@remote.test> <m1@remote.test>"
    assert b"I am away until Monday." in data
    results = await dkim.verify(Resolver([dns_server.nameserver], timeout=2), data)
    assert [(r.result, r.domain) for r in results] == [("pass", "example.test")]
    # A second message from the same sender within :days: no second reply.
    assert (await server.send([ALICE], message("again", mid="<m2@remote.test>")))[0] == 250
    await asyncio.sleep(0.5)
    assert len(server.peer.messages) == 1 and not server.ctx.queue.entries


async def test_vacation_default_subject_is_auto_and_the_original(server: Server) -> None:
    server.put(ALICE, 'require "vacation";\nvacation "Away.";\n')
    assert (await server.send([ALICE], message("Lunch?")))[0] == 250
    [reply] = await server.peer.wait_messages(1, 20)
    assert field_value(reply.data, "Subject") == "Auto: Lunch?"


async def test_vacation_memory_survives_a_restart(tmp_path: Path, tls_files: tuple[Path, Path],
                                                  dns_server: DnsServer, dkim_key: tuple[str, str]) -> None:
    cfg, peer = await _start(tmp_path, tls_files, dns_server, dkim_key)
    try:
        async with running_app(cfg) as ctx:
            s = Server(ctx, peer, cfg)
            s.put(ALICE, VACATION)
            assert (await s.send([ALICE], message()))[0] == 250
            await peer.wait_messages(1, 20)
        async with running_app(cfg) as ctx:
            s = Server(ctx, peer, cfg)
            assert (await s.send([ALICE], message(mid="<m2@remote.test>")))[0] == 250
            assert len(await s.folder(ALICE)) == 2
            await asyncio.sleep(0.5)
            assert len(peer.messages) == 1 and not ctx.queue.entries
    finally:
        await peer.stop()


@pytest.mark.parametrize(("sender", "extra"), [
    ("", ""),  # null sender (RFC 5230 §5 / RFC 3834 §2)
    (SENDER, "List-Id: <list.remote.test>\r\n"),
    (SENDER, "List-Unsubscribe: <mailto:leave@remote.test>\r\n"),
    (SENDER, "Precedence: bulk\r\n"),
    (SENDER, "Auto-Submitted: auto-generated\r\n"),
    (SENDER, "Auto-Submitted: auto-replied (vacation)\r\n"),  # another vacation reply
    ("MAILER-DAEMON@remote.test", ""),
    ("owner-list@remote.test", ""),
])
async def test_vacation_never_answers_lists_bulk_automatons_or_null_senders(
        server: Server, sender: str, extra: str) -> None:
    server.put(ALICE, VACATION)
    assert (await server.send([ALICE], message(extra=extra), sender=sender))[0] == 250
    assert len(await server.folder(ALICE)) == 1
    await asyncio.sleep(0.5)
    assert server.peer.messages == [] and not server.ctx.queue.entries


async def test_vacation_does_not_answer_mail_not_addressed_to_the_user(server: Server) -> None:
    server.put(ALICE, VACATION)
    assert (await server.send([ALICE], message(to="someone-else@remote.test")))[0] == 250  # a Bcc
    await asyncio.sleep(0.5)
    assert server.peer.messages == []
    server.put(ALICE, 'require "vacation";\nvacation :addresses "old@example.test" "Away.";\n')
    assert (await server.send([ALICE], message(to="old@example.test", mid="<m2@remote.test>")))[0] == 250
    [reply] = await server.peer.wait_messages(1, 20)
    assert reply.rcpt_tos == [SENDER]


async def test_vacation_to_a_local_sender_is_delivered_and_not_answered_back(server: Server) -> None:
    server.put(ALICE, VACATION)
    server.put(BOB, VACATION)
    msg = f"From: {BOB}\r\nTo: {ALICE}\r\nSubject: hi\r\nMessage-ID: <b1@example.test>\r\n\r\nhi\r\n".encode()
    assert (await server.send([ALICE], msg, sender=BOB))[0] == 250
    [reply] = await until(lambda: server.folder(BOB), 10)
    assert field_value(reply, "Auto-Submitted", ).startswith("auto-replied")  # type: ignore[union-attr]
    assert reply.startswith(b"Return-Path: <>\r\n")
    await asyncio.sleep(0.3)
    assert len(await server.folder(ALICE)) == 1  # bob's vacation did not answer alice's reply


# --- sending limits ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _limited(tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer, dkim_key: tuple[str, str],
                   script: str, **submission: int) -> AsyncIterator[Server]:
    """A server whose [submission] hourly limits are `submission`, alice's script active."""
    cfg, peer = await _start(tmp_path, tls_files, dns_server, dkim_key, submission=submission)
    try:
        async with running_app(cfg) as ctx:
            s = Server(ctx, peer, cfg)
            s.put(ALICE, script)
            yield s
    finally:
        await peer.stop()


async def test_redirects_count_against_the_hourly_sending_limit(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer, dkim_key: tuple[str, str]) -> None:
    async with _limited(tmp_path, tls_files, dns_server, dkim_key, 'redirect "fwd@remote.test";\n',
                        max_messages_per_hour=2) as s:
        for i in range(3):
            assert (await s.send([ALICE], message(mid=f"<m{i}@remote.test>")))[0] == 250
        await s.peer.wait_messages(2, 20)
        await asyncio.sleep(0.5)
        assert len(s.peer.messages) == 2
        assert len(await s.folder(ALICE)) == 1  # the third was not forwarded: kept instead


async def test_a_zero_sending_limit_means_no_limit_for_redirects(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer, dkim_key: tuple[str, str]) -> None:
    async with _limited(tmp_path, tls_files, dns_server, dkim_key, 'redirect "fwd@remote.test";\n',
                        max_messages_per_hour=0, max_recipients_per_hour=0) as s:
        assert (await s.send([ALICE], message()))[0] == 250
        await s.peer.wait_messages(1, 20)
        assert await s.folder(ALICE) == []


async def test_vacation_replies_count_against_the_hourly_sending_limit(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer, dkim_key: tuple[str, str]) -> None:
    async with _limited(tmp_path, tls_files, dns_server, dkim_key, VACATION, max_messages_per_hour=1) as s:
        for i in range(3):  # three senders: each would get a reply, the limit allows one
            sender = f"s{i}@remote.test"
            assert (await s.send([ALICE], message(mid=f"<v{i}@remote.test>"), sender=sender))[0] == 250
        await s.peer.wait_messages(1, 20)
        await asyncio.sleep(0.5)
        assert [m.rcpt_tos for m in s.peer.messages] == [["s0@remote.test"]]
        assert len(await s.folder(ALICE)) == 3  # every message kept; only the replies are limited


# --- imap4flags ------------------------------------------------------------------------------------


async def test_imap4flags_flagged_is_visible_over_imap(server: Server) -> None:
    server.put(ALICE, 'require "imap4flags";\naddflag "\\\\Flagged";\nkeep;\n')
    assert (await server.send([ALICE], message()))[0] == 250
    port = server.ctx.port("imap")

    def fetch() -> bytes:
        with imaplib.IMAP4("127.0.0.1", port) as c:
            c.starttls()
            c.login(ALICE, "secret-alice")
            c.select("INBOX")
            typ, data = c.fetch("1", "(FLAGS)")
            assert typ == "OK"
            return data[0]  # type: ignore[return-value]
    flags = await asyncio.to_thread(fetch)
    assert b"\\Flagged" in flags, flags


def _imap_flags(port: int, folder: str, *, remove: str | None = None) -> tuple[bytes, bytes]:
    """FETCH FLAGS of message 1 in `folder`, then (after STORE -FLAGS `remove`, if given) once more
    over a new connection."""
    def flags_of(c: imaplib.IMAP4) -> bytes:
        typ, data = c.fetch("1", "(FLAGS)")
        assert typ == "OK", data
        return data[0]  # type: ignore[return-value]

    with imaplib.IMAP4("127.0.0.1", port) as c:
        c.starttls()
        c.login(ALICE, "secret-alice")
        assert c.select(folder)[0] == "OK"
        before = flags_of(c)
        if remove is not None:
            typ, data = c.store("1", "-FLAGS", f"({remove})")
            assert typ == "OK", data
    with imaplib.IMAP4("127.0.0.1", port) as c:
        c.starttls()
        c.login(ALICE, "secret-alice")
        assert c.select(folder)[0] == "OK"
        return before, flags_of(c)


async def test_imap4flags_keywords_reach_the_fileinto_copy_and_store_can_remove_them(server: Server) -> None:
    server.put(ALICE, 'require ["imap4flags", "fileinto", "mailbox"];\naddflag "$label1";\n'
                      'addflag "\\\\Flagged";\nfileinto :create "Work";\n')
    assert (await server.send([ALICE], message()))[0] == 250
    before, after = await asyncio.to_thread(_imap_flags, server.ctx.port("imap"), "Work", remove="$label1")
    assert b"$label1" in before and b"\\Flagged" in before, before
    assert b"$label1" not in after and b"\\Flagged" in after, after  # a keyword like any other
    work = Path(server.cfg.mail_root) / "example.test" / "alice" / ".Work"
    assert list((work / "mailhaven-keywords").iterdir()) == []  # the pending record is gone


async def test_imap4flags_keep_flags_keywords_on_a_synced_inbox_invalid_ones_ignored(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mailhaven.sieve")
    assert await server.folder(ALICE) == []  # INBOX indexed first: the keywords come through a sync, not a rebuild
    server.put(ALICE, 'require ["imap4flags"];\nkeep :flags ["$Junk Work", "\\\\Seen", "bad(word"];\n')
    assert (await server.send([ALICE], message(mid="<m2@remote.test>")))[0] == 250
    before, after = await asyncio.to_thread(_imap_flags, server.ctx.port("imap"), "INBOX", remove="Work")
    assert b"$Junk" in before and b"Work" in before and b"\\Seen" in before, before
    assert b"bad" not in before
    assert b"$Junk" in after and b"Work" not in after, after
    assert any("keywords ignored" in r.getMessage() and "bad(word" in r.getMessage() for r in caplog.records)


# --- editheader ------------------------------------------------------------------------------------


async def test_editheader_changes_the_stored_copy_only_for_that_user(server: Server) -> None:
    server.put(ALICE, 'require ["editheader"];\naddheader "X-Sieve" "seen by alice";\n'
                      'deleteheader "Subject";\naddheader :last "Subject" "[tagged] hello";\n')
    assert (await server.send([ALICE, BOB], message("hello")))[0] == 250
    [a] = await server.folder(ALICE)
    [b] = await server.folder(BOB)
    assert a.startswith(f"Return-Path: <{SENDER}>\r\nDelivered-To: {ALICE}\r\nX-Sieve: seen by alice\r\n".encode())
    assert field_value(a, "Subject") == "[tagged] hello" and a.count(b"Subject:") == 1
    assert a.endswith(b"\r\n\r\nHello there.\r\n")
    assert field_value(b, "Subject") == "hello" and b"X-Sieve" not in b


# --- duplicate, :from ------------------------------------------------------------------------------


async def test_duplicate_is_remembered_across_deliveries_and_restarts(
        tmp_path: Path, tls_files: tuple[Path, Path], dns_server: DnsServer, dkim_key: tuple[str, str]) -> None:
    cfg, peer = await _start(tmp_path, tls_files, dns_server, dkim_key)
    try:
        async with running_app(cfg) as ctx:
            s = Server(ctx, peer, cfg)
            s.put(ALICE, 'require ["duplicate", "fileinto", "mailbox"];\n'
                         'if duplicate { fileinto :create "Dups"; }\n')
            assert (await s.send([ALICE], message("one")))[0] == 250
            assert (await s.send([ALICE], message("one again")))[0] == 250  # the same Message-ID
        async with running_app(cfg) as ctx:
            s = Server(ctx, peer, cfg)
            assert (await s.send([ALICE], message("one a third time")))[0] == 250
            assert (await s.send([ALICE], message("two", mid="<m2@remote.test>")))[0] == 250
            assert [field_value(m, "Subject") for m in await s.folder(ALICE)] == ["one", "two"]
            assert [field_value(m, "Subject") for m in await s.folder(ALICE, "Dups")] == [
                "one again", "one a third time"]
    finally:
        await peer.stop()


async def test_vacation_from_must_be_an_address_of_the_user(server: Server) -> None:
    server.put(ALICE, 'require "vacation";\nvacation :from "The Boss <boss@example.test>" "Away.";\n')
    assert (await server.send([ALICE], message()))[0] == 250
    [reply] = await server.peer.wait_messages(1, 20)
    assert field_value(reply.data, "From") == f"<{ALICE}>"  # not someone else's address, DKIM-signed
    server.put(ALICE, 'require "vacation";\nvacation :handle "2" :from "Alice A <alice+away@example.test>" "Away.";\n')
    assert (await server.send([ALICE], message(mid="<m2@remote.test>")))[0] == 250
    await server.peer.wait_messages(2, 20)
    assert field_value(server.peer.messages[1].data, "From") == "Alice A <alice+away@example.test>"
