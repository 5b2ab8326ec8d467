"""Per-user Sieve script storage on a real folder: names, quotas, the active marker, durability,
and the include :personal loader that cannot leave the user's folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.sieve import SieveSyntaxError, compile_script
from mailhaven.sieve_store import (
    AlreadyExists,
    BadName,
    NoSuchScript,
    PersonalLoader,
    QuotaExceeded,
    ScriptActive,
    ScriptStore,
    check_name,
)


@pytest.fixture
def store(tmp_path: Path) -> ScriptStore:
    return ScriptStore(tmp_path / "mail", "alice@example.test", max_scripts=3, max_size=200)


def test_layout_on_disk(store: ScriptStore, tmp_path: Path) -> None:
    store.put("main", b"keep;\r\n")
    store.set_active("main")
    folder = tmp_path / "mail" / "example.test" / "alice" / "sieve"
    assert sorted(p.name for p in folder.iterdir()) == [".active", "main.sieve"]
    assert (folder / ".active").read_text() == "main\n"
    assert store.active_script() == b"keep;\r\n"


def test_fsync_of_file_and_folder_before_put_returns(store: ScriptStore, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.put("main", b"keep;")
    assert any("/.tmp." in p for p in synced[:-1])  # the file, before its rename
    assert synced[-1] == str(store.path)  # then the folder


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", ".active", ".hidden", "a\x00b", "a\nb", "a\x7fb",
                                  "a\u2028b", "e\u0301", "x" * 201])
def test_bad_names(name: str) -> None:
    with pytest.raises(BadName):
        check_name(name)


@pytest.mark.parametrize("name", ["main", "vacation rules", "Ünïcødé", "a..b", "x" * 200, "a\\b"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


def test_quota_and_size(store: ScriptStore) -> None:
    for n in ("a", "b", "c"):
        store.put(n, b"keep;")
    with pytest.raises(QuotaExceeded) as e:
        store.put("d", b"keep;")
    assert e.value.code == "QUOTA/MAXSCRIPTS"
    store.put("a", b"discard;")  # replacing is fine
    with pytest.raises(QuotaExceeded) as e:
        store.put("a", b"keep;" + b" " * 300)
    assert e.value.code == "QUOTA/MAXSIZE"
    assert store.get("a") == b"discard;"


def test_syntax_error_is_refused_with_line_and_column(store: ScriptStore) -> None:
    with pytest.raises(SieveSyntaxError) as e:
        store.put("a", b"keep;\nif true {\n")
    assert e.value.line >= 2
    with pytest.raises(SieveSyntaxError) as e:
        store.put("a", b"keep;\n# \xff\n")
    assert (e.value.line, e.value.column) == (2, 3)
    assert store.names() == []


def test_active_rename_delete(store: ScriptStore) -> None:
    store.put("a", b"keep;")
    store.put("b", b"keep;")
    store.set_active("a")
    with pytest.raises(ScriptActive):
        store.delete("a")
    with pytest.raises(AlreadyExists):
        store.rename("a", "b")
    with pytest.raises(NoSuchScript):
        store.rename("zz", "c")
    with pytest.raises(NoSuchScript):
        store.set_active("zz")
    store.rename("a", "c")
    assert store.listing() == [("b", False), ("c", True)]
    store.set_active("")
    store.delete("c")
    assert store.listing() == [("b", False)]
    with pytest.raises(NoSuchScript):
        store.delete("c")


def test_include_personal_reads_only_the_users_own_scripts(store: ScriptStore, tmp_path: Path) -> None:
    store.put("lib", b"keep;")
    (tmp_path / "secret.sieve").write_text("discard;")
    other = ScriptStore(tmp_path / "mail", "bob@example.test", max_scripts=3, max_size=200)
    other.put("bobs", b"discard;")
    os.symlink(tmp_path / "secret.sieve", store.path / "link.sieve")
    loader = PersonalLoader(store)
    assert loader.load("lib", "personal") == b"keep;"
    assert loader.load("lib", "global") is None
    for name in ("../../../../secret", "../../bob/sieve/bobs", "/etc/passwd", "link", "bobs"):
        assert loader.load(name, "personal") is None
    # the interpreter's compile step uses it: a missing include is refused where it is
    compile_script(b'require "include"; include :personal "lib";', loader=loader)
    with pytest.raises(SieveSyntaxError):
        compile_script(b'require "include"; include :personal "../../bob/sieve/bobs";', loader=loader)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_accepted_name_stays_inside_the_folder(name: str) -> None:
    try:
        check_name(name)
    except BadName:
        return
    folder = Path("/srv/u/sieve")
    assert (folder / (name + ".sieve")).resolve().parent == folder
