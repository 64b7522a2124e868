"""``pecgw mailboxes``: the PEC Manager's inventory of every configured mailbox.

One row per mailbox: its address, provider, the offices the policy lets use it (``(send)``:
may send from it), the provider's state, the last provider login that succeeded, the quota used
and its limit (IMAP QUOTA), the messages in INBOX and the **unhandled PEC** (unseen incoming
PEC older than ``[census] unhandled_age``).

With a running gateway the rows come from it over the admin channel (verb ``census``): the
latest probe of each mailbox (every ``[census] probe_interval``; ``--refresh`` probes now), the
policy in force and the last successful login of any of its sessions.  With none, the command
probes each provider itself, once, with the vaulted password -- a mailbox whose password the
provider refuses is then tried once per run, so do not run it in a loop against such a mailbox.

Exit status: 0 when every mailbox answered and none is at or above ``[census] quota_warn``;
1 otherwise (the table still prints), so a cron job or a monitoring check can use it.  Cells are
shown like ``pecgw sessions`` shows them (nothing reaches the terminal raw).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from gateway.admin.client import AdminUnavailable, call
from gateway.config import GatewayConfig, load_config
from gateway.mailbox_census import census_row, size_text
from gateway.mailbox_probe import PASSWORD_REFUSED
from gateway.terminal_text import json_line, shown, table, when

__all__ = ["add_parser", "cmd_mailboxes", "census_here"]

_HEADER = ["MAILBOX", "ADDRESS", "PROVIDER", "OFFICES", "UPSTREAM", "LAST LOGIN", "QUOTA", "INBOX", "UNHANDLED"]


def census_here(config: GatewayConfig) -> list[dict]:
    """The rows, probing every provider from this process (no gateway running)."""
    from gateway.app import open_vault
    from gateway.live_policy import load_gateway_policy
    from gateway.mailbox_credentials import MailboxCredentials
    from gateway.mailbox_probe import probe_mailbox
    from policy import PolicyError

    try:
        policy = load_gateway_policy(config.policy_file, config.mailboxes)
    except PolicyError as exc:
        print(f"warning: offices not shown: {exc}", file=sys.stderr)
        policy = None
    credentials = MailboxCredentials(open_vault(config), config.mailboxes)
    census = config.census

    async def probe_all():
        return await asyncio.gather(*(probe_mailbox(m, credentials, timeout_s=census.probe_timeout_s,
                                                    unhandled_age_s=census.unhandled_age_s)
                                      for m in config.mailboxes.values()))

    # the credentials' ERROR line speaks for a running gateway ("no login will be attempted"); here
    # the row says what happened, and what running the command again does
    logging.getLogger("pecgw.credentials").setLevel(logging.CRITICAL)
    results = {r.mailbox: r for r in asyncio.run(probe_all())}
    rows = [census_row(m, policy, results[name], credentials.last_accepted.get(name), census.quota_warn)
            for name, m in sorted(config.mailboxes.items())]
    for row in rows:
        if row["upstream"] == PASSWORD_REFUSED:
            entry = config.mailboxes[row["mailbox"]].password_vault_key
            row["reason"] = (f"the provider refused the password in vault entry {entry!r}; each run of this command "
                             f"without a running gateway tries it once more, and a provider locks a mailbox out "
                             f"after a few wrong passwords: set the right one first ('pecgw vault set "
                             f"{row['mailbox']}')")
    return rows


def cmd_mailboxes(args) -> int:
    config = load_config(args.config)
    try:
        rows = call(config, "census", refresh=bool(args.refresh))["mailboxes"]
        source = "gateway"
    except AdminUnavailable as exc:
        print(f"no running gateway ({exc}); asking each provider from here", file=sys.stderr)
        rows, source = census_here(config), "here"
    if args.mailbox:
        rows = [r for r in rows if r["mailbox"] == args.mailbox]
        if not rows:
            from gateway.cli_error import CliError

            raise CliError(f"{config.source}: no mailbox {args.mailbox!r} (configured: "
                           f"{', '.join(sorted(config.mailboxes))})")
    if args.json:
        for row in rows:
            print(json_line({**row, "source": source}))
    else:
        print(table([_cells(r) for r in rows], _HEADER))
        for row in rows:
            for line in _notes(row, config):
                print(line, file=sys.stderr)
    return 0 if all(r["upstream"] == "ok" and not r["quota_warn"] for r in rows) else 1


def _cells(row: dict) -> list[str]:
    if row["everyone"]:
        offices = "everyone"
    else:
        offices = ", ".join(o["office"] + (" (send)" if o["send"] else "") for o in row["offices"]) or "nobody"
    quota = "-"
    if row["quota_used"] is not None:
        quota = size_text(row["quota_used"])
        if row["quota_limit"]:
            quota += f" / {size_text(row['quota_limit'])} ({row['quota_ratio'] * 100:.0f}%)"
    inbox = "-" if row["messages"] is None else str(row["messages"])
    if row["unseen"] is not None and row["messages"] is not None:
        inbox += f" ({row['unseen']} unseen)"
    return [row["mailbox"], row["address"], row["provider"], offices, row["upstream"].replace("_", " "),
            when(row["last_login"]), quota, inbox, "-" if row["unhandled"] is None else str(row["unhandled"])]


def _notes(row: dict, config: GatewayConfig) -> list[str]:
    name = shown(row["mailbox"])
    out = []
    if row["reason"]:
        reason = shown(row["reason"])
        out.append(f"{'note' if row['upstream'] == 'ok' else 'error'}: {name}: {reason}")
    if row["quota_warn"]:
        out.append(f"warning: {name}: {row['quota_ratio'] * 100:.0f}% of the quota used (census.quota_warn = "
                   f"{config.census.quota_warn:g}): when it is full, incoming PEC bounces back to the sender")
    return out


def add_parser(sub, with_config) -> None:
    """Add ``mailboxes`` to the ``pecgw`` parser."""
    mb = with_config(sub.add_parser(
        "mailboxes", help="inventory of the PEC mailboxes: offices, provider state, quota, INBOX, unhandled PEC",
        description="Asks the running gateway (its latest probe of each provider), or each provider "
                    "directly when no gateway runs. Exit 1 when a mailbox is unreachable or over "
                    "census.quota_warn."))
    mb.add_argument("mailbox", nargs="?", help="only this mailbox")
    mb.add_argument("--json", action="store_true", help="one JSON object per line")
    mb.add_argument("--refresh", action="store_true", help="make the running gateway probe the providers now")
    mb.set_defaults(func=cmd_mailboxes)
