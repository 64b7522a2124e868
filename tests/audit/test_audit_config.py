"""``[audit]``: defaults that work with nothing set, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.toml"


def config(audit: dict | None) -> dict:
    data = {
        "imap": {"listen_tls": ["127.0.0.1:993"], "cert_file": "c.pem", "key_file": "k.pem"},
        "auth": {"backend": "static", "users_file": "users.toml"},
        "vault": {"path": "state/vault.json", "key_file": "vault.key"},
        "policy": {"file": "policy.toml"},
        "mailboxes": {"protocollo": {"address": "p@pec.example.it",
                                     "imap": {"host": "imap.example.it", "username": "p@pec.example.it"}}},
    }
    if audit is not None:
        data["audit"] = audit
    return data


@pytest.mark.parametrize("audit", [{}, None])
def test_an_empty_or_missing_audit_table_means_sqlite_beside_the_vault(tmp_path, audit):
    a = parse_config(config(audit), tmp_path / "gw.toml").audit
    assert a.store == "sqlite" and a.sqlite_path == tmp_path / "state" / "audit.sqlite"
    assert a.on_store_failure == "fail-closed" and a.spool_path == tmp_path / "state" / "audit-spool.jsonl"
    assert a.chain_key_vault_key == "audit/chain-key" and a.jsonl_path is None
    assert a.postgresql_dsn is None and a.postgresql_schema == "public"


def test_every_key(tmp_path):
    a = parse_config(config({
        "store": "postgresql", "postgresql_dsn": "host=db.example.it dbname=audit user=pecgw",
        "postgresql_password_vault_key": "audit/postgresql", "postgresql_schema": "pecgw",
        "on_store_failure": "spool", "spool_path": "/var/spool/pecgw/audit.jsonl",
        "chain_key_vault_key": "audit/key2", "jsonl_path": "log/audit.jsonl", "sqlite_path": "x.sqlite",
    }), tmp_path / "gw.toml").audit
    assert (a.store, a.postgresql_dsn, a.postgresql_password_vault_key, a.postgresql_schema) == (
        "postgresql", "host=db.example.it dbname=audit user=pecgw", "audit/postgresql", "pecgw")
    assert a.on_store_failure == "spool" and a.spool_path == Path("/var/spool/pecgw/audit.jsonl")
    assert a.chain_key_vault_key == "audit/key2" and a.jsonl_path == tmp_path / "log" / "audit.jsonl"


def test_the_example_documents_every_key():
    text = EXAMPLE.read_text()
    section = text[text.index("[audit]"):text.index("[policy]")]
    for key in ("store", "sqlite_path", "postgresql_dsn", "postgresql_password_vault_key",
                "postgresql_schema", "on_store_failure", "spool_path", "chain_key_vault_key",
                "jsonl_path"):
        assert f"{key} = " in section, key
    assert load_config(EXAMPLE).audit.store == "sqlite"


@pytest.mark.parametrize("audit,key,says", [
    ({"store": "mysql"}, "audit.store", "must be one of sqlite, postgresql"),
    ({"store": "postgresql"}, "audit.postgresql_dsn", "required when store"),
    ({"store": "postgresql", "postgresql_dsn": "host=db password=hunter2"}, "audit.postgresql_dsn",
     "must not contain a password"),
    ({"store": "postgresql", "postgresql_dsn": "postgresql://pecgw:hunter2@db/audit"},
     "audit.postgresql_dsn", "must not contain a password"),
    ({"postgresql_dsn": "host='db password=hunter2"}, "audit.postgresql_dsn", "not a valid"),
    ({"postgresql_schema": ""}, "audit.postgresql_schema", "must not be empty"),
    ({"on_store_failure": "drop"}, "audit.on_store_failure", "must be one of fail-closed, spool"),
    ({"sqlite_path": 3}, "audit.sqlite_path", "must be a string"),
    ({"spool_path": ""}, "audit.spool_path", "must not be empty"),
    ({"chain_key_vault_key": ""}, "audit.chain_key_vault_key", "must not be empty"),
    ({"jsonl_path": "a.jsonl", "spool_path": "a.jsonl"}, "audit.spool_path", "must differ"),
    ({"sqlite_path": "a.db", "jsonl_path": "a.db"}, "audit.sqlite_path", "must differ"),
    ({"jsonl": "a.jsonl"}, "audit.jsonl", "unknown key"),
    ({"store": ["sqlite"]}, "audit.store", "must be a string"),
])
def test_errors_name_the_key_and_never_repeat_a_password(tmp_path, audit, key, says):
    with pytest.raises(ConfigError) as err:
        parse_config(config(audit), tmp_path / "gw.toml")
    assert err.value.key == key
    assert says in str(err.value)
    assert "hunter2" not in str(err.value)
