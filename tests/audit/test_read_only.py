"""An auditor with nothing but read access runs ``pecgw audit query|message|verify``.

SQLite: the commands run as ``nobody`` (we are root, whom file permissions do not stop) on a
0444 database in a folder nobody may read but not write, so SQLite can create neither the file
nor its ``-shm``.  PostgreSQL: they connect as a role with only USAGE on the schema and SELECT
on the table.
"""

from __future__ import annotations

import json

import pytest

import base64
import secrets

from gateway.audit.setup import chain_key
from gateway.secret import Secret
from gateway.audit.sqlite_store import SqliteStore
from tests.audit.conftest import Backend, Trail, event

EVENTS = [event(1, action="login", message=None),
          event(2, message={"uid": 7, "message_id": "<m7@pec.example.it>", "subject": "Udienza"}),
          event(3, action="flags", message={"uid": 7, "message_id": "<m7@pec.example.it>"}),
          event(4, action="logout", message=None)]


def seqs(proc) -> list[int]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["seq"] for line in proc.stdout.splitlines()]


def listing(folder) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


@pytest.fixture
def sqlite_trail(shared_dir):
    """A filled SQLite trail, closed (no -wal, no -shm), with the database, the vault and the
    configuration readable by everyone and the folder writable by root only."""
    trail = Trail(shared_dir)
    trail.fill(EVENTS)
    assert not (shared_dir / "audit.sqlite-wal").exists()
    for name in ("audit.sqlite", "vault.json", "gateway.toml", "users.toml", "policy.toml"):
        (shared_dir / name).chmod(0o444)
    return trail


def test_nobody_reads_and_verifies_a_read_only_sqlite_trail(sqlite_trail, shared_dir):
    before = listing(shared_dir)
    assert sqlite_trail.run("query", "--format", "jsonl", as_nobody=True).stdout.count("\n") == 4
    assert seqs(sqlite_trail.run("query", "--action", "flags", "--format", "jsonl", as_nobody=True)) == [3]
    assert seqs(sqlite_trail.run("message", "m7@pec.example.it", "--format", "jsonl", as_nobody=True)) == [2, 3]
    verify = sqlite_trail.run("verify", as_nobody=True)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("OK: 4 rows, seq 1..4, chain intact")
    assert listing(shared_dir) == before  # nothing created, nothing written


def test_nobody_reads_rows_a_running_gateway_still_holds_in_its_wal(sqlite_trail, shared_dir):
    """With a writer connected the -wal and -shm files exist (here readable by everyone, as the
    database is): the reader goes through them and sees the rows not yet checkpointed."""
    writer = SqliteStore(sqlite_trail.db, chain_key(sqlite_trail.config, sqlite_trail.vault))
    try:
        writer.append([event(5, action="logout", message=None)])
        assert (shared_dir / "audit.sqlite-wal").stat().st_size > 0
        assert seqs(sqlite_trail.run("query", "--format", "jsonl", as_nobody=True)) == [1, 2, 3, 4, 5]
        verify = sqlite_trail.run("verify", as_nobody=True)
        assert verify.returncode == 0 and verify.stdout.startswith("OK: 5 rows"), verify.stdout + verify.stderr
    finally:
        writer.close()


def test_nobody_cannot_prune_and_is_told_why(sqlite_trail):
    proc = sqlite_trail.run("prune", "--before", "2027-01-01", "--yes", as_nobody=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "audit.sqlite_path: cannot open" in proc.stderr and "Permission denied" in proc.stderr
    assert seqs(sqlite_trail.run("query", "--format", "jsonl")) == [1, 2, 3, 4]


def test_a_missing_trail_is_not_created_for_nobody(shared_dir):
    trail = Trail(shared_dir)
    for name in ("gateway.toml", "users.toml", "policy.toml"):
        (shared_dir / name).chmod(0o444)
    proc = trail.run("query", as_nobody=True)
    assert proc.returncode == 2
    assert proc.stderr == (f"pecgw: {trail.config_path}: audit.sqlite_path: {trail.db} does not exist "
                           "(the gateway creates it at its first start)\n")
    assert not trail.db.exists()


# -- PostgreSQL ---------------------------------------------------------------------------------------
@pytest.fixture
def pg(tmp_path):
    backend = Backend("postgres", tmp_path)
    yield backend
    backend.cleanup()


def auditor_trail(pg, tmp_path, *grants: str) -> Trail:
    """The trail of :data:`EVENTS` written as the superuser, then configured for a new role
    with only ``grants``."""
    trail = Trail(tmp_path, pg.audit_table())
    trail.fill(EVENTS)
    trail.configure({**pg.audit_table(), "postgresql_dsn": pg.role(*grants)})
    return trail


SELECT_ONLY = ("GRANT USAGE ON SCHEMA {schema} TO {role}", "GRANT SELECT ON {schema}.audit TO {role}")


def test_a_select_only_role_queries_and_verifies(pg, tmp_path):
    trail = auditor_trail(pg, tmp_path, *SELECT_ONLY)
    assert seqs(trail.run("query", "--format", "jsonl")) == [1, 2, 3, 4]
    assert seqs(trail.run("message", "<m7@pec.example.it>", "--format", "jsonl")) == [2, 3]
    verify = trail.run("verify")
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("OK: 4 rows, seq 1..4, chain intact")

    prune = trail.run("prune", "--before", "2027-01-01", "--yes")  # writing needs more than SELECT
    assert prune.returncode == 2 and "permission denied for table audit" in prune.stderr, prune.stderr
    assert seqs(trail.run("query", "--format", "jsonl")) == [1, 2, 3, 4]


def test_a_role_that_may_not_read_is_told_at_open(pg, tmp_path):
    trail = auditor_trail(pg, tmp_path, "GRANT USAGE ON SCHEMA {schema} TO {role}")
    proc = trail.run("query")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "audit.postgresql_dsn: cannot open the audit store: permission denied for table audit" in proc.stderr


def test_a_missing_table_is_named_and_not_created(pg, tmp_path):
    pg.sql(f'CREATE SCHEMA "{pg.schema}"')
    trail = Trail(tmp_path, {**pg.audit_table(), "postgresql_dsn": pg.role(
        "GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}")})
    for verb in ("query", "verify"):
        if verb == "verify":
            trail.vault.set("audit/chain-key", Secret(base64.urlsafe_b64encode(secrets.token_bytes(32))))
        proc = trail.run(verb)
        assert proc.returncode == 2
        assert proc.stderr == (f'pecgw: {trail.config_path}: audit.postgresql_schema: there is no table "audit" '
                               f'in schema "{pg.schema}" (the gateway creates it at its first start)\n')
    with pytest.raises(Exception, match="does not exist"):
        pg.sql("SELECT 1 FROM audit")
