"""Per-message audit rows from the pure session: commands in, provider replies in, rows out."""

from __future__ import annotations

from tests.unit.test_enforce_table import CAPS
from tests.unit.transcript import audits, logged_in


def rows(out) -> list[tuple]:
    return [(e.action, e.folder, e.message.uid if e.message else None, e.detail) for e in audits(out)]


def selected_lavoro():
    s = logged_in(upstream_caps=CAPS)  # alice may do everything (tests/unit/policies.OPEN)
    s.client_data(b"s1 SELECT Lavoro\r\n")
    out = s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] UIDs valid\r\n"
                          b"* OK [UIDNEXT 40] Predicted next UID\r\ns1 OK [READ-WRITE] Select completed\r\n")
    assert rows(out) == [("select", "Lavoro", None, {"uidvalidity": 1700, "messages": 3})]
    return s


def test_fetch_rows_per_message_tell_body_from_metadata():
    s = selected_lavoro()
    s.client_data(b"f1 UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
    out = s.upstream_data(b'* 1 FETCH (UID 31 FLAGS () BODY[HEADER.FIELDS (SUBJECT)] {4}\r\nab\r\n)\r\n'
                          b'* 2 FETCH (UID 35 FLAGS (\\Seen) BODY[HEADER.FIELDS (SUBJECT)] {4}\r\ncd\r\n)\r\n'
                          b"f1 OK Fetch completed\r\n")
    assert [(a, f, u, d["content"]) for a, f, u, d in rows(out)] == [
        ("fetch", "Lavoro", 31, "headers"), ("fetch", "Lavoro", 35, "headers")]
    assert all(e.message.uidvalidity == 1700 for e in audits(out))
    s.client_data(b"f2 FETCH 2 BODY.PEEK[]\r\n")  # by sequence number: the UID comes from the view
    out = s.upstream_data(b"* 2 FETCH (BODY[] {5}\r\nhello)\r\nf2 OK done\r\n")
    assert rows(out) == [("fetch", "Lavoro", 35, {"content": "body", "items": ["BODY[]"]})]


def test_flag_changes_with_and_without_silent():
    s = selected_lavoro()
    s.client_data(b"f0 FETCH 1:3 (UID)\r\n")
    s.upstream_data(b"* 1 FETCH (UID 31)\r\n* 2 FETCH (UID 35)\r\n* 3 FETCH (UID 39)\r\nf0 OK done\r\n")
    s.client_data(b"t1 STORE 2 +FLAGS (\\Flagged)\r\n")
    out = s.upstream_data(b"* 2 FETCH (FLAGS (\\Flagged \\Seen))\r\nt1 OK Store completed\r\n")
    assert rows(out) == [("flags", "Lavoro", 35, {"change": "+FLAGS", "flags": "\\Flagged",
                                                  "now": ["\\Flagged", "\\Seen"]})]
    s.client_data(b"t2 UID STORE 35:* -FLAGS.SILENT (\\Seen)\r\n")
    out = s.upstream_data(b"t2 OK Store completed\r\n")
    assert rows(out) == [("flags", "Lavoro", 35, {"change": "-FLAGS", "flags": "\\Seen", "now": None}),
                         ("flags", "Lavoro", 39, {"change": "-FLAGS", "flags": "\\Seen", "now": None})]


def test_copy_move_append_and_expunge_rows():
    s = selected_lavoro()
    s.client_data(b"f0 FETCH 1:3 (UID)\r\n")
    s.upstream_data(b"* 1 FETCH (UID 31)\r\n* 2 FETCH (UID 35)\r\n* 3 FETCH (UID 39)\r\nf0 OK done\r\n")
    s.client_data(b"c1 UID COPY 31,35 Archivio\r\n")
    out = s.upstream_data(b"c1 OK [COPYUID 88 31,35 7:8] Copy completed\r\n")
    assert rows(out) == [("copy", "Lavoro", 31, {"to": "Archivio", "to_uidvalidity": 88, "to_uid": 7}),
                         ("copy", "Lavoro", 35, {"to": "Archivio", "to_uidvalidity": 88, "to_uid": 8})]
    s.client_data(b"m1 MOVE 1 Archivio\r\n")
    out = s.upstream_data(b"* OK [COPYUID 88 31 9] Moved\r\n* 1 EXPUNGE\r\nm1 OK Move completed\r\n")
    assert rows(out) == [("move", "Lavoro", 31, {"to": "Archivio", "to_uid": 9})]  # no separate expunge row
    s.client_data(b"x1 EXPUNGE\r\n")
    out = s.upstream_data(b"* 2 EXPUNGE\r\nx1 OK Expunge completed\r\n")  # seq 2 is now UID 39
    assert rows(out) == [("expunge", "Lavoro", 39, {"by": "EXPUNGE"})]
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
