"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3): encode str -> wire text, strict decode,
and a lenient decode for LIST patterns.

Owns: the conversion only. Does not own: which names are valid mailboxes (store/names.py).

Rules (RFC 3501 §5.1.3, RFC 2152):
- printable US-ASCII 0x20-0x7E except "&" stands for itself; "&" is written "&-";
- every other run of characters is UTF-16BE, base64 with "," in place of "/", no padding,
  between "&" and "-".
The decoder is strict: it rejects anything the encoder would not have produced (8-bit or control
octets, unterminated or empty shifts other than "&-", bad base64, non-zero padding bits, a shift
that encodes printable ASCII, two adjacent shifts, lone surrogates). All errors are ValueError.
`decode_lenient` never fails: what is not a valid shift stays as it is. It is for LIST/LSUB
references and patterns: modified UTF-7 is a convention (RFC 3501 §5.1.3), not grammar, and Dovecot
matches such patterns the same way.
"""

from __future__ import annotations

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
_B64_INDEX = {c: i for i, c in enumerate(_B64)}


def _direct(ch: str) -> bool:
    """Characters that represent themselves (RFC 3501 §5.1.3), "&" aside."""
    return "\x20" <= ch <= "\x7e"


def _b64(data: bytes) -> str:
    out: list[str] = []
    bits = 0
    nbits = 0
    for byte in data:
        bits = (bits << 8) | byte
        nbits += 8
        while nbits >= 6:
            nbits -= 6
            out.append(_B64[(bits >> nbits) & 0x3F])
    if nbits:
        out.append(_B64[(bits << (6 - nbits)) & 0x3F])
    return "".join(out)


def encode(name: str) -> str:
    """Unicode mailbox name -> modified UTF-7 (pure ASCII)."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            out.append("&" + _b64("".join(run).encode("utf-16-be", "surrogatepass")) + "-")
            run.clear()

    for ch in name:
        if _direct(ch):
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def _unb64(text: str) -> bytes:
    out = bytearray()
    bits = 0
    nbits = 0
    for ch in text:
        value = _B64_INDEX.get(ch)
        if value is None:
            raise ValueError(f"invalid modified base64 character {ch!r}")
        bits = (bits << 6) | value
        nbits += 6
        if nbits >= 8:
            nbits -= 8
            out.append((bits >> nbits) & 0xFF)
    # RFC 2152: leftover bits must be fewer than 6 and all zero (canonical, minimal encoding).
    if nbits >= 6 or bits & ((1 << nbits) - 1):
        raise ValueError("non-canonical base64 padding bits")
    return bytes(out)


def decode(wire: str | bytes) -> str:
    """Modified UTF-7 -> Unicode. Raises ValueError for anything non-canonical."""
    if isinstance(wire, bytes):
        try:
            text = wire.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("8-bit octet in modified UTF-7 name") from None
    else:
        text = wire
    out: list[str] = []
    i = 0
    n = len(text)
    previous_was_shift = False
    while i < n:
        ch = text[i]
        if not _direct(ch):
            raise ValueError(f"character {ch!r} must be base64-encoded")  # RFC 3501 §5.1.3
        if ch != "&":
            out.append(ch)
            i += 1
            previous_was_shift = False
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated '&' shift")
        if end == i + 1:
            out.append("&")  # "&-" is "&"
            i = end + 1
            previous_was_shift = False
            continue
        if previous_was_shift:
            raise ValueError("adjacent base64 shifts must be merged")
        raw = _unb64(text[i + 1 : end])
        if len(raw) % 2:
            raise ValueError("base64 run is not whole UTF-16 units")
        try:
            chunk = raw.decode("utf-16-be")  # strict: rejects lone surrogates
        except UnicodeDecodeError:
            raise ValueError("invalid UTF-16 in base64 run") from None
        if any(_direct(c) for c in chunk):
            raise ValueError("printable ASCII must not be base64-encoded")
        out.append(chunk)
        i = end + 1
        previous_was_shift = True
    return "".join(out)


def decode_lenient(text: str) -> str:
    """Decode every valid shift of `text`; a "&" that starts no valid shift stands for itself."""
    out: list[str] = []
    i = 0
    while (amp := text.find("&", i)) >= 0:
        out.append(text[i:amp])
        end = text.find("-", amp + 1)
        if end >= 0:
            try:
                out.append(decode(text[amp:end + 1]))
            except ValueError:
                pass
            else:
                i = end + 1
                continue
        out.append("&")
        i = amp + 1
    out.append(text[i:])
    return "".join(out)
