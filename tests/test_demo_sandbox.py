"""The demo's sandbox PEC provider (twisted's IMAP server over in-memory mailboxes), driven by
Python's ``imaplib`` over verified TLS and, where imaplib cannot say it, by raw transcripts.

The expected BODYSTRUCTURE and ENVELOPE of the PEC message below are what a real Dovecot 2.3
answered for the same bytes.
"""

from __future__ import annotations

import imaplib
import logging
import re
import socket
import ssl
import time

import pytest
from zope.interface.verify import verifyObject

from gateway.demo.sandbox import SandboxAccount, SandboxProvider
from gateway.demo.sandbox_store import Account
from tests.fixtures.pki import Pki, client_ssl_context

USER = "protocollo@pec.example.it"
PASSWORD = 'pa ss"wo\\rd'  # imaplib sends it as a quoted string with escapes
INBOX_UTF7 = b'"Contabilit&AOA-"'

SIMPLE = (b"From: Mario Rossi <mario.rossi@pec.example.it>\r\n"
          b"To: protocollo@pec.example.it\r\n"
          b"Subject: Richiesta documenti\r\n"
          b"Date: Mon, 01 Jan 2024 09:00:00 +0100\r\n"
          b"Message-ID: <simple-1@pec.example.it>\r\n\r\n"
          b"Buongiorno,\r\nsi richiedono i documenti.\r\n")

INNER = (b"Received: from mx by pec\r\n"
         b"Message-ID: <opec1.20240101@pec.example.it>\r\n"
         b"X-Riferimento-Message-ID: <orig-1@client>\r\n"
         b"From: Mario Rossi <mario.rossi@pec.example.it>\r\n"
         b"To: ufficio@pec.ente.it, \"Bianchi, Anna\" <anna@pec.ente.it>\r\n"
         b"Subject: =?iso-8859-1?q?Fattura_n=2E_12_=E0_saldo?=\r\n"
         b"Date: Mon, 01 Jan 2024 10:00:00 +0100\r\n"
         b"MIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"inner-b\"\r\n\r\n"
         b"--inner-b\r\n"
         b"Content-Type: text/plain; charset=iso-8859-1\r\n"
         b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
         b"In allegato la fattura, citt=E0.\r\n\r\n"
         b"--inner-b\r\n"
         b"Content-Type: application/pdf; name=\"Fattura_12.pdf\"\r\n"
         b"Content-Disposition: attachment; filename=\"Fattura_12.pdf\"\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n"
         b"JVBERi0xLjQKJcfsj6IK\r\n"
         b"--inner-b--\r\n")
DATICERT_B64 = (b"PD94bWwgdmVyc2lvbj0iMS4wIj8+PHBvc3RhY2VydCB0aXBvPSJwb3N0YS1jZXJ0aWZpY2F0YSIv\r\n"
                b"Pg==\r\n")
PEC = (b"Return-Path: <posta-certificata@pec.example.it>\r\n"
       b"Received: from a by b; Mon, 01 Jan 2024 10:00:01 +0100\r\n"
       b"Received: from c by d; Mon, 01 Jan 2024 10:00:00 +0100\r\n"
       b"Message-ID: <opec1.20240101@pec.example.it>\r\n"
       b"X-Riferimento-Message-ID: <orig-1@client>\r\n"
       b"X-Trasporto: posta-certificata\r\n"
       b"Date: Mon, 01 Jan 2024 10:00:01 +0100\r\n"
       b"Subject: POSTA CERTIFICATA: =?iso-8859-1?q?Fattura_n=2E_12_=E0_saldo?=\r\n"
       b"From: \"Per conto di: mario.rossi@pec.example.it\" <posta-certificata@pec.example.it>\r\n"
       b"Reply-To: mario.rossi@pec.example.it\r\n"
       b"To: ufficio@pec.ente.it\r\n"
       b"MIME-Version: 1.0\r\n"
       b"Content-Type: multipart/signed; protocol=\"application/x-pkcs7-signature\";\r\n"
       b"\tmicalg=\"sha-256\"; boundary=\"----outer\"\r\n\r\n"
       b"This is an S/MIME signed message\r\n\r\n"
       b"------outer\r\n"
       b"Content-Type: multipart/mixed; boundary=\"----mixed\"\r\n\r\n"
       b"------mixed\r\n"
       b"Content-Type: multipart/alternative; boundary=\"----alt\"\r\n\r\n"
       b"------alt\r\n"
       b"Content-Type: text/plain; charset=iso-8859-1\r\n"
       b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
       b"Messaggio di posta certificata\r\nIl giorno 01/01/2024 alle ore 10:00:00 (+0100)\r\n\r\n"
       b"------alt\r\n"
       b"Content-Type: text/html; charset=iso-8859-1\r\n"
       b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
       b"<html><body>Messaggio</body></html>\r\n\r\n"
       b"------alt--\r\n\r\n"
       b"------mixed\r\n"
       b"Content-Type: application/xml; name=\"daticert.xml\"\r\n"
       b"Content-Transfer-Encoding: base64\r\n"
       b"Content-Disposition: inline; filename=\"daticert.xml\"\r\n\r\n"
       + DATICERT_B64 + b"\r\n"
       b"------mixed\r\n"
       b"Content-Type: message/rfc822; name=\"postacert.eml\"\r\n"
       b"Content-Disposition: inline; filename=\"postacert.eml\"\r\n\r\n"
       + INNER +
       b"\r\n------mixed--\r\n\r\n"
       b"------outer\r\n"
       b"Content-Type: application/x-pkcs7-signature; name=\"smime.p7s\"\r\n"
       b"Content-Transfer-Encoding: base64\r\n"
       b"Content-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n"
       b"MIAGCSqGSIb3DQEHAqCAMIACAQExDzANBglghkgBZQMEAgEFADCABgkqhkiG9w0BBwEAAKCAMIIF\r\n\r\n"
       b"------outer--\r\n")

