"""`mailhaven sieve ...`: an admin puts, lists, gets, activates and checks a user's scripts on disk
(the same files ManageSieve serves), and a syntax error is one line with its line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailhaven.sieve_store import ACTIVE_MARKER
from tests.integration.test_cli import assert_one_line_error, mh

GOOD = 'require "fileinto";\nif header :contains "subject" "x" { fileinto "Junk"; }\n'
BAD = 'require "fileinto";\nif header :contains "subject" { fileinto "Junk"; }\n'


@pytest.fixture
def setup(tmp_path: Path) -> tuple[str, Path]:
    cfg = tmp_path / "etc" / "mailhaven.toml"
    r = mh("init", "--domain", "example.test", "--hostname", "mail.example.test", "--config", str(cfg),
           "--data-dir", str(tmp_path / "data"), "--dev")
    assert r.returncode == 0, r.stderr
    assert mh("-c", str(cfg), "user", "add", "alice@example.test", stdin="pw\n").returncode == 0
    (tmp_path / "filters.sieve").write_text(GOOD)
    (tmp_path / "bad.sieve").write_text(BAD)
    return str(cfg), tmp_path


def test_put_list_get_activate_delete(setup: tuple[str, Path]) -> None:
    c, tmp = setup
    r = mh("-c", c, "sieve", "put", "alice@example.test", str(tmp / "filters.sieve"), "--activate")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "stored filters for alice@example.test\nfilters is now active\n"
    assert mh("-c", c, "sieve", "put", "alice@example.test", "-", "--name", "spare", stdin="keep;\n").returncode == 0
    assert mh("-c", c, "sieve", "list", "alice@example.test").stdout == "filters  (active)\nspare\n"
    assert mh("-c", c, "sieve", "get", "alice@example.test", "filters").stdout == GOOD
    folder = tmp / "data" / "mail" / "example.test" / "alice" / "sieve"
    assert (folder / ACTIVE_MARKER).read_text() == "filters\n"
    assert_one_line_error(mh("-c", c, "sieve", "delete", "alice@example.test", "filters"), 1,
                          "You may not delete the active script (ACTIVE)")
    assert mh("-c", c, "sieve", "activate", "alice@example.test", "spare").returncode == 0
    assert mh("-c", c, "sieve", "delete", "alice@example.test", "filters").returncode == 0
    assert mh("-c", c, "sieve", "list", "alice@example.test").stdout == "spare  (active)\n"
    assert mh("-c", c, "sieve", "deactivate", "alice@example.test").returncode == 0
    assert mh("-c", c, "sieve", "list", "alice@example.test").stdout == "spare\n"


def test_syntax_errors_say_line_and_column_and_exit_1(setup: tuple[str, Path]) -> None:
    c, tmp = setup
    bad = str(tmp / "bad.sieve")
    r = mh("-c", c, "sieve", "check", bad)
    assert r.returncode == 1 and r.stderr.startswith(f"mailhaven: {bad}: line 2, column ")
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    r = mh("-c", c, "sieve", "put", "alice@example.test", bad)
    assert r.returncode == 1 and "line 2, column" in r.stderr
    assert mh("-c", c, "sieve", "list", "alice@example.test").stdout == ""
    assert mh("-c", c, "sieve", "check", str(tmp / "filters.sieve")).stdout.endswith(": ok\n")
    assert mh("-c", c, "sieve", "check", "alice@example.test", str(tmp / "filters.sieve")).returncode == 0


def test_refusals_are_one_line(setup: tuple[str, Path]) -> None:
    c, tmp = setup
    assert_one_line_error(mh("-c", c, "sieve", "list", "nobody@example.test"), 1, "no such user: nobody@example.test")
    assert_one_line_error(mh("-c", c, "sieve", "get", "alice@example.test", "nothere"), 1,
                          "There is no script by that name (NONEXISTENT)")
    assert_one_line_error(mh("-c", c, "sieve", "put", "alice@example.test", "-", "--name", "../x", stdin="keep;"),
                          1, "Script name contains '/'")
