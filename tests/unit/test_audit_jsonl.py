"""The JSON-lines audit sink: order, durability on close, and no loss when writes fail."""

import datetime as dt
import json

from gateway.audit.events import AuditEvent
from gateway.audit.jsonl import JsonLinesSink


def event(n: int) -> AuditEvent:
    return AuditEvent(when=dt.datetime(2026, 3, 3, 9, 0, n, tzinfo=dt.timezone.utc), session_id=f"s{n}",
                      protocol="imap", action="login", decision="allow", person="alice")


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_events_are_written_in_order_and_flushed_on_close(tmp_path):
    sink = JsonLinesSink(tmp_path / "audit.jsonl")
    sink.start()
    for n in range(50):
        sink.emit(event(n))
    await sink.close()
    assert [r["session_id"] for r in rows(tmp_path / "audit.jsonl")] == [f"s{n}" for n in range(50)]
    assert oct((tmp_path / "audit.jsonl").stat().st_mode & 0o777) == "0o600"


async def test_a_failing_write_resumes_where_it_stopped(tmp_path, caplog, monkeypatch):
    """A full disk mid-batch: the first write lands 10 octets, then two writes fail; the retry
    continues at octet 10, so every line is whole and none is doubled."""
    sink = JsonLinesSink(tmp_path / "audit.jsonl")
    real_write, calls = sink._write_some, []

    def flaky(view):
        calls.append(len(view))
        if len(calls) == 1:
            return real_write(view[:10])
        if len(calls) <= 3:
            raise OSError(28, "No space left on device")
        return real_write(view)

    monkeypatch.setattr(sink, "_write_some", flaky)
    sink.start()
    for n in range(3):
        sink.emit(event(n))
    await sink.close()
    assert [r["session_id"] for r in rows(tmp_path / "audit.jsonl")] == ["s0", "s1", "s2"]
    assert "cannot write the audit file" in caplog.text and "No space left on device" in caplog.text
    assert "writable again" in caplog.text