# Dovecot 2.3's answers for PEC (checked by feeding both servers the same bytes).
PEC_BODYSTRUCTURE = (
    b'(((("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 80 2 NIL NIL NIL NIL)'
    b'("text" "html" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 37 1 NIL NIL NIL NIL) '
    b'"alternative" ("boundary" "----alt") NIL NIL NIL)("application" "xml" ("name" "daticert.xml")'
    b' NIL NIL "base64" 84 NIL ("inline" ("filename" "daticert.xml")) NIL NIL)("message" "rfc822" '
    b'("name" "postacert.eml") NIL NIL "7bit" 724 ("Mon, 01 Jan 2024 10:00:00 +0100" '
    b'"=?iso-8859-1?q?Fattura_n=2E_12_=E0_saldo?=" (("Mario Rossi" NIL "mario.rossi" '
    b'"pec.example.it")) (("Mario Rossi" NIL "mario.rossi" "pec.example.it")) (("Mario Rossi" NIL '
    b'"mario.rossi" "pec.example.it")) ((NIL NIL "ufficio" "pec.ente.it")("Bianchi, Anna" NIL "anna" '
    b'"pec.ente.it")) NIL NIL NIL "<opec1.20240101@pec.example.it>") (("text" "plain" ("charset" '
    b'"iso-8859-1") NIL NIL "quoted-printable" 34 1 NIL NIL NIL NIL)("application" "pdf" ("name" '
    b'"Fattura_12.pdf") NIL NIL "base64" 20 NIL ("attachment" ("filename" "Fattura_12.pdf")) NIL NIL)'
    b' "mixed" ("boundary" "inner-b") NIL NIL NIL) 23 NIL ("inline" ("filename" "postacert.eml")) '
    b'NIL NIL) "mixed" ("boundary" "----mixed") NIL NIL NIL)("application" "x-pkcs7-signature" '
    b'("name" "smime.p7s") NIL NIL "base64" 78 NIL ("attachment" ("filename" "smime.p7s")) NIL NIL) '
    b'"signed" ("protocol" "application/x-pkcs7-signature" "micalg" "sha-256" "boundary" "----outer")'
    b' NIL NIL NIL)')
PEC_ENVELOPE = (
    b'("Mon, 01 Jan 2024 10:00:01 +0100" "POSTA CERTIFICATA: =?iso-8859-1?q?Fattura_n=2E_12_=E0_saldo?='
    b'" (("Per conto di: mario.rossi@pec.example.it" NIL "posta-certificata" "pec.example.it")) (('
    b'"Per conto di: mario.rossi@pec.example.it" NIL "posta-certificata" "pec.example.it")) ((NIL NIL '
    b'"mario.rossi" "pec.example.it")) ((NIL NIL "ufficio" "pec.ente.it")) NIL NIL NIL '
    b'"<opec1.20240101@pec.example.it>")')

