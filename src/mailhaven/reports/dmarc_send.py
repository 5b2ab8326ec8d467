"""The DMARC aggregate reporter (RFC 7489 §7.2), opt-in with `[reports] dmarc = true`.

Owns: turning one MX verdict into one counted observation (for messages whose author domain
publishes a record with `rua`, accepted or refused), and sending each finished UTC day's report per
policy domain through our own queue (cleanup.enqueue: DKIM-signed, retried, bounced like any mail),
with the limits that keep a hostile domain from using us:
- only the first `dmarc_max_rua` mailto: addresses of a record are considered (the rest, and
  other schemes, are ignored);
- an address outside the policy domain's organizational domain only after the external-destination
  check (§7.1: TXT `<policy domain>._report._dmarc.<rua domain>` says v=DMARC1), else dropped;
- an address's own size limit (`mailto:a@b!10m`) and `dmarc_max_size` are respected (a report over
  them is not sent there);
- at most `dmarc_max_reports` reports per day; past it the rest of that day's are dropped, logged.
A report that has no permitted address left is marked done and never retried; a DNS failure of the
check leaves it for the next hourly round. Observations older than KEEP_DAYS are forgotten.
Does not own: the counts' storage (dmarc_log.py), the XML (dmarc_xml.py), DMARC itself (policy/).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mailhaven import seams
from mailhaven.errors import DnsTempError, MailError
from mailhaven.policy.dmarc import organizational_domain
from mailhaven.policy.pipeline import Assessment
from mailhaven.reports import dmarc_xml
from mailhaven.reports.dmarc_log import DmarcLog
from mailhaven.reports.dmarc_xml import Published, Row

log = logging.getLogger("mailhaven.reports")

KEEP_DAYS = 7
ROUND = 3600.0  # seconds between looks for finished days
_RUA = re.compile(r"^mailto:([^!\s]+@[^!\s]+?)(?:!(\d+)([kmgt]?))?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DKIM_RESULTS = {"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"}
_SPF_RESULTS = {"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"}


def day_of(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d")


def day_start(day: str) -> int:
    return int(datetime.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=datetime.UTC).timestamp())


def parse_rua(uri: str) -> tuple[str, int | None] | None:
    """("dmarc@example.org", size limit in octets or None) from "mailto:dmarc@example.org!10m"."""
    m = _RUA.match(uri.strip())
    if m is None:
        return None
    size = int(m[2]) * _UNITS[m[3].lower()] if m[2] else None
    return m[1], size


def observation(assessment: Assessment, *, client_ip: str, envelope_from: str,
                action: str) -> tuple[Published, tuple[str, ...], Row] | None:
    """What one verdict adds to the report of its author's policy domain; None when that domain
    asks for no aggregate reports (no record, or no rua) (pure)."""
    dm = assessment.dmarc
    record = dm.record
    if record is None or not record.rua or not dm.record_domain:
        return None
    published = Published(dm.record_domain, record.p, record.sp, record.adkim, record.aspf, record.pct,
                          record.fo)
    reasons: tuple[tuple[str, str], ...] = ()
    disposition = "none"
    if dm.result == "fail":
        disposition = {"reject": "reject", "junk": "quarantine"}.get(action, "none")
        if dm.sampled_out:
            reasons = (("sampled_out", ""),)
        elif disposition != dm.policy:
            reasons = (("local_policy", f"published {dm.policy}, applied {disposition}"),)
    spf = assessment.spf
    row = Row(source_ip=client_ip, count=1, disposition=disposition,
              dkim="pass" if dm.dkim_aligned else "fail", spf="pass" if dm.spf_aligned else "fail",
              header_from=dm.domain, envelope_from=envelope_from.rpartition("@")[2].lower(), reasons=reasons,
              dkim_results=tuple((r.domain, r.selector, r.result if r.result in _DKIM_RESULTS else "permerror")
                                 for r in assessment.dkim if r.domain),
              spf_domain=spf.domain if spf is not None else "",
              spf_scope="helo" if spf is not None and spf.identity == "helo" else "mfrom",
              spf_result=spf.result if spf is not None and spf.result in _SPF_RESULTS else "none")
    return published, tuple(record.rua), row


class DmarcReporter:
    """Observes MX verdicts (every worker) and sends the reports (the queue's worker: `run`)."""

    def __init__(self, ctx: seams.Context, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.clock = clock
        self._path = path
        self._log: DmarcLog | None = None

    def _open(self) -> DmarcLog:
        if self._log is None:
            self._log = DmarcLog(self._path)
        return self._log

    async def observe(self, assessment: Assessment, *, client_ip: str, envelope_from: str, action: str) -> None:
        """Count one MX verdict. A failure to count is logged, never the message's problem."""
        seen = observation(assessment, client_ip=client_ip, envelope_from=envelope_from, action=action)
        if seen is None:
            return
        published, rua, row = seen
        day = day_of(self.clock())
        try:
            await asyncio.to_thread(lambda: self._open().add(day, published, rua, row))
        except Exception as e:  # noqa: BLE001 - statistics must never refuse mail
            log.warning("dmarc reports: observation for %s not counted: %s", published.domain, e)

    async def run(self) -> None:
        """Every ROUND: send what finished days owe (cancelled on stop)."""
        while True:
            try:
                await self.send_due()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("dmarc reports: round failed")
            await asyncio.sleep(ROUND)

    async def send_due(self) -> list[str]:
        """Send the reports of every finished day not sent yet; returns one line per report."""
        now = self.clock()
        dlog = await asyncio.to_thread(self._open)
        today = day_of(now)
        done: list[str] = []
        for day, domain in await asyncio.to_thread(dlog.due, today):
            cfg = self.ctx.config.reports
            if await asyncio.to_thread(dlog.sent_on, day) >= cfg.dmarc_max_reports:
                await asyncio.to_thread(dlog.mark_sent, day, domain, "", "over dmarc_max_reports")
                log.warning("dmarc reports: %s %s not sent: over %d reports that day", domain, day,
                            cfg.dmarc_max_reports)
                continue
            try:
                outcome = await self._send(dlog, day, domain, now)
            except (DnsTempError, MailError) as e:
                if isinstance(e, MailError) and not e.temporary:
                    await asyncio.to_thread(dlog.mark_sent, day, domain, "", f"refused: {e.text}")
                log.warning("dmarc reports: %s %s not sent now: %s", domain, day, e)
                continue
            done.append(f"{day} {domain}: {outcome}")
        await asyncio.to_thread(dlog.prune, day_of(now - KEEP_DAYS * 86400))
        return done

    async def _send(self, dlog: DmarcLog, day: str, domain: str, now: float) -> str:
        cfg = self.ctx.config
        published, rua, rows = await asyncio.to_thread(dlog.load, day, domain)
        begin = day_start(day)
        receiver = organizational_domain(cfg.hostname) or cfg.hostname
        report = dmarc_xml.Report(org_name=cfg.reports.dmarc_org_name or cfg.hostname, email=self.sender,
                                  report_id=f"{day}.{domain}.{secrets.token_hex(6)}", begin=begin,
                                  end=begin + 86399, published=published, rows=rows)
        gz = await asyncio.to_thread(dmarc_xml.gzipped, report)  # XML and gzip of many rows: off the loop
        size = len(gz)
        targets = await self._permitted(domain, rua, size)
        if not targets:
            await asyncio.to_thread(dlog.mark_sent, day, domain, report.report_id, "no permitted rua")
            log.info("dmarc reports: %s %s: no permitted rua address (%s)", domain, day, ", ".join(rua) or "-")
            return "no permitted rua"
        from mailhaven import cleanup  # cleanup imports the queue package

        data = dmarc_xml.message(report, receiver=receiver, sender=self.sender, to=targets,
                                 message_id=f"<{report.report_id}@{cfg.hostname}>", now=now, attachment=gz)
        queue_id = await cleanup.enqueue(self.ctx, self.sender, targets, data, source="dmarc-report")
        outcome = f"sent to {', '.join(targets)} as {queue_id}"
        await asyncio.to_thread(dlog.mark_sent, day, domain, report.report_id, outcome)
        log.info("dmarc reports: %s %s (%d records, %d octets gzipped) %s", domain, day, len(rows), size, outcome)
        return outcome

    @property
    def sender(self) -> str:
        cfg = self.ctx.config
        return cfg.reports.dmarc_from or f"postmaster@{next(iter(cfg.domains), cfg.hostname)}"

    async def _permitted(self, domain: str, rua: Sequence[str], size: int) -> list[str]:
        """The rua addresses a report of `size` octets may go to (see the module doc)."""
        cfg = self.ctx.config.reports
        if size > cfg.dmarc_max_size:
            return []
        mailto = [parsed for parsed in map(parse_rua, rua) if parsed is not None][:cfg.dmarc_max_rua]
        out: list[str] = []
        for address, limit in mailto:
            if limit is not None and size > limit:
                continue
            target = address.rpartition("@")[2].lower().rstrip(".")
            if organizational_domain(target) != organizational_domain(domain):
                # RFC 7489 §7.1: the target domain must say it takes reports about `domain`.
                texts = await self.ctx.resolver.txt(f"{domain}._report._dmarc.{target}")
                if not any(t.strip().upper().startswith("V=DMARC1") for t in texts):
                    log.info("dmarc reports: %s is not authorised to receive reports about %s", address, domain)
                    continue
            out.append(address)
        return out

    async def close(self) -> None:
        if self._log is not None:
            await asyncio.to_thread(self._log.close)
            self._log = None


__all__ = ["DmarcReporter", "observation", "parse_rua", "day_of", "KEEP_DAYS"]
