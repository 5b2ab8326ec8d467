"""message/address.py: RFC 5321 §4.1.2 paths and mailboxes."""

from __future__ import annotations

import pytest

from mailhaven.message.address import Address, parse_domain, parse_mailbox, parse_path, split_address

GOOD = [
    # (path, local, domain, str form)
    ("<alice@example.test>", "alice", "example.test", "alice@example.test"),
    ("<Alice@EXAMPLE.Test>", "Alice", "example.test", "Alice@example.test"),
    ("<a.b.c@x.y>", "a.b.c", "x.y", "a.b.c@x.y"),
    ("<!#$%&'*+-/=?^_`{|}~@x.y>", "!#$%&'*+-/=?^_`{|}~", "x.y", "!#$%&'*+-/=?^_`{|}~@x.y"),
    ('<"john doe"@x.y>', "john doe", "x.y", '"john doe"@x.y'),
    ('<"abc"@x.y>', "abc", "x.y", "abc@x.y"),  # needless quotes dropped
    ('<"a\\"b"@x.y>', 'a"b', "x.y", '"a\\"b"@x.y'),
    ('<"a\\\\b"@x.y>', "a\\b", "x.y", '"a\\\\b"@x.y'),
    ('<"a@b"@x.y>', "a@b", "x.y", '"a@b"@x.y'),
    ('<".a"@x.y>', ".a", "x.y", '".a"@x.y'),
    ("<user@localhost>", "user", "localhost", "user@localhost"),
    ("<jörg@bücher.example>", "jörg", "xn--bcher-kva.example", "jörg@xn--bcher-kva.example"),
    ("<用户@例子.测试>", "用户", "xn--fsqu00a.xn--0zwm56d", "用户@xn--fsqu00a.xn--0zwm56d"),
    ("<a@xn--bcher-kva.example>", "a", "xn--bcher-kva.example", "a@xn--bcher-kva.example"),
    ("<a@[192.0.2.1]>", "a", "[192.0.2.1]", "a@[192.0.2.1]"),
    ("<a@[IPv6:2001:DB8:0:0:0:0:0:1]>", "a", "[IPv6:2001:db8::1]", "a@[IPv6:2001:db8::1]"),
    ("<@relay.example:a@x.y>", "a", "x.y", "a@x.y"),  # RFC 5321 §4.1.2 source route stripped
    ("<@r1.example,@r2.example:a@x.y>", "a", "x.y", "a@x.y"),
    ("<" + "a" * 64 + "@x.y>", "a" * 64, "x.y", "a" * 64 + "@x.y"),
]


@pytest.mark.parametrize(("path", "local", "domain", "text"), GOOD)
def test_good_paths(path: str, local: str, domain: str, text: str) -> None:
    addr = parse_path(path)
    assert addr == Address(local, domain)
    assert str(addr) == text
    assert addr.path() == f"<{text}>"
    assert parse_path(addr.path()) == addr


def test_null_path() -> None:
    assert parse_path("<>") is None


BAD = [
    "", "<", ">", "alice@example.test", "<alice@example.test", "alice@example.test>",
    "<alice@example.test> ", " <alice@example.test>", "<alice@example.test>x",
    "<alice @example.test>", "<alice@ example.test>", "< alice@example.test>",
    "<alice>", "<@example.test>", "<alice@>", "<a..b@x.y>", "<.a@x.y>", "<a.@x.y>",
    "<a b@x.y>", '<"unterminated@x.y>', '<"a"b@x.y>', '<""@x.y>', '<"a\tb"@x.y>', '<"a\\\x01"@x.y>',
    "<a@-x.y>", "<a@x-.y>", "<a@x..y>", "<a@x.y.>", "<a@.x.y>", "<a@x_y.z>", "<a@x y>",
    "<a@" + "b" * 64 + ".test>",
    "<" + "a" * 65 + "@x.y>",  # local part > 64 octets
    "<" + "ä" * 33 + "@x.y>",  # 66 octets in UTF-8
    "<a@" + ".".join(["b" * 63] * 4) + ">",  # domain > 255
    "<" + "a" * 64 + "@" + ".".join(["b" * 60] * 3) + "." + "c" * 10 + ">",  # path > 256
    "<a@[1.2.3]>", "<a@[1.2.3.256]>", "<a@[IPv6:zz::1]>", "<a@[tag:foo]>", "<a@[1.2.3.4>",
    "<a\x00@x.y>", "<a\r\n@x.y>", "<a\x85@x.y>", "<a@x\x00.y>",
    "<@relay.example a@x.y>", "<@:a@x.y>", "<@bad..route:a@x.y>", "<relay.example:a@x.y>",
    "<a@x.y@z>", "<a\udc80@x.y>",
    "<a@" + "\u2028.test>",
]


@pytest.mark.parametrize("path", BAD)
def test_bad_paths_raise_value_error(path: str) -> None:
    with pytest.raises(ValueError):
        parse_path(path)


def test_bare_address_only_when_allowed() -> None:
    assert parse_path("a@x.y", allow_bare=True) == Address("a", "x.y")
    with pytest.raises(ValueError):
        parse_path("a@x.y")
    with pytest.raises(ValueError):
        parse_path("a@x.y>", allow_bare=True)


def test_normalized_lowercases_local_part_only_for_comparison() -> None:
    addr = parse_mailbox("Alice.Smith@Example.TEST")
    assert str(addr) == "Alice.Smith@example.test"
    assert addr.normalized() == "alice.smith@example.test"
    assert parse_mailbox('"John Doe"@x.y').normalized() == '"john doe"@x.y'


def test_is_ascii_tells_when_smtputf8_is_needed() -> None:
    assert parse_mailbox("a@bücher.example").is_ascii  # IDNA domain needs no SMTPUTF8
    assert not parse_mailbox("jörg@x.y").is_ascii


def test_literal_flag() -> None:
    assert parse_mailbox("a@[127.0.0.1]").is_literal
    assert not parse_mailbox("a@x.y").is_literal


@pytest.mark.parametrize(("text", "parts"), [
    ("a@b", ("a", "b")),
    ('"a@b"@c', ('"a@b"', "c")),
    ('"a\\"@"@c', ('"a\\"@"', "c")),
    ("a@b@c", ("a@b", "c")),
])
def test_split_address(text: str, parts: tuple[str, str]) -> None:
    assert split_address(text) == parts


@pytest.mark.parametrize("text", ["ab", '"a@b', '"a"b@c'])
def test_split_address_errors(text: str) -> None:
    with pytest.raises(ValueError):
        split_address(text)


def test_parse_domain_forms() -> None:
    assert parse_domain("EXAMPLE.test") == "example.test"
    assert parse_domain("Bücher.Example") == "xn--bcher-kva.example"
    assert parse_domain("[IPv6:::1]") == "[IPv6:::1]"
