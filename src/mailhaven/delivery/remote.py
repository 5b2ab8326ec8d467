"""Remote delivery: one SMTP transaction carrying one message to every recipient of one domain.

Owns: finding the next hops (RFC 5321 §5.1 through dns/resolver.py + dns/nexthop.py: MX by
preference, random among equals, the implicit MX, RFC 7505 null MX), trying each host and each of
its addresses in turn, the client dialogue over aiosmtplib (EHLO with config.hostname, STARTTLS,
AUTH to the relay, MAIL, one RCPT per recipient, DATA), and mapping every outcome to
per-recipient `DeliveryResult`s.
Does not own: retries, bounces or the spool (queue/manager.py), local recipients (delivery/local.py),
which next hop a domain goes to (delivery/routes.py), what TLS each host must offer
(delivery/tlspolicy.py), keeping connections open between transactions (delivery/smtpconn.py),
the relay's credentials (delivery/relayauth.py).

Routes (delivery/routes.py): "mx" as above; "transport" = one host's A/AAAA records at its port;
"relay" = the smarthost's A/AAAA records, TLS required and its certificate verified against the
relay's name (port 465: implicit TLS, RFC 8314; else STARTTLS), then AUTH PLAIN or LOGIN with
[queue] relay_auth_file, never before TLS. A login the relay refuses (or credentials we cannot
read) is 451 4.7.0 for every recipient: the mail waits, nothing bounces.
Every result names its route and, when it failed, the stage (DNS, TLS policy, connect, EHLO,
STARTTLS, TLS, AUTH, MAIL FROM, RCPT TO, DATA): `queue show` and the log say why a recipient waits.

TLS policy (delivery/tlspolicy.py), asked before connecting; the policy is about the next hop,
as Postfix's:
- MX route: require_tls_domains, MTA-STS, DANE, REQUIRETLS and TLS-Required: No of the
  destination domain. The plan says which MX hosts may be used (MTA-STS enforce) and what each
  host must offer (the verifying context or not, TLS required or not); after STARTTLS one check
  of the session (names, TLSA).
- Relay and transport routes (a configured next hop, not the domain's MX): the destination's
  MTA-STS and DANE do not apply (they name its MX hosts, which this hop is not). The relay always
  needs TLS with a certificate verified for the relay's name. A transport host needs that when
  require_tls_domains lists the domain or the message has REQUIRETLS, else opportunistic TLS.
- REQUIRETLS (RFC 8689) on any route: verified TLS to the next hop and the hop must offer
  REQUIRETLS (else 5.7.30), and REQUIRETLS is passed on in MAIL. Through the relay or a transport
  no MX is looked up, so §4.2.1's rule that the MX lookup be secured (DNSSEC or MTA-STS) is met
  by the configured name, verified: the message goes through the relay when the relay offers
  REQUIRETLS, and is returned when it does not.
When no host met the policy the message waits (4.7.x, the text ending "(policy: ...)"); a
REQUIRETLS message is returned instead (5.7.10, or 5.7.30 when no next hop offered REQUIRETLS,
RFC 8689 §5).

Connection reuse: with a pool (smtpconn.SmtpConnections) a transaction first takes an idle
connection with the same key, checked with RSET, and gives it back afterwards if the transaction
ended cleanly. The key (`_Hop.key`) is (host, address, port, policy): the policy names everything
settled when the connection was opened: "clear" (after a failed handshake), "implicit+" for
implicit TLS, then what the session was checked for (tlspolicy.HostPlan.requirement: "may",
"verify:NAMES", "verify-testing:NAMES", "dane:NAMES:TLSA-DIGEST"), and "+auth:USER". So a
connection opened under a weaker policy (or other TLSA records, or another login) is never used
for a destination that needs a stricter one. Per-message requirements are checked on every
transaction, pooled or not: REQUIRETLS needs verified TLS and the hop's REQUIRETLS (from its EHLO
after TLS), DSN parameters go only to a hop that offers DSN.

Rules:
- Opportunistic STARTTLS (RFC 3207, RFC 7435): used whenever offered, certificate not checked. If
  the TLS handshake fails the same address is tried once more in clear text, so a broken TLS
  stack does not stop mail. Where the plan requires TLS it is mandatory and the certificate
  verified (like Postfix's "verify" level): the chain against the system trust store or
  `queue.tls_ca_file` (tls.mx_verify_context), the host name by delivery/certnames.py (RFC 7672
  §3.2.3, RFC 8461 §4.2), or the TLSA records (DANE). No STARTTLS, or a failed handshake, is 451
  4.7.10; a certificate that is not trusted or does not name the host is 451 4.7.5 (RFC 3463
  "cryptographic failure", as Postfix says it), after a QUIT (RFC 3207 §4.1). Either way that
  host is not used (the next one is tried) and the message never travels unprotected.
- A host that cannot take the transaction (connection refused or timed out, greeting or EHLO
  refused, TLS required but missing, MAIL FROM answered 4xx) -> the next address, then the next
  host (RFC 5321 §5.1). Once RCPT answers come in, the results of this host are final for the
  attempt: refused recipients keep their own reply, the accepted ones share the DATA reply.
- 2xx delivered; 5xx permanent; 4xx, network errors, timeouts and anything unexpected temporary
  (STYLE rule 5). If no host could be used the result is temporary with the last host's reason.
- Every network step has a timeout: `queue.connect_timeout` for connect + greeting,
  `queue.command_timeout` for each command and for the DATA reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiosmtplib

from mailhaven import seams
from mailhaven.config import Config
from mailhaven.delivery import relayauth, routes, tlspolicy
from mailhaven.delivery.result import DeliveryResult, clean_text
from mailhaven.delivery.smtpconn import Connection, SmtpConnections
from mailhaven.dns.nexthop import NullMX, next_hops
from mailhaven.dns.resolver import DnsTempError, DomainNotFound
from mailhaven.errors import ConfigError
from mailhaven.message.dsn import NO_DSN, DsnRequest, MailDsn, RcptDsn, xtext_encode

log = logging.getLogger("mailhaven.delivery")

Checker = Callable[[Any], "str | None"]  # the session's ssl object -> None, or why it fails the plan
_TLS_FAILURES = ("4.7.5", "4.7.10", "5.7.10", "5.7.30")  # what a TLS policy refusal is (not AUTH's 4.7.0)


class HostFailure(Exception):
    """This host (address) could not take the transaction: try the next one."""

    def __init__(self, code: int, enhanced: str, text: str, remote_mta: str, stage: str = "") -> None:
        super().__init__(text)
        self.code, self.enhanced, self.text, self.remote_mta = code, enhanced, clean_text(text), remote_mta
        self.stage = stage


class _TlsHandshakeFailed(Exception):
    pass


def requires_tls(config: Config, domain: str) -> bool:
    domain = domain.lower().rstrip(".")
    return any(domain == d.lower().rstrip(".") for d in config.queue.require_tls_domains)


def _literal_address(domain: str) -> str | None:
    """"[192.0.2.1]" / "[IPv6:2001:db8::1]" -> the address (RFC 5321 §4.1.3), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def _all(recipients: Sequence[str], code: int, enhanced: str, text: str, temporary: bool,
         remote_mta: str = "", *, stage: str = "") -> list[DeliveryResult]:
    return [DeliveryResult(r, code, enhanced, clean_text(text), temporary, remote_mta, stage=stage)
            for r in recipients]


