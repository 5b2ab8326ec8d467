"""The control socket: a Unix socket through which the CLI talks to the running server.

Owns: serving `config.control_path` (mode 0600: only the server's user and root may connect), the
protocol (one JSON object per line each way, requests bounded to MAX_REQUEST octets, a reply per
request), the queue commands, the login penalty commands (`mailhaven auth blocks|unblock`), and
the blocking client the CLI uses.
Does not own: the commands' effects (queue/manager.py), CLI argument parsing (cli.py).

Requests and replies:
    {"cmd": "list"}              -> {"ok": true, "entries": [{"id", "sender", "created", "next_attempt",
                                     "attempts", "size", "busy", "recipients": [{address, state, last}]}]}
    {"cmd": "show", "id": ID}    -> {"ok": true, "entry": {...the envelope..., "busy": bool}}
    {"cmd": "show", "id": ID, "headers": true}
                                 -> the same, the entry also with "headers": {"From", "To", "Subject",
                                    "Message-ID"} as found in the message (for the text of `queue show`)
    {"cmd": "retry", "id": ID}   -> {"ok": true}            (next attempt = now)
    {"cmd": "delete", "id": ID}  -> {"ok": true}            (removed, no bounce)
    {"cmd": "flush"}             -> {"ok": true, "count": n} (every entry: next attempt = now)
    {"cmd": "auth_blocks"}       -> {"ok": true, "blocks": [{kind, ip, account, failures, delay, expires_in}]}
    {"cmd": "auth_unblock", "target": IP|ADDRESS} -> {"ok": true, "count": n} (penalties lifted)
    anything wrong               -> {"ok": false, "error": "one line"}

    server = await serve_control(ctx, manager)      # app.run; close() it on shutdown
    reply = control_request(path, {"cmd": "list"})  # raises ControlError when not running
    status, text = queue_command(path, "show", ID)   # cli.py: print(text); exit(status)
    queue_command(path, "show", ID, as_json=True)     # `queue show --json`: the entry as JSON
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailhaven import seams

log = logging.getLogger("mailhaven.control")

MAX_REQUEST = 64 * 1024
MAX_REPLY = 256 * 1024 * 1024
READ_TIMEOUT = 10.0


Relay = Callable[[dict[str, Any]], object]  # passes a command on to the other workers


class ControlError(Exception):
    """The server cannot be reached or answered nonsense; `str()` is one line for the CLI."""


async def _handle(manager: seams.Queue, request: Any, ctx: seams.Context | None = None,
                  others: Relay | None = None) -> dict[str, Any]:
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return {"ok": False, "error": "expected a JSON object with \"cmd\""}
    cmd = request["cmd"]
    if cmd in ("auth_blocks", "auth_unblock") and ctx is not None:
        return _auth_command(ctx, cmd, request.get("target"), others)
    raw_id = request.get("id")
    if cmd in ("show", "retry", "delete") and not isinstance(raw_id, str):
        return {"ok": False, "error": f"{cmd} needs an \"id\""}
    entry_id = raw_id if isinstance(raw_id, str) else ""
    if cmd == "list":
        return {"ok": True, "entries": await manager.overview()}
    if cmd == "show":
        entry = await manager.show(entry_id)
        if entry is None:
            return _no_such(entry_id)
        if request.get("headers") is True:
            entry["headers"] = await manager.headers(entry_id) or {}
        return {"ok": True, "entry": entry}
    if cmd == "retry":
        return {"ok": True} if await manager.retry(entry_id) else _no_such(entry_id)
    if cmd == "delete":
        return {"ok": True} if await manager.delete(entry_id) else _no_such(entry_id)
    if cmd == "flush":
        return {"ok": True, "count": await manager.flush()}
    return {"ok": False, "error": f"unknown command {cmd[:40]!r}"}


def _auth_command(ctx: seams.Context, cmd: str, target: Any, others: Relay | None = None) -> dict[str, Any]:
    """The login penalties (auth/login.py, auth/throttle.py). An unblock is passed on to the other
    worker processes (`others`), whose penalties are their own; `blocks` shows this worker's."""
    from mailhaven.auth import login

    service = login.of(ctx)
    if cmd == "auth_blocks":
        return {"ok": True, "blocks": [dataclasses.asdict(b) for b in service.blocks()]}
    if not isinstance(target, str) or not target.strip() or len(target) > 320:
        return {"ok": False, "error": "auth_unblock needs a \"target\" (an IP address or an account)"}
    if others is not None:
        others({"cmd": "auth_unblock", "target": target})
    return {"ok": True, "count": service.unblock(target)}


