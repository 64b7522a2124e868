"""The send records: every PEC submitted through the gateway, its state, and per recipient.

A PEC send has legal effect, so it is recorded *before* the message goes to the provider, keyed
by (mailbox, Message-ID).  That key is what makes a retry safe: a client that lost the
connection after DATA sends the same message again with the same Message-ID, and the record
says whether it already went out (PEC.md section 5: "retries must be idempotent").

States of a send: ``recorded`` (about to go up), ``relayed`` (the provider said 250),
``refused`` (the provider refused it), ``unknown`` (the connection broke after DATA: it may have
gone out — only an accettazione will tell).  The receipts move it on: ``accepted`` with the
accettazione (which also gives the identificativo), ``not_accepted`` with a non-accettazione.
Each recipient has its own state (PEC.md section 4): ``pending``, then ``delivered`` /
``failed`` / ``warned`` (a preavviso, which a later delivery overrides).

The tables live next to the audit trail — the same SQLite file or PostgreSQL schema — through
one DB-API implementation (only the placeholder differs).  Blocking, like the audit store:
callers on the event loop use :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import datetime as _dt
import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SendRecord", "SendStore", "RECIPIENT_STATES", "SEND_STATES"]

SEND_STATES = ("recorded", "relayed", "refused", "unknown", "accepted", "not_accepted")
RECIPIENT_STATES = ("pending", "delivered", "failed", "warned")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {p}pec_sends (
        id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
        person TEXT NOT NULL, offices TEXT NOT NULL, mailbox TEXT NOT NULL, session_id TEXT,
        message_id TEXT NOT NULL, content_sha256 TEXT NOT NULL, subject TEXT, size BIGINT NOT NULL,
        attachments TEXT NOT NULL, state TEXT NOT NULL, reply TEXT, identificativo TEXT,
        accepted_at TEXT, UNIQUE (mailbox, message_id))""",
    """CREATE TABLE IF NOT EXISTS {p}pec_send_recipients (
        send_id TEXT NOT NULL, address TEXT NOT NULL, kind TEXT, state TEXT NOT NULL,
        at TEXT, detail TEXT, PRIMARY KEY (send_id, address))""",
    "CREATE INDEX IF NOT EXISTS pec_sends_person_created ON {p}pec_sends (person, created)",
    "CREATE INDEX IF NOT EXISTS pec_sends_identificativo ON {p}pec_sends (identificativo)",
)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class SendRecord:
    """One send as stored; ``recipients`` maps each address to its state row."""

    id: str
    created: str
    updated: str
    person: str
    mailbox: str
    message_id: str
    content_sha256: str
    subject: str | None
    size: int
    state: str
    reply: str | None = None
    identificativo: str | None = None
    accepted_at: str | None = None
    offices: tuple[str, ...] = ()
    attachments: tuple[dict, ...] = ()
    recipients: dict[str, dict] = field(default_factory=dict)


