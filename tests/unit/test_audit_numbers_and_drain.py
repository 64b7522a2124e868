"""The gateway's questions by number and the draining after a client leaves, in the corners a
review found: flag changes that must still reach the client, numbers that no longer hold after a
VANISHED, a SELECT in flight when a reload withdraws it, an internal error, unreadable replies.

Each docstring says what went wrong before the fix ("Was:"); the tests pin down the fixed
behaviour, plus cases suspected and found right.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from gateway.imap_proxy import actions as act
from gateway.imap_proxy.identity import IDENTITY_ITEM
from gateway.live_policy import LivePolicy
from tests.unit.fake_provider import provider_link, provider_sends
from tests.unit.test_audit_review_fixes import own_tags, upstream_lines
from tests.unit.test_audit_trail import identity, mapped, rows, selected_lavoro
from tests.unit.test_audit_trail_edges import prime3
from tests.unit.test_enforce_responses import policy
from tests.unit.test_enforce_table import CAPS
from tests.unit.transcript import answer_lookups, logged_in, sent

QRESYNC_CAPS = [*CAPS, "CONDSTORE", "QRESYNC"]


# ---------------------------------------------------------------- replies swallowed or shown


def test_a_flag_update_during_the_expunge_questions_fetch_reaches_the_client():
    """Was: while the held EXPUNGE's ``FETCH n (UID <identity>)`` runs, *every* untagged FETCH
    goes to ``DeletedQuestion.collect`` (session._on_upstream_frame matches on the name only),
    which hands what is not ``(UID u)`` to ``ids.absorb``: a colleague's flag change, which
    Dovecot reports during any FETCH (seen against Dovecot 2.3: ``* 3 FETCH (FLAGS (\\Deleted
    \\Recent))`` inside the reply to ``FETCH 1:* (UID)``), is swallowed and the client's flag
    cache goes stale (with CONDSTORE/QRESYNC, for good: its HIGHESTMODSEQ moves past it)."""
    s = selected_lavoro()  # nothing identified: the question fetches the marked message
    (search,) = own_tags(s.client_data(b"x1 EXPUNGE\r\n"), b"x")
    out = s.upstream_data(b"* SEARCH 2\r\n%s OK done\r\n" % search)
    (ask,) = own_tags(out, b"x")
    assert upstream_lines(out) == [ask + b" FETCH 2 (UID %s)\r\n" % IDENTITY_ITEM.encode()]
    colleague = b"* 3 FETCH (FLAGS (\\Seen \\Recent))\r\n"
    out = s.upstream_data(identity(2, 35, b"Message-ID: <m35@x>\r\n\r\n") + colleague + ask + b" OK done\r\n")
    assert upstream_lines(out) == [b"x1 UID EXPUNGE 35\r\n"]
    assert colleague in sent(out)


def test_a_qresync_flag_update_during_the_expunge_questions_fetch_reaches_the_client():
    """Was: the same with QRESYNC enabled, where Dovecot's unsolicited flag update carries
    UID and MODSEQ (``* 1 FETCH (UID 2 MODSEQ (9) FLAGS (...))``, seen against Dovecot 2.3)."""
    s = selected_lavoro(caps=QRESYNC_CAPS)
    s.client_data(b"e1 ENABLE QRESYNC\r\n")
    s.upstream_data(b"* ENABLED QRESYNC\r\ne1 OK Enabled\r\n")
    s.client_data(b"x1 EXPUNGE\r\n")
    out = s.upstream_data(b"* SEARCH 2\r\nPECGW.x1 OK done\r\n")
    (ask,) = own_tags(out, b"x")
    colleague = b"* 1 FETCH (UID 31 MODSEQ (9) FLAGS (\\Flagged))\r\n"
    out = s.upstream_data(identity(2, 35, b"Message-ID: <m35@x>\r\n\r\n") + colleague + ask + b" OK done\r\n")
    assert colleague in sent(out)


def test_flag_updates_during_the_other_own_questions_do_reach_the_client():
    """Checked and right: during the priming map, the identity lookups and the SEARCH DELETED
    step, a colleague's flag update is relayed."""
    s = logged_in(upstream_caps=CAPS)
    s.client_data(b"s1 SELECT Lavoro\r\n")
    s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n")
    flag = b"* 2 FETCH (FLAGS (\\Flagged \\Recent))\r\n"
    out = s.upstream_data(mapped(31, 35, 39) + flag + b"PECGW.s1 OK done\r\n")
    assert sent(out) == flag
    (tag,) = own_tags(out, b"i")
    out = s.upstream_data(flag + tag + b" OK done\r\n")
    assert sent(out) == flag
    s.client_data(b"x1 EXPUNGE\r\n")
    out = s.upstream_data(b"* SEARCH\r\n" + flag + b"PECGW.x1 OK done\r\n")
    assert sent(out) == flag


