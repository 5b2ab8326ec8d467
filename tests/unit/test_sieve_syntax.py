"""Sieve lexer, parser and validator (sieve/syntax.py, sieve/validate.py): the grammar of RFC 5228
§8, each extension's arguments, and the line and column of every refusal."""
from __future__ import annotations

import pytest

from mailhaven.sieve import SieveSyntaxError, compile_script
from mailhaven.sieve.syntax import Number, StringList, Tag, parse


def err(text: str) -> tuple[int, int, str]:
    with pytest.raises(SieveSyntaxError) as e:
        compile_script(text)
    return e.value.line, e.value.column, e.value.message


def test_ast_positions_and_argument_kinds() -> None:
    cmds = parse('require "fileinto";\n  if header :contains ["from", "to"] "x" {\n    fileinto "a";\n  }\n')
    assert [c.name for c in cmds] == ["require", "if"]
    assert (cmds[1].line, cmds[1].column) == (2, 3)
    t = cmds[1].tests[0]
    assert (t.name, t.line, t.column) == ("header", 2, 6)
    assert isinstance(t.arguments[0], Tag) and (t.arguments[0].line, t.arguments[0].column) == (2, 13)
    assert isinstance(t.arguments[1], StringList) and t.arguments[1].values == ["from", "to"]
    assert cmds[1].block is not None and (cmds[1].block[0].line, cmds[1].block[0].column) == (3, 5)


def test_numbers_with_quantifiers_and_comments() -> None:
    cmds = parse("# comment\nif size :over 10K /* bracket\n comment */ { stop; }")
    n = cmds[0].tests[0].arguments[1]
    assert isinstance(n, Number) and n.value == 10 * 1024


def test_strings_quoting_and_multiline() -> None:
    cmds = parse('set "a" "q\\"b\\\\c\\d";\nset "b" text: # note\nline1\n..dot\n.\n;')
    assert cmds[0].arguments[1] == StringList(['q"b\\cd'], 1, 9)
    b = cmds[1].arguments[1]
    assert isinstance(b, StringList) and b.values == ["line1\r\n.dot\r\n"]


@pytest.mark.parametrize(("script", "where"), [
    ("keep", (1, 5)),
    ("if true { keep; ", (1, 17)),
    ('"a";', (1, 1)),
    ("keep;\n  fileinto \"x\";", (2, 3)),  # fileinto without require
    ('require "nosuch";', (1, 9)),
    ("keep;\nrequire \"fileinto\";", (2, 1)),  # require after another command
    ("if true {}\nelse {}\nelse {}", (3, 1)),
    ('if header :is :contains "a" "b" {}', (1, 15)),  # two match types
    ('if header :over "a" "b" {}', (1, 11)),  # tag of another test
    ('redirect;', (1, 1)),
    ('redirect ["a", "b"];', (1, 10)),
    ('if header "a" {}', (1, 4)),
    ('if size 100 {}', (1, 4)),
    ('if allof true {}', (1, 4)),
    ('if true { stop; } /* open', (1, 19)),
    ('set "a" "unterminated;', (1, 9)),
    ('if header :comparator "i;nosuch" "a" "b" {}', (1, 23)),
    ('if header :comparator "i;ascii-numeric" "a" "b" {}', (1, 23)),  # needs comparator- require
    ('require "relational"; if header :value "xx" "a" "b" {}', (1, 40)),
    ('require "date"; if date "date" "century" "x" {}', (1, 32)),
    ('require "index"; if header :last "a" "b" {}', (1, 21)),
    ('require "variables"; set "1bad" "x";', (1, 26)),
    ('require "vacation"; vacation :seconds 5 "x";', (1, 30)),  # vacation-seconds not required
    ('require "imap4flags"; keep :flags 5;', (1, 28)),
    ('require ["encoded-character"]; keep; redirect "${unicode:D800}@x";', (1, 47)),
    ("keep; }", (1, 7)),
    ('if address ["to", "subject"] "x" {}', (1, 12)),  # RFC 5228 §5.1: address headers only
    ('redirect "not an address";', (1, 10)),
    ('require "editheader";\naddheader "Bad Name" "x";', (2, 11)),
    ("x!", (1, 2)),
])
def test_errors_have_line_and_column(script: str, where: tuple[int, int]) -> None:
    line, col, _ = err(script)
    assert (line, col) == where


def test_utf8_errors_point_at_the_bad_byte() -> None:
    with pytest.raises(SieveSyntaxError) as e:
        compile_script(b'keep;\n# \xc3\xa9 ok\nset \xff')
    assert (e.value.line, e.value.column) == (3, 5)


def test_every_extension_validates() -> None:
    script = compile_script('''require ["fileinto", "envelope", "encoded-character", "imap4flags", "copy", "body",
  "variables", "relational", "comparator-i;ascii-numeric", "subaddress", "date", "index", "mailbox",
  "reject", "ereject", "vacation", "vacation-seconds", "include", "duplicate", "editheader"];
if envelope :detail "to" "x" { fileinto :copy :create :flags "\\\\Seen" "a"; }
if body :content "text" :contains "x" { addflag "f"; }
if header :count "ge" :comparator "i;ascii-numeric" "received" "3" { ereject "no"; }
if date :zone "+0100" :index 1 :last "date" "year" "2026" { set :upper "v" "${hex:41}"; }
if duplicate :seconds 60 :header "x-id" { deleteheader :index 1 :matches "x" "*"; }
if mailboxexists "a" { addheader :last "X-A" "b"; }
include :global :once :optional "base"; global "g"; return;
vacation :seconds 3600 :from "a@b" :addresses ["c@d"] :mime :handle "h" :subject "s" "r";
''')
    assert "editheader" in script.required and "vacation" in script.required
    rs = script.commands[1]
    assert rs.name == "if" and rs.tests[0].tags["detail"] is None


def test_encoded_character_only_when_required() -> None:
    a = compile_script('require "variables"; set "a" "${hex:41 42}";').commands[1].positional[1]
    b = compile_script('require ["variables", "encoded-character"]; set "a" "${hex:41 42}${unicode:263a}${hex:zz}";'
                       ).commands[1].positional[1]
    assert isinstance(a, StringList) and a.single == "${hex:41 42}"
    assert isinstance(b, StringList) and b.single == "AB\u263a${hex:zz}"


def test_script_size_limit() -> None:
    with pytest.raises(SieveSyntaxError):
        compile_script("keep;" * 100, max_size=50)
