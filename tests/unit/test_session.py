"""The pure IMAP session, driven by transcripts: bytes in, actions out."""

import pytest

from gateway.imap_proxy import actions as act
from gateway.imap_proxy.session import ImapSession, SessionLimits, SessionState
from gateway.login import Failure, LoginResult
from tests.unit.policies import OPEN
from tests.unit.transcript import UPSTREAM_CAPS, audits, feed, logged_in, new_session, selected, sent



def test_greeting_lists_preauth_capabilities():
    s = ImapSession(session_id="s", client_ip="x", tls_active=False, starttls_available=True, policy=OPEN)
    greeting = sent(s.connection_made())
    assert greeting == b"* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE STARTTLS LOGINDISABLED] PEC-Gateway ready\r\n"


def test_login_before_starttls_is_refused():
    s = new_session(tls=False, starttls=True)
    out = s.client_data(b"a1 LOGIN alice secret123456\r\n")
    assert sent(out) == b"a1 NO [PRIVACYREQUIRED] Use STARTTLS before logging in\r\n"
    assert not [a for a in out if isinstance(a, act.Login)]
    out = s.client_data(b"a2 AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n")
    assert b"a2 NO [PRIVACYREQUIRED]" in sent(out)


def test_starttls_then_capabilities_change():
    s = new_session(tls=False, starttls=True)
    out = s.client_data(b"a1 STARTTLS\r\n")
    assert sent(out) == b"a1 OK Begin TLS negotiation now\r\n" and out[-1] == act.StartTls()
    s.tls_started()
    caps = sent(s.client_data(b"a3 CAPABILITY\r\n"))
    assert b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps


def test_cleartext_pipelined_after_starttls_ends_the_connection():
    s = new_session(tls=False, starttls=True)
    out = s.client_data(b"a1 STARTTLS\r\na2 LOGIN alice injected\r\n")
    assert sent(out) == b"* BYE Commands after STARTTLS must wait for the TLS handshake\r\n"
    assert not [a for a in out if isinstance(a, (act.StartTls, act.Login))]
    assert isinstance(out[-1], act.Close)


@pytest.mark.parametrize("data", [
    b"a1 LOGIN alice pw123456\r\n",
    b'a1 LOGIN "alice" "pw123456"\r\n',
    b"a1 LOGIN {5}\r\nalice {8}\r\npw123456\r\n",
    b"a1 LOGIN {5+}\r\nalice {8+}\r\npw123456\r\n",
    b"a1 AUTHENTICATE PLAIN AGFsaWNlAHB3MTIzNDU2\r\n",
])
def test_login_forms_produce_one_login_request(data, bytewise):
    s = new_session()
    out = feed(s, data, bytewise=bytewise)
    logins = [a for a in out if isinstance(a, act.Login)]
    assert len(logins) == 1
    req = logins[0].request
    assert req.login == "alice" and req.credential.reveal() == "pw123456" and req.client_ip == "192.0.2.7"
    assert s.state is SessionState.AUTHENTICATING and s.reading_paused


def test_authenticate_without_initial_response(bytewise):
    s = new_session()
    out = feed(s, b"a1 AUTHENTICATE PLAIN\r\n", bytewise=bytewise)
    assert sent(out) == b"+ \r\n"
    out = feed(s, b"AGFsaWNlI3Byb3RvY29sbG8AcHcxMjM0NTY=\r\n", bytewise=bytewise)
    (login,) = [a for a in out if isinstance(a, act.Login)]
    assert login.request.username == "alice" and login.request.mailbox == "protocollo"


def test_authenticate_cancel_and_bad_base64():
    s = new_session()
    s.client_data(b"a1 AUTHENTICATE PLAIN\r\n")
    assert sent(s.client_data(b"*\r\n")) == b"a1 BAD Authentication cancelled\r\n"
    assert sent(s.client_data(b"a2 AUTHENTICATE PLAIN !!!!\r\n")) == b"a2 BAD Invalid base64 in AUTHENTICATE\r\n"
    assert sent(s.client_data(b"a3 AUTHENTICATE CRAM-MD5\r\n")) == b"a3 NO [CANNOT] Only the PLAIN mechanism is offered\r\n"


def test_commands_pipelined_behind_login_wait_for_it():
    s = new_session()
    out = s.client_data(b"a1 LOGIN alice pw123456\r\na2 SELECT INBOX\r\n")
    assert not sent(out, act.SendToUpstream)
    out = s.login_finished(LoginResult(True, person="alice", mailbox="protocollo", groups=("legale",)), UPSTREAM_CAPS)
    assert sent(out).startswith(b"a1 OK [CAPABILITY ")
    assert sent(out, act.SendToUpstream) == b"a2 SELECT INBOX\r\n"


