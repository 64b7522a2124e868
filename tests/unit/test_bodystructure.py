"""Locating the top-level daticert.xml in a BODYSTRUCTURE (gateway.imap_proxy.bodystructure).

The byte strings below are Dovecot 2.3's own BODYSTRUCTURE output for messages built by
``gateway.demo.pec_samples`` and by ``tests/test_daticert_dovecot.py`` (which checks the same
logic against a live Dovecot), copied verbatim, boundaries included.
"""

from __future__ import annotations

import random

import pytest

from gateway.imap_proxy.bodystructure import (BodyStructureError, DaticertPart,
                                              bodystructure_in_fetch, find_daticert,
                                              locate_daticert, parse_bodystructure)
from gateway.imap_proxy.syntax import Atom, String

P7S = (b'("application" "x-pkcs7-signature" ("name" "smime.p7s") NIL NIL "base64" 2070 NIL '
       b'("attachment" ("filename" "smime.p7s")) NIL NIL)')
SIGNED = (b' "signed" ("protocol" "application/x-pkcs7-signature" "micalg" "sha-256" "boundary" '
          b'"----=_Part_7c03df4b08561a65") NIL NIL NIL)')
DATICERT_1274 = (b'("application" "xml" ("name" "daticert.xml") NIL NIL "base64" 1274 NIL '
                 b'("inline" ("filename" "daticert.xml")) NIL NIL)')

# ricevuta_accettazione: multipart/signed > multipart/mixed > text/plain, daticert.xml
ACCETTAZIONE = (
    b'((("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 504 11 NIL NIL NIL '
    b'NIL)' + DATICERT_1274 + b' "mixed" ("boundary" "----=_Part_49f2dc820f9f1193") NIL NIL NIL)'
    + P7S + SIGNED)

# ricevuta_avvenuta_consegna (completa): the original travels as postacert.eml
CONSEGNA_COMPLETA = (
    b'((("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 369 8 NIL NIL NIL '
    b'NIL)("application" "xml" ("name" "daticert.xml") NIL NIL "base64" 1388 NIL ("inline" '
    b'("filename" "daticert.xml")) NIL NIL)("message" "rfc822" ("name" "postacert.eml") NIL NIL '
    b'"7bit" 578 ("Tue, 10 Jun 2025 11:30:00 +0200" "Istanza di rimborso TARI 2024" ((NIL NIL '
    b'"protocollo" "pec.example.it")) ((NIL NIL "protocollo" "pec.example.it")) ((NIL NIL '
    b'"protocollo" "pec.example.it")) ((NIL NIL "protocollo" "pec.comune-esempio.example.it")'
    b'(NIL NIL "ufficio.tributi" "pec.comune-esempio.example.it")) ((NIL NIL "tributi" '
    b'"comune-esempio.example.it")) NIL NIL NIL '
    b'"<opec21687.20250610113002.74075.549.1.23@pec.example.it>") ("text" "plain" ("charset" '
    b'"iso-8859-1") NIL NIL "quoted-printable" 59 1 NIL NIL NIL NIL) 13 NIL ("inline" '
    b'("filename" "postacert.eml")) NIL NIL) "mixed" ("boundary" "----=_Part_984e21f3d14a26ae") '
    b'NIL NIL NIL)' + P7S + SIGNED)

