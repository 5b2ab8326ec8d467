"""policy/dkim.sign caches parsed keys by their PEM text: a second message costs no key load, and a
new key (rotation: cleanup.py re-reads a changed key file) signs with the new key at once."""

from __future__ import annotations

import dkim

from mailhaven.policy import dkim as D

MESSAGE = b"From: a@example.test\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nbody\r\n"


def _verifies(message: bytes, record: str) -> bool:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record.encode() if name == b"s._domainkey.example.test." else b""

    return bool(dkim.verify(message, dnsfunc=dnsfunc))


async def test_rotated_key_signs_at_once_and_a_repeated_key_is_not_reloaded() -> None:
    pem_a, rec_a = D.generate_rsa(2048)
    pem_b, rec_b = D.generate_rsa(2048)
    sig = await D.sign(MESSAGE, "example.test", "s", pem_a)
    assert _verifies(sig + MESSAGE, rec_a)
    for _ in range(5):
        sig = await D.sign(MESSAGE, "example.test", "s", pem_a)
    assert _verifies(sig + MESSAGE, rec_a)
    hits = D._signing_key.cache_info().hits
    assert hits >= 5
    sig = await D.sign(MESSAGE, "example.test", "s", pem_b)  # the key file changed
    assert _verifies(sig + MESSAGE, rec_b) and not _verifies(sig + MESSAGE, rec_a)
