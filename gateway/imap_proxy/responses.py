"""Provider responses: classification for the relay hot path, and parsing of status responses.

The relay must look at every response but should parse few of them fully: a bulk ``FETCH`` of a
mailbox is thousands of ``* n FETCH`` responses that are forwarded byte for byte.  So
:func:`classify` only reads the first bytes of the first line (continuation, tagged or untagged,
and the untagged response's name), and :func:`parse_status` reads a status response
(``OK``/``NO``/``BAD``/``PREAUTH``/``BYE``) with its response code when the relay needs it.

RFC 3501 §7.1: "Status responses are OK, NO, BAD, PREAUTH and BYE ... may include an OPTIONAL
response code ... the response code consists of data inside square brackets".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gateway.imap_proxy.errors import UpstreamProtocolError
from gateway.imap_proxy.framing import Frame

__all__ = ["Kind", "Head", "classify", "StatusResponse", "parse_status", "STATUS_WORDS"]

STATUS_WORDS = frozenset({"OK", "NO", "BAD", "PREAUTH", "BYE"})


class Kind(Enum):
    CONTINUATION = "+"
    TAGGED = "tagged"
    UNTAGGED = "*"


@dataclass(frozen=True)
class Head:
    """What the first line of a response says about it."""

    kind: Kind
    tag: str | None  # for tagged responses
    name: str  # upper-case: OK/NO/BAD/BYE/PREAUTH/CAPABILITY/FETCH/EXISTS/...; "" for "+"
    number: int | None = None  # the number of "* 12 FETCH" / "* 3 EXISTS"


def classify(frame: Frame) -> Head:
    """Classify a response from its first line without parsing its data."""
    line = frame.lines[0]
    if line[:1] == b"+":
        return Head(Kind.CONTINUATION, None, "")
    sp = line.find(b" ")
    if sp <= 0:
        raise UpstreamProtocolError("malformed response line (no tag or no space after it)")
    first = line[:sp]
    rest_start = sp + 1
    end = _word_end(line, rest_start)
    word = line[rest_start:end]
    if first == b"*":
        if word.isdigit():
            end2 = _word_end(line, end + 1)
            return Head(Kind.UNTAGGED, None, line[end + 1 : end2].decode("latin-1").upper(), int(word))
        return Head(Kind.UNTAGGED, None, word.decode("latin-1").upper())
    return Head(Kind.TAGGED, first.decode("latin-1"), word.decode("latin-1").upper())


def _word_end(line: bytes, start: int) -> int:
    i = start
    n = len(line)
    while i < n and line[i] not in b" \r\n[(":
        i += 1
    return i


@dataclass(frozen=True)
class StatusResponse:
    """A parsed status response."""

    tag: str | None  # None for untagged
    status: str  # OK, NO, BAD, PREAUTH, BYE
    code: str | None  # response code name, upper-case, e.g. CAPABILITY, UIDVALIDITY
    code_data: str  # the code's arguments as text (e.g. the capability list)
    text: str  # human-readable text


def parse_status(frame: Frame) -> StatusResponse:
    """Parse a tagged or untagged status response (no literals expected in its line)."""
    line = frame.lines[0].rstrip(b"\r\n").decode("utf-8", "replace")
    tag_part, _, rest = line.partition(" ")
    status, _, rest = rest.partition(" ")
    status = status.upper()
    if status not in STATUS_WORDS:
        raise UpstreamProtocolError(f"not a status response ({status[:20]!r})")
    code = None
    code_data = ""
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise UpstreamProtocolError("unterminated response code")
        inner = rest[1:close]
        name, _, code_data = inner.partition(" ")
        code = name.upper()
        rest = rest[close + 1 :].lstrip(" ")
    return StatusResponse(None if tag_part == "*" else tag_part, status, code, code_data, rest)