def test_login_ok_carries_filtered_upstream_capabilities():
    s = new_session()
    s.client_data(b"a1 LOGIN alice pw123456\r\n")
    out = s.login_finished(LoginResult(True, person="alice", offices=("legale",), mailbox="protocollo", groups=("legale",)), UPSTREAM_CAPS)
    assert sent(out) == b"a1 OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE MOVE UIDPLUS ENABLE ACL RIGHTS=texk] Logged in\r\n"
    (event,) = audits(out)
    assert (event.action, event.person, event.mailbox, event.offices, event.client_ip) == (
        "login", "alice", "protocollo", ("legale",), "192.0.2.7")


@pytest.mark.parametrize("failure,code", [(Failure.AUTHENTICATION, b"AUTHENTICATIONFAILED"),
                                          (Failure.UNAVAILABLE, b"UNAVAILABLE"),
                                          (Failure.AUTHORIZATION, b"AUTHORIZATIONFAILED")])
def test_login_failure_reply_and_audit(failure, code):
    s = new_session()
    s.client_data(b"a1 ID (\"name\" \"mbsync\" \"version\" \"1.4\")\r\na2 LOGIN alice#protocollo x123456\r\n")
    out = s.login_finished(LoginResult(False, failure=failure, client_text="Nope", reason="bad_otp"))
    assert sent(out) == b"a2 NO [" + code + b"] Nope\r\n"
    (event,) = audits(out)
    assert event.decision == "deny" and event.person == "alice" and event.reason == "bad_otp"
    assert event.client_name == "mbsync 1.4"
    assert s.state is SessionState.NOT_AUTHENTICATED


def test_three_failures_end_the_connection():
    s = new_session()
    for i in range(3):
        s.client_data(b"a%d LOGIN bob wrong\r\n" % i)
        out = s.login_finished(LoginResult(False, failure=Failure.AUTHENTICATION, client_text="Authentication failed"))
    assert sent(out).endswith(b"* BYE Too many failed logins\r\n")
    assert isinstance(out[-1], act.Close)


def test_relay_forwards_exact_bytes_and_replies(bytewise):
    s = selected()
    data = b"A5 uid fetch 1:* (FLAGS BODY.PEEK[])\r\nA6 noop\r\n"
    out = feed(s, data, bytewise=bytewise)
    assert sent(out, act.SendToUpstream) == data
    reply = b"* 1 FETCH (UID 1 FLAGS () BODY[] {5}\r\nhello)\r\nA5 OK done\r\nA6 OK done\r\n"
    assert sent(s.upstream_data(reply)) == reply


def test_denial_waits_for_earlier_pipelined_reply():
    s = selected()
    out = s.client_data(b"A1 FETCH 1 FLAGS\r\nA2 COMPRESS DEFLATE\r\nA3 NOOP\r\n")
    assert sent(out) == b""  # A2's refusal must not overtake A1's reply
    assert sent(out, act.SendToUpstream) == b"A1 FETCH 1 FLAGS\r\nA3 NOOP\r\n"
    out = s.upstream_data(b"* 1 FETCH (FLAGS ())\r\nA1 OK done\r\nA3 OK done\r\n")
    assert sent(out) == (b"* 1 FETCH (FLAGS ())\r\nA1 OK done\r\n"
                         b"A2 NO [CANNOT] COMPRESS is not available through the gateway\r\n"
                         b"A3 OK done\r\n")


def test_postauth_login_and_unknown_commands():
    s = logged_in()
    assert sent(s.client_data(b"b1 LOGIN x y\r\n")) == b"b1 BAD Already logged in\r\n"
    assert sent(s.client_data(b"b2 XYZZY\r\n")) == b"b2 BAD Unknown command\r\n"
    assert sent(s.client_data(b"PECGW.1 NOOP\r\n")) == b"PECGW.1 BAD Tag prefix reserved by the gateway\r\n"


def test_sync_literal_answered_by_gateway_then_paced_to_provider_without_literal_plus():
    s = logged_in(upstream_caps=["IMAP4rev1", "IDLE"])
    out = s.client_data(b"A1 APPEND INBOX {5}\r\n")
    assert sent(out) == b"+ Ready for literal data\r\n" and not sent(out, act.SendToUpstream)
    out = s.client_data(b"hello\r\n")
    assert sent(out, act.SendToUpstream) == b"A1 APPEND INBOX {5}\r\n"
    out = s.upstream_data(b"+ OK\r\n")
    assert sent(out) == b"" and sent(out, act.SendToUpstream) == b"hello\r\n"


