"""``pecgw demo`` as the README runs it: a real process, logged into with the printed recipe."""

from __future__ import annotations

import imaplib
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.ports import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
PECGW = [sys.executable, "-m", "gateway.cli"]


def test_demo_serves_both_people_and_audits(tmp_path):
    state = tmp_path / "state"
    imap_port, starttls_port, http_port = free_port(), free_port(), free_port()
    log = (tmp_path / "demo.log").open("w")
    proc = subprocess.Popen([*PECGW, "demo", "--state-dir", str(state), "--imap-port", str(imap_port),
                             "--starttls-port", str(starttls_port), "--http-port", str(http_port)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        assert wait_for_port(imap_port, timeout=30, alive=lambda: proc.poll() is None), \
            (tmp_path / "demo.log").read_text()
        banner = (tmp_path / "demo.log").read_text()
        assert f"localhost:{imap_port}" in banner and "bruno#acquisti" in banner
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"
        assert metrics_url in banner

        def code(user: str) -> str:
            out = subprocess.run([*PECGW, "otp", "code", "--config", str(state / "gateway.toml"), user],
                                 capture_output=True, text=True, cwd=ROOT, timeout=30)
            assert out.returncode == 0, out.stderr
            assert len(out.stdout.strip()) == 6
            return out.stdout.strip()

        ctx = ssl.create_default_context(cafile=str(state / "tls" / "ca.pem"))
        alice = imaplib.IMAP4_SSL("localhost", imap_port, ssl_context=ctx, timeout=10)
        alice.login("alice", "alice-demo" + code("alice"))
        typ, data = alice.select("INBOX")
        assert typ == "OK" and int(data[0]) == 7
        typ, data = alice.uid("FETCH", "1", "(BODY.PEEK[HEADER.FIELDS (X-TRASPORTO)])")
        assert b"posta-certificata" in data[0][1]
        alice.logout()

        bruno = imaplib.IMAP4_SSL("localhost", imap_port, ssl_context=ctx, timeout=10)
        bruno.login("bruno#acquisti", "bruno-demo" + code("bruno"))
        assert bruno.select("INBOX")[0] == "OK"
        bruno.logout()

        plain = imaplib.IMAP4("localhost", starttls_port, timeout=10)
        assert "LOGINDISABLED" in plain.capabilities
        plain.logout()

        # the URL the banner prints serves the metrics: both logins are counted
        scraped = subprocess.run(["curl", "-sS", "--max-time", "10", metrics_url], capture_output=True, text=True)
        assert scraped.returncode == 0, scraped.stderr
        logins = {tuple(sorted(sample.labels.items())): sample.value
                  for family in text_string_to_metric_families(scraped.stdout) if family.name == "pecgw_logins"
                  for sample in family.samples if sample.name == "pecgw_logins_total"}
        assert logins == {(("protocol", "imap"), ("reason", "ok"), ("result", "success")): 2.0}
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        log.close()
    deadline = time.monotonic() + 5
    audit = ""
    while time.monotonic() < deadline and audit.count('"action": "logout"') < 2:
        audit = (state / "audit.jsonl").read_text()
        time.sleep(0.05)
    assert '"person": "alice"' in audit and '"person": "bruno"' in audit and '"mailbox": "acquisti"' in audit
