"""``pecgw check-config`` on ``[audit]``: can the gateway write its store, and is the chain key
in the vault or still to be created.  Errors name the key to fix and never carry a password."""

from __future__ import annotations

import psycopg
import pytest

from gateway.audit.check import check_audit
from gateway.audit.setup import open_trail
from gateway.config import ConfigError
from gateway.secret import Secret
from tests.audit.conftest import Backend, Trail, event

NEW_KEY = "audit chain key: no vault entry 'audit/chain-key' yet; the gateway creates it at its first start"
HAS_KEY = "audit chain key: vault entry 'audit/chain-key' is present"


def check(trail: Trail) -> tuple[list[str], list[str]]:
    return check_audit(trail.config, trail.vault)


def check_error(trail: Trail) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        check(trail)
    return err.value


# -- through the command line ------------------------------------------------------------------------
def test_check_config_says_the_store_and_the_key_will_be_created(tmp_path):
    trail = Trail(tmp_path)
    proc = trail.pecgw("check-config")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-3:] == [
        f"audit store: {trail.db} (SQLite) will be created at the first start", NEW_KEY,
        f"{trail.config_path}: OK (1 mailboxes, 1 offices)"]
    assert not trail.db.exists() and "audit/chain-key" not in trail.vault.names()  # nothing created


def test_check_config_on_a_store_in_use(tmp_path):
    trail = Trail(tmp_path)
    trail.fill([event(1)])
    proc = trail.pecgw("check-config")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-3:-1] == [f"audit store: {trail.db} (SQLite) is writable", HAS_KEY]


def test_check_config_warns_when_rows_exist_but_the_key_does_not(tmp_path):
    trail = Trail(tmp_path)
    trail.fill([event(1)])
    trail.vault.delete("audit/chain-key")
    proc = trail.pecgw("check-config")
    assert proc.returncode == 0, proc.stderr
    assert NEW_KEY in proc.stdout.splitlines()
    assert (f"warning: {trail.config_path}: audit.chain_key_vault_key: the audit store already holds rows but "
            f"the vault {trail.config.vault.path} has no entry 'audit/chain-key': a new key would leave them "
            "unverifiable; restore the vault (or this entry) from a backup before starting") in proc.stdout


def test_a_store_nobody_may_write_is_an_error(shared_dir):
    """Run as nobody (root may write anything): the file is 0444, its folder root's."""
    trail = Trail(shared_dir)
    trail.fill([event(1)])
    for name in ("audit.sqlite", "vault.json", "gateway.toml", "users.toml", "policy.toml"):
        (shared_dir / name).chmod(0o444)
    proc = trail.pecgw("check-config", as_nobody=True)
    assert proc.returncode == 2 and "audit store" not in proc.stdout
    assert proc.stderr == (f"pecgw: {trail.config_path}: audit.sqlite_path: {trail.db} is not readable and "
                           "writable for this user\n")

    (shared_dir / "audit.sqlite").chmod(0o666)  # the file is, but not the folder for -wal and -shm
    proc = trail.pecgw("check-config", as_nobody=True)
    assert proc.returncode == 2
    assert proc.stderr == (f"pecgw: {trail.config_path}: audit.sqlite_path: its folder {shared_dir} is not "
                           "writable for this user (SQLite keeps its -wal and -shm files beside the database)\n")

    trail.configure({"sqlite_path": str(shared_dir / "new" / "audit.sqlite")})
    proc = trail.pecgw("check-config", as_nobody=True)
    assert proc.returncode == 2
    assert proc.stderr == (f"pecgw: {trail.config_path}: audit.sqlite_path: cannot create "
                           f"{shared_dir / 'new' / 'audit.sqlite'}: {shared_dir} is not writable for this user\n")


# -- SQLite ----------------------------------------------------------------------------------------------
def test_a_path_under_a_file_is_an_error(tmp_path):
    (tmp_path / "state").write_text("")
    trail = Trail(tmp_path, {"sqlite_path": str(tmp_path / "state" / "db" / "audit.sqlite")})
    err = check_error(trail)
    assert err.key == "audit.sqlite_path" and str(err).endswith(f"{tmp_path / 'state'} is not a folder")


def test_a_file_that_is_no_database_is_an_error(tmp_path):
    trail = Trail(tmp_path)
    trail.db.write_text("not sqlite " * 100)
    err = check_error(trail)
    assert err.key == "audit.sqlite_path" and "cannot be read as an SQLite database" in str(err)


def test_an_sqlite_store_created_in_missing_folders(tmp_path):
    trail = Trail(tmp_path, {"sqlite_path": str(tmp_path / "a" / "b" / "audit.sqlite")})
    lines, warnings = check(trail)
    assert lines == [f"audit store: {tmp_path / 'a' / 'b' / 'audit.sqlite'} (SQLite) will be created at the "
                     "first start", NEW_KEY] and warnings == []
    assert not (tmp_path / "a").exists()


def test_a_malformed_chain_key_is_an_error(tmp_path):
    trail = Trail(tmp_path)
    trail.vault.set("audit/chain-key", Secret("too short"))
    err = check_error(trail)
    assert err.key == "audit.chain_key_vault_key" and "is not a 32-byte key" in str(err)


# -- PostgreSQL ------------------------------------------------------------------------------------------
@pytest.fixture
def pg(tmp_path):
    backend = Backend("postgres", tmp_path)
    yield backend
    backend.cleanup()


