"""Properties of store/bus.py's wire format: any datagram decodes without an exception to valid
events only, and events survive encode -> pack -> decode (as "take a new snapshot": uids=())."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.store import Event, Expunged, FlagsChanged, MailboxesChanged, MessagesAdded, bus

# Names as the store has them: no control characters (names.py refuses them in folder names).
name_text = st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
users = st.builds(lambda a, b: f"{a}@{b}", name_text, name_text)
events = st.one_of(
    st.builds(MessagesAdded, users, name_text, st.tuples(st.integers(1, 99))),
    st.builds(FlagsChanged, users, name_text),
    st.builds(Expunged, users, name_text),
    st.builds(MailboxesChanged, users),
)
record_parts = st.lists(st.sampled_from([b"MH1", b"\n", b"\0", b"a", b"f", b"x", b"m", b"o", b"u@d", b"INBOX",
                                         b"\xff", b"\x01", b"\xc3\xa4"]), max_size=30).map(b"".join)


@given(st.binary(max_size=300) | record_parts)
def test_any_datagram_decodes_to_valid_events_only(data: bytes) -> None:
    for event in bus.decode(data):
        if event is None:
            continue
        assert event.user and not any(ord(c) < 0x20 for c in event.user)
        if not isinstance(event, MailboxesChanged):
            assert event.mailbox and event.uids == ()


def _blank(event: Event) -> Event:
    return event if isinstance(event, MailboxesChanged) else type(event)(event.user, event.mailbox, ())  # type: ignore[union-attr]


@given(st.lists(events, max_size=600))
def test_events_survive_encode_pack_decode(sent: list[Event]) -> None:
    records = [r for r in (bus.encode(e) for e in sent) if r is not None]
    assert len(records) == len(sent)
    datagrams = bus.pack(records)
    assert all(len(d) <= bus.MAX_DATAGRAM for d, _ in datagrams)
    assert sum(n for _, n in datagrams) == len(records)
    got = [e for d, _ in datagrams for e in bus.decode(d)]
    assert got == [_blank(e) for e in sent]
