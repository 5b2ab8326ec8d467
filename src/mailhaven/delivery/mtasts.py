"""MTA-STS (RFC 8461): a destination domain's published wish for verified TLS, found and kept.

Owns:
- the pure parts: the `_mta-sts.<domain>` TXT record (§3.1: exactly one record starting
  "v=STSv1", with an `id`), the policy file (§3.2: `version`, `mode`, `mx`, `max_age`), and
  whether an MX host name matches one of the policy's `mx` patterns (§4.1: "*." only as the whole
  left-most label, standing for exactly one label);
- fetching the policy: HTTPS GET `https://mta-sts.<domain>/.well-known/mta-sts.txt` (§3.3) with
  a verified certificate (the system trust store, or `queue.tls_ca_file`), no redirects, at most
  MAX_POLICY_SIZE octets, a timeout on the whole exchange; the name mta-sts.<domain> is resolved
  through our own resolver (so the configured nameservers answer, as for every other lookup);
- the policy cache (`Discovery`): a policy is kept for its max_age (§5), persisted in one JSON file
  in the data dir so a restart keeps it (a lost write only costs a refetch); refreshed in the
  background when the TXT id changes or when less than a quarter of its life is left (§5.1: a
  failed refresh keeps the cached policy until it expires); with no cached policy the fetch is
  waited for. A missing TXT record does not drop a cached policy (§5.1: only `mode: none` does).
Does not own: what a policy means for one delivery (delivery/tlspolicy.py), the SMTP dialogue
(delivery/remote.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mailhaven import seams
from mailhaven.delivery import certnames
from mailhaven.errors import DnsTempError

log = logging.getLogger("mailhaven.delivery")

MAX_POLICY_SIZE = 64 * 1024  # §3.3: "SHOULD" not be larger than 64 KiB
MAX_AGE_LIMIT = 31557600  # §3.2: at most one year
FETCH_TIMEOUT = 30.0  # seconds for the whole HTTPS exchange (mox uses 60 s, Postfix's helper 10 s)
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")

Mode = Literal["enforce", "testing", "none"]


class PolicyError(Exception):
    """The policy could not be fetched or is not valid (TLS-RPT: sts-policy-fetch-error /
    sts-policy-invalid, RFC 8460 §4.3.2.2)."""

    def __init__(self, text: str, kind: str = "sts-policy-fetch-error") -> None:
        super().__init__(text)
        self.kind = kind


@dataclass(frozen=True)
class Policy:
    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    text: str = field(default="", compare=False)

    def allows(self, host: str) -> bool:
        """Whether the MX host name matches one of the `mx` patterns (§4.1)."""
        return any(mx_matches(p, host) for p in self.mx)


def parse_txt(records: list[str]) -> str | None:
    """The policy id of the `_mta-sts` TXT records, None when there is no usable record (§3.1:
    records not starting "v=STSv1" are ignored; more than one such record means no policy)."""
    found = [r for r in records if re.match(r"^v=STSv1\s*(;|$)", r)]
    if len(found) != 1:
        return None
    for part in found[0].split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.strip() == "id" and _ID.match(value.strip()):
            return value.strip()
    return None


def parse_policy(text: str) -> Policy:
    """The policy file of §3.2. Raises PolicyError (kind sts-policy-invalid)."""
    fields: dict[str, list[str]] = {}
    for line in re.split(r"\r?\n", text):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"MTA-STS policy line without a colon: {line[:60]!r}", "sts-policy-invalid")
        fields.setdefault(key.strip(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("MTA-STS policy without \"version: STSv1\"", "sts-policy-invalid")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"MTA-STS policy with mode {mode[:20]!r}", "sts-policy-invalid")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyError("MTA-STS policy without a valid max_age", "sts-policy-invalid") from None
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        raise PolicyError(f"MTA-STS policy max_age {max_age} out of range", "sts-policy-invalid")
    mx = tuple(m.lower().rstrip(".") for m in fields.get("mx", []) if m)
    if mode != "none" and not mx:
        raise PolicyError("MTA-STS policy without mx", "sts-policy-invalid")
    return Policy(mode, mx, max_age, text)  # type: ignore[arg-type]


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: "mail.example.com" matches itself, "*.example.com" matches one more left-most label."""
    return certnames.name_matches(pattern, host)


# --- fetching ------------------------------------------------------------------------------------

class _OurResolver:
    """aiohttp resolver asking our DNS resolver (the configured nameservers), not getaddrinfo."""

    def __init__(self, resolver: seams.Resolver) -> None:
        self._r = resolver

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        try:
            addresses = await self._r.addresses(host)
        except DnsTempError as e:
            raise OSError(e.text) from e
        if not addresses:
            raise OSError(f"{host} has no address")
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for a in addresses]

    async def close(self) -> None:
        return None


async def fetch(domain: str, resolver: seams.Resolver, tls: ssl.SSLContext, *, port: int = 443,
                seconds: float = FETCH_TIMEOUT) -> Policy:
    """GET the policy of `domain` (§3.3). Raises PolicyError."""
    import aiohttp

    host = f"mta-sts.{domain}"
    url = f"https://{host}{'' if port == 443 else f':{port}'}/.well-known/mta-sts.txt"
    connector = aiohttp.TCPConnector(resolver=_OurResolver(resolver), ssl=tls, use_dns_cache=False)  # type: ignore[arg-type]
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=seconds)) as s:
            async with s.get(url, allow_redirects=False) as resp:  # §3.3: redirects MUST NOT be followed
                if resp.status != 200:
                    raise PolicyError(f"{url} answered HTTP {resp.status}")
                body = await resp.content.read(MAX_POLICY_SIZE + 1)
    except PolicyError:
        raise
    except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError) as e:
        raise PolicyError(f"fetching {url} failed: {_why(e)}") from e
    if len(body) > MAX_POLICY_SIZE:
        raise PolicyError(f"{url} is larger than {MAX_POLICY_SIZE} octets", "sts-policy-invalid")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{url} is not UTF-8", "sts-policy-invalid") from None
    return parse_policy(text)


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return (str(e) or type(e).__name__)[:200]


