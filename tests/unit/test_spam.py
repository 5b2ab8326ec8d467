"""policy/spam.py: rspamd's /checkv2 reply -> SpamVerdict, the outcome of each action, the fields we
add and the header changes a scanner asks for (issue 12 items 1 and 3)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.errors import MailError
from mailhaven.policy import spam
from mailhaven.policy.spam import ScanError, SpamVerdict, parse_rspamd
from mailhaven.smtp.replies import reply_for

REPLY = {
    "is_skipped": False, "score": 24.5, "required_score": 15.0, "action": "add header",
    "symbols": {"R_SPF_FAIL": {"name": "R_SPF_FAIL", "score": 1.0}, "BAYES_SPAM": {"score": 5.1}},
    "messages": {"smtp_message": "Go away"},
    "milter": {"add_headers": {"X-Rspamd-Server": "scanner1",
                               "X-Spamd-Bar": {"value": "++++", "order": 0},
                               "X-Virus": [{"value": "a", "order": 1}, {"value": "b", "order": 2}]},
               "remove_headers": {"X-Spam": 0, "X-Old": 2}},
}


def _raw(**changes: Any) -> bytes:
    return json.dumps({**REPLY, **changes}).encode()


def test_parses_action_score_required_symbols_message_and_milter_block() -> None:
    v = parse_rspamd(_raw())
    assert (v.action, v.score, v.required) == ("add header", 24.5, 15.0)
    assert v.symbols == ("BAYES_SPAM", "R_SPF_FAIL")
    assert v.message == "Go away"
    assert v.add == (("X-Rspamd-Server", "scanner1"), ("X-Spamd-Bar", "++++"), ("X-Virus", "a"), ("X-Virus", "b"))
    assert v.remove == (("X-Spam", 0), ("X-Old", 2))


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b"\xff\xfe", b'{"action": "reject"}', b'{"score": 1}',
    _raw(action="delete everything"), _raw(action="unknown"), _raw(score="high"), _raw(score=True),
    b'{"action": "reject", "score": NaN}', b'{"action": "reject", "score": 1, "required_score": "x"}',
    b"[" * 100_000,
])
def test_anything_but_a_verdict_is_a_scan_error(body: bytes) -> None:
    with pytest.raises(ScanError):
        parse_rspamd(body)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30)
_keys = st.sampled_from(["action", "score", "required_score", "symbols", "messages", "milter", "subject"])
_actions = st.sampled_from(sorted(spam.ACTIONS) + ["bogus", ""])


@settings(max_examples=300)
@given(st.dictionaries(_keys, _json | _actions, max_size=7), st.booleans())
def test_parser_on_arbitrary_json_returns_a_verdict_or_raises_scan_error_only(data: dict[str, Any],
                                                                              plausible: bool) -> None:
    if plausible:
        data = {"action": "no action", "score": 1.0, **{k: v for k, v in data.items() if k not in ("action", "score")}}
    try:
        v = parse_rspamd(json.dumps(data).encode())
    except ScanError:
        return
    assert v.action in spam.ACTIONS
    # Whatever came in, what we would write is well-formed header text.
    for blob in (spam.status_fields(v), spam.milter_fields(v)):
        assert blob == b"" or blob.endswith(b"\r\n")
        assert b"\n" not in blob.replace(b"\r\n ", b"").replace(b"\r\n\t", b"").replace(b"\r\n", b"")


@given(st.binary(max_size=300))
def test_parser_on_arbitrary_bytes_raises_only_scan_error(body: bytes) -> None:
    try:
        parse_rspamd(body)
    except ScanError:
        pass


@pytest.mark.parametrize(("action", "outcome"), [
    ("no action", "inbox"), ("add header", "junk"), ("rewrite subject", "junk"), ("greylist", "tempfail"),
    ("soft reject", "tempfail"), ("reject", "reject"), ("unknown", "inbox"), ("skipped", "inbox"),
])
def test_actions_map_as_postfixs_rspamd_milter_does(action: str, outcome: str) -> None:
    assert spam.outcome(SpamVerdict(action)) == outcome


def test_reject_reply_is_550_571_with_rspamds_message_or_a_default() -> None:
    err = spam.error_for(SpamVerdict("reject", 20, 15, message="Gtube pattern"))
    assert isinstance(err, MailError) and reply_for(err) == "550 5.7.1 Gtube pattern"
    err = spam.error_for(SpamVerdict("reject"))
    assert err is not None and reply_for(err) == "550 5.7.1 Spam message rejected"
    err = spam.error_for(SpamVerdict("reject", message="evil\r\n250 ok"))
    assert err is not None and "\r" not in reply_for(err) and "\n" not in reply_for(err)


@pytest.mark.parametrize("action", ["soft reject", "greylist"])
def test_soft_reject_and_greylist_are_451_471(action: str) -> None:
    err = spam.error_for(SpamVerdict(action, message="Try again later"))
    assert err is not None and reply_for(err) == "451 4.7.1 Try again later"
    assert err.temporary


@pytest.mark.parametrize("action", ["no action", "add header", "rewrite subject", "unknown"])
def test_delivered_actions_raise_nothing(action: str) -> None:
    assert spam.error_for(SpamVerdict(action)) is None


def test_status_fields() -> None:
    assert spam.status_fields(SpamVerdict("no action", 1.234, 15)) == \
        b"X-Spam-Status: No, score=1.23, required=15.00\r\nX-Spam-Score: 1.23\r\n"
    assert spam.status_fields(SpamVerdict("add header", 7, 15)) == \
        b"X-Spam-Status: Yes, score=7.00, required=15.00\r\nX-Spam-Score: 7.00\r\n"
    assert spam.status_fields(SpamVerdict("rewrite subject", -2.5, 15)).startswith(b"X-Spam-Status: Yes, score=-2.50")
    assert spam.status_fields(spam.unknown("down")) == b"X-Spam-Status: Unknown\r\n"


def test_milter_fields_keep_folds_and_drop_injection_bad_names_and_our_x_spam() -> None:
    v = SpamVerdict("no action", add=(("X-Spamd-Result", "default: False\n\t[1.00 / 15.00]"),
                                      ("X-Evil", "a\r\nBcc: victim@example.org"),
                                      ("Bad Name", "x"), ("X-Spam-Status", "No, forged"), ("X-Ok", "fine")))
    assert spam.milter_fields(v) == b"X-Spamd-Result: default: False\r\n\t[1.00 / 15.00]\r\nX-Ok: fine\r\n"


def test_rewrite_subject_replaces_the_subject() -> None:
    v = SpamVerdict("rewrite subject", 8, 15, subject="***SPAM*** Hello")
    assert spam.milter_fields(v) == b"Subject: ***SPAM*** Hello\r\n"
    assert ("Subject", 0) in spam.removals(v)
    assert spam.milter_fields(SpamVerdict("rewrite subject", subject="Grüße")).startswith(b"Subject: =?utf-8?")
    assert spam.removals(SpamVerdict("no action", subject="ignored")) == []


MSG = (b"Received: from a\r\nX-Old: 1\r\nSubject: hi\r\nX-Old: 2\r\n folded\r\nX-Spam: yes\r\nx-old: 3\r\n"
       b"\r\nX-Old: body stays\r\n")


def test_remove_fields_all_nth_and_from_the_end() -> None:
    assert spam.remove_fields(MSG, [("X-Old", 0)]) == \
        b"Received: from a\r\nSubject: hi\r\nX-Spam: yes\r\n\r\nX-Old: body stays\r\n"
    assert spam.remove_fields(MSG, [("x-old", 2)]) == \
        b"Received: from a\r\nX-Old: 1\r\nSubject: hi\r\nX-Spam: yes\r\nx-old: 3\r\n\r\nX-Old: body stays\r\n"
    assert spam.remove_fields(MSG, [("X-Old", -1), ("X-Spam", 0)]) == \
        b"Received: from a\r\nX-Old: 1\r\nSubject: hi\r\nX-Old: 2\r\n folded\r\n\r\nX-Old: body stays\r\n"
    assert spam.remove_fields(MSG, [("X-Old", 9), ("Nope", 0)]) == MSG
    assert spam.remove_fields(MSG, []) == MSG


@given(st.binary(max_size=400), st.lists(st.tuples(st.sampled_from(["X-Old", "Subject", "a"]),
                                                   st.integers(-3, 3)), max_size=3))
def test_remove_fields_never_touches_the_body(message: bytes, removals: list[tuple[str, int]]) -> None:
    out = spam.remove_fields(message, removals)
    end = message.find(b"\r\n\r\n")
    if end >= 0 and b"\n\n" not in message[:end + 2]:
        assert out.endswith(message[end + 2:])
    assert len(out) <= len(message)


def test_rspamd_request_headers_carry_the_envelope() -> None:
    from mailhaven.policy.rspamd import RspamdClient

    req = spam.ScanRequest(ip="192.0.2.1", helo="mta.sender.test", sender="a@sender.test",
                           recipients=("alice@example.test", "bob@example.test"), queue_id="Q1",
                           hostname="mta.sender.test", deliver_to="")
    h = RspamdClient.headers(req)
    assert h["IP"] == "192.0.2.1" and h["Helo"] == "mta.sender.test" and h["From"] == "a@sender.test"
    assert h.getall("Rcpt") == ["alice@example.test", "bob@example.test"]
    assert h["Queue-Id"] == "Q1" and h["Hostname"] == "mta.sender.test"
    assert "Deliver-To" not in h
    h = RspamdClient.headers(spam.ScanRequest("::1", "", "", ("alice@example.test",), "Q2",
                                              deliver_to="alice@example.test"))
    assert "From" not in h and "Helo" not in h  # the null reverse-path, no HELO
    assert h["Hostname"] == "unknown" and h["Deliver-To"] == "alice@example.test"


async def test_rspamd_client_skips_messages_over_the_size_limit_without_connecting() -> None:
    from mailhaven.policy.rspamd import RspamdClient

    client = RspamdClient("http://127.0.0.1:9", timeout=1, max_concurrency=1, max_size=1024)
    v = await client.scan(b"x" * 1025, spam.ScanRequest("127.0.0.1", "h", "", ("a@b.test",), "Q"))
    assert v.action == "skipped" and not v.scanned and "max_scan_size" in v.reason
    assert spam.status_fields(v) == b"X-Spam-Status: Unknown\r\n" and spam.outcome(v) == "inbox"
    await client.close()
