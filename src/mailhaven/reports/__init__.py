"""Reports we send about mail we received: DMARC aggregate reports (RFC 7489 §7.2).

- dmarc_xml.py: the report (Appendix C XML, gzipped, in its mail), pure.
- dmarc_log.py: what the MX saw, counted durably per policy domain and UTC day (SQLite).
- dmarc_send.py: the reporter: observes MX verdicts, sends each finished day's reports through
  our own queue after the external-destination check, within size and count limits.
"""
