"""StoreSink: batches into the store, drains on close, fails closed or spools when the store fails."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import threading

import pytest

from gateway.audit.jsonl import JsonLinesSink
from gateway.audit.writer import FanOutSink, StoreSink, event_from_dict
from tests.audit.conftest import event

FAST = dict(retry_initial=0.01, retry_max=0.05)


class Flaky:
    """A store wrapper whose ``append`` raises while ``broken`` is set, and records each batch."""

    def __init__(self, store) -> None:
        self.store = store
        self.broken = threading.Event()
        self.batches: list[int] = []
        self.attempts = 0

    def append(self, events):
        self.attempts += 1
        if self.broken.is_set():
            raise ConnectionError("server closed the connection unexpectedly (host=db.example.it)")
        self.batches.append(len(events))
        return self.store.append(events)

    def __getattr__(self, name):
        return getattr(self.store, name)


def sessions(store):
    return [r["session_id"] for r in store.query()]


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_event_round_trips_through_its_dict():
    e = event(3, message={"uid": 7, "message_id": "<m@x>", "pec_id": "id"}, offices=("a", "b"),
              detail={"flags": ["\\Seen"], "body": True})
    assert event_from_dict(e.to_dict()) == e
    plain = event(4, message=None)
    assert event_from_dict(plain.to_dict()) == plain


async def test_batches_and_drains_everything_on_close(backend):
    store = Flaky(backend.open())
    sink = StoreSink(store, batch=100, **FAST)
    sink.start()
    for n in range(1, 251):
        sink.emit(event(n))  # never awaits: all queued at once
    assert sink.depth == 250 and sink.accepting
    await sink.close()
    assert sink.depth == 0
    assert sessions(store) == [f"s{n}" for n in range(1, 251)]
    assert store.batches == [100, 100, 50]  # up to `batch` at a time, what was queued
    assert store.verify().ok


async def test_close_without_start_still_writes(tmp_path, backend):
    store = backend.open()
    sink = StoreSink(store)
    sink.emit(event(1))
    await sink.close()
    assert sessions(store) == ["s1"]


async def test_failing_store_fails_closed_loses_nothing_and_recovers(backend, caplog):
    store = Flaky(backend.open())
    sink = StoreSink(store, batch=10, **FAST)
    sink.start()
    sink.emit(event(1))
    await until(lambda: store.batches == [1])
    assert sink.accepting

    store.broken.set()
    caplog.set_level(logging.ERROR, logger="gateway.audit.writer")
    for n in range(2, 26):
        sink.emit(event(n))
    await until(lambda: not sink.accepting)
    await until(lambda: store.attempts >= 4)  # retried with backoff, the batch kept
    assert sink.failing and sink.depth == 24
    assert sessions(store) == ["s1"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # once a minute, not once per retry
    assert "ConnectionError: server closed the connection unexpectedly" in errors[0]
    assert "refusing audited commands" in errors[0]

    store.broken.clear()
    await until(lambda: sink.accepting)
    await sink.close()
    assert not sink.failing
    assert sessions(store) == [f"s{n}" for n in range(1, 26)]  # all there, in order
    assert store.verify().ok
    assert any("takes events again" in r.getMessage() for r in caplog.records)


async def test_spool_mode_keeps_accepting_and_replays_in_order(backend, tmp_path):
    spool = tmp_path / "spool" / "audit-spool.jsonl"
    store = Flaky(backend.open())
    sink = StoreSink(store, batch=4, on_failure="spool", spool_path=spool, **FAST)
    sink.start()
    sink.emit(event(1))
    await until(lambda: store.batches == [1])

    store.broken.set()
    for n in range(2, 12):
        sink.emit(event(n))
        await asyncio.sleep(0)
    await until(lambda: sink.depth == 0)
    assert sink.accepting and sink.failing and sink.spooled
    assert stat.S_IMODE(spool.stat().st_mode) == 0o600
    spooled = [event_from_dict(json.loads(line)).session_id
               for line in spool.read_text().splitlines()]
    assert spooled == [f"s{n}" for n in range(2, 12)]
    assert sessions(store) == ["s1"]

    store.broken.clear()
    # the spool is replayed by the retry even with nothing new queued
    await until(lambda: not sink.spooled)
    assert not spool.exists()
    sink.emit(event(12))
    await sink.close()
    assert sessions(store) == [f"s{n}" for n in range(1, 13)]
    assert store.verify().ok


async def test_spool_left_by_an_earlier_run_is_replayed_first(backend, tmp_path):
    spool = tmp_path / "audit-spool.jsonl"
    store = Flaky(backend.open())
    first = StoreSink(store, on_failure="spool", spool_path=spool, **FAST)
    store.broken.set()
    first.start()
    for n in (1, 2, 3):
        first.emit(event(n))
    await first.close()  # the store never came back: the events stay in the spool
    assert spool.exists() and sessions(store) == []

    store.broken.clear()
    second = StoreSink(store, spool_path=spool, **FAST)  # fail-closed now, spool still replayed
    assert second.spooled
    second.start()
    second.emit(event(4))
    await second.close()
    assert sessions(store) == ["s1", "s2", "s3", "s4"]
    assert not spool.exists()


async def test_fail_closed_close_spills_to_the_spool_instead_of_hanging(backend, tmp_path):
    spool = tmp_path / "audit-spool.jsonl"
    store = Flaky(backend.open())
    store.broken.set()
    sink = StoreSink(store, spool_path=spool, **FAST)
    sink.start()
    sink.emit(event(1))
    await until(lambda: not sink.accepting)
    await asyncio.wait_for(sink.close(), 5)
    assert len(spool.read_text().splitlines()) == 1


async def test_replay_resumes_after_a_partial_replay(backend, tmp_path):
    """A replay interrupted by the store failing again does not append twice what it already wrote."""
    spool = tmp_path / "audit-spool.jsonl"
    real = backend.open()

    class FailsOnSecondBatch(Flaky):
        tripped = False

        def append(self, events):
            if len(self.batches) == 1 and not self.tripped:
                self.tripped = True
                self.broken.set()
            return super().append(events)

    store = FailsOnSecondBatch(real)
    writer = StoreSink(store, spool_path=spool, batch=2, **FAST)
    for n in range(1, 6):
        writer._spool([event(n)])
    writer.spooled = True
    with pytest.raises(ConnectionError):
        writer._replay()
    assert sessions(real) == ["s1", "s2"]
    store.broken.clear()
    writer._replay()
    assert sessions(real) == ["s1", "s2", "s3", "s4", "s5"]
    assert not spool.exists()


async def test_fan_out_accepting_and_jsonl_copy(tmp_path, backend):
    store = Flaky(backend.open())
    jsonl = JsonLinesSink(tmp_path / "audit.jsonl")
    sink = FanOutSink(StoreSink(store, **FAST), jsonl)
    sink.start()
    assert sink.accepting and jsonl.accepting
    sink.emit(event(1))
    store.broken.set()
    sink.emit(event(2))
    await until(lambda: not sink.accepting)
    store.broken.clear()
    await until(lambda: sink.accepting)
    await sink.close()
    assert sessions(store) == ["s1", "s2"]
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 2


async def test_jsonl_sink_accepting_false_while_writes_fail(tmp_path, monkeypatch):
    sink = JsonLinesSink(tmp_path / "audit.jsonl")
    real = sink._write_some
    full = threading.Event()
    full.set()

    def write_some(view):
        if full.is_set():
            raise OSError(28, "No space left on device")
        return real(view)

    monkeypatch.setattr(sink, "_write_some", write_some)
    sink.start()
    sink.emit(event(1))
    await until(lambda: not sink.accepting)
    full.clear()
    await until(lambda: sink.accepting, timeout=10)
    await sink.close()
    assert '"session_id": "s1"' in (tmp_path / "audit.jsonl").read_text()


async def test_postgres_connection_killed_by_the_server_is_replaced(tmp_path, caplog):
    """A PostgreSQL restart drops the store's connection: the batch is retried on a new one."""
    import psycopg

    from tests.audit.conftest import Backend

    backend = Backend("postgres", tmp_path)
    try:
        store = backend.open()
        sink = StoreSink(store, **FAST)
        sink.start()
        sink.emit(event(1))
        await until(lambda: sink.depth == 0)
        pid = store._db.info.backend_pid
        with psycopg.connect(backend.conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                await asyncio.sleep(0.01)
        caplog.set_level(logging.ERROR, logger="gateway.audit.writer")
        sink.emit(event(2))
        sink.emit(event(3))
        await asyncio.wait_for(sink.close(), 10)
        assert sessions(store) == ["s1", "s2", "s3"] and store.verify().ok
        assert any("cannot take events" in r.getMessage() for r in caplog.records)
        assert store._db.info.backend_pid != pid
    finally:
        backend.cleanup()


async def test_metrics_say_when_the_store_fails_and_what_was_written(backend, tmp_path):
    """The store's state is in the metrics at every moment, not only in the log."""
    from prometheus_client import REGISTRY

    def value(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    label = f"test-{backend.name}-{id(tmp_path)}"
    spooled_before = value("pecgw_audit_spooled_rows_total")
    store = Flaky(backend.open())
    sink = StoreSink(store, batch=10, label=label, on_failure="spool", spool_path=tmp_path / "spool.jsonl", **FAST)
    sink.start()
    sink.emit(event(1))
    await until(lambda: value("pecgw_audit_rows_written_total", store=label) == 1)
    assert value("pecgw_audit_write_seconds_count", store=label) == 1
    store.broken.set()
    sink.emit(event(2))
    await until(lambda: sink.spooled)
    assert value("pecgw_audit_store_up", store=label) == 0
    assert value("pecgw_audit_store_failures_total", store=label) >= 1
    assert value("pecgw_audit_spooled_rows_total") == spooled_before + 1
    assert value("pecgw_audit_accepting") == 1  # spool mode keeps serving
    store.broken.clear()
    await until(lambda: not sink.spooled)
    assert value("pecgw_audit_store_up", store=label) == 1
    await sink.close()

    closed = Flaky(backend.open())
    fail_closed = StoreSink(closed, batch=10, label=label, **FAST)
    fail_closed.start()
    closed.broken.set()
    fail_closed.emit(event(3))
    await until(lambda: not fail_closed.accepting)
    assert value("pecgw_audit_accepting") == 0 and value("pecgw_audit_store_up", store=label) == 0
    closed.broken.clear()
    await until(lambda: fail_closed.accepting)
    assert value("pecgw_audit_accepting") == 1
    await fail_closed.close()
