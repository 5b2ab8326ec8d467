"""The error vocabulary shared by every protocol.

An error carries its protocol meaning (SMTP code, enhanced status code, public text, temporary or
not). Exactly one function per protocol turns it into a reply (`smtp/replies.py`, the IMAP and POP3
sessions). Anything that is not a `MailError` is an internal failure: it is logged, and the client
sees a generic temporary error whose text reveals nothing (STYLE rule 4 and 5).
"""

from __future__ import annotations

import errno


class MailError(Exception):
    """An error with protocol meaning. `text` is safe to show to the client."""

    code: int = 451
    enhanced: str = "4.3.0"
    temporary: bool = True

    def __init__(self, text: str = "", *, code: int | None = None, enhanced: str | None = None) -> None:
        super().__init__(text)
        self.text = text or self.__class__.__doc__ or "error"
        if code is not None:
            self.code = code
            self.temporary = 400 <= code < 500
        if enhanced is not None:
            self.enhanced = enhanced


class TempFailure(MailError):
    """Temporary local failure, try again later."""

    code, enhanced, temporary = 451, "4.3.0", True


class PermFailure(MailError):
    """Permanent failure."""

    code, enhanced, temporary = 554, "5.0.0", False


class DatabaseError(TempFailure):
    """Temporary local failure, try again later"""

    # The shared database (pg.py) could not be reached or did not answer in time: 451 4.3.0 like
    # any TempFailure (RFC 3463 X.3.0), so mail is retried, never bounced. `detail` is for the log
    # only (host names, libpq's words), never the client.

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class StoreError(TempFailure):
    """The message could not be stored; nothing was kept."""

    code, enhanced = 451, "4.3.0"


class StorageFull(StoreError):
    """Insufficient system storage, try again later."""

    def __init__(self, text: str = "Insufficient system storage, try again later") -> None:
        super().__init__(text)

    # RFC 5321 §4.2.2 452 "insufficient system storage"; RFC 3463 X.3.1 "mail system full". IMAP
    # answers NO [UNAVAILABLE] and POP3 -ERR [SYS/TEMP], as for every TempFailure: the disk (or the
    # quota) is full now, and deleting mail or an operator freeing space ends it.
    code, enhanced = 452, "4.3.1"


class OverQuota(TempFailure):
    """Mailbox full (over quota)"""

    # RFC 3463 X.2.2 "mailbox full"; RFC 5321 §4.2.2 452 for now (the queue retries, then bounces,
    # as Postfix does with Dovecot's quota_full_tempfail). The MX answers 552 5.2.2 at DATA and
    # IMAP NO [OVERQUOTA] (RFC 9208 §4.2), each in its one mapping place.
    code, enhanced = 452, "4.2.2"

    def __init__(self, text: str = "Mailbox full (over quota)") -> None:
        super().__init__(text)


def no_space(exc: BaseException) -> bool:
    """Whether an OSError means the file system or the user's disk quota is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def store_failure(exc: BaseException, text: str) -> StoreError:
    """The error for a failed write: StorageFull when the disk is full, else StoreError(text)."""
    return StorageFull() if no_space(exc) else StoreError(text)


class DnsTempError(TempFailure):
    """DNS lookup failed temporarily."""

    code, enhanced = 451, "4.4.3"


class PolicyReject(PermFailure):
    """Rejected by policy."""

    code, enhanced = 550, "5.7.1"


class UnknownUser(PermFailure):
    """No such user here."""

    code, enhanced = 550, "5.1.1"


class AuthFailed(PermFailure):
    """Authentication credentials invalid."""

    code, enhanced = 535, "5.7.8"


class BadMailboxName(PermFailure):
    """Invalid mailbox name."""

    code, enhanced = 553, "5.1.3"


class MailboxNotFound(PermFailure):
    """No such mailbox."""


class MailboxExists(PermFailure):
    """Mailbox already exists."""


class ConfigError(Exception):
    """A configuration problem; `str()` is one line naming the key path or position and the reason."""
