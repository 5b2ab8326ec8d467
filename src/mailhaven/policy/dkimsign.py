"""DKIM signing (RFC 6376 §3.4, §3.5, §3.7, §5; RFC 8463 for ed25519-sha256): relaxed/relaxed
canonicalization, header selection with over-signing, the DKIM-Signature field, and the private-key
operation done by `cryptography` (OpenSSL).

Owns: turning (message, domain, selector, key) into the "DKIM-Signature: ...\\r\\n" field. Pure: no
I/O, no clock (the caller passes `now`). Does not own: which key or domain (cleanup.py), running
off the event loop and loading keys (policy/dkim.py), verification (policy/dkim.py, with dkimpy).

Why not dkimpy's sign(): it does the RSA operation in pure Python, ~27 ms per 2048-bit signature
here, the largest single cost of a submitted message; OpenSSL does it in about 1 ms. Verification
stays with dkimpy, and the tests verify every signature this module makes with dkimpy and opendkim.

The message must have CRLF line ends (cleanup.to_crlf runs first).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

SigningKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_WSP_RUN = re.compile(rb"[ \t]+")
LINE_WIDTH = 78  # RFC 5322 §2.1.1: SHOULD be no more than 78 characters


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """([(lowercased name, raw field without its final CRLF)], body). Lines without a colon are not
    header fields and cannot be signed; they are skipped (RFC 5322 §2.2)."""
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    section, body = (message, b"") if end < 0 else (message[:end + 2], message[end + 4:])
    fields: list[tuple[bytes, bytes]] = []
    for line in section.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:  # RFC 5322 §2.2.3: a continuation line
            name, raw = fields[-1]
            fields[-1] = (name, raw + b"\r\n" + line)
        elif b":" in line:
            fields.append((line.split(b":", 1)[0].rstrip(b" \t").lower(), line))
    return fields, body


def relaxed_header(raw: bytes) -> bytes:
    """RFC 6376 §3.4.2: lowercase name, unfold, runs of WSP to one SP, no WSP around the colon or at
    the end; with its CRLF."""
    name, _, value = raw.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4: runs of WSP to one SP, no WSP at line ends, no empty lines at the end, and a
    final CRLF unless the body is empty (errata 1384)."""
    body = _WSP_RUN.sub(b" ", body).replace(b" \r\n", b"\r\n").rstrip(b" \r\n")
    return body + b"\r\n" if body else b""


def header_list(present: Iterable[bytes], names: Sequence[str], oversign: Iterable[str]) -> list[bytes]:
    """The h= list: each name in `names` once per instance present, plus once more for `oversign`
    names (so none can be added in transit, RFC 6376 §8.15); absent names not over-signed are left
    out. From is always in (RFC 6376 §5.4)."""
    counts: dict[bytes, int] = {}
    for name in present:
        counts[name] = counts.get(name, 0) + 1
    over = {h.lower() for h in oversign}
    out: list[bytes] = []
    for h in dict.fromkeys(x.lower() for x in names):
        hb = h.encode("ascii")
        n = counts.get(hb, 0) + (1 if h in over else 0)
        out.extend([hb] * n)
    if b"from" not in out:
        out.append(b"from")
    return out


def _selected(fields: list[tuple[bytes, bytes]], h: list[bytes]) -> list[bytes]:
    """RFC 6376 §5.4.2: each h= name takes the last instance not taken yet, from the bottom up; a
    name with no instance left contributes nothing."""
    taken: dict[bytes, int] = {}
    out: list[bytes] = []
    for name in h:
        seen = taken.get(name, 0)
        instances = [raw for n, raw in fields if n == name]
        if seen < len(instances):
            out.append(instances[len(instances) - 1 - seen])
        taken[name] = seen + 1
    return out


def _fold(tags: list[bytes]) -> bytes:
    """Tags joined by "; ", a line break (CRLF TAB) between tags where a line would pass LINE_WIDTH."""
    out = b""
    line = len(b"DKIM-Signature: ")
    for i, tag in enumerate(tags):
        sep = b"" if i == 0 else b";"
        if i and line + 2 + len(tag) > LINE_WIDTH:
            out += sep + b"\r\n\t" + tag
            line = 1 + len(tag)
        else:
            out += sep + (b" " if i else b"") + tag
            line += len(sep) + (1 if i else 0) + len(tag)
    return out


def sign(message: bytes, domain: str, selector: str, key: SigningKey, h: list[bytes], now: int) -> bytes:
    """The "DKIM-Signature: ...\\r\\n" field (folded, CRLF line ends) to prepend to `message`,
    signing the header fields named in `h` (see header_list) and the whole body."""
    algorithm = b"ed25519-sha256" if isinstance(key, ed25519.Ed25519PrivateKey) else b"rsa-sha256"
    fields, body = split_message(message)
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    tags = [b"v=1", b"a=" + algorithm, b"c=relaxed/relaxed", b"d=" + domain.encode("ascii"),
            b"s=" + selector.encode("ascii"), b"t=%d" % now, b"h=" + b":".join(h), b"bh=" + body_hash]
    unsigned = b"DKIM-Signature: " + _fold(tags) + b";\r\n\tb="
    data = b"".join(relaxed_header(raw) for raw in _selected(fields, h))
    data += relaxed_header(unsigned)[:-2]  # RFC 6376 §3.7: the signature field last, no CRLF
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(hashlib.sha256(data).digest())  # RFC 8463 §3: Ed25519 over the SHA-256 hash
    else:
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())  # RFC 6376 §3.3.1
    b64 = base64.b64encode(signature)
    chunks = [b64[i:i + 72] for i in range(0, len(b64), 72)]
    return unsigned + b"\r\n\t ".join(chunks) + b"\r\n"


__all__ = ["SigningKey", "split_message", "relaxed_header", "relaxed_body", "header_list", "sign"]