# busta_trasporto(html=True): multipart/alternative first, then daticert, then postacert.eml
BUSTA_HTML = (
    b'(((("text" "plain" ("charset" "utf-8") NIL NIL "quoted-printable" 414 10 NIL NIL NIL NIL)'
    b'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 481 11 NIL NIL NIL NIL) '
    b'"alternative" ("boundary" "----=_Alt_79f5b24a36e421cd") NIL NIL NIL)("application" "xml" '
    b'("name" "daticert.xml") NIL NIL "base64" 1118 NIL ("inline" ("filename" "daticert.xml")) '
    b'NIL NIL)("message" "rfc822" ("name" "postacert.eml") NIL NIL "7bit" 1768 ("Mon, 12 May '
    b'2025 09:15:40 +0200" "=?utf-8?q?Fattura_n=2E_42/2025_=E2=80=93_scadenza_gi=C3=A0_superata?=" '
    b'((NIL NIL "amministrazione" "pec.fornitore.example.it")) ((NIL NIL "amministrazione" '
    b'"pec.fornitore.example.it")) ((NIL NIL "amministrazione" "pec.fornitore.example.it")) '
    b'((NIL NIL "protocollo" "pec.example.it")) NIL NIL NIL '
    b'"<opec21453.20250512091542.83467.130.1.51@pec.fornitore.example.it>") (("text" "plain" '
    b'("charset" "iso-8859-1") NIL NIL "quoted-printable" 116 4 NIL NIL NIL NIL)("application" '
    b'"pdf" ("name" "Fattura_42_2025.pdf") NIL NIL "base64" 810 NIL ("attachment" ("filename" '
    b'"Fattura_42_2025.pdf")) NIL NIL) "mixed" ("boundary" "----=_NextPart_8a8191c4c4acd58b") NIL '
    b'NIL NIL) 37 NIL ("inline" ("filename" "postacert.eml")) NIL NIL) "mixed" ("boundary" '
    b'"----=_Part_edf06e821e3a9ad7") NIL NIL NIL)' + P7S + SIGNED)

# busta_anomalia: provider-signed, but no daticert at all
BUSTA_ANOMALIA = (
    b'((("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 335 8 NIL NIL NIL '
    b'NIL)("message" "rfc822" ("name" "postacert.eml") NIL NIL "7bit" 366 ("Mon, 02 Jun 2025 '
    b'07:45:00 +0200" "Offerta speciale cancelleria" ((NIL NIL "offerte" "example.com")) ((NIL NIL '
    b'"offerte" "example.com")) ((NIL NIL "offerte" "example.com")) ((NIL NIL "protocollo" '
    b'"pec.example.it")) NIL NIL NIL "<20250602054500.3acf305c@gw.example.com>") ("text" "plain" '
    b'("charset" "iso-8859-1") NIL NIL "quoted-printable" 38 1 NIL NIL NIL NIL) 11 NIL ("inline" '
    b'("filename" "postacert.eml")) NIL NIL) "mixed" ("boundary" "----=_Part_f484c31da32eaf47") '
    b'NIL NIL NIL)' + P7S + SIGNED)

# The postacert.eml of a forwarded accettazione: itself signed, with its own daticert.xml
FORWARDED_ACCETTAZIONE = (
    b'("message" "rfc822" ("name" "postacert.eml") NIL NIL "7bit" 4886 ("Sun, 01 Jun 2025 '
    b'00:15:02 +0200" "ACCETTAZIONE: Istanza di accesso agli atti" (("Posta Certificata" NIL '
    b'"posta-certificata" "pec.example.it")) (("Posta Certificata" NIL "posta-certificata" '
    b'"pec.example.it")) (("Posta Certificata" NIL "posta-certificata" "pec.example.it")) ((NIL '
    b'NIL "studio.rossi" "pec.example.it")) NIL NIL NIL '
    b'"<opec21864.20250601001502.54154.183.1.62@pec.example.it>") ((("text" "plain" ("charset" '
    b'"iso-8859-1") NIL NIL "quoted-printable" 449 10 NIL NIL NIL NIL)("application" "xml" '
    b'("name" "daticert.xml") NIL NIL "base64" 1166 NIL ("inline" ("filename" "daticert.xml")) '
    b'NIL NIL) "mixed" ("boundary" "----=_Part_818ee0db1f3bec99") NIL NIL NIL)("application" '
    b'"x-pkcs7-signature" ("name" "smime.p7s") NIL NIL "base64" 2070 NIL ("attachment" '
    b'("filename" "smime.p7s")) NIL NIL) "signed" ("protocol" "application/x-pkcs7-signature" '
    b'"micalg" "sha-256" "boundary" "----=_Part_4356b21de2fa55ea") NIL NIL NIL) 87 NIL ("inline" '
    b'("filename" "postacert.eml")) NIL NIL)')

