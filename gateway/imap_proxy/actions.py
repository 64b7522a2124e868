"""Actions the IMAP session asks its I/O adapter to carry out, in order.

Imperatives, small and frozen (mitmproxy ``proxy/commands.py`` style).  The session never does
them itself; :mod:`gateway.imap_proxy.server` does, which keeps the session testable byte by byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.audit.events import AuditEvent
from gateway.login import LoginRequest

__all__ = ["SendToClient", "SendToUpstream", "StartTls", "Login", "Audit", "Log", "Close", "CloseClient"]


@dataclass(frozen=True)
class SendToClient:
    """Write these bytes to the client."""

    data: bytes


@dataclass(frozen=True)
class SendToUpstream:
    """Write these bytes to the provider."""

    data: bytes


@dataclass(frozen=True)
class StartTls:
    """Start TLS on the client connection now (after the OK has been written)."""

    discarded: int = 0  # octets received in clear after STARTTLS and thrown away


@dataclass(frozen=True)
class Login:
    """Authenticate the person, authorise the mailbox and open the provider session."""

    request: LoginRequest


@dataclass(frozen=True)
class Audit:
    """Record this event in the audit trail."""

    event: AuditEvent


@dataclass(frozen=True)
class Log:
    """Write an operational log line (never containing client data verbatim)."""

    message: str


@dataclass(frozen=True)
class Close:
    """Flush what was written, then close the client and provider connections."""

    reason: str


@dataclass(frozen=True)
class CloseClient:
    """Flush what was written to the client, then close its connection only: the provider's
    replies to audited commands still running are read for their audit rows (then ``Close``)."""
