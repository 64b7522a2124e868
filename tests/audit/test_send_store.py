"""The send records (gateway/sends/store.py) on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from gateway.sends.store import SendStore


@pytest.fixture
def sends(backend):
    backend.open()  # the audit store first: it creates the file or the schema
    if backend.name == "sqlite":
        store = SendStore(lambda: sqlite3.connect(str(backend.path), check_same_thread=False), placeholder="?")
    else:
        store = SendStore(lambda: psycopg.connect(backend.conninfo), placeholder="%s", schema=backend.schema)
    yield store
    store.close()


def record(store, message_id="<m1@studio.example.it>", **kw):
    fields = dict(person="alice", offices=("legale",), mailbox="protocollo", session_id="s1",
                  message_id=message_id, content_sha256="ab" * 32, subject="Deposito atto", size=1234,
                  attachments=[{"name": "atto.pdf", "sha256": "cd" * 32, "size": 1000}],
                  recipients=["cancelleria@pec.tribunale.example.it", "cliente@example.com"])
    fields.update(kw)
    return store.record(**fields)


def test_record_then_states_and_recipients(sends):
    send_id = record(sends)
    r = sends.find("protocollo", "<m1@studio.example.it>")
    assert (r.id, r.state, r.person, r.offices, r.size) == (send_id, "recorded", "alice", ("legale",), 1234)
    assert r.attachments == ({"name": "atto.pdf", "sha256": "cd" * 32, "size": 1000},)
    assert set(r.recipients) == {"cancelleria@pec.tribunale.example.it", "cliente@example.com"}
    assert {v["state"] for v in r.recipients.values()} == {"pending"}
    sends.set_state(send_id, "relayed", reply="250 2.0.0 Ok")
    sends.accepted(send_id, "opec1@pec.example.it", "2026-03-03T09:00:00+00:00",
                   kinds={"cancelleria@pec.tribunale.example.it": "certificato", "cliente@example.com": "esterno"})
    assert sends.recipient(send_id, "cancelleria@pec.tribunale.example.it", "warned", "t1", "preavviso")
    assert sends.recipient(send_id, "cancelleria@pec.tribunale.example.it", "delivered", "t2", None)
    # a late preavviso never overrides a delivery (PEC.md section 4); the same state twice is no change
    assert not sends.recipient(send_id, "cancelleria@pec.tribunale.example.it", "warned", "t3", "late")
    assert not sends.recipient(send_id, "cancelleria@pec.tribunale.example.it", "delivered", "t2", None)
    assert not sends.recipient(send_id, "nobody@example.com", "delivered", "t2", None)
    r = sends.by_identificativo("opec1@pec.example.it")
    assert (r.state, r.reply, r.accepted_at) == ("accepted", "250 2.0.0 Ok", "2026-03-03T09:00:00+00:00")
    assert r.recipients["cancelleria@pec.tribunale.example.it"]["state"] == "delivered"
    assert r.recipients["cliente@example.com"] == {"kind": "esterno", "state": "pending", "at": None, "detail": None}


def test_one_record_per_mailbox_and_message_id(sends):
    record(sends)
    with pytest.raises(Exception) as exc:
        record(sends)
    assert "unique" in str(exc.value).lower() or "duplicate" in str(exc.value).lower()
    record(sends, mailbox="amministrazione")  # another mailbox may reuse it
    assert len(sends.list()) == 2
    assert [r.mailbox for r in sends.list(person="alice", mailbox="protocollo")] == ["protocollo"]
    assert sends.list(since="2999-01-01") == []