def _ensure_crlf_end(message: bytes) -> bytes:
    return message if message.endswith(b"\n") else message + b"\r\n"


_End = Literal["reuse", "quit", "drop"]


@dataclass(frozen=True)
class _Hop:
    """One address of one host to try, with everything settled before connecting."""

    host: str
    address: str
    port: int
    tls_context: ssl.SSLContext
    plan: tlspolicy.HostPlan  # what TLS this host must offer (delivery/tlspolicy.py)
    check: Checker | None = None  # after the handshake: does the session meet `plan`
    implicit_tls: bool = False
    credentials: relayauth.Credentials | None = None

    @property
    def where(self) -> str:
        return f"{self.host}[{self.address}]"

    @property
    def require_tls(self) -> bool:
        return self.plan.required

    @property
    def verified(self) -> bool:
        """Whether a TLS session to this hop has its certificate verified (REQUIRETLS needs it)."""
        return self.plan.required and self.plan.level != "may"

    def key(self, use_tls: bool) -> tuple[str, str, int, str]:
        """The pool key: a connection is reused only for a transaction that would open the same one,
        under the same TLS requirement (tlspolicy.HostPlan.requirement) and login."""
        if self.implicit_tls:
            policy = "implicit+" + self.plan.requirement
        else:
            policy = self.plan.requirement if use_tls else "clear"
        if self.credentials is not None:
            policy += f"+auth:{self.credentials.user}"
        return self.host, self.address, self.port, policy


