"""Sans-I/O framing of an IMAP byte stream into complete messages.

The first of two parsing stages (DESIGN.md): the framer only knows lines and literals.  It turns
bytes into :class:`Frame` objects — one complete command or response, i.e. a line plus every
``{N}`` / ``{N+}`` / ``~{N}`` literal it announces and the line parts that follow —
and tells the caller about each synchronising literal *before* its data arrives, so the session
can answer ``+`` or refuse it (RFC 3501 §7.5: "the server sends a command continuation request
... or a tagged NO/BAD and the client does not send the octets").

The verbs follow h11: ``receive_data(data)`` (``b""`` means end of stream) then ``next_event()``
until it returns :data:`NEED_DATA`.  Nothing here does I/O.

Limits, all enforced in this module only:

* ``max_line`` — the longest line (excluding literal data), RFC 7162 §4 recommends servers
  accept at least 8192 octets; Dovecot's default is 64 KiB.
* ``max_literal`` — the largest single literal.  A synchronising literal above it is refused
  (:class:`LiteralRefused`) and the stream continues; a non-synchronising one cannot be refused
  without reading it, so it is a fatal :class:`FramingError` (RFC 7888 §4 allows the server to
  close the connection in that case) — and so is any literal from a peer that is never asked
  before it sends (``announce_literals=False``: the provider side).
* ``max_message`` — the sum of all lines and literals of one message, so many small literals
  cannot add up to unbounded memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from gateway.imap_proxy.errors import FramingError

__all__ = [
    "NEED_DATA",
    "LiteralKind",
    "LiteralMarker",
    "Frame",
    "LiteralAnnounced",
    "LiteralRefused",
    "EndOfStream",
    "Framer",
    "find_literal_marker",
]


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`Framer.next_event` when more bytes are needed.
NEED_DATA = _Sentinel.NEED_DATA


class LiteralKind(Enum):
    """How a literal was announced: RFC 3501 ``{N}`` or RFC 7888 ``{N+}``.

    RFC 7888 has no ``{N-}``: LITERAL- servers also take ``{N+}``, for literals up to 4096
    octets.  A ``{N-}`` is therefore not a literal marker at all, and is never framed as one
    (a provider that read it differently would run the "literal" as a command).
    """

    SYNC = ""
    PLUS = "+"

    @property
    def synchronizing(self) -> bool:
        return self is LiteralKind.SYNC


@dataclass(frozen=True)
class LiteralMarker:
    """A literal announcement at the end of a line: its size, kind and whether it is literal8."""

    size: int
    kind: LiteralKind
    binary: bool = False  # RFC 3516 literal8: ``~{N}``
    start: int = 0  # offset of ``~`` or ``{`` in the line, for rewriting the marker


@dataclass(frozen=True)
class Frame:
    """One complete IMAP message.

    ``lines`` holds each line part *including* its trailing CRLF (a part that announces a
    literal ends with ``{N}\\r\\n``); ``literals[i]`` is the data announced by ``lines[i]``, so
    ``len(lines) == len(literals) + 1``.  ``raw`` is the exact bytes received.
    """

    lines: tuple[bytes, ...]
    literals: tuple[bytes, ...] = ()
    markers: tuple[LiteralMarker, ...] = ()

    @property
    def raw(self) -> bytes:
        if not self.literals:
            return self.lines[0]
        parts: list[bytes] = []
        for line, lit in zip(self.lines, self.literals):
            parts += (line, lit)
        parts.append(self.lines[-1])
        return b"".join(parts)  # one copy (bytearray then bytes() made two)

    @property
    def first_line(self) -> bytes:
        """The first line without its CRLF (and without the literal marker's CRLF)."""
        return self.lines[0].rstrip(b"\r\n")

    @property
    def size(self) -> int:
        return sum(map(len, self.lines)) + sum(map(len, self.literals))


@dataclass(frozen=True)
class LiteralAnnounced:
    """A line announcing a literal is complete; the literal's data is still to come."""

    marker: LiteralMarker
    line_so_far: bytes  # the message's first line, for finding the tag
    index: int = 0  # how many literals of this message came before this one


@dataclass(frozen=True)
class LiteralRefused:
    """A synchronising literal was over the limit; the partial message was dropped.

    The peer must be told (tagged ``NO``/``BAD``) and will not send the literal's octets.
    """

    marker: LiteralMarker
    line_so_far: bytes
    limit: int


@dataclass(frozen=True)
class EndOfStream:
    """The peer closed the stream; ``partial`` is True when a message was cut short."""

    partial: bool


_MARKER_RE = re.compile(rb"(~?)\{([0-9]+)(\+?)\}$")
_MAX_LITERAL_DIGITS = 20


def find_literal_marker(line: bytes) -> LiteralMarker | None:
    """Return the literal marker at the end of ``line`` (CRLF already removed), if any.

    >>> find_literal_marker(b"A1 LOGIN {5}")
    LiteralMarker(size=5, kind=<LiteralKind.SYNC: ''>, binary=False, start=9)
    """
    if not line.endswith(b"}"):
        return None
    brace = line.rfind(b"{")
    if brace < 0 or len(line) - brace > _MAX_LITERAL_DIGITS + 3:
        return None
    start = brace - 1 if brace > 0 and line[brace - 1 : brace] == b"~" else brace
    m = _MARKER_RE.match(line, start)
    if m is None:
        return None
    return LiteralMarker(
        size=int(m.group(2)),
        kind=LiteralKind(m.group(3).decode()),
        binary=bool(m.group(1)),
        start=start,
    )


class Framer:
    """Incremental framer for one direction of one IMAP connection."""

    def __init__(
        self,
        *,
        max_line: int = 65536,
        max_literal: int = 100 * 1024 * 1024,
        max_message: int | None = None,
        announce_literals: bool = True,
    ) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_message = max_message if max_message is not None else max_literal + 1024 * 1024
        self.announce_literals = announce_literals
        self._buf = bytearray()
        self._scan_from = 0  # where to resume the CRLF search in _buf
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._markers: list[LiteralMarker] = []
        self._literal_left = 0  # octets of the current literal still expected
        self._literal_parts: list[bytes] = []
        self._message_size = 0
        self._eof = False
        self._eof_reported = False

    # -- input ------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` signals end of stream."""
        if self._eof:
            if data:
                raise RuntimeError("data received after end of stream")
            return
        if not data:
            self._eof = True
            return
        if self._literal_left and not self._buf:
            # Literal octets with nothing buffered before them: keep the received object itself
            # instead of copying it into the buffer and out again.
            data = bytes(data)  # no copy for bytes; a caller's bytearray must not be kept
            n = min(self._literal_left, len(data))
            self._add_literal_part(data if n == len(data) else data[:n])
            data = data[n:]
            if not data:
                return
        self._buf += data

    def clear(self) -> bytes:
        """Drop all buffered state and return the unprocessed bytes.

        Used at STARTTLS: bytes received in clear after the command must not be processed as
        if they had arrived over TLS (the command-injection attack of RFC 2595 §3.1 / CVE-2011-0411).
        """
        leftover = bytes(self._buf)
        self.__init__(  # type: ignore[misc]
            max_line=self.max_line,
            max_literal=self.max_literal,
            max_message=self.max_message,
            announce_literals=self.announce_literals,
        )
        return leftover

    @property
    def buffered(self) -> int:
        """Octets received but not yet returned in an event."""
        return len(self._buf) + sum(map(len, self._literal_parts))

    @property
    def in_message(self) -> bool:
        """True when part of a message has been received."""
        return bool(self._lines or self._literal_left or self._buf)

    # -- output -----------------------------------------------------------------------------
    def next_event(self):
        """Return the next :class:`Frame`, literal notice, :class:`EndOfStream` or NEED_DATA."""
        while True:
            if self._literal_left:
                if not self._take_literal():
                    return self._end_or_need()
                continue
            line = self._take_line()
            if line is None:
                return self._end_or_need()
            self._message_size += len(line)
            if self._message_size > self.max_message:
                raise FramingError(f"message exceeds {self.max_message} octets")
            marker = find_literal_marker(line[:-2])
            if marker is None:
                self._lines.append(line)
                return self._finish_message()
            too_big = marker.size > self.max_literal
            if too_big or self._message_size + marker.size > self.max_message:
                limit = self.max_literal if too_big else self.max_message
                if marker.kind.synchronizing and self.announce_literals:
                    first = (self._lines[0] if self._lines else line).rstrip(b"\r\n")
                    self._reset_message()
                    return LiteralRefused(marker, first, limit)
                if too_big:
                    raise FramingError(f"literal of {marker.size} octets exceeds {self.max_literal}")
                raise FramingError(f"message exceeds {self.max_message} octets")
            self._lines.append(line)
            self._markers.append(marker)
            self._literal_left = marker.size
            self._literal_parts = []
            if marker.size == 0:
                self._literals.append(b"")
            if self.announce_literals:
                return LiteralAnnounced(marker, self._lines[0].rstrip(b"\r\n"), len(self._markers) - 1)

    def drop_message(self) -> None:
        """Forget the message being received: its announced literal was refused before upload.

        The peer was answered with a tagged ``NO`` instead of ``+`` and, as RFC 3501 §7.5 has
        it, does not send the literal; whatever it sends next starts a new message.
        """
        self._reset_message()

    # -- internals --------------------------------------------------------------------------
    def _end_or_need(self):
        if self._eof and not self._eof_reported:
            self._eof_reported = True
            return EndOfStream(partial=self.in_message)
        return NEED_DATA

    def _take_line(self) -> bytes | None:
        idx = self._buf.find(b"\r\n", self._scan_from)
        if idx < 0:
            # Keep one octet back: a CR may be the last octet with its LF still to come.
            self._scan_from = max(0, len(self._buf) - 1)
            if len(self._buf) > self.max_line + (1 if self._buf.endswith(b"\r") else 0):
                raise FramingError(f"line exceeds {self.max_line} octets")
            return None
        end = idx + 2
        if end > self.max_line + 2:
            raise FramingError(f"line exceeds {self.max_line} octets")
        line = bytes(self._buf[:end])
        del self._buf[:end]
        self._scan_from = 0
        return line

    def _take_literal(self) -> bool:
        """Move literal octets out of the buffer; True when the literal is complete."""
        if not self._buf:
            return False
        n = min(self._literal_left, len(self._buf))
        with memoryview(self._buf) as view:
            part = bytes(view[:n])  # one copy (bytes(bytearray slice) makes two)
        del self._buf[:n]
        return self._add_literal_part(part)

    def _add_literal_part(self, part: bytes) -> bool:
        """Account for literal octets; True when the literal is complete."""
        self._literal_parts.append(part)
        self._literal_left -= len(part)
        self._message_size += len(part)
        if self._literal_left:
            return False
        parts = self._literal_parts
        self._literals.append(parts[0] if len(parts) == 1 else b"".join(parts))
        self._literal_parts = []
        return True

    def _finish_message(self) -> Frame:
        frame = Frame(tuple(self._lines), tuple(self._literals), tuple(self._markers))
        self._reset_message()
        return frame

    def _reset_message(self) -> None:
        self._lines = []
        self._literals = []
        self._markers = []
        self._literal_left = 0
        self._literal_parts = []
        self._message_size = 0
