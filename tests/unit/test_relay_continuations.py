"""Whom each "+" of the provider is for, and unique tags: what keeps literals in step.

A "+" taken for the wrong command makes the gateway send a literal the provider never asked
for; if the provider then refuses that command, it reads the literal's octets as commands the
gateway never checked.  These transcripts use a provider without LITERAL+, so literals do wait.
"""

from __future__ import annotations

from gateway.imap_proxy import actions as act
from tests.unit.test_enforce_table import POLICY
from tests.unit.transcript import logged_in, sent

NO_LITERAL_PLUS = ["IMAP4rev1", "IDLE", "MOVE", "UIDPLUS", "UNSELECT", "ENABLE"]
SMUGGLED = b"x1 SELECT Contabilit&AOA-\r\nx2 FETCH 1:* BODY[]\r\n"


def session():
    s = logged_in(upstream_caps=NO_LITERAL_PLUS, policy=POLICY)
    s.client_data(b"s0 SELECT Lavoro\r\n")
    s.upstream_data(b"s0 OK [READ-WRITE] done\r\n")
    return s


def up(out) -> bytes:
    return sent(out, act.SendToUpstream)


def test_idle_continuation_is_the_clients_not_a_literals():
    s = session()
    out = s.client_data(b"i1 IDLE\r\nDONE\r\na1 APPEND Lavoro/Manca {%d}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n")
    assert up(out) == b"i1 IDLE\r\nDONE\r\na1 APPEND Lavoro/Manca {%d}\r\n" % len(SMUGGLED)
    out = s.upstream_data(b"+ idling\r\n")
    assert up(out) == b"" and sent(out) == b"+ idling\r\n"  # IDLE's "+", shown to the client
    out = s.upstream_data(b"i1 OK Idle completed\r\na1 NO [TRYCREATE] Mailbox doesn't exist\r\n")
    assert SMUGGLED not in up(out), "the refused APPEND's literal must never be sent"
    assert sent(out) == b"i1 OK Idle completed\r\na1 NO [TRYCREATE] No such folder\r\n"
    out = s.client_data(b"n1 NOOP\r\n")
    assert up(out) == b"n1 NOOP\r\n"


def test_literal_goes_after_its_own_continuation():
    s = session()
    s.client_data(b"i1 IDLE\r\nDONE\r\na1 APPEND Lavoro {3}\r\nabc\r\n")
    assert up(s.upstream_data(b"+ idling\r\n")) == b""
    assert up(s.upstream_data(b"i1 OK done\r\n+ go ahead\r\n")) == b"abc\r\n"


def test_a_duplicate_tag_is_refused_and_not_relayed():
    s = session()
    out = s.client_data(b"t NOOP\r\nt APPEND Lavoro {10}\r\n0123456789\r\n")
    assert up(out) == b"t NOOP\r\n"
    out = s.upstream_data(b"t OK NOOP completed\r\n")
    assert sent(out) == b"t OK NOOP completed\r\nt BAD Tag already in use by a command in progress\r\n"
    assert up(out) == b""


def test_a_duplicate_tag_cannot_change_the_tracked_selection():
    s = session()
    s.client_data(b"t NOOP\r\nt SELECT INBOX\r\n")
    s.upstream_data(b"t OK NOOP completed\r\n")
    out = s.client_data(b"u STORE 1 +FLAGS (\\Deleted)\r\n")  # still judged in Lavoro, where t is granted
    assert up(out) == b"u STORE 1 +FLAGS (\\Deleted)\r\n"
