"""SMTP replies: the one place that turns outcomes and exceptions into "NNN X.Y.Z text" lines.

Owns: every reply text our SMTP listeners send, the mapping of exceptions to replies (STYLE rule 4:
a `MailError` carries its own code; anything else is an internal failure and becomes the generic
`451 4.3.0`, whose text reveals nothing), and `enhance()`, which gives aiosmtpd's built-in replies
(which have no enhanced status code) the code RFC 2034 §3 asks for once ENHANCEDSTATUSCODES is
advertised. Pure: no I/O, no aiosmtpd import (mypy --strict).

Replies are `str` without the final CRLF (aiosmtpd's `push()` adds it).
"""

from __future__ import annotations

import re

from mailhaven.errors import MailError

MAX_TEXT = 400  # octets of free text in one reply line (RFC 5321 §4.5.3.1.5: reply line <= 512)

# --- fixed replies -------------------------------------------------------------------------------

# RFC 3463 codes: X.1.x addressing, X.3.x system, X.4.x network/routing, X.5.x protocol, X.6.x
# content, X.7.x security/policy.
BAD_HELO = "501 5.5.4 Invalid HELO/EHLO name"  # RFC 5321 §4.1.1.1
SENDER_OK = "250 2.1.0 Sender OK"
RCPT_OK = "250 2.1.5 Recipient OK"
BAD_SENDER_SYNTAX = "501 5.1.7 Bad sender address syntax"  # RFC 3463 §3.2 X.1.7
BAD_RCPT_SYNTAX = "501 5.1.3 Bad recipient address syntax"  # RFC 3463 §3.2 X.1.3
NEED_SMTPUTF8 = "553 5.6.7 Non-ASCII address requires SMTPUTF8"  # RFC 6531 §3.6.1
UNKNOWN_USER = "550 5.1.1 No such user here"  # RFC 3463 §3.2 X.1.1
RELAY_DENIED = "550 5.7.1 Relay access denied"  # RFC 5321 §3.6.2, RFC 3463 X.7.1
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"  # RFC 5321 §4.5.3.1.10, RFC 3463 X.5.3
# Quota (quota.py): at RCPT the SIZE= announced (RFC 1870 §6) cannot fit, for now; at DATA the MX
# refuses for good, as Dovecot's LMTP (552, RFC 5321 §4.2.2; RFC 3463 X.2.2 mailbox full).
OVER_QUOTA_RCPT = "452 4.2.2 Mailbox full (over quota)"
OVER_QUOTA_DATA = "552 5.2.2 Mailbox full (over quota)"
NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
NEED_MAIL = "503 5.5.1 Error: need MAIL command"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"  # RFC 5321 §3.3: DATA without a valid RCPT
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"  # intermediate: no enhanced code (RFC 2034 §3)
# CHUNKING (RFC 3030). A refused BDAT's octets are still read (§2), so these come after them.
BDAT_SYNTAX = "501 5.5.4 Syntax: BDAT chunk-size [LAST]"
DATA_AFTER_BDAT = "503 5.5.1 Error: DATA after BDAT in one transaction"  # RFC 3030 §2: never both
NEED_HELO = "503 5.5.1 Error: send HELO/EHLO first"
MESSAGE_TOO_BIG = "552 5.3.4 Message too big for system"  # RFC 1870 §6.3, RFC 3463 X.3.4
SIZE_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"  # RFC 1870 §6.2
# Line-length choice (documented in smtp/__init__.py): the whole message is refused with a
# permanent syntax reply after the final dot, rather than folding or cutting lines as Postfix does,
# because rewriting would break DKIM signatures and hides the sender's bug.
LINE_TOO_LONG = "500 5.5.2 Line too long in message data (RFC 5321 §4.5.3.1.6)"
# Bare CR / bare LF choice: reject (like Postfix `smtpd_forbid_bare_newline = reject`), RFC 5321
# §2.3.8: lines end with CRLF only. Normalising would write the smuggling payload into the mailbox.
BARE_NEWLINE = "550 5.5.2 Bare CR or LF in message data (RFC 5321 §2.3.8)"
TOO_MANY_HEADERS = "552 5.3.4 Too many header fields"
HEADER_TOO_BIG = "552 5.3.4 Header section too large"
INTERNAL = "451 4.3.0 Temporary local problem, try again later"  # RFC 3463 X.3.0
POLICY_TIMEOUT = "451 4.4.3 Sender checks timed out, try again later"  # RFC 3463 X.4.3
NOT_SUPPORTED = "502 5.5.1 Command not implemented"
UNKNOWN_COMMAND = "500 5.5.2 Error: command not recognized"

