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

from gateway.beside_audit import Tables, connect_beside_audit

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


class RevocationStore(Tables):
    """The ``pecgw_revocations`` table (blocking; re-connects after a failure)."""

    def __init__(self, connect, *, placeholder: str, schema: str | None = None, read_only: bool = False) -> None:
        super().__init__(connect, placeholder=placeholder, schema=schema, ddl=_SCHEMA, read_only=read_only)

    def add(self, revocation: Revocation) -> bool:
        """Record a revocation; False (and nothing changed) when the person is revoked already."""
        (rows,) = self.transaction([(
            "INSERT INTO {p}pecgw_revocations (person_key, person, revoked_at, revoked_by, reason) "
            "VALUES (:key, :person, :at, :by, :reason) ON CONFLICT (person_key) DO NOTHING RETURNING person_key",
            {"key": person_key(revocation.person), "person": revocation.person, "at": revocation.revoked_at,
             "by": revocation.revoked_by, "reason": revocation.reason})])
        return bool(rows)

    def remove(self, person: str) -> Revocation | None:
        """Lift a revocation; the one lifted, or None when the person was not revoked."""
        (rows,) = self.transaction([("DELETE FROM {p}pecgw_revocations WHERE person_key = :key "
                                     "RETURNING person, revoked_at, revoked_by, reason", {"key": person_key(person)})])
        return Revocation(*rows[0]) if rows else None

    def all(self) -> list[Revocation]:
        (rows,) = self.transaction([("SELECT person, revoked_at, revoked_by, reason FROM {p}pecgw_revocations "
                                     "ORDER BY revoked_at, person_key", {})])
        return [Revocation(*row) for row in rows]


def open_revocation_store(config, vault, *, read_only: bool = False) -> RevocationStore:
    """The revocations next to the configured audit store."""
    where = connect_beside_audit(config, vault, read_only=read_only)
    return RevocationStore(where.connect, placeholder=where.placeholder, schema=where.schema, read_only=read_only)


class Revocations:
    """The revocations in force: the store's rows mirrored in memory for the login path, plus
    those made here that the store could not take yet.

    :meth:`hold` makes a revocation effective at once, without I/O (so a revoke works while the
    database is down); :meth:`save` writes it, and every :meth:`refresh` retries what is still
    unsaved.  Store calls run one at a time (``_io``), each with its update of the memory, so a
    refresh that read the table before a revoke cannot put back a list without it.
    """

    def __init__(self, store: RevocationStore) -> None:
        self.store = store
        self._io = threading.Lock()  # one store call (and its memory update) at a time
        self._stored: dict[str, Revocation] = {person_key(r.person): r for r in store.all()}
        self._unsaved: dict[str, Revocation] = {}

    def is_revoked(self, person: str) -> bool:
        key = person_key(person)
        return key in self._unsaved or key in self._stored

    def get(self, person: str) -> Revocation | None:
        key = person_key(person)
        return self._unsaved.get(key) or self._stored.get(key)

    def all(self) -> list[Revocation]:
        merged = {**self._stored, **self._unsaved}
        return sorted(merged.values(), key=lambda r: (r.revoked_at, person_key(r.person)))

    @property
    def unsaved(self) -> list[Revocation]:
        return list(self._unsaved.values())

    def hold(self, person: str, revoked_by: str, reason: str | None = None) -> tuple[Revocation, bool]:
        """Revoke in this process now (no I/O); :meth:`save` makes it last.  The revocation in
        force, and whether it is new (False: the person was revoked already)."""
        existing = self.get(person)
        if existing is not None:
            return existing, False
        revocation = Revocation(person, _now(), revoked_by, reason)
        self._unsaved = {**self._unsaved, person_key(person): revocation}
        return revocation, True

    def save(self, revocation: Revocation) -> None:
        """Write a held revocation (blocking; a poll may have written it already)."""
        with self._io:
            self.store.add(revocation)
            key = person_key(revocation.person)
            self._stored = {**self._stored, key: self._stored.get(key) or revocation}
            self._unsaved = {k: r for k, r in self._unsaved.items() if k != key}

    def revoke(self, person: str, revoked_by: str, reason: str | None = None) -> Revocation | None:
        """Revoke and write (blocking); the new revocation, None if there was one already."""
        revocation, new = self.hold(person, revoked_by, reason)
        self.save(revocation)
        return revocation if new else None

    def lift(self, person: str) -> Revocation | None:
        """Lift (blocking); the revocation lifted, or None when the person was not revoked."""
        key = person_key(person)
        with self._io:
            lifted = self.store.remove(person)
            self._stored = {k: r for k, r in self._stored.items() if k != key}
            unsaved = self._unsaved.get(key)
            self._unsaved = {k: r for k, r in self._unsaved.items() if k != key}
        return lifted or unsaved

    def refresh(self) -> set[str]:
        """Write what is unsaved, re-read the store (blocking); return the keys revoked since the
        last read, so the caller can end their sessions (another instance revoked them)."""
        with self._io:
            for revocation in list(self._unsaved.values()):
                self.store.add(revocation)
                key = person_key(revocation.person)
                self._unsaved = {k: r for k, r in self._unsaved.items() if k != key}
            fresh = {person_key(r.person): r for r in self.store.all()}
            new = set(fresh) - set(self._stored)
            self._stored = fresh
        return new
