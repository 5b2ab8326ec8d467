"""delivery/routes.py (the syntax of [queue] relay and [queue.transports]) and delivery/relayauth.py
(the USER:PASSWORD file): examples and hypothesis properties."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven import config
from mailhaven.delivery import relayauth, routes
from mailhaven.errors import ConfigError


@pytest.mark.parametrize(("text", "host", "port"), [
    ("smtp.provider.example:587", "smtp.provider.example", 587),
    ("[smtp.provider.example]:465", "smtp.provider.example", 465),
    ("SMTP.Provider.Example.:25", "smtp.provider.example", 25),
    ("[10.0.0.5]:25", "10.0.0.5", 25),
    ("10.0.0.5:2525", "10.0.0.5", 2525),
    ("[2001:db8::1]:587", "2001:db8::1", 587),
    ("[IPv6:2001:db8::1]:587", "2001:db8::1", 587),
])
def test_relay_forms(text: str, host: str, port: int) -> None:
    assert routes.parse_hostport(text, None) == routes.NextHop(host, port)


@pytest.mark.parametrize("text", ["smtp.provider.example", "[x]", "host:0", "host:65536", "host:abc", "2001:db8::1",
                                  "[2001:db8::1", "[h]x", "bad host:25", "-a.example:25", ":25", ""])
def test_bad_relays_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        routes.parse_hostport(text, None)


def test_port_465_is_implicit_tls_and_others_starttls() -> None:
    r = routes.route_for("x.test", relay="[smtp.p.example]:465", transports={})
    assert (r.kind, r.tls, r.auth, r.text) == ("relay", "implicit", True, "relay [smtp.p.example]:465")
    assert routes.route_for("x.test", relay="smtp.p.example:587", transports={}).tls == "starttls"
    assert routes.route_for("x.test", relay="smtp.p.example:25", transports={}).tls == "starttls"


def test_transports_come_before_the_relay_and_match_whole_domains_only() -> None:
    t = {"Example.ORG": "smtp:[10.0.0.5]:2525", "direct.test": "mx", "legacy.test": "local", "p.test": "relay",
         "h.test": "smtp:mx.h.test"}
    relay = "smtp.p.example:587"
    r = routes.route_for("example.org.", relay=relay, transports=t)
    assert (r.kind, r.hop, r.tls, r.auth) == ("transport", routes.NextHop("10.0.0.5", 2525), "may", False)
    assert r.why == "[queue.transports] Example.ORG" and r.destination == "transport:[10.0.0.5]:2525"
    assert routes.route_for("sub.example.org", relay=relay, transports=t).kind == "relay"
    assert routes.route_for("direct.test", relay=relay, transports=t).kind == "mx"
    assert routes.route_for("legacy.test", relay=relay, transports=t).kind == "local"
    assert routes.route_for("p.test", relay=relay, transports=t).hop == routes.NextHop("smtp.p.example", 587)
    assert routes.route_for("h.test", relay="", transports=t).hop == routes.NextHop("mx.h.test", 25)
    mx = routes.route_for("other.test", relay="", transports=t)
    assert (mx.kind, mx.hop, mx.destination, mx.text) == ("mx", None, "", "MX")


def test_config_checks_relay_and_transports(tmp_path: Path) -> None:
    def load(**queue: Any) -> Any:
        return config.from_dict({"queue": queue}, tmp_path)

    assert load(relay="smtp.p.example:587").queue.relay == "smtp.p.example:587"
    with pytest.raises(ConfigError, match=r"^queue.relay: expected HOST:PORT; expected"):
        load(relay="smtp.p.example")
    with pytest.raises(ConfigError, match=r'^queue.transports."a.test": expected "smtp:HOST"'):
        load(transports={"a.test": "lmtp:x"})
    with pytest.raises(ConfigError, match=r'^queue.transports.b: not a valid domain name'):
        load(transports={"b": "mx"})
    with pytest.raises(ConfigError, match=r'"relay" needs queue.relay'):
        load(transports={"a.test": "relay"})
    with pytest.raises(ConfigError, match=r"^queue.relay_auth_file: only used with queue.relay"):
        load(relay_auth_file="x")
    # max_active: the older name of max_connections
    assert load(max_active=7).queue.max_connections == 7 and load(max_active=7).queue.max_active == 7
    with pytest.raises(ConfigError, match=r"^queue.max_active: give max_connections or"):
        load(max_active=7, max_connections=8)


_host = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(_host, st.integers(1, 65535), st.booleans())
def test_every_valid_host_and_port_round_trips(host: str, port: int, brackets: bool) -> None:
    text = f"[{host}]:{port}" if brackets else f"{host}:{port}"
    hop = routes.parse_hostport(text, None)
    assert hop == routes.NextHop(host, port)
    assert routes.parse_hostport(str(hop), None) == hop


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_any_text_is_a_hop_or_a_value_error(text: str) -> None:
    for parse in (lambda t: routes.parse_hostport(t, None), lambda t: routes.parse_hostport(t, 25),
                  routes.parse_transport):
        try:
            parse(text)
        except ValueError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=3), st.text(max_size=30))
def test_any_queue_routes_either_load_or_raise_one_line_config_error(transports: dict[str, str], relay: str) -> None:
    try:
        cfg = config.from_dict({"queue": {"transports": transports, "relay": relay}}, Path("/nonexistent"))
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("queue.")
        return
    for name in cfg.queue.transports:  # what loads always routes
        routes.route_for(name, relay=cfg.queue.relay, transports=cfg.queue.transports)


def test_relay_auth_file_format_and_privacy(tmp_path: Path) -> None:
    creds = relayauth.parse("# provider login\n\nuser@p.example: pa:ss word \n")
    assert (creds.user, creds.password) == ("user@p.example", " pa:ss word ")
    assert "pa:ss" not in repr(creds)
    for bad in ("", "nocolon\n", ":pw\n", "user:\n", "u:p\x00w\n"):
        with pytest.raises(ConfigError, match=r"^queue.relay_auth_file: ") as e:
            relayauth.parse(bad)
        assert "pw" not in str(e.value) or bad == ":pw\n"
    path = tmp_path / "auth"
    path.write_text("u:secret\n")
    for mode in (0o644, 0o640, 0o604, 0o660):
        os.chmod(path, mode)
        with pytest.raises(ConfigError, match=f"has mode {mode:04o}.*chmod 600"):
            relayauth.load(str(path))
    os.chmod(path, 0o600)
    assert relayauth.load(str(path)).user == "u"
    with pytest.raises(ConfigError, match="not to nobody who runs the server"):
        relayauth.load(str(path), "nobody")  # owned by us, not by the service user
    with pytest.raises(ConfigError, match="cannot read"):
        relayauth.load(str(tmp_path / "missing"))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_auth_file_text_parses_or_raises_config_error(text: str) -> None:
    try:
        creds = relayauth.parse(text)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert creds.user and creds.password and ":" not in creds.user
