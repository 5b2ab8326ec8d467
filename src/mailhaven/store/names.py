"""Pure rules from mailbox names and user addresses to paths (Maildir++), so nothing escapes.

Owns: validating and canonicalising mailbox names ("." hierarchy delimiter, UTF-8 on disk),
mapping a name to its folder directory under the user root and back, validating the user address
that becomes `<root>/<domain>/<localpart>/`, and the SPECIAL-USE names of the default folders.
Does not own: any I/O (this module never touches the disk), modified UTF-7 (imap/utf7.py).

Layout (Maildir++ as Dovecot/Courier lay it out):
    INBOX            -> <user root>/            (cur/ new/ tmp/ directly in the user root)
    "Work.Projects"  -> <user root>/.Work.Projects/
    "inbox.Sub"      -> <user root>/.INBOX.Sub/  ("INBOX" is case-insensitive, RFC 3501 §5.1)

A name is accepted only if every "."-separated component is non-empty (so "..", leading and
trailing dots are refused), and no character is "/", "\\", NUL, a C0/C1 control character, or an
IMAP LIST wildcard ("*", "%", RFC 3501 §6.3.8). The directory name must fit in 255 bytes of UTF-8.
Because "/" never appears and the directory name always starts with ".", an accepted name is a
single path component directly inside the user root: it cannot point anywhere else.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Final

from mailhaven.errors import BadMailboxName

INBOX: Final = "INBOX"
DELIMITER: Final = "."
MAX_COMPONENT_BYTES: Final = 255  # NAME_MAX of Linux file systems

# RFC 6154 §2: the default folders every new account gets, with their SPECIAL-USE attribute.
DEFAULT_FOLDERS: Final[dict[str, str]] = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
SPECIAL_USES: Final = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent",
                                 "\\Trash"})

_FORBIDDEN: Final = frozenset("/\\\x00*%")


def _bad_char(ch: str) -> bool:
    if ch in _FORBIDDEN:
        return True
    o = ord(ch)
    if o < 0x20 or 0x7F <= o <= 0x9F:
        return True
    # Lone surrogates cannot be written as UTF-8; other format/unassigned controls are refused too.
    return unicodedata.category(ch) in ("Cs", "Cc")


def canonical(name: str) -> str:
    """Validate a mailbox name and return its canonical form ("inbox" -> "INBOX").

    Raises BadMailboxName with a short reason.
    """
    if not isinstance(name, str) or name == "":
        raise BadMailboxName("empty mailbox name")
    for ch in name:
        if _bad_char(ch):
            raise BadMailboxName("mailbox name contains a forbidden character")
    parts = name.split(DELIMITER)
    if any(p == "" for p in parts):
        raise BadMailboxName("mailbox name has an empty hierarchy level")
    if parts[0].upper() == INBOX:  # RFC 3501 §5.1: INBOX is case-insensitive
        parts[0] = INBOX
    result = DELIMITER.join(parts)
    if result != INBOX and len(dirname(result).encode("utf-8")) > MAX_COMPONENT_BYTES:
        raise BadMailboxName("mailbox name too long")
    return result


def dirname(canonical_name: str) -> str:
    """Directory name under the user root for a canonical name ("" for INBOX)."""
    if canonical_name == INBOX:
        return ""
    return DELIMITER + canonical_name


def folder_path(user_root: Path, name: str) -> Path:
    """Validate `name` and return its folder directory under `user_root`."""
    d = dirname(canonical(name))
    return user_root / d if d else user_root


def name_from_dirname(entry: str) -> str | None:
    """The mailbox name for a directory entry of the user root, or None if it is not a folder.

    ".Sent" -> "Sent"; "cur", "..", "..trash", ".a..b", "." -> None.
    """
    if not entry.startswith(DELIMITER) or len(entry) < 2:
        return None
    try:
        name = canonical(entry[1:])
    except BadMailboxName:
        return None
    if name == INBOX:  # ".INBOX" would alias the root; never a folder of its own
        return None
    if dirname(name) != entry:  # e.g. ".inbox.x" is not the canonical spelling of "INBOX.x"
        return None
    return name


def parent(name: str) -> str | None:
    """The parent of a canonical name, or None at the top level."""
    head, sep, _ = name.rpartition(DELIMITER)
    return head if sep else None


def ancestors(name: str) -> list[str]:
    """All proper ancestors of a canonical name, outermost first ("a.b.c" -> ["a", "a.b"])."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


def is_inferior(name: str, ancestor: str) -> bool:
    """True when `name` is strictly below `ancestor` in the hierarchy."""
    return name.startswith(ancestor + DELIMITER)


def default_special_use(name: str) -> str | None:
    """The SPECIAL-USE attribute of a default folder name, else None."""
    return DEFAULT_FOLDERS.get(name)


def _check_path_part(part: str, what: str) -> None:
    if part == "" or part in (".", ".."):
        raise BadMailboxName(f"invalid {what} in user address")
    if part.startswith(".") or part.endswith("."):
        raise BadMailboxName(f"invalid {what} in user address")
    if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
        raise BadMailboxName(f"{what} too long")
    for ch in part:
        if ch in "/\\\x00" or (_bad_char(ch) and ch not in "*%"):
            raise BadMailboxName(f"{what} contains a forbidden character")
    try:
        part.encode("utf-8")
    except UnicodeEncodeError:
        raise BadMailboxName(f"{what} is not valid Unicode") from None


def split_user(user: str) -> tuple[str, str]:
    """Validate a canonical user address and return (domain, localpart) as used on disk.

    The domain is lower-cased; the localpart is kept as given (the directory owns the case rule).
    Raises BadMailboxName if either part could not be a single safe directory name.
    """
    if not isinstance(user, str) or "@" not in user:
        raise BadMailboxName("user must be an address localpart@domain")
    localpart, _, domain = user.rpartition("@")
    domain = domain.lower()
    _check_path_part(localpart, "localpart")
    _check_path_part(domain, "domain")
    if ".." in domain:
        raise BadMailboxName("invalid domain in user address")
    return domain, localpart


def user_root(root: Path, user: str) -> Path:
    """`<root>/<domain>/<localpart>` for a validated user address."""
    domain, localpart = split_user(user)
    return root / domain / localpart
