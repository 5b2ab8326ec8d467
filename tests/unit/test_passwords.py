"""auth/passwords.py: argon2id hashing, scrypt compatibility, refusing anything else."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailhaven.auth import passwords
from mailhaven.auth.passwords import (
    DEFAULT_PARAMS,
    FAST_PARAMS,
    hash_password,
    hash_scrypt,
    is_supported_hash,
    needs_rehash,
    verify,
)


async def test_right_password_verifies_and_wrong_one_does_not() -> None:
    h = hash_password("correct horse")
    assert h.startswith("$argon2id$v=19$")
    assert await verify(h, "correct horse")
    assert not await verify(h, "correct horsE")
    assert not await verify(h, "")


async def test_non_ascii_password_round_trips() -> None:
    h = hash_password("pässwörd-ß-日本")
    assert await verify(h, "pässwörd-ß-日本")
    assert not await verify(h, "passwort")


async def test_two_hashes_of_one_password_differ_by_salt() -> None:
    assert hash_password("x") != hash_password("x")


@pytest.mark.parametrize("mangle", [
    lambda h: h[:-4],  # truncated hash
    lambda h: h.replace("$argon2id$", "$argon2xx$"),
    lambda h: h.replace("m=1024", "m=abc"),
    lambda h: h[:-8] + "!!!!!!!!",
    lambda h: h + "$extra",
])
async def test_corrupted_hash_is_refused_without_raising(mangle) -> None:  # type: ignore[no-untyped-def]
    h = mangle(hash_password("pw"))
    assert not await verify(h, "pw")


@pytest.mark.parametrize("stored", [
    "pw", "{PLAIN}pw", "$1$salt$hash", "$6$rounds=5000$salt$hash", "", "$", "$scrypt$", "$argon2id$",
    "$2b$12$abcdefghijklmnopqrstuv", "$scrypt$ln=15,r=8,p=1$c2FsdA$",
])
async def test_clear_text_and_unknown_schemes_are_refused(stored: str) -> None:
    assert not await verify(stored, "pw")
    assert not await verify(stored, stored)  # the stored string itself is not a password
    assert not is_supported_hash(stored)


async def test_scrypt_hash_verifies() -> None:
    h = hash_scrypt("legacy", ln=10)
    assert h.startswith("$scrypt$ln=10,r=8,p=1$")
    assert is_supported_hash(h)
    assert await verify(h, "legacy")
    assert not await verify(h, "Legacy")
    assert needs_rehash(h)


async def test_scrypt_hash_without_base64_padding_verifies() -> None:
    head, salt, dk = hash_scrypt("legacy", ln=10).rsplit("$", 2)
    h = f"{head}${salt.rstrip('=')}${dk.rstrip('=')}"
    assert await verify(h, "legacy")


async def test_scrypt_with_excessive_cost_is_refused_not_computed() -> None:
    h = hash_scrypt("x", ln=10).replace("ln=10", "ln=30")
    t = time.monotonic()
    assert not await verify(h, "x")
    assert time.monotonic() - t < 1
    assert not is_supported_hash(h)


async def test_overlong_password_is_refused() -> None:
    h = hash_password("a" * 10)
    assert not await verify(h, "a" * (passwords.MAX_PASSWORD_BYTES + 1))


async def test_lone_surrogate_password_is_refused_not_raised() -> None:
    h = hash_password("abc")
    assert not await verify(h, "ab\udc80")


def test_nul_in_new_password_is_an_error() -> None:
    with pytest.raises(ValueError):
        hash_password("a\x00b")


def test_fast_env_selects_cheap_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(passwords.FAST_ENV, "1")
    assert passwords.current_params() == FAST_PARAMS
    monkeypatch.delenv(passwords.FAST_ENV)
    assert passwords.current_params() == DEFAULT_PARAMS


def test_default_parameters_are_owasp_argon2id_19mib() -> None:
    """Issue 10 item 3a: m=19 MiB, t=2, p=1 (the old m=64 MiB, t=3, p=4 cost 0.2 s a login)."""
    h = hash_password("pw", params=DEFAULT_PARAMS)
    assert "$argon2id$v=19$m=19456,t=2,p=1$" in h
    old = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$" + "A" * 43
    assert needs_rehash(old, params=DEFAULT_PARAMS)  # hashes of the old default get rewritten


def test_default_cost_is_milliseconds() -> None:
    h = hash_password("pw", params=DEFAULT_PARAMS)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        assert passwords.verify_sync(h, "pw")
        times.append(time.perf_counter() - t0)
    assert sorted(times)[1] < 0.15  # about 25 ms idle; the old default took 0.2 s


async def test_verify_runs_on_the_executor_given() -> None:
    from concurrent.futures import ThreadPoolExecutor

    h = hash_password("pw", params=FAST_PARAMS)
    names: list[str] = []

    def spy(hash: str, pw: str) -> bool:
        import threading

        names.append(threading.current_thread().name)
        return True

    with ThreadPoolExecutor(1, thread_name_prefix="hashpool") as ex:
        assert await verify(h, "pw", executor=ex)
        orig = passwords.verify_sync
        passwords.verify_sync = spy
        try:
            await verify(h, "pw", executor=ex)
        finally:
            passwords.verify_sync = orig
    assert names and names[0].startswith("hashpool")


def test_needs_rehash_when_parameters_change() -> None:
    cheap = hash_password("pw", params=FAST_PARAMS)
    assert not needs_rehash(cheap, params=FAST_PARAMS)
    assert needs_rehash(cheap, params=DEFAULT_PARAMS)
    assert needs_rehash("garbage")


async def test_verify_runs_off_the_event_loop() -> None:
    h = hash_password("pw", params=DEFAULT_PARAMS)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        assert await verify(h, "pw")
    finally:
        task.cancel()
    assert ticks >= 3  # the loop kept running while argon2 worked


def test_dummy_hash_uses_current_parameters() -> None:
    assert passwords.dummy_hash().startswith("$argon2id$v=19$m=1024,t=1,p=1$")
