"""Delivery to a program (issue 13 item 3; item 8: its output is bounded): an alias target
`|/path/to/command args` behind `[delivery] allow_programs`, run by the queue as program_user.

Real pieces only: small /bin/sh scripts written by each test into a directory program_user can
reach, the real queue manager over a real spool and store, the real MX (smtplib), the real CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import pwd
import shutil
import smtplib
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app, cleanup
from mailhaven.auth.users import Directory, UsersFile
from mailhaven.delivery import program
from mailhaven.errors import ConfigError
from mailhaven.queue.manager import QueueManager
from mailhaven.queue.spool import Entry
from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app
from tests.integration.test_cli import mh
from tests.smtp_peer import until

ALICE = "alice@example.test"
ROOT = os.geteuid() == 0
# Programs run as nobody when the tests run as root; otherwise the server can only run them as itself.
PROGRAM_USER = "nobody" if ROOT else pwd.getpwuid(os.geteuid()).pw_name
MSG = b"From: Alice <alice@example.test>\r\nTo: run@example.test\r\nSubject: to a program\r\n\r\nHello, program.\r\n"
RECORD = """out="$1"
cat > "$out/stdin"
env > "$out/env"
id -u > "$out/uid"
printf '%s\\n' "$@" > "$out/argv"
exit 0
"""


@dataclass
class Dirs:
    scripts: Path  # 0755: program_user may run what is here
    out: Path  # 0777: program_user writes what it saw here

    def script(self, name: str, body: str) -> str:
        path = self.scripts / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return str(path)


@pytest.fixture
def dirs() -> Iterator[Dirs]:
    # Not under tmp_path: pytest makes that 0700, and program_user must reach the scripts.
    base = Path(tempfile.mkdtemp(prefix="mh-program-", dir="/tmp"))
    try:
        base.chmod(0o755)
        out = base / "out"
        out.mkdir()
        out.chmod(0o777)
        yield Dirs(base, out)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def delivery(**extra: Any) -> dict[str, Any]:
    return {"allow_programs": True, "program_user": PROGRAM_USER, "program_timeout": "2s", **extra}


def add_alias(users_file: Path | str, alias: str, *targets: str) -> None:
    with UsersFile.edit(users_file) as uf:
        uf.add_alias(alias, list(targets))


@dataclass
class QEnv:
    ctx: Any
    manager: QueueManager
    task: asyncio.Task[None]

    async def inbox(self, user: str = ALICE) -> list[bytes]:
        mb = await self.ctx.store.account(user).mailbox("INBOX")
        return [await mb.read(m.uid) for m in (await mb.snapshot()).messages]

    def entry(self, entry_id: str) -> Entry | None:
        return self.manager.entries.get(entry_id)


@pytest.fixture
async def qenv(make_config: Callable[..., Any], users_file_path: Path) -> AsyncIterator[Callable[..., Any]]:
    envs: list[QEnv] = []

    async def start(**delivery_keys: Any) -> QEnv:
        cfg = make_config(hostname="mail.example.test", queue={"retry_schedule": ["1s"], "jitter": 0},
                          delivery=delivery(**delivery_keys))
        ctx = app.build_context(cfg)
        await ctx.store.start()
        mgr = QueueManager(ctx)
        ctx.queue = mgr
        task = asyncio.create_task(mgr.run())
        await mgr.loaded.wait()
        env = QEnv(ctx, mgr, task)
        envs.append(env)
        return env

    yield start
    for env in envs:
        env.manager.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(env.task, 10)
        await env.ctx.store.close()


def _env_of(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _dsn_groups(data: bytes) -> list[dict[str, str]]:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    status = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"][0]
    groups = [dict(g.items()) for g in status.get_payload()][1:]  # type: ignore[union-attr]
    return [{k: v.replace("\r\n", "").replace("\n", "") for k, v in g.items()} for g in groups]  # unfolded


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (killed; the container's init may not reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


# --- the queue runs the program ----------------------------------------------------------------------


async def test_exit_0_delivers_with_the_message_on_stdin_and_exactly_the_environment(
        qenv: Callable[..., Any], users_file_path: Path, dirs: Dirs) -> None:
    record = dirs.script("record.sh", RECORD)
    # A nested alias: RECIPIENT is the alias naming the command, ORIGINAL_RECIPIENT the envelope's.
    add_alias(users_file_path, "run@example.test", f"|{record} {dirs.out} 'two words'")
    add_alias(users_file_path, "outer@example.test", "run@example.test")
    env = await qenv()
    qid = await cleanup.enqueue(env.ctx, ALICE, ["outer+tag@example.test"], MSG)
    entry = env.entry(qid)
    assert entry is not None and entry.recipients[0].program  # not run inline: a queue entry
    await until(lambda: env.entry(qid) is None, 15)
    stdin = (dirs.out / "stdin").read_bytes()
    assert stdin.startswith(b"Return-Path: <alice@example.test>\r\nDelivered-To: run@example.test\r\n")
    assert b"Subject: to a program\r\n" in stdin and stdin.endswith(b"\r\n\r\nHello, program.\r\n")
    seen = _env_of(dirs.out / "env")
    home = pwd.getpwnam(PROGRAM_USER).pw_dir
    expected = {"SENDER": ALICE, "RECIPIENT": "run@example.test", "ORIGINAL_RECIPIENT": "outer+tag@example.test",
                "QUEUE_ID": qid, "PATH": "/usr/bin:/bin", "HOME": home, "USER": PROGRAM_USER, "LOGNAME": PROGRAM_USER}
    assert {k: seen.get(k) for k in expected} == expected
    assert set(seen) - set(expected) <= {"PWD", "OLDPWD", "SHLVL", "_"}  # what sh itself sets; no SHELL
    assert (dirs.out / "argv").read_text() == f"{dirs.out}\ntwo words\n"  # shlex-split, no shell
    if ROOT:
        assert int((dirs.out / "uid").read_text()) == pwd.getpwnam("nobody").pw_uid
    assert await env.inbox() == []  # no bounce


async def test_exit_75_is_retried_then_delivered(qenv: Callable[..., Any], users_file_path: Path,
                                                 dirs: Dirs) -> None:
    flaky = dirs.script("flaky.sh", f"""n=$(cat {dirs.out}/count 2>/dev/null || echo 0)
