"""A JSON-lines audit sink: one event per line, appended by a writer task.

``emit`` only puts the event on a queue, so the relay never waits for the disk; the writer task
appends in batches and fsyncs after each batch, so a written batch survives a crash.  Like the
store's writer it lingers a moment (50 ms) after the first event of a batch: a bulk FETCH emits
hundreds of rows, and one write and fsync for all of them costs far less than one per dozen.  ``close``
drains the queue: no event accepted by ``emit`` is lost on a clean shutdown.  A failed write
(full disk, vanished volume) is retried from the exact octet where it stopped, so nothing is
lost or written twice, and it is logged at ERROR until it succeeds.  The file is created with
mode 0600 since it names people and what they did.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from gateway.audit.events import AuditEvent

__all__ = ["JsonLinesSink"]

log = logging.getLogger(__name__)


_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True)


def _lines(events: list[AuditEvent]) -> bytes:
    encode = _ENCODER.encode
    return "".join([encode(e.to_dict()) + "\n" for e in events]).encode("utf-8")


class JsonLinesSink:
    """Appends events as JSON lines to ``path``."""

    def __init__(self, path: Path, *, batch: int = 1000, linger: float = 0.05) -> None:
        self.path = Path(path)
        self._queue: asyncio.Queue[AuditEvent | None] = asyncio.Queue()
        self._batch = batch
        self._linger = linger
        self._inflight = 0  # events taken off the queue and not yet written
        self._task: asyncio.Task | None = None
        self._accepting = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._writer(), name="audit-jsonl")

    def emit(self, event: AuditEvent) -> None:
        self._queue.put_nowait(event)

    @property
    def depth(self) -> int:
        """Events accepted by ``emit`` and not yet written and fsync'd."""
        return self._queue.qsize() + self._inflight

    @property
    def accepting(self) -> bool:
        """False while writes to the file fail (the events wait in memory; fail closed)."""
        return self._accepting

    async def _writer(self) -> None:
        while True:
            item = await self._queue.get()
            if item is not None and self._linger and self._queue.qsize() < self._batch:
                await asyncio.sleep(self._linger)
            batch = [item]
            while len(batch) < self._batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            events = [e for e in batch if e is not None]
            self._inflight = len(events)
            if events:  # serialised off the event loop: it is the relay's thread
                await self._write_until_done(await asyncio.to_thread(_lines, events))
            self._inflight = 0
            if None in batch:
                return

    async def _write_until_done(self, data: bytes) -> None:
        """Write one batch and fsync it, retrying on I/O errors from where the write stopped."""
        view = memoryview(data)
        delay, last_report = 0.5, 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                while view:
                    view = view[await asyncio.to_thread(self._write_some, view):]
                await asyncio.to_thread(os.fsync, self._fd)
                self._accepting = True
                if last_report:
                    log.error("audit file %s writable again; %d events were waiting", self.path, self.depth)
                return
            except OSError as exc:
                self._accepting = False
                now = loop.time()
                if now - last_report >= 60:
                    log.error("cannot write the audit file %s (%s); %d events waiting, retrying",
                              self.path, exc.strerror or exc, self.depth)
                    last_report = now
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _write_some(self, view: memoryview) -> int:
        """One ``write(2)``; returns how many octets the kernel took."""
        return os.write(self._fd, view)

    async def close(self) -> None:
        if self._task is None:  # never started: drain on this loop
            self.start()
        self._queue.put_nowait(None)
        await self._task
        self._task = None
        os.close(self._fd)
