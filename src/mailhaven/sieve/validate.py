"""Sieve validation: which commands and tests exist, what arguments they take, and what they need
`require`d (RFC 5228 §2.6-§5, §3.2, and the grammar of each supported extension).

Owns: the table of command and test signatures; splitting each node's arguments into tagged
arguments (`node.tags`) and positional ones (`node.positional`); refusing unknown commands, tags
given twice or from the same group, wrong argument types and counts, misplaced `require`/`elsif`/
`else`, extensions used but not required, unknown comparators, relational operators and date parts;
decoding `${hex:..}`/`${unicode:..}` when `encoded-character` is required (RFC 5228 §2.4.2.4).
Every refusal is a `SieveSyntaxError` at the offending node or argument.

Does not own: the grammar (syntax.py), what the commands do (interp.py).
"""
from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass, field

from mailhaven.message.address import parse_mailbox
from mailhaven.sieve.actions import ScriptLoader
from mailhaven.sieve.syntax import Argument, Command, Number, SieveSyntaxError, StringList, Tag, Test, parse

EXTENSIONS = frozenset({
    "fileinto", "envelope", "encoded-character", "imap4flags", "copy", "body", "variables", "relational",
    "comparator-i;ascii-numeric", "comparator-i;octet", "comparator-i;ascii-casemap", "subaddress", "date",
    "index", "mailbox", "reject", "ereject", "vacation", "vacation-seconds", "include", "duplicate",
    "editheader",
})
COMPARATORS = {"i;octet": None, "i;ascii-casemap": None, "i;ascii-numeric": "comparator-i;ascii-numeric"}
RELATIONAL_OPS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})  # RFC 5231 §4
DATE_PARTS = frozenset({"year", "month", "day", "date", "julian", "hour", "minute", "second", "time",
                        "iso8601", "std11", "zone", "weekday"})  # RFC 5260 §4.2
SET_MODIFIERS = {"lower": 40, "upper": 40, "lowerfirst": 30, "upperfirst": 30, "quotewildcard": 20,
                 "length": 10}  # RFC 5229 §4.1 precedence

S, SL, N = "string", "strings", "number"


@dataclass(frozen=True, slots=True)
class TagSpec:
    arg: str | None = None  # kind of the tag's argument, if it takes one
    ext: str | None = None  # extension that must be required to use the tag
    group: str | None = None  # at most one tag of a group per node


_COMPARATOR = {"comparator": TagSpec(S, group="comparator")}
_MATCH = {"is": TagSpec(group="match"), "contains": TagSpec(group="match"),
          "matches": TagSpec(group="match"),
          "count": TagSpec(S, "relational", "match"), "value": TagSpec(S, "relational", "match")}
_ADDRESS = {"all": TagSpec(group="address"), "localpart": TagSpec(group="address"),
            "domain": TagSpec(group="address"), "user": TagSpec(None, "subaddress", "address"),
            "detail": TagSpec(None, "subaddress", "address")}
_INDEX = {"index": TagSpec(N, "index"), "last": TagSpec(None, "index")}


@dataclass(frozen=True, slots=True)
class Sig:
    ext: str | None
    positional: tuple[str, ...] = ()
    optional_first: bool = False  # the first positional argument may be left out
    optional_last: bool = False  # the last positional argument may be left out
    tags: dict[str, TagSpec] = field(default_factory=dict)
    tests: str = "none"  # "none", "one", "list"
    block: bool = False


