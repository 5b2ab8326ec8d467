"""Properties of the Sieve evaluator: any script that compiles, run over any message, gives a Result
(actions, or the implicit keep and an error), never an exception; :matches agrees with a reference
backtracking matcher."""
from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.sieve import Envelope, Keep, SieveSyntaxError, compile_script, evaluate
from mailhaven.sieve.match import glob_match

REQUIRE = ('require ["fileinto", "envelope", "imap4flags", "copy", "body", "variables", "relational", '
           '"comparator-i;ascii-numeric", "subaddress", "date", "index", "mailbox", "reject", "vacation", '
           '"duplicate", "editheader", "encoded-character"];\n')
keys = st.sampled_from(['"*"', '"a*b?"', '"${1}"', '""', '"x@y"', '"10"', '["a", "*"]', '"${hex:41}"', '"\\\\*"'])
headers = st.sampled_from(['"subject"', '"from"', '"to"', '"date"', '"x-a"', '["to", "cc"]', '"received"'])
match = st.sampled_from(["", ":is", ":contains", ":matches", ':count "ge"', ':value "lt"'])
comparator = st.sampled_from(["", ':comparator "i;octet"', ':comparator "i;ascii-numeric"'])
tests = st.one_of(
    st.builds(lambda c, m, h, k: f"header {c} {m} {h} {k}", comparator, match, headers, keys),
    st.builds(lambda c, m, p, h, k: f"address {c} {m} {p} {h} {k}", comparator, match,
              st.sampled_from(["", ":domain", ":user", ":detail", ":localpart"]), headers, keys),
    st.builds(lambda m, k: f'envelope {m} :detail ["from", "to"] {k}', match, keys),
    st.builds(lambda m, k: f"body {m} {k}", match, keys),
    st.builds(lambda m, z, p, k: f'date {m} {z} "date" "{p}" {k}', match,
              st.sampled_from(["", ":originalzone", ':zone "+2500"', ':zone "-0930"', ':zone "x"', ':zone "+0099"']),
              st.sampled_from(["year", "julian", "std11", "iso8601", "weekday", "zone"]), keys),
    st.builds(lambda k: f'string :matches "${{1}}x" {k}', keys),
    st.just("duplicate"), st.just("true"), st.builds(lambda n: f"size :over {n}", st.integers(0, 500)),
)
actions = st.sampled_from([
    "keep;", "discard;", 'fileinto "${1}";', 'fileinto :copy :flags "a \\\\Seen" "b";', 'redirect "r@x.example";',
    'reject "no";', 'vacation :days 1 "away";', 'addflag "f";', 'removeflag "f";', 'set "v" "${0}";',
    'addheader "X-T" "${1}";', 'deleteheader :matches "subject" "*";', "stop;",
])
scripts = st.lists(st.builds(lambda t, a: f"if {t} {{ {a} }}", tests, actions) | actions, max_size=8).map(
    lambda cmds: REQUIRE + "\n".join(cmds))
lines = st.sampled_from([b"Subject: a*b?c", b"From: \"x y\" <a+b@c.example>", b"To: g: a@b, c@d;, e",
                         b"Date: Mon, 07 Dec 2026 09:59:58 +0100", b"Date: garbage", b"X-A: 10",
                         b"Received: by x; Tue, 1 Jan 2030 00:00:00 -1200", b"Subject: =?utf-8?B?w7w=?=",
                         b"Content-Type: multipart/mixed; boundary=q", b"--q", b"Content-Transfer-Encoding: base64",
                         b"", b"body \xff\xfe", b"=?x?Q?=ZZ?=", b"\tfolded"])
messages = st.lists(lines, max_size=12).map(lambda ls: b"\r\n".join(ls)) | st.binary(max_size=200)


@settings(max_examples=300, deadline=None)
@given(scripts, messages, st.sampled_from(["", "bob@example.org", "a+b@c.example"]))
def test_any_compiled_script_runs_to_a_result(script: str, message: bytes, sender: str) -> None:
    try:
        compiled = compile_script(script)
    except SieveSyntaxError:
        return
    res = evaluate(compiled, message, Envelope(sender, "alice+x@example.com"))
    assert res.actions
    if res.error:
        assert res.actions == [Keep(implicit=True)]


def _reference(value: str, pattern: str) -> list[str] | None:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append("(.*?)" if c == "*" else "(.)" if c == "?" else re.escape(c))
        i += 1
    m = re.fullmatch("".join(out), value, re.DOTALL)
    return None if m is None else list(m.groups())


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="ab*?\\", max_size=8), st.text(alphabet="ab*?\\", max_size=10))
def test_glob_agrees_with_a_backtracking_reference(pattern: str, value: str) -> None:
    assert glob_match(value, pattern) == _reference(value, pattern)
