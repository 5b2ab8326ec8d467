"""DKIM (RFC 6376, RFC 8463 ed25519): verify every signature of a message, sign outgoing mail,
generate keys.

Owns: dkimpy calls run off the event loop (RSA and ed25519 work, and its blocking DNS), signing
(policy/dkimsign.py does the work, here run off the loop), key-record
lookups through OUR nameservers (a `dnsfunc` built on `Resolver.sync_resolver()`; see
dns/resolver.py for why a sync twin), and mapping dkimpy's outcomes to RFC 8601 result names:
pass, fail (signature or body hash does not verify), neutral (no usable signature data),
temperror (key lookup failed temporarily), permerror (bad signature syntax, no key, bad key).
Does not own: what a failure means for the message (policy/dmarc.py, policy/pipeline.py).

Most inbound mail is unsigned: `has_signature()` tells that from the header section alone, so
`verify()` answers [] on the event loop for it, with no worker thread and no parse by dkimpy.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import re
import time
from dataclasses import dataclass
from typing import Literal

import dkim
import dns.exception
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailhaven import seams
from mailhaven.policy import dkimsign
from mailhaven.policy.authresults import header_end

DkimStatus = Literal["pass", "fail", "neutral", "temperror", "permerror", "policy"]

# Signed by default (RFC 6376 §5.4.1 recommends From and the header fields that carry meaning).
DEFAULT_SIGN_HEADERS: tuple[str, ...] = (
    "From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID", "In-Reply-To", "References",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
    "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
)
# Header fields listed once more than present, so none can be added later (RFC 6376 §8.15).
OVERSIGN_HEADERS: tuple[str, ...] = ("From", "Subject", "Date", "To", "Cc", "Reply-To")

MAX_SIGNATURES = 10  # verify at most this many (each may cost a DNS lookup and an RSA operation)


@dataclass(frozen=True)
class DkimResult:
    result: DkimStatus
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    header_b: str = ""  # first 8 characters of b=, for Authentication-Results (RFC 6008)
    reason: str = ""


def _tags(value: bytes) -> dict[bytes, bytes]:
    """Lenient tag=value parse of a signature header, for reporting even when dkimpy rejects it."""
    out: dict[bytes, bytes] = {}
    for part in value.split(b";"):
        k, sep, v = part.partition(b"=")
        if sep:
            out.setdefault(k.strip().lower(), re.sub(rb"\s+", b"", v))
    return out


def _text(b: bytes) -> str:
    return b.decode("ascii", "replace")


class _DnsFunc:
    """dkimpy's dnsfunc(name: bytes, timeout) -> TXT bytes | None, through our nameservers."""

    def __init__(self, r: dns.resolver.Resolver) -> None:
        self.r = r
        self.temp_error = ""
        self.found: bytes | None = None
        self.asked = False

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        self.asked = True
        try:
            qname = name.decode("ascii")
        except UnicodeDecodeError:
            return None
        try:
            ans = self.r.resolve(qname, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.resolver.NoNameservers, dns.exception.Timeout, OSError) as e:
            self.temp_error = type(e).__name__
            raise dkim.DnsTimeoutError(self.temp_error) from e
        except dns.exception.DNSException:
            return None  # a name that cannot exist: no key
        records = [b"".join(rd.strings) for rd in ans]  # RFC 6376 §3.6.2.2: join the strings
        # RFC 6376 §3.6.2.2: more than one key record is undefined; use the first, as dkimpy does.
        self.found = records[0] if records else None
        return self.found


def _verify_one(message: bytes, idx: int, sig_value: bytes, r: dns.resolver.Resolver,
                timeout: float) -> DkimResult:
    tags = _tags(sig_value)
    base = {
        "domain": _text(tags.get(b"d", b"")).lower(),
        "selector": _text(tags.get(b"s", b"")),
        "algorithm": _text(tags.get(b"a", b"")).lower(),
        "header_b": _text(tags.get(b"b", b""))[:8],
    }
    dnsfunc = _DnsFunc(r)
    d = dkim.DKIM(message, minkey=1024, timeout=timeout)
    try:
        ok = d.verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.ValidationError as e:
        reason = str(e)
        if "body hash mismatch" in reason:
            return DkimResult("fail", reason="body hash did not verify", **base)  # RFC 6376 §6.1.3
        return DkimResult("permerror", reason=reason[:200], **base)  # RFC 6376 §6.1.1
    except dkim.KeyFormatError as e:
        return DkimResult("permerror", reason=f"bad key: {str(e)[:150]}", **base)  # RFC 6376 §6.1.2
    except (dkim.MessageFormatError, dkim.ParameterError, dkim.UnknownKeyTypeError) as e:
        return DkimResult("permerror", reason=str(e)[:200], **base)
    except dkim.DKIMException as e:
        return DkimResult("permerror", reason=str(e)[:200], **base)
    if ok:
        return DkimResult("pass", **base)
    # dkimpy folds "no key", "bad key" and "temporary DNS error" into False; tell them apart.
    if dnsfunc.temp_error:
        return DkimResult("temperror", reason="key lookup failed temporarily", **base)  # §6.1.2
    if dnsfunc.asked and not dnsfunc.found:
        return DkimResult("permerror", reason="no key for signature", **base)  # RFC 6376 §6.1.2
    if dnsfunc.found is not None:
        try:
            dkim.evaluate_pk(b"", dnsfunc.found)
        except Exception as e:  # noqa: BLE001 - any failure to use the key is the key's fault
            return DkimResult("permerror", reason=f"bad key: {str(e)[:150]}", **base)
    return DkimResult("fail", reason="signature did not verify", **base)  # RFC 6376 §6.1.3


