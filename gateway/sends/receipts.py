"""From a receipt in the mailbox to what it changes about a send (PEC.md sections 1, 4 and 5).

Pure: bytes and parsed values in, decisions out; the store is only asked through the
``finder`` given to :func:`match_send` and changed by :mod:`gateway.sends.linking`.

1. **Trust** (:func:`read_receipt`).  A receipt counts only when its ``X-Ricevuta`` is a
   *top-level* header (the watcher asks for the top-level header block, never a part's), the
   message is ``multipart/signed`` with a ``daticert.xml`` as a direct part of its signed
   ``multipart/mixed`` (:func:`~gateway.imap_proxy.bodystructure.find_daticert`, ``signed``),
   the daticert parses (external entities refused, :mod:`gateway.pec.daticert`) and its
   ``tipo`` agrees with ``X-Ricevuta``.  PEC.md section 5: "Receipts or buste forwarded inside
   ``postacert.eml``, and spoofed headers on plain mail, must not change state."  A plain
   message with a typed ``X-Ricevuta`` header has no such part; a receipt forwarded inside
   another message sits below a ``message/rfc822`` part, which never counts.
2. **Which send** (:func:`match_send`), PEC.md section 4 step 2: the exact
   ``X-Riferimento-Message-ID`` within the mailbox, then the same normalised (``<>`` stripped,
   unfolded, trimmed, lower case), then the daticert ``msgid`` (exact, then normalised), then an
   identificativo already known from the accettazione.
3. **What changes** (:func:`transition`), PEC.md section 4 steps 3 and 4: an accettazione
   accepts the send (the identificativo, the daticert time in UTC, each recipient's
   ``certificato``/``esterno``); a non-accettazione is final for the whole send; an
   avvenuta-consegna delivers, an errore-consegna fails (``errore-esteso`` kept), a preavviso
   warns — the ``<consegna>`` recipient only, and a preavviso never overrides a delivery or a
   failure; presa-in-carico and rilevazione-virus change nothing but are recorded.
4. **Once** (:attr:`Receipt.dedupe_key`), PEC.md section 4 step 5: (``tipo``,
   identificativo, ``consegna``, ``giorno`` + ``ora``).
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.imap_proxy.bodystructure import DaticertPart
from gateway.imap_proxy.identity import parse_header_block
from gateway.imap_proxy.receipt_identity import MAX_PART_OCTETS
from gateway.pec.daticert import Daticert, DaticertError, normalise_message_id, parse_daticert

__all__ = ["RECEIPT_TIPI", "MAX_PART_OCTETS", "Receipt", "NotCounted", "Transition", "SendFinder",
           "ricevuta_of", "read_receipt", "decode_part", "match_send", "transition", "normalise_address"]

#: The ``X-Ricevuta`` values (PEC.md section 1: a closed set of 7; no ``mancata-consegna``).
RECEIPT_TIPI = frozenset({"accettazione", "non-accettazione", "presa-in-carico", "avvenuta-consegna",
                          "errore-consegna", "preavviso-errore-consegna", "rilevazione-virus"})
#: Receipts about one recipient, named by ``<consegna>``, and the state each gives it.
RECIPIENT_STATE = {"avvenuta-consegna": "delivered", "errore-consegna": "failed",
                   "preavviso-errore-consegna": "warned"}


def normalise_address(address: str) -> str:
    """An address as the send records keep recipients: no ``<>`` or spaces, lower case."""
    return address.strip().strip("<>").strip().lower()


@dataclass(frozen=True)
class NotCounted:
    """A message that names itself a receipt but does not count as one, and why (for the log)."""

    reason: str


@dataclass(frozen=True)
class Receipt:
    """A trusted receipt: its ``X-Ricevuta`` kind, its ``X-Riferimento-Message-ID`` as written
    (unfolded), and its own daticert."""

    tipo: str
    riferimento: str | None
    daticert: Daticert

    @property
    def identificativo(self) -> str:
        return self.daticert.identificativo

    @property
    def consegna(self) -> str | None:
        """The recipient a (non-)delivery or preavviso is about, normalised; None otherwise."""
        value = self.daticert.consegna
        return normalise_address(value) if value else None

    @property
    def at(self) -> str | None:
        """The daticert time in UTC, ISO 8601 (PEC.md section 4: the legally relevant time)."""
        stamp = self.daticert.timestamp
        return stamp.isoformat() if stamp is not None else None

    @property
    def dedupe_key(self) -> str:
        """PEC.md section 4 step 5: (tipo, identificativo, consegna, giorno + ora)."""
        d = self.daticert
        return "\x1f".join((self.tipo, d.identificativo, self.consegna or "", f"{d.giorno or ''} {d.ora or ''}"))

    @property
    def detail(self) -> str | None:
        """What the receipt says beyond its kind: ``errore-esteso``, else a non-default ``errore``."""
        d = self.daticert
        if d.errore_esteso:
            return d.errore_esteso
        return d.errore if d.errore and d.errore != "nessuno" else None


_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def _top_level(header_block: bytes) -> dict[str, str]:
    """The fields of the header block, up to its first blank line (nothing after it is a header)."""
    return parse_header_block(_BLANK_LINE.split(header_block, maxsplit=1)[0])


def ricevuta_of(header_block: bytes) -> str | None:
    """The top-level ``X-Ricevuta`` value, trimmed and lower-cased (PEC.md section 5: compare
    names and values case-insensitively); None when there is none."""
    value = _top_level(header_block).get("X-RICEVUTA")
    value = " ".join(value.split()).lower() if value is not None else ""
    return value or None


def decode_part(raw: bytes, encoding: str) -> bytes:
    """The part's octets without their Content-Transfer-Encoding; ValueError when they do not decode."""
    if encoding == "base64":
        try:
            return base64.b64decode(b"".join(raw.split()), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"bad base64: {exc}") from None
    if encoding == "quoted-printable":
        return quopri.decodestring(raw)
    return raw


