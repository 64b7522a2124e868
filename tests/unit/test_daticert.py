"""Parsing daticert.xml (gateway.pec.daticert): the PEC.md example, the sample generator's
receipts, missing optional fields, time zones, encodings and hostile or broken input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import random

import pytest
from defusedxml.common import EntitiesForbidden

from gateway.demo.pec_samples import (ROME, Invio, avviso_mancata_consegna, busta_anomalia,
                                      busta_trasporto, daticert_xml, make_gestore,
                                      ricevuta_accettazione, ricevuta_avvenuta_consegna,
                                      sample_mailbox)
from gateway.pec.daticert import (MAX_DATICERT_OCTETS, Daticert, DaticertError, DaticertRefused,
                                  is_known_errore, is_known_tipo, normalise_message_id,
                                  parse_daticert, pec_timestamp)
from gateway.pec.daticert import _Parser

UTC = dt.timezone.utc

# PEC.md section 3, verbatim
PEC_MD_EXAMPLE = """\
<?xml version="1.0" encoding="UTF-8"?>
<postacert tipo="avvenuta-consegna" errore="nessuno">
  <intestazione>
    <mittente>studio.rossi@pec.example.it</mittente>
    <destinatari tipo="certificato">protocollo@pec.comune-esempio.example.it</destinatari>
    <destinatari tipo="certificato">amministrazione@pec.fornitore.example.it</destinatari>
    <destinatari tipo="esterno">info@fornitore.example.it</destinatari>
    <risposte>studio.rossi@pec.example.it</risposte>
    <oggetto>Diffida ad adempiere - pratica 2025/117</oggetto>
  </intestazione>
  <dati>
    <gestore-emittente>Gestore Destinatario Esempio S.p.A.</gestore-emittente>
    <data zona="+0100">
      <giorno>14/02/2025</giorno>
      <ora>10:42:17</ora>
    </data>
    <identificativo>opec99901.20250214104215.12345.678.1.23@pec.example.it</identificativo>
    <msgid>&lt;20250214094213.4f2a9c1e@gw.example.it&gt;</msgid>
    <ricevuta tipo="completa" />
    <consegna>protocollo@pec.comune-esempio.example.it</consegna>
  </dati>
</postacert>
""".encode("utf-8")


def minimal(dati: str = "", root: str = '<postacert tipo="accettazione">',
            intestazione: str = "", declaration: str = "") -> bytes:
    """A daticert with only what is required, plus what a test adds."""
    return (f"{declaration}{root}<intestazione>{intestazione}</intestazione><dati>"
            f"<identificativo>opec1.x@pec.example.it</identificativo>{dati}</dati>"
            "</postacert>").encode("utf-8")


# -- the PEC.md example -----------------------------------------------------------------------

def test_pec_md_example():
    d = parse_daticert(PEC_MD_EXAMPLE)
    assert d == Daticert(
        tipo="avvenuta-consegna", errore="nessuno", mittente="studio.rossi@pec.example.it",
        destinatari=(("protocollo@pec.comune-esempio.example.it", "certificato"),
                     ("amministrazione@pec.fornitore.example.it", "certificato"),
                     ("info@fornitore.example.it", "esterno")),
        risposte="studio.rossi@pec.example.it", oggetto="Diffida ad adempiere - pratica 2025/117",
        gestore_emittente="Gestore Destinatario Esempio S.p.A.", giorno="14/02/2025",
        ora="10:42:17", zona="+0100",
        identificativo="opec99901.20250214104215.12345.678.1.23@pec.example.it",
        msgid="<20250214094213.4f2a9c1e@gw.example.it>", ricevuta_tipo="completa",
        consegna="protocollo@pec.comune-esempio.example.it", ricezione=(), errore_esteso=None)
    assert d.timestamp == dt.datetime(2025, 2, 14, 9, 42, 17, tzinfo=UTC)
    assert d.is_known_tipo and is_known_errore(d.errore)
    assert d.normalised_msgid == "20250214094213.4f2a9c1e@gw.example.it"


def test_result_is_frozen():
    d = parse_daticert(PEC_MD_EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.tipo = "accettazione"  # type: ignore[misc]


# -- the sample generator's messages ----------------------------------------------------------

@pytest.fixture(scope="module")
def gestore():
    return make_gestore()


def daticert_of(raw: bytes) -> bytes | None:
    """The decoded daticert.xml among the top-level multipart/mixed's direct children."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    mixed = msg.get_payload()[0]
    for part in mixed.iter_parts():
        if part.get_filename() == "daticert.xml":
            return part.get_payload(decode=True)
    return None


