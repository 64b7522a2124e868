"""The audit stores, each test against SQLite and PostgreSQL: rows in, rows out, tamper evidence."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading

import psycopg
import pytest

from gateway.audit.chain import ANCHOR, GENESIS
from gateway.audit.sqlite_store import SqliteStore
from gateway.audit.store import StoreMissing, chained
from tests.audit.conftest import KEY, T0, event, swap

PEC = dict(uidvalidity=1700000000, uid=4294967295, message_id="<opec210312.20260303@pec.example.it>",
           subject="POSTA CERTIFICATA: Udienza del 3 marzo — Tribunale", sender='"Per conto di: tribunale@pec.giustizia.it" <posta-certificata@pec.example.it>',
           date="Tue, 3 Mar 2026 10:00:00 +0100", pec_kind="posta-certificata",
           pec_id="opec210312.20260303100000.12345.01.1.1@pec.example.it",
           pec_ref="<abc@tribunale.example.it>")


def seqs(rows):
    return [r["seq"] for r in rows]


def kinds(report):
    return [(p.kind, p.seq, p.last) for p in report.problems]


def test_append_returns_the_last_seq_and_query_filters_by_each_field(store):
    assert store.append([]) == 0
    assert store.append([
        event(1, action="login", message=None),
        event(2, message={"uid": 7, "message_id": "<m7@x>", "pec_id": "id7"}),
        event(3, person="bob", offices=("ragioneria", "protocollo"), folder="Sent"),
        event(4, person="bob", offices=("ragioneria",), mailbox="altra@pec.example.it"),
    ]) == 4
    assert store.append([event(5, action="flags", message={"uid": 8, "message_id": "<m8@x>", "pec_id": "id8"})]) == 5
    assert store.append([]) == 5

    assert seqs(store.query()) == [1, 2, 3, 4, 5]
    assert seqs(store.query(person="bob")) == [3, 4]
    assert seqs(store.query(office="protocollo")) == [1, 2, 3, 5]
    assert seqs(store.query(office="ragioneria", person="bob")) == [3, 4]
    assert seqs(store.query(mailbox="altra@pec.example.it")) == [4]
    assert seqs(store.query(mailbox="ufficio@pec.example.it", folder="Sent")) == [3]
    assert seqs(store.query(action="login")) == [1]
    assert seqs(store.query(message_id="<m8@x>")) == [5]
    assert seqs(store.query(pec_id="id7")) == [2]
    assert seqs(store.query(since=T0 + dt.timedelta(minutes=2), until=T0 + dt.timedelta(minutes=4))) == [2, 3]
    # a bound in another time zone means the same instant
    rome = dt.timezone(dt.timedelta(hours=1))
    assert seqs(store.query(since=(T0 + dt.timedelta(minutes=4)).astimezone(rome))) == [4, 5]
    assert seqs(store.query(person="alice", limit=2)) == [1, 2]
    assert store.query(person="nobody") == []
    with pytest.raises(TypeError):
        store.query(subject="x")


def test_message_identity_and_every_column_round_trip(store):
    when = dt.datetime(2026, 3, 3, 10, 15, 30, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    store.append([event(0, when=when, session_id="sess-1", action="fetch", person="carla",
                        offices=("protocollo", "segreteria"), folder="INBOX/Tribunale",
                        client_ip="2001:db8::1", reason="body", detail={"body": True, "octets": 4096,
                                                                         "flags": ["\\Seen"]},
                        message=PEC)])
    [row] = store.query(message_id=PEC["message_id"])
    assert row == {
        "seq": 1, "when": "2026-03-03T09:15:30.123456+00:00", "session_id": "sess-1",
        "protocol": "imap", "action": "fetch", "decision": "allow", "person": "carla",
        "offices": ["protocollo", "segreteria"], "mailbox": "ufficio@pec.example.it",
        "folder": "INBOX/Tribunale", "client_ip": "2001:db8::1", "client_name": "Thunderbird 128.3",
        "reason": "body", "detail": {"body": True, "octets": 4096, "flags": ["\\Seen"]},
        "msg_uidvalidity": PEC["uidvalidity"], "msg_uid": PEC["uid"], "message_id": PEC["message_id"],
        "subject": PEC["subject"], "sender": PEC["sender"], "msg_date": PEC["date"],
        "pec_kind": PEC["pec_kind"], "pec_id": PEC["pec_id"], "pec_ref": PEC["pec_ref"],
    }
    assert store.query(pec_id=PEC["pec_id"]) == [row]
    assert store.verify().ok


def test_text_no_store_can_keep_is_replaced_before_hashing(store):
    """A NUL (PostgreSQL text refuses it) or a lone surrogate (UTF-8 refuses it) in a header
    must neither fail the batch nor break the chain."""
    store.append([event(1, message={"subject": "a\x00b", "sender": "caf\udce9 <x@y>"})])
    [row] = store.query()
    assert (row["subject"], row["sender"]) == ("a\ufffdb", "caf? <x@y>")
    assert store.verify().ok


def test_verify_accepts_an_intact_chain_written_in_several_batches(store, backend):
    for batch in range(5):
        store.append([event(batch * 10 + n) for n in range(10)])
    report = store.verify()
    assert report.ok, str(report)
    assert (report.rows, report.first_seq, report.last_seq) == (50, 1, 50)
    # a second store on the same database continues the same chain
    assert backend.open().append([event(99)]) == 51
    assert store.verify().ok


def test_verify_names_an_edited_a_deleted_and_two_swapped_rows(store, backend):
    store.append([event(n) for n in range(1, 13)])
    backend.sql("UPDATE audit SET subject = 'edited' WHERE seq = 3",
                "DELETE FROM audit WHERE seq = 6",
                "UPDATE audit SET seq = -1 WHERE seq = 9",
                "UPDATE audit SET seq = 9 WHERE seq = 10",
                "UPDATE audit SET seq = 10 WHERE seq = -1")
    report = store.verify()
    assert kinds(report) == [("altered", 3, None), ("missing", 6, 6), ("moved", 9, None), ("moved", 10, None)]
    assert [p.note for p in report.problems if p.kind == "moved"] == [
        "this row was written as seq 10", "this row was written as seq 9"]
    assert report.rows == 11


def test_verify_names_rows_deleted_at_the_start_and_an_edited_hash(store, backend):
    store.append([event(n) for n in range(1, 8)])
    backend.sql("DELETE FROM audit WHERE seq IN (1, 2)",
                "UPDATE audit SET hash = prev_hash WHERE seq = 5")
    assert kinds(store.verify()) == [("missing", 1, 2), ("altered", 5, None)]


def test_a_row_replaced_by_a_validly_signed_row_of_another_chain_breaks_the_link(store, backend):
    """A row taken from another log kept with the same key has a valid HMAC at its seq, but it
    does not link to its neighbours."""
    store.append([event(100 + n) for n in range(1, 6)])  # another chain, seq 1..5
    backend.sql("CREATE TABLE foreign_rows AS SELECT * FROM audit WHERE seq = 3", "DELETE FROM audit")
    store.append([event(n) for n in range(1, 6)])  # this chain, seq 1..5
    backend.sql("DELETE FROM audit WHERE seq = 3", "INSERT INTO audit SELECT * FROM foreign_rows")
    assert kinds(store.verify()) == [("link", 3, None), ("link", 4, None)]


def test_prune_keeps_the_chain_verifiable_behind_an_anchor(store, backend):
    store.append([event(n) for n in range(10)])  # seq 1..10 at T0+0..9 min
    assert store.prune(T0 + dt.timedelta(minutes=4)) == 4
    assert store.verify().ok
    assert seqs(store.query()) == [5, 6, 7, 8, 9, 10, 11]
    [anchor] = store.query(action=ANCHOR)
    assert anchor["seq"] == 11 and anchor["detail"]["pruned_through"] == 4
    assert seqs(store.query(person="alice", since=T0)) == [5, 6, 7, 8, 9, 10]

    store.append([event(20)])
    assert store.prune(T0 + dt.timedelta(minutes=4)) == 0  # nothing older left
    assert store.prune(T0 + dt.timedelta(minutes=8)) == 4  # seq 5..8
    report = store.verify()
    assert report.ok, str(report)
    assert report.first_seq == 9

    backend.sql("DELETE FROM audit WHERE seq = 9")  # deleting past the anchor is still caught
    assert kinds(store.verify()) == [("missing", 9, 9)]


def test_prune_removes_a_prefix_only(store):
    """Prune stops at the first row written at or after ``before``: an older row after it (from
    an instance whose clock is behind) stays, so the chain never gets a hole."""
    store.append([event(0), event(1), event(-5), event(6), event(2)])
    assert store.prune(T0 + dt.timedelta(minutes=5)) == 3  # seq 1..3; seq 5 (T0+2) comes after seq 4
    assert seqs(store.query()) == [4, 5, 6]
    assert store.verify().ok


def test_a_forged_anchor_does_not_cover_deleted_rows(store, backend):
    """Someone with database access deletes the first rows and dresses a row up as the anchor
    that would vouch for them (the hash of row 2 is readable, and computed here the same way):
    without the key its HMAC is wrong, so the deletion shows."""
    events = [event(n) for n in range(6)]
    store.append(events)
    hash2 = chained(KEY, 0, GENESIS, events)[1][2].hex()
    backend.sql("DELETE FROM audit WHERE seq <= 2",
                "UPDATE audit SET action = 'anchor', detail = '{\"pruned_through\":2,\"pruned_hash\":\"%s\"}' "
                "WHERE seq = 6" % hash2)
    assert kinds(store.verify()) == [("missing", 1, 2), ("altered", 6, None)]
    [forged] = store.query(action="anchor")
    assert forged["detail"] == {"pruned_through": 2, "pruned_hash": hash2}


def test_concurrent_appenders_produce_one_valid_chain(backend):
    stores = [backend.open() for _ in range(3)]
    errors = []

    def appender(i, store):
        try:
            for batch in range(30):
                store.append([event(n, session_id=f"t{i}-{batch}-{n}") for n in range(5)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = stores[0].verify()
    assert report.ok, str(report)
    rows = stores[0].query()
    assert seqs(rows) == list(range(1, 451))
    for i in range(3):  # each appender's events in its own order, batches not interleaved
        mine = [r["session_id"] for r in rows if r["session_id"].startswith(f"t{i}-")]
        assert mine == [f"t{i}-{b}-{n}" for b in range(30) for n in range(5)]
    for start in range(0, 450, 5):
        assert len({r["session_id"].split("-")[0] for r in rows[start:start + 5]}) == 1


def test_a_wrong_key_fails_every_row(store, backend):
    store.append([event(n) for n in range(4)])
    report = backend.open(key=b"not the key").verify()
    assert kinds(report) == [("altered", n, None) for n in range(1, 5)]
    assert "right key" in report.hint


def test_an_empty_store_verifies(store):
    report = store.verify()
    assert report.ok and report.rows == 0
    assert store.prune(T0) == 0


# -- moves at the end of the chain, and rows cut off it ---------------------------------------------
def moved(report):
    return {p.seq: p.note for p in report.problems if p.kind == "moved"}


def test_verify_names_an_edit_a_deletion_a_swap_in_the_middle_and_a_swap_of_the_last_two(store, backend):
    """The last row has no successor, and after a swap with the row before it its predecessor
    moved too: the swap must still be named as one, like a swap anywhere else."""
    store.append([event(n) for n in range(1, 13)])
    backend.sql("UPDATE audit SET subject = 'edited' WHERE seq = 3", "DELETE FROM audit WHERE seq = 6",
                *swap(8, 9), *swap(11, 12))
    report = store.verify()
    assert kinds(report) == [("altered", 3, None), ("missing", 6, 6), ("moved", 8, None), ("moved", 9, None),
                             ("moved", 11, None), ("moved", 12, None)]
    assert moved(report) == {8: "this row was written as seq 9", 9: "this row was written as seq 8",
                             11: "this row was written as seq 12", 12: "this row was written as seq 11"}


@pytest.mark.parametrize("statements,written", [
    (swap(6, 7), {6: 7, 7: 6}),  # the last two
    (swap(2, 7), {2: 7, 7: 2}),  # the last row with one in the middle
    (swap(1, 7), {1: 7, 7: 1}),  # the last row with the first
    (swap(1, 2), {1: 2, 2: 1}),  # the first two
    # the last three rotated: the rows written as 5, 6, 7 now sit at 6, 7, 5
    (["UPDATE audit SET seq = -1 WHERE seq = 7", "UPDATE audit SET seq = 7 WHERE seq = 6",
      "UPDATE audit SET seq = 6 WHERE seq = 5", "UPDATE audit SET seq = 5 WHERE seq = -1"], {5: 7, 6: 5, 7: 6}),
    # the last four reversed
    ([*swap(4, 7), *swap(5, 6)], {4: 7, 5: 6, 6: 5, 7: 4}),
])
def test_every_move_involving_the_last_row_is_named(store, backend, statements, written):
    store.append([event(n) for n in range(1, 8)])
    backend.sql(*statements)
    report = store.verify()
    assert moved(report) == {seq: f"this row was written as seq {w}" for seq, w in written.items()}
    assert [p.kind for p in report.problems] == ["moved"] * len(written)


def test_a_two_row_trail_swapped_is_two_moves(store, backend):
    store.append([event(1), event(2)])
    backend.sql(*swap(1, 2))
    assert moved(store.verify()) == {1: "this row was written as seq 2", 2: "this row was written as seq 1"}


def test_rows_cut_off_the_end_show_only_against_the_head_kept_earlier(store, backend):
    """Nothing in the chain records its length: once the last rows are gone the row before them
    is an intact end.  The head an earlier verify reported shows the cut."""
    store.append([event(n) for n in range(1, 8)])
    head = store.verify()
    assert head.ok and head.checkpoint == ""
    expect = (head.last_seq, head.last_hash)
    assert store.verify(expect).checkpoint == "checkpoint seq 7 matches: no row up to it was cut off the end"

    backend.sql("DELETE FROM audit WHERE seq >= 6")
    assert store.verify().ok  # undetectable without the head
    report = store.verify(expect)
    assert kinds(report) == [("missing", 6, 7)]
    assert report.problems[0].note == "rows cut off the end: the checkpoint names seq 7"

    # the gateway goes on writing after the cut: seq 7 is back, validly signed, but another row
    store.append([event(20), event(21), event(22)])
    report = store.verify(expect)
    assert kinds(report) == [("checkpoint", 7, None)]
    assert "its hash is not the checkpoint's" in report.problems[0].note

    # an earlier head that is still there is fine
    assert store.verify((5, hash_of([event(n) for n in range(1, 8)], 5))).ok


def hash_of(events, seq):
    """The hash row ``seq`` gets when ``events`` are the first rows (what verify reports as the
    head while it is the last row)."""
    return chained(KEY, 0, GENESIS, events)[seq - 1][2]


def test_a_head_kept_before_a_prune(store):
    events = [event(n) for n in range(10)]
    store.append(events)  # seq 1..10
    head4, head3 = (4, hash_of(events, 4)), (3, hash_of(events, 3))
    assert store.prune(T0 + dt.timedelta(minutes=4)) == 4  # seq 1..4, anchor for seq 4
    report = store.verify(head4)
    assert report.ok and report.checkpoint.startswith("checkpoint seq 4 matches the anchor that pruned it")
    report = store.verify(head3)
    assert report.ok and report.checkpoint.startswith("checkpoint seq 3 was pruned")
    report = store.verify((4, bytes(32)))
    assert kinds(report) == [("checkpoint", 4, None)]


def test_an_emptied_trail_fails_against_a_head(store, backend):
    store.append([event(n) for n in range(1, 4)])
    backend.sql("DELETE FROM audit")
    assert store.verify().ok
    report = store.verify((3, bytes(32)))
    assert kinds(report) == [("missing", 1, 3)]


# -- read-only ---------------------------------------------------------------------------------------
def test_a_read_only_store_reads_and_verifies_but_never_writes(store, backend):
    store.append([event(n) for n in range(1, 6)])
    reader = backend.open(read_only=True)
    assert seqs(reader.query(person="alice")) == [1, 2, 3, 4, 5]
    report = reader.verify()
    assert report.ok and report.rows == 5
    with pytest.raises(PermissionError, match="read-only"):
        reader.append([event(9)])
    with pytest.raises(PermissionError, match="read-only"):
        reader.prune(T0 + dt.timedelta(days=1))
    assert seqs(store.query()) == [1, 2, 3, 4, 5]
    store.append([event(6)])  # the writer goes on; the reader sees it
    assert seqs(reader.query())[-1] == 6


def test_a_read_only_open_of_a_missing_store_creates_nothing(backend):
    with pytest.raises(StoreMissing) as err:
        backend.open(read_only=True)
    if backend.name == "sqlite":
        assert str(err.value) == f"{backend.path} does not exist"
        assert not backend.path.exists()
    else:
        assert str(err.value) == f'there is no table "audit" and no schema "{backend.schema}"'
        backend.sql(f'CREATE SCHEMA "{backend.schema}"')
        with pytest.raises(StoreMissing, match=f'no table "audit" in schema "{backend.schema}"'):
            backend.open(read_only=True)
        with psycopg.connect(backend.conninfo) as db:
            assert db.execute("SELECT to_regclass(%s)", (f'"{backend.schema}".audit',)).fetchone() == (None,)


def test_a_read_only_open_of_a_file_without_the_table(tmp_path):
    path = tmp_path / "other.db"
    sqlite3.connect(path).close()
    with pytest.raises(StoreMissing, match="has no audit table"):
        SqliteStore(path, KEY, read_only=True)
