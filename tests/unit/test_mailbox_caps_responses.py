"""Modified UTF-7, capability filtering and response classification."""

import pytest

from gateway.imap_proxy.capabilities import filter_capabilities, preauth_capabilities
from gateway.imap_proxy.errors import UpstreamProtocolError
from gateway.imap_proxy.framing import Frame
from gateway.imap_proxy.mailbox import MailboxNameError, decode_mutf7, encode_mutf7, normalise_inbox
from gateway.imap_proxy.responses import Kind, classify, parse_status


@pytest.mark.parametrize("human,wire", [
    ("INBOX", b"INBOX"),
    ("Contabilità", b"Contabilit&AOA-"),
    ("Ufficio Legale/Atti & Diffide", b"Ufficio Legale/Atti &- Diffide"),
    ("日本語", b"&ZeVnLIqe-"),
    ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 example
])
def test_mutf7_round_trip(human, wire):
    assert encode_mutf7(human) == wire
    assert decode_mutf7(wire) == human


@pytest.mark.parametrize("bad", [b"&AOA", b"caf\xc3\xa9", b"&!!!-"])
def test_mutf7_rejects_malformed(bad):
    with pytest.raises(MailboxNameError):
        decode_mutf7(bad)


def test_inbox_is_case_insensitive():
    assert normalise_inbox("inbox") == "INBOX" and normalise_inbox("Inboxes") == "Inboxes"


def test_preauth_capabilities_follow_tls_state():
    plain = preauth_capabilities(tls_active=False, starttls_available=True, plaintext_allowed=False)
    assert "STARTTLS" in plain and "LOGINDISABLED" in plain and "AUTH=PLAIN" not in plain
    tls = preauth_capabilities(tls_active=True, starttls_available=False, plaintext_allowed=False)
    assert "AUTH=PLAIN" in tls and "STARTTLS" not in tls and "LOGINDISABLED" not in tls
    assert tls[:2] == ["IMAP4rev1", "LITERAL+"]


def test_filter_drops_what_the_gateway_cannot_relay():
    dovecot = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
               "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
               "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
               "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
               "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE COMPRESS=DEFLATE AUTH=PLAIN STARTTLS "
               "LOGINDISABLED ACL RIGHTS=texk UTF8=ACCEPT IMAP4rev2 X-CUSTOM").split()
    out = filter_capabilities(dovecot)
    for dropped in ("COMPRESS=DEFLATE", "AUTH=PLAIN", "STARTTLS", "LOGINDISABLED", "SASL-IR", "ACL",
                    "RIGHTS=texk", "UTF8=ACCEPT", "IMAP4rev2", "X-CUSTOM", "BINARY", "CATENATE", "NOTIFY",
                    "MULTIAPPEND", "URL-PARTIAL", "LOGIN-REFERRALS", "PREVIEW"):
        assert dropped not in out
    for kept in ("IMAP4rev1", "LITERAL+", "IDLE", "MOVE", "UIDPLUS", "CONDSTORE", "QRESYNC", "SPECIAL-USE",
                 "THREAD=REFS", "ID", "NAMESPACE", "ENABLE"):
        assert kept in out


def test_filter_adds_gateway_literal_plus():
    assert filter_capabilities(["IMAP4rev1", "LITERAL-", "IDLE"]) == ["IMAP4rev1", "LITERAL+", "IDLE"]


@pytest.mark.parametrize("line,kind,tag,name,number", [
    (b"+ idling\r\n", Kind.CONTINUATION, None, "", None),
    (b"* 12 FETCH (UID 3)\r\n", Kind.UNTAGGED, None, "FETCH", 12),
    (b"* 3 EXISTS\r\n", Kind.UNTAGGED, None, "EXISTS", 3),
    (b"* OK [UIDVALIDITY 7] x\r\n", Kind.UNTAGGED, None, "OK", None),
    (b"* CAPABILITY IMAP4rev1\r\n", Kind.UNTAGGED, None, "CAPABILITY", None),
    (b"a1 OK done\r\n", Kind.TAGGED, "a1", "OK", None),
])
def test_classify(line, kind, tag, name, number):
    assert classify(Frame((line,))) == type(classify(Frame((line,))))(kind, tag, name, number)


def test_classify_rejects_garbage():
    with pytest.raises(UpstreamProtocolError):
        classify(Frame((b"garbage\r\n",)))


def test_parse_status_with_code():
    st = parse_status(Frame((b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",)))
    assert (st.tag, st.status, st.code, st.code_data, st.text) == ("a1", "OK", "CAPABILITY", "IMAP4rev1 IDLE",
                                                                   "Logged in")
    st = parse_status(Frame((b"* BYE shutting down\r\n",)))
    assert (st.tag, st.status, st.code, st.text) == (None, "BYE", None, "shutting down")
