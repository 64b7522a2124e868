"""Brute-force protection end to end: real slapd, real Dovecot, the real gateway, imaplib and smtplib.

Fifty wrong logins from 127.0.0.1, alternating between people who exist in the directory and
names that do not: every answer waits longer than the one before (up to the maximum), the pairs
and then the address are locked out (after which even the right password and code are refused),
while the same person and another one log in from 127.0.0.2 as if nothing happened.  The reply
to an existing and to a non-existing name is the same, byte for byte; the audit trail and
``pecgw_login_lockouts_total`` record each lockout once.
"""

from __future__ import annotations

import base64
import imaplib
import smtplib
import socket
import ssl
import time

import pytest
from prometheus_client import REGISTRY

from gateway.secret import Secret
from tests.fixtures.gateway import GatewayHarness, ldap_directory, office_policy, upstream_table

ATTACKER, ELSEWHERE = "127.0.0.1", "127.0.0.2"
BASE, MAX = 0.02, 0.3  # [auth] failure_delay and [auth.brute_force] max_delay: a fast test
FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
EXISTING, UNKNOWN = ("alice", "carla"), ("zeno", "nemo")


@pytest.fixture
def gw(tmp_path, pki, slapd, dovecot, pec_mailbox):
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.vault.set("mailbox/protocollo", Secret(pec_mailbox.password))
    for person in ("alice", "bruno", "carla"):
        h.enroll(person)
    tables = h.base_tables(
        directory=ldap_directory(slapd),
        policy=office_policy({"legale": {"groups": ["legale"]}, "acquisti": {"groups": ["acquisti"]}},
                             {"protocollo": ["legale", "acquisti"]}),
        mailboxes={"protocollo": {"address": pec_mailbox.address,
                                  "imap": upstream_table(dovecot, pki, pec_mailbox.address)}})
    tables["auth"].update(failure_delay=BASE, brute_force={
        "max_delay": MAX, "lockout_after": 10, "ip_lockout_after": 25, "person_lockout_after": 100,
        "window": 900, "lockout_duration": 900})
    tables["smtp"] = {"listen_tls": ["127.0.0.1:0"], "timeout": 30}
    h.start(tables)
    yield h
    h.stop()


class Client(imaplib.IMAP4_SSL):
    """imaplib over implicit TLS from a chosen source address, keeping every line it read."""

    def __init__(self, gw: GatewayHarness, source: str) -> None:
        self.source, self.lines = source, []
        super().__init__("127.0.0.1", gw.ports["implicit"], ssl_context=gw.client_context(), timeout=10)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname="localhost")

    def readline(self):
        line = super().readline()
        self.lines.append(line)
        return line


def imap_login(gw, name: str, credential: str, source: str = ATTACKER) -> tuple[bool, bytes, float]:
    """One login on a new connection: whether it worked, the tagged reply without its tag, and
    how long the reply took."""
    c = Client(gw, source)
    start = time.perf_counter()
    try:
        c.login(name, credential)
        ok = True
    except imaplib.IMAP4.error:
        ok = False
    elapsed = time.perf_counter() - start
    reply = c.lines[-1].split(b" ", 1)[1]
    c.logout()
    return ok, reply, elapsed


