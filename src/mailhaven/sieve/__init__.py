"""Sieve mail filtering (RFC 5228 and extensions) as a pure package: parse, validate, evaluate.

Owns nothing itself; re-exports the entry points: `compile_script` (refuses a bad script with
`SieveSyntaxError(line, column, message)`), `evaluate` (a script over a message and its envelope to
a `Result` of actions), and the action and seam types. Wiring into delivery lives elsewhere.
"""
from mailhaven.sieve.actions import (
    Action,
    DictTracker,
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
from mailhaven.sieve.interp import Context, SieveRuntimeError, evaluate
from mailhaven.sieve.syntax import SieveSyntaxError
from mailhaven.sieve.validate import EXTENSIONS, Script, compile_script

__all__ = [
    "Action", "Context", "DictTracker", "Discard", "DuplicateTracker", "EXTENSIONS", "Envelope", "FileInto",
    "Keep", "Limits", "MailboxChecker", "Redirect", "Reject", "Result", "Script", "ScriptLoader",
    "SieveRuntimeError", "SieveSyntaxError", "Vacation", "compile_script", "evaluate",
]
