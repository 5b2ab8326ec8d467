"""queue/spool.py on a real directory: durable entries, atomic updates, cleaning crash leftovers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

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
