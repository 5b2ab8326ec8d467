"""Issue 15, "many nodes": two Mailhaven nodes (real `mailhaven serve` processes, one worker each) on
127.0.0.2 and 127.0.0.3, sharing one PostgreSQL database (tests/fixtures_postgres.py) and one data
directory, behind a real HAProxy (Debian's) whose configuration is read from docs/production.md
("Several nodes"), with only the addresses and ports put in; the test DNS server names a scripted
SMTP sink (tests/smtp_peer.py) as the MX of the remote domain.

- mail delivered through node A's MX reaches an IMAP IDLE session on node B within one second;
- mail queued on either node is delivered exactly once although both nodes run queue managers;
- the node holding a queue entry is killed (SIGKILL) mid-delivery: the other node delivers it once
  its `[queue] lease` (3 s here) has run out;
- a client connecting through HAProxy from 127.0.0.9 is seen by the node as 127.0.0.9;
- SIGKILL of one node under load through HAProxy: every message that got its 250 is in the mailbox
  exactly once, nothing twice (kill_support.py, shared with test_workers_kill.py);
- login failures on one node slow the next attempt on the other; one vacation reply per sender and
  period whichever node delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import re
import shutil
import smtplib
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import DnsServer
from tests.fixtures_server import add_user, app_config_data, write_config
from tests.integration.kill_support import check_exactly_once, start_senders, stop_senders, stored
from tests.integration.test_proxy_haproxy import _wait_listening
from tests.integration.test_service_support import REPO, Server, base_env, free_port
from tests.smtp_peer import SmtpPeer, shared_port, until

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy not on PATH (Debian package haproxy)")

GUIDE = REPO / "docs" / "production.md"
NODES = {"a": "127.0.0.2", "b": "127.0.0.3"}
DOC_NODES = {"a": "10.0.0.11", "b": "10.0.0.12"}  # the guide's addresses for them
PROXIED = {"submissions": 465, "imaps": 993}  # behind HAProxy: listener -> the guide's port
DIRECT = ("mx", "submission", "imap")  # each node's own (the MX is published in DNS, no balancer)
SINK = "127.0.0.4"  # mx.remote.test
CLIENT = "127.0.0.9"
LEASE = 3.0
ALICE, BOB = "alice@example.test", "bob@example.test"
PASSWORD = "C0rrect-Secret-2"
REMOTE = "carol@remote.test"


def haproxy_template() -> str:
    """The HAProxy configuration of docs/production.md "Several nodes"."""
    m = re.search(r"<!-- two-nodes-test: haproxy.cfg -->\n```haproxy\n(.*?)```", GUIDE.read_text(), re.S)
    assert m, "docs/production.md lost its HAProxy configuration block"
    return m.group(1)


def haproxy_config(node_ports: dict[str, int], front: dict[str, int]) -> str:
    """The guide's configuration with the test's addresses and ports: its nodes -> 127.0.0.2/3,
    its `bind :PORT` -> 127.0.0.1 on a free port. Nothing else is changed."""
    text = haproxy_template()
    for name, std in PROXIED.items():
        for node, doc_addr in DOC_NODES.items():
            assert f"{doc_addr}:{std}" in text
            text = text.replace(f"{doc_addr}:{std}", f"{NODES[node]}:{node_ports[name]}")
        assert f"bind :{std}\n" in text
        text = text.replace(f"bind :{std}\n", f"bind 127.0.0.1:{front[name]}\n")
    assert "10.0.0." not in text
    return text


@dataclass
class Cluster:
    folder: Path
    ports: dict[str, int]  # listener -> port, the same on both nodes
    front: dict[str, int]  # HAProxy's ports
    peer: SmtpPeer
    dsn: str
    ca: Any
    nodes: dict[str, Server] = field(default_factory=dict)

    @property
    def mail_root(self) -> Path:
        return self.folder / "data" / "mail"

    def client_tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def submit(self, node: str, rcpt: str, data: bytes) -> None:
        """AUTH and send on the node's own submission port (plaintext: loopback)."""
        with smtplib.SMTP(NODES[node], self.ports["submission"], timeout=10) as s:
            s.login(ALICE, PASSWORD)
            s.sendmail(ALICE, [rcpt], data)

    def submit_via_haproxy(self, rcpt: str, data: bytes, source: str = "127.0.0.1") -> None:
        """Submission over implicit TLS through HAProxy, from `source`."""
        with smtplib.SMTP_SSL("127.0.0.1", self.front["submissions"], timeout=10, context=self.client_tls(),
                              source_address=(source, 0)) as s:
            s.login(ALICE, PASSWORD)
            s.sendmail(ALICE, [rcpt], data)

    def queue_rows(self) -> list[tuple[str, str | None]]:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            return [(str(r[0]), r[1]) for r in conn.execute("SELECT id, lease_owner FROM queue_entry").fetchall()]


