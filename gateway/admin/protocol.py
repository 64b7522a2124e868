"""The admin channel's wire format: one JSON object per line each way, UTF-8.

A request is ``{"verb": "revoke", "args": {"person": "alice"}, "operator": "mario"}`` (plus
``"token"`` on the loopback TCP listener); the answer ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "text for the operator"}``.  ``operator`` is who the CLI says is
running it (``$SUDO_USER`` or ``$USER``); on the unix socket the gateway also learns the
connecting user from the kernel (``SO_PEERCRED``) and records both in the audit trail.
A request line is capped at :data:`MAX_LINE` octets (its newline aside).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_LINE", "ProtocolError", "decode", "encode"]

MAX_LINE = 64 * 1024


class ProtocolError(ValueError):
    """A line that is not one JSON object."""


def encode(message: dict[str, Any]) -> bytes:
    """``message`` as one line.  A lone surrogate (text that came in as undecodable bytes) is
    written as its ``\\uXXXX`` escape, which is what JSON calls it, instead of failing."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The JSON object on ``line``; :class:`ProtocolError` for anything else.

    Whatever the peer sent must end here, never as an exception that kills the connection's
    task: besides bad JSON and bad UTF-8 (both ``ValueError``), a number with too many digits
    raises a plain ``ValueError`` and deeply nested arrays raise ``RecursionError`` in
    :func:`json.loads` — and on the TCP listener this runs before the token is checked.
    """
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    return message
