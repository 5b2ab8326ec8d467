"""IMAP connection states and the commands each state allows (RFC 3501 §3, §6).

Owns: the `State` enum and the table `ALLOWED[state] -> verbs`. One lookup answers "is this command
valid now"; session.py dispatches every allowed verb to exactly one `cmd_<verb>` method (STYLE rule 1).
Does not own: what the commands do (session.py) or their syntax (parser.py).

    NOT_AUTHENTICATED --LOGIN/AUTHENTICATE--> AUTHENTICATED --SELECT/EXAMINE--> SELECTED
    SELECTED --CLOSE/UNSELECT/failed SELECT--> AUTHENTICATED;  any --LOGOUT--> LOGOUT
"""

from __future__ import annotations

import enum
from typing import Final


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"  # RFC 3501 §3.1
    AUTHENTICATED = "authenticated"  # RFC 3501 §3.2
    SELECTED = "selected"  # RFC 3501 §3.3
    LOGOUT = "logout"  # RFC 3501 §3.4


# RFC 3501 §6.1: valid in any state; ID is RFC 2971 §3.1 ("any state").
ANY_STATE: Final = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
# RFC 3501 §6.2
NOT_AUTHENTICATED: Final = ANY_STATE | {"STARTTLS", "AUTHENTICATE", "LOGIN"}
# RFC 3501 §6.3; NAMESPACE RFC 2342 §5; IDLE RFC 2177 §3 (authenticated or selected);
# ENABLE RFC 5161 §3.1 (authenticated state only, before a mailbox is selected).
AUTHENTICATED: Final = ANY_STATE | {
    "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB",
    "STATUS", "APPEND", "NAMESPACE", "IDLE", "ENABLE",
    "GETQUOTA", "GETQUOTAROOT", "SETQUOTA",  # RFC 9208 §4 (authenticated or selected)
    "COMPRESS",  # RFC 4978 §3 (authenticated or selected)
}
# RFC 3501 §6.4; MOVE RFC 6851 §3.1; UNSELECT RFC 3691 §2; UID EXPUNGE RFC 4315 §2.1.
SELECTED: Final = (AUTHENTICATED - {"ENABLE"}) | {
    "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE",
    "SORT",  # RFC 5256 §3
    "THREAD",  # RFC 5256 §3
    "CANCELUPDATE",  # RFC 5267 §4.3 (updating searches live in the selected mailbox)
}

ALLOWED: Final[dict[State, frozenset[str]]] = {
    State.NOT_AUTHENTICATED: NOT_AUTHENTICATED,
    State.AUTHENTICATED: AUTHENTICATED,
    State.SELECTED: SELECTED,
    State.LOGOUT: frozenset(),
}

# RFC 3501 §7.4.1: no EXPUNGE response while answering these (sequence numbers would shift under
# the client); their UID forms are exempt.
NO_EXPUNGE_DURING: Final = frozenset({"FETCH", "STORE", "SEARCH", "SORT", "THREAD"})


def allowed(state: State, verb: str) -> bool:
    """Is `verb` (SELECT, EXAMINE, FETCH, ...) valid in `state`?"""
    return verb in ALLOWED[state]


__all__ = ["State", "ALLOWED", "NO_EXPUNGE_DURING", "allowed"]
