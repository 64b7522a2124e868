"""Evaluation: which offices a person is in, and what their offices may do on a folder.

The rules, in the order they apply:

1. **Offices.** A person is in an office when their username is listed in its ``members``
   (exact, as the directory spells it) or one of their directory groups is in its ``groups``
   (case-insensitively: LDAP ``cn`` values compare without case).
2. **Per office, the most specific rule decides.**  For each of the person's offices, the rules
   of that office on the mailbox whose pattern matches the folder are ranked by
   :func:`policy.patterns.specificity`; the most specific one alone gives that office's rights
   (a narrower rule may therefore grant *less* than a broader one — that is how a folder is
   hidden from an office that may read the rest).  **Tie-break:** among equally specific
   matching rules, the one listed first in the file wins (``policy check`` warns about such
   pairs).  An office with no matching rule gets the mailbox's ``default_rights``.
3. **Union over offices.**  The person gets the union of their offices' rights, so being in one
   more office never takes a right away.  A person in no office gets ``default_rights``.
4. **PEC-safe.**  ``default_rights`` never contains x, t or e (the loader refuses it), so those
   rights exist only where a rule names them.

Evaluation fails closed: a mailbox the policy does not know grants nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from policy.model import NO_RIGHTS, Policy, Right, Rights, Rule
from policy.patterns import matches

__all__ = [
    "Decision",
    "Membership",
    "memberships",
    "offices_of",
    "deciding_rules",
    "effective_rights",
    "can_use_mailbox",
    "mailbox_send_allowed",
]


@dataclass(frozen=True)
class Decision:
    """The rights a person has, with every rule that contributed to them.

    ``default_key`` is set (``mailboxes.protocollo.default_rights``) when at least one of the
    person's offices had no matching rule and so took the mailbox default — the default then
    "decided" too, even when it grants nothing.  For a refused send it is the mailbox's
    ``send`` key (no office of the person is listed there).
    """

    rights: Rights
    rules: tuple[Rule, ...] = ()
    default_key: str | None = None

    def has(self, right: Right | str) -> bool:
        return self.rights.has(right)

    @property
    def sources(self) -> tuple[str, ...]:
        """The TOML keys behind this decision, for an audit row."""
        keys = tuple(r.source_key for r in self.rules)
        return keys + ((self.default_key,) if self.default_key else ())


@dataclass(frozen=True)
class Membership:
    """Why a person is in an office: listed by username and/or via these directory groups."""

    office: str
    listed: bool
    groups: tuple[str, ...]


def memberships(username: str, groups: Iterable[str], policy: Policy) -> tuple[Membership, ...]:
    """The person's offices with the reason for each, sorted by office name."""
    mine = {g.casefold(): g for g in groups}
    found = []
    for name in sorted(policy.offices):
        office = policy.offices[name]
        via = tuple(sorted({mine[g.casefold()] for g in office.groups if g.casefold() in mine}))
        listed = username in office.members
        if listed or via:
            found.append(Membership(name, listed, via))
    return tuple(found)


def offices_of(username: str, groups: Iterable[str], policy: Policy) -> tuple[str, ...]:
    """The names of the person's offices, sorted."""
    return tuple(m.office for m in memberships(username, groups, policy))


def _names(offices: Iterable[str]) -> list[str]:
    """Sorted, deduplicated office names; a bare string is a caller bug, not a set of letters."""
    if isinstance(offices, str):
        raise TypeError(f"offices must be a collection of office names, not the string {offices!r}")
    return sorted(set(offices))


def deciding_rules(policy: Policy, offices: Iterable[str], mailbox: str,
                   folder: str) -> tuple[tuple[str, Rule | None], ...]:
    """For each office (sorted, deduplicated) the rule that decides its rights on ``folder``.

    ``None`` means no rule of that office matches: the office gets ``default_rights``.
    """
    mb = policy.mailboxes.get(mailbox)
    if mb is None:
        return ()
    out: list[tuple[str, Rule | None]] = []
    for office in _names(offices):
        rule = next((r for r in mb.ranked.get(office, ()) if matches(r.pattern, folder, mb.delimiter)),
                    None)
        out.append((office, rule))
    return tuple(out)


def effective_rights(policy: Policy, offices: Iterable[str], mailbox: str, folder: str) -> Decision:
    """The person's rights on ``folder`` of ``mailbox``: per office the most specific rule, united."""
    mb = policy.mailboxes.get(mailbox)
    if mb is None:
        _names(offices)
        return Decision(NO_RIGHTS)
    decided = deciding_rules(policy, offices, mailbox, folder)
    rights, rules, used_default = NO_RIGHTS, [], not decided
    for _office, rule in decided:
        if rule is None:
            used_default = True
        else:
            rules.append(rule)
            rights |= rule.rights
    if used_default:
        rights |= mb.default_rights
    return Decision(rights, tuple(rules), mb.default_key if used_default else None)


def can_use_mailbox(policy: Policy, offices: Iterable[str], mailbox: str) -> bool:
    """May the person use ``mailbox`` at all?

    True when one of their offices has a rule granting ``l`` on it (some folder is visible) or
    may send from it, or when the mailbox default grants ``l`` to everybody.
    """
    mb = policy.mailboxes.get(mailbox)
    if mb is None:
        return False
    if mb.default_rights.has(Right.LOOKUP):
        return True
    mine = set(_names(offices))
    return bool(mine & set(mb.send_offices)) or any(
        r.rights.has(Right.LOOKUP) for o in mine for r in mb.ranked.get(o, ()))


def mailbox_send_allowed(policy: Policy, offices: Iterable[str], mailbox: str) -> Decision:
    """May the person send PEC from ``mailbox``?  ``rights.send``, with the ``send`` entries that allow it."""
    mb = policy.mailboxes.get(mailbox)
    if mb is None:
        return Decision(NO_RIGHTS)
    grants = tuple(r for o in _names(offices) if (r := mb.send_rule(o)) is not None)
    return Decision(Rights(send=bool(grants)), grants, None if grants else f"{mb.source_key}.send")
