"""Audit-trail cases found in review of the expunge, set and receipt-identity work, each a
transcript of the pure session: the gateway's own commands never let the provider renumber the
folder under the client, never grow past a line limit, never show their answers; and rows are
named and kept in the corners (pipelined SELECT+CLOSE, a reload, a deep MIME structure).
"""

from __future__ import annotations

import re

from gateway.imap_proxy import actions as act
from gateway.imap_proxy.identity import IDENTITY_ITEM
from gateway.imap_proxy.sequence_set import MAX_SET_TEXT
from gateway.live_policy import LivePolicy
from tests.unit.test_audit_trail import identity, mapped, rows, selected_lavoro
from tests.unit.test_audit_trail_edges import prime3
from tests.unit.test_enforce_responses import policy
from tests.unit.test_enforce_table import CAPS
from tests.unit.transcript import audits, logged_in, sent


def upstream_lines(out) -> list[bytes]:
    return [line + b"\r\n" for line in sent(out, act.SendToUpstream).split(b"\r\n") if line]


def own_tags(out, kind: bytes) -> list[bytes]:
    return [line.split(b" ", 1)[0] for line in upstream_lines(out) if line.startswith(b"PECGW." + kind)]


def test_the_gateways_own_commands_never_let_an_expunge_renumber_the_clients_commands():
    """RFC 3501 §7.4.1: no EXPUNGE while no command is in progress, nor during FETCH or SEARCH.
    The gateway's own questions are FETCH and SEARCH by number, so a colleague's pending expunge
    cannot come with their answers and retarget a STORE the client has already sent."""
    s = logged_in(upstream_caps=CAPS)
    s.client_data(b"s1 SELECT Lavoro\r\n")
    out = s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n")
    out += s.client_data(b"t1 STORE 2 +FLAGS (\\Deleted)\r\nx1 EXPUNGE\r\n")
    own = [line for line in upstream_lines(out) if line.startswith(b"PECGW.")]
    assert own and not any(b" UID " in line for line in own), own


def test_a_nil_answer_to_the_gateways_identity_fetch_is_not_shown_to_the_client():
    """Dovecot answers ``* 4 FETCH (UID 40 BODY[HEADER.FIELDS (...)]<0> NIL)`` with
    ``OK [EXPUNGEISSUED]`` when another session expunged the message meanwhile."""
    s = selected_lavoro(prime3())
    s.upstream_data(b"* 4 EXISTS\r\n")
    out = s.client_data(b"f1 FETCH 4 (FLAGS)\r\n")  # the new message is asked about first
    (tag,) = own_tags(out, b"i")
    item = re.search(rb"BODY\.PEEK(\[HEADER\.FIELDS \([^)]*\)\])", sent(out, act.SendToUpstream)).group(1)
    out = s.upstream_data(b"* 4 FETCH (UID 40 BODY%s<0> NIL)\r\n%s OK [EXPUNGEISSUED] done\r\n" % (item, tag))
    assert sent(out) == b""  # not shown; the client's FETCH goes now
    assert sent(out, act.SendToUpstream) == b"f1 FETCH 4 (FLAGS)\r\n"


def sparse_folder(count: int):
    """Lavoro with ``count`` messages, UIDs 1, 3, 5, ... (every other one once deleted)."""
    s = logged_in(upstream_caps=CAPS)
    s.client_data(b"s1 SELECT Lavoro\r\n")
    s.upstream_data(b"* %d EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n" % count)
    uids = [1 + 2 * i for i in range(count)]
    out = s.upstream_data(mapped(*uids) + b"PECGW.s1 OK done\r\n")
    for tag in own_tags(out, b"i"):
        s.upstream_data(b"%s OK done\r\n" % tag)  # the provider names none: nothing cached
    assert not s.reading_paused
    return s, uids


def test_identity_lookups_of_many_scattered_messages_stay_within_a_line_limit():
    s, uids = sparse_folder(12000)
    every_other = b",".join(b"%d" % u for u in uids[::2])  # messages 1, 3, 5, ...: scattered numbers
    s.client_data(b"t1 UID STORE " + every_other + b" +FLAGS.SILENT (\\Seen)\r\n")
    out = s.upstream_data(b"t1 OK done\r\n")
    lines = [line for line in upstream_lines(out) if line.startswith(b"PECGW.")]
    assert len(lines) > 1 and all(len(line) < MAX_SET_TEXT + 200 for line in lines)


