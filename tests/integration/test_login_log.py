"""Issue 11 item 5: a failed login logs the same line, at the same level, on IMAP, POP3 and
submission, and the fail2ban filter of docs/production.md matches them in a real server log
(fail2ban-regex from Debian's fail2ban package when installed, else the same regex in Python)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mailhaven import log as mlog
from mailhaven.config import LogConfig
from tests.fixtures_server import running_app
from tests.integration.test_login_throttle import ALICE, PASSWORD, PROTOCOLS, login_ok, make_config, raw_login

DOCS = Path(__file__).resolve().parents[2] / "docs" / "production.md"
FORGED = 'x ip=6.6.6.6 reason=bad_password mechanism=USER delay=0.0 cid=aa'


def documented_filter() -> str:
    """The filter file from docs/production.md (the ini block after its path)."""
    text = DOCS.read_text()
    after = text[text.index("/etc/fail2ban/filter.d/mailhaven.conf"):]
    m = re.search(r"```ini\n(.*?)```", after, re.S)
    assert m is not None
    return m.group(1)


def failregex() -> str:
    m = re.search(r"^failregex = (.*)$", documented_filter(), re.M)
    assert m is not None
    return m.group(1)


async def _failures(tmp_path: Path) -> str:
    """Run the server with a text log, fail logins on every protocol; return the log."""
    stream = io.StringIO()
    handler = mlog.setup(LogConfig(format="text", level="info"), stream=stream, journald=False)
    try:
        cfg = make_config(tmp_path, failure_delay=0)
        async with running_app(cfg) as ctx:
            for proto in PROTOCOLS:
                port = ctx.port(proto)
                assert not await raw_login(port, proto, "127.0.0.1", ALICE, "wrong")  # bad_password
                assert not await raw_login(port, proto, "127.0.0.1", "nobody@example.test", "x")  # unknown_user
                assert not await raw_login(port, proto, "127.0.0.1", FORGED, "x")  # a login forging fields
                assert await asyncio.to_thread(login_ok, ctx, proto, "127.0.0.1", ALICE, PASSWORD)
    finally:
        logging.getLogger().removeHandler(handler)
    return stream.getvalue()


async def test_failed_logins_log_one_line_format_and_level_on_every_protocol(tmp_path: Path) -> None:
    text = await _failures(tmp_path)
    lines = [ln for ln in text.splitlines() if " login failed " in ln]
    assert len(lines) == 9, text
    shape = re.compile(r"^\S+ WARNING mailhaven\.auth: login failed proto=(\S+) user=(\S+|\"[^\n]*\") "
                       r"ip=127\.0\.0\.1 reason=(bad_password|unknown_user) ")
    got = [shape.match(ln) for ln in lines]
    assert all(got), lines
    assert sorted({m.group(1) for m in got if m}) == sorted(PROTOCOLS)
    assert [m.group(3) for m in got if m] == ["bad_password", "unknown_user", "unknown_user"] * 3
    assert "Right-Password" not in text and " wrong" not in text
    ok = [ln for ln in text.splitlines() if " login ok " in ln]
    assert len(ok) == 3 and all(f"user={ALICE} ip=127.0.0.1 " in ln for ln in ok)


async def test_the_documented_fail2ban_filter_matches_every_protocol(tmp_path: Path) -> None:
    text = await _failures(tmp_path)
    logfile = tmp_path / "mailhaven.log"
    logfile.write_text(text)
    expected = 9  # 3 protocols x (bad_password, unknown_user, forged login)
    regex = re.compile(failregex().replace("<HOST>", r"(?P<host>\S+)"))
    hosts = [m.group("host") for ln in text.splitlines()
             if (m := regex.search(re.sub(r"^\S+Z", "", ln)))]
    assert hosts == ["127.0.0.1"] * expected  # never the forged 6.6.6.6
    if shutil.which("fail2ban-regex") is None:
        pytest.skip("fail2ban-regex not installed (apt-get install fail2ban): checked the regex in Python")
    conf = tmp_path / "mailhaven.conf"
    conf.write_text(documented_filter())
    out = await asyncio.to_thread(subprocess.run, ["fail2ban-regex", "--out", "ip", str(logfile), str(conf)],
                                  capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["127.0.0.1"] * expected, out.stdout
