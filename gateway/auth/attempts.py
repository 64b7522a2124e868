"""Failed-login counters for the brute-force throttle (:mod:`gateway.auth.throttle`).

One counter per *scope* and key:

* ``pair``   -- one login name (as typed, case-folded) from one client address;
* ``ip``     -- every name from one client address (name ``""``);
* ``person`` -- one name from every address (address ``""``).

A counter holds the failures since ``first_at``, the first failure of its window, and
``locked_until`` (0: not locked; otherwise a Unix time).  Its rules, the same in both stores:

* a failure adds one, unless the counter is *dead*: its window (``window`` seconds from its first
  failure) is over, or the lockout it had has ended -- then it starts again at one;
* the failure that brings a counter to its ``limit`` locks it for ``duration`` seconds (a limit
  of 0 never locks); failures while it is locked add up, but do not lengthen the lockout.  As a
  count grows one by one from one, exactly one failure reaches the limit: the one that reports
  the lockout, whichever instance counted it;
* a dead counter counts as no failure at all, and is pruned.

:class:`SqlAttempts` keeps the counters in the table ``pecgw_login_attempts`` next to the audit
trail (the same SQLite file or PostgreSQL schema, :mod:`gateway.beside_audit`), so every gateway
instance sharing a PostgreSQL database counts the same failures.  Each failure is one
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` per scope: the database applies it atomically,
so two instances counting at the same moment neither lose a failure nor both see the lockout
begin.  It blocks: callers on the event loop use :func:`asyncio.to_thread`.
:class:`MemoryAttempts` is the same in this process's memory, for a single instance without a
store and as the fallback while the store fails.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from gateway.beside_audit import Tables

__all__ = ["Count", "Key", "MemoryAttempts", "SqlAttempts", "SCOPES", "open_attempt_store"]

SCOPES = ("pair", "ip", "person")
#: a limit nothing reaches: "never lock"
_NEVER = 2**62

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {p}pecgw_login_attempts (
        scope TEXT NOT NULL, name TEXT NOT NULL, ip TEXT NOT NULL, failures INTEGER NOT NULL,
        first_at DOUBLE PRECISION NOT NULL, locked_until DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (scope, name, ip))""",
)

#: A counter is fresh (starts again at one) when it is not locked now and either its lockout has
#: ended or its window began before :ws.  Every SET expression sees the row as it was.
_FRESH = "(a.locked_until <= :now AND (a.locked_until > 0 OR a.first_at <= :ws))"
_FAIL = (
    "INSERT INTO {p}pecgw_login_attempts AS a (scope, name, ip, failures, first_at, locked_until, updated) "
    "VALUES (:scope, :name, :ip, 1, :now, :first_lock, :now) "
    "ON CONFLICT (scope, name, ip) DO UPDATE SET "
    f"failures = CASE WHEN {_FRESH} THEN 1 ELSE a.failures + 1 END, "
    f"first_at = CASE WHEN {_FRESH} THEN :now ELSE a.first_at END, "
    "locked_until = CASE WHEN a.locked_until > :now THEN a.locked_until "
    f"WHEN (CASE WHEN {_FRESH} THEN 1 ELSE a.failures + 1 END) >= :limit THEN :until ELSE 0 END, "
    "updated = :now "
    "RETURNING failures, locked_until"
)
_LIVE = "(locked_until > :now OR (locked_until = 0 AND first_at > :ws))"


@dataclass(frozen=True)
class Key:
    """One counter: ``scope`` and the name and/or address it counts (the other one ``""``)."""

    scope: str
    name: str
    ip: str


@dataclass(frozen=True)
class Count:
    """A live counter: its failures, until when it is locked (0: not), and whether the failure
    just counted is the one that locked it."""

    failures: int
    locked_until: float = 0.0
    newly_locked: bool = False

    def locked(self, now: float) -> bool:
        return self.locked_until > now


def _live(failures: int, first_at: float, locked_until: float, now: float, window: float) -> bool:
    return locked_until > now or (locked_until == 0 and first_at > now - window)


