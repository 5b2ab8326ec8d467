"""The seams: typed interfaces between the parts (DESIGN "Seams"; a leaf module; mypy --strict).

Owns: the `typing.Protocol`s the parts meet through - the store (`Store`), the user directory
(`Directory`), the DNS resolver (`Resolver`), the outbound queue (`Queue`), the local delivery agent
(`DeliveryAgent`) and its per-recipient hooks (`MailFilter`, the Sieve engine's seat; `Quota`), the
greylisting state (`Greylist`: SQLite or PostgreSQL), Sieve's per-user memory (`SieveMemory`), the
login failures every node counts (`LoginFailures`), and `Context`, what every listener and worker
shares (app.Context is the real one) - plus the small frozen values that cross them (`Recipient`,
`FilterJob`, `Filing`).
Does not own: any implementation (store/, auth/users.py, dns/resolver.py, queue/manager.py,
delivery/local.py, app.py build the real objects and pass them in).

Nothing of ours is imported at run time, so every module may import this one without a cycle; the
names under TYPE_CHECKING are value types and services the context carries, seen only by mypy.
A second backend or a test double satisfies a protocol without inheriting from anything.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import dns.resolver

    from mailhaven.auth.login import LoginService
    from mailhaven.auth.users import How, RoleWarning, UserEntry
    from mailhaven.config import Config
    from mailhaven.delivery.result import DeliveryResult
    from mailhaven.limits import Limits
    from mailhaven.message.address import Address
    from mailhaven.message.dsn import DsnRequest
    from mailhaven.metrics import Metrics
    from mailhaven.policy.dnsbl import Checker
    from mailhaven.policy.greylist import Decision, Triplet
    from mailhaven.policy.spam import Scanner
    from mailhaven.store.changes import ChangeHub
    from mailhaven.store.mailbox import Account


# --- values ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """A program target an address reaches: `command` as in the users file ("|/path args") and
    `recipient`, the address whose alias names it (RECIPIENT, as Postfix local(8) sets it)."""

    command: str
    recipient: str


@dataclass(frozen=True)
class Recipient:
    """One envelope recipient and the final users alias expansion gave it (DeliveryAgent.resolve,
    Directory.targets); `users` empty = no local mailbox. `forward`: the addresses in other domains
    it is forwarded to (delivery/forward.py); `programs`: the program targets it reaches (delivered
    through the queue, delivery/program.py); all three empty = nobody has this address."""

    address: str
    users: tuple[str, ...]
    forward: tuple[str, ...] = ()
    programs: tuple[Program, ...] = ()


@dataclass(frozen=True)
class Targets:
    """What alias expansion of one address gives (Directory.targets): the canonical local `users`,
    the addresses in other domains it is `forward`ed to, and the `programs` it reaches, each as
    (command "|/path args", recipient: the address whose alias names it). All empty = unknown."""

    users: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)
    programs: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class FilterJob:
    """What a per-recipient filter (Sieve) sees of one copy: the final user, the envelope
    recipients that reached them, the envelope sender ("" = null), the message as it will be
    stored (Return-Path and Delivered-To on top) and the folder the verdict chose (INBOX or Junk)."""

    user: str
    recipients: tuple[str, ...]
    sender: str
    message: bytes
    folder: str
    # True when the filter may refuse the message in protocol (RFC 5429 §2.1 reject at the MX:
    # the agent answers the SMTP transaction, and this user is its only recipient); False: a
    # refusal must be sent to the sender as a message instead (RFC 5429 §2.2).
    can_refuse: bool = False


@dataclass(frozen=True)
class Filing:
    """A filter's decision for one user: the folders that get a copy (RFC 5228 §4.1 fileinto,
    `keep` = the proposed folder); an empty tuple discards the message (§4.5 discard).
    `refusal` (only when the job `can_refuse`): the reason the agent refuses the whole
    transaction with (550 5.7.1, RFC 5429 §2.1), nothing stored."""

    folders: tuple[str, ...]
    refusal: str | None = None
    # folder -> the IMAP flags its copy starts with (RFC 5232 imap4flags; system flags are kept)
    flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # the user's copy as it is to be stored (head included) when the filter changed its header
    # section (RFC 5293 editheader); None: the message as the job had it
    message: bytes | None = None


# --- hooks of the delivery agent -------------------------------------------------------------------


class MailFilter(Protocol):
    """The per-recipient filter step of local delivery (the Sieve engine plugs in here)."""

    async def file(self, job: FilterJob) -> Filing: ...


class Quota(Protocol):
    """The quota step of local delivery: raise a MailError (452 4.2.2 over quota for now, 552
    5.2.2 for good, RFC 3463) to refuse `size` more octets for `user`; return to accept."""

    async def admit(self, user: str, size: int) -> None: ...

    async def delivered(self, user: str) -> None:
        """After `user`'s copy was stored (quota.py: the 90 % warning)."""


