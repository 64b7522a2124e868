"""Tables kept next to the audit trail: the same SQLite file or PostgreSQL schema, own connection.

The send records, the revocations and the login-failure counters all live where the audit trail
lives, so one backup (and, with PostgreSQL, one database shared by every gateway instance) holds
the whole state.  :func:`connect_beside_audit` says how to reach it; :class:`Tables` is the
connection a store keeps, re-opened after a failure.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Location", "Tables", "connect_beside_audit"]


@dataclass(frozen=True)
class Location:
    """How a store reaches its tables: ``connect()`` gives a DB-API connection."""

    connect: Callable[[], Any]
    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    schema: str | None  # PostgreSQL schema to qualify table names with; None for SQLite


def connect_beside_audit(config, vault, *, read_only: bool = False) -> Location:
    """Where the configured audit store is.  ``read_only`` gives connections that cannot write
    (a missing SQLite file raises the audit store's ``StoreMissing``)."""
    audit = config.audit
    if audit.store == "sqlite":
        import sqlite3

        def connect():
            if read_only:
                from gateway.audit.sqlite_store import connect_read_only

                return connect_read_only(audit.sqlite_path, timeout=10)
            db = sqlite3.connect(str(audit.sqlite_path), check_same_thread=False, timeout=10)
            db.execute("PRAGMA busy_timeout = 10000")
            return db

        return Location(connect, "?", None)
    import psycopg

    from gateway.audit.setup import postgres_conninfo

    conninfo = postgres_conninfo(config, vault)

    def connect_pg():
        db = psycopg.connect(conninfo)
        if read_only:
            db.execute("SET default_transaction_read_only = on")
            db.commit()
        return db

    return Location(connect_pg, "%s", audit.postgresql_schema)


class Tables:
    """A store's own connection to its tables beside the audit trail.

    Statements are written with ``{p}`` before table names (the PostgreSQL schema) and ``:name``
    parameters (sqlite3 takes them as they are; for psycopg they become ``%(name)s``).  A
    connection that fails (the database restarted, a backend was terminated) is dropped and a new
    one opened at the next call, so one outage does not disable the store until a restart.
    Thread-safe: one statement batch at a time.
    """

    def __init__(self, connect, *, placeholder: str, schema: str | None = None, ddl: tuple[str, ...] = (),
                 read_only: bool = False) -> None:
        self._connect = connect
        self._named = placeholder != "?"
        self._p = f'"{schema}".' if schema else ""
        self._lock = threading.Lock()
        self._db = connect()
        if read_only or not ddl:
            return
        with self._lock:
            try:
                for statement in ddl:
                    self._db.execute(statement.format(p=self._p))
                self._db.commit()
            except BaseException:
                self._db.close()
                raise

    def _sql(self, text: str) -> str:
        text = text.format(p=self._p)
        return re.sub(r":(\w+)", r"%(\1)s", text) if self._named else text

    def transaction(self, statements: list[tuple[str, dict]]) -> list[list[tuple]]:
        """Run ``statements`` in one transaction; each one's rows (empty without a result)."""
        with self._lock:
            if self._db is None or getattr(self._db, "closed", False):
                self._db = self._connect()
            try:
                out = []
                for text, params in statements:
                    cur = self._db.execute(self._sql(text), params)
                    out.append(cur.fetchall() if cur.description else [])
                self._db.commit()
                return out
            except BaseException:
                try:
                    self._db.rollback()
                except Exception:  # noqa: BLE001 - the connection is gone: a new one next time
                    with contextlib.suppress(Exception):
                        self._db.close()
                    self._db = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
