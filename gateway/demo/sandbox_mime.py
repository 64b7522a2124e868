"""MIME entities of the demo sandbox IMAP provider and their IMAP renderings: ENVELOPE,
BODYSTRUCTURE and the exact bytes of BODY[section] (RFC 3501, 6.4.5 and 7.4.2).

What it is: :class:`MimeEntity` splits a stored message into its entities, keeping each one's
exact header and body bytes (it is twisted's ``IMessagePart`` too), and the functions below
render entities for FETCH.  Pure: no I/O and no reactor; the server
(:mod:`gateway.demo.sandbox_server`) writes what they return.

Why not twisted's ENVELOPE/BODYSTRUCTURE/HEADER code: it rebuilds headers from a dict
(title-cased names, lost duplicates, no closing blank line), puts spaces between multipart
bodies and lower-cases parameter values.  Everything here is computed from the exact stored
bytes instead.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import io
import re
from collections.abc import Iterable

from twisted.mail import imap4
from zope.interface import implementer

__all__ = ["MimeEntity", "split_header", "unfold", "nstring", "literal", "envelope",
           "bodystructure", "is_section", "section_name", "section_bytes"]

_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def _to_bytes(text: str) -> bytes:
    """Undo the ASCII+surrogateescape decoding of ``email``'s compat32 header parsing."""
    try:
        return text.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # a decoded RFC 2231 value holding real non-ASCII characters
        return text.encode("utf-8", "surrogateescape")


def unfold(value: bytes) -> bytes:
    """A field value with its folding line breaks removed, and stripped."""
    return re.sub(rb"\r?\n(?=[ \t])", b"", value).strip()


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """Split an entity into its header block (ending with the blank line) and its body."""
    for blank in (b"\r\n", b"\n"):
        if raw.startswith(blank):
            return blank, raw[len(blank):]
    ends = [i + 4 for i in (raw.find(b"\r\n\r\n"),) if i >= 0]
    ends += [i + 2 for i in (raw.find(b"\n\n"),) if i >= 0]
    if not ends:
        return raw, b""
    return raw[:min(ends)], raw[min(ends):]


def _header_fields(header: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, exact field bytes with continuation lines and line ends), in order."""
    fields: list[tuple[str, bytes]] = []
    for line in re.findall(rb"[^\n]*\n|[^\n]+$", header):
        if line.strip(b"\r\n") == b"":
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
        else:
            fields.append((line.split(b":", 1)[0].strip().lower().decode("ascii", "replace"), line))
    return fields


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between ``--boundary`` lines; "the CRLF preceding the boundary delimiter line
    is conceptually attached to the boundary" (RFC 2046, 5.1.1), so it is not part of a part."""
    delimiter = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r?\n|\Z)")
    parts: list[bytes] = []
    start = None
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start:match.start()])
        if match.group(1):
            return parts
        newline = body.find(b"\n", match.end())
        start = len(body) if newline < 0 else newline + 1
    if start is not None:  # no closing delimiter: the last part runs to the end
        parts.append(body[start:])
    return parts


