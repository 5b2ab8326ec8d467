"""Properties of the Sieve parser and validator: random scripts from a small grammar, and arbitrary
bytes, either compile or raise SieveSyntaxError at a position inside the text, never anything else."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.sieve import SieveSyntaxError, compile_script
from mailhaven.sieve.syntax import parse

strings = st.sampled_from(['"a"', '"x@y"', '"\\"q"', '["a", "b"]', '[]', '"${1}"', 'text:\nx\n.\n', '"*?"'])
tags = st.sampled_from([":is", ":contains", ":matches", ":copy", ":flags", ":over", ":count", ":value",
                        ":comparator", ":domain", ":index", ":last", ":x"])
idents = st.sampled_from(["keep", "stop", "discard", "fileinto", "redirect", "if", "elsif", "else", "require",
                          "header", "address", "true", "false", "not", "anyof", "allof", "size", "set",
                          "exists", "vacation", "include", "bogus"])
tokens = st.one_of(strings, tags, idents, st.sampled_from(["1", "10K", "99999999999999999999", ";", ",", "(",
                                                           ")", "{", "}", "[", "]", "#c\n", "/*c*/", "\n"]))
scripts = st.lists(tokens, max_size=30).map(" ".join)
prefix = 'require ["fileinto", "copy", "imap4flags", "relational", "variables", "vacation", "include", "index"];\n'


def _check(text: str | bytes) -> None:
    try:
        compile_script(text)
    except SieveSyntaxError as e:
        decoded = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        lines = decoded.split("\n")
        assert 1 <= e.line <= len(lines)
        assert 1 <= e.column <= len(lines[e.line - 1]) + 1


@settings(max_examples=400, deadline=None)
@given(scripts)
def test_random_scripts_parse_or_fail_cleanly(text: str) -> None:
    _check(text)
    _check(prefix + text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    _check(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["if true {", "}", "keep;", "anyof(true,", ")", "not"]), max_size=200))
def test_deep_nesting_is_bounded(parts: list[str]) -> None:
    try:
        parse("".join(parts))
    except SieveSyntaxError:
        pass