async def deliver(config: Config, resolver: seams.Resolver, sender: str, domain: str, recipients: Sequence[str],
                  message: bytes, *, tls_context: ssl.SSLContext | None = None,
                  verified_context: ssl.SSLContext | None = None, dsn: DsnRequest = NO_DSN,
                  policies: tlspolicy.TlsPolicies | None = None, requiretls: bool = False,
                  tls_optional: bool = False, route: routes.Route | None = None,
                  pool: SmtpConnections | None = None,
                  credentials: relayauth.Credentials | None = None) -> list[DeliveryResult]:
    """Deliver `message` to `recipients` (all in `domain`); one result per recipient, in order.
    `tls_context` is used for opportunistic STARTTLS, `verified_context` (tls.mx_verify_context)
    where the TLS plan verifies certificates by name (and for the relay); each is built from the
    config when not given. `dsn`: what the sender asked to be told (RFC 3461), passed on to a next
    hop that offers DSN (its results then say dsn_passed: that hop reports from now on).
    `policies`: MTA-STS and DANE (delivery/tlspolicy.py; None: only require_tls_domains);
    `requiretls`: the message's REQUIRETLS (RFC 8689), `tls_optional`: its "TLS-Required: No".
    `route`: the domain's (routes.route_for from the config when None); `pool`: connections to
    reuse and keep; `credentials`: the relay's (read from relay_auth_file when None and the route
    wants them)."""
    q = config.queue
    if route is None:
        route = routes.route_for(domain, relay=q.relay, transports=q.transports)
    results = await _deliver(config, resolver, sender, domain, list(recipients), message, tls_context,
                             verified_context, dsn, route, pool, credentials,
                             policies=policies, requiretls=requiretls, tls_optional=tls_optional)
    return [dataclasses.replace(r, route=route.text) for r in results]


async def _plan(config: Config, domain: str, route: routes.Route, policies: tlspolicy.TlsPolicies | None, *,
                requiretls: bool, tls_optional: bool) -> tlspolicy.DomainPlan:
    """The TLS plan: for a configured next hop (relay, transport) about that hop only; for MX the
    domain's require_tls_domains, MTA-STS, DANE (see the module docstring)."""
    if route.hop is not None:
        return tlspolicy.hop_plan(config, domain, route.text, tls=route.kind == "relay", requiretls=requiretls)
    if policies is not None:
        return await policies.plan(domain, requiretls=requiretls, tls_optional=tls_optional)
    plan = tlspolicy.static_plan(config, domain)
    plan.requiretls = requiretls
    return plan