@implementer(imap4.IMessagePart)
class MimeEntity:
    """One MIME entity with its exact header and body bytes, its parts and, for message/rfc822,
    the encapsulated message."""

    def __init__(self, raw: bytes, default_type: str = "text/plain") -> None:
        self.raw = raw
        self.header, self.body = split_header(raw)
        self.fields = _header_fields(self.header)
        self.info = _HEADER_PARSER.parsebytes(self.header)  # for Content-* parameters only
        self.info.set_default_type(default_type)
        self.content_type = self.info.get_content_type()
        self.children: list[MimeEntity] = []
        self.encapsulated: MimeEntity | None = None
        maintype, subtype = self.content_type.split("/", 1)
        boundary = self.info.get_boundary()
        if maintype == "multipart" and boundary:
            inner = "message/rfc822" if subtype == "digest" else "text/plain"
            self.children = [MimeEntity(part, inner)
                             for part in _split_multipart(self.body, _to_bytes(boundary))]
        elif self.content_type == "message/rfc822":
            self.encapsulated = MimeEntity(self.body)

    def field(self, name: str) -> bytes | None:
        """The unfolded value of the first ``name`` field, or None."""
        for key, raw in self.fields:
            if key == name:
                return unfold(raw.split(b":", 1)[1]) if b":" in raw else b""
        return None

    def header_fields(self, names: Iterable[str], negate: bool) -> bytes:
        """BODY[HEADER.FIELDS (...)] / [HEADER.FIELDS.NOT (...)]: the exact fields plus the blank line."""
        wanted = {name.lower() for name in names}
        chosen = b"".join(raw for key, raw in self.fields if (key in wanted) != negate)
        ends_blank = self.header.endswith(b"\n\n") or self.header.endswith(b"\n\r\n") or (
            self.header in (b"\r\n", b"\n"))
        return chosen + b"\r\n" if ends_blank or not negate else chosen  # as Dovecot does

    def resolve(self, path: Iterable[int]) -> MimeEntity:
        """The entity at a 0-based part path; "non-multipart messages ... only have a part 1", and a
        message/rfc822 part's sub-parts are those of the message it carries (RFC 3501, 6.4.5)."""
        node, inside_message = self, True
        for index in path:
            if not inside_message and node.encapsulated is not None:
                node, inside_message = node.encapsulated, True
            if node.children:
                node, inside_message = node.children[index], False
            elif index != 0 or not inside_message:
                raise IndexError("no such body part")
            else:
                inside_message = False
        return node

    # IMessagePart -- what twisted itself reads (its SEARCH and COPY fallbacks)
    def getHeaders(self, negate, *names):
        wanted = {name.lower() for name in names}
        headers: dict[str, str] = {}
        for key, raw in self.fields:
            if (key in wanted) != bool(negate) and key not in headers:
                headers[key] = unfold(raw.split(b":", 1)[-1]).decode("utf-8", "replace")
        return headers

    def getBodyFile(self):
        return io.BytesIO(self.body)

    def getSize(self):
        return len(self.body)

    def isMultipart(self):
        return bool(self.children)

    def getSubPart(self, part):
        if self.encapsulated is not None and part == 0:
            return self.encapsulated
        if not self.children:
            raise TypeError("not a multipart entity")
        return self.children[part]


# ---- IMAP renderings of a message (RFC 3501, 7.4.2) -------------------------------------------

def nstring(value: bytes | str | None) -> bytes:
    """NIL, a quoted string, or a literal when the value holds CR, LF, NUL or 8-bit bytes."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = _to_bytes(value)
    if re.search(rb"[\x00\r\n\x80-\xff]", value):
        return b"{%d}\r\n" % len(value) + value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _addresses(value: bytes | None) -> bytes:
    if value is None:
        return b"NIL"
    out = []
    for name, address in email.utils.getaddresses([value.decode("ascii", "surrogateescape")]):
        if not address and not name:
            continue
        mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
        out.append(b"(" + b" ".join([nstring(name or None), b"NIL", nstring(mailbox),
                                     nstring(host or ".MISSING-HOST-NAME.")]) + b")")
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def envelope(entity: MimeEntity) -> bytes:
    """ENVELOPE; "If the Sender or Reply-To lines are absent ... the server sets the
    corresponding member of the envelope to be the same value as the from member"."""
    sender = entity.field("sender") if entity.field("sender") is not None else entity.field("from")
    reply_to = entity.field("reply-to")
    return b"(" + b" ".join([
        nstring(entity.field("date")), nstring(entity.field("subject")),
        _addresses(entity.field("from")), _addresses(sender),
        _addresses(reply_to if reply_to is not None else entity.field("from")),
        _addresses(entity.field("to")), _addresses(entity.field("cc")),
        _addresses(entity.field("bcc")),
        nstring(entity.field("in-reply-to")), nstring(entity.field("message-id")),
    ]) + b")"


