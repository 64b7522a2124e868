"""Audit rows and the hash chain that makes tampering with them detectable (pure: no I/O).

An :class:`~gateway.audit.events.AuditEvent` is flattened by :func:`row_from_event` into the
columns every store keeps (:data:`COLUMNS`).  Each stored row then carries two more values:
``prev_hash``, the ``hash`` of the row before it (:data:`GENESIS` for the first row ever), and
its own ``hash`` = :func:`link` = HMAC-SHA256(key, prev_hash || seq || canonical(row)).

Why a chain, and why an HMAC:

* each row's HMAC covers the previous row's hash and its own ``seq``, so editing a row changes
  nothing but makes its HMAC wrong; deleting a row leaves a gap in ``seq`` and a ``prev_hash``
  that names a row no longer there; moving rows (swapping their ``seq``) makes their HMACs wrong
  at their new place and breaks the links around them.  A tamperer would have to recompute
  every later row;
* they cannot, because the HMAC key lives in the vault, not in the database: someone with only
  database access (a DBA, a stolen backup, SQL injection) can read and edit rows but cannot
  produce a valid ``hash`` for them.

What a chain alone cannot show: rows cut off the *end* of the log (the last row is then simply
an older one).  :class:`~gateway.audit.verify.VerifyReport` gives the last ``seq`` and hash so a
caller can compare them with a checkpoint kept elsewhere.

Retention (``prune``) deletes the oldest rows; to keep the rest verifiable it first appends an
*anchor* row (:data:`ANCHOR`, built by :func:`anchor_event`), chained and HMAC'd like any row,
whose ``detail`` names the last pruned ``seq`` and its hash: the row after that one, now the
first row, still links to a hash the (unforgeable) anchor vouches for.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
from typing import Any

from gateway.audit.events import AuditEvent, Decision, utc_now

__all__ = ["ANCHOR", "COLUMNS", "GENESIS", "INT_COLUMNS", "anchor_event", "canonical", "iso_utc",
           "link", "row_from_event"]

#: ``prev_hash`` of the first row ever written.
GENESIS = bytes(32)

#: The action of a retention anchor row.
ANCHOR = "anchor"

#: The content columns, in table order; ``seq``, ``prev_hash`` and ``hash`` come on top.
COLUMNS = (
    "when", "session_id", "protocol", "action", "decision", "person", "offices", "mailbox",
    "folder", "client_ip", "client_name", "reason", "detail",
    "msg_uidvalidity", "msg_uid", "message_id", "subject", "sender", "msg_date", "pec_kind",
    "pec_id", "pec_ref",
)
INT_COLUMNS = frozenset({"msg_uidvalidity", "msg_uid"})
_COLUMN_SET = frozenset(COLUMNS)

_MESSAGE_FIELDS = {  # column -> MessageRef attribute
    "msg_uidvalidity": "uidvalidity", "msg_uid": "uid", "message_id": "message_id",
    "subject": "subject", "sender": "sender", "msg_date": "date", "pec_kind": "pec_kind",
    "pec_id": "pec_id", "pec_ref": "pec_ref",
}


def iso_utc(when: _dt.datetime) -> str:
    """``when`` as fixed-width ISO-8601 UTC with microseconds: sorts as text, compares as time."""
    if when.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")


_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _one_shot_encoder():
    """The C encoder behind ``_ENCODER``, built once.  ``JSONEncoder.encode`` builds it again on
    every call, which costs more than encoding a row; the output is the same (a test compares)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return None
    try:
        encoder = make(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", True, False, True)
        probe = {"b": ["é\x00\n", 1, 2.5, None, True], "a": {"z": "\u2013"}}
        same = "".join(encoder(probe, 0)) == _ENCODER.encode(probe)
    except Exception:  # noqa: BLE001 - another Python's private signature: use the public path
        return None
    return encoder if same else None


_C_ENCODER = _one_shot_encoder()


def _json(value: Any) -> str:
    if _C_ENCODER is None or not isinstance(value, (dict, list)):
        return _ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


def _text(value: str | None) -> str | None:
    """A string every store keeps byte for byte: PostgreSQL text refuses NUL and UTF-8 refuses
    lone surrogates (headers decoded with ``surrogateescape``), so both are replaced here, before
    the row is hashed, rather than failing the whole batch at insert time."""
    if value is None:
        return None
    value = str(value)
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if value.isascii():  # nearly every value: no surrogate possible, skip the trial encoding
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def row_from_event(event: AuditEvent) -> dict[str, Any]:
    """The columns of one event: strings, ints or None, exactly what the stores keep."""
    ref = event.message
    row: dict[str, Any] = {
        "when": iso_utc(event.when),
        "session_id": _text(event.session_id),
        "protocol": _text(event.protocol),
        "action": _text(event.action),
        "decision": _text(event.decision),
        "person": _text(event.person),
        "offices": _text(_json(list(event.offices))),
        "mailbox": _text(event.mailbox),
        "folder": _text(event.folder),
        "client_ip": _text(event.client_ip),
        "client_name": _text(event.client_name),
        "reason": _text(event.reason),
        "detail": _text(_json(event.detail)),
    }
    for column, attr in _MESSAGE_FIELDS.items():
        value = getattr(ref, attr) if ref is not None else None
        row[column] = (None if value is None else int(value)) if column in INT_COLUMNS else _text(value)
    return row


def canonical(row: dict[str, Any]) -> bytes:
    """Deterministic bytes of a row's content: the :data:`COLUMNS` only (never ``seq``,
    ``prev_hash``, ``hash``), as compact JSON with sorted keys.  A column missing from ``row``
    counts as None."""
    if row.keys() == _COLUMN_SET:  # a row from row_from_event or a store: the keys sort alike
        return _json(row).encode("utf-8")
    return _json({column: row.get(column) for column in COLUMNS}).encode("utf-8")


def link(key: bytes, prev_hash: bytes, seq: int, row: dict[str, Any]) -> bytes:
    """The ``hash`` of row ``seq``: HMAC-SHA256(key, prev_hash || seq as 8 octets big-endian ||
    canonical(row))."""
    if not key:
        raise ValueError("the audit chain needs a non-empty HMAC key")
    mac = hmac.new(key, prev_hash, hashlib.sha256)
    mac.update(seq.to_bytes(8, "big"))
    mac.update(canonical(row))
    return mac.digest()


def anchor_event(pruned_through: int, pruned_hash: bytes, before: _dt.datetime) -> AuditEvent:
    """The anchor ``prune`` appends before deleting rows ``<= pruned_through``."""
    return AuditEvent(when=utc_now(), session_id="retention", protocol="admin", action=ANCHOR,
                      decision=Decision.ALLOW,
                      detail={"pruned_through": pruned_through, "pruned_hash": pruned_hash.hex(),
                              "before": iso_utc(before)})
