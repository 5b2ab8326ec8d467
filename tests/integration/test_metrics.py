"""metrics.py: counters in a per-instance registry, label hygiene, and the HTTP endpoint over a real
socket on 127.0.0.1 (and, once app.py wires it, served by a running server)."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailhaven import metrics
from mailhaven.metrics import Metrics, MetricsAddressError
from tests.fixtures_base import free_port


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the rendered exposition text."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, tuple(sorted(labels.items()))))


def test_counters_count_what_protocol_code_reports() -> None:
    m = Metrics(process=False)
    m.connection_opened("mx")
    m.connection_opened("mx")
    m.connection_closed("mx")
    m.login("imap", ok=True)
    m.login("imap", ok=False, reason="bad_credentials")
    m.auth_failure("pop3", "throttled")
    m.message_received("mx")
    m.message_rejected("mx", "policy")
    m.message_sent()
    m.message_bounced()
    m.delivery_result("remote", "deferred")
    m.policy_result("dmarc", "fail")
    assert value(m, "mailhaven_connections_total", listener="mx") == 2
    assert value(m, "mailhaven_connections_active", listener="mx") == 1
    assert value(m, "mailhaven_logins_total", proto="imap", result="success") == 1
    assert value(m, "mailhaven_logins_total", proto="imap", result="failure") == 1
    assert value(m, "mailhaven_auth_failures_total", proto="imap", reason="bad_credentials") == 1
    assert value(m, "mailhaven_auth_failures_total", proto="pop3", reason="throttled") == 1
    assert value(m, "mailhaven_messages_received_total", listener="mx") == 1
    assert value(m, "mailhaven_messages_rejected_total", listener="mx", reason="policy") == 1
    assert value(m, "mailhaven_messages_sent_total") == 1
    assert value(m, "mailhaven_messages_bounced_total") == 1
    assert value(m, "mailhaven_delivery_results_total", kind="remote", result="deferred") == 1
    assert value(m, "mailhaven_policy_results_total", check="dmarc", result="fail") == 1


def test_command_latency_lands_in_the_histogram_buckets() -> None:
    m = Metrics(process=False)
    m.command_latency("smtp", "rcpt", 0.003)
    m.command_latency("smtp", "RCPT", 0.2)
    with m.time_command("pop3", "RETR"):
        pass
    assert value(m, "mailhaven_command_duration_seconds_count", proto="smtp", verb="RCPT") == 2
    assert value(m, "mailhaven_command_duration_seconds_bucket", proto="smtp", verb="RCPT", le="0.005") == 1
    assert value(m, "mailhaven_command_duration_seconds_bucket", proto="smtp", verb="RCPT", le="0.25") == 2
    assert value(m, "mailhaven_command_duration_seconds_count", proto="pop3", verb="RETR") == 1


def test_hostile_label_values_collapse_to_other_so_series_stay_bounded() -> None:
    m = Metrics(process=False)
    for i in range(50):
        m.command_latency("smtp", f"X{i}\r\nEVIL", 0.001)
        m.connection_opened(f"listener{i}")
        m.policy_result("spf", f"weird{i}")
        m.auth_failure(f"proto{i}", f"reason{i}")
    assert value(m, "mailhaven_command_duration_seconds_count", proto="smtp", verb="OTHER") == 50
    assert value(m, "mailhaven_connections_total", listener="other") == 50
    assert value(m, "mailhaven_policy_results_total", check="spf", result="other") == 50
    assert value(m, "mailhaven_auth_failures_total", proto="other", reason="other") == 50
    names = {k for k in samples(m) if k[0] == "mailhaven_command_duration_seconds_count"}
    assert len(names) == 1


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # with the process collectors: registering twice must not clash
    a.message_received("mx")
    assert value(a, "mailhaven_messages_received_total", listener="mx") == 1
    assert value(b, "mailhaven_messages_received_total", listener="mx") is None
    assert a.registry is not b.registry
    assert value(a, "process_open_fds") is not None


def test_disabled_metrics_accept_every_call_and_record_nothing() -> None:
    m = Metrics(enabled=False)
    m.connection_opened("mx")
    m.connection_closed("mx")
    m.login("imap", ok=False)
    m.message_received("mx")
    m.command_latency("smtp", "DATA", 1.0)
    with m.time_command("smtp", "DATA"), m.connection("mx"):
        pass
    m.set_queue_probe(lambda: (1, 2.0))
    assert m.render() == b""
    assert metrics.of(object()) is metrics.NOOP


def test_queue_probe_is_read_at_scrape_time_and_a_broken_probe_does_not_break_the_scrape() -> None:
    m = Metrics(process=False)
    assert value(m, "mailhaven_queue_messages") == 0
    state = {"size": 3, "age": 120.0}
    m.set_queue_probe(lambda: (state["size"], state["age"]))
    assert value(m, "mailhaven_queue_messages") == 3
    assert value(m, "mailhaven_queue_oldest_age_seconds") == 120
    state["size"] = 0
    assert value(m, "mailhaven_queue_messages") == 0

    def broken() -> tuple[int, float]:
        raise RuntimeError("boom")

    m.set_queue_probe(broken)
    assert value(m, "mailhaven_queue_messages") == 0
    assert value(m, "mailhaven_connections_total", listener="mx") is None  # rest still renders


# --- the endpoint --------------------------------------------------------------------------------


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def test_endpoint_serves_the_registry_over_http_on_the_loop() -> None:
    m = Metrics()
    m.message_received("submission")
    port = free_port()
    server = await metrics.serve(m, metrics.bind(f"127.0.0.1:{port}"))
    try:
        status, headers, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'mailhaven_messages_received_total{listener="submission"} 1.0' in body.decode()
        assert "mailhaven_build_info{" in body.decode()
        status, _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics", "HEAD")
        assert (status, body) == (200, b"")
        assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/nope"))[0] == 404
        assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics", "POST"))[0] == 405
    finally:
        server.close()
        await server.wait_closed()


async def test_endpoint_refuses_an_oversized_request_head_and_closes() -> None:
    port = free_port()
    server = await metrics.serve(Metrics(process=False), metrics.bind(f"127.0.0.1:{port}"))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\nX-Junk: " + b"a" * 20000 + b"\r\n\r\n")
        with_reply = await asyncio.wait_for(reader.read(), 5)
        assert with_reply.startswith(b"HTTP/1.0 400 ")
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"garbage\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.0 400 ")
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_flood_of_idle_connections_is_bounded_and_a_scrape_after_it_is_answered() -> None:
    port = free_port()
    server = await metrics.serve(Metrics(process=False), metrics.bind(f"127.0.0.1:{port}"))
    idle = []
    try:
        for _ in range(metrics.MAX_CLIENTS):  # each holds a request slot, saying nothing
            idle.append(await asyncio.open_connection("127.0.0.1", port))
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        try:
            got = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:  # closed with our request unread
            got = b""
        assert got == b""  # one too many: closed unanswered
        writer.close()
        for _r, w in idle:
            w.close()
        await asyncio.sleep(0.2)
        assert (await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics"))[0] == 200
    finally:
        for _r, w in idle:
            w.close()
        server.close()
        await server.wait_closed()


def test_bind_failure_is_one_line_naming_the_key() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(MetricsAddressError) as exc:
            metrics.bind(f"127.0.0.1:{port}")
        assert str(exc.value) == f"metrics.address: cannot listen on 127.0.0.1 port {port}: Address already in use"


# --- served by the app (app.run binds config.metrics.address) ---------------------------------------------------------------------------


async def test_running_server_serves_metrics_on_the_configured_address(
        tmp_path: Any, tls_files: Any, dns_nameserver: str) -> None:
    import dataclasses

    from mailhaven.config import MetricsConfig
    from tests.fixtures_server import app_config_file, load_test_config, running_app

    port = free_port()
    cfg = load_test_config(app_config_file(tmp_path, tls_files, dns_nameserver))
    cfg = dataclasses.replace(cfg, metrics=MetricsConfig(address=f"127.0.0.1:{port}"))
    async with running_app(cfg) as ctx:
        assert isinstance(ctx.metrics, Metrics) and ctx.metrics.enabled
        status, _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"mailhaven_build_info" in body
        ctx.metrics.message_received("mx")
        _, _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert b'mailhaven_messages_received_total{listener="mx"} 1.0' in body
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_metrics_off_binds_nothing_and_gives_listeners_the_noop(
        tmp_path: Any, tls_files: Any, dns_nameserver: str) -> None:
    from tests.fixtures_server import app_config_file, load_test_config, running_app

    cfg = load_test_config(app_config_file(tmp_path, tls_files, dns_nameserver))
    assert cfg.metrics.address == ""
    async with running_app(cfg) as ctx:
        assert metrics.of(ctx).enabled is False


async def test_metrics_address_in_use_is_a_one_line_startup_error(
        tmp_path: Any, tls_files: Any, dns_nameserver: str) -> None:
    import dataclasses

    from mailhaven import app
    from mailhaven.config import MetricsConfig
    from tests.fixtures_server import app_config_file, load_test_config

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        cfg = load_test_config(app_config_file(tmp_path, tls_files, dns_nameserver))
        cfg = dataclasses.replace(cfg, metrics=MetricsConfig(address=f"127.0.0.1:{port}"))
        with pytest.raises(app.StartupError) as exc:
            await app.run(cfg, handle_signals=False)
        assert str(exc.value) == f"metrics.address: cannot listen on 127.0.0.1 port {port}: Address already in use"


async def test_mx_delivery_and_a_failed_submission_login_move_the_counters(
        tmp_path: Any, tls_files: Any, dns_nameserver: str, client_ssl_context: Any) -> None:
    """End to end: one message over the MX and one wrong password on submission, then a scrape."""
    import dataclasses

    import aiosmtplib

    from mailhaven.config import MetricsConfig
    from tests.fixtures_server import add_user, app_config_file, load_test_config, running_app

    port = free_port()
    cfg = load_test_config(app_config_file(tmp_path, tls_files, dns_nameserver))
    cfg = dataclasses.replace(cfg, metrics=MetricsConfig(address=f"127.0.0.1:{port}"))
    add_user(cfg, "alice@example.test", "correct horse")
    async with running_app(cfg) as ctx:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=ctx.port("mx"), start_tls=False, timeout=20) as mx:
            await mx.ehlo(hostname="client.example")
            _, reply = await mx.sendmail("someone@example.net", ["alice@example.test"],
                                         b"From: someone@example.net\r\nSubject: m\r\n\r\nhi\r\n")
            assert reply.startswith("2.0.0"), reply
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
                await mx.sendmail("someone@example.net", ["nobody@example.test"], b"Subject: x\r\n\r\nx\r\n")
        sub = aiosmtplib.SMTP(hostname="127.0.0.1", port=ctx.port("submission"), start_tls=True,
                              tls_context=client_ssl_context, timeout=20)
        async with sub:
            await sub.ehlo()
            with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                await sub.auth_plain("alice@example.test", "wrong password")
        def imap_logins() -> None:
            import imaplib

            with imaplib.IMAP4("127.0.0.1", ctx.port("imap")) as im:
                im.starttls(ssl_context=client_ssl_context)
                with pytest.raises(imaplib.IMAP4.error):
                    im.login("alice@example.test", "wrong password")
                im.login("alice@example.test", "correct horse")

        await asyncio.to_thread(imap_logins)
        status, _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert got[("mailhaven_connections_total", (("listener", "imap"),))] == 1
    assert got[("mailhaven_command_duration_seconds_count", (("proto", "imap"), ("verb", "LOGIN")))] == 2
    assert got[("mailhaven_logins_total", (("proto", "imap"), ("result", "success")))] == 1
    assert got[("mailhaven_auth_failures_total", (("proto", "imap"), ("reason", "bad_credentials")))] == 1
    assert got[("mailhaven_messages_received_total", (("listener", "mx"),))] == 1
    assert got[("mailhaven_messages_rejected_total", (("listener", "mx"), ("reason", "unknown_user")))] == 1
    assert got[("mailhaven_connections_total", (("listener", "mx"),))] == 1
    assert got[("mailhaven_connections_total", (("listener", "submission"),))] == 1
    assert got[("mailhaven_logins_total", (("proto", "submission"), ("result", "failure")))] == 1
    assert got[("mailhaven_auth_failures_total", (("proto", "submission"), ("reason", "bad_credentials")))] == 1
    assert got[("mailhaven_policy_results_total", (("check", "dmarc"), ("result", "none")))] == 1
    assert got[("mailhaven_command_duration_seconds_count", (("proto", "smtp"), ("verb", "DATA")))] >= 1
    assert ("mailhaven_queue_messages", ()) in got
