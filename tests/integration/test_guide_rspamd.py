"""docs/production.md section 10 works as written: rspamd started with exactly the `local.d` files
the guide writes answers /checkv2 with the guide's thresholds and fields, its controller takes the
password the guide hashed (and no longer Debian's example "q1"), and Bayes learning reaches the
guide's redis. And the guide's `[spam]` table names every key config.py has, and only those.

The guide's blocks that write under /etc/rspamd are read from the document (as test_guide.py reads
them) and run with bash, /etc/rspamd standing for a temporary $LOCAL_CONFDIR and /etc/mailhaven for
a folder holding the password file; redis's port (6379 in the guide) becomes a free one. rspamd
itself starts from Debian's own /etc/rspamd/rspamd.conf. Files only this test adds, in override.d:
the listeners on free loopback ports (bind_socket only), DNS from the tests' server and the modules
that reach the Internet off (as tests/fixtures_rspamd.py does), so nothing the guide wrote is
replaced.

The controller trusts 127.0.0.1 without a password (Debian's secure_ip), so the password checks
come from 127.0.0.2.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from mailhaven.config import SpamConfig
from mailhaven.policy.spam import parse_rspamd
from tests.dnsserver import DnsServer
from tests.fixtures_base import free_port
from tests.fixtures_rspamd import _OFF, _OPTIONS, REDIS, RSPAMD, STOCK, Rspamd
from tests.integration.test_guide import GUIDE, guide_blocks, substitute

PASSWORD = "Guide-Rspamd-Secret-7"
SECTION = "## 10. Spam filtering (rspamd, DNS lists, greylisting)"


def _section() -> str:
    text = GUIDE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end != -1 else len(text)]


def _rspamd_blocks() -> list[str]:
    blocks = [b.text for b in guide_blocks(_section()) if b.kind == "run" and "/etc/rspamd/" in b.text]
    assert blocks, "section 10 writes no /etc/rspamd files"
    return blocks


class GuideRspamd(Rspamd):
    """rspamd from Debian's rspamd.conf with the guide's local.d (see the module docstring)."""

    def __init__(self, root: Path, dns: str) -> None:
        super().__init__(root, dns)
        self.proxy_port = free_port()

    def _write_config(self) -> None:
        conf = self.root / "conf"
        for d in ("conf/local.d", "conf/override.d", "db", "run", "log", "redis", "mailhaven"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "mailhaven" / "rspamd-controller.password").write_text(PASSWORD + "\n")
        mapping = {"/etc/rspamd": str(conf), "/etc/mailhaven": str(self.root / "mailhaven"),
                   "127.0.0.1:6379": f"127.0.0.1:{self.redis_port}"}
        for block in _rspamd_blocks():
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", substitute(block, mapping)], capture_output=True,
                               text=True, timeout=60)
            assert r.returncode == 0, f"{block}\n{r.stdout}{r.stderr}"
        override = conf / "override.d"
        for worker, port in (("normal", self.normal_port), ("controller", self.controller_port),
                             ("proxy", self.proxy_port)):
            (override / f"worker-{worker}.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\n')
        (conf / "tld.dat").write_text("com\norg\nnet\ntest\nexample\ninvalid\nlocalhost\n")
        (override / "options.inc").write_text(_OPTIONS.format(dns=self.dns, tld=conf / "tld.dat"))
        for module in _OFF:
            (override / f"{module}.conf").write_text("enabled = false;\n")
        if self.user is not None:
            for p in [self.root, *self.root.rglob("*")]:
                os.chown(p, *self.user)

    def rspamd_argv(self, config: Path | None = None) -> list[str]:
        return super().rspamd_argv(STOCK / "rspamd.conf")


@pytest.fixture
def guide_rspamd(_dns_server_session: DnsServer) -> Iterator[GuideRspamd]:
    missing = [p for p in (RSPAMD, REDIS, "/usr/bin/rspamadm") if not Path(p).exists()]
    if missing or not STOCK.is_dir():
        reason = f"needs Debian's rspamd and redis-server (missing: {', '.join(missing) or STOCK})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; .ci/run installs them")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="mailhaven-guide-rspamd-"))
    os.chmod(root, 0o755)
    server = GuideRspamd(root, _dns_server_session.nameserver)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _request(port: int, method: str, path: str, body: bytes = b"", source: str = "127.0.0.1",
             **headers: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


_WORDS = ("cheap watches pharmacy discount offer limited winner prize claim urgent bank transfer "
          "account verify password lottery million dollars inheritance beneficiary casino bonus").split()
MESSAGE = ("From: someone@example.net\r\nTo: alice@example.org\r\nSubject: guide rspamd check\r\n"
           "Message-ID: <guide-rspamd@example.net>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n\r\n"
           + " ".join(f"{w}{i}" for i in range(5) for w in _WORDS) + "\r\n").encode()


def test_rspamd_with_the_guides_local_d_files_scans_trains_and_checks_the_password(
        guide_rspamd: GuideRspamd) -> None:
    status, body = _request(guide_rspamd.normal_port, "POST", "/checkv2", MESSAGE, IP="192.0.2.1",
                            From="someone@example.net", Rcpt="alice@example.org", **{"Queue-Id": "guideq1"})
    assert status == 200, body
    verdict = parse_rspamd(body)
    assert verdict.required == 15.0  # actions.conf: reject = 15
    added = {name for name, _ in verdict.add}
    assert {"X-Spamd-Result", "X-Rspamd-Queue-Id"} <= added, verdict  # milter_headers.conf
    assert dict(verdict.add)["X-Rspamd-Queue-Id"] == "guideq1"

    controller = guide_rspamd.controller_port
    assert _request(controller, "GET", "/stat", source="127.0.0.2", Password=PASSWORD)[0] == 200
    for wrong in ({"Password": "q1"}, {"Password": "wrong"}, {}):
        assert _request(controller, "GET", "/stat", source="127.0.0.2", **wrong)[0] in (401, 403), wrong
    # Bayes learning writes to the guide's redis (classifier-bayes.conf + redis.conf).
    status, body = _request(controller, "POST", "/learnspam", MESSAGE, source="127.0.0.2", Password=PASSWORD)
    assert status == 200 and b'"success":true' in body.replace(b" ", b""), body


def test_the_guides_spam_table_and_key_list_match_config() -> None:
    section = _section()
    [toml_block] = re.findall(r"```toml\n(.*?)```", section, re.S)
    keys = set(tomllib.loads(toml_block)["spam"])
    names = {f.name for f in fields(SpamConfig)}
    assert keys <= names
    table = section[section.index("### The `[spam]` keys"):section.index("What each rspamd action")]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    assert documented == names, f"keys the [spam] table misses or invents: {documented ^ names}"
