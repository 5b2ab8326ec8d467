"""log.py: text and JSON formats, journald priority prefix, context stamping, CR/LF and control
character escaping (log injection), length caps and secret redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven import log as mlog
from mailhaven.config import LogConfig

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


class Capture:
    """log.setup() on a StringIO; lines() returns what was written."""

    def __init__(self, fmt: str = "text", *, journald: bool = False, level: str = "debug") -> None:
        self.stream = io.StringIO()
        self.handler = mlog.setup(LogConfig(format=fmt, level=level), stream=self.stream,  # type: ignore[arg-type]
                                  journald=journald)

    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def json(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


logger = logging.getLogger("mailhaven.test")


# --- text format ---------------------------------------------------------------------------------


def test_text_line_has_timestamp_level_logger_message_fields_and_context() -> None:
    cap = Capture()
    with mlog.context(cid="c0ffee", proto="smtp", remote="192.0.2.7"):
        mlog.set_user("alice@example.test")
        mlog.event(logger, "message accepted", size=1234, rcpts=2, id="abc")
    [line] = cap.lines()
    assert re.fullmatch(TS + r" INFO mailhaven\.test: message accepted size=1234 rcpts=2 id=abc "
                        r"cid=c0ffee proto=smtp ip=192\.0\.2\.7 user=alice@example\.test", line), line


def test_values_with_spaces_quotes_or_equals_are_quoted_logfmt_style() -> None:
    cap = Capture()
    mlog.event(logger, "x", a="two words", b='say "hi"', c="k=v", d="", e="back\\slash")
    line = cap.lines()[0]
    assert line.endswith(r'x a="two words" b="say \"hi\"" c="k=v" d="" e="back\\slash"')


@pytest.mark.parametrize("evil", ["a\r\nINFO mailhaven.smtp: fake line", "a\nb", "a\rb", "x\x00y", "\x1b[31mred",
                                  "line\u2028sep", "nel\x85x"])
def test_cr_lf_and_control_characters_never_start_a_new_line(evil: str) -> None:
    cap = Capture()
    logger.info("HELO %s", evil)
    mlog.event(logger, "rcpt", address=evil)
    text = cap.text()
    assert text.count("\n") == 2  # exactly two records, one line each
    for ch in ("\r", "\x00", "\x1b", "\u2028", "\x85"):
        assert ch not in text
    if "\r\n" in evil:
        assert "a\\r\\nINFO mailhaven.smtp: fake line" in cap.lines()[0]


def test_long_values_are_cut() -> None:
    cap = Capture()
    mlog.event(logger, "big", data="A" * 10_000)
    line = cap.lines()[0]
    assert "A" * mlog.MAX_VALUE + "..." in line
    assert len(line) < mlog.MAX_VALUE + 200


@pytest.mark.parametrize("field", ["password", "PASSWORD", "pass", "passwd", "secret", "token", "auth_data",
                                   "credentials"])
def test_secret_fields_are_redacted_in_text_and_json(field: str) -> None:
    cap = Capture()
    mlog.event(logger, "login", **{field: "hunter2", "login": "alice"})
    assert "hunter2" not in cap.text()
    assert f"{field}=***" in cap.text()
    cap = Capture("json")
    mlog.event(logger, "login", **{field: "hunter2"})
    assert "hunter2" not in cap.text()
    assert cap.json()[0][field] == "***"


def test_tracebacks_stay_attached_as_indented_continuation_lines() -> None:
    cap = Capture()
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("session failed")
    lines = cap.lines()
    assert lines[0].endswith("mailhaven.test: session failed")
    assert len(lines) > 2 and all(line.startswith("  ") for line in lines[1:])
    assert lines[-1] == "  ValueError: boom"


# --- journald ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "prio"), [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4),
                                             (logging.ERROR, 3), (logging.CRITICAL, 2)])
def test_journald_lines_start_with_the_syslog_priority_and_no_timestamp(level: int, prio: int) -> None:
    cap = Capture(journald=True)
    logger.log(level, "hello")
    assert cap.lines() == [f"<{prio}>{logging.getLevelName(level)} mailhaven.test: hello"]


def test_journald_is_detected_from_journal_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    mlog.setup(LogConfig(), stream=stream)
    logger.warning("w")
    monkeypatch.delenv("JOURNAL_STREAM")
    mlog.setup(LogConfig(), stream=stream)
    logger.warning("w")
    first, second = stream.getvalue().splitlines()
    assert first == "<4>WARNING mailhaven.test: w"
    assert re.fullmatch(TS + " WARNING mailhaven.test: w", second)


# --- JSON ----------------------------------------------------------------------------------------


def test_json_is_one_object_per_line_with_context_and_typed_fields() -> None:
    cap = Capture("json")
    with mlog.context(cid="c1", proto="imap", remote="2001:db8::1"):
        mlog.event(logger, "login ok", mechanism="PLAIN", took=0.25, attempts=1, tls=True, none=None)
    [obj] = cap.json()
    assert re.fullmatch(TS, str(obj.pop("ts")))
    assert obj == {"level": "info", "logger": "mailhaven.test", "msg": "login ok", "cid": "c1", "proto": "imap",
                   "ip": "2001:db8::1", "mechanism": "PLAIN", "took": 0.25, "attempts": 1, "tls": True,
                   "none": None}


def test_json_field_named_like_a_context_key_does_not_overwrite_it() -> None:
    cap = Capture("json")
    with mlog.context(cid="real"):
        mlog.event(logger, "x", cid="forged", msg="forged too")
    obj = cap.json()[0]
    assert (obj["cid"], obj["field_cid"], obj["msg"], obj["field_msg"]) == ("real", "forged", "x", "forged too")


def test_a_field_repeating_a_context_key_appears_once_and_a_different_one_is_renamed() -> None:
    """`smtp transaction` logs user= while the connection's context also has the user: one user=
    per line (logfmt readers keep either the first or the last of a repeated key)."""
    def log() -> None:
        with mlog.context(cid="c2", proto="submission", remote="192.0.2.9"):
            mlog.set_user("alice@example.test")
            mlog.event(logger, "smtp transaction", user="alice@example.test", ip="198.51.100.1", size=3)

    text = Capture()
    log()
    [line] = text.lines()
    assert line.endswith(" INFO mailhaven.test: smtp transaction field_ip=198.51.100.1 size=3 cid=c2 "
                         "proto=submission ip=192.0.2.9 user=alice@example.test"), line
    assert [re.findall(r" (\w+)=", line).count(k) for k in ("user", "ip", "cid")] == [1, 1, 1]
    js = Capture("json")  # replaces the text handler
    log()
    [obj] = js.json()
    assert {k: v for k, v in obj.items() if k not in ("ts", "level", "logger", "msg")} == {
        "cid": "c2", "proto": "submission", "ip": "192.0.2.9", "user": "alice@example.test",
        "field_ip": "198.51.100.1", "size": 3}


def test_json_escapes_control_characters_and_keeps_unicode() -> None:
    cap = Capture("json")
    mlog.event(logger, "rcpt\r\nfake", address="jörg@exämple.test\x00")
    [line] = cap.lines()
    obj = json.loads(line)
    assert obj["msg"] == "rcpt\\r\\nfake"
    assert obj["address"] == "jörg@exämple.test\\x00"


def test_json_exception_is_a_member_not_extra_lines() -> None:
    cap = Capture("json")
    try:
        raise KeyError("k")
    except KeyError:
        logger.exception("failed")
    [obj] = cap.json()
    assert "KeyError" in str(obj["exc"])


# --- setup and context ---------------------------------------------------------------------------


def test_setup_twice_replaces_its_handler_and_applies_the_level() -> None:
    first = Capture()
    second = Capture(level="warning")
    logger.info("hidden")
    logger.warning("shown")
    assert first.text() == ""
    assert [line.split(" ", 1)[1] for line in second.lines()] == ["WARNING mailhaven.test: shown"]
    assert sum(h.get_name() == "mailhaven" for h in logging.getLogger().handlers) == 1


def test_context_makes_a_cid_keeps_it_when_nested_and_undoes_set_user() -> None:
    with mlog.context(proto="pop3") as cid:
        assert re.fullmatch(r"[0-9a-f]{10}", cid)
        with mlog.context(user="bob@example.test") as inner:
            assert inner == cid and mlog.proto_var.get() == "pop3"
        mlog.set_user("alice@example.test")
        assert mlog.user_var.get() == "alice@example.test"
    assert (mlog.cid_var.get(), mlog.proto_var.get(), mlog.user_var.get()) == ("", "", "")


async def test_concurrent_connections_keep_their_own_context() -> None:
    cap = Capture("json")

    async def session(n: int) -> None:
        with mlog.context(cid=f"c{n}", remote=f"192.0.2.{n}"):
            mlog.set_user(f"u{n}@example.test")
            await asyncio.sleep(0.01 * (3 - n))
            mlog.event(logger, "end", n=n)

    await asyncio.gather(*(session(n) for n in range(3)))
    for obj in cap.json():
        n = obj["n"]
        assert (obj["cid"], obj["ip"], obj["user"]) == (f"c{n}", f"192.0.2.{n}", f"u{n}@example.test")


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(msg=st.text(max_size=300), value=st.text(max_size=300))
def test_any_text_gives_exactly_one_line_in_both_formats(msg: str, value: str) -> None:
    for fmt in ("text", "json"):
        cap = Capture(fmt)
        mlog.event(logger, msg, value=value)
        out = cap.text()
        assert out.endswith("\n") and out.count("\n") == 1
        assert "\r" not in out and "\u2028" not in out and "\x85" not in out
        if fmt == "json":
            obj = json.loads(out)
            assert obj["msg"] == mlog.clean(msg)
            assert obj["value"] == mlog.clean(value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000))
def test_clean_output_has_no_control_characters_and_is_bounded(text: str) -> None:
    out = mlog.clean(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in out)
    assert len(out) <= mlog.MAX_VALUE * 6 + 3  # every kept character escapes to at most 6
