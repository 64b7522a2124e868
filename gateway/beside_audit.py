"""Tables kept next to the audit trail: the same SQLite file or PostgreSQL schema, own connection.

The send records, the revocations and the login-failure counters all live where the audit trail
lives, so one backup (and, with PostgreSQL, one database shared by every gateway instance) holds
the whole state.  :func:`connect_beside_audit` says how to reach it; each store runs its own
DB-API statements with the placeholder it gets back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Location", "connect_beside_audit"]


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
