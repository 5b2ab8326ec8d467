"""Dovecot's imaptest against the whole server: its scripted compliance tests, 0 failed groups.

imaptest is a C program, not a Python package. `.ci/run` builds it from `../shared/peers/imaptest`
(once: cached by the hash of its sources, see `.ci/imaptest`) and exports
- `MAILHAVEN_IMAPTEST`: the binary (linked to Debian's libdovecot, run with LD_LIBRARY_PATH=/usr/lib/dovecot);
- `MAILHAVEN_IMAPTEST_TESTS`: its scripted tests (`src/tests` of its source; default: `tests` beside
  the binary).
Without them the test is skipped, except under CI=true, where a missing imaptest is a failure.
README "Run imaptest locally" says how to run it by hand.

The server runs as in production (app.run: every listener, a users file, the Maildir store) on
127.0.0.1 with ephemeral ports; imaptest logs in over the plaintext IMAP listener (loopback
plaintext allowed by auth.allow_plaintext_loopback, as in dev mode) as two users with one password
(its `user2` logs in with `pass` too). Each group creates and deletes the mailboxes it uses.

Besides imaptest's own groups, ours in tests/data/imaptest/ run too (same script language; e.g.
`condstore` and `qresync`: RFC 7162 beyond imaptest's only CONDSTORE group, esearch-condstore;
`searchres`, `within`, `list-status`, `status-size` and `savedate`: RFC 5182, RFC 5032, RFC 5819,
RFC 8438 and RFC 8514, which imaptest has no groups for). They are linked with imaptest's into one
folder under tmp_path.

imaptest skips a group whose `capabilities:` header names one we do not advertise, and this revision
still counts it as run (it always prints "0 skipped"); the test works the list out the same way and
prints it with the summary.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures_base import PASSWORD
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app

USER, USER2 = "alice@example.test", "carol@example.test"
RUN_LIMIT = 300.0  # seconds for the whole run (about 2 s on an idle machine)

SUMMARY = re.compile(rb"^(\d+) test groups: (\d+) failed, (\d+) skipped due to missing capabilities$", re.M)
BASE = re.compile(rb"^base protocol: (\d+)/(\d+) individual commands failed$", re.M)
OWN_GROUPS = Path(__file__).resolve().parent.parent / "data" / "imaptest"
EXTENSIONS = re.compile(rb"^extensions: (\d+)/(\d+) individual commands failed$", re.M)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _imaptest() -> tuple[Path, Path]:
    """(binary, tests folder) from the environment; skip (fail under CI=true) when not given."""
    binary = os.environ.get("MAILHAVEN_IMAPTEST", "")
    if not binary:
        why = "MAILHAVEN_IMAPTEST is not set (.ci/run builds imaptest; README: Run imaptest locally)"
        if _in_ci():
            pytest.fail("CI=true but " + why)
        pytest.skip(why)
    path = Path(binary)
    tests = Path(os.environ.get("MAILHAVEN_IMAPTEST_TESTS") or path.parent / "tests")
    # Set but wrong is always an error: someone meant to run it.
    assert path.is_file() and os.access(path, os.X_OK), f"MAILHAVEN_IMAPTEST={binary} is not an executable"
    assert tests.is_dir(), f"imaptest's scripted tests not found at {tests} (MAILHAVEN_IMAPTEST_TESTS)"
    return path, tests


def with_own_groups(upstream: Path, into: Path) -> Path:
    """A folder with imaptest's scripted tests and ours (tests/data/imaptest), as symbolic links."""
    into.mkdir()
    for folder in (upstream, OWN_GROUPS):
        for f in folder.iterdir():
            assert not (into / f.name).exists(), f"group {f.name} exists upstream too"
            (into / f.name).symlink_to(f)
    return into


def groups(tests: Path) -> dict[str, list[str]]:
    """Each test group (a file that is not an .mbox) with the capabilities its header requires."""
    out: dict[str, list[str]] = {}
    for f in sorted(tests.iterdir()):
        if not f.is_file() or f.name.endswith(".mbox"):
            continue
        caps: list[str] = []
        for line in f.read_text("utf-8", "replace").splitlines():
            if not line.strip():
                break  # the header ends at the first empty line
            key, _, value = line.partition(":")
            if key.strip().lower() == "capabilities":
                caps = value.split()
        out[f.name] = caps
    return out


