"""The outbound queue: durable spool, scheduling, retries, bounces.

Owns: `spool.Spool` (entries on disk: message + JSON envelope, durable writes, load at start; the
narrow interface a shared backend would replace), `schedule` (pure backoff, expiry and delay-warning
rules), `manager.QueueManager` (the worker owned by the app's TaskGroup: active window,
per-destination limits, one transaction per destination domain, results recorded before moving on,
DSNs per RFC 3464 through cleanup.enqueue).
Does not own: how messages enter (cleanup.enqueue is the only way in), SMTP (delivery/), the
control socket protocol (control.py).

RFC 5321 §4.5.4.1 (retry strategy), §4.5.5 and §6.1 (null sender, no bounce loops), RFC 3464 (DSN).
"""
