"""ManageSieve (RFC 5804): users manage their Sieve scripts over TCP port 4190.

Owns: the protocol core (protocol.py, sans-IO) and its listener (server.py).
Does not own: where and how scripts are stored (sieve_store.py), Sieve syntax (sieve/), logins
(auth/login.py), the connection plumbing (lineproto.py).
"""
