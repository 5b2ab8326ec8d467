"""Per-user Sieve script storage: the files ManageSieve, the CLI and delivery-time Sieve share.

Owns: the layout on disk, script names (RFC 5804 §1.6), durable writes, the active-script marker,
the per-user quotas (script count, script size), and the `include :personal` loader (RFC 6609)
that reads only from the user's own folder.
Does not own: Sieve syntax (mailhaven.sieve: `check()` only calls its `compile_script`), the wire
protocol (managesieve/), when scripts run (delivery).

Layout (as Pigeonhole's file storage, with a marker file instead of its `.dovecot.sieve` symlink):

    <mail_root>/<domain>/<localpart>/sieve/<name>.sieve    one file per script, UTF-8
    <mail_root>/<domain>/<localpart>/sieve/.active         the active script's name (absent: none)

Every change is written to a temporary file in the same folder, fsynced, renamed into place, and
the folder fsynced, before the caller is told it worked (STYLE rule 11). Names beginning with "."
are refused, so the marker and temporary files can never be mistaken for, or overwritten by, a
script. All functions block (file I/O); the server runs them off the event loop.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import unicodedata
from pathlib import Path

from mailhaven.sieve import SieveSyntaxError, compile_script
from mailhaven.store import names
from mailhaven.store.maildir import fsync_dir, make_dirs

SUFFIX = ".sieve"
ACTIVE_MARKER = ".active"
FOLDER = "sieve"
# RFC 5804 §1.6 asks servers to allow names of at least 128 characters; 200 octets of UTF-8 plus
# ".sieve" stays well inside NAME_MAX (255) on every Linux filesystem.
MAX_NAME_OCTETS = 200

_counter = itertools.count()
_lock = threading.Lock()  # one mutation at a time in this process (quota checks read then write)


class ScriptError(Exception):
    """A refused storage operation. `code` is the RFC 5804 §1.3 response code ("" = none)."""

    code = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadName(ScriptError):
    """Not a valid script name (RFC 5804 §1.6)."""


class NoSuchScript(ScriptError):
    code = "NONEXISTENT"


class AlreadyExists(ScriptError):
    code = "ALREADYEXISTS"


class ScriptActive(ScriptError):
    code = "ACTIVE"


class QuotaExceeded(ScriptError):
    """code "QUOTA/MAXSCRIPTS" or "QUOTA/MAXSIZE" (RFC 5804 §1.3)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_name(name: str) -> str:
    """`name` if it may name a script, else BadName. RFC 5804 §1.6: no control characters
    (U+0000-001F, U+007F-009F), no U+2028/U+2029, Net-Unicode (NFC); for the file system: no "/",
    not empty, no leading "." (".", "..", the marker and temporary files), a length bound."""
    if not name:
        raise BadName("Script name is empty.")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_OCTETS:
        raise BadName(f"Script name is longer than {MAX_NAME_OCTETS} octets.")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" or 0xD800 <= ord(c) <= 0xDFFF
           for c in name):
        raise BadName("Script name contains control characters.")
    if "/" in name:
        raise BadName("Script name contains '/'.")
    if name.startswith("."):
        raise BadName("Script name begins with '.'.")
    if not unicodedata.is_normalized("NFC", name):  # RFC 5804 §1.6, RFC 5198 Net-Unicode
        raise BadName("Script name is not in Unicode normalization form C.")
    return name


def check_script(data: bytes, max_size: int) -> None:
    """Refuse a script that is too large (QuotaExceeded QUOTA/MAXSIZE), not UTF-8 or not valid
    Sieve (SieveSyntaxError with line and column, RFC 5804 §2.6)."""
    if len(data) > max_size:
        raise QuotaExceeded("QUOTA/MAXSIZE", f"Script is larger than {max_size} octets.")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:  # RFC 5228 §2.1: scripts are UTF-8
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SieveSyntaxError(line, column, "invalid UTF-8") from None
    compile_script(data, max_size=max_size)