ISTANZA = Invio("protocollo@pec.example.it",
                ("protocollo@pec.comune-esempio.example.it",
                 "ufficio.tributi@pec.comune-esempio.example.it"),
                "Istanza & <rimborso> TARI è 2024", dt.datetime(2025, 6, 10, 11, 30, 0, tzinfo=ROME),
                "Testo.\n", esterni=("tributi@comune-esempio.example.it",), seed="daticert-test")
ALL_RECIPIENTS = (("protocollo@pec.comune-esempio.example.it", "certificato"),
                  ("ufficio.tributi@pec.comune-esempio.example.it", "certificato"),
                  ("tributi@comune-esempio.example.it", "esterno"))


def test_accettazione(gestore):
    d = parse_daticert(daticert_of(ricevuta_accettazione(ISTANZA, gestore)))
    assert (d.tipo, d.errore, d.identificativo, d.msgid) == (
        "accettazione", "nessuno", ISTANZA.identificativo, ISTANZA.msgid)
    assert d.mittente == d.risposte == "protocollo@pec.example.it"
    assert d.destinatari == ALL_RECIPIENTS
    assert d.oggetto == "Istanza & <rimborso> TARI è 2024"
    assert d.gestore_emittente == "Gestore Esempio S.p.A."
    assert d.consegna is None and d.errore_esteso is None and d.ricevuta_tipo == "completa"
    assert d.timestamp == (ISTANZA.inviato + dt.timedelta(seconds=2)).astimezone(UTC)


def test_avvenuta_consegna(gestore):
    to = ISTANZA.destinatari[0]
    d = parse_daticert(daticert_of(ricevuta_avvenuta_consegna(ISTANZA, to, gestore)))
    assert (d.tipo, d.consegna, d.identificativo) == ("avvenuta-consegna", to,
                                                       ISTANZA.identificativo)
    assert d.gestore_emittente == "Gestore Destinatario Esempio S.p.A."  # the recipient's
    assert d.timestamp == dt.datetime(2025, 6, 10, 9, 30, 5, tzinfo=UTC)


def test_errore_consegna(gestore):
    to = ISTANZA.destinatari[1]
    raw = avviso_mancata_consegna(ISTANZA, to, gestore, errore="no-dominio",
                                  errore_esteso="5.1.2 - dominio inesistente")
    d = parse_daticert(daticert_of(raw))
    assert (d.tipo, d.errore, d.consegna) == ("errore-consegna", "no-dominio", to)
    assert d.errore_esteso == "5.1.2 - dominio inesistente"


def test_busta_di_trasporto_and_anomalia(gestore):
    d = parse_daticert(daticert_of(busta_trasporto(ISTANZA, gestore, html=True)))
    assert (d.tipo, d.identificativo, d.msgid) == ("posta-certificata", ISTANZA.identificativo,
                                                    ISTANZA.msgid)
    assert daticert_of(busta_anomalia(ISTANZA, ISTANZA.destinatari[0], gestore)) is None


def test_every_daticert_of_the_sample_mailbox(gestore):
    parsed = []
    for folder, messages in sample_mailbox(gestore=gestore).items():
        for raw in messages:
            if b"multipart/signed" not in raw[:3000]:
                continue
            xml = daticert_of(raw)
            if xml is not None:
                parsed.append(parse_daticert(xml))
    assert len(parsed) == 11  # every signed sample but the busta di anomalia
    assert all(d.is_known_tipo and d.timestamp and d.identificativo.startswith("opec")
               for d in parsed)
    assert {d.tipo for d in parsed} == {"posta-certificata", "accettazione",
                                        "avvenuta-consegna", "errore-consegna"}
    notifica = next(d for d in parsed if d.giorno == "01/04/2025")  # the busta at 00:30 +0200
    assert notifica.timestamp == dt.datetime(2025, 3, 31, 22, 30, 15, tzinfo=UTC)


# -- optional fields and leniency -------------------------------------------------------------