# A completa delivery receipt whose original message forwarded someone's accettazione: the
# original (postacert.eml) holds a daticert two message/rfc822 levels down.
CONSEGNA_OF_FORWARDED = (
    b'((("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 31 1 NIL NIL NIL NIL)("application" '
    b'"xml" ("name" "daticert.xml") NIL NIL "base64" 1270 NIL ("inline" ("filename" '
    b'"daticert.xml")) NIL NIL)("message" "rfc822" ("name" "postacert.eml") NIL NIL "7bit" 5419 '
    b'(NIL "Ricevuta inoltrata" ((NIL NIL "studio.rossi" "pec.example.it")) ((NIL NIL '
    b'"studio.rossi" "pec.example.it")) ((NIL NIL "studio.rossi" "pec.example.it")) ((NIL NIL '
    b'"protocollo" "pec.comune-esempio.example.it")) NIL NIL NIL '
    b'"<opec21320.20250102090002.54903.178.1.81@pec.example.it>") (("text" "plain" ("charset" '
    b'"utf-8") NIL NIL "7bit" 22 1 NIL NIL NIL NIL)' + FORWARDED_ACCETTAZIONE + b' "mixed" '
    b'("boundary" "=_mixed_fbd12c677e278540") NIL NIL NIL) 105 NIL ("inline" ("filename" '
    b'"postacert.eml")) NIL NIL) "mixed" ("boundary" "=_mixed_5f71f9a46a94374c") NIL NIL NIL)'
    b'("application" "x-pkcs7-signature" ("name" "smime.p7s") NIL NIL "base64" 46 NIL '
    b'("attachment" ("filename" "smime.p7s")) NIL NIL) "signed" ("protocol" '
    b'"application/x-pkcs7-signature" "micalg" "sha-256" "boundary" "=_signed_d978afac2481ff1e") '
    b'NIL NIL NIL)')

# Plain mail with a spoofed X-Ricevuta: its only daticert is the forwarded receipt's
FORGED = (
    b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 16 1 NIL NIL NIL NIL)'
    + FORWARDED_ACCETTAZIONE + b' "mixed" ("boundary" "=_mixed_2a48fe0773ba0043") NIL NIL NIL)')

# An unsigned test-box receipt: daticert named only by the disposition (odd case), and a
# sibling whose 8-bit name Dovecot sends as a literal
UNSIGNED_WITH_LITERAL = (
    b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 34 1 NIL NIL NIL NIL)("application" '
    b'"pdf" ("name" {15}\r\nricevuta \xc3\xa8.pdf) NIL NIL "base64" 14 NIL NIL NIL NIL)'
    b'("application" "xml" NIL NIL NIL "base64" 1166 NIL ("inline" ("filename" "DatiCert.XML")) '
    b'NIL NIL) "mixed" ("boundary" "=_mixed_10f2d594e9ed5722") NIL NIL NIL)')

PLAIN_TEXT = (b'("text" "plain" ("charset" "iso-8859-1") NIL NIL "quoted-printable" 74 2 NIL NIL '
              b'NIL NIL)')


def part(section: str, size: int, signed: bool = True) -> DaticertPart:
    return DaticertPart(section, size, "base64", "application/xml", signed)


@pytest.mark.parametrize("raw, expected", [
    (ACCETTAZIONE, part("1.2", 1274)),
    (CONSEGNA_COMPLETA, part("1.2", 1388)),
    (BUSTA_HTML, part("1.2", 1118)),
    (CONSEGNA_OF_FORWARDED, part("1.2", 1270)),
    (UNSIGNED_WITH_LITERAL, part("3", 1166, signed=False)),
    (BUSTA_ANOMALIA, None),
    (FORGED, None),
    (PLAIN_TEXT, None),
], ids=["accettazione", "consegna-completa", "busta-html", "consegna-of-forwarded-receipt",
        "unsigned-literal", "busta-anomalia", "forged", "plain-text"])
