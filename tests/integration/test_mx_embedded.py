"""Issue 12 item 5: without rspamd the MX still refuses GTUBE (550 5.7.1, nothing stored), and each
user's sender block/allow list files mail per recipient: a blocked sender into Junk with
X-Spam-Status: Yes, an allowed one into INBOX even where the scanner (embedded, rspamd) or DMARC
p=quarantine said Junk, but a DMARC p=reject sender on the allow list is still refused. One verdict
log line per message and the verdict metric, as for rspamd (item 1). Real MX, real clients (smtplib,
the raw client), the tests' DNS server; the lists are edited with the real `mailhaven spam` command."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mailhaven.message.headers import field_value
from mailhaven.metrics import Metrics
from mailhaven.policy import senderlists
from mailhaven.store import names
from tests.dnsserver import DnsServer
from tests.fixtures_rspamd import ADD_HEADER_MARK, Rspamd
from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, BOB, MxFactory, MxServer, all_files, message

mx = harness.mx  # the fixture

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SENDER_DOMAIN = "sender.test"
SENDER = f"news@{SENDER_DOMAIN}"


async def _mx(mx: MxFactory, **overrides: Any) -> MxServer:
    server = await mx(**overrides)
    server.ctx.metrics = Metrics(enabled=True, process=False)
    return server


def _smtplib_send(port: int, msg: bytes, rcpts: list[str], sender: str = SENDER) -> tuple[int, str]:
    """One transaction with smtplib; (code, text) of the reply to the final dot."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mta.sender.test", timeout=30) as c:
        c.ehlo()
        c.mail(sender)
        for r in rcpts:
            code, text = c.rcpt(r)
            assert code == 250, (code, text)
        code, text = c.data(msg)
        return code, text.decode()


async def _send(server: MxServer, msg: bytes, rcpts: list[str] | None = None, sender: str = SENDER) -> tuple[int, str]:
    return await asyncio.to_thread(_smtplib_send, server.port, msg, rcpts or [ALICE], sender)


def _verdicts(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(r.mh_fields) for r in caplog.records if r.getMessage() == "spam verdict"]


def _count(server: MxServer, action: str) -> float:
    value = server.ctx.metrics.registry.get_sample_value("mailhaven_spam_verdicts_total", {"action": action})
    return value or 0.0


def _set_lists(server: MxServer, user: str, *, block: tuple[str, ...] = (), allow: tuple[str, ...] = ()) -> None:
    path = senderlists.path_for(names.user_root(server.mail_root, user))
    senderlists.save(path, senderlists.SenderLists(block=block, allow=allow))