# --- the parts ---------------------------------------------------------------------------------------


class Store(Protocol):
    """The mail store (store/: Maildir++ plus the index)."""

    @property
    def changes(self) -> ChangeHub: ...

    async def start(self) -> int: ...

    async def close(self) -> None: ...

    def account(self, user: str) -> Account: ...

    async def deliver(self, targets: Sequence[tuple[str, str]], data: bytes, *,
                      heads: Mapping[str, bytes] | None = None,
                      flags: Mapping[tuple[str, str], Sequence[str]] | None = None,
                      bodies: Mapping[str, bytes] | None = None) -> None: ...


class Directory(Protocol):
    """The user directory (auth/users.py Directory: users, aliases, catch-all, sub-addresses)."""

    @property
    def warnings(self) -> list[str]: ...

    @property
    def role_warnings(self) -> list[RoleWarning]: ...

    def is_local_domain(self, domain: str) -> bool: ...

    @property
    def user_names(self) -> list[str]: ...

    def resolve(self, address: str | Address) -> list[str] | None: ...

    def targets(self, address: str | Address) -> Targets: ...

    def program_targets(self, address: str | Address) -> list[tuple[str, str]]: ...

    def how(self, address: str) -> tuple[list[str] | None, How]: ...

    def postmaster(self, domain: str) -> tuple[list[str] | None, How]: ...

    def first_user(self, domain: str) -> tuple[list[str] | None, How]: ...

    def owns(self, user: str, address: str | Address) -> bool: ...

    def entry(self, login: str) -> UserEntry | None: ...

    def quota_limits(self, user: str) -> tuple[int, int]: ...


class Resolver(Protocol):
    """The DNS lookups the parts use (dns/resolver.py Resolver)."""

    @property
    def timeout(self) -> float: ...

    def sync_resolver(self) -> dns.resolver.Resolver: ...

    async def mx(self, domain: str) -> list[tuple[int, str]]: ...

    async def txt(self, name: str) -> list[str]: ...

    async def a(self, name: str) -> list[str]: ...

    async def aaaa(self, name: str) -> list[str]: ...

    async def a_ttl(self, name: str) -> tuple[list[str], int]: ...

    async def addresses(self, name: str) -> list[str]: ...

    async def ptr(self, ip: str) -> list[str]: ...


class Queue(Protocol):
    """The outbound queue (queue/manager.py QueueManager): what cleanup, the control socket and
    app.py use."""

    async def submit(self, sender: str, recipients: list[str], message: bytes, *, source: str = "",
                     entry_id: str | None = None, programs: Sequence[tuple[str, str, str]] = (),
                     dsn: DsnRequest | None = None) -> str: ...

    async def load(self) -> None: ...

    async def run(self) -> None: ...

    def stats(self) -> tuple[int, float]: ...

    def list_entries(self) -> list[dict[str, object]]: ...

    async def overview(self) -> list[dict[str, object]]: ...

    async def show(self, entry_id: str) -> dict[str, object] | None: ...

    async def headers(self, entry_id: str) -> dict[str, str] | None: ...

    async def retry(self, entry_id: str) -> bool: ...

    async def flush(self) -> int: ...

    async def delete(self, entry_id: str) -> bool: ...


