"""Per-user sender block and allow lists: the entries, their matching, the file that holds them.

Owns: what an entry is (`normalize_entry`: an address `local@domain` or a whole domain `@domain`,
also written `*@domain`; lower-cased, the domain as A-labels), which list a sender falls under
(`decide`), what that does to a spam verdict (`apply`: block -> "add header" and +100, allow ->
"no action" and -100, SpamAssassin's USER_IN_BLACKLIST / USER_IN_WHITELIST scores, under the
symbols USER_BLOCKLIST / USER_ALLOWLIST), and the per-user file (`load`, `save`, `Cache`).
Does not own: the MX's use of them (smtp/inbound.py: which addresses are checked, the folder per
recipient), the `mailhaven spam` command (cli.py).

Matching (`decide`): an address entry matches that address; `@example.com` matches the domain and
every subdomain of it (as Postfix access tables do with parent_domain_matches_subdomains). The most
specific match wins (an address over a domain, a longer domain over a shorter one); on a tie the
block list wins. A refusal (reject, tempfail) is never changed by a list: see `apply`.

Storage: one small JSON file per user, `mailhaven-senders.json` in the user's Maildir root
(`<data>/mail/<domain>/<user>/`, beside Dovecot's dovecot-uidlist and subscriptions), written
atomically (temporary file, fsync, rename, fsync of the folder). Not in the SQLite index: the index
is a cache that is rebuilt from the Maildir (DESIGN.md "Store"), and these lists are the user's own
data, which a rebuild must not lose; a plain file is also editable without the server, and the
running server sees a change at the next message (`Cache` compares the file's inode, size and
mtime) without a restart or reload.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from mailhaven.message.address import parse_domain
from mailhaven.policy import spam

FILE_NAME = "mailhaven-senders.json"
MAX_ENTRIES = 10_000  # per list (the CLI refuses more; a longer file is cut)
MAX_FILE = 2 * 1024 * 1024  # octets of a list file we read
MAX_ENTRY = 320  # octets of one entry (RFC 5321 §4.5.3.1: 64 + 1 + 255, with room)
MAX_CACHED = 10_000  # users whose lists the server keeps in memory
BLOCK_SCORE = 100.0  # SpamAssassin's USER_IN_BLACKLIST
ALLOW_SCORE = -100.0  # SpamAssassin's USER_IN_WHITELIST
BLOCK_SYMBOL = "USER_BLOCKLIST"
ALLOW_SYMBOL = "USER_ALLOWLIST"

Decision = Literal["block", "allow"] | None
ListName = Literal["block", "allow"]


class ListFileError(Exception):
    """A list file that cannot be read as one (the server then uses no lists for that user)."""


@dataclass(frozen=True)
class SenderLists:
    block: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()

    def entries(self, which: str) -> tuple[str, ...]:
        """`which`: "block" or "allow"."""
        return self.block if _list_name(which) == "block" else self.allow

    def with_entries(self, which: str, entries: Iterable[str]) -> SenderLists:
        kept = tuple(dict.fromkeys(entries))
        which = _list_name(which)
        return replace(self, block=kept) if which == "block" else replace(self, allow=kept)


EMPTY = SenderLists()


def _list_name(which: str) -> ListName:
    if which == "block":
        return "block"
    if which == "allow":
        return "allow"
    raise ValueError(f"no such list: {which}")


def normalize_entry(text: str) -> str:
    """`local@domain`, `@domain` or `*@domain` -> the stored form. Raises ValueError with a
    one-line reason."""
    text = text.strip()
    if not text or len(text.encode("utf-8", "replace")) > MAX_ENTRY:
        raise ValueError("expected ADDRESS or @DOMAIN")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError(f"no spaces or control characters allowed: {text!r}")
    local, at, domain = text.rpartition("@")
    if not at:
        raise ValueError(f"expected ADDRESS or @DOMAIN (a whole domain is written @{text})")
    try:
        domain = parse_domain(domain)
    except ValueError as e:
        raise ValueError(f"{text}: {e}") from None
    if domain.startswith("["):
        raise ValueError(f"{text}: address literals are not supported")
    if local in ("", "*"):
        return f"@{domain}"
    if '"' in local and not (local.startswith('"') and local.endswith('"') and len(local) > 1):
        raise ValueError(f"{text}: bad local part")
    return f"{local.lower()}@{domain}"


def sender_key(address: str) -> str | None:
    """An envelope or From: address in the form entries use, or None when it has no domain."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or not local or not domain:
        return None
    domain = domain.lower().rstrip(".")
    if not domain.isascii():
        try:
            domain = parse_domain(domain)
        except ValueError:
            return None
    return f"{local.lower()}@{domain}"


def _rank(entries: frozenset[str], key: str) -> int:
    """How specifically `entries` name the sender `key`: 0 not at all, 1000 the address, else the
    number of labels of the matching domain entry."""
    if key in entries:
        return 1000
    labels = key.rpartition("@")[2].split(".")
    for i in range(len(labels)):  # longest (most specific) domain first
        if "@" + ".".join(labels[i:]) in entries:
            return len(labels) - i
    return 0


