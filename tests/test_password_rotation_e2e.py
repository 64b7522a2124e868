"""Rotating a PEC mailbox's password while the gateway runs, end to end: real slapd, real Dovecot,
the PEC provider simulator, the real ``pecgw vault set`` command in its own process.

The password is changed at the provider first (Dovecot and the simulator), as IT would do it on
the provider's portal.  From then on the vaulted password is wrong: the first login that meets
the refusal marks the mailbox, and no further login reaches the provider — a provider locks a
mailbox out after a few wrong passwords — while clients are told ``NO [UNAVAILABLE]`` /
``454 4.7.0`` with a text that says to ask IT.  Sessions already open keep working.  Once the new
password is stored with ``pecgw vault set``, new sessions work without a restart.  Proof that
nothing reached the provider: Dovecot's log of password mismatches for the mailbox from the
gateway's address (closed by a wrong login of the test's own from another address, so no late
line is missed), the simulator's list of AUTHs, and ``pecgw_mailbox_logins_blocked_total``.
"""

from __future__ import annotations

import imaplib
import logging
import re
import secrets
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.mailbox_credentials import CLIENT_TEXT
from gateway.sends import watcher as watcher_module
from tests import test_sends_e2e
from tests.fixtures.pki import client_ssl_context
from tests.test_sends_e2e import send, settled, until, watching

ROOT = Path(__file__).resolve().parents[1]

gw = test_sends_e2e.gw  # the gateway with IMAP, SMTP and the receipt watcher in front of Dovecot + simulator


# -- helpers --------------------------------------------------------------------------------

def refused_gauge() -> float | None:
    return REGISTRY.get_sample_value("pecgw_mailbox_password_refused", {"mailbox": "protocollo"})


def blocked_total() -> float:
    return REGISTRY.get_sample_value("pecgw_mailbox_logins_blocked_total", {"mailbox": "protocollo"}) or 0.0


def mismatches(dovecot, address: str, source: str = "127.0.0.1") -> int:
    """Password mismatches Dovecot logged for ``address`` from ``source`` (``auth_verbose = yes``);
    the gateway connects from 127.0.0.1."""
    return len(re.findall(r"passwd-file\(" + re.escape(f"{address},{source},") + r"[^)]*\): Password mismatch",
                          dovecot.log))


def gateway_mismatches_settled(dovecot, address: str) -> int:
    """The gateway's wrong logins Dovecot saw for ``address``, all of them: a wrong login of the
    test's own (from 127.0.0.2, told apart in the log) goes last through the same auth process,
    so once its line is in the log every earlier attempt's line is too."""
    own = mismatches(dovecot, address, "127.0.0.2")
    plain = dovecot.connect_plain()  # from 127.0.0.2
    try:
        plain.starttls(client_ssl_context(dovecot.pki))
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            plain.login(address, "the-test's-own-wrong-password")
    finally:
        plain.shutdown()
    until("Dovecot logs the test's wrong login", lambda: mismatches(dovecot, address, "127.0.0.2") > own, timeout=10)
    return mismatches(dovecot, address)


def refused_imap_login(gw) -> str:
    """A new IMAP login that the gateway must refuse for the mailbox's password; its NO text."""
    c = gw.imap()
    try:
        with pytest.raises(imaplib.IMAP4.error) as exc:
            c.login("alice", gw.credential("alice", "alice-password"))
    finally:
        c.shutdown()
    return str(exc.value)


def smtp_client(gw) -> smtplib.SMTP_SSL:
    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    c = smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=20)
    c.login("alice", gw.credential("alice", "alice-password"))
    return c


def refused_mail_from(gw) -> tuple[int, str]:
    with smtp_client(gw) as c:
        code, text = c.mail(gw.mailbox.address)
    return code, text.decode()


def change_password_at_provider(gw, new: str) -> None:
    """What IT does on the provider's portal: the mailbox's IMAP and SMTP login change."""
    gw.dovecot.set_password(gw.mailbox.address, new)  # effective when it returns (Dovecot's 1 s mtime)
    gw.provider.add_mailbox(gw.mailbox.address, new)  # the simulator's AUTH, and its IMAP for receipts


def vault_set(gw, password: str) -> None:
    """``pecgw vault set protocollo`` as an operator runs it, while the gateway runs."""
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "vault", "set", "protocollo",
                           "--config", str(gw.config_path)], input=password + "\n", capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert password not in proc.stdout + proc.stderr


def refusal_rows(gw, since: int) -> list[dict]:
    return [r for r in gw.audit_events()[since:] if r["action"] == "upstream_unavailable"]


def new_password() -> str:
    return "Rotated-" + secrets.token_urlsafe(12)


# -- the tests ------------------------------------------------------------------------------

