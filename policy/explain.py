"""``pecgw policy explain``: what one person may do, and which rule says so — as plain text.

Pure: the caller supplies the person's directory groups and, when it wants per-folder rights,
the provider's folder list (human Unicode names).  The report has three parts:

1. the person, their groups, and their offices with the reason for each (a group listed in
   ``offices.X.groups``, or the username listed in ``offices.X.members``);
2. per mailbox (every mailbox the person can use, or the one named) whether they may send PEC
   from it and the ``send`` entry that says so;
3. per folder (the ``folder`` given, or each of ``folders``) the effective rights in RFC 4314
   order and, per office, the rule that decided (its TOML key and pattern) — or, with no folder
   list, the person's offices' rules on that mailbox, most specific first.

Columns are aligned and the output depends only on its inputs, so it can be pasted into a README
and asserted on in tests.  ``-`` means no rights: the folder is hidden from the person.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from policy.evaluate import (can_use_mailbox, deciding_rules, effective_rights,
                             mailbox_send_allowed, memberships)
from policy.model import MailboxPolicy, Policy, Rights, toml_key

__all__ = ["explain"]

LEGEND = ["rights (RFC 4314): l lookup, r read, s keep seen, w write, i insert, p post, k create,",
          "                  x delete folder, t delete messages, e expunge, a administer; - none (hidden)"]


def _r(rights: Rights) -> str:
    return rights.render() or "-"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return [(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths))).rstrip() for row in rows]


def _person(policy: Policy, username: str, groups: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    found = memberships(username, groups, policy)
    lines = [f"person   {username}", f"groups   {', '.join(sorted(groups, key=str.casefold)) or 'none'}"]
    rows = []
    for m in found:
        reasons = [f"group {g!r} ({toml_key('offices', m.office)}.groups)" for g in m.groups]
        if m.listed:
            reasons.insert(0, f"listed in {toml_key('offices', m.office)}.members")
        rows.append((m.office, "; ".join(reasons)))
    table = _table(rows, indent="") if rows else ["none"]
    lines += [("offices  " if n == 0 else "         ") + line for n, line in enumerate(table)]
    return lines, tuple(m.office for m in found)


def _send_line(policy: Policy, offices: tuple[str, ...], mb: MailboxPolicy) -> str:
    d = mailbox_send_allowed(policy, offices, mb.name)
    if d.rights.send:
        return "  send PEC: yes — " + ", ".join(f"{r.office} ({r.source_key})" for r in d.rules)
    return f"  send PEC: no — none of these offices is listed in {mb.source_key}.send"


def _folder_rows(policy: Policy, offices: tuple[str, ...], mb: MailboxPolicy,
                 folders: Iterable[str]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("folder", "rights", "office", "grants", "rule", "pattern")]
    for folder in folders:
        total = _r(effective_rights(policy, offices, mb.name, folder).rights)
        decided = deciding_rules(policy, offices, mb.name, folder) or (("(none)", None),)
        for n, (office, rule) in enumerate(decided):
            lead = (folder, total) if n == 0 else ("", "")
            if rule is None:
                rows.append(lead + (office, _r(mb.default_rights), mb.default_key, ""))
            else:
                rows.append(lead + (office, _r(rule.rights), rule.source_key, rule.pattern))
    return rows


def _rule_rows(offices: tuple[str, ...], mb: MailboxPolicy) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("office", "pattern", "rights", "rule")]
    for office in offices:
        for rule in mb.ranked.get(office, ()):
            rows.append((office, rule.pattern, _r(rule.rights), rule.source_key))
    rows.append(("(any)", "(no rule matches)", _r(mb.default_rights), mb.default_key))
    return rows


def explain(policy: Policy, username: str, groups: Sequence[str], mailbox: str | None = None,
            folder: str | None = None, folders: list[str] | None = None) -> str:
    """A readable report of ``username``'s offices, rights and the rules behind them.

    ``mailbox`` limits the report to one mailbox (``ValueError`` if the policy has none by that
    name); otherwise every mailbox the person can use is shown.  ``folder`` or ``folders`` (the
    provider's folder list, in the order to show) give per-folder rights; without them the
    report lists the rules that apply.  Ends with a newline.
    """
    lines, offices = _person(policy, username, groups)
    if mailbox is not None and mailbox not in policy.mailboxes:
        raise ValueError(f"unknown mailbox {mailbox!r} (mailboxes: {', '.join(sorted(policy.mailboxes))})")
    names = [mailbox] if mailbox is not None else [
        m for m in sorted(policy.mailboxes) if can_use_mailbox(policy, offices, m)]
    if not names:
        lines += ["", "mailboxes: none — no office of this person can see or send from any mailbox"]
    wanted = [folder] if folder is not None else list(folders or [])
    for name in names:
        mb = policy.mailboxes[name]
        lines += ["", f"mailbox {name}  (delimiter {mb.delimiter!r})"]
        if not can_use_mailbox(policy, offices, name):
            lines.append("  cannot use this mailbox: no folder is visible and no send right")
        lines.append(_send_line(policy, offices, mb))
        lines.append("")
        lines += _table(_folder_rows(policy, offices, mb, wanted) if wanted else _rule_rows(offices, mb))
    lines += ["", *LEGEND]
    return "\n".join(lines) + "\n"