def _params(entity: MimeEntity, header: str = "content-type") -> bytes:
    params = entity.info.get_params(header=header) or []
    pairs = [(key, email.utils.collapse_rfc2231_value(value)) for key, value in params[1:]]
    if not pairs and header == "content-type" and entity.info.get("content-type") is None:
        pairs = [("charset", "us-ascii")] if entity.content_type == "text/plain" else []
    return b"(" + b" ".join(nstring(k) + b" " + nstring(v) for k, v in pairs) + b")" if pairs else b"NIL"


def _extension(entity: MimeEntity) -> list[bytes]:
    disposition = entity.info.get_content_disposition()
    dsp = b"(" + nstring(disposition) + b" " + _params(entity, "content-disposition") + b")" \
        if disposition else b"NIL"
    return [dsp, nstring(entity.field("content-language")), nstring(entity.field("content-location"))]


def _lines(body: bytes) -> int:
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def bodystructure(entity: MimeEntity, extended: bool) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY; multipart bodies are written back to back, as the
    grammar says (``body-type-mpart = 1*body SP media-subtype``)."""
    maintype, subtype = entity.content_type.split("/", 1)
    if entity.children:
        out = b"".join(bodystructure(child, extended) for child in entity.children)
        out += b" " + nstring(subtype)
        if extended:
            out += b" " + b" ".join([_params(entity)] + _extension(entity))
        return b"(" + out + b")"
    fields = [nstring(maintype), nstring(subtype), _params(entity),
              nstring(entity.field("content-id")), nstring(entity.field("content-description")),
              nstring(entity.field("content-transfer-encoding") or b"7bit"), b"%d" % len(entity.body)]
    if entity.encapsulated is not None:
        fields += [envelope(entity.encapsulated), bodystructure(entity.encapsulated, extended),
                   b"%d" % _lines(entity.body)]
    elif maintype == "text":
        fields.append(b"%d" % _lines(entity.body))
    if extended:
        fields += [nstring(entity.field("content-md5"))] + _extension(entity)
    return b"(" + b" ".join(fields) + b")"


# ---- BODY[section] (RFC 3501, 6.4.5) -----------------------------------------------------

def literal(data: bytes) -> bytes:
    """``data`` as an IMAP literal (``{N}`` CRLF, then the bytes)."""
    return b"{%d}\r\n" % len(data) + data


def is_section(part) -> bool:
    """BODY[...] (a section, which sets \\Seen unless PEEK) as opposed to bare BODY."""
    return bool(part.empty) or any(x is not None for x in (part.header, part.text, part.mime))


def section_name(part) -> bytes:
    numbers = b".".join(b"%d" % (index + 1) for index in part.part or ())
    if part.header is not None and part.header.fields:
        spec = b"HEADER.FIELDS" + (b".NOT" if part.header.negate else b"") + \
            b" (" + b" ".join(part.header.fields) + b")"
    elif part.header is not None:
        spec = b"HEADER"
    else:
        spec = b"TEXT" if part.text is not None else b"MIME" if part.mime is not None else b""
    return b"BODY[" + numbers + (b"." if numbers and spec else b"") + spec + b"]"


def section_bytes(top, part) -> bytes:
    """The exact bytes of a BODY[section] (RFC 3501, 6.4.5)."""
    node = top.resolve(part.part) if part.part else top
    if part.mime is not None:
        return node.header
    target = node.encapsulated if part.part and node.encapsulated is not None else node
    if part.header is not None and part.header.fields:
        names = [name.decode("ascii", "replace") for name in part.header.fields]
        return target.header_fields(names, part.header.negate)
    if part.header is not None:
        return target.header
    if part.text is not None:
        return target.body
    return node.body if part.part else top.raw
