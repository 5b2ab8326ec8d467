"""Properties of the agent's duplicate suppression and Delivered-To field (delivery/local.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.delivery.local import delivered_to, unique_users
from mailhaven.seams import Recipient

users = st.sampled_from(["alice@example.test", "bob@example.test", "carol@example.test", "d@x.test"])
recipients = st.lists(st.builds(Recipient, st.text(max_size=5), st.lists(users, max_size=4).map(tuple)), max_size=6)


@given(recipients)
def test_every_final_user_gets_exactly_one_copy_in_first_reached_order(rcpts: list[Recipient]) -> None:
    out = unique_users(rcpts)
    flat = [u for r in rcpts for u in r.users]
    assert len(out) == len(set(out)) and set(out) == set(flat)
    assert out == sorted(set(flat), key=flat.index)


@given(st.text(min_size=1, max_size=40).filter(lambda t: "\r" not in t and "\n" not in t))
def test_delivered_to_is_one_crlf_terminated_field(user: str) -> None:
    field = delivered_to(user)
    assert field.startswith(b"Delivered-To: ") and field.endswith(b"\r\n") and field.count(b"\n") == 1
