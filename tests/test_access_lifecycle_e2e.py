"""IT's side, end to end: revoke a leaver, kick a session, the directory re-validation, the admin
channel's CLI — real slapd, real Dovecot, the PEC provider simulator, imaplib and smtplib.
"""

from __future__ import annotations

import json
import os
import pwd
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.admin.client import call
from gateway.config import load_config
from tests import test_smtp_e2e
from tests.audit.conftest import Backend
from tests.test_smtp_e2e import start_gateway

ROOT = Path(__file__).resolve().parent.parent
gw = test_smtp_e2e.gw  # legale (alice, carla) reads and sends, acquisti (bruno, carla) reads


def pecgw(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SUDO_USER": "it-mario"}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          input=stdin, cwd=ROOT, env=env, timeout=60)


class Idler:
    """A person's IMAP session sitting in IDLE on INBOX, read with a raw socket."""

    def __init__(self, gw, person: str, password: str | None = None, *, credential: str | None = None) -> None:
        self.imap = gw.imap()
        self.imap.login(person, credential or gw.credential(person, password or f"{person}-password"))
        self.imap.select("INBOX", readonly=True)
        self.imap.send(b"i1 IDLE\r\n")
        assert self.imap.readline().startswith(b"+ ")

    def ended(self, timeout: float) -> tuple[bytes, float]:
        return until_closed(self.imap.sock, timeout)

    def still_open(self) -> bool:
        self.imap.send(b"DONE\r\n")
        reply = self.imap.readline()
        self.imap.send(b"n1 NOOP\r\n")
        while not reply.startswith(b"n1 "):
            reply = self.imap.readline()
        return reply.startswith(b"n1 OK")


def smtp_session(gw, person: str = "alice") -> smtplib.SMTP_SSL:
    return test_smtp_e2e.client(gw, person)


def until_closed(sock: ssl.SSLSocket, timeout: float) -> tuple[bytes, float]:
    """Everything the gateway sends until it closes the connection, and when it closed (a
    timeout raises: the connection was not closed)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ssl.SSLError:
        pass
    return data, time.monotonic()


def test_revoke_ends_idle_and_smtp_sessions_within_a_second_and_refuses_the_saved_credential(gw):
    alice_saved = gw.credential("alice", "alice-password")
    alice = Idler(gw, "alice")
    alice_smtp = smtp_session(gw, "alice")
    bruno = Idler(gw, "bruno")
    listed = call(load_config(gw.config_path), "sessions")
    assert sorted((s["person"], s["protocol"]) for s in listed) == [("alice", "imap"), ("alice", "smtp"),
                                                                   ("bruno", "imap")]

    # both connections are read while the revocation runs: each reader notes when its connection closed
    with ThreadPoolExecutor(2) as pool:
        imap_end = pool.submit(alice.ended, 3)
        smtp_end = pool.submit(until_closed, alice_smtp.sock, 3)
        started = time.monotonic()
        result = call(load_config(gw.config_path), "revoke", person="alice", reason="left the company")
        (bye, imap_closed), (smtp_bye, smtp_closed) = imap_end.result(), smtp_end.result()
    assert imap_closed - started < 1.0, f"IMAP session closed after {imap_closed - started:.2f} s"
    assert smtp_closed - started < 1.0, f"SMTP session closed after {smtp_closed - started:.2f} s"
    assert result == {"person": "alice", "already_revoked": False, "sessions_ended": 2, "stored": True,
                      "known_to_directory": True}
    assert bye == b"* BYE Your access to this PEC mailbox has been revoked\r\n"
    assert smtp_bye == b"421 4.7.0 Your access to this PEC mailbox has been revoked\r\n"

    # the saved credential (inside its trust window a moment ago) no longer works, on either side
    again = gw.imap()
    with pytest.raises(again.error, match=r"\[AUTHENTICATIONFAILED\] Authentication failed"):
        again.login("alice", alice_saved)
    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    with smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=10) as c:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("alice", alice_saved)

    # bruno is untouched
    assert bruno.still_open()
    left = call(load_config(gw.config_path), "sessions")
    assert [s["person"] for s in left] == ["bruno"], left

    # the trail says who revoked whom, and which sessions ended why
    (revoked,) = gw.rows_of("revoked")
    assert revoked["person"] == "alice" and revoked["protocol"] == "admin"
    assert revoked["detail"]["by"].split()[0] == pwd.getpwuid(os.getuid()).pw_name  # from the kernel
    assert revoked["detail"]["sessions_ended"] == 2 and revoked["reason"] == "left the company"
    ended = gw.rows_of("session_ended", at_least=2)
    assert sorted((r["protocol"], r["person"], r["reason"]) for r in ended) == [
        ("imap", "alice", "revoked"), ("smtp", "alice", "revoked")]
    logouts = [r for r in gw.rows_of("logout") if r["person"] == "alice"]
    assert [r["reason"] for r in logouts] == ["revoked"]
    refused = [r for r in gw.rows_of("login_failed", at_least=2) if r["person"] == "alice"]
    assert [r["reason"] for r in refused] == ["revoked", "revoked"]


def test_revoke_from_the_cli_is_audited_with_the_operator_and_lifted(gw):
    alice = Idler(gw, "alice")
    done = pecgw("revoke", "alice", "--reason", "stolen laptop", "--config", str(gw.config_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("revoked alice: 1 live sessions ended; new logins are refused until "
                           "'pecgw revoke --lift alice'\n")
    assert alice.ended(timeout=1)[0].startswith(b"* BYE ")
    listed = pecgw("revoke", "--list", "--config", str(gw.config_path))
    assert listed.stdout.splitlines()[1].split()[0] == "alice" and "stolen laptop" in listed.stdout
    (row,) = gw.rows_of("revoked")
    assert row["detail"]["by"].endswith("(as it-mario)")  # the kernel's user, and who sudo says ran it

    lifted = pecgw("revoke", "--lift", "ALICE", "--config", str(gw.config_path))  # the directory's spelling wins
    assert lifted.returncode == 0 and lifted.stdout.startswith("lifted the revocation of alice")
    ghost = pecgw("revoke", "alice.rossi", "--config", str(gw.config_path))  # a misspelt name is said to be one
    assert ghost.returncode == 0 and "the directory does not know 'alice.rossi'" in ghost.stderr
    assert gw.rows_of("revocation_lifted")[0]["person"] == "alice"
    # the old credential's trust window went with the revocation, and its code is spent: the next
    # time step's code (accepted one step early) is the fresh one
    back = gw.imap()
    back.login("alice", "alice-password" + gw.code("alice", at=time.time() + 30))
    back.logout()


def test_revocation_made_while_stopped_survives_into_the_next_start(tmp_path, pki, slapd, dovecot, pec_mailbox,
                                                                    pec_provider):
    h = start_gateway(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider)
    h.stop()
    try:
        offline = pecgw("revoke", "carla", "--config", str(h.config_path))
        assert offline.returncode == 0, offline.stderr
        assert offline.stdout.startswith("no running gateway (no admin socket at ")
        assert "revoked carla: refused at every login from the gateway's next start" in offline.stdout
        h.start(h.tables)
        client = h.imap()
        with pytest.raises(client.error, match="AUTHENTICATIONFAILED"):
            client.login("carla", h.credential("carla", "carla-password"))
        # written straight into the audit store (the JSON-lines copy is the running gateway's)
        query = pecgw("audit", "query", "--action", "revoked", "--format", "jsonl", "--config", str(h.config_path))
        (revoked,) = [json.loads(line) for line in query.stdout.splitlines()]
        assert revoked["person"] == "carla" and revoked["detail"]["gateway_running"] is False
        assert revoked["detail"]["by"].endswith("(as it-mario)")
        lifted = pecgw("revoke", "--lift", "carla", "--config", str(h.config_path))
        assert lifted.stdout.startswith("lifted the revocation of carla"), lifted.stderr
    finally:
        h.stop()


def test_kick_ends_one_session_and_the_person_may_come_back(gw):
    first, second = Idler(gw, "carla"), Idler(gw, "carla")
    listed = pecgw("sessions", "--json", "--config", str(gw.config_path))
    assert listed.returncode == 0, listed.stderr
    sessions = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {s["person"] for s in sessions} == {"carla"} and {s["folder"] for s in sessions} == {"INBOX"}
    table = pecgw("sessions", "--config", str(gw.config_path)).stdout.splitlines()
    assert table[0].split() == ["SESSION", "PROTO", "PERSON", "MAILBOX", "FOLDER", "FROM", "CLIENT", "SINCE"]
    target = sessions[0]["session"]
    kicked = pecgw("kick", target, "--config", str(gw.config_path))
    assert kicked.returncode == 0 and kicked.stdout == f"ended session {target} of carla\n"
    # which of the two was kicked: the one whose session id went away
    remaining = [s["session"] for s in call(load_config(gw.config_path), "sessions")]
    assert remaining == [s["session"] for s in sessions[1:]]
    missing = pecgw("kick", "nosuchsession", "--config", str(gw.config_path))
    assert missing.returncode == 2 and "no live session nosuchsession" in missing.stderr
    ended = gw.rows_of("session_ended")
    assert ended[0]["reason"] == "kicked" and ended[0]["session_id"] == target
    again = gw.imap()
    again.login("carla", gw.credential("carla", "carla-password"))  # not revoked: the saved credential works
    again.logout()
    for idler in (first, second):
        idler.imap.sock.close()


@pytest.fixture
def revalidating(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider):
    """The gateway re-validating live sessions every second, with two people of its own in slapd."""
    slapd.add_person("elena", "elena-password", "Elena Gialli", groups=["legale"])
    slapd.add_person("fabio", "fabio-password", "Fabio Blu", groups=["acquisti"])
    slapd.add_person("gino", "gino-password", "Gino Rosa", groups=["legale", "acquisti"])
    h = start_gateway(tmp_path, pki, slapd, dovecot, pec_mailbox, pec_provider, admin={"revalidate_interval": 1})
    for person in ("elena", "fabio", "gino"):
        h.enroll(person)
    try:
        yield h, slapd
    finally:
        h.stop()
        for person in ("elena", "fabio", "gino"):
            slapd.delete_person(person)


def test_directory_disable_and_group_removal_close_live_sessions(revalidating):
    gw, slapd = revalidating
    elena, fabio, gino, bruno = (Idler(gw, p) for p in ("elena", "fabio", "gino", "bruno"))
    gino_smtp = smtp_session(gw, "gino")  # gino sends for legale: that right goes with the office
    slapd.disable("elena")
    slapd.remove_from_group("fabio", "acquisti")
    slapd.remove_from_group("gino", "legale")  # still in acquisti: keeps the mailbox, read-only
    started = time.monotonic()
    elena_bye, elena_at = elena.ended(timeout=4)
    fabio_bye, fabio_at = fabio.ended(timeout=4)
    gino_bye, gino_at = gino.ended(timeout=4)
    assert elena_bye == b"* BYE Your access to this PEC mailbox has been revoked\r\n"
    assert fabio_bye == b"* BYE Your access to this PEC mailbox was withdrawn\r\n"
    assert gino_bye == b"* BYE Your offices have changed; please log in again\r\n"
    assert until_closed(gino_smtp.sock, 4)[0] == b"421 4.7.0 Your offices have changed; please log in again\r\n"
    assert max(elena_at, fabio_at, gino_at) - started < 2.5  # one interval (1 s) plus the directory's answers
    assert bruno.still_open()
    time.sleep(1.5)  # another re-validation: the sessions being closed are not ended (nor audited) twice
    ended = sorted((r["person"], r["protocol"], r["reason"], r["detail"]["by"]) for r in gw.rows_of("session_ended"))
    assert ended == [("elena", "imap", "directory_disabled", "directory"),
                     ("fabio", "imap", "access_withdrawn", "directory"),
                     ("gino", "imap", "access_changed", "directory"), ("gino", "smtp", "access_changed", "directory")]
    again = gw.imap()  # gino back with what acquisti gives: reading, not sending
    again.login("gino", "gino-password" + gw.code("gino", at=time.time() + 30))
    with pytest.raises(smtplib.SMTPSenderRefused):
        with smtp_session(gw, "gino") as c:
            c.sendmail(gw.mailbox.address, ["x@pec.example.it"], b"Subject: x\r\n\r\nx\r\n")
    again.logout()
    # and at login: a disabled person is refused like any wrong password
    client = gw.imap()
    with pytest.raises(client.error, match=r"\[AUTHENTICATIONFAILED\]"):
        client.login("elena", gw.credential("elena", "elena-password"))


def test_admin_socket_is_private_and_refuses_garbage(gw):
    mode = os.stat(gw.admin_socket).st_mode & 0o777
    assert mode == 0o600
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(gw.admin_socket))
        s.sendall(b"not json\n" + b"[" * 5000 + b"]" * 5000 + b"\n{\"verb\": \"nosuch\"}\n{\"verb\": \"ping\"}\n")
        s.settimeout(5)
        data = b""
        while data.count(b"\n") < 4:
            data += s.recv(4096)
    bad, nested, unknown, ping = (json.loads(line) for line in data.splitlines())
    assert bad["ok"] is False and bad["error"].startswith("not a JSON line")
    assert nested["ok"] is False and "recursion" in nested["error"]
    assert unknown == {"ok": False, "error": "unknown verb 'nosuch' (known: census, kick, lift, otp-changed, ping, "
                                             "reload, revocations, revoke, sessions)"}
    assert ping["ok"] is True and ping["result"]["pid"] == os.getpid()


def test_a_client_name_cannot_drive_the_terminal_of_pecgw_sessions(gw):
    ctx = ssl.create_default_context(cafile=str(gw.pki.ca_cert))
    name = "x\x1b[2K\x1b[1A"  # would erase the row above it and the one before
    with smtplib.SMTP_SSL("localhost", gw.smtp_ports["implicit"], context=ctx, timeout=20,
                          local_hostname=name) as c:
        c.login("alice", gw.credential("alice", "alice-password"))
        table = pecgw("sessions", "--config", str(gw.config_path))
        lines = pecgw("sessions", "--json", "--config", str(gw.config_path))
    assert table.returncode == 0 and lines.returncode == 0, table.stderr + lines.stderr
    for out in (table.stdout, lines.stdout):
        assert "\x1b" not in out
    (row,) = [r for r in table.stdout.splitlines() if " smtp " in r]
    assert row.split()[6] == "x?[2K?[1A"
    assert [json.loads(line)["client"] for line in lines.stdout.splitlines()] == [name]


def test_otp_reset_on_a_running_gateway_ends_the_saved_credential(gw):
    saved = gw.credential("carla", "carla-password")
    first = gw.imap()
    first.login("carla", saved)  # opens the trust window of this saved credential
    first.logout()
    reset = pecgw("otp", "reset", "carla", "--config", str(gw.config_path))
    assert reset.returncode == 0, reset.stderr
    again = gw.imap()
    with pytest.raises(again.error, match="AUTHENTICATIONFAILED"):
        again.login("carla", saved)
    enrolled = pecgw("otp", "enroll", "carla", "--config", str(gw.config_path))
    assert enrolled.returncode == 0, enrolled.stderr
    (reset_row,) = gw.rows_of("otp_reset")
    (enrol_row,) = gw.rows_of("otp_enrolled")
    assert reset_row["detail"]["trust_windows_dropped"] == 1 and reset_row["detail"]["by"].endswith("(as it-mario)")
    assert enrol_row["person"] == "carla"


def test_a_revocation_reaches_the_sessions_of_another_instance(tmp_path, pki, slapd, dovecot, pec_mailbox,
                                                               pec_provider):
    """Two gateways sharing one PostgreSQL audit store: a revocation made on one ends the person's
    session on the other within its revocation_poll, and refuses them there too."""
    backend = Backend("postgres", tmp_path)
    shared = {"audit": {"store": "postgresql", "postgresql_dsn": backend.conninfo,
                        "postgresql_schema": backend.schema},
              "admin": {"revocation_poll": 0.2}}
    one = start_gateway(tmp_path / "one", pki, slapd, dovecot, pec_mailbox, pec_provider, **shared)
    try:
        key = one.vault.get("audit/chain-key")  # one chain, so one key for both instances
        two = start_gateway(tmp_path / "two", pki, slapd, dovecot, pec_mailbox, pec_provider,
                            prepare=lambda h: h.vault.set("audit/chain-key", key), **shared)
        try:
            saved = two.credential("alice", "alice-password")
            alice = Idler(two, "alice", credential=saved)
            with ThreadPoolExecutor(1) as pool:
                ending = pool.submit(alice.ended, 3)
                started = time.monotonic()
                assert call(load_config(one.config_path), "revoke", person="alice")["sessions_ended"] == 0
                bye, closed = ending.result()
            assert bye == b"* BYE Your access to this PEC mailbox has been revoked\r\n"
            assert closed - started < 1.0
            client = two.imap()
            with pytest.raises(client.error, match="AUTHENTICATIONFAILED"):
                client.login("alice", saved)
            # lifted on one: on two, the old saved credential's trust window went with the
            # revocation, so it is its spent code that answers now
            call(load_config(one.config_path), "lift", person="alice")
            time.sleep(0.6)
            client = two.imap()
            with pytest.raises(client.error, match="AUTHENTICATIONFAILED"):
                client.login("alice", saved)
            fresh = two.imap()
            fresh.login("alice", "alice-password" + two.code("alice", at=time.time() + 30))
            fresh.logout()
        finally:
            two.stop()
    finally:
        one.stop()
        backend.cleanup()
