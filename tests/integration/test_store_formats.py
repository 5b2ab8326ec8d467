"""On-disk formats of the store: uidlist files (ours and Dovecot's), file names, CRLF conversion."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhaven.store import Store, maildir, uidlist

ALICE = "alice@example.test"


def test_uidlist_round_trip_and_torn_last_line_is_ignored(tmp_path: Path) -> None:
    uidlist.rewrite(tmp_path, 1234, 10, {"k1": 3, "k2": 7}, fsync=False)
    assert (tmp_path / "mailhaven-uidlist").read_text() == "M1 V1234 N10\n3 k1\n7 k2\n"
    uidlist.append(tmp_path, [(10, "k3"), (11, "k4")])
    with open(tmp_path / "mailhaven-uidlist", "a") as fh:
        fh.write("12 k5-torn")  # a crash in the middle of an append
    got = uidlist.read(tmp_path)
    assert got is not None
    assert (got.uidvalidity, got.uids) == (1234, {"k1": 3, "k2": 7, "k3": 10, "k4": 11})
    assert got.effective_uidnext == 12


def test_uidlist_append_without_file_asks_for_a_rewrite(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        uidlist.append(tmp_path, [(1, "k")])


def test_dovecot_uidlist_version_1_is_understood(tmp_path: Path) -> None:
    (tmp_path / "dovecot-uidlist").write_text("1 777 5\n1 a.b.c:2,S\n4 d.e.f\n")
    got = uidlist.read_dovecot(tmp_path)
    assert got is not None
    assert (got.uidvalidity, got.uidnext, got.uids) == (777, 5, {"a.b.c": 1, "d.e.f": 4})


@settings(max_examples=300)
@given(st.binary(max_size=300), st.sampled_from(["mailhaven-uidlist", "dovecot-uidlist"]))
def test_hostile_uidlist_files_never_raise(data: bytes, fname: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        for prefix in (b"", b"M1 V5 N9\n", b"M1 V5 N9 H77\nH", b"3 V5 N9 G00\n", b"1 5 9\n"):
            (Path(d) / fname).write_bytes(prefix + data)
            got = uidlist.read(Path(d)) if fname == "mailhaven-uidlist" else uidlist.read_dovecot(Path(d))
            if got is not None:
                assert got.uidvalidity > 0
                assert all(u > 0 for u in got.uids.values())
                assert 0 <= got.modseq < 1 << 63  # a MODSEQ reservation (RFC 7162 §7 range)


@settings(max_examples=500)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"\r\r\n", b"xyz"]), max_size=80),
       st.integers(min_value=1, max_value=9))
def test_crlf_conversion_in_slices_equals_whole_conversion(parts: list[bytes], chunk: int) -> None:
    data = b"".join(parts)
    expected = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    old = maildir._CHUNK
    maildir._CHUNK = chunk
    try:
        assert maildir.to_crlf(data) == expected
    finally:
        maildir._CHUNK = old
    assert maildir.crlf_size(data) == len(expected)


@pytest.mark.parametrize(("fname", "key", "suffix"), [
    ("1.M2P3Q4.h,S=5,W=6:2,RS", "1.M2P3Q4.h,S=5,W=6", ":2,RS"),
    ("1.M2P3Q4.h,S=5", "1.M2P3Q4.h,S=5", ""),
    ("odd:1,experimental", "odd", ":1,experimental"),
])
def test_file_names_split_into_key_and_flag_suffix(fname: str, key: str, suffix: str) -> None:
    assert maildir.split_name(fname) == (key, suffix)


def test_flag_letters_are_sorted_and_unknown_letters_are_kept() -> None:
    assert maildir.build_info({"\\Seen", "\\Draft", "\\Answered"}, "Pa") == "DPRSa"
    assert maildir.info_flags("DPRSa") == frozenset({"\\Draft", "\\Answered", "\\Seen"})
    assert maildir.key_sizes("1.M2.h,S=10,W=12") == (10, 12)
    assert maildir.key_sizes("1.M2.h") == (None, None)


def test_host_names_are_escaped_in_unique_names() -> None:
    base = maildir.unique_base("a/b:c,d")
    assert base.endswith(".a\\057b\\072c\\054d")
    assert maildir.parse_base(base) is not None


async def test_snapshots_during_concurrent_deliveries_assign_each_message_one_uid(tmp_path: Path) -> None:
    store = Store(tmp_path / "mail", hostname="test.host")
    mb = await store.account(ALICE).mailbox("INBOX")
    seen: dict[str, int] = {}
    stop = asyncio.Event()

    async def watcher() -> None:
        while not stop.is_set():
            for m in (await mb.snapshot()).messages:
                assert seen.setdefault(m.key, m.uid) == m.uid  # a key never changes its UID
            await asyncio.sleep(0)

    task = asyncio.create_task(watcher())
    await asyncio.gather(*(store.deliver([(ALICE, "INBOX")], b"m %d\n" % i) for i in range(300)))
    stop.set()
    await task
    final = (await mb.snapshot()).messages
    assert len(final) == 300 and len({m.uid for m in final}) == 300
    for m in final:
        assert seen.setdefault(m.key, m.uid) == m.uid
    await store.close()