def test_the_priming_map_with_modseq_is_not_shown_to_the_client():
    """Was (robustness; Dovecot 2.3 does not do this): a provider that adds MODSEQ to every
    FETCH reply once CONDSTORE is on (RFC 7162 does not require it for a FETCH without MODSEQ,
    see RFC 5162 erratum 1807, but RFC 4551-era servers may) answers ``FETCH 1:* (UID)`` with
    ``* n FETCH (UID u MODSEQ (m))``; ``_UID_ONLY`` does not match, and the gateway's whole
    map of the folder is relayed to a client that asked nothing (the mapping itself is still
    learnt, through AuditTrail._fetched)."""
    s = logged_in(upstream_caps=QRESYNC_CAPS)
    s.client_data(b"e1 ENABLE CONDSTORE\r\n")
    s.upstream_data(b"* ENABLED CONDSTORE\r\ne1 OK Enabled\r\n")
    s.client_data(b"s1 SELECT Lavoro\r\n")
    s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n")
    out = s.upstream_data(b"* 1 FETCH (UID 31 MODSEQ (5))\r\n* 2 FETCH (UID 35 MODSEQ (6))\r\n"
                          b"* 3 FETCH (UID 39 MODSEQ (7))\r\nPECGW.s1 OK done\r\n")
    assert s._trail.view.uids() == [31, 35, 39]
    assert sent(out) == b""


# ---------------------------------------------------------------- numbers that no longer hold


def _qresync_folder_with_a_vanished_newcomer():
    """Lavoro (31, 35, 39 identified) with QRESYNC on; three messages arrive (UIDs 40, 41, 42),
    the client reads 5 and 6 (41, 42: now identified); then another session moves 40 away,
    which the provider reports as ``* VANISHED 40`` (RFC 7162 §3.2.10).  The provider's folder
    is now 31 35 39 41 42; the gateway's view never learnt where 40 was."""
    s = selected_lavoro(prime3(), caps=QRESYNC_CAPS)
    s.client_data(b"e1 ENABLE QRESYNC\r\n")
    s.upstream_data(b"* ENABLED QRESYNC\r\ne1 OK Enabled\r\n")
    s.client_data(b"n1 NOOP\r\n")
    out = s.upstream_data(b"* 6 EXISTS\r\nn1 OK done\r\n")
    (ask,) = own_tags(out, b"i")  # the newcomers are asked about at once; 40 goes unnamed
    s.upstream_data(identity(5, 41, b"Message-ID: <m41@x>\r\n\r\n")
                    + identity(6, 42, b"Message-ID: <m42@x>\r\n\r\n") + ask + b" OK done\r\n")
    s.client_data(b"f1 FETCH 5:6 (UID FLAGS)\r\n")
    out = s.upstream_data(b"* 5 FETCH (UID 41 FLAGS ())\r\n* 6 FETCH (UID 42 FLAGS ())\r\nf1 OK done\r\n")
    answer_lookups(s, out)
    s.client_data(b"n2 NOOP\r\n")
    out = s.upstream_data(b"* VANISHED 40\r\nn2 OK done\r\n")
    # where 40 was is not known: the gateway forgets the numbers after it and maps the folder again
    (remap,) = own_tags(out, b"s")
    assert upstream_lines(out) == [remap + b" FETCH 1:* (UID)\r\n"] and s.reading_paused
    s.upstream_data(mapped(31, 35, 39, 41, 42) + remap + b" OK done\r\n")
    assert not s.reading_paused
    return s