def node_config(folder: Path, node: str, ports: dict[str, int], tls: tuple[Path, Path], nameserver: str,
                dsn: str, sink_port: int) -> Path:
    """Node `node`'s config: the shared data_dir and users file, its own hostname, control socket
    and listener addresses (docs/production.md "Several nodes")."""
    data = app_config_data(folder, tls, nameserver)
    data.update(hostname=f"mx-{node}.example.test", control_socket=f"control.{node}.sock")
    data["auth"] = {"failure_delay": 0.1, "max_failure_delay": 1, "allow_plaintext_loopback": True}
    data["smtp"] = {"redact_submitter": False}  # the client's address in Received, to check it
    data["server"] = {"workers": 1}
    data["storage"] = {"backend": "postgresql", "dsn": dsn}
    data["queue"] = {"remote_port": sink_port, "retry_schedule": ["1s"], "jitter": 0, "connect_timeout": 2,
                     "command_timeout": 10, "lease": LEASE}
    for name, lc in data["listeners"].items():
        lc.update(address=NODES[node], port=ports.get(name, 1), enabled=name in ports)
        if name in PROXIED:
            lc.update(proxy_protocol=True, proxy_trusted=["127.0.0.1"])
    return write_config(folder / f"node-{node}.toml", data)


def start_node(cluster: Cluster, node: str) -> Server:
    server = Server(cluster.folder / f"node-{node}.toml", env=base_env())
    cluster.nodes[node] = server
    return server


@contextlib.contextmanager
def _servers(cluster: Cluster) -> Iterator[None]:
    try:
        for node in NODES:
            start_node(cluster, node)
        for server in cluster.nodes.values():
            server.ready(60)
        yield
    finally:
        for node, server in cluster.nodes.items():
            server.kill()
            (cluster.folder / f"node-{node}.log").write_text(server.log())  # for a failure's post-mortem


@pytest.fixture
async def cluster(tmp_path: Path, tls_files: tuple[Path, Path], tls_ca: Any, dns_server: DnsServer,
                  pg_dsn: str) -> AsyncIterator[Cluster]:
    from mailhaven import config

    assert HAPROXY is not None
    names = (*DIRECT, *PROXIED)
    ports = {name: shared_port(*NODES.values()) for name in names}
    front = {name: free_port() for name in PROXIED}
    sink_port = shared_port(SINK)
    dns_server.add("remote.test", "MX", "10 mx.remote.test.")
    dns_server.add("mx.remote.test", "A", SINK)
    peer = await SmtpPeer(SINK, sink_port).start()
    c = Cluster(tmp_path, ports, front, peer, pg_dsn, tls_ca)
    for node in NODES:
        node_config(tmp_path, node, ports, tls_files, dns_server.nameserver, pg_dsn, sink_port)
    cfg = config.load(tmp_path / "node-a.toml")
    from mailhaven.auth.users import UsersFile

    UsersFile(Path(cfg.users_file)).save()
    add_user(cfg, ALICE, PASSWORD)
    add_user(cfg, BOB, PASSWORD)
    haproxy_cfg = tmp_path / "haproxy.cfg"
    haproxy_cfg.write_text(haproxy_config(ports, front))
    out = tmp_path / "haproxy.out"
    servers = _servers(c)
    await asyncio.to_thread(servers.__enter__)  # the nodes first: HAProxy's first checks find them up
    proc = None
    try:
        with out.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(HAPROXY, "-f", str(haproxy_cfg), "-db", stdout=sink,
                                                        stderr=subprocess.STDOUT)
        for port in front.values():
            await _wait_listening(port, proc, out)  # through to a node, closed before TLS: logged once
        await asyncio.sleep(0.2)  # those lines are written
        probes = {node: len(server.lines) for node, server in c.nodes.items()}
        yield c
        # HAProxy's health checks (a PROXY v2 LOCAL header, then close; every second) are not
        # logged at INFO.
        for node, server in c.nodes.items():
            noise = [line for line in server.lines[probes[node]:] if "TLS handshake failed" in line]
            assert not noise, (node, noise[:3])
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.to_thread(servers.__exit__, None, None, None)
        await peer.stop()