def test_imap_meets_the_refusal_first_and_new_sessions_work_after_vault_set(gw, caplog):
    caplog.set_level(logging.INFO, logger="pecgw")
    address, old, new = gw.mailbox.address, gw.mailbox.password, new_password()
    watching(gw)
    running = gw.imap()
    running.login("alice", gw.credential("alice", "alice-password"))
    typ, data = running.select("INBOX")
    assert typ == "OK"
    messages = int(data[0])
    start = len(gw.audit_events())
    assert mismatches(gw.dovecot, address) == 0 and refused_gauge() == 0

    change_password_at_provider(gw, new)

    # the first login after the change meets the provider's refusal; the person is told to ask IT
    text = refused_imap_login(gw)
    assert "[UNAVAILABLE]" in text and CLIENT_TEXT in text
    assert refused_gauge() == 1
    blocked = blocked_total()
    # the next ones are answered at once, without asking the provider (which would lock it out)
    for _ in range(3):
        text = refused_imap_login(gw)
        assert "[UNAVAILABLE]" in text and CLIENT_TEXT in text
    assert blocked_total() == blocked + 3
    # SMTP is the same mailbox and the same refused password: 454 at MAIL, the simulator never asked
    code, text = refused_mail_from(gw)
    assert code == 454 and text == f"4.7.0 {CLIENT_TEXT}"
    assert gw.provider.logins == []
    assert blocked_total() == blocked + 4
    assert gateway_mismatches_settled(gw.dovecot, address) == 1

    # the session opened before the change is untouched
    assert running.noop()[0] == "OK"
    typ, data = running.fetch(str(messages), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and data[0] is not None

    rows = refusal_rows(gw, start)
    assert [(r["protocol"], r["person"], r["mailbox"], r["reason"]) for r in rows] == \
        [("imap", "alice", "protocollo", "mailbox_password_refused")] * 4 + \
        [("smtp", "alice", "protocollo", "mailbox_password_refused")]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused the password in vault entry 'mailbox/protocollo'" in errors[0]

    vault_set(gw, new)  # no restart

    c = gw.imap()
    assert c.login("alice", gw.credential("alice", "alice-password"))[0] == "OK"
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    assert refused_gauge() == 0
    assert "accepted the password in vault entry 'mailbox/protocollo' again" in caplog.text
    sub = send(gw, "<rotation.1@studio.example.it>")  # and sending, with its receipts linked
    assert gw.provider.logins == [(address, True)]
    assert settled(gw, sub.message_id).identificativo == sub.identificativo
    assert running.noop()[0] == "OK"
    running.logout()
    assert gateway_mismatches_settled(gw.dovecot, address) == 1  # still only the first
    for secret in (old, new):
        assert secret not in caplog.text
        assert secret not in gw.audit_path.read_text()


def test_smtp_meets_the_refusal_first_and_imap_is_spared_too(gw, caplog):
    caplog.set_level(logging.INFO, logger="pecgw")
    address, new = gw.mailbox.address, new_password()
    watching(gw)
    start = len(gw.audit_events())
    change_password_at_provider(gw, new)

    code, text = refused_mail_from(gw)
    assert code == 454 and text == f"4.7.0 {CLIENT_TEXT}"
    assert gw.provider.logins == [(address, False)]  # one AUTH, one mechanism: one wrong try counted
    assert refused_gauge() == 1
    for _ in range(2):
        assert refused_mail_from(gw) == (454, f"4.7.0 {CLIENT_TEXT}")
    assert gw.provider.logins == [(address, False)]  # not asked again
    text = refused_imap_login(gw)  # the IMAP side of the same mailbox is spared the try
    assert "[UNAVAILABLE]" in text and CLIENT_TEXT in text
    assert gateway_mismatches_settled(gw.dovecot, address) == 0
    rows = refusal_rows(gw, start)
    assert [(r["protocol"], r["reason"]) for r in rows] == \
        [("smtp", "mailbox_password_refused")] * 3 + [("imap", "mailbox_password_refused")]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused the vaulted password" in errors[0]

    vault_set(gw, new)

    sub = send(gw, "<rotation.2@studio.example.it>")
    assert sub.user == address and gw.provider.logins[-1] == (address, True)
    assert refused_gauge() == 0
    c = gw.imap()
    assert c.login("alice", gw.credential("alice", "alice-password"))[0] == "OK"
    c.logout()


def test_the_receipt_watcher_pauses_on_a_refused_password_and_resumes_after_vault_set(gw, caplog, monkeypatch):
    """The gateway restarts after IT changed the password at the provider: the watcher's own
    login is the first to be refused.  It waits without another try; after ``pecgw vault set``
    it resumes by itself and links the receipts of a PEC sent afterwards."""
    monkeypatch.setattr(watcher_module, "PASSWORD_RECHECK_S", 0.2)
    caplog.set_level(logging.INFO, logger="pecgw")
    address, new = gw.mailbox.address, new_password()
    watching(gw)
    gw.stop()
    change_password_at_provider(gw, new)
    gw.start(gw.tables)

    until("the watcher's login is refused", lambda: refused_gauge() == 1, timeout=20)
    watcher = gw.gateway.watchers.watchers[0]
    text = refused_imap_login(gw)
    assert "[UNAVAILABLE]" in text and CLIENT_TEXT in text
    time.sleep(1.0)  # five looks at the vault: none of them asks the provider
    assert not watcher.idling.is_set()
    assert gateway_mismatches_settled(gw.dovecot, address) == 1  # the watcher's one try
    assert "receipt watcher of mailbox protocollo paused" in caplog.text

    vault_set(gw, new)

    until("the watcher logs in again and waits for news", watcher.idling.is_set, timeout=20)
    assert refused_gauge() == 0
    assert "the vault entry 'mailbox/protocollo' changed; resuming" in caplog.text
    sub = send(gw, "<rotation.3@studio.example.it>")
    assert sub.user == address
    assert settled(gw, sub.message_id).identificativo == sub.identificativo  # the resumed watcher linked them
    rows = until("the receipt rows", lambda: [r for r in gw.audit_events() if r["action"] == "receipt"
                                              and r["detail"]["identificativo"] == sub.identificativo] or None)
    assert {r["protocol"] for r in rows} == {"watcher"}
    assert "avvenuta-consegna" in {r["detail"]["tipo"] for r in rows}
