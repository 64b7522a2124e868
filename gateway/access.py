"""Which offices a person belongs to, and which PEC mailbox a login opens.

Offices are defined in the config as directory groups and/or named members; a mailbox lists the
offices that may use it.  A person allowed on exactly one mailbox logs in with their plain name;
one allowed on several must pick with ``name#mailbox`` (see :mod:`gateway.login`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.directory import Person
from gateway.config import MailboxConfig, OfficeConfig

__all__ = ["offices_of", "MailboxChoice", "choose_mailbox"]


def offices_of(person: Person, offices: dict[str, OfficeConfig]) -> tuple[str, ...]:
    """The offices ``person`` is in, by group membership or by being listed, sorted by name."""
    groups = {g.lower() for g in person.groups}
    found = [
        name
        for name, office in offices.items()
        if person.username in office.members or any(g.lower() in groups for g in office.groups)
    ]
    return tuple(sorted(found))


@dataclass(frozen=True)
class MailboxChoice:
    """The mailbox a login opens, or why none: ``error`` is safe to show the client."""

    mailbox: MailboxConfig | None
    error: str = ""


def choose_mailbox(person_offices: tuple[str, ...], requested: str | None,
                   mailboxes: dict[str, MailboxConfig]) -> MailboxChoice:
    allowed = [m for m in mailboxes.values() if set(m.offices) & set(person_offices)]
    if requested is not None:
        for m in allowed:
            if m.name == requested:
                return MailboxChoice(m)
        return MailboxChoice(None, "No access to that PEC mailbox")
    if len(allowed) == 1:
        return MailboxChoice(allowed[0])
    if not allowed:
        return MailboxChoice(None, "No PEC mailbox is assigned to you")
    names = ", ".join(sorted(m.name for m in allowed))
    return MailboxChoice(None, f"Several PEC mailboxes are assigned to you; log in as name#mailbox ({names})")
