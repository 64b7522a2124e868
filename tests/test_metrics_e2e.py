"""The metrics a scripted session causes, scraped from a real gateway's /metrics with curl.

A real gateway (real slapd, real Dovecot, the PEC provider simulator) serves one office worker's
IMAP session (login, SELECT, FETCH, STORE, a CREATE the policy refuses, LOGOUT), a wrong password,
a login to a mailbox whose provider is down, a PEC sent over SMTP with one recipient the office
may not write to, and a revocation lifted again.  The counters each of them should move are read
before and after, and must have moved by exactly that much.  The example alert rules are checked
by ``promtool`` and may name only metrics the gateway serves.
"""

from __future__ import annotations

import imaplib
import re
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin.client import call
from gateway.config import load_config
from gateway.secret import Secret
from tests.fixtures.gateway import GatewayHarness, ldap_directory, upstream_table
from tests.fixtures.ports import free_port
from tests.fixtures.programs import program

ROOT = Path(__file__).resolve().parents[1]
TRIBUNALE = "cancelleria@pec.tribunale.example.it"
AVVERSARIO = "ufficio@avversario.example.it"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def gw(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider):
    """legale (alice) reads, writes and sends from 'protocollo'; acquisti (bruno) reads it and
    has 'archivio' too, whose provider does not answer (nothing listens on its port)."""
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(pec_mailbox.password))
    h.vault.set("mailbox/archivio", Secret("archivio-password"))
    for person in ("alice", "bruno", "carla"):
        h.enroll(person)
    policy = {
        "offices": {"legale": {"groups": ["legale"], "send_to_deny": ["*@avversario.example.it"]},
                    "acquisti": {"groups": ["acquisti"]}},
        "mailboxes": {"protocollo": {"send": ["legale"], "rules": [
            {"office": "legale", "folders": "*", "rights": "lrsw"},
            {"office": "acquisti", "folders": "*", "rights": "lr"}]},
            "archivio": {"rules": [{"office": "acquisti", "folders": "*", "rights": "lr"}]}},
    }
    offline = upstream_table(dovecot, pki, "archivio@pec.example.it")
    offline["port"] = free_port()
    tables = h.base_tables(
        directory=ldap_directory(slapd), policy=policy,
        mailboxes={
            "protocollo": {
                "address": pec_mailbox.address, "imap": upstream_table(dovecot, pki, pec_mailbox.address),
                "smtp": {"host": "127.0.0.1", "port": pec_provider.port, "tls": "implicit",
                         "ca_file": str(pki.ca_cert), "server_name": "localhost", "connect_timeout": 3}},
            "archivio": {"address": "archivio@pec.example.it", "imap": offline}})
    tables["smtp"] = {"listen_tls": ["127.0.0.1:0"], "timeout": 30}
    h.start(tables)
    h.mailbox, h.provider = pec_mailbox, pec_provider
    yield h
    h.stop()


# -- scraping -------------------------------------------------------------------------------------
def scrape_text(gw) -> str:
    proc = subprocess.run([program("curl"), "-sS", "--fail", "--max-time", "10",
                           f"http://127.0.0.1:{gw.http_port}/metrics"], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def scrape(gw) -> dict[tuple, float]:
    """Every sample, keyed by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(scrape_text(gw)) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """The sum over the series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items() if n == name and labels.items() <= dict(lab).items())


class Deltas:
    """What changed between two scrapes."""

    def __init__(self, before: dict, after: dict) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)

    def sum(self, name: str, **labels) -> float:
        return total(self.after, name, **labels) - total(self.before, name, **labels)


def imap(gw) -> imaplib.IMAP4_SSL:
    return gw.imap()


