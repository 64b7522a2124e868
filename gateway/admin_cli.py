"""``pecgw sessions``, ``pecgw revoke`` and ``pecgw kick``: IT's verbs on the running gateway.

They talk to the gateway's admin channel (:mod:`gateway.admin`).  ``revoke`` (and ``--lift``)
also works with no gateway running: the revocation is written to the store next to the audit
trail, with its audit row, and applies from the next start (a running instance that the CLI
could not reach picks it up within ``[admin] revocation_poll`` seconds).

What the gateway reports is partly chosen by its clients (an SMTP client's EHLO name, an IMAP
client's ID), so nothing it says reaches the terminal as it is: in tables every character that
is not printable — escape sequences, bidi overrides — is shown as ``?``, and ``--json`` writes
such characters as ``\\uXXXX`` escapes (the JSON still decodes to exactly what the gateway sent).
"""

from __future__ import annotations

import sys

from gateway.admin.client import AdminUnavailable, call, local_operator
from gateway.admin.verbs import MAX_REASON
from gateway.cli_error import CliError
from gateway.config import load_config
from gateway.terminal_text import json_line, shown, table, when

__all__ = ["add_parsers", "append_admin_row"]


def cmd_sessions(args) -> int:
    config = load_config(args.config)
    try:
        sessions = call(config, "sessions")
    except AdminUnavailable as exc:
        raise CliError(str(exc)) from None
    if args.person:
        sessions = [s for s in sessions if s["person"].casefold() == args.person.casefold()]
    if args.json:
        for s in sessions:
            print(json_line(s))
        return 0
    if not sessions:
        print("no live sessions")
        return 0
    rows = [[s["session"], s["protocol"], s["person"], s["mailbox"], s.get("folder") or "-", s["client_ip"],
             s.get("client") or "-", when(s["since"])] for s in sessions]
    print(table(rows, ["SESSION", "PROTO", "PERSON", "MAILBOX", "FOLDER", "FROM", "CLIENT", "SINCE"]))
    return 0


def append_admin_row(config, action: str, person: str, *, by: str, reason: str | None = None,
                     detail: dict | None = None) -> None:
    """Write one admin row straight into the audit store (no gateway running to do it).

    Before the gateway's first start (``pecgw otp enroll`` while setting up) this creates the
    store and its chain key, exactly as that first start would."""
    from gateway.app import open_vault
    from gateway.audit.events import AuditEvent, Decision, utc_now
    from gateway.audit.setup import open_trail

    store = open_trail(config, open_vault(config))
    try:
        store.append([AuditEvent(when=utc_now(), session_id="admin", protocol="admin", action=action,
                                 decision=Decision.ALLOW, person=person, reason=reason,
                                 detail={"by": by, **(detail or {})})])
    finally:
        store.close()


def _revoke_offline(config, args, why: str) -> int:
    """No gateway answered: change the stored revocations directly, with the audit row."""
    from gateway.app import open_vault
    from gateway.audit.events import Action
    from gateway.revocations import Revocations, open_revocation_store

    by = local_operator()
    revocations = Revocations(open_revocation_store(config, open_vault(config)))
    try:
        if args.lift:
            lifted = revocations.lift(args.person)
            if lifted is not None:
                append_admin_row(config, Action.REVOCATION_LIFTED, lifted.person, by=by,
                                 detail={"revoked_at": lifted.revoked_at, "revoked_by": lifted.revoked_by})
            print(f"{why}; " + (f"lifted the revocation of {args.person}" if lifted
                                else f"{args.person} was not revoked"))
            return 0
        fresh = revocations.revoke(args.person, by, args.reason)
        append_admin_row(config, Action.REVOKED, args.person, by=by, reason=args.reason,
                         detail={"already_revoked": fresh is None, "sessions_ended": 0, "gateway_running": False})
        print(f"{why}; revoked {args.person}: refused at every login from the gateway's next start"
              + ("" if fresh else " (already revoked)"))
        return 0
    finally:
        revocations.store.close()


