"""A second (third...) process with its own Store over a test's mail root, for multi-process tests.

    python tests/store_worker.py ROOT GO_FILE JOB_JSON

JOB_JSON: {"user": ..., "mailbox": "INBOX", "op": ..., "bus_dir": optional, "pg_dsn": optional
(another node: change events through PostgreSQL LISTEN/NOTIFY, store/bus_pg.py), "index_dsn": optional
(the index in that PostgreSQL database, store/index_pg.py), ...}. The worker builds
its Store, opens the mailbox and takes a snapshot (so its cached folder state exists before the
others start writing), prints "ready", waits until GO_FILE exists, does the job, prints one line
of JSON (the result) and, for jobs with "stay": true, waits for its stdin to close before closing
the Store. Ops:
    mixed      n times: append, deliver, snapshot -> {"appended": [uid...], "seen": {key: uid}}
    flags      for each uid of "uids": store_flags([uid], "flags", "add") -> {"modseqs": [[uid, modseq]...]}
    expunge    expunge "uids", then append "append" messages -> {"expunged": [...], "appended": [...]}
    copyto     n times: copy "uids" into "dest"'s INBOX, append one message to ours
               -> {"pairs": [[src uid, dest uid]...], "appended": [uid...]}
    snapshot   snapshot each of "mailboxes" -> {name: number of messages}
    folders    delete "delete", rename "rename" = [old, new] -> {}
    deliver    deliver one message -> {"delivered_at": time}
    changes    deliver one message, then store "flags" on uid 1, expunge uid 2, create "create";
               prints {"delivered_at": time} after the delivery and {"done": true} at the end
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mailhaven.store import Store

HOST = "test.host"


def message(tag: str) -> bytes:
    return f"From: w@example.test\r\nSubject: {tag}\r\nMessage-ID: <{tag}@example.test>\r\n\r\nbody {tag}\r\n".encode()


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.002)


async def run(root: Path, go: Path, job: dict[str, Any]) -> None:
    bus = job.get("bus_dir")
    extra: dict[str, Any] = {"bus_dir": Path(bus)} if bus else {}
    database = None
    if job.get("pg_dsn"):
        from mailhaven.pg import Database
        from mailhaven.store.bus_pg import PgBus

        database = Database(job["pg_dsn"], pool_size=2)
        await database.open()
        extra["peers"] = PgBus(database)
    if job.get("index_dsn"):
        from mailhaven.pg import Database
        from mailhaven.store.index_pg import PgIndexes

        extra["indexes"] = PgIndexes(Database(job["index_dsn"], pool_size=2), owns_database=True)
    store = Store(root, hostname=HOST, fsync=False, **extra)
    await store.start()
    user = job["user"]
    acc = store.account(user)
    mb = await acc.mailbox(job.get("mailbox", "INBOX"))
    await mb.snapshot()
    emit("ready")
    await asyncio.to_thread(wait_for, go)
    op = job["op"]
    me = f"{os.getpid()}"
    if op == "mixed":
        appended: list[int] = []
        seen: dict[str, int] = {}
        for i in range(job["n"]):
            appended.append(await mb.append(message(f"a{me}.{i}")))
            await store.deliver([(user, mb.name)], message(f"d{me}.{i}"))
            for m in (await mb.snapshot()).messages:
                seen[m.key] = m.uid
        emit({"appended": appended, "seen": seen})
    elif op == "flags":
        modseqs = []
        for uid in job["uids"]:
            infos = await mb.store_flags([uid], frozenset(job["flags"]), "add")
            modseqs.append([uid, infos[0].modseq])
        emit({"modseqs": modseqs})
    elif op == "expunge":
        expunged = await mb.expunge(job["uids"])
        emit({"expunged": expunged, "appended": [await mb.append(message(f"e{me}.{i}")) for i in range(job["append"])]})
    elif op == "copyto":
        dest = await store.account(job["dest"]).mailbox("INBOX")
        uids = job["uids"]
        pairs, appended = [], []
        for i in range(job["n"]):
            pairs += await mb.copy(uids, dest)
            appended.append(await mb.append(message(f"o{me}.{i}")))  # the other copies in here meanwhile
        emit({"pairs": pairs, "appended": appended})
    elif op == "snapshot":
        emit({name: len((await (await acc.mailbox(name)).snapshot()).messages) for name in job["mailboxes"]})
    elif op == "folders":
        if job.get("delete"):
            await acc.delete_mailbox(job["delete"])
        if job.get("rename"):
            await acc.rename_mailbox(*job["rename"])
        emit({})
    elif op == "deliver":
        await store.deliver([(user, mb.name)], message(f"d{me}"))
        emit({"delivered_at": time.time()})
    elif op == "changes":
        await store.deliver([(user, mb.name)], message(f"c{me}"))
        emit({"delivered_at": time.time()})
        await asyncio.sleep(0.3)
        await mb.store_flags([1], frozenset(job["flags"]), "add")
        await asyncio.sleep(0.3)
        await mb.expunge([2])
        await asyncio.sleep(0.3)
        await acc.create_mailbox(job["create"])
        emit({"done": True})
    else:
        raise SystemExit(f"unknown op {op}")
    if job.get("stay"):
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await store.close()
    if database is not None:
        await database.close()


if __name__ == "__main__":
    asyncio.run(run(Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])))
