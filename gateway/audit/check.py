"""What ``pecgw check-config`` says about ``[audit]``: can the gateway write its store, and is
the chain key in the vault or still to be created.

Nothing is created or written here: the checks look at the file system, the PostgreSQL catalog
and the role's privileges, and predict what the gateway's first start would do.  A check that
fails raises a :class:`~gateway.config.ConfigError` naming the key to fix; its text never
carries a password (psycopg's messages name host, port and user only, and the vaulted
password is masked should one ever echo it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.audit.setup import ChainKeyMissing, chain_key, postgres_conninfo
from gateway.config import ConfigError, GatewayConfig
from gateway.vault import Vault

__all__ = ["StoreCheck", "check_audit"]


@dataclass(frozen=True)
class StoreCheck:
    line: str  # what check-config prints about the store
    has_rows: bool  # the store already holds rows (so its chain key must not be replaced)


def check_audit(config: GatewayConfig, vault: Vault) -> tuple[list[str], list[str]]:
    """``(lines, warnings)`` about the audit store and the chain key, for check-config."""
    store = _check_sqlite(config) if config.audit.store == "sqlite" else _check_postgres(config, vault)
    key_line, warnings = _check_key(config, vault, store.has_rows)
    return [store.line, key_line], warnings


# -- the chain key ---------------------------------------------------------------------------------
def _check_key(config: GatewayConfig, vault: Vault, has_rows: bool) -> tuple[str, list[str]]:
    """Present (and a well-formed key), or created at the first start; a store that already has
    rows but no key in the vault is a warning: a new key would leave those rows unverifiable."""
    name = config.audit.chain_key_vault_key
    try:
        chain_key(config, vault)
    except ChainKeyMissing:
        line = f"audit chain key: no vault entry {name!r} yet; the gateway creates it at its first start"
        if not has_rows:
            return line, []
        return line, [f"{config.source}: audit.chain_key_vault_key: the audit store already holds rows but "
                      f"the vault {config.vault.path} has no entry {name!r}: a new key would leave them "
                      "unverifiable; restore the vault (or this entry) from a backup before starting"]
    return f"audit chain key: vault entry {name!r} is present", []


# -- SQLite ------------------------------------------------------------------------------------------
def _check_sqlite(config: GatewayConfig) -> StoreCheck:
    path = config.audit.sqlite_path
    if path.exists() or path.is_symlink():
        return _check_sqlite_file(config, path)
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise _sqlite_error(config, f"cannot create {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _sqlite_error(config, f"cannot create {path}: {folder} is not writable for this user")
    return StoreCheck(f"audit store: {path} (SQLite) will be created at the first start", False)


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists (the store creates the folders between)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _check_sqlite_file(config: GatewayConfig, path: Path) -> StoreCheck:
    """An existing file: writable, in a writable folder (SQLite creates its -wal and -shm files
    there), and an SQLite database."""
    if not path.is_file():
        raise _sqlite_error(config, f"{path} is not a file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise _sqlite_error(config, f"{path} is not readable and writable for this user")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise _sqlite_error(config, f"its folder {path.parent} is not writable for this user (SQLite "
                                    "keeps its -wal and -shm files beside the database)")
    has_rows = _sqlite_has_rows(config, path)
    return StoreCheck(f"audit store: {path} (SQLite) is writable", has_rows)


def _sqlite_has_rows(config: GatewayConfig, path: Path) -> bool:
    import sqlite3

    from gateway.audit.sqlite_store import connect_read_only, has_audit_table

    try:
        db = connect_read_only(path)
    except sqlite3.Error as exc:
        raise _sqlite_error(config, f"{path} cannot be read as an SQLite database: {exc}") from None
    try:
        return has_audit_table(db) and db.execute("SELECT EXISTS (SELECT 1 FROM audit)").fetchone()[0] == 1
    except sqlite3.Error as exc:
        raise _sqlite_error(config, f"{path} cannot be read as an SQLite database: {exc}") from None
    finally:
        db.close()


def _sqlite_error(config: GatewayConfig, message: str) -> ConfigError:
    return ConfigError(config.source, "audit.sqlite_path", message)


# -- PostgreSQL ----------------------------------------------------------------------------------------
_PRIVILEGES = """
SELECT current_user,
       has_database_privilege(current_database(), 'CREATE'),
       n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'USAGE'),
       n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'CREATE'),
       c.oid IS NOT NULL AND has_table_privilege(c.oid, 'SELECT'),
       c.oid IS NOT NULL AND has_table_privilege(c.oid, 'INSERT'),
       c.oid IS NOT NULL AND pg_has_role(c.relowner, 'USAGE')
