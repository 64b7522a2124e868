"""The chain's pure parts: rows, canonical bytes, the HMAC link, and the SQLite file's mode."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.audit.chain import COLUMNS, GENESIS, canonical, link, row_from_event
from gateway.audit.sqlite_store import SqliteStore
from tests.audit.conftest import KEY, event


def test_row_has_every_column_and_utc_microsecond_time():
    when = dt.datetime(2026, 3, 3, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    row = row_from_event(event(0, when=when, offices=("b", "a"), detail={"z": 1, "a": "è"}))
    assert tuple(row) == COLUMNS
    assert row["when"] == "2026-03-03T09:00:00.000000+00:00"
    assert row["offices"] == '["b","a"]'
    assert row["detail"] == '{"a":"è","z":1}'
    assert row["msg_uid"] is None


def test_canonical_ignores_chain_columns_and_key_order():
    row = row_from_event(event(1))
    shuffled = dict(reversed(list(row.items())), seq=5, prev_hash=b"x", hash=b"y")
    assert canonical(shuffled) == canonical(row)
    assert canonical({**row, "subject": "changed"}) != canonical(row)


def test_link_covers_key_previous_hash_seq_and_content():
    row = row_from_event(event(1))
    base = link(KEY, GENESIS, 1, row)
    assert len(base) == 32
    assert link(KEY, GENESIS, 1, dict(row)) == base
    assert base not in {link(b"other", GENESIS, 1, row), link(KEY, b"\x01" * 32, 1, row),
                        link(KEY, GENESIS, 2, row), link(KEY, GENESIS, 1, {**row, "person": "eve"})}
    with pytest.raises(ValueError):
        link(b"", GENESIS, 1, row)


def test_sqlite_files_are_private(tmp_path):
    store = SqliteStore(tmp_path / "a" / "audit.db", KEY)
    store.append([event(1)])
    for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
        assert oct((tmp_path / "a" / name).stat().st_mode & 0o777) == "0o600", name
    store.close()


def test_canonical_bytes_are_those_of_the_standard_json_encoder():
    """The encoder is built once for speed; its bytes must stay those every chain was hashed
    with (sorted keys, compact separators, UTF-8 as is, control characters escaped)."""
    import json

    reference = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    row = row_from_event(event(2, offices=("Uff. è", "a\tb"), detail={"z": [1, 2.5, None, True],
                                                                     "a": 'quote" back\\ nul\x00 nl\n ✓'}))
    row["subject"] = "POSTA CERTIFICATA: \u2013 \U0001F4E7 \x1b[31m"
    assert canonical(row) == reference.encode({c: row[c] for c in COLUMNS}).encode("utf-8")
    assert row["offices"] == reference.encode(["Uff. è", "a\tb"])
    assert row["detail"] == reference.encode({"z": [1, 2.5, None, True], "a": 'quote" back\\ nul\x00 nl\n ✓'})
