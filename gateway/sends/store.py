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
``failed`` / ``warned`` (a preavviso, which a later delivery overrides).  A receipt is proof:
once an accettazione or a non-accettazione is linked, the SMTP outcome arriving later
(``relayed``, ``unknown``, ``refused``) does not replace it.

The receipt watcher (:mod:`gateway.sends.watcher`) also keeps here every receipt it linked
(``pec_receipts``, keyed by PEC.md section 4 step 5's deduplication key) and, per mailbox and
folder, the UIDVALIDITY and last UID it examined (``pec_watch_marks``), so a restart picks up
where it stopped.

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
    """CREATE TABLE IF NOT EXISTS {p}pec_receipts (
        dedupe_key TEXT PRIMARY KEY, send_id TEXT NOT NULL, tipo TEXT NOT NULL, at TEXT, consegna TEXT,
        detail TEXT, mailbox TEXT NOT NULL, folder TEXT NOT NULL, uidvalidity BIGINT, uid BIGINT,
        linked TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS pec_receipts_send ON {p}pec_receipts (send_id)",
    """CREATE TABLE IF NOT EXISTS {p}pec_watch_marks (
        mailbox TEXT NOT NULL, folder TEXT NOT NULL, uidvalidity BIGINT NOT NULL, last_uid BIGINT NOT NULL,
        updated TEXT NOT NULL, PRIMARY KEY (mailbox, folder))""",
)
#: States only a receipt gives; the SMTP outcome recorded after them does not replace them.
_RECEIPT_STATES = ("accepted", "not_accepted")
_SMTP_OUTCOMES = ("relayed", "refused", "unknown")


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
    """Send records over a DB-API connection (sqlite3 or psycopg); ``schema`` for PostgreSQL.
    ``read_only`` (for ``pecgw sends``) creates nothing: the connection must be read-only too."""

    def __init__(self, connect, *, placeholder: str, schema: str | None = None, read_only: bool = False) -> None:
        self._connect = connect
        self._ph = placeholder
        self._p = f'"{schema}".' if schema else ""
        self._lock = threading.Lock()
        self._db = connect()
        if read_only:
            return
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

    def claim(self, send_id: str, expected: str) -> bool:
        """Take a send for another attempt, only if it is still in state ``expected``: of two
        retries at the same moment, exactly one gets it (the other must not send a second PEC)."""
        with self._lock:
            try:
                cur = self._db.execute(self._sql("UPDATE {p}pec_sends SET state = 'recorded', updated = ? "
                                                 "WHERE id = ? AND state = ?"), (_now(), send_id, expected))
                self._db.commit()
            except Exception:
                self._db.rollback()
                raise
            return cur.rowcount == 1

    def set_state(self, send_id: str, state: str, *, reply: str | None = None) -> None:
        """The send's state; an SMTP outcome (relayed, refused, unknown) leaves a state a receipt
        gave (accepted, not_accepted) as it is: the receipt may be linked before the provider's
        250 reaches the gateway, and it is the proof (PEC.md section 4)."""
        assert state in SEND_STATES
        keep = _RECEIPT_STATES if state in _SMTP_OUTCOMES else ()
        guard = "CASE WHEN state IN ({}) THEN state ELSE ? END".format(", ".join("?" * len(keep))) if keep else "?"
        self._run([(f"UPDATE {{p}}pec_sends SET state = {guard}, reply = COALESCE(?, reply), updated = ? WHERE id = ?",
                    (*keep, state, reply, _now(), send_id))])

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

    def not_accepted(self, send_id: str, identificativo: str | None) -> bool:
        """The avviso di non accettazione: final for the whole send (PEC.md section 4).  Returns
        whether the state changed."""
        rows = self._rows("SELECT state FROM {p}pec_sends WHERE id = ?", (send_id,))
        if not rows or rows[0][0] == "not_accepted":
            return False
        self._run([("UPDATE {p}pec_sends SET state = 'not_accepted', identificativo = COALESCE(?, identificativo), "
                    "updated = ? WHERE id = ?", (identificativo, _now(), send_id))])
        return True

    # ------------------------------------------------------------------ receipts
    def seen_receipt(self, dedupe_key: str) -> bool:
        return bool(self._rows("SELECT 1 FROM {p}pec_receipts WHERE dedupe_key = ?", (dedupe_key,)))

    def add_receipt(self, dedupe_key: str, *, send_id: str, tipo: str, at: str | None, mailbox: str, folder: str,
                    uid: int | None, uidvalidity: int | None = None, consegna: str | None = None,
                    detail: str | None = None) -> bool:
        """Remember a linked receipt; False when one with the same key was linked before (the
        same receipt fetched twice, PEC.md section 4 step 5)."""
        text = self._sql("INSERT INTO {p}pec_receipts (dedupe_key, send_id, tipo, at, consegna, detail, mailbox, "
                         "folder, uidvalidity, uid, linked) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                         "ON CONFLICT (dedupe_key) DO NOTHING")
        params = (dedupe_key, send_id, tipo, at, consegna, detail, mailbox, folder, uidvalidity, uid, _now())
        with self._lock:
            try:
                added = self._db.execute(text, params).rowcount == 1
                self._db.commit()
            except Exception:
                self._db.rollback()
                raise
        return added

    def receipts(self, send_id: str) -> list[dict[str, Any]]:
        """The receipts linked to a send, in the order of their daticert time."""
        rows = self._rows("SELECT tipo, at, consegna, detail, mailbox, folder, uidvalidity, uid FROM {p}pec_receipts "
                          "WHERE send_id = ? ORDER BY at, linked", (send_id,))
        names = ("tipo", "at", "consegna", "detail", "mailbox", "folder", "uidvalidity", "uid")
        return [dict(zip(names, r)) for r in rows]

    def watch_mark(self, mailbox: str, folder: str) -> tuple[int, int] | None:
        """``(uidvalidity, last_uid)`` the watcher examined in a folder, None before its first time."""
        rows = self._rows("SELECT uidvalidity, last_uid FROM {p}pec_watch_marks WHERE mailbox = ? AND folder = ?",
                          (mailbox, folder))
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    def set_watch_mark(self, mailbox: str, folder: str, uidvalidity: int, last_uid: int) -> None:
        self._run([("INSERT INTO {p}pec_watch_marks (mailbox, folder, uidvalidity, last_uid, updated) "
                    "VALUES (?,?,?,?,?) ON CONFLICT (mailbox, folder) DO UPDATE SET uidvalidity = excluded.uidvalidity, "
                    "last_uid = excluded.last_uid, updated = excluded.updated",
                    (mailbox, folder, uidvalidity, last_uid, _now()))])

    def first_created(self, mailbox: str) -> str | None:
        """When the mailbox's oldest recorded send was recorded (None: no send yet)."""
        rows = self._rows("SELECT MIN(created) FROM {p}pec_sends WHERE mailbox = ?", (mailbox,))
        return rows[0][0] if rows else None

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

    def find_normalised(self, mailbox: str, normalised: str) -> SendRecord | None:
        """The send whose Message-ID, normalised (PEC.md section 4 step 2: no ``<>``, no
        whitespace, lower case), is ``normalised``.  The SQL narrows, Python decides."""
        from gateway.pec.daticert import normalise_message_id

        key = normalised.replace("<", "").replace(">", "")
        rows = self._records("WHERE mailbox = ? AND LOWER(REPLACE(REPLACE(REPLACE(message_id, ' ', ''), '<', ''), "
                             "'>', '')) = ?", (mailbox, key))
        return next((r for r in rows if normalise_message_id(r.message_id) == normalised), None)

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


def open_send_store(config, vault, *, read_only: bool = False) -> SendStore:
    """The send records next to the configured audit store (same SQLite file or PostgreSQL
    schema, its own connection).  ``read_only`` opens a connection that cannot write and
    creates nothing (a missing SQLite file raises the audit store's ``StoreMissing``)."""
    from gateway.beside_audit import connect_beside_audit

    where = connect_beside_audit(config, vault, read_only=read_only)
    return SendStore(where.connect, placeholder=where.placeholder, schema=where.schema, read_only=read_only)