def test_dovecot_structures(raw, expected):
    assert locate_daticert(raw) == expected
    assert find_daticert(parse_bodystructure(raw)) == expected


def test_parse_bodystructure_shapes():
    value = parse_bodystructure(UNSIGNED_WITH_LITERAL)
    pdf = value[1]
    assert pdf[:2] == [b"application", b"pdf"] and isinstance(pdf[0], String)
    assert pdf[2] == [b"name", "ricevuta è".encode() + b".pdf"] and pdf[2][1].literal
    assert pdf[3] == Atom("NIL") and pdf[6] == Atom("14")
    assert value[3] == b"mixed"


def without_extensions(raw: bytes) -> bytes:
    """The same structure as a server without extension data (or BODY) would send it."""
    return (raw.replace(b' NIL ("inline" ("filename" "daticert.xml")) NIL NIL)', b")")
               .replace(b' NIL ("attachment" ("filename" "smime.p7s")) NIL NIL)', b")"))


def test_without_extension_data_the_content_type_name_suffices():
    stripped = without_extensions(ACCETTAZIONE)
    assert b"filename" not in stripped.replace(b"smime", b"")
    assert locate_daticert(stripped) == part("1.2", 1274)
    assert locate_daticert(stripped.replace(b'("name" "daticert.xml")', b"NIL")) is None


def mixed(*children: bytes, signed: bool = True) -> bytes:
    inner = b"(" + b"".join(children) + b' "mixed" ("boundary" "b1") NIL NIL NIL)'
    if not signed:
        return inner
    return b"(" + inner + P7S + b' "signed" ("protocol" "application/x-pkcs7-signature") NIL NIL NIL)'


TEXT = b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 10 1 NIL NIL NIL NIL)'


def xml_part(name_param: bytes = b'("name" "daticert.xml")', disposition: bytes = b"NIL",
             kind: bytes = b'"application" "xml"', size: bytes = b"900") -> bytes:
    return (b"(" + kind + b" " + name_param + b' NIL NIL "base64" ' + size + b" NIL " + disposition
            + b" NIL NIL)")


@pytest.mark.parametrize("raw, expected", [
    (mixed(TEXT, xml_part()), "1.2"),
    (mixed(xml_part(), TEXT), "1.1"),
    (mixed(TEXT, TEXT, TEXT, xml_part(b'("NAME" " DatiCert.xml ")')), "1.4"),
    (mixed(TEXT, xml_part(b'("name*" "utf-8\'\'daticert%2Exml")')), "1.2"),
    (mixed(TEXT, xml_part(b"NIL", b'("inline" ("FILENAME" "daticert.xml"))')), "1.2"),
    (mixed(TEXT, xml_part(kind=b'"text" "xml"')), "1.2"),  # text/* has a line count, still found
    (mixed(TEXT, xml_part(), signed=False), "2"),
    (mixed(TEXT, xml_part(b'("name" "daticert.xml.p7m")')), None),
    (mixed(TEXT, xml_part(), xml_part()), None),  # two candidates: ambiguous
    (mixed(TEXT, b"(" + TEXT + xml_part() + b' "alternative")'), None),  # not a direct child
    (b"(" + xml_part() + P7S + b' "signed")', None),  # signed without multipart/mixed
    (b"((" + TEXT + xml_part() + b' "related")' + P7S + b' "signed")', None),
    (b"(" + TEXT + xml_part() + b' "alternative")', None),  # unsigned, not multipart/mixed
    (mixed(TEXT, xml_part(size=b"NIL")), None),  # no size: a caller could not bound the fetch
    (mixed(TEXT, xml_part(kind=b'"message" "rfc822"')), None),
], ids=["second", "first", "case-and-space", "rfc2231", "filename-only", "text-xml",
        "unsigned", "other-name", "two", "nested-alternative", "signed-no-mixed",
        "signed-related", "unsigned-alternative", "no-size", "message-named-daticert"])
