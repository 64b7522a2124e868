"""The daticert of a PEC message found and read through a real Dovecot, as the gateway will.

Sample messages (and hand-built adversarial ones) are APPENDed to the session Dovecot; for each
the test fetches BODYSTRUCTURE, locates the top-level ``daticert.xml`` with
:mod:`gateway.imap_proxy.bodystructure`, fetches only that section with ``BODY.PEEK[...]`` and
parses it with :mod:`gateway.pec.daticert`.  Dovecot's own BODYSTRUCTURE output is the input, so
the shapes assumed by the locator (extension data, literals, message/rfc822 nesting) are real.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets

import pytest

from gateway.demo.pec_samples import (ROME, Invio, avviso_mancata_consegna, busta_anomalia,
                                      busta_trasporto, daticert_xml, messaggio_ordinario,
                                      ricevuta_accettazione, ricevuta_avvenuta_consegna)
from gateway.imap_proxy.bodystructure import bodystructure_in_fetch, find_daticert
from gateway.imap_proxy.fetch_response import read_fetch
from gateway.imap_proxy.framing import Frame, Framer
from gateway.pec.daticert import parse_daticert

pytestmark = pytest.mark.dovecot

ADDRESS = "studio.rossi@pec.example.it"
COMUNE = "protocollo@pec.comune-esempio.example.it"


def invio(oggetto: str, when: tuple[int, ...], **kw) -> Invio:
    return Invio(ADDRESS, (COMUNE, "ufficio.tributi@pec.comune-esempio.example.it"), oggetto,
                 dt.datetime(*when, tzinfo=ROME), "Testo della comunicazione.\n",
                 seed="bodystructure", **kw)


ISTANZA = invio("Istanza di accesso agli atti", (2025, 6, 1, 0, 15, 0))
INOLTRATA = invio("Ricevuta inoltrata", (2025, 1, 2, 9, 0, 0))


# -- hand-built messages: MIME by hand so the structure is exactly what the test says ---------

def header_lines(fields: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}".encode("utf-8") + b"\r\n" for k, v in fields)


def entity(headers: list[tuple[str, str]], body: bytes) -> bytes:
    return header_lines(headers) + b"\r\n" + body


def multipart(subtype: str, parts: list[bytes], params: str = "") -> bytes:
    boundary = f"=_{subtype}_{secrets.token_hex(8)}"
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    return entity([("Content-Type", f'multipart/{subtype};{params} boundary="{boundary}"')],
                  body + b"--" + boundary.encode() + b"--\r\n")


def text(value: str) -> bytes:
    return entity([("Content-Type", "text/plain; charset=utf-8")], value.encode() + b"\r\n")


def attachment(data: bytes, ctype: str, disposition: str = "") -> bytes:
    headers = [("Content-Type", ctype), ("Content-Transfer-Encoding", "base64")]
    headers += [("Content-Disposition", disposition)] if disposition else []
    return entity(headers, base64.encodebytes(data).replace(b"\n", b"\r\n"))


def daticert_part(tipo: str, inv: Invio, **kw) -> bytes:
    xml = daticert_xml(tipo, inv, emesso=inv.inviato + dt.timedelta(seconds=5),
                       gestore_emittente="Gestore Destinatario Esempio S.p.A.", **kw)
    return attachment(xml, 'application/xml; name="daticert.xml"',
                      'inline; filename="daticert.xml"')


def postacert(message: bytes) -> bytes:
    return entity([("Content-Type", 'message/rfc822; name="postacert.eml"'),
                   ("Content-Disposition", 'inline; filename="postacert.eml"')], message)


def top(headers: list[tuple[str, str]], body: bytes) -> bytes:
    """A whole message: ``headers`` prepended to an entity that brings its own Content-Type."""
    return header_lines(headers + [("MIME-Version", "1.0")]) + body


def signed(mixed_parts: list[bytes], headers: list[tuple[str, str]]) -> bytes:
    """A provider-shaped envelope; the signature is a placeholder (Dovecot does not verify)."""
    p7s = attachment(b"placeholder, not a CMS signature", 'application/x-pkcs7-signature; '
                     'name="smime.p7s"', 'attachment; filename="smime.p7s"')
    return top(headers, multipart("signed", [multipart("mixed", mixed_parts), p7s],
                                  ' protocol="application/x-pkcs7-signature"; micalg="sha-256";'))


def consegna_of_a_forwarded_receipt(gestore) -> bytes:
    """Completa delivery receipt of a message that itself carried someone's accettazione: the
    inner daticert belongs to another send and must not be the one found."""
    inner = multipart("mixed", [text("Inoltro la ricevuta."),
                                postacert(ricevuta_accettazione(ISTANZA, gestore))])
    original = top([("From", ADDRESS), ("To", COMUNE), ("Subject", INOLTRATA.oggetto),
                    ("Message-ID", f"<{INOLTRATA.identificativo}>")], inner)
    return signed([text("Ricevuta di avvenuta consegna"),
                   daticert_part("avvenuta-consegna", INOLTRATA, consegna=COMUNE),
                   postacert(original)],
                  [("From", "posta-certificata@pec.comune-esempio.example.it"), ("To", ADDRESS),
                   ("Subject", "CONSEGNA: " + INOLTRATA.oggetto),
                   ("X-Ricevuta", "avvenuta-consegna"),
                   ("X-Riferimento-Message-ID", INOLTRATA.msgid)])


def forged_receipt(gestore) -> bytes:
    """Plain mail with spoofed X-Ricevuta whose only daticert sits inside message/rfc822."""
    return top([("From", "truffa@example.com"), ("To", ADDRESS),
                ("Subject", "ACCETTAZIONE: " + ISTANZA.oggetto), ("X-Ricevuta", "accettazione")],
               multipart("mixed", [text("Vedi allegato."),
                                   postacert(ricevuta_accettazione(ISTANZA, gestore))]))


def unsigned_test_box_receipt() -> bytes:
    """Some providers' test boxes: multipart/mixed with daticert, no signature.  The daticert
    is named only by Content-Disposition, and a sibling has an 8-bit name (a literal)."""
    xml = daticert_xml("accettazione", ISTANZA, emesso=ISTANZA.inviato,
                       gestore_emittente="Gestore Esempio S.p.A.")
    return top([("From", "posta-certificata@pec.example.it"), ("To", ADDRESS),
                ("Subject", "ACCETTAZIONE: " + ISTANZA.oggetto), ("X-Ricevuta", "accettazione")],
               multipart("mixed", [text("Ricevuta di accettazione (prova)"),
                                   attachment(b"%PDF-1.4\n", 'application/pdf; name="ricevuta è.pdf"'),
                                   attachment(xml, "application/xml",
                                              'inline; filename="DatiCert.XML"')]))


# -- the IMAP side ----------------------------------------------------------------------------

def frame_of(response: list) -> Frame:
    """imaplib's pieces of one untagged FETCH response (``n (...)``, literals split off) back
    into the ``* n FETCH (...)`` Frame the gateway sees."""
    raw = b""
    for piece in response:
        raw += piece[0] + b"\r\n" + piece[1] if isinstance(piece, tuple) else piece
    seq, _, rest = raw.partition(b" ")
    raw = b"* " + seq + b" FETCH " + rest
    framer = Framer(announce_literals=False)
    framer.receive_data(raw + b"\r\n")
    frame = framer.next_event()
    assert isinstance(frame, Frame), raw
    return frame


def fetch_bodystructure(imap, seq: int):
    typ, data = imap.fetch(str(seq), "(BODYSTRUCTURE)")
    assert typ == "OK", data
    _, name, items = read_fetch(frame_of(data))
    assert name == "FETCH"
    return bodystructure_in_fetch(items)


def fetch_section(imap, seq: int, section: str) -> bytes:
    typ, data = imap.fetch(str(seq), f"(BODY.PEEK[{section}])")
    assert typ == "OK", data
    return next(piece[1] for piece in data if isinstance(piece, tuple))


@pytest.fixture
def mailbox(dovecot, pec_gestore):
    """A fresh Dovecot mailbox holding the cases: (raw message, expected daticert or None)."""
    g = pec_gestore
    ordinario = messaggio_ordinario("Servizio <noreply@pec.example.it>", ADDRESS, "Avviso",
                                    ISTANZA.inviato, "Testo.\n")
    cases = [
        (ricevuta_accettazione(ISTANZA, g), ("1.2", "accettazione", ISTANZA)),
        (ricevuta_avvenuta_consegna(ISTANZA, COMUNE, g), ("1.2", "avvenuta-consegna", ISTANZA)),
        (avviso_mancata_consegna(ISTANZA, ISTANZA.destinatari[1], g),
         ("1.2", "errore-consegna", ISTANZA)),
        (busta_trasporto(ISTANZA, g, html=True), ("1.2", "posta-certificata", ISTANZA)),
        (busta_anomalia(ISTANZA, COMUNE, g), None),
        (consegna_of_a_forwarded_receipt(g), ("1.2", "avvenuta-consegna", INOLTRATA)),
        (forged_receipt(g), None),
        (unsigned_test_box_receipt(), ("3", "accettazione", ISTANZA)),
        (ordinario, None),
    ]
    address, password = f"bs-{secrets.token_hex(4)}@pec.example.it", secrets.token_urlsafe(12)
    dovecot.add_mailbox(address, password, {"INBOX": [raw for raw, _ in cases]})
    imap = dovecot.connect(address, password)
    assert imap.select("INBOX", readonly=True)[0] == "OK"
    yield imap, [expected for _, expected in cases]
    imap.logout()


def test_each_message_yields_only_its_own_daticert(mailbox):
    imap, expected = mailbox
    for seq, want in enumerate(expected, 1):
        part = find_daticert(fetch_bodystructure(imap, seq))
        if want is None:
            assert part is None, seq
            continue
        section, tipo, sent = want
        assert part is not None and part.section == section, (seq, part)
        assert part.encoding == "base64" and part.media_type == "application/xml"
        assert part.signed == (section != "3")  # the unsigned test-box layout
        encoded = fetch_section(imap, seq, part.section)
        assert len(encoded) == part.size
        dati = parse_daticert(base64.b64decode(encoded))
        assert (dati.tipo, dati.identificativo, dati.msgid) == (tipo, sent.identificativo,
                                                                 sent.msgid), seq
        assert dati.timestamp is not None and dati.timestamp.tzinfo is dt.timezone.utc


def test_receipt_time_just_after_midnight_is_the_previous_utc_day(mailbox):
    imap, _ = mailbox
    part = find_daticert(fetch_bodystructure(imap, 1))  # accettazione at 00:15:02 on 1 June
    dati = parse_daticert(base64.b64decode(fetch_section(imap, 1, part.section)))
    assert (dati.giorno, dati.ora, dati.zona) == ("01/06/2025", "00:15:02", "+0200")
    assert dati.timestamp == dt.datetime(2025, 5, 31, 22, 15, 2, tzinfo=dt.timezone.utc)
