"""Remote delivery: one SMTP transaction carrying one message to every recipient of one domain.

Owns: finding the next hops (RFC 5321 §5.1 through dns/resolver.py + dns/nexthop.py: MX by
preference, random among equals, the implicit MX, RFC 7505 null MX), trying each host and each of
its addresses in turn, the client dialogue over aiosmtplib (EHLO with config.hostname, STARTTLS,
MAIL, one RCPT per recipient, DATA), and mapping every outcome to per-recipient `DeliveryResult`s.
Does not own: retries, bounces or the spool (queue/manager.py), local recipients (delivery/local.py).

Rules:
- Opportunistic STARTTLS (RFC 3207, RFC 7435): used whenever offered, certificate not checked. If
  the TLS handshake fails the same address is tried once more in clear text, so a broken TLS
  stack does not stop mail. For domains in `queue.require_tls_domains` TLS is mandatory and the
  certificate verified (like Postfix's "verify" level): the chain against the system trust store
  or `queue.tls_ca_file` (tls.mx_verify_context), the MX host name by delivery/certnames.py
  (RFC 7672 §3.2.3, RFC 8461 §4.2). No STARTTLS, or a failed handshake, is 451 4.7.10; a
  certificate that is not trusted or does not name the MX host is 451 4.7.5 (RFC 3463
  "cryptographic failure", as Postfix says it), after a QUIT (RFC 3207 §4.1). Either way that
  host is not used (the next one is tried) and the message never travels unprotected.
- MTA-STS, DANE and REQUIRETLS are decided by delivery/tlspolicy.py: before connecting it says
  which MX hosts may be used (MTA-STS enforce) and what each host must offer (the verifying
  context or not, TLS required or not); after STARTTLS it checks the session (names, TLSA). When
  no host met the policy the message waits (4.7.x); a REQUIRETLS message is returned instead
  (5.7.10, or 5.7.30 when no next hop offered REQUIRETLS, RFC 8689 §5), and REQUIRETLS is passed
  on in MAIL.
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

import ipaddress
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import aiosmtplib

from mailhaven import seams
from mailhaven.config import Config
from mailhaven.delivery import tlspolicy
from mailhaven.delivery.result import DeliveryResult, clean_text
from mailhaven.dns.nexthop import NullMX, next_hops
from mailhaven.dns.resolver import DnsTempError, DomainNotFound
from mailhaven.errors import ConfigError
from mailhaven.message.dsn import NO_DSN, DsnRequest, MailDsn, RcptDsn, xtext_encode

log = logging.getLogger("mailhaven.delivery")


class HostFailure(Exception):
    """This host (address) could not take the transaction: try the next one."""

    def __init__(self, code: int, enhanced: str, text: str, remote_mta: str) -> None:
        super().__init__(text)
        self.code, self.enhanced, self.text, self.remote_mta = code, enhanced, clean_text(text), remote_mta


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
         remote_mta: str = "") -> list[DeliveryResult]:
    return [DeliveryResult(r, code, enhanced, clean_text(text), temporary, remote_mta) for r in recipients]


def _ensure_crlf_end(message: bytes) -> bytes:
    return message if message.endswith(b"\n") else message + b"\r\n"


async def deliver(config: Config, resolver: seams.Resolver, sender: str, domain: str, recipients: Sequence[str],
                  message: bytes, *, tls_context: ssl.SSLContext | None = None,
                  verified_context: ssl.SSLContext | None = None, dsn: DsnRequest = NO_DSN,
                  policies: tlspolicy.TlsPolicies | None = None, requiretls: bool = False,
                  tls_optional: bool = False) -> list[DeliveryResult]:
    """Deliver `message` to `recipients` (all in `domain`); one result per recipient, in order.
    `tls_context` is used for opportunistic STARTTLS, `verified_context` (tls.mx_verify_context)
    for domains that require TLS; each is built from the config when not given. `dsn`: what the
    sender asked to be told (RFC 3461), passed on to a next hop that offers DSN (its results then
    say dsn_passed: that hop reports from now on). `policies`: MTA-STS and DANE (delivery/
    tlspolicy.py; None: only require_tls_domains); `requiretls`: the message's REQUIRETLS (RFC 8689),
    `tls_optional`: its "TLS-Required: No"."""
    from mailhaven.tls import client_context

    recipients = list(recipients)
    if policies is not None:
        plan = await policies.plan(domain, requiretls=requiretls, tls_optional=tls_optional)
    else:
        plan = tlspolicy.static_plan(config, domain)
        plan.requiretls = requiretls
    if tls_context is None:
        tls_context = client_context(verify=False)
    literal = _literal_address(domain)
    if literal is not None:
        targets: list[tuple[str, list[str] | None]] = [(literal, [literal])]
        implicit = True
    else:
        try:
            mx = await resolver.mx(domain)
        except DomainNotFound:
            # RFC 5321 §5.1: a name that does not exist cannot receive mail.
            return _all(recipients, 550, "5.1.2", f"domain {domain} does not exist", False)
        except DnsTempError as e:
            return _all(recipients, 451, "4.4.3", e.text, True)  # "DNS lookup of D MX failed temporarily"
        hops = next_hops(domain, mx)
        if isinstance(hops, NullMX):
            # RFC 7505 §4.2: the domain accepts no mail: fail at once with 556 5.1.10.
            return _all(recipients, hops.code, hops.enhanced, f"domain {domain} accepts no mail (null MX)",
                        False)
        targets = [(h, None) for h in hops.hosts]
        implicit = hops.implicit
        allowed, refused = plan.allowed([h for h, _ in targets])
        if refused:  # RFC 8461 §4.1: MTA-STS enforce: only the policy's MX hosts
            log.info("delivery to %s: MX %s not allowed by %s", domain, ",".join(refused), plan.describe())
            targets = [(h, k) for h, k in targets if h in allowed]
            if not targets:
                return _tls_failure(plan, recipients, 451, "4.7.5", f"no MX host of {domain} ({', '.join(refused)}) "
                                    f"matches its MTA-STS policy (mx {', '.join(plan.sts.policy.mx)})"
                                    if plan.sts.policy else f"no MX host of {domain} allowed")
    why_not = plan.no_policy_for_requiretls()
    if why_not is not None:  # RFC 8689 §4.2.1, §5
        return _all(recipients, 550, "5.7.10", f"REQUIRETLS: {why_not}", False)
    failure: HostFailure | None = None
    for host, known in targets:
        try:
            hp = await plan.host(host)
        except DnsTempError as e:  # RFC 7672 §2.2: TLSA status unknown: this host cannot be used
            failure = HostFailure(451, "4.4.3", f"{e.text} (DANE)", host)
            continue
        require_tls = hp.required
        context = tls_context
        if hp.pkix:
            try:
                context = verified_context or (policies.verified_context() if policies else _verified(config))
            except ConfigError as e:
                log.error("delivery to %s not possible: %s", domain, e)
                return _all(recipients, 451, "4.7.5", f"{e} (needed to verify the certificates of {domain})", True)
        if known is not None:
            addresses = known
        else:
            try:
                addresses = await resolver.addresses(host)
            except DnsTempError as e:
                failure = HostFailure(451, "4.4.3", e.text, host)
                continue
            if not addresses:
                if implicit:
                    # RFC 5321 §5.1: no MX and no address records: the domain has no mail server.
                    return _all(recipients, 550, "5.1.2", f"domain {domain} has no mail server (no MX, "
                                "no address)", False)
                failure = HostFailure(451, "4.4.4", f"MX host {host} has no address", host)
                continue
        for address in addresses:
            check = _checker(plan, hp, policies, address)
            try:
                try:
                    return await _transaction(config, host, address, sender, recipients, message,
                                              context, require_tls=require_tls, use_tls=True, dsn=dsn,
                                              check=check, requiretls=requiretls, note=hp.summary)
                except _TlsHandshakeFailed as e:
                    if require_tls:
                        raise HostFailure(451, "4.7.10", f"TLS handshake with {host}[{address}] failed "
                                          f"and TLS is required ({hp.why})", host) from e
                    log.info("TLS handshake with %s[%s] failed (%s); retrying in clear text", host, address, e)
                    return await _transaction(config, host, address, sender, recipients, message,
                                              tls_context, require_tls=False, use_tls=False, dsn=dsn)
            except HostFailure as e:
                log.info("delivery to %s via %s[%s] not possible: %s %s %s", domain, host, address,
                         e.code, e.enhanced, e.text)
                plan.host_failed(hp, address, e.enhanced, e.text)  # TLS-RPT (RFC 8460)
                failure = e
    if failure is None:
        return _all(recipients, 451, "4.4.4", f"no mail server found for {domain}", True)
    if failure.enhanced.startswith(("4.7.", "5.7.")):
        return _tls_failure(plan, recipients, failure.code, failure.enhanced, failure.text, failure.remote_mta)
    # No host took the transaction: temporary whatever the last one said (STYLE rule 5).
    code = failure.code if 400 <= failure.code < 500 else 451
    enhanced = failure.enhanced if failure.enhanced.startswith("4.") else "4.4.1"
    return _all(recipients, code, enhanced, failure.text, True, failure.remote_mta)


def _verified(config: Config) -> ssl.SSLContext:
    from mailhaven.tls import mx_verify_context

    return mx_verify_context(config.queue.tls_ca_file)


def _checker(plan: tlspolicy.DomainPlan, hp: tlspolicy.HostPlan,
             policies: tlspolicy.TlsPolicies | None, address: str) -> Any:
    """What _transaction asks after STARTTLS: the session's ssl object -> None or why it fails."""
    if hp.level == "may":
        return None
    verifier = policies.verifier() if policies is not None and hp.report_only else None
    return lambda ssl_object: plan.check(hp, ssl_object, verifier, address)


