"""Parsing ``daticert.xml``, the certification data a PEC provider attaches to its messages.

What: :func:`parse_daticert` turns the (decoded) octets of the ``daticert.xml`` part into a
frozen :class:`Daticert`: ``tipo``/``errore`` of ``<postacert>``, the ``<intestazione>`` fields
and the ``<dati>`` fields, text values stripped of surrounding whitespace, plus the
``<data>`` time as an aware UTC datetime (:attr:`Daticert.timestamp`).

Why: receipts and buste are classified and correlated by their daticert (``PEC.md`` sections 3
and 4): ``identificativo`` and ``msgid`` tie a receipt to its send, ``consegna`` names the
recipient, ``data`` is the legally relevant time.

Safety: the XML is untrusted (anyone can mail a part named ``daticert.xml``), so it is parsed
with ``defusedxml``: entity declarations (billion laughs, quadratic blow-up) and external
references (XXE) raise :class:`DaticertRefused`, and so does a DTD internal subset, whose
attribute defaults could inject ``tipo`` or ``errore`` values.  A bare ``<!DOCTYPE postacert
PUBLIC ... "postacert.dtd">`` line, which some providers write, is accepted but never fetched.
The input is capped at :data:`MAX_DATICERT_OCTETS` before the parser sees it.

Leniency (cardinalities in the DTD are uncertain, providers differ): only the ``<postacert>``
root, its ``tipo`` attribute and a non-empty ``<identificativo>`` are required; everything else
may be missing (``None`` or an empty tuple).  Unknown ``tipo``/``errore`` values are kept as
given; :func:`is_known_tipo` and :func:`is_known_errore` tell them apart.  Element names are
matched case-insensitively and without namespace.  UTF-8 and ISO-8859-1 (any encoding expat
or Python knows) are accepted as declared; an undeclared or wrongly declared document that is
not valid UTF-8 is read as ISO-8859-1 rather than refused.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from defusedxml.common import DefusedXmlException, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser

__all__ = [
    "MAX_DATICERT_OCTETS", "TIPI", "ERRORI", "RICEVUTA_TIPI", "DaticertError", "DaticertRefused",
    "Daticert", "parse_daticert", "is_known_tipo", "is_known_errore", "normalise_message_id",
    "pec_timestamp",
]

#: Largest ``daticert.xml`` accepted; real ones are 1-3 KiB even with hundreds of recipients.
MAX_DATICERT_OCTETS = 256 * 1024

#: ``<postacert tipo>`` values of the regole tecniche (PEC.md section 3).
TIPI = frozenset({
    "accettazione", "non-accettazione", "presa-in-carico", "avvenuta-consegna",
    "posta-certificata", "errore-consegna", "preavviso-errore-consegna", "rilevazione-virus",
})
#: ``<postacert errore>`` values; ``nessuno`` is the default.
ERRORI = frozenset({"nessuno", "no-dest", "no-dominio", "virus", "altro"})
#: ``<ricevuta tipo>`` values; ``completa`` is the default when the attribute is missing.
RICEVUTA_TIPI = frozenset({"completa", "breve", "sintetica"})


class DaticertError(ValueError):
    """The octets are not a usable ``daticert.xml`` (malformed, wrong root, no identificativo)."""


class DaticertRefused(DaticertError):
    """The document uses XML features refused for safety, or is too large to parse."""


@dataclass(frozen=True, kw_only=True)
class Daticert:
    """The content of one ``daticert.xml``; raw strings as written, stripped of outer whitespace.

    ``destinatari`` holds ``(address, tipo)`` pairs, ``tipo`` being ``certificato``,
    ``esterno`` or None when the attribute is missing.  ``giorno``/``ora``/``zona`` are the raw
    ``<data>`` values; :attr:`timestamp` interprets them.
    """

    tipo: str
    errore: str = "nessuno"
    mittente: str | None = None
    destinatari: tuple[tuple[str, str | None], ...] = ()
    risposte: str | None = None
    oggetto: str | None = None
    gestore_emittente: str | None = None
    giorno: str | None = None
    ora: str | None = None
    zona: str | None = None
    identificativo: str
    msgid: str | None = None
    ricevuta_tipo: str | None = None
    consegna: str | None = None
    ricezione: tuple[str, ...] = ()
    errore_esteso: str | None = None

    @property
    def timestamp(self) -> dt.datetime | None:
        """``<data>`` as an aware UTC datetime; None when missing or not a valid time."""
        return pec_timestamp(self.giorno, self.ora, self.zona)

    @property
    def is_known_tipo(self) -> bool:
        """True when ``tipo`` is one of the eight values of the regole tecniche."""
        return is_known_tipo(self.tipo)

    @property
    def normalised_msgid(self) -> str | None:
        """``msgid`` as :func:`normalise_message_id` makes it, for the lenient match of PEC.md §4."""
        return normalise_message_id(self.msgid) if self.msgid is not None else None


def is_known_tipo(tipo: str) -> bool:
    """True for the eight ``<postacert tipo>`` values; invented ones (``non-pec``) are False."""
    return tipo in TIPI


def is_known_errore(errore: str) -> bool:
    """True for the five ``<postacert errore>`` values."""
    return errore in ERRORI


_WHITESPACE = re.compile(r"\s+")


def normalise_message_id(value: str) -> str:
    """A Message-ID reduced for comparison: whitespace (folding included) removed, the
    surrounding ``<``/``>`` stripped, lowercased.  ``" <AbC@x.IT\\r\\n >"`` gives ``abc@x.it``.

    PEC.md §4 step 2: the exact ``X-Riferimento-Message-ID`` match comes first; this is the
    fallback for providers that refold or re-case the identifier."""
    compact = _WHITESPACE.sub("", value)
    if compact.startswith("<") and compact.endswith(">"):
        compact = compact[1:-1]
    return compact.lower()


# -- time -------------------------------------------------------------------------------------

_GIORNO = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_ORA = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?")
_ZONA = re.compile(r"([+-])(\d{2}):?(\d{2})")


def pec_timestamp(giorno: str | None, ora: str | None, zona: str | None) -> dt.datetime | None:
    """``dd/mm/yyyy``, ``HH:MM:SS`` at offset ``zona`` (``+0200``) as an aware UTC datetime.

    ``01/04/2025 00:30:12 +0200`` is ``2025-03-31 22:30:12 UTC``: the offset is subtracted,
    so a time just after midnight lands on the previous UTC day.  None for missing parts or
    values that are no real time (31 February, 25:00, ``zona="CET"``), never an exception."""
    if giorno is None or ora is None or zona is None:
        return None
    d, t, z = _GIORNO.fullmatch(giorno), _ORA.fullmatch(ora), _ZONA.fullmatch(zona)
    if d is None or t is None or z is None:
        return None
    offset = _offset(z)
    if offset is None:
        return None
    try:
        local = dt.datetime(int(d[3]), int(d[2]), int(d[1]), int(t[1]), int(t[2]),
                            int(t[3] or 0), tzinfo=offset)
        return local.astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):
        return None


def _offset(match: re.Match) -> dt.timezone | None:
    hours, minutes = int(match[2]), int(match[3])
    if hours > 23 or minutes > 59:
        return None
    delta = dt.timedelta(hours=hours, minutes=minutes)
    return dt.timezone(-delta if match[1] == "-" else delta)


# -- XML --------------------------------------------------------------------------------------

class _Parser(DefusedXMLParser):
    """defusedxml's parser (entities and external references refused) that also refuses a DTD
    internal subset: its ``<!ATTLIST>`` defaults would add attributes the text does not show."""

    def __init__(self, encoding: str | None = None) -> None:
        super().__init__(encoding=encoding, forbid_dtd=False, forbid_entities=True,
                         forbid_external=True)
        self.parser.StartDoctypeDeclHandler = self._refuse_internal_subset

    @staticmethod
    def _refuse_internal_subset(name, sysid, pubid, has_internal_subset) -> None:
        if has_internal_subset:
            raise DaticertRefused(f"daticert.xml has a DTD internal subset (<!DOCTYPE {name} [...]>):"
                                  " refused, its entity or attribute declarations could expand"
                                  " or change the document")


_DECLARED_ENCODING = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _parse_xml(data: bytes) -> ET.Element:
    """The root element; falls back to ISO-8859-1 for a document that claims (or defaults to)
    UTF-8 but is not, as some providers' Latin-1 text ends up.  Raises DaticertError."""
    try:
        return _feed(data, None)
    except DaticertRefused:
        raise
    except DaticertError:
        if _claims_utf8(data) and not _is_utf8(data):
            return _feed(data, "iso-8859-1")
        raise


