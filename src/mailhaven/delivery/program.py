"""Delivery to a program: an alias target `|/path/to/command args` (Postfix local(8) "mail to command").

Owns: who programs run as (`check_user`: `[delivery] program_user` exists, is not root, and is one
this server can become), running one program (`run`: argv without a shell, the message on
standard input, a fixed environment, a time limit and an output limit) and what its end means
(`deliver` -> DeliveryResult):
- exit 0: delivered; exit 75 (EX_TEMPFAIL, sysexits.h): temporary, retried by the queue;
- killed at `program_timeout` (the whole process group, SIGKILL) or dead by a signal: temporary
  (Postfix's pipe code defers a command that died by a signal: 4.3.0);
- any other exit status, or a command that cannot be executed: permanent 550 5.3.0 with the first
  line of its standard error (bounded, control characters removed), which the queue bounces.
Only the queue runs programs (queue/manager.py, for envelope recipients carrying a program): the MX
and cleanup never do it inline, so a slow or failing program is retried like any delivery.

Environment, exactly (as Postfix local(8) sets them, minus SHELL): SENDER (the envelope sender, ""
for a bounce), RECIPIENT (the address whose alias names the command; the envelope recipient as
given when that alias is the one it reached first), ORIGINAL_RECIPIENT (the envelope recipient as
received), QUEUE_ID, PATH=/usr/bin:/bin, HOME, USER and LOGNAME (program_user's). The working
directory is the user's home when it exists, else /. The message gets `Return-Path:` and
`Delivered-To: RECIPIENT` on top, as a mailbox copy (delivery/local.py).

Who runs it: a server running as root (no run_as_user) switches to program_user in the child
(subprocess's user/group/extra_groups: no preexec_fn, which is unsafe with threads); a server that
is not root (or drops to run_as_user) cannot switch users, so program_user must then be that user,
else a config error. Output: stdout and stderr are read to the end together, keeping at most
`program_max_output` octets and dropping the rest, so a chatty program never blocks on a full pipe
and never fills our memory (issue 13 item 8).
Does not own: the alias syntax (auth/users.py program_argv), retries and bounces (queue/manager.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import re
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mailhaven.config import Config
from mailhaven.delivery.result import DeliveryResult, clean_text
from mailhaven.errors import ConfigError

EX_TEMPFAIL = 75  # sysexits.h
READ_CHUNK = 64 * 1024
DRAIN_AFTER_EXIT = 2.0  # seconds the pipes may stay open after the program exited (a background child)
MAX_DIAGNOSTIC = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ProgramUser:
    """Who programs run as; `switch`: this process is root and changes to them in the child."""

    name: str
    uid: int
    gid: int
    home: str
    switch: bool
    groups: tuple[int, ...] = ()


def _runner() -> str | None:
    """The user this server runs programs as by itself, or None when it is root (and may switch)."""
    if os.geteuid() == 0:
        return None
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def check_user(config: Config) -> ProgramUser:
    """`[delivery] program_user`, checked: it exists, is not root (uid 0), and this server can run
    programs as it: root may switch to anyone; a server that is not root, or that drops to
    run_as_user after binding, only runs them as itself. Raises ConfigError (one line)."""
    name = config.delivery.program_user
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"delivery.program_user: no such user: {name}") from None
    if pw.pw_uid == 0:
        raise ConfigError(f"delivery.program_user: {name} is root; programs never run as root")
    runner = _runner()
    if runner is None and config.run_as_user:
        runner = config.run_as_user  # the server drops to it after binding (app.py)
    if runner is not None:
        try:
            runner_uid = pwd.getpwnam(runner).pw_uid
        except KeyError:
            runner_uid = -1
        if runner_uid != pw.pw_uid:
            raise ConfigError(f"delivery.program_user: the server runs as {runner} and cannot run programs "
                              f"as {name}; set program_user = \"{runner}\" (or run the server as root)")
    groups = tuple(os.getgrouplist(name, pw.pw_gid)) if runner is None else ()
    return ProgramUser(name, pw.pw_uid, pw.pw_gid, pw.pw_dir or "/", runner is None, groups)


@dataclass(frozen=True)
class Outcome:
    """How one run ended: `status` the exit status (negative: killed by that signal; None: it
    could not be started), `timed_out`, the first `max_output` octets of stdout+stderr, the first
    line of stderr, and why it could not start."""

    status: int | None
    timed_out: bool
    output: bytes
    stderr_line: str
    error: str = ""
    error_permanent: bool = False


def environment(user: ProgramUser, *, sender: str, recipient: str, original_recipient: str,
                queue_id: str) -> dict[str, str]:
    """The program's whole environment (nothing of ours leaks into it)."""
    return {"SENDER": sender, "RECIPIENT": recipient, "ORIGINAL_RECIPIENT": original_recipient,
            "QUEUE_ID": queue_id, "PATH": "/usr/bin:/bin", "HOME": user.home, "USER": user.name,
            "LOGNAME": user.name}