class Forwarder(Protocol):
    """Forwarding to other servers (delivery/forward.py Forwarder): the copy for the recipients'
    `forward` targets, queued through cleanup; returns the queue ids."""

    async def forward(self, recipients: Sequence[Recipient], message: bytes, *, sender: str,
                      trace: Sequence[bytes] = (), spam: bool = False, dsn: DsnRequest | None = None) -> list[str]: ...


class DeliveryAgent(Protocol):
    """The one way into mailboxes (delivery/local.py LocalDeliveryAgent; DESIGN "Local delivery")."""

    def resolve(self, address: str | Address) -> Recipient: ...

    def postmaster(self, domain: str, *, local_only: bool = False) -> Recipient: ...

    async def deliver(self, recipients: Sequence[Recipient], message: bytes, *, sender: str,
                      trace: Sequence[bytes] = (), folder: str | Mapping[str, str] = "INBOX",
                      ) -> list[DeliveryResult]: ...

    async def deliver_all(self, recipients: Sequence[Recipient], message: bytes, *, sender: str,
                          trace: Sequence[bytes] = (), folder: str | Mapping[str, str] = "INBOX",
                          spam: bool = False, dsn: DsnRequest | None = None) -> None: ...


class Greylist(Protocol):
    """The greylisting state the MX asks at RCPT (policy/greylist.py: SQLite under data_dir, the
    default; policy/greylist_pg.py: PostgreSQL, shared by several nodes). `check` decides for one
    triplet and records it, the same way in each; it may raise, and the MX then lets the RCPT pass."""

    async def open(self) -> None: ...

    async def check(self, t: Triplet) -> Decision: ...

    async def close(self) -> None: ...


class SieveMemory(Protocol):
    """What delivery-time Sieve remembers per user (delivery/sieve.py): vacation replies sent
    (RFC 5230 §4.2) and duplicate ids seen (RFC 7352), each a key live until its expiry.
    delivery/sievetrack.FileMemory (a file in the user's sieve folder, the default) or
    delivery/sievetrack_pg.PgSieveMemory (PostgreSQL, shared by every node). Methods may raise
    OSError or errors.DatabaseError; the caller then logs and goes on without the memory."""

    async def live(self, user: str) -> set[str]: ...

    async def mark(self, user: str, keys: Sequence[tuple[str, float]]) -> None: ...

    async def claim(self, user: str, key: str, seconds: float) -> bool: ...


class LoginFailures(Protocol):
    """Login failures counted by every node (auth/throttle_pg.PgLoginFailures, with PostgreSQL):
    auth/login.py adds them to its own process's counts (auth/throttle.py), so a password guesser
    is slowed on every node alike. Keys are throttle.ip_key and throttle.account_key; counts are
    the failures within `window` seconds of the last one. Never by account alone for delays: the
    account's count is for the alarm only. Methods may raise errors.DatabaseError; the caller
    then uses its own counts alone."""

    async def counts(self, ip: str, account: str, window: float) -> tuple[int, int]: ...

    async def failed(self, ip: str, account: str, window: float) -> int: ...

    async def succeeded(self, ip: str, account: str) -> None: ...

    async def forget(self, ip: str, account: str) -> int: ...


class Sessions(Protocol):
    """Live connections of every listener (app.Sessions)."""

    def add(self, transport: asyncio.BaseTransport) -> None: ...

    def discard(self, transport: asyncio.BaseTransport) -> None: ...


class Context(Protocol):
    """What every listener and worker shares (app.Context). SIGHUP replaces config, directory,
    resolver and tls: read them when a session starts, not once."""

    config: Config
    store: Store
    directory: Directory
    resolver: Resolver
    limits: Limits
    tls: ssl.SSLContext | None
    queue: Queue | None
    agent: DeliveryAgent
    logins: LoginService | None
    metrics: Metrics
    spam: Scanner | None
    dnsbl: Checker | None
    greylist: Greylist | None
    stopping: asyncio.Event
    addresses: dict[str, tuple[str, int]]

    @property
    def sessions(self) -> Sessions: ...


__all__ = ["Recipient", "Program", "Targets", "FilterJob", "Filing", "MailFilter", "Quota", "Store", "Directory",
           "Resolver", "Queue", "Forwarder", "DeliveryAgent", "Greylist", "SieveMemory",
           "LoginFailures", "Sessions", "Context"]
