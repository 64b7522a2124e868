"""The audit sink in front of a store: a writer task appends batches, the relay never waits.

``emit`` only puts the event on a queue.  A writer task takes what is queued (up to ``batch``
events at a time) and hands it to the blocking :class:`~gateway.audit.store.AuditStore` through
:func:`asyncio.to_thread`, one call at a time.  ``close`` drains the queue: no event accepted by
``emit`` is lost on a clean shutdown.

When the store raises (database down, disk full, lock timeout), the batch is *kept*, never
dropped, and what happens next depends on ``on_failure``:

* ``"fail-closed"`` (the default): the same batch is retried with exponential backoff, in order,
  until the store takes it, and :attr:`StoreSink.accepting` is False meanwhile.  The IMAP session
  reads it before each audited command and answers ``NO [UNAVAILABLE]`` while it is False, so no
  client action goes unaudited; events of commands already in flight wait in the queue.
  ``accepting`` is True again as soon as a write succeeds.
* ``"spool"``: the batch is appended as JSON lines to ``spool_path`` (mode 0600, fsync'd before
  the batch counts as written) and ``accepting`` stays True: the site chose to keep serving.
  Until the store is back every later batch goes to the spool too (order is kept).  The store is
  retried with backoff; once it takes events the spool is replayed into it in order and removed.
  If the spool itself cannot be written, the sink falls back to retrying and fails closed.

``close`` waits for the store; but when the store is still failing at shutdown and a
``spool_path`` is set (also in fail-closed mode), what is left goes to the spool instead of
holding the shutdown forever, and is replayed at the next start.

A spool file left by an earlier run is replayed first, whatever ``on_failure`` says.  Replay is
at-least-once: the replayed position is recorded in ``<spool>.offset`` after every batch the
store committed, so a crash between a commit and that record can append one batch twice
(visible as two identical rows), never lose one.

Errors are logged at ERROR with their cause (the exception type and text: store errors name
files, hosts and users, never passwords) at most once a minute, and once more on recovery.
The metrics (:mod:`gateway.metrics`) say the same at every moment: ``pecgw_audit_store_up``,
``pecgw_audit_accepting``, failures, rows written and spooled, and each batch's write time.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from gateway.audit.events import AuditEvent, MessageRef
from gateway.audit.store import AuditStore
from gateway.metrics import (AUDIT_ACCEPTING, AUDIT_ROWS, AUDIT_SPOOLED_ROWS, AUDIT_STORE_FAILURES, AUDIT_STORE_UP,
                             AUDIT_WRITE_SECONDS)

__all__ = ["FanOutSink", "StoreSink", "event_from_dict", "ON_FAILURE"]

log = logging.getLogger(__name__)

ON_FAILURE = ("fail-closed", "spool")


def event_from_dict(data: dict[str, Any]) -> AuditEvent:
    """The inverse of :meth:`AuditEvent.to_dict` (a spool line back into an event)."""
    data = dict(data)
    data["when"] = _dt.datetime.fromisoformat(data["when"])
    data["offices"] = tuple(data.get("offices") or ())
    message = data.pop("message", None)
    return AuditEvent(**data, message=MessageRef(**message) if message is not None else None)


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StoreSink:
    """Batches events into ``store``; see the module documentation for failures."""

    def __init__(self, store: AuditStore, *, batch: int = 500, linger: float = 0.05, on_failure: str = "fail-closed",
                 spool_path: Path | str | None = None, retry_initial: float = 0.5,
                 retry_max: float = 10.0, report_every: float = 60.0, label: str = "store") -> None:
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {', '.join(ON_FAILURE)}")
        if on_failure == "spool" and spool_path is None:
            raise ValueError('on_failure="spool" needs a spool_path')
        self.store = store
        self.label = label  # the store's kind, as the metrics name it
        self.on_failure = on_failure
        self.spool_path = Path(spool_path) if spool_path is not None else None
        self._batch = batch
        self._linger = linger  # a bulk FETCH emits hundreds of rows: wait for them, commit once
        self._retry_initial, self._retry_max = retry_initial, retry_max
        self._report_every = report_every
        self._queue: asyncio.Queue[AuditEvent | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._inflight = 0
        self._accepting = True
        self._failing_since: float | None = None  # monotonic time of the first failure
        self._last_report = -float("inf")
        self._next_try = 0.0  # spool mode: when to try the store again
        self._delay = retry_initial
        self._closing = False
        self.spooled = self._spool_size() > 0  # events waiting in the spool file

    # -- the AuditSink side -----------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._writer(), name="audit-store")

    def emit(self, event: AuditEvent) -> None:
        self._queue.put_nowait(event)

    @property
    def depth(self) -> int:
        """Events accepted by ``emit`` and not yet in the store or the spool."""
        return self._queue.qsize() + self._inflight

    @property
    def accepting(self) -> bool:
        """False while events cannot be recorded (fail-closed: refuse audited commands)."""
        return self._accepting

    @property
    def failing(self) -> bool:
        """True while the store refuses writes (also in spool mode, where ``accepting`` stays True)."""
        return self._failing_since is not None

    async def close(self) -> None:
        """Write everything queued: into the store, or (store failing, spool_path set) the spool."""
        if self._task is None:
            self.start()
        self._closing = True
        self._queue.put_nowait(None)
        await self._task
        self._task = None

    # -- the writer task ----------------------------------------------------------------------
    async def _writer(self) -> None:
        while True:
            if self.spooled and self._queue.empty():
                await self._idle_replay()
            item = await self._queue.get()
            if item is not None and self._linger and self._queue.qsize() < self._batch:
                await asyncio.sleep(self._linger)
            batch = [item]
            while len(batch) < self._batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            events = [e for e in batch if e is not None]
            self._inflight = len(events)
            if events:
                await self._write(events)
            self._inflight = 0
            if None in batch:
                if self.spooled and not self.failing:
                    await self._try_replay()
                return

    async def _idle_replay(self) -> None:
        """With a spool to replay and nothing queued: retry it when due, or when events arrive."""
        while self.spooled and self._queue.empty():
            wait = self._next_try - time.monotonic()
            if wait <= 0:
                if await self._try_replay():
                    return
                continue
            getter = asyncio.ensure_future(self._queue.get())
            done, _ = await asyncio.wait([getter], timeout=wait)
            if done:  # put it back in front: it is the oldest event queued
                self._requeue_front(getter.result())
                return
            getter.cancel()

    def _requeue_front(self, item: AuditEvent | None) -> None:
        rest = []
        while not self._queue.empty():
            rest.append(self._queue.get_nowait())
        for x in (item, *rest):
            self._queue.put_nowait(x)

    async def _try_replay(self) -> bool:
        try:
            await asyncio.to_thread(self._replay)
        except Exception as exc:  # noqa: BLE001 - any store error means "not yet"
            self._failed(exc)
            self._schedule_retry()
            return False
        self._recovered()
        return True

    async def _write(self, events: list[AuditEvent]) -> None:
        """Put ``events`` in the store (after any spool) or, in spool mode, in the spool."""
        while True:
            if not (self.on_failure == "spool" and self.failing and time.monotonic() < self._next_try):
                try:
                    if self.spooled:
                        await asyncio.to_thread(self._replay)
                    started = time.monotonic()
                    await asyncio.to_thread(self.store.append, events)
                    AUDIT_WRITE_SECONDS.labels(self.label).observe(time.monotonic() - started)
                    AUDIT_ROWS.labels(self.label).inc(len(events))
                except Exception as exc:  # noqa: BLE001 - whatever the store raises, keep the batch
                    self._failed(exc)
                    self._schedule_retry()
                else:
                    self._recovered()
                    return
            if self.on_failure == "spool" or (self._closing and self.spool_path is not None):
                try:
                    await asyncio.to_thread(self._spool, events)
                    AUDIT_SPOOLED_ROWS.inc(len(events))
                    self._set_accepting(True)
                    return
                except OSError as exc:
                    self._set_accepting(False)
                    self._report(f"cannot write the audit spool {self.spool_path} either "
                                 f"({exc.strerror or exc}); refusing audited commands")
            await asyncio.sleep(max(0.0, self._next_try - time.monotonic()))

    def _schedule_retry(self) -> None:
        self._next_try = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self._retry_max)

    def _set_accepting(self, accepting: bool) -> None:
        self._accepting = accepting
        AUDIT_ACCEPTING.set(1 if accepting else 0)

    def _failed(self, exc: BaseException) -> None:
        AUDIT_STORE_FAILURES.labels(self.label).inc()
        AUDIT_STORE_UP.labels(self.label).set(0)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            self._last_report = -float("inf")
        if self.on_failure == "fail-closed":
            self._set_accepting(False)
            then = "refusing audited commands until it recovers"
        else:
            then = f"spooling to {self.spool_path}"
        self._report(f"the audit store cannot take events ({_cause(exc)}); {self.depth} waiting, "
                     f"{then}, retrying")

    def _report(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_report >= self._report_every:
            log.error("%s", message)
            self._last_report = now

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.error("the audit store takes events again after %.0f s; %d waiting",
                      time.monotonic() - self._failing_since, self._queue.qsize())
        self._failing_since = None
        self._set_accepting(True)
        AUDIT_STORE_UP.labels(self.label).set(1)
        self._delay = self._retry_initial
        self._next_try = 0.0

    # -- the spool (blocking; run in a thread) --------------------------------------------------
    def _spool_size(self) -> int:
        if self.spool_path is None:
            return 0
        try:
            return self.spool_path.stat().st_size - self._spool_offset()
        except FileNotFoundError:
            return 0

    @property
    def _offset_path(self) -> Path:
        assert self.spool_path is not None
        return self.spool_path.with_name(self.spool_path.name + ".offset")

    def _spool_offset(self) -> int:
        try:
            return int(self._offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _spool(self, events: list[AuditEvent]) -> None:
        assert self.spool_path is not None
        data = "".join(json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for e in events)
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.spool_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data.encode("utf-8"))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.spooled = True

    def _set_offset(self, offset: int) -> None:
        path = self._offset_path
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{offset}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _replay(self) -> None:
        """Append the spool's events to the store in order, a batch at a time; remove it when done.
        Raises what the store raises (the offset keeps what was already replayed)."""
        assert self.spool_path is not None
        offset = self._spool_offset()
        with open(self.spool_path, "rb") as fh:
            fh.seek(offset)
            while True:
                lines = []
                while len(lines) < self._batch:
                    line = fh.readline()
                    if not line.endswith(b"\n"):  # end of file (or a torn last line: crash mid-write)
                        break
                    lines.append(line)
                if not lines:
                    break
                self.store.append([event_from_dict(json.loads(line)) for line in lines])
                offset += sum(map(len, lines))
                self._set_offset(offset)
        count_note = f"{self.spool_path}: replayed into the audit store"
        os.unlink(self.spool_path)
        try:
            os.unlink(self._offset_path)
        except FileNotFoundError:
            pass
        self.spooled = False
        log.warning("%s and removed", count_note)


class FanOutSink:
    """One sink for the relay, several behind it: ``emit`` goes to each, ``accepting`` is True
    only while every one accepts (an extra copy that cannot be written fails closed too)."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()

    def emit(self, event: AuditEvent) -> None:
        for sink in self.sinks:
            sink.emit(event)

    @property
    def accepting(self) -> bool:
        return all(sink.accepting for sink in self.sinks)

    @property
    def depth(self) -> int:
        return max(sink.depth for sink in self.sinks)

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()
