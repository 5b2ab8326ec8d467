"""The rspamd client: one message in, one SpamVerdict out, over rspamd's HTTP protocol.

Owns: the connection to rspamd's normal worker (`spam.rspamd_url`): one pooled aiohttp session per
process (created on first use, closed by its owner, app.py), at most `spam.rspamd_max_concurrency`
scans at once (a semaphore; waiting for it counts against the timeout), a total deadline of
`spam.rspamd_timeout` per scan, and the request rspamd documents for /checkv2
(rspamd.com/doc/developers/protocol.html): the message as the body, the envelope in the headers IP,
Helo, From, Rcpt (one per recipient), Queue-Id, Hostname, Deliver-To, and User for submitted mail. The reply is read bounded
(MAX_REPLY) and parsed by policy/spam.py.
Does not own: what a verdict means (policy/spam.py), when to scan and what to do when rspamd does
not answer (smtp/inbound.py, `spam.on_error`).

Messages over `spam.max_scan_size` are not sent at all: `scan` returns a "skipped" verdict (as
spamc does above its size limit). Sending a cut-off message instead would break its DKIM body
hash, so rspamd would score a DKIM and maybe DMARC failure on large legitimate mail; our own SPF,
DKIM and DMARC checks (policy/pipeline.py) still see the whole message.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from multidict import CIMultiDict

from mailhaven.config import SpamConfig
from mailhaven.policy.spam import ScanError, ScanRequest, SpamVerdict, parse_rspamd

MAX_REPLY = 4 * 1024 * 1024  # bytes of rspamd's JSON reply we read (many symbols, long options)


class RspamdClient:
    """Scans messages with rspamd. Use from one event loop; `close()` when done."""

    def __init__(self, url: str, *, timeout: float, max_concurrency: int, max_size: int) -> None:
        self.url = url.rstrip("/") + "/checkv2"
        self.timeout = timeout
        self.max_size = max_size
        self._slots = asyncio.Semaphore(max_concurrency)
        self._limit = max_concurrency
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  raise_for_status=False)
        return self._session

    @staticmethod
    def headers(req: ScanRequest) -> CIMultiDict[str]:
        h: CIMultiDict[str] = CIMultiDict()
        h["IP"] = req.ip
        if req.helo:
            h["Helo"] = req.helo
        if req.sender:
            h["From"] = req.sender
        for rcpt in req.recipients:
            h.add("Rcpt", rcpt)
        h["Queue-Id"] = req.queue_id
        h["Hostname"] = req.hostname or "unknown"
        if req.deliver_to:
            h["Deliver-To"] = req.deliver_to
        if req.user:
            h["User"] = req.user  # authenticated: rspamd treats the message as outbound
        return h

    async def scan(self, message: bytes, req: ScanRequest) -> SpamVerdict:
        """rspamd's verdict on `message`. Raises ScanError when there is none (timeout, refused
        connection, HTTP error, bad reply)."""
        if len(message) > self.max_size:
            return SpamVerdict("skipped", reason=f"{len(message)} bytes is over spam.max_scan_size")
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                async with self._http().post(self.url, data=message,
                                             headers=self.headers(req)) as resp:
                    if resp.status != 200:
                        raise ScanError(f"rspamd answered HTTP {resp.status}")
                    body = await resp.content.read(MAX_REPLY + 1)
                    if len(body) > MAX_REPLY:
                        raise ScanError("rspamd reply too large")
        except TimeoutError:
            raise ScanError(f"rspamd did not answer within {time.monotonic() - t0:.1f}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise ScanError(f"rspamd unreachable: {type(e).__name__}") from None
        return parse_rspamd(body)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def from_config(spam: SpamConfig) -> RspamdClient | None:
    """The client for config `[spam]`, or None when spam.rspamd_url is empty."""
    if not spam.rspamd_url:
        return None
    return RspamdClient(spam.rspamd_url, timeout=spam.rspamd_timeout,
                        max_concurrency=spam.rspamd_max_concurrency, max_size=spam.max_scan_size)


__all__ = ["RspamdClient", "MAX_REPLY", "from_config"]
