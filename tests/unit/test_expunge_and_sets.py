"""Expunges, copies and moves whose rows must name exactly what the person removed or copied.

* Another session's expunge reported in the reply to the person's EXPUNGE is not theirs.
* CLOSE expunges without saying what: the gateway asks first and expunges itself.
* A provider without UIDPLUS sends no COPYUID: the rows name the source messages anyway.
* A set of any size (``1:*`` over a hundred thousand messages) gives its rows, never zero.
(See gateway/imap_proxy/expunge_plan.py and sequence_set.py.)
"""

from gateway.imap_proxy import actions as act
from gateway.imap_proxy.identity import IDENTITY_ITEM
from tests.unit.test_audit_trail import identity, mapped, rows, selected_lavoro
from tests.unit.test_audit_trail_edges import prime3
from tests.unit.test_enforce_table import CAPS
from tests.unit.transcript import answer_lookups, audits, logged_in, sent

#: A provider with neither UIDPLUS nor UNSELECT (RFC 3501 alone, plus MOVE).
BARE = [c for c in CAPS if c not in ("UIDPLUS", "UNSELECT")]


def test_another_sessions_expunge_in_the_persons_reply_is_not_theirs():
    s = selected_lavoro(prime3())
    out = s.client_data(b"x1 EXPUNGE\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.n1 NOOP\r\nPECGW.x1 SEARCH DELETED\r\n" and s.reading_paused
    out = s.upstream_data(b"* SEARCH 3\r\nPECGW.x1 OK Search completed\r\n")  # by number
    assert sent(out, act.SendToUpstream) == b"PECGW.x2 FETCH 3 (UID)\r\n"  # which UID, never assumed
    out = s.upstream_data(b"* 3 FETCH (UID 39)\r\nPECGW.x2 OK done\r\n")
    assert sent(out) == b""  # the gateway's question is not shown
    assert sent(out, act.SendToUpstream) == b"x1 UID EXPUNGE 39\r\n"  # exactly what the person marked
    # a colleague expunged UID 31 a moment ago: the provider reports it first
    out = s.upstream_data(b"* 1 EXPUNGE\r\n* 2 EXPUNGE\r\nx1 OK Expunge completed\r\n")
    assert sent(out) == b"* 1 EXPUNGE\r\n* 2 EXPUNGE\r\nx1 OK Expunge completed\r\n"  # the client sees both
    assert [(r[0], r[2], r[3]) for r in rows(out)] == [("expunge", 39, {"by": "EXPUNGE"})]
    assert not s.reading_paused


def test_expunge_with_nothing_marked_removes_nothing_and_writes_nothing():
    s = selected_lavoro(prime3())
    s.client_data(b"x1 EXPUNGE\r\n")
    out = s.upstream_data(b"* SEARCH\r\nPECGW.x1 OK Search completed\r\n")
    assert sent(out, act.SendToUpstream) == b"x1 NOOP\r\n"
    out = s.upstream_data(b"* 1 EXPUNGE\r\nx1 OK NOOP completed\r\n")  # someone else's, relayed
    assert sent(out) == b"* 1 EXPUNGE\r\nx1 OK NOOP completed\r\n" and rows(out) == []


def test_a_failed_search_relays_the_expunge_and_records_every_reply():
    s = selected_lavoro(prime3())
    s.client_data(b"x1 EXPUNGE\r\n")
    out = s.upstream_data(b"PECGW.x1 NO Search failed\r\n")
    assert sent(out, act.SendToUpstream) == b"x1 EXPUNGE\r\n"
    out = s.upstream_data(b"* 1 EXPUNGE\r\nx1 OK Expunge completed\r\n")
    assert [(r[0], r[2]) for r in rows(out)] == [("expunge", 31)]  # over-recorded rather than lost


def test_uid_expunge_rows_only_for_its_own_set():
    s = selected_lavoro(prime3())
    out = s.client_data(b"x1 UID EXPUNGE 39\r\n")
    # a NOOP first: expunges pending from other sessions are reported before the person's command
    assert sent(out, act.SendToUpstream) == b"PECGW.n1 NOOP\r\n"
    out = s.upstream_data(b"* 1 EXPUNGE\r\nPECGW.n1 OK done\r\n")  # a colleague's: relayed, not hers
    assert sent(out) == b"* 1 EXPUNGE\r\n" and rows(out) == []
    assert sent(out, act.SendToUpstream) == b"x1 UID EXPUNGE 39\r\n"
    out = s.upstream_data(b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nx1 OK Expunge completed\r\n")  # 35 (not named), 39
    assert [(r[0], r[2]) for r in rows(out)] == [("expunge", 39)]


def test_close_is_expunged_by_the_gateway_and_every_message_gets_its_row():
    s = selected_lavoro(prime3())
    out = s.client_data(b"c1 CLOSE\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.n1 NOOP\r\nPECGW.x1 SEARCH DELETED\r\n"
    s.upstream_data(b"* SEARCH 2 3\r\nPECGW.x1 OK Search completed\r\n")
    out = s.upstream_data(b"* 2 FETCH (UID 35)\r\n* 3 FETCH (UID 39)\r\nPECGW.x2 OK done\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.e3 UID EXPUNGE 35,39\r\nc1 UNSELECT\r\n"
    out = s.upstream_data(b"* 2 EXPUNGE\r\n* 2 EXPUNGE\r\nPECGW.e3 OK Expunge completed\r\n"
                          b"c1 OK Unselect completed\r\n")
    assert sent(out) == b"c1 OK Unselect completed\r\n"  # RFC 3501 §6.4.2: CLOSE sends no EXPUNGE
    assert [(r[0], r[1], r[2], r[3]) for r in rows(out)] == [
        ("expunge", "Lavoro", 35, {"by": "CLOSE"}), ("expunge", "Lavoro", 39, {"by": "CLOSE"})]
    out = s.client_data(b"f1 FETCH 1 FLAGS\r\n")  # nothing is selected any more
    assert sent(out, act.SendToUpstream) == b"" and sent(out).startswith(b"f1 BAD")


def test_close_with_nothing_marked_is_an_unselect():
    s = selected_lavoro(prime3())
    s.client_data(b"c1 CLOSE\r\n")
    out = s.upstream_data(b"* SEARCH\r\nPECGW.x1 OK Search completed\r\n")
    assert sent(out, act.SendToUpstream) == b"c1 UNSELECT\r\n"
    assert rows(s.upstream_data(b"c1 OK Unselect completed\r\n")) == []


def test_close_of_an_examined_folder_is_relayed_as_it_came():
    s = logged_in(upstream_caps=CAPS)
    s.client_data(b"s1 EXAMINE Lavoro\r\n")
    out = s.upstream_data(b"* 0 EXISTS\r\ns1 OK [READ-ONLY] done\r\n")
    out = s.client_data(b"c1 CLOSE\r\n")
    assert sent(out, act.SendToUpstream) == b"c1 CLOSE\r\n"  # EXAMINE'd: CLOSE expunges nothing


def test_without_uidplus_close_is_preceded_by_the_gateways_expunge():
    s = selected_lavoro(prime3(), caps=BARE)
    out = s.client_data(b"c1 CLOSE\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.e1 EXPUNGE\r\nc1 CLOSE\r\n"
    out = s.upstream_data(b"* 3 EXPUNGE\r\nPECGW.e1 OK Expunge completed\r\nc1 OK Close completed\r\n")
    assert sent(out) == b"c1 OK Close completed\r\n"
    assert [(r[0], r[2], r[3]) for r in rows(out)] == [("expunge", 39, {"by": "CLOSE"})]


def test_without_uidplus_expunge_is_relayed_and_its_replies_recorded():
    s = selected_lavoro(prime3(), caps=BARE)
    out = s.client_data(b"x1 EXPUNGE\r\n")
    assert sent(out, act.SendToUpstream) == b"x1 EXPUNGE\r\n"
    out = s.upstream_data(b"* 1 EXPUNGE\r\nx1 OK Expunge completed\r\n")
    assert [(r[0], r[2]) for r in rows(out)] == [("expunge", 31)]


def test_copy_without_copyuid_names_the_source_messages():
    s = selected_lavoro(prime3(), caps=BARE)
    s.client_data(b"c1 COPY 2:* Archivio\r\n")
    out = s.upstream_data(b"c1 OK Copy completed\r\n")
    assert rows(out) == [("copy", "Lavoro", 35, {"to": "Archivio", "to_uidvalidity": None, "to_uid": None}),
                         ("copy", "Lavoro", 39, {"to": "Archivio", "to_uidvalidity": None, "to_uid": None})]


def test_move_without_copyuid_names_what_its_expunges_removed():
    s = selected_lavoro(prime3(), caps=BARE)
    s.client_data(b"m1 UID MOVE 35,39 Archivio\r\n")
    # the provider also reports a colleague's expunge of UID 31 first: not moved by the person
    out = s.upstream_data(b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nm1 OK Move completed\r\n")
    assert rows(out) == [("move", "Lavoro", 35, {"to": "Archivio", "to_uid": None}),
                         ("move", "Lavoro", 39, {"to": "Archivio", "to_uid": None})]


def big_folder(count: int):
    """Lavoro with ``count`` messages (UIDs 1..count), mapped by the gateway's own search."""
    s = logged_in(upstream_caps=CAPS)
    s.client_data(b"s1 SELECT Lavoro\r\n")
    s.upstream_data(b"* %d EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n" % count)
    out = s.upstream_data(mapped(*range(1, count + 1)) + b"PECGW.s1 OK Fetch completed\r\n")
    lookup = sent(out, act.SendToUpstream)
    assert lookup == b"PECGW.i2 FETCH %d:%d (UID %s)\r\n" % (count - 4999, count, IDENTITY_ITEM.encode())
    s.upstream_data(b"PECGW.i2 OK Fetch completed\r\n")
    return s


def test_a_set_of_any_size_gives_its_rows():
    """``1:*`` over 120 000 messages, and a UID range to 4294967295: rows, never none."""
    s = big_folder(120_000)
    s.client_data(b"t1 STORE 1:* +FLAGS.SILENT (\\Seen)\r\n")
    out = answer_lookups(s, s.upstream_data(b"t1 OK Store completed\r\n"))
    flagged = [r[2] for r in rows(out)]
    assert len(flagged) == 120_000 and flagged[0] == 1 and flagged[-1] == 120_000
    s.client_data(b"f1 UID FETCH 119999:4294967295 (FLAGS)\r\n")
    out = s.upstream_data(b"* 119999 FETCH (UID 119999 FLAGS (\\Seen))\r\n"
                          b"* 120000 FETCH (UID 120000 FLAGS (\\Seen))\r\nf1 OK Fetch completed\r\n")
    out += answer_lookups(s, out)
    assert [(r[0], r[2]) for r in rows(out)] == [("fetch", 119999), ("fetch", 120000)]
    s.client_data(b"c1 UID COPY 1:* Archivio\r\n")
    out = s.upstream_data(b"c1 OK [COPYUID 88 1:120000 1:120000] Copy completed\r\n")
    out += answer_lookups(s, out)
    assert len(rows(out)) == 120_000


def test_a_copyuid_naming_more_messages_than_the_folder_holds_is_not_expanded():
    s = selected_lavoro(prime3())
    s.client_data(b"c1 UID COPY 31 Archivio\r\n")
    out = s.upstream_data(b"c1 OK [COPYUID 88 1:4294967295 1:4294967295] Copy completed\r\n")
    assert rows(out) == []  # nonsense from the provider: nothing believed, nothing allocated


def test_uid_expunge_of_a_message_only_the_noop_announces_names_it():
    """Seed 18: a colleague appends (already marked \\Deleted); the person's UID EXPUNGE names it
    (the client learnt its UID elsewhere).  The NOOP first announces it (* 4 EXISTS): the gateway
    asks who it is before the expunge, so the row names it."""
    s = selected_lavoro(prime3())
    s.client_data(b"x1 UID EXPUNGE 40\r\n")
    out = s.upstream_data(b"* 4 EXISTS\r\nPECGW.n1 OK done\r\n")
    assert sent(out) == b"* 4 EXISTS\r\n"
    (line,) = [x for x in sent(out, act.SendToUpstream).split(b"\r\n") if x]
    assert line.startswith(b"PECGW.x1 FETCH 4 (UID ")
    out = s.upstream_data(identity(4, 40, b"Message-ID: <m40@x>\r\n\r\n") + b"PECGW.x1 OK done\r\n")
    assert sent(out, act.SendToUpstream) == b"x1 UID EXPUNGE 40\r\n"
    out = s.upstream_data(b"* 4 EXPUNGE\r\nx1 OK done\r\n")
    (row,) = audits(out)
    assert (row.action, row.message.uid, row.message.message_id) == ("expunge", 40, "<m40@x>")