def _signature_headers(message: bytes) -> list[bytes]:
    d = dkim.DKIM(message)
    return [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]


def _verify_all(message: bytes, resolver: seams.Resolver) -> list[DkimResult]:
    try:
        sigs = _signature_headers(message)
    except dkim.DKIMException:
        return [DkimResult("permerror", reason="message could not be parsed")]
    r = resolver.sync_resolver()  # this worker thread's own
    return [_verify_one(message, i, v, r, resolver.timeout) for i, v in enumerate(sigs[:MAX_SIGNATURES])]


_SIGNATURE_NAME = re.compile(rb"dkim-signature", re.IGNORECASE)


def has_signature(message: bytes) -> bool:
    """False only when no header field can be a DKIM-Signature (RFC 6376 §3.5): the name does not
    occur in the header section at all. True does not promise a valid signature."""
    return _SIGNATURE_NAME.search(message, 0, header_end(message)) is not None


async def verify(resolver: seams.Resolver, message: bytes) -> list[DkimResult]:
    """One DkimResult per DKIM-Signature header, top first; [] when the message is unsigned."""
    if not has_signature(message):
        return []  # RFC 8601 §2.7.1 "none": nothing to verify, no thread needed
    try:
        return await asyncio.to_thread(_verify_all, message, resolver)
    except Exception as e:  # a dkimpy bug on hostile input must not become a traceback
        return [DkimResult("permerror", reason=f"verification error: {type(e).__name__}")]


# --- signing -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _signing_key(private_key_pem: bytes, algorithm: str) -> dkimsign.SigningKey:
    """Our PEM key, loaded and checked against the algorithm.

    Cached by the PEM text (a few keys per server): loading validates an RSA key, ~100 ms of CPU,
    which was paid per signed message. A changed key file is different text, so it is loaded anew
    (cleanup.py re-reads the file when its mtime changes)."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if algorithm == "ed25519-sha256":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("ed25519-sha256 needs an ed25519 private key")
        return key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("rsa-sha256 needs an RSA private key")
    return key


def _sign_sync(message: bytes, domain: str, selector: str, private_key_pem: bytes, algorithm: str,
               headers: tuple[str, ...], oversign: tuple[str, ...]) -> bytes:
    key = _signing_key(private_key_pem, algorithm)
    present = [name for name, _ in dkimsign.split_message(message)[0]]
    return dkimsign.sign(message, domain, selector, key, dkimsign.header_list(present, headers, oversign),
                         int(time.time()))


async def sign(message: bytes, domain: str, selector: str, private_key_pem: bytes,
               algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256",
               headers: tuple[str, ...] = DEFAULT_SIGN_HEADERS,
               oversign: tuple[str, ...] = OVERSIGN_HEADERS) -> bytes:
    """The "DKIM-Signature: ...\\r\\n" header (folded, CRLF line ends) to prepend to message
    (policy/dkimsign.py; off the loop: the RSA operation and hashing a large body take a while)."""
    return await asyncio.to_thread(_sign_sync, message, domain.lower().rstrip("."), selector,
                                   private_key_pem, algorithm, headers, oversign)


# --- keys ----------------------------------------------------------------------------------------


def _txt_record(k: str, public_der_or_raw: bytes) -> str:
    return f"v=DKIM1; k={k}; p={base64.b64encode(public_der_or_raw).decode('ascii')}"  # RFC 6376 §3.6.1


def generate_rsa(bits: int = 2048) -> tuple[bytes, str]:
    """(private key PEM (PKCS#8), TXT record "v=DKIM1; k=rsa; p=..."). Blocking: call in a thread."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, _txt_record("rsa", spki)


def generate_ed25519() -> tuple[bytes, str]:
    """(private key PEM (PKCS#8), TXT record "v=DKIM1; k=ed25519; p=..."), RFC 8463 §4."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, _txt_record("ed25519", raw)


def public_record(private_key_pem: bytes) -> str:
    """The TXT record for an existing private key (for `mailhaven dns`)."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _txt_record("ed25519", key.public_key().public_bytes(serialization.Encoding.Raw,
                                                                    serialization.PublicFormat.Raw))
    if isinstance(key, rsa.RSAPrivateKey):
        return _txt_record("rsa", key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    raise ValueError("not an RSA or ed25519 private key")


__all__ = ["DkimResult", "DkimStatus", "verify", "has_signature", "sign", "generate_rsa", "generate_ed25519",
           "public_record", "DEFAULT_SIGN_HEADERS", "OVERSIGN_HEADERS"]
