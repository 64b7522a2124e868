"""PEC submission through the gateway, end to end: real slapd, real Dovecot, the PEC provider
simulator, and real clients (smtplib, swaks).

People log in with their directory password plus TOTP; the simulator sees the mailbox's own
address and password.  Every rule of gateway/smtp_proxy/rules.py is shown with its exact reply,
and a refused message never reaches the simulator.
"""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import time

import pytest

from gateway.secret import Secret
from tests.fixtures.gateway import GatewayHarness, ldap_directory, upstream_table
from tests.fixtures.programs import program

TRIBUNALE = "cancelleria@pec.tribunale.example.it"
CLIENTE = "cliente@example.com"


@pytest.fixture
def gw(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider):
    h = start_gateway(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider)
    yield h
    h.stop()


def start_gateway(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider, *, prepare=None,
                  **extra_tables) -> GatewayHarness:
    """The gateway of these tests (legale sends, acquisti reads), plus ``extra_tables``;
    ``prepare(harness)`` runs just before it starts (e.g. to put more into its vault)."""
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(pec_mailbox.password))
    for person in ("alice", "bruno", "carla"):
        h.enroll(person)
    policy = {
        "offices": {"legale": {"groups": ["legale"], "send_to_deny": ["*@avversario.example.it"]},
                    "acquisti": {"groups": ["acquisti"]}},
        "mailboxes": {"protocollo": {"send": ["legale"], "rules": [
            {"office": "legale", "folders": "*", "rights": "lrsw"},
            {"office": "acquisti", "folders": "*", "rights": "lr"}]}},
    }
    tables = h.base_tables(
        directory=ldap_directory(slapd), policy=policy,
        mailboxes={"protocollo": {
            "address": pec_mailbox.address,
            "imap": upstream_table(dovecot, pki, pec_mailbox.address),
            "smtp": {"host": "127.0.0.1", "port": pec_provider.port, "tls": "implicit", "ca_file": str(pki.ca_cert),
                     "server_name": "localhost", "connect_timeout": 3, "max_recipients": 5,
                     "max_total_size": 200_000}}})
    tables["smtp"] = {"listen_tls": ["127.0.0.1:0"], "listen_starttls": ["127.0.0.1:0"], "timeout": 30}
    if prepare is not None:
        prepare(h)
    h.start({**tables, **extra_tables})
    h.mailbox, h.provider = pec_mailbox, pec_provider
    return h


def client(gw, person: str = "alice", *, password: str | None = None) -> smtplib.SMTP_SSL:
    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    c = smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=20)
    c.login(person, gw.credential(person, password or f"{person}-password"))
    return c


