"""Running a validated Sieve script over one message (RFC 5228 §4-§5 and the supported extensions).

Owns: `evaluate()`: the tests (address, envelope, header, exists, size, body, string, hasflag, date,
currentdate, mailboxexists, duplicate), the control commands (if/elsif/else, stop, include/return,
global), variables and match variables, imap4flags state, editheader's edited header list, the
action list with its merging and conflict rules, the implicit keep (RFC 5228 §4.2), and the limits
(actions, redirects, steps, include depth). Any runtime error yields the implicit keep alone and the
error text (RFC 5228 §2.10.6).

Does not own: parsing (syntax.py, validate.py), comparators (match.py), executing the actions.
"""
from __future__ import annotations

import email.utils
import html
import quopri
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from email.header import Header

from mailhaven.message import mime
from mailhaven.message.textextract import decode_base64, decode_header_value
from mailhaven.sieve import match as m
from mailhaven.sieve.actions import (
    Action,
    Discard,
    DuplicateTracker,
    Envelope,
    FileInto,
    Keep,
    Limits,
    MailboxChecker,
    Redirect,
    Reject,
    Result,
    ScriptLoader,
    Vacation,
)
from mailhaven.sieve.syntax import Argument, Command, Number, SieveSyntaxError, StringList, Test
from mailhaven.sieve.validate import (
    DATE_PARTS,
    EXTENSIONS,
    HEADER_NAME,
    SET_MODIFIERS,
    Script,
    address_spec,
    compile_script,
)

VACATION_DEFAULT = 7 * 86400  # RFC 5230 §4.1 suggests 7 days
VACATION_MIN = 86400  # Pigeonhole: sieve_vacation_min_period 1d; its max_period 0 = unbounded
DUPLICATE_DEFAULT = 14 * 86400  # Pigeonhole: sieve_duplicate_default_period
PROTECTED_HEADERS = frozenset({"received", "auto-submitted"})  # RFC 5293 §6 (Pigeonhole's defaults)


class SieveRuntimeError(Exception):
    pass


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


