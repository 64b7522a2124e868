"""The PEC submission rules, checked before anything goes to the provider (PEC.md section 5).

A PEC send has legal effect, and what the provider would refuse comes back as a
*non-accettazione* — a signed receipt that the send failed, minutes later.  So the gateway
refuses the same things itself, at the SMTP step where they can be told, each with an enhanced
status code (RFC 3463) and a text that says what to change:

================================  ======  ==========  ==============================================
rule                              when    reply       why
================================  ======  ==========  ==============================================
the person has ``send``           MAIL    550 5.7.1   the office policy grants sending per mailbox
recipient count                   RCPT    452 4.5.3   RFC 5321 §4.5.3.1.10: "too many recipients"
office recipient allow/deny       RCPT    550 5.7.1   an office may only write to some addresses
header ``From:`` = the mailbox    DATA    550 5.7.1   the provider refuses any other sender
no ``Bcc:``                       DATA    550 5.7.1   PEC has no Bcc: a Bcc'd copy is refused
RCPT set = To ∪ Cc                DATA    550 5.7.1   the same rule, from the envelope's side
size × recipients within limit    DATA    552 5.3.4   the provider's limit (Aruba: 100 MB in all)
one Message-ID at most            DATA    550 5.6.0   the send is identified by it
================================  ======  ==========  ==============================================

The envelope ``MAIL FROM`` is not refused: the gateway sends with the mailbox's address
whatever the client gave (RFC 5321 lets a submission server fix the envelope), and records what
it was given.  The header is never rewritten: the person would not see what was sent.

Pure: addresses and bytes in, :class:`Refusal` or None out.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from gateway.smtp_proxy.message import Summary

__all__ = ["Refusal", "SendLimits", "check_sender_right", "check_recipient", "check_message", "normalise"]


@dataclass(frozen=True)
class SendLimits:
    """A mailbox's submission limits (config ``[mailboxes.NAME.smtp]``)."""

    max_recipients: int = 100
    max_total_bytes: int = 100 * 1000 * 1000  # message size × recipients (PEC.md §5: Aruba 100 MB)


@dataclass(frozen=True)
class Refusal:
    """An SMTP refusal: ``code`` and enhanced ``status``, the client ``text``, and the ``rule``
    named in the audit row."""

    code: int
    status: str
    text: str
    rule: str

    @property
    def reply(self) -> str:
        """The reply line aiosmtpd sends (without CRLF)."""
        return f"{self.code} {self.status} {self.text}"


def normalise(address: str) -> str:
    """An address as compared here: without angle brackets and spaces, lower-case (PEC mailbox
    names are case-insensitive at every provider; local parts are case-sensitive only in theory)."""
    return address.strip().strip("<>").strip().lower()


def check_sender_right(may_send: bool, mailbox_address: str) -> Refusal | None:
    """At MAIL FROM: may this person send from the mailbox at all?"""
    if may_send:
        return None
    return Refusal(550, "5.7.1", f"You may not send PEC from {mailbox_address} (no 'send' right in the "
                                 "office policy)", "send_right")


def _office_permits(addr: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> str | None:
    """None when one office's patterns let ``addr`` through, else which list stopped it."""
    if any(fnmatch.fnmatchcase(addr, p.lower()) for p in deny):
        return "recipient_deny"
    if allow and not any(fnmatch.fnmatchcase(addr, p.lower()) for p in allow):
        return "recipient_allow"
    return None


def check_recipient(address: str, accepted: int, limits: SendLimits,
                    offices: list[tuple[tuple[str, ...], tuple[str, ...]]] = ()) -> Refusal | None:
    """At each RCPT TO: the count so far (``accepted``), then the address patterns of each office
    the person sends for, as ``(allow, deny)`` (shell patterns like ``*@pec.tribunale.*``; in
    an office ``deny`` wins and an empty ``allow`` allows all).  Like folder rights, offices add
    up: one office that lets the address through is enough."""
    if accepted >= limits.max_recipients:
        return Refusal(452, "4.5.3", f"Too many recipients: at most {limits.max_recipients} per PEC",
                       "max_recipients")
    addr = normalise(address)
    stopped = [_office_permits(addr, allow, deny) for allow, deny in offices]
    if not stopped or None in stopped:
        return None
    if "recipient_deny" in stopped:
        return Refusal(550, "5.7.1", f"Your office may not send PEC to {addr}", "recipient_deny")
    return Refusal(550, "5.7.1", f"Your office may not send PEC to {addr} (not among its allowed "
                                 "recipients)", "recipient_allow")


def check_message(summary: Summary, recipients: list[str], mailbox_address: str,
                  limits: SendLimits) -> Refusal | None:
    """At the end of DATA: the header rules and the size, given the envelope recipients."""
    if summary.header_problems:
        return Refusal(550, "5.6.0", f"The message's headers cannot be read unambiguously ({summary.header_problems[0]});"
                                     " the provider or a reader could take another sender or recipients from them",
                       "malformed_headers")
    own = normalise(mailbox_address)
    senders = [normalise(a) for a in summary.from_addresses if a]
    if senders != [own]:
        shown = ", ".join(senders) or "none"
        return Refusal(550, "5.7.1", f"From: must be the PEC address {own} (it is {shown})", "header_from")
    if summary.message_ids > 1:
        return Refusal(550, "5.6.0", "The message has more than one Message-ID", "message_id")
    if summary.bcc_addresses:
        return Refusal(550, "5.7.1", "PEC has no Bcc: the provider would refuse the message. Send a separate "
                                     "PEC to each Bcc recipient instead", "bcc")
    headed = {normalise(a) for a in summary.recipient_addresses if a}
    envelope = {normalise(r) for r in recipients}
    hidden = sorted(envelope - headed)
    if hidden:
        return Refusal(550, "5.7.1", f"PEC has no Bcc: {', '.join(hidden)} is not in To or Cc. Put every "
                                     "recipient in To or Cc", "bcc")
    missing = sorted(headed - envelope)
    if missing:
        return Refusal(550, "5.7.1", f"{', '.join(missing)} is in To or Cc but not a recipient of this "
                                     "submission", "recipients_headers")
    total = summary.size * len(envelope)
    if total > limits.max_total_bytes:
        return Refusal(552, "5.3.4", f"Message too large for PEC: {summary.size} octets x {len(envelope)} "
                                     f"recipients exceeds the mailbox's limit of {limits.max_total_bytes} octets",
                       "max_total_bytes")
    return None
