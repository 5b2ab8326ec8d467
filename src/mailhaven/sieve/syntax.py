"""Sieve script syntax: lexer, parser and AST (RFC 5228 §2, §8).

Owns: turning script text into a tree of `Command`s and `Test`s whose every node and argument carries
the line and column (1-based, in characters) where it starts, and `SieveSyntaxError(line, column,
message)` for anything the grammar of RFC 5228 §8 refuses. Strings are kept as written after quoting
is undone (§2.4.2); `${...}` is left in place for encoded-character and variables to read later.

Does not own: which commands exist and what arguments they take (validate.py), running a script
(interp.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_NESTING = 64  # blocks and test lists inside each other (Pigeonhole: sieve_max_nesting... 32)


class SieveSyntaxError(Exception):
    """A script the grammar or the validator refuses, at `line`:`column` (both 1-based)."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column
        self.message = message


@dataclass(slots=True)
class Tag:
    name: str  # without the colon, lower-cased (RFC 5228 §2.6.2: case-insensitive)
    line: int
    column: int


@dataclass(slots=True)
class Number:
    value: int
    line: int
    column: int


@dataclass(slots=True)
class StringList:
    values: list[str]
    line: int
    column: int
    is_list: bool = False  # written in brackets

    @property
    def single(self) -> str:
        return self.values[0]


Argument = Tag | Number | StringList


@dataclass(slots=True)
class Test:
    name: str  # lower-cased identifier
    arguments: list[Argument]
    tests: list[Test]
    line: int
    column: int
    test_list: bool = False  # the tests were written in parentheses
    tags: dict[str, Argument | None] = field(default_factory=dict)  # filled in by validate.py
    positional: list[Argument] = field(default_factory=list)


@dataclass(slots=True)
class Command:
    name: str
    arguments: list[Argument]
    tests: list[Test]
    block: list[Command] | None
    line: int
    column: int
    test_list: bool = False
    # filled in by validate.py: tag name -> its argument (or None); the positional arguments
    tags: dict[str, Argument | None] = field(default_factory=dict)
    positional: list[Argument] = field(default_factory=list)


@dataclass(slots=True)
class Token:
    kind: str  # "id" "tag" "num" "str" "strml" "punct" "eof"
    value: str | int
    line: int
    column: int


_NUMBER = re.compile(r"[0-9]+([KkMmGg]?)")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUANT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MAX_NUMBER = (1 << 63) - 1