# Submission (RFC 6409) and AUTH (RFC 4954 §4, §6 list these codes).
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"  # RFC 3207 §4
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
REQUIRETLS_WITHOUT_TLS = "530 5.7.10 REQUIRETLS needs a TLS session"  # RFC 8689 §4.1 (as mox answers)
AUTH_UNKNOWN_MECHANISM = "504 5.5.4 Unrecognized authentication type"
AUTH_SYNTAX = "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
AUTH_BAD_RESPONSE = "501 5.5.2 Cannot decode the authentication response"
AUTH_CANCELLED = "501 5.7.0 Authentication cancelled"  # RFC 4954 §4: "*" -> 501
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication Exchange line is too long"
AUTHZID_REFUSED = "535 5.7.8 Authorization identity must be the login (no proxy authorization)"
ALREADY_AUTHENTICATED = "503 5.5.1 Already authenticated"
AUTH_IN_TRANSACTION = "503 5.5.1 AUTH not permitted during a mail transaction"
NEED_EHLO = "503 5.5.1 Error: send EHLO first"
TLS_ALREADY_ACTIVE = "554 5.5.1 Error: TLS already active"  # RFC 3207 §4.2 (Postfix's reply)
# Throttling choice (documented in smtp/submission.py): an account over its failure limit gets
# 454 4.7.0 (RFC 4954 §6 "temporary authentication failure") and may try again later; an address
# over its limit gets 421 4.7.0 and is disconnected (as Postfix does for clients over a limit).
LITERAL_RCPT = "550 5.1.2 Address literals are not accepted as recipients here"
NO_AUTHOR = "550 5.6.0 Message must have exactly one From: header field with an address (RFC 5322 §3.6)"


def chunk_received(size: int) -> str:
    """A BDAT chunk that is not the last (the message's reply comes after LAST)."""
    return f"250 2.0.0 {size} octets received"


def accepted(queue_id: str) -> str:
    return f"250 2.0.0 Ok: delivered as {queue_id}"


def queued(queue_id: str) -> str:
    return f"250 2.0.0 Ok: queued as {queue_id}"


def dnsbl_blocked(ip: str, zone: str) -> str:
    """The refusal of a client on a DNS block list, in Postfix's reject_rbl_client wording."""
    return f"554 5.7.1 Service unavailable; Client host [{clean_text(ip)}] blocked using {clean_text(zone)}"


def greylisted(seconds: float) -> str:
    """Greylisting (RFC 3463 X.7.1, temporary): 451 4.7.1 with the time after which a retry
    passes, as postgrey says it."""
    return f"451 4.7.1 Greylisted, try again in {max(1, int(seconds + 0.999))} seconds"


def send_rate_limited(what: str, limit: int) -> str:
    """Submission over config [submission] max_messages_per_hour / max_recipients_per_hour
    (`what`: "messages" or "recipients"). 4xx: the client keeps the message and tries later."""
    return f"451 4.7.1 Sending limit reached: more than {limit} {what} in one hour, try again later"


def sender_not_owned(address: str, user: str) -> str:
    return f"553 5.7.1 <{clean_text(address)}>: sender address not owned by user {clean_text(user)}"


def author_not_owned(address: str, user: str) -> str:
    return f"553 5.7.1 From: header address <{clean_text(address)}> not owned by user {clean_text(user)}"


def too_many_connections(hostname: str) -> str:
    return f"421 4.7.0 {hostname} too many connections, try again later"  # RFC 5321 §3.8


def too_many_errors(hostname: str) -> str:
    return f"421 4.7.0 {hostname} too many errors, closing connection"