CONTABILITA = SIMPLE.replace(b"Richiesta documenti", b"Bilancio 2023").replace(b"simple-1", b"cont-1")
LEGALE = SIMPLE.replace(b"Richiesta documenti", b"Diffida").replace(b"simple-1", b"legale-1")


def folders() -> dict[str, list[bytes]]:
    return {"INBOX": [SIMPLE, PEC], "Contabilità": [CONTABILITA], "Uffici/Legale": [LEGALE]}


@pytest.fixture
def provider(pki: Pki):
    sandbox = SandboxProvider({USER: SandboxAccount(PASSWORD, folders())}, pki.server_cert,
                              pki.server_key)
    sandbox.start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


def connect(provider: SandboxProvider, pki: Pki, *, login: bool = True) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL("localhost", provider.port, ssl_context=client_ssl_context(pki),
                             timeout=5)
    if login:
        imap.login(USER, PASSWORD)
    return imap


def fetch_items(imap: imaplib.IMAP4_SSL, *args) -> list:
    typ, data = imap.uid("FETCH", *args)
    assert typ == "OK", data
    return data


class Raw:
    """A line-level client for what imaplib cannot send (SASL-IR, literals, IDLE, pipelining)."""

    def __init__(self, provider: SandboxProvider, pki: Pki) -> None:
        sock = socket.create_connection(("localhost", provider.port), timeout=5)
        self.sock = client_ssl_context(pki).wrap_socket(sock, server_hostname="localhost")
        self.buffer = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def until(self, tag: bytes) -> list[bytes]:
        lines = [self.line()]
        while not lines[-1].startswith(tag + b" "):
            lines.append(self.line())
        return lines

    def login(self) -> None:
        self.send(b"L LOGIN %s {%d}\r\n" % (USER.encode(), len(PASSWORD)))
        assert self.line().startswith(b"+")
        self.send(PASSWORD.encode() + b"\r\n")
        assert self.until(b"L")[-1].startswith(b"L OK")

    def close(self) -> None:
        self.sock.close()


# -- connection, capabilities, login -------------------------------------------------------------

def test_greeting_and_capabilities(provider, pki):
    imap = connect(provider, pki, login=False)
    assert b"[CAPABILITY IMAP4rev1 " in imap.welcome
    assert {"IMAP4REV1", "AUTH=PLAIN", "SASL-IR", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE",
            "UNSELECT", "CHILDREN"} <= set(imap.capabilities)
    typ, data = imap.login(USER, PASSWORD)
    assert typ == "OK" and data[0].startswith(b"[CAPABILITY IMAP4rev1 ")
    typ, data = imap.capability()
    caps = data[0].split()
    assert b"IDLE" in caps and not any(c.startswith(b"AUTH=") for c in caps)
    imap.logout()


def test_wrong_password_and_unknown_user_refused(provider, pki):
    for user, password in ((USER, "wrong"), ("nobody@pec.example.it", PASSWORD), (USER, "")):
        imap = connect(provider, pki, login=False)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(user, password)
        imap.logout()


def test_authenticate_plain_with_and_without_initial_response(provider, pki):
    imap = connect(provider, pki, login=False)
    assert imap.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())[0] == "OK"
    imap.logout()

    import base64
    raw = Raw(provider, pki)
    good = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    raw.send(b"A AUTHENTICATE PLAIN " + good + b"\r\n")  # SASL-IR, as curl and mbsync send it
    assert raw.until(b"A")[-1].startswith(b"A OK [CAPABILITY IMAP4rev1")
    raw.close()
    raw = Raw(provider, pki)
    raw.send(b"B AUTHENTICATE PLAIN " + base64.b64encode(f"\0{USER}\0nope".encode()) + b"\r\n")
    assert raw.until(b"B")[-1].startswith(b"B NO [AUTHENTICATIONFAILED]")
    raw.send(b"C AUTHENTICATE PLAIN\r\n")
    assert raw.line() == b"+ "
    raw.send(b"*\r\n")
    assert raw.until(b"C")[-1].startswith(b"C BAD")
    raw.close()


