"""A small authoritative DNS server for tests: real DNS over UDP and TCP on 127.0.0.1.

Owns: answering queries from the records a test puts in at run time, so our resolver, pyspf and
dkimpy are exercised over a real socket (STYLE rule 8: never mock the resolver).
Does not own: recursion, validation, zone files, wildcards.

DNSSEC: `add_zone(zone)` serves a dnspython zone (signed with dns.dnssec.sign_zone, which adds the
NSEC chain) authoritatively for every name at or under its origin: answers with their RRSIGs when
the query has DO set; NODATA with the SOA and the name's NSEC; NXDOMAIN with the SOA, the NSEC
covering the name and the one covering the wildcard at its closest encloser (RFC 4035 §3.1.3), each
with its RRSIG. Enough for a validating resolver (unbound) in front of the server to validate.

Behaviour per name (names are case-insensitive, a trailing dot is optional):
- records added with `add(name, TYPE, text)` are answered authoritatively (AA set), with TTL
  `ttl` (default 60 s, `default_ttl`; one TTL per name and type, the last one given wins);
- a known name without the asked type -> NOERROR with an empty answer (NODATA);
- an unknown name -> NXDOMAIN;
- negative answers (NODATA, NXDOMAIN) carry no SOA, so resolvers do not cache them (RFC 2308 §5),
  unless `set_soa(zone, minimum)` made the server authoritative for a zone holding the name: then
  the zone's SOA is in their authority section and they are cached for min(SOA TTL, MINIMUM);
- CNAME records are followed inside the server's data, like an authoritative server would;
- `set_servfail(name)` -> SERVFAIL; `set_timeout(name)` -> no answer at all (the client times out);
- UDP answers larger than the client's buffer (512, or its EDNS size) are truncated with TC set, and
  the client retries over TCP on the same port; `set_truncate(name)` forces TC for that name.
Every query is recorded in `queries` as (name, TYPE, "udp"|"tcp") for assertions.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

_TTL = 60
_MAX_CNAME = 8


def _norm(name: str) -> str:
    return name.lower().rstrip(".") + "."


def ptr_name(ip: str) -> str:
    """The reverse name of an IPv4 or IPv6 address ("1.0.0.127.in-addr.arpa.")."""
    import dns.reversename

    return str(dns.reversename.from_address(ip))


class DnsServer:
    """Authoritative test DNS server. `start()` binds UDP and TCP on one ephemeral port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._records: dict[str, dict[int, list[str]]] = {}
        self._ttls: dict[tuple[str, int], int] = {}
        self._soas: dict[str, tuple[int, int]] = {}  # zone -> (SOA TTL, MINIMUM)
        self._zones: dict[str, dns.zone.Zone] = {}  # origin -> a (signed) zone, add_zone()
        self.default_ttl = _TTL
        self._servfail: set[str] = set()
        self._timeout: set[str] = set()
        self._truncate: set[str] = set()
        self.queries: list[tuple[str, str, str]] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = socket.socketpair()

    # -- test API ------------------------------------------------------------------------------

    @property
    def nameserver(self) -> str:
        """"127.0.0.1:PORT", the form config `dns.nameservers` takes."""
        return f"{self.host}:{self.port}"

    def add(self, name: str, rtype: str, value: str, ttl: int | None = None) -> None:
        """Add one record, e.g. add("example.net", "MX", "10 mx1.example.net."); `ttl` in seconds
        for this name and type (default: `default_ttl`, 60), e.g. 0 for a record a test changes.

        TXT values are given as plain text; strings longer than 255 octets are split into several
        character-strings of one record, as a zone file would have to (RFC 7208 §3.3).
        """
        rdtype = dns.rdatatype.from_text(rtype.upper())
        if rdtype == dns.rdatatype.TXT:
            value = _txt_text(value)
        # Validate now so a typo fails in the test, not as SERVFAIL later.
        dns.rdata.from_text(dns.rdataclass.IN, rdtype, value, origin=dns.name.root)
        with self._lock:
            self._records.setdefault(_norm(name), {}).setdefault(rdtype, []).append(value)
            if ttl is not None:
                self._ttls[(_norm(name), rdtype)] = ttl

    def add_ptr(self, ip: str, host: str) -> None:
        self.add(ptr_name(ip), "PTR", _norm(host))

    def remove(self, name: str, rtype: str | None = None) -> None:
        with self._lock:
            if rtype is None:
                self._records.pop(_norm(name), None)
            else:
                self._records.get(_norm(name), {}).pop(dns.rdatatype.from_text(rtype.upper()), None)

    def set_soa(self, zone: str, minimum: int, ttl: int | None = None) -> None:
        """Be authoritative for `zone`: negative answers for names at or under it carry its SOA
        (TTL `ttl`, default `minimum`; MINIMUM `minimum`), so they are cached (RFC 2308 §5)."""
        with self._lock:
            self._soas[_norm(zone)] = (minimum if ttl is None else ttl, minimum)

    def add_zone(self, zone: dns.zone.Zone) -> None:
        """Serve `zone` (absolute names: dns.zone.from_text(..., relativize=False)) for its origin."""
        with self._lock:
            self._zones[_norm(zone.origin.to_text())] = zone  # type: ignore[union-attr]

    def set_servfail(self, name: str) -> None:
        with self._lock:
            self._servfail.add(_norm(name))

    def set_timeout(self, name: str) -> None:
        with self._lock:
            self._timeout.add(_norm(name))

    def set_truncate(self, name: str) -> None:
        with self._lock:
            self._truncate.add(_norm(name))

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._ttls.clear()
            self._soas.clear()
            self._zones.clear()
            self.default_ttl = _TTL
            self._servfail.clear()
            self._timeout.clear()
            self._truncate.clear()
            self.queries.clear()

    def queried(self, name: str, rtype: str | None = None) -> int:
        """How many queries for name (and type) arrived."""
        n = _norm(name)
        with self._lock:
            return sum(1 for q in self.queries if q[0] == n and (rtype is None or q[1] == rtype.upper()))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> DnsServer:
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            self._udp, self._tcp, self.port = udp, tcp, port
            break
        else:
            raise RuntimeError("could not bind UDP and TCP on one port")
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop_w.send(b"x")
        if self._thread:
            self._thread.join(5)
        for s in (self._udp, self._tcp, self._stop_r, self._stop_w):
            if s:
                s.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._udp and self._tcp
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ, "udp")
        sel.register(self._tcp, selectors.EVENT_READ, "tcp")
        sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        while True:
            for key, _ in sel.select():
                if key.data == "stop":
                    sel.close()
                    return
                if key.data == "udp":
                    self._serve_udp()
                else:
                    conn, _ = self._tcp.accept()
                    threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()

    def _serve_udp(self) -> None:
        assert self._udp
        try:
            wire, addr = self._udp.recvfrom(65535)
        except OSError:
            return
        out = self._answer(wire, "udp")
        if out is not None:
            self._udp.sendto(out, addr)

    def _serve_tcp(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while True:
                    head = _recv_exact(conn, 2)
                    if head is None:
                        return
                    wire = _recv_exact(conn, struct.unpack("!H", head)[0])
                    if wire is None:
                        return
                    out = self._answer(wire, "tcp")
                    if out is None:
                        continue  # "timeout": say nothing, the client gives up
                    conn.sendall(struct.pack("!H", len(out)) + out)
            except OSError:
                return

    def _answer(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        q = query.question[0]
        qname = _norm(q.name.to_text())
        qtype = q.rdtype
        with self._lock:
            self.queries.append((qname, dns.rdatatype.to_text(qtype), transport))
            if qname in self._timeout:
                return None
            servfail = qname in self._servfail
            truncate = qname in self._truncate
            resp = dns.message.make_response(query)
            if servfail:
                resp.set_rcode(dns.rcode.SERVFAIL)
            elif (zone := self._zone_of(qname)) is not None:
                _fill_zone(resp, zone, qname, qtype, bool(query.ednsflags & dns.flags.DO))
            else:
                self._fill(resp, qname, qtype)
        if transport == "udp":
            limit = max(512, query.payload if query.edns >= 0 else 512)
            if truncate:
                resp.answer = []
                resp.flags |= dns.flags.TC
                return resp.to_wire()
            return resp.to_wire(max_size=limit, prefer_truncation=True)
        return resp.to_wire()

    def _fill(self, resp: dns.message.Message, qname: str, qtype: int) -> None:
        resp.flags |= dns.flags.AA
        name = qname
        for _ in range(_MAX_CNAME):
            node = self._records.get(name)
            if node is None:
                if name == qname:
                    resp.set_rcode(dns.rcode.NXDOMAIN)
                self._add_soa(resp, name)
                return
            if qtype in node:
                resp.answer.append(dns.rrset.from_text_list(name, self._ttl(name, qtype), "IN",
                                                            dns.rdatatype.to_text(qtype), node[qtype]))
                return
            cname = node.get(dns.rdatatype.CNAME)
            if not cname or qtype == dns.rdatatype.CNAME:
                self._add_soa(resp, name)
                return  # NODATA
            resp.answer.append(dns.rrset.from_text_list(name, self._ttl(name, dns.rdatatype.CNAME), "IN",
                                                        "CNAME", cname[:1]))
            name = _norm(cname[0])

    def _zone_of(self, qname: str) -> dns.zone.Zone | None:
        labels = qname.split(".")
        for i in range(len(labels)):
            zone = self._zones.get(".".join(labels[i:]) or ".")
            if zone is not None:
                return zone
        return None

    def _ttl(self, name: str, rdtype: int) -> int:
        return self._ttls.get((name, rdtype), self.default_ttl)

    def _add_soa(self, resp: dns.message.Message, name: str) -> None:
        """RFC 2308 §3: the SOA of the zone holding a negative answer's name, in the authority section."""
        labels = name.split(".")
        for i in range(len(labels)):
            zone = ".".join(labels[i:]) or "."
            if zone in self._soas:
                ttl, minimum = self._soas[zone]
                resp.authority.append(dns.rrset.from_text(zone, ttl, "IN", "SOA",
                                                          f"ns.{zone} hostmaster.{zone} 1 3600 600 86400 {minimum}"))
                return


def _fill_zone(resp: dns.message.Message, zone: dns.zone.Zone, qname: str, qtype: int, do: bool) -> None:
    resp.flags |= dns.flags.AA
    origin = zone.origin
    assert origin is not None
    name = dns.name.from_text(qname)

    def put(section: list[dns.rrset.RRset], owner: dns.name.Name, rdtype: int) -> None:
        node = zone.get_node(owner)
        rds = node.get_rdataset(dns.rdataclass.IN, rdtype) if node is not None else None
        if rds is None:
            return
        section.append(dns.rrset.from_rdata_list(owner, rds.ttl, list(rds)))
        sig = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype) if do and node else None
        if sig is not None:
            section.append(dns.rrset.from_rdata_list(owner, sig.ttl, list(sig)))

    node = zone.get_node(name)
    if node is not None and node.get_rdataset(dns.rdataclass.IN, qtype) is not None:
        put(resp.answer, name, qtype)
        return
    put(resp.authority, origin, dns.rdatatype.SOA)
    if node is not None:  # NODATA: the name's NSEC says which types it has
        if do:
            put(resp.authority, name, dns.rdatatype.NSEC)
        return
    resp.set_rcode(dns.rcode.NXDOMAIN)
    if not do:
        return
    names = sorted(zone.nodes.keys())
    encloser = name.parent()
    while encloser != origin and zone.get_node(encloser) is None:
        encloser = encloser.parent()
    wildcard = dns.name.Name((b"*",) + encloser.labels)
    covering = {max((n for n in names if n < target), default=names[-1]) for target in (name, wildcard)}
    for owner in sorted(covering):
        put(resp.authority, owner, dns.rdatatype.NSEC)


def _txt_text(value: str) -> str:
    """Plain text -> TXT presentation form, split into <=255-octet quoted character-strings.

    Octets outside printable ASCII, '"' and '\\' are written as \\DDD (RFC 1035 §5.1)."""
    raw = value.encode("utf-8")
    chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    out = []
    for c in chunks:
        s = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:03d}" for b in c)
        out.append('"' + s + '"')
    return " ".join(out)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
