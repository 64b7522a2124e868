"""Receipts linked to sends, end to end: real slapd, real Dovecot, the PEC provider simulator.

A PEC goes out through the gateway (smtplib); the simulator delivers real signed receipts into
the mailbox's INBOX on Dovecot; the gateway's receipt watcher (its own IMAP session, IDLE) links
them to the send record; ``pecgw sends`` shows the outcome per recipient and the audit trail has
a ``receipt`` row for each.  Forged receipts APPENDed straight into the INBOX change nothing
(PEC.md section 5), and a receipt fetched twice is linked once (section 4 step 5).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import ssl
import smtplib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.demo.pec_samples import ROME, Invio, daticert_xml, ricevuta_avvenuta_consegna
from gateway.secret import Secret
from tests.fixtures.gateway import GatewayHarness, ldap_directory, upstream_table
from tests.fixtures.waiting import until

ROOT = Path(__file__).resolve().parents[1]
TRIBUNALE = "cancelleria@pec.tribunale.example.it"  # certificato: delivered
INESISTENTE = "inesistente@pec.tribunale.example.it"  # certificato: errore-consegna
CLIENTE = "cliente@example.com"  # esterno: the accettazione is all there is


@pytest.fixture
def gw(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider):
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(pec_mailbox.password))
    h.enroll("alice")
    policy = {"offices": {"legale": {"groups": ["legale"]}},
              "mailboxes": {"protocollo": {"send": ["legale"], "rules": [
                  {"office": "legale", "folders": "*", "rights": "lrsw"}]}}}
    tables = h.base_tables(
        directory=ldap_directory(slapd), policy=policy,
        mailboxes={"protocollo": {
            "address": pec_mailbox.address,
            "imap": upstream_table(dovecot, pki, pec_mailbox.address),
            "smtp": {"host": "127.0.0.1", "port": pec_provider.port, "tls": "implicit", "ca_file": str(pki.ca_cert),
                     "server_name": "localhost", "connect_timeout": 3}}})
    tables["smtp"] = {"listen_tls": ["127.0.0.1:0"], "listen_starttls": ["127.0.0.1:0"], "timeout": 30}
    h.tables = tables
    h.start(tables)
    h.mailbox, h.provider, h.dovecot = pec_mailbox, pec_provider, dovecot
    yield h
    h.stop()


def watching(gw) -> tuple[int, int]:
    """The watcher's mark, once it has one (it has examined the INBOX)."""
    return until("the watcher examines the INBOX", lambda: gw.gateway.sends.watch_mark("protocollo", "INBOX"))


def send(gw, message_id: str) -> object:
    """A PEC to a certified recipient, an undeliverable one and an ordinary address; its submission."""
    message = (f"From: Studio <{gw.mailbox.address}>\r\nTo: {TRIBUNALE}, {INESISTENTE}\r\nCc: {CLIENTE}\r\n"
               f"Subject: Deposito atto\r\nMessage-ID: {message_id}\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n\r\nSi trasmette l'atto.\r\n").encode()
    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    with smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=20) as c:
        c.login("alice", gw.credential("alice", "alice-password"))
        assert c.sendmail(gw.mailbox.address, [TRIBUNALE, INESISTENTE, CLIENTE], message) == {}
    return next(s for s in gw.provider.accepted if s.message_id == message_id)


def settled(gw, message_id: str):
    """The send record once the watcher has linked the accettazione and both delivery outcomes."""
    def done():
        r = gw.gateway.sends.find("protocollo", message_id)
        states = {a: v["state"] for a, v in r.recipients.items()} if r else {}
        return r if r and r.state == "accepted" and states.get(TRIBUNALE) == "delivered" \
            and states.get(INESISTENTE) == "failed" else None
    return until("the receipts are linked", done)


