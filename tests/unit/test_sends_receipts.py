"""Receipts linked to sends (gateway/sends/receipts.py and linking.py), PEC.md sections 4 and 5.

Each receipt is given as the watcher sees it: the top-level header block, where its daticert
is (a DaticertPart, or ``locate_daticert`` on one of Dovecot's own BODYSTRUCTUREs from
tests/unit/test_bodystructure.py) and that part's octets, base64 as fetched.  The send records
are a real SendStore on SQLite.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.demo.pec_samples import ROME, Invio, daticert_xml
from gateway.imap_proxy.bodystructure import DaticertPart, locate_daticert
from gateway.sends.linking import Linked, link_receipt
from gateway.sends.receipts import NotCounted, Receipt, match_send, read_receipt
from gateway.sends.store import SendStore
from tests.unit.test_bodystructure import ACCETTAZIONE, FORGED, FORWARDED_ACCETTAZIONE, UNSIGNED_WITH_LITERAL

ROOT = Path(__file__).resolve().parents[2]
MAILBOX = "protocollo"
M = "<20260303090000.a1b2@studio.example.it>"
I = "opec21001.20260303100002.00001.123.1.45@pec.example.it"
TRIBUNALE = "cancelleria@pec.tribunale.example.it"
RITARDO = "ritardo@pec.comune.example.it"
CLIENTE = "cliente@example.com"
SENT = dt.datetime(2026, 3, 3, 10, 0, 0, tzinfo=ROME)


def invio(**kw) -> Invio:
    fields = dict(mittente="studio@pec.example.it", destinatari=(TRIBUNALE, RITARDO), oggetto="Deposito atto",
                  inviato=SENT, testo="", esterni=(CLIENTE,), message_id=M, pec_id=I)
    fields.update(kw)
    return Invio(**fields)


def receipt_bytes(tipo: str, *, consegna: str | None = None, after: int = 2, header_tipo: str | None = None,
                  riferimento: str | None = M, send: Invio | None = None, **dati):
    """(header block, DaticertPart, fetched octets) of a receipt ``after`` seconds after sending."""
    send = send or invio()
    xml = daticert_xml(tipo, send, emesso=send.inviato + dt.timedelta(seconds=after),
                       gestore_emittente="Gestore", consegna=consegna, **dati)
    encoded = base64.encodebytes(xml).replace(b"\n", b"\r\n")
    header = b"Subject: x\r\nX-Ricevuta: %s\r\n" % (header_tipo or tipo).encode()
    if riferimento is not None:
        header += b"X-Riferimento-Message-ID: %s\r\n" % riferimento.encode()
    return header + b"\r\n", DaticertPart("1.2", len(encoded), "base64", "application/xml", True), encoded


def receipt(tipo: str, **kw) -> Receipt:
    got = read_receipt(*receipt_bytes(tipo, **kw))
    assert isinstance(got, Receipt), got
    return got


@pytest.fixture
def store(tmp_path):
    s = SendStore(lambda: sqlite3.connect(str(tmp_path / "sends.db"), check_same_thread=False), placeholder="?")
    yield s
    s.close()


@pytest.fixture
def send_id(store):
    sid = store.record(person="alice", offices=("legale",), mailbox=MAILBOX, session_id="s1", message_id=M,
                       content_sha256="ab" * 32, subject="Deposito atto", size=100, attachments=[],
                       recipients=[TRIBUNALE, RITARDO, CLIENTE])
    store.set_state(sid, "relayed", reply="250 2.0.0 Ok")
    return sid


def link(store, r: Receipt, uid: int = 1):
    return link_receipt(store, r, mailbox=MAILBOX, folder="INBOX", uidvalidity=7, uid=uid)


def recipient(store, address: str) -> dict:
    return store.find(MAILBOX, M).recipients[address]


# -- trust ---------------------------------------------------------------------------------------

def test_a_signed_receipt_with_its_own_daticert_counts():
    r = receipt("avvenuta-consegna", consegna=TRIBUNALE.upper(), after=5)
    assert (r.tipo, r.identificativo, r.riferimento, r.consegna) == ("avvenuta-consegna", I, M, TRIBUNALE)
    assert r.at == "2026-03-03T09:00:05+00:00"  # daticert time in UTC (+0100 in March)
    assert r.dedupe_key == "\x1f".join(("avvenuta-consegna", I, TRIBUNALE, "03/03/2026 10:00:05"))


def test_a_time_just_after_midnight_at_plus_two_is_the_previous_utc_day():
    summer = invio(inviato=dt.datetime(2026, 7, 1, 0, 30, 0, tzinfo=ROME))
    r = read_receipt(*receipt_bytes("accettazione", send=summer, after=0))
    assert r.at == "2026-06-30T22:30:00+00:00"


def test_the_x_ricevuta_value_and_name_compare_case_insensitively():
    header, part, octets = receipt_bytes("accettazione")
    header = header.replace(b"X-Ricevuta: accettazione", b"x-ricevuta:  Accettazione ")
    assert isinstance(read_receipt(header, part, octets), Receipt)


@pytest.mark.parametrize("case,structure_or_part,why", [
    ("plain mail with a spoofed header", FORGED, "no daticert.xml directly"),
    ("a receipt forwarded inside postacert.eml", FORWARDED_ACCETTAZIONE, "no daticert.xml directly"),
    ("unsigned multipart/mixed", UNSIGNED_WITH_LITERAL, "not multipart/signed"),
    ("no daticert at all", None, "no daticert.xml directly"),
])
def test_forged_receipts_do_not_count(case, structure_or_part, why):
    header, _part, octets = receipt_bytes("avvenuta-consegna", consegna=TRIBUNALE)
    part = locate_daticert(structure_or_part) if structure_or_part is not None else None
    got = read_receipt(header, part, octets)
    assert isinstance(got, NotCounted) and why in got.reason, (case, got)


def test_the_signed_structure_itself_is_located():
    assert locate_daticert(ACCETTAZIONE).signed  # the genuine one, for contrast with the forged above


@pytest.mark.parametrize("change,why", [
    (lambda h, p, o: (h.replace(b"X-Ricevuta: accettazione", b"X-Ricevuta: avvenuta-consegna"), p, o),
     "disagrees with the daticert tipo"),
    (lambda h, p, o: (h.replace(b"X-Ricevuta: accettazione", b"X-Ricevuta: mancata-consegna"), p, o),
     "is not a receipt kind"),
    (lambda h, p, o: (h, p, b"not base64!"), "not usable"),
    (lambda h, p, o: (h, p, base64.encodebytes(b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM '
                                               b'"file:///etc/passwd">]><postacert tipo="accettazione">&x;'
                                               b'</postacert>')), "not usable"),
    (lambda h, p, o: (h, p, None), "could not be fetched"),
    (lambda h, p, o: (h, DaticertPart("1.2", 10 ** 7, "base64", "application/xml", True), o), "too large"),
])
def test_receipts_that_cannot_be_trusted(change, why):
    got = read_receipt(*change(*receipt_bytes("accettazione")))
    assert isinstance(got, NotCounted) and why in got.reason, got


def test_a_message_without_x_ricevuta_is_no_receipt_at_all():
    header, part, octets = receipt_bytes("accettazione")
    assert read_receipt(b"X-Trasporto: posta-certificata\r\n\r\n", part, octets) is None
    # an X-Ricevuta inside the body is not a top-level header: the header block ends first
    assert read_receipt(b"Subject: x\r\n\r\nX-Ricevuta: accettazione\r\n", part, octets) is None


# -- transitions ------------------------------------------------------------------------------------

def test_accettazione_accepts_with_identificativo_time_and_kinds(store, send_id):
    linked = link(store, receipt("accettazione"))
    assert isinstance(linked, Linked) and linked.changed and linked.how == "x-riferimento"
    r = store.find(MAILBOX, M)
    assert (r.state, r.identificativo, r.accepted_at) == ("accepted", I, "2026-03-03T09:00:02+00:00")
    assert {a: v["kind"] for a, v in r.recipients.items()} == {
        TRIBUNALE: "certificato", RITARDO: "certificato", CLIENTE: "esterno"}
    assert {v["state"] for v in r.recipients.values()} == {"pending"}
    assert store.receipts(send_id)[0]["tipo"] == "accettazione"


def test_consegna_delivers_and_errore_consegna_fails_one_recipient(store, send_id):
    link(store, receipt("accettazione"), 1)
    assert link(store, receipt("avvenuta-consegna", consegna=TRIBUNALE, after=5), 2).changed
    failed = link(store, receipt("errore-consegna", consegna=RITARDO, after=8, errore="no-dest",
                                 errore_esteso="5.1.1 - Gestore - indirizzo non valido"), 3)
    assert failed.transition.recipient_state == "failed"
    assert recipient(store, TRIBUNALE) == {"kind": "certificato", "state": "delivered",
                                           "at": "2026-03-03T09:00:05+00:00", "detail": None}
    assert recipient(store, RITARDO)["state"] == "failed"
    assert recipient(store, RITARDO)["detail"] == "5.1.1 - Gestore - indirizzo non valido"
    assert recipient(store, CLIENTE)["state"] == "pending"  # esterno: the accettazione was the last event


def test_preavviso_warns_then_a_late_consegna_delivers_and_a_second_preavviso_changes_nothing(store, send_id):
    link(store, receipt("accettazione"), 1)
    warn = receipt("preavviso-errore-consegna", consegna=RITARDO, after=12 * 3600,
                   errore_esteso="4.4.7 - tempo massimo di consegna superato")
    assert link(store, warn, 2).transition.recipient_state == "warned"
    assert recipient(store, RITARDO)["state"] == "warned"
    link(store, receipt("avvenuta-consegna", consegna=RITARDO, after=13 * 3600), 3)
    assert recipient(store, RITARDO)["state"] == "delivered"
    late = link(store, receipt("preavviso-errore-consegna", consegna=RITARDO, after=24 * 3600), 4)
    assert isinstance(late, Linked) and not late.changed  # recorded, but a delivery stands
    assert recipient(store, RITARDO)["state"] == "delivered"


def test_non_accettazione_is_final(store, send_id):
    refused = link(store, receipt("non-accettazione", errore="altro", errore_esteso="5.7.1 - Bcc"))
    assert refused.changed and refused.transition.detail == "5.7.1 - Bcc"
    r = store.find(MAILBOX, M)
    assert (r.state, r.identificativo) == ("not_accepted", I)
    for later in (receipt("accettazione", after=3), receipt("avvenuta-consegna", consegna=TRIBUNALE, after=5)):
        assert not link(store, later).changed
    r = store.find(MAILBOX, M)
    assert r.state == "not_accepted" and {v["state"] for v in r.recipients.values()} == {"pending"}
    store.set_state(send_id, "relayed")  # nor does an SMTP outcome recorded afterwards
    assert store.find(MAILBOX, M).state == "not_accepted"


def test_an_smtp_outcome_after_the_accettazione_leaves_it_accepted(store, send_id):
    link(store, receipt("accettazione"))
    for outcome in ("relayed", "unknown", "refused"):
        store.set_state(send_id, outcome, reply="250 late")
        assert store.find(MAILBOX, M).state == "accepted"
    store.set_state(send_id, "recorded")  # a new attempt still goes through
    assert store.find(MAILBOX, M).state == "recorded"


@pytest.mark.parametrize("tipo", ["presa-in-carico", "rilevazione-virus"])
def test_presa_in_carico_and_rilevazione_virus_are_recorded_only(store, send_id, tipo):
    link(store, receipt("accettazione"))
    linked = link(store, receipt(tipo, after=4, errore="virus" if tipo == "rilevazione-virus" else "nessuno"))
    assert isinstance(linked, Linked) and not linked.changed
    assert [x["tipo"] for x in store.receipts(send_id)] == ["accettazione", tipo]
    assert {v["state"] for v in store.find(MAILBOX, M).recipients.values()} == {"pending"}


def test_a_consegna_about_someone_else_changes_nothing(store, send_id):
    linked = link(store, receipt("avvenuta-consegna", consegna="altro@pec.example.it", after=5))
    assert not linked.changed and "not a recipient" in linked.transition.note


def test_the_same_receipt_twice_is_linked_once(store, send_id):
    assert isinstance(link(store, receipt("accettazione"), 1), Linked)
    assert link(store, receipt("accettazione"), 9) == "duplicate"  # fetched again, another UID
    assert len(store.receipts(send_id)) == 1
    # the two preavvisi (12 h, 24 h) share header and subject, not the time: both count
    link(store, receipt("preavviso-errore-consegna", consegna=RITARDO, after=12 * 3600))
    assert isinstance(link(store, receipt("preavviso-errore-consegna", consegna=RITARDO, after=24 * 3600)), Linked)


# -- which send ---------------------------------------------------------------------------------

def test_normalised_x_riferimento_matches(store, send_id):
    folded = " <20260303090000.A1B2@\r\n Studio.Example.IT> "
    header, part, octets = receipt_bytes("accettazione", riferimento=folded)
    r = read_receipt(header, part, octets)
    assert match_send(r, MAILBOX, store)[1] == "x-riferimento (normalised)"


def test_then_daticert_msgid_then_the_identificativo(store, send_id):
    r = receipt("accettazione", riferimento=None)  # no X-Riferimento-Message-ID header
    assert match_send(r, MAILBOX, store)[1] == "msgid"
    link(store, r)
    other = invio(message_id="<unknown@elsewhere>")
    later = receipt("avvenuta-consegna", consegna=TRIBUNALE, after=5, riferimento="<unknown@elsewhere>", send=other)
    assert match_send(later, MAILBOX, store)[1] == "identificativo"
    assert match_send(later, "another-mailbox", store) is None  # never another mailbox's send


def test_receipts_of_sends_made_elsewhere_are_unmatched(store, send_id):
    other = invio(message_id="<webmail@x>", pec_id="opec9.other@pec.example.it")
    assert link(store, receipt("accettazione", riferimento="<webmail@x>", send=other)) == "unmatched"
    assert store.find(MAILBOX, M).state == "relayed"


def test_watch_marks_persist(store):
    assert store.watch_mark(MAILBOX, "INBOX") is None
    store.set_watch_mark(MAILBOX, "INBOX", 7, 41)
    store.set_watch_mark(MAILBOX, "INBOX", 7, 42)
    assert store.watch_mark(MAILBOX, "INBOX") == (7, 42)


def test_receipts_module_is_pure():
    code = ("import sys, json; import gateway.sends.receipts, gateway.sends.linking; print(json.dumps(sorted("
            "m for m in sys.modules if m.split('.')[0] in ('asyncio', 'socket', 'ssl', 'selectors'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stdout + out.stderr