def test_non_sync_literal_rewritten_when_provider_lacks_literal_plus():
    s = logged_in(upstream_caps=["IMAP4rev1"])
    out = s.client_data(b"A1 APPEND INBOX {5+}\r\nhello\r\nA2 NOOP\r\n")
    assert sent(out, act.SendToUpstream) == b"A1 APPEND INBOX {5}\r\n"
    out = s.upstream_data(b"+ go\r\n")
    assert sent(out, act.SendToUpstream) == b"hello\r\nA2 NOOP\r\n"


def test_provider_refusing_literal_drops_the_rest_of_that_command():
    s = logged_in(upstream_caps=["IMAP4rev1"])
    s.client_data(b"A1 APPEND INBOX {5+}\r\nhello\r\nA2 NOOP\r\n")
    out = s.upstream_data(b"A1 NO [OVERQUOTA] full\r\n")
    assert sent(out) == b"A1 NO [OVERQUOTA] full\r\n"
    assert sent(out, act.SendToUpstream) == b"A2 NOOP\r\n"


def test_idle_done_roundtrip(bytewise):
    s = logged_in()
    assert sent(feed(s, b"I1 IDLE\r\n", bytewise=bytewise), act.SendToUpstream) == b"I1 IDLE\r\n"
    assert sent(s.upstream_data(b"+ idling\r\n* 4 EXISTS\r\n")) == b"+ idling\r\n* 4 EXISTS\r\n"
    assert sent(feed(s, b"DONE\r\n", bytewise=bytewise), act.SendToUpstream) == b"DONE\r\n"
    assert sent(s.upstream_data(b"I1 OK Idle completed\r\n")) == b"I1 OK Idle completed\r\n"
    assert sent(s.client_data(b"I2 NOOP\r\n"), act.SendToUpstream) == b"I2 NOOP\r\n"


def test_capability_responses_after_login_are_filtered():
    s = logged_in()
    s.client_data(b"c1 CAPABILITY\r\n")
    out = s.upstream_data(b"* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE\r\nc1 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] x\r\n")
    assert sent(out) == (b"* CAPABILITY IMAP4rev1 LITERAL+ IDLE ACL RIGHTS=texk\r\n"
                         b"c1 OK [CAPABILITY IMAP4rev1 LITERAL+ ACL RIGHTS=texk] x\r\n")


def test_logout_relayed_then_closed_with_audit():
    s = logged_in()
    s.client_data(b"z LOGOUT\r\n")
    out = s.upstream_data(b"* BYE Logging out\r\nz OK Logout completed.\r\n")
    assert sent(out) == b"* BYE Logging out\r\nz OK Logout completed.\r\n"
    (event,) = audits(out)
    assert event.action == "logout" and event.detail["bytes_in"] > 0
    assert isinstance(out[-1], act.Close) and s.state is SessionState.LOGOUT


def test_provider_loss_tells_client_unavailable():
    s = logged_in()
    out = s.upstream_data(b"")
    assert sent(out) == b"* BYE [UNAVAILABLE] Connection to the PEC provider was lost\r\n"
    assert audits(out)[0].action == "logout"


def test_provider_garbage_ends_session_without_relaying_it():
    s = logged_in()
    out = s.upstream_data(b"garbage-without-space\r\n")
    assert sent(out) == b"* BYE [UNAVAILABLE] The PEC provider sent something the gateway cannot relay\r\n"


def test_oversized_line_closes_only_with_bye():
    s = new_session(limits=SessionLimits(max_line=1024))
    out = s.client_data(b"a" * 5000)
    assert sent(out) == b"* BYE Protocol error: line exceeds 1024 octets\r\n"
    assert isinstance(out[-1], act.Close)


def test_preauth_literal_limit_refuses_big_literal_but_keeps_serving():
    s = new_session()
    out = s.client_data(b"a1 LOGIN {100000}\r\na2 NOOP\r\n")
    assert sent(out) == b"a1 NO [TOOBIG] Literal of 100000 octets exceeds the limit of 8192\r\na2 OK NOOP completed\r\n"


def test_inflight_limit_pauses_reading():
    s = logged_in(limits=SessionLimits(max_in_flight=2))
    out = s.client_data(b"a NOOP\r\nb NOOP\r\nc NOOP\r\n")
    assert sent(out, act.SendToUpstream) == b"a NOOP\r\nb NOOP\r\n" and s.reading_paused
    out = s.upstream_data(b"a OK\r\n")
    assert sent(out, act.SendToUpstream) == b"c NOOP\r\n"


def test_preauth_commands_needing_login_are_refused():
    s = new_session()
    assert sent(s.client_data(b"a1 SELECT INBOX\r\n")) == b"a1 BAD Log in first\r\n"
    assert sent(s.client_data(b"a2 LOGOUT\r\n")) == b"* BYE Logging out\r\na2 OK LOGOUT completed\r\n"
