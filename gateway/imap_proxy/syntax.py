"""Tokenising a complete IMAP message (a :class:`~gateway.imap_proxy.framing.Frame`).

The second parsing stage works on whole messages, so it never waits for data.  It yields values
of the RFC 3501 formal syntax, reduced to four Python shapes:

* :class:`Atom` (a ``str``): atoms, numbers, sequence sets, flags such as ``\\Seen``, ``NIL``,
  and fetch attributes with their section, e.g. ``BODY.PEEK[HEADER.FIELDS (FROM)]<0.512>``;
* :class:`String` (``bytes``): quoted strings (unescaped) and literals, ``.literal`` telling which;
* ``list``: a parenthesised list;
* nothing else — the caller decides what an atom means in its position.

Parsing is lenient about repeated spaces but strict about unbalanced quotes, parentheses and
brackets, since a relay that cannot find where an argument ends cannot apply policy to it.
"""

from __future__ import annotations

from gateway.imap_proxy.errors import ClientProtocolError
from gateway.imap_proxy.framing import Frame

__all__ = ["Atom", "String", "Reader", "TokenError", "quote_string", "astring_octets"]


class TokenError(ClientProtocolError):
    """The message's syntax is broken (unbalanced quote, bracket or parenthesis)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, fatal=False)


class Atom(str):
    """An unquoted token."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


class String(bytes):
    """A quoted string or a literal, as its decoded octets."""

    literal: bool = False

    def __new__(cls, value: bytes, literal: bool = False) -> "String":
        obj = super().__new__(cls, value)
        obj.literal = literal
        return obj

    def __repr__(self) -> str:
        kind = "literal" if self.literal else "quoted"
        return f"String({bytes.__repr__(self)}, {kind})"


_ATOM_END = frozenset(b" ()\"{")
_SP = 0x20
_FORBIDDEN_IN_TEXT = frozenset(b"\r\n\x00")
#: Deepest parenthesised nesting accepted; real commands and responses stay under 10.
MAX_DEPTH = 64


