"""One session's view of the policy: the person's offices and rights per folder, by wire name.

Folder names arrive from the client and the provider in modified UTF-7 (``Contabilit&AOA-``);
the policy speaks of human names (``Contabilità``).  :class:`FolderAccess` decodes once, asks
:func:`policy.effective_rights` and caches the answer per wire name until the policy changes.
A name that is not valid modified UTF-7 gets no rights at all: what the gateway cannot name it
cannot match against a rule, so it is hidden rather than guessed at.

The policy is read from its holder at each :meth:`refresh` (once per client command): a reload
is picked up at the next command, and the offices are derived again from the person's directory
groups, so an office added to or removed from the policy counts at once.
"""

from __future__ import annotations

from policy import NO_RIGHTS, Decision, Policy, Right, can_use_mailbox, effective_rights, offices_of
from policy.model import Rights
from policy.patterns import overlap

from gateway.imap_proxy.mailbox import MailboxNameError, decode_mutf7

__all__ = ["FolderAccess", "HIDDEN"]

#: The decision for names that cannot be evaluated (bad modified UTF-7): nothing, hidden.
HIDDEN = Decision(NO_RIGHTS)

_CACHE_LIMIT = 4096  # folders per session; a mailbox with more is re-evaluated as needed


class FolderAccess:
    """Rights of one person on the folders of one mailbox, under the policy in force."""

    def __init__(self, source, person: str, groups: tuple[str, ...], mailbox: str) -> None:
        self._source = source  # has .current: Policy (gateway.live_policy.LivePolicy)
        self.person, self.groups, self.mailbox = person, tuple(groups), mailbox
        self.policy: Policy | None = None
        self.offices: tuple[str, ...] = ()
        self._cache: dict[bytes, Decision] = {}
        self.refresh()

    def refresh(self) -> bool:
        """Pick up a reloaded policy; True when it changed since the last call."""
        current = self._source.current
        if current is self.policy:
            return False
        self.policy = current
        self.offices = offices_of(self.person, self.groups, current)
        self._cache.clear()
        return True

    @property
    def stale(self) -> bool:
        """True when a reloaded policy is waiting for the next :meth:`refresh`."""
        return self._source.current is not self.policy

    @property
    def delimiter(self) -> str:
        assert self.policy is not None
        mb = self.policy.mailboxes.get(self.mailbox)
        return mb.delimiter if mb is not None else "/"

    @property
    def mailbox_usable(self) -> bool:
        """May the person still use the mailbox at all (some folder visible, or send)?"""
        assert self.policy is not None
        return can_use_mailbox(self.policy, self.offices, self.mailbox)

    @staticmethod
    def human(wire: bytes) -> str | None:
        """The Unicode name of a wire name, or None when it is not valid modified UTF-7."""
        try:
            return decode_mutf7(wire)
        except MailboxNameError:
            return None

    def decide(self, wire: bytes) -> Decision:
        """The person's rights on the folder named ``wire`` (modified UTF-7 octets)."""
        found = self._cache.get(wire)
        if found is not None:
            return found
        name = self.canonical(self.human(wire))
        decision = HIDDEN if name is None else self.decide_human(name)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[wire] = decision
        return decision

    def canonical(self, name: str | None) -> str | None:
        """The folder a name denotes, as the policy matches it, or None when it is suspect.

        A trailing delimiter names the folder itself (``CREATE Lavoro/`` is RFC 3501's way to
        create a folder meant to hold subfolders; a provider may treat ``SELECT Segreto/`` as
        ``Segreto``), so it is dropped before matching — otherwise ``*`` granting more than an
        exact ``Segreto`` rule would match it.  Empty, ``.`` and ``..`` components have no
        meaning a rule could express and might be resolved by the provider's file system: such
        names get no rights at all.
        """
        if name is None:
            return None
        delim = self.delimiter
        stripped = name.rstrip(delim)
        if not stripped:
            return None
        if any(part in ("", ".", "..") for part in stripped.split(delim)):
            return None
        return stripped

    def decide_human(self, name: str) -> Decision:
        assert self.policy is not None
        return effective_rights(self.policy, self.offices, self.mailbox, name)

    def rights(self, wire: bytes) -> Rights:
        return self.decide(wire).rights

    def visible(self, wire: bytes) -> bool:
        return self.rights(wire).has(Right.LOOKUP)

    def parent(self, wire: bytes) -> bytes | None:
        """The parent folder's wire name (``a/b/c`` → ``a/b``), or None at the top level."""
        delim = self.delimiter.encode()
        stripped = wire.rstrip(delim) or wire
        head, sep, _ = stripped.rpartition(delim)
        return head if sep and head else None

    def may_see_under(self, prefix: str) -> bool:
        """Could any folder whose human name starts with ``prefix`` be visible (for NAMESPACE)?"""
        assert self.policy is not None
        mb = self.policy.mailboxes.get(self.mailbox)
        if mb is None:
            return False
        if mb.default_rights.has(Right.LOOKUP):
            return True
        probe = prefix.replace("*", "").replace("%", "") + "*"
        return any(rule.rights.has(Right.LOOKUP) and overlap(rule.pattern, probe, mb.delimiter) is not None
                   for office in self.offices for rule in mb.ranked.get(office, ()))
