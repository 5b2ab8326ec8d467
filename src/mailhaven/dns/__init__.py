"""DNS: lookups and next-hop selection.

Owns: `resolver.Resolver` (async MX/TXT/A/AAAA/PTR over the configured nameservers, DNS failures
mapped to `errors.DnsTempError`, NXDOMAIN of an MX lookup to `resolver.DomainNotFound`) and
`nexthop.next_hops` (RFC 5321 §5.1 MX ordering and implicit MX, RFC 7505 null MX).
Does not own: SPF/DKIM/DMARC (policy/), connecting to hosts (delivery/).
"""