def pecgw_sends(gw, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "sends", "--config", str(gw.config_path), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def receipt_rows(gw, wait_for: int = 0) -> list[dict]:
    def rows():
        found = [r for r in gw.audit_events() if r["action"] == "receipt"]
        return found if len(found) >= wait_for else None
    return until("the receipt audit rows", rows) if wait_for else [
        r for r in gw.audit_events() if r["action"] == "receipt"]


def test_receipts_are_linked_per_recipient_and_shown_by_pecgw_sends(gw):
    watching(gw)
    sub = send(gw, "<e2e.1@studio.example.it>")
    record = settled(gw, sub.message_id)
    assert record.identificativo == sub.identificativo  # the one the provider assigned
    assert record.person == "alice"
    assert record.recipients[CLIENTE] == {"kind": "esterno", "state": "pending", "at": None, "detail": None}
    assert record.recipients[TRIBUNALE]["kind"] == record.recipients[INESISTENTE]["kind"] == "certificato"
    assert record.recipients[INESISTENTE]["detail"].startswith("5.1.1")
    imap = gw.dovecot.connect(gw.mailbox.address, gw.mailbox.password)
    try:  # the watcher only EXAMINEs and PEEKs: no message was marked read
        imap.select("INBOX", readonly=True)
        typ, data = imap.fetch("1:*", "(FLAGS)")
        assert typ == "OK" and not any(b"\\Seen" in line for line in data)
    finally:
        imap.logout()

    proc = pecgw_sends(gw, "--user", "alice", "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert (row["person"], row["mailbox"], row["message_id"], row["state"], row["identificativo"]) == (
        "alice", "protocollo", sub.message_id, "accepted", sub.identificativo)
    assert {a: (v["kind"], v["state"]) for a, v in row["recipients"].items()} == {
        TRIBUNALE: ("certificato", "delivered"), INESISTENTE: ("certificato", "failed"),
        CLIENTE: ("esterno", "pending")}
    assert sorted(r["tipo"] for r in row["receipts"]) == ["accettazione", "avvenuta-consegna", "errore-consegna"]
    assert row["accepted_at"] == next(r["at"] for r in row["receipts"] if r["tipo"] == "accettazione")

    table = pecgw_sends(gw, "--since", (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat())
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["when", "(UTC)", "person", "mailbox", "state"]
    assert re.search(rf"alice\s+protocollo\s+accepted\s+{re.escape(sub.message_id)}\s+{re.escape(sub.identificativo)}"
                     r"\s+Deposito atto", lines[1])
    assert re.match(rf"\s+{TRIBUNALE}\s+certificato\s+delivered\s+\d{{4}}-", next(x for x in lines if TRIBUNALE in x))
    assert re.match(rf"\s+{INESISTENTE}\s+certificato\s+failed\s+.*5\.1\.1", next(x for x in lines if INESISTENTE in x))
    assert re.match(rf"\s+{CLIENTE}\s+esterno\s+accepted\s+.*ordinary address",
                    next(x for x in lines if CLIENTE in x))
    assert pecgw_sends(gw, "--user", "bruno").stdout == ""
    assert pecgw_sends(gw, "--since", "2999-01-01").stdout == ""
    assert pecgw_sends(gw, "--mailbox", "nessuna").returncode == 2

    rows = receipt_rows(gw, wait_for=3)
    assert len(rows) == 3 and {r["person"] for r in rows} == {"alice"}
    assert {r["protocol"] for r in rows} == {"watcher"} and {r["mailbox"] for r in rows} == {"protocollo"}
    by_tipo = {r["detail"]["tipo"]: r for r in rows}
    assert set(by_tipo) == {"accettazione", "avvenuta-consegna", "errore-consegna"}
    assert by_tipo["accettazione"]["detail"]["send_state"] == "accepted"
    assert by_tipo["avvenuta-consegna"]["detail"]["consegna"] == TRIBUNALE
    assert by_tipo["errore-consegna"]["detail"]["recipient_state"] == "failed"
    for r in rows:
        assert r["detail"]["identificativo"] == r["message"]["pec_id"] == sub.identificativo
        assert r["detail"]["send_id"] == record.id and r["message"]["pec_ref"] == sub.message_id
        assert r["message"]["pec_kind"] == r["detail"]["tipo"] and r["folder"] == "INBOX"


def append(gw, raw: bytes) -> int:
    """APPEND straight into the INBOX as the mailbox user (not through the gateway); the new UID."""
    imap = gw.dovecot.connect(gw.mailbox.address, gw.mailbox.password)
    try:
        typ, data = imap.append("INBOX", None, None, raw)
        assert typ == "OK", data
        return int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
    finally:
        imap.logout()


def examined(gw, uid: int) -> None:
    until(f"the watcher examines UID {uid}", lambda: (gw.gateway.sends.watch_mark("protocollo", "INBOX") or (0, 0))[1]
          >= uid)


def forged_plain(gw, tipo: str, message_id: str) -> bytes:
    return (f"From: posta-certificata@pec.example.it\r\nTo: {gw.mailbox.address}\r\nSubject: CONSEGNA: Deposito atto\r\n"
            f"Message-ID: <forged.{tipo}@x>\r\nX-Ricevuta: {tipo}\r\nX-Riferimento-Message-ID: {message_id}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nIl messaggio e' stato consegnato.\r\n").encode()


def forged_unsigned(gw, invio: Invio) -> bytes:
    """multipart/mixed with a daticert.xml of its own, but no provider signature around it."""
    xml = daticert_xml("avvenuta-consegna", invio, emesso=dt.datetime.now(ROME), gestore_emittente="Falso",
                       consegna=INESISTENTE)
    b64 = base64.encodebytes(xml).replace(b"\n", b"\r\n")
    return (f"From: posta-certificata@pec.example.it\r\nTo: {gw.mailbox.address}\r\nSubject: CONSEGNA: x\r\n"
            f"X-Ricevuta: avvenuta-consegna\r\nX-Riferimento-Message-ID: {invio.msgid}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nok\r\n'
            '--b1\r\nContent-Type: application/xml; name="daticert.xml"\r\nContent-Transfer-Encoding: base64\r\n'
            'Content-Disposition: inline; filename="daticert.xml"\r\n\r\n').encode() + b64 + b"--b1--\r\n"


def forwarded(gw, inner: bytes, message_id: str) -> bytes:
    """A genuine signed receipt carried as postacert.eml inside a plain message with X-Ricevuta on top."""
    return (f"From: qualcuno@example.com\r\nTo: {gw.mailbox.address}\r\nSubject: Fwd: CONSEGNA\r\n"
            f"X-Ricevuta: avvenuta-consegna\r\nX-Riferimento-Message-ID: {message_id}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b2"\r\n\r\n--b2\r\nContent-Type: text/plain\r\n\r\nvedi\r\n'
            '--b2\r\nContent-Type: message/rfc822; name="postacert.eml"\r\n'
            'Content-Disposition: inline; filename="postacert.eml"\r\n\r\n').encode() + inner + b"\r\n--b2--\r\n"


def test_forged_receipts_change_nothing_and_a_receipt_fetched_twice_is_linked_once(gw, pec_gestore, caplog):
    caplog.set_level(logging.INFO, logger="pecgw.sends")
    watching(gw)
    sub = send(gw, "<e2e.2@studio.example.it>")
    before = settled(gw, sub.message_id)
    rows_before = receipt_rows(gw, wait_for=3)
    invio = Invio(gw.mailbox.address, (TRIBUNALE, INESISTENTE), "Deposito atto", sub.at, "", esterni=(CLIENTE,),
                  message_id=sub.message_id, pec_id=sub.identificativo)
    genuine = ricevuta_avvenuta_consegna(invio, INESISTENTE, pec_gestore, ritardo=30)  # signed, never delivered
    uids = [append(gw, forged_plain(gw, "avvenuta-consegna", sub.message_id)),
            append(gw, forged_plain(gw, "non-accettazione", sub.message_id)),
            append(gw, forged_unsigned(gw, invio)),
            append(gw, forwarded(gw, genuine, sub.message_id))]
    # the accettazione the provider delivered, APPENDed again: the same receipt fetched twice
    accettazione = next(r for r in gw.provider.receipts if r.identificativo == sub.identificativo
                        and r.tipo == "accettazione")
    uids.append(append(gw, accettazione.raw))
    examined(gw, max(uids))
    after = gw.gateway.sends.find("protocollo", sub.message_id)
    assert (after.state, after.identificativo, after.recipients) == (before.state, before.identificativo,
                                                                     before.recipients)
    assert after.recipients[INESISTENTE]["state"] == "failed"
    assert len(gw.gateway.sends.receipts(after.id)) == 3
    assert receipt_rows(gw) == rows_before
    refused = [r.getMessage() for r in caplog.records if "does not count" in r.getMessage()]
    assert len(refused) == 4, refused
    assert sum("no daticert.xml directly" in m for m in refused) == 3
    assert sum("not multipart/signed" in m for m in refused) == 1


def test_a_restart_goes_on_from_the_last_uid_examined(gw):
    mark = watching(gw)
    sub = send(gw, "<e2e.3@studio.example.it>")
    settled(gw, sub.message_id)
    receipt_rows(gw, wait_for=3)
    gw.stop()
    gw.start(gw.tables)
    mark_after = watching(gw)
    assert mark_after[0] == mark[0] and mark_after[1] >= mark[1] + 3
    time.sleep(1.0)  # what a restart would wrongly re-examine would show up by now
    assert len(receipt_rows(gw)) == 3  # nothing linked again, no second audit row
    # a lost mark is a first start: from the day before the first send, so the same three
    # receipts are examined again; the dedupe key links none of them a second time
    gw.stop()
    db = sqlite3.connect(gw.gateway.config.audit.sqlite_path)
    with db:
        db.execute("DELETE FROM pec_watch_marks")
    db.close()
    gw.start(gw.tables)
    assert watching(gw) == mark_after
    time.sleep(1.0)
    assert len(receipt_rows(gw)) == 3
