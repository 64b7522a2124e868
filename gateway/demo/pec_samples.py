"""Realistic, deterministic PEC messages for the demo and the tests.

What: CRLF byte strings shaped like what an Italian PEC provider puts in a mailbox (``PEC.md``
sections 1-3): the busta di trasporto around an incoming certified message, the ricevuta di
accettazione, the avvenuta-consegna ``completa`` (carrying ``postacert.eml``), the avviso di
mancata consegna (``errore="no-dest"`` with ``errore-esteso``), the avviso di non accettazione,
the preavviso di mancata consegna, the busta di anomalia (no ``daticert.xml``), an ordinary
unsigned message, and a busta whose subject needs RFC 2047 and whose original carries a PDF.
:func:`sample_mailbox` files them into folders.

Why: the gateway must relay and classify these bytes without altering them, so the demo and the
tests need the real structure (``multipart/signed`` over ``multipart/mixed`` with
``daticert.xml`` and ``smime.p7s``), Europe/Rome timestamps with the right ``zona``, and receipts
that correlate with their sends (M = ``X-Riferimento-Message-ID``/``msgid``, I = identificativo).

Determinism: identifiers, boundaries and dates derive from the scenario (:class:`Invio`) and a
seed string, so two runs give the same bytes, except ``smime.p7s``: it is a **real detached CMS
signature** (``PKCS7SignatureBuilder``, SHA-256) by a throwaway RSA "gestore" key with a
self-signed certificate, generated once per :func:`sample_mailbox` call unless one is passed in
(:func:`make_gestore`).  Every provider in a sample signs with that one key.  The signature
covers the exact bytes of the first part of ``multipart/signed``, so any alteration breaks it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import quopri
from dataclasses import dataclass
from email.header import Header
from email.utils import format_datetime, parseaddr
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

__all__ = [
    "ROME", "Gestore", "Invio", "make_gestore", "daticert_xml", "messaggio_originale",
    "busta_trasporto", "busta_anomalia", "ricevuta_accettazione", "ricevuta_avvenuta_consegna",
    "avviso_mancata_consegna", "avviso_non_accettazione", "preavviso_mancata_consegna",
    "messaggio_ordinario", "sample_pdf", "sample_mailbox",
]

ROME = ZoneInfo("Europe/Rome")
CRLF = b"\r\n"
GESTORI = {  # provider domain -> name in daticert <gestore-emittente>
    "pec.example.it": "Gestore Esempio S.p.A.",
    "pec.avvocati.example.it": "Ordine Avvocati PEC S.r.l.",
    "pec.fornitore.example.it": "Gestore Fornitori PEC S.p.A.",
    "pec.comune-esempio.example.it": "Gestore Destinatario Esempio S.p.A.",
}


def _domain(address: str) -> str:
    return parseaddr(address)[1].rpartition("@")[2]


def _gestore_name(domain: str) -> str:
    return GESTORI.get(domain, f"Gestore PEC {domain}")


def _token(*parts: object, n: int = 12) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:n]


def _number(*parts: object, digits: int = 5) -> int:
    return int(_token(*parts), 16) % 10**digits


@dataclass(frozen=True)
class Gestore:
    """A throwaway provider signing key and its self-signed certificate."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate


