"""cleanup.py: which of our domains DKIM-signs a message, and that the signature is made with that
domain's own key (checked with dkimpy against the published key of each domain; a key published
under the wrong domain must not verify). Two domains, each with its own RSA key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest

from mailhaven import cleanup
from mailhaven.message.headers import field_values
from mailhaven.policy import dkim

ONE, TWO = "one.test", "two.test"
NOKEY = "nokey.test"  # ours, without a DKIM key
ED = "ed.test"  # ours, with only an ed25519 key
FOREIGN = "elsewhere.test"  # not ours


@dataclass
class Keys:
    files: dict[str, Path]  # domain -> private key file
    txt: dict[str, str]  # domain -> TXT record of its public key


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("dkim-keys")
    files, txt = {}, {}
    for domain, (pem, record) in ((ONE, dkim.generate_rsa(2048)), (TWO, dkim.generate_rsa(2048)),
                                  (ED, dkim.generate_ed25519())):
        path = d / f"{domain}.key"
        path.write_bytes(pem)
        path.chmod(0o600)
        files[domain], txt[domain] = path, record
    return Keys(files, txt)


@pytest.fixture
def config(make_config: Callable[..., Any], keys: Keys) -> Any:
    return make_config(hostname="mail.one.test", domains={
        ONE: {"dkim_key": str(keys.files[ONE]), "dkim_selector": "s1"},
        TWO: {"dkim_key": str(keys.files[TWO]), "dkim_selector": "s2"},
        NOKEY: {"dkim_key": ""},
        ED: {"dkim_key": "", "dkim_ed25519_key": str(keys.files[ED]), "dkim_ed25519_selector": "e1"},
    })


def msg(from_field: str | None, subject: str = "hi") -> bytes:
    head = f"From: {from_field}\r\n" if from_field is not None else ""
    return f"{head}To: someone@remote.test\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()


# --- signing_domain: which domain signs --------------------------------------------------------------

@pytest.mark.parametrize(("from_field", "sender", "expected"), [
    # The From domain signs when it is ours and has a key (DMARC aligns on From, RFC 7489 §3.1) ...
    (f"Dave <dave@{TWO}>", f"dave@{TWO}", TWO),
    (f"dave@{TWO}", f"alice@{ONE}", TWO),
    (f"alice@{ONE}", f"dave@{TWO}", ONE),
    ("Dave <DAVE@TWO.TEST>", "", TWO),  # case does not matter; the null sender does not either
    (f"a@{TWO}, b@{ONE}", f"b@{ONE}", TWO),  # several authors: the first one's domain ...
    (f"a@{NOKEY}, b@{ONE}", f"c@{TWO}", TWO),  # ... only: then the envelope sender's
    (f"x@{ED}", f"alice@{ONE}", ED),  # an ed25519 key alone is a key
    # ... else the envelope sender's domain under the same condition ...
    (f"x@{FOREIGN}", f"alice@{ONE}", ONE),
    (f"x@{NOKEY}", f"dave@{TWO}", TWO),
    (None, f"dave@{TWO}", TWO),
    ("undisclosed-recipients:;", f"alice@{ONE}", ONE),
    # ... else nobody: unknown domains and our domains without a key are never signed for.
    (f"x@{FOREIGN}", f"y@{FOREIGN}", None),
    (f"x@{FOREIGN}", "", None),
    (f"x@{NOKEY}", f"y@{NOKEY}", None),
    (None, "", None),
    (f"x@sub.{TWO}", f"y@sub.{ONE}", None),  # a subdomain is not the domain
])
def test_signing_domain(config: Any, from_field: str | None, sender: str, expected: str | None) -> None:
    assert cleanup.signing_domain(config, sender, msg(from_field)) == expected


# --- the signature is made with that domain's key ----------------------------------------------------

def dnsfunc(published: dict[bytes, str]) -> Callable[..., bytes | None]:
    """dkimpy's DNS hook answering from a table (the integration tests use the real test DNS)."""
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        txt = published.get(name.rstrip(b"."))
        return txt.encode() if txt is not None else None
    return lookup


def dkimpy_verify(message: bytes, published: dict[bytes, str]) -> bool:
    return bool(dkimpy.DKIM(message, minkey=1024).verify(dnsfunc=dnsfunc(published)))


def tags(signature: str) -> dict[str, str]:
    out = {}
    for part in "".join(signature.split()).split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


@pytest.mark.parametrize(("domain", "selector", "other"), [(ONE, "s1", TWO), (TWO, "s2", ONE)])
async def test_each_domain_signs_with_its_own_key(config: Any, keys: Keys, domain: str, selector: str,
                                                  other: str) -> None:
    message = cleanup.to_crlf(msg(f"Dave <dave@{domain}>"))
    signed = await cleanup.dkim_sign(config, domain, message)
    [sig] = field_values(signed, "DKIM-Signature")
    t = tags(sig)
    assert (t["d"], t["s"], t["a"]) == (domain, selector, "rsa-sha256")
    name = f"{selector}._domainkey.{domain}".encode()
    assert dkimpy_verify(signed, {name: keys.txt[domain]})
    # The other domain's public key under this name does not verify it: the key really is this domain's.
    assert not dkimpy_verify(signed, {name: keys.txt[other]})


@dataclass
class FakeQueue:
    """Stands in for QueueManager.submit: keeps what cleanup.enqueue would spool."""

    submitted: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def submit(self, sender: str, recipients: list[str], message: bytes, *, source: str = "",
                     entry_id: str | None = None, dsn: object = None) -> str:
        self.submitted.append((sender, recipients, message))
        return entry_id or "0123ABCD0123456789"


@dataclass
class Ctx:
    config: Any
    queue: FakeQueue = field(default_factory=FakeQueue)
    directory: Any = None
    store: Any = None


async def test_enqueue_signs_for_the_from_domain_and_not_for_an_unknown_one(config: Any, keys: Keys) -> None:
    ctx = Ctx(config)
    await cleanup.enqueue(ctx, f"dave@{TWO}", ["r@remote.test"], msg(f"dave@{TWO}", "second domain"))
    await cleanup.enqueue(ctx, f"x@{FOREIGN}", ["r@remote.test"], msg(f"x@{FOREIGN}", "not ours"))
    await cleanup.enqueue(ctx, f"y@{NOKEY}", ["r@remote.test"], msg(f"y@{NOKEY}", "no key"))
    await cleanup.enqueue(ctx, f"dave@{TWO}", ["r@remote.test"], msg(f"dave@{TWO}", "off"), dkim=False)
    (_, _, second), (_, _, foreign), (_, _, nokey), (_, _, off) = ctx.queue.submitted
    [sig] = field_values(second, "DKIM-Signature")
    assert tags(sig)["d"] == TWO
    assert dkimpy_verify(second, {b"s2._domainkey.two.test": keys.txt[TWO]})
    for unsigned in (foreign, nokey, off):
        assert field_values(unsigned, "DKIM-Signature") == []