FROM (SELECT %s::text AS name) AS want
LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = want.name
LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = 'audit' AND c.relkind IN ('r', 'p')
"""


@dataclass(frozen=True)
class _Rights:
    role: str
    create_schema: bool  # CREATE on the database
    use_schema: bool
    create_in_schema: bool
    select: bool
    insert: bool
    owner: bool


def _check_postgres(config: GatewayConfig, vault: Vault) -> StoreCheck:
    """Connect as the gateway would, then ask the catalog whether the role can write the table,
    or create it (and its schema) when it is missing."""
    import psycopg

    from gateway.audit.postgres_store import catalog, missing_indexes

    conninfo = postgres_conninfo(config, vault)
    schema = config.audit.postgresql_schema
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as db:
            where = f"{db.info.user}@{db.info.host}:{db.info.port}/{db.info.dbname}"
            rights = _Rights(*db.execute(_PRIVILEGES, (schema,)).fetchone())
            has_schema, has_table = catalog(db, schema)
            missing = missing_indexes(db, schema) if has_table else []
            has_rows = has_table and rights.use_schema and rights.select and _pg_has_rows(db, schema)
    except psycopg.Error as exc:
        raise ConfigError(config.source, "audit.postgresql_dsn",
                          f"cannot use the audit store: {_masked(str(exc), config, vault)}") from None
    table = f'"{schema}"."audit"'
    _require_rights(config, rights, table, has_schema, has_table, missing)
    if has_table:
        return StoreCheck(f"audit store: table {table} on {where} (PostgreSQL) is writable", has_rows)
    what = "table" if has_schema else "schema and table"
    return StoreCheck(f"audit store: {what} {table} on {where} (PostgreSQL) will be created at the first start",
                      False)


def _require_rights(config: GatewayConfig, rights: _Rights, table: str, has_schema: bool, has_table: bool,
                    missing_indexes: list[str]) -> None:
    """What opening the store for writing needs (see :mod:`gateway.audit.postgres_store`)."""
    schema = config.audit.postgresql_schema
    role = f'the role "{rights.role}"'
    if not has_schema and not rights.create_schema:
        raise ConfigError(config.source, "audit.postgresql_schema",
                          f'there is no schema "{schema}" and {role} may not create one '
                          "(CREATE on the database); create it, or grant that")
    if has_schema and not rights.use_schema:
        raise ConfigError(config.source, "audit.postgresql_schema",
                          f'{role} lacks USAGE on schema "{schema}"')
    if has_schema and not has_table and not rights.create_in_schema:
        raise ConfigError(config.source, "audit.postgresql_schema",
                          f'there is no table {table} and {role} may not create it (CREATE on schema "{schema}")')
    if has_table:
        lacking = [p for p, ok in (("SELECT", rights.select), ("INSERT", rights.insert)) if not ok]
        if lacking:
            raise ConfigError(config.source, "audit.postgresql_dsn",
                              f"{role} lacks {' and '.join(lacking)} on {table}")
        if missing_indexes and not rights.owner:
            raise ConfigError(config.source, "audit.postgresql_dsn",
                              f"{table} lacks the indexes {', '.join(missing_indexes)} and {role} does not "
                              "own it, so cannot create them")


def _pg_has_rows(db, schema: str) -> bool:
    from psycopg import sql

    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(schema, "audit"))
    return bool(db.execute(query).fetchone()[0])


def _masked(text: str, config: GatewayConfig, vault: Vault) -> str:
    """``text`` on one line, without the vaulted PostgreSQL password should it appear in it."""
    text = " ".join(text.split())
    name = config.audit.postgresql_password_vault_key
    secret = vault.get(name) if name else None
    if secret is not None and secret.reveal():
        text = text.replace(secret.reveal(), "***")
    return text
