"""[queue] relay and [queue.transports] end to end: cleanup.enqueue -> QueueManager -> a REAL relay,
Debian's Postfix (tests/postfix_relay.py) with Cyrus SASL and a certificate from the test CA,
which sends what it accepts on to a scripted peer (tests/smtp_peer.py); and transports to a peer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app, cleanup, control, doctor
from mailhaven.queue.manager import QueueManager
from tests import postfix_relay
from tests.dnsserver import DnsServer
from tests.postfix_relay import PostfixRelay, free_port
from tests.smtp_peer import SmtpPeer, cert_files, shared_port, until

pytestmark = pytest.mark.skipif(not postfix_relay.available() and not os.environ.get("MAILHAVEN_REQUIRE_POSTFIX"),
                                reason="needs root and Debian's postfix + sasl2-bin (.ci/run installs them)")

ALICE = "alice@example.test"
MSG = b"From: Alice <alice@example.test>\r\nTo: bob@far.test\r\nSubject: via the relay\r\n\r\nHi.\r\n"
RELAY_NAME = "relay.provider.test"
SMTPS_NAME = "smtps.provider.test"


@pytest.fixture(scope="module")
def onward_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def postfix(tls_ca: Any, tmp_path_factory: pytest.TempPathFactory, onward_port: int) -> Iterator[PostfixRelay]:
    cert, key = cert_files(tmp_path_factory.mktemp("relay-cert"), RELAY_NAME, SMTPS_NAME, ca=tls_ca)
    relay = PostfixRelay(cert, key, ("127.0.0.1", onward_port)).start()
    yield relay
    relay.stop()


@pytest.fixture
async def onward(onward_port: int) -> AsyncIterator[SmtpPeer]:
    """Where Postfix sends what it relays (its relayhost)."""
    p = await SmtpPeer("127.0.0.1", onward_port).start()
    yield p
    await p.stop()


@pytest.fixture
def ca_file(tls_ca: Any, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


def _auth_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "relay-auth"
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.fixture
def relay_config(make_config: Callable[..., Any], dns_nameserver: str, dns_server: DnsServer,
                 ca_file: Path) -> Callable[..., Any]:
    dns_server.add(RELAY_NAME, "A", "127.0.0.1")
    dns_server.add(SMTPS_NAME, "A", "127.0.0.46")

    def build(**queue: Any) -> Any:
        q = {"retry_schedule": ["1h"], "jitter": 0, "connect_timeout": 5, "command_timeout": 10,
             "tls_ca_file": str(ca_file), **queue}
        return make_config(hostname="mail.example.test", dns={"nameservers": [dns_nameserver], "timeout": 1},
                           queue=q)
    return build


@pytest.fixture
async def manager() -> AsyncIterator[Callable[[Any], Any]]:
    started: list[tuple[Any, QueueManager, asyncio.Task[None]]] = []

    async def start(cfg: Any) -> tuple[Any, QueueManager]:
        ctx = app.build_context(cfg)
        await ctx.store.start()
        mgr = QueueManager(ctx)
        ctx.queue = mgr
        task = asyncio.create_task(mgr.run())
        await mgr.loaded.wait()
        started.append((ctx, mgr, task))
        return ctx, mgr

    yield start
    for ctx, mgr, task in started:
        mgr.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)
        await ctx.store.close()


async def _relayed(postfix: PostfixRelay, onward: SmtpPeer, relay_config: Callable[..., Any],
                   manager: Callable[[Any], Any], tmp_path: Path, relay: str) -> tuple[QueueManager, str]:
    auth = _auth_file(tmp_path, f"{postfix.user}:{postfix.password}\n")
    cfg = relay_config(relay=relay, relay_auth_file=str(auth))
    ctx, mgr = await manager(cfg)
    # far.test has no DNS records at all: only the relay can deliver it.
    qid = await cleanup.enqueue(ctx, ALICE, ["bob@far.test"], MSG)
    [got] = await onward.wait_messages(1, 20)
    assert got.rcpt_tos == ["bob@far.test"] and got.mail_from == ALICE
    received = got.data.split(b"\r\n\r\n")[0].decode()
    # Postfix's own Received header: TLS, AUTH (ESMTPSA = ESMTP + TLS + AUTH, RFC 3848) as our user.
    assert f"(Authenticated sender: {postfix.user}@{RELAY_NAME})" in received
    assert f"by {RELAY_NAME} (Postfix) with ESMTPSA" in received
    assert "using TLSv1.3" in received or "using TLSv1.2" in received
    await until(lambda: not mgr.entries, 10)
    return mgr, qid


async def test_relay_over_starttls_with_auth_reaches_the_relay_and_no_mx(
        postfix: PostfixRelay, onward: SmtpPeer, relay_config: Callable[..., Any], manager: Any,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    _, qid = await _relayed(postfix, onward, relay_config, manager, tmp_path,
                            f"{RELAY_NAME}:{postfix.submission_port}")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"queue: {qid} to=<bob@far.test>"))
    assert line.startswith(f"queue: {qid} to=<bob@far.test> delivered via {RELAY_NAME}: 250 ")
    assert line.endswith(f"[route relay [{RELAY_NAME}]:{postfix.submission_port}]")
    assert f"(TLS; certificate verified: relay [{RELAY_NAME}]:{postfix.submission_port})" in "\n".join(
        r.getMessage() for r in caplog.records if r.getMessage().startswith("delivered to"))


async def test_relay_on_port_465_uses_implicit_tls_with_auth(
        postfix: PostfixRelay, onward: SmtpPeer, relay_config: Callable[..., Any], manager: Any,
        tmp_path: Path) -> None:
    assert postfix.smtps_port == 465  # what makes it implicit TLS (RFC 8314)
    # smtps.provider.test is 127.0.0.46, where only the wrappermode smtpd listens
    await _relayed(postfix, onward, relay_config, manager, tmp_path, f"[{SMTPS_NAME}]:465")


async def test_wrong_relay_password_defers_with_4_7_0_and_bounces_nothing(
        postfix: PostfixRelay, onward: SmtpPeer, relay_config: Callable[..., Any], manager: Any,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    auth = _auth_file(tmp_path, f"{postfix.user}:not-the-password\n")
    cfg = relay_config(relay=f"{RELAY_NAME}:{postfix.submission_port}", relay_auth_file=str(auth))
    ctx, mgr = await manager(cfg)
    qid = await cleanup.enqueue(ctx, ALICE, ["bob@far.test", "carol@far.test"], MSG)

    async def attempted() -> dict[str, Any] | None:
        shown = await mgr.show(qid)
        return shown if shown and not shown["busy"] and shown["recipients"][0]["attempts"] >= 1 else None

    shown = await until(attempted, 20)
    for r in shown["recipients"]:
        assert r["state"] == "pending"
        assert (r["last"]["code"], r["last"]["enhanced"], r["last"]["temporary"]) == (451, "4.7.0", True)
        assert r["last"]["stage"] == "AUTH" and r["last"]["route"] == f"relay [{RELAY_NAME}]:{postfix.submission_port}"
        assert f"refused the login of {postfix.user}: 535 " in r["last"]["text"]
    text = control.format_show(shown)  # what `mailhaven queue show ID` prints
    assert f"    route:      relay [{RELAY_NAME}]:{postfix.submission_port}\n    failed at:  AUTH" in text
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"queue: {qid} to=<bob@far.test> deferred via {RELAY_NAME}: 451 4.7.0 ")
               and m.endswith(f"[route relay [{RELAY_NAME}]:{postfix.submission_port}, at AUTH]") for m in messages)
    assert any(m.startswith(f"relay {RELAY_NAME}[127.0.0.1] refused the login of {postfix.user}: 535 ")
               and "check [queue] relay_auth_file" in m for m in messages)
    assert "not-the-password" not in "\n".join(messages)
    assert onward.messages == []
    inbox = await (await ctx.store.account(ALICE).mailbox("INBOX")).snapshot()
    assert inbox.messages == []  # no bounce


async def test_relay_certificate_must_name_the_relay(
        postfix: PostfixRelay, onward: SmtpPeer, relay_config: Callable[..., Any], manager: Any,
        tmp_path: Path, dns_server: DnsServer) -> None:
    dns_server.add("other-name.provider.test", "A", "127.0.0.1")
    auth = _auth_file(tmp_path, f"{postfix.user}:{postfix.password}\n")
    cfg = relay_config(relay=f"other-name.provider.test:{postfix.submission_port}", relay_auth_file=str(auth))
    ctx, mgr = await manager(cfg)
    qid = await cleanup.enqueue(ctx, ALICE, ["bob@far.test"], MSG)

    async def attempted() -> dict[str, Any] | None:
        s = await mgr.show(qid)
        return s if s and not s["busy"] and s["recipients"][0]["attempts"] else None

    shown = await until(attempted, 20)
    last = shown["recipients"][0]["last"]
    assert (last["code"], last["enhanced"], last["stage"]) == (451, "4.7.5", "STARTTLS")
    assert "does not name other-name.provider.test" in last["text"]
    assert onward.messages == []


def test_check_config_and_doctor_refuse_a_relay_auth_file_readable_by_others(
        relay_config: Callable[..., Any], tmp_path: Path) -> None:
    auth = _auth_file(tmp_path, "user:secret\n", mode=0o644)
    config_path = tmp_path / "mailhaven.toml"
    cfg = relay_config(relay=f"{RELAY_NAME}:587", relay_auth_file=str(auth))
    config_path.write_text(
        f'hostname = "mail.example.test"\ndata_dir = "{cfg.data_dir}"\nusers_file = "{cfg.users_file}"\n'
        f'[domains."example.test"]\n[queue]\nrelay = "{RELAY_NAME}:587"\nrelay_auth_file = "{auth}"\n')
    r = subprocess.run([sys.executable, "-m", "mailhaven", "-c", str(config_path), "check-config"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"queue.relay_auth_file: {auth} has mode 0644" in r.stderr and "chmod 600" in r.stderr
    [finding] = [f for f in doctor.check_files(cfg) if "relay_auth_file" in f.message]
    assert finding.status == "fail" and "mode 0644" in finding.message
    os.chmod(auth, 0o600)
    r = subprocess.run([sys.executable, "-m", "mailhaven", "-c", str(config_path), "check-config"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "OK\n"), r.stderr
    [finding] = [f for f in doctor.check_files(cfg) if "relay_auth_file" in f.message]
    assert finding.status == "ok" and "login user" in finding.message


async def test_transport_routes_one_domain_to_a_given_host_not_its_mx(
        make_config: Callable[..., Any], dns_nameserver: str, dns_server: DnsServer, manager: Any) -> None:
    port = shared_port("127.0.0.2", "127.0.0.3")
    dns_server.add("b.test", "MX", "10 mx.b.test.")
    dns_server.add("mx.b.test", "A", "127.0.0.2")
    dns_server.add("c.test", "MX", "10 mx.c.test.")
    dns_server.add("mx.c.test", "A", "127.0.0.2")
    mx = await SmtpPeer("127.0.0.2", port).start()
    chosen = await SmtpPeer("127.0.0.3", port).start()
    try:
        cfg = make_config(hostname="mail.example.test", dns={"nameservers": [dns_nameserver], "timeout": 1},
                          queue={"remote_port": port, "retry_schedule": ["1h"], "connect_timeout": 2,
                                 "command_timeout": 5, "transports": {"B.test": f"smtp:[127.0.0.3]:{port}"}})
        ctx, mgr = await manager(cfg)
        qid = await cleanup.enqueue(ctx, ALICE, ["bob@b.test", "carol@c.test"], MSG)
        await chosen.wait_messages(1)
        await mx.wait_messages(1)
        assert [m.rcpt_tos for m in chosen.messages] == [["bob@b.test"]]  # the transport, not b.test's MX
        assert [m.rcpt_tos for m in mx.messages] == [["carol@c.test"]]  # no transport: its MX
        await until(lambda: qid not in mgr.entries, 10)
    finally:
        await mx.stop()
        await chosen.stop()
