"""The PEC provider simulator (tests/fixtures/pec_provider.py) against real clients and Dovecot.

What: smtplib and swaks submit over implicit TLS and STARTTLS with AUTH PLAIN and LOGIN; the
receipts the simulator APPENDs are read back from the real INBOX and checked as a gateway would
classify them (PEC.md sections 1-4: top-level ``X-Ricevuta``, ``X-Riferimento-Message-ID``,
subject prefix, ``daticert.xml`` parsed by :func:`gateway.pec.daticert.parse_daticert`).

Why: gateway tests rely on the simulator behaving like a provider, refusals and failure modes
included; a wrong simulator would make them pass for the wrong reason.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import subprocess
import uuid
from email.message import EmailMessage

import pytest

from gateway.pec.daticert import Daticert, parse_daticert
from tests.fixtures.pec_provider import PecProvider
from tests.fixtures.programs import program

pytestmark = pytest.mark.dovecot

COMUNE = "protocollo@pec.comune-esempio.example.it"
INESISTENTE = "inesistente.ufficio@pec.fornitore.example.it"
ESTERNO = "info@fornitore.example.it"
CC_PEC = "amministrazione@pec.fornitore.example.it"
LENTO = "ritardo.protocollo@pec.comune-esempio.example.it"


def new_msgid() -> str:
    return f"<{uuid.uuid4().hex}@gw.example.it>"


def submission(sender: str, to: list[str], cc: list[str] = (), *, subject: str = "Istanza n. 7",
               msgid: str | None = None, extra: list[tuple[str, str]] = ()) -> bytes:
    """A CRLF message as a gateway would submit it; ``msgid=None`` leaves Message-ID out."""
    fields = [("From", sender), ("To", ", ".join(to))] + ([("Cc", ", ".join(cc))] if cc else [])
    fields += [("Subject", subject), ("Date", "Sat, 14 Jun 2025 10:00:00 +0200")]
    fields += [("Message-ID", msgid)] if msgid else []
    fields += list(extra) + [("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=utf-8")]
    head = "".join(f"{k}: {v}\r\n" for k, v in fields)
    return (head + "\r\nSi trasmette l'istanza.\r\n").encode()


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def top_parts(msg: EmailMessage) -> list[EmailMessage]:
    """The direct children of the signed multipart/mixed (never postacert.eml's own parts)."""
    return list(msg.get_payload()[0].iter_parts())


def daticert_of(msg: EmailMessage) -> Daticert:
    part = next(p for p in top_parts(msg) if p.get_filename() == "daticert.xml")
    return parse_daticert(part.get_payload(decode=True))


def postacert_of(msg: EmailMessage) -> EmailMessage | None:
    part = next((p for p in top_parts(msg) if p.get_content_type() == "message/rfc822"), None)
    return part.get_payload()[0] if part is not None else None


def inbox_for(dovecot, mailbox, msgid: str) -> list[EmailMessage]:
    """The INBOX messages whose top-level X-Riferimento-Message-ID is ``msgid``, read over IMAP."""
    imap = dovecot.connect(mailbox.address, mailbox.password)
    try:
        imap.select("INBOX", readonly=True)
        typ, data = imap.fetch("1:*", "(BODY.PEEK[])")
        assert typ == "OK"
    finally:
        imap.logout()
    messages = [parse(item[1]) for item in data if isinstance(item, tuple)]
    return [m for m in messages if m["X-Riferimento-Message-ID"] == msgid]


def by_kind(messages: list[EmailMessage]) -> dict[tuple[str, str | None], EmailMessage]:
    """Receipts keyed by (X-Ricevuta, daticert consegna): PEC.md section 4 step 4."""
    return {(str(m["X-Ricevuta"]), daticert_of(m).consegna): m for m in messages}


def send(provider: PecProvider, mailbox, raw: bytes, rcpts: list[str]) -> dict:
    with provider.client(mailbox.address, mailbox.password) as smtp:
        return smtp.sendmail(mailbox.address, rcpts, raw)


# -- receipts -------------------------------------------------------------------------------

def test_to_and_cc_give_accettazione_consegna_and_mancata_consegna(pec_provider, pec_mailbox,
                                                                   dovecot):
    msgid = new_msgid()
    raw = submission(pec_mailbox.address, [COMUNE, INESISTENTE], [ESTERNO], msgid=msgid)
    assert send(pec_provider, pec_mailbox, raw, [COMUNE, INESISTENTE, ESTERNO]) == {}

    [sub] = pec_provider.received
    assert (sub.user, sub.data, sub.message_id, sub.outcome) == (
        pec_mailbox.address, raw, msgid, "accepted")
    assert sub.rcpt_tos == (COMUNE, INESISTENTE, ESTERNO)
    assert sub.identificativo.startswith("opec") and sub.identificativo.endswith("@pec.example.it")
    assert len(pec_provider.wait_receipts(msgid, 3)) == 3
    pec_provider.drain()

    inbox = inbox_for(dovecot, pec_mailbox, msgid)
    receipts = by_kind(inbox)
    assert len(inbox) == 3  # and no receipt at all for the esterno recipient
    assert set(receipts) == {("accettazione", None), ("avvenuta-consegna", COMUNE),
                             ("errore-consegna", INESISTENTE)}
    for (tipo, _), msg in receipts.items():
        dati = daticert_of(msg)
        assert (dati.tipo, dati.identificativo, dati.msgid) == (tipo, sub.identificativo, msgid)
        assert dati.mittente == pec_mailbox.address and msg["To"] == pec_mailbox.address
        assert msg.get_content_type() == "multipart/signed"

    acc = receipts["accettazione", None]
    assert acc["Subject"] == "ACCETTAZIONE: Istanza n. 7"
    assert set(daticert_of(acc).destinatari) == {(COMUNE, "certificato"),
                                                 (INESISTENTE, "certificato"),
                                                 (ESTERNO, "esterno")}
    cons = receipts["avvenuta-consegna", COMUNE]
    assert cons["Subject"] == "CONSEGNA: Istanza n. 7"
    original = postacert_of(cons)
    assert original["Message-ID"] == f"<{sub.identificativo}>"
    assert original["X-Riferimento-Message-ID"] == msgid
    err = receipts["errore-consegna", INESISTENTE]
    assert err["Subject"] == "AVVISO DI MANCATA CONSEGNA: Istanza n. 7"
    assert daticert_of(err).errore == "no-dest"
    assert daticert_of(err).errore_esteso.startswith("5.1.1")


def test_late_recipient_gets_a_preavviso_then_cc_consegna_is_sintetica(pec_provider, pec_mailbox,
                                                                        dovecot):
    pec_provider.receipt_delay = 0.05
    msgid = new_msgid()
    raw = submission(pec_mailbox.address, [LENTO], [CC_PEC], msgid=msgid)
    send(pec_provider, pec_mailbox, raw, [LENTO, CC_PEC])

    receipts = pec_provider.wait_receipts(msgid, 4)
    assert [(r.tipo, r.consegna) for r in receipts] == [
        ("accettazione", None), ("preavviso-errore-consegna", LENTO),
        ("avvenuta-consegna", LENTO), ("avvenuta-consegna", CC_PEC)]
    inbox = by_kind(inbox_for(dovecot, pec_mailbox, msgid))
    preavviso = inbox["preavviso-errore-consegna", LENTO]
    assert preavviso["Subject"].startswith("AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: ")
    assert daticert_of(inbox["avvenuta-consegna", LENTO]).ricevuta_tipo == "completa"
    assert daticert_of(inbox["avvenuta-consegna", CC_PEC]).ricevuta_tipo == "sintetica"
    assert postacert_of(inbox["avvenuta-consegna", CC_PEC]) is None


@pytest.mark.parametrize("case", ["virus", "bcc", "envelope"])
def test_refused_after_acceptance_gives_only_a_non_accettazione(pec_provider, pec_mailbox, dovecot,
                                                                case):
    """The virus marker, a Bcc header, an envelope recipient missing from To/Cc (PEC.md §5)."""
    msgid = new_msgid()
    subject = "Allegato EICAR" if case == "virus" else "Istanza n. 7"
    extra = [("Bcc", LENTO)] if case == "bcc" else []
    raw = submission(pec_mailbox.address, [COMUNE], subject=subject, msgid=msgid, extra=extra)
    rcpts = [COMUNE] if case == "virus" else [COMUNE, LENTO]
    send(pec_provider, pec_mailbox, raw, rcpts)
    pec_provider.wait_receipts(msgid, 1)
    pec_provider.drain()

    [msg] = inbox_for(dovecot, pec_mailbox, msgid)
    dati = daticert_of(msg)
    assert msg["X-Ricevuta"] == dati.tipo == "non-accettazione"
    assert dati.identificativo == pec_provider.received[0].identificativo
    if case == "virus":
        assert msg["Subject"] == "AVVISO DI NON ACCETTAZIONE PER VIRUS: Allegato EICAR"
        assert dati.errore == "virus"
    else:
        assert msg["Subject"] == "AVVISO DI NON ACCETTAZIONE: Istanza n. 7"
        assert dati.errore == "altro" and dati.errore_esteso.startswith("5.7.1 - ")
    assert pec_provider.received[0].outcome == "non-accettazione"


# -- real clients ---------------------------------------------------------------------------

def swaks(provider: PecProvider, mailbox, pki, tls: str, auth: str, msgid: str):
    cmd = [program("swaks"), "--server", "127.0.0.1", "--port", str(provider.port), tls,
           "--tls-verify", "--tls-ca-path", str(pki.ca_cert), "--tls-sni", "localhost",
           "--auth", auth, "--auth-user", mailbox.address, f"--auth-password={mailbox.password}",  # may start with "-"
           "--from", mailbox.address, "--to", COMUNE, "--header", f"Message-Id: {msgid}",
           "--header", "Subject: Prova swaks"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if "requires Net::SSLeay" in done.stderr:  # a Recommends that --no-install-recommends skips
        pytest.fail("swaks has no TLS: apt-get install libnet-ssleay-perl")
    return done


def test_swaks_implicit_tls_auth_plain(pec_provider, pec_mailbox, pki):
    msgid = new_msgid()
    done = swaks(pec_provider, pec_mailbox, pki, "--tls-on-connect", "PLAIN", msgid)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "235 2.7.0" in done.stdout and "250 2.0.0" in done.stdout
    assert [r.tipo for r in pec_provider.wait_receipts(msgid, 2)] == ["accettazione",
                                                                      "avvenuta-consegna"]


def test_swaks_starttls_auth_login(dovecot, pki, pec_gestore, pec_mailbox):
    with PecProvider(dovecot, pki, pec_gestore, starttls=True) as provider:
        provider.add_mailbox(pec_mailbox.address, pec_mailbox.password)
        msgid = new_msgid()
        done = swaks(provider, pec_mailbox, pki, "--tls", "LOGIN", msgid)
        assert done.returncode == 0, done.stdout + done.stderr
        assert provider.wait_receipts(msgid, 2)[0].tipo == "accettazione"
        assert provider.received[0].user == pec_mailbox.address


def test_starttls_mode_refuses_auth_before_starttls(dovecot, pki, pec_gestore, pec_mailbox):
    with PecProvider(dovecot, pki, pec_gestore, starttls=True) as provider:
        provider.add_mailbox(pec_mailbox.address, pec_mailbox.password)
        with smtplib.SMTP("127.0.0.1", provider.port, timeout=10) as smtp:
            smtp.ehlo()
            assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
            assert smtp.docmd("AUTH", "PLAIN AGFiYwBkZWY=")[0] == 530
        with provider.client(pec_mailbox.address, pec_mailbox.password) as smtp:
            assert smtp.has_extn("auth")


# -- refusals -------------------------------------------------------------------------------

def test_wrong_password_is_535(pec_provider, pec_mailbox):
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        pec_provider.client(pec_mailbox.address, pec_mailbox.password + "x")
    assert refused.value.smtp_code == 535 and refused.value.smtp_error.startswith(b"5.7.8")


def test_sender_must_be_the_authenticated_mailbox(pec_provider, pec_mailbox):
    other = "altro@pec.example.it"
    with pec_provider.client(pec_mailbox.address, pec_mailbox.password) as smtp:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            smtp.sendmail(other, [COMUNE], submission(other, [COMUNE], msgid=new_msgid()))
        assert refused.value.smtp_code == 553 and refused.value.smtp_error.startswith(b"5.7.1")
        smtp.rset()
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail(pec_mailbox.address, [COMUNE],
                          submission(other, [COMUNE], msgid=new_msgid()))
        assert refused.value.smtp_code == 550 and refused.value.smtp_error.startswith(b"5.7.1")
    assert [s.outcome for s in pec_provider.received] == ["refused"]
    assert pec_provider.receipts == []


def test_message_id_is_required_unless_switched_off(pec_provider, pec_mailbox):
    raw = submission(pec_mailbox.address, [COMUNE])
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(pec_provider, pec_mailbox, raw, [COMUNE])
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (550, b"5.6.0")
    pec_provider.require_message_id = False
    send(pec_provider, pec_mailbox, raw, [COMUNE])
    accepted = pec_provider.accepted[0]
    assert accepted.message_id is None
    assert pec_provider.wait_receipts(accepted.identificativo, 1)[0].tipo == "accettazione"


def test_recipient_refusals_are_per_recipient(pec_provider, pec_mailbox):
    pec_provider.refuse_rcpt("*@pec.fornitore.example.it", 550, "5.1.1 Utente sconosciuto")
    msgid = new_msgid()
    raw = submission(pec_mailbox.address, [COMUNE, CC_PEC], msgid=msgid)
    refused = send(pec_provider, pec_mailbox, raw, [COMUNE, CC_PEC])
    assert refused == {CC_PEC: (550, b"5.1.1 Utente sconosciuto")}
    assert pec_provider.received[0].rcpt_tos == (COMUNE,)
    receipts = pec_provider.wait_receipts(msgid, 2)
    pec_provider.drain()
    assert [(r.tipo, r.consegna) for r in pec_provider.wait_receipts(msgid)] == [
        ("accettazione", None), ("avvenuta-consegna", COMUNE)]
    assert daticert_of(parse(receipts[0].raw)).destinatari == ((COMUNE, "certificato"),)

    pec_provider.max_recipients = 1
    with pec_provider.client(pec_mailbox.address, pec_mailbox.password) as smtp:
        smtp.mail(pec_mailbox.address)
        assert smtp.rcpt(COMUNE)[0] == 250
        assert smtp.rcpt(LENTO) == (452, b"4.5.3 Too many recipients (at most 1)")


def test_size_times_recipients_limit(pec_provider, pec_mailbox):
    raw = submission(pec_mailbox.address, [COMUNE, LENTO], msgid=new_msgid())
    pec_provider.max_total_bytes = 2 * len(raw) - 1
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(pec_provider, pec_mailbox, raw, [COMUNE, LENTO])
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (552, b"5.3.4")


# -- failure modes --------------------------------------------------------------------------

def test_drop_after_data_sends_the_pec_but_never_answers(pec_provider, pec_mailbox, dovecot):
    pec_provider.drop_after_data = True
    msgid = new_msgid()
    raw = submission(pec_mailbox.address, [COMUNE], msgid=msgid)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        send(pec_provider, pec_mailbox, raw, [COMUNE])
    # What a retrying client must look for before sending again (PEC.md section 5).
    assert [m["X-Ricevuta"] for m in inbox_for(dovecot, pec_mailbox, msgid)][:1] == [
        "accettazione"]
    [sub] = pec_provider.received
    assert sub.dropped and sub.outcome == "accepted"
    assert len(pec_provider.wait_receipts(msgid, 2)) == 2


def test_tempfail_next_applies_once(pec_provider, pec_mailbox):
    pec_provider.tempfail_next(451, "4.3.0 Riprovare piu' tardi")
    raw = submission(pec_mailbox.address, [COMUNE], msgid=new_msgid())
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(pec_provider, pec_mailbox, raw, [COMUNE])
    assert refused.value.smtp_code == 451
    send(pec_provider, pec_mailbox, raw, [COMUNE])
    assert [s.outcome for s in pec_provider.received] == ["refused", "accepted"]


def test_stopped_provider_refuses_connections(pec_provider, pec_mailbox):
    pec_provider.stop()
    with pytest.raises(ConnectionRefusedError):
        pec_provider.client()
    pec_provider.start()
    with pec_provider.client(pec_mailbox.address, pec_mailbox.password) as smtp:
        assert smtp.noop()[0] == 250
