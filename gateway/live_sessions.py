"""The live sessions of the running gateway, IMAP and SMTP alike, as IT sees them.

Every client connection that has logged in is registered here by its front (the IMAP
:class:`~gateway.imap_proxy.server.Connection`, the SMTP :class:`~gateway.smtp_proxy.server.SmtpFront`
protocol) and removed when it ends.  The registry is what ``pecgw sessions`` lists and what
``pecgw revoke`` / ``pecgw kick`` and the directory re-validation act on: each entry knows how to
end itself (``* BYE`` for IMAP, ``421`` for SMTP) with a reason that goes into its logout row.

Only the event loop touches it (no locks).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["LiveSession", "SessionRegistry", "same_person"]


def same_person(a: str | None, b: str | None) -> bool:
    """Login names compare case-insensitively (LDAP uids and sAMAccountNames do)."""
    return a is not None and b is not None and a.casefold() == b.casefold()


@dataclass(eq=False)
class LiveSession:
    """One logged-in client connection.

    ``describe`` returns what changes while it runs (the selected folder, the client's name),
    ``end`` ends it: ``end(reason, text)`` tells the client ``text`` and closes the connection,
    writing ``reason`` in the session's logout row.
    """

    session_id: str
    protocol: str  # "imap" | "smtp"
    person: str
    mailbox: str
    client_ip: str
    end: Callable[[str, str], Awaitable[None]] = field(repr=False)
    describe: Callable[[], dict] = field(default=dict, repr=False)
    offices: tuple[str, ...] = ()  # the offices it acts for (``describe`` may say newer ones)
    since: float = field(default_factory=time.time)  # wall clock, for display
    ending: str | None = field(default=None, repr=False)  # why it is being ended: ended once only

    def as_dict(self) -> dict:
        """What ``pecgw sessions`` shows: never a secret, never message content."""
        info = {"session": self.session_id, "protocol": self.protocol, "person": self.person,
                "mailbox": self.mailbox, "offices": list(self.offices), "client_ip": self.client_ip,
                "since": self.since, "folder": None, "client": None}
        info.update(self.describe())
        return info


class SessionRegistry:
    """The live sessions by id; a person's sessions are found by a scan (there are few)."""

    def __init__(self) -> None:
        self._sessions: dict[str, LiveSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._sessions.values()))

    def add(self, session: LiveSession) -> None:
        self._sessions[session.session_id] = session

    def discard(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def of_person(self, person: str) -> list[LiveSession]:
        return [s for s in self._sessions.values() if same_person(s.person, person)]

    def people(self) -> set[str]:
        """The distinct people with a live session (as the directory spelt them at login)."""
        return {s.person for s in self._sessions.values()}
