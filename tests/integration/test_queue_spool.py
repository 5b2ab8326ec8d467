"""queue/spool.py on a real directory: durable entries, atomic updates, cleaning crash leftovers."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailhaven.delivery.result import DeliveryResult
from mailhaven.queue.spool import Spool, valid_id

MSG = b"Subject: x\r\n\r\nbody\r\n"


async def test_added_entry_survives_a_reload_with_every_field(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q")
    await spool.load()
    e = await spool.add("alice@example.test", ["bob@b.test", "carol@c.test"], MSG, source="submission")
    assert valid_id(e.id) and e.size == len(MSG)
    e.recipients[0].state = "delivered"
    e.recipients[0].attempts = 1
    e.recipients[0].last = DeliveryResult.ok("bob@b.test", "queued as 123", remote_mta="mx.b.test")
    e.recipients[1].state = "failed"
    e.recipients[1].last = DeliveryResult.perm("carol@c.test", "no such user", enhanced="5.1.1")
    e.attempts, e.delay_warning_sent, e.next_attempt = 2, True, 1234.5
    await spool.save(e)
    [again] = await Spool(tmp_path / "q").load()
    assert again == e
    assert await spool.read(e.id) == MSG
    assert stat.S_IMODE((tmp_path / "q" / f"{e.id}.msg").stat().st_mode) == 0o600


async def test_remove_deletes_both_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q")
    await spool.load()
    e = await spool.add("", ["bob@b.test"], MSG)
    await spool.remove(e.id)
    assert os.listdir(tmp_path / "q") == []
    assert await Spool(tmp_path / "q").load() == []


async def test_load_cleans_what_a_crash_left_and_quarantines_broken_envelopes(tmp_path: Path) -> None:
    root = tmp_path / "q"
    spool = Spool(root)
    await spool.load()
    good = await spool.add("a@example.test", ["bob@b.test"], MSG)
    (root / "6B000000AAAAAAAAAA.msg").write_bytes(MSG)  # never acknowledged: no envelope
    (root / ".6B000000BBBBBBBBBB.msg.tmp").write_bytes(b"half")  # write cut short
    (root / "6B000000CCCCCCCCCC.env").write_bytes(json.dumps(good.to_json() | {"id": "6B000000CCCCCCCCCC"}).encode())
    (root / "6B000000DDDDDDDDDD.msg").write_bytes(MSG)
    (root / "6B000000DDDDDDDDDD.env").write_bytes(b"{not json")
    entries = await Spool(root).load()
    assert [e.id for e in entries] == [good.id]
    assert sorted(os.listdir(root)) == sorted([f"{good.id}.env", f"{good.id}.msg", "corrupt"])
    assert sorted(os.listdir(root / "corrupt")) == ["6B000000CCCCCCCCCC.env", "6B000000DDDDDDDDDD.env",
                                                    "6B000000DDDDDDDDDD.msg"]


def test_queue_ids_cannot_name_other_files() -> None:
    assert not valid_id("../../etc/passwd") and not valid_id("") and not valid_id("abc")
    assert valid_id("6B06CB884988C67467")


# --- durability: what is fsynced, and in which order, before add() returns ----------------------------

Event = tuple[str, str, str]  # ("fsync", path, size in octets or "" for a directory) | ("rename", src, dst)


def _record_fs(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Record every os.fsync (by the path its descriptor names, with the file's size then), os.rename
    and os.replace, whoever calls them (spool.py or the store helpers it uses), in order."""
    events: list[Event] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        size = "" if os.path.isdir(path) else str(os.fstat(fd).st_size)
        real_fsync(fd)
        events.append(("fsync", path, size))

    def rename(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
        real_rename(src, dst, *a, **kw)
        events.append(("rename", os.fspath(src), os.fspath(dst)))

    def replace(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
        real_replace(src, dst, *a, **kw)
        events.append(("rename", os.fspath(src), os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _check_durable_add(events: list[Event], root: Path, entry_id: str, msg_size: int, *,
                       new_root: bool = False) -> None:
    """The .msg and the .env are each written to a temporary name, fsynced with all their bytes,
    then renamed into place (.msg first: an entry exists once its .env does), and the queue
    directory is fsynced after both renames. new_root: the queue directory was just created, so
    its parent was fsynced before the message was written."""
    root = root.resolve()
    if new_root:
        parent = [i for i, e in enumerate(events) if e == ("fsync", str(root.parent), "")]
        first_write = [i for i, e in enumerate(events) if e[0] == "fsync" and e[1].startswith(str(root) + "/")]
        assert parent and first_write and parent[0] < first_write[0], events
    msg, env = str(root / f"{entry_id}.msg"), str(root / f"{entry_id}.env")

    def index(pred: Any, what: str) -> int:
        hits = [i for i, e in enumerate(events) if pred(e)]
        assert hits, f"no {what} in {events}"
        return hits[-1]

    msg_rename = index(lambda e: e[0] == "rename" and e[2] == msg, ".msg rename")
    env_rename = index(lambda e: e[0] == "rename" and e[2] == env, ".env rename")
    msg_tmp, env_tmp = events[msg_rename][1], events[env_rename][1]
    assert msg_tmp != msg and os.path.dirname(msg_tmp) == str(root)  # written aside, then renamed
    assert env_tmp != env and os.path.dirname(env_tmp) == str(root)
    msg_fsync = index(lambda e: e[0] == "fsync" and e[1] == msg_tmp, "fsync of the message file")
    env_fsync = index(lambda e: e[0] == "fsync" and e[1] == env_tmp, "fsync of the envelope file")
    assert events[msg_fsync][2] == str(msg_size)  # fsynced once every byte was written
    assert int(events[env_fsync][2]) == os.path.getsize(env)
    dir_fsync = index(lambda e: e[0] == "fsync" and e[1] == str(root), "fsync of the queue directory")
    assert msg_fsync < msg_rename < env_rename, events
    assert env_fsync < env_rename < dir_fsync, events


async def test_add_fsyncs_message_envelope_and_directory_before_it_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "q")
    await spool.load()
    events = _record_fs(monkeypatch)
    entry = await spool.add("alice@example.test", ["bob@b.test"], MSG)
    at_return = list(events)  # what had happened when the caller could answer 250
    _check_durable_add(at_return, tmp_path / "q", entry.id, len(MSG))


async def test_the_submission_path_returns_only_after_the_spool_fsyncs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., Any]) -> None:
    """cleanup.enqueue (what submission calls before its 250) -> QueueManager.submit -> Spool.add."""
    from mailhaven import app, cleanup
    from mailhaven.queue.manager import QueueManager

    cfg = make_config(hostname="mail.example.test")
    ctx = app.build_context(cfg)
    await ctx.store.start()
    try:
        ctx.queue = QueueManager(ctx)  # not running: nothing but submit() touches the spool
        await ctx.queue.load()
        events = _record_fs(monkeypatch)
        qid = await cleanup.enqueue(ctx, "alice@example.test", ["bob@b.test"], MSG, dkim=False)
        at_return = list(events)
        stored = (Path(cfg.queue_root) / f"{qid}.msg").read_bytes()
        assert stored.endswith(MSG)  # the message as cleanup prepared it (Date, Message-ID added)
        _check_durable_add(at_return, Path(cfg.queue_root), qid, len(stored))
    finally:
        await ctx.store.close()


@pytest.mark.parametrize("first", ["load", "add"])
async def test_a_new_queue_directory_is_made_durable_in_its_parent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str) -> None:
    """The first message acknowledged after the first start must not vanish with a queue directory
    whose own entry in the data directory was never fsynced."""
    events = _record_fs(monkeypatch)
    spool = Spool(tmp_path / "q")
    if first == "load":
        await spool.load()
    entry = await spool.add("alice@example.test", ["bob@b.test"], MSG)
    _check_durable_add(events, tmp_path / "q", entry.id, len(MSG), new_root=True)