def _message(subject: str, to: str = ALICE, sender: str = "someone@example.net") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\n"
            f"body of {subject}\r\n").encode()


# --- a. IDLE on node B hears a delivery through node A -------------------------------------------


async def test_mail_through_node_a_reaches_an_idle_session_on_node_b_within_one_second(cluster: Cluster) -> None:
    def run() -> float:
        imap = imaplib.IMAP4(NODES["b"], cluster.ports["imap"], timeout=10)
        try:
            imap.login(ALICE, PASSWORD)
            imap.select("INBOX")
            imap.send(b"i1 IDLE\r\n")
            assert imap.readline().startswith(b"+ ")
            with smtplib.SMTP(NODES["a"], cluster.ports["mx"], timeout=10) as smtp:
                smtp.sendmail("someone@example.net", [ALICE], _message("through-a"))
            acked = time.monotonic()
            imap.sock.settimeout(1.0)
            line = imap.readline()
            heard = time.monotonic() - acked
            assert line == b"* 1 EXISTS\r\n", line
            imap.send(b"DONE\r\n")
            while not imap.readline().startswith(b"i1 "):
                pass
            return heard
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    heard = await asyncio.to_thread(run)
    print(f"\nnode B's IDLE heard node A's delivery {heard * 1000:.0f} ms after the 250")
    assert heard < 1.0


# --- b. and c. one queue, two nodes ---------------------------------------------------------------


async def test_mail_queued_on_either_node_is_delivered_exactly_once(cluster: Cluster) -> None:
    for i in range(6):
        await asyncio.to_thread(cluster.submit, "ab"[i % 2], REMOTE, _message(f"out{i}", REMOTE, ALICE))
    await cluster.peer.wait_messages(6, 20)
    await until(lambda: asyncio.to_thread(lambda: cluster.queue_rows() == []), 10)
    await asyncio.sleep(1.5)  # more claim rounds on both nodes: nothing goes out again
    subjects = sorted(message_from_bytes(m.data)["Subject"] for m in cluster.peer.messages)
    assert subjects == [f"out{i}" for i in range(6)]


async def test_entries_of_a_killed_node_are_delivered_by_the_other_after_the_lease(cluster: Cluster) -> None:
    peer = cluster.peer
    peer.hold_data()  # the delivering node stalls once the message arrived, before the 250
    submitted = time.monotonic()
    await asyncio.to_thread(cluster.submit, "a", REMOTE, _message("held", REMOTE, ALICE))
    await asyncio.wait_for(peer.data_arrived.wait(), 10)
    [(_qid, owner)] = await asyncio.to_thread(cluster.queue_rows)
    # Whichever node claimed it (node A, at once after its submit, nearly always) is killed.
    holder = next(n for n, s in cluster.nodes.items() if owner and f":{s.pid}:" in owner)
    cluster.nodes[holder].kill()  # SIGKILL: no result recorded, the lease not released
    await asyncio.sleep(0.3)  # the sink sees the connection close: that transaction is never answered
    peer.release_data()
    assert peer.messages == []
    [got] = await peer.wait_messages(1, 20)  # the other node delivers it
    waited = time.monotonic() - submitted
    print(f"\nnode {holder} killed holding the entry; delivered by the other {waited:.1f}s after the submission")
    assert waited >= LEASE - 0.5  # not before the dead node's lease ran out
    assert message_from_bytes(got.data)["Subject"] == "held"
    await until(lambda: asyncio.to_thread(lambda: cluster.queue_rows() == []), 10)
    await asyncio.sleep(1.0)
    assert len(peer.messages) == 1


# --- d. the client's own address through HAProxy --------------------------------------------------


