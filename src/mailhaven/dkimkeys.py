"""DKIM key files and the config keys that name them (`mailhaven init`, `mailhaven dkim keygen`).

Owns: where keys live (`<config dir>/dkim/<domain>.<selector>.key`, mode 0600, in a 0700 folder;
when root runs the command and run_as_user is set, root's with run_as_user's group, 0640 in a 0750
folder, access.py, so the server can read them after it drops privileges and on a reload), choosing a fresh selector, writing a key without ever replacing one, and rewriting the
domain's `dkim_key`/`dkim_selector` (or the ed25519 pair) in the TOML config file.
Does not own: key generation and signing (policy/dkim.py), reading the key when signing
(cleanup.py, which takes the path from the running config on every message).

Why a new file and a new selector for every key: a key and its selector change together. The old
key file stays and the running server keeps signing with it (its config still names it) until the
next reload or restart; by then the new TXT record must be published, and the old one should stay
a few days for mail still in transit (RFC 6376 §3.6.2.1 selectors allow several live keys).

Config rewriting is line-based, so comments and layout survive: inside the `[domains."D"]` table,
an existing `dkim_key = ...` line is replaced, a missing one is inserted after the table header.
The result is parsed again and must equal the old config plus exactly these keys, else nothing is
written and the error says which lines to set by hand (e.g. a domain given as an inline table).
The file is replaced atomically (temp file, fsync, rename) with its mode and owner kept.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Literal

Algorithm = Literal["rsa", "ed25519"]
KEY_DIR = "dkim"
RSA_BITS = 2048  # RFC 8301 §3.2: at least 1024, 2048 recommended

_SELECTOR = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")


class DkimSetupError(Exception):
    """One line for the user (the CLI prints it, exit 1)."""


def config_keys(algorithm: Algorithm) -> tuple[str, str]:
    """The config keys (key file, selector) of `[domains.D]` for an algorithm."""
    if algorithm == "ed25519":
        return "dkim_ed25519_key", "dkim_ed25519_selector"
    return "dkim_key", "dkim_selector"


def check_selector(selector: str) -> str:
    """RFC 6376 §3.1: a selector is a sub-domain (one or more labels); we take lower-case LDH only."""
    s = selector.strip().lower()
    if not _SELECTOR.match(s) or len(s) > 200:
        raise DkimSetupError(f"selector {selector!r}: expected DNS labels (letters, digits, hyphens)")
    return s


def key_path(config_dir: Path, domain: str, selector: str) -> Path:
    if not _DOMAIN.match(domain):
        raise DkimSetupError(f"{domain!r}: not a valid domain name")
    return config_dir / KEY_DIR / f"{domain}.{check_selector(selector)}.key"


def new_selector(config_dir: Path, domain: str, taken: set[str], algorithm: Algorithm,
                 today: datetime.date | None = None) -> str:
    """"mh20261125" ("mh20261125e" for ed25519), then "...b", "...c" while taken or a key file of
    that name exists. Dated selectors keep rotations apart and tell when a key was made."""
    day = (today or datetime.date.today()).strftime("%Y%m%d")
    base = f"mh{day}" + ("e" if algorithm == "ed25519" else "")
    for suffix in [""] + [chr(c) for c in range(ord("b"), ord("z") + 1)]:
        candidate = base + suffix
        if candidate not in taken and not key_path(config_dir, domain, candidate).exists():
            return candidate
    raise DkimSetupError(f"no free selector left for today ({base}...); pass --selector")


def generate(algorithm: Algorithm) -> tuple[bytes, str]:
    """(private key PEM, TXT record value). Blocking (RSA key generation)."""
    from mailhaven.policy import dkim

    return dkim.generate_ed25519() if algorithm == "ed25519" else dkim.generate_rsa(RSA_BITS)


def _group(run_as_user: str, run_as_group: str) -> int | None:
    """The group to give the files to: run_as_user's (or run_as_group), when root runs us and one is set."""
    if os.geteuid() != 0 or not run_as_user:
        return None
    from mailhaven import access

    try:
        return access.service_ids(run_as_user, run_as_group)[1]
    except access.AccessError as e:
        raise DkimSetupError(str(e)) from None