def test_login_with_literals_and_pipelined_commands(provider, pki):
    raw = Raw(provider, pki)
    raw.send(b"a LOGIN {%d}\r\n" % len(USER))
    assert raw.line().startswith(b"+ ")
    raw.send(USER.encode() + b" {%d}\r\n" % len(PASSWORD))
    assert raw.line().startswith(b"+ ")
    raw.send(PASSWORD.encode() + b"\r\n")
    assert raw.until(b"a")[-1].startswith(b"a OK")
    raw.send(b"b SELECT INBOX\r\nc UID FETCH 1:* (UID FLAGS)\r\nd NOOP\r\ne UID SEARCH ALL\r\n")
    lines = raw.until(b"e")
    tagged = [line.split()[0] for line in lines if not line.startswith(b"*")]
    assert tagged == [b"b", b"c", b"d", b"e"]
    assert b"* 1 FETCH (UID 1 FLAGS ())" in lines and b"* SEARCH 1 2" in lines
    raw.send(b"f LOGOUT\r\n")
    assert raw.until(b"f")[0].startswith(b"* BYE")
    raw.close()


# -- folders ----------------------------------------------------------------------------------------

def test_list_shows_folders_in_modified_utf7(provider, pki):
    imap = connect(provider, pki)
    typ, data = imap.list()
    assert typ == "OK"
    assert data == [b'(\\HasNoChildren) "/" "INBOX"',
                    b'(\\HasNoChildren) "/" ' + INBOX_UTF7,
                    b'(\\HasChildren) "/" "Uffici"',
                    b'(\\HasNoChildren) "/" "Uffici/Legale"']
    assert imap.list('""', '""')[1] == [b'(\\Noselect) "/" ""']
    assert imap.list('""', "Uffici/%")[1] == [b'(\\HasNoChildren) "/" "Uffici/Legale"']
    assert imap.list('""', "inbox")[1] == [b'(\\HasNoChildren) "/" "INBOX"']
    assert len(imap.lsub()[1]) == 4
    assert imap.namespace()[1] == [b'(("" "/")) NIL NIL']
    imap.logout()


def test_create_rename_delete_subscribe_status(provider, pki):
    imap = connect(provider, pki)
    assert imap.create("Uffici/Tributi")[0] == "OK"
    assert imap.create("Uffici/Tributi")[0] == "NO"
    assert imap.rename("Uffici/Tributi", '"Archivio/Tributi 2024"')[0] == "OK"
    assert imap.append('"Archivio/Tributi 2024"', None, None, SIMPLE)[0] == "OK"
    typ, data = imap.status('"Archivio/Tributi 2024"', "(MESSAGES UIDNEXT UNSEEN UIDVALIDITY)")
    assert typ == "OK" and re.fullmatch(
        rb'"Archivio/Tributi 2024" \(MESSAGES 1 UIDNEXT 2 UNSEEN 1 UIDVALIDITY \d+\)', data[0])
    assert imap.status(INBOX_UTF7.decode(), "(MESSAGES)")[1] == [INBOX_UTF7 + b" (MESSAGES 1)"]
    names = [line.rsplit(b'"/" ', 1)[1] for line in imap.list()[1]]
    assert b'"Archivio"' in names and b'"Uffici/Tributi"' not in names
    assert imap.delete("Archivio")[0] == "NO"  # has children
    assert imap.unsubscribe('"Archivio/Tributi 2024"')[0] == "OK"
    assert b'"Archivio/Tributi 2024"' not in b" ".join(imap.lsub()[1])
    assert imap.delete('"Archivio/Tributi 2024"')[0] == "OK"
    assert imap.delete("INBOX")[0] == "NO"
    assert imap.select("Nowhere")[0] == "NO"
    typ, data = imap.append("Nowhere", None, None, SIMPLE)
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    imap.logout()


# -- SELECT, FETCH, STORE ----------------------------------------------------------------------------

def test_select_reports_uid_state_and_flags(provider, pki):
    imap = connect(provider, pki)
    assert imap.select("INBOX") == ("OK", [b"2"])
    uidvalidity = imap.response("UIDVALIDITY")[1][0]
    assert int(uidvalidity) > 0
    assert imap.response("UIDNEXT")[1] == [b"3"]
    assert imap.response("PERMANENTFLAGS")[1] == [b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)"]
    assert imap.response("FLAGS")[1] == [b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft)"]
    assert imap.response("UNSEEN")[1] == [b"1"]
    imap.logout()
    again = connect(provider, pki)
    again.select("INBOX")
    assert again.response("UIDVALIDITY")[1][0] == uidvalidity  # fixed per folder
    again.select(INBOX_UTF7.decode())
    assert again.response("UIDVALIDITY")[1][0] != uidvalidity
    again.logout()


