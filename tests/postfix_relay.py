"""Debian's Postfix as a real authenticated relay (smarthost) for the queue's relay tests.

Everything lives under one temporary folder (config, queue, SASL database, log); nothing under /etc
is touched (like /work/shared/peers/start-peers). Postfix listens on 127.0.0.1 with:
- `submission_port`: STARTTLS required (smtpd_tls_security_level = encrypt), AUTH only after TLS;
- `smtps_address`:465 (127.0.0.46 by default: the queue uses implicit TLS for port 465 only):
  implicit TLS (smtpd_tls_wrappermode = yes);
both with Cyrus SASL over a sasldb of its own (conf/sasl/smtpd.conf: Debian's Postfix reads it from
$config_directory/sasl) (PLAIN, LOGIN; one user) and the certificate given.
Every listener is on a loopback address
(master.cf names it; inet_interfaces = all only lets Postfix bind 127.0.0.46, which it does not
see as an interface). Only authenticated clients may relay (mynetworks names no loopback address). What it accepts it
sends on to `onward` (host, port: a tests/smtp_peer.py SmtpPeer) in clear text, with Postfix's own
Received header, which says "with ESMTPSA" (TLS + AUTH) and names the authenticated user.

Needs root (postfix start) and the Debian packages postfix and sasl2-bin (.ci/run installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

HOSTNAME = "relay.provider.test"


def available() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("postfix") or os.path.exists("/usr/sbin/postfix")) and bool(
        shutil.which("saslpasswd2") or os.path.exists("/usr/sbin/saslpasswd2"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PostfixRelay:
    def __init__(self, cert: Path, key: Path, onward: tuple[str, int], *, user: str = "relayuser",
                 password: str = "relay-secret", smtps_address: str = "127.0.0.46") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mh-postfix-relay-"))
        os.chmod(self.dir, 0o755)  # smtpd runs as postfix: it must reach the sasldb
        self.cert, self.key, self.onward = cert, key, onward
        self.user, self.password = user, password
        self.submission_port = free_port()
        self.smtps_address, self.smtps_port = smtps_address, 465
        self.conf = self.dir / "conf"
        self.log = self.dir / "postfix.log"

    def start(self) -> PostfixRelay:
        d = self.dir
        for sub in ("conf", "spool", "data", "conf/sasl"):
            (d / sub).mkdir()
        shutil.chown(d / "data", "postfix", "postfix")
        shutil.copy(self.cert, d / "relay.crt")
        shutil.copy(self.key, d / "relay.key")
        os.chmod(d / "relay.key", 0o600)
        (d / "conf" / "sasl" / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
            f"sasldb_path: {d}/sasldb2\n")
        subprocess.run(["saslpasswd2", "-c", "-p", "-f", str(d / "sasldb2"), "-u", HOSTNAME, self.user],
                       input=self.password.encode(), check=True, capture_output=True)
        shutil.chown(d / "sasldb2", "postfix", "postfix")
        os.chmod(d / "sasldb2", 0o600)
        host, port = self.onward
        (self.conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {HOSTNAME}
mydomain = provider.test
mydestination =
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 192.0.2.1/32
relayhost = [{host}]:{port}
smtp_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
biff = no
notify_classes =
smtputf8_enable = no
smtpd_tls_cert_file = {d}/relay.crt
smtpd_tls_key_file = {d}/relay.key
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {d}/conf/sasl
smtpd_sasl_local_domain = {HOSTNAME}
smtpd_sasl_security_options = noanonymous
smtpd_sasl_authenticated_header = yes
smtpd_tls_received_header = yes
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_auth_rate_limit = 0
maillog_file_prefixes = {d}
maillog_file = {self.log}
""")
        (self.conf / "master.cf").write_text(f"""\
127.0.0.1:{self.submission_port} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt
{self.smtps_address}:{self.smtps_port} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes
pickup    unix  n       -       n       60      1       pickup
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
""")
        subprocess.run(["postfix", "-c", str(self.conf), "set-permissions"], stdin=subprocess.DEVNULL,
                       capture_output=True)
        run = subprocess.run(["postfix", "-c", str(self.conf), "start"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True)
        if run.returncode != 0:
            # the postfix command reports fatals to syslog only; rerun on a pty to see them (start-peers)
            why = subprocess.run(["script", "-qc", f"postfix -c {self.conf} start", "/dev/null"],
                                 stdin=subprocess.DEVNULL, capture_output=True, text=True).stdout
            log = self.log_text()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"postfix did not start: {why.strip()} {log}")
        deadline = time.monotonic() + 10
        for a, p in (("127.0.0.1", self.submission_port), (self.smtps_address, self.smtps_port)):
            while True:
                try:
                    socket.create_connection((a, p), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"postfix is not listening on {p}: {self.log_text()}") from None
                    time.sleep(0.05)
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], stdin=subprocess.DEVNULL, capture_output=True)
        pid_file = self.dir / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 5
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)
