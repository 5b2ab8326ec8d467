"""Hostile From: fields at the MX. Python's address parser (email.utils.getaddresses, which the
DMARC author lookup uses) recurses once per nested comment: a From: with a few hundred nested
comments raised RecursionError, which the MX logged as a traceback and answered with 451 — so
the sender retried forever. RFC 7489 §6.6.1: a From: we cannot read has no author domain, a DMARC
permerror, rejected with 550 5.7.1 by our verdict table (policy/pipeline.py).
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.policy.dmarc import AuthorError, author_domain
from tests.integration import test_mx_harness as harness
from tests.integration.test_mx_harness import ALICE, MxFactory, message

mx = harness.mx  # the fixture

SENDER = "sender@sender.test"


def _nested_comments(depth: int) -> str:
    return "(" * depth + ")" * depth + " " + SENDER


@pytest.mark.parametrize("depth", [1000, 4000])
async def test_from_with_deeply_nested_comments_is_rejected_550_without_a_traceback(
        mx: MxFactory, caplog: pytest.LogCaptureFixture, depth: int) -> None:
    caplog.set_level(logging.INFO)
    server = await mx()
    data = message(subject="nested").replace(f"From: {SENDER}".encode(), f"From: {_nested_comments(depth)}".encode())
    replies = await server.send(SENDER, [ALICE], data)
    assert replies[-1][0].startswith("550 5.7.1"), replies
    assert server.messages(ALICE) == []
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]
    replies = await server.send(SENDER, [ALICE], message(subject="after"))
    assert replies[-1][0].startswith("250 2.0.0"), replies


def test_author_domain_of_nested_comments_is_an_author_error() -> None:
    with pytest.raises(AuthorError):
        author_domain(f"From: {_nested_comments(2000)}\r\n\r\nbody\r\n".encode())


@settings(max_examples=200)
@given(st.text(alphabet='()<>@,;:\\". abc\t', max_size=300))
def test_author_domain_returns_a_domain_or_raises_author_error_only(value: str) -> None:
    try:
        domain = author_domain(f"From: {value}\r\n\r\n".encode())
    except AuthorError:
        return
    assert domain and "@" not in domain