def test_close_with_many_scattered_deleted_messages_stays_within_a_line_limit():
    s, uids = sparse_folder(6000)
    (search,) = own_tags(s.client_data(b"c1 CLOSE\r\n"), b"x")
    numbers = list(range(1, 6001, 2))  # every other message marked: scattered UIDs
    out = s.upstream_data(b"* SEARCH %s\r\n%s OK done\r\n" % (b" ".join(b"%d" % n for n in numbers), search))
    # the identities of those leaving are asked first, by number, in one bounded line
    (ask,) = own_tags(out, b"x")
    assert all(len(line) < MAX_SET_TEXT + 200 for line in upstream_lines(out))
    out = s.upstream_data(b"%s OK done\r\n" % ask)
    # too many to name in one line: the gateway's plain EXPUNGE, rows still only for those marked
    (own,) = own_tags(out, b"e")
    assert upstream_lines(out) == [own + b" EXPUNGE\r\n", b"c1 UNSELECT\r\n"]
    gone = b"".join(b"* %d EXPUNGE\r\n" % (n - i) for i, n in enumerate(numbers[:3]))
    colleague = b"* 1 EXPUNGE\r\n"  # message 2 (UID 3, not marked here) expunged by another session
    out = s.upstream_data(gone + colleague + own + b" OK done\r\nc1 OK done\r\n")
    assert [r[2] for r in rows(out)] == [uids[0], uids[2], uids[4]]


def test_a_refused_own_expunge_for_close_is_said_to_the_client():
    s = selected_lavoro(prime3())
    s.client_data(b"c1 CLOSE\r\n")
    s.upstream_data(b"* SEARCH 2\r\nPECGW.x1 OK done\r\n")
    out = s.upstream_data(b"* 2 FETCH (UID 35)\r\nPECGW.x2 OK done\r\n")
    assert upstream_lines(out) == [b"PECGW.e3 UID EXPUNGE 35\r\n", b"c1 UNSELECT\r\n"]
    out = s.upstream_data(b"PECGW.e3 NO [EXPUNGEISSUED] Some messages were not expunged\r\nc1 OK done\r\n")
    assert sent(out) == (b"* NO The messages marked for deletion were not expunged: Some messages were not "
                         b"expunged\r\nc1 OK done\r\n")


def test_close_pipelined_after_select_names_the_messages_it_removes():
    """The held CLOSE's question runs before the priming: the gateway asks which UIDs (and who)
    the marked messages are before they leave."""
    s = logged_in(upstream_caps=CAPS)
    out = s.client_data(b"s1 SELECT Lavoro\r\nc1 CLOSE\r\n")
    out = s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n")
    assert upstream_lines(out) == [b"PECGW.n1 NOOP\r\n", b"PECGW.x1 SEARCH DELETED\r\n"]
    out = s.upstream_data(b"* SEARCH 3\r\nPECGW.x1 OK done\r\n")
    assert upstream_lines(out) == [b"PECGW.x2 FETCH 3 (UID %s)\r\n" % IDENTITY_ITEM.encode()]
    out = s.upstream_data(identity(3, 39, b"Message-ID: <m39@x>\r\n\r\n") + b"PECGW.x2 OK done\r\n")
    assert upstream_lines(out) == [b"PECGW.e3 UID EXPUNGE 39\r\n", b"c1 UNSELECT\r\n"]
    out = s.upstream_data(b"* 3 EXPUNGE\r\nPECGW.e3 OK done\r\nc1 OK done\r\n")
    (row,) = audits(out)
    assert (row.action, row.message.uid, row.message.message_id, row.detail) == (
        "expunge", 39, "<m39@x>", {"by": "CLOSE"})


