"""Ending a session from outside (revoke, kick, directory check): what the client is told, and
the audit rows of commands still running at the provider, which must not be lost."""

from __future__ import annotations

from gateway.imap_proxy import actions as act
from tests.unit.test_audit_trail import rows, selected_lavoro
from tests.unit.test_audit_trail_edges import prime3
from tests.unit.transcript import sent


def test_an_idle_session_is_told_and_closed_with_its_logout_row():
    s = selected_lavoro(prime3())
    s.client_data(b"i1 IDLE\r\n")
    s.upstream_data(b"+ idling\r\n")
    out = s.ended_by_gateway(b"Your access to this PEC mailbox has been revoked", "revoked")
    assert sent(out) == b"* BYE Your access to this PEC mailbox has been revoked\r\n"
    logout = [r for r in rows(out) if r[0] == "logout"]
    assert len(logout) == 1 and any(isinstance(a, act.Close) for a in out)
    assert [a.event.reason for a in out if isinstance(a, act.Audit) and a.event.action == "logout"] == ["revoked"]
    assert s.ended_by_gateway(b"again", "kicked") == []  # once ended, nothing more


def test_an_audited_command_running_keeps_its_rows_the_client_is_cut_off_at_once():
    s = selected_lavoro(prime3())
    s.client_data(b"x1 UID EXPUNGE 39\r\n")
    s.upstream_data(b"PECGW.n1 OK done\r\n")  # the gateway's NOOP before a UID EXPUNGE
    out = s.ended_by_gateway(b"Session ended by the administrator", "kicked")
    assert sent(out) == b"* BYE Session ended by the administrator\r\n"
    assert any(isinstance(a, act.CloseClient) for a in out) and not any(isinstance(a, act.Close) for a in out)
    assert rows(out) == [] and s.draining
    assert s.ended_by_gateway(b"again", "revoked") == []  # already ending
    done = s.upstream_data(b"* 3 EXPUNGE\r\nx1 OK done\r\n")
    assert sent(done) == b""  # the client is gone
    assert [(r[0], r[2]) for r in rows(done)] == [("expunge", 39), ("logout", None)]
    assert [a.event.reason for a in done if isinstance(a, act.Audit) and a.event.action == "logout"] == ["kicked"]
    assert any(isinstance(a, act.Close) for a in done)


def test_a_command_held_for_the_gateways_question_is_dropped_and_the_session_ends_at_once():
    """Was: an EXPUNGE held while the gateway's NOOP ran counted as "audited running", so the
    session went draining with nothing left to finish it, and hung until the idle timeout."""
    s = selected_lavoro(prime3())
    s.client_data(b"x1 UID EXPUNGE 39\r\n")  # held: the gateway's NOOP goes first
    out = s.ended_by_gateway(b"Session ended by the administrator", "kicked")
    assert sent(out) == b"* BYE Session ended by the administrator\r\n"
    assert any(isinstance(a, act.Close) for a in out) and not s.draining
    assert [a.event.reason for a in out if isinstance(a, act.Audit) and a.event.action == "logout"] == ["kicked"]