def _tls_failure(plan: tlspolicy.DomainPlan, recipients: Sequence[str], code: int, enhanced: str, text: str,
                 remote_mta: str = "") -> list[DeliveryResult]:
    """No host met the TLS policy: deferred (4.7.x) and retried; a REQUIRETLS message is returned
    instead (RFC 8689 §5: 5.7.10, or 5.7.30 when no next hop offered REQUIRETLS)."""
    if plan.requiretls:
        enhanced = "5.7.30" if enhanced == "5.7.30" else "5.7.10"
        return _all(recipients, 550, enhanced, f"REQUIRETLS: {text}", False, remote_mta)
    code = code if 400 <= code < 500 else 451
    enhanced = enhanced if enhanced.startswith("4.") else "4.7.5"
    return _all(recipients, code, enhanced, text, True, remote_mta)


def _reply_text(e: aiosmtplib.SMTPResponseException) -> str:
    return f"{e.code} {clean_text(e.message)}"


async def _transaction(config: Config, host: str, address: str, sender: str, recipients: list[str],
                       message: bytes, tls_context: ssl.SSLContext, *, require_tls: bool,
                       use_tls: bool, dsn: DsnRequest = NO_DSN, check: Any = None,
                       requiretls: bool = False, note: str = "") -> list[DeliveryResult]:
    q = config.queue
    where = f"{host}[{address}]"
    client = aiosmtplib.SMTP(hostname=address, port=q.remote_port, local_hostname=config.hostname,
                             timeout=q.command_timeout, use_tls=False, start_tls=False, validate_certs=False)
    stage = "connect"
    tls_on = False
    try:
        try:
            await client.connect(timeout=q.connect_timeout)
        except aiosmtplib.SMTPConnectResponseError as e:  # greeting was not 220
            raise HostFailure(e.code, "4.4.2", f"{where} greeted with {_reply_text(e)}", host) from e
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            raise HostFailure(451, "4.4.1", f"connect to {where}: {_why(e)}", host) from e
        stage = "EHLO"
        await _hello(client, where, host)
        if use_tls and client.supports_extension("starttls"):
            stage = "STARTTLS"
            try:
                await client.starttls(tls_context=tls_context, server_hostname=host,
                                      timeout=q.command_timeout)
            except aiosmtplib.SMTPResponseException as e:
                if require_tls:
                    raise HostFailure(451, "4.7.10", f"{where} refused STARTTLS: {_reply_text(e)}", host) from e
                raise _TlsHandshakeFailed(_reply_text(e)) from e
            except ssl.SSLCertVerificationError as e:  # only the verified context checks the chain
                raise HostFailure(451, "4.7.5", f"TLS certificate of {where} not trusted: "
                                  f"{e.verify_message or e.reason or 'verification failed'}", host) from e
            except (ssl.SSLError, aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                raise _TlsHandshakeFailed(_why(e)) from e
            # delivery/tlspolicy.py: RFC 7672 §3.2.3, RFC 8461 §4.2 names, DANE TLSA matching.
            problem = check(client.get_transport_info("ssl_object")) if check is not None else None
            if problem is not None:
                await _quit(client, q.command_timeout)  # RFC 3207 §4.1: not good enough, QUIT
                raise HostFailure(451, "4.7.5", problem.replace(host, where, 1), host)
            tls_on = True
            stage = "EHLO after STARTTLS"
            await _hello(client, where, host)  # RFC 3207 §4.2: forget what was learnt before TLS
        elif require_tls:
            raise HostFailure(451, "4.7.10", f"{where} does not offer STARTTLS and TLS is required", host)

        smtputf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        if smtputf8 and not client.supports_extension("smtputf8"):
            # RFC 6531 §3.2: without SMTPUTF8 the message cannot be sent to this server.
            return _all(recipients, 553, "5.6.7", f"{where} does not support SMTPUTF8, needed for a "
                        "non-ASCII address", False, host)
        encoding = "utf-8" if smtputf8 else "ascii"
        options: list[bytes] = []
        if client.supports_extension("size"):
            options.append(b"SIZE=%d" % len(message))  # RFC 1870 §6
        if client.supports_extension("8bitmime") and not message.isascii():
            options.append(b"BODY=8BITMIME")  # RFC 6152 §2
        if smtputf8:
            options.append(b"SMTPUTF8")  # RFC 6531 §3.4
        if requiretls:
            if not client.supports_extension("requiretls"):  # RFC 8689 §4.2.1
                await _quit(client, q.command_timeout)
                raise HostFailure(550, "5.7.30", f"{where} does not offer REQUIRETLS", host)
            options.append(b"REQUIRETLS")
        passes_dsn = client.supports_extension("dsn")
        if passes_dsn:
            options += _mail_dsn_params(dsn.mail)
        stage = "MAIL FROM"
        resp = await client.execute_command(b"MAIL", b"FROM:<" + sender.encode(encoding) + b">", *options,
                                            timeout=q.command_timeout)
        if resp.code != 250:
            if resp.code >= 500:
                refused = DeliveryResult.from_reply("", resp.code, resp.message, host)
                return _all(recipients, refused.code, refused.enhanced, refused.text, False, host)
            raise HostFailure(resp.code, "4.0.0", f"{where} said to MAIL FROM: {resp.code} "
                              f"{clean_text(resp.message)}", host)
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
                results[rcpt] = DeliveryResult.from_reply(rcpt, resp.code, resp.message, host)
        if not accepted:
            await _quit(client, q.command_timeout)
            return [results[r] for r in recipients]
        stage = "DATA"
        try:
            resp = await client.data(_ensure_crlf_end(message), timeout=q.command_timeout)
            outcome = DeliveryResult.from_reply("", resp.code, resp.message, host)
        except aiosmtplib.SMTPDataError as e:
            outcome = DeliveryResult.from_reply("", e.code, e.message, host)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            outcome = DeliveryResult.temp("", f"{where} lost during DATA: {_why(e)}", code=451,
                                          enhanced="4.4.2", remote_mta=host)
        for rcpt in accepted:
            results[rcpt] = DeliveryResult(rcpt, outcome.code, outcome.enhanced, outcome.text,
                                           outcome.temporary, host, dsn_passed=passes_dsn)
        if outcome.delivered:
            log.info("delivered to %s via %s%s: %s", ",".join(accepted), where,
                     f" (TLS; {note})" if tls_on else f" (no TLS; {note})" if note else "", outcome.reply)
        await _quit(client, q.command_timeout)
        return [results[r] for r in recipients]
    except HostFailure:
        raise
    except _TlsHandshakeFailed:
        raise
    except (aiosmtplib.SMTPException, OSError, TimeoutError, UnicodeError) as e:
        if stage == "DATA":
            return _all(recipients, 451, "4.4.2", f"{where}: {_why(e)}", True, host)
        raise HostFailure(451, "4.4.2", f"{where} failed at {stage}: {_why(e)}", host) from e
    finally:
        client.close()


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
        raise HostFailure(451, "4.4.2", f"{where} failed at EHLO: {_why(e)}", host) from e
    try:
        await client.helo()  # RFC 5321 §3.2: fall back to HELO when EHLO is refused
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
        raise HostFailure(451, "4.4.2", f"{where} refused EHLO ({_reply_text(first)}) and HELO: {_why(e)}",
                          host) from e


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
