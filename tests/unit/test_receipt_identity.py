"""A receipt's rows carry the identificativo from its own daticert.xml (receipt_identity.py).

The BODYSTRUCTUREs are Dovecot 2.3's own (tests/unit/test_bodystructure.py): a ricevuta di
accettazione built by gateway.demo.pec_samples, and a forged receipt whose only daticert sits
inside a forwarded message.  The daticert is shaped like PEC.md's example.
"""

import base64

from gateway.imap_proxy import actions as act
from gateway.imap_proxy.receipt_identity import MAX_PART_OCTETS
from tests.unit.test_audit_trail import RICEVUTA, identity, mapped
from tests.unit.test_bodystructure import ACCETTAZIONE, FORGED
from tests.unit.test_enforce_table import CAPS
from tests.unit.transcript import audits, logged_in, sent

IDENTIFICATIVO = "opec99901.20250214104215.12345.678.1.23@pec.example.it"
DATICERT = (f'<?xml version="1.0" encoding="UTF-8"?>\n<postacert tipo="accettazione" errore="nessuno">'
            f'<intestazione><mittente>a@pec.example.it</mittente><destinatari tipo="certificato">b@pec.example.it'
            f'</destinatari><risposte>a@pec.example.it</risposte></intestazione><dati><gestore-emittente>G'
            f'</gestore-emittente><data zona="+0100"><giorno>14/02/2025</giorno><ora>10:42:17</ora></data>'
            f'<identificativo>{IDENTIFICATIVO}</identificativo><msgid>&lt;m@gw&gt;</msgid></dati></postacert>').encode()
BUSTA = b"Message-ID: <b31@x>\r\nX-Trasporto: posta-certificata\r\n\r\n"


def structure(seq: int, uid: int, body: bytes) -> bytes:
    return b"* %d FETCH (UID %d BODYSTRUCTURE %s)\r\n" % (seq, uid, body)


def part(seq: int, uid: int, octets: bytes) -> bytes:
    encoded = base64.encodebytes(octets).replace(b"\n", b"\r\n")
    return b"* %d FETCH (UID %d BODY[1.2]<0> {%d}\r\n%s)\r\n" % (seq, uid, len(encoded), encoded)


def identified(prime: bytes):
    """Lavoro selected and its messages identified; returns the session and what it sent next."""
    s = logged_in(upstream_caps=CAPS)
    s.client_data(b"s1 SELECT Lavoro\r\n")
    s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n")
    s.upstream_data(mapped(31, 35, 39) + b"PECGW.s1 OK done\r\n")
    out = s.upstream_data(prime + b"PECGW.i2 OK done\r\n")
    return s, sent(out, act.SendToUpstream)


def flags_rows(s, uids: bytes, replies: bytes):
    s.client_data(b"f1 UID FETCH %s (FLAGS)\r\n" % uids)
    return audits(s.upstream_data(replies + b"f1 OK done\r\n"))


def test_a_receipts_rows_carry_the_identificativo_of_its_daticert():
    s, asked = identified(identity(1, 31, BUSTA) + identity(2, 35, RICEVUTA))
    assert asked == b"PECGW.b3 FETCH 2 (UID BODYSTRUCTURE)\r\n"  # only the receipt, by number
    out = s.upstream_data(structure(2, 35, ACCETTAZIONE) + b"PECGW.b3 OK done\r\n")
    assert sent(out) == b""  # the client sees none of the gateway's questions
    # just that part, and never more than a daticert can be
    assert sent(out, act.SendToUpstream) == b"PECGW.p4 FETCH 2 (UID BODY.PEEK[1.2]<0.%d>)\r\n" % MAX_PART_OCTETS
    assert s.reading_paused
    out = s.upstream_data(part(2, 35, DATICERT) + b"PECGW.p4 OK done\r\n")
    assert sent(out) == b"" and not s.reading_paused
    busta, receipt = flags_rows(s, b"31,35", b"* 1 FETCH (UID 31 FLAGS ())\r\n* 2 FETCH (UID 35 FLAGS ())\r\n")
    assert (busta.message.pec_kind, busta.message.pec_id) == ("posta-certificata", "<b31@x>")
    assert (receipt.message.pec_kind, receipt.message.message_id, receipt.message.pec_id) == (
        "avvenuta-consegna", "<r1@pec.example.it>", f"<{IDENTIFICATIVO}>")


