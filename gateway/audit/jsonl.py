"""A JSON-lines audit sink: one event per line, appended by a writer task.

``emit`` only puts the event on a queue, so the relay never waits for the disk; the writer task
appends and flushes in batches and fsyncs after each batch, so an acknowledged batch survives a
crash.  ``close`` drains the queue: no event accepted by ``emit`` is lost on a clean shutdown.
The file is created with mode 0600 since it names people and what they did.
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


class JsonLinesSink:
    """Appends events as JSON lines to ``path``."""

    def __init__(self, path: Path, *, batch: int = 256) -> None:
        self.path = Path(path)
        self._queue: asyncio.Queue[AuditEvent | None] = asyncio.Queue()
        self._batch = batch
        self._task: asyncio.Task | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._writer(), name="audit-jsonl")

    def emit(self, event: AuditEvent) -> None:
        self._queue.put_nowait(event)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def _writer(self) -> None:
        while True:
            item = await self._queue.get()
            batch = [item]
            while len(batch) < self._batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            events = [e for e in batch if e is not None]
            if events:
                lines = "".join(json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for e in events)
                await asyncio.to_thread(self._write, lines)
            if None in batch:
                return

    def _write(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    async def close(self) -> None:
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        else:  # never started: write what was queued synchronously
            events = []
            while not self._queue.empty():
                e = self._queue.get_nowait()
                if e is not None:
                    events.append(e)
            if events:
                self._write("".join(json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for e in events))
        self._file.close()
