"""Who may read what: the owners and modes that let the service user (run_as_user) read its config.

Owns: the one rule for files the server reads but must not change, applied by root (`mailhaven init
--run-as-user`, `mailhaven dkim keygen` when run_as_user is set) and reported as one line per path:
- the config folder and the folders in it that hold what the server reads (`tls/`, `dkim/`):
  owner root, group = the service user's group, mode 0750;
- the config file, the users file, the TLS key and DKIM keys: root, that group, 0640 (the
  certificate: 0644). The server reads them at start and again on every reload (SIGHUP), already
  without root, but cannot change them; nobody else can read them. (Postfix and Dovecot keep
  their config and keys root's the same way: `root:dovecot 0640` for a passwd-file.)
- the data folder: owned by the service user and its group, mode 0700 (it writes there).
Does not own: making the files (cli.py, tls.py, dkimkeys.py), checking them later (doctor.py), or
the server's own switch of user at start (app.py drop_privileges).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

DIR_MODE = 0o750
SECRET_MODE = 0o640
PUBLIC_MODE = 0o644
DATA_MODE = 0o700


class AccessError(Exception):
    """One line for the user (no such user or group)."""


def service_ids(user: str, group: str = "") -> tuple[int, int]:
    """(uid, gid) of the service user: its own group, or `group` when given (run_as_group)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise AccessError(f"run_as_user: no such user: {user} (create it first: useradd --system "
                          f"--user-group --shell /usr/sbin/nologin {user})") from None
    try:
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    except KeyError:
        raise AccessError(f"run_as_group: no such group: {group}") from None
    return pw.pw_uid, gid


def describe(path: Path) -> str:
    """`path owner:group mode`, as `ls -l` would name them."""
    st = path.stat()
    return f"{path} {_user(st.st_uid)}:{_group(st.st_gid)} {stat.S_IMODE(st.st_mode):04o}"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def share(path: Path, gid: int, mode: int) -> None:
    """Give `path` to group `gid` with `mode`; the owner stays (root, who made it)."""
    os.chown(path, -1, gid)
    os.chmod(path, mode)


def share_file(config_dir: Path, path: Path, gid: int, mode: int = SECRET_MODE) -> list[Path]:
    """Share `path` and every folder from `config_dir` down to it (DIR_MODE), so the service user
    can reach it; returns the paths changed, folders first. A file outside `config_dir` (a
    certificate under /etc/letsencrypt, say) is left alone: its owner decides who reads it."""
    try:
        rel = path.relative_to(config_dir)
    except ValueError:
        return []
    changed: list[Path] = []
    folder = config_dir
    for part in rel.parts[:-1]:
        folder = folder / part
        share(folder, gid, DIR_MODE)
        changed.append(folder)
    share(path, gid, mode)
    return [*changed, path]


def give_data_dir(data_dir: Path, uid: int, gid: int) -> bool:
    """Make the data folder the service user's (mode 0700) when it is new, empty or already
    theirs; False when it holds someone else's files (no recursive chown behind the admin's back,
    as app.prepare_data_dir)."""
    st = data_dir.stat()
    if st.st_uid != uid and any(data_dir.iterdir()):
        return False
    os.chown(data_dir, uid, gid)
    os.chmod(data_dir, DATA_MODE)
    return True


def grant(*, config_dir: Path, shared: list[tuple[Path, int]], data_dir: Path, user: str,
          group: str = "") -> list[str]:
    """As root: the config folder and each (file, mode) in `shared` to the service user's group,
    the data folder to the user. Returns what was done, one line per path."""
    uid, gid = service_ids(user, group)
    share(config_dir, gid, DIR_MODE)
    done = [config_dir]
    for path, mode in shared:
        done += [p for p in share_file(config_dir, path, gid, mode) if p not in done]
    lines = [describe(p) for p in done]
    if give_data_dir(data_dir, uid, gid):
        lines.append(describe(data_dir))
    else:
        lines.append(f"{data_dir} holds files and is not {user}'s: left as is (chown -R {user}: {data_dir})")
    return lines


__all__ = ["AccessError", "DIR_MODE", "SECRET_MODE", "PUBLIC_MODE", "DATA_MODE", "service_ids", "describe",
           "share", "share_file", "give_data_dir", "grant"]
