"""The TLS decision for one destination: what outbound delivery to a domain, and to each of its MX
hosts, must get from TLS, and whether a finished handshake got it.

Owns, combining the sources like Postfix's security levels (may / verify / dane):
- `queue.require_tls_domains` (local policy): TLS required, PKIX-verified, certificate naming the MX;
- MTA-STS (delivery/mtasts.py, RFC 8461): `enforce` keeps only the MX hosts matching the policy's
  `mx` patterns (§4.1) and requires verified TLS naming the MX host (§4.2), else 4.7.5;
  `testing` checks the same but delivers anyway, the failure logged (§5); `none` nothing;
- DANE (delivery/dane.py, RFC 7672): for an MX host reached through a DNSSEC-validated MX answer,
  usable TLSA records (validated too) make TLS mandatory and verified by TLSA instead of PKIX
  (§2.2, §3.1); DANE takes precedence over MTA-STS for that host (RFC 8461 §2); TLSA records that
  are all unusable leave TLS opportunistic (RFC 7672 §3.1.3);
- REQUIRETLS (RFC 8689 §4.2.1): the message goes only to a destination with MTA-STS (enforce or
  testing, then treated as enforce) or DANE, verified, to a next hop offering REQUIRETLS;
- `TLS-Required: No` (RFC 8689 §4.3, only without REQUIRETLS): MTA-STS and DANE failures are ignored
  for that message (TLS is still used when offered); local require_tls_domains still apply;
- a configured next hop (delivery/routes.py: the relay, a [queue.transports] host; `hop_plan`): the
  policy is about that hop, not the destination's MX (as Postfix's): the domain's MTA-STS and DANE
  do not apply; the relay always needs verified TLS naming it; a transport host needs it when
  require_tls_domains lists the domain or the message has REQUIRETLS (no MX lookup, so RFC 8689
  §4.2.1's secure-MX rule is met by the configured name, verified);
- what a finished session was checked for (`HostPlan.requirement`), the part of a pooled
  connection's key (delivery/smtpconn.py) that keeps a session opened under a weaker policy from
  being reused under a stricter one;
- the words for the log and the recipient's result: which policy applied and why a host was refused.
Does not own: the SMTP dialogue and the handshake (delivery/remote.py), fetching policies
(delivery/mtasts.py), TLSA matching (delivery/dane.py).
"""

from __future__ import annotations

import hashlib
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mailhaven import seams
from mailhaven.config import Config
from mailhaven.delivery import certnames, dane, mtasts, tlsrpt
from mailhaven.errors import DnsTempError

log = logging.getLogger("mailhaven.delivery")

Level = Literal["may", "verify", "dane"]


