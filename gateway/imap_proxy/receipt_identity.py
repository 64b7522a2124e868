"""A receipt's identificativo, which only its ``daticert.xml`` carries (PEC.md sections 3 and 4).

A busta's identificativo is its Message-ID; a receipt's Message-ID is a fresh provider ID, and
the identificativo it certifies — the one an auditor searches by, the same on the busta and on
all its receipts — is only in the daticert.xml attached to it.  So, for the receipts among the
messages the gateway has just identified, it asks the provider two more things on the
person's connection, between their commands:

1. ``FETCH <receipts> (UID BODYSTRUCTURE)``: where each receipt's own daticert.xml is
   (:func:`~gateway.imap_proxy.bodystructure.find_daticert`: a direct child of the signed
   multipart/mixed, never one inside postacert.eml, where a forged receipt would hide it);
2. ``FETCH <receipts> (UID BODY.PEEK[<section>]<0.N>)``, one command per distinct section: just
   that part, a couple of kilobytes and never more than N octets, parsed with external entities
   refused (:mod:`gateway.pec.daticert`).

Both are non-UID FETCHes, by sequence number: RFC 3501 §7.4.1 forbids EXPUNGE replies during a
FETCH, while a UID command may carry another session's expunges — which would then reach the
client while no command of its own is running, and shift the numbers of commands it has sent.
Every reply carrying the gateway's items is its own, whatever the value (``NIL`` for a message
expunged meanwhile), and never reaches the client.

Pure helpers only; :class:`~gateway.imap_proxy.identity_lookups.IdentityLookups` sends the
commands and keeps the state.
"""

from __future__ import annotations

import base64
import binascii
import quopri

from gateway.audit.events import MessageRef
from gateway.imap_proxy.bodystructure import DaticertPart, bodystructure_in_fetch, find_daticert
from gateway.imap_proxy.sequence_set import format_chunks
from gateway.imap_proxy.syntax import Atom, String
from gateway.pec.daticert import MAX_DATICERT_OCTETS, DaticertError, parse_daticert

__all__ = ["is_receipt", "structure_lines", "part_lines", "located_part", "part_identificativo"]

#: Kinds a message carries in ``X-Trasporto`` (its own Message-ID is the identificativo);
#: every other kind came from ``X-Ricevuta``.
_TRANSPORT_KINDS = frozenset({"posta-certificata", "errore"})

#: Largest part fetched: a daticert is a few kilobytes, base64 adds a third.
MAX_PART_OCTETS = MAX_DATICERT_OCTETS * 4 // 3 + 4096


def is_receipt(ref: MessageRef) -> bool:
    """A receipt whose identificativo is not known yet."""
    return ref.pec_kind is not None and ref.pec_kind not in _TRANSPORT_KINDS and ref.pec_id is None


def structure_lines(tagger, seqs: list[int]) -> list[bytes]:
    """The BODYSTRUCTURE question for these messages (by number), in commands of bounded length."""
    return [f"{tagger()} FETCH {chunk} (UID BODYSTRUCTURE)\r\n".encode() for chunk in format_chunks(seqs)]


def part_lines(tagger, seqs: list[int], section: str) -> list[bytes]:
    """The fetch of one daticert section of these messages, at most MAX_PART_OCTETS each."""
    return [f"{tagger()} FETCH {chunk} (UID BODY.PEEK[{section}]<0.{MAX_PART_OCTETS}>)\r\n".encode()
            for chunk in format_chunks(seqs)]


def _uid(items: list) -> int | None:
    return next((int(v) for k, v in zip(items[::2], items[1::2])
                 if str(k).upper() == "UID" and str(v).isdigit()), None)


def _has_item(items: list, name: str) -> bool:
    return any(isinstance(k, Atom) and k.upper() == name for k in items[::2])


def located_part(items: object) -> tuple[int | None, DaticertPart | None] | None:
    """From a ``* n FETCH (UID u BODYSTRUCTURE …)`` item list: (UID, where its own signed
    daticert.xml is — None when there is none, it is unsigned, or too large to be one); None
    when the reply carries no BODYSTRUCTURE (not an answer to the gateway's question)."""
    if not isinstance(items, list) or not _has_item(items, "BODYSTRUCTURE"):
        return None
    structure = bodystructure_in_fetch(items)
    part = find_daticert(structure) if structure is not None else None
    if part is not None and (not part.signed or part.size > MAX_PART_OCTETS):
        part = None
    return _uid(items), part


def part_identificativo(items: object, section: str, encoding: str) -> tuple[int | None, str | None] | None:
    """From a ``* n FETCH (UID u BODY[section] {…})`` item list: (UID, the daticert's
    identificativo — None when the part is not a usable daticert); None when the reply carries
    no such part (not an answer to the gateway's question)."""
    wanted = f"BODY[{section}]<0>"
    if not isinstance(items, list) or not _has_item(items, wanted):
        return None
    raw = next((bytes(v) for k, v in zip(items[::2], items[1::2])
                if isinstance(k, Atom) and k.upper() == wanted and isinstance(v, String)), None)
    if raw is None:  # NIL: the message is gone
        return _uid(items), None
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