class ScriptStore:
    """One user's scripts. `mail_root` is Config.mail_root; `user` a canonical address."""

    def __init__(self, mail_root: Path, user: str, *, max_scripts: int, max_size: int,
                 fsync: bool = True) -> None:
        self.path = names.user_root(mail_root, user) / FOLDER  # BadMailboxName for an unsafe user
        self.max_scripts = max_scripts
        self.max_size = max_size
        self.fsync = fsync

    # -- reading --------------------------------------------------------------------------------

    def _file(self, name: str) -> Path:
        return self.path / (check_name(name) + SUFFIX)

    def names(self) -> list[str]:
        """Every script name, sorted."""
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            if e.endswith(SUFFIX) and not e.startswith("."):
                try:
                    out.append(check_name(e[: -len(SUFFIX)]))
                except BadName:  # a file put there by hand; not a script of ours
                    continue
        return sorted(out)

    def active(self) -> str | None:
        """The active script's name, or None (no marker, or it names a script that is gone)."""
        try:
            name = (self.path / ACTIVE_MARKER).read_text("utf-8").strip("\n")
            check_name(name)
        except (OSError, UnicodeDecodeError, BadName):
            return None
        return name if (self.path / (name + SUFFIX)).is_file() else None

    def listing(self) -> list[tuple[str, bool]]:
        """(name, active) for every script (RFC 5804 §2.7 LISTSCRIPTS)."""
        active = self.active()
        return [(n, n == active) for n in self.names()]

    def get(self, name: str) -> bytes:
        data = self.read(name)
        if data is None:
            raise NoSuchScript("There is no script by that name.")
        return data

    def read(self, name: str) -> bytes | None:
        """The script's bytes, or None. Never follows a symlink out of the folder (O_NOFOLLOW)."""
        try:
            fd = os.open(self._file(name), os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, BadName):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:  # a symlink
                return None
            raise
        with os.fdopen(fd, "rb") as f:
            return f.read(self.max_size + 1)

    def active_script(self) -> bytes | None:
        """The active script's bytes (what delivery runs), or None."""
        name = self.active()
        return self.read(name) if name is not None else None

    # -- quotas ---------------------------------------------------------------------------------

    def have_space(self, name: str, size: int) -> None:
        """RFC 5804 §2.5 HAVESPACE: QuotaExceeded if storing `size` octets as `name` would not fit."""
        check_name(name)
        if size > self.max_size:
            raise QuotaExceeded("QUOTA/MAXSIZE", f"Script is larger than {self.max_size} octets.")
        if name not in self.names() and len(self.names()) >= self.max_scripts:
            raise QuotaExceeded("QUOTA/MAXSCRIPTS", f"No more than {self.max_scripts} scripts are allowed.")

    # -- changes (durable before they return) ----------------------------------------------------

    def _write(self, path: Path, data: bytes) -> None:
        make_dirs(self.path, fsync=self.fsync)
        tmp = self.path / f".tmp.{os.getpid()}.{next(_counter)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._sync_dir()

    def _sync_dir(self) -> None:
        if self.fsync:
            fsync_dir(self.path)

    def put(self, name: str, data: bytes) -> None:
        """RFC 5804 §2.6 PUTSCRIPT: check, then store (replacing a script of that name)."""
        check_name(name)
        check_script(data, self.max_size)
        with _lock:
            self.have_space(name, len(data))
            self._write(self._file(name), data)

    def set_active(self, name: str) -> None:
        """RFC 5804 §2.8 SETACTIVE; "" deactivates."""
        with _lock:
            if name == "":
                try:
                    (self.path / ACTIVE_MARKER).unlink()
                except FileNotFoundError:
                    return
                self._sync_dir()
                return
            if not self._file(name).is_file():
                raise NoSuchScript("There is no script by that name.")
            self._write(self.path / ACTIVE_MARKER, name.encode("utf-8") + b"\n")

    def delete(self, name: str) -> None:
        """RFC 5804 §2.10 DELETESCRIPT: the active script cannot be deleted."""
        with _lock:
            path = self._file(name)
            if self.active() == name:
                raise ScriptActive("You may not delete the active script.")
            try:
                path.unlink()
            except FileNotFoundError:
                raise NoSuchScript("There is no script by that name.") from None
            self._sync_dir()

    def rename(self, old: str, new: str) -> None:
        """RFC 5804 §2.11.1 RENAMESCRIPT: the active script stays active under its new name."""
        with _lock:
            src, dst = self._file(old), self._file(new)
            if not src.is_file():
                raise NoSuchScript("There is no script by that name.")
            was_active = self.active() == old
            try:
                os.link(src, dst)  # fails if `new` exists: never replaces a script
            except FileExistsError:
                raise AlreadyExists("A script by that name already exists.") from None
            self._sync_dir()
            if was_active:
                self._write(self.path / ACTIVE_MARKER, new.encode("utf-8") + b"\n")
            src.unlink()
            self._sync_dir()


class PersonalLoader:
    """mailhaven.sieve.ScriptLoader for one user: `include :personal "name"` reads that user's
    script `name` (a valid name, so never a path); `:global` finds nothing (RFC 6609 §2.2: there
    are no global scripts here)."""

    def __init__(self, store: ScriptStore) -> None:
        self.store = store

    def load(self, name: str, location: str) -> bytes | None:
        if location != "personal":
            return None
        return self.store.read(name)


__all__ = [
    "ACTIVE_MARKER", "AlreadyExists", "BadName", "FOLDER", "MAX_NAME_OCTETS", "NoSuchScript", "PersonalLoader",
    "QuotaExceeded", "ScriptActive", "ScriptError", "ScriptStore", "SUFFIX", "check_name", "check_script",
]