def test_an_expunge_after_a_vanished_newcomer_removes_the_message_marked():
    """Was: the held EXPUNGE's ``SEARCH DELETED`` answers by number (5, which is UID 42 at the
    provider now); the view still maps 5 to UID 41, whose identity is cached, so no FETCH
    checks it and the gateway relays ``UID EXPUNGE 41``: the message the person marked stays,
    41 would go instead if anybody had marked it, and the rows name the wrong PEC.  Before
    983f541 the question was ``UID SEARCH DELETED``, immune to a drifted view."""
    s = _qresync_folder_with_a_vanished_newcomer()
    s.client_data(b"t1 UID STORE 42 +FLAGS.SILENT (\\Deleted)\r\n")
    out = s.upstream_data(b"t1 OK Store completed\r\n")
    assert [(r[0], r[2]) for r in rows(out)] == [("flags", 42)]
    s.client_data(b"x1 EXPUNGE\r\n")
    out = s.upstream_data(b"* SEARCH 5\r\nPECGW.x1 OK done\r\n")
    (ask,) = own_tags(out, b"x")  # every number found is asked its UID: the view may be stale
    assert upstream_lines(out) == [ask + b" FETCH 5 (UID)\r\n"]
    out = s.upstream_data(b"* 5 FETCH (UID 42)\r\n" + ask + b" OK done\r\n")
    assert upstream_lines(out)[-1] == b"x1 UID EXPUNGE 42\r\n"


def test_a_silent_store_by_number_after_a_vanished_newcomer_names_the_message_stored():
    """Was: same drift, for rows: ``STORE 5 +FLAGS.SILENT`` acts on UID 42 at the provider,
    and the row says UID 41 (MailboxView.vanished cannot drop a position whose UID it never
    learnt, so every later number is off by one)."""
    s = _qresync_folder_with_a_vanished_newcomer()
    s.client_data(b"t1 STORE 5 +FLAGS.SILENT (\\Flagged)\r\n")
    out = s.upstream_data(b"t1 OK Store completed\r\n")
    out += answer_lookups(s, out)
    flagged = [r[2] for r in rows(out) if r[0] == "flags"]
    assert flagged == [42]


# ---------------------------------------------------------------- deferred deselect


def test_a_select_in_flight_when_a_reload_withdraws_it_still_gets_its_row():
    """Was: the SELECT of Archivio is relayed (access granted), a reload then withdraws
    Archivio; the next command makes the gateway deselect after the commands in flight
    (AuditTrail.deselected: ``_deselect_after = {s2}``).  At s2's OK the deferred branch of
    AuditTrail.tagged runs ``_confirmed`` (which knows nothing of SELECT) instead of the select
    branch: the person was shown Archivio (EXISTS, UIDVALIDITY, OK) and no 'select' row is
    written; ``_selecting`` is also never cleared."""
    live = LivePolicy.fixed(policy([("Lavoro", "lrswipkxtea"), ("Archivio", "lrswipkxtea"),
                                    ("INBOX", "lrswipkxtea")]))
    s = logged_in(upstream_caps=CAPS, policy=live)
    s.client_data(b"s2 SELECT Archivio\r\n")
    live.current = policy([("Lavoro", "lrswipkxtea"), ("Archivio", ""), ("INBOX", "lrswipkxtea")], "<reloaded>")
    out = s.client_data(b"n1 NOOP\r\n")
    assert [a.event.action for a in out if isinstance(a, act.Audit)] == ["folder_withdrawn"]
    out = s.upstream_data(b"* 2 EXISTS\r\n* OK [UIDVALIDITY 88] x\r\ns2 OK [READ-WRITE] Select completed\r\n")
    assert (s._trail.folder, s._trail.view) == (None, None)  # the gateway deselected: right
    assert [(r[0], r[1]) for r in rows(out)] == [("select", "Archivio")]
    assert s._trail._selecting is None


