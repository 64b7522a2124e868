"""Whom each "+" of the provider is for, and unique tags: what keeps literals in step.

A "+" taken for the wrong command makes the gateway send a literal the provider never asked
for; if the provider then refuses that command, it reads the literal's octets as commands the
gateway never checked.  These transcripts use a provider without LITERAL+, so literals do wait.
"""

from __future__ import annotations

import pytest

from gateway.imap_proxy import actions as act
from tests.unit.test_enforce_table import POLICY
from tests.unit.transcript import closes, logged_in, sent

NO_LITERAL_PLUS = ["IMAP4rev1", "IDLE", "MOVE", "UIDPLUS", "UNSELECT", "ENABLE"]
SMUGGLED = b"x1 SELECT Contabilit&AOA-\r\nx2 FETCH 1:* BODY[]\r\n"


def session():
    s = logged_in(upstream_caps=NO_LITERAL_PLUS, policy=POLICY)
    s.client_data(b"s0 SELECT Lavoro\r\n")
    s.upstream_data(b"s0 OK [READ-WRITE] done\r\n")
    return s


def up(out) -> bytes:
    return sent(out, act.SendToUpstream)


def test_nothing_is_written_while_idling_and_done_waits_for_idles_continuation():
    s = session()
    out = s.client_data(b"i1 IDLE\r\nDONE\r\na1 APPEND Lavoro/Manca {%d}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n")
    assert up(out) == b"i1 IDLE\r\n"  # DONE before "+ idling" would be read as a command
    out = s.upstream_data(b"+ idling\r\n")
    # IDLE's "+" is shown to the client, not taken for the literal; the APPEND is read only now
    assert sent(out) == b"+ idling\r\n+ Ready for literal data\r\n"
    assert up(out) == b"DONE\r\na1 APPEND Lavoro/Manca {%d}\r\n" % len(SMUGGLED)
    out = s.upstream_data(b"i1 OK Idle completed\r\na1 NO [TRYCREATE] Mailbox doesn't exist\r\n")
    assert SMUGGLED not in up(out), "the refused APPEND's literal must never be sent"
    assert sent(out) == b"i1 OK Idle completed\r\na1 NO [TRYCREATE] No such folder\r\n"
    assert up(s.client_data(b"n1 NOOP\r\n")) == b"n1 NOOP\r\n"


def test_literal_goes_after_its_own_continuation():
    s = session()
    s.client_data(b"i1 IDLE\r\nDONE\r\na1 APPEND Lavoro {3}\r\nabc\r\n")
    assert up(s.upstream_data(b"+ idling\r\n")) == b"DONE\r\na1 APPEND Lavoro {3}\r\n"
    assert up(s.upstream_data(b"i1 OK done\r\n+ go ahead\r\n")) == b"abc\r\n"


def test_idle_refused_by_the_provider_gets_no_done():
    s = session()
    s.client_data(b"i1 IDLE\r\n")
    out = s.upstream_data(b"i1 NO IDLE not allowed now\r\n")
    assert sent(out) == b"i1 NO IDLE not allowed now\r\n"
    out = s.client_data(b"DONE\r\n")  # the client had not seen the NO yet: DONE is no command
    assert up(out) == b""


def test_the_gateways_own_commands_wait_until_idle_is_over():
    s = session()
    s.client_data(b"t1 SELECT Lavoro/Manca\r\ni1 IDLE\r\n")
    out = s.upstream_data(b"t1 NO Mailbox doesn't exist: Lavoro/Manca\r\n+ idling\r\n")
    assert up(out) == b""  # the deselect after the failed SELECT must not land inside IDLE
    out = s.client_data(b"DONE\r\n")
    assert up(out) == b"DONE\r\nPECGW.d1 UNSELECT\r\n"


@pytest.mark.parametrize("command", [b"IDLE {4+}\r\nDONE", b"NOOP x", b"CHECK (1)", b"CLOSE now", b"EXPUNGE 1:*"])
def test_commands_without_arguments_refuse_them(command):
    s = session()
    out = s.client_data(b"c1 " + command + b"\r\n")
    assert up(out) == b"" and sent(out).startswith(b"c1 BAD ") and b"takes no arguments" in sent(out)


@pytest.mark.parametrize("reply", [b"+ surprise\r\n", b"zz OK not yours\r\n"])
def test_a_provider_out_of_step_ends_the_session(reply):
    s = session()
    out = s.upstream_data(reply)
    assert sent(out).startswith(b"* BYE [UNAVAILABLE]") and closes(out)


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


def test_nothing_more_is_read_while_done_waits_for_idles_continuation():
    """Uploads must not pile up in memory while the provider has not acknowledged IDLE."""
    s = session()
    body = b"x" * 100_000
    out = s.client_data(b"i1 IDLE\r\nDONE\r\n" + b"a1 APPEND Lavoro {%d+}\r\n" % len(body) + body + b"\r\n")
    assert up(out) == b"i1 IDLE\r\n" and s.reading_paused
    assert s.client_framer.buffered > len(body)  # still unparsed bytes, not a queued command
    out = s.upstream_data(b"+ idling\r\n")
    assert up(out) == b"DONE\r\na1 APPEND Lavoro {%d}\r\n" % len(body)
    assert up(s.upstream_data(b"i1 OK done\r\n+ OK\r\n")) == body + b"\r\n"


def test_two_pipelined_idles_each_get_their_done():
    s = session()
    out = s.client_data(b"i1 IDLE\r\nDONE\r\ni2 IDLE\r\nDONE\r\nn1 NOOP\r\n")
    assert up(out) == b"i1 IDLE\r\n"
    assert up(s.upstream_data(b"+ idling\r\n")) == b"DONE\r\ni2 IDLE\r\n"
    assert up(s.upstream_data(b"i1 OK Idle completed\r\n")) == b""
    assert up(s.upstream_data(b"+ idling\r\n")) == b"DONE\r\nn1 NOOP\r\n"
    assert sent(s.upstream_data(b"i2 OK Idle completed\r\nn1 OK done\r\n")) == (
        b"i2 OK Idle completed\r\nn1 OK done\r\n")


@pytest.mark.parametrize("done", [b"DONE\n\n\n\r\n", b"DONE\r\r\n", b"DONE \r\n"])
def test_only_an_exact_done_ends_idle(done):
    s = session()
    s.client_data(b"i1 IDLE\r\n")
    s.upstream_data(b"+ idling\r\n")
    out = s.client_data(done)
    assert up(out) == b"" and sent(out).startswith(b"* BYE Expected DONE") and closes(out)


def test_done_is_sent_as_the_gateway_writes_it():
    s = session()
    s.client_data(b"i1 IDLE\r\n")
    s.upstream_data(b"+ idling\r\n")
    assert up(s.client_data(b"done\r\n")) == b"DONE\r\n"
