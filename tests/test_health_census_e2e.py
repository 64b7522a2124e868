"""``/healthz``, ``/readyz`` and ``pecgw mailboxes``, end to end: a real gateway, real slapd, real
Dovecot (with quota), ``urllib`` as the HTTP client and the real ``pecgw`` command in its own
process.

* ``/readyz`` follows a provider outage: a Dovecot of the test's own is stopped (not the
  session's, which other tests share) and started again on the same port; the answer turns
  ``503`` naming the mailbox and why, then ``200`` again.  A directory that cannot be reached is
  not ready either.
* A mailbox whose vaulted password the provider refuses is not ready, and after the one login
  that met the refusal no other reaches the provider (Dovecot's own log says so), however many
  probe rounds pass; storing the right password makes it ready again.
* ``pecgw mailboxes`` with a running gateway and without one: offices, provider state, last
  login, quota used/limit, INBOX count and unhandled PEC (unseen incoming PEC older than
  ``unhandled_age``) for seeded messages; a mailbox over ``quota_warn`` sets the metric and logs
  one warning per crossing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.demo.pec_samples import ROME, Invio, busta_trasporto, sample_mailbox
from gateway.secret import Secret
from tests.fixtures.dovecot import DovecotServer
from tests.fixtures.gateway import GatewayHarness, ldap_directory, upstream_table
from tests.fixtures.pki import client_ssl_context
from tests.fixtures.ports import free_port
from tests.fixtures.waiting import until

ROOT = Path(__file__).resolve().parents[1]
POLICY = {
    "offices": {"legale": {"groups": ["legale"]}, "acquisti": {"groups": ["acquisti"]}},
    "mailboxes": {
        "protocollo": {"send": ["legale"], "rules": [{"office": "legale", "folders": "*", "rights": "lrsw"},
                                                     {"office": "acquisti", "folders": "INBOX", "rights": "lr"}]},
        "acquisti": {"rules": [{"office": "acquisti", "folders": "*", "rights": "lrsw"}]},
    },
}


# -- helpers --------------------------------------------------------------------------------

def get(h: GatewayHarness, path: str) -> tuple[int, dict]:
    """GET ``path`` on the gateway's HTTP endpoint: (status, JSON body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{h.http_port}{path}", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def readiness(h: GatewayHarness, status: int):
    """The /readyz body once it answers ``status``, else None."""
    code, body = get(h, "/readyz")
    return body if code == status else None


def metric(name: str, mailbox: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"mailbox": mailbox})


def gateway_with(tmp_path, pki, slapd, mailboxes: dict, *, census: dict, directory: dict | None = None,
                 prepare=None) -> GatewayHarness:
    """A gateway for ``mailboxes`` (name -> (dovecot, address, password in the vault))."""
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    tables = {}
    for name, (server, address, password) in mailboxes.items():
        h.vault.set(f"mailbox/{name}", Secret(password))
        tables[name] = {"address": address, "imap": upstream_table(server, pki, address)}
    policy = {**POLICY, "mailboxes": {n: r for n, r in POLICY["mailboxes"].items() if n in mailboxes}}
    base = h.base_tables(directory=directory or ldap_directory(slapd), policy=policy, mailboxes=tables)
    if prepare is not None:
        prepare(h)
    return h.start({**base, "census": census})


def pecgw(h: GatewayHarness, *args: str) -> subprocess.CompletedProcess:
    """The real ``pecgw`` in its own process (the vault key comes from the harness's environment)."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--config", str(h.config_path)],
                          capture_output=True, text=True, timeout=90, cwd=ROOT, env=dict(os.environ))


def mismatches(dovecot: DovecotServer, address: str, source: str = "127.0.0.1") -> int:
    return len(re.findall(r"passwd-file\(" + re.escape(f"{address},{source},") + r"[^)]*\): Password mismatch",
                          dovecot.log))


def provider_refusals_settled(dovecot: DovecotServer, address: str) -> int:
    """Every wrong login Dovecot saw for ``address`` from the gateway (127.0.0.1): a wrong login
    of the test's own from 127.0.0.2 goes last through the same auth process, so once its line
    is in the log the gateway's earlier ones are too."""
    own = mismatches(dovecot, address, "127.0.0.2")
    plain = dovecot.connect_plain()
    try:
        plain.starttls(client_ssl_context(dovecot.pki))
        with pytest.raises(Exception, match="AUTHENTICATIONFAILED"):
            plain.login(address, "the-test's-own-wrong-password")
    finally:
        plain.shutdown()
    until("Dovecot logs the test's wrong login", lambda: mismatches(dovecot, address, "127.0.0.2") > own)
    return mismatches(dovecot, address)