def test_uid_fetch_returns_the_stored_bytes(provider, pki):
    imap = connect(provider, pki)
    for folder, stored in (("INBOX", [SIMPLE, PEC]), (INBOX_UTF7.decode(), [CONTABILITA]),
                           ("Uffici/Legale", [LEGALE])):
        imap.select(folder)
        data = fetch_items(imap, "1:*", "(FLAGS BODY.PEEK[])")
        bodies = [item[1] for item in data if isinstance(item, tuple)]
        assert bodies == stored
        assert all(b"FLAGS ()" in item[0] for item in data if isinstance(item, tuple))
    imap.logout()


def test_fetch_envelope_bodystructure_and_sections(provider, pki):
    imap = connect(provider, pki)
    imap.select("INBOX")
    data = fetch_items(imap, "2", "(BODYSTRUCTURE ENVELOPE RFC822.SIZE INTERNALDATE)")
    line = data[0] if isinstance(data[0], bytes) else data[0][0]
    assert b"BODYSTRUCTURE " + PEC_BODYSTRUCTURE in line
    assert b"ENVELOPE " + PEC_ENVELOPE in line
    assert b"RFC822.SIZE %d" % len(PEC) in line
    assert b'INTERNALDATE "01-Jan-2024 10:00:01 +0100"' in line

    def section(spec: str) -> bytes:
        items = fetch_items(imap, "2", f"(BODY.PEEK[{spec}])")
        return items[0][1]

    assert section("1.2") == DATICERT_B64
    assert section("1.3") == INNER
    assert section("1.3.1") == b"In allegato la fattura, citt=E0.\r\n"
    assert section("1.3.HEADER.FIELDS (SUBJECT)") == \
        b"Subject: =?iso-8859-1?q?Fattura_n=2E_12_=E0_saldo?=\r\n\r\n"
    assert section("HEADER.FIELDS (RECEIVED X-TRASPORTO)") == (
        b"Received: from a by b; Mon, 01 Jan 2024 10:00:01 +0100\r\n"
        b"Received: from c by d; Mon, 01 Jan 2024 10:00:00 +0100\r\n"
        b"X-Trasporto: posta-certificata\r\n\r\n")
    assert section("1.2.MIME").startswith(b'Content-Type: application/xml; name="daticert.xml"\r\n')
    assert section("HEADER") + section("TEXT") == PEC
    assert section("9") == b""
    items = fetch_items(imap, "2", "(BODY.PEEK[1.2]<5.10>)")
    assert items[0][0].endswith(b"BODY[1.2]<5> {10}") and items[0][1] == DATICERT_B64[5:15]
    assert b"\\Seen" not in fetch_items(imap, "2", "(FLAGS)")[0]
    imap.logout()


def test_body_fetch_sets_seen_but_peek_does_not(provider, pki):
    imap = connect(provider, pki)
    imap.select("INBOX")
    fetch_items(imap, "1", "(BODY.PEEK[] BODY.PEEK[HEADER])")
    assert fetch_items(imap, "1", "(FLAGS)") == [b"1 (FLAGS () UID 1)"]
    data = fetch_items(imap, "1", "(BODY[])")
    assert data[0][1] == SIMPLE and b"FLAGS (\\Seen)" in data[1]
    imap.select("INBOX", readonly=True)  # EXAMINE: no implicit \Seen, no STORE
    fetch_items(imap, "2", "(BODY[TEXT])")
    assert fetch_items(imap, "2", "(FLAGS)") == [b"2 (FLAGS () UID 2)"]
    typ, data = imap.uid("STORE", "2", "+FLAGS", "(\\Seen)")
    assert typ == "NO" and b"READ-ONLY" in data[0]
    imap.logout()


def test_store_flags_persist_across_connections(provider, pki):
    imap = connect(provider, pki)
    imap.select("INBOX")
    typ, data = imap.uid("STORE", "1", "+FLAGS", "(\\Seen $PecLetto)")
    assert typ == "OK" and data == [b"1 (FLAGS (\\Seen $PecLetto) UID 1)"]
    assert imap.store("2", "+FLAGS.SILENT", "(\\Flagged)") == ("OK", [None])
    assert imap.store("2", "-FLAGS", "(\\Flagged)")[1] == [b"2 (FLAGS ())"]
    assert imap.store("2", "FLAGS", "(\\Answered \\Draft)")[1] == [b"2 (FLAGS (\\Answered \\Draft))"]
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        imap.store("1", "BOGUS", "(\\Seen)")
    imap.logout()

    again = connect(provider, pki)
    again.select("INBOX")
    assert fetch_items(again, "1:*", "(FLAGS)") == [b"1 (FLAGS (\\Seen $PecLetto) UID 1)",
                                                      b"2 (FLAGS (\\Answered \\Draft) UID 2)"]
    assert again.response("FLAGS")[1] == [b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft $PecLetto)"]
    again.logout()
    assert provider.snapshot(USER, "INBOX")[0][:2] == (1, ["\\Seen", "$PecLetto"])