def test_a_deferred_deselect_keeps_rows_of_a_select_followed_by_a_fetch():
    """Checked and right: with the SELECT not the last command in flight, its row is written,
    the FETCH after it is recorded in Archivio, and the folder goes when the FETCH is done."""
    live = LivePolicy.fixed(policy([("Archivio", "lrswipkxtea"), ("INBOX", "lrswipkxtea")]))
    s = logged_in(upstream_caps=CAPS, policy=live)
    s.client_data(b"s2 SELECT Archivio\r\nf2 FETCH 1 (FLAGS)\r\n")
    live.current = policy([("Archivio", ""), ("INBOX", "lrswipkxtea")], "<reloaded>")
    (deselect,) = own_tags(s.client_data(b"n1 NOOP\r\n"), b"d")
    out = s.upstream_data(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 88] x\r\ns2 OK [READ-WRITE] done\r\n"
                          b"* 1 FETCH (UID 7 FLAGS ())\r\nf2 OK done\r\n%s OK done\r\nn1 OK done\r\n" % deselect)
    assert [(r[0], r[1], r[2]) for r in rows(out)] == [("select", "Archivio", None), ("fetch", "Archivio", 7)]
    assert s._trail.folder is None


# ---------------------------------------------------------------- MULTIAPPEND


def test_single_appends_in_every_form_are_relayed():
    """Checked and right: ``_appended_messages`` counts a literal mailbox name out, and flags,
    a date, LITERAL+ and a quoted name with a space do not make a single APPEND look multiple."""
    s = selected_lavoro(prime3())
    forms = [b"a1 APPEND {7+}\r\nArchivio {3+}\r\nabc\r\n",
             b"a2 APPEND {7+}\r\nArchivio (\\Seen) \"01-Jan-2025 10:00:00 +0100\" {3+}\r\nabc\r\n",
             b"a3 APPEND Archivio (\\Seen \\Flagged) {3+}\r\nabc\r\n",
             b"a4 APPEND \"Archivio\" \"01-Jan-2025 10:00:00 +0100\" {3+}\r\nabc\r\n"]
    for n, form in enumerate(forms, 1):
        out = s.client_data(form)
        assert sent(out, act.SendToUpstream).startswith(b"a%d APPEND" % n), form
        s.upstream_data(b"+ OK\r\n")
        s.upstream_data(b"a%d OK [APPENDUID 88 %d] done\r\n" % (n, n))
    for form in (b"m1 APPEND {7+}\r\nArchivio {3+}\r\nabc {3+}\r\ndef\r\n",
                 b"m2 APPEND Archivio (\\Seen) {3+}\r\nabc () {3+}\r\ndef\r\n"):
        out = s.client_data(form)
        assert b"NO [CANNOT] One message per APPEND" in sent(out) and sent(out, act.SendToUpstream) == b""


# ---------------------------------------------------------------- draining


def test_draining_reads_replies_and_ends_with_the_logout_row_whatever_comes_in_flight():
    """Checked and right: IDLE pipelined after an audited command, a second client_closed(), a
    provider that closes while draining: the session ends, with the logout row, and nothing is
    sent to the client."""
    s = selected_lavoro(prime3())
    s.client_data(b"x1 UID EXPUNGE 39\r\ni1 IDLE\r\n")
    s.upstream_data(b"PECGW.n1 OK done\r\n")  # the gateway's NOOP before a UID EXPUNGE
    first = s.client_closed()
    assert not any(isinstance(a, act.Close) for a in first)
    assert s.draining and s.client_closed() == []  # a second call changes nothing
    out = s.upstream_data(b"+ idling\r\n* 3 EXPUNGE\r\nx1 OK done\r\n")
    assert sent(out) == b"" and [(r[0], r[2]) for r in rows(out)] == [("expunge", 39), ("logout", None)]
    s2 = selected_lavoro(prime3())
    s2.client_data(b"x1 UID EXPUNGE 39\r\n")
    s2.upstream_data(b"PECGW.n1 OK done\r\n")
    s2.client_closed()
    out = s2.upstream_closed()
    assert [r[0] for r in rows(out)] == ["logout"] and any(isinstance(a, act.Close) for a in out)