COMMANDS: dict[str, Sig] = {
    "require": Sig(None, (SL,)),
    "if": Sig(None, tests="one", block=True),
    "elsif": Sig(None, tests="one", block=True),
    "else": Sig(None, block=True),
    "stop": Sig(None),
    "keep": Sig(None, tags={"flags": TagSpec(SL, "imap4flags")}),
    "discard": Sig(None),
    "redirect": Sig(None, (S,), tags={"copy": TagSpec(None, "copy")}),
    "fileinto": Sig("fileinto", (S,), tags={"copy": TagSpec(None, "copy"), "flags": TagSpec(SL, "imap4flags"),
                                            "create": TagSpec(None, "mailbox")}),
    "reject": Sig("reject", (S,)),
    "ereject": Sig("ereject", (S,)),
    "setflag": Sig("imap4flags", (S, SL), optional_first=True),
    "addflag": Sig("imap4flags", (S, SL), optional_first=True),
    "removeflag": Sig("imap4flags", (S, SL), optional_first=True),
    "set": Sig("variables", (S, S), tags={m: TagSpec() for m in SET_MODIFIERS}),
    "vacation": Sig("vacation", (S,), tags={
        "days": TagSpec(N, group="period"), "seconds": TagSpec(N, "vacation-seconds", "period"),
        "subject": TagSpec(S), "from": TagSpec(S), "addresses": TagSpec(SL), "mime": TagSpec(),
        "handle": TagSpec(S)}),
    "include": Sig("include", (S,), tags={"personal": TagSpec(group="location"),
                                          "global": TagSpec(group="location"), "once": TagSpec(),
                                          "optional": TagSpec()}),
    "return": Sig("include"),
    "global": Sig("include", (SL,)),
    "addheader": Sig("editheader", (S, S), tags={"last": TagSpec()}),
    "deleteheader": Sig("editheader", (S, SL), optional_last=True,
                        tags={**_COMPARATOR, **_MATCH, **_INDEX}),
}

TESTS: dict[str, Sig] = {
    "address": Sig(None, (SL, SL), tags={**_COMPARATOR, **_ADDRESS, **_MATCH, **_INDEX}),
    "envelope": Sig("envelope", (SL, SL), tags={**_COMPARATOR, **_ADDRESS, **_MATCH}),
    "header": Sig(None, (SL, SL), tags={**_COMPARATOR, **_MATCH, **_INDEX}),
    "exists": Sig(None, (SL,)),
    "size": Sig(None, (N,), tags={"over": TagSpec(group="size"), "under": TagSpec(group="size")}),
    "true": Sig(None), "false": Sig(None),
    "not": Sig(None, tests="one"),
    "allof": Sig(None, tests="list"), "anyof": Sig(None, tests="list"),
    "body": Sig("body", (SL,), tags={**_COMPARATOR, **_MATCH, "raw": TagSpec(group="transform"),
                                     "content": TagSpec(SL, group="transform"),
                                     "text": TagSpec(group="transform")}),
    "string": Sig("variables", (SL, SL), tags={**_COMPARATOR, **_MATCH}),
    "hasflag": Sig("imap4flags", (SL, SL), optional_first=True, tags={**_COMPARATOR, **_MATCH}),
    "date": Sig("date", (S, S, SL), tags={**_COMPARATOR, **_MATCH, **_INDEX,
                                          "zone": TagSpec(S, group="zone"),
                                          "originalzone": TagSpec(group="zone")}),
    "currentdate": Sig("date", (S, SL), tags={**_COMPARATOR, **_MATCH, "zone": TagSpec(S)}),
    "mailboxexists": Sig("mailbox", (SL,)),
    "duplicate": Sig("duplicate", (), tags={"handle": TagSpec(S), "header": TagSpec(S, group="id"),
                                            "uniqueid": TagSpec(S, group="id"),
                                            "seconds": TagSpec(N), "last": TagSpec()}),
}


# RFC 5228 §5.1: the address test only reads fields that hold addresses: RFC 5322's, plus the
# common non-standard ones (the set Pigeonhole allows).
ADDRESS_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "sender", "resent-from", "resent-to", "reply-to", "resent-reply-to",
    "resent-sender", "resent-cc", "resent-bcc", "for-approval", "for-handling", "for-comment", "apparently-to",
    "errors-to", "delivered-to", "return-receipt-to", "x-admin", "read-receipt-to", "x-confirm-reading-to",
    "return-receipt-requested", "registered-mail-reply-requested-by", "mail-followup-to", "mail-reply-to",
    "abuse-reports-to", "x-complaints-to", "x-report-abuse-to", "x-beenthere",
})
HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 §3.6.8 ftext


def address_spec(text: str) -> str | None:
    """The addr-spec of a redirect or vacation :from address (`a@b`, `<a@b>` or `Name <a@b>`),
    or None when it is not a valid mailbox (RFC 5228 §4.2, RFC 5230 §4.4)."""
    _name, addr = email.utils.parseaddr(text)
    if not addr:
        return None
    try:
        parse_mailbox(addr)
    except ValueError:
        return None
    return addr


def _kind_ok(arg: Argument, kind: str) -> bool:
    if kind == N:
        return isinstance(arg, Number)
    if kind == S:
        return isinstance(arg, StringList) and len(arg.values) == 1 and not arg.is_list
    return isinstance(arg, StringList)


