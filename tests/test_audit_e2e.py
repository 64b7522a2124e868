"""The audit trail end to end: real slapd, real Dovecot, imaplib and mbsync through the gateway.

Every action produces exactly one row per message, with the person, the folder and the
message's identity as Dovecot itself reports it (compared row by row, not counted).  Each test
runs once with the SQLite store and once with the real PostgreSQL; the rows are read from the
gateway's JSON-lines copy and checked to be, one for one, in the store, whose chain verifies.
"""

from __future__ import annotations

import base64
import email
import imaplib
import email.policy
import re
import time

import pytest

from gateway.pec.daticert import parse_daticert
from gateway.secret import Secret
from tests.audit.conftest import Backend
from tests.fixtures.gateway import FULL_RIGHTS, GatewayHarness, ldap_directory, office_policy, upstream_table
from tests.fixtures.raw_imap import RawImap
from tests.test_third_party_clients import mbsync_config, run_mbsync

IDENTITY = "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID SUBJECT X-TRASPORTO X-RICEVUTA X-RIFERIMENTO-MESSAGE-ID)])"


@pytest.fixture(params=["sqlite", "postgres"])
def gw(request, tmp_path, pki, slapd, dovecot, pec_mailbox):
    backend = Backend(request.param, tmp_path)
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(pec_mailbox.password))
    h.enroll("alice")
    tables = h.base_tables(
        directory=ldap_directory(slapd),
        policy=office_policy({"legale": {"groups": ["legale"]}}, {"protocollo": ["legale"]}, rights=FULL_RIGHTS),
        mailboxes={"protocollo": {"address": pec_mailbox.address,
                                  "imap": upstream_table(dovecot, pki, pec_mailbox.address)}})
    if backend.name == "sqlite":
        tables["audit"].update(store="sqlite", sqlite_path=str(backend.path))
    else:
        tables["audit"].update(store="postgresql", postgresql_dsn=backend.conninfo,
                               postgresql_schema=backend.schema)
    h.start(tables)
    h.mailbox, h.backend = pec_mailbox, backend
    yield h
    h.stop()
    store_matches_jsonl(h)
    backend.cleanup()


def store_matches_jsonl(h) -> None:
    """After the gateway stopped (its queue drained): the store holds exactly the JSON-lines
    rows, in order, and its chain verifies with the key from the vault."""
    key_text = h.vault.get("audit/chain-key").reveal_bytes()
    store = h.backend.open(base64.urlsafe_b64decode(key_text + b"=" * (-len(key_text) % 4)))
    report = store.verify()
    assert report.ok, report
    stored = [(r["action"], r["person"], r["folder"], r["msg_uid"], r["message_id"]) for r in store.query()]
    copied = [(r["action"], r["person"], r.get("folder"), (r.get("message") or {}).get("uid"),
               (r.get("message") or {}).get("message_id")) for r in h.audit_events()]
    assert stored == copied


def direct_identities(gw, dovecot, folder: str) -> tuple[int, dict[int, dict]]:
    """UIDVALIDITY and, per UID, the identity headers, read directly from Dovecot."""
    d = dovecot.connect(gw.mailbox.address, gw.mailbox.password)
    try:
        d.select(f'"{folder}"', readonly=True)
        validity = int(d.response("UIDVALIDITY")[1][0])
        _, data = d.uid("FETCH", "1:*", IDENTITY)
        out = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            headers = {}
            for line in item[1].decode().replace("\r\n ", " ").split("\r\n"):
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().upper()] = value.strip()
            out[uid] = headers
        return validity, out
    finally:
        d.logout()


def rows(gw, *, since: int = 0, wait_for: int = 0) -> list[dict]:
    return gw.audit_events(wait_for=since + wait_for)[since:]


