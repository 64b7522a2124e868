"""Message identity for the audit trail: the headers that let an auditor recognise a PEC.

A UID says nothing to an auditor.  The gateway asks the provider, on the session's own
connection and between the person's commands, for a few header fields of the messages the
person touched — ``FETCH n (UID BODY.PEEK[HEADER.FIELDS (…)])``, which never sets
``\\Seen`` — and remembers the answer per mailbox, folder, UIDVALIDITY and UID, so a message is
looked up once however often it is read.  PEC.md §1: the kind is the ``X-Trasporto`` value for
a busta (``posta-certificata``, ``errore``) or the ``X-Ricevuta`` value for a receipt; for a
busta the ``Message-ID`` *is* the identificativo (PEC.md §4), for receipts the identificativo
is only in daticert.xml (:mod:`gateway.imap_proxy.receipt_identity` reads it).  Header names compare case-insensitively
and values are unfolded (RFC 5322 §2.2.3); encoded words are decoded (RFC 2047).  The header
block is split here rather than by :mod:`email.parser`, which would pull sockets into this pure
layer (``email.utils`` imports ``socket``).
"""

from __future__ import annotations

from collections import OrderedDict
from email.header import decode_header, make_header

from gateway.audit.events import MessageRef
from gateway.imap_proxy.syntax import String

__all__ = ["IDENTITY_FIELDS", "IDENTITY_ITEM", "IDENTITY_REPLY_ITEM", "IdentityCache", "identity_from_headers", "fetch_identity_item",
           "parse_header_block"]

IDENTITY_FIELDS = ("MESSAGE-ID", "SUBJECT", "FROM", "DATE", "X-TRASPORTO", "X-RICEVUTA", "X-RIFERIMENTO-MESSAGE-ID")
#: The header block asked for is cut at this many octets by the provider (a partial FETCH):
#: whoever sends a PEC chooses its Subject, and must not make the gateway read megabytes.
IDENTITY_OCTETS = 16384
#: The FETCH item of the gateway's own lookups (its name also marks their replies).
IDENTITY_ITEM = "BODY.PEEK[HEADER.FIELDS (%s)]<0.%d>" % (" ".join(IDENTITY_FIELDS), IDENTITY_OCTETS)
IDENTITY_REPLY_ITEM = "BODY[HEADER.FIELDS (%s)]<0>" % " ".join(IDENTITY_FIELDS)
_MAX_VALUE = 998  # RFC 5322 line limit: more is not a header an auditor needs
_MAX_RAW = 4 * _MAX_VALUE  # encoded words are longer than their text; decoding more is wasted work


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = value[:_MAX_RAW]  # decode_header is quadratic in the length: bound it first
    try:
        text = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        text = value
    text = " ".join(text.split())  # unfolded
    # no control or formatting characters: an auditor's terminal must not obey a Subject
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:_MAX_VALUE] or None


def parse_header_block(raw: bytes) -> dict[str, str]:
    """``Name: value`` lines, unfolded, names upper-cased; the first of a repeated name wins."""
    fields: dict[str, str] = {}
    name = None
    for line in raw.decode("utf-8", "replace").replace("\r\n", "\n").split("\n"):
        if not line.strip():
            name = None
            continue
        if line[0] in " \t" and name is not None:
            fields[name] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip() or " " in key.strip():
            name = None
            continue
        name = key.strip().upper()
        if name in fields:
            name = None  # keep the first; ignore this one's continuation lines too
            continue
        fields[name] = value.strip()
    return fields


def identity_from_headers(raw: bytes, uidvalidity: int | None, uid: int | None) -> MessageRef:
    """A :class:`MessageRef` from the header block the provider returned."""
    fields = parse_header_block(raw)
    headers = {name: fields.get(name.upper()) for name in
               ("Message-ID", "Subject", "From", "Date", "X-Trasporto", "X-Ricevuta", "X-Riferimento-Message-ID")}
    trasporto = _text(headers.get("X-Trasporto"))
    ricevuta = _text(headers.get("X-Ricevuta"))
    kind = (ricevuta or trasporto or "").lower() or None
    message_id = _text(headers.get("Message-ID"))
    return MessageRef(
        uidvalidity=uidvalidity, uid=uid, message_id=message_id, subject=_text(headers.get("Subject")),
        sender=_text(headers.get("From")), date=_text(headers.get("Date")), pec_kind=kind,
        pec_id=message_id if trasporto is not None and ricevuta is None else None,
        pec_ref=_text(headers.get("X-Riferimento-Message-ID")))


def has_identity_item(items: list) -> bool:
    """Does a parsed FETCH item list carry the gateway's own item (whatever its value)?"""
    return any(str(k).upper() == IDENTITY_REPLY_ITEM for k in items[::2])


def fetch_identity_item(items: list) -> bytes | None:
    """The header block in a parsed FETCH item list, when it is the gateway's own item."""
    for key, value in zip(items[::2], items[1::2]):
        if str(key).upper() == IDENTITY_REPLY_ITEM and isinstance(value, String):
            return bytes(value)
    return None


class IdentityCache:
    """Identities by (mailbox, folder, UIDVALIDITY, UID), the least recently used dropped first.

    One per gateway, shared by the sessions of all mailboxes: a PEC read by ten people is
    looked up once.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self._limit = limit
        self._items: OrderedDict[tuple, MessageRef] = OrderedDict()

    def get(self, key: tuple) -> MessageRef | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple, ref: MessageRef) -> None:
        self._items[key] = ref
        self._items.move_to_end(key)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)
