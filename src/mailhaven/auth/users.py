"""Users and aliases: the TOML users file, and the Directory that resolves addresses over it.

Owns: the users file format, its atomic editing (used by the CLI), address resolution (users,
aliases, catch-all, sub-addresses), "may this user send as that address", and login checks.
Does not own: password hash formats (auth/passwords.py), the login path with its throttle and cache
(auth/login.py), domains (config).

File format (comments are not preserved when the CLI rewrites the file):

    [users."alice@example.test"]
    password = "$argon2id$v=19$m=65536,t=3,p=4$..."

    [aliases]
    "postmaster@example.test" = ["alice@example.test"]
    "team@example.test" = ["alice@example.test", "bob@example.test"]

Role addresses (RFC 5321 §4.5.1 postmaster, which MUST be accepted; RFC 2142 §4 abuse) are made
explicit aliases: `UsersFile.add_role_aliases` writes postmaster@D -> the chosen user and, as
Postfix's sample aliases file does, abuse@D -> postmaster@D (`init --postmaster`, or the first
`user add` in a domain). An older users file without them keeps working: `Directory.postmaster`
falls back to the domain's first user (the MX delivers there), and `Directory.role_warnings` says
so, for check-config, doctor and the server log.

Addresses are normalised: the domain is lower-cased (IDNA U-labels become A-labels); the local part
keeps the case it was written with (that is the canonical name, also used for the Maildir) but is
compared case-insensitively, as Postfix and Dovecot do by default. Two users or aliases differing
only in case are an error. Alias targets are users or aliases in a local domain, or addresses in
other domains (forwarding: delivery/forward.py sends them one SRS-rewritten copy); dangling local
targets are skipped and reported in `Directory.warnings`.
A target `|/path/to/command args` is a program (Postfix aliases(5)): split with shlex, the command an
absolute path, no shell; `Directory` refuses it (ConfigError naming the alias) unless
`[delivery] allow_programs = true` (delivery/program.py runs them, from the queue).
`Directory.targets` gives all three an address reaches: local users, remote forward targets, programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shlex
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mailhaven.auth import passwords
from mailhaven.config import Config, parse_size, parse_toml
from mailhaven.errors import ConfigError
from mailhaven.message.address import Address, format_local, parse_domain, parse_mailbox
from mailhaven.seams import Targets

MAX_ALIAS_DEPTH = 10  # alias chains deeper than this are cut (and reported)
MAX_LOGIN_LENGTH = 512
POSTMASTER, ABUSE = "postmaster", "abuse"
ROLES = (POSTMASTER, ABUSE)  # RFC 5321 §4.5.1 (postmaster, MUST), RFC 2142 §4 (abuse)

# How an address reaches its users: its own user or alias, the domain's catch-all, the implicit
# first-user fallback (postmaster only), or not at all.
How = Literal["user", "alias", "catch-all", "first user", ""]


def address_key(address: str | Address) -> str:
    """Comparison key of an address (case-insensitive local part, normalised domain). ValueError."""
    addr = address if isinstance(address, Address) else parse_mailbox(address)
    return addr.normalized()


def canonical(address: str) -> str:
    """The address as we store it: local part as written, domain normalised. Raises ValueError."""
    return str(parse_mailbox(address))


MAX_PROGRAM_LENGTH = 4096


def is_program(target: str) -> bool:
    """An alias target `|/path/to/command args`: delivery to a program (as in Postfix aliases(5))."""
    return target.lstrip().startswith("|")


def program_argv(target: str) -> list[str]:
    """The argv of a program target (shlex-split, no shell; the command an absolute path).
    Raises ValueError saying what is wrong."""
    text = target.strip()
    if not text.startswith("|"):
        raise ValueError("a program target starts with |")
    if len(text) > MAX_PROGRAM_LENGTH or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("a program target is one line of printable text")
    argv = shlex.split(text[1:])
    if not argv or not argv[0].startswith("/"):
        raise ValueError("the command must be an absolute path (\"|/path/to/command args\"; no shell)")
    return argv


def canonical_target(target: str) -> str:
    """An alias target as stored: an address (canonical) or a program (`|` then the command as
    written, stripped). Raises ValueError."""
    if is_program(target):
        program_argv(target)
        return "|" + target.strip()[1:].strip()
    return canonical(target)


def target_key(target: str) -> str:
    """Comparison key of an alias target: a program compares as written."""
    return target if is_program(target) else address_key(target)


# --- the file ------------------------------------------------------------------------------------


@dataclass
class UserEntry:
    address: str  # canonical form
    password: str  # hash (see auth/passwords.py)
    quota: int | None = None  # storage limit in octets (None: the domain's default; 0: none)
    quota_messages: int | None = None  # most messages (None: the domain's default; 0: no limit)


class UsersFile:
    """The users file in memory. Edit with the methods, then `save()`; or use `UsersFile.edit(path)`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._users: dict[str, UserEntry] = {}  # key -> entry
        self._aliases: dict[str, tuple[str, list[str]]] = {}  # key -> (canonical alias, canonical targets)

    # -- loading --

    @classmethod
    def load(cls, path: str | Path) -> UsersFile:
        """Read and validate. Raises ConfigError (one line, naming the file and key)."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{p}: users file not found") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read users file: {e.strerror}") from None
        return cls.loads(raw, p)

    @classmethod
    def loads(cls, raw: bytes, path: str | Path) -> UsersFile:
        p = Path(path)
        data = parse_toml(raw, p)
        uf = cls(p)
        uf._fill(data)
        return uf

    def _fill(self, data: dict[str, Any]) -> None:
        p = self.path

        def fail(where: str, reason: str) -> ConfigError:
            return ConfigError(f"{p}: {where}: {reason}")

        for key in data:
            if key not in ("users", "aliases"):
                raise fail(_tkey(key), "unknown key (expected [users.\"ADDRESS\"] or [aliases])")
        users = data.get("users", {})
        if not isinstance(users, dict):
            raise fail("users", "expected a table")
        for addr, entry in users.items():
            where = f"users.{_tkey(addr)}"
            try:
                canon = canonical(addr)
            except ValueError as e:
                raise fail(where, f"not a valid address ({e})") from None
            if not isinstance(entry, dict):
                raise fail(where, "expected a table with password = \"...\"")
            for k in entry:
                if k not in ("password", "quota", "quota_messages"):
                    raise fail(f"{where}.{_tkey(k)}", "unknown key")
            limits: list[int | None] = []
            for k in ("quota", "quota_messages"):
                if k not in entry:
                    limits.append(None)
                    continue
                try:  # quota: octets or "500M"/"1G" (binary units); quota_messages: a count
                    limits.append(parse_size(entry[k]) if k == "quota" or isinstance(entry[k], int) else -1)
                except ValueError:
                    limits.append(-1)
                if limits[-1] == -1 or (limits[-1] or 0) > 2**62:
                    raise fail(f"{where}.{k}", "expected a size (octets, or \"500M\", \"1G\"; 0 = no limit)"
                               if k == "quota" else "expected a count of messages (0 = no limit)")
            pw = entry.get("password")
            if not isinstance(pw, str):
                raise fail(f"{where}.password", "expected a password hash string")
            if not passwords.is_supported_hash(pw):
                raise fail(f"{where}.password", "not a supported password hash (expected \"$argon2id$...\" "
                           "or \"$scrypt$...\"; clear text is refused; use `mailhaven user passwd`)")
            k = address_key(canon)
            if k in self._users:
                raise fail(where, f"same user as {self._users[k].address!r} (local parts ignore case)")
            self._users[k] = UserEntry(canon, pw, limits[0], limits[1])
        aliases = data.get("aliases", {})
        if not isinstance(aliases, dict):
            raise fail("aliases", "expected a table")
        for alias, targets in aliases.items():
            where = f"aliases.{_tkey(alias)}"
            try:
                canon = canonical(alias)
            except ValueError as e:
                raise fail(where, f"not a valid address ({e})") from None
            if isinstance(targets, str):
                targets = [targets]
            if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
                raise fail(where, "expected a non-empty array of addresses")
            canon_targets: list[str] = []
            for i, t in enumerate(targets):
                try:
                    ct = canonical_target(t)
                except ValueError as e:
                    what = "not a valid program target" if is_program(t) else "not a valid address"
                    raise fail(f"{where}[{i}]", f"{what} ({e})") from None
                if ct not in canon_targets:
                    canon_targets.append(ct)
            k = address_key(canon)
            if k in self._users:
                raise fail(where, f"is also a user ({self._users[k].address!r})")
            if k in self._aliases:
                raise fail(where, f"same alias as {self._aliases[k][0]!r} (local parts ignore case)")
            self._aliases[k] = (canon, canon_targets)

    # -- reading --

    def get_user(self, address: str) -> UserEntry | None:
        try:
            return self._users.get(address_key(address))
        except ValueError:
            return None

    def get_alias(self, address: str) -> list[str] | None:
        try:
            entry = self._aliases.get(address_key(address))
        except ValueError:
            return None
        return list(entry[1]) if entry else None

    def list_users(self) -> list[str]:
        return sorted(e.address for e in self._users.values())

    def list_aliases(self) -> dict[str, list[str]]:
        return {canon: list(targets) for canon, targets in sorted(self._aliases.values())}

    def users(self) -> list[UserEntry]:
        return [UserEntry(e.address, e.password) for e in self._users.values()]

    # -- editing (in memory; then save()) --

    def add_user(self, address: str, password_hash: str) -> str:
        """Add a user; returns its canonical address. ValueError if it exists or is an alias."""
        canon = canonical(address)
        k = address_key(canon)
        if k in self._users:
            raise ValueError(f"user {self._users[k].address} already exists")
        if k in self._aliases:
            raise ValueError(f"{self._aliases[k][0]} is an alias")
        _check_hash(password_hash)
        self._users[k] = UserEntry(canon, password_hash)
        return canon

    def set_password(self, address: str, password_hash: str) -> None:
        entry = self._users.get(address_key(address))
        if entry is None:
            raise ValueError(f"no such user: {address}")
        _check_hash(password_hash)
        entry.password = password_hash

    def set_quota(self, address: str, quota: int | None, quota_messages: int | None) -> None:
        """A user's own limits (None: the domain's default; 0: no limit)."""
        e = self._users.get(address_key(address))
        if e is None:
            raise ConfigError(f"no such user: {address}")
        e.quota, e.quota_messages = quota, quota_messages

    def delete_user(self, address: str) -> list[str]:
        """Remove a user and drop it from alias targets (aliases left empty go too).
        Returns the canonical names of the aliases that changed."""
        k = address_key(address)
        if k not in self._users:
            raise ValueError(f"no such user: {address}")
        del self._users[k]
        changed: list[str] = []
        for ak, (acanon, targets) in list(self._aliases.items()):
            kept = [t for t in targets if target_key(t) != k]
            if len(kept) != len(targets):
                changed.append(acanon)
                if kept:
                    self._aliases[ak] = (acanon, kept)
                else:
                    del self._aliases[ak]
        return changed

    def add_alias(self, alias: str, targets: Iterable[str], *, replace: bool = False) -> str:
        """Create an alias, or add targets to an existing one (replace=True: set them).
        Returns the canonical alias. ValueError on a bad address or when `alias` is a user."""
        canon = canonical(alias)
        k = address_key(canon)
        if k in self._users:
            raise ValueError(f"{self._users[k].address} is a user")
        new = [canonical_target(t) for t in targets]
        if not new:
            raise ValueError("an alias needs at least one target")
        current = [] if replace or k not in self._aliases else list(self._aliases[k][1])
        keys = {target_key(t) for t in current}
        for t in new:
            if target_key(t) not in keys:
                current.append(t)
                keys.add(target_key(t))
        name = self._aliases[k][0] if k in self._aliases and not replace else canon
        self._aliases[k] = (name, current)
        return name

    def delete_alias(self, alias: str, targets: Iterable[str] | None = None) -> None:
        """Remove an alias, or only some of its targets (the alias goes when none are left)."""
        k = address_key(alias)
        if k not in self._aliases:
            raise ValueError(f"no such alias: {alias}")
        if targets is None:
            del self._aliases[k]
            return
        drop = {target_key(t) for t in targets}
        canon, current = self._aliases[k]
        kept = [t for t in current if target_key(t) not in drop]
        if kept:
            self._aliases[k] = (canon, kept)
        else:
            del self._aliases[k]

    def add_role_aliases(self, domain: str, target: str) -> list[tuple[str, str]]:
        """Make the role addresses of `domain` explicit: postmaster@domain -> target and
        abuse@domain -> postmaster@domain, each only where no user or alias of that name exists
        (and never an alias onto itself). Returns the (alias, target) pairs added."""
        postmaster = canonical(f"{POSTMASTER}@{domain}")
        wanted = [(postmaster, canonical(target)), (canonical(f"{ABUSE}@{domain}"), postmaster)]
        added: list[tuple[str, str]] = []
        for alias, to in wanted:
            k = address_key(alias)
            if k in self._users or k in self._aliases or k == address_key(target):
                continue
            added.append((self.add_alias(alias, [to]), to))
        return added

    # -- writing --

    def dumps(self) -> str:
        lines = ["# Mailhaven users and aliases. Managed by `mailhaven user ...` and `mailhaven alias ...`;",
                 "# hand edits are fine, but comments are not kept when the tool rewrites this file.", ""]
        for e in sorted(self._users.values(), key=lambda e: e.address):
            lines += [f"[users.{_tstr(e.address)}]", f"password = {_tstr(e.password)}"]
            lines += [f"{k} = {v}" for k, v in (("quota", e.quota), ("quota_messages", e.quota_messages))
                      if v is not None]
            lines.append("")
        if self._aliases:
            lines.append("[aliases]")
            for canon, targets in sorted(self._aliases.values()):
                lines.append(f"{_tstr(canon)} = [" + ", ".join(_tstr(t) for t in targets) + "]")
            lines.append("")
        return "\n".join(lines)

    def save(self) -> None:
        """Write atomically: temp file in the same folder (0600), fsync, rename, fsync the folder.
        Keeps the owner, group and group-read bit of an existing file when we may (so root running
        the CLI does not lock the server out: `init --run-as-user` makes it root:GROUP 0640,
        access.py). Never readable by others. Blocking: from async code use asyncio.to_thread."""
        data = self.dumps().encode("utf-8")
        folder = self.path.parent
        try:
            old = self.path.stat()
        except FileNotFoundError:
            old = None
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        try:
            os.fchmod(fd, 0o600)
            if old is not None and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, old.st_uid, old.st_gid)
            if old is not None and old.st_mode & 0o040 and os.fstat(fd).st_gid == old.st_gid:
                os.fchmod(fd, 0o640)  # the same group may read it as before
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @classmethod
    @contextlib.contextmanager
    def edit(cls, path: str | Path, *, create: bool = True) -> Iterator[UsersFile]:
        """Lock (flock on `<path>.lock`), load (or start empty when missing and `create`), yield,
        and save if the block ends without an exception. For the CLI."""
        p = Path(path)
        lock_fd = os.open(p.with_name(p.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if create and not p.exists():
                uf = cls(p)
            else:
                uf = cls.load(p)
            yield uf
            uf.save()
        finally:
            os.close(lock_fd)


def _check_hash(h: str) -> None:
    if not passwords.is_supported_hash(h):
        raise ValueError("not a supported password hash (expected $argon2id$... or $scrypt$...)")


def _tstr(s: str) -> str:
    """A TOML basic string."""
    out = []
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _tkey(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _tstr(k)


# --- resolution ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleWarning:
    """A role address (postmaster@, abuse@) that reaches someone only implicitly, or no one."""

    address: str
    message: str
    fix: str  # the `mailhaven` arguments that make it explicit, e.g. "alias add abuse@D postmaster@D"

    @property
    def text(self) -> str:
        """The line in Directory.warnings (check-config, the server log)."""
        return f"{self.message} (to make it explicit: mailhaven {self.fix})"


class Directory:
    """Address resolution and login over the config's domains and a loaded UsersFile.

    Immutable once built, and cheap to build: on reload make a new one and swap the reference."""

    def __init__(self, config: Config, users_file: UsersFile) -> None:
        self.config = config
        self._sep = config.plus_separator
        self._users: dict[str, UserEntry] = {k: UserEntry(e.address, e.password, e.quota, e.quota_messages)
                                             for k, e in users_file._users.items()}
        self._aliases: dict[str, list[str]] = {}
        self._remote: dict[str, list[str]] = {}  # alias key -> its targets in other domains (forwarding)
        self._programs: dict[str, list[str]] = {}  # alias key -> its program targets ("|/path args")
        self._alias_names: dict[str, str] = {k: canon for k, (canon, _t) in users_file._aliases.items()}
        self.warnings: list[str] = []
        for e in self._users.values():
            if not self.is_local_domain(e.address.rpartition("@")[2]):
                self.warnings.append(f"user {e.address}: domain is not in [domains]; it can log in "
                                     "but receives no mail")
        for k, (canon, targets) in users_file._aliases.items():
            if not self.is_local_domain(canon.rpartition("@")[2]):
                self.warnings.append(f"alias {canon}: domain is not in [domains]; ignored")
                continue
            keys: list[str] = []
            remote: list[str] = []
            for t in targets:
                if is_program(t):
                    # A program runs as [delivery] program_user through the queue (delivery/program.py);
                    # refused unless the operator allowed programs (Postfix: allow_mail_to_commands).
                    if not config.delivery.allow_programs:
                        raise ConfigError(f"{users_file.path}: aliases.{_tkey(canon)}: program target {t} "
                                          "refused ([delivery] allow_programs = false)")
                    self._programs.setdefault(k, []).append(t)
                    continue
                if not self.is_local_domain(t.rpartition("@")[2]):
                    remote.append(t)  # forwarded to another server
                    continue
                keys.append(address_key(t))
            self._aliases[k] = keys
            if remote:
                self._remote[k] = remote
                if not (config.delivery.srs_secret_file or config.delivery.srs_secret):
                    self.warnings.append(f"alias {canon}: forwards to {', '.join(remote)} with the sender "
                                         "not rewritten (no [delivery] srs_secret_file): SPF will fail there")
        for k in self._aliases:
            problems: list[str] = []
            self._expand(k, 0, set(), [], problems)
            for pr in problems:
                w = f"alias {users_file._aliases[k][0]}: {pr}"
                if w not in self.warnings:
                    self.warnings.append(w)
        for dname, dom in config.domains.items():
            if dom.catch_all:
                try:
                    ok = self._lookup_targets(address_key(dom.catch_all)) is not None
                except ValueError:
                    ok = False
                if not ok:
                    self.warnings.append(f"domains.{dname}.catch_all: {dom.catch_all} is not a user or alias")
        self.role_warnings: list[RoleWarning] = self._role_warnings()
        self.warnings += [r.text for r in self.role_warnings]

    @classmethod
    def load(cls, config: Config) -> Directory:
        """Load config.users_file and build. Raises ConfigError. Blocking (reads a file)."""
        return cls(config, UsersFile.load(config.users_file))

    # -- queries --

    def is_local_domain(self, domain: str) -> bool:
        try:
            return parse_domain(domain) in self.config.domains
        except ValueError:
            return False

    def user(self, address: str) -> str | None:
        """The canonical user for exactly this address (no aliases, no sub-address), or None."""
        try:
            e = self._users.get(address_key(address))
        except ValueError:
            return None
        return e.address if e else None

    def quota_limits(self, user: str) -> tuple[int, int]:
        """(octets, messages) `user` may keep, 0 = no limit: the user's own `quota`/`quota_messages`
        in the users file, else their domain's ([domains."x"] quota/quota_messages)."""
        try:
            e = self._users.get(address_key(user))
        except ValueError:
            e = None
        dom = self.config.domains.get(user.rpartition("@")[2].lower().rstrip("."))
        octets = e.quota if e is not None and e.quota is not None else (dom.quota if dom else 0)
        count = (e.quota_messages if e is not None and e.quota_messages is not None
                 else (dom.quota_messages if dom else 0))
        return octets, count

    @property
    def user_names(self) -> list[str]:
        return sorted(e.address for e in self._users.values())

    def _expand(self, key: str, depth: int, stack: set[str], out: list[str], problems: list[str] | None,
                visited: set[str] | None = None, forward: list[str] | None = None,
                programs: list[tuple[str, str]] | None = None) -> bool:
        """Append the users `key` leads to (to `forward` its targets in other domains, to `programs`
        its program targets with the alias naming each); False when `key` is neither user nor alias.
        `stack` detects loops; `visited` keeps shared sub-aliases from being expanded twice; the
        depth limit holds for remote and program targets too."""
        e = self._users.get(key)
        if e is not None:
            if e.address not in out:
                out.append(e.address)
            return True
        targets = self._aliases.get(key)
        if targets is None:
            return False
        if visited is None:
            visited = set()
        if key in stack:
            if problems is not None:
                problems.append(f"alias loop through {key}")
            return True
        if key in visited:
            return True
        if depth >= MAX_ALIAS_DEPTH:
            if problems is not None:
                problems.append(f"alias chain deeper than {MAX_ALIAS_DEPTH}")
            return True
        visited.add(key)
        stack.add(key)
        if forward is not None:
            for r in self._remote.get(key, ()):
                if r.lower() not in (f.lower() for f in forward):
                    forward.append(r)
        if programs is not None:  # (command, the alias naming it)
            programs.extend((p, key) for p in self._programs.get(key, ()) if (p, key) not in programs)
        for t in targets:
            if not self._expand(t, depth + 1, stack, out, problems, visited, forward, programs) \
                    and problems is not None:
                problems.append(f"target {t} is not a user or alias")
        stack.discard(key)
        return True

    def _lookup_key(self, key: str) -> list[str] | None:
        out: list[str] = []
        if not self._expand(key, 0, set(), out, None):
            return None
        return out or None

    def _lookup_targets(self, key: str) -> Targets | None:
        """Users, remote targets and programs `key` reaches (programs by alias key), None if none."""
        t = Targets()
        if not self._expand(key, 0, set(), t.users, None, forward=t.forward, programs=t.programs) \
                or not (t.users or t.forward or t.programs):
            return None
        return t

    def _candidates(self, addr: Address) -> list[str]:
        """Exact key first, then the key without the +tag (RFC 5233 sub-address)."""
        keys = [addr.normalized()]
        if self._sep and self._sep in addr.local:
            base = addr.local.split(self._sep, 1)[0]
            if base:
                keys.append(f"{format_local(base.lower())}@{addr.domain}")
        return keys

    def resolve(self, address: str | Address) -> list[str] | None:
        """Canonical user addresses mail to `address` goes to, or None (unknown, not local, or only
        forwarded elsewhere or piped to programs: see `targets`)."""
        return self.targets(address).users or None

    def program_targets(self, address: str | Address) -> list[tuple[str, str]]:
        """The program targets mail to `address` reaches (the same search as `resolve`; only with
        [delivery] allow_programs), each as (command "|/path args", recipient): the recipient is
        the address whose alias names the command, `address` itself as given when that is the
        alias reached first (Postfix local(8)'s RECIPIENT; ORIGINAL_RECIPIENT is `address`)."""
        return self.targets(address).programs

    def targets(self, address: str | Address) -> Targets:
        """The canonical local users, the addresses in other domains (forwarding) and the program
        targets (as in `program_targets`) mail to `address` goes to: the first of exact user/alias,
        without +tag, the domain's catch-all that reaches anyone, anywhere or any program; all
        empty if none (unknown, or not local)."""
        try:
            addr = address if isinstance(address, Address) else parse_mailbox(address)
        except ValueError:
            return Targets()
        if addr.is_literal or addr.domain not in self.config.domains:
            return Targets()
        keys = self._candidates(addr)
        catch_all = self.config.domains[addr.domain].catch_all
        if catch_all:
            try:
                keys.append(address_key(catch_all))
            except ValueError:
                pass
        for key in keys:
            out: list[str] = []
            forward: list[str] = []
            programs: list[tuple[str, str]] = []
            if self._expand(key, 0, set(), out, None, forward=forward, programs=programs) and (out or forward or programs):
                return Targets(out, forward,
                               [(cmd, str(addr) if owner == key else self._alias_names.get(owner, owner))
                                for cmd, owner in programs])
        return Targets()

    def how(self, address: str) -> tuple[list[str] | None, How]:
        """Who gets mail for exactly `address` (no +tag) and how: its own user or alias, else the
        domain's catch-all, else nobody: (None, "")."""
        try:
            key = address_key(address)
        except ValueError:
            return None, ""
        found = self._lookup_key(key)
        if found is not None:
            return found, "user" if key in self._users else "alias"
        dom = self.config.domains.get(key.rpartition("@")[2])
        if dom is not None and dom.catch_all:
            with contextlib.suppress(ValueError):
                found = self._lookup_key(address_key(dom.catch_all))
            if found is not None:
                return found, "catch-all"
        return None, ""

    def postmaster(self, domain: str) -> tuple[list[str] | None, How]:
        """Who gets mail for postmaster@`domain` (RFC 5321 §4.5.1: it MUST be accepted), and how.

        Its user or alias, or the domain's catch-all; else, implicitly, the domain's first user in
        sorted order, else the first user of the first domain that has one ("first user": users
        files from before postmaster aliases were written); (None, "") only with no users at all."""
        found, how = self.how(f"{POSTMASTER}@{domain}")
        if found:
            return found, how
        if self._reaches_elsewhere(f"{POSTMASTER}@{domain}"):
            return [], "alias"  # it forwards only to other servers or programs: explicit all the same
        return self.first_user(domain)

    def first_user(self, domain: str) -> tuple[list[str] | None, How]:
        """The implicit postmaster: `domain`'s first user in sorted order, else the first user of
        the first domain that has one; (None, "") with no users at all."""
        names = self.user_names  # sorted
        domains = [domain.lower()] + [d for d in self.config.domains if d != domain.lower()]
        for d in domains:
            mine = [u for u in names if u.rpartition("@")[2] == d]
            if mine:
                return mine[:1], "first user"
        return None, ""

    def _role_warnings(self) -> list[RoleWarning]:
        """Role addresses of our domains that reach someone only implicitly (the first-user
        fallback, or the catch-all) or not at all. None while there are no users at all."""
        if not self._users:
            return []
        out: list[RoleWarning] = []
        for domain in sorted(self.config.domains):
            postmaster = f"{POSTMASTER}@{domain}"
            users, how = self.postmaster(domain)
            if how == "first user" and users:
                out.append(RoleWarning(postmaster, f"{postmaster} is not a user or alias: its mail goes to "
                                       f"{users[0]} (the first user) only implicitly",
                                       f"alias add {postmaster} {users[0]}"))
            elif how == "catch-all" and users:
                out.append(RoleWarning(postmaster, f"{postmaster} reaches {', '.join(users)} only through "
                                       "the catch-all", f"alias add {postmaster} {users[0]}"))
            abuse = f"{ABUSE}@{domain}"
            users, how = self.how(abuse)
            if how == "catch-all" and users:
                out.append(RoleWarning(abuse, f"{abuse} reaches {', '.join(users)} only through the catch-all",
                                       f"alias add {abuse} {postmaster}"))
            elif not users and not self._reaches_elsewhere(abuse):
                out.append(RoleWarning(abuse, f"{abuse} reaches no one: abuse reports (RFC 2142) are refused",
                                       f"alias add {abuse} {postmaster}"))
        return out

    def _reaches_elsewhere(self, address: str) -> bool:
        """Whether mail to `address` goes to another server's address or a program."""
        found = self.targets(address)
        return bool(found.forward or found.programs)

    def owns(self, user: str, address: str | Address) -> bool:
        """May `user` send as `address`: its own address, its +tag addresses, and aliases whose
        (transitive) targets include it. A catch-all does not make a user own the domain."""
        try:
            ukey = address_key(user)
            addr = address if isinstance(address, Address) else parse_mailbox(address)
        except ValueError:
            return False
        u = self._users.get(ukey)
        if u is None:
            return False
        for key in self._candidates(addr):
            found = self._lookup_key(key)
            if found is not None:
                return u.address in found
        return False

    def entry(self, login: str) -> UserEntry | None:
        """The user a login names (full address, any case), with its password hash; None if none.
        auth/login.py checks the password."""
        if len(login) > MAX_LOGIN_LENGTH:
            return None
        try:
            return self._users.get(address_key(login))
        except ValueError:
            return None

    async def authenticate(self, login: str, password: str) -> str | None:
        """Check a login (full address, any case) and password. Returns the canonical user or None.
        Spends about the same time for unknown users (verifies against a dummy hash)."""
        entry: UserEntry | None = None
        if len(login) <= MAX_LOGIN_LENGTH:
            try:
                entry = self._users.get(address_key(login))
            except ValueError:
                entry = None
        if entry is None:
            dummy = await asyncio.to_thread(passwords.dummy_hash)
            await passwords.verify(dummy, password)
            return None
        if await passwords.verify(entry.password, password):
            return entry.address
        return None


__all__ = ["UsersFile", "UserEntry", "Directory", "RoleWarning", "How", "address_key", "canonical", "MAX_ALIAS_DEPTH",
           "is_program", "program_argv", "canonical_target", "target_key",
           "POSTMASTER", "ABUSE", "ROLES"]