class Reader:
    """Walks the text and literals of one frame, token by token."""

    def __init__(self, frame: Frame, start: int = 0) -> None:
        self._parts: list[tuple[bool, bytes]] = []  # (is_literal, data)
        for i, line in enumerate(frame.lines):
            text = line[:-2] if line.endswith(b"\r\n") else line
            if i < len(frame.literals):
                self._parts.append((False, text[: frame.markers[i].start]))
                self._parts.append((True, frame.literals[i]))
            else:
                self._parts.append((False, text))
        self._part = 0
        self._pos = start
        self._depth = 0

    # -- position ---------------------------------------------------------------------------
    def _text(self) -> bytes | None:
        is_lit, data = self._parts[self._part]
        return None if is_lit else data

    def skip_spaces(self) -> None:
        """Skip spaces, moving across line parts that end where a literal starts."""
        while True:
            text = self._text()
            if text is None:
                return
            while self._pos < len(text) and text[self._pos] == _SP:
                self._pos += 1
            if self._pos < len(text) or self._part + 1 >= len(self._parts):
                return
            if self._parts[self._part + 1][0]:  # the literal comes next
                return
            self._part += 1
            self._pos = 0

    def at_end(self) -> bool:
        self.skip_spaces()
        text = self._text()
        if text is None:
            return False
        return self._pos >= len(text) and self._part + 1 >= len(self._parts)

    def peek_byte(self) -> int | None:
        """The next octet of text, or None at a literal or the end."""
        self.skip_spaces()
        text = self._text()
        if text is None or self._pos >= len(text):
            if text is not None and self._part + 1 < len(self._parts):
                return None  # a literal follows
            return None
        return text[self._pos]

    def rest_of_line(self) -> bytes:
        """The remaining text of the current line part, consumed (for resp-text)."""
        self.skip_spaces()
        text = self._text()
        if text is None:
            return b""
        out = text[self._pos :]
        self._pos = len(text)
        return out

    # -- tokens -----------------------------------------------------------------------------
    def read(self):
        """Read one value: Atom, String or list.  Raises TokenError at the end."""
        self.skip_spaces()
        text = self._text()
        if text is None:
            data = self._parts[self._part][1]
            self._part += 1
            self._pos = 0
            return String(data, literal=True)
        if self._pos >= len(text):
            if self._part + 1 < len(self._parts) and self._parts[self._part + 1][0]:
                self._part += 1
                return self.read()
            raise TokenError("missing argument")
        c = text[self._pos]
        if c == 0x28:  # (
            self._pos += 1
            return self._read_list()
        if c == 0x22:  # "
            return self._read_quoted(text)
        if c == 0x29:  # )
            raise TokenError("unexpected ')'")
        return self._read_atom(text)

    def read_all(self) -> list:
        """Read values until the end of the message."""
        out = []
        while not self.at_end():
            out.append(self.read())
        return out

    def _read_list(self) -> list:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise TokenError(f"lists nested deeper than {MAX_DEPTH}")
        try:
            return self._read_list_items()
        finally:
            self._depth -= 1

    def _read_list_items(self) -> list:
        items: list = []
        while True:
            self.skip_spaces()
            text = self._text()
            if text is not None and self._pos < len(text) and text[self._pos] == 0x29:
                self._pos += 1
                return items
            if text is not None and self._pos >= len(text) and self._part + 1 >= len(self._parts):
                raise TokenError("unbalanced '('")
            items.append(self.read())

    def _read_quoted(self, text: bytes) -> String:
        """RFC 3501: ``quoted = DQUOTE *QUOTED-CHAR DQUOTE``; QUOTED-CHAR is any TEXT-CHAR but the
        quoted-specials, or ``\\`` followed by a quoted-special.  CR, LF and NUL are refused: a
        provider that ended the line at a bare LF would run the rest as a command."""
        out = bytearray()
        i = self._pos + 1
        while i < len(text):
            c = text[i]
            if c in _FORBIDDEN_IN_TEXT:
                raise TokenError("CR, LF or NUL inside a quoted string")
            if c == 0x5C:  # backslash
                if i + 1 >= len(text) or text[i + 1] not in (0x22, 0x5C):
                    raise TokenError("invalid escape in a quoted string")
                out.append(text[i + 1])
                i += 2
                continue
            if c == 0x22:
                self._pos = i + 1
                return String(bytes(out))
            out.append(c)
            i += 1
        raise TokenError("unterminated quoted string")

    def _read_atom(self, text: bytes) -> Atom:
        start = i = self._pos
        n = len(text)
        while i < n:
            c = text[i]
            if c == 0x5B:  # [ : a section, read to the matching ]
                depth = 0
                while i < n:
                    if text[i] < 0x20 or text[i] >= 0x7F:
                        raise TokenError("control or 8-bit character in a section")
                    if text[i] == 0x5B:
                        depth += 1
                    elif text[i] == 0x5D:
                        depth -= 1
                        if depth == 0:
                            break
                    i += 1
                if i >= n:
                    raise TokenError("unbalanced '['")
                i += 1
                continue
            if c in _ATOM_END or c == 0x29:
                break
            if c < 0x20 or c >= 0x7F:  # RFC 3501 ATOM-CHAR: 7-bit, no CTL (providers refuse 8-bit too)
                raise TokenError("control or 8-bit character in atom")
            i += 1
        if i == start:
            raise TokenError(f"unexpected character {chr(text[i])!r}")
        self._pos = i
        return Atom(text[start:i].decode("latin-1"))


def quote_string(value: bytes) -> bytes:
    """Render ``value`` as an IMAP quoted string, or a literal when it cannot be quoted."""
    if b"\r" in value or b"\n" in value or any(c >= 0x80 or c == 0 for c in value):
        return b"{%d}\r\n%s" % (len(value), value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def astring_octets(value) -> bytes | None:
    """The octets of an astring (atom, quoted string or literal) — a mailbox name, say — or
    None when ``value`` is a list."""
    if isinstance(value, String):
        return bytes(value)
    if isinstance(value, Atom):
        return value.encode("latin-1")
    return None