# --- the cache -----------------------------------------------------------------------------------

@dataclass
class Cached:
    id: str
    policy: Policy
    fetched: float

    @property
    def expires(self) -> float:
        return self.fetched + self.policy.max_age


@dataclass(frozen=True)
class Found:
    """What discovery says for one domain: the policy in force (None: no MTA-STS), and what went
    wrong finding it (for the log and TLS-RPT), e.g. a fetch that failed with nothing cached."""

    policy: Policy | None
    id: str = ""
    problem: str = ""
    problem_kind: str = ""


class Discovery:
    """The MTA-STS policies of destination domains, cached in `path` (JSON)."""

    def __init__(self, resolver: seams.Resolver, tls: ssl.SSLContext, path: Path | None, *,
                 port: int = 443, timeout: float = FETCH_TIMEOUT, clock: Any = time.time) -> None:
        self.resolver, self.tls, self.path = resolver, tls, path
        self.port, self.timeout, self.clock = port, timeout, clock
        self._cache: dict[str, Cached] = self._load()
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._fetching: dict[str, asyncio.Future[Policy]] = {}  # one fetch per domain at a time
        self.fetches = 0

    def _load(self) -> dict[str, Cached]:
        if self.path is None:
            return {}
        try:
            raw = json.loads(self.path.read_text("utf-8"))
            out = {}
            for domain, d in raw.items():
                out[domain] = Cached(str(d["id"]), parse_policy(str(d["text"])), float(d["fetched"]))
            return out
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, PolicyError) as e:
            log.warning("MTA-STS cache %s unreadable, starting empty: %s", self.path, e)
            return {}

    def _save_now(self, snapshot: dict[str, dict[str, Any]]) -> None:
        assert self.path is not None
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")  # workers share the file
        try:
            tmp.write_text(json.dumps(snapshot), "utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("MTA-STS cache %s not written: %s", self.path, e)

    async def _save(self) -> None:
        if self.path is None:
            return
        now = self.clock()
        snapshot = {d: {"id": c.id, "text": c.policy.text, "fetched": c.fetched}
                    for d, c in self._cache.items() if c.expires > now}
        await asyncio.to_thread(self._save_now, snapshot)

    def cached(self, domain: str) -> Cached | None:
        c = self._cache.get(domain.lower())
        return c if c is not None and c.expires > self.clock() else None

    async def policy(self, domain: str) -> Found:
        """The policy in force for `domain` now (§5.1)."""
        domain = domain.lower().rstrip(".")
        cached = self.cached(domain)
        try:
            txt_id = parse_txt(await self.resolver.txt(f"_mta-sts.{domain}"))
        except DnsTempError as e:
            if cached is not None:
                return Found(cached.policy, cached.id)
            return Found(None, problem=e.text, problem_kind="sts-policy-fetch-error")
        if cached is not None:
            left = cached.expires - self.clock()
            if (txt_id is not None and txt_id != cached.id) or left < cached.policy.max_age / 4:
                self._refresh_later(domain, txt_id or cached.id)
            return Found(cached.policy, cached.id)
        if txt_id is None:
            return Found(None)
        try:
            policy = await self._fetch_and_keep(domain, txt_id)
        except PolicyError as e:
            log.warning("MTA-STS policy of %s: %s", domain, e)
            return Found(None, txt_id, str(e), e.kind)
        return Found(policy, txt_id)

    async def _fetch_and_keep(self, domain: str, txt_id: str) -> Policy:
        """Fetch (or wait for the fetch already under way for `domain`) and cache."""
        running = self._fetching.get(domain)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Policy] = asyncio.get_running_loop().create_future()
        self._fetching[domain] = future
        try:
            policy = await self._fetch_now(domain, txt_id)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(policy)
            return policy
        finally:
            del self._fetching[domain]

    async def _fetch_now(self, domain: str, txt_id: str) -> Policy:
        self.fetches += 1
        policy = await fetch(domain, self.resolver, self.tls, port=self.port, seconds=self.timeout)
        self._cache[domain] = Cached(txt_id, policy, self.clock())
        log.info("MTA-STS policy of %s (id %s): mode %s, mx %s, max_age %d", domain, txt_id, policy.mode,
                 ",".join(policy.mx), policy.max_age)
        await self._save()
        return policy

    def _refresh_later(self, domain: str, txt_id: str) -> None:
        if domain in self._refreshing:
            return

        async def refresh() -> None:
            try:
                await self._fetch_and_keep(domain, txt_id)
            except PolicyError as e:  # §5.1: keep using the cached policy until it expires
                log.warning("MTA-STS policy of %s not refreshed (the cached one stays): %s", domain, e)
            finally:
                self._refreshing.pop(domain, None)

        self._refreshing[domain] = asyncio.get_running_loop().create_task(refresh())

    async def settle(self) -> None:
        """Wait for background refreshes (tests, shutdown)."""
        while self._refreshing:
            await asyncio.gather(*self._refreshing.values(), return_exceptions=True)

    async def close(self) -> None:
        for t in list(self._refreshing.values()):
            t.cancel()
        await asyncio.gather(*self._refreshing.values(), return_exceptions=True)


__all__ = ["Policy", "PolicyError", "Discovery", "Found", "parse_txt", "parse_policy", "mx_matches", "fetch"]
