"""SMTP AUTH (RFC 4954) for the submission listeners: the SASL exchange, the login check and the
login throttle.

Owns: when AUTH is offered (RFC 4954 §4 and RFC 8314 §3: over TLS only; in clear text only on a
loopback listener with config auth.allow_plaintext_loopback, the dev setting), the exchange of
PLAIN (RFC 4616) and LOGIN through auth.sasl (mechanism names case-insensitive; an initial
response, "=" for an empty one; "*" cancels: 501), the bounds on a response line (500 5.5.6 over
sasl.MAX_RESPONSE), refusing proxy authorization (an authzid other than the login), and the
login itself through the one login path of every protocol (auth/login.py: the throttle's delay,
never a refusal for past failures; the verification cache; the hash on its own executor).
Does not own: the AUTH command's place in the dialogue (EHLO first, not during a transaction,
once per session: submission.py), reading lines (server.py), reply texts (replies.py).

Every failed AUTH command logs the one `login failed proto=submission user=... ip=... reason=...`
line of every protocol (auth/login.py; fail2ban matches it) with `reason=` bad_password,
unknown_user (the login names no account; the check spends the same time either way, only the log
tells them apart), authzid_refused, plaintext_refused, bad_sasl (syntax, undecodable base64, an
over-long response), unknown_mechanism, cancelled. Never the password.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from mailhaven import seams
from mailhaven.auth import login as logins
from mailhaven.auth import sasl
from mailhaven.smtp import replies as R

logger = logging.getLogger("mailhaven.smtp.auth")

MECHANISMS = sasl.MECHANISMS  # ("PLAIN", "LOGIN")


class AuthIO(Protocol):
    """What the exchange needs from the connection (server.Connection has both)."""

    async def push(self, status: str) -> None: ...

    async def read_auth_line(self) -> bytes | None:
        """One client line without its line end; None when it was longer than the reader allows."""
        ...


@dataclass(frozen=True)
class AuthOutcome:
    reply: str
    user: str | None = None  # canonical user on success
    login: str | None = None
    close: bool = False  # close the connection after the reply
    reason: str = ""  # why it failed: the `login failed` line's reason (module docstring)
    mechanism: str = ""


class Authenticator:
    """AUTH for one listener's sessions. `plaintext_ok`: a loopback listener with
    auth.allow_plaintext_loopback (logins without TLS are then accepted)."""

    def __init__(self, ctx: seams.Context, *, plaintext_ok: bool) -> None:
        self.ctx = ctx
        self.plaintext_ok = plaintext_ok

    def allowed(self, tls_active: bool) -> bool:
        """May a password be sent now? RFC 8314 §3 / RFC 4954 §4: not in clear text."""
        return tls_active or self.plaintext_ok

    def keyword(self, tls_active: bool) -> str | None:
        """The EHLO line (RFC 4954 §3): listed only where a login is allowed (RFC 3207 §4.2)."""
        return "AUTH " + " ".join(MECHANISMS) if self.allowed(tls_active) else None

    async def run(self, io: AuthIO, *, ip: str, tls_active: bool, arg: str) -> AuthOutcome:
        """The whole AUTH command after the dialogue checks: exchange, throttle, password check.
        Every attempt counts in the login metrics (proto "submission"); a failure logs one line."""
        outcome = await self._run(io, ip=ip, tls_active=tls_active, arg=arg)
        if outcome.user is None and outcome.reason not in logins.PASSWORD_CHECKED:
            # failures after a password check were logged by the login service itself
            logins.of(self.ctx).refused("submission", ip, outcome.login or "", outcome.reason or "bad_sasl",
                                        outcome.mechanism)
        return outcome

    async def _run(self, io: AuthIO, *, ip: str, tls_active: bool, arg: str) -> AuthOutcome:
        parts = arg.split()
        if not parts or len(parts) > 2:
            return AuthOutcome(R.AUTH_SYNTAX, reason="bad_sasl")
        mechanism = parts[0].upper()
        if mechanism not in MECHANISMS:
            # RFC 4954 §4: 504; the client's word is not logged (it may be anything).
            return AuthOutcome(R.AUTH_UNKNOWN_MECHANISM, reason="unknown_mechanism")
        if not self.allowed(tls_active):
            return AuthOutcome(R.ENCRYPTION_REQUIRED, reason="plaintext_refused", mechanism=mechanism)  # 538
        exchange = sasl.Exchange(mechanism)
        try:
            out = exchange.start(parts[1] if len(parts) == 2 else None)
            while isinstance(out, str):
                await io.push(f"334 {out}")  # RFC 4954 §4: "334" SP [base64] even when empty
                line = await io.read_auth_line()
                if line is None or len(line) > sasl.MAX_RESPONSE:
                    # RFC 4954 §4: 500 5.5.6
                    return AuthOutcome(R.AUTH_LINE_TOO_LONG, reason="bad_sasl", mechanism=mechanism)
                out = exchange.step(line)
        except sasl.SaslCancelled:
            return AuthOutcome(R.AUTH_CANCELLED, reason="cancelled", mechanism=mechanism)  # RFC 4954 §4: "*" -> 501
        except ValueError:
            # RFC 4954 §4: undecodable base64 -> 501
            return AuthOutcome(R.AUTH_BAD_RESPONSE, reason="bad_sasl", mechanism=mechanism)
        creds = out
        if creds.authzid and creds.authzid.lower() != creds.login.lower():
            # RFC 4616 §2: we authorize no one for others
            return AuthOutcome(R.AUTHZID_REFUSED, login=creds.login, reason="authzid_refused", mechanism=mechanism)
        return await self.check(ip, mechanism, creds.login, creds.password)

    async def check(self, ip: str, mechanism: str, login: str, password: str) -> AuthOutcome:
        """The password check (auth/login.py); a failed outcome says why (`reason`)."""
        outcome = await logins.of(self.ctx).login("submission", ip, login, password, mechanism)
        if outcome.user is None:
            # RFC 4954 §6: 535 5.7.8
            return AuthOutcome(R.AUTH_FAILED, login=login, reason=outcome.reason, mechanism=mechanism)
        return AuthOutcome(R.AUTH_OK, user=outcome.user, login=login, mechanism=mechanism)


__all__ = ["Authenticator", "AuthOutcome", "AuthIO", "MECHANISMS"]
