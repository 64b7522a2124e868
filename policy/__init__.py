"""Office folder policies: RFC 4314 rights per office, per PEC mailbox folder — pure, no I/O.

:mod:`policy.model` (values), :mod:`policy.patterns` (LIST wildcards, specificity),
:mod:`policy.evaluate` (who gets what), :mod:`policy.loader` (TOML, errors), :mod:`policy.check`
(warnings), :mod:`policy.explain` (the readable report).  Nothing here imports ``gateway``.
"""

from policy.check import warnings
from policy.evaluate import (Decision, Membership, can_use_mailbox, deciding_rules, effective_rights,
                             mailbox_send_allowed, memberships, offices_of)
from policy.explain import explain
from policy.loader import PolicyError, load_policy, parse_policy
from policy.model import (NO_RIGHTS, PEC_PROTECTED, RFC4314_ORDER, MailboxPolicy, Office, Policy,
                          Right, Rights, Rule)
from policy.patterns import Specificity, matches, specificity

__all__ = [
    "Decision", "MailboxPolicy", "Membership", "NO_RIGHTS", "Office", "PEC_PROTECTED", "Policy",
    "PolicyError", "RFC4314_ORDER", "Right", "Rights", "Rule", "Specificity", "can_use_mailbox",
    "deciding_rules", "effective_rights", "explain", "load_policy", "mailbox_send_allowed",
    "matches", "memberships", "offices_of", "parse_policy", "specificity", "warnings",
]