def fresh_address() -> str:
    return f"census-{secrets.token_hex(4)}@pec.example.it"


# -- /healthz and /readyz ---------------------------------------------------------------------

def test_readyz_turns_unready_while_the_provider_is_down_and_ready_when_it_returns(tmp_path, pki, slapd):
    own = DovecotServer(pki).start()  # stopped by this test: never the session's Dovecot
    try:
        address, password = fresh_address(), secrets.token_urlsafe(12)
        own.add_mailbox(address, password)
        h = gateway_with(tmp_path, pki, slapd, {"protocollo": (own, address, password)},
                         census={"probe_interval": 0.3})
        try:
            code, alive = get(h, "/healthz")
            assert code == 200 and alive["status"] == "alive" and alive["pid"] == os.getpid()
            body = until("ready", lambda: readiness(h, 200))
            assert body["status"] == "ready"
            assert body["checks"]["directory"] == {"ok": True, "reason": ""}
            assert body["checks"]["audit"] == {"ok": True, "reason": ""}
            assert body["checks"]["mailboxes"]["protocollo"] == {"ok": True, "reason": ""}
            until("the probe recorded", lambda: metric("pecgw_mailbox_up", "protocollo") == 1)

            own.stop(keep=True)  # the provider goes away
            body = until("not ready", lambda: readiness(h, 503))
            assert body["status"] == "not ready"
            mailbox = body["checks"]["mailboxes"]["protocollo"]
            assert mailbox["ok"] is False
            assert f"cannot connect to 127.0.0.1:{own.port}" in mailbox["reason"], mailbox
            assert body["checks"]["directory"]["ok"] and body["checks"]["audit"]["ok"]  # only the mailbox
            assert metric("pecgw_mailbox_up", "protocollo") == 0
            assert get(h, "/healthz")[0] == 200  # alive all along: only not ready

            own.start()  # back, same port, same users
            body = until("ready again", lambda: readiness(h, 200))
            assert body["checks"]["mailboxes"]["protocollo"]["ok"] is True
            until("the probe recorded", lambda: metric("pecgw_mailbox_up", "protocollo") == 1)
            assert password not in json.dumps(body)
        finally:
            h.stop()
    finally:
        own.stop()


def test_readyz_says_when_the_directory_cannot_be_reached(tmp_path, pki, slapd, dovecot):
    address, password = fresh_address(), secrets.token_urlsafe(12)
    dovecot.add_mailbox(address, password)
    nowhere = {"backend": "ldap", "ldap": {**ldap_directory(slapd)["ldap"], "url": f"ldap://127.0.0.1:{free_port()}",
                                           "timeout": 1}}
    h = gateway_with(tmp_path, pki, slapd, {"protocollo": (dovecot, address, password)},
                     census={"probe_interval": 30}, directory=nowhere)
    try:
        body = until("the mailbox probed", lambda: (b := readiness(h, 503)) and
                     b["checks"]["mailboxes"]["protocollo"]["ok"] and b)
        directory = body["checks"]["directory"]
        assert directory["ok"] is False
        assert "LDAP directory ldap://127.0.0.1:" in directory["reason"] and "connect failed" in directory["reason"]
        assert slapd.service_password not in json.dumps(body)
    finally:
        h.stop()


