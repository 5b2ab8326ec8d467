"""DMARC aggregate reports (RFC 7489 §7.2): the MX counts what it saw, the reporter sends each
finished day's report through the real queue to a real SMTP server playing the rua's MX, checked
against the Appendix C schema; the §7.1 external-destination check and our limits; incoming
reports filed in their own folder. DNS from the tests' DNS server."""

from __future__ import annotations

import email
import email.policy
import gzip
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from mailhaven.reports.dmarc_send import DmarcReporter, day_of, parse_rua
from mailhaven.reports.dmarc_xml import Published, Row
from tests.dnsserver import DnsServer
from tests.integration import test_mx_harness as mx_harness
from tests.integration import test_submission_harness as harness
from tests.integration.test_mx_harness import MxFactory
from tests.integration.test_submission_harness import SubmissionFactory, SubmissionServer
from tests.smtp_peer import Received, until

submission = harness.submission
dkim_rsa = harness.dkim_rsa
mx = mx_harness.mx

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent.parent / "data" / "dmarc" / "aggregate-report.xsd"))
YESTERDAY = day_of(time.time() - 86400)


def _observe(server: SubmissionServer, domain: str, rua: list[str], rows: list[Row], day: str = YESTERDAY) -> None:
    reporter = server.ctx.dmarc_reports
    assert reporter is not None
    dlog = reporter._open()  # noqa: SLF001 - fill the log as the MX would
    for row in rows:
        for _ in range(row.count):
            dlog.add(day, Published(domain, "reject", "reject"), rua, row)