def test_which_part_counts(raw, expected):
    found = locate_daticert(raw)
    assert (found.section if found else None) == expected


def test_only_the_signed_layout_is_marked_signed():
    assert locate_daticert(mixed(TEXT, xml_part())).signed
    assert not locate_daticert(mixed(TEXT, xml_part(), signed=False)).signed


def test_media_type_and_encoding_are_reported():
    found = locate_daticert(mixed(TEXT, xml_part(kind=b'"TEXT" "XML"').replace(b'"base64"',
                                                                                 b'"BASE64"')))
    assert (found.media_type, found.encoding) == ("text/xml", "base64")


@pytest.mark.parametrize("raw", [
    b"", b"NIL", b"(", b")", b"(()", b'"text" "plain"',
    b'("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 10 1) extra',
    b'(("text" "plain")\r\n"mixed")',  # a line break outside a literal
    b'("name" {50}\r\nshort)',  # literal shorter than announced
    b'("name" {5}', b"(" * 200 + b")" * 200, b'("unterminated', b"\x00\xff\xfe",
    b"(" + b"x" * (1024 * 1024 + 1) + b")",
])
def test_octets_that_do_not_tokenise(raw):
    with pytest.raises(BodyStructureError):
        parse_bodystructure(raw)
    assert locate_daticert(raw) is None


@pytest.mark.parametrize("raw", [b"()", b'("text")', b"(NIL NIL)", b'(() "mixed")',
                                 b'((()) "signed")', b'(("a" "b" NIL NIL NIL "7bit" x) "mixed")'])
def test_octets_that_tokenise_into_no_body(raw):
    assert isinstance(parse_bodystructure(raw), list)
    assert locate_daticert(raw) is None


@pytest.mark.parametrize("value", [
    None, 42, "x", b"x", [], [[]], [[], []], [[[]]], [Atom("NIL")],
    [[b"text", b"plain"], b"mixed"], [[[b"a"]], [b"b"], b"signed"],
    [[b"application", b"xml", [b"name"], None, None, b"base64", Atom("12")], b"mixed"],
    [[b"application", b"xml", [b"name", b"daticert.xml"], None, None, b"base64", b"12"],
     b"mixed"],
    [[b"application", b"xml", [b"name", b"daticert.xml"], None, None, b"base64", Atom("-1")],
     b"mixed"],
])
def test_odd_python_values_give_none(value):
    assert find_daticert(value) is None


def test_plain_python_values_count_like_tokens():
    """A caller with its own tokeniser: bytes for strings, str for atoms, None for NIL."""
    value = [[b"application", b"xml", [b"name", b"daticert.xml"], None, "NIL", b"base64", "12"],
             "mixed"]
    assert find_daticert(value) == part("1", 12, signed=False)
    signed = [value, [b"application", b"x-pkcs7-signature", None, None, None, b"base64", "9"],
              b"signed"]
    assert find_daticert(signed) == part("1.1", 12)


def test_every_truncation_and_random_damage_is_handled():
    rng = random.Random(7)
    for raw in (CONSEGNA_OF_FORWARDED, UNSIGNED_WITH_LITERAL):
        for cut in range(0, len(raw), 7):
            assert locate_daticert(raw[:cut]) in (None, locate_daticert(raw))
        for _ in range(100):
            damaged = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(len(damaged))] = rng.choice(b'()" {}\r\n\\NIL0123x\x00\xff')
            result = locate_daticert(bytes(damaged))
            assert result is None or isinstance(result, DaticertPart)


def test_bodystructure_in_fetch_items():
    items = [Atom("UID"), Atom("7"), Atom("BODYSTRUCTURE"), parse_bodystructure(ACCETTAZIONE)]
    assert find_daticert(bodystructure_in_fetch(items)) == part("1.2", 1274)
    assert bodystructure_in_fetch([Atom("UID"), Atom("7")]) is None
    assert bodystructure_in_fetch([Atom("BODYSTRUCTURE"), Atom("NIL")]) is None
    assert bodystructure_in_fetch(None) is None
