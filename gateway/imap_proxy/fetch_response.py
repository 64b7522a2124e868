"""Reading ``* n FETCH (…)`` responses for the audit trail: which message, which items.

The relay forwards FETCH responses byte for byte; the audit needs to know, per message, its
sequence number and UID, the flags the provider now reports, and whether the *content* was
handed out (a body section, ``RFC822``, ``BINARY``) or only metadata (FLAGS, ENVELOPE,
BODYSTRUCTURE, headers).  RFC 3501 §7.4.2: "The FETCH response returns data about a message to
the client.  The data are pairs of data item names, and their values in parentheses."

Header-only sections (``BODY[HEADER]``, ``BODY[HEADER.FIELDS (…)]``, ``BODY[1.MIME]``,
``RFC822.HEADER``) count as headers; every other section, ``BODY[]`` and ``BODY[TEXT]`` above
all, counts as content.  Values are not kept: only names and the small values an auditor needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.syntax import Atom, Reader, String, TokenError

__all__ = ["FetchData", "parse_fetch", "read_fetch", "is_header_section"]


@dataclass(frozen=True)
class FetchData:
    """What one FETCH response says about one message."""

    seq: int
    uid: int | None = None
    flags: tuple[str, ...] | None = None  # None when the response has no FLAGS item
    content: tuple[str, ...] = ()  # item names that carried message content, e.g. ("BODY[]",)
    headers: tuple[str, ...] = ()  # item names that carried only headers
    other: tuple[str, ...] = field(default=())  # the remaining item names (ENVELOPE, RFC822.SIZE…)
    modseq: int | None = None

    @property
    def body(self) -> bool:
        """True when the client received message content, not only metadata."""
        return bool(self.content)


_CONTENT_NAMES = frozenset({"RFC822", "RFC822.TEXT"})
_HEADER_NAMES = frozenset({"RFC822.HEADER"})


def is_header_section(name: str) -> bool:
    """``BODY[HEADER.FIELDS (From)]`` → True; ``BODY[]``, ``BODY[1]``, ``BINARY[2]`` → False."""
    open_ = name.find("[")
    if open_ < 0:
        return False
    section = name[open_ + 1:name.find("]", open_)].upper()
    parts = section.split(" ", 1)[0].split(".")
    return "HEADER" in parts or parts[-1] == "MIME"


def read_fetch(frame: Frame) -> tuple[object, object, object] | None:
    """The three values of ``* n FETCH (…)`` — number, name, item list — as tokenised, unchecked;
    None when the response does not tokenise."""
    try:
        reader = Reader(frame, start=1)
        return reader.read(), reader.read(), reader.read()
    except TokenError:
        return None


def parse_fetch(frame: Frame) -> FetchData | None:
    """The data of ``* n FETCH (…)``, or None when the response cannot be read as one."""
    read = read_fetch(frame)
    if read is None:
        return None
    seq, name, items = read
    if not isinstance(seq, Atom) or not seq.isdigit() or not isinstance(name, Atom) or name.upper() != "FETCH":
        return None
    if not isinstance(items, list) or len(items) % 2:
        return None
    uid = modseq = None
    flags: tuple[str, ...] | None = None
    content: list[str] = []
    headers: list[str] = []
    other: list[str] = []
    for key, value in zip(items[::2], items[1::2]):
        if not isinstance(key, Atom):
            return None
        upper = key.upper()
        if upper == "UID" and isinstance(value, Atom) and value.isdigit():
            uid = int(value)
        elif upper == "FLAGS" and isinstance(value, list):
            flags = tuple(str(f) for f in value if isinstance(f, Atom))
        elif upper == "MODSEQ" and isinstance(value, list) and value and str(value[0]).isdigit():
            modseq = int(value[0])
        elif upper in _CONTENT_NAMES:
            content.append(upper)
        elif upper in _HEADER_NAMES:
            headers.append(upper)
        elif "[" in upper and (upper.startswith("BODY[") or upper.startswith("BINARY[")):
            if value is None or (isinstance(value, Atom) and value.upper() == "NIL"):
                other.append(upper)  # nothing was handed out
            elif is_header_section(upper):
                headers.append(upper)
            elif isinstance(value, (String, Atom)):
                content.append(upper)
            else:
                other.append(upper)
        else:
            other.append(upper)
    return FetchData(int(seq), uid, flags, tuple(content), tuple(headers), tuple(other), modseq)
