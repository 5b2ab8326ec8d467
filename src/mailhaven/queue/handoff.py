"""The queue as a worker other than 0 sees it ([server] workers > 1): hand entries to the runner.

Owns: writing what this worker queues durably into its partition `<data>/queue/worker-<i>/` (the
same Spool code, so `submit` returns only after the fsyncs, and the caller's 250 still means
durable), and answering the queue's other questions with "ask worker 0".
Does not own: delivery, retries, bounces (queue/manager.py in worker 0 loads the partitions and
rescans them every second, or at once on the wake-up datagram `submit` sends to
`<data>/queue/wake.sock`: queue/spool.py `scan_partitions`), the control socket (worker 0's).

    ctx.queue = HandoffQueue(config.queue_root, worker=1)   # app.run for worker i > 0
    await ctx.queue.submit(sender, rcpts, data, source=...)  # cleanup.enqueue, as with QueueManager
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from pathlib import Path

from mailhaven.message.dsn import DsnRequest
from mailhaven.queue.spool import WAKE_SOCKET, Spool, partition_name


class QueueElsewhere(Exception):
    """This worker does not run the queue; `str()` says who does."""


class HandoffQueue:
    """seams.Queue for worker `worker` > 0: submit writes into its partition; nothing is run here."""

    def __init__(self, queue_root: Path, *, worker: int, fsync: bool = True) -> None:
        if worker < 1:
            raise ValueError("worker 0 runs the queue itself (queue/manager.py)")
        self.worker = worker
        self.spool = Spool(Path(queue_root) / partition_name(worker), fsync=fsync)
        self.wake_path = Path(queue_root) / WAKE_SOCKET

    async def submit(self, sender: str, recipients: list[str], message: bytes, *, source: str = "",
                     entry_id: str | None = None, programs: Sequence[tuple[str, str, str]] = (),
                     dsn: DsnRequest | None = None) -> str:
        """Store the entry durably in this worker's partition; worker 0 delivers it (within about
        a second). Raises TempFailure on disk trouble (nothing left behind)."""
        entry = await self.spool.add(sender, recipients, message, source=source, entry_id=entry_id,
                                     programs=programs, dsn=dsn)
        self._wake()
        return entry.id

    def _wake(self) -> None:
        """Tell the runner to look now (one datagram, never blocking); if it is not listening,
        its scan every second finds the entry anyway."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            with contextlib.suppress(OSError):
                s.sendto(b"!", str(self.wake_path))

    async def load(self) -> None:
        """Nothing to load: this worker never reads its partition back."""

    async def run(self) -> None:
        """Nothing to run here: worker 0 runs the queue."""

    def stats(self) -> tuple[int, float]:
        return 0, 0.0  # the metrics sum over workers: worker 0 counts every entry

    def _elsewhere(self) -> QueueElsewhere:
        return QueueElsewhere(f"worker {self.worker} does not run the queue: ask worker 0 (the control socket)")

    def list_entries(self) -> list[dict[str, object]]:
        raise self._elsewhere()

    async def overview(self) -> list[dict[str, object]]:
        raise self._elsewhere()

    async def show(self, entry_id: str) -> dict[str, object] | None:
        raise self._elsewhere()

    async def headers(self, entry_id: str) -> dict[str, str] | None:
        raise self._elsewhere()

    async def retry(self, entry_id: str) -> bool:
        raise self._elsewhere()

    async def flush(self) -> int:
        raise self._elsewhere()

    async def delete(self, entry_id: str) -> bool:
        raise self._elsewhere()


__all__ = ["HandoffQueue", "QueueElsewhere"]
