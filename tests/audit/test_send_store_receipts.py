"""The receipt side of the send records (gateway/sends/store.py) on SQLite and the real PostgreSQL:
linked receipts kept once, the watcher's marks, the normalised Message-ID match, read-only opening."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from gateway.audit.sqlite_store import connect_read_only
from gateway.sends.store import SendStore


def open_sends(backend, *, read_only: bool = False) -> SendStore:
    if backend.name == "sqlite":
        if read_only:
            return SendStore(lambda: connect_read_only(backend.path), placeholder="?", read_only=True)
        return SendStore(lambda: sqlite3.connect(str(backend.path), check_same_thread=False), placeholder="?")

    def connect():
        db = psycopg.connect(backend.conninfo)
        if read_only:
            db.execute("SET default_transaction_read_only = on")
            db.commit()
        return db

    return SendStore(connect, placeholder="%s", schema=backend.schema, read_only=read_only)


@pytest.fixture
def sends(backend):
    backend.open()  # the audit store first: it creates the file or the schema
    store = open_sends(backend)
    yield store
    store.close()


def record(store, message_id="<M1@Studio.Example.IT>"):
    return store.record(person="alice", offices=("legale",), mailbox="protocollo", session_id="s1",
                        message_id=message_id, content_sha256="ab" * 32, subject="Deposito atto", size=10,
                        attachments=[], recipients=["cancelleria@pec.tribunale.example.it"])


def test_a_receipt_is_added_once(sends):
    send_id = record(sends)
    fields = dict(send_id=send_id, tipo="accettazione", at="2026-03-03T09:00:02+00:00", mailbox="protocollo",
                  folder="INBOX", uid=5, uidvalidity=7)
    assert not sends.seen_receipt("k1")
    assert sends.add_receipt("k1", **fields)
    assert not sends.add_receipt("k1", **{**fields, "uid": 9})  # the same receipt fetched again
    assert sends.seen_receipt("k1")
    assert sends.receipts(send_id) == [{"tipo": "accettazione", "at": "2026-03-03T09:00:02+00:00", "consegna": None,
                                        "detail": None, "mailbox": "protocollo", "folder": "INBOX",
                                        "uidvalidity": 7, "uid": 5}]


def test_watch_marks_are_one_per_mailbox_and_folder(sends):
    assert sends.watch_mark("protocollo", "INBOX") is None
    sends.set_watch_mark("protocollo", "INBOX", 7, 10)
    sends.set_watch_mark("protocollo", "INBOX", 8, 3)  # a new UIDVALIDITY replaces the old mark
    sends.set_watch_mark("altra", "INBOX", 7, 99)
    assert sends.watch_mark("protocollo", "INBOX") == (8, 3)
    assert sends.watch_mark("altra", "INBOX") == (7, 99)


def test_normalised_match_and_first_created(sends):
    assert sends.first_created("protocollo") is None
    send_id = record(sends)
    assert sends.find_normalised("protocollo", "m1@studio.example.it").id == send_id
    assert sends.find_normalised("altra", "m1@studio.example.it") is None
    assert sends.find_normalised("protocollo", "m2@studio.example.it") is None
    assert sends.first_created("protocollo") == sends.find("protocollo", "<M1@Studio.Example.IT>").created


def test_receipt_states_are_not_replaced_by_a_late_smtp_outcome(sends):
    send_id = record(sends)
    sends.accepted(send_id, "opec1@pec.example.it", "t", kinds={})
    sends.set_state(send_id, "relayed", reply="250 2.0.0 Ok")
    r = sends.find("protocollo", "<M1@Studio.Example.IT>")
    assert (r.state, r.reply) == ("accepted", "250 2.0.0 Ok")
    assert sends.not_accepted(send_id, "opec1@pec.example.it")
    assert not sends.not_accepted(send_id, "opec1@pec.example.it")
    sends.set_state(send_id, "unknown")
    assert sends.find("protocollo", "<M1@Studio.Example.IT>").state == "not_accepted"


def test_read_only_opening_creates_nothing_and_reads(backend, sends):
    send_id = record(sends)
    reader = open_sends(backend, read_only=True)
    try:
        assert [r.id for r in reader.list(person="alice")] == [send_id]
        with pytest.raises((sqlite3.Error, psycopg.Error)):
            record(reader, "<other@x>")
    finally:
        reader.close()