def test_every_action_is_one_row_with_person_folder_and_message_identity(gw, dovecot):
    validity, inbox = direct_identities(gw, dovecot, "INBOX")
    first_uid = min(inbox)
    c = gw.imap()
    c.login("alice", gw.credential("alice", "alice-password"))
    start = len(gw.audit_events(wait_for=1))
    try:
        c.select("INBOX")
        typ, _ = c.uid("FETCH", str(first_uid), "(BODY.PEEK[])")
        assert typ == "OK"
        assert c.uid("STORE", str(first_uid), "+FLAGS", "(\\Flagged)")[0] == "OK"
        assert c.uid("COPY", str(first_uid), '"Ufficio Legale"')[0] == "OK"
        assert c.create('"Ufficio Legale/Nuova"')[0] == "OK"
        assert c.rename('"Ufficio Legale/Nuova"', '"Ufficio Legale/Rinominata"')[0] == "OK"
        assert c.delete('"Ufficio Legale/Rinominata"')[0] == "OK"
    finally:
        c.logout()
    got = rows(gw, since=start, wait_for=8)
    actions = [(r["action"], r["person"], r["folder"]) for r in got]
    assert actions == [
        ("select", "alice", "INBOX"), ("fetch", "alice", "INBOX"), ("flags", "alice", "INBOX"),
        ("copy", "alice", "INBOX"), ("folder_create", "alice", "Ufficio Legale/Nuova"),
        ("folder_rename", "alice", "Ufficio Legale/Nuova"), ("folder_delete", "alice", "Ufficio Legale/Rinominata"),
        ("logout", "alice", None)]
    select, fetch, flags, copy = got[:4]
    assert select["detail"]["uidvalidity"] == validity and select["detail"]["messages"] == len(inbox)
    expected = inbox[first_uid]
    for row in (fetch, flags, copy):
        m = row["message"]
        assert (m["uidvalidity"], m["uid"]) == (validity, first_uid)
        assert m["message_id"] == expected["MESSAGE-ID"] and m["pec_kind"] == expected["X-TRASPORTO"]
        assert m["pec_ref"] == expected.get("X-RIFERIMENTO-MESSAGE-ID")
        assert m["pec_id"] == expected["MESSAGE-ID"]  # a busta: its Message-ID is the identificativo
    assert fetch["detail"]["content"] == "body"
    assert "\\Flagged" in flags["detail"]["now"] and flags["detail"]["change"] == "+FLAGS"
    assert copy["detail"]["to"] == "Ufficio Legale" and isinstance(copy["detail"]["to_uid"], int)
    assert got[5]["detail"] == {"to": "Ufficio Legale/Rinominata"}


