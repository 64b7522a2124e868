"""Edge cases of the audit trail and the gateway's identity lookups, found in review.

Each was a wrong row (another session's change written as the person's, a UID shifted by an
expunge, a row twice) or a session whose client was never read again while rows waited.
"""

from gateway.imap_proxy import actions as act
from tests.unit.policies import fixed_policy
from tests.unit.test_audit_trail import BUSTA, RICEVUTA, identity, rows, selected_lavoro
from tests.unit.test_enforce_table import CAPS, POLICY
from tests.unit.transcript import audits, logged_in, sent


def prime3():
    return identity(1, 31, BUSTA) + identity(2, 35, RICEVUTA) + identity(3, 39, b"Message-ID: <m39@x>\r\n\r\n")


def test_unsolicited_fetch_during_a_fetch_is_not_a_fetch_row():
    s = selected_lavoro(prime3())
    s.client_data(b"f1 FETCH 1 BODY.PEEK[]\r\n")
    # another session set \Deleted on message 3; the provider reports it during f1 (RFC 3501 §7)
    out = s.upstream_data(b"* 1 FETCH (BODY[] {5}\r\nhello)\r\n* 3 FETCH (FLAGS (\\Deleted))\r\nf1 OK done\r\n")
    assert [(r[0], r[2]) for r in rows(out)] == [("fetch", 31)]


def test_unsolicited_fetch_during_a_store_is_not_a_flags_row():
    s = selected_lavoro(prime3())
    s.client_data(b"t1 STORE 1 +FLAGS (\\Flagged)\r\n")
    out = s.upstream_data(b"* 1 FETCH (FLAGS (\\Flagged))\r\n* 3 FETCH (FLAGS (\\Seen))\r\nt1 OK done\r\n")
    assert [(r[0], r[2]) for r in rows(out)] == [("flags", 31)]


def test_silent_store_with_condstore_gives_one_row_per_message():
    s = selected_lavoro(prime3())
    s.client_data(b"t1 UID STORE 35 (UNCHANGEDSINCE 9) +FLAGS.SILENT (\\Seen)\r\n")
    # RFC 7162 §3.2: with CONDSTORE the untagged FETCH (with MODSEQ) comes even for .SILENT
    out = s.upstream_data(b"* 2 FETCH (UID 35 MODSEQ (12))\r\nt1 OK Conditional Store completed\r\n")
    assert [(r[0], r[2]) for r in rows(out)] == [("flags", 35)]


def test_refused_idle_with_pending_prime_does_not_stop_reading_the_client():
    s = logged_in(upstream_caps=CAPS)
    s.client_data(b"s1 SELECT Lavoro\r\ni1 IDLE\r\n")
    s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n")
    out = s.upstream_data(b"i1 NO IDLE not now\r\n")
    # either the gateway primes now, or it reads the client: it must not do neither
    assert sent(out, act.SendToUpstream) or not s.reading_paused


def test_idle_ended_by_the_provider_with_pending_rows_does_not_hang():
    s = selected_lavoro(prime3())
    s.upstream_data(b"* 4 EXISTS\r\n")
    s.client_data(b"f1 FETCH 4 (FLAGS)\r\ni1 IDLE\r\n")
    s.upstream_data(b"PECGW.i4 OK done\r\n")  # asked about the newcomer, the provider names nothing
    s.upstream_data(b"* 4 FETCH (FLAGS ())\r\nf1 OK done\r\n+ idling\r\n")
    out = s.upstream_data(b"i1 OK IDLE terminated (server timeout)\r\n")
    assert sent(out, act.SendToUpstream) or not s.reading_paused


def test_refused_held_rename_with_pending_prime_does_not_hang():
    s = logged_in(upstream_caps=CAPS, policy=POLICY)
    # Lavoro/* may be deleted but "Lavoro" itself only lrswiket: rename Lavoro/A (has x) - check a hidden child
    s.client_data(b"s1 SELECT Lavoro\r\nr1 RENAME Lavoro/A Lavoro/B\r\n")
    out = s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n")
    listing = sent(out, act.SendToUpstream)
    assert listing.startswith(b"PECGW.r"), listing
    ltag = listing.split(b" ")[0]
    out = s.upstream_data(ltag + b" NO listing failed\r\n")  # LIST fails: the RENAME is refused locally
    assert b"r1 NO" in sent(out)
    assert sent(out, act.SendToUpstream) or not s.reading_paused


