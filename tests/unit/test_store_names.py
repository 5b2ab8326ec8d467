"""Mailbox-name and user-address rules of store/names.py (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailhaven.errors import BadMailboxName
from mailhaven.store import names


@pytest.mark.parametrize(("given", "expected"), [
    ("INBOX", "INBOX"),
    ("inbox", "INBOX"),
    ("InBoX", "INBOX"),
    ("inbox.Sub", "INBOX.Sub"),
    ("Sent", "Sent"),
    ("sent", "sent"),
    ("Work.Projects", "Work.Projects"),
    ("Entwürfe", "Entwürfe"),
    ("日本語.メール", "日本語.メール"),
    ("a b", "a b"),
    ("~x", "~x"),
])
def test_valid_names_are_canonicalised(given: str, expected: str) -> None:
    assert names.canonical(given) == expected


@pytest.mark.parametrize("bad", [
    "", ".", "..", "...", ".a", "a.", "a..b", "/", "a/b", "/etc/passwd", "..\\x", "a\\b", "a\x00b",
    "a\nb", "a\rb", "a\tb", "\x7f", "a\x85b", "*", "a%", "\ud800", "x" * 255,
])
def test_invalid_names_are_rejected(bad: str) -> None:
    with pytest.raises(BadMailboxName):
        names.canonical(bad)


def test_longest_accepted_name_fits_one_directory_entry() -> None:
    name = "x" * 254
    assert names.canonical(name) == name
    assert len(names.dirname(name).encode()) == 255
    with pytest.raises(BadMailboxName):
        names.canonical("é" * 128)  # 256 bytes + the dot


def test_inbox_maps_to_user_root_and_folders_to_dot_directories() -> None:
    root = Path("/m/example.test/alice")
    assert names.folder_path(root, "inbox") == root
    assert names.folder_path(root, "Sent") == root / ".Sent"
    assert names.folder_path(root, "Work.Projects") == root / ".Work.Projects"
    assert names.folder_path(root, "INBOX.x") == root / ".INBOX.x"


@pytest.mark.parametrize(("entry", "expected"), [
    (".Sent", "Sent"), (".Work.Projects", "Work.Projects"), (".INBOX.x", "INBOX.x"),
    ("cur", None), (".", None), ("..", None), ("..mailhaven-deleted.1", None), (".a..b", None),
    (".INBOX", None), (".inbox.x", None), (".a.", None),
])
def test_directory_entries_map_back_to_names(entry: str, expected: str | None) -> None:
    assert names.name_from_dirname(entry) == expected


def test_hierarchy_helpers() -> None:
    assert names.parent("a.b.c") == "a.b"
    assert names.parent("a") is None
    assert names.ancestors("a.b.c") == ["a", "a.b"]
    assert names.is_inferior("a.b", "a")
    assert not names.is_inferior("ab", "a")
    assert not names.is_inferior("a", "a")


def test_default_folders_have_special_use() -> None:
    assert names.default_special_use("Sent") == "\\Sent"
    assert names.default_special_use("Junk") == "\\Junk"
    assert names.default_special_use("Work") is None


@pytest.mark.parametrize(("user", "expected"), [
    ("alice@example.test", ("example.test", "alice")),
    ("Alice@Example.TEST", ("example.test", "Alice")),
    ("a.b+c@xn--bcher-kva.test", ("xn--bcher-kva.test", "a.b+c")),
    ("\"odd@local\"@example.test", ("example.test", "\"odd@local\"")),
])
def test_user_addresses_split_into_safe_parts(user: str, expected: tuple[str, str]) -> None:
    assert names.split_user(user) == expected


@pytest.mark.parametrize("user", [
    "alice", "@example.test", "alice@", "../x@example.test", "..@example.test", ".alice@example.test",
    "alice@..", "alice@../etc", "a/b@example.test", "alice@ex/ample", "alice@example..test",
    "alice@.example.test", "alice@example.test.", "a\\b@example.test", "a\x00@example.test",
    "a\n@example.test", "alice@" + "x" * 256,
])
def test_unsafe_user_addresses_are_rejected(user: str) -> None:
    with pytest.raises(BadMailboxName):
        names.split_user(user)
