"""SMTP TLS Reporting (RFC 8460), opt-in (`[reports] tls = true`): what our outbound TLS met at
each destination with a policy (MTA-STS or DANE), recorded per day and reported to the domain.

Owns:
- recording: one JSON line per outcome (policy domain, policy type and strings, MX host, address,
  result type: "success" or an RFC 8460 §4.3 failure type) appended to `data_dir/tlsrpt/DAY.jsonl`
  (UTC day), off the event loop; appends of whole lines from several worker processes do not mix;
- the `_smtp._tls.<domain>` TXT record (§3: "v=TLSRPTv1; rua=mailto:...,https://...");
- the report (§4.4): one JSON document per policy domain per day, summarising successes and
  failures per policy, gzipped (§5.1: application/tlsrpt+gzip, file name
  "submitter!policy-domain!begin!end.json.gz");
- sending yesterday's reports once a day (`send_due`): the day's file is renamed first so one
  process alone sends it; each domain publishing a `rua` gets its report by mail (§5.3: a
  multipart/report with report-type="tlsrpt", queued from our postmaster through cleanup.enqueue,
  TLS-Required: No so that a broken policy cannot hold its own report back, §5.3.1) or by HTTPS
  POST (§5.4). A domain without the TXT record gets nothing.
Does not own: what counts as a failure (delivery/tlspolicy.py says it while checking), the queue.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import gzip
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("mailhaven.delivery")

RESULT_TYPES = frozenset({
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired", "certificate-not-trusted",
    "validation-failure", "tlsa-invalid", "dnssec-invalid", "dane-required", "sts-policy-fetch-error",
    "sts-policy-invalid", "sts-webpki-invalid",
})
MAX_FAILURE_DETAILS = 100  # kinds of failure (per policy) listed in one report


@dataclass(frozen=True)
class Outcome:
    policy_domain: str
    policy_type: str  # "sts" | "tlsa" | "no-policy-found"
    policy_strings: tuple[str, ...]
    mx_host: str
    address: str
    result: str  # "success" or one of RESULT_TYPES
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"d": self.policy_domain, "t": self.policy_type, "s": list(self.policy_strings), "mx": self.mx_host,
                "ip": self.address, "r": self.result, "why": self.detail[:200]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Outcome:
        return cls(str(d["d"]), str(d["t"]), tuple(str(x) for x in d.get("s", ())), str(d.get("mx", "")),
                   str(d.get("ip", "")), str(d["r"]), str(d.get("why", "")))


def day_of(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d")


class Recorder:
    """Appends outcomes to the day's file under `folder`."""

    def __init__(self, folder: Path, clock: Any = time.time) -> None:
        self.folder, self.clock = folder, clock

    def _append(self, day: str, line: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{day}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode())  # one write of a whole line: O_APPEND keeps lines whole
        finally:
            os.close(fd)

    def record_soon(self, outcome: Outcome) -> None:
        """Append in a worker thread; the caller does not wait (a lost line only costs a count)."""
        line = json.dumps(outcome.to_json()) + "\n"
        future = asyncio.get_running_loop().run_in_executor(None, self._append, day_of(self.clock()), line)
        future.add_done_callback(_log_failure)

    async def record(self, outcome: Outcome) -> None:
        await asyncio.to_thread(self._append, day_of(self.clock()), json.dumps(outcome.to_json()) + "\n")


def _log_failure(future: asyncio.Future[None]) -> None:
    e = future.exception() if not future.cancelled() else None
    if e is not None:
        log.warning("TLS report data not written: %s", e)


def parse_txt(records: Iterable[str]) -> list[str]:
    """The rua URIs of the `_smtp._tls` TXT records (§3): exactly one "v=TLSRPTv1" record;
    only mailto: and https: URIs are kept."""
    found = [r for r in records if re.match(r"^v=TLSRPTv1\s*(;|$)", r)]
    if len(found) != 1:
        return []
    for part in found[0].split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip() == "rua":
            return [u.strip() for u in value.split(",") if u.strip().lower().startswith(("mailto:", "https:"))]
    return []


def build_report(outcomes: Sequence[Outcome], *, domain: str, day: str, org: str, contact: str,
                 report_id: str) -> dict[str, Any]:
    """The JSON report of §4.4 for one policy domain and one UTC day."""
    begin = f"{day}T00:00:00Z"
    end_day = (datetime.date.fromisoformat(day) + datetime.timedelta(days=1)).isoformat()
    policies: dict[tuple[str, tuple[str, ...]], list[Outcome]] = {}
    for o in outcomes:
        if o.policy_domain == domain:
            policies.setdefault((o.policy_type, o.policy_strings), []).append(o)
    out = []
    for (ptype, strings), items in sorted(policies.items()):
        ok = sum(1 for o in items if o.result == "success")
        failures: dict[tuple[str, str, str], int] = {}
        for o in items:
            if o.result != "success":
                key = (o.result, o.mx_host, o.address)
                failures[key] = failures.get(key, 0) + 1
        policy: dict[str, Any] = {"policy-type": ptype, "policy-domain": domain}
        if strings:
            policy["policy-string"] = list(strings)
        mx = sorted({o.mx_host for o in items if o.mx_host})
        if ptype == "sts" and mx:
            policy["mx-host"] = mx
        details = [{"result-type": r, "receiving-mx-hostname": h, "receiving-ip": ip, "failed-session-count": n}
                   for (r, h, ip), n in sorted(failures.items())[:MAX_FAILURE_DETAILS]]
        out.append({"policy": policy, "summary": {"total-successful-session-count": ok,
                                                  "total-failure-session-count": len(items) - ok},
                    "failure-details": details})
    return {"organization-name": org, "date-range": {"start-datetime": begin, "end-datetime": f"{end_day}T00:00:00Z"},
            "contact-info": contact, "report-id": report_id, "policies": out}


