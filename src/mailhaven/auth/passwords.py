"""Password hashes: create argon2id hashes, verify argon2 and scrypt hashes, say when to rehash.

Owns: the hash formats we accept and the cost parameters. Does not own: where hashes are stored
(auth/users.py) or login throttling (limits.py).

Formats accepted by `verify`:

- argon2 (PHC string, RFC 9106): `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`; `$argon2i$` and
  `$argon2d$` verify too but `needs_rehash` says True for them.
- scrypt (our own format, for hashes migrated from other systems):
  `$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>` where salt and hash are standard base64 with or
  without `=` padding, N = 2**ln, the derived key length is the decoded hash length (16-128 bytes)
  and the password is UTF-8. Cost is bounded (ln <= 20, r <= 32, p <= 16) so a hostile users file
  cannot make a login eat the machine. `hash_scrypt()` creates one (tests, migrations).

Anything else (clear text, `{PLAIN}`, crypt(3) hashes, garbage) makes `verify` return False; `verify`
never raises on bad input. All hashing runs off the event loop: `verify(..., executor=)` runs on
the executor given (auth/login.py passes its own, so a login storm never queues behind the store's
work in the default pool), else in asyncio.to_thread.

Cost: production default is argon2id m=19 MiB (19456 KiB), t=2, p=1, OWASP's recommended setting
(Password Storage Cheat Sheet): about 20-30 ms and 19 MiB per check, one core. The previous default
(m=64 MiB, t=3, p=4, RFC 9106 §4's second recommended option) cost 0.2 s idle and over 1 s under
load per login; hashes with other parameters still verify and `needs_rehash` says True for them,
so the login service rewrites them after the next good login. Setting the environment variable `MAILHAVEN_FAST_HASH=1` selects t=1, m=1 MiB, p=1 for tests (the test
fixture `fast_hashing` sets it); explicit `params=` wins over both.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from concurrent.futures import Executor

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

FAST_ENV = "MAILHAVEN_FAST_HASH"
MAX_PASSWORD_BYTES = 4096  # longer input is refused outright (and costs nothing)

DEFAULT_PARAMS = argon2.Parameters(
    type=argon2.Type.ID, version=19, salt_len=16, hash_len=32, time_cost=2, memory_cost=19456, parallelism=1
)  # OWASP Password Storage Cheat Sheet: argon2id m=19 MiB, t=2, p=1
FAST_PARAMS = argon2.Parameters(
    type=argon2.Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1, memory_cost=1024, parallelism=1
)

_SCRYPT = re.compile(r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,3}),p=(\d{1,3})\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})$")
_SCRYPT_MAX_LN, _SCRYPT_MAX_R, _SCRYPT_MAX_P = 20, 32, 16


def current_params() -> argon2.Parameters:
    """The argon2 parameters new hashes get (honours MAILHAVEN_FAST_HASH)."""
    return FAST_PARAMS if os.environ.get(FAST_ENV, "") not in ("", "0") else DEFAULT_PARAMS


def _hasher(params: argon2.Parameters | None) -> argon2.PasswordHasher:
    return argon2.PasswordHasher.from_parameters(params or current_params())


def hash_password(pw: str, *, params: argon2.Parameters | None = None) -> str:
    """argon2id PHC string for `pw`. Blocking (tens of ms at default cost): call it off the loop
    from async code, e.g. `await asyncio.to_thread(hash_password, pw)`."""
    if "\x00" in pw:
        raise ValueError("password contains a NUL character")
    return _hasher(params).hash(pw.encode("utf-8"))


def hash_scrypt(pw: str, *, ln: int = 15, r: int = 8, p: int = 1) -> str:
    """A `$scrypt$` hash in our format (see the module docstring). Blocking."""
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(pw.encode("utf-8"), salt=salt, n=1 << ln, r=r, p=p, maxmem=_scrypt_maxmem(ln, r, p), dklen=32)
    b64 = base64.b64encode
    return f"$scrypt$ln={ln},r={r},p={p}${b64(salt).decode()}${b64(dk).decode()}"


def _scrypt_maxmem(ln: int, r: int, p: int) -> int:
    return 128 * r * ((1 << ln) + p + 2) + 1024 * 1024


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def is_supported_hash(hash: str) -> bool:
    """True when `hash` looks like a hash `verify` can check (used to refuse clear text in users files)."""
    if hash.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        try:
            argon2.extract_parameters(hash)
        except (InvalidHashError, ValueError):
            return False
        return True
    return _parse_scrypt(hash) is not None


def _parse_scrypt(hash: str) -> tuple[int, int, int, bytes, bytes] | None:
    m = _SCRYPT.match(hash)
    if not m:
        return None
    ln, r, p = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= ln <= _SCRYPT_MAX_LN and 1 <= r <= _SCRYPT_MAX_R and 1 <= p <= _SCRYPT_MAX_P):
        return None
    try:
        salt, dk = _b64(m.group(4)), _b64(m.group(5))
    except (binascii.Error, ValueError):
        return None
    if not 16 <= len(dk) <= 128 or not salt:
        return None
    return ln, r, p, salt, dk


def verify_sync(hash: str, pw: str) -> bool:
    """Blocking verify; prefer `await verify(...)`. Never raises on bad input."""
    try:
        data = pw.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    if len(data) > MAX_PASSWORD_BYTES or not isinstance(hash, str):
        return False
    if hash.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        try:
            return argon2.PasswordHasher().verify(hash, data)  # constant-time compare inside
        except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
            return False
    parsed = _parse_scrypt(hash)
    if parsed is None:
        return False  # clear text, unknown scheme or garbage: never accept
    ln, r, p, salt, dk = parsed
    try:
        got = hashlib.scrypt(data, salt=salt, n=1 << ln, r=r, p=p, maxmem=_scrypt_maxmem(ln, r, p), dklen=len(dk))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, dk)


async def verify(hash: str, pw: str, *, executor: Executor | None = None) -> bool:
    """Check `pw` against `hash` on `executor` (default: asyncio.to_thread); constant time; False
    on any bad input."""
    if executor is None:
        return await asyncio.to_thread(verify_sync, hash, pw)
    return await asyncio.get_running_loop().run_in_executor(executor, verify_sync, hash, pw)


def needs_rehash(hash: str, *, params: argon2.Parameters | None = None) -> bool:
    """True when `hash` is not argon2id with the current parameters (rehash after a good login)."""
    if not hash.startswith("$argon2id$"):
        return True
    try:
        return _hasher(params).check_needs_rehash(hash)
    except (InvalidHashError, ValueError):
        return True


_dummy: dict[str, str] = {}


def dummy_hash() -> str:
    """A hash of a random password with the current parameters, for timing-equalised failures
    (verify against it when the user does not exist). Blocking the first time per parameter set."""
    params = current_params()
    h = _dummy.get(repr(params))
    if h is None:
        h = _dummy[repr(params)] = hash_password(secrets.token_urlsafe(24), params=params)
    return h


__all__ = [
    "hash_password", "hash_scrypt", "verify", "verify_sync", "needs_rehash", "is_supported_hash",
    "dummy_hash", "current_params", "DEFAULT_PARAMS", "FAST_PARAMS", "FAST_ENV",
]
