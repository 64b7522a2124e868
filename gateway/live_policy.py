"""The office folder policy in force: loaded at start, swapped whole on reload, never half.

Sessions read :attr:`LivePolicy.current` at every command, so a reload (SIGHUP, ``pecgw reload``)
reaches them at their next command without any locking: the policy is a frozen value and the
swap is one attribute assignment on the event loop.  A reload that fails — bad TOML, an unknown
office, a rule naming a mailbox this gateway does not serve — changes nothing: the last good
policy stays in force and the error is logged with the file, key and problem.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

from policy import Policy, PolicyError, load_policy

__all__ = ["LivePolicy", "load_gateway_policy"]

log = logging.getLogger("pecgw.policy")


def load_gateway_policy(path: Path, mailboxes: Collection[str]) -> Policy:
    """Load ``path`` and check it against the mailboxes the gateway serves.

    A policy for a mailbox the gateway does not know is refused (it is a typo, or a mailbox
    whose connection is missing from gateway.toml); a served mailbox the policy does not name is
    allowed — nobody can use it until a rule grants access — and reported by ``check-config``.
    """
    policy = load_policy(path)
    for name, mb in policy.mailboxes.items():
        if name not in mailboxes:
            served = ", ".join(sorted(mailboxes)) or "none"
            raise PolicyError(policy.source, mb.source_key,
                              f"no mailbox {name!r} in the gateway configuration (mailboxes: {served})")
    return policy


class LivePolicy:
    """Holds the current :class:`~policy.Policy`; ``generation`` counts successful loads."""

    def __init__(self, path: Path, mailboxes: Collection[str]) -> None:
        self.path = Path(path)
        self._mailboxes = tuple(mailboxes)
        self._fixed = False
        self.current: Policy = load_gateway_policy(self.path, self._mailboxes)  # raises at start
        self.generation = 1

    @classmethod
    def fixed(cls, policy: Policy) -> "LivePolicy":
        """A holder of a policy that was built in memory (tests, tools); :meth:`reload` is a no-op."""
        obj = cls.__new__(cls)
        obj.path, obj._mailboxes, obj.current, obj.generation = Path(policy.source), (), policy, 1
        obj._fixed = True
        return obj

    def reload(self) -> str | None:
        """Load the file again; return None on success, or the error (the old policy stays)."""
        if self._fixed:
            return None
        try:
            policy = load_gateway_policy(self.path, self._mailboxes)
        except PolicyError as exc:
            log.error("policy reload refused, keeping the policy loaded before: %s", exc)
            return str(exc)
        self.current = policy
        self.generation += 1
        log.info("policy reloaded from %s (generation %d): offices %d, mailboxes %d",
                 self.path, self.generation, len(policy.offices), len(policy.mailboxes))
        return None
