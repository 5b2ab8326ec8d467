"""What the IMAP and POP3 benches share: a Maildir of generated messages, and Mailhaven and Dovecot
started beside each other on copies of it, all under the bench's temporary directory.

Owns: the bench user and password, free ports, waiting for a greeting, writing the Maildir
(Dovecot-style names `,S=<size>,W=<CRLF size>`, LF line endings as Postfix delivers), starting and
stopping Mailhaven (`python -m mailhaven -c <config> serve`, one listener) and Dovecot
(`/usr/sbin/dovecot -c <config>`: one protocol, loopback only, passwd-file with the SAME argon2id
hash as Mailhaven's users file, state and sockets under the temporary directory; nothing in /etc
is touched). Does not own: what is measured or printed (bench_imap.py, bench_pop3.py).

Dovecot needs root to start; the mail it serves is owned by `nobody`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

USER = "alice@example.test"
PASSWORD = "secret"
DOVECOT = "/usr/sbin/dovecot"
FILLER = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
          "incididunt ut labore et dolore magna aliqua.")


def dovecot_available() -> bool:
    return Path(DOVECOT).exists() and os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str, greeting: bytes,
              timeout: float = 60) -> None:
    """Until the server on `port` answers with `greeting` (b"+OK", b"* OK")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(200).startswith(greeting):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start on port {port}")


def make_maildir(root: Path, count: int, size: int, head: Callable[[int], str],
                 dot_every: int = 0) -> int:
    """`count` messages of about `size` octets in new/: head(i) (header section and blank line,
    LF endings) then filler lines; with dot_every, every dot_every-th body line starts with "."
    (dot-stuffing gets exercised). Returns the total CRLF octets."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    total = 0
    now = int(time.time()) - 3600
    for i in range(1, count + 1):
        header = head(i)
        body: list[str] = []
        n = len(header)
        j = 0
        while n < size:
            line = f"{j:05d} {FILLER}"[: max(1, min(100, size - n - 1))]
            if dot_every and j % dot_every == 3:
                line = "." + line
            body.append(line)
            n += len(line) + 1
            j += 1
        data = (header + "\n".join(body) + "\n").encode()
        vsize = len(data) + data.count(b"\n")
        total += vsize
        (root / "new" / f"{now + i}.M{i}P1Q{i}.bench,S={len(data)},W={vsize}").write_bytes(data)
    return total


# --- Mailhaven -----------------------------------------------------------------------------------


def start_mailhaven(work: Path, maildir: Path, pw_hash: str, listener: str, greeting: bytes, *,
                    auth_extra: str = "", listener_extra: str = "", dsn: str = "",
                    name: str = "mh") -> tuple[subprocess.Popen[bytes], int]:
    """Mailhaven serving a copy of `maildir` (Dovecot's index files left out, its dovecot-uidlist
    kept, as after a migration) on one plaintext listener named `listener`; with `dsn`, its state
    (the mail index included) in that PostgreSQL database. `name`: its files' prefix in `work`."""
    data = work / f"{name}-data"
    user_dir = data / "mail" / "example.test" / "alice"
    user_dir.parent.mkdir(parents=True)
    shutil.copytree(maildir, user_dir, ignore=shutil.ignore_patterns("dovecot.index*", "dovecot.list*"))
    users = work / f"{name}-users.toml"
    users.write_text(f'[users."{USER}"]\npassword = "{pw_hash}"\n')
    port = free_port()
    cfg = work / f"{name}-mailhaven.toml"
    storage = f'[storage]\nbackend = "postgresql"\ndsn = "{dsn}"\n' if dsn else ""
    cfg.write_text(
        f'hostname = "localhost"\ndata_dir = "{data}"\nusers_file = "{users}"\n'
        f'[domains."example.test"]\n[auth]\nallow_plaintext_loopback = true\nfailure_delay = 0\n'
        f'{auth_extra}[log]\nlevel = "warning"\n{storage}'
        f'[listeners.{listener}]\naddress = "127.0.0.1"\nport = {port}\ntls = "none"\n{listener_extra}')
    env = {k: v for k, v in os.environ.items() if k != "MAILHAVEN_FAST_HASH"}
    proc = subprocess.Popen([sys.executable, "-m", "mailhaven", "-c", str(cfg), "serve"],
                            stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT, env=env)
    wait_port(port, proc, "mailhaven", greeting)
    return proc, port


def stop_mailhaven(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- Dovecot -------------------------------------------------------------------------------------


def start_dovecot(work: Path, maildir: Path, pw_hash: str, protocol: str, greeting: bytes, *,
                  settings: str = "", login_service: str = "", services: str = "") -> tuple[Path, int]:
    """Dovecot serving a copy of `maildir` (at work/dovecot/mail) for one `protocol` ("imap",
    "pop3") on 127.0.0.1. `settings`: more top-level lines; `login_service`: more lines in the
    `<protocol>-login` service; `services`: more service blocks. Returns (config, port)."""
    dv = work / "dovecot"
    for d in ("conf", "run", "state", "home"):
        (dv / d).mkdir(parents=True)
    mail = dv / "mail"
    shutil.copytree(maildir, mail)
    subprocess.run(["chown", "-R", "nobody:nogroup", str(mail), str(dv / "home")], check=True)
    os.chmod(dv, 0o755)
    os.chmod(work, 0o755)
    port = free_port()
    users = dv / "conf" / "users"
    users.write_text(f"{USER}:{{ARGON2ID}}{pw_hash}:65534:65534::{dv / 'home'}::userdb_mail=maildir:{mail}\n")
    conf = dv / "conf" / "dovecot.conf"
    conf.write_text(f"""# generated by bench/_dovecot.py for bench_{protocol}.py
protocols = {protocol}
listen = 127.0.0.1
instance_name = bench-{protocol}-{os.getpid()}
base_dir = {dv / 'run'}
state_dir = {dv / 'state'}
log_path = {dv / 'dovecot.log'}
ssl = no
disable_plaintext_auth = no
first_valid_uid = 65534
last_valid_uid = 65534
{settings}
passdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {protocol}s {{
    port = 0
  }}
{login_service}}}
{services}""")
    subprocess.run([DOVECOT, "-c", str(conf)], check=True, stdin=subprocess.DEVNULL)
    wait_port(port, None, "dovecot", greeting)
    return conf, port


def stop_dovecot(conf: Path) -> None:
    subprocess.run(["doveadm", "-c", str(conf), "stop"], capture_output=True)