# -- APPEND, COPY, MOVE, EXPUNGE ----------------------------------------------------------------------

def test_append_then_fetch(provider, pki):
    imap = connect(provider, pki)
    imap.select("INBOX")
    uidvalidity = imap.response("UIDVALIDITY")[1][0]
    message = SIMPLE.replace(b"simple-1", b"appended-1")
    typ, data = imap.append("INBOX", "(\\Seen $Inviata)", '"05-Mar-2024 08:30:00 +0100"', message)
    assert typ == "OK" and data == [b"[APPENDUID " + uidvalidity + b" 3] APPEND completed"]
    assert imap.response("EXISTS")[1][-1] == b"3"  # the selected INBOX grew
    data = fetch_items(imap, "3", "(FLAGS INTERNALDATE BODY.PEEK[])")
    assert data[0][1] == message
    assert b'INTERNALDATE "05-Mar-2024 08:30:00 +0100"' in data[0][0]
    assert b"FLAGS (\\Seen $Inviata)" in data[0][0]
    # APPEND to another folder while INBOX is selected, without flags or date (twisted fails those)
    assert imap.append(INBOX_UTF7.decode(), None, None, message)[0] == "OK"
    assert imap.status(INBOX_UTF7.decode(), "(MESSAGES)")[1] == [INBOX_UTF7 + b" (MESSAGES 2)"]
    imap.logout()


def test_copy_and_move(provider, pki):
    imap = connect(provider, pki)
    imap.select("INBOX")
    imap.uid("STORE", "2", "+FLAGS", "(\\Flagged)")
    typ, data = imap._simple_command("UID", "COPY", "1:2", "Uffici/Legale")  # keeps the tagged text
    assert typ == "OK" and re.fullmatch(rb"\[COPYUID \d+ 1:2 2:3\] COPY completed", data[0])
    imap.select("Uffici/Legale")
    data = fetch_items(imap, "2:3", "(FLAGS BODY.PEEK[])")
    assert [item[1] for item in data if isinstance(item, tuple)] == [SIMPLE, PEC]
    assert b"\\Flagged" in data[2][0]

    typ, data = imap._simple_command("UID", "MOVE", "1", INBOX_UTF7.decode())
    assert typ == "OK"
    assert re.fullmatch(rb"\d+ 1 2", imap.response("COPYUID")[1][-1])
    assert imap.response("EXPUNGE")[1] == [b"1"]
    assert imap.uid("SEARCH", "ALL")[1] == [b"2 3"]
    assert imap._simple_command("UID", "COPY", "2", "Nowhere")[1][0].startswith(b"[TRYCREATE]")
    imap.logout()
    assert [raw for _, _, raw in provider.snapshot(USER, "Contabilità")] == [CONTABILITA, LEGALE]


def test_expunge_keeps_the_other_uids(provider, pki):
    imap = connect(provider, pki)
    imap.select("INBOX")
    imap.append("INBOX", None, None, SIMPLE)
    imap.uid("STORE", "1,3", "+FLAGS", "(\\Deleted)")
    typ, data = imap._simple_command("UID", "EXPUNGE", "3")  # UIDPLUS: only UID 3
    assert typ == "OK" and imap.response("EXPUNGE")[1] == [b"3"]
    assert imap.expunge() == ("OK", [b"1"])
    assert fetch_items(imap, "1:*", "(UID)") == [b"1 (UID 2)"]
    imap.select("INBOX")
    assert imap.response("UIDNEXT")[1] == [b"4"]  # UIDs are never reused
    imap.logout()


# -- SEARCH --------------------------------------------------------------------------------------------