class SendStore:
    """Send records over a DB-API connection (sqlite3 or psycopg); ``schema`` for PostgreSQL."""

    def __init__(self, connect, *, placeholder: str, schema: str | None = None) -> None:
        self._connect = connect
        self._ph = placeholder
        self._p = f'"{schema}".' if schema else ""
        self._lock = threading.Lock()
        self._db = connect()
        with self._lock:
            for statement in _SCHEMA:
                self._db.execute(statement.format(p=self._p))
            self._db.commit()

    # ------------------------------------------------------------------ helpers
    def _sql(self, text: str) -> str:
        return text.format(p=self._p).replace("?", self._ph)

    def _run(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            try:
                for text, params in statements:
                    self._db.execute(self._sql(text), params)
                self._db.commit()
            except Exception:
                self._db.rollback()
                raise

    def _rows(self, text: str, params: tuple) -> list[tuple]:
        with self._lock:
            rows = self._db.execute(self._sql(text), params).fetchall()
            self._db.commit()
            return rows

    # ------------------------------------------------------------------ writes
    def record(self, *, person: str, offices: tuple[str, ...], mailbox: str, session_id: str, message_id: str,
               content_sha256: str, subject: str | None, size: int, attachments: list[dict],
               recipients: list[str]) -> str:
        """A new send in state ``recorded``, before it goes up; returns its id.  Raises the
        driver's integrity error when (mailbox, message_id) is already recorded."""
        send_id, now = secrets.token_hex(12), _now()
        statements = [("INSERT INTO {p}pec_sends (id, created, updated, person, offices, mailbox, session_id, message_id, "
                       "content_sha256, subject, size, attachments, state) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (send_id, now, now, person, json.dumps(list(offices)), mailbox, session_id, message_id,
                        content_sha256, subject, size, json.dumps(attachments), "recorded"))]
        statements += [("INSERT INTO {p}pec_send_recipients (send_id, address, state) VALUES (?,?,?)",
                        (send_id, address, "pending")) for address in dict.fromkeys(recipients)]
        self._run(statements)
        return send_id

    def set_state(self, send_id: str, state: str, *, reply: str | None = None) -> None:
        assert state in SEND_STATES
        self._run([("UPDATE {p}pec_sends SET state = ?, reply = COALESCE(?, reply), updated = ? WHERE id = ?",
                    (state, reply, _now(), send_id))])

    def accepted(self, send_id: str, identificativo: str, at: str, *, kinds: dict[str, str]) -> None:
        """The accettazione: the identificativo, when, and which recipients are certified."""
        statements = [("UPDATE {p}pec_sends SET state = CASE WHEN state = 'not_accepted' THEN state ELSE 'accepted' END, "
                       "identificativo = ?, accepted_at = ?, updated = ? WHERE id = ?",
                       (identificativo, at, _now(), send_id))]
        statements += [("UPDATE {p}pec_send_recipients SET kind = ? WHERE send_id = ? AND address = ?",
                        (kind, send_id, address)) for address, kind in kinds.items()]
        self._run(statements)

    def recipient(self, send_id: str, address: str, state: str, at: str | None, detail: str | None) -> bool:
        """A delivery receipt for one recipient; a preavviso never overrides a delivery or a
        failure (PEC.md section 4).  Returns whether anything changed."""
        assert state in RECIPIENT_STATES
        rows = self._rows("SELECT state FROM {p}pec_send_recipients WHERE send_id = ? AND address = ?", (send_id, address))
        if not rows or (state == "warned" and rows[0][0] in ("delivered", "failed")) or rows[0][0] == state:
            return False
        self._run([("UPDATE {p}pec_send_recipients SET state = ?, at = ?, detail = ? WHERE send_id = ? AND address = ?",
                    (state, at, detail, send_id, address))])
        return True

    # ------------------------------------------------------------------ reads
    _COLUMNS = ("id, created, updated, person, mailbox, message_id, content_sha256, subject, size, state, reply, "
                "identificativo, accepted_at, offices, attachments")

    def _records(self, where: str, params: tuple) -> list[SendRecord]:
        rows = self._rows(f"SELECT {self._COLUMNS} FROM {{p}}pec_sends {where} ORDER BY created", params)
        out = []
        for r in rows:
            recips = self._rows("SELECT address, kind, state, at, detail FROM {p}pec_send_recipients WHERE send_id = ? "
                                "ORDER BY address", (r[0],))
            out.append(SendRecord(*r[:13], offices=tuple(json.loads(r[13])), attachments=tuple(json.loads(r[14])),
                                  recipients={a: {"kind": k, "state": s, "at": t, "detail": d}
                                              for a, k, s, t, d in recips}))
        return out

    def find(self, mailbox: str, message_id: str) -> SendRecord | None:
        found = self._records("WHERE mailbox = ? AND message_id = ?", (mailbox, message_id))
        return found[0] if found else None

    def by_identificativo(self, identificativo: str) -> SendRecord | None:
        found = self._records("WHERE identificativo = ?", (identificativo,))
        return found[0] if found else None

    def list(self, *, person: str | None = None, since: str | None = None, mailbox: str | None = None) -> list[SendRecord]:
        clauses, params = [], []
        for column, value in (("person", person), ("mailbox", mailbox)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("created >= ?")
            params.append(since)
        return self._records(("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def row_dict(record: SendRecord) -> dict[str, Any]:
        """A record as JSON-ready values (for ``pecgw sends --format jsonl``)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in record.__dict__.items()}


def open_send_store(config, vault) -> SendStore:
    """The send records next to the configured audit store (same SQLite file or PostgreSQL
    schema, its own connection)."""
    audit = config.audit
    if audit.store == "sqlite":
        import sqlite3

        def connect():
            db = sqlite3.connect(str(audit.sqlite_path), check_same_thread=False, timeout=10)
            db.execute("PRAGMA busy_timeout = 10000")
            return db

        return SendStore(connect, placeholder="?")
    import psycopg

    from gateway.audit.setup import postgres_conninfo

    conninfo = postgres_conninfo(config, vault)
    return SendStore(lambda: psycopg.connect(conninfo), placeholder="%s", schema=audit.postgresql_schema)
