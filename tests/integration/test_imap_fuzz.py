"""Hostile and random command streams against a live server (hypothesis): every command gets exactly one
tagged reply, no reply is an internal error ([SERVERBUG]), nothing is logged with a traceback, and the
server keeps serving other clients."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from tests.integration.test_imap_server import ImapHarness, RawClient

VERBS = ["CAPABILITY", "NOOP", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
         "LIST", "LSUB", "STATUS", "APPEND", "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE",
         "COPY", "MOVE", "UID FETCH", "UID STORE", "UID SEARCH", "UID COPY", "UID MOVE", "UID EXPUNGE",
         "NAMESPACE", "ID", "ENABLE", "STARTTLS", "XYZZY"]
ARGS = ["INBOX", "Trash", "\"\"", "*", "%", "1", "1:*", "*:1", "4294967295", "0", "2,4:6", "(FLAGS)",
        "(BODY.PEEK[1.2.MIME])", "(BODY[HEADER.FIELDS (FROM)]<0.10>)", "ALL", "FULL", "+FLAGS", "-FLAGS.SILENT",
        "(\\Seen \\Deleted $x)", "(MESSAGES UNSEEN)", "(", ")", "NIL", "\"a\\\"b\"", "{0}", "&AC8-", "..",
        "OR SEEN NOT DELETED", "CHARSET UTF-8 TEXT x", "HEADER Subject \"\"", "SINCE 1-Jan-2020", "\"\\\\\"",
        "\u00e9t\u00e9", "\x00", "\t"]

command = st.builds(lambda verb, args: (verb + " " + " ".join(args)).strip(),
                    st.sampled_from(VERBS), st.lists(st.sampled_from(ARGS), max_size=4))


@pytest.fixture
def imap(make_config: Callable[..., Any]) -> Iterator[ImapHarness]:
    h = ImapHarness(make_config("imap", {"imaps": {"tls": "implicit"}}, imap={"max_bad_commands": 10_000}),
                    names=("imap",)).start()
    h.fill(5)
    try:
        yield h
    finally:
        h.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cmds=st.lists(command, min_size=1, max_size=12), login=st.booleans())
def test_random_command_streams_get_one_tagged_reply_each(imap: ImapHarness, caplog: pytest.LogCaptureFixture,
                                                          cmds: list[str], login: bool) -> None:
    caplog.set_level(logging.WARNING)
    raw = imap.raw()
    try:
        if login:
            raw.login()
        for i, text in enumerate(cmds):
            data = text.encode("utf-8")
            if b"{0}" in data:  # zero-length synchronising literals: wait for "+" before each
                tag = b"x%d" % i
                segments = data.split(b"{0}")
                raw.send(tag + b" " + segments[0] + b"{0}\r\n")
                lines = []
                for k, seg in enumerate(segments[1:], 1):
                    first = raw.line()
                    if not first.startswith(b"+"):  # refused: the command is over
                        lines = [first] if first.startswith(tag + b" ") else [first, *raw.until_tagged(tag)]
                        break
                    raw.send(seg + (b"{0}\r\n" if k < len(segments) - 1 else b"\r\n"))
                else:
                    lines = raw.until_tagged(tag)
            elif "STARTTLS" in text:
                continue  # would switch the connection to TLS
            else:
                raw.send(b"x%d " % i + data + b"\r\n")
                lines = raw.until_tagged(b"x%d" % i)
            last = lines[-1]
            assert last.split(b" ")[1] in (b"OK", b"NO", b"BAD"), lines
            assert b"SERVERBUG" not in last, (text, lines)
            if last.startswith(b"x%d OK" % i) and "LOGOUT" in text:
                return
            # RFC 3501 §7.4.1: never EXPUNGE while answering FETCH/STORE/SEARCH by sequence number
            if text.split(" ")[0] in ("FETCH", "STORE", "SEARCH"):
                assert not any(x.endswith(b" EXPUNGE\r\n") for x in lines), (text, lines)
    finally:
        raw.close()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    c = imap.client()
    c.noop()
    c.logout()


def test_binary_noise_never_kills_the_server(imap: ImapHarness) -> None:
    import random

    rnd = random.Random(7)
    for _ in range(20):
        raw = imap.raw()
        noise = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 3000)))
        try:
            raw.send(noise + b"\r\n")
            raw.closed(0.3)
        except OSError:
            pass
        raw.close()
    c = imap.client()
    c.select("INBOX")
    c.logout()


def test_raw_client_helper_is_closed_cleanly(imap: ImapHarness) -> None:
    raw = RawClient(imap.ports["imap"])
    assert raw.greeting.startswith(b"* OK")
    raw.close()
