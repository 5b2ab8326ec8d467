"""DSN parameters of MAIL and RCPT (RFC 3461 §4): what the client asks to be told, parsed (sans-IO).

Owns: taking RET/ENVID off a MAIL argument and NOTIFY/ORCPT off a RCPT argument before aiosmtpd
sees them (it upper-cases parameters and knows none of these) and their syntax (501 5.5.4 when
wrong or given twice, as Postfix answers). Values are kept xtext-decoded and printable: ENVID and ORCPT come back in our reports
(message/dsn.py) and go on to the next hop re-encoded (delivery/remote.py).
Does not own: what they mean once parsed (message/dsn.py MailDsn, RcptDsn), honouring them
(queue/manager.py, smtp/inbound.py).

    take_mail("<a@b> RET=HDRS ENVID=QQ+2B1 SIZE=10") -> ("<a@b> SIZE=10", MailDsn("HDRS", "QQ+1"))
    take_rcpt("<c@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d") -> ("<c@d>", RcptDsn({...}, "rfc822;c@d"))
"""

from __future__ import annotations

import re
from typing import Literal

from mailhaven.message.dsn import NO_MAIL_DSN, NO_RCPT_DSN, MailDsn, RcptDsn, xtext_decode
from mailhaven.smtp.hooks import split_path

MAX_ENVID = 100  # RFC 3461 §4.4: at most 100 characters (encoded)
MAX_ORCPT = 500  # RFC 3461 §4.2: at most 500 characters (encoded)
NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})

_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")  # RFC 3461 §4.2 addr-type is an atom; in practice this


class DsnSyntax(ValueError):
    """A DSN parameter that is malformed or repeated: its 501 reply."""

    def __init__(self, name: str, problem: str = "syntax") -> None:
        super().__init__(f"501 5.5.4 {'Duplicate' if problem == 'duplicate' else 'Bad'} {name} parameter"
                         + (" syntax" if problem == "syntax" else ""))
        self.reply = str(self)


def _printable(text: str) -> bool:
    return all(" " <= ch <= "~" for ch in text)


def _take(arg: str, names: frozenset[str]) -> tuple[str, dict[str, str]]:
    """The argument without the named parameters, and their values (names upper-cased)."""
    keyword, sep, rest = arg.partition(":")
    if not sep:
        return arg, {}
    try:
        path, params = split_path(rest)
    except ValueError:
        return arg, {}  # aiosmtpd/hooks refuse the path itself
    kept: list[str] = []
    taken: dict[str, str] = {}
    for param in params.split():
        name, _eq, value = param.partition("=")
        upper = name.upper()
        if upper not in names:
            kept.append(param)
            continue
        if upper in taken:
            raise DsnSyntax(upper, "duplicate")
        taken[upper] = value
    if not taken:
        return arg, {}
    return f"{keyword}:{path}" + "".join(" " + p for p in kept), taken


def take_mail(arg: str) -> tuple[str, MailDsn]:
    """RET and ENVID off a MAIL argument (RFC 3461 §4.3, §4.4), and REQUIRETLS (RFC 8689 §4.1, a
    keyword without value; whether the session may use it is the server's to check)."""
    rest, taken = _take(arg, frozenset({"RET", "ENVID", "REQUIRETLS"}))
    if not taken:
        return arg, NO_MAIL_DSN
    requiretls = "REQUIRETLS" in taken
    if requiretls and taken["REQUIRETLS"]:
        raise DsnSyntax("REQUIRETLS")
    ret: Literal["FULL", "HDRS"] | None = None
    if "RET" in taken:
        value = taken["RET"].upper()
        if value == "FULL":
            ret = "FULL"
        elif value == "HDRS":
            ret = "HDRS"
        else:
            raise DsnSyntax("RET")
    envid = None
    if "ENVID" in taken:
        raw = taken["ENVID"]
        try:
            envid = xtext_decode(raw)
        except ValueError:
            raise DsnSyntax("ENVID") from None
        if not raw or len(raw) > MAX_ENVID or not _printable(envid):
            raise DsnSyntax("ENVID")
    return rest, MailDsn(ret, envid, requiretls)


def take_rcpt(arg: str) -> tuple[str, RcptDsn]:
    """NOTIFY and ORCPT off a RCPT argument (RFC 3461 §4.1, §4.2)."""
    rest, taken = _take(arg, frozenset({"NOTIFY", "ORCPT"}))
    if not taken:
        return arg, NO_RCPT_DSN
    notify: frozenset[str] | None = None
    if "NOTIFY" in taken:
        words = taken["NOTIFY"].upper().split(",")
        if words == ["NEVER"]:
            notify = frozenset()
        elif words and all(w in NOTIFY_VALUES for w in words) and len(set(words)) == len(words):
            notify = frozenset(words)
        else:
            raise DsnSyntax("NOTIFY")
    orcpt = None
    if "ORCPT" in taken:
        raw = taken["ORCPT"]
        addr_type, semi, address = raw.partition(";")
        try:
            decoded = xtext_decode(address)
        except ValueError:
            raise DsnSyntax("ORCPT") from None
        if (not semi or not _ADDR_TYPE.fullmatch(addr_type) or not address or len(raw) > MAX_ORCPT
                or not _printable(decoded)):
            raise DsnSyntax("ORCPT")
        orcpt = f"{addr_type.lower()};{decoded}"
    return rest, RcptDsn(notify, orcpt)


__all__ = ["DsnSyntax", "take_mail", "take_rcpt"]