async def _deliver(config: Config, resolver: seams.Resolver, sender: str, domain: str, recipients: list[str],
                   message: bytes, tls_context: ssl.SSLContext | None, verified_context: ssl.SSLContext | None,
                   dsn: DsnRequest, route: routes.Route, pool: SmtpConnections | None,
                   credentials: relayauth.Credentials | None, *, policies: tlspolicy.TlsPolicies | None,
                   requiretls: bool, tls_optional: bool) -> list[DeliveryResult]:
    from mailhaven.tls import client_context

    q = config.queue
    if route.kind == "local":  # the queue delivers these itself (delivery/local.py)
        return _all(recipients, 451, "4.3.5", f"{domain} is routed to local delivery", True, stage="route")
    relay = route.kind == "relay"
    plan = await _plan(config, domain, route, policies, requiretls=requiretls, tls_optional=tls_optional)
    if tls_context is None:
        tls_context = client_context(verify=False)
    if relay and credentials is None and q.relay_auth_file:
        try:
            credentials = await asyncio.to_thread(relayauth.load, q.relay_auth_file, config.run_as_user)
        except ConfigError as e:
            log.error("delivery through the relay %s deferred: %s", route.hop, e)
            return _all(recipients, 451, "4.7.0", f"relay credentials not usable: {e}", True, stage="AUTH")
    if not relay:
        credentials = None
    implicit = False
    port = q.remote_port
    if route.hop is not None:  # relay or transport: that host's addresses, never MX
        port = route.hop.port
        literal = route.hop.host if _is_address(route.hop.host) else None
        targets: list[tuple[str, list[str] | None]] = [(route.hop.host, [literal] if literal else None)]
    elif (literal := _literal_address(domain)) is not None:
        targets = [(literal, [literal])]
        implicit = True
    else:
        try:
            mx = await resolver.mx(domain)
        except DomainNotFound:
            # RFC 5321 §5.1: a name that does not exist cannot receive mail.
            return _all(recipients, 550, "5.1.2", f"domain {domain} does not exist", False, stage="DNS")
        except DnsTempError as e:
            return _all(recipients, 451, "4.4.3", e.text, True, stage="DNS")  # "DNS lookup of D MX failed temporarily"
        hops = next_hops(domain, mx)
        if isinstance(hops, NullMX):
            # RFC 7505 §4.2: the domain accepts no mail: fail at once with 556 5.1.10.
            return _all(recipients, hops.code, hops.enhanced, f"domain {domain} accepts no mail (null MX)",
                        False, stage="DNS")
        targets = [(h, None) for h in hops.hosts]
        implicit = hops.implicit
        allowed, refused = plan.allowed([h for h, _ in targets])
        if refused:  # RFC 8461 §4.1: MTA-STS enforce: only the policy's MX hosts
            log.info("delivery to %s: MX %s not allowed by %s", domain, ",".join(refused), plan.describe())
            targets = [(h, k) for h, k in targets if h in allowed]
            if not targets:
                return _tls_failure(plan, recipients, 451, "4.7.5", f"no MX host of {domain} ({', '.join(refused)}) "
                                    f"matches its MTA-STS policy (mx {', '.join(plan.sts.policy.mx)})"
                                    if plan.sts.policy else f"no MX host of {domain} allowed", stage="TLS policy")
    why_not = plan.no_policy_for_requiretls()
    if why_not is not None:  # RFC 8689 §4.2.1, §5
        return _all(recipients, 550, "5.7.10", f"REQUIRETLS: {why_not}", False, stage="TLS policy")
    failure: HostFailure | None = None
    for host, known in targets:
        try:
            hp = await plan.host(host)
        except DnsTempError as e:  # RFC 7672 §2.2: TLSA status unknown: this host cannot be used
            failure = HostFailure(451, "4.4.3", f"{e.text} (DANE)", host, "DNS")
            continue
        context = tls_context
        if hp.pkix:
            try:
                context = verified_context or (policies.verified_context() if policies else _verified(config))
            except ConfigError as e:
                log.error("delivery to %s not possible: %s", domain, e)
                what = f"the relay {route.hop}" if relay else domain
                return _all(recipients, 451, "4.7.5", f"{e} (needed to verify the certificates of {what})", True,
                            stage="TLS")
        if known is not None:
            addresses = known
        else:
            try:
                addresses = await resolver.addresses(host)
            except DnsTempError as e:
                failure = HostFailure(451, "4.4.3", e.text, host, "DNS")
                continue
            if not addresses:
                if implicit:
                    # RFC 5321 §5.1: no MX and no address records: the domain has no mail server.
                    return _all(recipients, 550, "5.1.2", f"domain {domain} has no mail server (no MX, "
                                "no address)", False, stage="DNS")
                what = "MX host" if route.hop is None else f"{route.kind} host"
                failure = HostFailure(451, "4.4.4", f"{what} {host} has no address", host, "DNS")
                continue
        for address in addresses:
            hop = _Hop(host, address, port, context, hp, _checker(plan, hp, policies, address),
                       implicit_tls=relay and route.tls == "implicit", credentials=credentials)
            try:
                try:
                    return await _transaction(config, hop, sender, recipients, message, pool, use_tls=True, dsn=dsn,
                                              requiretls=requiretls)
                except _TlsHandshakeFailed as e:
                    if hp.required:
                        raise HostFailure(451, "4.7.10", f"TLS handshake with {host}[{address}] failed "
                                          f"and TLS is required ({hp.why})", host, "STARTTLS") from e
                    log.info("TLS handshake with %s[%s] failed (%s); retrying in clear text", host, address, e)
                    return await _transaction(config, dataclasses.replace(hop, tls_context=tls_context, check=None),
                                              sender, recipients, message, pool, use_tls=False, dsn=dsn)
            except HostFailure as e:
                log.info("delivery to %s via %s %s[%s] not possible at %s: %s %s %s", domain, route.text, host,
                         address, e.stage or "-", e.code, e.enhanced, e.text)
                plan.host_failed(hp, address, e.enhanced, e.text)  # TLS-RPT (RFC 8460)
                failure = e
    if failure is None:
        return _all(recipients, 451, "4.4.4", f"no mail server found for {domain}", True, stage="DNS")
    if failure.enhanced in _TLS_FAILURES:
        return _tls_failure(plan, recipients, failure.code, failure.enhanced, failure.text, failure.remote_mta,
                            stage=failure.stage)
    # No host took the transaction: temporary whatever the last one said (STYLE rule 5).
    code = failure.code if 400 <= failure.code < 500 else 451
    enhanced = failure.enhanced if failure.enhanced.startswith("4.") else "4.4.1"
    return _all(recipients, code, enhanced, failure.text, True, failure.remote_mta, stage=failure.stage)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _verified(config: Config) -> ssl.SSLContext:
    from mailhaven.tls import mx_verify_context

    return mx_verify_context(config.queue.tls_ca_file)