def gzipped(report: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(report, indent=1).encode(), mtime=0)


def file_name(submitter: str, domain: str, day: str) -> str:
    """§5.1: "sender!policy-domain!begin!end.json.gz" (begin/end as UNIX times)."""
    start = int(datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC).timestamp())
    return f"{submitter}!{domain}!{start}!{start + 86400 - 1}.json.gz"


def report_message(*, sender: str, to: str, submitter: str, domain: str, day: str, report_id: str,
                   data: bytes, now: float) -> bytes:
    """§5.3: the report by mail: multipart/report; report-type="tlsrpt" with the gzipped JSON."""
    import base64

    boundary = f"tlsrpt.{secrets.token_hex(8)}"
    b64 = base64.encodebytes(data).decode().replace("\n", "\r\n")
    lines = [
        f"From: <{sender}>",
        f"To: <{to}>",
        f"Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: <{report_id}>",
        "TLS-Report-Domain: " + domain,
        "TLS-Report-Submitter: " + submitter,
        "TLS-Required: No",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type="tlsrpt"; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is an aggregate TLS report from {submitter} for {domain}, {day} (RFC 8460).",
        "",
        f"--{boundary}",
        f'Content-Type: application/tlsrpt+gzip; name="{file_name(submitter, domain, day)}"',
        "Content-Transfer-Encoding: base64",
        f'Content-Disposition: attachment; filename="{file_name(submitter, domain, day)}"',
        "",
        b64.rstrip("\r\n"),
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode()


def read_day(path: Path) -> list[Outcome]:
    out = []
    for line in path.read_text("utf-8", "replace").splitlines():
        try:
            out.append(Outcome.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue  # a torn line (crash mid-write): skipped
    return out


async def send_due(ctx: Any, folder: Path, *, now: float | None = None, https_tls: Any = None) -> int:
    """Send the reports of every finished day under `folder` (not today's); returns how many
    were sent or queued. Each day file is renamed to DAY.sending first (one process wins), and
    removed once handled: a report that cannot be delivered now is not retried (§5: best effort)."""
    from mailhaven import cleanup

    now = time.time() if now is None else now
    today = day_of(now)
    config = ctx.config
    submitter = config.hostname
    contact = config.reports.tls_contact or f"postmaster@{submitter}"
    sent = 0
    for day, claimed in await asyncio.to_thread(_claim, folder, today):
        outcomes = await asyncio.to_thread(read_day, claimed)
        for domain in sorted({o.policy_domain for o in outcomes}):
            try:
                rua = parse_txt(await ctx.resolver.txt(f"_smtp._tls.{domain}"))
            except Exception as e:  # noqa: BLE001 - DNS trouble: this domain's report is skipped
                log.info("TLS report for %s not sent: %s", domain, e)
                continue
            if not rua:
                continue
            report_id = f"{day}.{secrets.token_hex(6)}@{submitter}"
            report = build_report(outcomes, domain=domain, day=day, org=submitter, contact=contact,
                                  report_id=report_id)
            data = gzipped(report)
            for uri in rua:
                try:
                    if uri.lower().startswith("mailto:"):
                        to = uri[7:].split("!", 1)[0]  # §3: an optional "!size" limit after the address
                        msg = report_message(sender=contact, to=to, submitter=submitter, domain=domain, day=day,
                                             report_id=report_id, data=data, now=now)
                        await cleanup.enqueue(ctx, contact, [to], msg, source="tlsrpt")
                    else:
                        await _post(uri, data, https_tls)
                    sent += 1
                    log.info("TLS report for %s (%s) sent to %s", domain, day, uri)
                except Exception as e:  # noqa: BLE001 - best effort (§5), logged
                    log.warning("TLS report for %s to %s failed: %s", domain, uri, e)
        await asyncio.to_thread(claimed.unlink, True)
    return sent


def _claim(folder: Path, today: str) -> list[tuple[str, Path]]:
    """The finished days' files, each renamed to DAY.sending (what another process renamed first
    is its own)."""
    out = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        if path.stem >= today:
            continue
        claimed = path.with_suffix(".sending")
        try:
            os.rename(path, claimed)
        except OSError:
            continue
        out.append((path.stem, claimed))
    return out


async def _post(uri: str, data: bytes, tls: Any) -> None:
    """§5.4: HTTPS POST of the gzipped report."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        async with s.post(uri, data=data, headers={"Content-Type": "application/tlsrpt+gzip"},
                          allow_redirects=False, ssl=tls if tls is not None else True) as resp:
            if resp.status >= 300:
                raise OSError(f"HTTP {resp.status}")


__all__ = ["Outcome", "Recorder", "parse_txt", "build_report", "gzipped", "report_message", "send_due", "day_of"]
