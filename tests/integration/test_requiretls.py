"""REQUIRETLS (RFC 8689) on our listeners and through the queue: offered and accepted only inside
TLS, kept in the queue envelope, and a message carrying it bounces (5.7.10) when the destination
has neither MTA-STS nor DANE. Real submission listeners, the real queue, a raw SMTP client."""

from __future__ import annotations

import json

from mailhaven.message.dsn import MailDsn
from mailhaven.queue.spool import Entry, Recipient
from tests.integration import test_submission_harness as harness
from tests.integration.test_submission_harness import ALICE, SubmissionFactory, message
from tests.smtp_peer import until

submission = harness.submission
dkim_rsa = harness.dkim_rsa

REMOTE = "carol@remote.test"


async def test_requiretls_is_offered_only_inside_tls(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.raw() as c:
        assert "REQUIRETLS" not in [ln[4:] for ln in await c.cmd("EHLO client.example")]
        await c.starttls(server.client_tls)
        assert "REQUIRETLS" in [ln[4:] for ln in await c.cmd("EHLO client.example")]
    async with server.raw("submissions") as c:  # implicit TLS (port 465)
        assert "REQUIRETLS" in [ln[4:] for ln in await c.cmd("EHLO client.example")]


async def test_mail_requiretls_outside_tls_is_refused(submission: SubmissionFactory) -> None:
    server = await submission(auth={"allow_plaintext_loopback": True})
    async with server.raw() as c:
        await c.cmd("EHLO client.example")
        assert (await c.login())[0].startswith("235")
        assert (await c.cmd(f"MAIL FROM:<{ALICE}> REQUIRETLS"))[0].startswith("530 5.7.10")
        assert (await c.cmd(f"MAIL FROM:<{ALICE}> REQUIRETLS=YES"))[0].startswith("501 5.5.4")


async def test_a_requiretls_message_to_a_domain_without_policy_bounces(submission: SubmissionFactory) -> None:
    server = await submission()
    async with server.session() as c:
        assert (await c.cmd(f"MAIL FROM:<{ALICE}> REQUIRETLS RET=FULL"))[0].startswith("250")
        assert (await c.cmd(f"RCPT TO:<{REMOTE}>"))[0].startswith("250")
        assert (await c.cmd("DATA"))[0].startswith("354")
        data = message(to=REMOTE, subject="secret", body="The secret body.\r\n")
        assert (await c.cmd(data + b"."))[0].startswith("250")
    [bounce] = await until(lambda: server.messages(ALICE), 15)
    assert b"Status: 5.7.10" in bounce and b"REQUIRETLS" in bounce
    assert b"Subject: secret" in bounce and b"The secret body." not in bounce  # headers only
    assert server.peer.connections == 0


def test_the_envelope_keeps_requiretls_and_old_envelopes_read_without_it() -> None:
    entry = Entry("id1", "a@b.test", [Recipient("c@d.test")], 1.0, 1.0, dsn=MailDsn(requiretls=True))
    data = json.loads(json.dumps(entry.to_json()))
    assert data["requiretls"] is True
    assert Entry.from_json(data).dsn.requiretls
    del data["requiretls"]
    assert not Entry.from_json(data).dsn.requiretls