def _checker(plan: tlspolicy.DomainPlan, hp: tlspolicy.HostPlan,
             policies: tlspolicy.TlsPolicies | None, address: str) -> Checker | None:
    """What _open asks after the TLS handshake: the session's ssl object -> None or why it fails."""
    if hp.level == "may":
        return None
    verifier = policies.verifier() if policies is not None and hp.report_only else None
    return lambda ssl_object: plan.check(hp, ssl_object, verifier, address)


def _tls_failure(plan: tlspolicy.DomainPlan, recipients: Sequence[str], code: int, enhanced: str, text: str,
                 remote_mta: str = "", *, stage: str = "") -> list[DeliveryResult]:
    """No host met the TLS policy: deferred (4.7.x) and retried; a REQUIRETLS message is returned
    instead (RFC 8689 §5: 5.7.10, or 5.7.30 when no next hop offered REQUIRETLS)."""
    if plan.requiretls:
        enhanced = "5.7.30" if enhanced == "5.7.30" else "5.7.10"
        return _all(recipients, 550, enhanced, f"REQUIRETLS: {text}", False, remote_mta, stage=stage)
    code = code if 400 <= code < 500 else 451
    enhanced = enhanced if enhanced.startswith("4.") else "4.7.5"
    return _all(recipients, code, enhanced, text, True, remote_mta, stage=stage)


def _reply_text(e: aiosmtplib.SMTPResponseException) -> str:
    return f"{e.code} {clean_text(e.message)}"


async def _transaction(config: Config, hop: _Hop, sender: str, recipients: list[str], message: bytes,
                       pool: SmtpConnections | None, *, use_tls: bool, dsn: DsnRequest = NO_DSN,
                       requiretls: bool = False) -> list[DeliveryResult]:
    """One transaction to `hop`: over an idle connection from `pool` when there is one, else a new
    one (_open), given back to the pool afterwards when it ended cleanly."""
    q = config.queue
    key = hop.key(use_tls)
    conn = await pool.take(key, min(q.command_timeout, 30.0)) if pool is not None else None
    if conn is None:
        conn = await _open(config, hop, key, use_tls=use_tls)
        if pool is not None:
            pool.opened(conn, q.max_connections)
    conn.transactions += 1
    end: _End = "drop"
    try:
        if requiretls:
            end = "reuse"  # nothing sent yet: the connection stays good for other messages
            _check_requiretls(conn, hop)
            end = "drop"
        results, end = await _send(config, conn, hop, sender, recipients, message, dsn, requiretls=requiretls)
        return results
    finally:
        if pool is not None and end == "reuse":
            await pool.give_back(conn, clean=True, max_messages=q.max_messages_per_connection,
                                 idle_time=q.connection_idle_time)
        elif pool is not None and end == "drop":
            pool.discard(conn)
        else:
            try:
                if end != "drop":
                    await _quit(conn.client, q.command_timeout)
            finally:
                conn.client.close()
                if pool is not None:
                    pool.closed(conn)


def _check_requiretls(conn: Connection, hop: _Hop) -> None:
    """RFC 8689 §4.2.1, on every transaction, pooled connection or new: the session is TLS with a
    verified certificate, and the next hop offered REQUIRETLS (in its EHLO after TLS)."""
    if not (conn.tls and hop.verified):  # the plan makes this so; never send such a message otherwise
        raise HostFailure(550, "5.7.10", f"{hop.where}: no verified TLS session", hop.host, "TLS")
    if not conn.client.supports_extension("requiretls"):
        raise HostFailure(550, "5.7.30", f"{hop.where} does not offer REQUIRETLS", hop.host, "MAIL FROM")