def test_search(provider, pki):
    imap = connect(provider, pki)
    imap.select("INBOX")
    imap.uid("STORE", "2", "+FLAGS", "(\\Seen $Protocollata)")

    def search(*criteria: str) -> bytes:
        typ, data = imap.uid("SEARCH", *criteria)
        assert typ == "OK", data
        return data[0]

    assert search("ALL") == b"1 2"
    assert search("UNSEEN") == b"1"
    assert search("SEEN", "KEYWORD", "$Protocollata") == b"2"
    assert search("SUBJECT", '"fattura n. 12"') == b"2"  # RFC 2047 subject, decoded
    assert search("FROM", "mario.rossi") == b"1 2"
    assert search("HEADER", "X-Trasporto", "posta-certificata") == b"2"
    assert search("OR", "UNSEEN", "KEYWORD", "$Protocollata") == b"1 2"
    assert search("NOT", "UID", "2") == b"1"
    assert search("UID", "5:*") == b"2"
    assert search("SINCE", "1-Jan-2024", "BEFORE", "2-Jan-2024") == b"1 2"
    assert search("BODY", "documenti") == b"1"
    assert search("TEXT", "daticert.xml") == b"2"
    assert search("LARGER", "1000") == b"2"
    assert search("DELETED") == b""
    assert imap.search(None, "2")[1] == [b"2"]
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        imap.uid("SEARCH", "FROBNICATE")
    imap.logout()


def test_search_with_a_utf8_literal(provider, pki):
    raw = Raw(provider, pki)
    raw.login()
    raw.send(b"s SELECT INBOX\r\n")
    raw.until(b"s")
    needle = "à saldo".encode()
    raw.send(b"u UID SEARCH CHARSET UTF-8 SUBJECT {%d}\r\n" % len(needle))
    assert raw.line().startswith(b"+ ")
    raw.send(needle + b" FROM {5}\r\n")
    assert raw.line().startswith(b"+ ")
    raw.send(b"mario\r\n")
    assert raw.until(b"u") == [b"* SEARCH 2", b"u OK SEARCH completed"]
    raw.send(b"v SEARCH CHARSET KOI8-R ALL\r\n")
    assert raw.until(b"v")[-1].startswith(b"v NO [BADCHARSET")
    raw.close()


# -- several sessions ----------------------------------------------------------------------------------

def test_idle_hears_other_sessions(provider, pki):
    idler = Raw(provider, pki)
    idler.login()
    idler.send(b"s SELECT INBOX\r\n")
    idler.until(b"s")
    idler.send(b"i IDLE\r\n")
    assert idler.line() == b"+ idling"

    other = connect(provider, pki)
    other.select("INBOX")
    other.append("INBOX", None, None, SIMPLE)
    assert idler.line() == b"* 3 EXISTS"
    other.store("1", "+FLAGS", "(\\Flagged \\Deleted)")
    assert idler.line() == b"* 1 FETCH (FLAGS (\\Flagged \\Deleted))"
    other.expunge()
    assert idler.line() == b"* 1 EXPUNGE"
    idler.send(b"DONE\r\n")
    assert idler.line() == b"i OK IDLE terminated"
    idler.send(b"f UID FETCH 1:* (UID)\r\n")
    assert idler.until(b"f")[:2] == [b"* 1 FETCH (UID 2)", b"* 2 FETCH (UID 3)"]
    other.logout()
    idler.close()


def test_expunge_waits_for_a_command_that_may_announce_it(provider, pki):
    """"An EXPUNGE response MUST NOT be sent when no command is in progress, nor while responding
    to a FETCH, STORE, or SEARCH command" (RFC 3501, 7.4.1): sequence numbers stay put until NOOP."""
    watcher = connect(provider, pki)
    watcher.select("INBOX")
    other = connect(provider, pki)
    other.select("INBOX")
    other.store("1", "+FLAGS", "(\\Deleted)")
    other.expunge()
    data = watcher.fetch("1:2", "(UID)")[1]
    assert data[0] == b"1 (FLAGS (\\Deleted))"  # the other session's STORE, pushed as it happened
    assert data[1:] == [b"1 (UID 1)", b"2 (UID 2)"]  # the expunged message keeps its number
    assert watcher.search(None, "ALL")[1] == [b"1 2"]
    watcher.noop()
    assert watcher.response("EXPUNGE")[1] == [b"1"]
    assert watcher.fetch("1:*", "(UID)")[1] == [b"1 (UID 2)"]
    watcher.logout()
    other.logout()


