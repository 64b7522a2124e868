"""A wrapper that keeps secrets out of logs, reprs, tracebacks and audit rows.

Every mailbox password, OTP secret and user credential travels through the gateway as a
``Secret``.  Its ``repr``/``str`` are redacted, so an accidental ``log.info("%s", secret)`` or an
exception that formats its arguments prints ``Secret('***')`` instead of the value.  The value is
only reachable through :meth:`Secret.reveal`, which makes every use easy to find with grep.
"""

from __future__ import annotations

import hmac

__all__ = ["Secret"]


class Secret:
    """A string value that refuses to show itself; compare in constant time."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if not isinstance(value, str):
            raise TypeError("Secret wraps str or bytes")
        self._value = value

    def reveal(self) -> str:
        """Return the clear value; call only where the value must leave the process."""
        return self._value

    def reveal_bytes(self) -> bytes:
        """Return the clear value as UTF-8 bytes."""
        return self._value.encode("utf-8")

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:  # usable as a dict key without leaking through hash()
        return hash(("Secret", len(self._value)))

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):  # never pickle a clear value by accident
        raise TypeError("Secret values cannot be pickled")
