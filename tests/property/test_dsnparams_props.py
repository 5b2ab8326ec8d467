"""smtp/dsnparams.py and message/dsn.py's xtext (RFC 3461 §4): any text survives encode/decode,
encoded text is always valid xtext, and parsing never raises anything but DsnSyntax (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.message.dsn import RcptDsn, xtext_decode, xtext_encode
from mailhaven.smtp.dsnparams import DsnSyntax, take_mail, take_rcpt

_ascii = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=60)


@given(_ascii)
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert all("!" <= ch <= "~" and ch != "=" for ch in encoded)
    assert xtext_decode(encoded) == text


@given(st.text(max_size=80))
def test_mail_and_rcpt_parameters_parse_or_refuse_with_501(params: str) -> None:
    for take in (take_mail, take_rcpt):
        try:
            rest, _ = take(f"FROM:<a@b.example> {params}")
        except DsnSyntax as e:
            assert e.reply.startswith("501 5.5.4")
        else:
            assert rest.startswith("FROM:<a@b.example>")


@given(st.sets(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"])), st.none() | st.emails())
def test_a_recipient_request_survives_the_envelope_file(notify: set[str], orcpt: str | None) -> None:
    asked = RcptDsn(frozenset(notify), f"rfc822;{orcpt}" if orcpt else None)
    assert RcptDsn.from_json(asked.to_json()) == asked
    _, parsed = take_rcpt("TO:<a@b.example> NOTIFY=" + (",".join(sorted(notify)) or "NEVER"))
    assert parsed.notify == frozenset(notify)
    assert parsed.wants("SUCCESS") == ("SUCCESS" in notify)
