"""Accounts: the users file, password hashes, address resolution, SASL.

Owns: who exists (users, aliases, catch-alls, sub-addresses), who may send as what, and logins: the
one login path of every protocol (login.py) and its throttle (throttle.py; with PostgreSQL the
failures every node counted, throttle_pg.py).
Does not own: connection limits (mailhaven.limits), address syntax (mailhaven.message.address), protocols.

Public API:

    passwords.hash_password(pw: str) -> str            # argon2id (argon2-cffi), PHC string; blocking
    await passwords.verify(hash: str, pw: str) -> bool # constant time, off the event loop, never raises
    passwords.needs_rehash(hash) -> bool; passwords.hash_scrypt(pw) -> str ($scrypt$ migration format)
    users.UsersFile.load(path) -> UsersFile            # users + aliases (TOML); ConfigError on problems
        with users.UsersFile.edit(path) as uf: ...     # CLI: flock, load, edit, atomic 0600 save
        .add_user(addr, hash) / .set_password / .delete_user / .add_alias(alias, targets) /
        .delete_alias(alias, targets=None) / .list_users() / .list_aliases() / .save()
        .add_role_aliases(domain, target) -> added     # postmaster@domain -> target, abuse@ -> postmaster@
    users.Directory(config, users_file)                # resolution over config domains + users file
        users.Directory.load(config)                   # reads config.users_file (blocking)
        .resolve(address) -> list[str] | None          # canonical user addresses, None = unknown
        .targets(address) -> Targets(users, forward, programs)  # local users, targets elsewhere, programs
        .is_local_domain(domain) -> bool
        .user(address) -> str | None                   # exact user lookup (no alias, no +tag)
        .owns(user, address) -> bool                   # may `user` send as `address`
        .entry(login) -> UserEntry | None              # the user a login names, with its hash
        await .authenticate(login, password) -> str | None   # canonical user or None (no throttle, no cache)
        .warnings -> list[str]                         # dangling/looping aliases etc. (check-config)
        .postmaster(domain) -> (users, how)            # RFC 5321 §4.5.1, with the implicit first-user fallback
        .how(address) -> (users, how)                  # user / alias / catch-all / "" (nobody)
        .role_warnings -> list[RoleWarning]            # postmaster@/abuse@ reached only implicitly (doctor)
    login.of(ctx) -> LoginService                      # the login path of IMAP, POP3 and submission
        await .login(proto, ip, login, password, mechanism) -> Outcome(user | None, reason, cached, delay)
        .refused(proto, ip, login, reason, mechanism)  # a failure before any check: log line + metrics
        .blocks() / .unblock(ip_or_account)            # `mailhaven auth blocks|unblock`
    throttle.Throttle(Policy, clock=)                  # pure: penalties by address and (address, account)
    throttle_pg.PgLoginFailures(db)                    # seams.LoginFailures: every node's failures (PostgreSQL)
    sasl: pure PLAIN / LOGIN decoding shared by SMTP, IMAP and POP3:
        sasl.decode_plain(b64) -> Credentials(login, password, authzid); sasl.Exchange("PLAIN"|"LOGIN")
        .start(initial) / .step(line) -> challenge str | Credentials; SaslCancelled on "*".

Canonical user address: the local part as written in the users file, the domain lower-case A-label
("Alice@example.test"); local parts compare case-insensitively. It names the user's Maildir.
"""