async def test_a_client_through_haproxy_is_seen_with_its_own_address(cluster: Cluster) -> None:
    await asyncio.to_thread(cluster.submit_via_haproxy, BOB, _message("via-haproxy", BOB, ALICE), CLIENT)
    [msg] = stored(cluster.mail_root, BOB)
    received = str(message_from_bytes(msg)["Received"])
    assert f"[{CLIENT}]" in received, received  # not HAProxy's 127.0.0.1
    logins = [line for s in cluster.nodes.values() for line in s.lines if "login ok" in line]
    assert len(logins) == 1 and f"ip={CLIENT}" in logins[0], logins


# --- e. SIGKILL of a node under load: nothing acknowledged lost, nothing stored twice -------------


async def test_sigkill_of_a_node_under_load_loses_nothing_acknowledged_and_stores_nothing_twice(
        cluster: Cluster) -> None:
    def send(tag: str, data: bytes) -> None:
        cluster.submit_via_haproxy(BOB, data)

    stop, threads, acked, tried = start_senders(send, 4, BOB, ALICE)
    try:
        await asyncio.sleep(1.5)
        before = len(acked)
        cluster.nodes["a"].kill()
        await asyncio.sleep(2.5)  # HAProxy sends what node A refuses to node B
        after = len(acked) - before
    finally:
        await asyncio.to_thread(stop_senders, stop, threads)
    served_by_a = sum("login ok" in line for line in cluster.nodes["a"].lines)
    print(f"\n{before} acknowledged before the kill ({served_by_a} logins on node A), {after} after")
    assert before > 5 and after > 5 and served_by_a > 2  # load on both nodes, and on both sides of the kill
    check_exactly_once(stored(cluster.mail_root, BOB), acked, tried, least=10)


def test_the_guide_configuration_is_what_haproxy_runs() -> None:
    """The addresses and ports are all the test changes (so the guide stays true)."""
    text = haproxy_config({"submissions": 1465, "imaps": 1993}, {"submissions": 2465, "imaps": 2993})
    assert "send-proxy-v2" in text and "option redispatch" in text
    assert "server node-a 127.0.0.2:1465" in text and "bind 127.0.0.1:2993" in text



# --- state every node shares: login failures, vacation replies ------------------------------------


async def test_login_failures_on_node_a_slow_the_next_attempt_on_node_b(cluster: Cluster) -> None:
    """auth/throttle_pg.py through the real servers: three different wrong passwords on A (they
    wait 0, 0.1 and 0.2 s: failure_delay 0.1 s, doubling), then B makes the fourth wait 0.4 s, as
    one node would."""
    def fail(node: str, i: int) -> None:
        imap = imaplib.IMAP4(NODES[node], cluster.ports["imap"], timeout=10)
        try:
            with pytest.raises(imaplib.IMAP4.error):
                imap.login(ALICE, f"wrong-{i}")
        finally:
            imap.logout()

    for i in range(3):
        await asyncio.to_thread(fail, "a", i)
    await asyncio.to_thread(fail, "b", 3)
    line = await asyncio.to_thread(cluster.nodes["b"].wait_for, r"login failed .*user=alice@example\.test", 10)
    assert re.search(r" delay=0\.4 ", line), line


async def test_one_vacation_reply_per_sender_whichever_node_delivers(cluster: Cluster) -> None:
    from mailhaven.sieve_store import ScriptStore

    store = ScriptStore(cluster.mail_root, BOB, max_scripts=10, max_size=65536)
    store.put("away", b'require "vacation";\nvacation :days 7 "Away this week.";\n')
    store.set_active("away")
    sender = "dave@remote.test"
    for i, node in enumerate("ab"):
        def deliver(node: str = node, i: int = i) -> None:
            with smtplib.SMTP(NODES[node], cluster.ports["mx"], timeout=10) as smtp:
                smtp.sendmail(sender, [BOB], _message(f"question{i}", BOB, sender))
        await asyncio.to_thread(deliver)
    [reply] = await cluster.peer.wait_messages(1, 20)
    assert reply.rcpt_tos == [sender] and b"Away this week." in reply.data
    await asyncio.sleep(1.5)  # the second message (through node B) got no second reply
    assert len(cluster.peer.messages) == 1
    assert len(stored(cluster.mail_root, BOB)) == 2