def pec(gw, *, to=(TRIBUNALE,), cc=(CLIENTE,), extra: str = "", subject: str = "Deposito atto",
        body: str = "Si trasmette l'atto.\r\n", from_: str | None = None) -> bytes:
    lines = [f"From: Studio <{from_ or gw.mailbox.address}>", f"To: {', '.join(to)}"]
    if cc:
        lines.append(f"Cc: {', '.join(cc)}")
    lines += [f"Subject: {subject}", "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def audit(gw, since: int, wait_for: int = 0) -> list[dict]:
    return [r for r in gw.audit_events(wait_for=since + wait_for)[since:] if r["protocol"] == "smtp"]


def test_smtplib_send_goes_out_as_the_mailbox_with_its_receipts(gw):
    start = len(gw.audit_events())
    with client(gw) as c:
        refused = c.sendmail("alice@example.it", [TRIBUNALE, CLIENTE], pec(gw))
    assert refused == {}
    (sub,) = gw.provider.accepted
    assert sub.user == gw.mailbox.address  # the vaulted mailbox login, not alice's
    assert sub.mail_from == gw.mailbox.address  # the envelope is the mailbox's, whatever was given
    assert sorted(sub.rcpt_tos) == sorted([TRIBUNALE, CLIENTE])
    assert sub.message_id and sub.data.startswith(b"Message-ID: " + sub.message_id.encode() + b"\r\n")
    assert sub.data.endswith(pec(gw))  # otherwise the exact bytes the client sent
    receipts = gw.provider.wait_receipts(sub.message_id, count=2)  # accettazione + consegna (Cc is esterno)
    assert sorted(r.tipo for r in receipts) == ["accettazione", "avvenuta-consegna"]
    rows = audit(gw, start, wait_for=3)
    assert [(r["action"], r["person"]) for r in rows[:3]] == [("login", "alice"), ("send", "alice"),
                                                               ("send_result", "alice")]
    send, result = rows[1], rows[2]
    assert send["mailbox"] == "protocollo" and send["message"]["message_id"] == sub.message_id
    assert send["message"]["subject"] == "Deposito atto"
    assert send["detail"]["envelope_from"] == "alice@example.it" and send["detail"]["message_id_added"] is True
    assert sorted(send["detail"]["recipients"]) == sorted([TRIBUNALE, CLIENTE])
    assert result["detail"]["reply"].startswith("250 ")


def test_swaks_sends_over_starttls_with_auth_login(gw, tmp_path):
    message = tmp_path / "atto.eml"
    message.write_bytes(pec(gw, to=(TRIBUNALE,), cc=(), extra="Message-ID: <swaks.1@studio.example.it>"))
    proc = subprocess.run(
        [program("swaks"), "--server", "localhost", "--port", str(gw.smtp_ports["starttls"]), "--tls",
         "--tls-verify", "--tls-ca-path", str(gw.pki.ca_cert), "--auth", "LOGIN", "--auth-user", "alice",
         "--auth-password=" + gw.credential("alice", "alice-password"), "--from", gw.mailbox.address,
         "--to", TRIBUNALE, "--data", str(message)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sub,) = gw.provider.accepted
    assert sub.message_id == "<swaks.1@studio.example.it>"  # the client's own Message-ID is kept
    assert gw.provider.wait_receipts(sub.message_id, count=2)


def test_no_auth_before_starttls_and_no_send_without_auth(gw):
    plain = smtplib.SMTP("localhost", gw.smtp_ports["starttls"], timeout=10)
    try:
        plain.ehlo()
        assert "auth" not in plain.esmtp_features
        assert plain.docmd("AUTH", "PLAIN AGFsaWNlAHg=")[0] == 530  # STARTTLS first
        assert plain.docmd("MAIL", "FROM:<x@example.it>")[0] == 530
    finally:
        plain.close()
    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    with smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=10) as c:
        c.ehlo()
        assert c.docmd("MAIL", "FROM:<x@example.it>")[0] == 530  # authentication required
    assert gw.provider.received == []


def test_wrong_credentials_look_alike_and_are_audited(gw):
    start = len(gw.audit_events())
    replies = []
    for user, password in (("alice", "wrong-password123456"), ("nobody-here", "x123456")):
        ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
        with smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=10) as c:
            with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
                c.login(user, password)
            replies.append((exc.value.smtp_code, exc.value.smtp_error))
    assert replies[0] == replies[1] == (535, b"5.7.8 Authentication credentials invalid")
    rows = audit(gw, start, wait_for=4)  # smtplib tries PLAIN, then LOGIN
    assert [(r["action"], r["person"], r["detail"]["mechanism"]) for r in rows] == [
        ("login_failed", "alice", "PLAIN"), ("login_failed", "alice", "LOGIN"),
        ("login_failed", "nobody-here", "PLAIN"), ("login_failed", "nobody-here", "LOGIN")]


def refused_at_data(gw, message: bytes, rcpts, person="alice") -> tuple[int, bytes]:
    with client(gw, person) as c:
        c.ehlo()
        assert c.mail(gw.mailbox.address)[0] == 250
        for r in rcpts:
            assert c.rcpt(r)[0] == 250
        return c.data(message)


@pytest.mark.parametrize("case,message,rcpts,reply", [
    ("from", lambda gw: pec(gw, from_="alice@example.it"), [TRIBUNALE, CLIENTE],
     "550 5.7.1 From: must be the PEC address {addr} (it is alice@example.it)"),
    ("bcc header", lambda gw: pec(gw, extra="Bcc: nascosto@pec.example.it"), [TRIBUNALE, CLIENTE, "nascosto@pec.example.it"],
     "550 5.7.1 PEC has no Bcc: the provider would refuse the message. Send a separate PEC to each Bcc "
     "recipient instead"),
    ("bcc envelope", lambda gw: pec(gw), [TRIBUNALE, CLIENTE, "nascosto@pec.example.it"],
     "550 5.7.1 PEC has no Bcc: nascosto@pec.example.it is not in To or Cc. Put every recipient in To or Cc"),
    ("to not a recipient", lambda gw: pec(gw), [TRIBUNALE],
     "550 5.7.1 cliente@example.com is in To or Cc but not a recipient of this submission"),
    ("size x recipients", lambda gw: pec(gw, body="x" * 990 + "\r\n") * 120, [TRIBUNALE, CLIENTE], None),
])
def test_each_rule_refuses_with_its_reply_and_nothing_reaches_the_provider(gw, case, message, rcpts, reply):
    start = len(gw.audit_events())
    body = message(gw)
    code, text = refused_at_data(gw, body, rcpts)
    if reply is None:  # size: the exact numbers depend on the body
        reply = (f"552 5.3.4 Message too large for PEC: {len(body)} octets x 2 recipients exceeds the mailbox's "
                 f"limit of 200000 octets")
    assert f"{code} {text.decode()}" == reply.format(addr=gw.mailbox.address)
    assert gw.provider.received == []  # refused before anything went up
    (denied,) = [r for r in audit(gw, start, wait_for=2) if r["action"] == "denied"]
    assert denied["person"] == "alice" and denied["detail"]["command"] == "DATA"