def test_a_refused_part_fetch_lets_the_rows_go_without_it():
    s, _ = identified(identity(2, 35, RICEVUTA))
    s.upstream_data(structure(2, 35, ACCETTAZIONE) + b"PECGW.b3 OK done\r\n")
    out = s.upstream_data(b"PECGW.p4 NO [UNAVAILABLE] later\r\n")
    assert sent(out, act.SendToUpstream) == b"" and not s.reading_paused
    (receipt,) = flags_rows(s, b"35", b"* 2 FETCH (UID 35 FLAGS ())\r\n")
    assert receipt.message.message_id == "<r1@pec.example.it>" and receipt.message.pec_id is None


def test_a_daticert_hidden_in_postacert_eml_is_never_fetched():
    """A forged receipt carries a daticert only inside a forwarded message: it names nothing."""
    s, _ = identified(identity(2, 35, RICEVUTA))
    out = s.upstream_data(structure(2, 35, FORGED) + b"PECGW.b3 OK done\r\n")
    assert sent(out) == b"" and sent(out, act.SendToUpstream) == b"" and not s.reading_paused
    (receipt,) = flags_rows(s, b"35", b"* 2 FETCH (UID 35 FLAGS ())\r\n")
    assert receipt.message.pec_id is None


def test_a_hostile_daticert_is_refused_and_never_shown():
    s, _ = identified(identity(2, 35, RICEVUTA))
    s.upstream_data(structure(2, 35, ACCETTAZIONE) + b"PECGW.b3 OK done\r\n")
    xxe = (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<postacert tipo="accettazione"><dati><identificativo>&x;</identificativo></dati></postacert>')
    out = s.upstream_data(part(2, 35, xxe) + b"PECGW.p4 OK done\r\n")
    assert sent(out) == b"" and not s.reading_paused
    (receipt,) = flags_rows(s, b"35", b"* 2 FETCH (UID 35 FLAGS ())\r\n")
    assert receipt.message.pec_id is None


def test_nil_answers_to_the_gateways_questions_are_never_shown():
    """A message expunged by another session between the gateway's questions: the provider
    answers NIL (Dovecot: with OK [EXPUNGEISSUED]); still the gateway's, never the client's."""
    s, _ = identified(identity(2, 35, RICEVUTA))
    out = s.upstream_data(b"* 2 FETCH (UID 35 BODYSTRUCTURE NIL)\r\nPECGW.b3 OK done\r\n")
    assert sent(out) == b"" and not s.reading_paused
    s, _ = identified(identity(2, 35, RICEVUTA))
    s.upstream_data(structure(2, 35, ACCETTAZIONE) + b"PECGW.b3 OK done\r\n")
    out = s.upstream_data(b"* 2 FETCH (UID 35 BODY[1.2]<0> NIL)\r\nPECGW.p4 OK [EXPUNGEISSUED] done\r\n")
    assert sent(out) == b"" and not s.reading_paused


def test_a_structure_too_deep_to_read_is_still_the_gateways():
    """The sender of a PEC chooses its MIME structure; one nested past the tokeniser's limit in
    the answer to the gateway's BODYSTRUCTURE question is not passed on to the client."""
    deep = b"(" * 100 + b'"text" "plain" NIL NIL NIL "7bit" 1 1' + b' "mixed")' * 100
    s, _ = identified(identity(2, 35, RICEVUTA))
    out = s.upstream_data(b"* 2 FETCH (UID 35 BODYSTRUCTURE " + deep + b")\r\nPECGW.b3 OK done\r\n")
    assert sent(out) == b"" and not s.reading_paused