async def _open(config: Config, hop: _Hop, key: tuple[str, str, int, str], *, use_tls: bool) -> Connection:
    """Connect, greeting, EHLO, TLS (implicit, or STARTTLS as the policy says), AUTH when the hop
    has credentials. HostFailure (next address) or _TlsHandshakeFailed (retry in clear text)."""
    q = config.queue
    host, address, where = hop.host, hop.address, hop.where
    stage = "connect"
    if hop.implicit_tls:
        client = aiosmtplib.SMTP(hostname=host, local_hostname=config.hostname, timeout=q.command_timeout,
                                 use_tls=True, start_tls=False, tls_context=hop.tls_context)
    else:
        client = aiosmtplib.SMTP(hostname=address, port=hop.port, local_hostname=config.hostname,
                                 timeout=q.command_timeout, use_tls=False, start_tls=False, validate_certs=False)
    tls_on = False
    try:
        try:
            if hop.implicit_tls:
                tls_on = await _connect_implicit(client, hop, q.connect_timeout)
            else:
                await client.connect(timeout=q.connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as e:  # greeting was not 220
            raise HostFailure(e.code, "4.4.2", f"{where} greeted with {_reply_text(e)}", host, stage) from e
        except HostFailure:
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            raise HostFailure(451, "4.4.1", f"connect to {where}: {_why(e)}", host, stage) from e
        stage = "EHLO"
        await _hello(client, where, host)
        if not hop.implicit_tls:
            stage = "STARTTLS"
            tls_on = await _starttls(config, client, where, host, hop.tls_context,
                                     require_tls=hop.require_tls, use_tls=use_tls, check=hop.check)
        if hop.credentials is not None:
            stage = "AUTH"
            await _auth(client, where, host, hop.credentials, tls_on, q.command_timeout)
        return Connection(client, key, tls=tls_on)
    except (HostFailure, _TlsHandshakeFailed):
        client.close()
        raise
    except (aiosmtplib.SMTPException, OSError, TimeoutError, UnicodeError) as e:
        client.close()
        raise HostFailure(451, "4.4.2", f"{where} failed at {stage}: {_why(e)}", host, stage) from e
    except BaseException:
        client.close()
        raise


async def _connect_implicit(client: aiosmtplib.SMTP, hop: _Hop, seconds: float) -> bool:
    """Implicit TLS (RFC 8314, port 465) to hop.address, the certificate checked for hop.host:
    the chain during the handshake (hop.tls_context), the rest by the plan (hop.check)."""
    family = socket.AF_INET6 if ":" in hop.address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (hop.address, hop.port)), seconds)
    except BaseException:
        sock.close()
        raise
    try:
        await client.connect(sock=sock, timeout=seconds)
    except ssl.SSLCertVerificationError as e:
        raise HostFailure(451, "4.7.5", f"TLS certificate of {hop.where} not trusted: "
                          f"{e.verify_message or e.reason or 'verification failed'}", hop.host, "TLS") from e
    except (ssl.SSLError, ConnectionResetError) as e:
        raise HostFailure(451, "4.7.10", f"TLS handshake with {hop.where} failed: {_why(e)}", hop.host, "TLS") from e
    problem = hop.check(client.get_transport_info("ssl_object")) if hop.check is not None else None
    if problem is not None:
        await _quit(client, 10.0)  # RFC 3207 §4.1 in spirit: not good enough, QUIT
        raise HostFailure(451, "4.7.5", problem.replace(hop.host, hop.where, 1), hop.host, "TLS")
    return True


async def _starttls(config: Config, client: aiosmtplib.SMTP, where: str, host: str, tls_context: ssl.SSLContext,
                    *, require_tls: bool, use_tls: bool, check: Checker | None = None) -> bool:
    """STARTTLS when offered (and `use_tls`), required when `require_tls`; after the handshake the
    session is checked against the TLS plan (`check`: names, TLSA; delivery/tlspolicy.py). True
    when the session is now encrypted."""
    q = config.queue
    tls_on = False
    if use_tls and client.supports_extension("starttls"):
        try:
            await client.starttls(tls_context=tls_context, server_hostname=host,
                                  timeout=q.command_timeout)
        except aiosmtplib.SMTPResponseException as e:
            if require_tls:
                raise HostFailure(451, "4.7.10", f"{where} refused STARTTLS: {_reply_text(e)}", host,
                                  "STARTTLS") from e
            raise _TlsHandshakeFailed(_reply_text(e)) from e
        except ssl.SSLCertVerificationError as e:  # only the verified context checks the chain
            raise HostFailure(451, "4.7.5", f"TLS certificate of {where} not trusted: "
                              f"{e.verify_message or e.reason or 'verification failed'}", host, "STARTTLS") from e
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            raise _TlsHandshakeFailed(_why(e)) from e
        # delivery/tlspolicy.py: RFC 7672 §3.2.3, RFC 8461 §4.2 names, DANE TLSA matching.
        problem = check(client.get_transport_info("ssl_object")) if check is not None else None
        if problem is not None:
            await _quit(client, q.command_timeout)  # RFC 3207 §4.1: not good enough, QUIT
            raise HostFailure(451, "4.7.5", problem.replace(host, where, 1), host, "STARTTLS")
        tls_on = True
        await _hello(client, where, host)  # RFC 3207 §4.2: forget what was learnt before TLS
    elif require_tls:
        raise HostFailure(451, "4.7.10", f"{where} does not offer STARTTLS and TLS is required", host, "STARTTLS")
    return tls_on


