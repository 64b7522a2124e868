"""Finding a PEC message's own ``daticert.xml`` in its IMAP BODYSTRUCTURE.

What: :func:`find_daticert` takes a BODYSTRUCTURE value (as :func:`parse_bodystructure` or the
tokeniser of :mod:`gateway.imap_proxy.syntax` reads it) and returns the body section
(``"1.2"``), size and transfer encoding of the message's top-level ``daticert.xml``, so a caller
can ``FETCH BODY.PEEK[1.2]`` just that part instead of the whole message.

Which part counts (``PEC.md`` sections 2 and 5): a provider message is ``multipart/signed``
whose first part is ``multipart/mixed``; the daticert is a *direct* child of that
``multipart/mixed``, named ``daticert.xml`` by the Content-Type ``name`` or the
Content-Disposition ``filename`` parameter (case-insensitive).  An unsigned top-level
``multipart/mixed`` with a direct ``daticert.xml`` child is accepted too (some providers' test
boxes), marked ``signed=False``.  Nothing inside a ``message/rfc822`` part
(``postacert.eml``) or deeper multipart ever counts: that is where forwarded or forged
receipts sit.  Two direct children named ``daticert.xml`` make the answer ambiguous, hence
None.

RFC 3501 section 7.4.2 shapes, as lists: a multipart body is ``[body, body, ..., subtype,
*extension]``; a single part is ``[type, subtype, params, id, description, encoding, octets,
...]`` followed, for ``text/*``, by the line count, for ``message/rfc822`` by envelope, body and
line count, then by the optional extension data ``md5, disposition, language, location``.
Dovecot sends the extension data; other servers may not, so the name may come from either
parameter list or only from one.

Defensive: a structure of the wrong shape gives None; only :class:`BodyStructureError` (from
:func:`parse_bodystructure`, for octets that do not tokenise) is ever raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from gateway.imap_proxy.errors import FramingError
from gateway.imap_proxy.framing import Frame, Framer
from gateway.imap_proxy.syntax import Atom, Reader, TokenError

__all__ = ["DATICERT_NAME", "MAX_BODYSTRUCTURE_OCTETS", "BodyStructureError", "DaticertPart",
           "parse_bodystructure", "find_daticert", "locate_daticert",
           "bodystructure_in_fetch"]

DATICERT_NAME = "daticert.xml"
#: Largest BODYSTRUCTURE value :func:`parse_bodystructure` reads; a message with a thousand
#: parts stays well under it.
MAX_BODYSTRUCTURE_OCTETS = 1024 * 1024


class BodyStructureError(ValueError):
    """The octets given as a BODYSTRUCTURE value do not tokenise as one parenthesised list."""


@dataclass(frozen=True)
class DaticertPart:
    """Where the top-level ``daticert.xml`` is: the ``BODY[section]`` to fetch, its size in
    octets (as sent, i.e. still transfer-encoded) and its Content-Transfer-Encoding
    (lowercase, ``base64`` in practice) for decoding what the fetch returns.

    ``signed`` is False for the unsigned ``multipart/mixed`` layout: no provider signature can
    vouch for such a daticert, so a caller must not let it change a send's state."""

    section: str
    size: int
    encoding: str
    media_type: str  # "application/xml" in practice; "text/xml" is possible
    signed: bool = True


# -- tokenising -------------------------------------------------------------------------------

def parse_bodystructure(data: bytes) -> list:
    """Tokenise the octets of one BODYSTRUCTURE value, ``(...)`` as sent on the wire (literals
    ``{N}\\r\\n...`` included), into nested lists of :class:`Atom` and :class:`String`.

    Raises :class:`BodyStructureError` when the octets are too long, do not tokenise, or hold
    anything but exactly one list."""
    if len(data) > MAX_BODYSTRUCTURE_OCTETS:
        raise BodyStructureError(f"BODYSTRUCTURE of {len(data)} octets is over the "
                                 f"{MAX_BODYSTRUCTURE_OCTETS} accepted")
    frame = _frame(bytes(data))
    try:
        values = Reader(frame).read_all()
    except TokenError as exc:
        raise BodyStructureError(f"BODYSTRUCTURE does not tokenise: {exc}") from None
    if len(values) != 1 or not isinstance(values[0], list):
        raise BodyStructureError("BODYSTRUCTURE is not exactly one parenthesised list")
    return values[0]


def _frame(data: bytes) -> Frame:
    """One Frame of ``data``, whose only CRLFs may be those ending literal announcements."""
    framer = Framer(max_line=MAX_BODYSTRUCTURE_OCTETS, max_literal=MAX_BODYSTRUCTURE_OCTETS,
                    max_message=MAX_BODYSTRUCTURE_OCTETS + 2, announce_literals=False)
    try:
        framer.receive_data(data + b"\r\n")
        frame = framer.next_event()
        leftover = framer.buffered
    except FramingError as exc:
        raise BodyStructureError(f"BODYSTRUCTURE does not frame: {exc}") from None
    if not isinstance(frame, Frame) or leftover:
        raise BodyStructureError("BODYSTRUCTURE has a line break outside a literal, or a "
                                 "literal shorter than announced")
    return frame


# -- reading values ---------------------------------------------------------------------------

