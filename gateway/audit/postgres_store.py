"""The shared audit store: PostgreSQL through psycopg 3, for several gateway instances.

Several instances append to one chain, so each append is serialised: inside its transaction it
takes a transaction-scoped advisory lock (a fixed class id plus a hash of the schema name, so
logs in different schemas do not wait on each other), reads the chain's last ``(seq, hash)``,
inserts the batch with COPY and commits, which releases the lock.  ``verify`` reads one
REPEATABLE READ snapshot through a server-side cursor, so a million-row walk neither sees
half-committed batches nor loads the table into memory.

``when`` is a ``timestamptz`` (microsecond precision, like the ISO text the chain hashes, so it
converts back exactly); hashes are ``bytea``; ``offices`` and ``detail`` stay JSON *text*
because ``jsonb`` would re-serialise them and break their HMAC.

Opening runs only the DDL still needed, looked up in the catalog first: a role that was granted
SELECT and INSERT on an existing table can write without any CREATE privilege
(``CREATE ... IF NOT EXISTS`` checks the privilege before it checks whether the object exists).
Read-only (``read_only=True``, for auditors): no DDL at all, the session is
``default_transaction_read_only``, and a missing schema or table is a :class:`StoreMissing`
naming it; a role without SELECT (or without USAGE on the schema) is refused at open.
"""

from __future__ import annotations

import datetime as _dt
import threading
from typing import Any, Iterator

import psycopg
from psycopg import sql

from gateway.audit.chain import COLUMNS, GENESIS, INT_COLUMNS, anchor_event, iso_utc
from gateway.audit.events import AuditEvent
from gateway.audit.store import INDEXES, StoreMissing, chained, decode, read_only_error, where
from gateway.audit.verify import VerifyReport, verify_chain

__all__ = ["PostgresStore", "catalog", "missing_indexes"]

_LOCK_CLASS = 0x50454347  # "PECG": the advisory lock class of audit appends
_ALL = ("seq", *COLUMNS, "prev_hash", "hash")


def _type(column: str) -> str:
    return "timestamptz" if column == "when" else "bigint" if column in INT_COLUMNS else "text"


def _check(when: Any) -> _dt.datetime:
    if not isinstance(when, _dt.datetime) or when.tzinfo is None:
        raise TypeError("since/until must be timezone-aware datetimes")
    return when


#: ``(schema exists, table "audit" exists in it)``, from the catalog (readable by every role).
_CATALOG = sql.SQL(
    "SELECT n.oid IS NOT NULL, c.oid IS NOT NULL FROM (SELECT %s::text AS name) AS want "
    "LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = want.name "
    "LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = 'audit' "
    "AND c.relkind IN ('r', 'p')")
