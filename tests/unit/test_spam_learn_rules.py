"""policy/learn.py's rules: which user action teaches rspamd spam, ham or nothing (issue 12 item 4)."""

from __future__ import annotations

import pytest

from mailhaven.policy.learn import folder_is, for_keywords, for_transfer


@pytest.mark.parametrize(("source_junk", "dest_junk", "dest_trash", "expected"), [
    (False, True, False, "spam"),  # INBOX (or any folder) -> Junk
    (True, False, False, "ham"),  # Junk -> INBOX, Archive, any folder but Trash
    (True, False, True, None),  # Junk -> Trash: thrown away, no verdict (Dovecot's antispam recipe)
    (True, True, False, None),  # Junk -> Junk (COPY into itself, or a second \Junk folder)
    (False, False, False, None),  # INBOX -> Archive
    (False, False, True, None),  # INBOX -> Trash
])
def test_transfers(source_junk: bool, dest_junk: bool, dest_trash: bool, expected: str | None) -> None:
    assert for_transfer(source_junk, dest_junk, dest_trash) == expected


@pytest.mark.parametrize(("before", "after", "expected"), [
    (set(), {"$Junk"}, "spam"),
    (set(), {"$junk", "\\Seen"}, "spam"),  # keywords compare case-insensitively
    (set(), {"$NotJunk"}, "ham"),
    ({"$Junk"}, {"$Junk", "\\Seen"}, None),  # not newly set: already taught
    ({"$Junk"}, {"$NotJunk"}, "ham"),  # the user changed their mind
    (set(), {"$Junk", "$NotJunk"}, None),  # contradictory
    (set(), {"\\Flagged"}, None),
    ({"$NotJunk"}, set(), None),  # removing teaches nothing
])
def test_keywords(before: set[str], after: set[str], expected: str | None) -> None:
    assert for_keywords(before, after) == expected


def test_junk_and_trash_are_the_special_use_folders_or_the_stores_names() -> None:
    assert folder_is("Junk", "\\Junk", "Junk") and folder_is("Junk", None, "Junk")
    assert folder_is("Spam", "\\Junk", "Junk")  # created with USE (\Junk) (RFC 6154 §3)
    assert not folder_is("Spam", None, "Junk") and not folder_is("INBOX", None, "Junk")
    assert folder_is("Deleted Items", "\\Trash", "Trash") and folder_is("Trash", "\\Trash", "Trash")
    assert not folder_is("Junk", "\\Junk", "Trash")