def test_recipient_rules_at_rcpt(gw):
    with client(gw) as c:
        c.ehlo()
        assert c.mail(gw.mailbox.address)[0] == 250
        code, text = c.rcpt("legale@avversario.example.it")
        assert (code, text) == (550, b"5.7.1 Your office may not send PEC to legale@avversario.example.it")
        for n in range(5):
            assert c.rcpt(f"r{n}@pec.example.it")[0] == 250
        assert c.rcpt("r5@pec.example.it") == (452, b"4.5.3 Too many recipients: at most 5 per PEC")
        c.rset()
    assert gw.provider.received == []


def test_a_person_without_the_send_right_is_refused_at_mail_from(gw):
    with client(gw, "bruno") as c:  # acquisti reads the mailbox but may not send from it
        c.ehlo()
        code, text = c.mail(gw.mailbox.address)
    assert (code, text.decode()) == (550, f"5.7.1 You may not send PEC from {gw.mailbox.address} (no 'send' right "
                                          "in the office policy)")
    assert gw.provider.received == []


def test_a_provider_refusal_of_one_recipient_is_passed_back_faithfully(gw):
    gw.provider.refuse_rcpt("cliente@example.com", 550, "5.1.1 Recipient address rejected")
    with client(gw) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            c.sendmail(gw.mailbox.address, [CLIENTE], pec(gw, to=(CLIENTE,), cc=()))
        c.rset()
        refused = c.sendmail(gw.mailbox.address, [TRIBUNALE, CLIENTE], pec(gw, cc=()))
    # smtplib sends DATA when some recipients were accepted: the refused one is reported, not 250
    assert refused == {CLIENTE: (550, b"5.1.1 Recipient address rejected")}


def test_provider_down_gives_a_temporary_error(gw):
    gw.provider.stop()
    with client(gw) as c:
        c.ehlo()
        code, text = c.mail(gw.mailbox.address)
    assert (code, text) == (451, b"4.4.1 The PEC provider cannot be reached now; try again later")


def test_auth_plain_challenge_abort_and_bad_base64(gw):
    import base64

    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    with smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=10) as c:
        c.ehlo()
        assert c.docmd("AUTH", "PLAIN") == (334, b"")
        assert c.docmd("*") == (501, b"5.7.0 Auth aborted")
        assert c.docmd("AUTH", "PLAIN not-base64!")[0] == 501
        assert c.docmd("AUTH", "CRAM-MD5")[0] == 504
        # the authorization identity may name the mailbox, as with IMAP AUTHENTICATE PLAIN
        blob = base64.b64encode(b"protocollo\x00alice\x00" + gw.credential("alice", "alice-password").encode())
        assert c.docmd("AUTH", "PLAIN " + blob.decode()) == (235, b"2.7.0 Authentication successful")
        assert c.docmd("AUTH", "PLAIN " + blob.decode())[0] == 503  # once per connection


def raw_send_then_vanish(gw, message: bytes, rcpts, *, wait_for_provider: bool) -> None:
    """A client that sends a whole PEC and drops the connection without reading the answer to
    the final dot: at once, or once the message has reached the provider (the case where the
    PEC went out and the client cannot know)."""
    import base64
    import socket

    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    sock = ctx.wrap_socket(socket.create_connection(("localhost", gw.smtp_ports["implicit"]), timeout=10),
                           server_hostname="localhost")
    reader = sock.makefile("rb")

    def step(line: bytes, expect: bytes) -> None:
        if line:
            sock.sendall(line + b"\r\n")
        while True:
            reply = reader.readline()
            if reply[3:4] != b"-":
                break
        assert reply.startswith(expect), reply

    step(b"", b"220")
    step(b"EHLO client.example.it", b"250")
    blob = base64.b64encode(b"\x00alice\x00" + gw.credential("alice", "alice-password").encode())
    step(b"AUTH PLAIN " + blob, b"235")
    step(b"MAIL FROM:<%s>" % gw.mailbox.address.encode(), b"250")
    for r in rcpts:
        step(b"RCPT TO:<%s>" % r.encode(), b"250")
    step(b"DATA", b"354")
    sock.sendall(message + b".\r\n")
    deadline = time.monotonic() + 10
    while wait_for_provider and not gw.provider.received and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()  # gone without the reply


