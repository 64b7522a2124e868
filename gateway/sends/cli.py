"""``pecgw sends``: every PEC sent through the gateway, and what became of it per recipient.

Reads the send records (:mod:`gateway.sends.store`) where ``[audit]`` puts them — the same
SQLite file or PostgreSQL schema as the audit trail — through a read-only connection, so an
operator or auditor with read access only can run it, and nothing is created where the
configuration points at no database.

One line per send (when it was recorded, who sent it, from which mailbox, its state, its
Message-ID, the identificativo from the accettazione, the subject), then one line per recipient:
``certificato`` or ``esterno`` (from the accettazione), and ``delivered`` / ``failed`` /
``warned`` / ``pending`` with the daticert time of the receipt that said so (PEC.md section 4).
An ``esterno`` recipient never gets a delivery receipt: once the send is accepted, that is all
there is to know, and the table says so.  ``--format jsonl`` gives the records as stored, with
the receipts linked to each.

Times are UTC; ``--since`` takes ISO 8601 like ``pecgw audit query`` (UTC without an offset).
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from typing import Any

from gateway.audit_cli import parse_time
from gateway.cli_error import CliError
from gateway.config import load_config

__all__ = ["cmd_sends", "add_parser", "send_lines"]


def _clean(value: Any, width: int | None = None) -> str:
    """A cell: no line breaks or control characters (a Subject must not drive the terminal)."""
    if value is None:
        return ""
    text = "".join(ch for ch in " ".join(str(value).split()) if ch.isprintable())
    return text if width is None or len(text) <= width else text[:width - 1] + "…"


def _when(value: str | None) -> str:
    return _clean(value)[:19].replace("T", " ")


def send_lines(records: list) -> list[str]:
    """The table: a line per send, then an indented line per recipient."""
    heads = [[_when(r.created), _clean(r.person, 20), _clean(r.mailbox, 28), r.state, _clean(r.message_id, 60),
              _clean(r.identificativo, 64), _clean(r.subject, 60)] for r in records]
    titles = ["when (UTC)", "person", "mailbox", "state", "message-id", "identificativo", "subject"]
    widths = [max([len(t), *(len(h[i]) for h in heads)]) for i, t in enumerate(titles)]
    lines = ["  ".join(t.ljust(w) for t, w in zip(titles, widths)).rstrip()]
    for record, head in zip(records, heads):
        lines.append("  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip())
        rows = [_recipient(record, address, row) for address, row in record.recipients.items()]
        rwidths = [max((len(r[i]) for r in rows), default=0) for i in range(5)]
        lines += ["    " + "  ".join(c.ljust(w) for c, w in zip(row, rwidths)).rstrip() for row in rows]
    return lines


def _recipient(record, address: str, row: dict) -> list[str]:
    kind, state, detail = row.get("kind") or "?", row.get("state") or "", row.get("detail")
    if kind == "esterno" and state == "pending" and record.state == "accepted":
        state, detail = "accepted", "ordinary address: the accettazione is the last receipt"
    return [_clean(address, 60), kind, state, _when(row.get("at")), _clean(detail, 80)]


def cmd_sends(args) -> int:
    import sqlite3

    import psycopg

    from gateway.app import open_vault
    from gateway.audit.store import StoreMissing
    from gateway.sends.store import SendStore, open_send_store

    filters: dict[str, Any] = {"person": args.user, "mailbox": args.mailbox}
    if args.since:
        since = parse_time(args.since, "--since")
        filters["since"] = since.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")
    config = load_config(args.config)
    if args.mailbox is not None and args.mailbox not in config.mailboxes:
        known = ", ".join(sorted(config.mailboxes)) or "none"
        raise CliError(f"{config.source}: no mailbox {args.mailbox!r} (configured: {known})")
    try:
        store = open_send_store(config, open_vault(config), read_only=True)
    except StoreMissing as exc:
        raise CliError(f"{config.source}: audit: {exc} (the gateway creates it at its first start)") from None
    except (sqlite3.Error, psycopg.Error) as exc:
        raise CliError(f"cannot open the send records: {' '.join(str(exc).split())}") from None
    try:
        records = store.list(**filters)
        if args.format == "jsonl":
            for record in records:
                row = SendStore.row_dict(record)
                row["receipts"] = store.receipts(record.id)
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            return 0
    except (sqlite3.Error, psycopg.Error) as exc:
        raise CliError(f"the send records cannot be read: {' '.join(str(exc).split())} (has the gateway "
                       "started with this configuration?)") from None
    finally:
        store.close()
    if not records:
        print("no matching sends", file=sys.stderr)
        return 0
    for line in send_lines(records):
        print(line)
    return 0


def add_parser(sub, with_config) -> None:
    """``pecgw sends`` under the top-level subparsers ``sub``."""
    sp = with_config(sub.add_parser(
        "sends", help="the PEC sent through the gateway, with each recipient's state from the receipts",
        description="One line per send (oldest first), then one per recipient: certificato/esterno and "
                    "delivered, failed, warned or pending, with the receipt's time (UTC)."))
    sp.add_argument("--user", help="only the sends of this person (login name)")
    sp.add_argument("--mailbox", help="only the sends from this mailbox (its name in the config)")
    sp.add_argument("--since", metavar="ISO", help="only sends recorded from this time (UTC without an offset)")
    sp.add_argument("--format", choices=("table", "jsonl"), default="table")
    sp.set_defaults(func=cmd_sends)
