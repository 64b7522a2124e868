"""The operational log of ``pecgw serve``: plain text, or one JSON object per line.

``log_format = "json"`` (gateway.toml) is for log shippers (journald → Loki, Filebeat, Vector):
each line is ``{"time", "level", "logger", "message"}`` plus ``"exception"`` (the traceback) when
there is one, so a multi-line traceback never splits into lines a shipper reads as separate
events.  Times are ISO 8601 in UTC.  What goes into the log is the same in both formats: never a
secret (the audit trail, not this log, records who did what).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from typing import TextIO

__all__ = ["JsonFormatter", "TEXT_FORMAT", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        when = _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc)
        out = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) in ``fmt`` ("text" or "json").

    Replaces the root logger's handlers, so calling it again changes the format; Python
    warnings go through the log too, so a JSON log holds nothing but JSON lines.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