async def _auth(client: aiosmtplib.SMTP, where: str, host: str, creds: relayauth.Credentials, tls_on: bool,
                seconds: float) -> None:
    """AUTH PLAIN, else LOGIN (RFC 4954, RFC 4616), only inside TLS. A refusal is 4.7.0: the
    mail waits while the operator fixes the password (a bounce of everything would be worse)."""
    if not tls_on:  # never reached (the relay requires TLS); a password never goes out in clear
        raise HostFailure(451, "4.7.0", f"{where}: no TLS, so no AUTH", host, "AUTH")
    methods = set(client.server_auth_methods) if client.supports_extension("auth") else set()
    try:
        if "plain" in methods:
            await client.auth_plain(creds.user, creds.password, timeout=seconds)
        elif "login" in methods:
            await client.auth_login(creds.user, creds.password, timeout=seconds)
        else:
            offered = " ".join(sorted(methods)).upper() or "none"
            log.error("relay %s offers no AUTH PLAIN or LOGIN (offers: %s): mail through it waits", where, offered)
            raise HostFailure(451, "4.7.0", f"{where} offers no AUTH PLAIN or LOGIN (offers: {offered})", host,
                              "AUTH")
    except aiosmtplib.SMTPAuthenticationError as e:
        await _quit(client, seconds)
        log.error("relay %s refused the login of %s: %s; mail through it waits (check [queue] relay_auth_file)",
                  where, creds.user, _reply_text(e))
        raise HostFailure(451, "4.7.0", f"{where} refused the login of {creds.user}: {_reply_text(e)}", host,
                          "AUTH") from e


async def _send(config: Config, conn: Connection, hop: _Hop, sender: str, recipients: list[str], message: bytes,
                dsn: DsnRequest, *, requiretls: bool = False) -> tuple[list[DeliveryResult], _End]:
    """MAIL, RCPT, DATA on an open connection: (results, how the connection ends): "reuse" when
    the server is back in its initial state (the transaction ended with a final reply to the
    message), "quit" when it should be closed politely, "drop" when its state is unknown. A failure
    before any RCPT reply is a HostFailure (next address)."""
    q = config.queue
    client, host, where = conn.client, hop.host, hop.where
    stage = "MAIL FROM"
    try:
        smtputf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        if smtputf8 and not client.supports_extension("smtputf8"):
            # RFC 6531 §3.2: without SMTPUTF8 the message cannot be sent to this server.
            return _all(recipients, 553, "5.6.7", f"{where} does not support SMTPUTF8, needed for a "
                        "non-ASCII address", False, host, stage=stage), "reuse"
        encoding = "utf-8" if smtputf8 else "ascii"
        options: list[bytes] = []
        if client.supports_extension("size"):
            options.append(b"SIZE=%d" % len(message))  # RFC 1870 §6
        if client.supports_extension("8bitmime") and not message.isascii():
            options.append(b"BODY=8BITMIME")  # RFC 6152 §2
        if smtputf8:
            options.append(b"SMTPUTF8")  # RFC 6531 §3.4
        if requiretls:  # _check_requiretls: the session and the hop allow it
            options.append(b"REQUIRETLS")  # RFC 8689 §4.2.1
        passes_dsn = client.supports_extension("dsn")
        if passes_dsn:
            options += _mail_dsn_params(dsn.mail)
        resp = await client.execute_command(b"MAIL", b"FROM:<" + sender.encode(encoding) + b">", *options,
                                            timeout=q.command_timeout)
        if resp.code != 250:
            if resp.code >= 500:
                refused = DeliveryResult.from_reply("", resp.code, resp.message, host)
                return _all(recipients, refused.code, refused.enhanced, refused.text, False, host,
                            stage=stage), "quit"
            raise HostFailure(resp.code, "4.0.0", f"{where} said to MAIL FROM: {resp.code} "
                              f"{clean_text(resp.message)}", host, stage)
        results: dict[str, DeliveryResult] = {}
        accepted: list[str] = []
        stage = "RCPT TO"
        for rcpt in recipients:
            params = _rcpt_dsn_params(rcpt, dsn.of(rcpt)) if passes_dsn else []
            resp = await client.execute_command(b"RCPT", b"TO:<" + rcpt.encode(encoding) + b">", *params,
                                                timeout=q.command_timeout)
            if resp.code in (250, 251):
                accepted.append(rcpt)
            else:
                results[rcpt] = dataclasses.replace(DeliveryResult.from_reply(rcpt, resp.code, resp.message, host),
                                                    stage=stage)
        if not accepted:
            return [results[r] for r in recipients], "quit"  # a MAIL is pending: QUIT ends it
        stage = "DATA"
        end: _End = "reuse"
        try:
            resp = await client.data(_ensure_crlf_end(message), timeout=q.command_timeout)
            outcome = DeliveryResult.from_reply("", resp.code, resp.message, host)
        except aiosmtplib.SMTPDataError as e:
            outcome = DeliveryResult.from_reply("", e.code, e.message, host)
            end = "quit"  # refused at DATA or after the message: not worth reusing
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            outcome = DeliveryResult.temp("", f"{where} lost during DATA: {_why(e)}", code=451,
                                          enhanced="4.4.2", remote_mta=host)
            end = "drop"
        for rcpt in accepted:
            results[rcpt] = DeliveryResult(rcpt, outcome.code, outcome.enhanced, outcome.text,
                                           outcome.temporary, host, dsn_passed=passes_dsn,
                                           stage="" if outcome.delivered else stage)
        if outcome.delivered:
            log.info("delivered to %s via %s%s%s: %s", ",".join(accepted), where,
                     f" ({'TLS' if conn.tls else 'no TLS'}; {hop.plan.summary})",
                     f" (connection reused, transaction {conn.transactions})" if conn.transactions > 1 else "",
                     outcome.reply)
        return [results[r] for r in recipients], end
    except HostFailure:
        raise
    except (aiosmtplib.SMTPException, OSError, TimeoutError, UnicodeError) as e:
        if stage == "DATA":
            return _all(recipients, 451, "4.4.2", f"{where}: {_why(e)}", True, host, stage=stage), "drop"
        raise HostFailure(451, "4.4.2", f"{where} failed at {stage}: {_why(e)}", host, stage) from e