echo $((n + 1)) > {dirs.out}/count
if [ "$n" -lt 1 ]; then echo "disk busy, later" >&2; exit 75; fi
cat > /dev/null
exit 0
""")
    add_alias(users_file_path, "run@example.test", f"|{flaky}")
    env = await qenv()
    qid = await cleanup.enqueue(env.ctx, ALICE, ["run@example.test"], MSG)

    def deferred() -> bool:
        e = env.entry(qid)
        return e is not None and e.recipients[0].attempts >= 1 and not e.busy
    await until(deferred, 15)
    e = env.entry(qid)
    assert e is not None and e.recipients[0].state == "pending"
    assert e.recipients[0].last is not None and e.recipients[0].last.temporary
    assert e.recipients[0].last.reply == f"451 4.3.0 command {flaky} exited 75 (temporary failure): disk busy, later"
    await until(lambda: env.entry(qid) is None, 15)  # the retry schedule (1 s) runs it again
    assert (dirs.out / "count").read_text().strip() == "2"
    assert await env.inbox() == []


async def test_other_exit_bounces_with_the_first_line_of_stderr(qenv: Callable[..., Any], users_file_path: Path,
                                                                dirs: Dirs) -> None:
    fail = dirs.script("fail.sh", 'echo "just output"\nprintf "\\nmailbox\\033 on fire\\nsecond line\\n" >&2\nexit 1\n')
    add_alias(users_file_path, "run@example.test", f"|{fail}")
    env = await qenv()
    qid = await cleanup.enqueue(env.ctx, ALICE, ["run@example.test"], MSG)
    await until(lambda: env.entry(qid) is None, 15)
    [bounce] = await until(env.inbox, 15)
    [group] = _dsn_groups(bounce)
    assert group["Status"] == "5.3.0" and group["Action"] == "failed"
    assert group["Final-Recipient"] == "rfc822; run@example.test"
    assert group["Diagnostic-Code"] == f"smtp; 550 5.3.0 command {fail} exited 1: mailbox  on fire"


async def test_a_program_past_the_time_limit_is_killed_and_retried(qenv: Callable[..., Any], users_file_path: Path,
                                                                   dirs: Dirs) -> None:
    slow = dirs.script("slow.sh", f"""echo $$ > {dirs.out}/pid
