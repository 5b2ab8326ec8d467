"""Properties of message/address.py: round-trips, and nothing but ValueError on any input."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailhaven.message.address import Address, parse_mailbox, parse_path

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
atom = st.text(alphabet=st.sampled_from(ATEXT + "äöüßé日本"), min_size=1, max_size=10)
dot_string = st.lists(atom, min_size=1, max_size=4).map(".".join)
quoted_content = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from("äé日"),
                         min_size=1, max_size=20)
local_part = dot_string | quoted_content
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "[" + ".".join(map(str, t)) + "]")
addresses = st.builds(Address, local_part, domain | ipv4)

# Text made mostly of the characters that matter to the grammar, plus anything.
grammar_chars = st.sampled_from(list('<>@."\\[]:,- aZ09\r\n\x00\tä') + ["IPv6:", "::1", "xn--"])
grammar_text = st.lists(grammar_chars, max_size=40).map("".join)


def _try(text: str) -> Address | None | str:
    try:
        return parse_path(text)
    except ValueError:
        return "error"


@given(addresses)
@settings(max_examples=200)
def test_valid_addresses_round_trip_through_the_wire_form(addr: Address) -> None:
    try:
        parsed = parse_path(addr.path())
    except ValueError:
        # Only the length limits may refuse a generated address.
        assert len(addr.local.encode()) > 64 or len(addr.path().encode()) > 256
        return
    assert parsed == addr
    assert parse_mailbox(str(addr)) == addr


@given(st.text(max_size=300) | grammar_text | grammar_text.map(lambda t: f"<{t}>"))
@settings(max_examples=500)
@example("<@:>")
@example('<"\\')
@example("<a@[IPv6:]>")
@example("<a@xn--.test>")
@example("<a@\u3002test>")
def test_anything_either_parses_or_raises_value_error(text: str) -> None:
    result = _try(text)
    if isinstance(result, Address):
        # Whatever parsed has a canonical form that parses to the same value (idempotence).
        assert parse_path(result.path()) == result
        assert parse_mailbox(result.normalized()) == Address(result.local.lower(), result.domain)
        assert len(result.path().encode()) <= 256


@given(addresses)
def test_normalized_is_case_insensitive_on_the_local_part(addr: Address) -> None:
    swapped = Address(addr.local.swapcase(), addr.domain)
    if swapped.local.lower() == addr.local.lower():
        assert swapped.normalized() == addr.normalized()
