"""The PEC submission rules (gateway/smtp_proxy/rules.py) and message reading (message.py):
each rule's exact SMTP reply, from bytes."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.smtp_proxy.message import summarise, with_message_id
from gateway.smtp_proxy.rules import SendLimits, check_message, check_recipient, check_sender_right

PEC = "protocollo@pec.example.it"
LIMITS = SendLimits(max_recipients=3, max_total_bytes=10_000)


def message(*headers: str, body: str = "Testo.\r\n") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


BASE = ("From: Studio Rossi <protocollo@pec.example.it>", "To: ufficio@pec.tribunale.example.it",
        "Cc: cliente@example.com", "Subject: Deposito atto", "Message-ID: <m1@studio.example.it>")
RCPTS = ["ufficio@pec.tribunale.example.it", "cliente@example.com"]


def reply(msg: bytes, rcpts=RCPTS, limits=LIMITS) -> str | None:
    refusal = check_message(summarise(msg), rcpts, PEC, limits)
    return refusal.reply if refusal else None


def test_a_good_message_passes():
    assert reply(message(*BASE)) is None
    # case and angle brackets do not matter
    assert reply(message(*BASE), ["<UFFICIO@pec.tribunale.example.it>", "Cliente@Example.com"]) is None


def test_no_send_right():
    assert check_sender_right(True, PEC) is None
    assert check_sender_right(False, PEC).reply == (
        "550 5.7.1 You may not send PEC from protocollo@pec.example.it (no 'send' right in the office policy)")


@pytest.mark.parametrize("from_,shown", [
    ("From: someone@example.com", "someone@example.com"),
    ("From: protocollo@pec.example.it, altro@pec.example.it", "protocollo@pec.example.it, altro@pec.example.it"),
    (None, "none"),
])
def test_header_from_must_be_the_mailbox(from_, shown):
    headers = [h for h in BASE if not h.startswith("From:")] + ([from_] if from_ else [])
    assert reply(message(*headers)) == f"550 5.7.1 From: must be the PEC address {PEC} (it is {shown})"


def test_bcc_header_is_refused():
    assert reply(message(*BASE, "Bcc: nascosto@pec.example.it"), RCPTS + ["nascosto@pec.example.it"]) == (
        "550 5.7.1 PEC has no Bcc: the provider would refuse the message. Send a separate PEC to each Bcc "
        "recipient instead")


def test_an_envelope_recipient_missing_from_to_and_cc_is_a_bcc():
    assert reply(message(*BASE), RCPTS + ["nascosto@pec.example.it"]) == (
        "550 5.7.1 PEC has no Bcc: nascosto@pec.example.it is not in To or Cc. Put every recipient in To or Cc")


def test_a_to_address_that_is_not_a_recipient():
    assert reply(message(*BASE), RCPTS[:1]) == (
        "550 5.7.1 cliente@example.com is in To or Cc but not a recipient of this submission")


def test_size_times_recipients():
    body = "x" * 4500 + "\r\n"
    big = message(*BASE, body=body)
    assert reply(big, RCPTS, SendLimits(3, 2 * len(big))) is None
    assert reply(big, RCPTS, SendLimits(3, 2 * len(big) - 1)) == (
        f"552 5.3.4 Message too large for PEC: {len(big)} octets x 2 recipients exceeds the mailbox's limit of "
        f"{2 * len(big) - 1} octets")


def test_two_message_ids():
    assert reply(message(*BASE, "Message-ID: <m2@x>")) == "550 5.6.0 The message has more than one Message-ID"


def test_recipient_count_and_office_patterns():
    assert check_recipient("a@pec.x.it", 2, LIMITS) is None
    assert check_recipient("a@pec.x.it", 3, LIMITS).reply == "452 4.5.3 Too many recipients: at most 3 per PEC"
    legale = (("*@pec.tribunale.*", "*@pec.example.it"), ("avversario@pec.example.it",))
    assert check_recipient("Cancelleria@PEC.Tribunale.example.it", 0, LIMITS, [legale]) is None
    assert check_recipient("avversario@pec.example.it", 0, LIMITS, [legale]).reply == (
        "550 5.7.1 Your office may not send PEC to avversario@pec.example.it")
    assert check_recipient("x@gmail.com", 0, LIMITS, [legale]).reply == (
        "550 5.7.1 Your office may not send PEC to x@gmail.com (not among its allowed recipients)")
    # offices add up: another office of the same person may write to anyone
    assert check_recipient("x@gmail.com", 0, LIMITS, [legale, ((), ())]) is None
    assert check_recipient("x@gmail.com", 0, LIMITS, []) is None


def test_summary_and_attachments():
    pdf = b"%PDF-1.4 atto" * 50
    mime = ("From: protocollo@pec.example.it\r\nTo: ufficio@pec.tribunale.example.it\r\n"
            "Subject: =?UTF-8?Q?Deposito_atto_n=C2=B0_5?=\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nTesto\r\n'
            '--b\r\nContent-Type: application/pdf; name="atto.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
            'Content-Disposition: attachment; filename="atto.pdf"\r\n\r\n'
            + base64.encodebytes(pdf).decode().replace("\n", "\r\n") + "--b--\r\n").encode()
    s = summarise(mime)
    assert s.subject == "Deposito atto n° 5" and s.message_id is None and s.size == len(mime)
    (att,) = s.attachments
    assert (att.name, att.sha256, att.size) == ("atto.pdf", hashlib.sha256(pdf).hexdigest(), len(pdf))


def test_a_message_id_is_added_only_when_missing():
    plain = message(*[h for h in BASE if not h.startswith("Message-ID")])
    out, mid, added = with_message_id(plain, summarise(plain), "pec.example.it")
    assert added and out == b"Message-ID: " + mid.encode() + b"\r\n" + plain  # nothing else touched
    assert mid.startswith("<") and mid.endswith("@pec.example.it>")
    assert summarise(out).message_id == mid
    again, mid2, added2 = with_message_id(out, summarise(out), "pec.example.it")
    assert (again, mid2, added2) == (out, mid, False)
    _, other, _ = with_message_id(plain, summarise(plain), "pec.example.it")
    assert other != mid  # unique


@pytest.mark.parametrize("headers,problem", [
    ((f"From: {PEC} <direttore@tribunale.example.it>",), "a malformed From: header"),
    (("From : direttore@tribunale.example.it",), "a header field with space before its colon ('From ')"),
    (("To: ufficio@pec.tribunale.example.it",), "2 To: headers"),
    (("Cc: =?utf-8?b?bmFzY29zdG9AcGVjLmV4YW1wbGUuaXQ=?=",), "2 Cc: headers"),
])
def test_headers_read_ambiguously_are_refused(headers, problem):
    """A provider or a reader could take another sender or recipients from these than the
    gateway's parser does: refused rather than guessed."""
    base = [h for h in BASE if not (headers[0].startswith("From:") and h.startswith("From"))]
    got = reply(message(*base, *headers))
    assert got.startswith(f"550 5.6.0 The message's headers cannot be read unambiguously ({problem}")


def test_an_address_hidden_in_an_encoded_word_is_no_recipient():
    headers = [h for h in BASE if not h.startswith("Cc")]
    got = reply(message(*headers, "Cc: =?utf-8?b?bmFzY29zdG9AcGVjLmV4YW1wbGUuaXQ=?="),
                ["ufficio@pec.tribunale.example.it", "nascosto@pec.example.it"])
    assert got.startswith("550 5.6.0 The message's headers cannot be read unambiguously (a malformed Cc: header")
