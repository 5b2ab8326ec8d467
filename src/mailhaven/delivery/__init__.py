"""Delivery agents: carry one queued message to its recipients, one transaction at a time.

Owns: `remote.deliver` (MX lookup through dns/, SMTP client over aiosmtplib, opportunistic and
required STARTTLS, per-recipient results; RFC 5321 §5.1, RFC 7505, RFC 3207), `local.LocalDeliveryAgent`
(the one way into a mailbox, for recipients in our own domains), and `result.DeliveryResult`, the per-recipient
outcome (code, enhanced status RFC 3463, text, temporary) both return.
Does not own: queueing, retries, bounces (queue/), header fixing and signing (cleanup.py).
"""
