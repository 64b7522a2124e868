"""The IMAP session's states (RFC 3501 §3), in a module of their own so the session and its
pre-login verbs can both name them; the transitions and their invariants are documented and
made in :mod:`gateway.imap_proxy.session`."""

from __future__ import annotations

from enum import Enum

__all__ = ["SessionState"]


class SessionState(Enum):
    NOT_AUTHENTICATED = "not_authenticated"
    AUTHENTICATING = "authenticating"
    AUTHENTICATED = "authenticated"
    LOGOUT = "logout"