sleep 60 &
echo $! > {dirs.out}/child
sleep 60
""")
    add_alias(users_file_path, "run@example.test", f"|{slow}")
    env = await qenv(program_timeout="1s")
    started = time.monotonic()
    qid = await cleanup.enqueue(env.ctx, ALICE, ["run@example.test"], MSG)

    def deferred() -> bool:
        e = env.entry(qid)
        return e is not None and e.recipients[0].attempts >= 1
    await until(deferred, 15)
    assert time.monotonic() - started < 10
    e = env.entry(qid)
    assert e is not None and e.recipients[0].state == "pending"
    last = e.recipients[0].last
    assert last is not None and last.temporary and last.reply == f"451 4.3.0 command {slow} killed after 1 s (time limit)"
    for name in ("pid", "child"):  # the whole process group went
        pid = int((dirs.out / name).read_text())
        await until(lambda pid=pid: _gone(pid), 5)
    await env.manager.delete(qid)


async def test_ten_megabytes_of_output_are_bounded_and_do_not_block(qenv: Callable[..., Any],
                                                                    users_file_path: Path, dirs: Dirs) -> None:
    loud = dirs.script("loud.sh", "head -c 10000000 /dev/zero\nhead -c 10000000 /dev/zero >&2\ncat >/dev/null\n")
    add_alias(users_file_path, "run@example.test", f"|{loud}")
    env = await qenv(program_timeout="20s")
    started = time.monotonic()
    qid = await cleanup.enqueue(env.ctx, ALICE, ["run@example.test"], MSG)
    await until(lambda: env.entry(qid) is None, 30)
    assert time.monotonic() - started < 20  # delivered, not killed at the time limit
    assert await env.inbox() == []
    # The same script run directly: what is kept is at most program_max_output octets.
    user = program.check_user(env.ctx.config)
    outcome = await program.run([loud], b"x\r\n", {}, user, time_limit=20, max_output=4096)
    assert outcome.status == 0 and not outcome.timed_out and len(outcome.output) == 4096


async def test_a_command_that_does_not_exist_bounces(qenv: Callable[..., Any], users_file_path: Path,
                                                     dirs: Dirs) -> None:
    add_alias(users_file_path, "run@example.test", f"|{dirs.scripts}/missing.sh")
    env = await qenv()
    qid = await cleanup.enqueue(env.ctx, ALICE, ["run@example.test"], MSG)
    await until(lambda: env.entry(qid) is None, 15)
    [bounce] = await until(env.inbox, 15)
    [group] = _dsn_groups(bounce)
    assert group["Status"] == "5.3.0" and "cannot execute" in group["Diagnostic-Code"]


async def test_programs_switched_off_after_queueing_are_not_run(qenv: Callable[..., Any], users_file_path: Path,
                                                                dirs: Dirs, make_config: Callable[..., Any]) -> None:
    record = dirs.script("record.sh", RECORD)
    add_alias(users_file_path, "run@example.test", f"|{record} {dirs.out}")
    env = await qenv()
    env.manager.stop()
    await asyncio.wait_for(env.task, 10)
    qid = await env.manager.spool.add(ALICE, [], MSG, programs=[("run@example.test", f"|{record} {dirs.out}",
                                                                 "run@example.test")])
    # The operator turns programs off (and drops the alias, as check-config then demands).
    with UsersFile.edit(users_file_path) as uf:
        uf.delete_alias("run@example.test")
    env2 = await qenv(allow_programs=False)
    await until(lambda: env2.entry(qid.id) is None, 15)
    assert not (dirs.out / "stdin").exists()
    [bounce] = await until(env2.inbox, 15)
    [group] = _dsn_groups(bounce)
    assert group["Status"] == "5.7.1"


# --- through the real MX -----------------------------------------------------------------------------


async def test_mx_queues_the_program_and_the_queue_runs_it(tmp_path: Path, tls_files: Any, dns_nameserver: str,
                                                           dirs: Dirs) -> None:
    record = dirs.script("record.sh", RECORD)
    cfg = load_test_config(app_config_file(tmp_path, tls_files, dns_nameserver, delivery=delivery(),
                                           queue={"retry_schedule": ["1s"], "jitter": 0}))
    add_user(cfg, ALICE, "secret")
    add_alias(cfg.users_file, "run@example.test", f"|{record} {dirs.out}")
    add_alias(cfg.users_file, "both@example.test", ALICE, f"|{record} {dirs.out}")
    async with running_app(cfg) as ctx:
        host, port = ctx.addresses["mx"]

        def send(rcpt: str) -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP(host, port, timeout=30) as s:
                return s.sendmail("sender@sender.test", [rcpt], MSG)

        assert await asyncio.to_thread(send, "run@example.test") == {}
        await until(lambda: (dirs.out / "env").exists() and not ctx.queue.entries, 20)
        seen = _env_of(dirs.out / "env")
        assert seen["SENDER"] == "sender@sender.test" and seen["RECIPIENT"] == "run@example.test"
        stdin = (dirs.out / "stdin").read_bytes()
        # The MX's trace fields are there, under our Return-Path and Delivered-To.
        assert stdin.startswith(b"Return-Path: <sender@sender.test>\r\nDelivered-To: run@example.test\r\nReceived: ")
        qid = seen["QUEUE_ID"]
        assert f" id {qid}" in stdin.decode()
        # A user and a program: the mailbox copy before the 250, the program from the queue.
        (dirs.out / "env").unlink()
        assert await asyncio.to_thread(send, "both@example.test") == {}
        await until(lambda: (dirs.out / "env").exists() and not ctx.queue.entries, 20)
        mb = await ctx.store.account(ALICE).mailbox("INBOX")
        assert len((await mb.snapshot()).messages) == 1


# --- the users file, the CLI and check-config ------------------------------------------------------------


def _directory(make_config: Callable[..., Any], **keys: Any) -> Directory:
    return Directory.load(make_config(delivery=keys))


def test_program_targets_are_refused_unless_allowed(make_config: Callable[..., Any], users_file_path: Path) -> None:
    add_alias(users_file_path, "run@example.test", "|/bin/cat")
    with pytest.raises(ConfigError) as e:
        _directory(make_config)
    assert str(e.value) == (f"{users_file_path}: aliases.\"run@example.test\": program target |/bin/cat refused "
                            "([delivery] allow_programs = false)")
    d = _directory(make_config, allow_programs=True, program_user=PROGRAM_USER)
    assert d.program_targets("run@example.test") == [("|/bin/cat", "run@example.test")]
    assert d.resolve("run@example.test") is None  # no mailbox


def test_program_targets_need_an_absolute_path(users_file_path: Path) -> None:
    users_file_path.write_text(users_file_path.read_text() + '\n[aliases]\n"run@example.test" = ["|cat -n"]\n')
    with pytest.raises(ConfigError, match=r'aliases."run@example.test"\[0\]: not a valid program target '
                                          r'\(the command must be an absolute path'):
        UsersFile.load(users_file_path)
    with pytest.raises(ValueError, match="absolute path"):
        UsersFile(users_file_path).add_alias("x@example.test", ["|bin/sh"])


def test_program_user_is_checked(make_config: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match="delivery.program_user: root is root; programs never run as root"):
        program.check_user(make_config(delivery={"allow_programs": True, "program_user": "root"}))
    with pytest.raises(ConfigError, match="delivery.program_user: no such user: no-such-user-here"):
        program.check_user(make_config(delivery={"allow_programs": True, "program_user": "no-such-user-here"}))
    if ROOT:
        # A root server that drops to run_as_user can then only run programs as that user.
        with pytest.raises(ConfigError, match=r'the server runs as daemon and cannot run programs as nobody; '
                                              r'set program_user = "daemon"'):
            program.check_user(make_config(run_as_user="daemon",
                                           delivery={"allow_programs": True, "program_user": "nobody"}))


def test_cli_alias_add_refuses_programs_unless_allowed(tmp_path: Path) -> None:
    path = app_config_file(tmp_path, None)
    r = mh("alias", "add", "run@example.test", "|/bin/cat", "--config", str(path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr == ("mailhaven: alias run@example.test: program target |/bin/cat refused "
                        "([delivery] allow_programs = false)\n")
    path = app_config_file(tmp_path, None, delivery=delivery())
    r = mh("alias", "add", "run@example.test", "|/bin/cat -n", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "alias run@example.test -> |/bin/cat -n\n"
    r = mh("check-config", "--config", str(path))
    assert r.returncode == 0, r.stderr
    path = app_config_file(tmp_path, None, delivery=delivery(program_user="root"))
    r = mh("check-config", "--config", str(path))
    assert r.returncode == 2 and "delivery.program_user: root is root" in r.stderr


async def test_program_recipients_survive_a_restart_and_old_envelopes_still_load(tmp_path: Path) -> None:
    from mailhaven.queue.spool import Spool

    spool = Spool(tmp_path / "queue", fsync=False)
    await spool.load()
    entry = await spool.add(ALICE, ["bob@b.test"], MSG,
                            programs=[("outer@example.test", "|/bin/cat -n", "run@example.test")])
    [again] = await Spool(tmp_path / "queue", fsync=False).load()
    assert [(r.address, r.program, r.program_rcpt) for r in again.recipients] == [
        ("bob@b.test", "", ""), ("outer@example.test", "|/bin/cat -n", "run@example.test")]
    assert "program" not in again.recipients[0].to_json()  # an ordinary recipient is written as before
    assert again.id == entry.id


async def test_a_queued_local_recipient_reaching_a_program_runs_it_in_the_queue(
        qenv: Callable[..., Any], users_file_path: Path, dirs: Dirs) -> None:
    record = dirs.script("record.sh", RECORD)
    add_alias(users_file_path, "both@example.test", ALICE, f"|{record} {dirs.out}")
    env = await qenv()
    # An entry for a local address (as an older spool, or a forward, holds): the mailbox copy and
    # the program both happen, and the entry goes.
    entry = await env.manager.submit("sender@sender.test", ["both@example.test"], MSG)
    await until(lambda: env.entry(entry) is None, 15)
    assert _env_of(dirs.out / "env")["RECIPIENT"] == "both@example.test"
    assert (dirs.out / "stdin").read_bytes().startswith(b"Return-Path: <sender@sender.test>\r\n"
                                                        b"Delivered-To: both@example.test\r\n")
    [copy] = await env.inbox()
    assert b"Delivered-To: alice@example.test\r\n" in copy
