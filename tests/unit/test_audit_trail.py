"""Per-message audit rows from the pure session: commands in, provider replies in, rows out."""

from __future__ import annotations

from gateway.imap_proxy import actions as act
from gateway.imap_proxy.identity import IDENTITY_ITEM, IDENTITY_REPLY_ITEM
from tests.unit.test_enforce_table import CAPS
from tests.unit.transcript import answer_lookups, audits, logged_in, sent

REPLY_ITEM = IDENTITY_REPLY_ITEM.encode()


def rows(out) -> list[tuple]:
    return [(e.action, e.folder, e.message.uid if e.message else None, e.detail) for e in audits(out)]


def selected_lavoro(prime: bytes = b"", caps=CAPS):
    """Lavoro selected (UIDVALIDITY 1700; UIDs 31, 35, 39); ``prime``: the identity replies the
    provider gives to the gateway's own lookups right after the SELECT (for receipts among
    them, it then says it found no daticert.xml); ``caps``: the provider's."""
    s = logged_in(upstream_caps=caps)  # alice may do everything (tests/unit/policies.OPEN)
    s.client_data(b"s1 SELECT Lavoro\r\n")
    out = s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] UIDs valid\r\n"
                          b"* OK [UIDNEXT 40] Predicted next UID\r\ns1 OK [READ-WRITE] Select completed\r\n")
    assert rows(out) == [("select", "Lavoro", None, {"uidvalidity": 1700, "messages": 3})]
    # the gateway maps every message to its UID, then asks who the messages are, before reading on;
    # by number (FETCH, not UID FETCH): no other session's EXPUNGE may come with the answers
    assert sent(out, act.SendToUpstream) == b"PECGW.s1 FETCH 1:* (UID)\r\n" and s.reading_paused
    out = s.upstream_data(mapped(31, 35, 39) + b"PECGW.s1 OK Fetch completed\r\n")
    assert sent(out) == b""
    assert sent(out, act.SendToUpstream) == b"PECGW.i2 FETCH 1:3 (UID %s)\r\n" % IDENTITY_ITEM.encode()
    out = s.upstream_data(prime + b"PECGW.i2 OK Fetch completed\r\n")
    if b"X-Ricevuta" in prime:  # a receipt: the gateway asks where its daticert.xml is
        assert sent(out, act.SendToUpstream).startswith(b"PECGW.b3 FETCH ")
        out = s.upstream_data(b"PECGW.b3 OK Fetch completed\r\n")
    assert sent(out) == b"" and not s.reading_paused
    return s


def mapped(*uids: int, start: int = 1) -> bytes:
    """The provider's answer to the gateway's ``FETCH 1:* (UID)``: one line per message."""
    return b"".join(b"* %d FETCH (UID %d)\r\n" % (n, u) for n, u in enumerate(uids, start))


def identity(seq: int, uid: int, headers: bytes) -> bytes:
    """The provider's answer to the gateway's identity lookup for one message."""
    return b"* %d FETCH (UID %d %s {%d}\r\n%s)\r\n" % (seq, uid, REPLY_ITEM, len(headers), headers)


BUSTA = (b"Message-ID: <opec21.20250512091540.1.2@pec.example.it>\r\nSubject: =?UTF-8?Q?POSTA_CERTIFICATA:_Fattura_n._42=E2=80=93?=\r\n"
         b" 2025\r\nFrom: \"Per conto di: amministrazione@pec.fornitore.example.it\" <posta-certificata@pec.example.it>\r\n"
         b"Date: Mon, 12 May 2025 09:15:40 +0200\r\nX-Trasporto: posta-certificata\r\n"
         b"X-Riferimento-Message-ID: <abc@fornitore.example.it>\r\n\r\n")
RICEVUTA = b"Message-ID: <r1@pec.example.it>\r\nSubject: CONSEGNA: x\r\nX-Ricevuta: avvenuta-consegna\r\n\r\n"


