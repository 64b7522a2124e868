"""Revoked people: refused at login until IT lifts the revocation, whatever their password.

``pecgw revoke USER`` is how IT handles a leaver or a stolen laptop without changing the shared
PEC password.  A revocation is kept next to the audit trail (the same SQLite file or PostgreSQL
schema, :mod:`gateway.beside_audit`), so it survives a restart and, with PostgreSQL, reaches every
gateway instance: each one re-reads the table every few seconds (:meth:`Revocations.refresh`).

Names are kept case-folded: ``Alice`` and ``alice`` are one person to LDAP, and so here.
:class:`RevocationStore` is blocking (call it through ``asyncio.to_thread``);
:class:`Revocations` answers :meth:`~Revocations.is_revoked` from memory, on every login.
"""

from __future__ import annotations

import datetime as _dt
import threading
from dataclasses import dataclass

from gateway.beside_audit import connect_beside_audit

__all__ = ["Revocation", "RevocationStore", "Revocations", "open_revocation_store", "person_key"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {p}pecgw_revocations (
        person_key TEXT PRIMARY KEY, person TEXT NOT NULL, revoked_at TEXT NOT NULL,
        revoked_by TEXT NOT NULL, reason TEXT)""",
)


def person_key(person: str) -> str:
    return person.casefold()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Revocation:
    """One revoked person: who, since when, revoked by whom, and why (free text, optional)."""

    person: str
    revoked_at: str
    revoked_by: str
    reason: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class RevocationStore:
    """The ``pecgw_revocations`` table over a DB-API connection (sqlite3 or psycopg)."""

    def __init__(self, connect, *, placeholder: str, schema: str | None = None, read_only: bool = False) -> None:
        self._ph = placeholder
        self._p = f'"{schema}".' if schema else ""
        self._lock = threading.Lock()
        self._db = connect()
        if not read_only:
            with self._lock:
                for statement in _SCHEMA:
                    self._db.execute(statement.format(p=self._p))
                self._db.commit()

    def _execute(self, text: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                cur = self._db.execute(text.format(p=self._p).replace("?", self._ph), params)
                rows = cur.fetchall() if cur.description else []
                self._db.commit()
                return rows
            except Exception:
                self._db.rollback()
                raise

    def add(self, revocation: Revocation) -> bool:
        """Record a revocation; False (and nothing changed) when the person is revoked already."""
        rows = self._execute(
            "INSERT INTO {p}pecgw_revocations (person_key, person, revoked_at, revoked_by, reason) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (person_key) DO NOTHING RETURNING person_key",
            (person_key(revocation.person), revocation.person, revocation.revoked_at, revocation.revoked_by,
             revocation.reason))
        return bool(rows)

    def remove(self, person: str) -> Revocation | None:
        """Lift a revocation; the one lifted, or None when the person was not revoked."""
        rows = self._execute("DELETE FROM {p}pecgw_revocations WHERE person_key = ? "
                             "RETURNING person, revoked_at, revoked_by, reason", (person_key(person),))
        return Revocation(*rows[0]) if rows else None

    def all(self) -> list[Revocation]:
        rows = self._execute("SELECT person, revoked_at, revoked_by, reason FROM {p}pecgw_revocations "
                             "ORDER BY revoked_at, person_key")
        return [Revocation(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_revocation_store(config, vault, *, read_only: bool = False) -> RevocationStore:
    """The revocations next to the configured audit store."""
    where = connect_beside_audit(config, vault, read_only=read_only)
    return RevocationStore(where.connect, placeholder=where.placeholder, schema=where.schema, read_only=read_only)


class Revocations:
    """The revocations in force: the store's rows, mirrored in memory for the login path."""

    def __init__(self, store: RevocationStore) -> None:
        self.store = store
        self._by_key: dict[str, Revocation] = {r.person.casefold(): r for r in store.all()}

    def is_revoked(self, person: str) -> bool:
        return person_key(person) in self._by_key

    def get(self, person: str) -> Revocation | None:
        return self._by_key.get(person_key(person))

    def all(self) -> list[Revocation]:
        return sorted(self._by_key.values(), key=lambda r: (r.revoked_at, r.person.casefold()))

    def revoke(self, person: str, revoked_by: str, reason: str | None = None) -> Revocation | None:
        """Revoke (blocking: writes the store); the new revocation, None if there was one already."""
        revocation = Revocation(person, _now(), revoked_by, reason)
        added = self.store.add(revocation)
        self.refresh()
        return revocation if added else None

    def lift(self, person: str) -> Revocation | None:
        """Lift (blocking); the revocation lifted, or None when the person was not revoked."""
        lifted = self.store.remove(person)
        self.refresh()
        return lifted

    def refresh(self) -> set[str]:
        """Re-read the store (blocking); return the keys revoked since the last read, so the caller
        can end their sessions (another instance revoked them)."""
        fresh = {person_key(r.person): r for r in self.store.all()}
        new = set(fresh) - set(self._by_key)
        self._by_key = fresh
        return new
