"""One parametrised fixture runs every audit store test against SQLite and the real PostgreSQL.

PostgreSQL is the one on this machine (``PECGW_TEST_POSTGRES``, default
``host=127.0.0.1 port=5432 dbname=test``, user ``postgres`` then the current user).  Each test
gets a fresh schema, dropped afterwards.  Nothing is skipped: an unreachable PostgreSQL fails
the test with a message saying so.

:class:`Trail` is a gateway configuration on disk around one store, for running ``pecgw`` as an
operator (or, with ``as_nobody``, as an unprivileged auditor) would.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from gateway.audit.events import AuditEvent, MessageRef
from gateway.audit.postgres_store import PostgresStore
from gateway.audit.setup import open_trail
from gateway.audit.sqlite_store import SqliteStore
from gateway.config import load_config
from gateway.vault import Vault
from tests.fixtures.gateway import office_policy, write_gateway_config

ROOT = Path(__file__).resolve().parents[2]
PECGW = [sys.executable, "-m", "gateway.cli"]
#: Runs a command as nobody: we are root, whom file permissions do not stop.
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

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
        self.roles: list[str] = []
        if name == "sqlite":
            self.path = tmp_path / "audit.db"
        else:
            self.conninfo = _pg_conninfo()
            self.schema = f"audit_test_{secrets.token_hex(6)}"

    def open(self, key: bytes = KEY, *, read_only: bool = False, conninfo: str | None = None):
        if self.name == "sqlite":
            store = SqliteStore(self.path, key, read_only=read_only)
        else:
            store = PostgresStore(conninfo or self.conninfo, key, schema=self.schema, read_only=read_only)
        self.opened.append(store)
        return store

    def audit_table(self) -> dict:
        """The ``[audit]`` table of a gateway configuration using this store."""
        if self.name == "sqlite":
            return {"sqlite_path": str(self.path)}
        return {"store": "postgresql", "postgresql_dsn": self.conninfo, "postgresql_schema": self.schema}

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

    def role(self, *grants: str) -> str:
        """A new login role (trust authentication) with only ``grants`` (``{schema}`` and
        ``{role}`` filled in); its conninfo.  Dropped by :meth:`cleanup`."""
        name = f"pecgw_test_{secrets.token_hex(4)}"
        self.roles.append(name)
        with psycopg.connect(self.conninfo, autocommit=True) as db:
            db.execute(f'CREATE ROLE "{name}" LOGIN')
            for grant in grants:
                db.execute(grant.format(schema=f'"{self.schema}"', role=f'"{name}"'))
        return make_conninfo(self.conninfo, user=name)

    def cleanup(self) -> None:
        for store in self.opened:
            store.close()
        if self.name == "postgres":
            with psycopg.connect(self.conninfo, autocommit=True) as db:
                db.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
                for name in self.roles:
                    db.execute(f'DROP OWNED BY "{name}"')
                    db.execute(f'DROP ROLE "{name}"')


def swap(a: int, b: int) -> list[str]:
    """SQL that swaps rows ``a`` and ``b`` (their whole content, hashes included)."""
    return [f"UPDATE audit SET seq = -1 WHERE seq = {a}", f"UPDATE audit SET seq = {a} WHERE seq = {b}",
            f"UPDATE audit SET seq = {b} WHERE seq = -1"]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    b = Backend(request.param, tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def store(backend):
    return backend.open()


class Trail:
    """A gateway configuration in ``folder`` (vault, users, policy) around the store ``audit``
    names (the default: SQLite beside the vault), and ``pecgw`` run against it."""

    def __init__(self, folder: Path, audit: dict | None = None) -> None:
        self.dir = folder
        key = os.urandom(32)
        self.env = {**os.environ, "PECGW_AUDIT_TEST_VAULT_KEY": base64.urlsafe_b64encode(key).decode(),
                    "PYTHONDONTWRITEBYTECODE": "1"}
        self.vault = Vault(folder / "vault.json", key)
        (folder / "users.toml").write_text("")
        write_gateway_config(folder / "policy.toml", office_policy({"o": {"members": ["alice"]}},
                                                                  {"protocollo": ["o"]}))
        self.configure(audit or {})

    def configure(self, audit: dict) -> None:
        """(Re)write ``gateway.toml`` with ``audit`` as its ``[audit]`` table."""
        self.config_path = write_gateway_config(self.dir / "gateway.toml", {
            "imap": {"listen_tls": ["127.0.0.1:0"], "insecure_plaintext_login": True},
            "auth": {"backend": "static", "users_file": "users.toml"},
            "vault": {"path": "vault.json", "key_env": "PECGW_AUDIT_TEST_VAULT_KEY"},
            "audit": audit,
            "policy": {"file": "policy.toml"},
            "mailboxes": {"protocollo": {"address": "p@pec.example.it",
                                         "imap": {"host": "localhost", "username": "p"}}},
        })
        self.config = load_config(self.config_path)
        self.db = self.config.audit.sqlite_path

    def fill(self, events) -> None:
        """Append ``events`` as the gateway would (creating the chain key at the first call)."""
        store = open_trail(self.config, self.vault)
        store.append(list(events))
        store.close()

    def pecgw(self, *args: str, stdin: str | None = None, as_nobody: bool = False) -> subprocess.CompletedProcess:
        prefix = AS_NOBODY if as_nobody else []
        env = {**self.env, "HOME": str(self.dir)} if as_nobody else self.env
        return subprocess.run([*prefix, *PECGW, *args, "--config", str(self.config_path)], input=stdin,
                              capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)

    def run(self, *args: str, stdin: str | None = None, as_nobody: bool = False) -> subprocess.CompletedProcess:
        """``pecgw audit VERB ARGS --config ...``"""
        return self.pecgw("audit", *args, stdin=stdin, as_nobody=as_nobody)

    def sql(self, *statements: str) -> None:
        db = sqlite3.connect(self.db)
        with db:
            for s in statements:
                db.execute(s)
        db.close()


@pytest.fixture
def shared_dir():
    """A folder everyone may read and traverse but only root may write (pytest's own tmp_path
    sits in a 0700 folder nobody else can enter)."""
    folder = Path(tempfile.mkdtemp(prefix="pecgw-audit-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)