def _stored_revocations(config) -> list[dict]:
    """The revocations as stored (no gateway running); none before the gateway's first start."""
    import sqlite3

    import psycopg

    from gateway.app import open_vault
    from gateway.audit.store import StoreMissing
    from gateway.revocations import open_revocation_store

    try:
        store = open_revocation_store(config, open_vault(config), read_only=True)
    except StoreMissing:
        return []
    try:
        return [r.as_dict() for r in store.all()]
    except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
        return []  # the table is made at the gateway's first start
    finally:
        store.close()


def cmd_revoke(args) -> int:
    config = load_config(args.config)
    if args.list:
        try:
            rows = call(config, "revocations")
        except AdminUnavailable:
            rows = _stored_revocations(config)
        if not rows:
            print("nobody is revoked")
        else:
            print(table([[r["person"], r["revoked_at"], r["revoked_by"], r.get("reason") or ""] for r in rows],
                         ["PERSON", "REVOKED AT", "BY", "REASON"]))
        return 0
    if not args.person:
        raise CliError("name the person to revoke (or --list)")
    if args.reason is not None and len(args.reason) > MAX_REASON:
        raise CliError(f"--reason: at most {MAX_REASON} characters (this one has {len(args.reason)}); "
                       "nothing was done")
    try:
        if args.lift:
            result = call(config, "lift", person=args.person)
            print(f"lifted the revocation of {result['person']}; they log in again with a fresh code"
                  if result["was_revoked"] else f"{args.person} was not revoked")
            return 0
        result = call(config, "revoke", person=args.person, reason=args.reason)
    except AdminUnavailable as exc:
        return _revoke_offline(config, args, f"no running gateway ({exc})")
    person = result["person"]  # the directory's spelling: "alice" for "alice@example.it"
    already = " (already revoked)" if result["already_revoked"] else ""
    print(f"revoked {person}{already}: {result['sessions_ended']} live sessions ended; "
          f"new logins are refused until 'pecgw revoke --lift {person}'")
    if result.get("known_to_directory") is False:
        print(f"warning: the directory does not know {args.person!r} (or reports it disabled): check the "
              "spelling; the name is revoked as given", file=sys.stderr)
    if result.get("stored") is False:
        print("warning: the revocation could not be stored yet (see the gateway's log): it is in force on "
              "this instance and is written as soon as the database answers; until then a restart or "
              "another instance does not know it", file=sys.stderr)
    return 0


def cmd_kick(args) -> int:
    config = load_config(args.config)
    try:
        result = call(config, "kick", session=args.session)
    except AdminUnavailable as exc:
        raise CliError(str(exc)) from None
    if not result["found"]:
        raise CliError(f"no live session {args.session} (see 'pecgw sessions')")
    print(f"ended session {args.session} of {shown(result['person'])}")
    return 0


def add_parsers(sub, with_config) -> None:
    """Add ``sessions``, ``revoke`` and ``kick`` to the ``pecgw`` parser."""
    sp = with_config(sub.add_parser("sessions", help="list the live IMAP and SMTP sessions of the running gateway"))
    sp.add_argument("person", nargs="?", help="only this person's sessions")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_sessions)
    rv = with_config(sub.add_parser(
        "revoke", help="end a person's sessions now and refuse their logins until lifted",
        description="Revocation survives restarts and is audited. Without a running gateway it is "
                    "recorded and applies from the next start."))
    rv.add_argument("person", nargs="?", help="the login name, e.g. alice")
    rv.add_argument("--lift", action="store_true", help="lift the revocation instead")
    rv.add_argument("--reason", help="why (kept with the revocation and in the audit trail)")
    rv.add_argument("--list", action="store_true", help="list who is revoked")
    rv.set_defaults(func=cmd_revoke)
    kk = with_config(sub.add_parser("kick", help="end one live session (the person may log in again)"))
    kk.add_argument("session", help="the session id from 'pecgw sessions'")
    kk.set_defaults(func=cmd_kick)
