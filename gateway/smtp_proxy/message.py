"""What the gateway reads from a submitted message, and the one thing it may add: a Message-ID.

The send record (who sent what) needs the addresses, the Subject, the size and, for each
attachment, its name and SHA-256 — the proof of *what* was sent, next to the provider's receipts
that prove *that* it was.  The Message-ID identifies the send for everything after it: the
receipts quote it in ``X-Riferimento-Message-ID`` (PEC.md section 4), and a client that retries
after a dropped connection sends the same one, which is how a second PEC is avoided.  A message
without one gets one, added as the first header line; nothing else in the message is touched.

Pure: bytes in, values out (the email package, with its standard policy, parses).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
import secrets
import time
from dataclasses import dataclass

__all__ = ["Attachment", "Summary", "summarise", "with_message_id", "new_message_id"]


@dataclass(frozen=True)
class Attachment:
    """A part with a file name: the name as given and the SHA-256 of its decoded content."""

    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Summary:
    """A submitted message as the rules and the send record see it."""

    size: int
    from_: list[str]  # every From: header, as written
    to: list[str]
    cc: list[str]
    bcc: list[str]
    message_id: str | None
    message_ids: int  # how many Message-ID headers (more than one is refused)
    subject: str | None
    attachments: tuple[Attachment, ...] = ()
    #: addr-specs as the parser read them from the top-level headers (never re-parsed from text)
    from_addresses: tuple[str, ...] = ()
    recipient_addresses: tuple[str, ...] = ()  # To and Cc
    bcc_addresses: tuple[str, ...] = ()
    #: why the headers cannot be read unambiguously (duplicates, defects): the rules refuse then,
    #: since a provider or a reader could take a different sender or recipients from them
    header_problems: tuple[str, ...] = ()


def _values(msg, name: str) -> list[str]:
    return [str(v) for v in msg.get_all(name, [])]


def summarise(message: bytes) -> Summary:
    """The summary of a message as submitted (RFC 5322 with MIME)."""
    msg = email.message_from_bytes(message, policy=email.policy.default)
    ids = _values(msg, "Message-ID")
    subject = msg.get("Subject")
    return Summary(
        size=len(message), from_=_values(msg, "From"), to=_values(msg, "To"), cc=_values(msg, "Cc"),
        bcc=_values(msg, "Bcc"), message_id=ids[0].strip() if ids else None, message_ids=len(ids),
        subject=" ".join(str(subject).split()) if subject is not None else None,
        attachments=tuple(_attachments(msg)),
        from_addresses=_addresses(msg, "From"), recipient_addresses=_addresses(msg, "To") + _addresses(msg, "Cc"),
        bcc_addresses=_addresses(msg, "Bcc"), header_problems=tuple(_raw_problems(message) + _problems(msg)))


#: RFC 5322 section 4.5.3's obsolete ``name WSP ":"``: other parsers read ``From : x`` as a From,
#: Python's takes a line starting ``From `` for a mailbox separator and drops it.
_SPACE_BEFORE_COLON = re.compile(rb"^[!-9;-~]+[ \t]+:")


def _raw_problems(message: bytes) -> list[str]:
    """What only the raw header block shows: a field name followed by spaces before its colon."""
    end = message.find(b"\r\n\r\n")
    head = message[:end if end >= 0 else len(message)]
    for line in head.split(b"\n"):
        if line[:1] not in (b" ", b"\t") and _SPACE_BEFORE_COLON.match(line):
            return [f"a header field with space before its colon ({line.split(b':', 1)[0].decode('latin-1')!r})"]
    return []


#: Headers a message has at most once (RFC 5322 section 3.6).
_ONCE = ("From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Subject")  # Message-ID: its own rule


def _addresses(msg, name: str) -> tuple[str, ...]:
    out: list[str] = []
    for header in msg.get_all(name, []):
        out += [a.addr_spec for a in getattr(header, "addresses", ())]
    return tuple(out)


def _problems(msg) -> list[str]:
    """Everything that makes the sender or the recipients ambiguous."""
    problems = []
    if msg.get_unixfrom() is not None or msg.defects:
        problems.append("a header line the parser could not place (e.g. 'From ' without a colon)")
    for name in _ONCE:
        headers = msg.get_all(name, [])
        if len(headers) > 1:
            problems.append(f"{len(headers)} {name}: headers")
        for header in headers if name in ("From", "Sender", "Reply-To", "To", "Cc", "Bcc") else ():
            if getattr(header, "defects", None):
                problems.append(f"a malformed {name}: header")
            elif any(not a.domain for a in getattr(header, "addresses", ())):
                problems.append(f"an address without a domain in {name}:")
    return problems


def _attachments(msg) -> list[Attachment]:
    out = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        name = part.get_filename()
        if name is None and part.get_content_disposition() != "attachment":
            continue
        payload = part.get_payload(decode=True) or b""
        out.append(Attachment(name or "", hashlib.sha256(payload).hexdigest(), len(payload)))
    return out


def new_message_id(domain: str) -> str:
    """A unique Message-ID (RFC 5322 §3.6.4): time, 128 random bits, the sending domain."""
    return f"<{time.strftime('%Y%m%d%H%M%S', time.gmtime())}.{secrets.token_hex(16)}@{domain}>"


def with_message_id(message: bytes, summary: Summary, domain: str) -> tuple[bytes, str, bool]:
    """``(message, its Message-ID, whether the gateway added it)``: the message unchanged when it
    has one, else with ``Message-ID:`` as its first line."""
    if summary.message_id:
        return message, summary.message_id, False
    message_id = new_message_id(domain)
    return b"Message-ID: " + message_id.encode("ascii") + b"\r\n" + message, message_id, True
