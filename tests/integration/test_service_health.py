"""`mailhaven health` (health.py): healthy only when every enabled listener greets with its
protocol's OK, over TLS for implicit-TLS listeners; the Dockerfile's HEALTHCHECK runs it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mailhaven import app, health
from mailhaven.config import ListenerConfig
from tests.fixtures_server import app_config_data, write_config
from tests.integration.test_service_support import Server, base_env, free_port, open_dir


async def test_every_serving_listener_of_a_running_server_is_healthy(app_server: app.Context) -> None:
    cfg = app_server.config
    names = sorted(app_server.serving)
    assert "pop3s" in names  # implicit TLS is probed through a handshake
    probes = await health.check(cfg, names, ports={n: app_server.port(n) for n in names})
    assert sorted((p.listener, p.ok) for p in probes) == [(n, True) for n in names], probes
    assert health.exit_code(probes) == 0
    pop3 = next(p for p in probes if p.listener == "pop3")
    assert pop3.detail.startswith("+OK")


async def test_a_health_run_logs_nothing_at_info_and_other_sessions_still_do(
        app_server: app.Context, caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import poplib

    from tests.smtp_peer import until

    caplog.set_level(logging.DEBUG)
    caplog.clear()
    names = sorted(app_server.serving)
    probes = await health.check(app_server.config, names, ports={n: app_server.port(n) for n in names})
    assert all(p.ok for p in probes), probes
    ends = ("imap session end", "pop3 session end")
    # Each IMAP and POP3 probe session ends with one line, at DEBUG (once all four have ended).
    await until(lambda: sum(r.getMessage() in ends for r in caplog.records) == 4, 10)
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    assert {r.levelno for r in caplog.records if r.getMessage() in ends} == {logging.DEBUG}

    # A session that does more than say goodbye is still logged at INFO.
    def capa_then_quit() -> None:
        client = poplib.POP3("127.0.0.1", app_server.port("pop3"), timeout=10)
        client.capa()
        client.quit()

    await asyncio.to_thread(capa_then_quit)
    await until(lambda: any(r.levelno == logging.INFO and r.getMessage() == "pop3 session end"
                            for r in caplog.records), 10)


async def _fake(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0)


@pytest.fixture
async def greeting_server() -> AsyncIterator[Callable[[bytes | None], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(greeting: bytes | None) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if greeting is not None:
                writer.write(greeting)
                await writer.drain()
            await reader.read(100)
            writer.close()

        server = await _fake(handle)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for s in servers:
        s.close()


def _lc(port: int, tls: str = "none") -> ListenerConfig:
    return ListenerConfig(address="0.0.0.0", port=port, tls=tls)  # type: ignore[arg-type]


async def test_wrong_or_missing_greeting_or_no_listener_is_unhealthy(
        greeting_server: Callable[[bytes | None], Awaitable[int]]) -> None:
    busy = await health.probe("mx", _lc(await greeting_server(b"421 mail.example.test busy\r\n")))
    assert (busy.ok, busy.detail) == (False, "unexpected greeting: 421 mail.example.test busy")
    assert busy.address == "127.0.0.1"  # a wildcard bind is probed over loopback
    silent = await health.probe("imap", _lc(await greeting_server(None)), wait=0.3)
    assert (silent.ok, silent.detail) == (False, "no greeting within 0.3s")
    wrong = await health.probe("pop3", _lc(await greeting_server(b"* OK IMAP here\r\n")))
    assert not wrong.ok
    good = await health.probe("imap", _lc(await greeting_server(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")))
    assert good.ok
    port = free_port()
    down = await health.probe("pop3", _lc(port))
    assert not down.ok and down.detail.startswith("cannot connect: ") and down.port == port
    assert health.exit_code([good, down]) == 1
    assert health.exit_code([]) == 1
    text = health.render([good, down])
    assert text.splitlines()[0].startswith("ok    imap ") and text.splitlines()[1].startswith("FAIL  pop3 ")


def test_health_command_exit_0_while_serving_and_1_after_stop(tls_files: tuple[Path, Path],
                                                              dns_nameserver: str) -> None:
    with open_dir() as folder:
        data = app_config_data(folder, tls_files, dns_nameserver)
        available = {n for n in data["listeners"] if n in app.LISTENER_FACTORIES}
        for name, lc in data["listeners"].items():
            lc["port"] = free_port()
            lc["enabled"] = name in available  # the health of a build without a protocol is not the point
        from mailhaven.auth.users import UsersFile

        UsersFile(folder / "users.toml").save()
        path = write_config(folder / "mailhaven.toml", data)
        env = base_env(MAILHAVEN_CONFIG=str(path))

        def run_health(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mailhaven", "health", *args], capture_output=True,
                                  text=True, timeout=60, env=env)

        server = Server(path)
        try:
            server.ready()
            logged = len(server.lines)
            r = run_health()
            assert r.returncode == 0, r.stdout + r.stderr
            if "pop3" in available:
                # The container HEALTHCHECK's probes leave no line at the default level (info): a
                # session started after them is the next line of the log.
                import poplib

                client = poplib.POP3("127.0.0.1", data["listeners"]["pop3"]["port"], timeout=10)
                client.capa()
                client.quit()
                line = server.wait_for(r"pop3 session end")
                assert [x for x in server.lines[logged:] if "session end" in x] == [line], server.lines[logged:]
            assert sorted(line.split()[1] for line in r.stdout.splitlines()) == sorted(available)
            assert all(line.startswith("ok ") for line in r.stdout.splitlines())
            r = run_health("nonesuch")
            assert (r.returncode, r.stderr) == (1, "mailhaven: health: no such listener in the config: nonesuch\n")
            assert server.stop() == 0
        finally:
            server.kill()
        r = run_health("--timeout", "2")
        assert r.returncode == 1
        assert all(line.startswith("FAIL ") for line in r.stdout.splitlines())
