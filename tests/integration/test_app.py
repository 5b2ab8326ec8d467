"""app.run: binding, the listener factory contract, graceful stop, reload, sd_notify.

A small line-echo listener defined here stands in for the protocol modules: it follows the factory
contract (serve on the given socket, register sessions, read ctx.config/ctx.tls at session start).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from mailhaven import app
from mailhaven.config import Config, ListenerConfig
from tests.fixtures_server import (
    add_user,
    app_config_data,
    app_config_file,
    load_test_config,
    running_app,
    write_config,
)


async def create_echo_server(ctx: app.Context, name: str, lc: ListenerConfig,
                             sock: socket.socket) -> asyncio.AbstractServer:
    """Greets with the hostname of the config current at connect time, then echoes lines."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with ctx.sessions.track(writer.transport):
            try:
                writer.write(f"hello {ctx.config.hostname} {name}\r\n".encode())
                await writer.drain()
                while line := await reader.readline():
                    writer.write(line)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

    tls = ctx.tls if lc.tls == "implicit" else None
    return await asyncio.start_server(session, sock=sock, ssl=tls)


ECHO = create_echo_server


def _config(tmp_path: Path, tls_files: tuple[Path, Path] | None, **top: Any) -> Config:
    return load_test_config(app_config_file(tmp_path, tls_files, **top))


@pytest.fixture
def echo_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in app.LISTENER_FACTORIES:
        monkeypatch.setitem(app.LISTENER_FACTORIES, name, ECHO)


async def _greeting(port: int, *, tls: ssl.SSLContext | None = None) -> tuple[str, asyncio.StreamReader,
                                                                              asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None), 5)
    line = await asyncio.wait_for(reader.readline(), 5)
    return line.decode().strip(), reader, writer


async def test_every_listener_is_handed_its_bound_socket_and_the_real_port_is_known(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None,
        client_ssl_context: ssl.SSLContext) -> None:
    cfg = _config(tmp_path, tls_files)
    async with running_app(cfg) as ctx:
        assert set(ctx.serving) == set(cfg.listeners)
        for name, lc in cfg.listeners.items():
            tls = client_ssl_context if lc.tls == "implicit" else None
            greeting, _, writer = await _greeting(ctx.port(name), tls=tls)
            assert greeting == f"hello mail.example.test {name}"
            writer.close()