def _spam_cli(server: MxServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mailhaven spam ...` as a subprocess, with a config naming the running server's data and users."""
    cfg = server.ctx.config
    conf = tmp_path / "cli.toml"
    conf.write_text(f'hostname = "localhost"\ndata_dir = "{cfg.data_dir}"\nusers_file = "{cfg.users_file}"\n'
                    '[domains."example.test"]\n')
    env = {**os.environ, "MAILHAVEN_FAST_HASH": "1"}
    env.pop("MAILHAVEN_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "mailhaven", "-c", str(conf), "spam", *args],
                          capture_output=True, text=True, timeout=60, env=env)


# --- GTUBE -------------------------------------------------------------------------------------------


async def test_gtube_is_refused_550_5_7_1_nothing_stored_logged_and_counted(
        mx: MxFactory, caplog: pytest.LogCaptureFixture) -> None:
    server = await _mx(mx)
    caplog.set_level(logging.INFO, logger="mailhaven")
    code, text = await _send(server, message(subject="gtube", body=f"Test.\r\n{GTUBE}\r\n"), [ALICE, BOB])
    assert code == 550 and text.startswith("5.7.1 ") and "GTUBE" in text, (code, text)
    assert all_files(server.mail_root) == []
    [v] = _verdicts(caplog)
    assert v["scanner"] == "embedded" and v["action"] == "reject" and v["symbols"] == "GTUBE"
    assert v["score"] == "1000.00" and v["required"] == "5.00" and v["id"]
    assert _count(server, "reject") == 1


async def test_gtube_in_a_base64_text_part_is_refused(mx: MxFactory) -> None:
    server = await _mx(mx)
    b64 = base64.encodebytes(f"Hello {GTUBE} bye".encode()).decode().replace("\n", "\r\n")
    body = ("--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            f"{b64}--b--\r\n")
    msg = message(subject="b64", body=body, extra="MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n")
    code, text = await _send(server, msg)
    assert code == 550 and text.startswith("5.7.1 "), (code, text)
    assert all_files(server.mail_root) == []


async def test_gtube_on_the_allow_list_is_still_refused(mx: MxFactory) -> None:
    server = await _mx(mx)
    _set_lists(server, ALICE, allow=(f"@{SENDER_DOMAIN}",))
    code, _ = await _send(server, message(subject="gtube", sender=SENDER, body=GTUBE + "\r\n"))
    assert code == 550
    assert all_files(server.mail_root) == []


async def test_clean_mail_gets_our_fields_one_verdict_and_the_inbox(
        mx: MxFactory, caplog: pytest.LogCaptureFixture) -> None:
    server = await _mx(mx)
    caplog.set_level(logging.INFO, logger="mailhaven")
    code, text = await _send(server, message(subject="lunch"))
    assert code == 250, text
    [msg] = server.messages(ALICE)
    assert field_value(msg, "X-Spam-Status") == "No, score=0.00, required=5.00"
    assert field_value(msg, "X-Spam-Score") == "0.00"
    [v] = _verdicts(caplog)
    assert v["action"] == "no action" and v["scanner"] == "embedded" and v["id"] in text
    assert _count(server, "no_action") == 1


# --- block and allow lists ---------------------------------------------------------------------------


async def test_a_blocked_sender_goes_to_junk_with_x_spam_status_yes(
        mx: MxFactory, caplog: pytest.LogCaptureFixture) -> None:
    server = await _mx(mx)
    caplog.set_level(logging.INFO, logger="mailhaven")
    _set_lists(server, ALICE, block=(f"@{SENDER_DOMAIN}",))
    code, _ = await _send(server, message(subject="offer", sender=SENDER), sender="bounce@other.test")
    assert code == 250  # matched by the From: address (the envelope sender is another domain)
    assert server.messages(ALICE) == []
    [msg] = server.messages(ALICE, "Junk")
    assert field_value(msg, "X-Spam-Status") == "Yes, score=100.00, required=5.00"
    [v] = _verdicts(caplog)
    assert v["action"] == "add header" and v["symbols"] == "USER_BLOCKLIST" and v["lists"] == f"{ALICE}:block"
    assert _count(server, "add_header") == 1


async def test_the_envelope_sender_is_matched_too(mx: MxFactory) -> None:
    server = await _mx(mx)
    _set_lists(server, ALICE, block=("bounce@other.test",))
    code, _ = await _send(server, message(subject="offer", sender=SENDER), sender="Bounce@Other.TEST")
    assert code == 250
    assert len(server.messages(ALICE, "Junk")) == 1 and server.messages(ALICE) == []


async def test_recipients_with_different_lists_get_different_folders(
        mx: MxFactory, caplog: pytest.LogCaptureFixture) -> None:
    server = await _mx(mx)
    caplog.set_level(logging.INFO, logger="mailhaven")
    _set_lists(server, ALICE, block=(SENDER,))
    code, _ = await _send(server, message(subject="two", sender=SENDER), [ALICE, BOB])
    assert code == 250
    [junk] = server.messages(ALICE, "Junk")
    assert server.messages(ALICE) == [] and server.messages(BOB, "Junk") == []
    [inbox] = server.messages(BOB)
    # One stored message for both: its X-Spam-Status is the message's verdict (the recipients' lists
    # disagree); the log names each recipient's list decision.
    assert field_value(junk, "X-Spam-Status") == field_value(inbox, "X-Spam-Status") == "No, score=0.00, required=5.00"
    [v] = _verdicts(caplog)
    assert v["action"] == "no action" and v["lists"] == f"{ALICE}:block"


async def test_an_allowed_sender_skips_the_dmarc_quarantine_junk(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=quarantine")
    server = await _mx(mx)
    _set_lists(server, ALICE, allow=(f"@{SENDER_DOMAIN}",))
    code, _ = await _send(server, message(subject="q", sender=SENDER), [ALICE, BOB], sender="bounce@bulk.example")
    assert code == 250
    [msg] = server.messages(ALICE)
    assert server.messages(ALICE, "Junk") == []
    assert "dmarc=fail (p=quarantine" in (field_value(msg, "Authentication-Results") or "")
    assert len(server.messages(BOB, "Junk")) == 1 and server.messages(BOB) == []  # bob has no list


async def test_an_allowed_sender_failing_dmarc_reject_is_still_refused(mx: MxFactory, dns_server: DnsServer) -> None:
    dns_server.add(f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject")
    dns_server.add("bulk.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")  # SPF passes, unaligned
    server = await _mx(mx)
    _set_lists(server, ALICE, allow=(SENDER, "@bulk.example"))
    code, text = await _send(server, message(subject="forged", sender=SENDER), sender="bounce@bulk.example")
    assert code == 550 and text.startswith("5.7.1") and "DMARC" in text, (code, text)
    assert all_files(server.mail_root) == []


async def test_lists_edited_with_the_cli_apply_to_the_running_server_at_once(mx: MxFactory, tmp_path: Path) -> None:
    server = await _mx(mx)
    assert (await _send(server, message(subject="first", sender=SENDER)))[0] == 250
    assert len(server.messages(ALICE)) == 1
    r = _spam_cli(server, tmp_path, "block", ALICE, SENDER)
    assert (r.returncode, r.stderr) == (0, ""), r
    assert (await _send(server, message(subject="second", sender=SENDER)))[0] == 250
    assert len(server.messages(ALICE)) == 1 and len(server.messages(ALICE, "Junk")) == 1
    r = _spam_cli(server, tmp_path, "unblock", ALICE, SENDER)
    assert r.returncode == 0, r.stderr
    assert (await _send(server, message(subject="third", sender=SENDER)))[0] == 250
    assert len(server.messages(ALICE)) == 2 and len(server.messages(ALICE, "Junk")) == 1


async def test_an_unreadable_list_file_is_no_list_and_is_logged(mx: MxFactory, caplog: pytest.LogCaptureFixture) -> None:
    server = await _mx(mx)
    caplog.set_level(logging.INFO, logger="mailhaven")
    path = senderlists.path_for(names.user_root(server.mail_root, ALICE))
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    code, _ = await _send(server, message(subject="x", sender=SENDER))
    assert code == 250 and len(server.messages(ALICE)) == 1
    assert any(r.getMessage() == "sender list unreadable" for r in caplog.records)


# --- with rspamd ---------------------------------------------------------------------------------------


async def test_an_allowed_sender_whose_message_rspamd_would_junk_goes_to_the_inbox(
        mx: MxFactory, rspamd: Rspamd, caplog: pytest.LogCaptureFixture) -> None:
    server = await _mx(mx, spam={"rspamd_url": rspamd.url, "rspamd_timeout": 10.0})
    caplog.set_level(logging.INFO, logger="mailhaven")
    _set_lists(server, ALICE, allow=(f"@{SENDER_DOMAIN}",))
    code, _ = await _send(server, message(subject=f"cheap {ADD_HEADER_MARK} offer", sender=SENDER))
    assert code == 250
    [msg] = server.messages(ALICE)
    assert server.messages(ALICE, "Junk") == []
    status = field_value(msg, "X-Spam-Status") or ""
    assert status.startswith("No, score=") and "required=100.00" in status, status
    [v] = _verdicts(caplog)
    assert v["scanner"] == "rspamd" and v["action"] == "no action" and "USER_ALLOWLIST" in v["symbols"].split(",")
    assert float(v["score"]) < 0  # rspamd's score, -100


async def test_a_blocked_sender_of_clean_mail_goes_to_junk_with_rspamd_too(mx: MxFactory, rspamd: Rspamd) -> None:
    server = await _mx(mx, spam={"rspamd_url": rspamd.url, "rspamd_timeout": 10.0})
    _set_lists(server, ALICE, block=(SENDER,))
    code, _ = await _send(server, message(subject="lunch on friday", sender=SENDER))
    assert code == 250
    [msg] = server.messages(ALICE, "Junk")
    assert (field_value(msg, "X-Spam-Status") or "").startswith("Yes, score=1")
