"""Mailbox names: modified UTF-7 (RFC 3501 §5.1.3) and INBOX's case-insensitivity.

"Printable US-ASCII characters, except for '&', represent themselves ... '&' is used to shift to
modified BASE64 and '-' to shift back to US-ASCII ... '&' itself is represented as '&-'.  In
modified BASE64, ',' is used instead of '/'."  The shifted text is UTF-16BE.

Names travel on the wire in this encoding; the gateway's configuration and audit trail use the
human (Unicode) form, e.g. ``Contabilità`` ⇄ ``Contabilit&AOA-``.
"""

from __future__ import annotations

import base64

__all__ = ["encode_mutf7", "decode_mutf7", "MailboxNameError", "normalise_inbox"]


class MailboxNameError(ValueError):
    """A mailbox name is not valid modified UTF-7."""


def _b64_encode(chunk: str) -> bytes:
    raw = chunk.encode("utf-16-be")
    return b"&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",") + b"-"


def encode_mutf7(name: str) -> bytes:
    """Encode a Unicode mailbox name for the wire."""
    out = bytearray()
    pending: list[str] = []
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            if pending:
                out += _b64_encode("".join(pending))
                pending = []
            out += b"&-" if ch == "&" else ch.encode("ascii")
        else:
            pending.append(ch)
    if pending:
        out += _b64_encode("".join(pending))
    return bytes(out)


def decode_mutf7(wire: bytes) -> str:
    """Decode a wire mailbox name; raises :class:`MailboxNameError` when malformed."""
    out: list[str] = []
    i = 0
    n = len(wire)
    while i < n:
        c = wire[i]
        if c == 0x26:  # &
            end = wire.find(b"-", i + 1)
            if end < 0:
                raise MailboxNameError(f"unterminated shift in {wire!r}")
            if end == i + 1:
                out.append("&")
            else:
                b64 = wire[i + 1 : end].replace(b",", b"/")
                b64 += b"=" * (-len(b64) % 4)
                try:
                    raw = base64.b64decode(b64, validate=True)
                    out.append(raw.decode("utf-16-be"))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise MailboxNameError(f"bad modified BASE64 in {wire!r}") from exc
            i = end + 1
        elif 0x20 <= c <= 0x7E:
            out.append(chr(c))
            i += 1
        else:
            raise MailboxNameError(f"octet 0x{c:02x} not allowed in {wire!r}")
    return "".join(out)


def normalise_inbox(name: str) -> str:
    """RFC 3501 §5.1: "INBOX" is case-insensitive; return it upper-cased, other names as given."""
    return "INBOX" if name.upper() == "INBOX" else name
