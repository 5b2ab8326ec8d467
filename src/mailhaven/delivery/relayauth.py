"""The relay's credentials: `[queue] relay_auth_file`, read and checked (blocking: call in a thread).

Owns: the file's format and the rule that it is private. Format: one line `USER:PASSWORD` (split at
the first ":"; blank lines and lines starting with "#" ignored; surrounding spaces kept in the
password). The file must be a regular file owned by the user the server runs as (run_as_user, else
whoever reads it) and readable by nobody else (mode 0600 or 0400: no group or other bits), like
ssh's private keys: anything else is refused, by `check-config`, `doctor` and delivery (which then
defers with 4.7.0 and says why in the log).
Does not own: AUTH itself (delivery/remote.py), where the file is named (config.py).
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass

from mailhaven.errors import ConfigError

KEY = "queue.relay_auth_file"
MAX_SIZE = 64 * 1024


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never in a log or a traceback
        return f"Credentials(user={self.user!r}, password=<hidden>)"


def expected_owner(run_as_user: str) -> int:
    """The uid that must own the file: run_as_user's when set (the server reads it after dropping
    root), else ours."""
    if run_as_user:
        try:
            return pwd.getpwnam(run_as_user).pw_uid
        except KeyError:
            raise ConfigError(f"run_as_user: no such user: {run_as_user}") from None
    return os.geteuid()


def check_private(path: str, owner: int) -> os.stat_result:
    """Raise ConfigError unless `path` is a regular file owned by `owner` with no group/other bits."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"{KEY}: cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{KEY}: {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(f"{KEY}: {path} has mode {mode:04o}; it holds a password and must be readable by "
                          f"its owner alone (chmod 600 {path})")
    if st.st_uid != owner:
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        raise ConfigError(f"{KEY}: {path} belongs to uid {st.st_uid}, not to {name} who runs the server "
                          f"(chown {name} {path})")
    return st


def parse(text: str) -> Credentials:
    """The first `USER:PASSWORD` line. Raises ConfigError (never quoting the password)."""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.partition(":")
        user = user.strip()
        if not sep or not user or not password:
            raise ConfigError(f"{KEY}: expected one line USER:PASSWORD")
        if any(ord(c) < 32 or ord(c) == 127 for c in user + password):
            raise ConfigError(f"{KEY}: control characters in the user or password")
        return Credentials(user, password)
    raise ConfigError(f"{KEY}: expected one line USER:PASSWORD, the file is empty")


def load(path: str, run_as_user: str = "") -> Credentials:
    """Check and read the file. Raises ConfigError naming the key, the file and the fix."""
    check_private(path, expected_owner(run_as_user))
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SIZE + 1)
    except OSError as e:
        raise ConfigError(f"{KEY}: cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_SIZE:
        raise ConfigError(f"{KEY}: {path} is too large for a USER:PASSWORD line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{KEY}: {path} is not UTF-8 text") from None
    return parse(text)


__all__ = ["Credentials", "load", "parse", "check_private", "expected_owner"]