def test_listener_factories_are_the_functions_themselves_not_import_strings() -> None:
    """app.py builds the real objects directly (issue 13): no module is loaded by name, so a
    missing protocol module is an import error at start, not a listener silently skipped."""
    import ast
    import inspect

    from mailhaven.imap import server as imap_server
    from mailhaven.managesieve import server as managesieve_server
    from mailhaven.pop3 import server as pop3_server
    from mailhaven.smtp import server as smtp_server

    assert app.LISTENER_FACTORIES == {
        "mx": smtp_server.create_mx_server, "submission": smtp_server.create_submission_server,
        "submissions": smtp_server.create_submission_server, "pop3": pop3_server.create_server,
        "pop3s": pop3_server.create_server, "imap": imap_server.create_server, "imaps": imap_server.create_server,
        "managesieve": managesieve_server.create_server}
    tree = ast.parse(inspect.getsource(app))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in node.names} | {node.module for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    called = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
              for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "importlib" not in imported
    assert not {"import_module", "__import__", "find_factory", "_optional"} & called
    assert not hasattr(app, "find_factory") and not hasattr(app, "_optional")


async def test_port_in_use_fails_with_one_line_before_anything_serves(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        cfg = load_test_config(app_config_file(tmp_path, tls_files))
        import dataclasses

        listeners = dict(cfg.listeners)
        listeners["imap"] = dataclasses.replace(listeners["imap"], port=port)
        cfg = dataclasses.replace(cfg, listeners=listeners)
        with pytest.raises(app.StartupError) as exc:
            await app.run(cfg, handle_signals=False)
        assert str(exc.value) == (f"listeners.imap: cannot listen on 127.0.0.1 port {port}: "
                                  "Address already in use")
    finally:
        blocker.close()


async def test_stop_refuses_new_connections_and_waits_for_open_sessions(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None) -> None:
    cfg = _config(tmp_path, tls_files, shutdown_deadline=10)
    started: asyncio.Future[app.Context] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(app.run(cfg, ready=started.set_result, handle_signals=False))
    ctx = await asyncio.wait_for(started, 10)
    port = ctx.port("mx")
    _, reader, writer = await _greeting(port)
    ctx.request_stop()
    await asyncio.wait_for(ctx.stopping.wait(), 5)
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    # The open session still works, and the server waits for it.
    writer.write(b"still here\r\n")
    assert await asyncio.wait_for(reader.readline(), 5) == b"still here\r\n"
    await asyncio.sleep(0.3)
    assert not task.done()
    writer.close()
    await asyncio.wait_for(task, 5)


async def test_sessions_still_open_at_the_shutdown_deadline_are_closed(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None) -> None:
    cfg = _config(tmp_path, tls_files, shutdown_deadline="500ms")
    started: asyncio.Future[app.Context] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(app.run(cfg, ready=started.set_result, handle_signals=False))
    ctx = await asyncio.wait_for(started, 10)
    _, reader, writer = await _greeting(ctx.port("imap"))
    t0 = time.monotonic()
    ctx.request_stop()
    await asyncio.wait_for(task, 5)
    assert 0.4 <= time.monotonic() - t0 < 3
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        data = await asyncio.wait_for(reader.read(100), 5)
        if not data:
            raise asyncio.IncompleteReadError(b"", None)
    writer.close()


async def test_reload_with_a_broken_config_keeps_the_running_one_and_logs_one_line(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None,
        caplog: pytest.LogCaptureFixture) -> None:
    path = app_config_file(tmp_path, tls_files)
    cfg = load_test_config(path)
    async with running_app(cfg) as ctx:
        path.write_text(path.read_text() + "\n[log]\nlevel = \"loud\"\n")
        caplog.clear()
        assert app.reload(ctx) is False
        assert ctx.config is cfg
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage() for r in errors] == [
            'reload failed, keeping the running config: log.level: expected one of "debug", "info", '
            '"warning", "error", got "loud"']
        greeting, _, writer = await _greeting(ctx.port("mx"))
        assert greeting == "hello mail.example.test mx"
        writer.close()


async def test_reload_gives_new_sessions_the_new_config_and_users(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None) -> None:
    path = app_config_file(tmp_path, tls_files)
    cfg = load_test_config(path)
    async with running_app(cfg) as ctx:
        old_greeting, reader, writer = await _greeting(ctx.port("mx"))
        assert ctx.directory.user("carol@example.test") is None
        add_user(cfg, "carol@example.test", "pw")
        write_config(path, app_config_data(tmp_path, tls_files, hostname="mx2.example.test"))
        assert app.reload(ctx) is True
        assert ctx.config.hostname == "mx2.example.test"
        assert ctx.directory.user("carol@example.test") == "carol@example.test"
        # What is bound stays as bound (port 0 here, whatever the file now says).
        assert ctx.config.listeners == cfg.listeners
        new_greeting, _, w2 = await _greeting(ctx.port("mx"))
        assert new_greeting == "hello mx2.example.test mx"
        # The established session is unaffected.
        writer.write(b"ping\r\n")
        assert await reader.readline() == b"ping\r\n"
        writer.close()
        w2.close()


async def test_reload_swaps_the_certificate_for_new_tls_handshakes(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None, tls_ca: Any,
        client_ssl_context: ssl.SSLContext) -> None:
    import trustme

    path = app_config_file(tmp_path, tls_files)
    cfg = load_test_config(path)
    ca2 = trustme.CA()
    cert2 = ca2.issue_cert("localhost", "127.0.0.1")
    cert2.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "cert2.pem"))
    cert2.private_key_pem.write_to_path(str(tmp_path / "key2.pem"))
    trust2 = ssl.create_default_context()
    ca2.configure_trust(trust2)
    async with running_app(cfg) as ctx:
        greeting, _, w = await _greeting(ctx.port("imaps"), tls=client_ssl_context)
        w.close()
        write_config(path, app_config_data(tmp_path, (tmp_path / "cert2.pem", tmp_path / "key2.pem")))
        assert app.reload(ctx) is True
        greeting, _, w = await _greeting(ctx.port("imaps"), tls=trust2)
        assert greeting == "hello mail.example.test imaps"
        w.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await _greeting(ctx.port("imaps"), tls=client_ssl_context)


