"""Next-hop ordering: preference order, shuffling among equals, implicit MX, null MX."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from mailhaven.dns.nexthop import Hosts, NullMX, next_hops


def _no_shuffle(hosts: list[str]) -> None:
    return None


def test_hosts_are_ordered_by_ascending_preference() -> None:
    mx = [(20, "b.example"), (5, "a.example."), (30, "C.Example")]
    assert next_hops("example.net", mx, _no_shuffle) == Hosts(("a.example", "b.example", "c.example"))


def test_equal_preferences_are_shuffled_with_the_injected_random() -> None:
    mx = [(10, "a.example"), (10, "b.example"), (10, "c.example"), (5, "first.example")]
    seen = set()
    for seed in range(30):
        r = next_hops("example.net", mx, random.Random(seed).shuffle)
        assert isinstance(r, Hosts)
        assert r.hosts[0] == "first.example"
        assert sorted(r.hosts[1:]) == ["a.example", "b.example", "c.example"]
        seen.add(r.hosts)
    assert len(seen) > 1  # the order really varies


def test_shuffle_is_only_applied_within_a_preference() -> None:
    calls: list[list[str]] = []
    next_hops("x.example", [(10, "a"), (10, "b"), (20, "c")], lambda g: calls.append(list(g)))
    assert calls == [["a", "b"], ["c"]]


def test_no_mx_means_the_domain_itself_is_the_implicit_mx() -> None:
    assert next_hops("Example.NET.", [], _no_shuffle) == Hosts(("example.net",), implicit=True)


def test_single_dot_preference_zero_is_null_mx() -> None:
    r = next_hops("nomail.example", [(0, ".")], _no_shuffle)
    assert r == NullMX("nomail.example")
    assert isinstance(r, NullMX) and (r.code, r.enhanced) == (556, "5.1.10")


def test_dot_mixed_with_real_mx_is_ignored() -> None:
    assert next_hops("x.example", [(0, "."), (10, "mx.example")], _no_shuffle) == Hosts(("mx.example",))


def test_duplicate_hosts_are_tried_once_at_their_best_preference() -> None:
    r = next_hops("x.example", [(10, "a"), (20, "a"), (20, "b"), (10, "A.")], _no_shuffle)
    assert r == Hosts(("a", "b"))


@given(st.lists(st.tuples(st.integers(0, 65535), st.from_regex(r"[a-z]{1,5}\.example", fullmatch=True)),
                min_size=1, max_size=20), st.integers())
def test_result_is_a_preference_ordered_permutation_of_the_hosts(mx: list[tuple[int, str]], seed: int) -> None:
    r = next_hops("x.example", mx, random.Random(seed).shuffle)
    assert isinstance(r, Hosts) and not r.implicit
    assert set(r.hosts) == {h for _, h in mx}
    assert len(r.hosts) == len(set(r.hosts))
    best = {h: min(p for p, hh in mx if hh == h) for _, h in mx}
    prefs = [best[h] for h in r.hosts]
    assert prefs == sorted(prefs)