def decide(lists: SenderLists, senders: Iterable[str]) -> Decision:
    """Which list the sender (any of its addresses: envelope sender, From: addresses) falls under:
    the most specific match; block on a tie; None when neither list names it."""
    keys = [k for k in (sender_key(s) for s in senders) if k is not None]
    if not keys or lists == EMPTY:
        return None
    block, allow = frozenset(lists.block), frozenset(lists.allow)
    b = max(_rank(block, k) for k in keys)
    a = max(_rank(allow, k) for k in keys)
    if b and b >= a:
        return "block"
    return "allow" if a else None


def apply(verdict: spam.SpamVerdict, decision: Decision) -> spam.SpamVerdict:
    """The verdict as a list decision changes it. A refusal (reject, soft reject, greylist) and a
    verdict no scanner gave (unknown, skipped) are kept: a list cannot let in what the scanner
    refused (a From: address is easy to forge; the refusal is for every recipient at once), and it
    does not invent a score; the recipient's folder still follows the list (smtp/inbound.py)."""
    if decision is None or not verdict.scanned or spam.outcome(verdict) in ("reject", "tempfail"):
        return verdict
    if decision == "block":
        action = verdict.action if spam.outcome(verdict) == "junk" else "add header"
        return replace(verdict, action=action, score=verdict.score + BLOCK_SCORE,
                       symbols=(*verdict.symbols, BLOCK_SYMBOL))
    return replace(verdict, action="no action", subject=None, score=verdict.score + ALLOW_SCORE,
                   symbols=(*verdict.symbols, ALLOW_SYMBOL))


# --- the file ---------------------------------------------------------------------------------------


def parse(data: bytes) -> SenderLists:
    """A list file's bytes -> SenderLists. Raises ListFileError; entries that are not entries are
    dropped (a hand edit with a typo loses that line, not the list)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ListFileError("not JSON") from None
    if not isinstance(doc, dict):
        raise ListFileError("not a JSON object")
    out = EMPTY
    for which in ("block", "allow"):
        raw = doc.get(which, [])
        if not isinstance(raw, list):
            raise ListFileError(f"{which} is not a list")
        kept: list[str] = []
        for item in raw[:MAX_ENTRIES]:
            if isinstance(item, str):
                try:
                    kept.append(normalize_entry(item))
                except ValueError:
                    continue
        out = out.with_entries(which, kept)
    return out


def render(lists: SenderLists) -> bytes:
    return (json.dumps({"version": 1, "block": list(lists.block), "allow": list(lists.allow)},
                       indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def path_for(user_root: Path) -> Path:
    """The list file of the user whose Maildir root is `user_root` (store.names.user_root)."""
    return user_root / FILE_NAME


def load(path: Path) -> SenderLists:
    """The lists in `path` (EMPTY when there is no file). Raises ListFileError or OSError."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        return EMPTY
    if len(data) > MAX_FILE:
        raise ListFileError(f"larger than {MAX_FILE} octets")
    return parse(data)


def make_root(user_root: Path) -> None:
    """Create the user's Maildir root (0700, and missing folders above it) when the user has had no
    mail yet. When run as root (the CLI on a server), each folder made gets the owner of the folder
    above it, so the service user still owns its data."""
    missing: list[Path] = []
    p = user_root
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    owner = p.stat()
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            os.chown(d, owner.st_uid, owner.st_gid)


def save(path: Path, lists: SenderLists) -> None:
    """Write `lists` to `path` atomically and durably (tmp, fsync, rename, fsync of the folder),
    making the folder first (`make_root`). As root, the file gets the folder's owner."""
    from mailhaven.store.maildir import atomic_write

    make_root(path.parent)
    atomic_write(path, render(lists), fsync=True)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        owner = path.parent.stat()
        os.chown(path, owner.st_uid, owner.st_gid)


class Cache:
    """The server's view of the list files: re-read when a file's inode, size or mtime changed
    (so `mailhaven spam block` applies from the next message), at most MAX_CACHED users kept.
    Call `get` off the event loop (it stats and reads)."""

    def __init__(self, max_entries: int = MAX_CACHED) -> None:
        self._max = max_entries
        self._cached: OrderedDict[Path, tuple[tuple[int, int, int], SenderLists]] = OrderedDict()
        self._lock = threading.Lock()  # `get` runs in worker threads

    def get(self, path: Path) -> SenderLists:
        with self._lock:
            return self._get(path)

    def _get(self, path: Path) -> SenderLists:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._cached.pop(path, None)
            return EMPTY
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._cached.get(path)
        if hit is not None and hit[0] == stamp:
            self._cached.move_to_end(path)
            return hit[1]
        lists = load(path)
        self._cached[path] = (stamp, lists)
        self._cached.move_to_end(path)
        while len(self._cached) > self._max:
            self._cached.popitem(last=False)
        return lists


__all__ = ["FILE_NAME", "SenderLists", "EMPTY", "Decision", "ListFileError", "normalize_entry", "sender_key",
           "decide", "apply", "parse", "render", "path_for", "load", "make_root", "save", "Cache", "BLOCK_SYMBOL",
           "ALLOW_SYMBOL"]