def where(conninfo: str) -> str:
    with psycopg.connect(conninfo) as db:
        return f"{db.info.user}@{db.info.host}:{db.info.port}/{db.info.dbname}"


def test_postgres_schema_and_table_will_be_created_and_are_not_yet(pg, tmp_path):
    trail = Trail(tmp_path, pg.audit_table())
    lines, warnings = check(trail)
    assert lines == [f'audit store: schema and table "{pg.schema}"."audit" on {where(pg.conninfo)} (PostgreSQL) '
                     "will be created at the first start", NEW_KEY] and warnings == []
    with psycopg.connect(pg.conninfo) as db:
        assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (pg.schema,)).fetchone() == (0,)


def test_postgres_store_in_use(pg, tmp_path):
    trail = Trail(tmp_path, pg.audit_table())
    trail.fill([event(1)])
    proc = trail.pecgw("check-config")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-3:-1] == [
        f'audit store: table "{pg.schema}"."audit" on {where(pg.conninfo)} (PostgreSQL) is writable', HAS_KEY]
    trail.vault.delete("audit/chain-key")
    assert check(trail)[1][0].startswith(f"{trail.config_path}: audit.chain_key_vault_key: the audit store "
                                         "already holds rows")


def test_a_role_granted_only_rows_on_an_existing_table_can_write(pg, tmp_path):
    """SELECT and INSERT on the table, USAGE on the schema, no CREATE anywhere: check-config says
    writable, and the gateway's store indeed opens (running no DDL) and appends."""
    trail = Trail(tmp_path, pg.audit_table())
    trail.fill([event(1)])
    role = pg.role("GRANT USAGE ON SCHEMA {schema} TO {role}", "GRANT SELECT, INSERT ON {schema}.audit TO {role}")
    trail.configure({**pg.audit_table(), "postgresql_dsn": role})
    lines, _ = check(trail)
    assert lines[0] == f'audit store: table "{pg.schema}"."audit" on {where(role)} (PostgreSQL) is writable'
    store = open_trail(trail.config, trail.vault)
    try:
        assert store.append([event(2)]) == 2 and store.verify().ok
    finally:
        store.close()


@pytest.mark.parametrize("existing,grants,key,says", [
    ("table", ["GRANT USAGE ON SCHEMA {schema} TO {role}", "GRANT SELECT ON {schema}.audit TO {role}"],
     "audit.postgresql_dsn", 'the role "{role}" lacks INSERT on "{schema}"."audit"'),
    ("table", ["GRANT SELECT, INSERT ON {schema}.audit TO {role}"],
     "audit.postgresql_schema", 'the role "{role}" lacks USAGE on schema "{schema}"'),
    ("schema", ["GRANT USAGE ON SCHEMA {schema} TO {role}"],
     "audit.postgresql_schema", 'there is no table "{schema}"."audit" and the role "{role}" may not create it '
                                '(CREATE on schema "{schema}")'),
    ("nothing", [],  # a new role has no CREATE on the database
     "audit.postgresql_schema", 'there is no schema "{schema}" and the role "{role}" may not create one'),
])
def test_a_role_that_cannot_write_is_told_what_it_lacks(pg, tmp_path, existing, grants, key, says):
    if existing == "table":
        pg.open().close()
    elif existing == "schema":
        pg.sql(f'CREATE SCHEMA "{pg.schema}"')
    role = pg.role(*grants)
    trail = Trail(tmp_path, {**pg.audit_table(), "postgresql_dsn": role})
    err = check_error(trail)
    name = psycopg.conninfo.conninfo_to_dict(role)["user"]
    assert err.key == key
    assert says.format(role=name, schema=pg.schema) in str(err)


def test_a_connection_error_names_the_key_and_never_the_password(pg, tmp_path):
    password = "pw-Zq81-never-printed"
    trail = Trail(tmp_path, {**pg.audit_table(), "postgresql_dsn": pg.conninfo + " dbname=no_such_database_x",
                             "postgresql_password_vault_key": "audit/postgresql"})
    missing = check_error(trail)
    assert missing.key == "audit.postgresql_password_vault_key" and "no vault entry 'audit/postgresql'" in str(missing)

    trail.vault.set("audit/postgresql", Secret(password))
    proc = trail.pecgw("check-config")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"pecgw: {trail.config_path}: audit.postgresql_dsn: cannot use the audit store: ")
    assert "no_such_database_x" in proc.stderr and password not in proc.stderr + proc.stdout


def test_a_password_echoed_by_the_server_is_masked(pg, tmp_path, monkeypatch):
    """libpq does not repeat passwords, but should a message ever carry one it is masked."""
    password = "pw-Zq81-never-printed"
    trail = Trail(tmp_path, {**pg.audit_table(), "postgresql_password_vault_key": "audit/postgresql"})
    trail.vault.set("audit/postgresql", Secret(password))

    def refuse(conninfo, **_kwargs):
        assert f"password={password}" in conninfo  # the vaulted password is what is sent
        raise psycopg.OperationalError(f"bad password {password!r}\nfor user x")

    monkeypatch.setattr(psycopg, "connect", refuse)
    err = check_error(trail)
    assert password not in str(err) and str(err).endswith("cannot use the audit store: bad password '***' for user x")