def _text(value: object) -> str | None:
    """A string (:class:`String` or bytes) or atom (:class:`Atom` or str) as text; None for
    NIL, None and lists.  Case is left to the caller."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return None if value.upper() == "NIL" else str(value)
    return None


def _number(value: object) -> int | None:
    """An atom of digits as an int (RFC 3501 ``number``); None for anything else, quoted
    strings included."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _params(value: object) -> dict[str, str]:
    """``("name" "x" "charset" "y")`` as a dict with lowercase keys; ``{}`` for NIL or junk.

    RFC 2231 ``name*=utf-8''daticert.xml`` is decoded; continuations (``name*0``) are not,
    no provider writes them for a twelve-character name."""
    if not isinstance(value, list) or len(value) % 2:
        return {}
    out: dict[str, str] = {}
    for key, val in zip(value[::2], value[1::2]):
        k, v = _text(key), _text(val)
        if k is None or v is None:
            continue
        k = k.lower()
        if k.endswith("*"):
            k, v = k[:-1], _rfc2231(v)
        out.setdefault(k, v)
    return out


def _rfc2231(value: str) -> str:
    charset, sep, rest = value.partition("''")
    if not sep:
        return unquote(value)
    try:
        return unquote(rest, encoding=charset or "us-ascii", errors="replace")
    except LookupError:
        return unquote(rest, errors="replace")


def _is_multipart(body: object) -> bool:
    return isinstance(body, list) and bool(body) and isinstance(body[0], list)


def _multipart(body: list) -> tuple[list[list], str | None]:
    """Children and lowercase subtype of a multipart body."""
    children = []
    for item in body:
        if not isinstance(item, list):
            break
        children.append(item)
    rest = body[len(children):]
    subtype = _text(rest[0]) if rest else None
    return children, (subtype.lower() if subtype else None)


def _media_type(part: list) -> tuple[str, str] | None:
    if len(part) < 7:
        return None
    kind, sub = _text(part[0]), _text(part[1])
    if kind is None or sub is None:
        return None
    return kind.lower(), sub.lower()


def _disposition(part: list, kind: tuple[str, str]) -> dict[str, str]:
    """Content-Disposition parameters of a single part, from the extension data if present."""
    if kind[0] == "message" and kind[1] in ("rfc822", "global"):
        index = 11  # envelope, body, lines, md5 come first
    elif kind[0] == "text":
        index = 9  # lines, md5
    else:
        index = 8  # md5
    if len(part) <= index or not isinstance(part[index], list) or len(part[index]) < 2:
        return {}
    return _params(part[index][1])


def _is_daticert(part: list) -> bool:
    """True for a non-multipart, non-message part named ``daticert.xml`` by either parameter."""
    if _is_multipart(part):
        return False
    kind = _media_type(part)
    if kind is None or kind[0] in ("message", "multipart"):
        return False
    names = (_params(part[2]).get("name"), _disposition(part, kind).get("filename"))
    return any(n is not None and n.strip().lower() == DATICERT_NAME for n in names)


def _describe(part: list, section: str, signed: bool) -> DaticertPart | None:
    kind = _media_type(part)
    size = _number(part[6]) if kind else None
    if kind is None or size is None:
        return None
    encoding = (_text(part[5]) or "7bit").lower()
    return DaticertPart(section, size, encoding, "/".join(kind), signed)


# -- the search -------------------------------------------------------------------------------

def find_daticert(structure: object) -> DaticertPart | None:
    """The top-level ``daticert.xml`` of a BODYSTRUCTURE (see the module docstring for which
    part counts), or None when there is none, more than one, or the structure is malformed."""
    try:
        found = _mixed_of(structure)
        if found is None:
            return None
        mixed, prefix = found
        return _only_daticert_child(mixed, prefix, signed=bool(prefix))
    except (TypeError, ValueError, IndexError, AttributeError):  # a shape nobody foresaw
        return None


def _mixed_of(structure: object) -> tuple[list, str] | None:
    """The ``multipart/mixed`` holding the daticert, with its section prefix ("1." or "")."""
    if not _is_multipart(structure):
        return None
    children, subtype = _multipart(structure)
    if subtype == "mixed":
        return structure, ""
    if subtype != "signed" or not children or not _is_multipart(children[0]):
        return None
    if _multipart(children[0])[1] != "mixed":
        return None
    return children[0], "1."


def _only_daticert_child(mixed: list, prefix: str, *, signed: bool) -> DaticertPart | None:
    children, _ = _multipart(mixed)
    matches = [(n, child) for n, child in enumerate(children, 1) if _is_daticert(child)]
    if len(matches) != 1:
        return None
    n, child = matches[0]
    return _describe(child, f"{prefix}{n}", signed)


def locate_daticert(data: bytes) -> DaticertPart | None:
    """:func:`find_daticert` on raw BODYSTRUCTURE octets; None also when they do not tokenise."""
    try:
        return find_daticert(parse_bodystructure(data))
    except BodyStructureError:
        return None


def bodystructure_in_fetch(items: object) -> list | None:
    """The BODYSTRUCTURE value in the item list of a ``* n FETCH (...)`` response (the third
    value :func:`gateway.imap_proxy.fetch_response.read_fetch` returns), or None."""
    if not isinstance(items, list):
        return None
    for name, value in zip(items[::2], items[1::2]):
        if isinstance(name, Atom) and name.upper() == "BODYSTRUCTURE" and isinstance(value, list):
            return value
    return None