def smtp_auth(gw, name: str, credential: str, source: str) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    c = smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=20,
                         source_address=(source, 0))
    c.ehlo()
    token = base64.b64encode(f"\0{name}\0{credential}".encode()).decode()
    reply = c.docmd("AUTH", f"PLAIN {token}")
    c.close()
    return reply


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_fifty_wrong_logins(gw):
    lockouts_before = {s: metric("pecgw_login_lockouts_total", scope=s) for s in ("pair", "ip", "person")}
    locked_before = {p: metric("pecgw_login_failures_total", protocol=p, reason="locked") for p in ("imap", "smtp")}

    # 1-20: a known and an unknown name in turn, until both pairs are locked (10 failures each);
    # 21-50: two more names join, whose failures lock the address at its 25th.
    names = [("alice", "zeno")[i % 2] for i in range(20)] + [("alice", "zeno", "carla", "nemo")[i % 4]
                                                               for i in range(30)]
    attempts = [imap_login(gw, name, f"guess{i:02d}-123456") for i, name in enumerate(names)]
    assert not any(ok for ok, _, _ in attempts)

    # identical replies for people who exist and names that do not, locked or not
    replies = {name: {reply for (_, reply, _), n in zip(attempts, names) if n == name} for name in set(names)}
    assert all(replies[name] == {FAILED} for name in EXISTING + UNKNOWN), replies

    # the delays grow: attempt k waits BASE * 2**(k-1) (k counting the address's failures), up to MAX
    elapsed = [t for _, _, t in attempts]
    for k, t in enumerate(elapsed, 1):
        assert t >= min(BASE * 2 ** (k - 1), MAX), (k, elapsed)
    assert elapsed[0] < MAX - 0.1, elapsed  # the first waited the base delay, not the maximum

    # locked out: the right password and code from 127.0.0.1 are refused, with the same reply,
    # for the person whose pair is locked and for one whom only the address lockout covers
    alice, bruno = gw.credential("alice", "alice-password"), gw.credential("bruno", "bruno-password")
    ok, reply, t = imap_login(gw, "alice", alice)
    assert (ok, reply) == (False, FAILED) and t >= MAX
    assert imap_login(gw, "Bruno", bruno)[:2] == (False, FAILED)
    assert smtp_auth(gw, "alice", alice, ATTACKER) == (535, b"5.7.8 Authentication credentials invalid")

    # from another address the same people log in at once (the refusals did not spend the codes)
    ok, reply, _ = imap_login(gw, "alice", alice, source=ELSEWHERE)
    assert ok and reply.startswith(b"OK [CAPABILITY ")
    assert imap_login(gw, "bruno", bruno, source=ELSEWHERE)[0]
    assert smtp_auth(gw, "bruno", bruno, ELSEWHERE)[0] == 235

    # the audit trail: one row per lockout, with the name typed, the address and the count
    deadline = time.monotonic() + 10  # every row in, down to the last (bruno's SMTP login)
    rows = gw.audit_events(wait_for=len(names) + 8)
    while not any(r["action"] == "login" and r["protocol"] == "smtp" for r in rows) and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = gw.audit_events(wait_for=len(names) + 8)
    lockouts = [(r["reason"], r["person"], r["client_ip"], r["protocol"], r["detail"]["scope"],
                 r["detail"]["failures"]) for r in rows if r["action"] == "lockout"]
    assert lockouts == [("pair", "alice", ATTACKER, "imap", "pair", 10), ("pair", "zeno", ATTACKER, "imap", "pair", 10),
                        ("ip", "carla", ATTACKER, "imap", "ip", 25)]
    assert all(r["detail"]["until"] > r["when"][:19] for r in rows if r["action"] == "lockout")
    failed = [(r["person"], r["reason"]) for r in rows if r["action"] == "login_failed" and r["protocol"] == "imap"]
    assert failed[:20] == [(name, "bad_password") for name in names[:20]]  # unknown or wrong: one reason
    assert failed[20:22] == [("alice", "locked"), ("zeno", "locked")]
    # the client saw none of this: the reasons are only in the trail
    assert {reason for _, reason in failed} == {"bad_password", "locked"}
    logins = [(r["person"], r["client_ip"], r["protocol"]) for r in rows if r["action"] == "login"]
    assert logins == [("alice", ELSEWHERE, "imap"), ("bruno", ELSEWHERE, "imap"), ("bruno", ELSEWHERE, "smtp")]

    # and the metrics counted them
    assert {s: metric("pecgw_login_lockouts_total", scope=s) - lockouts_before[s]
            for s in lockouts_before} == {"pair": 2, "ip": 1, "person": 0}
    locked_in_fifty = sum(1 for _, reason in failed[:50] if reason == "locked")
    assert locked_in_fifty == 25  # 30 after the pairs locked, less carla's and nemo's 5 counted ones
    assert {p: metric("pecgw_login_failures_total", protocol=p, reason="locked") - locked_before[p]
            for p in locked_before} == {"imap": locked_in_fifty + 2, "smtp": 1}
