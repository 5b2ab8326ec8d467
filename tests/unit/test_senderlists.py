"""policy/senderlists.py: entries, matching, what a decision does to a verdict, and the file (issue 12
item 5: per-user sender block and allow lists)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhaven.policy import senderlists as sl
from mailhaven.policy.spam import SpamVerdict, outcome, status_fields


@pytest.mark.parametrize(("text", "stored"), [
    ("Spammer@Example.COM", "spammer@example.com"),
    ("@Example.COM", "@example.com"),
    ("*@example.com", "@example.com"),
    (" friend@mail.example.org ", "friend@mail.example.org"),
    ("@bücher.example", "@xn--bcher-kva.example"),
])
def test_entries_are_stored_lower_case_with_a_labels(text: str, stored: str) -> None:
    assert sl.normalize_entry(text) == stored


@pytest.mark.parametrize("text", ["", "example.com", "a b@example.com", "x@", "x@-bad-.example", "x@[127.0.0.1]",
                                  "x@exa mple.com", "a\n@example.com", "x" * 400 + "@example.com"])
def test_bad_entries_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ValueError) as e:
        sl.normalize_entry(text)
    assert str(e.value) and "\n" not in str(e.value)


def test_a_bare_domain_gets_a_hint() -> None:
    with pytest.raises(ValueError, match="@example.com"):
        sl.normalize_entry("example.com")


LISTS = sl.SenderLists(block=("@spam.example", "boss@good.example"), allow=("@good.example", "news@spam.example"))


@pytest.mark.parametrize(("senders", "decision"), [
    (["x@spam.example"], "block"),
    (["X@Mail.Spam.Example"], "block"),  # subdomains of a domain entry, any case
    (["x@notspam.example"], None),  # a suffix that is not a parent domain
    (["x@good.example"], "allow"),
    (["boss@good.example"], "block"),  # the address is more specific than the domain
    (["news@spam.example"], "allow"),
    (["<x@spam.example>"], "block"),
    (["friend@good.example", "x@spam.example"], "block"),  # equal specificity: block wins
    (["", "nodomain"], None),
    ([], None),
])
def test_the_most_specific_entry_decides_and_block_wins_a_tie(senders: list[str], decision: str | None) -> None:
    assert sl.decide(LISTS, senders) == decision


def test_empty_lists_decide_nothing() -> None:
    assert sl.decide(sl.EMPTY, ["x@spam.example"]) is None


def test_block_junks_a_clean_verdict_with_the_symbol_and_score() -> None:
    v = sl.apply(SpamVerdict("no action", 1.5, 5.0, ("R_DKIM_ALLOW",)), "block")
    assert v.action == "add header" and outcome(v) == "junk"
    assert v.score == 101.5 and v.symbols == ("R_DKIM_ALLOW", "USER_BLOCKLIST")
    assert status_fields(v).startswith(b"X-Spam-Status: Yes, score=101.50, required=5.00\r\n")


def test_allow_takes_a_junk_verdict_to_the_inbox_and_keeps_the_subject() -> None:
    v = sl.apply(SpamVerdict("rewrite subject", 25.0, 100.0, subject="*** SPAM *** hi"), "allow")
    assert v.action == "no action" and outcome(v) == "inbox" and v.subject is None
    assert v.score == -75.0 and v.symbols == ("USER_ALLOWLIST",)


@pytest.mark.parametrize("action", ["reject", "soft reject", "greylist", "unknown", "skipped"])
@pytest.mark.parametrize("decision", ["allow", "block"])
def test_refusals_and_unscanned_verdicts_are_never_changed_by_a_list(action: str, decision: sl.Decision) -> None:
    v = SpamVerdict(action, 200.0, 100.0, ("GTUBE",))
    assert sl.apply(v, decision) is v


def test_file_round_trip_and_bad_entries_in_a_hand_edited_file_are_dropped(tmp_path: Path) -> None:
    path = sl.path_for(tmp_path / "mail" / "example.test" / "alice")
    lists = sl.SenderLists(block=("@spam.example",), allow=("friend@good.example",))
    sl.save(path, lists)  # creates the user's Maildir root
    assert sl.load(path) == lists
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    path.write_text('{"block": ["@spam.example", "not an entry", 7], "allow": []}')
    assert sl.load(path) == sl.SenderLists(block=("@spam.example",))
    assert sl.load(tmp_path / "missing.json") == sl.EMPTY


@pytest.mark.parametrize("data", [b"", b"[]", b'{"block": "x@y.example"}', b"\xff", b"[" * 100_000])
def test_a_broken_file_is_a_list_file_error(data: bytes) -> None:
    with pytest.raises(sl.ListFileError):
        sl.parse(data)


def test_the_cache_sees_a_changed_file_at_once_and_stays_bounded(tmp_path: Path) -> None:
    cache = sl.Cache(max_entries=2)
    path = tmp_path / sl.FILE_NAME
    assert cache.get(path) == sl.EMPTY
    sl.save(path, sl.SenderLists(block=("@a.example",)))
    assert cache.get(path).block == ("@a.example",)
    sl.save(path, sl.SenderLists(block=("@b.example",)))  # a new inode: re-read even in the same mtime tick
    assert cache.get(path).block == ("@b.example",)
    os.unlink(path)
    assert cache.get(path) == sl.EMPTY
    for i in range(5):
        p = tmp_path / f"u{i}.json"
        sl.save(p, sl.SenderLists(allow=(f"@{i}.example",)))
        assert cache.get(p).allow == (f"@{i}.example",)
    assert len(cache._cached) == 2


# --- properties ----------------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)
_local = st.from_regex(r"[A-Za-z0-9._+-]{1,12}", fullmatch=True)


@given(_local, _domain)
def test_an_address_entry_matches_its_address_in_any_case(local: str, domain: str) -> None:
    entry = sl.normalize_entry(f"{local}@{domain}")
    assert sl.normalize_entry(entry) == entry  # idempotent
    assert sl.decide(sl.SenderLists(block=(entry,)), [f"{local.upper()}@{domain.upper()}"]) == "block"


@given(_local, _domain, _domain)
def test_a_domain_entry_matches_the_domain_and_its_subdomains_only(local: str, parent: str, sub: str) -> None:
    lists = sl.SenderLists(allow=(sl.normalize_entry("@" + parent),))
    assert sl.decide(lists, [f"{local}@{parent}"]) == "allow"
    assert sl.decide(lists, [f"{local}@{sub}.{parent}"]) == "allow"
    other = f"{local}@x{parent}"  # shares a suffix, is no subdomain
    assert sl.decide(lists, [other]) is None


@given(st.lists(st.text(max_size=40), max_size=5), st.lists(st.text(max_size=40), max_size=5),
       st.lists(st.text(max_size=60), max_size=5))
def test_decide_never_raises_and_block_wins_when_both_lists_hold_the_same_entries(
        block: list[str], allow: list[str], senders: list[str]) -> None:
    def norm(items: list[str]) -> tuple[str, ...]:
        out = []
        for i in items:
            try:
                out.append(sl.normalize_entry(i))
            except ValueError:
                pass
        return tuple(out)

    b = norm(block)
    assert sl.decide(sl.SenderLists(block=b, allow=norm(allow)), senders) in ("block", "allow", None)
    if b:
        assert sl.decide(sl.SenderLists(block=b, allow=b), senders) in ("block", None)


@given(st.binary(max_size=300))
def test_parse_of_any_bytes_gives_lists_or_a_list_file_error(data: bytes) -> None:
    try:
        sl.parse(data)
    except sl.ListFileError:
        pass
