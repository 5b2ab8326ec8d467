"""Accounts: the users file, password hashes, address resolution, SASL.

Public API:

    passwords.hash_password(pw: str) -> str            # argon2id (argon2-cffi), PHC string
    await passwords.verify(hash: str, pw: str) -> bool # constant time, off the event loop
    users.UsersFile.load(path) -> UsersFile            # users + aliases (TOML), edited atomically
    users.Directory(config, users_file)                # resolution over config domains + users file
        .resolve(address) -> list[str] | None          # canonical user addresses, None = unknown
        .is_local_domain(domain) -> bool
        .owns(user, address) -> bool                   # may `user` send as `address`
        await .authenticate(login, password) -> str | None   # canonical user or None
    sasl: pure PLAIN / LOGIN decoding shared by SMTP, IMAP and POP3.
"""