def _mail_dsn_params(mail: MailDsn) -> list[bytes]:
    """RET and ENVID for a next hop that offers DSN (RFC 3461 §4.3, §4.4)."""
    out = []
    if mail.ret is not None:
        out.append(b"RET=" + mail.ret.encode())
    if mail.envid is not None:
        out.append(b"ENVID=" + xtext_encode(mail.envid).encode("ascii"))
    return out


def _rcpt_dsn_params(rcpt: str, asked: RcptDsn) -> list[bytes]:
    """NOTIFY as asked, and ORCPT: as given, else the recipient as we received it (RFC 3461 §4.2:
    "SHOULD" pass it; an internationalized one is left out rather than written as utf-8-addr)."""
    out = []
    if asked.notify is not None:
        out.append(b"NOTIFY=" + (",".join(sorted(asked.notify)) or "NEVER").encode())
    orcpt = asked.orcpt or (f"rfc822;{rcpt}" if rcpt.isascii() else None)
    if orcpt is not None:
        addr_type, _, address = orcpt.partition(";")
        out.append(f"ORCPT={addr_type};{xtext_encode(address)}".encode("ascii", "replace"))
    return out


async def _hello(client: aiosmtplib.SMTP, where: str, host: str) -> None:
    try:
        await client.ehlo()
        return
    except aiosmtplib.SMTPHeloError as e:
        first = e
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
        raise HostFailure(451, "4.4.2", f"{where} failed at EHLO: {_why(e)}", host, "EHLO") from e
    try:
        await client.helo()  # RFC 5321 §3.2: fall back to HELO when EHLO is refused
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
        raise HostFailure(451, "4.4.2", f"{where} refused EHLO ({_reply_text(first)}) and HELO: {_why(e)}",
                          host, "EHLO") from e


async def _quit(client: aiosmtplib.SMTP, seconds: float) -> None:
    try:
        await client.quit(timeout=min(seconds, 10.0))
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass  # the transaction's outcome is already known


def _why(e: BaseException) -> str:
    if isinstance(e, aiosmtplib.SMTPResponseException):
        return _reply_text(e)
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = clean_text(str(e))
    return text[:200] or type(e).__name__


__all__ = ["deliver", "requires_tls", "HostFailure"]