def _feed(data: bytes, encoding: str | None) -> ET.Element:
    parser = _Parser(encoding)
    try:
        parser.feed(data)
        return parser.close()
    except DaticertError:
        raise
    except DefusedXmlException as exc:
        raise DaticertRefused(f"daticert.xml refused: {_refusal(exc)}") from None
    except (ET.ParseError, ValueError, LookupError) as exc:
        raise DaticertError(f"daticert.xml is not well-formed XML: {exc}") from None


def _refusal(exc: DefusedXmlException) -> str:
    if isinstance(exc, EntitiesForbidden):
        return f"it declares the entity {exc.name!r} (entities are never expanded)"
    if isinstance(exc, ExternalReferenceForbidden):
        return f"it references the external entity {exc.sysid!r}"
    return str(exc)


def _claims_utf8(data: bytes) -> bool:
    declared = _DECLARED_ENCODING.match(data)
    return declared is None or declared[1].lower().replace(b"_", b"-") in (b"utf-8", b"utf8")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _local(tag: object) -> str:
    """``{urn:x}Postacert`` -> ``postacert``; comments and processing instructions -> ``""``."""
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2].lower()


def _children(parent: ET.Element | None, name: str) -> list[ET.Element]:
    if parent is None:
        return []
    return [child for child in parent if _local(child.tag) == name]


