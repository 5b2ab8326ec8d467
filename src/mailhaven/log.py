"""Logging: one line per record, text (journald-friendly) or JSON, stamped from contextvars.

Owns: the log format, the per-connection context (cid, proto, user, remote ip), escaping of
client-supplied text, and redaction of secrets. Does not own: what is logged.

    log.setup(config.log)                                  # once, in app/cli
    with log.context(proto="smtp", remote="192.0.2.1"):    # per connection (cid made up if absent)
        log.set_user("alice@example.test")                 # after AUTH/LOGIN
        log.event(logger, "auth failed", mechanism="PLAIN", login=login)

Text format: `[2026-01-02T03:04:05.678Z ]LEVEL logger: message key=value ... cid=.. proto=.. ip=.. user=..`.
The timestamp is left out under systemd (JOURNAL_STREAM set), and the line starts with a
`<N>` syslog priority instead, which journald turns into the record's priority.
JSON format: one object per line: ts, level, logger, msg, the context keys, then the fields.
Every value is made single-line: CR, LF and other control characters become `\\r`, `\\n`,
`\\xNN`, and long values are cut at MAX_VALUE characters (log injection, RFC 5321 §7.9 hostile
clients). Fields named like secrets (password, pass, secret, token, auth_data) are shown as "***".
A field named like a context key (or a JSON member: ts, level, logger, msg) is dropped when it
repeats that value and renamed field_<name> otherwise: every key appears once per line.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from mailhaven.config import LogConfig

MAX_VALUE = 512
SECRET_FIELDS = frozenset({"password", "pass", "passwd", "secret", "token", "auth_data", "credentials"})

cid_var: contextvars.ContextVar[str] = contextvars.ContextVar("mailhaven_cid", default="")
proto_var: contextvars.ContextVar[str] = contextvars.ContextVar("mailhaven_proto", default="")
user_var: contextvars.ContextVar[str] = contextvars.ContextVar("mailhaven_user", default="")
remote_var: contextvars.ContextVar[str] = contextvars.ContextVar("mailhaven_remote", default="")

_CONTEXT = (("cid", cid_var), ("proto", proto_var), ("ip", remote_var), ("user", user_var))
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PLAIN = re.compile(r"^[^\s\"=\\]+$")
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _esc(m: re.Match[str]) -> str:
    ch = m.group(0)
    named = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}.get(ch)
    return named or (f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")


def _cut(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_VALUE] + "..." if len(text) > MAX_VALUE else text


def clean(value: object) -> str:
    """One safe line: control characters escaped, length capped."""
    return _CONTROL.sub(_esc, _cut(value))


def _logfmt(value: object) -> str:
    """A logfmt value: bare when harmless, else double-quoted with \\ \" and control escapes."""
    text = _cut(value)
    if text and _PLAIN.match(text) and not _CONTROL.search(text):
        return text
    return '"' + _CONTROL.sub(_esc, text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _redact(key: str, value: object) -> object:
    return "***" if key.lower() in SECRET_FIELDS else value


def new_cid() -> str:
    return secrets.token_hex(5)


@contextlib.contextmanager
def context(*, cid: str | None = None, proto: str | None = None, remote: str | None = None,
            user: str | None = None) -> Iterator[str]:
    """Set the log context for the block (a connection); yields the cid (given, inherited, or new)."""
    tokens: list[tuple[contextvars.ContextVar[str], contextvars.Token[str]]] = []
    the_cid = cid or cid_var.get() or new_cid()  # nested blocks keep the connection's cid
    for var, value in ((cid_var, the_cid), (proto_var, proto), (remote_var, remote), (user_var, user)):
        # Set every variable (unchanged ones to their current value) so that set_user() inside the
        # block is undone when it ends.
        tokens.append((var, var.set(var.get() if value is None else value)))
    try:
        yield the_cid
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def set_user(user: str) -> None:
    """Stamp the authenticated user on the rest of this connection's records."""
    user_var.set(user)


def event(logger: logging.Logger, msg: str, /, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one record with key=value fields (as JSON members in JSON format)."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"mh_fields": fields}, stacklevel=2)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT:
            if not hasattr(record, "mh_" + name):
                setattr(record, "mh_" + name, var.get())
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, "mh_fields", None) or {})
    return {k: _redact(k, v) for k, v in fields.items()}


def _context_items(record: logging.LogRecord) -> list[tuple[str, str]]:
    return [(name, v) for name, _ in _CONTEXT if (v := getattr(record, "mh_" + name, ""))]


def _field_items(record: logging.LogRecord, taken: dict[str, Any]) -> list[tuple[str, Any]]:
    """The record's fields, none named like a key in `taken` (the context, JSON's own members): the
    same value as that key's is left out (`user` of an `smtp transaction` is the context's user),
    another one is renamed field_<key>, so each key appears once and the context cannot be forged."""
    out: list[tuple[str, Any]] = []
    for k, v in _fields(record).items():
        if k in taken:
            if str(v) == str(taken[k]):
                continue
            k = "field_" + k
        out.append((k, v))
    return out


class TextFormatter(logging.Formatter):
    def __init__(self, *, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        parts: list[str] = []
        if self.journald:
            parts.append(f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{record.levelname}")
        else:
            ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            parts.append(ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z")
            parts.append(record.levelname)
        parts.append(f"{record.name}: {clean(record.getMessage())}")
        context = _context_items(record)
        for k, v in _field_items(record, dict(context)) + context:
            parts.append(f"{clean(k)}={_logfmt(v)}")
        line = " ".join(parts)
        if record.exc_info:
            # Tracebacks are ours, not the client's; continuation lines are indented.
            line += "\n  " + self.formatException(record.exc_info).replace("\n", "\n  ")
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        obj: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": clean(record.getMessage()),
        }
        for k, v in _context_items(record):
            obj[k] = clean(v)
        for k, v in _field_items(record, obj):
            obj[k] = v if isinstance(v, bool | int | float) or v is None else clean(v)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


def setup(config: LogConfig, *, stream: TextIO | None = None, journald: bool | None = None) -> logging.Handler:
    """Install our handler on the root logger (replacing earlier ones of ours); returns it."""
    if journald is None:
        journald = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name("mailhaven")
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter(journald=journald))
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "mailhaven":
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, config.level.upper()))
    return handler


__all__ = ["setup", "context", "set_user", "event", "clean", "new_cid", "TextFormatter", "JsonFormatter",
           "cid_var", "proto_var", "user_var", "remote_var"]
