"""The SMTP submission front against tricks a review found, end to end (real slapd, real Dovecot,
the PEC provider simulator): headers a provider or a reader could read differently from the
gateway, two retries at the same moment, a store error after the provider's 250.  Each
docstring says what happened before the fix ("Was:").
"""

from __future__ import annotations

import base64
import socket
import sqlite3
import ssl
import threading

from tests import test_smtp_e2e
from tests.test_smtp_e2e import TRIBUNALE

HIDDEN = "nascosto@pec.example.it"

gw = test_smtp_e2e.gw  # the same gateway in front of the PEC provider simulator


# -- helpers --------------------------------------------------------------------------------

class Raw:
    """A raw implicit-TLS SMTP client: exact bytes out, every reply line read."""

    def __init__(self, gw) -> None:
        ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
        self.sock = ctx.wrap_socket(socket.create_connection(("localhost", gw.smtp_ports["implicit"]), timeout=20),
                                    server_hostname="localhost")
        self.reader = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> bytes:
        while True:
            line = self.reader.readline()
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n")

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def login(self, gw, person: str = "alice") -> None:
        assert self.cmd(b"EHLO client.example.it").startswith(b"250")
        blob = base64.b64encode(b"\x00" + person.encode() + b"\x00" + gw.credential(person, f"{person}-password").encode())
        assert self.cmd(b"AUTH PLAIN " + blob).startswith(b"235")

    def send(self, gw, message: bytes, rcpts) -> bytes:
        assert self.cmd(b"MAIL FROM:<%s>" % gw.mailbox.address.encode()).startswith(b"250")
        for r in rcpts:
            reply = self.cmd(b"RCPT TO:<%s>" % r.encode())
            assert reply.startswith(b"250"), reply
        assert self.cmd(b"DATA").startswith(b"354")
        self.sock.sendall(message + b".\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.cmd(b"QUIT")
        except OSError:
            pass
        self.sock.close()


def message(gw, headers: list[str], body: str = "Si trasmette l'atto.\r\n") -> bytes:
    return ("\r\n".join(headers + ["Subject: Deposito atto", "MIME-Version: 1.0",
                                    "Content-Type: text/plain; charset=utf-8"]) + "\r\n\r\n" + body).encode()


def submit(gw, msg: bytes, rcpts) -> bytes:
    c = Raw(gw)
    try:
        c.login(gw)
        return c.send(gw, msg, rcpts)
    finally:
        c.close()


# -- From: what the gateway parses is not what the message carries ---------------------------

def test_from_with_a_second_angle_address_is_refused(gw):
    """Was: ``From: <mailbox> <evil@x>`` is a malformed From whose second address the email
    package drops (InvalidHeaderDefect); the gateway then sees only the mailbox and relays the
    raw header unchanged, so a reader whose parser takes the last angle-addr sees another sender."""
    own = gw.mailbox.address
    msg = message(gw, [f"From: <{own}> <direttore@tribunale.example.it>", f"To: {TRIBUNALE}",
                       "Message-ID: <from.1@studio.example.it>"])
    reply = submit(gw, msg, [TRIBUNALE])
    assert reply.startswith(b"550 5.6.0 The message's headers cannot be read unambiguously"), reply
    assert gw.provider.received == []


def test_obsolete_from_field_with_space_before_colon_is_refused(gw):
    """Was: RFC 5322 obs-syntax allows ``From :``; Python's parser takes any line starting
    ``From `` for a misplaced mbox envelope line and drops it (MisplacedEnvelopeHeaderDefect), so
    a message with a second sender passes the ``From: = the mailbox`` rule and goes up as is."""
    own = gw.mailbox.address
    msg = message(gw, [f"From: {own}", "From : Avv. Rossi <rossi@altrostudio.example.it>", f"To: {TRIBUNALE}",
                       "Message-ID: <from.2@studio.example.it>"])
    reply = submit(gw, msg, [TRIBUNALE])
    assert reply.startswith(b"550 5.6.0 The message's headers cannot be read unambiguously"), reply
    assert gw.provider.received == []


# -- Bcc: an envelope recipient the reader cannot see ---------------------------------------

def test_recipient_hidden_in_an_encoded_word_is_refused(gw):
    """Was: a To: entry ``=?utf-8?b?...?=`` (RFC 2047 forbids encoded words in an addr-spec; a
    conforming reader shows it undecoded) is decoded by the email package into a local part,
    which rules.check_message re-parses from ``str(header)`` into the hidden address, so the
    envelope recipient counts as "in To" and the gateway relays a de-facto Bcc."""
    own = gw.mailbox.address
    hidden = base64.b64encode(HIDDEN.encode()).decode()
    msg = message(gw, [f"From: {own}", f"To: {TRIBUNALE}, =?utf-8?b?{hidden}?=",
                       "Message-ID: <bcc.1@studio.example.it>"])
    reply = submit(gw, msg, [TRIBUNALE, HIDDEN])
    assert reply.startswith(b"550 5.6.0 The message's headers cannot be read unambiguously"), reply
    assert gw.provider.received == []


def test_a_second_to_header_is_refused(gw):
    """Was: RFC 5322 §3.6 allows one To: and one Cc: field; the gateway counts every To: it
    finds, so a recipient only in a second To: (which many readers, and a provider copying the
    first To: into the transport envelope, never show) passes the "no Bcc" rule."""
    own = gw.mailbox.address
    msg = message(gw, [f"From: {own}", f"To: {TRIBUNALE}", f"To: {HIDDEN}", "Message-ID: <bcc.2@studio.example.it>"])
    reply = submit(gw, msg, [TRIBUNALE, HIDDEN])
    assert reply.startswith(b"550 5.6.0 The message's headers cannot be read unambiguously"), reply
    assert gw.provider.received == []


# -- one PEC, however often a client retries --------------------------------------------------

def test_two_concurrent_retries_of_a_refused_send_go_out_once(gw):
    """Was: after a provider refusal (state ``refused``) a retry may go again; two retries at
    once both read ``refused`` (find, then set_state, no compare-and-set) and both relay: two
    PECs with legal effect.  The barrier only makes the two reads meet deterministically; it
    gives up after 3 s, so code that claims the record atomically passes."""
    own = gw.mailbox.address
    msg = message(gw, [f"From: {own}", f"To: {TRIBUNALE}", "Message-ID: <race.1@studio.example.it>"])
    gw.provider.tempfail_next(stage="data")
    assert submit(gw, msg, [TRIBUNALE]).startswith(b"451")  # refused by the provider: may go again
    sends = gw.gateway.services.sends
    original_find, barrier = sends.find, threading.Barrier(2, timeout=3)

    def find(mailbox, message_id):
        found = original_find(mailbox, message_id)
        if message_id == "<race.1@studio.example.it>":
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
        return found

    sends.find = find
    replies: list[bytes] = []
    threads = [threading.Thread(target=lambda: replies.append(submit(gw, msg, [TRIBUNALE]))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    accepted = [s for s in gw.provider.received if s.outcome == "accepted"]
    assert len(accepted) == 1, (replies, len(accepted))


# -- a hook that raises -------------------------------------------------------------------------

def test_a_store_error_after_the_relay_is_not_reported_as_a_permanent_failure(gw):
    """Was: when recording the outcome fails after the provider's 250 (the PEC went out),
    the exception escapes handle_DATA; aiosmtpd answers ``500 Error: (OperationalError) database
    is locked`` — a permanent failure for a PEC that was sent (the person sends it again with a
    new Message-ID: a second PEC), the internal error text goes to the client, no send_result
    row is written, and aiosmtpd skips its post-DATA reset so the next MAIL gets 503."""
    own = gw.mailbox.address
    msg = message(gw, [f"From: {own}", f"To: {TRIBUNALE}", "Message-ID: <store.1@studio.example.it>"])
    sends = gw.gateway.services.sends
    original = sends.set_state

    def set_state(send_id, state, **kw):
        if state == "relayed":
            raise sqlite3.OperationalError("database is locked")
        return original(send_id, state, **kw)

    sends.set_state = set_state
    c = Raw(gw)
    try:
        c.login(gw)
        reply = c.send(gw, msg, [TRIBUNALE])
        sends.set_state = original
        after = c.cmd(b"MAIL FROM:<%s>" % own.encode())
    finally:
        c.close()
    assert len(gw.provider.accepted) == 1  # it did go out
    observed = (reply, after)
    assert b"OperationalError" not in reply and b"database" not in reply, observed
    assert not reply.startswith(b"5"), observed
    assert after.startswith(b"250"), observed
