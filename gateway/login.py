"""The login contract shared by the IMAP and SMTP fronts.

A front collects a login name and a credential (directory password followed by the TOTP code)
and hands a :class:`LoginRequest` to the login service; it gets back a :class:`LoginResult` that
says what to tell the client — never *why* in terms a guesser could use: a wrong password, a wrong
code, a disabled and an unknown account all give the same ``AUTHENTICATIONFAILED`` text.

Login names: ``alice`` for a person allowed on exactly one PEC mailbox; ``alice#protocollo`` to
pick one of several.  ``#`` is not valid in LDAP uids or sAMAccountNames, so it cannot clash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from gateway.secret import Secret

__all__ = ["LoginRequest", "LoginResult", "Failure", "split_login_name", "MAILBOX_SEPARATOR"]

MAILBOX_SEPARATOR = "#"


def split_login_name(login: str) -> tuple[str, str | None]:
    """``"alice#protocollo"`` → ``("alice", "protocollo")``; ``"alice"`` → ``("alice", None)``."""
    user, sep, mailbox = login.partition(MAILBOX_SEPARATOR)
    return user, (mailbox if sep else None)


class Failure(Enum):
    """Failure classes a client may be told about (RFC 5530 response codes)."""

    AUTHENTICATION = "AUTHENTICATIONFAILED"  # credentials not accepted (any reason)
    AUTHORIZATION = "AUTHORIZATIONFAILED"  # credentials fine, no such mailbox for this person
    UNAVAILABLE = "UNAVAILABLE"  # directory or provider cannot be reached


@dataclass(frozen=True)
class LoginRequest:
    """What a client presented."""

    login: str  # as typed, possibly with "#mailbox"
    credential: Secret
    client_ip: str
    protocol: str  # "imap" | "smtp"
    mailbox_hint: str | None = None  # e.g. the SASL authorization identity
    session_id: str = ""  # the front's session, for audit rows written during the login (a lockout)

    @property
    def username(self) -> str:
        return split_login_name(self.login)[0]

    @property
    def mailbox(self) -> str | None:
        return split_login_name(self.login)[1] or self.mailbox_hint


@dataclass(frozen=True)
class LoginResult:
    """The outcome; ``client_text`` is safe to show to the client."""

    ok: bool
    person: str | None = None
    offices: tuple[str, ...] = ()
    mailbox: str | None = None
    groups: tuple[str, ...] = ()  # the person's directory groups: offices are re-derived on policy reload
    failure: Failure | None = None
    client_text: str = ""
    reason: str = ""  # internal reason class for audit and metrics
    upstream: object | None = field(default=None, repr=False)  # the opened provider session
