"""The PEC sample generator: structure per PEC.md sections 1-3, CRLF, determinism, signatures."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import subprocess
import xml.etree.ElementTree as ET
from email.message import EmailMessage

import pytest

from gateway.demo.pec_samples import (Gestore, Invio, ROME, avviso_mancata_consegna,
                                      busta_anomalia, busta_trasporto, make_gestore,
                                      messaggio_ordinario, ricevuta_accettazione,
                                      ricevuta_avvenuta_consegna, sample_mailbox)
from tests.fixtures.programs import program

ADDRESS = "protocollo@pec.example.it"
BARE_EOL = re.compile(rb"(?<!\r)\n|\r(?!\n)")
P7S_BODY = re.compile(rb'(filename="smime\.p7s"\r\n\r\n)[A-Za-z0-9+/=\r\n]+')

# Subject prefix -> (top-level header, value, daticert tipo or None)
KINDS = {
    "POSTA CERTIFICATA: ": ("X-Trasporto", "posta-certificata", "posta-certificata"),
    "ANOMALIA MESSAGGIO: ": ("X-Trasporto", "errore", None),
    "ACCETTAZIONE: ": ("X-Ricevuta", "accettazione", "accettazione"),
    "CONSEGNA: ": ("X-Ricevuta", "avvenuta-consegna", "avvenuta-consegna"),
    "AVVISO DI MANCATA CONSEGNA: ": ("X-Ricevuta", "errore-consegna", "errore-consegna"),
}


@pytest.fixture(scope="module")
def gestore() -> Gestore:
    return make_gestore()


@pytest.fixture(scope="module")
def mailbox(gestore) -> dict[str, list[bytes]]:
    return sample_mailbox(ADDRESS, gestore=gestore)


def all_messages(mailbox) -> list[tuple[str, bytes]]:
    return [(folder, raw) for folder, msgs in mailbox.items() for raw in msgs]


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def part_named(msg: EmailMessage, filename: str):
    for part in msg.walk():
        if part.get_filename() == filename or part.get_param("name") == filename:
            return part
    return None


def daticert(msg: EmailMessage) -> ET.Element | None:
    signed = msg.get_payload()[0]  # only the top level's own parts, never postacert.eml's
    for part in signed.iter_parts():
        if part.get_filename() == "daticert.xml":
            return ET.fromstring(part.get_payload(decode=True))
    return None


def kind_of(msg: EmailMessage):
    for prefix, kind in KINDS.items():
        if str(msg["Subject"]).startswith(prefix):
            return kind
    return None


def test_folders(mailbox):
    assert 6 <= len(mailbox["INBOX"]) <= 8
    assert any(not name.isascii() for name in mailbox)
    assert any("/" in name for name in mailbox)
    assert all(isinstance(raw, bytes) for _, raw in all_messages(mailbox))


def test_every_sample_parses_cleanly_with_crlf_only(mailbox):
    for folder, raw in all_messages(mailbox):
        assert BARE_EOL.search(raw) is None, folder
        assert b"\r\n\r\n" in raw
        msg = parse(raw)
        assert not msg.defects, (folder, msg.defects)
        for part in msg.walk():
            assert not part.defects, (folder, part.get_content_type(), part.defects)


def test_every_provider_message_is_classified_by_top_level_headers(mailbox):
    seen = set()
    for folder, raw in all_messages(mailbox):
        msg = parse(raw)
        kind = kind_of(msg)
        if kind is None:  # the ordinary message
            assert msg["X-Ricevuta"] is None and msg["X-Trasporto"] is None
            assert msg.get_content_type() == "text/plain"
            continue
        header, value, tipo = kind
        seen.add(value)
        assert msg[header] == value, (folder, msg["Subject"])
        other = "X-Ricevuta" if header == "X-Trasporto" else "X-Trasporto"
        assert msg[other] is None
        assert msg.get_content_type() == "multipart/signed"
        assert msg.get_param("protocol") == "application/x-pkcs7-signature"
        assert msg.get_param("micalg") == "sha-256"
        mixed, p7s = msg.get_payload()
        assert mixed.get_content_type() == "multipart/mixed"
        assert p7s.get_content_type() == "application/x-pkcs7-signature"
        assert p7s.get_filename() == "smime.p7s" and len(p7s.get_payload(decode=True)) > 500
        dati = daticert(msg)
        if tipo is None:
            assert dati is None
        else:
            assert dati.get("tipo") == tipo
            assert dati.findtext("intestazione/mittente")
            assert dati.findtext("dati/identificativo")
            assert dati.findtext("dati/msgid") == msg["X-Riferimento-Message-ID"]
    assert seen == {v for _, v, _ in KINDS.values()}


def test_daticert_is_utf8_with_escaped_msgid_and_rome_zone(mailbox):
    for _, raw in all_messages(mailbox):
        part = part_named(parse(raw), "daticert.xml")
        if part is None:
            continue
        xml = part.get_payload(decode=True)
        assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
        xml.decode("utf-8")
        assert re.search(rb"<msgid>&lt;[^<>&]+@[^<>&]+&gt;</msgid>", xml)
        root = ET.fromstring(xml)
        assert root.find("dati/data").get("zona") in ("+0100", "+0200")
        assert re.fullmatch(r"\d\d/\d\d/\d{4}", root.findtext("dati/data/giorno"))
        assert re.fullmatch(r"\d\d:\d\d:\d\d", root.findtext("dati/data/ora"))


def test_busta_di_trasporto(mailbox):
    msg = parse(mailbox["Ufficio Legale"][0])
    dati = daticert(msg)
    sender = dati.findtext("intestazione/mittente")
    assert msg["From"].addresses[0].display_name == f"Per conto di: {sender}"
    assert msg["From"].addresses[0].username == "posta-certificata"
    assert msg["Reply-To"] == sender
    assert msg["Message-ID"] == f"<{dati.findtext('dati/identificativo')}>"
    assert str(msg["Subject"]) == "POSTA CERTIFICATA: " + dati.findtext("intestazione/oggetto")
    assert dati.find("intestazione/destinatari").get("tipo") == "certificato"
    original = part_named(msg, "postacert.eml")
    assert original.get_content_type() == "message/rfc822"
    inner = original.get_payload()[0]
    assert inner["Message-ID"] == msg["Message-ID"]  # the provider rewrites it to I ...
    assert inner["X-Riferimento-Message-ID"] == msg["X-Riferimento-Message-ID"]  # ... keeps M
    assert inner["From"] == sender


def test_rfc2047_subject_and_pdf_attachment(mailbox):
    raw = mailbox["INBOX"][0]
    headers = raw.split(b"\r\n\r\n", 1)[0]
    assert b"=?utf-8?" in headers and headers.isascii()
    msg = parse(raw)
    assert "già" in str(msg["Subject"]) and "–" in str(msg["Subject"])
    assert daticert(msg).findtext("intestazione/oggetto") == str(msg["Subject"]).removeprefix(
        "POSTA CERTIFICATA: ")
    pdf = next(p for p in msg.walk() if p.get_content_type() == "application/pdf")
    data = pdf.get_payload(decode=True)
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    xref = int(data.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    assert data[xref:].startswith(b"xref")
    assert any(p.get_content_type() == "text/html" for p in msg.walk())  # Aruba-like flavour


def test_zona_is_the_rome_offset_on_that_day(mailbox):
    dati = daticert(parse(mailbox["INBOX"][1]))  # sent at 00:30:12 on 1 April 2025
    assert dati.find("dati/data").get("zona") == "+0200"
    assert dati.findtext("dati/data/giorno") == "01/04/2025"
    dati = daticert(parse(mailbox["Ufficio Legale"][0]))  # February: winter time
    assert dati.find("dati/data").get("zona") == "+0100"


def test_receipts_of_one_send_correlate(mailbox):
    acc, cons, err = (parse(raw) for raw in mailbox["INBOX"][3:6])
    assert [m["X-Ricevuta"] for m in (acc, cons, err)] == [
        "accettazione", "avvenuta-consegna", "errore-consegna"]
    ids = {daticert(m).findtext("dati/identificativo") for m in (acc, cons, err)}
    refs = {m["X-Riferimento-Message-ID"] for m in (acc, cons, err)}
    assert len(ids) == 1 and len(refs) == 1
    assert len({m["Message-ID"] for m in (acc, cons, err)}) == 3
    assert acc["To"] == ADDRESS and acc["From"].addresses[0].domain == "pec.example.it"
    tipi = {d.text: d.get("tipo") for d in daticert(acc).findall("intestazione/destinatari")}
    assert sorted(tipi.values()) == ["certificato", "certificato", "esterno"]
    assert daticert(cons).findtext("dati/consegna") == "protocollo@pec.comune-esempio.example.it"
    assert part_named(cons, "postacert.eml") is not None  # completa
    assert part_named(acc, "postacert.eml") is None and part_named(err, "postacert.eml") is None
    dati = daticert(err)
    assert dati.get("errore") == "no-dest"
    assert dati.findtext("dati/errore-esteso").startswith("5.1.1 - ")
    assert dati.findtext("dati/consegna") == "ufficio.tributi@pec.comune-esempio.example.it"


def test_busta_di_anomalia_has_no_daticert_but_the_original(mailbox):
    msg = parse(mailbox["INBOX"][2])
    assert msg["X-Trasporto"] == "errore"
    assert part_named(msg, "daticert.xml") is None
    inner = part_named(msg, "postacert.eml").get_payload()[0]
    assert inner["Message-ID"] == msg["X-Riferimento-Message-ID"]  # not rewritten


def test_generation_is_deterministic_except_the_signature(gestore):
    first = sample_mailbox(ADDRESS, gestore=gestore)
    second = sample_mailbox(ADDRESS)  # a different throwaway key
    assert list(first) == list(second)
    for name in first:
        assert len(first[name]) == len(second[name])
        for a, b in zip(first[name], second[name]):
            assert P7S_BODY.sub(rb"\1", a) == P7S_BODY.sub(rb"\1", b)
    other = sample_mailbox("ufficio@pec.example.it", gestore=gestore)
    assert P7S_BODY.sub(rb"\1", other["INBOX"][0]) != P7S_BODY.sub(rb"\1", first["INBOX"][0])


def test_signatures_verify_and_break_on_alteration(mailbox, tmp_path):
    def verify(raw: bytes) -> bool:
        path = tmp_path / "m.eml"
        path.write_bytes(raw)
        return subprocess.run([program("openssl"), "smime", "-verify", "-noverify", "-in", str(path),
                               "-out", "/dev/null"], capture_output=True).returncode == 0

    signed = [raw for _, raw in all_messages(mailbox) if b"multipart/signed" in raw[:2000]]
    assert len(signed) == sum(len(v) for v in mailbox.values()) - 1
    for raw in signed:
        assert verify(raw)
    tampered = signed[0].replace(b"Il messaggio originale", b"Il messaggio alterato!", 1)
    assert tampered != signed[0] and not verify(tampered)


def test_builders_directly(gestore):
    invio = Invio("mittente@pec.example.it", ("dest@pec.altro.example.it",), "Prova & <test>",
                  dt.datetime(2025, 10, 26, 2, 30, tzinfo=ROME), "Testo.\n")
    for build, header, value in [
        (lambda: busta_trasporto(invio, gestore), "X-Trasporto", "posta-certificata"),
        (lambda: busta_anomalia(invio, "dest@pec.altro.example.it", gestore), "X-Trasporto",
         "errore"),
        (lambda: ricevuta_accettazione(invio, gestore), "X-Ricevuta", "accettazione"),
        (lambda: ricevuta_avvenuta_consegna(invio, invio.destinatari[0], gestore), "X-Ricevuta",
         "avvenuta-consegna"),
        (lambda: avviso_mancata_consegna(invio, invio.destinatari[0], gestore, errore="no-dominio",
                                         errore_esteso="5.1.2 - dominio inesistente"),
         "X-Ricevuta", "errore-consegna"),
    ]:
        raw = build()
        msg = parse(raw)
        assert msg[header] == value and BARE_EOL.search(raw) is None
        dati = daticert(msg)
        if dati is not None:
            assert dati.findtext("intestazione/oggetto") == "Prova & <test>"
            assert b"Prova &amp; &lt;test&gt;" in part_named(msg, "daticert.xml").get_payload(
                decode=True)
    err = daticert(parse(avviso_mancata_consegna(invio, invio.destinatari[0], gestore,
                                                 errore="no-dominio")))
    assert err.get("errore") == "no-dominio"
    plain = parse(messaggio_ordinario("A <a@example.com>", ADDRESS, "Ciao è", invio.inviato, "x\n"))
    assert str(plain["Subject"]) == "Ciao è" and not plain.is_multipart()
