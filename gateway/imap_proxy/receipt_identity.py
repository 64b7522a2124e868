"""A receipt's identificativo, which only its ``daticert.xml`` carries (PEC.md sections 3 and 4).

A busta's identificativo is its Message-ID; a receipt's Message-ID is a fresh provider ID, and
the identificativo it certifies — the one an auditor searches by, the same on the busta and on
all its receipts — is only in the daticert.xml attached to it.  So, for the receipts among the
messages the gateway has just identified, it asks the provider two more things on the
person's connection, between their commands:

1. ``UID FETCH <receipts> (UID BODYSTRUCTURE)``: where each receipt's own daticert.xml is
   (:func:`~gateway.imap_proxy.bodystructure.find_daticert`: a direct child of the signed
   multipart/mixed, never one inside postacert.eml, where a forged receipt would hide it);
2. ``UID FETCH <receipts> (UID BODY.PEEK[<section>])``, one command per distinct section: just
   that part, a couple of kilobytes, parsed with external entities refused
   (:mod:`gateway.pec.daticert`).

Pure helpers only; :class:`~gateway.imap_proxy.identity_lookups.IdentityLookups` sends the
commands and keeps the state.
"""

from __future__ import annotations

import base64
import binascii
import quopri

from gateway.audit.events import MessageRef
from gateway.imap_proxy.bodystructure import DaticertPart, bodystructure_in_fetch, find_daticert
from gateway.imap_proxy.sequence_set import format_numbers
from gateway.imap_proxy.syntax import Atom, String
from gateway.pec.daticert import MAX_DATICERT_OCTETS, DaticertError, parse_daticert

__all__ = ["is_receipt", "structure_line", "part_line", "located_part", "part_identificativo"]

#: Kinds a message carries in ``X-Trasporto`` (its own Message-ID is the identificativo);
#: every other kind came from ``X-Ricevuta``.
_TRANSPORT_KINDS = frozenset({"posta-certificata", "errore"})

#: Largest part fetched: a daticert is a few kilobytes, base64 adds a third.
MAX_PART_OCTETS = MAX_DATICERT_OCTETS * 4 // 3 + 4096


def is_receipt(ref: MessageRef) -> bool:
    """A receipt whose identificativo is not known yet."""
    return ref.pec_kind is not None and ref.pec_kind not in _TRANSPORT_KINDS and ref.pec_id is None


def structure_line(tag: str, uids: list[int]) -> bytes:
    return f"{tag} UID FETCH {format_numbers(uids)} (UID BODYSTRUCTURE)\r\n".encode()


def part_line(tag: str, uids: list[int], section: str) -> bytes:
    return f"{tag} UID FETCH {format_numbers(uids)} (UID BODY.PEEK[{section}])\r\n".encode()


def _uid(items: list) -> int | None:
    return next((int(v) for k, v in zip(items[::2], items[1::2])
                 if str(k).upper() == "UID" and str(v).isdigit()), None)


def located_part(items: object) -> tuple[int | None, DaticertPart | None] | None:
    """From a ``* n FETCH (UID u BODYSTRUCTURE …)`` item list: (UID, where its own signed
    daticert.xml is — None when there is none, it is unsigned, or too large to be one); None
    when the reply carries no BODYSTRUCTURE (not an answer to the gateway's question)."""
    structure = bodystructure_in_fetch(items) if isinstance(items, list) else None
    if structure is None:
        return None
    part = find_daticert(structure)
    if part is not None and (not part.signed or part.size > MAX_PART_OCTETS):
        part = None
    return _uid(items), part


def part_identificativo(items: object, section: str, encoding: str) -> tuple[int | None, str | None] | None:
    """From a ``* n FETCH (UID u BODY[section] {…})`` item list: (UID, the daticert's
    identificativo — None when the part is not a usable daticert); None when the reply carries
    no such part (not an answer to the gateway's question)."""
    if not isinstance(items, list):
        return None
    wanted = f"BODY[{section}]"
    raw = next((bytes(v) for k, v in zip(items[::2], items[1::2])
                if isinstance(k, Atom) and k.upper() == wanted and isinstance(v, String)), None)
    if raw is None:
        return None
    try:
        return _uid(items), parse_daticert(_decoded(raw, encoding)).identificativo
    except (DaticertError, ValueError, binascii.Error):
        return _uid(items), None


def _decoded(raw: bytes, encoding: str) -> bytes:
    """The part's octets without its Content-Transfer-Encoding."""
    if encoding == "base64":
        return base64.b64decode(b"".join(raw.split()), validate=True)
    if encoding == "quoted-printable":
        return quopri.decodestring(raw)
    return raw
