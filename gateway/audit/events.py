"""What the audit trail records: one frozen :class:`AuditEvent` per thing a person did.

Every event names the person (never a shared account), the mailbox and folder, the session and
client, and — once message identity is resolved — which message.  Events never carry a secret:
credentials, mailbox passwords and OTP codes have no field here, and ``detail`` values are
checked to be plain JSON scalars.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

__all__ = ["AuditEvent", "AuditSink", "Action", "Decision", "MessageRef", "utc_now"]


class Action:
    """Action names (a closed vocabulary, like Dovecot mail_log's event names)."""

    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOCKOUT = "lockout"  # repeated failures locked a name, an address or both; detail: scope, failures, until
    LOGOUT = "logout"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    DENIED = "denied"  # a command refused by the folder policy; detail names the rule
    FOLDER_WITHDRAWN = "folder_withdrawn"  # a policy reload closed the selected folder
    ACCESS_WITHDRAWN = "access_withdrawn"  # a policy reload left the person no access to the mailbox
    SEND = "send"  # a PEC submission, recorded before it goes to the provider
    SEND_RESULT = "send_result"  # the provider's answer to it (or "outcome unknown")
    SEND_DUPLICATE = "send_duplicate"  # a retry of a PEC already sent: answered, not sent again
    RECEIPT = "receipt"  # a provider receipt linked to a send by the receipt watcher (PEC.md section 4)
    REVOKED = "revoked"  # IT revoked a person (pecgw revoke): detail names who did it
    REVOCATION_LIFTED = "revocation_lifted"  # pecgw revoke --lift
    SESSION_ENDED = "session_ended"  # the gateway ended a live session: kick, revocation, directory check
    OTP_ENROLLED = "otp_enrolled"  # pecgw otp enroll gave the person a new TOTP secret
    OTP_RESET = "otp_reset"  # pecgw otp reset removed it (the person must enrol again)


class Decision:
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class MessageRef:
    """Which message an event is about, as an auditor can recognise it.

    A UID alone is useless to an auditor (it is reused after UIDVALIDITY changes, and says
    nothing about the content), so the headers that identify a PEC come along: ``Message-ID``,
    ``Subject``, ``From``, ``Date`` and, for PEC, the kind (``posta-certificata``,
    ``accettazione``, ``avvenuta-consegna``… — the ``X-Trasporto``/``X-Ricevuta`` value), the
    ``identificativo`` and ``X-Riferimento-Message-ID`` (see PEC.md §1, §4).  Fields the gateway
    could not resolve are None.
    """

    uidvalidity: int | None = None
    uid: int | None = None
    message_id: str | None = None
    subject: str | None = None
    sender: str | None = None  # the From header, as written
    date: str | None = None  # the Date header, as written
    pec_kind: str | None = None
    pec_id: str | None = None  # the PEC identificativo
    pec_ref: str | None = None  # X-Riferimento-Message-ID


@dataclass(frozen=True)
class AuditEvent:
    """One audited action by one person (or one failed attempt by a claimed identity)."""

    when: _dt.datetime
    session_id: str
    protocol: str  # "imap" | "smtp" | "admin"
    action: str
    decision: str
    person: str | None = None  # the directory username; for failures, the name that was tried
    offices: tuple[str, ...] = ()
    mailbox: str | None = None
    folder: str | None = None
    client_ip: str | None = None
    client_name: str | None = None  # from IMAP ID, e.g. "Thunderbird 128.3"
    reason: str | None = None  # internal reason class, e.g. "bad_otp"; never shown to clients
    detail: dict[str, Any] = field(default_factory=dict)
    message: MessageRef | None = None  # for events about one message: one event per message

    def __post_init__(self) -> None:
        if self.when.tzinfo is None:
            raise ValueError("AuditEvent.when must be timezone-aware (UTC)")
        for key, value in self.detail.items():
            if not isinstance(value, (str, int, float, bool, type(None), list)):
                raise TypeError(f"AuditEvent.detail[{key!r}] must be a JSON scalar or list")

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready values (built by hand: ``dataclasses.asdict`` deep-copies
        recursively, and a bulk FETCH makes hundreds of events)."""
        data = {name: getattr(self, name) for name in _EVENT_FIELDS}
        data["when"] = self.when.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")
        data["offices"] = list(self.offices)
        data["detail"] = dict(self.detail)
        if self.message is None:
            del data["message"]
        else:
            data["message"] = {name: getattr(self.message, name) for name in _MESSAGE_FIELDS}
        return data


_EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))
_MESSAGE_FIELDS = tuple(f.name for f in fields(MessageRef))


class AuditSink(Protocol):
    """Where events go.  ``emit`` must never block the relay."""

    def emit(self, event: AuditEvent) -> None: ...

    async def close(self) -> None: ...
