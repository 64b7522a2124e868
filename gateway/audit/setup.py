"""From ``[audit]`` to a running trail: the chain key in the vault, the store, the sinks.

The chain key (32 random octets, kept in the vault as urlsafe base64 under
``audit.chain_key_vault_key``) is what makes the chain tamper-evident: whoever has only the
database cannot recompute a row's HMAC.  The gateway creates it at its first start
(:func:`open_trail`), and refuses to when the store already holds rows; the CLI only reads it (:func:`chain_key`), so ``pecgw audit verify``
on a host without the vault says so rather than minting a key that matches nothing.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from typing import Any

from gateway.audit.jsonl import JsonLinesSink
from gateway.audit.writer import FanOutSink, StoreSink
from gateway.config import ConfigError, GatewayConfig
from gateway.secret import Secret
from gateway.vault import Vault

__all__ = ["ChainKeyMissing", "build_sink", "chain_key", "open_store", "open_trail", "postgres_conninfo"]

log = logging.getLogger(__name__)

KEY_BYTES = 32


class ChainKeyMissing(ConfigError):
    """The vault has no audit chain key (the gateway has never started with this vault)."""


def _decode(config: GatewayConfig, secret: Secret) -> bytes:
    text = secret.reveal_bytes().strip()
    try:
        key = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(config.source, "audit.chain_key_vault_key",
                          f"vault entry {config.audit.chain_key_vault_key!r} is not a "
                          f"{KEY_BYTES}-byte key in urlsafe base64")
    return key


def chain_key(config: GatewayConfig, vault: Vault) -> bytes:
    """The chain key from the vault; :class:`ChainKeyMissing` when there is none."""
    name = config.audit.chain_key_vault_key
    secret = vault.get(name)
    if secret is None:
        raise ChainKeyMissing(config.source, "audit.chain_key_vault_key",
                              f"the vault {config.vault.path} has no entry {name!r} (the audit chain "
                              "key, created by the gateway at its first start): without it the chain "
                              "cannot be checked or extended")
    return _decode(config, secret)


def open_trail(config: GatewayConfig, vault: Vault) -> Any:
    """The store the gateway appends to, with the chain key from the vault — created (and
    logged) at the first start.  A store that already holds rows while the vault has no key is
    refused: a new key would extend the chain with links nobody could check against the old
    rows, so the vault (or its entry) must be restored from a backup instead."""
    try:
        return open_store(config, vault, chain_key(config, vault))
    except ChainKeyMissing:
        pass
    key = secrets.token_bytes(KEY_BYTES)
    store = open_store(config, vault, key)
    if store.append([]) > 0:
        store.close()
        raise ChainKeyMissing(config.source, "audit.chain_key_vault_key",
                              f"the audit store already holds rows but the vault {config.vault.path} has no "
                              f"entry {config.audit.chain_key_vault_key!r}: restore the vault (or this "
                              "entry) from a backup; a new key would leave those rows unverifiable")
    vault.set(config.audit.chain_key_vault_key, Secret(base64.urlsafe_b64encode(key)))
    log.warning("created the audit chain key in the vault %s as %r; keep a backup of the vault: "
                "without this key the audit chain cannot be verified",
                config.vault.path, config.audit.chain_key_vault_key)
    return store


def postgres_conninfo(config: GatewayConfig, vault: Vault) -> str:
    """The DSN with the vaulted password added, if ``postgresql_password_vault_key`` names one."""
    from psycopg.conninfo import make_conninfo

    audit = config.audit
    assert audit.postgresql_dsn is not None
    name = audit.postgresql_password_vault_key
    if name is None:
        return audit.postgresql_dsn
    password = vault.get(name)
    if password is None:
        raise ConfigError(config.source, "audit.postgresql_password_vault_key",
                          f"no vault entry {name!r}; set it with 'pecgw vault set --entry {name}'")
    return make_conninfo(audit.postgresql_dsn, password=password.reveal())


def open_store(config: GatewayConfig, vault: Vault, key: bytes, *, read_only: bool = False) -> Any:
    """The configured store; a store that cannot be opened is a :class:`ConfigError` naming the
    key to check (psycopg's message names host, port and user, never the password).

    ``read_only`` is for auditors (``pecgw audit query|message|verify``): nothing is created or
    written, so read access to the file or a SELECT-only role is enough, and a trail that is not
    there is an error rather than a new empty store."""
    from gateway.audit.store import StoreMissing

    audit = config.audit
    if audit.store == "sqlite":
        import sqlite3

        from gateway.audit.sqlite_store import SqliteStore

        try:
            return SqliteStore(audit.sqlite_path, key, read_only=read_only)
        except StoreMissing as exc:
            raise ConfigError(config.source, "audit.sqlite_path",
                              f"{exc} (the gateway creates it at its first start)") from None
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(config.source, "audit.sqlite_path",
                              f"cannot open {audit.sqlite_path}: {exc}") from None
    import psycopg

    from gateway.audit.postgres_store import PostgresStore

    try:
        return PostgresStore(postgres_conninfo(config, vault), key, schema=audit.postgresql_schema,
                             read_only=read_only)
    except StoreMissing as exc:
        raise ConfigError(config.source, "audit.postgresql_schema",
                          f"{exc} (the gateway creates it at its first start)") from None
    except psycopg.Error as exc:
        raise ConfigError(config.source, "audit.postgresql_dsn",
                          f"cannot open the audit store: {' '.join(str(exc).split())}") from None


def build_sink(config: GatewayConfig, store: Any) -> StoreSink | FanOutSink:
    """The sink the relay emits into: the store's writer, plus the JSON-lines copy if configured."""
    audit = config.audit
    sink = StoreSink(store, on_failure=audit.on_store_failure, spool_path=audit.spool_path, label=audit.store)
    if audit.jsonl_path is None:
        return sink
    return FanOutSink(sink, JsonLinesSink(audit.jsonl_path))
