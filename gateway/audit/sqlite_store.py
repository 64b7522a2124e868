"""The embedded audit store: one SQLite file in WAL mode.

WAL lets auditors query while the gateway appends; ``synchronous=FULL`` makes every committed
batch survive a power cut (a batch is one transaction, so the fsync cost is per batch, not per
event).  Appends take ``BEGIN IMMEDIATE``, the database's write lock, before reading the chain's
last row, so two processes on one file still produce one chain.  The file is created mode 0600
(SQLite gives its -wal and -shm files the database file's mode): it names people and what they
did.  ``when`` is kept as fixed-width ISO-8601 UTC text, which sorts as time.

Read-only (``read_only=True``, for auditors): the file is opened as ``file:...?mode=ro`` and
nothing is created, neither the file nor the table nor the WAL setting.  A WAL database is read
through its ``-shm`` file, which a reader must be able to create when it is absent (it is
removed when the last writer closes); in a folder the auditor cannot write that fails, and then,
only if there is no ``-wal`` file either (so every committed row is in the main file), the file
is opened ``immutable``: read without any lock or shared memory.  A gateway starting to write
meanwhile puts its rows in a new ``-wal`` file, which such a reader simply does not see.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sqlite3
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

from gateway.audit.chain import COLUMNS, GENESIS, INT_COLUMNS, anchor_event
from gateway.audit.events import AuditEvent
from gateway.audit.store import (INDEXES, StoreMissing, chained, decode, q, read_only_error, when_text,
                                 where)
from gateway.audit.verify import VerifyReport, verify_chain

__all__ = ["SqliteStore", "connect_read_only", "has_audit_table"]

_ALL = ("seq", *COLUMNS, "prev_hash", "hash")
_SELECT = ", ".join(q(c) for c in _ALL)


def _schema() -> list[str]:
    cols = ",\n  ".join(f"{q(c)} {'INTEGER' if c in INT_COLUMNS else 'TEXT'}" for c in COLUMNS)
    statements = [f"CREATE TABLE IF NOT EXISTS audit (\n  seq INTEGER PRIMARY KEY,\n  {cols},\n"
                  f"  prev_hash BLOB NOT NULL,\n  hash BLOB NOT NULL\n)"]
    for name, columns in INDEXES.items():
        statements.append(f"CREATE INDEX IF NOT EXISTS {name} ON audit ({', '.join(map(q, columns))})")
    return statements


def _uri(path: Path, **params: str) -> str:
    return f"file:{urllib.parse.quote(str(path.absolute()))}?{urllib.parse.urlencode(params)}"


#: What SQLite answers when a reader cannot create the ``-shm`` file of a WAL database.
_NO_SHM = ("SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_CANTINIT", "SQLITE_CANTOPEN")


def _probe(uri: str, timeout: float) -> sqlite3.Connection:
    """A connection to ``uri`` that has read once (the first read opens the WAL), or the error."""
    db = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def connect_read_only(path: Path | str, *, timeout: float = 30.0) -> sqlite3.Connection:
    """A connection that can only read ``path`` and creates nothing (see the module docstring);
    :class:`StoreMissing` when there is no such file."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_RDONLY))  # mode=ro alone would only say "unable to open"
    except FileNotFoundError:
        raise StoreMissing(f"{path} does not exist") from None
    try:
        return _probe(_uri(path, mode="ro"), timeout)
    except sqlite3.OperationalError as exc:
        wal = path.with_name(path.name + "-wal")
        if getattr(exc, "sqlite_errorname", "") not in _NO_SHM or wal.exists():
            raise
    return _probe(_uri(path, mode="ro", immutable="1"), timeout)


def has_audit_table(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone() is not None


class SqliteStore:
    """An audit chain in the SQLite file ``path``, HMAC'd with ``key``; ``read_only`` for auditors."""

    def __init__(self, path: Path | str, key: bytes, *, busy_timeout: float = 30.0,
                 read_only: bool = False) -> None:
        if not key:
            raise ValueError("the audit store needs a non-empty HMAC key")
        self.path = Path(path)
        self.read_only = read_only
        self._key = key
        self._lock = threading.Lock()
        if read_only:
            self._db = self._open_read_only(busy_timeout)
        else:
            self._open_for_writing(busy_timeout)

    def _open_read_only(self, busy_timeout: float) -> sqlite3.Connection:
        db = connect_read_only(self.path, timeout=busy_timeout)
        if has_audit_table(db):
            return db
        db.close()
        raise StoreMissing(f"{self.path} has no audit table")

    def _open_for_writing(self, busy_timeout: float) -> None:
        """Create the file (0600), the table and the indexes if missing; WAL, synchronous=FULL."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        # isolation_level=None: no implicit transactions, each method says BEGIN itself.
        self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._write():
            for statement in _schema():
                self._db.execute(statement)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _tail(self) -> tuple[int, bytes]:
        last = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (last[0], bytes(last[1])) if last else (0, GENESIS)

    def _insert(self, events: list[AuditEvent]) -> int:
        last_seq, last_hash = self._tail()
        rows = chained(self._key, last_seq, last_hash, events)
        marks = ", ".join("?" * len(_ALL))
        self._db.executemany(f"INSERT INTO audit ({_SELECT}) VALUES ({marks})",
                             [(seq, *(row[c] for c in COLUMNS), prev, h) for seq, prev, h, row in rows])
        return rows[-1][0] if rows else last_seq

    def append(self, events: list[AuditEvent]) -> int:
        if self.read_only:
            raise read_only_error("append")
        with self._write():
            return self._insert(events)

    def _scan(self) -> Iterator[tuple[int, bytes, bytes, dict[str, Any]]]:
        for r in self._db.execute(f"SELECT {_SELECT} FROM audit ORDER BY seq"):
            yield r[0], bytes(r[-2]), bytes(r[-1]), dict(zip(COLUMNS, r[1:-2]))

    def verify(self, expect_head: tuple[int, bytes] | None = None) -> VerifyReport:
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot for both passes
            try:
                return verify_chain(self._key, self._scan, expect_head=expect_head)
            finally:
                self._db.execute("COMMIT")

    def prune(self, before: _dt.datetime) -> int:
        """Delete the rows before the first one written at or after ``before`` (a prefix in
        ``seq`` order, so a row from a gateway with a late clock is kept, never a hole made),
        after appending an anchor for the last of them."""
        if self.read_only:
            raise read_only_error("prune")
        bound = when_text(before)
        with self._write() as db:
            keep = db.execute('SELECT seq FROM audit WHERE "when" >= ? ORDER BY seq LIMIT 1',
                              (bound,)).fetchone()
            last = db.execute("SELECT seq, hash FROM audit WHERE seq < ? ORDER BY seq DESC LIMIT 1",
                              (keep[0] if keep else 2**62,)).fetchone()
            if last is None:
                return 0
            self._insert([anchor_event(last[0], bytes(last[1]), before)])
            return db.execute("DELETE FROM audit WHERE seq <= ?", (last[0],)).rowcount

    def query(self, **filters: Any) -> list[dict[str, Any]]:
        office = "EXISTS (SELECT 1 FROM json_each(audit.offices) WHERE json_each.value = ?)"
        clause, params, limit = where(filters, ph="?", office=office, when_param=when_text)
        sql = f"SELECT {_SELECT} FROM audit{clause} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {limit:d}"
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [decode(r[0], dict(zip(COLUMNS, r[1:-2]))) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
