"""A DMARC aggregate report (RFC 7489 §7.2, Appendix C) and the mail that carries it (§7.2.1.1).

Owns: the XML (xml.etree builds it, so every value is escaped), the gzipped attachment, its file
name `receiver!policy-domain!begin!end.xml.gz` and the message around it; and recognising such a
mail when another server sends us one (looks_like_report). Pure: no clock, no I/O.
Does not own: what is counted (dmarc_log.py) or when and where it is sent (dmarc_send.py).
"""

from __future__ import annotations

import datetime
import email.policy
import gzip
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, formatdate


@dataclass(frozen=True)
class Published:
    """The record as the policy domain published it (policy_published)."""

    domain: str
    p: str = "none"
    sp: str = "none"
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    fo: str = "0"


@dataclass(frozen=True)
class Row:
    """One record: identical observations of one source, counted (RecordType)."""

    source_ip: str
    count: int
    disposition: str  # none | quarantine | reject (what we did, DMARC's words)
    dkim: str  # pass | fail: DMARC's DKIM evaluation (aligned pass)
    spf: str  # pass | fail: DMARC's SPF evaluation (aligned pass)
    header_from: str
    envelope_from: str = ""
    reasons: tuple[tuple[str, str], ...] = ()  # (type, comment): local_policy, sampled_out, ...
    dkim_results: tuple[tuple[str, str, str], ...] = ()  # (domain, selector, result)
    spf_domain: str = ""
    spf_scope: str = "mfrom"  # helo | mfrom
    spf_result: str = "none"


@dataclass(frozen=True)
class Report:
    org_name: str
    email: str
    report_id: str
    begin: int
    end: int
    published: Published
    rows: Sequence[Row] = field(default_factory=tuple)
    extra_contact: str = ""


def _text(parent: ET.Element, tag: str, value: object) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = str(value)
    return el


def to_xml(report: Report) -> bytes:
    """The feedback document (Appendix C), UTF-8 with its declaration."""
    root = ET.Element("feedback")
    meta = ET.SubElement(root, "report_metadata")
    _text(meta, "org_name", report.org_name)
    _text(meta, "email", report.email)
    if report.extra_contact:
        _text(meta, "extra_contact_info", report.extra_contact)
    _text(meta, "report_id", report.report_id)
    span = ET.SubElement(meta, "date_range")
    _text(span, "begin", report.begin)
    _text(span, "end", report.end)
    pub = report.published
    pp = ET.SubElement(root, "policy_published")
    _text(pp, "domain", pub.domain)
    _text(pp, "adkim", pub.adkim)
    _text(pp, "aspf", pub.aspf)
    _text(pp, "p", pub.p)
    _text(pp, "sp", pub.sp)
    _text(pp, "pct", pub.pct)
    _text(pp, "fo", pub.fo)
    for row in report.rows:
        record = ET.SubElement(root, "record")
        r = ET.SubElement(record, "row")
        _text(r, "source_ip", row.source_ip)
        _text(r, "count", row.count)
        evaluated = ET.SubElement(r, "policy_evaluated")
        _text(evaluated, "disposition", row.disposition)
        _text(evaluated, "dkim", row.dkim)
        _text(evaluated, "spf", row.spf)
        for kind, comment in row.reasons:
            reason = ET.SubElement(evaluated, "reason")
            _text(reason, "type", kind)
            if comment:
                _text(reason, "comment", comment)
        ids = ET.SubElement(record, "identifiers")
        if row.envelope_from:
            _text(ids, "envelope_from", row.envelope_from)
        _text(ids, "header_from", row.header_from)
        auth = ET.SubElement(record, "auth_results")
        for domain, selector, result in row.dkim_results:
            dk = ET.SubElement(auth, "dkim")
            _text(dk, "domain", domain)
            if selector:
                _text(dk, "selector", selector)
            _text(dk, "result", result)
        spf = ET.SubElement(auth, "spf")
        _text(spf, "domain", row.spf_domain or row.envelope_from.rpartition("@")[2] or row.header_from)
        _text(spf, "scope", row.spf_scope)
        _text(spf, "result", row.spf_result)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml


def filename(receiver: str, report: Report) -> str:
    """§7.2.1.1: `receiver "!" policy-domain "!" begin "!" end ".xml.gz"`."""
    return f"{receiver}!{report.published.domain}!{report.begin}!{report.end}.xml.gz"


def gzipped(report: Report) -> bytes:
    return gzip.compress(to_xml(report), mtime=0)


def message(report: Report, *, receiver: str, sender: str, to: Sequence[str], message_id: str,
            now: float, attachment: bytes | None = None) -> bytes:
    """The mail of §7.2.1.1: Subject "Report Domain: ... Submitter: ... Report-ID: <...>", a short
    text part and the gzipped report as application/gzip (`attachment`: gzipped(report) already made)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = (f"Report Domain: {report.published.domain} Submitter: {receiver} "
                      f"Report-ID: <{report.report_id}>")
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    first = datetime.datetime.fromtimestamp(report.begin, datetime.UTC)
    msg.set_content(f"This is a DMARC aggregate report from {receiver} for {report.published.domain},\n"
                    f"covering {format_datetime(first)} and the 24 hours after it.\n")
    msg.add_attachment(gzipped(report) if attachment is None else attachment, maintype="application", subtype="gzip",
                       filename=filename(receiver, report))
    data: bytes = msg.as_bytes(policy=email.policy.SMTP)  # CRLF line ends
    return data


_REPORT_TYPES = (b"application/gzip", b"application/x-gzip", b"application/zip", b"application/x-zip-compressed",
                 b"text/xml", b"application/xml")


def looks_like_report(message: bytes, subject: str | None) -> bool:
    """Whether an incoming message is another server's aggregate report (§7.2.1.1): its Subject
    begins "Report Domain:" and it carries a gzip, zip or XML part."""
    if subject is None or not subject.lstrip().lower().startswith("report domain:"):
        return False
    head = message[:256 * 1024].lower()
    return any(b"content-type: " + t in head or b"content-type:" + t in head for t in _REPORT_TYPES)


__all__ = ["Published", "Report", "Row", "filename", "gzipped", "looks_like_report", "message", "to_xml"]
