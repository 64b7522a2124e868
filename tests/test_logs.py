"""``log_format = "json"``: every line ``pecgw serve`` writes is one JSON object.

A real ``pecgw serve`` process logs its start, a refused login, a policy reload (SIGHUP) and
its stop (SIGTERM); each line of its output must parse, with an ISO 8601 UTC time, a level, the
logger and the message.  The formatter's handling of tracebacks is checked on its own.
"""

from __future__ import annotations

import datetime as dt
import imaplib
import io
import json
import logging
import signal

import pytest

from gateway.logs import JsonFormatter, setup_logging
from tests.fixtures.gateway import GatewayHarness, offline_tables
from tests.fixtures.serve import ServeProcess

LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def parse_line(line: str) -> dict:
    record = json.loads(line)
    assert set(record) >= {"time", "level", "logger", "message"}, record
    assert set(record) <= {"time", "level", "logger", "message", "exception", "stack"}, record
    assert record["time"].endswith("Z")
    when = dt.datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
    assert when.utcoffset() == dt.timedelta(0)
    assert record["level"] in LEVELS
    return record


@pytest.fixture
def json_serve(tmp_path, pki):
    h = GatewayHarness(tmp_path / "gw", pki)
    tables = offline_tables(h, tmp_path)
    tables["log_format"] = "json"
    gw = ServeProcess(h, tables)
    yield gw
    gw.close()


def test_serve_writes_one_json_object_per_line(json_serve):
    gw = json_serve
    client = gw.h.imap()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login("nobody", "wrong-password123456")
    client.logout()
    gw.signal(signal.SIGHUP)
    gw.wait_for_log("policy reloaded from")
    gw.signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0

    lines = gw.log().splitlines()
    assert lines, "nothing logged"
    records = [parse_line(line) for line in lines]
    messages = [r["message"] for r in records]
    assert any(m.startswith("IMAP listening on 127.0.0.1:") for m in messages)
    assert any("policy reloaded from" in m for m in messages)
    assert any(m.startswith("stopping: no new connections") for m in messages)
    assert records[-1]["message"] == "stopped" and records[-1]["logger"] == "pecgw"
    assert "DEBUG" in {r["level"] for r in records}  # the harness's log_level applies too
    assert "wrong-password123456" not in gw.log()


def test_a_traceback_stays_inside_its_line():
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # pytest's own capture handler among them
    setup_logging("INFO", "json", stream)
    try:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logging.getLogger("pecgw.test").exception("session %s: internal error", "abc")
        logging.getLogger("pecgw.test").debug("not at INFO")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)
    (line,) = stream.getvalue().splitlines()
    record = parse_line(line)
    assert (record["level"], record["logger"], record["message"]) == ("ERROR", "pecgw.test",
                                                                       "session abc: internal error")
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert record["exception"].endswith("ValueError: bad\nthing")


def test_the_formatter_renders_a_plain_record():
    record = logging.LogRecord("pecgw.imap", logging.WARNING, __file__, 1, "port %d: %s", (993, "é"), None)
    out = parse_line(JsonFormatter().format(record))
    assert out["message"] == "port 993: é" and out["level"] == "WARNING" and "exception" not in out


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="log format must be 'text' or 'json'"):
        setup_logging("INFO", "xml")
