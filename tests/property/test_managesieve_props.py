"""Hypothesis: the ManageSieve parser and session take any bytes, in any chunks, without raising
anything but their own refusals, and never hold more than the bounds allow."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.managesieve import protocol as P
from mailhaven.managesieve.protocol import Authenticate, Send, Session, StartTls, Storage

TOKENS = [b"PUTSCRIPT", b"AUTHENTICATE", b"NOOP", b"LOGOUT", b"HAVESPACE", b'"x"', b'"a\\"b"', b"{3+}\r\nabc",
          b"{5}\r\n", b"{99999999999+}", b" ", b"\r\n", b"\n", b"\x00", b"\xff", b"12", b'"', b"{", b"}", b"+",
          b"STARTTLS", b"LISTSCRIPTS", b"UNAUTHENTICATE", b'"PLAIN"', b'"*"', b"A" * 300]

chunks = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(TOKENS)), max_size=60)


def run(session: Session, parts: list[bytes]) -> bytes:
    out = b""
    for part in parts:
        session.receive_data(part)
        while (ev := session.next_event()) is not None:
            if isinstance(ev, Send):
                out += ev.data
            elif isinstance(ev, Authenticate):
                session.auth_succeeded(ev.login)
            elif isinstance(ev, StartTls):
                session.tls_started()
            elif isinstance(ev, Storage):
                session.storage_done([] if ev.op == "list" else b"" if ev.op == "get" else None)
        # Bounded: never more buffered than a line plus the largest literal plus this chunk.
        assert session._parser.buffered <= P.MAX_LINE + 200 + max(P.MAX_STRING, 100) + len(part)
    return out


def session() -> Session:
    return Session(tls_active=True, starttls_available=False, insecure_auth_allowed=False,
                   sieve_extensions=["fileinto"], max_script_size=100, max_redirects=4, max_bad_commands=1000)


@settings(max_examples=400, deadline=None)
@given(chunks)
def test_any_input_gives_replies_never_an_exception(parts: list[bytes]) -> None:
    out = run(session(), parts)
    for line in out.split(b"\r\n"):
        assert len(line) < 20000


@settings(max_examples=200, deadline=None)
@given(chunks, st.integers(min_value=1, max_value=7))
def test_chunk_boundaries_do_not_change_the_replies(parts: list[bytes], size: int) -> None:
    data = b"".join(parts)
    whole = run(session(), [data])
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    assert run(session(), pieces) == whole


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parser_returns_commands_or_its_own_errors(data: bytes) -> None:
    parser = P.Parser(lambda args: (50, P.R_LITERAL_TOO_LONG))
    parser.feed(data)
    for _ in range(1000):
        item = parser.next()
        if item is None:
            break
        assert isinstance(item, P.ParseError | list)