def test_rename_refused_for_a_subfolder_with_rows_pending_does_not_hang():
    policy = fixed_policy({"protocollo": {"rules": [
        {"office": "legale", "folders": "*", "rights": "lrswipkxtea"},
        {"office": "legale", "folders": "Lavoro/Riservata", "rights": "lr"}]}})
    s = logged_in(upstream_caps=CAPS, policy=policy)
    s.client_data(b"s1 SELECT Lavoro\r\nr1 RENAME Lavoro Pratiche\r\n")
    out = s.upstream_data(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] x\r\ns1 OK [READ-WRITE] done\r\n")
    listing = sent(out, act.SendToUpstream)
    assert listing.startswith(b"PECGW.r"), listing
    ltag = listing.split(b" ")[0]
    out = s.upstream_data(b'* LIST () "/" Lavoro/Riservata\r\n' + ltag + b" OK done\r\n")
    assert b"r1 NO [NOPERM]" in sent(out)  # refused by the policy: a subfolder may not move
    assert s.client_data(b"n1 NOOP\r\n") != [] or sent(out, act.SendToUpstream)  # the client is never read again


def test_logout_with_rows_pending_sends_nothing_after_logout():
    s = selected_lavoro(prime3())
    s.upstream_data(b"* 4 EXISTS\r\n")
    s.client_data(b"f1 FETCH 4 (FLAGS)\r\nl1 LOGOUT\r\n")
    s.upstream_data(b"* 4 FETCH (FLAGS ())\r\nf1 OK done\r\n")
    out = s.upstream_data(b"* BYE bye\r\nl1 OK Logout completed\r\n")
    assert sent(out, act.SendToUpstream) == b""


def test_pipelined_copy_after_select_names_the_new_folder():
    s = selected_lavoro(prime3())
    s.client_data(b"s2 SELECT Archivio\r\nc1 UID COPY 7 Lavoro\r\n")
    s.upstream_data(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 88] x\r\ns2 OK [READ-WRITE] done\r\n")
    out = s.upstream_data(b"c1 OK [COPYUID 1700 7 40] Copy completed\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.s4 FETCH 1:* (UID)\r\n"  # Archivio is mapped first
    out = s.upstream_data(b"* 1 FETCH (UID 7)\r\nPECGW.s4 OK done\r\n")
    out = s.upstream_data(identity(1, 7, b"Message-ID: <a7@x>\r\n\r\n") + b"PECGW.i5 OK done\r\n")
    (event,) = [e for e in audits(out) if e.action == "copy"]
    assert (event.folder, event.message.uidvalidity, event.message.uid, event.message.message_id) == (
        "Archivio", 88, 7, "<a7@x>")


def test_a_waiting_row_follows_an_expunge_and_stays_in_its_folder():
    s = selected_lavoro(prime3())
    s.upstream_data(b"* 5 EXISTS\r\n")  # two new messages, UIDs unknown
    out = s.client_data(b"f1 FETCH 4 BODY.PEEK[]\r\nx1 EXPUNGE\r\n")
    assert sent(out, act.SendToUpstream).startswith(b"PECGW.i4 FETCH 4:5 (UID ")  # newcomers asked first
    s.upstream_data(b"PECGW.i4 OK done\r\n")  # the provider names neither: they stay unknown
    out = s.upstream_data(b"* 4 FETCH (BODY[] {5}\r\nhello)\r\nf1 OK done\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.n1 NOOP\r\nPECGW.x1 SEARCH DELETED\r\n"  # the expunge asks first
    s.upstream_data(b"* SEARCH 1\r\nPECGW.x1 OK done\r\n")
    out = s.upstream_data(b"* 1 FETCH (UID 31)\r\nPECGW.x2 OK done\r\n")
    assert sent(out, act.SendToUpstream) == b"x1 UID EXPUNGE 31\r\n"
    out = s.upstream_data(b"* 1 EXPUNGE\r\nx1 OK done\r\n")
    # the fetched message was number 4; after the expunge it is number 3
    assert sent(out, act.SendToUpstream).startswith(b"PECGW.i5 FETCH 3 ")
    out = s.upstream_data(identity(3, 41, b"Message-ID: <m41@x>\r\n\r\n") + b"PECGW.i5 OK done\r\n")
    (event,) = [e for e in audits(out) if e.action == "fetch"]
    assert (event.message.uid, event.message.message_id) == (41, "<m41@x>")