class SqlAttempts(Tables):
    """The counters in ``pecgw_login_attempts`` over a DB-API connection (sqlite3 or psycopg).

    A connection that fails (the server restarted) is replaced at the next call."""

    def __init__(self, connect, *, placeholder: str, schema: str | None = None) -> None:
        super().__init__(connect, placeholder=placeholder, schema=schema, ddl=_SCHEMA)

    def fail(self, keys: list[tuple[Key, int]], now: float, window: float, duration: float) -> list[Count]:
        """Count one failure on each ``(key, limit)``, in one transaction; the counts after it."""
        statements = []
        for key, limit in keys:
            limit = limit if limit > 0 else _NEVER
            until = now + duration
            statements.append((_FAIL, {"scope": key.scope, "name": key.name, "ip": key.ip, "now": now,
                                       "ws": now - window, "limit": limit, "until": until,
                                       "first_lock": until if limit <= 1 else 0.0}))
        results = self.transaction(statements)
        counts = []
        for (key, limit), rows in zip(keys, results):
            failures, locked_until = int(rows[0][0]), float(rows[0][1])
            # A count only ever grows by one, from one: exactly one failure reaches the limit.
            counts.append(Count(failures, locked_until, newly_locked=failures == limit))
        return counts

    def counts(self, keys: list[Key], now: float, window: float) -> dict[Key, Count]:
        """The live counters among ``keys`` (a missing one: no failure)."""
        if not keys:
            return {}
        where, params = [], {"now": now, "ws": now - window}
        for i, key in enumerate(keys):
            where.append(f"(scope = :s{i} AND name = :n{i} AND ip = :i{i})")
            params.update({f"s{i}": key.scope, f"n{i}": key.name, f"i{i}": key.ip})
        text = ("SELECT scope, name, ip, failures, locked_until FROM {p}pecgw_login_attempts "
                f"WHERE ({' OR '.join(where)}) AND {_LIVE}")
        rows = self.transaction([(text, params)])[0]
        return {Key(s, n, i): Count(int(f), float(lu)) for s, n, i, f, lu in rows}

    def clear(self, key: Key, now: float) -> None:
        """Forget a counter, unless it is locked (a lockout always runs its course)."""
        self.transaction([("DELETE FROM {p}pecgw_login_attempts WHERE scope = :scope AND name = :name "
                            "AND ip = :ip AND locked_until <= :now",
                            {"scope": key.scope, "name": key.name, "ip": key.ip, "now": now})])

    def prune(self, now: float, window: float) -> int:
        """Delete the dead counters; how many."""
        text = f"DELETE FROM {{p}}pecgw_login_attempts WHERE NOT {_LIVE}"
        return len(self.transaction([(text + " RETURNING 1", {"now": now, "ws": now - window})])[0])

class MemoryAttempts:
    """The same counters in this process's memory.  Thread-safe."""

    def __init__(self) -> None:
        self._rows: dict[Key, tuple[int, float, float]] = {}  # failures, first_at, locked_until
        self._lock = threading.Lock()

    def fail(self, keys: list[tuple[Key, int]], now: float, window: float, duration: float) -> list[Count]:
        counts = []
        with self._lock:
            for key, limit in keys:
                limit = limit if limit > 0 else _NEVER
                row = self._rows.get(key)
                if row is None or (row[2] <= now and (row[2] > 0 or row[1] <= now - window)):
                    failures, first_at, locked = 1, now, 0.0
                else:
                    failures, first_at, locked = row[0] + 1, row[1], row[2]
                newly = False
                if locked <= now:
                    locked = 0.0
                    if failures >= limit:
                        locked, newly = now + duration, True
                self._rows[key] = (failures, first_at, locked)
                counts.append(Count(failures, locked, newly_locked=newly))
        return counts

    def counts(self, keys: list[Key], now: float, window: float) -> dict[Key, Count]:
        with self._lock:
            rows = {key: self._rows.get(key) for key in keys}
        return {key: Count(row[0], row[2]) for key, row in rows.items()
                if row is not None and _live(row[0], row[1], row[2], now, window)}

    def clear(self, key: Key, now: float) -> None:
        with self._lock:
            row = self._rows.get(key)
            if row is not None and row[2] <= now:
                del self._rows[key]

    def prune(self, now: float, window: float) -> int:
        with self._lock:
            dead = [key for key, row in self._rows.items() if not _live(*row, now, window)]
            for key in dead:
                del self._rows[key]
        return len(dead)

    def __len__(self) -> int:
        return len(self._rows)

    def close(self) -> None:
        pass


def open_attempt_store(config, vault) -> SqlAttempts:
    """The counters next to the configured audit store (its own connection)."""
    from gateway.beside_audit import connect_beside_audit

    where = connect_beside_audit(config, vault)
    return SqlAttempts(where.connect, placeholder=where.placeholder, schema=where.schema)