def test_a_silent_store_on_a_new_message_gets_a_row_that_names_it():
    s = selected_lavoro(prime3())
    s.upstream_data(b"* 4 EXISTS\r\n")  # UID not known yet
    out = s.client_data(b"t1 UID STORE 40 +FLAGS.SILENT (\\Flagged)\r\n")  # the client knows it already
    (tag,) = own_tags(out, b"i")  # the gateway asks before reading the STORE
    assert upstream_lines(out) == [tag + b" FETCH 4 (UID %s)\r\n" % IDENTITY_ITEM.encode()]
    out = s.upstream_data(identity(4, 40, b"Message-ID: <m40@x>\r\n\r\n") + tag + b" OK done\r\n")
    assert upstream_lines(out) == [b"t1 UID STORE 40 +FLAGS.SILENT (\\Flagged)\r\n"]
    out = s.upstream_data(b"t1 OK done\r\n")
    (row,) = audits(out)
    assert (row.action, row.message.uid, row.message.message_id) == ("flags", 40, "<m40@x>")


def test_one_message_per_append():
    s = selected_lavoro(prime3())
    out = s.client_data(b"a1 APPEND Lavoro {3+}\r\nabc {3+}\r\ndef\r\n")
    assert sent(out) == b"a1 NO [CANNOT] One message per APPEND through the gateway\r\n"
    assert sent(out, act.SendToUpstream) == b""
    out = s.client_data(b"a2 APPEND {6+}\r\nLavoro {3+}\r\nabc\r\n")  # a literal mailbox name is not a message
    assert sent(out, act.SendToUpstream).startswith(b"a2 APPEND {6}")


def test_the_saved_search_result_is_refused_where_it_decides_the_rows():
    s = selected_lavoro(prime3())
    for command in (b"UID STORE $ +FLAGS.SILENT (\\Deleted)", b"FETCH $ (FLAGS)", b"UID COPY 1,$ Archivio",
                    b"UID EXPUNGE $"):
        out = s.client_data(b"t1 " + command + b"\r\n")
        assert sent(out).startswith(b"t1 BAD The saved search result ($) is not available")
        assert sent(out, act.SendToUpstream) == b""


def test_a_body_fetched_with_a_structure_too_deep_to_read_still_gets_its_row():
    leaf = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 1 NIL NIL NIL NIL)'
    structure = leaf
    for i in range(100):  # Dovecot's BODYSTRUCTURE of 100 nested multipart/mixed
        structure = b'(%s "mixed" ("boundary" "b%d") NIL NIL NIL)' % (structure, i)
    s = selected_lavoro(prime3())
    s.client_data(b"f1 FETCH 1 (BODYSTRUCTURE BODY.PEEK[])\r\n")
    out = s.upstream_data(b"* 1 FETCH (BODYSTRUCTURE %s BODY[] {5}\r\nhello)\r\nf1 OK done\r\n" % structure)
    assert sent(out).startswith(b"* 1 FETCH (BODYSTRUCTURE")  # relayed as it came
    assert [(r[0], r[2], r[3]["content"]) for r in rows(out)] == [("fetch", 31, "unknown")]


def test_a_reload_withdrawing_the_folder_keeps_the_rows_of_the_expunge_already_going():
    live = LivePolicy.fixed(policy([("Lavoro", "lrswipkxtea"), ("INBOX", "lrswipkxtea")]))
    s = logged_in(upstream_caps=CAPS, policy=live)
    s.client_data(b"s1 SELECT Lavoro\r\n")
    s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n")
    s.upstream_data(mapped(31, 35, 39) + b"PECGW.s1 OK done\r\n")
    s.upstream_data(prime3() + b"PECGW.i2 OK done\r\n")
    s.upstream_data(b"PECGW.b3 OK done\r\n")  # the receipt among them: no daticert
    s.client_data(b"x1 EXPUNGE\r\nn1 NOOP\r\n")
    live.current = policy([("Lavoro", ""), ("INBOX", "lrswipkxtea")], "<reloaded>")  # a SIGHUP
    s.upstream_data(b"* SEARCH 3\r\nPECGW.x1 OK done\r\n")
    out = s.upstream_data(b"* 3 FETCH (UID 39)\r\nPECGW.x2 OK done\r\n")
    assert upstream_lines(out)[0] == b"x1 UID EXPUNGE 39\r\n"
    out = s.upstream_data(b"* 3 EXPUNGE\r\nx1 OK Expunge completed\r\n")
    assert [(e.action, e.message.uid if e.message else None) for e in audits(out)
            if e.action == "expunge"] == [("expunge", 39)]