async def capabilities(port: int) -> set[str]:
    """What the server advertises after LOGIN (what imaptest compares against), upper case."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        writer.write(f'a LOGIN {USER} "{PASSWORD}"\r\nb CAPABILITY\r\nc LOGOUT\r\n'.encode())
        caps: set[str] = set()
        while line := await asyncio.wait_for(reader.readline(), 10):
            if line.startswith(b"* CAPABILITY "):
                caps = set(line.decode().split()[2:])
            if line.startswith(b"c "):
                break
        return {c.upper() for c in caps}
    finally:
        writer.close()


async def run_imaptest(binary: Path, tests: Path, port: int, cwd: Path) -> bytes:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in ("/usr/lib/dovecot", env.get("LD_LIBRARY_PATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        str(binary), "host=127.0.0.1", f"port={port}", f"user={USER}", f"user2={USER2}", f"pass={PASSWORD}",
        f"test={tests}", cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_LIMIT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"imaptest did not finish within {RUN_LIMIT:.0f} s")
    return out


@pytest.mark.timeout(RUN_LIMIT + 60)
async def test_imaptest_scripted_compliance_groups_all_pass(tmp_path: Path, tls_files: tuple[Path, Path],
                                                             dns_nameserver: str) -> None:
    binary, upstream = _imaptest()
    tests = with_own_groups(upstream, tmp_path / "imaptest-groups")
    all_groups = groups(tests)
    cfg = load_test_config(app_config_file(tmp_path, tls_files, dns_nameserver,
                                           auth={"failure_delay": 0, "allow_plaintext_loopback": True}))
    for user in (USER, USER2):
        add_user(cfg, user, PASSWORD)
    async with running_app(cfg) as ctx:
        port = ctx.port("imap")
        ours = await capabilities(port)
        out = await run_imaptest(binary, tests, port, tmp_path)
    text = out.decode("utf-8", "replace")
    summary, base, ext = SUMMARY.search(out), BASE.search(out), EXTENSIONS.search(out)
    assert summary and base and ext, "no imaptest summary in its output:\n" + text[-4000:]
    skipped = sorted(g for g, caps in all_groups.items() if not all(c.upper() in ours for c in caps))
    print(f"imaptest: {summary.group(0).decode()}; {base.group(0).decode()}; {ext.group(0).decode()}")
    print(f"imaptest: {len(skipped)} groups skipped for capabilities we do not offer: {' '.join(skipped)}")
    assert int(summary.group(1)) == len(all_groups), text[-4000:]  # every group was loaded
    assert int(summary.group(2)) == 0, "failed groups:\n" + text[-8000:]
    assert int(base.group(1)) == 0 and int(ext.group(1)) == 0, text[-8000:]
    # Protocol errors imaptest reports outside any group's verdict (e.g. "Keyword used without being
    # in FLAGS", a FETCH showing a keyword before FLAGS listed it): none, as with Dovecot.
    errors = [line for line in text.splitlines() if line.startswith(("Error:", "Panic:", "Fatal:"))]
    assert not errors, "\n".join(errors[:40])
    # Groups we do run: every base group plus the extensions we offer (MOVE, UIDPLUS, ID at least).
    assert {"move", "uidplus", "id", "atoms", "store", "fetch", "condstore", "qresync", "esearch",
            "esearch-condstore", "searchres", "within", "sort-addresses", "sort-arrival", "sort-date", "sort-size",
            "sort-subject", "sort-display-from", "sort-display-to", "esort", "thread", "thread2", "thread3",
            "thread4", "thread5", "thread6", "thread7", "thread8", "thread-orderedsubject",
            "thread-orderedsubject2", "listext", "list-status", "status-size", "savedate", "append-binary",
            "fetch-binary-mime", "fetch-binary-mime-base64", "fetch-binary-mime-qp",
            "multiappend", "search-context-update", "search-context-update2", "search-context-update3",
            "search-partial", "sort-partial"}.isdisjoint(skipped)
    assert {"thread", "thread8", "thread-orderedsubject2", "listext"} <= set(all_groups)  # they exist in this revision
    assert {"CONDSTORE", "QRESYNC", "ESEARCH", "SEARCHRES", "WITHIN", "SORT", "SORT=DISPLAY", "ESORT",
            "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "LIST-EXTENDED", "LIST-STATUS", "STATUS=SIZE",
            "SAVEDATE", "BINARY", "MULTIAPPEND", "UTF8=ACCEPT", "COMPRESS=DEFLATE", "IMAP4REV2", "CONTEXT=SEARCH",
            "CONTEXT=SORT"} <= ours
    # The only groups still skipped: extensions nobody has implemented yet (a new skip fails here).
    assert set(skipped) <= {"catenate", "catenate-multiappend", "notify", "urlauth", "urlauth-binary",
                            "urlauth2"}, skipped
    # No group is skipped for an extension we offer.
    assert all({c.upper() for c in all_groups[g]} - ours for g in skipped)
    assert int(base.group(2)) > 400  # the base commands did run (457 with this revision)


@pytest.mark.timeout(RUN_LIMIT + 60)
def test_own_groups_pass_against_dovecot(tmp_path: Path) -> None:
    """Our groups (tests/data/imaptest) state Dovecot 2.3's behaviour: they pass against a real
    Dovecot too (the throwaway one of test_fetch_vs_dovecot.py), so they are no private reading."""
    from tests.integration import test_fetch_vs_dovecot as dv

    binary, upstream = _imaptest()
    if not os.path.exists(dv.DOVECOT):
        pytest.skip("dovecot is not installed")
    tests = tmp_path / "groups"
    tests.mkdir()
    (tests / "default.mbox").symlink_to(upstream / "default.mbox")
    own = sorted(f for f in OWN_GROUPS.iterdir() if f.is_file())
    for f in own:
        (tests / f.name).symlink_to(f)
    env = dict(os.environ, LD_LIBRARY_PATH="/usr/lib/dovecot")
    with dv.running_dovecot([]) as dovecot:
        out = subprocess.run(
            [str(binary), "host=127.0.0.1", f"port={dovecot.port}", f"user={dv.USER}", f"user2={dv.USER}",
             f"pass={dv.PASSWORD}", f"test={tests}"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=RUN_LIMIT, check=False).stdout
    text = out.decode("utf-8", "replace")
    summary = SUMMARY.search(out)
    assert summary, text[-4000:]
    assert int(summary.group(1)) == len(own) and int(summary.group(2)) == 0, text[-4000:]