class _Lexer:
    """RFC 5228 §8.1 lexical tokens, with positions."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.line_start = 0

    def _err(self, message: str, pos: int | None = None) -> SieveSyntaxError:
        p = self.pos if pos is None else pos
        line = self.text.count("\n", 0, p) + 1
        col = p - (self.text.rfind("\n", 0, p) + 1) + 1
        return SieveSyntaxError(line, col, message)

    def _where(self, pos: int) -> tuple[int, int]:
        line = self.text.count("\n", 0, pos) + 1
        return line, pos - (self.text.rfind("\n", 0, pos) + 1) + 1

    def _skip(self) -> None:
        t = self.text
        while self.pos < len(t):
            c = t[self.pos]
            if c in " \t\r\n":
                self.pos += 1
            elif c == "#":  # hash-comment (§2.3)
                nl = t.find("\n", self.pos)
                self.pos = len(t) if nl < 0 else nl + 1
            elif t.startswith("/*", self.pos):  # bracket-comment, not nested (§2.3)
                end = t.find("*/", self.pos + 2)
                if end < 0:
                    raise self._err("unterminated /* comment")
                self.pos = end + 2
            else:
                return

    def tokens(self) -> list[Token]:
        out: list[Token] = []
        t = self.text
        while True:
            self._skip()
            start = self.pos
            line, col = self._where(start)
            if start >= len(t):
                out.append(Token("eof", "", line, col))
                return out
            c = t[start]
            if c in ";,()[]{}":
                self.pos += 1
                out.append(Token("punct", c, line, col))
            elif c == '"':
                out.append(Token("str", self._quoted(), line, col))
            elif c == ":":
                m = _IDENT.match(t, start + 1)
                if not m:
                    raise self._err("':' not followed by a tag name")
                self.pos = m.end()
                out.append(Token("tag", m.group(0).lower(), line, col))
            elif c.isdigit() and c in "0123456789":
                m = _NUMBER.match(t, start)
                assert m is not None
                self.pos = m.end()
                digits = m.group(0)[:len(m.group(0)) - len(m.group(1))]
                value = int(digits) * _QUANT[m.group(1).lower()]
                if value > MAX_NUMBER:
                    raise self._err("number too large", start)
                if self.pos < len(t) and (t[self.pos].isalnum() or t[self.pos] == "_"):
                    raise self._err("bad number", start)
                out.append(Token("num", value, line, col))
            elif t.startswith("text:", start) or (t[start:start + 5].lower() == "text:"):
                self.pos = start + 5
                out.append(Token("str", self._multiline(), line, col))
            elif _IDENT.match(t, start):
                m = _IDENT.match(t, start)
                assert m is not None
                self.pos = m.end()
                out.append(Token("id", m.group(0).lower(), line, col))
            else:
                raise self._err(f"unexpected character {c!r}")

    def _quoted(self) -> str:
        """quoted-string (§2.4.2): backslash-quote and backslash-backslash; any other backslash is
        dropped and the next character kept."""
        t = self.text
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(t):
                raise self._err("unterminated string", start)
            c = t[self.pos]
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\":
                if self.pos + 1 >= len(t):
                    raise self._err("unterminated string", start)
                out.append(t[self.pos + 1])
                self.pos += 2
                continue
            if c == "\r" and not t.startswith("\r\n", self.pos):
                raise self._err("bare CR in string")
            out.append(c)
            self.pos += 1

    def _multiline(self) -> str:
        """multi-line (§2.4.2, §8.1): `text:` then blanks and an optional hash comment to the line
        end, lines with leading dots doubled, ended by a line with a single dot."""
        t = self.text
        while self.pos < len(t) and t[self.pos] in " \t":
            self.pos += 1
        if t.startswith("#", self.pos):
            nl = t.find("\n", self.pos)
            self.pos = len(t) if nl < 0 else nl
        if t.startswith("\r\n", self.pos):
            self.pos += 2
        elif t.startswith("\n", self.pos):
            self.pos += 1
        else:
            raise self._err("text: must be followed by the end of the line")
        lines: list[str] = []
        while True:
            if self.pos >= len(t):
                raise self._err("unterminated text: (no line with a single '.')")
            nl = t.find("\n", self.pos)
            end = len(t) if nl < 0 else nl + 1
            raw = t[self.pos:end]
            body = raw.rstrip("\n").rstrip("\r")
            self.pos = end
            if body == ".":
                return "".join(lines)
            if body.startswith(".."):
                raw = raw[1:]  # dot-stuffing
            lines.append(raw.replace("\r\n", "\n").replace("\n", "\r\n"))


class _Parser:
    """RFC 5228 §8.2 grammar."""

    def __init__(self, tokens: list[Token]) -> None:
        self.toks = tokens
        self.i = 0
        self.depth = 0

    def _peek(self) -> Token:
        return self.toks[self.i]

    def _next(self) -> Token:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    @staticmethod
    def _err(tok: Token, message: str) -> SieveSyntaxError:
        return SieveSyntaxError(tok.line, tok.column, message)

    def _is(self, value: str) -> bool:
        tok = self._peek()
        return tok.kind == "punct" and tok.value == value

    def _describe(self, tok: Token) -> str:
        return "end of script" if tok.kind == "eof" else repr(str(tok.value)) if tok.kind != "str" else "a string"

    def commands(self, top: bool) -> list[Command]:
        out: list[Command] = []
        while True:
            tok = self._peek()
            if tok.kind == "eof":
                if not top:
                    raise self._err(tok, "missing '}'")
                return out
            if tok.kind == "punct" and tok.value == "}" and not top:
                return out
            if tok.kind != "id":
                raise self._err(tok, f"expected a command, found {self._describe(tok)}")
            out.append(self.command())

    def command(self) -> Command:
        tok = self._next()
        args, tests, listed = self.arguments()
        end = self._peek()
        if end.kind == "punct" and end.value == ";":
            self._next()
            block: list[Command] | None = None
        elif end.kind == "punct" and end.value == "{":
            self._next()
            self._enter(end)
            block = self.commands(top=False)
            self.depth -= 1
            self._next()  # the "}"
        else:
            raise self._err(end, f"expected ';' or '{{' after {tok.value}, found {self._describe(end)}")
        return Command(str(tok.value), args, tests, block, tok.line, tok.column, listed)

    def _enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self._err(tok, "nested too deeply")

    def arguments(self) -> tuple[list[Argument], list[Test], bool]:
        args: list[Argument] = []
        while True:
            tok = self._peek()
            if tok.kind == "tag":
                self._next()
                args.append(Tag(str(tok.value), tok.line, tok.column))
            elif tok.kind == "num":
                self._next()
                args.append(Number(int(tok.value), tok.line, tok.column))
            elif tok.kind in ("str", "strml"):
                self._next()
                args.append(StringList([str(tok.value)], tok.line, tok.column))
            elif tok.kind == "punct" and tok.value == "[":
                args.append(self.string_list())
            else:
                break
        tok = self._peek()
        if tok.kind == "id":
            return args, [self.test()], False
        if tok.kind == "punct" and tok.value == "(":
            self._next()
            self._enter(tok)
            tests = [self.test()]
            while self._is(","):
                self._next()
                tests.append(self.test())
            close = self._next()
            if not (close.kind == "punct" and close.value == ")"):
                raise self._err(close, f"expected ',' or ')' in test list, found {self._describe(close)}")
            self.depth -= 1
            return args, tests, True
        return args, [], False

    def string_list(self) -> StringList:
        open_ = self._next()
        values: list[str] = []
        while True:
            tok = self._next()
            if tok.kind != "str":
                raise self._err(tok, f"expected a string in the list, found {self._describe(tok)}")
            values.append(str(tok.value))
            sep = self._next()
            if sep.kind == "punct" and sep.value == "]":
                return StringList(values, open_.line, open_.column, is_list=True)
            if not (sep.kind == "punct" and sep.value == ","):
                raise self._err(sep, f"expected ',' or ']' in string list, found {self._describe(sep)}")

    def test(self) -> Test:
        tok = self._next()
        if tok.kind != "id":
            raise self._err(tok, f"expected a test, found {self._describe(tok)}")
        self._enter(tok)
        args, tests, listed = self.arguments()
        self.depth -= 1
        return Test(str(tok.value), args, tests, tok.line, tok.column, listed)


def parse(script: str | bytes) -> list[Command]:
    """The commands of `script`, or SieveSyntaxError. Bytes must be UTF-8 (RFC 5228 §2.1)."""
    if isinstance(script, bytes):
        try:
            text = script.decode("utf-8")
        except UnicodeDecodeError as e:
            lex = _Lexer(script[:e.start].decode("utf-8"))
            lex.pos = len(lex.text)
            raise lex._err("script is not valid UTF-8") from None
    else:
        text = script
    if "\x00" in text:
        raise _Lexer(text)._err("NUL in script", text.index("\x00"))
    return _Parser(_Lexer(text).tokens()).commands(top=True)
