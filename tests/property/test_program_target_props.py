"""Properties of program alias targets (auth/users.py program_argv, canonical_target): nothing but
ValueError on any input, an absolute command when accepted, stable storage, and a users file
round trip (TOML escaping) that gives back the same argv."""

from __future__ import annotations

import shlex
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailhaven.auth.users import UsersFile, canonical_target, program_argv

chars = st.sampled_from(list("|/ \t'\"\\$;&`*?~#abc09\x00\n\x7fé") + ["/bin/sh", " -c ", "''"])
text = st.lists(chars, max_size=30).map("".join)
printable = st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\x7f")
words = st.lists(st.text(alphabet=printable, min_size=1, max_size=12), min_size=0, max_size=4)


@given(text)
@settings(max_examples=400)
@example("|")
@example("|'unterminated")
@example("| /bin/true ; rm -rf /")
def test_any_text_is_a_program_or_a_value_error(target: str) -> None:
    try:
        argv = program_argv(target)
    except ValueError:
        return
    assert argv and argv[0].startswith("/")
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in "".join(argv))
    stored = canonical_target(target)
    assert canonical_target(stored) == stored and program_argv(stored) == argv


@given(st.text(alphabet=printable.filter(lambda c: c != " "), min_size=1, max_size=12), words)
@settings(max_examples=100, deadline=None)
def test_a_program_survives_the_users_file(tmp_path_factory: object, name: str, args: list[str]) -> None:
    argv = ["/usr/local/bin/" + name, *args]
    target = "|" + shlex.join(argv)
    path = Path(getattr(tmp_path_factory, "mktemp")("u")) / "users.toml"  # noqa: B009
    uf = UsersFile(path)
    uf.add_alias("run@example.test", [target])
    uf.save()
    [stored] = UsersFile.load(path).get_alias("run@example.test") or []
    assert program_argv(stored) == argv