@dataclass(slots=True)
class Context:
    """What the caller knows besides the message: clock, zone, the user's stores, the limits."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    zone: tzinfo = UTC  # the "local" zone of date tests without :zone (RFC 5260 §4.2)
    duplicates: DuplicateTracker | None = None
    loader: ScriptLoader | None = None
    mailboxes: MailboxChecker | None = None
    user_addresses: tuple[str, ...] = ()  # vacation: the user's own addresses (RFC 5230 §4.5)
    subaddress_separator: str = "+"
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.monotonic  # for the run-time limit


# --------------------------------------------------------------------------- the message


@dataclass(slots=True)
class _Message:
    data: bytes
    root: mime.Part
    fields: list[tuple[str, bytes]]  # (name, raw value) in order; editheader changes this list
    edited: bool = False

    @classmethod
    def of(cls, raw: bytes) -> _Message:
        data = mime.to_crlf(raw)
        root = mime.parse(data)
        fields = [(f.name.decode("utf-8", "replace"), f.value)
                  for f in mime.iter_fields(data, root.header_start, root.header_end) if f.name]
        return cls(data, root, fields)

    def raw_values(self, name: str) -> list[bytes]:
        ln = name.lower()
        return [v for n, v in self.fields if n.lower() == ln]

    def values(self, name: str) -> list[str]:
        # RFC 5228 §5.7: encoded-words decoded (RFC 2047), unfolded, outer whitespace trimmed
        return [decode_header_value(v).strip(" \t") for v in self.raw_values(name)]


def _charset_text(data: bytes, charset: bytes | None) -> str:
    name = (charset or b"utf-8").decode("ascii", "replace").strip().lower()
    try:
        return data.decode("utf-8" if name in ("us-ascii", "ascii") else name, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _decoded_body(msg: _Message, part: mime.Part) -> bytes:
    body = msg.data[part.body_start:part.body_end]
    enc = (part.encoding or b"").strip().lower()
    if enc == b"base64":
        return decode_base64(body)
    if enc == b"quoted-printable":
        return quopri.decodestring(body)
    return body


def _content_type(part: mime.Part) -> str:
    if part.ctype is None:
        return "text/plain"
    return (part.ctype + b"/" + part.csubtype).decode("ascii", "replace").lower()


_HTML_DROP = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_HTML_BLOCK = re.compile(r"</?(?:p|div|br|li|tr|h[1-6]|table|blockquote|pre|hr)\b[^>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>]*>")


def _html_text(text: str) -> str:
    """The text of an HTML part for body :text (RFC 5173 §5.1 leaves it to the implementation;
    Pigeonhole converts HTML to text too): scripts, styles and comments dropped, block tags as line
    breaks, other tags removed, character references decoded."""
    text = _HTML_DROP.sub("", text)
    text = _HTML_BLOCK.sub("\n", text)
    return html.unescape(_HTML_TAG.sub("", text))


def _leaves(part: mime.Part) -> Iterator[mime.Part]:
    yield part
    for c in part.children:
        yield from _leaves(c)


# --------------------------------------------------------------------------- addresses


def _addresses(values: list[str]) -> list[tuple[str, str]]:
    """(local part, domain) of each mailbox in address-list header values (RFC 5228 §5.1)."""
    out: list[tuple[str, str]] = []
    for _name, addr in email.utils.getaddresses(values):
        if not addr:
            continue
        local, _, domain = addr.rpartition("@")
        if len(local) >= 2 and local[0] == local[-1] == '"':
            local = re.sub(r"\\(.)", r"\1", local[1:-1])  # RFC 5322 §3.4.1: the quoted-string's content
        out.append((local, domain) if local else (addr, ""))
    return out


def _address_part(local: str, domain: str, part: str, sep: str) -> str | None:
    """RFC 5228 §2.7.4 and RFC 5233 §4; None when the part does not exist (no detail)."""
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    if part == "user":
        return local.split(sep, 1)[0]
    if part == "detail":
        return local.split(sep, 1)[1] if sep in local else None
    return f"{local}@{domain}" if domain else local


# --------------------------------------------------------------------------- dates (RFC 5260)


def _parse_zone(text: str) -> int | None:
    """RFC 5260 §4.1 zone "+hhmm"/"-hhmm" as minutes east of UTC; any four digits (as Pigeonhole)."""
    mt = re.fullmatch(r"([+-])([0-9]{2})([0-9]{2})", text.strip())
    if not mt:
        return None
    mins = int(mt.group(2)) * 60 + int(mt.group(3))
    return -mins if mt.group(1) == "-" else mins


def _in_zone(d: datetime, offset: int | None, default: tzinfo) -> tuple[datetime, int]:
    """`d` (aware) as local wall-clock time and its offset in minutes: in the zone `offset`, or in
    `default` when None. Offsets of a day or more, which tzinfo cannot hold, are applied by hand."""
    if offset is None:
        local = d.astimezone(default)
        off = local.utcoffset() or timedelta(0)
        return local.replace(tzinfo=None), int(off.total_seconds()) // 60
    return d.astimezone(UTC).replace(tzinfo=None) + timedelta(minutes=offset), offset


def _zone_text(offset: int) -> str:
    sign = "-" if offset < 0 else "+"
    mins = abs(offset)
    return f"{sign}{mins // 60:02d}{mins % 60:02d}"


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _date_part(d: datetime, offset: int, part: str) -> str:
    """RFC 5260 §4.2 date-part values of the wall-clock time `d` at `offset` minutes."""
    if part == "year":
        return f"{d.year:04d}"
    if part == "month":
        return f"{d.month:02d}"
    if part == "day":
        return f"{d.day:02d}"
    if part == "date":
        return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"
    if part == "julian":
        return str((d.date() - datetime(1858, 11, 17).date()).days)  # Modified Julian Day
    if part == "hour":
        return f"{d.hour:02d}"
    if part == "minute":
        return f"{d.minute:02d}"
    if part == "second":
        return f"{d.second:02d}"
    if part == "time":
        return f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
    z = _zone_text(offset)
    if part == "iso8601":
        return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}{z[:3]}:{z[3:]}"
    if part == "std11":  # RFC 5322 §3.3 date-time
        return (f"{_WEEKDAYS[d.weekday()]}, {d.day:02d} {_MONTHS[d.month - 1]} {d.year:04d} "
                f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} {z}")
    if part == "zone":
        return z
    return str((d.weekday() + 1) % 7)  # weekday: 0 is Sunday


# --------------------------------------------------------------------------- the run


_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|[0-9]+)\}")


@dataclass(slots=True)
class _Frame:
    """One script being run: its own variables (RFC 6609 §3.3: not shared unless global)."""

    script: Script
    name: str
    variables: dict[str, str] = field(default_factory=dict)
    globals_: set[str] = field(default_factory=set)


class _Run:
    def __init__(self, msg: _Message, envelope: Envelope, ctx: Context) -> None:
        self.msg = msg
        self.env = envelope
        self.ctx = ctx
        self.actions: list[Action] = []
        self.implicit_keep = True
        self.flags: list[str] = []  # imap4flags internal variable (RFC 5232 §3)
        self.match_vars: list[str] = []
        self.global_vars: dict[str, str] = {}
        self.steps = 0
        self.redirects = 0
        self.included: set[tuple[str, str]] = set()
        self.stack: list[tuple[str, str]] = []
        self.frame: _Frame | None = None
        self.duplicates: list[tuple[str, int, bool]] = []
        self.deadline = ctx.clock() + ctx.limits.max_seconds

    # ----- helpers

    def _step(self) -> None:
        self.steps += 1
        if self.steps > self.ctx.limits.max_steps:
            raise SieveRuntimeError(f"more than {self.ctx.limits.max_steps} steps")
        if self.steps % 64 == 0 and self.ctx.clock() > self.deadline:
            raise SieveRuntimeError(f"ran longer than {self.ctx.limits.max_seconds} s")

    def _uses(self, ext: str) -> bool:
        return self.frame is not None and ext in self.frame.script.required

    def _get_var(self, name: str) -> str:
        if name.isdigit():
            i = int(name)
            return self.match_vars[i] if i < len(self.match_vars) else ""
        ln = name.lower()
        assert self.frame is not None
        if ln in self.frame.globals_ or ln.startswith("global."):
            return self.global_vars.get(ln.removeprefix("global."), "")
        return self.frame.variables.get(ln, "")

    def _set_var(self, name: str, value: str) -> None:
        value = value[:self.ctx.limits.max_variable_size]
        ln = name.lower()
        assert self.frame is not None
        if ln in self.frame.globals_ or ln.startswith("global."):
            self.global_vars[ln.removeprefix("global.")] = value
        else:
            if ln not in self.frame.variables and len(self.frame.variables) >= self.ctx.limits.max_variables:
                raise SieveRuntimeError("too many variables")
            self.frame.variables[ln] = value

    def expand(self, text: str) -> str:
        """RFC 5229 §3: ${name} and ${N} replaced, when variables is required."""
        if not self._uses("variables") or "${" not in text:
            return text
        return _VAR_REF.sub(lambda mt: self._get_var(mt.group(1)), text)

    def strs(self, arg: Argument | None) -> list[str]:
        if not isinstance(arg, StringList):
            return []
        return [self.expand(v) for v in arg.values]

    def str1(self, arg: Argument | None) -> str:
        got = self.strs(arg)
        return got[0] if got else ""

    @staticmethod
    def num(arg: Argument | None) -> int:
        return arg.value if isinstance(arg, Number) else 0

    def _flag_list(self, values: list[str]) -> list[str]:
        """RFC 5232 §3: space-separated flag names, duplicates (case-insensitive) removed."""
        out: list[str] = []
        for v in values:
            for f in v.split():
                if f.lower() not in (x.lower() for x in out):
                    out.append(f)
        return out

    # ----- matching shared by the tests

    def _compare(self, node: Test | Command, values: list[str], keys: list[str]) -> bool:
        t = node.tags
        comparator = self.str1(t["comparator"]).lower() if "comparator" in t else "i;ascii-casemap"
        mtype = next((k for k in ("is", "contains", "matches", "count", "value") if k in t), "is")
        relop = self.str1(t[mtype]).lower() if mtype in ("count", "value") else None
        try:
            got = m.match_any(values, keys, mtype, comparator, relop)
        except m.MatchError as e:
            raise SieveRuntimeError(str(e)) from None
        if got is not None and mtype == "matches" and self._uses("variables"):
            self.match_vars = got  # RFC 5229 §3.2: only a successful match sets them
        return got is not None

    def _index(self, node: Test | Command, items: list[str]) -> list[str]:
        """RFC 5260 §6: :index N [:last] picks one occurrence."""
        if "index" not in node.tags:
            return items
        n = self.num(node.tags["index"])
        if n > len(items):
            return []
        return [items[-n] if "last" in node.tags else items[n - 1]]

    # ----- tests

    def test(self, t: Test) -> bool:
        self._step()
        name, p = t.name, t.positional
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(t.tests[0])
        if name == "allof":
            return all(self.test(s) for s in t.tests)
        if name == "anyof":
            return any(self.test(s) for s in t.tests)
        if name == "exists":
            return all(self.msg.raw_values(h) for h in self.strs(p[0]))
        if name == "size":
            size = len(self.msg.data)
            limit = self.num(p[0])
            return size > limit if "over" in t.tags else size < limit
        if name == "header":
            values = [v for h in self.strs(p[0]) for v in self._index(t, self.msg.values(h))]
            return self._compare(t, values, self.strs(p[1]))
        if name == "address":
            return self._address_test(t)
        if name == "envelope":
            return self._envelope_test(t)
        if name == "body":
            return self._compare(t, self._body_texts(t), self.strs(p[0]))
        if name == "string":
            values = [v for v in self.strs(p[0])]
            if "count" in t.tags:
                values = [v for v in values if v != ""]  # RFC 5229 §5: empty strings are not counted
            return self._compare(t, values, self.strs(p[1]))
        if name == "hasflag":
            return self._compare(t, self._flags_of(p[0] if len(p) == 2 else None), self.strs(p[-1]))
        if name == "date":
            return self._date_test(t)
        if name == "currentdate":
            part = self.str1(p[0]).lower()
            if part not in DATE_PARTS:
                return False  # a date part built from variables that does not exist
            local, off = _in_zone(self.ctx.now, self._zone(t), self.ctx.zone)
            return self._compare(t, [_date_part(local, off, part)], self.strs(p[1]))
        if name == "mailboxexists":
            checker = self.ctx.mailboxes
            return checker is not None and all(checker.exists(b) for b in self.strs(p[0]))
        if name == "duplicate":
            return self._duplicate(t)
        raise SieveRuntimeError(f"unknown test {name}")

    def _flags_of(self, var: Argument | None) -> list[str]:
        if var is None:
            return list(self.flags)
        return self._flag_list([self._get_var(n) for n in self.strs(var)])

    def _address_test(self, t: Test) -> bool:
        part = next((k for k in ("all", "localpart", "domain", "user", "detail") if k in t.tags), "all")
        values: list[str] = []
        for h in self.strs(t.positional[0]):
            addrs = _addresses(self._index(t, self.msg.values(h)))
            for local, domain in addrs:
                v = _address_part(local, domain, part, self.ctx.subaddress_separator)
                if v is not None:
                    values.append(v)
        return self._compare(t, values, self.strs(t.positional[1]))

    def _envelope_test(self, t: Test) -> bool:
        part = next((k for k in ("all", "localpart", "domain", "user", "detail") if k in t.tags), "all")
        values: list[str] = []
        for which in self.strs(t.positional[0]):
            addr = self.env.mail_from if which.lower() == "from" else self.env.rcpt_to
            addr = addr.strip("<>")
            if not addr:
                if part == "all" or "count" in t.tags:
                    values.append("")  # RFC 5228 §5.4: the null reverse-path
                continue
            local, _, domain = addr.rpartition("@")
            v = _address_part(local or addr, domain if local else "", part, self.ctx.subaddress_separator)
            if v is not None:
                values.append(v)
        return self._compare(t, values, self.strs(t.positional[1]))

    def _body_texts(self, t: Test) -> list[str]:
        """RFC 5173 §5: :raw the undecoded body, :content the decoded parts of the listed types,
        :text (default) the decoded text/* parts."""
        msg = self.msg
        if "raw" in t.tags:
            return [msg.data[msg.root.body_start:msg.root.body_end].decode("utf-8", "replace")]
        types = [c.lower() for c in self.strs(t.tags["content"])] if "content" in t.tags else ["text"]
        out: list[str] = []
        for part in _leaves(msg.root):
            ctype = _content_type(part)
            if part.is_multipart or part.is_message:
                continue  # containers: only their leaves are searched (as Pigeonhole does)
            if not any(ty == "" or ctype == ty or ("/" not in ty and ctype.split("/")[0] == ty) for ty in types):
                continue
            data = _decoded_body(msg, part)
            text = _charset_text(data, part.param(b"charset")) if ctype.startswith("text/") \
                else data.decode("utf-8", "replace")
            out.append(_html_text(text) if ctype == "text/html" and "content" not in t.tags else text)
        return out

    def _zone(self, t: Test) -> int | None:
        """The :zone offset; None for the local zone, which an invalid :zone also means (as
        Pigeonhole does, with a warning)."""
        return _parse_zone(self.str1(t.tags["zone"])) if "zone" in t.tags else None

    def _date_test(self, t: Test) -> bool:
        p = t.positional
        part = self.str1(p[1]).lower()
        if part not in DATE_PARTS:
            return False
        zone = self._zone(t)
        dates: list[str] = []
        for raw in self._index(t, self.msg.values(self.str1(p[0]))):
            value = raw.rsplit(";", 1)[-1].strip() if self.str1(p[0]).lower() == "received" else raw
            try:
                d = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                continue
            if d is None:
                continue
            if d.tzinfo is None:
                d = d.replace(tzinfo=UTC)  # "-0000": UTC, origin unknown (RFC 5322 §3.3)
            try:
                if "originalzone" in t.tags:
                    off = d.utcoffset() or timedelta(0)
                    local, offset = d.replace(tzinfo=None), int(off.total_seconds()) // 60
                else:
                    local, offset = _in_zone(d, zone, self.ctx.zone)
            except OverflowError:
                continue  # beyond year 1..9999 once shifted
            dates.append(_date_part(local, offset, part))
        if not dates and "count" not in t.tags:
            return False
        return self._compare(t, dates, self.strs(p[2]))

    def _duplicate(self, t: Test) -> bool:
        """RFC 7352 §3: the id is Message-ID unless :header or :uniqueid names another."""
        if "uniqueid" in t.tags:
            ident = self.str1(t.tags["uniqueid"])
        else:
            header = self.str1(t.tags["header"]) if "header" in t.tags else "message-id"
            vals = self.msg.values(header)
            if not vals:
                return False
            ident = vals[0]
            if header.lower() == "message-id":
                ident = ident.strip()
        key = self.str1(t.tags.get("handle")) + "\0" + ident
        seconds = self.num(t.tags["seconds"]) if "seconds" in t.tags else DUPLICATE_DEFAULT
        tracker = self.ctx.duplicates
        seen = tracker is not None and tracker.seen(key)
        entry = (key, seconds, "last" in t.tags)
        if (not seen or "last" in t.tags) and entry not in self.duplicates:
            self.duplicates.append(entry)
        return seen

    # ----- commands

    def block(self, cmds: list[Command]) -> None:
        i = 0
        while i < len(cmds):
            c = cmds[i]
            if c.name == "if":
                j = i + 1
                while j < len(cmds) and cmds[j].name in ("elsif", "else"):
                    j += 1
                for branch in cmds[i:j]:
                    self._step()
                    if branch.name == "else" or self.test(branch.tests[0]):
                        assert branch.block is not None
                        self.block(branch.block)
                        break
                i = j
                continue
            self.command(c)
            i += 1

    def command(self, c: Command) -> None:
        self._step()
        name, p, t = c.name, c.positional, c.tags
        if name == "require":
            return
        if name == "stop":
            raise _Stop()
        if name == "return":
            raise _Return()
        if name == "keep":
            flags = self._flag_list(self.strs(t["flags"])) if "flags" in t else list(self.flags)
            self._add(Keep(tuple(flags)), c)
        elif name == "discard":
            self._add(Discard(), c)
        elif name == "fileinto":
            flags = self._flag_list(self.strs(t["flags"])) if "flags" in t else list(self.flags)
            box = self.str1(p[0]) or "INBOX"  # "" (from variables): Dovecot stores it into INBOX
            self._add(FileInto(box, tuple(flags), "create" in t, "copy" in t), c)
        elif name == "redirect":
            given = self.str1(p[0]).strip()
            addr = address_spec(given)
            if addr is None:
                raise SieveRuntimeError(f"line {c.line}: redirect: invalid address {given!r}")  # RFC 5228 §4.2
            self._add(Redirect(addr, "copy" in t), c)
        elif name in ("reject", "ereject"):
            self._add(Reject(self.str1(p[0]), name == "ereject"), c)
        elif name in ("setflag", "addflag", "removeflag"):
            self._flags_cmd(name, p)
        elif name == "set":
            self._set(c)
        elif name == "vacation":
            self._vacation(c)
        elif name == "include":
            self._include(c)
        elif name == "global":
            assert self.frame is not None
            for v in self.strs(p[0]):
                self.frame.globals_.add(v.lower())
        elif name == "addheader":
            self._addheader(c)
        elif name == "deleteheader":
            self._deleteheader(c)
        else:
            raise SieveRuntimeError(f"unknown command {name}")

    def _flags_cmd(self, name: str, p: list[Argument]) -> None:
        """RFC 5232 §4: on the internal variable or on the named variable."""
        var = self.str1(p[0]) if len(p) == 2 else None
        current = self._flag_list([self._get_var(var)]) if var is not None else self.flags
        given = self._flag_list(self.strs(p[-1]))
        if name == "setflag":
            new = given
        elif name == "addflag":
            new = self._flag_list([" ".join(current), " ".join(given)])
        else:
            drop = {g.lower() for g in given}
            new = [f for f in current if f.lower() not in drop]
        if var is not None:
            self._set_var(var, " ".join(new))
        else:
            self.flags = new

    def _set(self, c: Command) -> None:
        """RFC 5229 §4: modifiers applied by precedence, highest first."""
        value = self.str1(c.positional[1])
        for mod in sorted((k for k in c.tags if k in SET_MODIFIERS), key=lambda k: -SET_MODIFIERS[k]):
            if mod == "lower":
                value = value.lower()
            elif mod == "upper":
                value = value.upper()
            elif mod == "lowerfirst":
                value = value[:1].lower() + value[1:]
            elif mod == "upperfirst":
                value = value[:1].upper() + value[1:]
            elif mod == "quotewildcard":
                value = re.sub(r"([*?\\])", r"\\\1", value)
            elif mod == "length":
                value = str(len(value))
        var = c.positional[0]
        assert isinstance(var, StringList)
        self._set_var(var.single, value)

    def _add(self, action: Action, c: Command) -> None:
        """Append an action after the RFC 5228 §2.10.3 / RFC 5429 §2.1 / RFC 5230 §4.7 checks, merging
        duplicates (§4.2: the same mailbox or address once), and drop the implicit keep when the
        action cancels it. A duplicate adds nothing but its flags: it does not cancel the implicit
        keep (so `fileinto :copy "a"; fileinto "a";` keeps too, as Pigeonhole does)."""
        others = self.actions
        if isinstance(action, Reject):
            if any(isinstance(a, Reject) for a in others):
                raise SieveRuntimeError(f"line {c.line}: more than one reject")
            if any(isinstance(a, Keep | FileInto | Redirect | Vacation) for a in others):
                raise SieveRuntimeError(f"line {c.line}: reject conflicts with an earlier action")
        elif isinstance(action, Keep | FileInto | Redirect | Vacation):
            if any(isinstance(a, Reject) for a in others):
                raise SieveRuntimeError(f"line {c.line}: {c.name} conflicts with reject")
        if isinstance(action, Redirect):
            if any(isinstance(a, Redirect) and _same_address(a.address, action.address) for a in others):
                return
            self.redirects += 1
            if self.redirects > self.ctx.limits.max_redirects:
                raise SieveRuntimeError(f"line {c.line}: more than {self.ctx.limits.max_redirects} redirects")
        if isinstance(action, Keep | FileInto):
            box = "INBOX" if isinstance(action, Keep) else action.mailbox
            for i, a in enumerate(others):
                abox = "INBOX" if isinstance(a, Keep) else a.mailbox if isinstance(a, FileInto) else None
                if abox is not None and abox == box:
                    assert isinstance(a, Keep | FileInto)
                    others[i] = _merge_store(a, action)
                    return
        if isinstance(action, Discard) and any(isinstance(a, Discard) for a in others):
            self._cancel_keep(action)
            return
        if len(others) >= self.ctx.limits.max_actions:
            raise SieveRuntimeError(f"line {c.line}: more than {self.ctx.limits.max_actions} actions")
        others.append(action)
        self._cancel_keep(action)

    def _cancel_keep(self, action: Action) -> None:
        if isinstance(action, Keep | Discard | Reject) or \
                (isinstance(action, FileInto | Redirect) and not action.copy):  # RFC 3894 §3
            self.implicit_keep = False

    def _vacation(self, c: Command) -> None:
        """RFC 5230 §4: compute the reply, or none when §4.5/§5 say not to answer."""
        if any(isinstance(a, Vacation) for a in self.actions):
            raise SieveRuntimeError(f"line {c.line}: more than one vacation action")  # RFC 5230 §4.6
        if any(isinstance(a, Reject) for a in self.actions):
            raise SieveRuntimeError(f"line {c.line}: vacation conflicts with reject")  # RFC 5230 §4.7
        t = c.tags
        sender = self.env.mail_from.strip("<>")
        if "seconds" in t:
            seconds = self.num(t["seconds"])
            seconds = max(seconds, VACATION_MIN)  # RFC 6131 §2 allows 0; Pigeonhole clamps it too
        else:
            days = self.num(t["days"]) if "days" in t else VACATION_DEFAULT // 86400
            seconds = max(days * 86400, VACATION_MIN)
        reason = self.str1(c.positional[0])
        subject = self.str1(t["subject"]) if "subject" in t else None
        from_ = self.str1(t["from"]) if "from" in t else None
        # RFC 5230 §4.2: the default handle is made of the arguments (as Pigeonhole builds it)
        # RFC 5230 §4.2 default handle, from the arguments as written (before variables are
        # expanded), as Pigeonhole builds it when compiling
        raw = {k: v.single for k, v in t.items() if isinstance(v, StringList)}
        rp = c.positional[0]
        handle = self.str1(t["handle"]) if "handle" in t else \
            (rp.single if isinstance(rp, StringList) else "") + raw.get("subject", "<default-subject>") + \
            raw.get("from", "<default-from>") + ("<MIME>" if "mime" in t else "<NO-MIME>")
        orig = (self.msg.values("subject") or [""])[0]
        reply_subject = subject if subject is not None else "Auto: " + orig if orig else "Automated reply"
        mids = self.msg.values("message-id")
        irt = mids[0] if mids else None
        skip = self._no_answer(sender, self.strs(t.get("addresses")))
        self._add(Vacation(sender, subject, from_, reason, "mime" in t, handle, seconds, reply_subject, irt,
                           skip), c)

    def _no_answer(self, sender: str, addresses: list[str]) -> str | None:
        """Why no reply may go out (RFC 5230 §4.5 and §5, as Pigeonhole applies them), or None."""
        if not sender:
            return "null envelope sender"
        local = sender.rpartition("@")[0].lower()
        if local in ("mailer-daemon", "listserv", "majordomo") or local.startswith("owner-") or \
                local.endswith("-request"):
            return "sender is a list or a daemon"
        auto = self.msg.values("auto-submitted")
        if auto and any(a.split(";")[0].strip().lower() != "no" for a in auto):
            return "message is auto-submitted"  # RFC 3834 §2
        if any(self.msg.raw_values(h) for h in ("list-id", "list-owner", "list-unsubscribe", "list-post",
                                                "list-help", "list-subscribe", "list-archive")):
            return "message is from a mailing list"
        if any(p.strip().lower() in ("bulk", "junk", "list") for p in self.msg.values("precedence")):
            return "message is bulk"
        mine = {a.lower() for a in (self.env.rcpt_to.strip("<>"), *self.ctx.user_addresses, *addresses) if a}
        if sender.lower() in mine:
            return "sender is the user"
        found = {f"{lp}@{d}".lower() for h in ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
                 for lp, d in _addresses(self.msg.values(h))}
        return None if mine & found else "user not explicitly addressed"  # RFC 5230 §4.5

    def _include(self, c: Command) -> None:
        """RFC 6609 §3.2: run another script; its actions join ours; loops are errors."""
        name = self.str1(c.positional[0])
        location = "global" if "global" in c.tags else "personal"
        key = (location, name)
        if key in self.stack:
            raise SieveRuntimeError(f"line {c.line}: include loop through {location} script {name!r}")
        if "once" in c.tags and key in self.included:
            return
        if len(self.stack) >= self.ctx.limits.max_include_depth:
            raise SieveRuntimeError(f"line {c.line}: includes nested too deeply")
        text = self.ctx.loader.load(name, location) if self.ctx.loader is not None else None
        if text is None:
            if "optional" in c.tags:
                return
            raise SieveRuntimeError(f"line {c.line}: included script {name!r} not found")
        try:
            script = compile_script(text, EXTENSIONS)
        except SieveSyntaxError as e:
            raise SieveRuntimeError(f"included script {name!r}: {e}") from None
        self.included.add(key)
        self.run_script(script, name, key)

    def run_script(self, script: Script, name: str, key: tuple[str, str]) -> None:
        outer = self.frame
        self.frame = _Frame(script, name)
        self.stack.append(key)
        try:
            self.block(script.commands)
        except _Return:
            pass
        finally:
            self.stack.pop()
            self.frame = outer

    # ----- editheader (RFC 5293)

    def _addheader(self, c: Command) -> None:
        name = self.str1(c.positional[0])
        value = self.str1(c.positional[1])
        if not HEADER_NAME.fullmatch(name):
            raise SieveRuntimeError(f"line {c.line}: addheader: invalid field name {name!r}")
        if name.lower() in PROTECTED_HEADERS:
            return  # RFC 5293 §6: silently ignored for protected fields
        raw = _encode_header_value(value)
        self.msg.edited = True
        if "last" in c.tags:
            self.msg.fields.append((name, raw))
        else:
            self.msg.fields.insert(0, (name, raw))  # RFC 5293 §4: prepended by default

    def _deleteheader(self, c: Command) -> None:
        name = self.str1(c.positional[0])
        if not HEADER_NAME.fullmatch(name):
            raise SieveRuntimeError(f"line {c.line}: deleteheader: invalid field name {name!r}")
        if name.lower() in PROTECTED_HEADERS:
            return
        ln = name.lower()
        positions = [i for i, (n, _) in enumerate(self.msg.fields) if n.lower() == ln]
        if "index" in c.tags:
            n = self.num(c.tags["index"])
            if n > len(positions):
                return
            positions = [positions[-n] if "last" in c.tags else positions[n - 1]]
        keys = self.strs(c.positional[1]) if len(c.positional) == 2 else None
        drop: set[int] = set()
        for i in positions:
            if keys is None:
                drop.add(i)
                continue
            value = decode_header_value(self.msg.fields[i][1]).strip(" \t")
            saved = self.match_vars
            if self._compare(c, [value], keys):
                drop.add(i)
            self.match_vars = saved
        if drop:
            self.msg.edited = True
            self.msg.fields = [f for i, f in enumerate(self.msg.fields) if i not in drop]


def _same_address(a: str, b: str) -> bool:
    """RFC 5321 §2.4: the local part is case-sensitive, the domain is not."""
    la, _, da = a.rpartition("@")
    lb, _, db = b.rpartition("@")
    return la == lb and da.lower() == db.lower()


def _merge_store(a: Keep | FileInto, b: Keep | FileInto) -> Keep | FileInto:
    """Two stores into one mailbox are one (RFC 5228 §4.2); the later one's flags replace the
    earlier's, as Pigeonhole does."""
    if isinstance(a, Keep):
        return Keep(b.flags)
    return FileInto(a.mailbox, b.flags, a.create or (isinstance(b, FileInto) and b.create),
                    a.copy and (isinstance(b, FileInto) and b.copy))


def _encode_header_value(value: str) -> bytes:
    """RFC 5293 §4: non-ASCII becomes an RFC 2047 encoded-word; every line break (CR, LF or CRLF)
    becomes a fold, so a value can never start a field of its own."""
    value = re.sub(r"[ \t]*(?:\r\n|\r|\n)[ \t]*", "\r\n ", value.strip("\r\n"))
    if value.isascii():
        return value.encode("ascii")
    return Header(value, "utf-8").encode(linesep="\r\n").encode("ascii")  # folds with CRLF, never a bare LF


def evaluate(script: Script | str | bytes, message: bytes, envelope: Envelope,
             context: Context | None = None) -> Result:
    """Run `script` over `message`: the actions to take, or the implicit keep and the error."""
    ctx = context or Context()
    if not isinstance(script, Script):
        script = compile_script(script)
    run = _Run(_Message.of(message), envelope, ctx)
    try:
        try:
            run.run_script(script, "main", ("personal", ":main"))
        except _Stop:
            pass
    except SieveRuntimeError as e:
        return Result([Keep(implicit=True)], error=str(e))  # RFC 5228 §2.10.6; no flags (Pigeonhole)
    actions = list(run.actions)
    if run.implicit_keep:
        keep = Keep(tuple(run.flags), implicit=True)  # RFC 5232 §3: implicit keep uses the flags
        if not any(isinstance(a, Keep) or (isinstance(a, FileInto) and a.mailbox == "INBOX") for a in actions):
            actions.append(keep)
    headers = [(n, v.decode("utf-8", "replace")) for n, v in run.msg.fields] if run.msg.edited else None
    # RFC 7352 §3: the caller marks `duplicates` in its tracker once the actions are done
    return Result(actions, None, headers, run.duplicates)