@dataclass(frozen=True)
class HostPlan:
    """What one MX host must offer. `required`: no TLS, no delivery; `level`: how the certificate
    is checked; `report_only`: check, log a failure, deliver anyway (MTA-STS testing)."""

    host: str
    level: Level = "may"
    required: bool = False
    why: str = "opportunistic TLS"
    tlsa: tuple[dane.Tlsa, ...] = ()
    names: tuple[str, ...] = ()  # reference identifiers: the MX host (and for DANE-TA the domain)
    report_only: bool = False

    @property
    def summary(self) -> str:
        """For the delivery log line: how this session's TLS was judged."""
        if self.level == "may" or self.report_only:
            return self.why
        return f"certificate verified: {self.why}"

    @property
    def pkix(self) -> bool:
        """Whether the handshake itself checks the chain (the verifying context)."""
        return self.level == "verify" and not self.report_only

    @property
    def requirement(self) -> str:
        """What a session opened under this plan was checked for, as a connection pool key part
        (delivery/smtpconn.py): two plans give the same string only when a session good for one is
        good for the other. "may" (nothing checked), "verify:NAMES" (chain verified, a name
        checked: require_tls_domains, MTA-STS enforce, REQUIRETLS, the relay), "verify-testing:NAMES"
        (MTA-STS testing: checked, used either way), "dane:NAMES:DIGEST" (matched against this
        TLSA set)."""
        if self.level == "may":
            return "may"
        names = ",".join(self.names)
        if self.level == "dane":
            rrset = "\n".join(sorted(f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}" for r in self.tlsa))
            return f"dane:{names}:{hashlib.sha256(rrset.encode()).hexdigest()[:16]}"
        return f"{'verify-testing' if self.report_only else 'verify'}:{names}"


@dataclass
class DomainPlan:
    domain: str
    forced: bool = False  # queue.require_tls_domains
    sts: mtasts.Found = field(default_factory=lambda: mtasts.Found(None))
    requiretls: bool = False
    tls_optional: bool = False  # TLS-Required: No
    mx_secure: bool = False  # the MX answer was DNSSEC-validated: DANE may apply
    dane_enabled: bool = False
    resolver: Any = None
    recorder: tlsrpt.Recorder | None = None  # [reports] tls: outcomes for TLS-RPT
    via: str = ""  # a configured next hop ("relay [HOST]:PORT", "transport ..."): not the domain's MX
    via_tls: bool = False  # that hop needs verified TLS naming it, always (the relay)

    def _policy_of(self, plan: HostPlan | None) -> tuple[str, tuple[str, ...]] | None:
        """RFC 8460 §4.4 policy type and strings of what applied to a host (None: nothing to report)."""
        if plan is not None and plan.level == "dane":
            return "tlsa", tuple(f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}" for r in plan.tlsa)
        p = self.sts.policy
        if p is not None and p.mode != "none" and not self.tls_optional:
            return "sts", tuple(line for line in p.text.splitlines() if line.strip())
        return None

    def record(self, plan: HostPlan | None, address: str, result: str, detail: str = "") -> None:
        """One TLS-RPT outcome (§4.3 result type or "success"), written in the background."""
        policy = self._policy_of(plan)
        if self.recorder is None or policy is None:
            return
        outcome = tlsrpt.Outcome(self.domain, policy[0], policy[1], plan.host if plan else "", address, result, detail)
        self.recorder.record_soon(outcome)

    def host_failed(self, plan: HostPlan, address: str, enhanced: str, text: str) -> None:
        """remote.py: a host refused for TLS reasons (4.7.10 no STARTTLS / handshake, 4.7.5 chain)."""
        if enhanced == "4.7.10":
            self.record(plan, address, "starttls-not-supported", text)
        elif enhanced == "4.7.5" and "not trusted" in text:
            self.record(plan, address, "certificate-not-trusted", text)

    @property
    def sts_mode(self) -> str:
        p = self.sts.policy
        return "none" if p is None or self.tls_optional else p.mode

    def describe(self) -> str:
        parts = []
        if self.sts.policy is not None:
            parts.append(f"MTA-STS {self.sts.policy.mode}" + (" (ignored: TLS-Required: No)" if self.tls_optional
                                                              else ""))
        elif self.sts.problem:
            parts.append(f"MTA-STS policy unavailable ({self.sts.problem})")
        if self.forced:
            parts.append("require_tls_domains")
        if self.requiretls:
            parts.append("REQUIRETLS")
        if self.via:
            parts.append(self.via)
        return ", ".join(parts) or "no TLS policy"

    def allowed(self, hosts: Sequence[str]) -> tuple[list[str], list[str]]:
        """(MX hosts that may be used, those the MTA-STS policy leaves out). §4.1: with `enforce`
        only matching hosts; `testing` uses them all and logs the mismatches."""
        policy = self.sts.policy
        if policy is None or self.sts_mode == "none":
            return list(hosts), []
        ok = [h for h in hosts if policy.allows(h)]
        bad = [h for h in hosts if not policy.allows(h)]
        if bad and (self.sts_mode == "testing" and not self.requiretls):
            log.warning("MTA-STS testing policy of %s: MX %s not in the policy's mx %s (delivering anyway)",
                        self.domain, ",".join(bad), ",".join(policy.mx))
            return list(hosts), []
        return ok, bad

    def no_policy_for_requiretls(self) -> str | None:
        """RFC 8689 §4.2.1: why a REQUIRETLS message cannot go to this domain at all, or None."""
        if not self.requiretls:
            return None
        if self.via:  # no MX lookup to secure: verified TLS to the configured name (host()) instead
            return None
        if self.sts_mode in ("enforce", "testing") or self.mx_secure:
            return None
        return f"{self.domain} publishes neither an MTA-STS policy nor DNSSEC-signed MX records (DANE)"

    async def host(self, host: str) -> HostPlan:
        """The requirement for one MX host. Raises DnsTempError when the TLSA lookup fails
        temporarily for a host that must be checked (RFC 7672 §2.2: then the host is not used)."""
        names = (host,)
        if self.via_tls:
            return HostPlan(host, "verify", True, self.via, names=names)
        if self.dane_enabled and self.mx_secure and not self.tls_optional and self.resolver is not None:
            records, secure = await dane.lookup(self.resolver, host)
            if secure and records:
                usable = tuple(r for r in records if r.usable)
                if usable:
                    return HostPlan(host, "dane", True, f"DANE, {len(usable)} usable TLSA", usable,
                                    (host, self.domain))
                if not self.requiretls and self.sts_mode == "none" and not self.forced:
                    return HostPlan(host, "may", False, "opportunistic, no usable TLSA")
        if self.forced:
            return HostPlan(host, "verify", True, "require_tls_domains", names=names)
        mode = self.sts_mode
        if mode == "enforce" or (mode == "testing" and self.requiretls):
            return HostPlan(host, "verify", True, f"MTA-STS {mode}", names=names)
        if self.requiretls:
            return HostPlan(host, "verify", True, "REQUIRETLS", names=names)
        if mode == "testing":
            return HostPlan(host, "verify", False, "MTA-STS testing", names=names,
                            report_only=True)
        return HostPlan(host)

    def check(self, plan: HostPlan, ssl_object: Any, verifier: PkixVerifier | None,
              address: str = "") -> str | None:
        """After the handshake: None when the session meets `plan`, else why not (for a 4.7.5).
        A failure under MTA-STS testing is logged and None returned."""
        problem = _check(plan, ssl_object, verifier)
        if problem is None:
            self.record(plan, address, "success")
            return None
        kind = ("validation-failure" if plan.level == "dane" else
                "certificate-host-mismatch" if "does not name" in problem else "certificate-not-trusted")
        self.record(plan, address, kind, problem)
        if plan.report_only:
            log.warning("MTA-STS testing policy of %s: %s fails the policy: %s (delivering anyway)",
                        self.domain, plan.host, problem)
            return None
        return f"{problem} (policy: {plan.why})"


def _chain(ssl_object: Any) -> list[bytes]:
    """The certificates the server presented, leaf first, as DER."""
    if ssl_object is None:
        return []
    raw = getattr(ssl_object, "_sslobj", None)
    getter = getattr(raw, "get_unverified_chain", None)  # public as get_unverified_chain in 3.13
    if getter is not None:
        chain = getter() or []
        return [c.public_bytes(ssl._ssl.ENCODING_DER) if hasattr(c, "public_bytes") else bytes(c)  # type: ignore[attr-defined]
                for c in chain]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _check(plan: HostPlan, ssl_object: Any, verifier: PkixVerifier | None) -> str | None:
    if plan.level == "may":
        return None
    chain = _chain(ssl_object)
    if plan.level == "dane":
        problem = dane.check(plan.tlsa, chain, plan.names)
        return None if problem is None else f"TLS certificate of {plan.host} fails DANE: {problem}"
    if plan.pkix:  # the chain was checked by the handshake; the name is ours to check
        names = certnames.presented_names(ssl_object.getpeercert() if ssl_object is not None else None)
        if not certnames.covers(names, plan.host):
            return f"TLS certificate of {plan.host} does not name {plan.host} (it names {certnames.describe(names)})"
        return None
    if verifier is None:
        return "no trust store to verify the certificate"
    return verifier.verify(chain, plan.host)


class PkixVerifier:
    """Chain + name verification after an unverified handshake (MTA-STS testing: the session is
    used either way, only the verdict is wanted), by cryptography's X.509 verifier against the
    same trust store as tls.mx_verify_context."""

    def __init__(self, cafile: str = "") -> None:
        from cryptography import x509
        from cryptography.x509.verification import Store

        path = cafile or ssl.get_default_verify_paths().cafile or ""
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes()) if path else []
        self.store = Store(certs) if certs else None

    def verify(self, chain_der: Sequence[bytes], host: str) -> str | None:
        from cryptography import x509
        from cryptography.x509.verification import PolicyBuilder, VerificationError

        if not chain_der:
            return f"{host} presented no certificate"
        if self.store is None:
            return "no trusted CA certificates"
        try:
            chain = [x509.load_der_x509_certificate(d) for d in chain_der]
            name = x509.DNSName(host)
            PolicyBuilder().store(self.store).build_server_verifier(name).verify(chain[0], chain[1:])
        except (VerificationError, ValueError) as e:
            return f"TLS certificate of {host} not valid for it: {str(e)[:200]}"
        return None