def read_receipt(header_block: bytes, part: DaticertPart | None, octets: bytes | None) -> Receipt | NotCounted | None:
    """The receipt a message is, from its top-level header block, where its own daticert is
    (``find_daticert`` on its BODYSTRUCTURE) and that part's fetched octets (still
    transfer-encoded).  None for a message that does not claim to be a receipt at all (no
    ``X-Ricevuta``: a busta, ordinary mail); :class:`NotCounted` for one that claims it but
    cannot be trusted (see the module docstring)."""
    tipo = ricevuta_of(header_block)
    if tipo is None:
        return None
    if tipo not in RECEIPT_TIPI:
        return NotCounted(f"X-Ricevuta {tipo[:40]!r} is not a receipt kind")
    if part is None:
        return NotCounted("no daticert.xml directly in the message: not a provider receipt (a plain message, "
                          "or a receipt forwarded inside another)")
    if not part.signed:
        return NotCounted("not multipart/signed: no provider signature can vouch for it")
    if part.size > MAX_PART_OCTETS:
        return NotCounted(f"its daticert.xml is {part.size} octets, too large to be one")
    if octets is None:
        return NotCounted("its daticert.xml could not be fetched")
    try:
        daticert = parse_daticert(decode_part(octets, part.encoding))
    except (DaticertError, ValueError) as exc:
        return NotCounted(f"its daticert.xml is not usable: {str(exc)[:200]}")
    if daticert.tipo.strip().lower() != tipo:
        return NotCounted(f"X-Ricevuta {tipo!r} disagrees with the daticert tipo {daticert.tipo[:40]!r}")
    riferimento = _top_level(header_block).get("X-RIFERIMENTO-MESSAGE-ID")
    return Receipt(tipo, " ".join(riferimento.split()) if riferimento else None, daticert)


# -- which send ---------------------------------------------------------------------------------

class SendFinder(Protocol):
    """What :func:`match_send` asks (a :class:`~gateway.sends.store.SendStore` answers)."""

    def find(self, mailbox: str, message_id: str) -> Any: ...

    def find_normalised(self, mailbox: str, normalised: str) -> Any: ...

    def by_identificativo(self, identificativo: str) -> Any: ...


def match_send(receipt: Receipt, mailbox: str, finder: SendFinder) -> tuple[Any, str] | None:
    """``(send, how)`` for the send the receipt is about, ``how`` naming the step of PEC.md
    section 4 that found it; None when it is about no send made through the gateway."""
    tried: set[str] = set()
    for how, ident in (("x-riferimento", receipt.riferimento), ("msgid", receipt.daticert.msgid)):
        if not ident or normalise_message_id(ident) in tried:
            continue
        tried.add(normalise_message_id(ident))
        found = finder.find(mailbox, ident)
        if found is None:
            found = finder.find_normalised(mailbox, normalise_message_id(ident))
            how += " (normalised)" if found is not None else ""
        if found is not None:
            return found, how
    found = finder.by_identificativo(receipt.identificativo)
    if found is not None and found.mailbox == mailbox:
        return found, "identificativo"
    return None


# -- what changes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transition:
    """What one receipt does to its send.  ``send_state`` is ``accepted``, ``not_accepted`` or
    None (unchanged); ``recipient``/``recipient_state`` name one recipient's new state;
    ``note`` says why nothing changes, when nothing does."""

    send_state: str | None = None
    identificativo: str | None = None
    at: str | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    recipient: str | None = None
    recipient_state: str | None = None
    detail: str | None = None
    note: str | None = None


def transition(receipt: Receipt, send: Any) -> Transition:
    """The change ``receipt`` makes to ``send`` (a :class:`~gateway.sends.store.SendRecord`),
    by PEC.md section 4; the store applies it (a preavviso after a delivery is refused there)."""
    tipo, d = receipt.tipo, receipt.daticert
    if tipo == "non-accettazione":
        return Transition(send_state="not_accepted", identificativo=d.identificativo, at=receipt.at,
                          detail=receipt.detail)
    if send.state == "not_accepted":
        return Transition(note="the send was not accepted: that is final (PEC.md section 4)")
    if tipo == "accettazione":
        recipients = set(send.recipients)
        kinds = {a: k for a, k in ((normalise_address(addr), (kind or "").lower()) for addr, kind in d.destinatari)
                 if a in recipients and k in ("certificato", "esterno")}
        return Transition(send_state="accepted", identificativo=d.identificativo, at=receipt.at, kinds=kinds)
    state = RECIPIENT_STATE.get(tipo)
    if state is None:  # presa-in-carico, rilevazione-virus: kept as a record only
        return Transition(detail=receipt.detail, note=f"a {tipo} changes no state")
    consegna = receipt.consegna
    if consegna is None:
        return Transition(note=f"a {tipo} without <consegna> names no recipient")
    if consegna not in send.recipients:
        return Transition(note=f"{consegna} is not a recipient of this send")
    return Transition(recipient=consegna, recipient_state=state, at=receipt.at,
                      detail=receipt.detail if state != "delivered" else None)