async def test_an_internal_error_on_provider_data_still_closes_the_session():
    """Was: server.Connection treats an internal error as the client leaving
    (``self.session.client_closed()``; the log says "closing this session").  Since c31f33a
    that enters draining whenever an audited command is in flight: the frame that raised (here
    the EXPUNGE's tagged reply) is gone, so the command never completes; the client, still
    connected, gets no byte (SendToClient dropped while draining) and is not read, until the
    provider has been silent for idle_timeout_s (31 minutes by default)."""
    from tests.unit.test_relay_hardening import make_conn

    conn, _reader, _writer = make_conn()
    conn.session = selected_lavoro(prime3())
    link = provider_link()
    conn.up = SimpleNamespace(link=link)
    link.attach(conn._on_upstream_data)
    conn.session.client_data(b"x1 UID EXPUNGE 39\r\n")

    def broken(tag, frame):
        raise RuntimeError("a bug somewhere in the audit trail")

    conn.session._trail.tagged = broken
    provider_sends(link, b"* 3 EXPUNGE\r\nx1 OK Expunge completed\r\n")
    await asyncio.sleep(0.05)
    assert conn._closed, "the session lives on, silent, after an internal error"


# ---------------------------------------------------------------- more on the gateway's own FETCH replies


def test_flags_merged_into_the_reply_to_an_identity_lookup_reach_the_client():
    """Was (provider-dependent; Dovecot 2.3 sends flag changes as a separate FETCH, some
    servers fold a changed message's FLAGS into whatever FETCH response they send for it, which
    RFC 3501 §7.4.2 allows): ``IdentityLookups._identity`` takes any reply carrying the identity
    item as the gateway's own, whole, so the flag change in it never reaches the client."""
    s = selected_lavoro(prime3())
    s.upstream_data(b"* 4 EXISTS\r\n")
    out = s.client_data(b"f1 FETCH 4 (FLAGS)\r\n")  # the newcomer is asked about before f1 goes
    (tag,) = own_tags(out, b"i")
    headers = b"Message-ID: <m40@x>\r\n\r\n"
    merged = b"* 4 FETCH (FLAGS (\\Deleted) UID 40 %s {%d}\r\n%s)\r\n" % (
        IDENTITY_ITEM.replace("BODY.PEEK", "BODY").replace(".16384>", ">").encode(), len(headers), headers)
    out = s.upstream_data(merged + tag + b" OK done\r\n")
    assert b"\\Deleted" in sent(out), "the colleague's \\Deleted never reaches the client"
    out = s.upstream_data(b"* 4 FETCH (FLAGS (\\Deleted))\r\nf1 OK done\r\n")
    assert [(r[0], r[2], r[4]) for r in _rows_with_ids(out)] == [("fetch", 40, "<m40@x>")]


def test_an_unreadable_uid_fetch_reply_of_a_new_message_still_gets_a_row():
    """Was: 983f541 writes a row with content 'unknown' for a FETCH reply the tokeniser cannot
    read; ``_unreadable_fetch`` finds the owner by the view's UID for the number, so for a
    ``UID FETCH`` of a message that arrived after the SELECT (its number not mapped yet: what
    mbsync and Thunderbird fetch) no command owns it and no row is written, although the body
    went to the person.  The UID is right there at the start of the line (``* 4 FETCH (UID 40
    BODYSTRUCTURE ...``)."""
    leaf = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 1 NIL NIL NIL NIL)'
    structure = leaf
    for i in range(100):
        structure = b'(%s "mixed" ("boundary" "b%d") NIL NIL NIL)' % (structure, i)
    s = selected_lavoro(prime3())
    s.upstream_data(b"* 4 EXISTS\r\n")
    out = s.client_data(b"f1 UID FETCH 40 (BODYSTRUCTURE BODY.PEEK[])\r\n")
    (tag,) = own_tags(out, b"i")
    s.upstream_data(tag + b" OK done\r\n")  # asked about the newcomer first; the provider names nothing
    out = s.upstream_data(b"* 4 FETCH (UID 40 BODYSTRUCTURE %s BODY[] {5}\r\nhello)\r\nf1 OK done\r\n" % structure)
    out += answer_lookups(s, out)
    assert sent(out).startswith(b"* 4 FETCH (UID 40 BODYSTRUCTURE")
    assert [(r[0], r[3].get("content")) for r in rows(out)] == [("fetch", "unknown")]


def _rows_with_ids(out) -> list[tuple]:
    from tests.unit.transcript import audits
    return [(e.action, e.folder, e.message.uid if e.message else None, e.detail,
             e.message.message_id if e.message else None) for e in audits(out)]