def test_expunge_and_move_rows_name_messages_nobody_fetched(gw, dovecot):
    """After SELECT the gateway learns every message's UID and identity, so a message that
    leaves the folder unread is still named in its row."""
    validity, inbox = direct_identities(gw, dovecot, "INBOX")
    c = gw.imap()
    c.login("alice", gw.credential("alice", "alice-password"))
    start = len(gw.audit_events(wait_for=1))
    first, second = sorted(inbox)[:2]
    try:
        c.select("INBOX")
        assert c.uid("STORE", str(first), "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert c.expunge()[0] == "OK"
        assert c.uid("MOVE", str(second), '"Ufficio Legale"')[0] == "OK"
    finally:
        c.logout()
    got = rows(gw, since=start, wait_for=5)
    assert [r["action"] for r in got] == ["select", "flags", "expunge", "move", "logout"]
    for row, uid in ((got[1], first), (got[2], first), (got[3], second)):
        m = row["message"]
        assert (row["person"], row["folder"], m["uidvalidity"], m["uid"]) == ("alice", "INBOX", validity, uid)
        assert m["message_id"] == inbox[uid]["MESSAGE-ID"] and m["pec_kind"] == inbox[uid]["X-TRASPORTO"]
    assert got[1]["detail"]["flags"] == "\\Deleted" and got[2]["detail"] == {"by": "EXPUNGE"}
    assert got[3]["detail"]["to"] == "Ufficio Legale" and isinstance(got[3]["detail"]["to_uid"], int)


def test_login_failure_login_examine_append_and_denial_rows(gw, dovecot):
    """The rest of the issue's list: a failed login (named by the person tried), the login,
    EXAMINE, APPEND (named from the uploaded message itself) and a refusal with its rule."""
    start = len(gw.audit_events())
    c = gw.imap()
    with pytest.raises(imaplib.IMAP4.error):
        c.login("alice", "not-the-password-123456")
    c = gw.imap()
    c.login("alice", gw.credential("alice", "alice-password"))
    message = (b"Message-ID: <appended.1@studio.example.it>\r\nSubject: Bozza di risposta\r\n"
               b"From: protocollo@pec.example.it\r\nDate: Tue, 03 Mar 2026 10:00:00 +0100\r\n\r\nTesto\r\n")
    try:
        typ, data = c.select('"Ufficio Legale"', readonly=True)  # imaplib sends EXAMINE
        assert typ == "OK"
        typ, data = c.append('"Ufficio Legale"', "(\\Seen)", None, message)
        assert typ == "OK"
        appended_uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
        typ, data = c._simple_command("SETACL", '"Ufficio Legale"', "bruno", "lr")
        assert typ == "NO"
    finally:
        c.logout()
    got = rows(gw, since=start, wait_for=6)
    assert [(r["action"], r["decision"], r["person"]) for r in got] == [
        ("login_failed", "deny", "alice"), ("login", "allow", "alice"), ("examine", "allow", "alice"),
        ("append", "allow", "alice"), ("denied", "deny", "alice"), ("logout", "allow", "alice")]
    failed, login, examine, append, denied, _ = got
    assert failed["reason"] and failed["client_ip"] == "127.0.0.1" and login["mailbox"] == "protocollo"
    validity, folder = direct_identities(gw, dovecot, "Ufficio Legale")
    assert examine["folder"] == "Ufficio Legale" and examine["detail"]["uidvalidity"] == validity
    m = append["message"]
    assert (append["folder"], m["uidvalidity"], m["uid"]) == ("Ufficio Legale", validity, appended_uid)
    assert (m["message_id"], m["subject"]) == ("<appended.1@studio.example.it>", "Bozza di risposta")
    assert folder[appended_uid]["MESSAGE-ID"] == m["message_id"]  # the row names what Dovecot holds
    assert denied["folder"] == "Ufficio Legale" and denied["detail"]["command"] == "SETACL"
    assert denied["detail"]["missing"] == "a"


def test_expunge_rows_are_the_persons_own_and_close_gets_them_too(gw, dovecot):
    """A colleague's expunge, reported in the reply to alice's EXPUNGE, is not written as hers;
    CLOSE, which reports nothing, still gets one row per message it removed."""
    validity, inbox = direct_identities(gw, dovecot, "INBOX")
    mine, theirs, closed = sorted(inbox)[:3]
    c = gw.imap()
    c.login("alice", gw.credential("alice", "alice-password"))
    start = len(gw.audit_events(wait_for=1))
    colleague = dovecot.connect(gw.mailbox.address, gw.mailbox.password)
    try:
        c.select("INBOX")
        assert c.uid("STORE", str(mine), "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        colleague.select("INBOX")
        assert colleague.uid("STORE", str(theirs), "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        # only theirs (a plain EXPUNGE would remove alice's marked message too, and be the colleague's doing)
        assert colleague.uid("EXPUNGE", str(theirs))[0] == "OK"  # alice learns of it with her next reply
        typ, gone = c.expunge()
        assert typ == "OK" and len([g for g in gone if g]) == 2  # her client sees both expunges
        assert c.uid("STORE", str(closed), "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
        assert c.close()[0] == "OK"
        assert c.select("INBOX")[0] == "OK"
        _, left = c.uid("SEARCH", "ALL")
        assert closed not in [int(u) for u in left[0].split()]  # CLOSE did expunge it
    finally:
        colleague.logout()
        c.logout()
    got = rows(gw, since=start, wait_for=7)
    assert [(r["action"], (r.get("message") or {}).get("uid"), r["detail"].get("by")) for r in got[:5]] == [
        ("select", None, None), ("flags", mine, None), ("expunge", mine, "EXPUNGE"),
        ("flags", closed, None), ("expunge", closed, "CLOSE")]
    for row in got[1:5]:
        m = row["message"]
        assert m["uidvalidity"] == validity and m["message_id"] == inbox[m["uid"]]["MESSAGE-ID"]
    assert theirs not in [(r.get("message") or {}).get("uid") for r in got if r["action"] == "expunge"]


def test_a_client_that_drops_the_connection_mid_expunge_still_leaves_its_row(gw, dovecot):
    """The expunge happens at the provider whether or not the client waits for the reply: the
    gateway reads the reply for the audit row before ending the session."""
    _validity, inbox = direct_identities(gw, dovecot, "INBOX")
    uid = max(inbox)
    r = RawImap("localhost", gw.ports["implicit"], gw.client_context())
    r.send(b"a1 LOGIN alice %s\r\n" % gw.credential("alice", "alice-password").encode())
    assert b"a1 OK" in r.until(rb"a1 ")
    start = len(gw.audit_events(wait_for=1))
    r.send(b"a2 SELECT INBOX\r\n")
    assert b"a2 OK" in r.until(rb"a2 ")
    r.send(b"a3 UID STORE %d +FLAGS.SILENT (\\Deleted)\r\n" % uid)
    assert b"a3 OK" in r.until(rb"a3 ")
    r.send(b"a4 UID EXPUNGE %d\r\n" % uid)
    r.sock.close()  # gone before any reply
    got = rows(gw, since=start, wait_for=4)
    assert [(x["action"], (x.get("message") or {}).get("uid")) for x in got] == [
        ("select", None), ("flags", uid), ("expunge", uid), ("logout", None)]
    assert got[2]["message"]["message_id"] == inbox[uid]["MESSAGE-ID"]
    _validity, after = direct_identities(gw, dovecot, "INBOX")
    assert uid not in after  # it did happen


def daticert_identificativo(dovecot, mailbox, uid: int) -> str:
    """The identificativo in a message's daticert.xml, read directly from Dovecot."""
    d = dovecot.connect(mailbox.address, mailbox.password)
    try:
        d.select("INBOX", readonly=True)
        _, data = d.uid("FETCH", str(uid), "(BODY.PEEK[])")
        message = email.message_from_bytes(data[0][1], policy=email.policy.default)
        xml = next(p.get_content() for p in message.walk() if p.get_filename() == "daticert.xml")
        return parse_daticert(xml if isinstance(xml, bytes) else xml.encode()).identificativo
    finally:
        d.logout()


def test_a_receipts_row_carries_the_identificativo_from_its_daticert(gw, dovecot):
    """A receipt's Message-ID is the provider's own; the identificativo auditors search by is
    only in its daticert.xml, which the gateway reads on its own (the client sees nothing)."""
    _validity, inbox = direct_identities(gw, dovecot, "INBOX")
    receipts = sorted(uid for uid, h in inbox.items() if "X-RICEVUTA" in h)
    assert receipts, "the test mailbox holds receipts"
    expected = {uid: daticert_identificativo(dovecot, gw.mailbox, uid) for uid in receipts}
    c = gw.imap()
    c.login("alice", gw.credential("alice", "alice-password"))
    start = len(gw.audit_events(wait_for=1))
    try:
        c.select("INBOX", readonly=True)
        typ, data = c.uid("FETCH", ",".join(map(str, receipts)), "(FLAGS)")
        assert typ == "OK" and len(data) == len(receipts)  # exactly the replies asked for
    finally:
        c.logout()
    got = [r for r in rows(gw, since=start, wait_for=len(receipts) + 2) if r["action"] == "fetch"]
    assert {r["message"]["uid"]: r["message"]["pec_id"] for r in got} == {
        uid: f"<{ident}>" for uid, ident in expected.items()}
    for r in got:
        assert r["message"]["pec_kind"] == inbox[r["message"]["uid"]]["X-RICEVUTA"]
        assert r["message"]["message_id"] == inbox[r["message"]["uid"]]["MESSAGE-ID"]


def test_mbsync_pull_writes_one_body_fetch_row_per_message(gw, dovecot, pki, tmp_path):
    start = len(gw.audit_events())
    cfg = mbsync_config(tmp_path / "alice.rc", port=gw.ports["implicit"], user="alice",
                        password=gw.credential("alice", "alice-password"), ca=pki.ca_cert, local=tmp_path / "alice")
    run_mbsync(cfg, "--pull")
    got = rows(gw, since=start)
    bodies = [r for r in got if r["action"] == "fetch" and r["detail"]["content"] == "body"]
    per_folder: dict[str, set] = {}
    for r in bodies:
        assert r["person"] == "alice" and r["message"]["message_id"]
        per_folder.setdefault(r["folder"], set()).add(r["message"]["uid"])
    for folder, messages in gw.mailbox.folders.items():
        _, direct = direct_identities(gw, dovecot, folder.replace("Contabilità", "Contabilit&AOA-"))
        assert per_folder.get(folder, set()) == set(direct), folder
    assert len(bodies) == sum(len(m) for m in gw.mailbox.folders.values())  # one row per message


def test_fail_closed_when_the_store_goes_away_mid_session(gw, dovecot):
    """No client action goes unaudited: while the store cannot take rows, audited commands are
    refused; once it is back, everything that was done is in it."""
    c = gw.imap()
    c.login("alice", gw.credential("alice", "alice-password"))
    try:
        assert c.select("INBOX")[0] == "OK"
        table = "audit" if gw.backend.name == "sqlite" else f'"{gw.backend.schema}".audit'
        gw.backend.sql(f"ALTER TABLE {table} RENAME TO audit_away")  # the store breaks
        typ, _ = c.fetch("1", "(FLAGS)")  # its rows cannot be written: the writer finds out
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            typ, data = c.fetch("1", "(BODY.PEEK[])")
            if typ == "NO":
                break
            time.sleep(0.2)
        assert typ == "NO" and b"[UNAVAILABLE]" in data[0], data
        assert c.noop()[0] == "OK"  # what writes no row still works
        away = "audit_away" if gw.backend.name == "sqlite" else f'"{gw.backend.schema}".audit_away'
        gw.backend.sql(f"ALTER TABLE {away} RENAME TO audit")  # the store is back
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            typ, _ = c.fetch("1", "(FLAGS)")
            if typ == "OK":
                break
            time.sleep(0.3)
        assert typ == "OK"
    finally:
        c.logout()
    # the fixture's teardown checks that every row written to JSON lines is also in the store