_KIND_NAME = {N: "a number", S: "a string", SL: "a string list"}
_ENCODED = re.compile(r"\$\{(hex|unicode):([^}]*)\}", re.IGNORECASE)


def _decode_encoded(text: str, arg: StringList) -> str:
    """RFC 5228 §2.4.2.4 encoded-character: ${hex:..} and ${unicode:..}; a malformed one stays as
    written; a code point outside Unicode scalar values is an error."""
    def one(m: re.Match[str]) -> str:
        body = m.group(2).strip(" \t\r\n")
        items = body.split() if body else []
        if not items or any(not re.fullmatch(r"[0-9A-Fa-f]+", i) for i in items):
            return m.group(0)
        if m.group(1).lower() == "hex":
            if any(len(i) > 2 for i in items):
                return m.group(0)
            return bytes(int(i, 16) for i in items).decode("utf-8", "replace")
        out = []
        for i in items:
            cp = int(i, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise SieveSyntaxError(arg.line, arg.column, f"invalid unicode character in ${{unicode:{i}}}")
            out.append(chr(cp))
        return "".join(out)
    return _ENCODED.sub(one, text)


class _Validator:
    def __init__(self, extensions: frozenset[str]) -> None:
        self.allowed = extensions
        self.required: set[str] = set()

    def _need(self, ext: str | None, line: int, column: int, what: str) -> None:
        if ext is not None and ext not in self.required:
            raise SieveSyntaxError(line, column, f"{what} requires the extension \"{ext}\" (missing require)")

    def block(self, cmds: list[Command], top: bool) -> None:
        prev: str | None = None
        seen_other = False
        for cmd in cmds:
            if cmd.name == "require":
                if not top or seen_other:  # RFC 5228 §3.2: require only at the start
                    raise SieveSyntaxError(cmd.line, cmd.column, "require must come before any other command")
            else:
                seen_other = True
            if cmd.name in ("elsif", "else") and prev not in ("if", "elsif"):
                raise SieveSyntaxError(cmd.line, cmd.column, f"{cmd.name} without a preceding if")
            self.command(cmd)
            prev = cmd.name

    def command(self, cmd: Command) -> None:
        sig = COMMANDS.get(cmd.name)
        if sig is None:
            raise SieveSyntaxError(cmd.line, cmd.column, f"unknown command '{cmd.name}'")
        self._need(sig.ext, cmd.line, cmd.column, f"command '{cmd.name}'")
        tags, pos = self._arguments(cmd.name, sig, cmd.arguments, cmd.line, cmd.column)
        cmd.tags, cmd.positional = tags, pos
        self._tests(cmd.name, sig, cmd.tests, cmd.test_list, cmd.line, cmd.column)
        if sig.block and cmd.block is None:
            raise SieveSyntaxError(cmd.line, cmd.column, f"{cmd.name} needs a block")
        if not sig.block and cmd.block is not None:
            raise SieveSyntaxError(cmd.line, cmd.column, f"{cmd.name} takes no block")
        if cmd.name == "require":
            for name in pos[0].values if isinstance(pos[0], StringList) else []:
                if name not in self.allowed:
                    raise SieveSyntaxError(pos[0].line, pos[0].column, f"unknown extension \"{name}\"")
                self.required.add(name)
            if "vacation-seconds" in self.required:
                self.required.add("vacation")  # RFC 6131 §2: implies vacation
        self._specific(cmd.name, tags, pos, cmd.line, cmd.column)
        for t in cmd.tests:
            self.test(t)
        if cmd.block is not None:
            self.block(cmd.block, top=False)

    def test(self, test: Test) -> None:
        sig = TESTS.get(test.name)
        if sig is None:
            raise SieveSyntaxError(test.line, test.column, f"unknown test '{test.name}'")
        self._need(sig.ext, test.line, test.column, f"test '{test.name}'")
        tags, pos = self._arguments(test.name, sig, test.arguments, test.line, test.column)
        test.tags, test.positional = tags, pos
        self._tests(test.name, sig, test.tests, test.test_list, test.line, test.column)
        self._specific(test.name, tags, pos, test.line, test.column)
        for t in test.tests:
            self.test(t)

    @staticmethod
    def _tests(name: str, sig: Sig, tests: list[Test], listed: bool, line: int, column: int) -> None:
        if sig.tests == "none" and tests:
            raise SieveSyntaxError(tests[0].line, tests[0].column, f"{name} takes no test")
        if sig.tests == "one" and (len(tests) != 1 or listed):
            raise SieveSyntaxError(line, column, f"{name} needs exactly one test")
        if sig.tests == "list" and (not tests or not listed):
            raise SieveSyntaxError(line, column, f"{name} needs a test list in parentheses")

    def _arguments(self, name: str, sig: Sig, args: list[Argument], line: int,
                   column: int) -> tuple[dict[str, Argument | None], list[Argument]]:
        tags: dict[str, Argument | None] = {}
        groups: dict[str, str] = {}
        pos: list[Argument] = []
        i = 0
        while i < len(args):
            a = args[i]
            i += 1
            if not isinstance(a, Tag):
                pos.append(a)
                continue
            if pos:  # RFC 5228 §2.6.2: tagged arguments precede positional ones
                raise SieveSyntaxError(a.line, a.column, f"tag :{a.name} after positional arguments of {name}")
            spec = sig.tags.get(a.name)
            if spec is None:
                raise SieveSyntaxError(a.line, a.column, f"unknown tag :{a.name} for {name}")
            self._need(spec.ext, a.line, a.column, f"tag :{a.name}")
            if a.name in tags:
                raise SieveSyntaxError(a.line, a.column, f"tag :{a.name} given twice")
            if spec.group is not None:
                if spec.group in groups:
                    raise SieveSyntaxError(a.line, a.column,
                                           f"tag :{a.name} conflicts with :{groups[spec.group]}")
                groups[spec.group] = a.name
            value: Argument | None = None
            if spec.arg is not None:
                if i >= len(args) or not _kind_ok(args[i], spec.arg):
                    raise SieveSyntaxError(a.line, a.column, f"tag :{a.name} needs {_KIND_NAME[spec.arg]}")
                value = args[i]
                i += 1
            tags[a.name] = value
        want = list(sig.positional)
        if sig.optional_first and len(pos) == len(want) - 1:
            want = want[1:]
        elif sig.optional_last and len(pos) == len(want) - 1:
            want = want[:-1]
        if len(pos) != len(want):
            raise SieveSyntaxError(line, column, f"{name} takes {len(want)} positional argument(s), got {len(pos)}")
        for a, kind in zip(pos, want, strict=True):
            if not _kind_ok(a, kind):
                raise SieveSyntaxError(a.line, a.column, f"{name}: expected {_KIND_NAME[kind]}")
        if "encoded-character" in self.required:
            for a in list(pos) + [v for v in tags.values() if v is not None]:
                if isinstance(a, StringList):
                    a.values = [_decode_encoded(v, a) for v in a.values]
        return tags, pos

    def _specific(self, name: str, tags: dict[str, Argument | None], pos: list[Argument],
                  line: int, column: int) -> None:
        comp = tags.get("comparator")
        if isinstance(comp, StringList):
            cname = comp.single.lower()
            if cname not in COMPARATORS:
                raise SieveSyntaxError(comp.line, comp.column, f"unknown comparator \"{comp.single}\"")
            self._need(COMPARATORS[cname], comp.line, comp.column, f"comparator {cname}")
        for rel in ("count", "value"):
            op = tags.get(rel)
            if isinstance(op, StringList) and op.single.lower() not in RELATIONAL_OPS:
                raise SieveSyntaxError(op.line, op.column, f"unknown relational operator \"{op.single}\"")
        if "last" in tags and "index" not in tags and name not in ("duplicate", "addheader"):
            raise SieveSyntaxError(line, column, ":last needs :index")  # RFC 5260 §6
        idx = tags.get("index")
        if isinstance(idx, Number) and idx.value < 1:
            raise SieveSyntaxError(idx.line, idx.column, ":index must be 1 or more")
        if name in ("date", "currentdate"):
            part = pos[-2]
            if isinstance(part, StringList) and part.single.lower() not in DATE_PARTS and \
                    ("variables" not in self.required or "${" not in part.single):
                raise SieveSyntaxError(part.line, part.column, f"unknown date part \"{part.single}\"")
        if name == "size" and not tags:
            raise SieveSyntaxError(line, column, "size needs :over or :under")
        if name == "set":
            var = pos[0]
            if isinstance(var, StringList) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*",
                                                                var.single):
                raise SieveSyntaxError(var.line, var.column, f"invalid variable name \"{var.single}\"")
        if name == "envelope":
            parts = pos[0]
            if isinstance(parts, StringList):
                for p in parts.values:
                    if p.lower() not in ("from", "to"):
                        raise SieveSyntaxError(parts.line, parts.column, f"unknown envelope part \"{p}\"")
        constant = "variables" not in self.required
        def fixed(a: Argument | None) -> StringList | None:
            ok = isinstance(a, StringList) and (constant or "${" not in a.single)
            return a if ok and isinstance(a, StringList) else None
        if name == "redirect" and (a := fixed(pos[0])) is not None and address_spec(a.single) is None:
            raise SieveSyntaxError(a.line, a.column, f"redirect: invalid address \"{a.single}\"")
        if name == "vacation" and (a := fixed(tags.get("from"))) is not None and address_spec(a.single) is None:
            raise SieveSyntaxError(a.line, a.column, f"vacation: invalid :from address \"{a.single}\"")
        if name in ("addheader", "deleteheader") and (a := fixed(pos[0])) is not None and \
                not HEADER_NAME.fullmatch(a.single):
            raise SieveSyntaxError(a.line, a.column, f"{name}: invalid header field name \"{a.single}\"")
        if name == "address" and isinstance(pos[0], StringList):
            for h in pos[0].values:
                if h.lower() not in ADDRESS_HEADERS and (constant or "${" not in h):
                    raise SieveSyntaxError(pos[0].line, pos[0].column,
                                           f"header \"{h}\" holds no addresses: not allowed in the address test")
        if name == "include":
            script = pos[0]
            if isinstance(script, StringList) and (not script.single or "/" in script.single):
                raise SieveSyntaxError(script.line, script.column, "invalid script name")