def test_only_the_required_fields():
    d = parse_daticert(minimal())
    assert d == Daticert(tipo="accettazione", identificativo="opec1.x@pec.example.it")
    assert d.errore == "nessuno" and d.destinatari == () and d.ricezione == ()
    assert d.timestamp is None and d.msgid is None and d.normalised_msgid is None


def test_no_intestazione_at_all():
    raw = b'<postacert tipo="accettazione"><dati><identificativo>x</identificativo></dati></postacert>'
    assert parse_daticert(raw).mittente is None


def test_poste_2012_style_ricevuta_without_msgid():
    d = parse_daticert(minimal('<ricevuta tipo="breve"/>'))
    assert d.ricevuta_tipo == "breve" and d.msgid is None


@pytest.mark.parametrize("ricevuta, expected", [
    ("", None), ("<ricevuta/>", "completa"), ('<ricevuta tipo="SINTETICA"/>', "sintetica"),
    ('<ricevuta tipo="normale"/>', None),
])
def test_ricevuta_tipo(ricevuta, expected):
    assert parse_daticert(minimal(ricevuta)).ricevuta_tipo == expected


def test_presa_in_carico_lists_ricezione():
    d = parse_daticert(minimal("<ricezione>a@pec.x.it</ricezione><ricezione> b@pec.x.it "
                               "</ricezione>", root='<postacert tipo="presa-in-carico">'))
    assert d.ricezione == ("a@pec.x.it", "b@pec.x.it")


def test_whitespace_around_values_is_stripped():
    raw = minimal("<msgid>\n   &lt;m@x.it&gt;\n  </msgid><consegna>\t c@pec.x.it \r\n</consegna>",
                  intestazione='<destinatari tipo=" esterno ">\n  e@x.it\n</destinatari>'
                               "<oggetto>  Oggetto con  spazi  </oggetto>",
                  root='<postacert tipo=" accettazione " errore=" nessuno ">')
    d = parse_daticert(raw)
    assert (d.tipo, d.errore, d.msgid, d.consegna) == ("accettazione", "nessuno", "<m@x.it>",
                                                      "c@pec.x.it")
    assert d.destinatari == (("e@x.it", "esterno"),)
    assert d.oggetto == "Oggetto con  spazi"  # inner spacing is the sender's


def test_unknown_tipo_and_errore_are_kept():
    d = parse_daticert(minimal(root='<postacert tipo="non-pec" errore="quota">'))
    assert (d.tipo, d.errore) == ("non-pec", "quota")
    assert not d.is_known_tipo and not is_known_tipo("preavviso-mancata-consegna")
    assert not is_known_errore("quota")
    assert all(is_known_tipo(t) for t in ("accettazione", "non-accettazione", "presa-in-carico",
                                          "avvenuta-consegna", "posta-certificata",
                                          "errore-consegna", "preavviso-errore-consegna",
                                          "rilevazione-virus"))


def test_destinatari_without_tipo_attribute():
    d = parse_daticert(minimal(intestazione="<destinatari>x@pec.it</destinatari>"))
    assert d.destinatari == (("x@pec.it", None),)


def test_namespaced_and_differently_cased_elements():
    raw = (b'<p:Postacert xmlns:p="urn:example" tipo="accettazione"><p:Dati>'
           b"<p:Identificativo>id@x</p:Identificativo></p:Dati></p:Postacert>")
    assert parse_daticert(raw).identificativo == "id@x"


def test_telecompost_style_doctype_and_stylesheet_are_accepted_not_fetched():
    declaration = ('<?xml version="1.0" encoding="UTF-8"?>\r\n<?xml-stylesheet type="text/xsl" '
                   'href="https://provider.example/dtd/postacert.xsl"?>\r\n<!DOCTYPE postacert '
                   'PUBLIC "posta certificata" "file:///etc/passwd">\r\n\r\n')
    assert parse_daticert(minimal(declaration=declaration)).identificativo == "opec1.x@pec.example.it"


# -- encodings --------------------------------------------------------------------------------

def test_iso_8859_1_declared():
    raw = minimal(intestazione="<oggetto>Città è più</oggetto>",
                  declaration='<?xml version="1.0" encoding="ISO-8859-1"?>\n')
    assert parse_daticert(raw.decode("utf-8").encode("iso-8859-1")).oggetto == "Città è più"