# -- the acceptance test ------------------------------------------------------------------------
def test_a_scripted_session_moves_the_counters_it_should(gw):
    before = scrape(gw)
    rows_before = len(gw.audit_events())

    # alice: a whole IMAP session, one command of it refused by the policy
    c = imap(gw)
    c.login("alice", gw.credential("alice", "alice-password"))
    assert c.select("INBOX")[0] == "OK"
    assert c.fetch("1", "(FLAGS)")[0] == "OK"
    assert c.store("1", "+FLAGS", "(\\Flagged)")[0] == "OK"
    assert c.create("Nuova")[0] == "NO"  # legale has no 'k': NOPERM
    during = scrape(gw)  # while she is connected
    assert value(during, "pecgw_live_sessions", protocol="imap", mailbox="protocollo") \
        - value(before, "pecgw_live_sessions", protocol="imap", mailbox="protocollo") == 1
    assert value(during, "pecgw_live_office_sessions", protocol="imap", mailbox="protocollo", office="legale") == 1
    assert value(during, "pecgw_live_sessions", protocol="imap", mailbox="archivio") == 0  # there, at 0
    c.logout()

    # bruno: a wrong password, then the mailbox whose provider is down
    c = imap(gw)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login("bruno", "wrong-password" + gw.code("bruno"))
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        c.login("bruno#archivio", gw.credential("bruno", "bruno-password"))
    c.shutdown()

    # alice sends a PEC over SMTP; one of its recipients is refused by her office's rule
    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    message = (f"From: Studio <{gw.mailbox.address}>\r\nTo: {TRIBUNALE}\r\nSubject: Deposito\r\n"
               "Message-ID: <metrics.1@studio.example.it>\r\n\r\nSi trasmette l'atto.\r\n").encode()
    with smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=20) as s:
        s.login("alice", gw.credential("alice", "alice-password"))
        refused = s.sendmail(gw.mailbox.address, [TRIBUNALE, AVVERSARIO], message)
    assert list(refused) == [AVVERSARIO]
    (sub,) = gw.provider.accepted
    gw.provider.wait_receipts(sub.message_id, count=1)

    # IT revokes carla and lifts it again
    config = load_config(gw.config_path)
    assert call(config, "revoke", person="carla", reason="test")["already_revoked"] is False
    assert call(config, "lift", person="carla")["was_revoked"] is True

    # the receipt watcher links the accettazione in its own time
    deadline = time.monotonic() + 30
    while True:
        after = scrape(gw)
        if value(after, "pecgw_receipts_total", mailbox="protocollo", tipo="accettazione") \
                > value(before, "pecgw_receipts_total", mailbox="protocollo", tipo="accettazione"):
            break
        assert time.monotonic() < deadline, "the accettazione was never counted"
        time.sleep(0.2)
    d = Deltas(before, after)

    # logins: by protocol and outcome, never by name
    assert d("pecgw_logins_total", protocol="imap", result="success", reason="ok") == 1
    assert d("pecgw_logins_total", protocol="imap", result="failure", reason="bad_password") == 1
    assert d("pecgw_logins_total", protocol="imap", result="failure", reason="upstream_unreachable") == 1
    assert d.sum("pecgw_logins_total", protocol="smtp", result="success") == 1  # ok, or trusted (same code)
    assert d.sum("pecgw_logins_total") == 4
    assert d("pecgw_login_failures_total", protocol="imap", reason="bad_password") == 1
    assert not any("alice" in str(labels) or "bruno" in str(labels) for _, labels in after)

    # IMAP commands after login, by name and result; the refusal by rule
    for command, result in (("SELECT", "OK"), ("FETCH", "OK"), ("STORE", "OK"), ("CREATE", "NO"),
                            ("LOGOUT", "OK")):
        assert d("pecgw_imap_commands_total", command=command, result=result) == 1, (command, result)
    assert d.sum("pecgw_imap_commands_total") == 5
    assert d("pecgw_denials_total", protocol="imap", command="CREATE", rule="noperm") == 1

    # SMTP: the commands, the refusal by rule, the send
    assert d("pecgw_smtp_commands_total", command="AUTH", result="2xx") == 1
    assert d("pecgw_smtp_commands_total", command="MAIL", result="2xx") == 1
    assert d("pecgw_smtp_commands_total", command="RCPT", result="2xx") == 1
    assert d("pecgw_smtp_commands_total", command="RCPT", result="5xx") == 1
    assert d("pecgw_smtp_commands_total", command="DATA", result="2xx") == 1
    assert d("pecgw_denials_total", protocol="smtp", command="RCPT", rule="recipient_deny") == 1
    assert d("pecgw_smtp_sends_total", mailbox="protocollo", result="relayed") == 1
    assert d.sum("pecgw_smtp_sends_total") == 1
    assert d("pecgw_relayed_bytes_total", protocol="smtp", direction="from_client") == len(sub.data)

    # bytes: at least what alice's logout row says (her last reply and the other connection add to it)
    logout = [r for r in gw.audit_events(wait_for=rows_before + 1)[rows_before:]
              if r["action"] == "logout" and r["protocol"] == "imap"]
    assert len(logout) == 1
    assert d("pecgw_relayed_bytes_total", protocol="imap", direction="from_client") >= logout[0]["detail"]["bytes_in"] > 0
    assert d("pecgw_relayed_bytes_total", protocol="imap", direction="to_client") > logout[0]["detail"]["bytes_out"] > 0

    # the provider: a login timed per protocol, the one that failed by kind
    assert d("pecgw_upstream_login_seconds_count", protocol="imap", mailbox="protocollo") == 1
    assert d("pecgw_upstream_login_seconds_count", protocol="smtp", mailbox="protocollo") == 1
    assert d("pecgw_upstream_login_errors_total", protocol="imap", mailbox="archivio", kind="unreachable") == 1
    assert d.sum("pecgw_upstream_login_errors_total", protocol="imap", mailbox="protocollo") == 0

    # revocations, receipts, the audit store
    assert d("pecgw_revocations_total", action="revoke") == 1
    assert d("pecgw_revocations_total", action="lift") == 1
    assert d("pecgw_receipts_total", mailbox="protocollo", tipo="accettazione") == 1
    assert d.sum("pecgw_audit_rows_written_total") >= 10
    assert value(after, "pecgw_audit_accepting") == 1
    assert ("pecgw_audit_queue_depth", ()) in after
    assert d.sum("pecgw_audit_write_seconds_count") >= 1

    # every live session is gone again (once its connection is closed)
    deadline = time.monotonic() + 10
    while total(scrape(gw), "pecgw_live_sessions") != total(before, "pecgw_live_sessions"):
        assert time.monotonic() < deadline, "live sessions still counted after their logout"
        time.sleep(0.1)