def retry(gw, message: bytes) -> tuple[int, bytes]:
    with client(gw) as c:  # the client's retry, as mail clients do after a broken connection
        c.ehlo()
        assert c.mail(gw.mailbox.address)[0] == 250
        for r in (TRIBUNALE, CLIENTE):
            assert c.rcpt(r)[0] == 250
        return c.data(message)


def test_a_client_that_vanishes_at_once_and_retries_sends_one_pec(gw):
    """Whether the gateway got to relay it before noticing the client had gone or not, the
    retry ends with exactly one PEC at the provider."""
    message = pec(gw, extra="Message-ID: <retry.0@studio.example.it>")
    raw_send_then_vanish(gw, message, [TRIBUNALE, CLIENTE], wait_for_provider=False)
    deadline = time.monotonic() + 15
    while True:  # 451 4.4.3 while the first attempt may still be going out: mail clients retry later
        code, text = retry(gw, message)
        if code != 451 or time.monotonic() > deadline:
            break
        assert text.startswith(b"4.4.3 An earlier attempt to send this PEC may have gone out")
        time.sleep(0.3)
    assert code == 250
    assert len(gw.provider.received) == 1


def test_a_client_that_vanishes_after_data_and_retries_sends_one_pec(gw):
    message = pec(gw, extra="Message-ID: <retry.1@studio.example.it>")
    start = len(gw.audit_events())
    raw_send_then_vanish(gw, message, [TRIBUNALE, CLIENTE], wait_for_provider=True)
    gw.provider.wait_receipts("<retry.1@studio.example.it>", count=1)  # it went out
    rows = audit(gw, start, wait_for=3)  # the relay finished although the client was gone
    assert [r["action"] for r in rows[:3]] == ["login", "send", "send_result"]
    code, text = retry(gw, message)
    assert (code, text) == (250, b"2.0.0 Already sent as <retry.1@studio.example.it> (already relayed); not sent "
                                 b"again")
    assert len(gw.provider.received) == 1  # one PEC, not two
    assert [r["action"] for r in audit(gw, start, wait_for=6)][-1] == "send_duplicate"


def test_a_provider_connection_lost_after_data_is_resolved_by_the_accettazione(gw):
    """The provider takes the message and the connection breaks before its 250: the gateway
    cannot know, says 451, and on the retry finds the accettazione in the mailbox."""
    message = pec(gw, extra="Message-ID: <retry.2@studio.example.it>")
    gw.provider.drop_after_data = True
    with client(gw) as c:
        with pytest.raises((smtplib.SMTPDataError, smtplib.SMTPServerDisconnected)) as exc:
            c.sendmail(gw.mailbox.address, [TRIBUNALE, CLIENTE], message)
    if isinstance(exc.value, smtplib.SMTPDataError):
        assert exc.value.smtp_code == 451
    gw.provider.drop_after_data = False
    code, text = retry(gw, message)
    assert code == 250 and b"accettazione found" in text and b"not sent again" in text
    assert len(gw.provider.received) == 1


def test_a_message_id_reused_for_a_different_pec_is_refused(gw):
    with client(gw) as c:
        c.sendmail(gw.mailbox.address, [TRIBUNALE, CLIENTE], pec(gw, extra="Message-ID: <same@x>"))
        with pytest.raises(smtplib.SMTPDataError) as exc:
            c.sendmail(gw.mailbox.address, [TRIBUNALE, CLIENTE],
                       pec(gw, extra="Message-ID: <same@x>", subject="Altro atto"))
    assert (exc.value.smtp_code, exc.value.smtp_error) == (
        550, b"5.6.0 Message-ID <same@x> was already used for a different PEC from this mailbox; send this one "
             b"with a new Message-ID")
    assert len(gw.provider.received) == 1


def test_a_connection_ends_after_too_many_failed_logins(gw):
    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    with smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=10) as c:
        c.ehlo()
        replies = [c.docmd("AUTH", "PLAIN AGFsaWNlAHdyb25nLXBhc3N3b3JkMTIzNDU2")[0] for _ in range(3)]
        assert replies == [535, 535, 421]  # [imap] max_login_failures, 3 by default
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.docmd("NOOP")
