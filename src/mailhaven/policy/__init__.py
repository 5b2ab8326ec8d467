"""Sender authentication of inbound mail, and DKIM signing of outbound mail.

Owns: SPF (spf.py, RFC 7208, via pyspf), DKIM verify/sign/keygen (dkim.py, RFC 6376 and RFC 8463,
via dkimpy), DMARC (dmarc.py, RFC 7489, organizational domain from the bundled Public Suffix
List), Authentication-Results and Received-SPF (authresults.py, RFC 8601, RFC 7208 §9.1) and the
verdict (pipeline.py: SPF at MAIL, DKIM+DMARC+decision at DATA, config `policy.*`).
Does not own: SMTP sessions (smtp/ calls pipeline and sends the reply), DNS transport (dns/).
Every check takes a `dns.resolver.Resolver`; blocking library work runs in worker threads.
"""