def test_a_refused_password_is_not_ready_and_never_tried_again(tmp_path, pki, slapd, dovecot):
    address, password = fresh_address(), secrets.token_urlsafe(12)
    dovecot.add_mailbox(address, password)
    before = mismatches(dovecot, address)
    h = gateway_with(tmp_path, pki, slapd, {"protocollo": (dovecot, address, "the-old-password")},
                     census={"probe_interval": 0.2})
    try:
        body = until("probed and not ready", lambda: (b := readiness(h, 503)) and
                     b["checks"]["mailboxes"]["protocollo"]["reason"] != "not probed yet" and b)
        reason = body["checks"]["mailboxes"]["protocollo"]["reason"]
        assert "the provider refused the password in vault entry 'mailbox/protocollo'" in reason
        assert "pecgw vault set protocollo" in reason and "the-old-password" not in json.dumps(body)
        assert provider_refusals_settled(dovecot, address) - before == 1  # the first probe's login
        time.sleep(2.0)  # ten probe rounds
        assert readiness(h, 503) is not None
        assert provider_refusals_settled(dovecot, address) - before == 1  # and nothing since
        assert metric("pecgw_mailbox_up", "protocollo") == 0
        assert metric("pecgw_mailbox_password_refused", "protocollo") == 1

        h.vault.set("mailbox/protocollo", Secret(password))  # IT stores the right one
        until("ready", lambda: readiness(h, 200))
        assert metric("pecgw_mailbox_password_refused", "protocollo") == 0
    finally:
        h.stop()


# -- pecgw mailboxes ---------------------------------------------------------------------------

def unseen_pec(address: str, gestore, *, days_ago: float, subject: str) -> bytes:
    when = dt.datetime.now(ROME).replace(microsecond=0) - dt.timedelta(days=days_ago)
    invio = Invio("mittente@pec.fornitore.example.it", (address,), subject, when, "Testo.\n", seed=subject)
    return busta_trasporto(invio, gestore)


def rows(result: subprocess.CompletedProcess) -> dict[str, dict]:
    return {r["mailbox"]: r for r in map(json.loads, result.stdout.splitlines())}


def test_pecgw_mailboxes_with_and_without_a_gateway(tmp_path, pki, slapd, dovecot, pec_gestore, caplog):
    # protocollo: the sample mailbox (two old unseen buste in INBOX) plus a fresh busta, which is
    # not unhandled yet; its quota is sized so the mailbox is ~95% full.  acquisti: nearly empty.
    full, full_password = fresh_address(), secrets.token_urlsafe(12)
    folders = sample_mailbox(full, gestore=pec_gestore)
    folders["INBOX"].append(unseen_pec(full, pec_gestore, days_ago=0.01, subject="Arrivata ora"))
    size = sum(len(m) for messages in folders.values() for m in messages)
    limit_k = math.ceil(size / 1024 / 0.95)
    dovecot.add_mailbox(full, full_password, folders, quota=f"{limit_k}k")
    light, light_password = fresh_address(), secrets.token_urlsafe(12)
    dovecot.add_mailbox(light, light_password, {"INBOX": [unseen_pec(light, pec_gestore, days_ago=10, subject="x")]})
    caplog.set_level(logging.INFO, logger="pecgw.census")
    h = gateway_with(tmp_path, pki, slapd, {"protocollo": (dovecot, full, full_password),
                                            "acquisti": (dovecot, light, light_password)},
                     census={"probe_interval": 3600, "quota_warn": 0.9, "unhandled_age": 3 * 86400})
    try:
        done = pecgw(h, "mailboxes", "--json")
        assert done.returncode == 1, done.stderr  # one mailbox is over census.quota_warn
        found = rows(done)
        p, a = found["protocollo"], found["acquisti"]
        assert p["source"] == "gateway" and p["address"] == full and p["provider"] == f"127.0.0.1:{dovecot.port}"
        assert p["offices"] == [{"office": "acquisti", "send": False}, {"office": "legale", "send": True}]
        assert a["offices"] == [{"office": "acquisti", "send": False}]
        assert p["upstream"] == "ok" and p["reason"] == "" and p["last_login"] > time.time() - 120
        assert p["messages"] == 8 and p["unhandled"] == 2  # the fresh busta is not unhandled yet
        assert p["quota_limit"] == limit_k * 1024 and abs(p["quota_used"] - size) <= 1024
        assert 0.9 < p["quota_ratio"] < 1 and p["quota_warn"] is True
        assert a["messages"] == 1 and a["unhandled"] == 1 and a["quota_warn"] is False
        assert a["quota_limit"] == 1024 ** 3

        assert metric("pecgw_mailbox_quota_used_ratio", "protocollo") == pytest.approx(p["quota_ratio"])
        assert metric("pecgw_mailbox_quota_over_threshold", "protocollo") == 1
        assert metric("pecgw_mailbox_quota_over_threshold", "acquisti") == 0
        assert metric("pecgw_mailbox_unhandled_pec", "protocollo") == 2
        assert metric("pecgw_mailbox_inbox_messages", "protocollo") == 8
        assert metric("pecgw_mailbox_quota_limit_bytes", "protocollo") == limit_k * 1024

        # one more old unseen PEC arrives; --refresh makes the gateway probe now
        imap = dovecot.connect(light, light_password)
        try:
            old = unseen_pec(light, pec_gestore, days_ago=5, subject="Diffida")
            when = imap_date(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=5))
            assert imap.append("INBOX", None, when, old)[0] == "OK"
        finally:
            imap.logout()
        table = pecgw(h, "mailboxes", "--refresh")
        assert table.returncode == 1
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["MAILBOX", "ADDRESS", "PROVIDER", "OFFICES", "UPSTREAM", "LAST", "LOGIN", "QUOTA",
                                    "INBOX", "UNHANDLED"]
        acquisti = next(line for line in lines if line.startswith("acquisti "))
        protocollo = next(line for line in lines if line.startswith("protocollo "))
        assert "acquisti" in acquisti and acquisti.rstrip().endswith("2") and "2 (2 unseen)" in acquisti
        assert "acquisti, legale (send)" in protocollo and f"({round(p['quota_ratio'] * 100)}%)" in protocollo
        assert f"warning: protocollo: {round(p['quota_ratio'] * 100)}% of the quota used" in table.stderr
        # the warning was logged once, at the first probe, not again at the refreshed one
        warnings = [r for r in caplog.records
                    if r.name == "pecgw.census" and r.levelno == logging.WARNING and "quota" in r.getMessage()]
        assert len(warnings) == 1 and "mailbox protocollo:" in warnings[0].getMessage()
    finally:
        h.stop()

    # no gateway: the command asks each provider itself
    done = pecgw(h, "mailboxes", "--json")
    assert "no running gateway" in done.stderr and done.returncode == 1
    found = rows(done)
    assert found["protocollo"]["source"] == "here" and found["protocollo"]["unhandled"] == 2
    assert found["acquisti"]["messages"] == 2 and found["acquisti"]["unhandled"] == 2
    assert found["protocollo"]["quota_warn"] is True and found["protocollo"]["last_login"] is not None
    assert found["protocollo"]["offices"][1] == {"office": "legale", "send": True}


