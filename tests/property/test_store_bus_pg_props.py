"""Properties of store/bus_pg.py's NOTIFY payloads: any text parses without an exception to None or
valid events only, and events survive payloads -> parse with their node id, every payload under
PostgreSQL's 8000-octet limit and free of NUL (which PostgreSQL text cannot hold)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.store import Event, MailboxesChanged, bus
from mailhaven.store.bus_pg import MAX_PAYLOAD, NODE_LEN, parse, payloads
from tests.property.test_store_bus_props import _blank, events

NODE = "0123456789abcdef"
assert len(NODE) == NODE_LEN
payload_parts = st.lists(st.sampled_from([NODE, " ", "MH1", "\n", "\t", "\0", "a", "f", "x", "m", "o", "u@d",
                                          "INBOX", "\x01", "ä", "\udcff"]), max_size=30).map("".join)


@given(st.text(max_size=300) | payload_parts)
def test_any_payload_parses_to_valid_events_only(payload: str) -> None:
    parsed = parse(payload)
    if parsed is None:
        return
    node, got = parsed
    assert node == payload[:NODE_LEN] and got
    for event in got:
        if event is None:
            continue
        assert event.user and not any(ord(c) < 0x20 for c in event.user)
        if not isinstance(event, MailboxesChanged):
            assert event.mailbox and event.uids == ()


@given(st.lists(events, min_size=1, max_size=300))
def test_events_survive_payloads_and_parse(sent: list[Event]) -> None:
    records = [r for r in (bus.encode(e) for e in sent) if r is not None]
    out = payloads(NODE, records)
    assert all(len(p.encode()) < MAX_PAYLOAD and "\0" not in p for p in out)
    got: list[Event | None] = []
    for p in out:
        parsed = parse(p)
        assert parsed is not None and parsed[0] == NODE
        got += parsed[1]
    assert got == [_blank(e) for e in sent]
