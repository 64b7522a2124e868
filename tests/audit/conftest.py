"""One parametrised fixture runs every audit store test against SQLite and the real PostgreSQL.

PostgreSQL is the one on this machine (``PECGW_TEST_POSTGRES``, default
``host=127.0.0.1 port=5432 dbname=test``, user ``postgres`` then the current user).  Each test
gets a fresh schema, dropped afterwards.  Nothing is skipped: an unreachable PostgreSQL fails
the test with a message saying so.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import secrets
import sqlite3

import psycopg
import pytest

from gateway.audit.events import AuditEvent, MessageRef
from gateway.audit.postgres_store import PostgresStore
from gateway.audit.sqlite_store import SqliteStore

KEY = b"k" * 32
T0 = dt.datetime(2026, 3, 3, 9, 0, tzinfo=dt.timezone.utc)


def event(n: int, **fields) -> AuditEvent:
    """Event ``n`` at T0 + n minutes; ``fields`` override the defaults, ``message`` may be a dict."""
    if isinstance(fields.get("message"), dict):
        fields["message"] = MessageRef(**fields["message"])
    base = dict(when=T0 + dt.timedelta(minutes=n), session_id=f"s{n}", protocol="imap",
                action="fetch", decision="allow", person="alice", offices=("protocollo",),
                mailbox="ufficio@pec.example.it", folder="INBOX", client_ip="192.0.2.1",
                client_name="Thunderbird 128.3", detail={"n": n})
    base.update(fields)
    return AuditEvent(**base)


def _pg_conninfo() -> str:
    explicit = os.environ.get("PECGW_TEST_POSTGRES")
    candidates = [explicit] if explicit else [
        f"host=127.0.0.1 port=5432 dbname=test user={user}" for user in ("postgres", getpass.getuser())]
    errors = []
    for conninfo in candidates:
        try:
            psycopg.connect(conninfo, connect_timeout=5).close()
            return conninfo
        except psycopg.Error as exc:
            errors.append(f"{conninfo!r}: {str(exc).strip()}")
    pytest.fail("the audit store tests need the real PostgreSQL (set PECGW_TEST_POSTGRES to a "
                "conninfo to use another one); cannot connect: " + "; ".join(errors), pytrace=False)


class Backend:
    """Opens stores on one database and runs raw SQL on its ``audit`` table, as a tamperer would."""

    def __init__(self, name: str, tmp_path) -> None:
        self.name = name
        self.opened = []
        if name == "sqlite":
            self.path = tmp_path / "audit.db"
        else:
            self.conninfo = _pg_conninfo()
            self.schema = f"audit_test_{secrets.token_hex(6)}"

    def open(self, key: bytes = KEY):
        if self.name == "sqlite":
            store = SqliteStore(self.path, key)
        else:
            store = PostgresStore(self.conninfo, key, schema=self.schema)
        self.opened.append(store)
        return store

    def sql(self, *statements: str) -> None:
        """Run ``statements`` in one transaction, with ``audit`` naming the store's table."""
        if self.name == "sqlite":
            db = sqlite3.connect(self.path)
            with db:
                for statement in statements:
                    db.execute(statement)
            db.close()
        else:
            with psycopg.connect(self.conninfo) as db:
                db.execute(f'SET search_path TO "{self.schema}"')
                for statement in statements:
                    db.execute(statement)

    def cleanup(self) -> None:
        for store in self.opened:
            store.close()
        if self.name == "postgres":
            with psycopg.connect(self.conninfo, autocommit=True) as db:
                db.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    b = Backend(request.param, tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def store(backend):
    return backend.open()