def test_utf8_with_bom_and_leading_blank_lines():
    raw = b"\r\n  " + minimal(intestazione="<oggetto>Città</oggetto>",
                              declaration='<?xml version="1.0" encoding="utf-8"?>')
    assert parse_daticert(raw).oggetto == "Città"
    assert parse_daticert(b"\xef\xbb\xbf" + raw.lstrip()).oggetto == "Città"


def test_latin1_bytes_claiming_utf8_are_read_as_latin1():
    for declaration in ("", '<?xml version="1.0" encoding="UTF-8"?>'):
        raw = minimal(intestazione="<oggetto>Città</oggetto>", declaration=declaration)
        assert parse_daticert(raw.decode().encode("iso-8859-1")).oggetto == "Città"


def test_utf16():
    raw = minimal(declaration='<?xml version="1.0" encoding="UTF-16"?>',
                  intestazione="<oggetto>è</oggetto>")
    assert parse_daticert(raw.decode().encode("utf-16")).oggetto == "è"


# -- time -------------------------------------------------------------------------------------

@pytest.mark.parametrize("giorno, ora, zona, expected", [
    ("01/04/2025", "00:30:12", "+0200", dt.datetime(2025, 3, 31, 22, 30, 12, tzinfo=UTC)),
    ("01/01/2025", "00:10:00", "+0100", dt.datetime(2024, 12, 31, 23, 10, 0, tzinfo=UTC)),
    ("01/03/2024", "01:59:59", "+0200", dt.datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
    ("31/12/2024", "23:30:00", "-0300", dt.datetime(2025, 1, 1, 2, 30, 0, tzinfo=UTC)),
    ("14/02/2025", "10:42:17", "+01:00", dt.datetime(2025, 2, 14, 9, 42, 17, tzinfo=UTC)),
    ("4/2/2025", "9:05", "+0000", dt.datetime(2025, 2, 4, 9, 5, 0, tzinfo=UTC)),
    ("14/02/2025", "10:42:17.250", "+0100", dt.datetime(2025, 2, 14, 9, 42, 17, tzinfo=UTC)),
])
def test_timestamp_to_utc(giorno, ora, zona, expected):
    got = pec_timestamp(giorno, ora, zona)
    assert got == expected and got.tzinfo is UTC


@pytest.mark.parametrize("giorno, ora, zona", [
    ("31/02/2025", "10:00:00", "+0100"), ("29/02/2025", "10:00:00", "+0100"),
    ("14/02/2025", "25:00:00", "+0100"), ("14/02/2025", "10:61:00", "+0100"),
    ("14/02/2025", "23:59:60", "+0100"), ("14/02/2025", "10:00:00", "CET"),
    ("14/02/2025", "10:00:00", "+2500"), ("14/02/2025", "10:00:00", "+0199"),
    ("2025-02-14", "10:00:00", "+0100"), ("", "10:00:00", "+0100"), ("14/02/2025", "", "+0100"),
    ("01/01/0000", "00:00:00", "+0100"), ("01/01/0001", "00:00:00", "+0100"),
    (None, "10:00:00", "+0100"), ("14/02/2025", None, "+0100"), ("14/02/2025", "10:00:00", None),
])
def test_invalid_time_gives_none(giorno, ora, zona):
    assert pec_timestamp(giorno, ora, zona) is None


def test_missing_zona_in_a_document():
    d = parse_daticert(minimal("<data><giorno>14/02/2025</giorno><ora>10:00:00</ora></data>"))
    assert (d.giorno, d.ora, d.zona, d.timestamp) == ("14/02/2025", "10:00:00", None, None)


# -- Message-ID normalisation ------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("<20250214094213.4F2A9C1E@GW.example.it>", "20250214094213.4f2a9c1e@gw.example.it"),
    ("  <a@b>  ", "a@b"), ("a@b", "a@b"), ("<very.long.id@\r\n example.it>", "very.long.id@example.it"),
    ("<a@b", "<a@b"), ("", ""),
])
def test_normalise_message_id(value, expected):
    assert normalise_message_id(value) == expected