def _child(parent: ET.Element | None, name: str) -> ET.Element | None:
    found = _children(parent, name)
    return found[0] if found else None


def _text(element: ET.Element | None) -> str | None:
    """All text inside ``element``, stripped; None when the element is missing."""
    if element is None:
        return None
    return "".join(element.itertext()).strip()


def _attr(element: ET.Element | None, name: str) -> str | None:
    if element is None:
        return None
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value.strip()
    return None


# -- the document -----------------------------------------------------------------------------

def parse_daticert(data: bytes) -> Daticert:
    """Parse the decoded octets of a ``daticert.xml`` part.

    Raises :class:`DaticertRefused` for oversize input and refused XML features,
    :class:`DaticertError` for anything else that is not a usable daticert (with a message
    that says what is wrong)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"daticert.xml must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_DATICERT_OCTETS:
        raise DaticertRefused(f"daticert.xml is {len(data)} octets, more than the "
                              f"{MAX_DATICERT_OCTETS} accepted")
    root = _parse_xml(_trim_leading_space(data))
    return _daticert(root)


def _trim_leading_space(data: bytes) -> bytes:
    """Drop blank lines before ``<?xml``, which expat refuses but decoders leave behind."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16: leave to the parser
        return data
    return data.lstrip(b" \t\r\n")


def _daticert(root: ET.Element) -> Daticert:
    if _local(root.tag) != "postacert":
        raise DaticertError(f"daticert.xml root element is <{_local(root.tag) or root.tag}>,"
                            " not <postacert>")
    tipo = _attr(root, "tipo")
    if not tipo:
        raise DaticertError("<postacert> has no tipo attribute")
    intestazione, dati = _child(root, "intestazione"), _child(root, "dati")
    data = _child(dati, "data")
    return Daticert(
        tipo=tipo,
        errore=_attr(root, "errore") or "nessuno",
        mittente=_text(_child(intestazione, "mittente")),
        destinatari=tuple((_text(d) or "", _attr(d, "tipo"))
                          for d in _children(intestazione, "destinatari")),
        risposte=_text(_child(intestazione, "risposte")),
        oggetto=_text(_child(intestazione, "oggetto")),
        gestore_emittente=_text(_child(dati, "gestore-emittente")),
        giorno=_text(_child(data, "giorno")),
        ora=_text(_child(data, "ora")),
        zona=_attr(data, "zona"),
        identificativo=_identificativo(dati),
        msgid=_text(_child(dati, "msgid")),
        ricevuta_tipo=_ricevuta_tipo(_child(dati, "ricevuta")),
        consegna=_text(_child(dati, "consegna")),
        ricezione=tuple(_text(r) or "" for r in _children(dati, "ricezione")),
        errore_esteso=_text(_child(dati, "errore-esteso")),
    )


def _identificativo(dati: ET.Element | None) -> str:
    """The PEC identifier: without it a document correlates with nothing, so it is required."""
    if dati is None:
        raise DaticertError("<postacert> has no <dati> element, hence no <identificativo>")
    value = _text(_child(dati, "identificativo"))
    if value is None:
        raise DaticertError("<dati> has no <identificativo>")
    if not value:
        raise DaticertError("<identificativo> is empty")
    return value


def _ricevuta_tipo(ricevuta: ET.Element | None) -> str | None:
    """``<ricevuta tipo>`` lowercased: ``completa`` when the attribute is absent (the DTD
    default), None without the element or for a value that is not one of the three."""
    if ricevuta is None:
        return None
    value = (_attr(ricevuta, "tipo") or "completa").lower()
    return value if value in RICEVUTA_TIPI else None