def test_a_client_that_leaves_mid_expunge_still_gets_its_rows():
    """The client sends UID EXPUNGE and drops the connection before the reply: the provider
    does expunge, so its replies are still read for the rows, and only then the session ends."""
    s = selected_lavoro(prime3())
    s.client_data(b"x1 UID EXPUNGE 39\r\nn1 NOOP\r\n")
    s.upstream_data(b"PECGW.n1 OK done\r\n")  # the gateway's NOOP first; then x1 goes up
    out = s.client_closed()
    assert not any(isinstance(a, act.Close) for a in out) and s.draining and s.reading_paused
    out = s.upstream_data(b"* 3 EXPUNGE\r\nx1 OK Expunge completed\r\n")
    assert sent(out) == b""  # nobody to send to
    assert [(r[0], r[2]) for r in rows(out)] == [("expunge", 39), ("logout", None)]
    assert any(isinstance(a, act.Close) for a in out)


def test_a_client_that_leaves_with_nothing_audited_running_is_closed_at_once():
    s = selected_lavoro(prime3())
    s.client_data(b"n1 NOOP\r\n")
    out = s.client_closed()
    assert any(isinstance(a, act.Close) for a in out) and not s.draining


def test_a_held_expunge_is_dropped_unsent_when_the_client_leaves():
    s = selected_lavoro(prime3())
    s.client_data(b"x1 EXPUNGE\r\n")  # held for the gateway's SEARCH DELETED
    out = s.client_closed()
    assert any(isinstance(a, act.Close) for a in out)
    out = s.upstream_data(b"* SEARCH 3\r\nPECGW.x1 OK done\r\n")
    assert sent(out, act.SendToUpstream) == b""  # the EXPUNGE never goes up


def test_a_message_arriving_while_the_gateway_asks_is_asked_about_next_not_a_hang():
    """A colleague's message arrives (``* 4 EXISTS``) while the gateway's identity lookup runs:
    when the lookup ends, the newcomer is the next question — the client must not be left
    unread with a question due and none sent."""
    s = logged_in(upstream_caps=CAPS)
    s.client_data(b"s1 SELECT Lavoro\r\n")
    s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n")
    out = s.upstream_data(mapped(31, 35, 39) + b"PECGW.s1 OK done\r\n")
    (lookup,) = own_tags(out, b"i")
    out = s.upstream_data(b"* 4 EXISTS\r\n" + lookup + b" OK done\r\n")
    (arrival,) = own_tags(out, b"i")
    assert upstream_lines(out) == [arrival + b" FETCH 4 (UID %s)\r\n" % IDENTITY_ITEM.encode()]
    s.upstream_data(identity(4, 40, b"Message-ID: <m40@x>\r\n\r\n") + arrival + b" OK done\r\n")
    assert not s.reading_paused


def test_a_newcomer_is_asked_about_even_when_the_folder_is_back_to_a_size_seen_before():
    """Found by the randomised test: a message expunged, another arriving, the folder has the
    size it had when the gateway last asked — the newcomer must still be asked about."""
    s = selected_lavoro(prime3())
    s.upstream_data(b"* 4 EXISTS\r\n")
    out = s.client_data(b"n1 NOOP\r\n")
    (ask,) = own_tags(out, b"i")
    s.upstream_data(identity(4, 40, b"Message-ID: <m40@x>\r\n\r\n") + ask + b" OK done\r\n")
    out = s.upstream_data(b"* 4 EXPUNGE\r\n* 4 EXISTS\r\nn1 OK done\r\n")  # 40 gone, 41 arrived: 4 again
    (ask,) = own_tags(out, b"i")  # asked at once, before the client is read again
    assert upstream_lines(out) == [ask + b" FETCH 4 (UID %s)\r\n" % IDENTITY_ITEM.encode()]