def write_key(path: Path, pem: bytes, *, run_as_user: str = "", run_as_group: str = "") -> None:
    """Create `path` (mode 0600, its folder 0700; shared with the service group as access.py says
    when root runs us with run_as_user set) with the key; never replaces an existing file."""
    from mailhaven import access

    gid = _group(run_as_user, run_as_group)
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    if gid is not None:
        access.share(folder, gid, access.DIR_MODE)  # the server must be able to reach keys here
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DkimSetupError(f"{path} already exists (choose another --selector)") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(path, 0o600)
        if gid is not None:
            access.share(path, gid, access.SECRET_MODE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --- config rewriting ----------------------------------------------------------------------------

_HEADER = re.compile(r"""^\s*\[\s*domains\s*\.\s*(?P<key>"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*\]\s*(?:#.*)?$""")
_TABLE = re.compile(r"^\s*\[")


def toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes, plus DEL, which TOML forbids raw and JSON leaves alone."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _unquote(key: str) -> str:
    if key.startswith('"'):
        loaded = tomllib.loads(f"k = {key}")["k"]
        return str(loaded)
    if key.startswith("'"):
        return key[1:-1]
    return key


def _domain_key(data: dict[str, Any], domain: str) -> str | None:
    domains = data.get("domains")
    if not isinstance(domains, dict):
        return None
    for k in domains:
        if k.lower().rstrip(".") == domain:
            return str(k)
    return None


def set_domain_keys(text: str, domain: str, values: dict[str, str]) -> str:
    """The config text with `values` set in domain's `[domains."D"]` table (see the module doc).
    Raises DkimSetupError when the file cannot be edited safely."""
    manual = ", ".join(f"{k} = {toml_string(v)}" for k, v in values.items())
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DkimSetupError(f"config is not valid TOML ({e}); set by hand: {manual}") from None
    raw_key = _domain_key(before, domain)
    if raw_key is None:
        raise DkimSetupError(f"domain {domain} is not in the config")
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)  # TOML lines end at LF only (not at NEL, U+2028...)
    headers = [i for i, ln in enumerate(lines)
               if (m := _HEADER.match(ln.rstrip("\r\n"))) and _unquote(m.group("key")) == raw_key]
    if len(headers) != 1:
        raise DkimSetupError(f'cannot find one [domains.{toml_string(raw_key)}] table to edit; '
                             f'set by hand in it: {manual}')
    start = headers[0] + 1
    end = next((i for i in range(start, len(lines)) if _TABLE.match(lines[i])), len(lines))
    newline = "\r\n" if lines[headers[0]].endswith("\r\n") else "\n"
    insert: list[str] = []
    for key, value in values.items():
        pattern = re.compile(rf"^(\s*){re.escape(key)}\s*=")
        hits = [i for i in range(start, end) if pattern.match(lines[i])]
        new_line = f"{key} = {toml_string(value)}{newline}"
        if hits:
            indent = pattern.match(lines[hits[0]]).group(1)  # type: ignore[union-attr]
            lines[hits[0]] = indent + new_line
        else:
            insert.append(new_line)
    lines[start:start] = insert
    result = "".join(lines)
    expected = copy.deepcopy(before)
    expected["domains"][raw_key].update(values)
    try:
        after = tomllib.loads(result)
    except tomllib.TOMLDecodeError:
        after = None
    if after != expected:
        raise DkimSetupError(f"could not edit the config safely; set by hand in [domains.{toml_string(raw_key)}]: "
                             f"{manual}")
    return result


def update_config_file(path: Path, domain: str, values: dict[str, str]) -> None:
    """Rewrite the config file with `values` set for `domain`; atomic, mode and owner kept."""
    with path.open(encoding="utf-8", newline="") as f:  # keep CRLF files CRLF
        text = f.read()
    new = set_domain_keys(text, domain, values)
    st = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def relative_to(config_dir: Path, path: Path) -> str:
    """How the config names a key file: relative to the config's folder when inside it."""
    try:
        return str(path.relative_to(config_dir))
    except ValueError:
        return str(path)


__all__ = ["Algorithm", "DkimSetupError", "KEY_DIR", "RSA_BITS", "config_keys", "check_selector", "key_path",
           "new_selector", "generate", "write_key", "set_domain_keys", "update_config_file", "relative_to",
           "toml_string"]
