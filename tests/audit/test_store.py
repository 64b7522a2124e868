"""The audit stores, each test against SQLite and PostgreSQL: rows in, rows out, tamper evidence."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from gateway.audit.chain import ANCHOR, GENESIS
from gateway.audit.store import chained
from tests.audit.conftest import KEY, T0, event

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