# A header field line "TLS-Required: No" in the header section (RFC 8689 §5).
_TLS_REQUIRED_NO = re.compile(rb"^TLS-Required:[ \t]*No[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def tls_required_no(message: bytes) -> bool:
    """Whether the message's header says "TLS-Required: No" (RFC 8689 §5)."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    head = message if end < 0 else message[:end + 1]
    return _TLS_REQUIRED_NO.search(head) is not None


class TlsPolicies:
    """One per queue manager: the MTA-STS cache and the DANE switch, asked per destination."""

    def __init__(self, config: Config, resolver: seams.Resolver, *, sts_port: int = 443,
                 sts_tls: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.resolver = resolver
        q = config.queue
        self.sts: mtasts.Discovery | None = None
        if q.mta_sts:
            if sts_tls is None:
                sts_tls = ssl.create_default_context(cafile=q.tls_ca_file or None)
            path = Path(config.data_dir) / "mta-sts.json"
            self.sts = mtasts.Discovery(resolver, sts_tls, path, port=sts_port)
        self.dane = bool(q.dane)
        if self.dane and not getattr(resolver, "loopback_only", lambda: False)():
            log.warning("DANE not used: the DNS resolvers are not all on this host, so their DNSSEC "
                        "verdict (AD bit) cannot be trusted; run a validating resolver (unbound) on localhost")
            self.dane = False
        self._verifier: PkixVerifier | None = None
        self._verified: ssl.SSLContext | None = None
        self.recorder = tlsrpt.Recorder(Path(config.data_dir) / "tlsrpt") if config.reports.tls else None

    def verified_context(self) -> ssl.SSLContext:
        """The verifying client context (tls.mx_verify_context), built once: loading a trust store
        costs milliseconds of CPU. Raises ConfigError for an unusable queue.tls_ca_file."""
        if self._verified is None:
            from mailhaven.tls import mx_verify_context

            self._verified = mx_verify_context(self.config.queue.tls_ca_file)
        return self._verified

    def verifier(self) -> PkixVerifier | None:
        if self._verifier is None:
            try:
                self._verifier = PkixVerifier(self.config.queue.tls_ca_file)
            except (OSError, ValueError) as e:
                log.warning("no trust store for MTA-STS testing checks: %s", e)
        return self._verifier

    async def plan(self, domain: str, *, requiretls: bool = False, tls_optional: bool = False) -> DomainPlan:
        """What delivery to `domain` needs. `tls_optional`: TLS-Required: No (ignored with
        REQUIRETLS, RFC 8689 §5)."""
        from mailhaven.delivery.remote import requires_tls

        plan = DomainPlan(domain.lower().rstrip("."), forced=requires_tls(self.config, domain),
                          requiretls=requiretls, tls_optional=tls_optional and not requiretls,
                          dane_enabled=self.dane, resolver=self.resolver, recorder=self.recorder)
        if domain.startswith("["):
            return plan
        if self.sts is not None and not plan.tls_optional:
            plan.sts = await self.sts.policy(plan.domain)
            if plan.sts.problem_kind and self.recorder is not None:  # RFC 8460 §4.3.2.2
                self.recorder.record_soon(tlsrpt.Outcome(plan.domain, "sts", (), "", "", plan.sts.problem_kind,
                                                         plan.sts.problem))
        if self.dane and not plan.tls_optional:
            secure_mx = getattr(self.resolver, "secure", None)
            if secure_mx is not None:
                try:
                    _, plan.mx_secure = await secure_mx(plan.domain, "MX")
                except DnsTempError:
                    plan.mx_secure = False
        return plan

    async def close(self) -> None:
        if self.sts is not None:
            await self.sts.close()


def hop_plan(config: Config, domain: str, via: str, *, tls: bool, requiretls: bool = False) -> DomainPlan:
    """For a configured next hop (`via`, routes.Route.text), not the domain's MX: the domain's
    MTA-STS and DANE do not apply (they name its MX hosts); `tls`: the hop needs verified TLS
    naming it (the relay); require_tls_domains and REQUIRETLS ask the same of any hop."""
    from mailhaven.delivery.remote import requires_tls

    return DomainPlan(domain.lower().rstrip("."), forced=requires_tls(config, domain), requiretls=requiretls,
                      via=via, via_tls=tls)


def static_plan(config: Config, domain: str) -> DomainPlan:
    """Without TlsPolicies (no MTA-STS, no DANE): only queue.require_tls_domains."""
    from mailhaven.delivery.remote import requires_tls

    return DomainPlan(domain.lower().rstrip("."), forced=requires_tls(config, domain))


__all__ = ["TlsPolicies", "DomainPlan", "HostPlan", "PkixVerifier", "hop_plan", "static_plan", "tls_required_no"]