def test_msgid_is_kept_as_given():
    d = parse_daticert(minimal("<msgid>&lt;AbC@X.it&gt;</msgid>"))
    assert d.msgid == "<AbC@X.it>" and d.normalised_msgid == "abc@x.it"


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    (minimal().replace(b"<identificativo>opec1.x@pec.example.it</identificativo>", b""),
     "<dati> has no <identificativo>"),
    (minimal().replace(b"opec1.x@pec.example.it", b"  \n "), "<identificativo> is empty"),
    (b'<postacert tipo="accettazione"><intestazione/></postacert>', "no <dati> element"),
    (minimal(root='<postacert errore="nessuno">'), "<postacert> has no tipo attribute"),
    (minimal(root='<postacert tipo="">'), "<postacert> has no tipo attribute"),
    (b'<?xml version="1.0"?><html><body>ciao</body></html>', "root element is <html>"),
    (b"", "not well-formed XML"),
    (b"daticert", "not well-formed XML"),
    (PEC_MD_EXAMPLE[:-40], "not well-formed XML"),
    (b"\x00\x01\x02\xff" * 10, "not well-formed XML"),
    (b'<?xml version="1.0" encoding="klingon"?><postacert/>', "not well-formed XML"),
    (b"<postacert tipo='a'><dati>&nbsp;</dati></postacert>", "undefined entity"),
])
def test_refused_with_a_precise_message(raw, message):
    with pytest.raises(DaticertError) as info:
        parse_daticert(raw)
    assert message in str(info.value)
    assert not isinstance(info.value, DaticertRefused)


def test_not_bytes():
    with pytest.raises(TypeError):
        parse_daticert(PEC_MD_EXAMPLE.decode())  # type: ignore[arg-type]


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE postacert [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<postacert tipo="accettazione"><intestazione><oggetto>&lol9;</oggetto></intestazione>
<dati><identificativo>x</identificativo></dati></postacert>"""

XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE postacert [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<postacert tipo="accettazione"><intestazione><oggetto>&xxe;</oggetto></intestazione>
<dati><identificativo>x</identificativo></dati></postacert>"""

XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE postacert [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]>
<postacert tipo="accettazione"><dati><identificativo>x</identificativo></dati></postacert>"""

ATTLIST_DEFAULT = b"""<!DOCTYPE postacert [<!ATTLIST postacert tipo CDATA "avvenuta-consegna">]>
<postacert><dati><identificativo>x</identificativo></dati></postacert>"""


@pytest.mark.parametrize("raw", [BILLION_LAUGHS, XXE_FILE, XXE_PARAMETER, ATTLIST_DEFAULT],
                         ids=["billion-laughs", "xxe-file", "xxe-parameter", "attlist-default"])
def test_dtd_tricks_are_refused_never_expanded(raw):
    with pytest.raises(DaticertRefused) as info:
        parse_daticert(raw)
    assert "DTD internal subset" in str(info.value)
    assert "root:" not in str(info.value)  # nothing of /etc/passwd


def test_entity_declarations_stay_refused_without_the_internal_subset_check():
    """Defence in depth: with the internal-subset refusal switched off, defusedxml still
    refuses the entity declaration instead of expanding it."""
    parser = _Parser()
    parser.parser.StartDoctypeDeclHandler = None
    with pytest.raises(EntitiesForbidden):
        parser.feed(XXE_FILE)
        parser.close()


def test_oversize_is_refused_before_parsing():
    padding = b" " * (MAX_DATICERT_OCTETS - len(PEC_MD_EXAMPLE))
    assert parse_daticert(PEC_MD_EXAMPLE + padding).tipo == "avvenuta-consegna"  # at the cap
    with pytest.raises(DaticertRefused, match="more than the 262144 accepted"):
        parse_daticert(PEC_MD_EXAMPLE + padding + b" ")


def test_every_truncation_and_random_damage_gives_a_daticert_or_daticert_error():
    rng = random.Random(11)
    sample = daticert_xml("accettazione", ISTANZA, emesso=ISTANZA.inviato,
                          gestore_emittente="Gestore Esempio S.p.A.")
    for cut in range(0, len(sample), 3):
        try:
            parse_daticert(sample[:cut])
        except DaticertError:
            pass
    for _ in range(300):
        damaged = bytearray(sample)
        for _ in range(rng.randint(1, 5)):
            damaged[rng.randrange(len(damaged))] = rng.choice(b'<>&;/"=! \x00\xff\xc3x')
        try:
            assert isinstance(parse_daticert(bytes(damaged)), Daticert)
        except DaticertError:
            pass
