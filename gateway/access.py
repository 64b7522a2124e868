"""Which PEC mailbox a login opens.

The policy decides who may use a mailbox (:func:`policy.can_use_mailbox`: some folder visible, or
the send right).  A person allowed on exactly one mailbox logs in with their plain name; one
allowed on several must pick with ``name#mailbox`` (see :mod:`gateway.login`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config import MailboxConfig
from policy import Policy, can_use_mailbox

__all__ = ["MailboxChoice", "choose_mailbox", "usable_mailboxes"]


@dataclass(frozen=True)
class MailboxChoice:
    """The mailbox a login opens, or why none: ``error`` is safe to show the client."""

    mailbox: MailboxConfig | None
    error: str = ""


def usable_mailboxes(policy: Policy, offices: Iterable[str],
                     mailboxes: Mapping[str, MailboxConfig]) -> list[MailboxConfig]:
    """The configured mailboxes the policy lets these offices use, by name."""
    offices = tuple(offices)
    return [mailboxes[n] for n in sorted(mailboxes) if can_use_mailbox(policy, offices, n)]


def choose_mailbox(allowed: list[MailboxConfig], requested: str | None) -> MailboxChoice:
    if requested is not None:
        for m in allowed:
            if m.name == requested:
                return MailboxChoice(m)
        return MailboxChoice(None, "No access to that PEC mailbox")
    if len(allowed) == 1:
        return MailboxChoice(allowed[0])
    if not allowed:
        return MailboxChoice(None, "No PEC mailbox is assigned to you")
    names = ", ".join(m.name for m in allowed)
    return MailboxChoice(None, f"Several PEC mailboxes are assigned to you; log in as name#mailbox ({names})")
