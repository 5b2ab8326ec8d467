"""auth/users.py: the users file (load, validate, atomic edits) and the Directory (resolve, owns, login)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from mailhaven.auth.passwords import FAST_PARAMS, hash_password, hash_scrypt
from mailhaven.auth.users import Directory, UsersFile
from mailhaven.config import from_dict
from mailhaven.errors import ConfigError
from mailhaven.seams import Targets

H = hash_password("secret", params=FAST_PARAMS)  # module level: before the fast_hashing fixture

USERS_TOML = f"""
[users."alice@example.test"]
password = "{H}"

[users."Bob@Example.TEST"]
password = "{H}"

[users."carol@other.test"]
password = "{H}"

[users."catcher@example.test"]
password = "{H}"

[users."dave+x@example.test"]
password = "{H}"

[aliases]
"postmaster@example.test" = ["alice@example.test"]
"team@example.test" = ["alice@example.test", "bob@example.test"]
"all@example.test" = ["team@example.test", "carol@other.test"]
"chain1@example.test" = ["chain2@example.test"]
"chain2@example.test" = ["chain3@example.test"]
"chain3@example.test" = ["BOB@example.test"]
"loop1@example.test" = ["loop2@example.test"]
"loop2@example.test" = ["loop1@example.test"]
"loopy@example.test" = ["loop1@example.test", "alice@example.test"]
"ghost@example.test" = ["nobody@example.test"]
"outside@example.test" = ["someone@elsewhere.example"]
"Sales@example.test" = "carol@other.test"
"""


def _config(tmp_path: Path, **extra: Any) -> Any:
    data: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "domains": {"example.test": {}, "other.test": {}, "catch.test": {"catch_all": "catcher@example.test"},
                    "xn--bcher-kva.example": {}},
    }
    data.update(extra)
    return from_dict(data, tmp_path)


@pytest.fixture
def users_path(tmp_path: Path) -> Path:
    p = tmp_path / "users.toml"
    p.write_text(USERS_TOML)
    return p


@pytest.fixture
def directory(tmp_path: Path, users_path: Path) -> Directory:
    return Directory(_config(tmp_path), UsersFile.load(users_path))


# --- resolution table --------------------------------------------------------------------------

RESOLVE = [
    # (address, expected)
    ("alice@example.test", ["alice@example.test"]),
    ("ALICE@EXAMPLE.TEST", ["alice@example.test"]),  # local part and domain case-insensitive
    ("bob@example.test", ["Bob@example.test"]),  # canonical keeps the case it was written with
    ("carol@other.test", ["carol@other.test"]),
    ("postmaster@example.test", ["alice@example.test"]),
    ("PostMaster@Example.Test", ["alice@example.test"]),
    ("team@example.test", ["alice@example.test", "Bob@example.test"]),
    ("all@example.test", ["alice@example.test", "Bob@example.test", "carol@other.test"]),
    ("chain1@example.test", ["Bob@example.test"]),
    ("sales@example.test", ["carol@other.test"]),
    ("loop1@example.test", None),  # a loop leads to nobody
    ("loopy@example.test", ["alice@example.test"]),  # the loop part is cut, the rest delivered
    ("ghost@example.test", None),  # dangling target
    ("outside@example.test", None),  # forwarding outside is not supported
    ("alice+tag@example.test", ["alice@example.test"]),
    ("alice+tag+more@example.test", ["alice@example.test"]),
    ("team+x@example.test", ["alice@example.test", "Bob@example.test"]),
    ("dave+x@example.test", ["dave+x@example.test"]),  # exact match wins over tag stripping
    ("dave+y@example.test", None),  # "dave" does not exist
    ("+tag@example.test", None),
    ("unknown@example.test", None),
    ("anything@catch.test", ["catcher@example.test"]),  # catch-all
    ("alice@catch.test", ["catcher@example.test"]),
    ("alice@elsewhere.example", None),  # non-local domain
    ("alice@[127.0.0.1]", None),
    ("not an address", None),
    ("", None),
]


@pytest.mark.parametrize(("address", "expected"), RESOLVE)
def test_resolve(directory: Directory, address: str, expected: list[str] | None) -> None:
    assert directory.resolve(address) == expected


def test_resolve_without_plus_separator_keeps_tag(tmp_path: Path, users_path: Path) -> None:
    d = Directory(_config(tmp_path, plus_separator=""), UsersFile.load(users_path))
    assert d.resolve("alice+tag@example.test") is None
    assert d.resolve("alice@example.test") == ["alice@example.test"]


def test_resolve_with_other_plus_separator(tmp_path: Path, users_path: Path) -> None:
    d = Directory(_config(tmp_path, plus_separator="-"), UsersFile.load(users_path))
    assert d.resolve("alice-tag@example.test") == ["alice@example.test"]
    assert d.resolve("alice+tag@example.test") is None


def test_deep_alias_chain_is_cut(tmp_path: Path) -> None:
    p = tmp_path / "u.toml"
    lines = [f'[users."u@example.test"]\npassword = "{H}"\n[aliases]']
    for i in range(15):
        lines.append(f'"a{i}@example.test" = ["a{i + 1}@example.test"]')
    lines.append('"a15@example.test" = ["u@example.test"]')
    p.write_text("\n".join(lines) + "\n")
    d = Directory(_config(tmp_path), UsersFile.load(p))
    assert d.resolve("a10@example.test") == ["u@example.test"]
    assert d.resolve("a0@example.test") is None
    assert any("deeper" in w for w in d.warnings)


def test_wide_alias_graph_resolves_quickly(tmp_path: Path) -> None:
    # 10 levels of 10 aliases each pointing at all of the next level: naive expansion is 10**10.
    p = tmp_path / "u.toml"
    lines = [f'[users."u@example.test"]\npassword = "{H}"\n[aliases]']
    for lvl in range(10):
        for j in range(10):
            targets = ", ".join(f'"l{lvl + 1}x{k}@example.test"' for k in range(10)) if lvl < 9 else '"u@example.test"'
            lines.append(f'"l{lvl}x{j}@example.test" = [{targets}]')
    p.write_text("\n".join(lines) + "\n")
    t = time.monotonic()
    d = Directory(_config(tmp_path), UsersFile.load(p))
    assert d.resolve("l0x0@example.test") == ["u@example.test"]
    assert time.monotonic() - t < 2


def test_warnings_name_problems(directory: Directory) -> None:
    text = "\n".join(directory.warnings)
    assert "loop" in text
    assert "nobody@example.test" in text
    assert "someone@elsewhere.example" in text and "srs_secret_file" in text  # forwarding without SRS


def test_targets_split_local_users_and_forwarding(tmp_path: Path, users_path: Path) -> None:
    users_path.write_text(users_path.read_text().replace(
        '"outside@example.test" = ["someone@elsewhere.example"]',
        '"outside@example.test" = ["someone@elsewhere.example"]\n'
        '"mixed@example.test" = ["alice@example.test", "Friend@Far.example", "outside@example.test"]\n'
        '"deep1@example.test" = ["deep2@example.test", "x@far.example"]\n'
        '"deep2@example.test" = ["deep1@example.test", "bob@example.test"]\n'
        '"fanout@example.test" = ["alice@example.test", "x@far.example", "|/bin/cat"]\n'
        '"viafanout@example.test" = ["fanout@example.test"]'))
    secret = tmp_path / "srs.secret"
    secret.write_text("s3cret\n")
    d = Directory(_config(tmp_path, delivery={"srs_secret_file": str(secret), "allow_programs": True}),
                  UsersFile.load(users_path))
    assert d.targets("mixed@example.test") == Targets(["alice@example.test"],
                                                      ["Friend@far.example", "someone@elsewhere.example"])
    assert d.resolve("mixed@example.test") == ["alice@example.test"]
    assert d.targets("outside@example.test") == Targets([], ["someone@elsewhere.example"])
    assert d.resolve("outside@example.test") is None  # no local user: only forwarded
    assert d.targets("outside+tag@example.test") == Targets([], ["someone@elsewhere.example"])
    assert d.targets("deep1@example.test") == Targets(["Bob@example.test"], ["x@far.example"])  # loop stops
    assert d.targets("alice@example.test") == Targets(["alice@example.test"])
    assert d.targets("nobody@elsewhere.example") == Targets()
    # one design for all three: local users, targets elsewhere and programs (the alias naming each)
    assert d.targets("fanout@example.test") == Targets(["alice@example.test"], ["x@far.example"],
                                                    [("|/bin/cat", "fanout@example.test")])
    assert d.targets("viafanout@example.test") == Targets(["alice@example.test"], ["x@far.example"],
                                                       [("|/bin/cat", "fanout@example.test")])
    assert d.program_targets("fanout@example.test") == [("|/bin/cat", "fanout@example.test")]
    assert not any("srs_secret_file" in w for w in d.warnings)


def test_catch_all_that_is_not_a_user_is_reported(tmp_path: Path, users_path: Path) -> None:
    cfg = _config(tmp_path, domains={"example.test": {"catch_all": "nobody@example.test"}})
    d = Directory(cfg, UsersFile.load(users_path))
    assert d.resolve("whatever@example.test") is None
    assert any("catch_all" in w for w in d.warnings)


def test_idna_domain_is_local(tmp_path: Path) -> None:
    p = tmp_path / "u.toml"
    p.write_text(f'[users."jörg@bücher.example"]\npassword = "{H}"\n')
    d = Directory(_config(tmp_path), UsersFile.load(p))
    assert d.is_local_domain("BÜCHER.example")
    assert d.resolve("Jörg@xn--bcher-kva.example") == ["jörg@xn--bcher-kva.example"]


# --- owns ----------------------------------------------------------------------------------------

OWNS = [
    ("alice@example.test", "alice@example.test", True),
    ("alice@example.test", "Alice@EXAMPLE.test", True),
    ("ALICE@example.test", "alice@example.test", True),
    ("alice@example.test", "alice+news@example.test", True),
    ("alice@example.test", "postmaster@example.test", True),
    ("alice@example.test", "team@example.test", True),
    ("bob@example.test", "team@example.test", True),
    ("bob@example.test", "chain1@example.test", True),  # transitive
    ("carol@other.test", "all@example.test", True),
    ("alice@example.test", "bob@example.test", False),
    ("bob@example.test", "postmaster@example.test", False),
    ("alice@example.test", "chain1@example.test", False),
    ("catcher@example.test", "random@catch.test", False),  # catch-all is not ownership
    ("alice@example.test", "alice@elsewhere.example", False),
    ("alice@example.test", "unknown@example.test", False),
    ("nobody@example.test", "nobody@example.test", False),  # not a user
    ("alice@example.test", "bad address", False),
]


@pytest.mark.parametrize(("user", "address", "expected"), OWNS)
def test_owns(directory: Directory, user: str, address: str, expected: bool) -> None:
    assert directory.owns(user, address) is expected


# --- authenticate --------------------------------------------------------------------------------


async def test_authenticate_returns_canonical_user(directory: Directory) -> None:
    assert await directory.authenticate("alice@example.test", "secret") == "alice@example.test"
    assert await directory.authenticate("BOB@EXAMPLE.TEST", "secret") == "Bob@example.test"


@pytest.mark.parametrize(("login", "password"), [
    ("alice@example.test", "wrong"),
    ("alice@example.test", ""),
    ("alice@example.test", "SECRET"),
    ("nobody@example.test", "secret"),
    ("alice", "secret"),  # full address required
    ("postmaster@example.test", "secret"),  # aliases cannot log in
    ("alice+tag@example.test", "secret"),
    ("x" * 10_000, "secret"),
])
async def test_authenticate_refuses(directory: Directory, login: str, password: str) -> None:
    assert await directory.authenticate(login, password) is None


async def test_authenticate_accepts_scrypt_hash(tmp_path: Path) -> None:
    p = tmp_path / "u.toml"
    p.write_text(f'[users."old@example.test"]\npassword = "{hash_scrypt("pw", ln=10)}"\n')
    d = Directory(_config(tmp_path), UsersFile.load(p))
    assert await d.authenticate("old@example.test", "pw") == "old@example.test"
    assert await d.authenticate("old@example.test", "px") is None


async def test_unknown_user_costs_a_hash_verification(directory: Directory, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailhaven.auth import passwords

    calls: list[str] = []
    real = passwords.verify_sync

    def spy(h: str, pw: str) -> bool:
        calls.append(h)
        return real(h, pw)

    monkeypatch.setattr(passwords, "verify_sync", spy)
    assert await directory.authenticate("nobody@example.test", "secret") is None
    assert len(calls) == 1 and calls[0].startswith("$argon2id$")


# --- the file -----------------------------------------------------------------------------------


def test_missing_file_is_a_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        UsersFile.load(tmp_path / "nope.toml")
    assert "not found" in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize(("content", "needle"), [
    ('[users."alice@example.test"]\npassword = "plain"\n', 'users."alice@example.test".password'),
    ('[users."alice@example.test"]\npassword = 5\n', 'users."alice@example.test".password'),
    ('[users."alice@example.test"]\npasswd = "x"\n', 'users."alice@example.test".passwd: unknown key'),
    ('[users."not an address"]\npassword = "x"\n', 'users."not an address"'),
    ('users = 3\n', "users: expected a table"),
    ('[aliases]\n"a@example.test" = []\n', 'aliases."a@example.test"'),
    ('[aliases]\n"a@example.test" = ["bad address"]\n', 'aliases."a@example.test"[0]'),
    ('[aliases]\n"a@example.test" = [1]\n', 'aliases."a@example.test"'),
    ('[other]\n', "other: unknown key"),
    ('[users\n', "TOML syntax error"),
    (f'[users."a@example.test"]\npassword = "{H}"\n[users."A@example.test"]\npassword = "{H}"\n', "ignore case"),
    (f'[users."a@example.test"]\npassword = "{H}"\n[aliases]\n"a@example.test" = ["b@example.test"]\n',
     "is also a user"),
])
def test_bad_content_is_a_config_error_naming_the_key(tmp_path: Path, content: str, needle: str) -> None:
    p = tmp_path / "u.toml"
    p.write_text(content)
    with pytest.raises(ConfigError) as ei:
        UsersFile.load(p)
    assert needle in str(ei.value)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_edits_round_trip_through_the_file(tmp_path: Path) -> None:
    p = tmp_path / "users.toml"
    with UsersFile.edit(p) as uf:
        assert uf.add_user("Alice@Example.TEST", H) == "Alice@example.test"
        uf.add_user("bob@example.test", H)
        uf.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
        uf.add_alias("pm@example.test", ["bob@example.test"])
    uf = UsersFile.load(p)
    assert uf.list_users() == ["Alice@example.test", "bob@example.test"]
    assert uf.list_aliases() == {"pm@example.test": ["bob@example.test"],
                                 "team@example.test": ["alice@example.test", "bob@example.test"]}
    with UsersFile.edit(p) as uf:
        uf.set_password("ALICE@example.test", hash_password("new"))
        assert uf.delete_user("bob@example.test") == ["pm@example.test", "team@example.test"]
        uf.add_alias("team@example.test", ["carol@example.test"])
    uf = UsersFile.load(p)
    assert uf.list_users() == ["Alice@example.test"]
    assert uf.list_aliases() == {"team@example.test": ["alice@example.test", "carol@example.test"]}
    entry = uf.get_user("alice@example.test")
    assert entry is not None and entry.password != H
    with UsersFile.edit(p) as uf:
        uf.delete_alias("team@example.test", ["carol@example.test"])
        assert uf.get_alias("team@example.test") == ["alice@example.test"]
        uf.delete_alias("team@example.test")
    assert UsersFile.load(p).list_aliases() == {}


def test_edit_errors(tmp_path: Path) -> None:
    uf = UsersFile(tmp_path / "u.toml")
    uf.add_user("a@example.test", H)
    with pytest.raises(ValueError, match="already exists"):
        uf.add_user("A@example.test", H)
    with pytest.raises(ValueError, match="not a supported password hash"):
        uf.add_user("b@example.test", "cleartext")
    with pytest.raises(ValueError, match="no such user"):
        uf.set_password("b@example.test", H)
    with pytest.raises(ValueError, match="no such user"):
        uf.delete_user("b@example.test")
    with pytest.raises(ValueError, match="is a user"):
        uf.add_alias("a@example.test", ["c@example.test"])
    with pytest.raises(ValueError):
        uf.add_alias("x@example.test", [])
    with pytest.raises(ValueError, match="no such alias"):
        uf.delete_alias("x@example.test")
    with pytest.raises(ValueError):
        uf.add_user("bad address", H)
    uf.add_alias("x@example.test", ["a@example.test"])
    with pytest.raises(ValueError, match="is an alias"):
        uf.add_user("X@example.test", H)


def test_failed_edit_block_leaves_file_untouched(tmp_path: Path) -> None:
    p = tmp_path / "users.toml"
    with UsersFile.edit(p) as uf:
        uf.add_user("a@example.test", H)
    before = p.read_bytes()
    with pytest.raises(RuntimeError), UsersFile.edit(p) as uf:
        uf.delete_user("a@example.test")
        raise RuntimeError("abort")
    assert p.read_bytes() == before


def test_saved_file_is_mode_0600_and_no_temp_files_remain(tmp_path: Path) -> None:
    p = tmp_path / "users.toml"
    with UsersFile.edit(p) as uf:
        uf.add_user("a@example.test", H)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert sorted(x.name for x in tmp_path.iterdir()) == ["users.toml", "users.toml.lock"]


@pytest.mark.parametrize("before,after", [(0o644, 0o640), (0o640, 0o640), (0o604, 0o600), (0o600, 0o600)])
def test_save_keeps_the_group_read_bit_and_never_lets_others_read(tmp_path: Path, before: int, after: int) -> None:
    """`init --run-as-user` makes the file root:GROUP 0640 so the server can read it; an edit by
    root must not take that away (it did: every save was 0600, and the server lost its users)."""
    p = tmp_path / "users.toml"
    p.write_text("")
    p.chmod(before)
    with UsersFile.edit(p) as uf:
        uf.add_user("a@example.test", H)
    assert stat.S_IMODE(p.stat().st_mode) == after


def test_save_replaces_atomically(tmp_path: Path) -> None:
    p = tmp_path / "users.toml"
    uf = UsersFile(p)
    uf.add_user("a@example.test", H)
    uf.save()
    ino = p.stat().st_ino
    fd = os.open(p, os.O_RDONLY)  # a reader holding the old file keeps seeing a whole file
    try:
        uf.add_user("b@example.test", H)
        uf.save()
        assert p.stat().st_ino != ino
        old = os.read(fd, 1 << 20).decode()
        assert "a@example.test" in old and "b@example.test" not in old
    finally:
        os.close(fd)
    assert UsersFile.load(p).list_users() == ["a@example.test", "b@example.test"]


def test_strange_characters_survive_a_save(tmp_path: Path) -> None:
    p = tmp_path / "u.toml"
    uf = UsersFile(p)
    uf.add_user('"john \\"jd\\" doe"@example.test', H)
    uf.add_user('"back\\\\slash"@example.test', H)
    uf.add_user("jörg@Bücher.example", H)
    uf.save()
    assert UsersFile.load(p).list_users() == ['"back\\\\slash"@example.test', '"john \\"jd\\" doe"@example.test',
                                              "jörg@xn--bcher-kva.example"]


def test_directory_is_a_snapshot(tmp_path: Path, users_path: Path) -> None:
    uf = UsersFile.load(users_path)
    d = Directory(_config(tmp_path), uf)
    uf.delete_user("alice@example.test")
    assert d.resolve("alice@example.test") == ["alice@example.test"]
    assert Directory(_config(tmp_path), uf).resolve("alice@example.test") is None


# --- role addresses: postmaster@ and abuse@ (issue 11 item 4) -------------------------------------


def _one_domain(tmp_path: Path, users: str, **domain: Any) -> Directory:
    p = tmp_path / "roles.toml"
    p.write_text(users)
    return Directory(_config(tmp_path, domains={"example.test": domain}), UsersFile.load(p))


def test_role_aliases_send_postmaster_to_the_target_and_abuse_to_postmaster(tmp_path: Path) -> None:
    uf = UsersFile(tmp_path / "u.toml")
    uf.add_user("alice@example.test", H)
    assert uf.add_role_aliases("Example.TEST", "alice@example.test") == [
        ("postmaster@example.test", "alice@example.test"), ("abuse@example.test", "postmaster@example.test")]
    assert uf.add_role_aliases("example.test", "bob@example.test") == []  # set once: never overwritten
    assert uf.list_aliases() == {"abuse@example.test": ["postmaster@example.test"],
                                 "postmaster@example.test": ["alice@example.test"]}


@pytest.mark.parametrize("target,expected", [
    ("postmaster@example.test", [("abuse@example.test", "postmaster@example.test")]),
    ("Abuse@example.test", [("postmaster@example.test", "Abuse@example.test")]),
])
def test_role_aliases_never_point_an_address_at_itself(tmp_path: Path, target: str,
                                                       expected: list[tuple[str, str]]) -> None:
    uf = UsersFile(tmp_path / "u.toml")
    uf.add_user(target, H)
    assert uf.add_role_aliases("example.test", target) == expected


def test_role_aliases_leave_existing_users_and_aliases_alone(tmp_path: Path) -> None:
    uf = UsersFile(tmp_path / "u.toml")
    uf.add_user("abuse@example.test", H)
    uf.add_alias("postmaster@example.test", ["abuse@example.test"])
    assert uf.add_role_aliases("example.test", "alice@example.test") == []


def test_postmaster_says_how_it_resolves(tmp_path: Path) -> None:
    older = f'[users."bob@example.test"]\npassword = "{H}"\n[users."alice@example.test"]\npassword = "{H}"\n'
    assert _one_domain(tmp_path, older).postmaster("example.test") == (["alice@example.test"], "first user")
    aliased = older + '[aliases]\n"postmaster@example.test" = ["bob@example.test"]\n'
    assert _one_domain(tmp_path, aliased).postmaster("example.test") == (["bob@example.test"], "alias")
    assert _one_domain(tmp_path, older, catch_all="bob@example.test").postmaster("example.test") == (
        ["bob@example.test"], "catch-all")
    own = f'[users."postmaster@example.test"]\npassword = "{H}"\n'
    assert _one_domain(tmp_path, own).postmaster("example.test") == (["postmaster@example.test"], "user")
    assert _one_domain(tmp_path, "").postmaster("example.test") == (None, "")


def test_role_addresses_reached_only_implicitly_are_warned_about(tmp_path: Path) -> None:
    older = f'[users."alice@example.test"]\npassword = "{H}"\n'
    d = _one_domain(tmp_path, older)
    assert [(r.address, r.fix) for r in d.role_warnings] == [
        ("postmaster@example.test", "alias add postmaster@example.test alice@example.test"),
        ("abuse@example.test", "alias add abuse@example.test postmaster@example.test")]
    assert "implicitly" in d.role_warnings[0].message and "refused" in d.role_warnings[1].message
    assert ("postmaster@example.test is not a user or alias: its mail goes to alice@example.test (the first "
            "user) only implicitly (to make it explicit: mailhaven alias add postmaster@example.test "
            "alice@example.test)") in d.warnings  # what check-config prints and the server logs
    d = _one_domain(tmp_path, older, catch_all="alice@example.test")
    assert [r.message for r in d.role_warnings] == [
        "postmaster@example.test reaches alice@example.test only through the catch-all",
        "abuse@example.test reaches alice@example.test only through the catch-all"]


def test_explicit_role_addresses_and_an_empty_users_file_give_no_role_warning(tmp_path: Path) -> None:
    uf = UsersFile(tmp_path / "u.toml")
    uf.add_user("alice@example.test", H)
    uf.add_role_aliases("example.test", "alice@example.test")
    uf.save()
    assert _one_domain(tmp_path, uf.path.read_text()).role_warnings == []
    assert _one_domain(tmp_path, "").role_warnings == []  # no accounts yet: doctor says that instead


def test_role_aliases_that_forward_to_another_server_are_explicit(tmp_path: Path) -> None:
    text = (f'[users."alice@example.test"]\npassword = "{H}"\n[aliases]\n'
            '"postmaster@example.test" = ["admin@elsewhere.test"]\n"abuse@example.test" = ["admin@elsewhere.test"]\n')
    d = _one_domain(tmp_path, text)
    assert d.postmaster("example.test") == ([], "alias")  # not the first user: the alias forwards it
    assert d.role_warnings == []
