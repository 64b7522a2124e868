"""The admin channel's wire format: one JSON object per line each way, UTF-8.

A request is ``{"verb": "revoke", "args": {"person": "alice"}, "operator": "mario"}`` (plus
``"token"`` on the loopback TCP listener); the answer ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "text for the operator"}``.  ``operator`` is who the CLI says is
running it (``$SUDO_USER`` or ``$USER``); on the unix socket the gateway also learns the
connecting user from the kernel (``SO_PEERCRED``) and records both in the audit trail.
Lines are capped at :data:`MAX_LINE` octets.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_LINE", "ProtocolError", "decode", "encode"]

MAX_LINE = 64 * 1024


class ProtocolError(ValueError):
    """A line that is not one JSON object."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    return message
