"""SMTP listeners: the inbound MX (port 25) and submission (587 STARTTLS, 465 implicit TLS).

Owns: serving aiosmtpd's `SMTP` protocol on our event loop (server.py), the envelope rules shared
by roles (hooks.py), the MX role (inbound.py: local recipients only, SPF/DKIM/DMARC through
mailhaven.policy, trace fields, durable delivery before 250), the submission role (submission.py:
AUTH over TLS through authenticator.py, owned senders, cleanup.enqueue before 250) and every reply
text (replies.py, the one place mapping exceptions to "NNN X.Y.Z text").
Does not own: address syntax (message/address.py), header helpers (message/headers.py), policy
checks (policy/), the store, accounts, connection counting (limits.py), TLS contexts (tls.py).

Listener factories (app.py's contract):

    await create_mx_server(ctx, name, lc, sock) -> asyncio.AbstractServer          # "mx"
    await create_submission_server(ctx, name, lc, sock) -> asyncio.AbstractServer  # "submission(s)"

`ctx` needs: config, store, directory, resolver, limits, tls (submission: queue too); optionally
sessions (app.Sessions).

Choices (RFC 5321 leaves them to us; tests in tests/integration/test_mx*.py and tests/regress/):
- Extensions: SIZE <smtp.max_message_size>, 8BITMIME, SMTPUTF8, PIPELINING, ENHANCEDSTATUSCODES,
  CHUNKING (BDAT, RFC 3030; not BINARYMIME: a chunk passes the same checks as DATA's lines, and a
  message not ending in CRLF gets one), DSN (RFC 3461: RET, ENVID, NOTIFY, ORCPT; honoured by the
  queue, passed to next hops that offer DSN, success notices for local copies: dsnparams.py,
  delivery/reports.py), STARTTLS when the listener has tls = "starttls" and a certificate is configured. No AUTH on the MX;
  on submission "AUTH PLAIN LOGIN" once TLS is up (rules and choices: submission.py).
- Recipients: only addresses of our domains that resolve to users; anything else is 550 5.7.1
  (no relaying, loopback clients included); unknown local users 550 5.1.1; more than
  smtp.max_recipients: 452 4.5.3 (RFC 5321 §4.5.3.1.10).
- DATA ends only at CRLF "." CRLF. A message holding a bare CR or bare LF is refused with
  550 5.5.2 after the final dot (like Postfix's smtpd_forbid_bare_newline = reject): normalising
  would store the smuggling payload (`\\n.\\n`, `\\r.\\r`, ...) as if it were real lines.
- A data line longer than smtp.max_line_length (CRLF included, transparency dot not counted):
  the message is refused with 500 5.5.2 after the final dot. Postfix folds long lines instead; we
  refuse because rewriting breaks DKIM signatures. Over smtp.max_message_size: 552 5.3.4 (also at
  MAIL for a SIZE= parameter over the limit, RFC 1870). Over smtp.max_header_count fields or
  smtp.max_header_size octets of header: 552 5.3.4.
- Errors: more than smtp.max_bad_commands 5xx replies to commands (syntax errors, unknown commands,
  refused recipients, over-long command lines) -> 421 4.7.0 and disconnect. The reply to a
  message (after the final dot) does not count.
- Timeouts: listener idle_timeout between commands; smtp.command_timeout for each line of DATA and
  for the sender checks; both end with 421 4.4.2.
"""
