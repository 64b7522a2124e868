"""Text for IT's terminal that nothing a client chose can drive (``pecgw sessions``, ``pecgw
mailboxes``): an EHLO name, an IMAP ID or a provider's reply can hold escape sequences or bidi
overrides, which would rewrite what IT sees."""

from __future__ import annotations

import datetime as _dt
import json

__all__ = ["json_line", "shown", "table", "when"]


def when(epoch: float | None) -> str:
    """A Unix time as local date and time, ``-`` for none."""
    if epoch is None:
        return "-"
    return _dt.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def shown(value: object) -> str:
    """``value`` as text that cannot drive the terminal: each non-printable character is ``?``."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))


def json_line(value: object) -> str:
    """``value`` as one JSON line with every non-printable character as a ``\\u`` escape
    (:func:`json.dumps` leaves DEL, C1 controls and bidi overrides raw)."""
    return "".join(ch if ch.isprintable() else _u_escape(ord(ch)) for ch in json.dumps(value, ensure_ascii=False))


def _u_escape(code: int) -> str:
    if code > 0xFFFF:  # outside the BMP: a surrogate pair, as JSON spells it
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def table(rows: list[list[object]], header: list[str]) -> str:
    """Columns aligned under ``header``, every cell :func:`shown`."""
    cells = [[shown(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
