"""A gateway stopping (SIGTERM): what each session is told, and when.

Idle sessions and sessions in IDLE get ``* BYE`` at once; a command running at the provider is
answered first (and its audit rows made), then the BYE; nothing new is read meanwhile.  The
end-to-end version, with a real ``pecgw serve`` and Dovecot, is tests/test_shutdown.py.
"""

from __future__ import annotations

from gateway.imap_proxy import actions as act
from gateway.imap_proxy.session import SessionState
from tests.unit.test_audit_trail import rows, selected_lavoro
from tests.unit.test_audit_trail_edges import prime3
from tests.unit.transcript import sent

BYE = b"* BYE [UNAVAILABLE] Gateway shutting down\r\n"


def closes(out) -> bool:
    return any(isinstance(a, act.Close) for a in out)


def logout_reasons(out) -> list[str]:
    return [a.event.reason for a in out if isinstance(a, act.Audit) and a.event.action == "logout"]


def test_an_idle_session_gets_the_bye_at_once():
    s = selected_lavoro(prime3())
    out = s.shutting_down()
    assert sent(out) == BYE and closes(out) and logout_reasons(out) == ["shutdown"]
    assert s.state is SessionState.LOGOUT


def test_a_session_in_idle_gets_the_bye_at_once():
    s = selected_lavoro(prime3())
    s.client_data(b"i1 IDLE\r\n")
    s.upstream_data(b"+ idling\r\n")
    out = s.shutting_down()
    assert sent(out) == BYE and closes(out) and logout_reasons(out) == ["shutdown"]


def test_a_running_fetch_is_answered_with_its_rows_before_the_bye():
    s = selected_lavoro(prime3())
    s.client_data(b"f1 FETCH 1:3 BODY.PEEK[]\r\n")
    part = s.upstream_data(b"* 1 FETCH (UID 31 BODY[] {5}\r\nhello)\r\n")
    assert rows(part)[0][:3] == ("fetch", "Lavoro", 31)
    assert s.shutting_down() == [] and s.stopping
    # nothing new is read while the gateway stops: this NOOP is never relayed
    later = s.client_data(b"n1 NOOP\r\n")
    assert sent(later) == b"" and sent(later, act.SendToUpstream) == b""
    out = s.upstream_data(b"* 2 FETCH (UID 35 BODY[] {5}\r\nhello)\r\n* 3 FETCH (UID 39 BODY[] {5}\r\nhello)\r\n"
                          b"f1 OK Fetch completed\r\n")
    data = sent(out)
    assert data.index(b"f1 OK Fetch completed\r\n") < data.index(BYE) and data.endswith(BYE)
    assert [(r[0], r[2]) for r in rows(out)] == [("fetch", 35), ("fetch", 39), ("logout", None)]
    assert logout_reasons(out) == ["shutdown"] and closes(out) and not s.stopping


def test_idle_ended_by_the_client_during_the_stop_is_answered_first():
    s = selected_lavoro(prime3())
    s.client_data(b"i1 IDLE\r\n")
    s.upstream_data(b"+ idling\r\n")
    s.client_data(b"DONE\r\n")  # IDLE is ending: its tagged reply is due
    assert s.shutting_down() == []
    out = s.upstream_data(b"i1 OK Idle completed\r\n")
    assert sent(out) == b"i1 OK Idle completed\r\n" + BYE and closes(out)


def test_when_the_grace_is_over_the_session_is_ended_anyway_with_its_rows():
    s = selected_lavoro(prime3())
    s.client_data(b"f1 FETCH 1:3 BODY.PEEK[]\r\n")
    part = s.upstream_data(b"* 1 FETCH (UID 31 BODY[] {5}\r\nhello)\r\n")
    assert s.shutting_down() == []
    out = s.shutting_down(now=True)
    assert sent(out) == BYE and closes(out) and logout_reasons(out) == ["shutdown"]
    assert [(r[0], r[2]) for r in rows(part) + rows(out)] == [("fetch", 31), ("logout", None)]
    assert s.upstream_data(b"f1 OK Fetch completed\r\n") == []  # too late: the session is over
