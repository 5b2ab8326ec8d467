"""Authentication-Results rendering and reading (RFC 8601); removing forged ones: test_trust.py."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import example, given
from hypothesis import strategies as st

from mailhaven.message.headers import header_section_end
from mailhaven.policy.authresults import (
    authserv_id_of,
    format_auth_results,
    format_none,
    format_received_spf,
    header_end,
)


@dataclass(frozen=True)
class Spf:
    result: str
    domain: str
    identity: str = "mailfrom"


@dataclass(frozen=True)
class Dkim:
    result: str
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    header_b: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Dmarc:
    result: str
    domain: str
    published: str | None = None
    policy: str = "none"


def _unfold(b: bytes) -> str:
    return b.decode().replace("\r\n\t", " ").replace("\r\n", "")


def test_all_pass_renders_the_documented_form() -> None:
    h = format_auth_results("mx.example.org", Spf("pass", "example.net"),
                            [Dkim("pass", "example.net", "sel", "rsa-sha256", "abcdefgh")],
                            Dmarc("pass", "example.net", "reject", "none"))
    assert h.endswith(b"\r\n")
    assert _unfold(h) == ("Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=example.net; "
                          "dkim=pass header.d=example.net header.s=sel header.a=rsa-sha256 "
                          "header.b=abcdefgh; dmarc=pass (p=reject dis=none) header.from=example.net")


def test_no_signature_is_dkim_none_and_two_signatures_are_two_entries() -> None:
    none = _unfold(format_auth_results("mx", Spf("none", "a.example"), [], None))
    assert "; dkim=none" in none
    two = _unfold(format_auth_results("mx", None, [Dkim("pass", "a.example"), Dkim("fail", "b.example",
                                                                                   reason="bad")], None))
    assert "dkim=pass header.d=a.example" in two
    assert 'dkim=fail reason=bad header.d=b.example' in two


def test_helo_identity_uses_smtp_helo() -> None:
    assert "spf=pass smtp.helo=host.example" in _unfold(
        format_auth_results("mx", Spf("pass", "host.example", "helo"), [], None))


def test_values_with_specials_are_quoted() -> None:
    h = _unfold(format_auth_results("mx", None, [Dkim("fail", "a.example", header_b="ab/c+d=e",
                                                      reason='say "no"\r\nX-Evil: 1')], None))
    assert 'header.b="ab/c+d=e"' in h
    assert 'reason="say \\"no\\"X-Evil: 1"' in h
    assert "\n" not in h


@given(st.text(max_size=50), st.text(max_size=50))
def test_rendered_field_never_contains_bare_line_breaks(domain: str, reason: str) -> None:
    h = format_auth_results("mx", Spf("pass", domain), [Dkim("fail", domain, reason=reason)],
                            Dmarc("fail", domain, "reject", "reject"))
    lines = h.split(b"\r\n")
    assert lines[-1] == b""
    assert all(line.startswith(b"\t") for line in lines[1:-1])
    assert b"\n" not in b"".join(lines) and b"\r" not in b"".join(lines)


def test_none_form_says_nothing_was_checked_and_why() -> None:
    # RFC 8601 §2.2: authres-payload = authserv-id ( no-result / 1*resinfo ) [CFWS] CRLF
    h = format_none("mx.example.org", "dev mode: loopback client, not checked")
    assert h == b"Authentication-Results: mx.example.org; none (dev mode: loopback client, not checked)\r\n"
    assert authserv_id_of(h.split(b":", 1)[1]) == "mx.example.org"


@given(st.text(alphabet=st.sampled_from("ab \\()\r\n\x7fé"), max_size=300))
@example("a" + "(" * 150)  # escaping doubles it: a cut at 200 after escaping ended in a lone backslash
def test_none_form_reason_stays_one_comment_on_one_line(reason: str) -> None:
    h = format_none("mx", reason)
    assert h.endswith(b"\r\n") and b"\n" not in h[:-2] and b"\r" not in h[:-2]
    comment = h.decode()[len("Authentication-Results: mx; none "):-2]
    assert comment.startswith("(") and comment.endswith(")")
    i = 1  # RFC 5322 §3.2.2 ccontent: a quoted-pair takes two characters; no bare parenthesis
    while i < len(comment) - 1:
        assert comment[i] not in "()", comment
        i += 2 if comment[i] == "\\" else 1
    assert i == len(comment) - 1, comment  # the final ")" is not swallowed by a quoted-pair


def test_received_spf_has_key_value_pairs() -> None:
    h = format_received_spf("mx.example.org", "pass", "127.0.0.1", "a@example.net", "host.example",
                            "mailfrom").decode()
    assert h.startswith("Received-SPF: pass (mx.example.org: mailfrom a@example.net pass for client 127.0.0.1)")
    assert 'client-ip=127.0.0.1; envelope-from="a@example.net"; helo=host.example' in h


def test_authserv_id_of_quoted_and_commented_values() -> None:
    assert authserv_id_of(b' "mx.Example.org" ; spf=pass') == "mx.example.org"
    assert authserv_id_of(b" (a (nested) comment) mx.example.org; x") == "mx.example.org"
    assert authserv_id_of(b" mx.example.org 1; none") == "mx.example.org"


_LINES = st.lists(st.sampled_from([b"A: b\r\n", b"A: b\n", b" folded\r\n", b"\r\n", b"\n", b"\r", b"x",
                                    b"Authentication-Results: mx; y\r\n", b"\r\r\n"]), max_size=12)


@given(_LINES)
def test_header_end_is_where_the_first_empty_line_starts(parts: list[bytes]) -> None:
    data = b"".join(parts)
    assert header_end(data) == header_section_end(data)  # the line-by-line reading of RFC 5322 §2.1


@given(st.binary(max_size=300))
def test_header_end_matches_the_line_reading_on_any_bytes(data: bytes) -> None:
    assert header_end(data) == header_section_end(data)