def make_gestore(email: str = "posta-certificata@pec.example.it",
                 name: str = "Gestore Esempio S.p.A.") -> Gestore:
    """Generate an RSA-2048 key and a self-signed certificate with ``email`` in subjectAltName."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"{name} - firma PEC (test)")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
            .sign(key, hashes.SHA256()))
    return Gestore(key, cert)


# -- MIME assembly: bytes and CRLF by hand, so nothing is re-serialised behind our back -------

def _headers(fields: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}".encode("ascii") + CRLF for k, v in fields)


def _entity(fields: list[tuple[str, str]], body: bytes) -> bytes:
    return _headers(fields) + CRLF + body


def _encoded_word(text: str) -> str:
    """RFC 2047 (UTF-8, folded with CRLF) for non-ASCII header text, the text itself otherwise."""
    if text.isascii():
        return text
    return Header(text, "utf-8", header_name="Subject").encode(linesep="\r\n")


def _multipart(subtype: str, boundary: str, parts: list[bytes], params: str = "",
               preamble: bytes = b"") -> bytes:
    delimiter = b"--" + boundary.encode() + CRLF
    body = preamble + b"".join(delimiter + p + CRLF for p in parts)
    return _entity([("Content-Type", f'multipart/{subtype};{params} boundary="{boundary}"')],
                   body + b"--" + boundary.encode() + b"--" + CRLF)


def _text_part(text: str, subtype: str = "plain") -> bytes:
    """Quoted-printable text, ISO-8859-1 like most providers, UTF-8 when Latin-1 cannot say it."""
    charset = "iso-8859-1" if all(ord(c) < 256 for c in text) else "utf-8"
    body = quopri.encodestring(text.encode(charset)).replace(b"\n", CRLF)
    return _entity([("Content-Type", f"text/{subtype}; charset={charset}"),
                    ("Content-Transfer-Encoding", "quoted-printable")], body)


def _attachment(ctype: str, filename: str, data: bytes, disposition: str = "attachment") -> bytes:
    return _entity([("Content-Type", f'{ctype}; name="{filename}"'),
                    ("Content-Transfer-Encoding", "base64"),
                    ("Content-Disposition", f'{disposition}; filename="{filename}"')],
                   base64.encodebytes(data).replace(b"\n", CRLF))


def _daticert_part(xml: bytes) -> bytes:
    return _attachment("application/xml", "daticert.xml", xml, "inline")


def _eml_part(message: bytes) -> bytes:
    return _entity([("Content-Type", 'message/rfc822; name="postacert.eml"'),
                    ("Content-Disposition", 'inline; filename="postacert.eml"')], message)


def _signed(top: list[tuple[str, str]], parts: list[bytes], gestore: Gestore, seed: str) -> bytes:
    """Provider envelope: multipart/signed over multipart/mixed, with a detached CMS signature."""
    inner = _multipart("mixed", f"----=_Part_{_token(seed, 'mixed', n=16)}", parts)
    signature = (pkcs7.PKCS7SignatureBuilder().set_data(inner)
                 .add_signer(gestore.cert, gestore.key, hashes.SHA256())
                 .sign(serialization.Encoding.DER,
                       [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]))
    p7s = _attachment("application/x-pkcs7-signature", "smime.p7s", signature)
    signed = _multipart("signed", f"----=_Part_{_token(seed, 'signed', n=16)}", [inner, p7s],
                        ' protocol="application/x-pkcs7-signature"; micalg="sha-256";',
                        b"This is an S/MIME signed message" + CRLF + CRLF)
    return _headers(top + [("MIME-Version", "1.0")]) + signed


# -- the scenario model: one send (M -> I -> receipts) ----------------------------------------

@dataclass(frozen=True)
class Invio:
    """One PEC send: who, to whom, what, when.  M and I derive from it and ``seed``.

    A send that really happened (a provider simulator's submission) gives M, I and the submitted
    bytes instead: ``message_id``, ``pec_id`` and ``originale``; ``postacert.eml`` is then the
    submitted message as the provider rewrites it (PEC.md section 2)."""

    mittente: str
    destinatari: tuple[str, ...]          # PEC ("certificato") recipients, in To:
    oggetto: str
    inviato: dt.datetime                  # aware, Europe/Rome
    testo: str
    esterni: tuple[str, ...] = ()         # ordinary-mail ("esterno") recipients, in Cc:
    allegati: tuple[tuple[str, str, bytes], ...] = ()   # (filename, content type, data)
    seed: str = "pec-samples"
    message_id: str | None = None         # M as submitted, "<...>"; derived when None
    pec_id: str | None = None             # I as assigned by the provider; derived when None
    originale: bytes | None = None        # the submitted message, exact bytes

    def __str__(self) -> str:  # the stable key that M, I and boundaries are hashed from
        return f"{self.seed}|{self.mittente}|{self.oggetto}|{self.inviato.isoformat()}"

    @property
    def msgid(self) -> str:
        """M: the Message-ID the sender's client put on the submission."""
        if self.message_id is not None:
            return self.message_id
        stamp = self.inviato.astimezone(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
        host = "gw." + _domain(self.mittente).removeprefix("pec.")
        return f"<{stamp}.{_token(self, 'M', n=8)}@{host}>"

    @property
    def identificativo(self) -> str:
        """I: the PEC identifier assigned by the sender's provider (Aruba-like shape)."""
        if self.pec_id is not None:
            return self.pec_id
        return _provider_id(self.inviato + dt.timedelta(seconds=2), _domain(self.mittente),
                            self, "I")


def _provider_id(when: dt.datetime, domain: str, *seed: object) -> str:
    return (f"opec{21000 + _number(*seed, 'node', digits=3)}.{when:%Y%m%d%H%M%S}."
            f"{_number(*seed, 'a')}.{_number(*seed, 'b', digits=3)}.1."
            f"{_number(*seed, 'c', digits=2)}@{domain}")


def _dati_ora(when: dt.datetime) -> tuple[str, str, str]:
    return when.strftime("%d/%m/%Y"), when.strftime("%H:%M:%S"), when.strftime("%z")


def daticert_xml(tipo: str, invio: Invio, *, emesso: dt.datetime, gestore_emittente: str,
                 errore: str = "nessuno", ricevuta: str | None = "completa",
                 consegna: str | None = None, errore_esteso: str | None = None) -> bytes:
    """The ``daticert.xml`` document (UTF-8; ``msgid`` escaped as ``&lt;...&gt;``)."""
    giorno, ora, zona = _dati_ora(emesso)
    e = escape
    dati = [f"<gestore-emittente>{e(gestore_emittente)}</gestore-emittente>",
            f'<data zona="{zona}">', f"  <giorno>{giorno}</giorno>", f"  <ora>{ora}</ora>",
            "</data>", f"<identificativo>{e(invio.identificativo)}</identificativo>",
            f"<msgid>{e(invio.msgid)}</msgid>"]
    dati += [f'<ricevuta tipo="{ricevuta}" />'] if ricevuta else []
    dati += [f"<consegna>{e(consegna)}</consegna>"] if consegna else []
    dati += [f"<errore-esteso>{e(errore_esteso)}</errore-esteso>"] if errore_esteso else []
    testata = ([f"<mittente>{e(invio.mittente)}</mittente>"]
               + [f'<destinatari tipo="certificato">{e(a)}</destinatari>'
                  for a in invio.destinatari]
               + [f'<destinatari tipo="esterno">{e(a)}</destinatari>' for a in invio.esterni]
               + [f"<risposte>{e(invio.mittente)}</risposte>",
                  f"<oggetto>{e(invio.oggetto)}</oggetto>"])
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<postacert tipo="{tipo}" errore="{errore}">', "  <intestazione>",
             *("    " + x for x in testata), "  </intestazione>", "  <dati>",
             *("    " + x for x in dati), "  </dati>", "</postacert>", ""]
    return "\n".join(lines).encode("utf-8")


def _riscritto(invio: Invio) -> bytes:
    """The submitted bytes as the provider rewrites them (PEC.md section 2): a ``Received:``
    on top, ``Message-ID`` set to I, the original ID moved to ``X-Riferimento-Message-ID``."""
    head, _, body = invio.originale.partition(CRLF + CRLF)
    kept, dropped = [], False
    for line in head.split(CRLF):
        if not line[:1].isspace():  # a new field; continuation lines follow their field
            dropped = line.split(b":", 1)[0].strip().lower() == b"message-id"
        if not dropped:
            kept.append(line)
    received = (f"Received: from client by {_domain(invio.mittente)} with ESMTPSA;\r\n"
                f"\t{format_datetime(invio.inviato)}").encode("ascii")
    fields = _headers([("Message-ID", f"<{invio.identificativo}>"),
                       ("X-Riferimento-Message-ID", invio.msgid)])
    return received + CRLF + CRLF.join(kept) + CRLF + fields + CRLF + body


def messaggio_originale(invio: Invio, *, rewritten: bool = True) -> bytes:
    """The sender's message; ``rewritten`` as providers deliver it (Message-ID = I)."""
    if invio.originale is not None:
        return _riscritto(invio) if rewritten else invio.originale
    top = [("Date", format_datetime(invio.inviato)), ("From", invio.mittente),
           ("To", ", ".join(invio.destinatari))]
    top += [("Cc", ", ".join(invio.esterni))] if invio.esterni else []
    top.append(("Subject", _encoded_word(invio.oggetto)))
    if rewritten:
        top += [("Message-ID", f"<{invio.identificativo}>"),
                ("X-Riferimento-Message-ID", invio.msgid)]
    else:
        top.append(("Message-ID", invio.msgid))
    top += [("X-TipoRicevuta", "completa"), ("MIME-Version", "1.0")]
    body = _text_part(invio.testo)
    if invio.allegati:
        parts = [body] + [_attachment(ct, name, data) for name, ct, data in invio.allegati]
        body = _multipart("mixed", f"----=_NextPart_{_token(invio, 'orig', n=16)}", parts)
    return _headers(top) + body


def _testo(titolo: str, invio: Invio, when: dt.datetime, verbo: str, *righe: str) -> str:
    giorno, ora, zona = _dati_ora(when)
    return "".join([f"{titolo}\n\nIl giorno {giorno} alle ore {ora} ({zona}) il messaggio\n",
                    f'"{invio.oggetto}" {verbo} "{invio.mittente}"\n', *(r + "\n" for r in righe)])


def _envelope(header: tuple[str, str], prefix: str, invio: Invio, when: dt.datetime,
              issuer: str, to: str, parts: list[bytes], gestore: Gestore, *,
              msgid: str | None = None, about: str = "") -> bytes:
    """Top-level headers of a provider message; buste get "Per conto di" From and Reply-To.

    ``about`` (the recipient a receipt concerns) keeps receipts' own Message-IDs distinct."""
    busta = header[0] == "X-Trasporto"
    msgid = msgid or _provider_id(when, _domain(issuer), invio, prefix, to, about)
    top = [("Date", format_datetime(when)),
           ("From", f'"Per conto di: {invio.mittente}" <{issuer}>' if busta
            else f'"Posta Certificata" <{issuer}>'), ("To", to)]
    top += [("Reply-To", invio.mittente)] if busta else []
    top += [("Subject", _encoded_word(prefix + invio.oggetto)), ("Message-ID", f"<{msgid}>"),
            ("X-Riferimento-Message-ID", invio.msgid), header]
    top += [("X-TipoRicevuta", "completa")] if busta else []
    return _signed(top, parts, gestore, f"{invio}|{msgid}")


def busta_trasporto(invio: Invio, gestore: Gestore, *, html: bool = False) -> bytes:
    """Incoming PEC as its recipients see it: daticert and ``postacert.eml`` in a busta.

    ``html`` gives the newer Aruba flavour (multipart/alternative instead of text/plain)."""
    when, dom = invio.inviato + dt.timedelta(seconds=3), _domain(invio.mittente)
    testo = _testo("Messaggio di posta certificata", invio, when, "è stato inviato da",
                   "indirizzato a:", *(invio.destinatari + invio.esterni),
                   "Il messaggio originale è incluso in allegato.",
                   f"Identificativo messaggio: {invio.identificativo}")
    text = _text_part(testo)
    if html:
        markup = "<html><body><p>" + escape(testo).replace("\n", "<br>\n") + "</p></body></html>\n"
        text = _multipart("alternative", f"----=_Alt_{_token(invio, 'alt', n=16)}",
                          [text, _text_part(markup, "html")])
    xml = daticert_xml("posta-certificata", invio, emesso=when,
                       gestore_emittente=_gestore_name(dom))
    return _envelope(("X-Trasporto", "posta-certificata"), "POSTA CERTIFICATA: ", invio, when,
                     f"posta-certificata@{dom}", ", ".join(invio.destinatari),
                     [text, _daticert_part(xml), _eml_part(messaggio_originale(invio))],
                     gestore, msgid=invio.identificativo)


def busta_anomalia(invio: Invio, destinatario: str, gestore: Gestore) -> bytes:
    """Ordinary (non-PEC) mail re-wrapped by the recipient's provider: no daticert."""
    when = invio.inviato + dt.timedelta(seconds=4)
    testo = _testo("Anomalia nel messaggio", invio, when, "proveniente da",
                   f"ed indirizzato a: {destinatario}",
                   "non è un messaggio di posta certificata o non è stato possibile verificarlo.",
                   "Il messaggio originale è incluso in allegato.")
    return _envelope(("X-Trasporto", "errore"), "ANOMALIA MESSAGGIO: ", invio, when,
                     f"posta-certificata@{_domain(destinatario)}", destinatario,
                     [_text_part(testo), _eml_part(messaggio_originale(invio, rewritten=False))],
                     gestore)


def _ricevuta(tipo: str, prefix: str, invio: Invio, when: dt.datetime, dom: str, testo: str,
              gestore: Gestore, *, about: str = "", eml: bool = False, **dati) -> bytes:
    """A receipt to the sender, issued by the provider of ``dom``."""
    xml = daticert_xml(tipo, invio, emesso=when, gestore_emittente=_gestore_name(dom), **dati)
    parts = [_text_part(testo), _daticert_part(xml)]
    parts += [_eml_part(messaggio_originale(invio))] if eml else []
    return _envelope(("X-Ricevuta", tipo), prefix, invio, when, f"posta-certificata@{dom}",
                     invio.mittente, parts, gestore, about=about)


def ricevuta_accettazione(invio: Invio, gestore: Gestore) -> bytes:
    """Receipt from the sender's provider: the message was accepted and sent on."""
    when = invio.inviato + dt.timedelta(seconds=2)
    testo = _testo("Ricevuta di accettazione", invio, when, "proveniente da", "ed indirizzato a:",
                   *(f'{a} ("posta certificata")' for a in invio.destinatari),
                   *(f'{a} ("posta ordinaria")' for a in invio.esterni),
                   "è stato accettato dal sistema ed inoltrato.",
                   f"Identificativo messaggio: {invio.identificativo}")
    return _ricevuta("accettazione", "ACCETTAZIONE: ", invio, when, _domain(invio.mittente),
                     testo, gestore)


def ricevuta_avvenuta_consegna(invio: Invio, destinatario: str, gestore: Gestore,
                               *, ritardo: int = 5, ricevuta: str = "completa") -> bytes:
    """Delivery receipt from the recipient's provider: ``completa`` carries ``postacert.eml``,
    ``sintetica`` (asked for, or a Cc recipient's) does not (PEC.md section 2)."""
    when = invio.inviato + dt.timedelta(seconds=ritardo)
    testo = _testo("Ricevuta di avvenuta consegna", invio, when, "proveniente da",
                   f'ed indirizzato a "{destinatario}"',
                   "è stato consegnato nella casella di destinazione.",
                   f"Identificativo messaggio: {invio.identificativo}")
    return _ricevuta("avvenuta-consegna", "CONSEGNA: ", invio, when, _domain(destinatario), testo,
                     gestore, about=destinatario, eml=ricevuta != "sintetica",
                     consegna=destinatario, ricevuta=ricevuta)


def avviso_mancata_consegna(invio: Invio, destinatario: str, gestore: Gestore, *,
                            errore: str = "no-dest", errore_esteso: str | None = None,
                            ritardo: int = 8) -> bytes:
    """Non-delivery notice (``X-Ricevuta: errore-consegna``) about one recipient."""
    when, dom = invio.inviato + dt.timedelta(seconds=ritardo), _domain(destinatario)
    errore_esteso = errore_esteso or f"5.1.1 - {_gestore_name(dom)} - indirizzo non valido"
    testo = _testo("Avviso di mancata consegna", invio, when, "proveniente da",
                   f"ed indirizzato a: {destinatario}",
                   f"non è stato consegnato a causa di un errore: {errore_esteso}",
                   f"Identificativo messaggio: {invio.identificativo}")
    return _ricevuta("errore-consegna", "AVVISO DI MANCATA CONSEGNA: ", invio, when, dom, testo,
                     gestore, about=destinatario, errore=errore, consegna=destinatario,
                     errore_esteso=errore_esteso)


def avviso_non_accettazione(invio: Invio, gestore: Gestore, *, virus: bool = False,
                            motivo: str | None = None, ritardo: int = 2) -> bytes:
    """The sender's provider refuses the send after taking it (PEC.md section 1): final for the
    whole send.  ``virus`` gives ``errore="virus"`` and the "PER VIRUS" subject; otherwise a
    formal error (``altro``, e.g. a Bcc or the size limit) whose ``motivo`` goes into
    ``errore-esteso`` after an enhanced status code and the provider's name."""
    when, dom = invio.inviato + dt.timedelta(seconds=ritardo), _domain(invio.mittente)
    motivo = motivo or ("virus rilevato" if virus else "errore formale")
    errore_esteso = f"5.7.1 - {_gestore_name(dom)} - {motivo}"
    testo = _testo("Avviso di non accettazione", invio, when, "proveniente da",
                   "non è stato accettato dal sistema a causa di "
                   + ("un virus." if virus else f"un errore: {errore_esteso}"),
                   f"Identificativo messaggio: {invio.identificativo}")
    prefix = "AVVISO DI NON ACCETTAZIONE PER VIRUS: " if virus else "AVVISO DI NON ACCETTAZIONE: "
    return _ricevuta("non-accettazione", prefix, invio, when, dom, testo, gestore,
                     errore="virus" if virus else "altro", errore_esteso=errore_esteso)


def preavviso_mancata_consegna(invio: Invio, destinatario: str, gestore: Gestore, *,
                               ritardo: int = 12 * 3600) -> bytes:
    """The sender's provider warns that ``destinatario`` got nothing within the time limit
    (PEC.md section 1: 12 h, then 24 h, same header and subject).  A consegna may still follow."""
    when, dom = invio.inviato + dt.timedelta(seconds=ritardo), _domain(invio.mittente)
    errore_esteso = f"4.4.7 - {_gestore_name(dom)} - tempo massimo di consegna superato"
    testo = _testo("Avviso di mancata consegna per superamento dei tempi massimi", invio, when,
                   "proveniente da", f"ed indirizzato a: {destinatario}",
                   "non è ancora stato consegnato nei tempi previsti.",
                   f"Identificativo messaggio: {invio.identificativo}")
    return _ricevuta("preavviso-errore-consegna",
                     "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: ", invio, when, dom, testo,
                     gestore, about=destinatario, consegna=destinatario,
                     errore_esteso=errore_esteso)


def messaggio_ordinario(mittente: str, destinatario: str, oggetto: str, when: dt.datetime,
                        testo: str, seed: str = "pec-samples") -> bytes:
    """A plain, unsigned, non-PEC message (e.g. a provider's service notice)."""
    msgid = f"<{when:%Y%m%d%H%M%S}.{_token(seed, oggetto, n=10)}@{_domain(mittente)}>"
    return _headers([("Date", format_datetime(when)), ("From", mittente), ("To", destinatario),
                     ("Subject", _encoded_word(oggetto)), ("Message-ID", msgid),
                     ("MIME-Version", "1.0")]) + _text_part(testo)


def sample_pdf(title: str) -> bytes:
    """A small valid one-page PDF showing ``title`` (ASCII), with a correct xref table."""
    text = title.encode("ascii", "replace").replace(b"(", b"[").replace(b")", b"]")
    stream = b"BT /F1 14 Tf 72 770 Td (" + text + b") Tj ET"
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (n, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def sample_mailbox(address: str = "protocollo@pec.example.it", *, seed: str = "pec-samples",
                   gestore: Gestore | None = None) -> dict[str, list[bytes]]:
    """A PEC mailbox's content: folder name (Unicode, ``/`` hierarchy) -> raw messages.

    INBOX holds 7: two buste (one with an RFC 2047 subject, HTML body and a PDF; one at 00:30
    ``+0200``, the previous day in UTC), a busta di anomalia, accettazione + avvenuta-consegna
    + mancata consegna (``no-dest``) of one send to two PEC recipients and one ordinary address,
    and an ordinary service notice.  The other folders hold what an office files away.
    """
    g = gestore or make_gestore(f"posta-certificata@{_domain(address)}")
    fornitore = "amministrazione@pec.fornitore.example.it"
    comune = "protocollo@pec.comune-esempio.example.it"

    def invio(mittente: str, to: list[str], oggetto: str, when: tuple[int, ...], testo: str,
              **kw) -> Invio:
        return Invio(mittente, tuple(to), oggetto, dt.datetime(*when, tzinfo=ROME), testo,
                     seed=seed, **kw)

    def pdf(name: str, title: str) -> tuple[tuple[str, str, bytes], ...]:
        return ((name, "application/pdf", sample_pdf(title)),)

    fattura = invio(fornitore, [address], "Fattura n. 42/2025 – scadenza già superata",
                    (2025, 5, 12, 9, 15, 40), "Buongiorno,\nin allegato la fattura n. 42/2025, "
                    "il cui pagamento è scaduto.\nCordiali saluti,\nl'Amministrazione\n",
                    allegati=pdf("Fattura_42_2025.pdf", "Fattura 42/2025"))
    notifica = invio("avv.bianchi@pec.avvocati.example.it", [address],
                     "Notificazione ai sensi della legge n. 53 del 1994", (2025, 4, 1, 0, 30, 12),
                     "Si notifica l'atto allegato ai sensi dell'art. 3-bis L. 53/1994.\n")
    diffida = invio("studio.rossi@pec.avvocati.example.it", [address],
                    "Diffida ad adempiere - pratica 2025/117", (2025, 2, 14, 10, 42, 13),
                    "Spett.le Ente,\ncon la presente si diffida ad adempiere entro 15 giorni.\n")
    ordine = invio(fornitore, [address], "Conferma ordine n. 2025-0381", (2025, 3, 3, 15, 2, 9),
                   "Confermiamo la ricezione dell'ordine n. 2025-0381.\n")
    listino = invio(fornitore, [address], "Listino prezzi 2025", (2025, 1, 8, 8, 0, 1),
                    "In allegato il listino prezzi valido dal 1° gennaio 2025.\n",
                    allegati=pdf("Listino_2025.pdf", "Listino 2025"))
    f24 = invio("riscossione@pec.tributi.example.it", [address],
                "Esito pagamento F24 - giugno 2025", (2025, 6, 17, 12, 5, 33),
                "Il pagamento F24 del 16/06/2025 è andato a buon fine.\n")
    spam = invio("offerte@example.com", [address], "Offerta speciale cancelleria",
                 (2025, 6, 2, 7, 45, 0), "Sconti fino al 30% su carta e toner.\n")
    istanza = invio(address, [comune, "ufficio.tributi@pec.comune-esempio.example.it"],
                    "Istanza di rimborso TARI 2024", (2025, 6, 10, 11, 30, 0),
                    "Si chiede il rimborso della TARI 2024 versata in eccesso.\n",
                    esterni=("tributi@comune-esempio.example.it",))
    preventivo = invio(address, ["ufficio.gare@pec.fornitore.example.it"],
                       "Richiesta preventivo fornitura toner", (2025, 1, 20, 16, 10, 0),
                       "Si richiede un preventivo per 40 cartucce toner.\n")
    avviso = messaggio_ordinario(
        "Servizio PEC <noreply@pec.example.it>", address,
        "Avviso: casella PEC al 85% dello spazio disponibile",
        dt.datetime(2025, 6, 18, 6, 0, 0, tzinfo=ROME),
        "Gentile cliente,\nla casella ha superato l'85% dello spazio disponibile.\n", seed)
    return {
        "INBOX": [busta_trasporto(fattura, g, html=True), busta_trasporto(notifica, g),
                  busta_anomalia(spam, address, g), ricevuta_accettazione(istanza, g),
                  ricevuta_avvenuta_consegna(istanza, comune, g),
                  avviso_mancata_consegna(istanza, istanza.destinatari[1], g), avviso],
        "Ricevute": [ricevuta_accettazione(preventivo, g),
                     ricevuta_avvenuta_consegna(preventivo, preventivo.destinatari[0], g)],
        "Ufficio Legale": [busta_trasporto(diffida, g)],
        "Acquisti": [busta_trasporto(ordine, g)],
        "Acquisti/Fornitori": [busta_trasporto(listino, g)],
        "Contabilità": [busta_trasporto(f24, g)],
    }
