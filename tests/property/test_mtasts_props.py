"""delivery/mtasts.py's parsers (RFC 8461 §3.1, §3.2, §4.1): any input parses or is refused with
PolicyError, a policy written from its parts reads back the same, and MX patterns match as §4.1 says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.delivery.mtasts import MAX_AGE_LIMIT, PolicyError, mx_matches, parse_policy, parse_txt

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_host = st.lists(_label, min_size=2, max_size=4).map(".".join)


@given(st.text(max_size=300))
def test_any_policy_text_parses_or_is_refused(text: str) -> None:
    try:
        p = parse_policy(text)
    except PolicyError as e:
        assert e.kind == "sts-policy-invalid"
    else:
        assert p.mode in ("enforce", "testing", "none") and 0 <= p.max_age <= MAX_AGE_LIMIT


@given(st.sampled_from(["enforce", "testing"]), st.lists(_host, min_size=1, max_size=4),
       st.integers(0, MAX_AGE_LIMIT), st.sampled_from(["\n", "\r\n"]))
def test_a_written_policy_reads_back(mode: str, mx: list[str], max_age: int, eol: str) -> None:
    text = eol.join(["version: STSv1", f"mode: {mode}", *[f"mx: {m}" for m in mx], f"max_age: {max_age}"]) + eol
    p = parse_policy(text)
    assert (p.mode, p.mx, p.max_age) == (mode, tuple(mx), max_age)
    assert all(p.allows(m) for m in mx)


@given(st.lists(st.text(max_size=60), max_size=4))
def test_any_txt_records_give_an_id_or_none(records: list[str]) -> None:
    got = parse_txt(records)
    assert got is None or (got.isalnum() and len(got) <= 32)


@pytest.mark.parametrize(("records", "want"), [
    (["v=STSv1; id=20160831085700Z"], "20160831085700Z"),
    (["v=STSv1;id=abc", "v=spf1 -all"], "abc"),  # other records are ignored
    (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # §3.1: more than one: no policy
    (["v=STSv1"], None),  # no id
    (["v=STSv1; id=bad-id!"], None),
    (["v=STSv10; id=a"], None),
])
def test_txt_records(records: list[str], want: str | None) -> None:
    assert parse_txt(records) == want


@given(_label, _host)
def test_a_wildcard_stands_for_exactly_one_label(first: str, base: str) -> None:
    assert mx_matches(f"*.{base}", f"{first}.{base}")
    assert not mx_matches(f"*.{base}", base)
    assert not mx_matches(f"*.{base}", f"x.{first}.{base}")
    assert mx_matches(base, base.upper() + ".")


def test_policies_without_what_they_need_are_refused() -> None:
    for text in ["mode: enforce\nmx: a.b\nmax_age: 1\n", "version: STSv1\nmode: enforce\nmax_age: 1\n",
                 "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n",
                 f"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: {MAX_AGE_LIMIT + 1}\n"]:
        with pytest.raises(PolicyError):
            parse_policy(text)
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 60\n").mode == "none"


@given(st.lists(st.text(max_size=80), max_size=4))
def test_tlsrpt_txt_records_give_only_mailto_and_https_uris(records: list[str]) -> None:
    from mailhaven.delivery.tlsrpt import parse_txt as rua

    assert all(u.lower().startswith(("mailto:", "https:")) for u in rua(records))


@given(st.binary(max_size=300))
def test_tls_required_no_never_raises_and_only_looks_at_the_header(body: bytes) -> None:
    from mailhaven.delivery.tlspolicy import tls_required_no

    assert not tls_required_no(b"Subject: x\r\n\r\n" + body.replace(b"\r\n\r\n", b"") + b"\r\nTLS-Required: No\r\n")
    assert tls_required_no(b"Subject: x\r\nTLS-Required: no\r\n\r\n" + body)