def test_demo_sample_mailbox_round_trips(pki, pec_gestore):
    from gateway.demo.pec_samples import sample_mailbox

    seeded = sample_mailbox(USER, gestore=pec_gestore)
    with SandboxProvider({USER: SandboxAccount(PASSWORD, seeded)}, pki.server_cert,
                         pki.server_key) as sandbox:
        imap = connect(sandbox, pki)
        listed = {line.rsplit(b'"/" ', 1)[1].strip(b'"').decode("imap4-utf-7")
                  for line in imap.list()[1]}
        assert set(seeded) <= listed
        for name, messages in seeded.items():
            assert imap.select('"%s"' % name.encode("imap4-utf-7").decode())[0] == "OK"
            data = fetch_items(imap, "1:*", "(BODY.PEEK[] BODYSTRUCTURE ENVELOPE)")
            assert [item[1] for item in data if isinstance(item, tuple)] == messages
        imap.logout()


# -- lifecycle -------------------------------------------------------------------------------------------

def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_two_providers_in_one_process_start_stop_and_restart(pki):
    first = SandboxProvider({"a@pec.example.it": SandboxAccount("pa", {"INBOX": [SIMPLE]})},
                            pki.server_cert, pki.server_key)
    second = SandboxProvider({"b@pec.example.it": SandboxAccount("pb", {"INBOX": []})},
                             pki.server_cert, pki.server_key)
    ports = first.start(), second.start()
    assert ports[0] != ports[1] and (first.port, second.port) == ports
    a = imaplib.IMAP4_SSL("localhost", ports[0], ssl_context=client_ssl_context(pki), timeout=5)
    b = imaplib.IMAP4_SSL("localhost", ports[1], ssl_context=client_ssl_context(pki), timeout=5)
    a.login("a@pec.example.it", "pa")
    b.login("b@pec.example.it", "pb")
    assert a.select("INBOX")[1] == [b"1"] and b.select("INBOX")[1] == [b"0"]

    first.stop()
    assert refused(ports[0])  # the listening socket is gone...
    with pytest.raises((imaplib.IMAP4.abort, OSError)):  # ...and so are its open sessions
        a.noop()
    assert b.noop()[0] == "OK"
    first.stop()  # idempotent
    second.stop()
    assert refused(ports[1])

    port = first.start()  # the same store, served again
    again = imaplib.IMAP4_SSL("localhost", port, ssl_context=client_ssl_context(pki), timeout=5)
    again.login("a@pec.example.it", "pa")
    assert again.select("INBOX")[1] == [b"1"]
    again.logout()
    first.stop()


def test_start_is_fast_and_tls_is_verified(provider, pki):
    started = time.monotonic()
    other = SandboxProvider({USER: SandboxAccount(PASSWORD, {"INBOX": []})}, pki.server_cert,
                            pki.server_key)
    other.start()
    other.stop()
    assert time.monotonic() - started < 2
    strict = ssl.create_default_context()  # the system trust store does not know the test CA
    with pytest.raises(ssl.SSLError):
        imaplib.IMAP4_SSL("localhost", provider.port, ssl_context=strict, timeout=5)


def test_account_without_inbox_is_refused(pki):
    with pytest.raises(ValueError, match="INBOX"):
        SandboxProvider({USER: SandboxAccount("x", {"Archivio": []})}, pki.server_cert,
                        pki.server_key)


def test_nothing_secret_is_logged(provider, pki, caplog):
    caplog.set_level(logging.DEBUG)
    assert PASSWORD not in repr(SandboxAccount(PASSWORD, {"INBOX": []}))
    imap = connect(provider, pki, login=False)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login(USER, PASSWORD + "x")
    imap.logout()
    connect(provider, pki).logout()
    provider.stop()
    provider.start()
    assert caplog.records and all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_store_objects_provide_twisted_interfaces():
    from twisted.mail import imap4

    account = Account(folders())
    assert verifyObject(imap4.IAccount, account) and verifyObject(imap4.INamespacePresenter, account)
    view = account.select("inbox")
    for interface in (imap4.IMailbox, imap4.ISearchableMailbox, imap4.ICloseableMailbox,
                      imap4.IMessageCopier):
        assert verifyObject(interface, view)
    message = view.messages[1]
    assert verifyObject(imap4.IMessage, message) and verifyObject(imap4.IMessageFile, message)
    assert verifyObject(imap4.IMessagePart, message.getSubPart(0))
    assert account.listMailboxes("", "*")[1][0] == "Contabilità"
