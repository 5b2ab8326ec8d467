"""DMARC pure parts: record parsing, organizational domain, alignment, From domain, judging."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.policy.dmarc import (
    AuthorError,
    DmarcRecord,
    Identities,
    aligned,
    author_domain,
    judge,
    organizational_domain,
    parse_record,
)


def test_full_record_is_parsed() -> None:
    r = parse_record("v=DMARC1; p=quarantine; sp=reject; adkim=s; aspf=s; pct=25; "
                     "rua=mailto:agg@example.net, mailto:b@example.org; ruf=mailto:f@example.net; fo=1; ri=3600")
    assert r == DmarcRecord(p="quarantine", sp="reject", adkim="s", aspf="s", pct=25,
                            rua=("mailto:agg@example.net", "mailto:b@example.org"),
                            ruf=("mailto:f@example.net",), fo="1", ri=3600)


def test_defaults_sp_is_p_and_alignment_relaxed_and_pct_100() -> None:
    assert parse_record("v=DMARC1; p=reject") == DmarcRecord(p="reject", sp="reject")


@pytest.mark.parametrize("text", [
    "", "v=spf1 -all", "p=reject; v=DMARC1", "v=DMARC2; p=reject", "v=dmarc1; p=reject",
    "v=DMARC1", "v=DMARC1; p=bogus", "v=DMARC1; rua=notauri",
])
def test_invalid_records_are_none(text: str) -> None:
    assert parse_record(text) is None


def test_missing_p_with_valid_rua_acts_as_p_none() -> None:
    r = parse_record("v=DMARC1; rua=mailto:a@example.net")
    assert r is not None and (r.p, r.sp) == ("none", "none")


def test_bad_optional_tags_fall_back_to_defaults_and_unknown_tags_are_ignored() -> None:
    r = parse_record("v=DMARC1; p=reject; pct=200; adkim=x; sp=maybe; zz=1; novalue")
    assert r == DmarcRecord(p="reject", sp="reject")


def test_tag_names_and_policy_values_are_case_insensitive() -> None:
    r = parse_record("v=DMARC1; P=Reject; SP=None")
    assert r is not None and (r.p, r.sp) == ("reject", "none")


@given(st.text(max_size=300))
def test_parser_never_raises_on_arbitrary_text(text: str) -> None:
    r = parse_record(text)
    assert r is None or (0 <= r.pct <= 100 and r.p in ("none", "quarantine", "reject"))


@given(st.sampled_from(["none", "quarantine", "reject"]), st.sampled_from(["none", "quarantine", "reject"]),
       st.sampled_from(["r", "s"]), st.sampled_from(["r", "s"]), st.integers(0, 100))
def test_parser_roundtrips_generated_records(p: str, sp: str, adkim: str, aspf: str, pct: int) -> None:
    r = parse_record(f"v=DMARC1;p={p} ; sp={sp};adkim={adkim}; aspf={aspf}; pct={pct}")
    assert r == DmarcRecord(p=p, sp=sp, adkim=adkim, aspf=aspf, pct=pct)  # type: ignore[arg-type]


@pytest.mark.parametrize(("domain", "org"), [
    ("example.net", "example.net"),
    ("mail.example.net", "example.net"),
    ("a.b.sub.example.co.uk", "example.co.uk"),
    ("EXAMPLE.CO.UK.", "example.co.uk"),
    ("co.uk", "co.uk"),
])
def test_organizational_domain_uses_the_public_suffix_list(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


def test_relaxed_alignment_is_same_organizational_domain() -> None:
    assert aligned("mail.example.co.uk", "example.co.uk", "r")
    assert aligned("a.example.net", "b.example.net", "r")
    assert not aligned("example.co.uk", "other.co.uk", "r")


def test_strict_alignment_is_exact_domain() -> None:
    assert aligned("Example.NET.", "example.net", "s")
    assert not aligned("mail.example.net", "example.net", "s")


def test_author_domain_is_the_single_from_domain() -> None:
    msg = b"From: \"A, B\" <a@Mail.Example.NET>\r\nTo: x@y.example\r\n\r\nFrom: body@evil.example\r\n"
    assert author_domain(msg) == "mail.example.net"


@pytest.mark.parametrize("head", [
    b"To: x@y.example\r\n",
    b"From: a@example.net\r\nFrom: b@example.org\r\n",
    b"From: a@example.net, b@example.org\r\n",
    b"From: undisclosed\r\n",
])
def test_missing_multiple_or_domainless_from_raises_author_error(head: bytes) -> None:
    with pytest.raises(AuthorError):
        author_domain(head + b"\r\nbody\r\n")


def test_several_addresses_of_one_domain_are_that_domain() -> None:
    assert author_domain(b"From: a@example.net, b@EXAMPLE.net\n\nbody") == "example.net"


@given(st.binary(max_size=500))
def test_author_domain_raises_only_author_error(data: bytes) -> None:
    try:
        author_domain(data)
    except AuthorError:
        pass


REJECT = DmarcRecord(p="reject", sp="quarantine")


def test_no_record_is_none() -> None:
    assert judge(None, "", "example.net", Identities("pass", "example.net")).result == "none"


def test_aligned_spf_pass_passes() -> None:
    r = judge(REJECT, "example.net", "example.net", Identities("pass", "bounce.example.net"))
    assert (r.result, r.policy, r.spf_aligned, r.dkim_aligned) == ("pass", "none", True, False)


def test_strict_spf_alignment_rejects_subdomain_mail_from() -> None:
    rec = DmarcRecord(p="reject", sp="reject", aspf="s")
    r = judge(rec, "example.net", "example.net", Identities("pass", "bounce.example.net"))
    assert (r.result, r.policy) == ("fail", "reject")


def test_unaligned_dkim_pass_fails_and_aligned_one_passes() -> None:
    ids = Identities("fail", "example.net", ("other.example",))
    assert judge(REJECT, "example.net", "example.net", ids).result == "fail"
    ids = Identities("fail", "example.net", ("other.example", "sig.example.net"))
    r = judge(REJECT, "example.net", "example.net", ids)
    assert (r.result, r.dkim_aligned) == ("pass", True)


def test_subdomain_uses_sp_when_record_came_from_org_domain() -> None:
    r = judge(REJECT, "example.net", "sub.example.net", Identities("fail", "sub.example.net"))
    assert (r.result, r.policy, r.published) == ("fail", "quarantine", "quarantine")


def test_pct_samples_with_the_injected_random() -> None:
    rec = DmarcRecord(p="reject", sp="reject", pct=30)
    ids = Identities("fail", "x.example")
    inside = judge(rec, "example.net", "example.net", ids, rand=lambda: 0.29)
    outside = judge(rec, "example.net", "example.net", ids, rand=lambda: 0.30)
    assert (inside.policy, inside.sampled_out) == ("reject", False)
    assert (outside.policy, outside.sampled_out) == ("quarantine", True)
    q = DmarcRecord(p="quarantine", sp="quarantine", pct=0)
    assert judge(q, "example.net", "example.net", ids, rand=lambda: 0.0).policy == "none"


def test_aligned_dkim_temperror_without_pass_is_temperror() -> None:
    ids = Identities("fail", "x.example", (), ("example.net",))
    assert judge(REJECT, "example.net", "example.net", ids).result == "temperror"
