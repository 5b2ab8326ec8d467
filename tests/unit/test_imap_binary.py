"""BINARY (RFC 3516), MULTIAPPEND (RFC 3502), COMPRESS (RFC 4978) and UTF8=ACCEPT (RFC 6855):
the decoders of imap/binary.py (hypothesis round trips) and dialogues through the sans-IO session
(tests/unit/test_imap_core.py's Dialogue, a real Maildir store)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mailhaven.imap import binary
from mailhaven.imap.compress import MAX_INFLATE, Deflate
from mailhaven.message import mime
from tests.unit.test_imap_core import ALICE, logged_in, selected


@pytest.fixture
async def ctx(make_config: Callable[..., Any]) -> AsyncIterator[Any]:
    from mailhaven.auth.users import Directory, UsersFile
    from mailhaven.store import Store

    cfg = make_config()
    store = Store(cfg.mail_root, hostname=cfg.hostname, fsync=False)
    await store.start()
    try:
        yield SimpleNamespace(config=cfg, store=store, directory=Directory(cfg, UsersFile.load(cfg.users_file)))
    finally:
        await store.close()


# imaptest's fetch-binary-mime-qp part, and what Dovecot 2.3 makes of it (65 octets)
QP_BODY = (b"hello  \r\nbar=\r\n\r\nfoo\t=\r\nbar\r\nfoo\t \t= \r\n=62\r\nfoo = \t\r\nbar\r\nfoo =\r\n=62\r\n"
           b"foo  \r\nbar=\r\n\r\nfoo_bar\r\n")
QP_DECODED = b"hello\r\nbar\r\nfoo\tbar\r\nfoo\t \tb\r\nfoo bar\r\nfoo b\r\nfoo\r\nbar\r\nfoo_bar\r\n"

MIXED = (b"From: a@b\r\nSubject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
         b"pre\r\n--XX\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
         b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         b"AAEC\r\nAw==\r\n"
         b"--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\n"
         b"caf=C3=A9 =\r\nau lait\r\n"
         b"--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n"
         b"--XX--\r\nepilogue\r\n")


def test_qp_decoding_is_dovecots() -> None:
    assert binary.decode_qp(QP_BODY) == QP_DECODED
    assert len(QP_DECODED) == 65
    assert binary.decode_qp(b"=3D=3d=\r\nx = \r\ny\r\n=") == b"==x y\r\n"  # either case; soft breaks
    for broken in (b"=ZZ", b"=4", b"a=\r\n=4x"):  # as Dovecot 2.3: NO [PARSE]
        with pytest.raises(binary.InvalidData):
            binary.decode_qp(broken)


@given(st.binary(max_size=300))
def test_qp_round_trip(data: bytes) -> None:
    assert binary.decode_qp(binascii.b2a_qp(data, quotetabs=True, istext=False)) == data


@given(st.binary(max_size=300), st.integers(1, 76), st.sampled_from([b"\r\n", b"\n", b" \t", b"\r\n  "]))
def test_base64_round_trip_with_folding_and_junk(data: bytes, width: int, sep: bytes) -> None:
    text = base64.b64encode(data)
    folded = sep.join(text[i:i + width] for i in range(0, len(text), width))
    assert binary.decode_base64(folded) == data


def test_base64_that_does_not_decode_is_invalid_data() -> None:
    assert binary.decode_base64(b" AA EC\r\n\tAw==\r\n") == b"\x00\x01\x02\x03"
    assert binary.decode_base64(b"") == b""
    for broken in (b"aGVsbG8", b"AAEC!!", b"aGk=\r\nmore", b"a"):  # as Dovecot 2.3 (NO [PARSE] or BYE)
        with pytest.raises(binary.InvalidData):
            binary.decode_base64(broken)


def test_sections_leaf_whole_message_and_missing_part() -> None:
    tree = mime.parse(MIXED)
    assert binary.section(MIXED, tree, (1,)) == binary.Decoded(b"plain", False)
    assert binary.section(MIXED, tree, (2,)) == binary.Decoded(b"\x00\x01\x02\x03", True)
    assert binary.section(MIXED, tree, (3,)) == binary.Decoded("café au lait".encode(), True)
    assert binary.section(MIXED, tree, (9,)) == binary.Decoded(b"", False)
    try:
        binary.section(MIXED, tree, (4,))
    except binary.UnknownCte as e:
        assert str(e) == "x-uuencode"
    else:
        raise AssertionError("x-uuencode decoded")
    plain = MIXED.replace(b"--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n",
                          b"")
    whole = binary.section(plain, mime.parse(plain), ())
    # BINARY[]: every leaf decoded, its CTE field replaced (as Dovecot's index-mail-binary.c)
    assert whole.binary
    assert whole.data == (
        b"From: a@b\r\nSubject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
        b"pre\r\n--XX\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
        b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        b"\x00\x01\x02\x03\r\n"
        b"--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\n\r\n" + "café au lait".encode()
        + b"\r\n--XX--\r\nepilogue\r\n")


@given(st.binary(max_size=2000))
def test_deflate_round_trip_in_bounded_pieces(data: bytes) -> None:
    client, server = Deflate(), Deflate()
    wire = client.deflate(data)
    got = server.inflate(wire)
    while server.pending:
        got += server.inflate(b"")
    assert got == data


def test_inflate_of_a_bomb_comes_out_in_bounded_pieces() -> None:
    client, server = Deflate(), Deflate()
    wire = client.deflate(b"\0" * (4 * MAX_INFLATE + 5))
    assert len(wire) < 10_000
    sizes = [len(server.inflate(wire))]
    while server.pending:
        sizes.append(len(server.inflate(b"")))
    assert max(sizes) <= MAX_INFLATE and sum(sizes) == 4 * MAX_INFLATE + 5


# -- dialogues --------------------------------------------------------------------------------------


UUENCODED_PART = b"--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n"


async def test_fetch_binary_size_partial_peek_and_seen(ctx: Any) -> None:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    await mb.append(MIXED.replace(UUENCODED_PART, b""))
    await mb.append(MIXED)
    d = await selected(ctx, 0)
    out = await d.send(b"f1 FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2] BINARY.PEEK[1]<1.3> BINARY.SIZE[3])\r\n")
    assert out == (b"* 1 FETCH (BINARY.SIZE[2] 4 BINARY[2] ~{4}\r\n\x00\x01\x02\x03 BINARY[1]<1> {3}\r\nlai"
                   b" BINARY.SIZE[3] 13)\r\nf1 OK Fetch completed.\r\n")
    out = await d.send(b"f2 FETCH 1 (FLAGS)\r\n")
    assert b"\\Seen" not in out  # PEEK and SIZE leave \Seen alone
    out = await d.send(b"f3 UID FETCH 1 BINARY[3]<5.100>\r\n")
    assert out == (b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) BINARY[3]<5> ~{8}\r\n au lait)\r\n"
                   b"f3 OK UID Fetch completed.\r\n")  # BINARY sets \Seen (RFC 3516 §4.2)
    assert (await d.command(b"f5 FETCH 1 BINARY.PEEK[1.TEXT]"))[-1].startswith(b"f5 BAD ")


async def test_unknown_cte_fails_the_fetch_after_what_was_rendered(ctx: Any) -> None:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    await mb.append(MIXED.replace(UUENCODED_PART, b""))
    await mb.append(MIXED)
    d = await selected(ctx, 0)
    # as Dovecot 2.3: the messages before, the failing one's items so far (else its UID), then NO
    assert await d.command(b"f1 FETCH 1:2 (BINARY.PEEK[1] BINARY.PEEK[4])") == [
        b"* 1 FETCH (BINARY[1] {5}", b"plain BINARY[4] {0}", b")", b"* 2 FETCH (BINARY[1] {5}", b"plain)",
        b"f1 NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding"]
    assert await d.command(b"f2 FETCH 2 (BINARY.SIZE[1])") == [  # worked out over the whole message
        b"* 2 FETCH (UID 2)", b"f2 NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding"]
    assert await d.command(b"f3 FETCH 2 (BINARY.SIZE[9])") == [b"* 2 FETCH (BINARY.SIZE[9] 0)", b"f3 OK Fetch completed."]
    bad = MIXED.replace(b"AAEC\r\nAw==", b"AAEC!!")
    await mb.append(bad)
    await d.command(b"n1 NOOP")
    assert await d.command(b"f4 FETCH 3 (BINARY.PEEK[2])") == [
        b"* 3 FETCH (UID 3)", b"f4 NO [PARSE] Invalid data in MIME part"]


async def test_append_literal8_keeps_binary_parts_exact_and_binary_gives_them_back(ctx: Any) -> None:
    d = await selected(ctx, 0)
    # a binary part is stored base64-encoded (as Dovecot 2.3), so its bare LF and CR survive
    msg = (b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: binary\r\n\r\n\x00-\xe4\n\r\n\n")
    out = await d.send(b"a1 APPEND INBOX ~{%d+}\r\n%s\r\n" % (len(msg), msg))
    assert out.endswith(b"a1 OK [APPENDUID %d 1] Append completed.\r\n" % d.session.sel.uidvalidity)
    out = await d.send(b"a2 FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1] BODY.PEEK[])\r\n")
    assert out.startswith(b"* 1 FETCH (BINARY.SIZE[1] 7 BINARY[1] ~{7}\r\n\x00-\xe4\n\r\n\n BODY[] {108}\r\n"
                          b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
                          b"Content-Transfer-Encoding: base64\r\n\r\nAC3kCg0KCg==)\r\n"), out
    # a NUL in a part with no transfer encoding: as is in BINARY (literal8), 0x80 in BODY
    msg = b"Subject: nul\r\n\r\na\x00b\r\n"
    out = await d.send(b"a3 APPEND INBOX ~{%d+}\r\n%s\r\na4 NOOP\r\n" % (len(msg), msg))
    out = await d.send(b"a5 FETCH 2 (BINARY.PEEK[1] BODY.PEEK[TEXT])\r\n")
    assert b"BINARY[1] ~{5}\r\na\x00b\r\n BODY[TEXT] {5}\r\na\x80b\r\n)" in out


async def test_multiappend_stores_all_with_one_appenduid_set(ctx: Any) -> None:
    d = await logged_in(ctx)
    await d.command(b"c1 CREATE Box")
    out = await d.send(b"a1 APPEND Box (\\Seen) {5+}\r\none\r\n {5+}\r\ntwo\r\n ~{7+}\r\nthree\r\n\r\n")
    mb = await ctx.store.account(ALICE).mailbox("Box")
    assert out == b"a1 OK [APPENDUID %d 1:3] Append completed.\r\n" % mb.uidvalidity
    snap = await mb.snapshot()
    assert [(m.uid, "\\Seen" in m.flags) for m in snap.messages] == [(1, True), (2, False), (3, False)]
    assert [await mb.read(u) for u in (1, 2, 3)] == [b"one\r\n", b"two\r\n", b"three\r\n"]


async def test_multiappend_with_one_bad_message_keeps_none(ctx: Any) -> None:
    d = await logged_in(ctx)
    out = await d.send(b"a1 APPEND INBOX {5+}\r\none\r\n {0+}\r\n\r\n")
    assert out == b"a1 NO Can't save a zero byte message.\r\n"
    assert (await (await ctx.store.account(ALICE).mailbox("INBOX")).snapshot()).messages == []


async def test_compress_starts_once_after_the_ok_and_is_advertised_until_then(ctx: Any) -> None:
    d = await logged_in(ctx)
    assert b"COMPRESS=DEFLATE" in b"".join(await d.command(b"c0 CAPABILITY"))
    assert await d.command(b"c1 COMPRESS DEFLATE") == [b"c1 OK Begin compression."]
    assert d.compress_requests == 1
    assert await d.command(b"c2 COMPRESS DEFLATE") == [
        b"c2 NO [COMPRESSIONACTIVE] COMPRESSION=DEFLATE already enabled."]
    assert b"COMPRESS=DEFLATE" not in b"".join(await d.command(b"c3 CAPABILITY"))
    assert d.compress_requests == 1


async def test_compress_refusals(ctx: Any) -> None:
    d = await logged_in(ctx)
    assert await d.command(b"c1 COMPRESS GZIP") == [b"c1 NO Unknown compression mechanism"]
    out = await d.send(b"c2 COMPRESS DEFLATE\r\nc3 NOOP\r\n")  # must wait for the OK
    assert out.startswith(b"c2 BAD Client did not wait for COMPRESS reply")
    assert d.compress_requests == 0


@given(st.binary(max_size=500))
def test_a_stored_binary_part_comes_back_exact(body: bytes) -> None:
    assume(b"--b" not in body and b"\n" not in body[-1:])  # no boundary inside, nor a line end eating into it
    msg = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Transfer-Encoding: BINARY\r\n\r\n" + body + b"\r\n--b--\r\n")
    stored = mime.to_crlf(binary.storable(msg))  # what the store keeps
    assert binary.section(stored, mime.parse(stored), (1,)).data == body


# -- UTF8=ACCEPT (RFC 6855) ---------------------------------------------------------------------------


async def test_utf8_accept_switches_mailbox_names_to_utf8(ctx: Any) -> None:
    other = await logged_in(ctx)
    d = await logged_in(ctx)
    assert b"UTF8=ACCEPT" in b"".join(await d.command(b"c0 CAPABILITY"))
    assert (await d.command('c1 CREATE "Bäh"'.encode()))[-1].startswith(b"c1 NO ")  # not modified UTF-7
    assert await d.command(b"e1 ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT", b"e1 OK Enabled."]
    assert (await d.command('c2 CREATE "Bäh"'.encode()))[-1].endswith(b"] Create completed.")  # [MAILBOXID]
    assert (await d.command(b"c3 CREATE A&B"))[-1].startswith(b"c3 OK ")  # "&" is itself now
    assert await d.command(b'l1 LIST "" "B*"') == ['* LIST (\\HasNoChildren) "." "Bäh"'.encode(),
                                                         b"l1 OK List completed."]
    assert (await d.command('s1 STATUS "Bäh" (MESSAGES)'.encode()))[0] == '* STATUS "Bäh" (MESSAGES 0)'.encode()
    # a session that did not enable it sees modified UTF-7
    listed = await other.command(b'l2 LIST "" "*"')
    assert b'* LIST (\\HasNoChildren) "." A&-B' in listed and b'* LIST (\\HasNoChildren) "." B&AOQ-h' in listed


async def test_append_utf8_data_needs_utf8_accept(ctx: Any) -> None:
    d = await logged_in(ctx)
    msg = "Subject: Grüße\r\n\r\nhi\r\n".encode()
    out = await d.send(b"a1 APPEND INBOX UTF8 (~{%d+}\r\n%s)\r\n" % (len(msg), msg))
    assert out.startswith(b"a1 BAD ")
    await d.command(b"e1 ENABLE UTF8=ACCEPT")
    out = await d.send(b"a2 APPEND INBOX UTF8 (~{%d+}\r\n%s)\r\n" % (len(msg), msg))
    assert out.startswith(b"a2 OK [APPENDUID "), out
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    assert await mb.read(1) == msg


@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30))
def test_utf8_mailbox_names_round_trip_through_the_wire(name: str) -> None:
    from mailhaven.imap.commands import Select
    from mailhaven.imap.listing import wire_name
    from mailhaven.imap.parser import parse_bytes

    wire = wire_name(name, utf8=True)
    cmd = parse_bytes(b"a SELECT " + wire, utf8=True)
    assert isinstance(cmd, Select)
    assert cmd.mailbox == ("INBOX" if name.upper() == "INBOX" else name)


# -- IMAP4rev2 (RFC 9051) --------------------------------------------------------------------------------


async def test_enable_imap4rev2_drops_recent_and_answers_search_as_esearch(ctx: Any) -> None:
    mb = await ctx.store.account(ALICE).mailbox("INBOX")
    for i in range(3):
        await mb.append(b"Subject: m%d\r\n\r\nbody\r\n" % i)
    d = await logged_in(ctx)
    assert b" IMAP4rev1 IMAP4rev2 " in b"".join(await d.command(b"c0 CAPABILITY"))
    assert await d.command(b"e1 ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2", b"e1 OK Enabled."]
    lines = await d.command(b"s1 SELECT INBOX")
    assert b"* 3 EXISTS" in lines and not any(b"RECENT" in ln or b"UNSEEN" in ln for ln in lines)
    assert b'* LIST (\\HasNoChildren) "." INBOX' in lines  # RFC 9051 §6.3.2
    assert await d.command(b"f1 FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())", b"f1 OK Fetch completed."]
    assert await d.command(b"x1 SEARCH ALL") == [b'* ESEARCH (TAG "x1") ALL 1:3', b"x1 OK Search completed."]
    assert await d.command(b"x2 UID SEARCH SUBJECT m1") == [b'* ESEARCH (TAG "x2") UID ALL 2',
                                                            b"x2 OK UID Search completed."]
    assert await d.command(b"x3 SEARCH SUBJECT nothing") == [b'* ESEARCH (TAG "x3")', b"x3 OK Search completed."]
    assert await d.command(b"x4 SEARCH RETURN (COUNT) ALL") == [b'* ESEARCH (TAG "x4") COUNT 3',
                                                                b"x4 OK Search completed."]
    await mb.append(b"Subject: new\r\n\r\nbody\r\n")
    assert await d.command(b"n1 NOOP") == [b"* 4 EXISTS", b"n1 OK NOOP completed."]  # and no RECENT
    # an IMAP4rev1 session beside it is as before
    other = await logged_in(ctx)
    lines = await other.command(b"s2 EXAMINE INBOX")
    assert b"* 4 RECENT" in lines or any(re.fullmatch(rb"\* \d+ RECENT", ln) for ln in lines)
    assert (await other.command(b"x5 SEARCH ALL"))[0] == b"* SEARCH 1 2 3 4"


async def test_imap4rev2_mailbox_names_are_utf8(ctx: Any) -> None:
    d = await logged_in(ctx)
    await d.command(b"e1 ENABLE IMAP4rev2")
    assert (await d.command('c1 CREATE "Ünïcode.sub"'.encode()))[-1].startswith(b"c1 OK ")
    lines = await d.command('s1 EXAMINE "Ünïcode.sub"'.encode())
    assert '* LIST (\\HasNoChildren) "." "Ünïcode.sub"'.encode() in lines, lines
    assert await d.command(b'l1 LIST "" "*code"') == ['* LIST (\\HasChildren) "." "Ünïcode"'.encode(),
                                                     b"l1 OK List completed."]
