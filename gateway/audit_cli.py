"""``pecgw audit verify|query|message|prune``: the audit trail for auditors, from a terminal.

Every verb opens the store ``[audit]`` configures (SQLite file or PostgreSQL), through the vault
(the chain key, and the PostgreSQL password if one is named).  ``verify`` and ``prune`` need the
chain key and say so when the vault has none; ``query`` and ``message`` only read rows.
``verify``, ``query`` and ``message`` open the store read-only, so an auditor with nothing but
read access (a 0444 file, a SELECT-only role) can run them; only ``prune`` writes.

Times on the command line are ISO 8601 (``2026-03-03``, ``2026-03-03T10:00``,
``2026-03-03T10:00:00+01:00``); without an offset they are UTC, like every time printed here.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import sys
from typing import Any, Callable, Iterable

from gateway.audit.chain import COLUMNS
from gateway.cli_error import CliError
from gateway.config import GatewayConfig, load_config

__all__ = ["cmd_audit_verify", "cmd_audit_query", "cmd_audit_message", "cmd_audit_prune",
           "add_parsers", "parse_head", "parse_time"]

FORMATS = ("table", "csv", "jsonl")

#: Columns of the table format: (heading, row key, widest shown).
TABLE = (("seq", "seq", 10), ("when (UTC)", "when", 26), ("person", "person", 20),
         ("action", "action", 16), ("decision", "decision", 8), ("mailbox", "mailbox", 28),
         ("folder", "folder", 24), ("uid", "msg_uid", 10), ("message-id", "message_id", 48),
         ("subject", "subject", 48))


def parse_time(text: str, option: str) -> _dt.datetime:
    """An ISO date or date-time; UTC when it names no offset."""
    try:
        when = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"{option}: {text!r} is not an ISO date or time "
                       "(e.g. 2026-03-03 or 2026-03-03T10:00:00+01:00)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.timezone.utc)


def _open(args, *, need_key: bool, read_only: bool = True):
    """``(config, store)``; with ``need_key`` the real chain key, else any key (reads only).
    ``read_only=False`` is for ``prune``, which writes to an existing trail but must not create
    an empty one where the configuration points at none."""
    from gateway.app import open_vault
    from gateway.audit.setup import ChainKeyMissing, chain_key, open_store

    config: GatewayConfig = load_config(args.config)
    vault = open_vault(config)
    try:
        key = chain_key(config, vault)
    except ChainKeyMissing:
        if need_key:
            raise
        key = b"read-only: rows are not written with this key"
    if not read_only and config.audit.store == "sqlite" and not config.audit.sqlite_path.exists():
        raise CliError(f"{config.source}: audit.sqlite_path: {config.audit.sqlite_path} does not exist "
                       "(the gateway creates it at its first start)")
    return config, open_store(config, vault, key, read_only=read_only)


def _run(store, work: Callable[[], Any]) -> Any:
    """``work()``, then close ``store``; a database error becomes one CliError line."""
    import sqlite3

    import psycopg

    try:
        return work()
    except (sqlite3.Error, psycopg.Error) as exc:
        raise CliError(f"the audit store failed: {' '.join(str(exc).split())}") from None
    finally:
        store.close()


# -- verify -------------------------------------------------------------------------------------
def parse_head(text: str) -> tuple[int, bytes]:
    """``SEQ:HASH`` as ``verify`` prints it (the last seq, and its hash in hex)."""
    seq, _, digest = text.strip().partition(":")
    try:
        head = int(seq), bytes.fromhex(digest)
    except ValueError:
        head = (0, b"")
    if head[0] < 1 or len(head[1]) != 32:
        raise CliError(f"--expect-head: {text!r} is not SEQ:HASH (a seq and its 64-hex-digit hash, "
                       "as 'pecgw audit verify' prints them)")
    return head


def _verify_ok(report) -> None:
    if report.rows == 0:
        print("OK: the audit trail is empty")
    else:
        head = f"{report.last_seq}:{report.last_hash.hex()}"
        print(f"OK: {report.rows} rows, seq {report.first_seq}..{report.last_seq}, chain intact; "
              f"last hash {report.last_hash.hex()}")
        print(f"keep the head to prove later that no row was cut off the end: --expect-head {head}")
    if report.checkpoint:
        print(report.checkpoint)


def _verify_problems(report) -> None:
    where = f", seq {report.first_seq}..{report.last_seq}" if report.rows else ""
    print(f"{len(report.problems)} problem(s) in {report.rows} rows{where}:")
    for problem in report.problems:
        print(problem)
    for note in (report.checkpoint, report.hint):
        if note:
            print(note)


def cmd_audit_verify(args) -> int:
    """Walk the chain; exit 1 naming each problem.  Rows cut off the end of a chain leave no
    trace in it (the row before them is then an intact end): only a head kept from an earlier
    run, given back as ``--expect-head``, shows them."""
    expect_head = parse_head(args.expect_head) if args.expect_head else None
    _config, store = _open(args, need_key=True)
    report = _run(store, lambda: store.verify(expect_head))
    if report.ok:
        _verify_ok(report)
        return 0
    _verify_problems(report)
    return 1


# -- query / message ------------------------------------------------------------------------------
def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if key == "when":
        return value[:26].replace("T", " ")
    # no line breaks, tabs or control characters inside a cell: a Subject must not drive the terminal
    return "".join(ch for ch in " ".join(str(value).split()) if ch.isprintable())


def _table(rows: list[dict[str, Any]], columns=TABLE) -> Iterable[str]:
    cells = [[_cell(r, key) for _h, key, _w in columns] for r in rows]
    cells = [[c if len(c) <= w else c[:w - 1] + "…" for c, (_h, _k, w) in zip(line, columns)]
             for line in cells]
    widths = [max([len(h), *(len(line[i]) for line in cells)]) for i, (h, _k, _w) in enumerate(columns)]
    yield "  ".join(h.ljust(w) for (h, _k, _w), w in zip(columns, widths)).rstrip()
    for line in cells:
        yield "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()


def _csv_value(value: Any) -> Any:
    if isinstance(value, list):
        value = ";".join(map(str, value))
    elif isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # a spreadsheet must not run a Subject as a formula (CSV injection)
    return "" if value is None else value


def write_rows(rows: list[dict[str, Any]], fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        fields = ("seq", *COLUMNS)
        writer.writerow(fields)
        for row in rows:
            writer.writerow([_csv_value(row.get(f)) for f in fields])
    else:
        if not rows:
            print("no matching rows", file=sys.stderr)
            return
        for line in _table(rows):
            out.write(line + "\n")


def cmd_audit_query(args) -> int:
    filters: dict[str, Any] = {name: getattr(args, name) for name in
                               ("person", "office", "mailbox", "folder", "action", "message_id", "pec_id")
                               if getattr(args, name) is not None}
    if args.since:
        filters["since"] = parse_time(args.since, "--since")
    if args.until:
        filters["until"] = parse_time(args.until, "--until")
    if args.limit is not None:
        if args.limit < 0:
            raise CliError("--limit: must not be negative")
        filters["limit"] = args.limit
    _config, store = _open(args, need_key=False)
    rows = _run(store, lambda: _query_ids(store, filters))
    write_rows(rows, args.format)
    return 0


def _query_ids(store, filters: dict[str, Any]) -> list[dict[str, Any]]:
    """``query``, with ``--message-id`` and ``--pec-id`` matched with or without the angle
    brackets (a daticert gives the identificativo bare; rows keep it as Message-IDs are written)."""
    ids = [name for name in ("message_id", "pec_id") if name in filters]
    if not ids:
        return store.query(**filters)
    found: dict[int, dict[str, Any]] = {}
    combos: list[dict[str, str]] = [{}]
    for name in ids:
        combos = [{**c, name: v} for c in combos for v in _variants(filters[name])]
    for combo in combos:
        for row in store.query(**{**filters, **combo}):
            found[row["seq"]] = row
    rows = [found[seq] for seq in sorted(found)]
    return rows[:filters["limit"]] if "limit" in filters else rows


def _variants(ident: str) -> list[str]:
    """The ID as typed, and with or without the angle brackets Message-IDs are written with."""
    ident = ident.strip()
    bare = ident[1:-1] if ident.startswith("<") and ident.endswith(">") else ident
    return list(dict.fromkeys([ident, bare, f"<{bare}>"]))


MESSAGE_TABLE = (("when (UTC)", "when", 26), ("person", "person", 20), ("action", "action", 16),
                 ("decision", "decision", 8), ("mailbox", "mailbox", 28), ("folder", "folder", 24),
                 ("uid", "msg_uid", 10), ("message-id", "message_id", 40), ("pec kind", "pec_kind", 20),
                 ("client", "client_name", 24), ("ip", "client_ip", 39), ("detail", "detail_text", 60))


def _detail_text(detail: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" if not isinstance(v, str) else f"{k}={v}"
                    for k, v in sorted(detail.items()))


def cmd_audit_message(args) -> int:
    _config, store = _open(args, need_key=False)

    def history() -> dict[int, dict[str, Any]]:
        found = {}
        for ident in _variants(args.id):
            for column in ("message_id", "pec_id", "pec_ref"):
                for row in store.query(**{column: ident}):
                    found[row["seq"]] = row
        return found

    found = _run(store, history)
    rows = sorted(found.values(), key=lambda r: (r["when"], r["seq"]))
    if args.format != "table":
        write_rows(rows, args.format)
        return 0
    if not rows:
        print(f"no audit row names {args.id!r} (as Message-ID, PEC identificativo or "
              "X-Riferimento-Message-ID)", file=sys.stderr)
        return 0
    about = next((r for r in rows if r.get("message_id") in _variants(args.id) or r.get("pec_id")), rows[0])
    for label, key in (("Message-ID", "message_id"), ("Subject", "subject"), ("From", "sender"),
                       ("Date", "msg_date"), ("PEC kind", "pec_kind"), ("PEC id", "pec_id"),
                       ("PEC reference", "pec_ref")):
        if about.get(key):
            print(f"{label + ':':15}{_cell(about, key)}")
    print()
    for line in _table([{**r, "detail_text": _detail_text(r["detail"])} for r in rows], MESSAGE_TABLE):
        print(line)
    return 0


# -- prune -----------------------------------------------------------------------------------------
def cmd_audit_prune(args) -> int:
    before = parse_time(args.before, "--before")
    config, store = _open(args, need_key=True, read_only=False)
    where = (config.audit.sqlite_path if config.audit.store == "sqlite"
             else f"PostgreSQL schema {config.audit.postgresql_schema}")
    if not args.yes:
        if not sys.stdin.isatty():
            store.close()
            raise CliError("prune deletes audit rows: confirm on a terminal, or pass --yes")
        try:
            answer = input(f"Delete the audit rows written before {before.isoformat()} from {where}? "
                           "An anchor row keeps the rest verifiable. [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            store.close()
            print("nothing deleted")
            return 0
    count = _run(store, lambda: store.prune(before))
    if count:
        print(f"pruned {count} rows written before {before.isoformat()} (an anchor row vouches for the rest)")
    else:
        print(f"nothing to prune: no row was written before {before.isoformat()}")
    return 0


# -- parsers ----------------------------------------------------------------------------------------
def add_parsers(sub, with_config) -> None:
    """``pecgw audit ...`` under the top-level subparsers ``sub``."""
    audit = sub.add_parser("audit", help="verify, query and prune the audit trail")
    asub = audit.add_subparsers(dest="audit_cmd", required=True)
    av = with_config(asub.add_parser(
        "verify", help="check the hash chain; exit 1 naming each altered, moved or missing row",
        description="Walks the whole chain with the key from the vault. Prints OK with the row count, "
                    "the last seq and its hash, or each problem on its own line. Rows cut off the end "
                    "of the chain leave no trace in it: keep the head OK prints (SEQ:HASH) elsewhere "
                    "and pass it back with --expect-head to prove that no row up to it was cut."))
    av.add_argument("--expect-head", dest="expect_head", metavar="SEQ:HASH",
                    help="a head printed by an earlier verify: the chain must still reach SEQ, with HASH there")
    av.set_defaults(func=cmd_audit_verify)

    aq = with_config(asub.add_parser("query", help="rows matching all filters given, oldest first"))
    aq.add_argument("--person")
    aq.add_argument("--office", help="rows of people acting for this office")
    aq.add_argument("--mailbox")
    aq.add_argument("--folder")
    aq.add_argument("--action", help="e.g. login, fetch, flags, move, expunge, denied")
    aq.add_argument("--since", metavar="ISO", help="from this time (inclusive; UTC without an offset)")
    aq.add_argument("--until", metavar="ISO", help="to this time (exclusive)")
    aq.add_argument("--message-id", dest="message_id", metavar="ID")
    aq.add_argument("--pec-id", dest="pec_id", metavar="ID", help="the PEC identificativo")
    aq.add_argument("--limit", type=int, metavar="N")
    aq.add_argument("--format", choices=FORMATS, default="table")
    aq.set_defaults(func=cmd_audit_query)

    am = with_config(asub.add_parser(
        "message", help="the whole history of one message: who fetched, flagged, moved it, when",
        description="Every row whose Message-ID, PEC identificativo or X-Riferimento-Message-ID is ID "
                    "(with or without angle brackets), in time order."))
    am.add_argument("id", metavar="ID")
    am.add_argument("--format", choices=FORMATS, default="table")
    am.set_defaults(func=cmd_audit_message)

    ap = with_config(asub.add_parser(
        "prune", help="delete the oldest rows (retention), keeping the chain verifiable",
        description="Deletes the rows written before --before, behind an anchor row that keeps the "
                    "chain verifiable. Asks for confirmation unless --yes."))
    ap.add_argument("--before", required=True, metavar="ISO-DATE")
    ap.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    ap.set_defaults(func=cmd_audit_prune)
