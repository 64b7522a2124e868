"""Two gateways behind a real HAProxy (TCP mode, PROXY protocol), sharing one PostgreSQL store.

The clients connect from 127.0.0.2, HAProxy reaches the gateways from 127.0.0.3 (the only
address the gateways trust for PROXY headers), so every address in the audit trail says which of
them the gateway believed.  One frontend per gateway listener: the test knows which instance
holds each session.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

from gateway.admin.client import call
from gateway.config import load_config
from tests.audit.conftest import Backend
from tests.fixtures.haproxy import HAProxy, Route
from tests.test_access_lifecycle_e2e import until_closed
from tests.test_proxy_protocol_e2e import ProxiedIMAP4, ProxiedIMAP4_SSL, ProxiedSMTP, ProxiedSMTP_SSL, proxied_tables
from tests.test_smtp_e2e import start_gateway

CLIENT = "127.0.0.2"  # the people's machines
HAPROXY_SOURCE = "127.0.0.3"  # HAProxy's side toward the gateways


def test_two_instances_behind_haproxy_audit_the_client_and_share_revocations(
        tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider):
    backend = Backend("postgres", tmp_path)
    listeners = proxied_tables(pki, [f"{HAPROXY_SOURCE}/32"], timeout=5)

    def audit(name: str) -> dict:  # the shared store, and each instance's own JSON-lines copy to read
        return {**backend.audit_table(), "jsonl_path": str(tmp_path / name / "gw" / "audit.jsonl")}

    a = start_gateway(tmp_path / "a", pki, slapd, dovecot, pec_mailbox, pec_provider, audit=audit("a"), **listeners)
    try:
        key = a.vault.get("audit/chain-key")  # one chain, so one key for both instances
        b = start_gateway(tmp_path / "b", pki, slapd, dovecot, pec_mailbox, pec_provider,
                          prepare=lambda h: h.vault.set("audit/chain-key", key), audit=audit("b"), **listeners)
        try:
            routes = {"imap_a": Route(a.ports["implicit"]), "imap_b": Route(b.ports["implicit"]),
                      "smtp_a": Route(a.smtp_ports["implicit"])}
            with HAProxy(routes, source=HAPROXY_SOURCE) as haproxy:
                check_two_instances(a, b, haproxy, backend)
        finally:
            b.stop()
    finally:
        a.stop()
        backend.cleanup()


def check_two_instances(a, b, haproxy: HAProxy, backend: Backend) -> None:
    ctx = a.client_context()

    # a login through HAProxy to B: audited, and listed, with the client's address
    alice = ProxiedIMAP4_SSL(haproxy.port("imap_b"), ctx, source=CLIENT)
    alice.login("alice", b.credential("alice", "alice-password"))
    (login,) = b.rows_of("login", protocol="imap", person="alice")
    assert login["client_ip"] == CLIENT
    (listed,) = call(load_config(b.config_path), "sessions")
    assert (listed["person"], listed["client_ip"]) == ("alice", CLIENT)

    # a revoke on A closes alice's session held on B within 2 s
    alice.select("INBOX", readonly=True)
    alice.send(b"i1 IDLE\r\n")
    assert alice.readline().startswith(b"+ ")
    with ThreadPoolExecutor(1) as pool:
        ending = pool.submit(until_closed, alice.sock, 3)
        started = time.monotonic()
        assert call(load_config(a.config_path), "revoke", person="alice")["sessions_ended"] == 0  # none on A
        bye, closed = ending.result()
    assert bye == b"* BYE Your access to this PEC mailbox has been revoked\r\n"
    assert closed - started < 2.0
    (ended,) = b.rows_of("session_ended", protocol="imap", person="alice")
    assert ended["client_ip"] == CLIENT

    # a failed login through HAProxy to A counts against the client's address, in the shared counters
    bruno = ProxiedIMAP4_SSL(haproxy.port("imap_a"), ctx, source=CLIENT)
    try:
        bruno.login("bruno", "not-his-password-000000")
        raise AssertionError("a wrong password was accepted")
    except bruno.error as exc:
        assert "AUTHENTICATIONFAILED" in str(exc)
    bruno.logout()
    (failed,) = a.rows_of("login_failed", protocol="imap", person="bruno")
    assert failed["client_ip"] == CLIENT
    with psycopg.connect(backend.conninfo) as db:
        counters = db.execute(f'SELECT scope, ip, failures FROM "{backend.schema}".pecgw_login_attempts '
                              "WHERE name IN ('bruno', '') ORDER BY scope").fetchall()
    assert counters == [("ip", CLIENT, 1), ("pair", CLIENT, 1), ("person", "", 1)]  # person: from anywhere

    # SMTP through HAProxy to A: the login is audited with the client's address
    with ProxiedSMTP_SSL(haproxy.port("smtp_a"), ctx, source=CLIENT) as smtp:
        smtp.login("carla", a.credential("carla", "carla-password"))
    (sent_login,) = a.rows_of("login", protocol="smtp", person="carla")
    assert sent_login["client_ip"] == CLIENT

    # the one audit trail both share: no row names HAProxy's or the gateway's own address
    with psycopg.connect(backend.conninfo) as db:
        addresses = {ip for (ip,) in db.execute(
            f'SELECT DISTINCT client_ip FROM "{backend.schema}".audit WHERE client_ip IS NOT NULL')}
    assert addresses == {CLIENT}


def test_haproxy_send_proxy_v1_and_health_checks_with_local(tmp_path, pki, slapd, dovecot, pec_mailbox,
                                                            pec_provider, caplog):
    """PROXY v1 in front of the STARTTLS listeners (header in clear, then STARTTLS); and HAProxy's
    health checks with a v2 LOCAL header, which the gateway accepts and greets (the checks expect
    the greeting), keeping HAProxy's own address for those connections."""
    caplog.set_level(logging.DEBUG, logger="pecgw.proxy")
    gw = start_gateway(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider,
                       **proxied_tables(pki, [f"{HAPROXY_SOURCE}/32"], timeout=5))
    try:
        routes = {"imap": Route(gw.ports["starttls"], "v1"), "smtp": Route(gw.smtp_ports["starttls"], "v1"),
                  "imap_checked": Route(gw.ports["starttls"], "v2", expect="* OK"),
                  "smtp_checked": Route(gw.smtp_ports["starttls"], "v2", expect="220 ")}
        with HAProxy(routes, source=HAPROXY_SOURCE) as haproxy:
            ctx = gw.client_context()
            imap = ProxiedIMAP4(haproxy.port("imap"), source=CLIENT)
            imap.starttls(ssl_context=ctx)
            imap.login("alice", gw.credential("alice", "alice-password"))
            imap.logout()
            with ProxiedSMTP(haproxy.port("smtp"), source=CLIENT) as smtp:
                smtp.starttls(context=ctx)
                smtp.login("bruno", gw.credential("bruno", "bruno-password"))
            assert [r["client_ip"] for r in gw.rows_of("login", protocol="imap", person="alice")] == [CLIENT]
            assert [r["client_ip"] for r in gw.rows_of("login", protocol="smtp", person="bruno")] == [CLIENT]

            for name in ("imap_checked", "smtp_checked"):
                assert haproxy.wait_check(name, "L7OK") == "L7OK", haproxy.log
        local = [r.getMessage() for r in caplog.records if "(PROXY v2, LOCAL)" in r.getMessage()]
        assert any(m.startswith(f"IMAP: connection from {HAPROXY_SOURCE}:") for m in local)
        assert any(m.startswith(f"SMTP: connection from {HAPROXY_SOURCE}:") for m in local)
        v1 = [r.getMessage() for r in caplog.records if "(PROXY v1)" in r.getMessage()]
        assert all(f"through proxy {HAPROXY_SOURCE}" in m for m in v1)
        # the clients' (the fixture's port probes come from 127.0.0.1)
        assert sorted(m[:4] for m in v1 if f" from {CLIENT}:" in m) == ["IMAP", "SMTP"]
    finally:
        gw.stop()
