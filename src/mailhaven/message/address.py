"""SMTP addresses: parse paths and mailboxes (RFC 5321 §4.1.2, RFC 6531 §3.3), normalise, format.

Owns: the `Address` value (local part + domain) used everywhere an envelope address travels, its
wire form, and its comparison key. Does not own: which addresses exist (auth/users.py).

Rules (pure module, mypy --strict):
- `parse_path("<local@domain>")` -> Address; `parse_path("<>")` -> None (null reverse-path).
  Anything else, including a missing `>`, spaces, or trailing text, raises ValueError.
- Source routes (`<@a,@b:user@c>`) are accepted and stripped: RFC 5321 §4.1.2 says servers MUST be
  prepared to encounter them and SHOULD ignore them (also Appendix C). We never relay by route.
- Local part: Dot-string or Quoted-string; `local` holds the unquoted value, `str()` re-quotes only
  when needed. UTF-8 (non-ASCII, non-control) characters are allowed (RFC 6531 §3.3); whether the
  session announced SMTPUTF8 is the caller's check (`Address.is_ascii`). An empty local part is refused.
- Domain: LDH labels (lower-cased) or U-labels converted to A-labels (IDNA); address literals
  `[1.2.3.4]` and `[IPv6:...]` (RFC 5321 §4.1.3) in canonical form; general literals are refused.
- Limits in octets (RFC 5321 §4.5.3.1): local part 64, domain 255 (label 63), path 256 including
  the angle brackets (checked on the canonical form).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass

MAX_LOCAL = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
MAX_PATH = 256  # RFC 5321 §4.5.3.1.3
MAX_LABEL = 63  # RFC 1035 §2.3.4
_MAX_INPUT = 2048  # anything longer is refused before parsing

# RFC 5322 §3.2.3 atext (ASCII part); RFC 6531 §3.3 adds UTF8-non-ascii.
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_LDH_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")  # RFC 5321 §4.1.2 sub-domain


def _non_ascii_ok(ch: str) -> bool:
    # UTF8-non-ascii (RFC 6531 §3.3), but no C1 controls or surrogates (undecodable input).
    return ord(ch) > 127 and unicodedata.category(ch) not in ("Cc", "Cs")


def _is_atext(ch: str) -> bool:
    return ch in _ATEXT or _non_ascii_ok(ch)


def _is_dot_string(local: str) -> bool:
    """RFC 5321 §4.1.2 Dot-string = Atom *("." Atom)."""
    if not local:
        return False
    return all(atom and all(_is_atext(c) for c in atom) for atom in local.split("."))


def _qtext_ok(ch: str) -> bool:
    # qtextSMTP / quoted-pairSMTP content: %d32-126 plus UTF8-non-ascii (RFC 6531 §3.3)
    return 32 <= ord(ch) <= 126 or _non_ascii_ok(ch)


@dataclass(frozen=True, order=True)
class Address:
    """An envelope mailbox. `local` is unquoted; `domain` is lower-case A-label or an address literal."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{format_local(self.local)}@{self.domain}"

    @property
    def is_ascii(self) -> bool:
        """False when the address needs SMTPUTF8 (RFC 6531) to be sent."""
        return self.local.isascii()

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    def normalized(self) -> str:
        """The comparison key: local part lower-cased (we treat local parts case-insensitively,
        like Postfix and Dovecot defaults), domain already normalised."""
        return f"{format_local(self.local.lower())}@{self.domain}"

    def path(self) -> str:
        """`<local@domain>` as sent in MAIL FROM / RCPT TO."""
        return f"<{self}>"


def format_local(local: str) -> str:
    """Local part for the wire: as is when it is a Dot-string, else a Quoted-string."""
    if _is_dot_string(local):
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_quoted(text: str) -> str:
    """RFC 5321 §4.1.2 Quoted-string (text includes the quotes) -> unquoted value."""
    out: list[str] = []
    i, end = 1, len(text) - 1
    while i < end:
        ch = text[i]
        if ch == "\\":
            if i + 1 >= end or not (32 <= ord(text[i + 1]) <= 126):  # quoted-pairSMTP = "\" %d32-126
                raise ValueError("bad quoted pair in local part")
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"' or not _qtext_ok(ch):
            raise ValueError("invalid character in quoted local part")
        out.append(ch)
        i += 1
    return "".join(out)