async def test_sd_notify_reports_ready_reloading_and_stopping(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    loop = asyncio.get_running_loop()

    async def next_state() -> str:
        return (await loop.run_in_executor(None, listener.recv, 4096)).decode()

    try:
        cfg = _config(tmp_path, tls_files)
        async with running_app(cfg) as ctx:
            assert await next_state() == "READY=1"
            ctx.request_reload()
            reloading = (await next_state()).split("\n")
            assert reloading[0] == "RELOADING=1"
            assert reloading[1].startswith("MONOTONIC_USEC=") and int(reloading[1].split("=")[1]) > 0
            assert await next_state() == "READY=1"
        assert await next_state() == "STOPPING=1"
    finally:
        listener.close()


def test_sd_notify_without_notify_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert app.sd_notify("READY=1") is False


async def test_ipv6_loopback_listener_binds(tmp_path: Path, tls_files: tuple[Path, Path],
                                            echo_everywhere: None) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    app_config_file(tmp_path, tls_files)  # and the users file
    app_config_file(tmp_path, tls_files)  # and the users file
    data = app_config_data(tmp_path, tls_files)
    data["listeners"] = {"imap": {"address": "::1", "port": 40143}}
    cfg = load_test_config(write_config(tmp_path / "v6.toml", data))
    async with running_app(cfg) as ctx:
        host, port = ctx.addresses["imap"]
        assert host == "::1"
        reader, writer = await asyncio.open_connection("::1", port)
        assert (await reader.readline()).startswith(b"hello ")
        writer.close()


async def _eventually(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_users_file_edits_take_effect_without_reload_and_a_broken_file_is_ignored(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None,
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(tmp_path, tls_files)
    async with running_app(cfg) as ctx:
        add_user(cfg, "dave@example.test", "pw")
        await _eventually(lambda: ctx.directory.user("dave@example.test") == "dave@example.test")
        working = ctx.directory
        await asyncio.to_thread(Path(cfg.users_file).write_text, "[users\n")
        await _eventually(lambda: any("users file changed but is broken" in r.getMessage()
                                      for r in caplog.records))
        assert ctx.directory is working


def _mx_send(port: int, rcpt: str, subject: str) -> tuple[int, bytes]:
    """One MX transaction with smtplib: RCPT's reply if refused, else DATA's."""
    import smtplib

    msg = (f"From: someone@example.net\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           "Message-ID: <x@example.net>\r\n\r\nhi\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("client.example.net")
        assert smtp.mail("someone@example.net")[0] == 250
        code, text = smtp.rcpt(rcpt)
        if code != 250:
            return code, text
        return smtp.data(msg)


async def test_alias_added_to_the_users_file_is_resolved_after_reload_and_not_before(
        app_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailhaven.auth.users import UsersFile

    # The users-file poller would pick the edit up within a second on its own: keep it out of this test.
    monkeypatch.setattr(app, "USERS_POLL_INTERVAL", 3600.0)
    add_user(app_config, "alice@example.test", "pw")
    async with running_app(app_config) as ctx:
        if "mx" not in ctx.serving:
            pytest.skip("listener mx not available in this build")
        with UsersFile.edit(app_config.users_file) as uf:
            uf.add_alias("team@example.test", ["alice@example.test"])
        assert ctx.directory.resolve("team@example.test") is None
        code, text = await asyncio.to_thread(_mx_send, ctx.port("mx"), "team@example.test", "before")
        assert code == 550 and text.startswith(b"5.1.1"), (code, text)
        assert app.reload(ctx) is True
        assert ctx.directory.resolve("team@example.test") == ["alice@example.test"]
        code, text = await asyncio.to_thread(_mx_send, ctx.port("mx"), "team@example.test", "after")
        assert code == 250, (code, text)
        snap = await (await ctx.store.account("alice@example.test").mailbox("INBOX")).snapshot()
        assert len(snap.messages) == 1


async def test_reload_applies_a_dns_change_to_lookups_and_to_the_queue(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None, dns_server: Any,
        dns_nameserver: str) -> None:
    from mailhaven import cleanup
    from tests.dnsserver import DnsServer
    from tests.smtp_peer import SmtpPeer, shared_port, until

    port = shared_port("127.0.0.2")
    queue = {"remote_port": port, "connect_timeout": 2, "retry_schedule": ["1h"]}
    dns_server.set_servfail("b.test")  # the first nameserver cannot answer for b.test
    second = DnsServer().start()
    second.add("b.test", "MX", "10 mx.b.test.")
    second.add("mx.b.test", "A", "127.0.0.2")
    peer = await SmtpPeer("127.0.0.2", port).start()
    path = app_config_file(tmp_path, tls_files, dns_nameserver, queue=queue)
    try:
        async with running_app(load_test_config(path)) as ctx:
            msg = b"From: a@example.test\r\nTo: bob@b.test\r\nSubject: dns\r\n\r\nbody\r\n"
            qid = await cleanup.enqueue(ctx, "a@example.test", ["bob@b.test"], msg, dkim=False)
            await until(lambda: ctx.queue.entries[qid].attempts >= 1 and not ctx.queue.entries[qid].busy, 10)
            last = ctx.queue.entries[qid].recipients[0].last
            assert last is not None and last.enhanced == "4.4.3"  # deferred: DNS failed
            write_config(path, app_config_data(tmp_path, tls_files, second.nameserver, queue=queue))
            assert app.reload(ctx) is True
            assert ctx.resolver.nameservers == [second.nameserver]
            assert await ctx.resolver.mx("b.test") == [(10, "mx.b.test")]
            assert await ctx.queue.retry(qid)
            await peer.wait_messages(1, 10)  # the queue asked the new nameserver
            assert any(q[0].rstrip(".") == "b.test" for q in second.queries)
    finally:
        await peer.stop()
        second.stop()


async def test_reload_starts_an_empty_dns_cache_and_applies_cache_size(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None, dns_server: Any,
        dns_nameserver: str) -> None:
    dns_server.add("c.test", "TXT", "v=spf1 -all")  # TTL 60 s: outlives the test
    path = app_config_file(tmp_path, tls_files, dns_nameserver)

    async def lookups(n: int) -> int:
        for _ in range(n):
            assert await ctx.resolver.txt("c.test") == ["v=spf1 -all"]
        return int(dns_server.queried("c.test"))

    async with running_app(load_test_config(path)) as ctx:
        assert await lookups(2) == 1  # cached (default [dns] cache_size)
        assert app.reload(ctx) is True
        assert await lookups(2) == 2  # the new resolver asks once: its cache started empty
        write_config(path, app_config_data(tmp_path, tls_files, dns_nameserver,
                                           dns={"nameservers": [dns_nameserver], "cache_size": 0}))
        assert app.reload(ctx) is True
        assert await lookups(2) == 4  # cache_size = 0: every lookup is a query


async def test_reload_names_every_changed_key_that_needs_a_restart(
        tmp_path: Path, tls_files: tuple[Path, Path], echo_everywhere: None,
        caplog: pytest.LogCaptureFixture) -> None:
    from mailhaven.config import load
    from tests.fixtures_base import free_port

    app_config_file(tmp_path, tls_files)  # and the users file
    data = app_config_data(tmp_path, tls_files)
    data["listeners"] = {"mx": {"address": "127.0.0.1", "port": free_port()},
                         "imap": {"address": "127.0.0.1", "port": free_port()}}
    path = write_config(tmp_path / "mailhaven.toml", data)
    cfg = load(path)  # the file's own ports: what runs is what the file says
    async with running_app(cfg) as ctx:
        caplog.set_level(logging.INFO, logger="mailhaven.app")
        caplog.clear()
        assert app.reload(ctx) is True  # nothing changed
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("INFO", f"reloaded {path}")]

        changed = {**data, "hostname": "mx2.example.test", "data_dir": str(tmp_path / "elsewhere"),
                   "control_socket": "other.sock", "run_as_user": "nobody",
                   "metrics": {"address": f"127.0.0.1:{free_port()}"},
                   "listeners": {"mx": data["listeners"]["mx"],
                                 "imap": {**data["listeners"]["imap"], "port": free_port(), "idle_timeout": 77},
                                 "pop3": {"address": "127.0.0.1", "port": free_port()}}}
        write_config(path, changed)
        caplog.clear()
        assert app.reload(ctx) is True
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [(
            "WARNING", f"reloaded {path}; these changes need a restart and are not applied: "
            "listeners.imap.port, listeners.imap.idle_timeout, listeners.pop3, data_dir, control_socket, "
            "metrics.address, run_as_user")]
        assert ctx.config.hostname == "mx2.example.test"  # applied
        assert (ctx.config.listeners, ctx.config.data_dir, ctx.config.control_socket, ctx.config.metrics,
                ctx.config.run_as_user) == (cfg.listeners, cfg.data_dir, cfg.control_socket, cfg.metrics, "")
        greeting, _, writer = await _greeting(ctx.port("imap"))  # still where it was bound
        assert greeting == "hello mx2.example.test imap"
        writer.close()
