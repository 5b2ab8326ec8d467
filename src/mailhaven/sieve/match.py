"""Sieve comparators and match types (RFC 5228 §2.7, RFC 4790 §9, RFC 5231, RFC 5229 §3.2).

Owns: i;octet, i;ascii-casemap and i;ascii-numeric; :is, :contains, :matches (with the strings the
wildcards matched, for match variables), and the relational :value and :count comparisons.

Does not own: which values a test compares (interp.py).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class MatchError(Exception):
    """A comparison the comparator does not support (RFC 4790 §9.1: ascii-numeric has no substring)."""


def casemap(text: str) -> str:
    return text.translate(_ASCII_UPPER)  # RFC 4790 §9.2: ASCII letters only


def _numeric(text: str) -> int | None:
    """RFC 4790 §9.1: the leading digits as a number; None (positive infinity) without any."""
    m = re.match(r"[0-9]+", text)
    return int(m.group(0)) if m else None


def _order(a: str, b: str, comparator: str) -> int:
    if comparator == "i;ascii-numeric":
        na, nb = _numeric(a), _numeric(b)
        if na is None or nb is None:
            return 0 if na is None and nb is None else (1 if na is None else -1)
        return (na > nb) - (na < nb)
    if comparator == "i;ascii-casemap":
        a, b = casemap(a), casemap(b)
    ea, eb = a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
    return (ea > eb) - (ea < eb)


def relational(op: str, a: str, b: str, comparator: str) -> bool:
    c = _order(a, b, comparator)
    return {"gt": c > 0, "ge": c >= 0, "lt": c < 0, "le": c <= 0, "eq": c == 0, "ne": c != 0}[op]


def _glob_items(pattern: str) -> list[str]:
    """RFC 5228 §2.7.1: the pattern as items: "*", "?", or a literal run (backslash quotes the next
    character)."""
    items: list[str] = []
    lit: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            lit.append(pattern[i + 1])
            i += 2
            continue
        if c in "*?":
            if lit:
                items.append("L" + "".join(lit))
                lit = []
            items.append(c)
        else:
            lit.append(c)
        i += 1
    if lit:
        items.append("L" + "".join(lit))
    return items


def _run_at(value: str, pos: int, run: list[str]) -> bool:
    """Do the items of `run` (literals and "?") match `value` at `pos`?"""
    for it in run:
        if it == "?":
            if pos >= len(value):
                return False
            pos += 1
        else:
            lit = it[1:]
            if not value.startswith(lit, pos):
                return False
            pos += len(lit)
    return True


def _run_len(run: list[str]) -> int:
    return sum(1 if it == "?" else len(it) - 1 for it in run)


def glob_match(value: str, pattern: str, folded: str | None = None) -> list[str] | None:
    """`value` against a :matches pattern, in time O(len(value) * len(pattern)) whatever the
    pattern (no backtracking regex). Each wildcard matches as little as possible, left to right
    (RFC 5229 §3.2); returns what each wildcard matched, in order, or None. `folded` is the value as
    the comparator sees it (same length), the pattern already folded alike."""
    text = value if folded is None else folded
    items = _glob_items(pattern)
    groups: list[str] = []
    pos = 0
    i = 0
    # the part before the first "*" must match at the start
    while i < len(items) and items[i] != "*":
        it = items[i]
        if not _run_at(text, pos, [it]):
            return None
        if it == "?":
            groups.append(value[pos])
        pos += _run_len([it])
        i += 1
    while i < len(items):
        i += 1  # a "*"
        j = i
        while j < len(items) and items[j] != "*":
            j += 1
        run = items[i:j]
        n = _run_len(run)
        if j == len(items):  # the last run must end the value: the star takes the rest
            at = len(text) - n
            if at < pos or not _run_at(text, at, run):
                return None
        else:
            at = pos
            while at + n <= len(text) and not _run_at(text, at, run):
                at += 1
            if at + n > len(text):
                return None
        groups.append(value[pos:at])
        pos = at
        for it in run:
            if it == "?":
                groups.append(value[pos])
            pos += _run_len([it])
        i = j
    return groups if pos == len(text) else None


def match_one(value: str, key: str, match: str, comparator: str) -> list[str] | None:
    """None when `value` does not match `key`; else the match variables (${0} first)."""
    if comparator == "i;ascii-numeric" and match in ("contains", "matches"):
        raise MatchError(f":{match} is not supported by comparator i;ascii-numeric")
    if match == "is":
        return [value] if _order(value, key, comparator) == 0 else None
    v, k = (casemap(value), casemap(key)) if comparator == "i;ascii-casemap" else (value, key)
    if match == "contains":
        return [value] if k in v else None
    got = glob_match(value, k, v)
    return None if got is None else [value] + got


def match_any(values: Sequence[str], keys: Sequence[str], match: str, comparator: str,
              relop: str | None) -> list[str] | None:
    """Is any value matched by any key (RFC 5228 §2.7.1)? Returns the match variables of the first
    match, [] for a match without them, None for no match. `match` may be "value" or "count"."""
    if match == "count":
        n = str(len(values))
        return [] if any(relational(relop or "eq", n, k, comparator) for k in keys) else None
    for v in values:
        for k in keys:
            if match == "value":
                if relational(relop or "eq", v, k, comparator):
                    return []
                continue
            got = match_one(v, k, match, comparator)
            if got is not None:
                return got if match == "matches" else []
    return None
