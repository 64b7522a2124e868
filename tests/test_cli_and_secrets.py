"""The ``pecgw`` command as an operator runs it, and where secrets must never appear.

A real ``pecgw serve`` process is started from a config file; its argv, its log (at DEBUG), the
audit file and the vault file are grepped for every secret involved after successful and failing
sessions: the mailbox password, the LDAP service password, the person's password and full
credential, and the OTP secret.
"""

from __future__ import annotations

import imaplib
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.secret import Secret
from tests.fixtures.gateway import GatewayHarness, ldap_directory, office_policy, upstream_table, write_gateway_config
from tests.fixtures.ports import free_port, wait_for_port

PECGW = [sys.executable, "-m", "gateway.cli"]


def pecgw(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*PECGW, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[1])


def test_bad_config_exits_non_zero_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[imap]\nlisten_tls = ["127.0.0.1:993"]\nmax_line_length = "huge"\n')
    proc = pecgw("serve", "--config", str(bad))
    assert proc.returncode == 2
    assert f"{bad}: imap.max_line_length: must be an integer" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = pecgw("serve", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "missing.toml: file not found" in proc.stderr


def offline_config(tmp_path, pki) -> tuple[GatewayHarness, Path]:
    """A config on disk with an empty static directory and one mailbox nobody can reach."""
    h = GatewayHarness(tmp_path / "gw", pki)
    users = tmp_path / "users.toml"
    users.write_text("")
    tables = h.base_tables(directory={"backend": "static", "users_file": str(users)},
                           policy=office_policy({"o": {"members": ["alice"]}}, {"m": ["o"]}),
                           mailboxes={"m": {"address": "m@pec.example.it",
                                            "imap": {"host": "localhost", "username": "m"}}})
    return h, write_gateway_config(tmp_path / "gw.toml", tables)


def test_check_config_reports_missing_vault_entries(tmp_path, pki):
    h, cfg = offline_config(tmp_path, pki)
    proc = pecgw("check-config", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "warning: mailbox m: no password in the vault (pecgw vault set m)" in proc.stdout


@pytest.fixture
def served(tmp_path, pki, slapd, dovecot, pec_mailbox):
    """A real ``pecgw serve`` process, with the mailbox password set through ``pecgw vault set``."""
    h = GatewayHarness(tmp_path / "gw", pki)
    h.vault.set("ldap/bind", Secret(slapd.service_password))
    h.enroll("alice")
    port = free_port()
    tables = h.base_tables(
        directory=ldap_directory(slapd),
        policy=office_policy({"legale": {"groups": ["legale"]}}, {"protocollo": ["legale"]}),
        mailboxes={"protocollo": {"address": pec_mailbox.address,
                                  "imap": upstream_table(dovecot, pki, pec_mailbox.address)}},
        imap={"listen_tls": [f"127.0.0.1:{port}"], "listen_starttls": []},
    )
    config = write_gateway_config(tmp_path / "gateway.toml", tables)
    set_proc = pecgw("vault", "set", "protocollo", "--config", str(config), stdin=pec_mailbox.password + "\n")
    assert set_proc.returncode == 0, set_proc.stderr
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([*PECGW, "serve", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[1])
    h.ports = {"implicit": port}
    try:
        assert wait_for_port(port, timeout=15, alive=lambda: proc.poll() is None), (tmp_path / "serve.log").read_text()
        yield h, proc, tmp_path / "serve.log", config
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        log.close()


def test_serve_relays_and_no_secret_leaks(served, slapd, pec_mailbox):
    h, proc, log_path, config = served
    credential = h.credential("alice", "alice-password")

    c = h.imap()
    assert c.login("alice", credential)[0] == "OK"
    c.select("INBOX")
    assert c.uid("FETCH", "1", "(BODY.PEEK[])")[0] == "OK"
    c.logout()

    bad = h.imap()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        bad.login("alice", "alice-password000000")

    # the provider now refuses the vaulted password: the error path must not leak either
    wrong_mailbox_pw = "Wrong-Mailbox-Pw-7f3a9"
    assert pecgw("vault", "set", "protocollo", "--config", str(config), stdin=wrong_mailbox_pw + "\n").returncode == 0
    refused = h.imap()
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        refused.login("alice", credential)

    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    log = log_path.read_text()
    audit = h.audit_path.read_text()
    vault_file = h.vault_path.read_text()

    assert "IMAP listening on 127.0.0.1" in log
    assert "the PEC provider refused the password in vault entry 'mailbox/protocollo'" in log
    assert '"action": "login"' in audit and '"action": "login_failed"' in audit
    secrets = {"mailbox password": pec_mailbox.password, "wrong mailbox password": wrong_mailbox_pw,
               "LDAP service password": slapd.service_password, "person's password": "alice-password",
               "credential": credential, "OTP secret": h.otp_secrets["alice"]}
    for where, text in {"argv": cmdline, "log": log, "audit": audit, "vault file": vault_file}.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} found in {where}"


def test_otp_enroll_prints_qr_and_uri_and_writes_png(tmp_path, pki):
    h, cfg = offline_config(tmp_path, pki)
    png = tmp_path / "alice.png"
    proc = pecgw("otp", "enroll", "alice", "--config", str(cfg), "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    secret = h.vault.get("otp/alice")
    assert secret is not None
    assert f"otpauth://totp/PEC%20Gateway:alice?secret={secret.reveal()}" in proc.stdout
    assert "█" in proc.stdout  # the terminal QR code
    assert png.read_bytes().startswith(b"\x89PNG") and oct(png.stat().st_mode & 0o777) == "0o600"

    again = pecgw("otp", "enroll", "alice", "--config", str(cfg))
    assert again.returncode == 2 and "already has an OTP secret; use --force" in again.stderr
    assert h.vault.get("otp/alice") == secret
    code = pecgw("otp", "code", "alice", "--config", str(cfg))
    assert code.returncode == 2 and "only works on a demo configuration" in code.stderr


def test_check_config_reports_a_broken_users_file_in_one_line(tmp_path, pki):
    h, cfg = offline_config(tmp_path, pki)
    (tmp_path / "users.toml").write_text("[users.alice]\npassword = 42\n")
    proc = pecgw("check-config", "--config", str(cfg))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("pecgw: ") and "users.alice.password" in proc.stderr, proc.stderr
