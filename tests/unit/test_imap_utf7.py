"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3): examples, strict decoding, round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.imap import utf7

EXAMPLES = [
    ("INBOX", "INBOX"),
    ("", ""),
    ("&", "&-"),
    ("Tom & Jerry", "Tom &- Jerry"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3 example
    ("😀", "&2D3eAA-"),  # astral plane: a surrogate pair
    ("a\x01b", "a&AAE-b"),  # controls are base64-encoded too
]


@pytest.mark.parametrize(("text", "wire"), EXAMPLES)
def test_encode_matches_rfc_examples(text: str, wire: str) -> None:
    assert utf7.encode(text) == wire


@pytest.mark.parametrize(("text", "wire"), EXAMPLES)
def test_decode_matches_rfc_examples(text: str, wire: str) -> None:
    assert utf7.decode(wire) == text
    assert utf7.decode(wire.encode("ascii")) == text


@pytest.mark.parametrize("bad", [
    "a&b",             # unterminated shift ("&" not escaped)
    "&",               # lone "&"
    "&Jjo",            # no closing "-"
    "&Jjo!-",          # "!" is not modified base64
    "&Jjo/-",          # "/" is standard base64, modified uses ","
    "&AGE-",           # encodes "a": printable ASCII must be direct
    "&AOQ-&AOQ-",      # two adjacent shifts: must be one
    "&AO-",            # 12 bits: not a whole UTF-16 unit
    "&AOR-",           # padding bits not zero
    "&2D0-",           # lone high surrogate
    "&3gA-",           # lone low surrogate
    "Entwürfe",        # 8-bit must be encoded
    "a\tb",            # control character sent directly
])
def test_decode_rejects_non_canonical_input(bad: str) -> None:
    with pytest.raises(ValueError):
        utf7.decode(bad)


def test_decode_rejects_8bit_bytes() -> None:
    with pytest.raises(ValueError):
        utf7.decode("Entwürfe".encode())


@given(st.text())
def test_round_trip_any_text(text: str) -> None:
    wire = utf7.encode(text)
    assert wire.isascii()
    assert utf7.decode(wire) == text


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_decode_is_injective_on_printable_ascii(wire: str) -> None:
    # Whatever decodes must re-encode to exactly the same wire form (canonical).
    try:
        text = utf7.decode(wire)
    except ValueError:
        return
    assert utf7.encode(text) == wire


@pytest.mark.parametrize(("wire", "text"), [
    ("&Jjo", "&Jjo"),                    # no closing "-": the "&" stands for itself
    ("a&b", "a&b"),
    ("&-Jjo&AOQ*", "&Jjo&AOQ*"),         # valid "&-", then an unterminated shift
    ("&AOQ-*&Jjo!-", "ä*&Jjo!-"),        # valid shift decoded, broken one kept
    ("!#$&'+,-.0123456789:;<=>?@^_`|[}%*", "!#$&'+,-.0123456789:;<=>?@^_`|[}%*"),  # imaptest "atoms"
    ("&AGE-", "&AGE-"),                  # encodes printable ASCII: not a valid shift, kept
])
def test_decode_lenient_keeps_what_is_not_a_valid_shift(wire: str, text: str) -> None:
    # As Dovecot matches LIST patterns: `LIST "" &Jjo` finds the mailbox named "&Jjo".
    assert utf7.decode_lenient(wire) == text


@given(st.text())
def test_decode_lenient_agrees_with_decode_on_valid_names(text: str) -> None:
    assert utf7.decode_lenient(utf7.encode(text)) == text


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_decode_lenient_never_fails_and_matches_strict_decode(wire: str) -> None:
    text = utf7.decode_lenient(wire)
    try:
        assert text == utf7.decode(wire)
    except ValueError:
        pass