def test_the_quota_warning_is_logged_once_per_crossing(tmp_path, pki, slapd, dovecot, pec_gestore, caplog):
    address, password = fresh_address(), secrets.token_urlsafe(12)
    messages = [unseen_pec(address, pec_gestore, days_ago=1, subject=f"PEC {i}") for i in range(4)]
    size = sum(map(len, messages))
    limit_k = math.ceil(size / 1024 / 0.95)  # 4 messages: ~95%; 3 of them: ~71%
    dovecot.add_mailbox(address, password, {"INBOX": messages}, quota=f"{limit_k}k")
    caplog.set_level(logging.INFO, logger="pecgw.census")
    h = gateway_with(tmp_path, pki, slapd, {"protocollo": (dovecot, address, password)},
                     census={"probe_interval": 0.2, "quota_warn": 0.9})

    def crossings(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "pecgw.census" and r.levelno == level and "quota" in r.getMessage()]

    try:
        until("over the threshold", lambda: metric("pecgw_mailbox_quota_over_threshold", "protocollo") == 1)
        time.sleep(1.0)  # five more probes, still over
        assert len(crossings(logging.WARNING)) == 1
        imap = dovecot.connect(address, password)
        try:  # someone archives one PEC: below the threshold
            imap.select("INBOX")
            imap.store("1", "+FLAGS", "\\Deleted")
            imap.expunge()
        finally:
            imap.logout()
        until("below the threshold", lambda: metric("pecgw_mailbox_quota_over_threshold", "protocollo") == 0)
        assert metric("pecgw_mailbox_quota_used_ratio", "protocollo") < 0.9
        assert len(crossings(logging.INFO)) == 1 and len(crossings(logging.WARNING)) == 1
    finally:
        h.stop()


def imap_date(when: dt.datetime) -> str:
    import imaplib

    return imaplib.Time2Internaldate(when)
