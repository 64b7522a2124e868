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
        attachments=tuple(_attachments(msg)))


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