def test_rows_name_the_messages_the_gateway_looked_up_after_select():
    s = selected_lavoro(identity(1, 31, BUSTA) + identity(2, 35, RICEVUTA))
    s.client_data(b"f1 FETCH 1:2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
    out = s.upstream_data(b'* 1 FETCH (FLAGS () BODY[HEADER.FIELDS (SUBJECT)] {4}\r\nab\r\n)\r\n'
                          b'* 2 FETCH (FLAGS (\\Seen) BODY[HEADER.FIELDS (SUBJECT)] {4}\r\ncd\r\n)\r\n'
                          b"f1 OK Fetch completed\r\n")
    assert sent(out, act.SendToUpstream) == b""  # nothing more to ask
    first, second = audits(out)
    assert (first.action, first.folder, first.detail["content"]) == ("fetch", "Lavoro", "headers")
    m = first.message
    assert (m.uidvalidity, m.uid, m.message_id, m.pec_kind, m.pec_id, m.pec_ref) == (
        1700, 31, "<opec21.20250512091540.1.2@pec.example.it>", "posta-certificata",
        "<opec21.20250512091540.1.2@pec.example.it>", "<abc@fornitore.example.it>")
    assert m.subject == "POSTA CERTIFICATA: Fattura n. 42– 2025"
    assert m.sender.startswith('"Per conto di: amministrazione@pec.fornitore.example.it"')
    assert m.date == "Mon, 12 May 2025 09:15:40 +0200"
    assert (second.message.uid, second.message.pec_kind, second.message.pec_id) == (35, "avvenuta-consegna", None)


def test_a_message_arriving_later_is_named_before_the_clients_next_command():
    s = selected_lavoro(identity(1, 31, BUSTA))
    s.upstream_data(b"* 4 EXISTS\r\n")  # a new PEC arrives: its UID is not known
    out = s.client_data(b"f1 FETCH 4 BODY.PEEK[]\r\n")
    # asked first (by number), so whatever the client does with it is named; f1 waits unread
    assert sent(out, act.SendToUpstream) == b"PECGW.i3 FETCH 4 (UID %s)\r\n" % IDENTITY_ITEM.encode()
    out = s.upstream_data(identity(4, 40, RICEVUTA) + b"PECGW.i3 OK done\r\n")
    assert sent(out) == b""  # the client never sees the gateway's questions
    # a receipt: where is its daticert.xml? (none here)
    assert sent(out, act.SendToUpstream) == b"PECGW.b4 FETCH 4 (UID BODYSTRUCTURE)\r\n"
    out = s.upstream_data(b"PECGW.b4 OK done\r\n")
    assert sent(out, act.SendToUpstream) == b"f1 FETCH 4 BODY.PEEK[]\r\n"
    out = s.upstream_data(b"* 4 FETCH (BODY[] {5}\r\nhello)\r\nf1 OK done\r\n")
    (event,) = audits(out)  # named at once
    assert (event.action, event.message.uid, event.message.message_id, event.detail) == (
        "fetch", 40, "<r1@pec.example.it>", {"content": "body", "items": ["BODY[]"]})


def test_rows_wait_but_are_never_lost():
    s = selected_lavoro()  # the provider told nothing about the messages
    s.client_data(b"f1 FETCH 1 (FLAGS)\r\n")
    out = s.upstream_data(b"* 1 FETCH (FLAGS ())\r\nf1 OK done\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.i3 FETCH 1 (UID %s)\r\n" % IDENTITY_ITEM.encode()
    assert s.reading_paused  # the next command waits for the lookup: nothing else may be in flight
    out = s.upstream_data(b"* 1 EXPUNGE\r\nPECGW.i3 OK done\r\n")  # the message vanished meanwhile
    (event,) = audits(out)
    assert (event.action, event.message.uid, event.message.message_id) == ("fetch", 31, None)
    s.client_data(b"f2 FETCH 1 (FLAGS)\r\n")
    s.upstream_data(b"* 1 FETCH (UID 35 FLAGS ())\r\nf2 OK done\r\n")
    assert [e.action for e in audits(s.client_closed())] == ["fetch", "logout"]  # flushed at the end


def test_flag_changes_with_and_without_silent():
    s = selected_lavoro()
    s.client_data(b"t1 STORE 2 +FLAGS (\\Flagged)\r\n")
    out = s.upstream_data(b"* 2 FETCH (FLAGS (\\Flagged \\Seen))\r\nt1 OK Store completed\r\n")
    out = answer_lookups(s, out)
    assert rows(out) == [("flags", "Lavoro", 35, {"change": "+FLAGS", "flags": "\\Flagged",
                                                  "now": ["\\Flagged", "\\Seen"]})]
    s.client_data(b"t2 UID STORE 35:* -FLAGS.SILENT (\\Seen)\r\n")
    out = answer_lookups(s, s.upstream_data(b"t2 OK Store completed\r\n"))
    assert rows(out) == [("flags", "Lavoro", 35, {"change": "-FLAGS", "flags": "\\Seen", "now": None}),
                         ("flags", "Lavoro", 39, {"change": "-FLAGS", "flags": "\\Seen", "now": None})]


def test_copy_move_append_and_expunge_rows():
    s = selected_lavoro()
    s.client_data(b"c1 UID COPY 31,35 Archivio\r\n")
    out = answer_lookups(s, s.upstream_data(b"c1 OK [COPYUID 88 31,35 7:8] Copy completed\r\n"))
    assert rows(out) == [("copy", "Lavoro", 31, {"to": "Archivio", "to_uidvalidity": 88, "to_uid": 7}),
                         ("copy", "Lavoro", 35, {"to": "Archivio", "to_uidvalidity": 88, "to_uid": 8})]
    s.client_data(b"m1 MOVE 1 Archivio\r\n")
    out = s.upstream_data(b"* OK [COPYUID 88 31 9] Moved\r\n* 1 EXPUNGE\r\nm1 OK Move completed\r\n")
    assert rows(out) == [("move", "Lavoro", 31, {"to": "Archivio", "to_uid": 9})]  # no separate expunge row
    s.client_data(b"x1 EXPUNGE\r\n")
    # what is marked \Deleted, by number (see expunge_plan); message 2 (UID 39) was never
    # identified, so the gateway asks who it is before it leaves
    out = s.upstream_data(b"* SEARCH 2\r\nPECGW.x1 OK done\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.x2 FETCH 2 (UID %s)\r\n" % IDENTITY_ITEM.encode()
    out = s.upstream_data(identity(2, 39, b"Message-ID: <m39@x>\r\n\r\n") + b"PECGW.x2 OK done\r\n")
    assert sent(out, act.SendToUpstream) == b"x1 UID EXPUNGE 39\r\n" and sent(out) == b""
    out = s.upstream_data(b"* 2 EXPUNGE\r\nx1 OK Expunge completed\r\n")  # seq 2 is now UID 39
    assert rows(out) == [("expunge", "Lavoro", 39, {"by": "EXPUNGE"})]
    assert audits(out)[0].message.message_id == "<m39@x>"
    s.client_data(b"a1 APPEND Archivio {3+}\r\nabc\r\n")
    s.upstream_data(b"+ OK\r\n")
    out = s.upstream_data(b"a1 OK [APPENDUID 88 10] Append completed\r\n")
    (event,) = audits(out)
    assert (event.action, event.folder, event.message.uidvalidity, event.message.uid) == ("append", "Archivio", 88, 10)


def test_what_other_sessions_do_is_not_the_persons():
    s = selected_lavoro()
    out = s.upstream_data(b"* 1 FETCH (FLAGS (\\Seen))\r\n* 2 EXPUNGE\r\n")  # unsolicited
    assert rows(out) == []
    s.client_data(b"n1 NOOP\r\n")
    out = s.upstream_data(b"* 3 EXISTS\r\n* 1 EXPUNGE\r\nn1 OK done\r\n")
    assert rows(out) == []


def test_folder_rows_and_failures_give_none():
    s = logged_in(upstream_caps=CAPS)
    s.client_data(b'k1 CREATE "Lavoro/Nuova"\r\nd1 DELETE Vecchia\r\nk2 CREATE Esiste\r\n')
    out = s.upstream_data(b"k1 OK Create completed\r\nd1 OK Delete completed\r\nk2 NO [ALREADYEXISTS] exists\r\n")
    assert rows(out) == [("folder_create", "Lavoro/Nuova", None, {}), ("folder_delete", "Vecchia", None, {})]
    s.client_data(b"r1 RENAME Contabilit&AOA- Conti\r\n")
    out = s.upstream_data(b"PECGW.r1 OK done\r\n")  # its subfolders listed: none
    out = s.upstream_data(b"r1 OK Rename completed\r\n")
    assert rows(out) == [("folder_rename", "Contabilità", None, {"to": "Conti"})]
    s.client_data(b"s1 EXAMINE Manca\r\n")
    assert rows(s.upstream_data(b"s1 NO Mailbox doesn't exist\r\n")) == []


def test_fail_closed_while_the_audit_store_cannot_take_rows():
    s = selected_lavoro()
    store_up = [False]
    s.audit_accepting = lambda: store_up[0]
    out = s.client_data(b"f1 FETCH 1 BODY.PEEK[]\r\nn1 NOOP\r\n")
    assert sent(out, act.SendToUpstream) == b"n1 NOOP\r\n"  # what needs no row still works
    assert sent(out).startswith(b"f1 NO [UNAVAILABLE] The audit trail cannot be written now")
    store_up[0] = True
    assert sent(s.client_data(b"f2 FETCH 1 BODY.PEEK[]\r\n"), act.SendToUpstream) == b"f2 FETCH 1 BODY.PEEK[]\r\n"


def test_no_login_while_the_audit_store_cannot_take_rows():
    from tests.unit.transcript import new_session

    s = new_session()
    s.audit_accepting = lambda: False
    out = s.client_data(b"a1 LOGIN alice pw123456\r\n")
    assert sent(out).startswith(b"a1 NO [UNAVAILABLE] The audit trail cannot be written now")
    assert not [a for a in out if isinstance(a, act.Login)]


def test_a_huge_subject_costs_little_and_controls_nothing():
    """Whoever sends a PEC chooses its Subject: decoding is bounded, escapes are dropped."""
    import time

    from gateway.imap_proxy.identity import identity_from_headers

    big = b"Subject: " + b"=?UTF-8?Q?abcdefgh?= " * 40_000 + b"\r\n\r\n"
    started = time.monotonic()
    ref = identity_from_headers(big, 1, 1)
    assert time.monotonic() - started < 1.0 and len(ref.subject) <= 998
    evil = identity_from_headers(b"Subject: =?UTF-8?Q?Fattura=1B]0;x=07=1B[2J?=\r\n\r\n", 1, 1)
    assert evil.subject == "Fattura]0;x[2J"
