"""Revocations kept beside the audit trail (SQLite and the real PostgreSQL, shared by instances),
and the OTP lifecycle verbs run as the real CLI with no gateway running (their rows go straight
into the audit store)."""

from __future__ import annotations

import json
import stat

import psycopg
import pytest

from gateway.revocations import Revocations, open_revocation_store
from tests.audit.conftest import Backend, Trail


def test_revocations_are_shared_by_instances_and_survive_reopening(backend, tmp_path):
    backend.open()  # the gateway opens the audit store first: it creates the schema
    trail = Trail(tmp_path, backend.audit_table())
    first = Revocations(open_revocation_store(trail.config, trail.vault))
    second = Revocations(open_revocation_store(trail.config, trail.vault))
    try:
        made = first.revoke("Alice", "root (as it-mario)", "left the company")
        assert made is not None and made.person == "Alice" and first.is_revoked("alice")
        assert first.revoke("ALICE", "root", None) is None  # one person, whatever the case
        assert not second.is_revoked("alice")  # until it re-reads the table...
        assert second.refresh() == {"alice"}  # ...which says who is new, so their sessions end
        assert second.is_revoked("alice") and second.get("alice").revoked_by == "root (as it-mario)"
        assert second.refresh() == set()
        lifted = second.lift("alice")
        assert lifted is not None and lifted.reason == "left the company"
        assert second.lift("alice") is None
        first.refresh()
        assert not first.is_revoked("alice")
        first.revoke("bruno", "root")
    finally:
        first.store.close()
        second.store.close()
    reopened = Revocations(open_revocation_store(trail.config, trail.vault))
    try:
        assert [r.person for r in reopened.all()] == ["bruno"]
    finally:
        reopened.store.close()


def test_a_revocation_holds_while_the_store_is_down_and_is_written_when_it_is_back(tmp_path):
    """A PostgreSQL backend that dies (a restart, a failover) must not leave revocations
    unenforceable until the gateway restarts: in force at once, written at the next refresh
    over a new connection."""
    backend = Backend("postgres", tmp_path)
    backend.open()
    trail = Trail(tmp_path, backend.audit_table())
    here = Revocations(open_revocation_store(trail.config, trail.vault))
    elsewhere = Revocations(open_revocation_store(trail.config, trail.vault))
    try:
        with psycopg.connect(backend.conninfo, autocommit=True) as db:
            db.execute("SELECT pg_terminate_backend(%s)", (here.store._db.info.backend_pid,))
        revocation, new = here.hold("alice", "root (as it-mario)")
        assert new and here.is_revoked("ALICE")  # no I/O: in force before anything is written
        with pytest.raises(psycopg.OperationalError):
            here.save(revocation)
        assert here.is_revoked("alice") and [r.person for r in here.unsaved] == ["alice"]
        assert here.refresh() == {"alice"} and here.unsaved == []  # new connection, written
        assert elsewhere.refresh() == {"alice"} and elsewhere.get("alice").revoked_by == "root (as it-mario)"
    finally:
        here.store.close()
        elsewhere.store.close()
        backend.cleanup()


def rows(trail: Trail, action: str) -> list[dict]:
    out = trail.run("query", "--action", action, "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_otp_enroll_status_reset_are_audited(tmp_path):
    trail = Trail(tmp_path)
    trail.fill([])  # the gateway's first start: the chain key in the vault
    env = {**trail.env, "SUDO_USER": "it-mario"}
    trail.env = env
    png = tmp_path / "alice.png"
    enrolled = trail.pecgw("otp", "enroll", "alice", "--png", str(png))
    assert enrolled.returncode == 0, enrolled.stderr
    assert "otpauth://totp/" in enrolled.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(png.stat().st_mode) == 0o600  # the picture holds the secret
    assert trail.pecgw("otp", "enroll", "alice").returncode == 2  # no silent replacement
    status = trail.pecgw("otp", "status")
    assert status.returncode == 0 and status.stdout == "alice: enrolled\n"
    assert trail.pecgw("otp", "status", "bruno").returncode == 1
    reset = trail.pecgw("otp", "reset", "alice")
    assert reset.returncode == 0 and reset.stdout.startswith("removed the OTP secret of alice")
    again = trail.pecgw("otp", "reset", "alice")
    assert again.returncode == 2 and "alice has no OTP secret" in again.stderr
    assert trail.pecgw("otp", "status").stdout == "nobody is enrolled\n"
    (enrol_row,) = rows(trail, "otp_enrolled")
    (reset_row,) = rows(trail, "otp_reset")
    for row in (enrol_row, reset_row):
        assert row["person"] == "alice" and row["protocol"] == "admin"
        assert row["detail"]["by"].endswith("(as it-mario)")
    assert trail.run("verify").returncode == 0  # the CLI's rows extend the chain properly


def test_otp_status_ignores_case_and_a_planted_link_is_not_written_through(tmp_path):
    trail = Trail(tmp_path)
    trail.fill([])
    assert trail.pecgw("otp", "enroll", "alice").returncode == 0
    status = trail.pecgw("otp", "status", "Alice")  # directory names are case-insensitive
    assert status.returncode == 0 and status.stdout == "Alice: enrolled (as alice)\n"
    assert trail.pecgw("otp", "status", "alice").stdout == "alice: enrolled\n"
    victim = tmp_path / "precious"
    victim.write_text("keep me\n")
    link = tmp_path / "bruno.png"
    link.symlink_to(victim)  # planted where IT will write the QR code
    planted = trail.pecgw("otp", "enroll", "bruno", "--png", str(link))
    assert planted.returncode == 2 and f"--png: {link} is a symbolic link" in planted.stderr
    assert victim.read_text() == "keep me\n"
    assert trail.pecgw("otp", "status", "bruno").returncode == 1  # nothing was changed


def test_a_link_planted_while_the_qr_code_is_written_is_replaced_not_followed(tmp_path):
    from gateway.auth.otp import png_qr
    from gateway.cli import _write_qr_file

    victim, target = tmp_path / "precious", tmp_path / "alice.png"
    victim.write_text("keep me\n")

    def png_qr_losing_the_race(uri, path):
        written = png_qr(uri, path)
        target.symlink_to(victim)  # planted after cmd_otp_enroll looked
        return written

    assert _write_qr_file("otpauth://totp/x?secret=JBSWY3DPEHPK3PXP", target, png_qr_losing_the_race) == target
    assert victim.read_text() == "keep me\n"
    assert not target.is_symlink() and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.png", "precious"]  # no folder left behind
