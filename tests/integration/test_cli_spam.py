"""`mailhaven spam block|unblock|allow|disallow USER ADDRESS|@DOMAIN` and `spam list USER` (issue 12
item 5), run as a real subprocess on an initialised installation, no server running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailhaven.policy import senderlists
from tests.integration.test_cli import assert_one_line_error, mh


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    cfg = tmp_path / "etc" / "mailhaven.toml"
    r = mh("init", "--domain", "example.test", "--hostname", "mail.example.test", "--config", str(cfg),
           "--data-dir", str(tmp_path / "data"), "--dev")
    assert r.returncode == 0, r.stderr
    for user in ("alice@example.test", "bob@example.test"):
        assert mh("-c", str(cfg), "user", "add", user, stdin="pw\n").returncode == 0
    return cfg


def _file(cfg: Path, user: str) -> Path:
    local, _, domain = user.partition("@")
    return cfg.parent.parent / "data" / "mail" / domain / local / senderlists.FILE_NAME


def test_block_allow_list_and_removal_round_trip(installed: Path) -> None:
    c = str(installed)
    r = mh("-c", c, "spam", "block", "alice@example.test", "Spammer@Bad.EXAMPLE", "@worse.example")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == "alice@example.test: blocked spammer@bad.example, @worse.example\n"
    assert mh("-c", c, "spam", "allow", "alice@example.test", "*@friends.example").returncode == 0
    assert mh("-c", c, "spam", "block", "alice@example.test", "@worse.example").returncode == 0  # no duplicate
    r = mh("-c", c, "spam", "list", "alice@example.test")
    assert r.stdout == "block spammer@bad.example\nblock @worse.example\nallow @friends.example\n"
    doc = json.loads(_file(installed, "alice@example.test").read_text())  # the file in alice's Maildir
    assert doc["block"] == ["spammer@bad.example", "@worse.example"] and doc["allow"] == ["@friends.example"]
    assert mh("-c", c, "spam", "list", "bob@example.test").stdout == ""  # per user
    assert mh("-c", c, "spam", "unblock", "alice@example.test", "spammer@bad.example").returncode == 0
    assert mh("-c", c, "spam", "disallow", "alice@example.test", "@friends.example").returncode == 0
    assert mh("-c", c, "spam", "list", "alice@example.test").stdout == "block @worse.example\n"


def test_spam_commands_refuse_bad_input_with_one_line(installed: Path) -> None:
    c = str(installed)
    assert_one_line_error(mh("-c", c, "spam", "block", "nobody@example.test", "@x.example"), 1,
                          "no such user: nobody@example.test (sender lists belong to users, not aliases)")
    assert_one_line_error(mh("-c", c, "spam", "block", "alice@example.test", "bad.example"), 1,
                          "spam block: expected ADDRESS or @DOMAIN (a whole domain is written @bad.example)")
    assert_one_line_error(mh("-c", c, "spam", "block", "alice@example.test"), 1,
                          "spam block: an ADDRESS or @DOMAIN is required")
    assert_one_line_error(mh("-c", c, "spam", "unblock", "alice@example.test", "x@y.example"), 1,
                          "spam unblock: not on alice@example.test's block list: x@y.example")
    r = mh("-c", c, "spam", "block", "alice@other.example", "x@y.example")
    assert r.returncode == 1 and "not one of this server's domains" in r.stderr
    assert not _file(installed, "alice@example.test").exists()  # nothing written by a refusal