def split_address(text: str) -> tuple[str, str]:
    """Split `local@domain` at the `@` that ends the local part (quotes respected). No validation
    beyond that; raises ValueError without an `@`. The local part is returned as written."""
    if text.startswith('"'):
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                break
            i += 1
        else:
            raise ValueError("unterminated quoted local part")
        if text[i + 1:i + 2] != "@":
            raise ValueError("expected @ after quoted local part")
        return text[:i + 1], text[i + 2:]
    local, at, domain = text.rpartition("@")
    if not at:
        raise ValueError("address has no @")
    return local, domain


def parse_local(text: str) -> str:
    """A local part as written (Dot-string or Quoted-string) -> its unquoted value."""
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        local = _parse_quoted(text)
    elif _is_dot_string(text):
        local = text
    else:
        raise ValueError("invalid local part")
    if not local:
        raise ValueError("empty local part")
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise ValueError("local part longer than 64 octets")  # RFC 5321 §4.5.3.1.1
    return local


def _to_alabel(domain: str) -> str:
    try:
        import idna  # IDNA 2008 (RFC 5891) with UTS #46 mapping

        return idna.encode(domain, uts46=True).decode("ascii")
    except ImportError:  # pragma: no cover - idna ships with our dependencies
        return domain.encode("idna").decode("ascii")


def parse_domain(text: str) -> str:
    """A domain or address literal -> canonical form (lower-case A-labels, canonical IP literal)."""
    if text.startswith("["):
        return _parse_literal(text)
    if not text or len(text) > _MAX_INPUT:
        raise ValueError("empty domain")
    if not text.isascii():
        if any(unicodedata.category(c) in ("Cc", "Cs", "Zs") for c in text):
            raise ValueError("invalid character in domain")
        try:
            text = _to_alabel(text)  # RFC 6531 §3.3 sub-domain =/ U-label
        except (UnicodeError, ValueError) as e:  # idna.IDNAError is a UnicodeError
            raise ValueError(f"invalid internationalised domain: {e}") from None
    domain = text.lower()
    if len(domain) > MAX_DOMAIN:
        raise ValueError("domain longer than 255 octets")  # RFC 5321 §4.5.3.1.2
    for label in domain.split("."):
        if not _LDH_LABEL.match(label):  # RFC 5321 §4.1.2 Domain; also refuses a trailing dot
            raise ValueError("invalid domain")
    return domain


def _parse_literal(text: str) -> str:
    """RFC 5321 §4.1.3 address literals."""
    if not text.endswith("]"):
        raise ValueError("unterminated address literal")
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            v6 = ipaddress.IPv6Address(inner[5:])
            return f"[IPv6:{v6.compressed}]"
        if re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", inner):
            return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise ValueError("invalid address literal") from None
    raise ValueError("unsupported address literal")


def parse_mailbox(text: str) -> Address:
    """`local@domain` (no angle brackets) -> Address. Raises ValueError."""
    if len(text) > _MAX_INPUT:
        raise ValueError("address too long")
    local_text, domain_text = split_address(text)
    addr = Address(parse_local(local_text), parse_domain(domain_text))
    if len(addr.path().encode("utf-8")) > MAX_PATH:
        raise ValueError("path longer than 256 octets")  # RFC 5321 §4.5.3.1.3
    return addr


def _strip_source_route(inner: str) -> str:
    """RFC 5321 §4.1.2 A-d-l ":" Mailbox: validate the route syntax, then drop it (Appendix C)."""
    route, colon, rest = inner.partition(":")
    if not colon:
        raise ValueError("bad source route")
    for hop in route.split(","):
        if not hop.startswith("@"):
            raise ValueError("bad source route")
        parse_domain(hop[1:])
    return rest


def parse_path(text: str, *, allow_bare: bool = False) -> Address | None:
    """RFC 5321 §4.1.2 Path / "<>" -> Address, or None for the null path. Raises ValueError.

    `allow_bare=True` also accepts `local@domain` without brackets (lenient clients)."""
    if len(text) > _MAX_INPUT:
        raise ValueError("path too long")
    if not text.startswith("<"):
        if allow_bare and text and not text.endswith(">"):
            return parse_mailbox(text)
        raise ValueError("path must start with <")
    if not text.endswith(">") or len(text) < 2:
        raise ValueError("path must end with >")
    inner = text[1:-1]
    if inner == "":
        return None  # RFC 5321 §4.1.1.2 null reverse-path
    if inner.startswith("@"):
        inner = _strip_source_route(inner)
    return parse_mailbox(inner)


__all__ = [
    "Address", "parse_path", "parse_mailbox", "parse_domain", "parse_local", "split_address", "format_local",
    "MAX_LOCAL", "MAX_DOMAIN", "MAX_PATH",
]