def _report_of(received: Received) -> tuple[email.message.EmailMessage, bytes, str]:
    msg = email.message_from_bytes(received.data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    [part] = [p for p in msg.iter_attachments()]
    name = part.get_filename() or ""
    return msg, gzip.decompress(part.get_content()), name


PASS_ROW = Row("192.0.2.1", 3, "none", "pass", "pass", "sender.test", "sender.test",
               dkim_results=(("sender.test", "s1", "pass"),), spf_domain="sender.test", spf_result="pass")
FAIL_ROW = Row("198.51.100.7", 2, "reject", "fail", "fail", "sender.test", "spoof.example",
               dkim_results=(("spoof.example", "x", "fail"),), spf_domain="spoof.example", spf_result="softfail")


async def test_a_finished_days_report_is_sent_valid_and_counted(submission: SubmissionFactory,
                                                                  dns_server: DnsServer) -> None:
    server = await submission(reports={"dmarc": True, "dmarc_org_name": "Example Mail"})
    dns_server.add("sender.test._report._dmarc.remote.test", "TXT", "v=DMARC1")  # §7.1: remote.test agrees
    _observe(server, "sender.test", ["mailto:dmarc@remote.test"], [PASS_ROW, FAIL_ROW])
    _observe(server, "sender.test", ["mailto:dmarc@remote.test"], [PASS_ROW], day=day_of(time.time()))  # today
    reporter = server.ctx.dmarc_reports
    assert reporter is not None
    [outcome] = await reporter.send_due()
    assert "sent to dmarc@remote.test" in outcome
    [got] = await server.peer.wait_messages(1)
    assert got.rcpt_tos == ["dmarc@remote.test"] and got.mail_from == "postmaster@example.test"
    msg, xml, name = _report_of(got)
    assert msg["Subject"].startswith("Report Domain: sender.test Submitter: ")
    assert b"DKIM-Signature:" in got.data  # through cleanup: signed as our domain
    SCHEMA.validate(xml)  # Appendix C
    assert name.startswith("example.test!sender.test!") and name.endswith(".xml.gz")
    root = ET.fromstring(xml)
    assert root.findtext("report_metadata/org_name") == "Example Mail"
    rows = {r.findtext("row/source_ip"): r for r in root.findall("record")}
    assert rows["192.0.2.1"].findtext("row/count") == "3"
    assert rows["198.51.100.7"].findtext("row/policy_evaluated/disposition") == "reject"
    assert rows["198.51.100.7"].findtext("auth_results/spf/result") == "softfail"
    assert await reporter.send_due() == []  # sent once; today's is not finished


async def test_a_rua_outside_the_domain_without_its_consent_gets_nothing(submission: SubmissionFactory) -> None:
    server = await submission(reports={"dmarc": True})
    _observe(server, "sender.test", ["mailto:dmarc@remote.test"], [PASS_ROW])  # no _report._dmarc record
    reporter = server.ctx.dmarc_reports
    assert reporter is not None
    assert await reporter.send_due() == [f"{YESTERDAY} sender.test: no permitted rua"]
    assert server.peer.messages == [] and server.ctx.queue.list_entries() == []


async def test_limits_on_addresses_size_and_reports_per_day(submission: SubmissionFactory,
                                                             dns_server: DnsServer) -> None:
    server = await submission(reports={"dmarc": True, "dmarc_max_rua": 2, "dmarc_max_reports": 1})
    for who in ("a", "b", "c"):
        dns_server.add(f"sender.test._report._dmarc.{who}.remote.test", "TXT", "v=DMARC1")
        dns_server.add(f"{who}.remote.test", "MX", "10 mx.remote.test.")
    rua = ["mailto:x@a.remote.test!100", "mailto:y@b.remote.test!10m", "mailto:z@c.remote.test", "https://x/"]
    _observe(server, "sender.test", rua, [PASS_ROW])
    _observe(server, "sender2.test", ["mailto:dmarc@sender2.test"], [PASS_ROW])
    dns_server.add("sender2.test", "MX", "10 mx.remote.test.")
    reporter = server.ctx.dmarc_reports
    assert reporter is not None
    outcomes = await reporter.send_due()
    assert [o.split(":")[0] for o in outcomes] == [f"{YESTERDAY} sender.test"]  # then the day's cap
    # !100: the report is larger than 100 octets; the third address is past dmarc_max_rua.
    await until(lambda: not server.ctx.queue.list_entries(), 15)
    assert server.peer.recipients_received() == ["y@b.remote.test"]
    assert reporter._open().outcome(YESTERDAY, "sender2.test") == "over dmarc_max_reports"  # noqa: SLF001


@pytest.mark.parametrize(("uri", "parsed"), [
    ("mailto:a@b.example", ("a@b.example", None)),
    ("mailto:a@b.example!10m", ("a@b.example", 10 << 20)),
    ("MAILTO:a@b.example!200k", ("a@b.example", 200 << 10)),
    ("mailto:a@b.example!12", ("a@b.example", 12)),
    ("https://b.example/r", None),
    ("mailto:nobody", None),
])
def test_rua_uris(uri: str, parsed: tuple[str, int | None] | None) -> None:
    assert parse_rua(uri) == parsed


async def test_the_mx_counts_accepted_and_refused_mail_of_domains_that_ask(mx: MxFactory, dns_server: DnsServer,
                                                                          tmp_path: Path) -> None:
    server = await mx()
    reporter = DmarcReporter(server.ctx, tmp_path / "dmarc.sqlite")  # type: ignore[arg-type]
    server.ctx.dmarc_reports = reporter
    dns_server.add("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject; rua=mailto:r@strict.test")
    dns_server.add("_dmarc.lax.test", "TXT", "v=DMARC1; p=none; rua=mailto:r@lax.test")
    dns_server.add("_dmarc.quiet.test", "TXT", "v=DMARC1; p=none")  # no rua: nothing counted
    for sender, code in (("a@strict.test", "550"), ("b@lax.test", "250"), ("b@lax.test", "250"),
                         ("c@quiet.test", "250")):
        replies = await server.send(sender, [mx_harness.ALICE], mx_harness.message(sender=sender))
        assert replies[-1][0].startswith(code), replies
    dlog = reporter._open()  # noqa: SLF001
    today = day_of(time.time())
    assert sorted(dlog.due(day_of(time.time() + 86400))) == [(today, "lax.test"), (today, "strict.test")]
    _, rua, [strict] = dlog.load(today, "strict.test")
    assert rua == ["mailto:r@strict.test"]
    assert (strict.disposition, strict.dkim, strict.spf, strict.count) == ("reject", "fail", "fail", 1)
    assert strict.source_ip == "127.0.0.1" and strict.header_from == "strict.test"
    _, _, [lax] = dlog.load(today, "lax.test")
    assert (lax.disposition, lax.count) == ("none", 2)
    await reporter.close()


async def test_an_incoming_report_to_postmaster_is_filed_in_its_folder(mx: MxFactory) -> None:
    server = await mx()
    report = (b"From: noreply-dmarc@big.example\r\nTo: postmaster@example.test\r\n"
              b"Subject: Report Domain: example.test Submitter: big.example Report-ID: <42>\r\n"
              b"MIME-Version: 1.0\r\nContent-Type: application/gzip; name=\"big.example!example.test!1!2.xml.gz\"\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\nH4sIAAAAAAAAA8tIzcnJBwCGphA2BQAAAA==\r\n")
    replies = await server.send("noreply-dmarc@big.example", ["postmaster@example.test"], report)
    assert replies[-1][0].startswith("250"), replies
    assert server.messages(mx_harness.ALICE) == []  # the postmaster alias reaches alice: not her INBOX
    assert len(server.messages(mx_harness.ALICE, "DMARC Reports")) == 1
    plain = mx_harness.message(subject="Report Domain: not really")  # no report attached: the INBOX
    await server.send("x@big.example", ["postmaster@example.test"], plain)
    assert len(server.messages(mx_harness.ALICE)) == 1