def relayed(ctx: seams.Context, command: dict[str, Any]) -> None:
    """Apply a command another worker's control socket took (supervisor.WorkerLink.broadcast)."""
    from mailhaven.auth import login

    target = command.get("target")
    if command.get("cmd") == "auth_unblock" and isinstance(target, str) and 0 < len(target) <= 320:
        count = login.of(ctx).unblock(target)
        log.info("auth unblock %s passed on from another worker: %d penalt%s lifted", target[:64], count,
                 "y" if count == 1 else "ies")


def _no_such(entry_id: Any) -> dict[str, Any]:
    return {"ok": False, "error": f"no such queue entry: {str(entry_id)[:64]}"}


async def _serve_one(manager: seams.Queue, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     ctx: seams.Context | None = None, others: Relay | None = None) -> None:
    try:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            except (ValueError, asyncio.LimitOverrunError):
                writer.write(b'{"ok": false, "error": "request too long"}\n')
                break
            if not line:
                break
            try:
                request = json.loads(line)
            except ValueError:
                reply: dict[str, Any] = {"ok": False, "error": "not JSON"}
            else:
                try:
                    reply = await _handle(manager, request, ctx, others)
                except Exception as e:  # noqa: BLE001 - one bad command must not end the server
                    log.exception("control command failed")
                    reply = {"ok": False, "error": f"internal error ({type(e).__name__})"}
            writer.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _bind(path: Path) -> socket.socket:
    """Listen on `path`, mode 0600 from the first moment: bind a temporary name, chmod, rename."""
    if path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            try:
                probe.connect(str(path))
            except OSError:
                pass  # a stale socket from a previous run: replaced below
            else:
                raise ControlError(f"{path}: another running server answers on this control socket")
    tmp = path.with_name(f".ctl{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return sock


async def serve_control(ctx: seams.Context, manager: seams.Queue, *,
                        others: Relay | None = None) -> asyncio.AbstractServer:
    """Serve the queue commands on ctx.config.control_path. Raises ControlError or OSError.
    `others`: passes a command on to the other worker processes (supervisor.py), if any."""
    path = Path(ctx.config.control_path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = await asyncio.to_thread(_bind, path)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_one(manager, reader, writer, ctx, others)

    server = await asyncio.start_unix_server(client, sock=sock, limit=MAX_REQUEST)
    log.info("control socket on %s", path)
    return server


def control_request(path: str | Path, command: dict[str, Any], *, seconds: float = 30.0) -> dict[str, Any]:
    """Send one command to the running server and return its reply (blocking; for the CLI)."""
    data = json.dumps(command).encode() + b"\n"
    if len(data) > MAX_REQUEST:
        raise ControlError("command too long")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(seconds)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"the server is not running (no control socket at {path})") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as the server's user)") from None
        try:
            s.sendall(data)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise ControlError("reply too long")
        except TimeoutError:
            raise ControlError("the server did not answer in time") from None
        except OSError as e:
            raise ControlError(f"control socket: {e.strerror or e}") from None
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError("the server sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise ControlError("the server sent an unreadable reply")
    return reply


def _when(ts: Any) -> str:
    try:
        return datetime.datetime.fromtimestamp(float(ts), datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError):
        return "-"


def format_list(entries: list[dict[str, Any]]) -> str:
    """`mailhaven queue list` output: one block per entry, like postqueue -p."""
    if not entries:
        return "Mail queue is empty\n"
    lines: list[str] = []
    for e in entries:
        state = " (in delivery)" if e.get("busy") else ""
        lines.append(f"{e['id']}  {e.get('size', 0):>8}  {_when(e.get('created'))} UTC  "
                     f"<{e.get('sender', '')}>{state}")
        lines.append(f"    attempts {e.get('attempts', 0)}, next {_when(e.get('next_attempt'))} UTC")
        for r in e.get("recipients", []):
            last = f"  ({r['last']})" if r.get("last") else ""
            lines.append(f"    {r.get('state', '?'):<9} {r.get('address', '')}{last}")
        lines.append("")
    lines.append(f"-- {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    return "\n".join(lines) + "\n"


def _ago(seconds: float) -> str:
    """3725 -> "1 h 2 min"; for ages and waits in `queue show`."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _when_rel(ts: Any, now: float) -> str:
    """"2026-12-07 18:30:05 UTC (2 h 5 min ago)" / "(in 55 min)"."""
    try:
        delta = float(ts) - now
    except (TypeError, ValueError):
        return "-"
    if abs(delta) < 1:
        rel = "now"
    else:
        rel = f"in {_ago(delta)}" if delta > 0 else f"{_ago(delta)} ago"
    return f"{_when(ts)} UTC ({rel})"


def _shown(value: Any, limit: int = 300) -> str:
    """Text from the server or a message, safe for a terminal: RFC 2047 words decoded, control
    characters (escape sequences) made visible, bounded."""
    import email.errors
    import email.header

    from mailhaven.log import clean

    text = str(value)
    if "=?" in text:
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
            pass
    return clean(text[:limit])


def _size(n: Any) -> str:
    try:
        size = int(n)
    except (TypeError, ValueError):
        return "-"
    if size < 1024:
        return f"{size} bytes"
    return f"{size} bytes ({size / 1024:.1f} KiB)" if size < 1024 * 1024 else f"{size} bytes ({size / 1048576:.1f} MiB)"


def _rcpt_state(r: dict[str, Any], null_sender: bool) -> str:
    state = r.get("state")
    if state == "pending":
        return "deferred, will be retried" if r.get("attempts") else "waiting for its first attempt"
    if state == "failed":
        if null_sender:
            return "failed (no bounce: the message is itself a bounce)"
        return "failed, sender notified" if r.get("notified") else "failed, bounce to be sent"
    return str(state or "?")


def format_show(e: dict[str, Any], now: float | None = None) -> str:
    """`mailhaven queue show ID` output: the entry as a person reads it (times with their age,
    one block per recipient, the message's main header fields)."""
    now = time.time() if now is None else now
    sender = str(e.get("sender", ""))
    null_sender = not sender
    lines = [f"Queue ID:      {_shown(e.get('id', ''))}",
             f"Sender:        <{_shown(sender)}>" + ("  (null sender: a bounce or notice)" if null_sender else ""),
             f"Size:          {_size(e.get('size'))}",
             f"Arrived:       {_when_rel(e.get('created'), now)}"]
    if e.get("busy"):
        lines.append("Next attempt:  in delivery now")
    elif any(r.get("state") == "pending" for r in e.get("recipients", [])):
        lines.append(f"Next attempt:  {_when_rel(e.get('next_attempt'), now)}")
    lines.append(f"Attempts:      {e.get('attempts', 0)}")
    if e.get("source"):
        lines.append(f"Came from:     {_shown(e.get('source'))}")
    if e.get("delay_warning_sent"):
        lines.append("Delay warning: sent to the sender")
    fields = e.get("headers")
    if isinstance(fields, dict):
        lines.append("Headers:")
        for name in ("From", "To", "Subject", "Message-ID"):
            lines.append(f"  {name + ':':<12}{_shown(fields[name]) if name in fields else '(none)'}")
    rcpts = e.get("recipients", [])
    lines.append(f"Recipients ({len(rcpts)}):")
    for r in rcpts:
        lines.append(f"  <{_shown(r.get('address', ''))}>")
        if r.get("program"):  # an alias target "|/path args" (delivery/program.py)
            lines.append(f"    program:    {_shown(r['program'], 600)}")
        lines.append(f"    state:      {_rcpt_state(r, null_sender)}")
        attempts = int(r.get("attempts") or 0)
        tried = f", last {_when_rel(r['last_attempt'], now)}" if r.get("last_attempt") is not None else ""
        lines.append(f"    attempts:   {attempts}{tried}")
        last = r.get("last")
        if isinstance(last, dict):
            reply = f"{last.get('code', '')} {last.get('enhanced', '')} {last.get('text', '')}".strip()
            by = f"  (from {last['remote_mta']})" if last.get("remote_mta") else ""
            lines.append(f"    last reply: {_shown(reply, 600)}{_shown(by)}")
            if last.get("route"):  # which next hop was chosen and why (delivery/routes.py)
                lines.append(f"    route:      {_shown(last['route'])}")
            if last.get("stage") and r.get("state") != "delivered":
                lines.append(f"    failed at:  {_shown(last['stage'])}")
        else:
            lines.append("    last reply: (none yet)")
    return "\n".join(lines)


QUEUE_ACTIONS = ("list", "show", "retry", "delete", "flush")


def _ok_reply(control_path: str | Path, command: dict[str, Any]) -> dict[str, Any] | str:
    """The running server's successful reply to a CLI command, or the one line saying why there is
    none (not running, or the server refused it): the CLI exits 1 with it."""
    try:
        reply = control_request(control_path, command)
    except ControlError as e:
        return str(e)
    if not reply.get("ok"):
        return str(reply.get("error", "failed"))
    return reply


def queue_command(control_path: str | Path, action: str, entry_id: str | None = None, *,
                  as_json: bool = False) -> tuple[int, str]:
    """`mailhaven queue ACTION [ID]` for the CLI: (exit status, text to print). Never raises for a
    server that is down or a bad id: the text is one line then and the status 1. `as_json`: show
    prints the entry as JSON (what `queue show` printed before it had a text form)."""
    if action not in QUEUE_ACTIONS:
        return 2, f"unknown queue command {action!r} (expected {', '.join(QUEUE_ACTIONS)})"
    needs_id = action in ("show", "retry", "delete")
    if needs_id and not entry_id:
        return 2, f"queue {action} needs a queue ID"
    command: dict[str, Any] = {"cmd": action}
    if needs_id:
        command["id"] = entry_id
    if action == "show" and not as_json:
        command["headers"] = True
    reply = _ok_reply(control_path, command)
    if isinstance(reply, str):
        return 1, reply
    if action == "list":
        return 0, format_list(reply.get("entries", [])).rstrip("\n")
    if action == "show":
        if as_json:
            return 0, json.dumps(reply.get("entry"), indent=2, ensure_ascii=False)
        entry = reply.get("entry")
        return 0, format_show(entry if isinstance(entry, dict) else {})
    if action == "flush":
        return 0, f"{reply.get('count', 0)} entr{'y' if reply.get('count') == 1 else 'ies'} scheduled for delivery now"
    return 0, f"{entry_id}: {'scheduled for delivery now' if action == 'retry' else 'deleted'}"


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_blocks(blocks: list[dict[str, Any]]) -> str:
    """`mailhaven auth blocks` output: one line per penalty in force."""
    if not blocks:
        return "No login is delayed now.\n"
    lines = [f"{'KIND':<8} {'ADDRESS':<20} {'ACCOUNT':<32} {'FAILURES':>8} {'DELAY':>6} {'EXPIRES':>8}"]
    for b in blocks:
        kind = "alarm" if b.get("kind") == "account" else str(b.get("kind", "?"))
        delay = "-" if kind == "alarm" else f"{float(b.get('delay', 0)):g}s"
        lines.append(f"{kind:<8} {b.get('ip') or '*':<20} {b.get('account') or '*':<32} "
                     f"{b.get('failures', 0):>8} {delay:>6} {_duration(float(b.get('expires_in', 0))):>8}")
    lines.append("(DELAY: what the next login from ADDRESS for ACCOUNT waits; alarm: counted only, never delayed)")
    return "\n".join(lines) + "\n"


def auth_command(control_path: str | Path, action: str, target: str | None = None) -> tuple[int, str]:
    """`mailhaven auth blocks|unblock TARGET` for the CLI: (exit status, text)."""
    if action == "unblock" and not target:
        return 2, "auth unblock needs an IP address or an account"
    command: dict[str, Any] = {"cmd": f"auth_{action}"}
    if action == "unblock":
        command["target"] = target
    reply = _ok_reply(control_path, command)
    if isinstance(reply, str):
        return 1, reply
    if action == "blocks":
        return 0, format_blocks(reply.get("blocks", [])).rstrip("\n")
    n = reply.get("count", 0)
    return 0, f"{target}: {n} penalt{'y' if n == 1 else 'ies'} lifted" if n else f"{target}: nothing was delayed"


__all__ = ["serve_control", "auth_command", "format_blocks", "control_request", "format_list", "format_show",
           "queue_command", "QUEUE_ACTIONS",
           "ControlError", "MAX_REQUEST"]