@dataclass(frozen=True, slots=True)
class Script:
    """A validated script: its commands (with arguments split) and the extensions it requires."""

    commands: list[Command]
    required: frozenset[str]


def compile_script(text: str | bytes, extensions: frozenset[str] = EXTENSIONS, max_size: int = 1 << 20,
                   loader: ScriptLoader | None = None, max_include_depth: int = 10) -> Script:
    """Parse and validate `text`, or SieveSyntaxError with line and column. With a `loader`, the
    scripts it includes are loaded and compiled too, and a missing one (without :optional) or an
    include loop is refused at the include command, as Pigeonhole does when it compiles."""
    if len(text) > max_size:
        raise SieveSyntaxError(1, 1, f"script larger than {max_size} bytes")
    cmds = parse(text)
    v = _Validator(extensions)
    v.block(cmds, top=True)
    script = Script(cmds, frozenset(v.required))
    if loader is not None:
        _check_includes(script.commands, loader, [], extensions, max_size, max_include_depth)
    return script


def _check_includes(cmds: list[Command], loader: ScriptLoader, stack: list[tuple[str, str]],
                    extensions: frozenset[str], max_size: int, max_depth: int) -> None:
    """RFC 6609 §3.2: included scripts must exist (unless :optional) and never include themselves."""
    for c in cmds:
        if c.block is not None:
            _check_includes(c.block, loader, stack, extensions, max_size, max_depth)
        if c.name != "include" or not isinstance(c.positional[0], StringList):
            continue
        name = c.positional[0].single
        key = ("global" if "global" in c.tags else "personal", name)
        if key in stack:
            raise SieveSyntaxError(c.line, c.column, f"include loop: {key[0]} script \"{name}\" includes itself")
        if len(stack) >= max_depth:
            raise SieveSyntaxError(c.line, c.column, "includes nested too deeply")
        text = loader.load(name, key[0])
        if text is None:
            if "optional" in c.tags:
                continue
            raise SieveSyntaxError(c.line, c.column, f"included {key[0]} script \"{name}\" does not exist")
        try:
            inner = parse(text) if len(text) <= max_size else None
            if inner is None:
                raise SieveSyntaxError(1, 1, f"script larger than {max_size} bytes")
            _Validator(extensions).block(inner, top=True)
            _check_includes(inner, loader, stack + [key], extensions, max_size, max_depth)
        except SieveSyntaxError as e:
            if e.message.startswith("in included script") or e.message.startswith("include loop"):
                raise SieveSyntaxError(c.line, c.column, e.message) from None
            raise SieveSyntaxError(c.line, c.column, f"in included script \"{name}\", line {e.line}, "
                                   f"column {e.column}: {e.message}") from None
