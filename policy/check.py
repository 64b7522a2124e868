"""Warnings for ``pecgw policy check``: things that load fine but are probably not what was meant.

Errors stop a load (:mod:`policy.loader`); warnings do not, because each has a legitimate use.
Each warning reads like an error, ``<file>: <key>: <observation>``, so an editor can jump to it:

- two rules of one office, equally specific, that can match the same folder (the first listed
  wins — see :mod:`policy.evaluate` — but the reader of the file may expect the other);
- a wildcard rule granting x, t or e (allowed, but it also covers folders created tomorrow);
- a rule granting rights without ``l`` (the gateway hides folders without ``l``, so the other
  rights only count together with another office's ``l``);
- a folder pattern that looks like modified UTF-7 (policies use the human Unicode names);
- an office with no members and no groups, or one no mailbox mentions;
- a mailbox nobody can see (no rule grants ``l`` and the default does not either).
"""

from __future__ import annotations

import base64
import re

from policy.model import MailboxPolicy, Policy, Right, toml_key
from policy.patterns import is_exact, overlap, specificity

__all__ = ["warnings"]

_MUTF7 = re.compile(r"&([A-Za-z0-9+,]+)-")


def _decode_mutf7(text: str) -> str | None:
    """RFC 3501 §5.1.3 modified UTF-7 → Unicode, or None when it does not decode."""
    def one(m: re.Match[str]) -> str:
        b64 = m.group(1).replace(",", "/")
        raw = base64.b64decode(b64 + "=" * (-len(b64) % 4))
        return raw.decode("utf-16-be")
    try:
        return _MUTF7.sub(one, text).replace("&-", "&")
    except (ValueError, UnicodeDecodeError):
        return None


def warnings(policy: Policy) -> list[str]:
    """Everything worth a second look, in file order (offices first, then mailboxes)."""
    src = policy.source
    out: list[str] = []
    used = {r.office for mb in policy.mailboxes.values() for r in mb.rules}
    used |= {o for mb in policy.mailboxes.values() for o in mb.send_offices}
    for name, office in policy.offices.items():
        if not office.groups and not office.members:
            out.append(f"{src}: {toml_key('offices', name)}: no members and no groups: nobody is in this office")
        elif name not in used:
            out.append(f"{src}: {toml_key('offices', name)}: no mailbox rule or send list names this office")
    for mb in policy.mailboxes.values():
        out += _mailbox_warnings(src, mb)
    return out


def _mailbox_warnings(src: str, mb: MailboxPolicy) -> list[str]:
    out: list[str] = []
    for i, rule in enumerate(mb.rules):
        key = rule.source_key
        for earlier in mb.rules[:i]:
            if earlier.office != rule.office or specificity(earlier.pattern) != specificity(rule.pattern):
                continue
            folder = overlap(earlier.pattern, rule.pattern, mb.delimiter)
            if folder is not None:
                out.append(f"{src}: {key}.folders: {rule.pattern!r} is as specific as {earlier.pattern!r} "
                           f"({earlier.source_key}) for office {rule.office!r} and both match e.g. "
                           f"{folder!r}; the first listed ({earlier.source_key}) wins")
        protected = sorted(rule.rights.protected, key=lambda r: r.order)
        if protected and not is_exact(rule.pattern):
            letters = "".join(r.value for r in protected)
            out.append(f"{src}: {key}.rights: the wildcard {rule.pattern!r} grants {letters!r} "
                       "(can destroy PEC) on every folder it matches, including folders created later")
        if rule.rights.letters and not rule.rights.has(Right.LOOKUP):
            out.append(f"{src}: {key}.rights: {rule.rights.render()!r} without 'l': the folder is hidden "
                       f"from {rule.office!r}, so these rights count only with another office's 'l'")
        if _MUTF7.search(rule.pattern):
            human = _decode_mutf7(rule.pattern)
            hint = f" ({human!r}?)" if human and human != rule.pattern else ""
            out.append(f"{src}: {key}.folders: {rule.pattern!r} looks like modified UTF-7; "
                       f"write the folder's human name{hint}")
        if rule.pattern != rule.pattern.strip():
            out.append(f"{src}: {key}.folders: {rule.pattern!r} begins or ends with a space")
    if not mb.default_rights.has(Right.LOOKUP) and not any(r.rights.has(Right.LOOKUP) for r in mb.rules):
        out.append(f"{src}: {mb.source_key}: nobody can see this mailbox: no rule grants 'l' "
                   "and default_rights has no 'l'")
    return out