def first_line(data: bytes) -> str:
    """The first non-empty line, printable and bounded (it goes into logs and the DSN)."""
    for line in data.split(b"\n", 20):
        text = _CONTROL.sub(" ", line.decode("utf-8", "replace")).strip()
        if text:
            return text[:MAX_DIAGNOSTIC]
    return ""


async def run(argv: Sequence[str], message: bytes, env: dict[str, str], user: ProgramUser, *,
              time_limit: float, max_output: int) -> Outcome:
    """Run `argv` (no shell) as `user` in its own session, `message` on stdin; see the module doc."""
    cwd = user.home if user.home.startswith("/") else "/"
    groups = list(user.groups) if user.switch else None
    proc: asyncio.subprocess.Process | None = None
    for where in dict.fromkeys((cwd, "/")):  # no home, or one the user may not enter: from / then
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, cwd=where, start_new_session=True, close_fds=True,
                user=user.uid if user.switch else None, group=user.gid if user.switch else None,
                extra_groups=groups)
            break
        except OSError as e:
            if where != "/":
                continue
            # No such command, not executable: bounced (as a shell's 126/127 is); the rest retried.
            permanent = e.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR, errno.EISDIR)
            return Outcome(None, False, b"", "", f"cannot execute {argv[0]}: {e.strerror or e}", permanent)
    assert proc is not None
    kept = bytearray()
    stderr_head = bytearray()

    async def feed() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(message)
            await proc.stdin.drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.close()

    async def drain(stream: asyncio.StreamReader | None, is_stderr: bool) -> None:
        while stream is not None:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                return
            room = max_output - len(kept)
            if room > 0:
                kept.extend(chunk[:room])  # the rest is read and dropped: the program never blocks
            if is_stderr and len(stderr_head) < 4096:
                stderr_head.extend(chunk[:4096 - len(stderr_head)])

    readers = [asyncio.ensure_future(drain(proc.stdout, False)), asyncio.ensure_future(drain(proc.stderr, True))]
    writer = asyncio.ensure_future(feed())
    deadline = time.monotonic() + time_limit
    timed_out = False
    try:
        async with asyncio.timeout(time_limit):
            await proc.wait()
    except TimeoutError:
        # Exited but something it started still holds the pipes (asyncio's wait also waits for
        # them): the program's own status counts; the group is ended below.
        timed_out = proc.returncode is None
    finally:
        if proc.returncode is None or timed_out:
            _kill_group(proc.pid)
            await proc.wait()
    # After the exit the pipes close, unless something the program started still holds them:
    # give it a moment, then end the whole group (no process outlives its delivery).
    left = max(0.0, min(DRAIN_AFTER_EXIT, deadline - time.monotonic()))
    _done, pending = await asyncio.wait([*readers, writer], timeout=left)
    if pending:
        _kill_group(proc.pid)
        _done, pending = await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
    for task in (*readers, writer):
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a broken pipe is not an error of ours
    return Outcome(proc.returncode, timed_out, bytes(kept), first_line(bytes(stderr_head)))


def _kill_group(pgid: int) -> None:
    """SIGKILL the program's process group (start_new_session made its pid the group id)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def result_of(recipient: str, command: str, outcome: Outcome, timeout: float) -> DeliveryResult:
    """The DeliveryResult of one run (module doc: 0 delivered, 75 / timeout / signal retried, the
    rest bounced with the first line of stderr)."""
    name = (command.strip().lstrip("|").split() or [command])[0]
    why = f": {outcome.stderr_line}" if outcome.stderr_line else ""
    if outcome.status is None:
        if outcome.error_permanent:
            return DeliveryResult.perm(recipient, outcome.error, code=550, enhanced="5.3.0")
        return DeliveryResult.temp(recipient, outcome.error, code=451, enhanced="4.3.0")
    if outcome.timed_out:
        return DeliveryResult.temp(recipient, f"command {name} killed after {timeout:g} s (time limit){why}",
                                   code=451, enhanced="4.3.0")
    if outcome.status == 0:
        return DeliveryResult.ok(recipient, f"delivered to command {name}")
    if outcome.status == EX_TEMPFAIL:
        return DeliveryResult.temp(recipient, f"command {name} exited 75 (temporary failure){why}",
                                   code=451, enhanced="4.3.0")
    if outcome.status < 0:
        return DeliveryResult.temp(recipient, f"command {name} died with signal {-outcome.status}{why}",
                                   code=451, enhanced="4.3.0")
    return DeliveryResult.perm(recipient, clean_text(f"command {name} exited {outcome.status}{why}"),
                               code=550, enhanced="5.3.0")


__all__ = ["ProgramUser", "Outcome", "check_user", "environment", "run", "result_of", "first_line", "EX_TEMPFAIL"]
