"""delivery/certnames.py: the MX host name against a certificate's names (RFC 7672 §3.2.3,
RFC 8461 §4.2, RFC 6125 §6.4)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.delivery.certnames import covers, describe, name_matches, presented_names


@pytest.mark.parametrize(("presented", "host", "ok"), [
    ("mx.example.test", "mx.example.test", True),
    ("MX.Example.TEST", "mx.example.test.", True),  # case and the final dot do not matter
    ("mx.example.test", "mx2.example.test", False),
    ("*.example.test", "mx.example.test", True),
    ("*.example.test", "a.b.example.test", False),  # one label only
    ("*.example.test", "example.test", False),
    ("*.example.test", ".example.test", False),
    ("mx.*.test", "mx.example.test", False),  # not in a non-leftmost label
    ("*.*.test", "mx.example.test", False),
    ("m*.example.test", "mx.example.test", False),  # not a partial label
    ("*x.example.test", "mx.example.test", False),
    ("*.test", "example.test", False),  # at least two labels after the wildcard
    ("*", "test", False),
    ("", "mx.example.test", False),
    ("mx.example.test", "", False),
])
def test_name_rules(presented: str, host: str, ok: bool) -> None:
    assert name_matches(presented, host) is ok


def test_subject_alt_names_are_used_and_the_cn_only_without_them() -> None:
    with_san = {"subject": ((("commonName", "mx.example.test"),),),
                "subjectAltName": (("DNS", "other.test"), ("IP Address", "127.0.0.2"))}
    assert presented_names(with_san) == ["other.test"]
    assert not covers(presented_names(with_san), "mx.example.test")
    cn_only = {"subject": ((("countryName", "ZZ"),), (("commonName", "mx.example.test"),))}
    assert presented_names(cn_only) == ["mx.example.test"]
    assert presented_names(None) == [] and presented_names({}) == []
    assert describe([]) == "no DNS name"
    assert describe([f"n{i}.test" for i in range(7)], limit=2) == "n0.test, n1.test and 5 more"


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_names = st.lists(_label, min_size=1, max_size=5).map(".".join)


@given(_names)
def test_a_name_always_matches_itself_in_any_case(name: str) -> None:
    assert name_matches(name, name.upper() + ".")


@given(_label, st.lists(_label, min_size=2, max_size=4))
def test_a_wildcard_matches_exactly_one_more_label(first: str, rest: list[str]) -> None:
    parent = ".".join(rest)
    assert name_matches(f"*.{parent}", f"{first}.{parent}")
    assert not name_matches(f"*.{parent}", parent)
    assert not name_matches(f"*.{parent}", f"{first}.{first}.{parent}")


@given(_names, _names)
def test_without_a_wildcard_only_equal_names_match(a: str, b: str) -> None:
    assert name_matches(a, b) is (a == b)


@given(st.text(max_size=60), st.text(max_size=60))
def test_any_text_gives_an_answer_never_an_exception(presented: str, host: str) -> None:
    assert isinstance(name_matches(presented, host), bool)
