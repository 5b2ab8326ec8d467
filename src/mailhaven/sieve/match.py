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


def glob_regex(pattern: str) -> re.Pattern[str]:
    """RFC 5228 §2.7.1: "*" any sequence, "?" one character, backslash quotes the next one. Each
    wildcard is a group, matching as little as possible (RFC 5229 §3.2 left-most shortest)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append("(.*?)" if c == "*" else "(.)" if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def match_one(value: str, key: str, match: str, comparator: str) -> list[str] | None:
    """None when `value` does not match `key`; else the match variables (${0} first)."""
    if comparator == "i;ascii-numeric" and match in ("contains", "matches"):
        raise MatchError(f":{match} is not supported by comparator i;ascii-numeric")
    if match == "is":
        return [value] if _order(value, key, comparator) == 0 else None
    v, k = (casemap(value), casemap(key)) if comparator == "i;ascii-casemap" else (value, key)
    if match == "contains":
        return [value] if k in v else None
    m = glob_regex(k).fullmatch(v)
    if m is None:
        return None
    # the groups' text from the original value, not the case-folded one
    return [value] + [value[m.start(i):m.end(i)] for i in range(1, (m.lastindex or 0) + 1)]


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
