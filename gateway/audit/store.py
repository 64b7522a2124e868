"""What an audit store offers, and the pieces the SQLite and PostgreSQL stores share.

A store keeps :mod:`~gateway.audit.chain` rows in one table ``audit``.  Its API is blocking on
purpose: a writer task calls it through :func:`asyncio.to_thread`, one call at a time, so the
relay never waits for the database.  Every store behaves the same (the test suite runs against
each): ``append`` one transaction per batch, ``verify`` reports every problem, ``prune`` keeps
the chain verifiable through an anchor row, ``query`` filters for auditors.

A store opened with ``read_only=True`` is for auditors, who may hold no more than read access
(a 0444 SQLite file in a folder they cannot write, a PostgreSQL role with only SELECT): it
creates nothing, never writes, and raises :class:`StoreMissing` when there is no trail to read
instead of starting an empty one; ``append`` and ``prune`` raise :class:`PermissionError`.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Callable, Protocol

from gateway.audit.chain import COLUMNS, iso_utc, link, row_from_event
from gateway.audit.events import AuditEvent
from gateway.audit.verify import VerifyReport

__all__ = ["AuditStore", "FILTERS", "INDEXES", "StoreMissing", "chained", "decode", "q", "read_only_error",
           "when_text", "where"]

#: ``query`` keyword filters.  ``since`` is inclusive, ``until`` exclusive; ``office`` matches
#: rows whose ``offices`` list contains it.
FILTERS = ("person", "office", "mailbox", "folder", "action", "since", "until", "message_id",
           "pec_id", "pec_ref", "limit")

#: Index name -> columns; the same in every store.
INDEXES = {
    "audit_person_when": ("person", "when"),
    "audit_mailbox_folder_when": ("mailbox", "folder", "when"),
    "audit_message_id": ("message_id",),
    "audit_pec_id": ("pec_id",),
    "audit_pec_ref": ("pec_ref",),
    "audit_action_when": ("action", "when"),
    "audit_when": ("when",),
}


class StoreMissing(LookupError):
    """A read-only open found no audit trail (no file, no table) where the configuration says."""


def read_only_error(what: str) -> PermissionError:
    """What ``append`` and ``prune`` raise on a store opened read-only."""
    return PermissionError(f"the audit store was opened read-only: cannot {what}")


class AuditStore(Protocol):
    def append(self, events: list[AuditEvent]) -> int:
        """Chain and insert ``events`` in one transaction; returns the last ``seq`` (the current
        last ``seq`` when ``events`` is empty, 0 for an empty store)."""

    def verify(self, expect_head: tuple[int, bytes] | None = None) -> VerifyReport:
        """Walk the whole chain in ``seq`` order, checking it still reaches ``expect_head`` if
        given; see :mod:`gateway.audit.verify`."""

    def prune(self, before: _dt.datetime) -> int:
        """Delete the oldest rows written before ``before``, behind an anchor; returns how many."""

    def query(self, **filters: Any) -> list[dict[str, Any]]:
        """Rows matching all of :data:`FILTERS` given, ordered by ``seq``."""

    def close(self) -> None: ...


def chained(key: bytes, last_seq: int, last_hash: bytes,
            events: list[AuditEvent]) -> list[tuple[int, bytes, bytes, dict[str, Any]]]:
    """``(seq, prev_hash, hash, row)`` for ``events`` appended after ``(last_seq, last_hash)``."""
    out = []
    for seq, event in enumerate(events, last_seq + 1):
        row = row_from_event(event)
        hash_ = link(key, last_hash, seq, row)
        out.append((seq, last_hash, hash_, row))
        last_hash = hash_
    return out


def q(column: str) -> str:
    """A quoted column name (``when`` is an SQL keyword)."""
    return f'"{column}"'


def where(filters: dict[str, Any], *, ph: str, office: str,
          when_param: Callable[[_dt.datetime], Any]) -> tuple[str, list[Any], int | None]:
    """``(WHERE clause or "", parameters, limit)`` for ``query``'s filters.

    ``ph`` is the driver's placeholder, ``office`` the store's SQL test "offices contains {ph}",
    ``when_param`` turns a datetime into what the store compares ``when`` with.
    """
    unknown = set(filters) - set(FILTERS)
    if unknown:
        raise TypeError(f"unknown audit query filter(s): {', '.join(sorted(unknown))}")
    clauses, params = [], []
    for name in ("person", "mailbox", "folder", "action", "message_id", "pec_id", "pec_ref"):
        if filters.get(name) is not None:
            clauses.append(f"{q(name)} = {ph}")
            params.append(filters[name])
    if filters.get("office") is not None:
        clauses.append(office)
        params.append(filters["office"])
    if filters.get("since") is not None:
        clauses.append(f'"when" >= {ph}')
        params.append(when_param(filters["since"]))
    if filters.get("until") is not None:
        clauses.append(f'"when" < {ph}')
        params.append(when_param(filters["until"]))
    limit = filters.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError("limit must be a non-negative int")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params, limit


def decode(seq: int, row: dict[str, Any]) -> dict[str, Any]:
    """A query result: ``seq`` and the columns, ``offices`` as a list and ``detail`` as a dict."""
    out = {"seq": seq, **{c: row[c] for c in COLUMNS}}
    out["offices"] = json.loads(row["offices"]) if row["offices"] else []
    out["detail"] = json.loads(row["detail"]) if row["detail"] else {}
    return out


def when_text(when: _dt.datetime) -> str:
    """A ``since``/``until`` bound for a store that keeps ``when`` as ISO text."""
    if not isinstance(when, _dt.datetime):
        raise TypeError("since/until must be datetimes")
    return iso_utc(when)