def timeout(hostname: str) -> str:
    return f"421 4.4.2 {hostname} timeout exceeded, closing connection"  # RFC 5321 §4.5.3.2


def shutting_down(hostname: str) -> str:
    return f"421 4.3.2 {hostname} shutting down, try again later"


# --- exceptions -> replies -----------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def clean_text(text: str) -> str:
    """One line of printable text, at most MAX_TEXT characters (no CR/LF injection)."""
    out = _CONTROL.sub(" ", text).strip()
    return out[:MAX_TEXT] or "error"


def reply_for(error: BaseException) -> str:
    """The reply for an exception raised while handling a command.

    MailError -> its own code, enhanced code and text; anything else -> INTERNAL (the caller logs
    the traceback; the client learns nothing about it)."""
    if isinstance(error, MailError):
        code = error.code
        enhanced = error.enhanced
        if not (400 <= code <= 599) or not _ENHANCED.match(enhanced) or enhanced[0] != str(code)[0]:
            return INTERNAL
        return f"{code} {enhanced} {clean_text(error.text)}"
    return INTERNAL


# --- enhanced status codes for replies written by aiosmtpd ---------------------------------------

# Default enhanced code per basic code (RFC 3463; the choices follow Postfix's smtpd).
_DEFAULT_ENHANCED: dict[int, str] = {
    211: "2.0.0", 214: "2.0.0", 220: "2.0.0", 221: "2.0.0", 250: "2.0.0", 252: "2.0.0",
    421: "4.7.0", 450: "4.2.0", 451: "4.3.0", 452: "4.3.1", 454: "4.7.0", 455: "4.5.4",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4", 530: "5.7.0",
    534: "5.7.9", 535: "5.7.8", 538: "5.7.11", 550: "5.0.0", 552: "5.3.4", 553: "5.1.3",
    554: "5.0.0", 555: "5.5.4",
}
_LINE = re.compile(r"^(\d{3})([ -])(.*)$", re.S)


def enhance(line: str) -> str:
    """Insert the default enhanced status code into a reply line that has none.

    Lines that already carry one, 3xx (intermediate) and unparsable lines are returned unchanged.
    The caller must not pass the greeting or EHLO/HELO lines (RFC 2034 §3 exempts them)."""
    m = _LINE.match(line)
    if m is None:
        return line
    code, sep, text = int(m.group(1)), m.group(2), m.group(3)
    first = text.split(" ", 1)[0]
    if _ENHANCED.match(first) or code // 100 == 3:
        return line  # intermediate replies (354, AUTH's 334) carry no enhanced code
    enhanced = _DEFAULT_ENHANCED.get(code, f"{str(code)[0]}.0.0")
    return f"{code}{sep}{enhanced} {text}".rstrip()


def reject_reason(line: str) -> str:
    """The metrics label (metrics.REJECT_REASONS) for a refusal reply, by its codes: 4xx temporary,
    X.3.4 size, X.1.1 unknown_user, X.7.0/X.7.8 auth, syntax errors (X.5.x, X.1.3, X.1.7, X.6.x)
    syntax, anything else policy. Callers that know better (relay, sender) say so themselves."""
    code = code_of(line)
    if 400 <= code < 500:
        return "temporary"
    m = _LINE.match(line)
    enhanced = m.group(3).split(" ", 1)[0] if m else ""
    detail = enhanced[2:] if _ENHANCED.match(enhanced) else ""
    if detail == "3.4":
        return "size"
    if detail == "1.1":
        return "unknown_user"
    if detail in ("7.0", "7.8", "7.11"):
        return "auth"
    if detail.startswith(("5.", "6.")) or detail in ("1.3", "1.7") or code in (500, 501):
        return "syntax"
    return "policy"


def code_of(line: str) -> int:
    """The basic reply code of a reply line (0 if it has none)."""
    m = _LINE.match(line)
    return int(m.group(1)) if m else 0


__all__ = [
    "accepted", "queued", "dnsbl_blocked", "greylisted", "send_rate_limited", "sender_not_owned", "author_not_owned", "too_many_connections", "too_many_errors", "timeout", "shutting_down", "clean_text",
    "reply_for", "enhance", "code_of", "reject_reason",
]
