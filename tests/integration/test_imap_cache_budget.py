"""[imap] cache_bytes (imap/msgcache.py's budget) with the whole server running: FETCH of more
ENVELOPEs than the budget holds keeps the cache within it, and the mailhaven_imap_cache_* metrics
served on metrics.address show it."""

from __future__ import annotations

import asyncio
import imaplib
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mailhaven.imap.msgcache import CACHE
from tests.fixtures_base import PASSWORD, free_port
from tests.fixtures_server import running_app
from tests.integration.test_imap_idle_fanout import fill_inbox
from tests.integration.test_imap_server import ALICE

BUDGET = 100 * 1024


def fetch_envelopes(port: int) -> int:
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        imap.login(ALICE, PASSWORD)
        imap.select("INBOX")
        typ, data = imap.fetch("1:*", "(ENVELOPE)")
        assert typ == "OK"
        return len(data)
    finally:
        imap.logout()


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name.startswith("mailhaven_imap_cache")}


async def test_the_message_cache_keeps_to_its_configured_budget_and_reports_it(
        make_config: Callable[..., Any]) -> None:
    mport = free_port()
    cfg = make_config({"imap": {"tls": "none"}}, imap={"cache_bytes": "100K"},
                      metrics={"address": f"127.0.0.1:{mport}"})
    assert cfg.imap.cache_bytes == BUDGET
    fill_inbox(cfg.data_path, 400)  # ~400 * 1 KB of header blocks and envelopes: several budgets
    default = CACHE.max_bytes
    try:
        async with running_app(cfg) as ctx:
            assert await asyncio.to_thread(fetch_envelopes, ctx.port("imap")) == 400
            got = await asyncio.to_thread(scrape, mport)
            assert got["mailhaven_imap_cache_budget_bytes"] == BUDGET
            assert 0 < got["mailhaven_imap_cache_bytes"] <= BUDGET
            assert 0 < got["mailhaven_imap_cache_entries"] < 400
            assert got["mailhaven_imap_cache_evictions_total"] > 0
            assert CACHE.bytes <= BUDGET
    finally:
        CACHE.set_budget(0)  # the cache is process-wide: leave it empty, with its budget, for other tests
        CACHE.set_budget(default)
