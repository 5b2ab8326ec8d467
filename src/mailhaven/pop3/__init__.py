"""POP3 access to each user's INBOX (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH PLAIN).

Owns: the POP3 listeners (110 with STLS, 995 implicit TLS), the session state machine
(`protocol.py`, sans-IO), the per-user maildrop lock (one POP3 session per mailbox), and the
UPDATE step that expunges messages deleted with DELE, durably, before the final +OK.
Does not own: message storage and change events (store/), passwords (auth/), throttling and
connection counting (limits), TLS contexts (tls).

UIDL values are Dovecot's default format `%08Xu%08Xv` (IMAP UID then UIDVALIDITY, 8 lower-case hex
digits each, as Dovecot really prints them), so they follow IMAP's identity of a message and survive
a migration from Dovecot (same UIDLs: clients do not download everything again).
The maildrop is the INBOX as it was at login; mail arriving later shows in the next session.
LIST and STAT sizes are exactly the octets RETR sends before ".CRLF" (RFC 1939 §11), the CRLF it
adds to a message without a final line break included: the store's MessageInfo.pop3_size, learnt
when the store first sees the file, so LIST reads no message.
"""
