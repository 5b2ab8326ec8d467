"""TLS contexts for our listeners and the outbound queue, self-signed certificates, and the short
description of a connection's TLS used in Received headers.

Owns: protocol versions, cipher choice and options for every TLS we speak.
Does not own: when TLS starts (listeners: STARTTLS / implicit; queue: opportunistic STARTTLS).

- Server side: TLS >= config.tls.min_version (1.2 by default), no compression, no renegotiation,
  forward-secret AEAD ciphers only for TLS 1.2 (TLS 1.3 suites are always AEAD).
- Client side (queue, RFC 3207 opportunistic STARTTLS): TLS 1.2+, and by default no certificate
  check, because on port 25 an unverified encrypted session beats falling back to clear text
  (RFC 7435 §1). `verify=True` for domains in queue.require_tls_domains.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mailhaven.config import Config
from mailhaven.errors import ConfigError

# Mozilla "intermediate" TLS 1.2 choice: ECDHE/DHE key exchange with AES-GCM or ChaCha20-Poly1305.
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                 "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                 "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.options |= ssl.OP_NO_COMPRESSION  # CRIME
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.options |= ssl.OP_SINGLE_DH_USE | ssl.OP_SINGLE_ECDH_USE
    ctx.set_ciphers(TLS12_CIPHERS)


def server_context(config: Config) -> ssl.SSLContext | None:
    """The listeners' context, or None when no certificate is configured.
    Raises ConfigError (naming tls.cert / tls.key) when the files cannot be used."""
    if not config.tls.cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[config.tls.min_version]
    _harden(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(config.tls.cert, config.tls.key)
    except FileNotFoundError as e:
        raise ConfigError(f"tls.cert: file not found: {e.filename}") from None
    except ssl.SSLError as e:
        raise ConfigError(f"tls.key: certificate and key unusable ({e.reason or e})") from None
    except OSError as e:
        # Name the file that cannot be read (load_cert_chain does not say which).
        which = next((k for k in ("cert", "key") if not os.access(getattr(config.tls, k), os.R_OK)), "cert")
        raise ConfigError(f"tls.{which}: cannot read {getattr(config.tls, which)}: {e.strerror}") from None
    return ctx


def client_context(verify: bool = False, *, cafile: str | None = None) -> ssl.SSLContext:
    """Outbound context. verify=False: encrypt without checking the certificate (opportunistic);
    verify=True: check chain and host name against the system store (or `cafile`)."""
    if verify:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _harden(ctx)
    return ctx


def tls_summary(ssl_object: Any) -> str | None:
    """"TLSv1.3 TLS_AES_256_GCM_SHA384" for an ssl.SSLObject / SSLSocket (None when not TLS).
    Used in Received headers (RFC 8314 §7 recommends recording TLS use there)."""
    if ssl_object is None:
        return None
    try:
        version = ssl_object.version()
        cipher = ssl_object.cipher()
    except (AttributeError, ValueError, OSError):
        return None
    if not version or not cipher:
        return None
    return f"{version} {cipher[0]}"


def make_self_signed(cert_path: str | Path, key_path: str | Path, hostnames: Iterable[str], *,
                     days: int = 825) -> None:
    """Write a self-signed EC P-256 certificate for `hostnames` (plus 127.0.0.1 and ::1) and its key
    (mode 0600). For dev mode and first setup; blocking."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = [h for h in hostnames if h] or ["localhost"]
    key = ec.generate_private_key(ec.SECP256R1())
    san: list[x509.GeneralName] = []
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    for h in names:
        try:
            ips.add(ipaddress.ip_address(h))
        except ValueError:
            san.append(x509.DNSName(h))
    san += [x509.IPAddress(ip) for ip in sorted(ips, key=lambda a: (a.version, int(a)))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write(Path(key_path), key_pem, 0o600)
    _write(Path(cert_path), cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["server_context", "client_context", "tls_summary", "make_self_signed", "TLS12_CIPHERS"]
