"""What a serving process imports without being asked to (issue 14 item 5, memory): libraries
only a configured feature needs stay out of memory until it is configured."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from pathlib import Path
from mailhaven import app, config
cfg = config.from_dict({"domains": {"example.test": {}}}, Path("."))
assert app.rspamd_client(cfg) is None
print(sorted(m for m in ("aiohttp", "mailhaven.policy.rspamd") if m in sys.modules))
"""


def test_no_rspamd_configured_means_no_aiohttp_in_memory() -> None:
    # aiohttp is about 7 MiB resident; only the rspamd client (policy/rspamd.py) uses it
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_server_collects_cyclic_garbage_less_often_than_cpython_by_default() -> None:
    # cli._tune_gc (called by `mailhaven serve`): a full collection at 10,000 connections costs 0.4 s
    code = "import gc; from mailhaven import cli; cli._tune_gc(); print(gc.get_threshold())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "(50000, 20, 20)", out.stdout + out.stderr