_RELATIONS = sql.SQL("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                     "ON n.oid = c.relnamespace WHERE n.nspname = %s")


def catalog(db: psycopg.Connection, schema: str) -> tuple[bool, bool]:
    """Whether ``schema`` exists, and whether its table ``audit`` does."""
    has_schema, has_table = db.execute(_CATALOG, (schema,)).fetchone()
    return bool(has_schema), bool(has_table)


def missing_indexes(db: psycopg.Connection, schema: str) -> list[str]:
    """The :data:`INDEXES` not yet in ``schema``."""
    present = {name for (name,) in db.execute(_RELATIONS, (schema,))}
    return [name for name in INDEXES if name not in present]


class PostgresStore:
    """An audit chain in table ``audit`` of ``schema`` (created if missing), HMAC'd with ``key``;
    ``read_only`` for auditors: nothing is created, nothing can be written."""

    def __init__(self, conninfo: str, key: bytes, *, schema: str = "public", read_only: bool = False) -> None:
        if not key:
            raise ValueError("the audit store needs a non-empty HMAC key")
        self.schema = schema
        self.read_only = read_only
        self._key = key
        self._lock = threading.Lock()
        self._conninfo = conninfo
        t = sql.Identifier(schema, "audit")
        cols = sql.SQL(", ").join(map(sql.Identifier, _ALL))
        self._sql = {
            "lock": sql.SQL("SELECT pg_advisory_xact_lock({}, hashtext({}))").format(
                sql.Literal(_LOCK_CLASS), sql.Literal(schema)),
            "tail": sql.SQL("SELECT seq, hash FROM {} ORDER BY seq DESC LIMIT 1").format(t),
            "copy": sql.SQL("COPY {} ({}) FROM STDIN").format(t, cols),
            "scan": sql.SQL("SELECT {} FROM {} ORDER BY seq").format(cols, t),
            "keep": sql.SQL('SELECT seq FROM {} WHERE "when" >= %s ORDER BY seq LIMIT 1').format(t),
            "last_before": sql.SQL("SELECT seq, hash FROM {} WHERE seq < %s ORDER BY seq DESC LIMIT 1").format(t),
            "delete": sql.SQL("DELETE FROM {} WHERE seq <= %s").format(t),
            "select": sql.SQL("SELECT {} FROM {}").format(cols, t),
        }
        self._db = psycopg.connect(conninfo, autocommit=True)
        try:
            if read_only:
                self._require_table(t)
            else:
                self._create(t)
        except BaseException:
            self._db.close()
            raise

    def _require_table(self, t: sql.Composable) -> None:
        """Read-only open: the table must exist and be readable; nothing is created."""
        self._db.execute("SET default_transaction_read_only = on")
        has_schema, has_table = catalog(self._db, self.schema)
        if not has_table:
            where = f'in schema "{self.schema}"' if has_schema else f'and no schema "{self.schema}"'
            raise StoreMissing(f'there is no table "audit" {where}')
        self._db.execute(sql.SQL("SELECT 1 FROM {} LIMIT 0").format(t))  # no SELECT or USAGE: refused now

    def _ddl(self, t: sql.Composable) -> list[sql.Composable]:
        """The statements that create what is missing: schema, table, indexes."""
        has_schema, has_table = catalog(self._db, self.schema)
        statements = []
        if not has_schema:
            statements.append(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
        if not has_table:
            columns = sql.SQL(",\n  ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_type(c))) for c in COLUMNS)
            statements.append(sql.SQL("CREATE TABLE IF NOT EXISTS {} (\n  seq bigint PRIMARY KEY,\n  {},\n"
                                      "  prev_hash bytea NOT NULL,\n  hash bytea NOT NULL\n)").format(t, columns))
        for name in (list(INDEXES) if not has_table else missing_indexes(self._db, self.schema)):
            statements.append(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                sql.Identifier(name), t, sql.SQL(", ").join(map(sql.Identifier, INDEXES[name]))))
        return statements

    def _create(self, t: sql.Composable) -> None:
        with self._lock, self._db.transaction():  # the lock: instances starting together
            self._db.execute(self._sql["lock"])
            for statement in self._ddl(t):
                self._db.execute(statement)

    def _insert(self, cur: psycopg.Cursor, events: list[AuditEvent]) -> int:
        cur.execute(self._sql["lock"])
        last = cur.execute(self._sql["tail"]).fetchone()
        last_seq, last_hash = (last[0], bytes(last[1])) if last else (0, GENESIS)
        rows = chained(self._key, last_seq, last_hash, events)
        if rows:
            with cur.copy(self._sql["copy"]) as copy:
                for seq, prev, h, row in rows:
                    copy.write_row((seq, *(row[c] for c in COLUMNS), prev, h))
        return rows[-1][0] if rows else last_seq

    def _reconnect(self) -> None:
        """A connection the server dropped (restart, failover) is replaced on the next append,
        so a writer retrying after an outage gets through once the server is back."""
        if self._db.closed or self._db.broken:
            self._db.close()
            self._db = psycopg.connect(self._conninfo, autocommit=True)

    def append(self, events: list[AuditEvent]) -> int:
        if self.read_only:
            raise read_only_error("append")
        with self._lock:
            self._reconnect()
            with self._db.transaction(), self._db.cursor() as cur:
                return self._insert(cur, events)

    @staticmethod
    def _row(r: tuple) -> tuple[int, bytes, bytes, dict[str, Any]]:
        row = dict(zip(COLUMNS, r[1:-2]))
        row["when"] = iso_utc(row["when"])
        return r[0], bytes(r[-2]), bytes(r[-1]), row

    def _scan(self) -> Iterator[tuple[int, bytes, bytes, dict[str, Any]]]:
        with self._db.cursor(name="audit_verify") as cur:
            cur.itersize = 5000
            cur.execute(self._sql["scan"])
            for r in cur:
                yield self._row(r)

    def verify(self, expect_head: tuple[int, bytes] | None = None) -> VerifyReport:
        with self._lock, self._db.transaction():
            self._db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return verify_chain(self._key, self._scan, expect_head=expect_head)

    def prune(self, before: _dt.datetime) -> int:
        """Delete the rows before the first one written at or after ``before`` (a prefix in
        ``seq`` order, so a row from an instance with a late clock is kept, never a hole made),
        after appending an anchor for the last of them."""
        if self.read_only:
            raise read_only_error("prune")
        with self._lock, self._db.transaction(), self._db.cursor() as cur:
            cur.execute(self._sql["lock"])
            keep = cur.execute(self._sql["keep"], (_check(before),)).fetchone()
            last = cur.execute(self._sql["last_before"], (keep[0] if keep else 2**62,)).fetchone()
            if last is None:
                return 0
            self._insert(cur, [anchor_event(last[0], bytes(last[1]), before)])
            return cur.execute(self._sql["delete"], (last[0],)).rowcount

    def query(self, **filters: Any) -> list[dict[str, Any]]:
        office = "offices::jsonb @> jsonb_build_array(%s::text)"
        clause, params, limit = where(filters, ph="%s", office=office, when_param=_check)
        statement = sql.Composed([self._sql["select"], sql.SQL(clause + " ORDER BY seq")])
        if limit is not None:
            statement += sql.SQL(" LIMIT {}").format(sql.Literal(limit))
        with self._lock:
            rows = self._db.execute(statement, params).fetchall()
        out = []
        for r in rows:
            seq, _, _, row = self._row(r)
            out.append(decode(seq, row))
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