def test_the_endpoint_of_a_running_gateway(gw):
    """HEAD, an unknown path, another method: as a probe or a scanner would meet them."""
    base = f"http://127.0.0.1:{gw.http_port}"
    head = subprocess.run([program("curl"), "-sS", "-I", base + "/metrics"], capture_output=True, text=True)
    assert head.returncode == 0 and head.stdout.startswith("HTTP/1.1 200")
    assert "Content-Type: text/plain; version=" in head.stdout
    status = subprocess.run([program("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}", base + "/nope"],
                            capture_output=True, text=True)
    assert status.stdout == "404"
    status = subprocess.run([program("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                             base + "/metrics"], capture_output=True, text=True)
    assert status.stdout == "405"
    # the exposition is what Prometheus accepts
    lint = subprocess.run([program("promtool"), "check", "metrics"], input=scrape_text(gw), capture_output=True,
                          text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_example_alert_rules_are_valid_and_name_served_metrics(gw):
    path = ROOT / "config" / "alerts.example.yml"
    checked = subprocess.run([program("promtool"), "check", "rules", str(path)], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = [r for group in yaml.safe_load(path.read_text())["groups"] for r in group["rules"]]
    assert len(rules) >= 10
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]

    served: set[str] = set()  # every sample name the endpoint can serve, from its TYPE lines
    for line in scrape_text(gw).splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}.get(kind, ("",))
            served.update(name + s for s in suffixes)
    named = {m for r in rules for m in re.findall(r"\bpecgw_[a-z0-9_]+", r["expr"])}
    assert named, "the rules name no gateway metric"
    assert named <= served, f"not served by the gateway: {sorted(named - served)}"
    # the list: audit store, lockouts, refused mailbox password, upstream errors, quota
    for needed in ("pecgw_audit_store_up", "pecgw_audit_accepting", "pecgw_login_lockouts_total",
                   "pecgw_mailbox_password_refused", "pecgw_upstream_login_errors_total",
                   "pecgw_mailbox_quota_used_ratio"):
        assert needed in named, needed
