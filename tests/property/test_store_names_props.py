"""Hypothesis: no accepted mailbox name or user address ever resolves outside its folder."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.errors import BadMailboxName
from mailhaven.store import names

ROOT = Path(os.path.realpath("/tmp")) / "mailhaven-names-prop" / "mail"
USER_ROOT = ROOT / "example.test" / "alice"

# Biased towards the characters that matter for paths, plus arbitrary Unicode.
tricky = st.sampled_from(["/", "\\", ".", "..", "\x00", "~", "INBOX", "inbox", "*", "%", " ", "\n", "é"])
name_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(tricky, st.text(min_size=1, max_size=5)), max_size=12).map("".join),
)


def _inside(path: Path, base: Path) -> bool:
    real = os.path.realpath(path)
    base_real = os.path.realpath(base)
    return real == base_real or real.startswith(base_real + os.sep)


@settings(max_examples=600)
@given(name_text)
def test_accepted_mailbox_names_stay_inside_the_user_folder(name: str) -> None:
    try:
        canon = names.canonical(name)
    except BadMailboxName:
        return
    path = names.folder_path(USER_ROOT, name)
    assert _inside(path, USER_ROOT)
    for sub in ("cur", "new", "tmp"):
        assert _inside(path / sub, USER_ROOT)
    # Maildir++ is flat: every folder is the root itself or one ".<name>" entry directly inside it.
    assert path == USER_ROOT or (path.parent == USER_ROOT and path.name.startswith("."))
    assert len(path.name.encode("utf-8")) <= 255
    # Round trip: the directory entry maps back to the same name.
    if canon != names.INBOX:
        assert names.name_from_dirname(path.name) == canon


@settings(max_examples=600)
@given(name_text, name_text)
def test_accepted_user_addresses_stay_inside_the_mail_root(localpart: str, domain: str) -> None:
    try:
        root = names.user_root(ROOT, f"{localpart}@{domain}")
    except BadMailboxName:
        return
    assert _inside(root, ROOT)
    assert root.parent.parent == ROOT  # exactly <root>/<domain>/<localpart>
    assert root.name not in (".", "..") and root.parent.name not in (".", "..")


@given(name_text)
def test_canonical_is_idempotent(name: str) -> None:
    try:
        canon = names.canonical(name)
    except BadMailboxName:
        return
    assert names.canonical(canon) == canon
