"""Byte-level rewrites the folder policy needs, done on a frame's text and never its literals.

Each rewrite keeps every other octet of the command or response as the peer sent it:

* :func:`peek_fetch` — a FETCH that would set ``\\Seen`` becomes its non-marking twin:
  ``BODY[…]`` → ``BODY.PEEK[…]``, ``BINARY[…]`` → ``BINARY.PEEK[…]`` (RFC 3516),
  ``RFC822`` → ``BODY.PEEK[]`` and ``RFC822.TEXT`` → ``BODY.PEEK[TEXT]`` (RFC 3501 §6.4.5 defines
  them as equivalent to ``BODY[]``/``BODY[TEXT]``; there is no ``RFC822.PEEK``).
* :func:`rfc822_names` — the provider then answers ``BODY[]``/``BODY[TEXT]``; a client that
  asked for ``RFC822`` expects that name back, so the response items are renamed.
* :func:`replace_command_name` — ``SELECT`` → ``EXAMINE``.

Words are matched only outside quoted strings and outside ``[…]`` sections, at a token start,
so a header field called ``RFC822`` in ``BODY.PEEK[HEADER.FIELDS (RFC822)]`` or a subject
containing ``BODY[]`` in an ENVELOPE is never touched.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.imap_proxy.framing import Frame, find_literal_marker

__all__ = ["peek_fetch", "rfc822_names", "replace_command_name", "with_lines", "plain_sections"]

_TOKEN_START = frozenset(b" (")
_WORD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_")


def with_lines(frame: Frame, lines: list[bytes]) -> Frame:
    """``frame`` with new line parts; literal markers are found again (their offsets moved)."""
    markers = tuple(find_literal_marker(line[:-2]) for line in lines[:-1])
    if any(m is None for m in markers):
        raise ValueError("a rewrite removed a literal marker")
    return Frame(tuple(lines), frame.literals, markers)  # type: ignore[arg-type]


def _rewrite_words(line: bytes, replace: Callable[[bytes, int], tuple[int, bytes] | None]) -> bytes:
    """Walk ``line`` outside quotes and brackets; at each token start ask ``replace``.

    ``replace(line, i)`` returns ``(length consumed, replacement)`` or None to copy on.
    """
    out = bytearray()
    i, n, depth, quoted = 0, len(line), 0, False
    while i < n:
        c = line[i]
        if quoted:
            if c == 0x5C and i + 1 < n:  # backslash escape
                out += line[i:i + 2]
                i += 2
                continue
            quoted = c != 0x22
        elif c == 0x22:
            quoted = True
        elif c == 0x5B:
            depth += 1
        elif c == 0x5D and depth:
            depth -= 1
        elif depth == 0 and (i == 0 or line[i - 1] in _TOKEN_START):
            hit = replace(line, i)
            if hit is not None:
                used, new = hit
                out += new
                i += used
                continue
        out.append(c)
        i += 1
    return bytes(out)


def _word_at(line: bytes, i: int) -> bytes:
    j = i
    while j < len(line) and line[j] in _WORD_CHARS:
        j += 1
    return line[i:j]


#: Items that are renamed to BODY.PEEK and must be renamed back in the responses.
_RFC822_AS_BODY = {b"RFC822": b"BODY.PEEK[]", b"RFC822.TEXT": b"BODY.PEEK[TEXT]"}


def _peek_replace(line: bytes, i: int) -> tuple[int, bytes] | None:
    word = _word_at(line, i)
    upper = word.upper()
    nxt = line[i + len(word):i + len(word) + 1]
    if nxt == b"[" and upper in (b"BODY", b"BINARY"):
        return len(word), word + b".PEEK"
    if nxt != b"[" and upper in _RFC822_AS_BODY:
        return len(word), _RFC822_AS_BODY[upper]
    return None


def peek_fetch(frame: Frame, start: int) -> tuple[Frame, bool]:
    """The FETCH ``frame`` with every \\Seen-setting item turned into its PEEK form.

    ``start`` is where the arguments begin in the first line (after the command name), so the
    tag and the command name are never rewritten.  Returns the frame (the same object when
    nothing changed) and whether an ``RFC822``/``RFC822.TEXT`` item was turned into ``BODY``,
    in which case the responses must be renamed back with :func:`rfc822_names`.
    """
    renamed: list[bool] = []

    def replace(line: bytes, i: int) -> tuple[int, bytes] | None:
        hit = _peek_replace(line, i)
        if hit is not None and hit[1] in _RFC822_AS_BODY.values():
            renamed.append(True)
        return hit

    lines = list(frame.lines)
    for n, line in enumerate(lines):
        offset = start if n == 0 else 0
        lines[n] = line[:offset] + _rewrite_words(line[offset:], replace)
    if lines == list(frame.lines):
        return frame, False
    return with_lines(frame, lines), bool(renamed)


def _rfc822_replace(line: bytes, i: int) -> tuple[int, bytes] | None:
    if line.startswith(b"BODY[]", i) and line[i + 6:i + 7] in (b" ", b""):
        return 6, b"RFC822"
    if line.startswith(b"BODY[TEXT]", i) and line[i + 10:i + 11] in (b" ", b""):
        return 10, b"RFC822.TEXT"
    return None


def rfc822_names(frame: Frame) -> Frame:
    """A ``* n FETCH`` response with ``BODY[]``/``BODY[TEXT]`` items named ``RFC822``/``RFC822.TEXT``."""
    lines = [_rewrite_words(line, _rfc822_replace) for line in frame.lines]
    if lines == list(frame.lines):
        return frame
    return with_lines(frame, lines)


def replace_command_name(frame: Frame, tag: str, old: bytes, new: bytes) -> Frame:
    """The command ``frame`` with its name ``old`` (any case) replaced by ``new``."""
    line = frame.lines[0]
    i = len(tag)
    while line[i:i + 1] == b" ":
        i += 1
    if line[i:i + len(old)].upper() != old:
        raise ValueError(f"command name {old!r} not found after the tag")
    return with_lines(frame, [line[:i] + new + line[i + len(old):], *frame.lines[1:]])


def plain_sections(frame: Frame) -> bool:
    """True when every ``[…]`` section of a FETCH holds only plain text: no nested ``[``, no
    quoted string, no literal.

    Servers do not agree on where a section with such contents ends (Dovecot does not nest
    brackets), and the PEEK rewrite must see the items exactly as the provider will; real
    clients never need more than ``BODY.PEEK[HEADER.FIELDS (From Subject)]``.
    """
    if frame.literals:
        return False
    line = frame.lines[0]
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == 0x5B:  # [
            end = line.find(b"]", i + 1)
            if end < 0 or any(ch in b'["{\\' for ch in line[i + 1:end]):
                return False
            i = end + 1
            continue
        if c == 0x22 or c == 0x5D:  # FETCH items never quote outside a section; a stray "]"
            return False
        i += 1
    return True
