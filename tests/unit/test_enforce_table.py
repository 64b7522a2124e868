"""Every command the folder policy governs, allowed and denied, fed through the pure session.

One person (alice, office legale) and one policy with a folder for each combination of rights
the table needs.  Each row: the folder selected first (or none), the client's command, and what
must happen — relayed as given, relayed rewritten, or answered by the gateway (with the right
that was missing, and an audit row naming the rule).
"""

from __future__ import annotations

import pytest

from gateway.imap_proxy import actions as act
from tests.unit.policies import fixed_policy
from tests.unit.transcript import UPSTREAM_CAPS, answer_lookups, audits, logged_in, sent

RULES = [
    ("INBOX", "lrs"),  # reads and marks handled; nothing else
    ("Lettura", "lr"),  # read only: SELECT runs as EXAMINE, FETCH as PEEK
    ("Flag", "lrw"),  # may flag but not mark read: read-write, FETCH as PEEK
    ("Lavoro", "lrswiket"),  # everything but deleting the folder itself
    ("Lavoro/*", "lrswikxte"),  # subfolders may be deleted too
    ("Solo Inserimento", "li"),  # a drop box: append, no read
    ("Altro", "l"),  # visible, not readable
    ("Contabilità", ""),  # exists at the provider, hidden from legale
    ("Amministrazione", "lra"),  # may read the ACL
]
POLICY = fixed_policy(
    {"protocollo": {"rules": [{"office": "legale", "folders": f, "rights": r} for f, r in RULES]}},
    {"legale": {"groups": ["legale"]}, "acquisti": {"groups": ["acquisti"]}})


def rule_key(folder: str) -> str:
    return f"mailboxes.protocollo.rules[{[f for f, _ in RULES].index(folder)}]"


#: A provider with UNSELECT (RFC 3691), as Dovecot and the PEC providers' servers have.
CAPS = [*UPSTREAM_CAPS, "UNSELECT"]


def session(select: bytes | None, caps=CAPS):
    s = logged_in(upstream_caps=caps, policy=POLICY)
    if select is not None:
        s.client_data(b"s0 SELECT %s\r\n" % select)
        s.upstream_data(b"s0 OK [READ-WRITE] done\r\n")
    return s


RELAY = "relay"
# (selected folder, command, expected): expected is (RELAY, bytes sent to the provider) or
# (status line the gateway answers, missing right or None)
TABLE = [
    # SELECT / EXAMINE
    (None, b'SELECT INBOX', (RELAY, b'SELECT INBOX')),
    (None, b'SELECT Lettura', (RELAY, b'EXAMINE Lettura')),
    (None, b'select "Flag" (CONDSTORE)', (RELAY, b'select "Flag" (CONDSTORE)')),
    (None, b'SELECT Altro', (b"NO [NOPERM] SELECT needs the 'r' right on this folder", "r")),
    (None, b'SELECT Contabilit&AOA-', (b"NO [NONEXISTENT] No such folder", "l")),
    (None, b'EXAMINE {7+}\r\nLettura', (RELAY, b'EXAMINE {7}')),  # the literal waits for the provider's "+"
    (None, b'EXAMINE "Solo Inserimento"', (b"NO [NOPERM] EXAMINE needs the 'r' right on this folder", "r")),
    # STATUS, SUBSCRIBE, GETQUOTAROOT
    (None, b'STATUS Lettura (MESSAGES UNSEEN)', (RELAY, b'STATUS Lettura (MESSAGES UNSEEN)')),
    (None, b'STATUS Altro (MESSAGES)', (b"NO [NOPERM] STATUS needs the 'r' right on this folder", "r")),
    (None, b'STATUS Contabilit&AOA- (MESSAGES)', (b"NO [NONEXISTENT] No such folder", "l")),
    (None, b'SUBSCRIBE Altro', (RELAY, b'SUBSCRIBE Altro')),
    (None, b'SUBSCRIBE Contabilit&AOA-', (b"NO [NONEXISTENT] No such folder", "l")),
    (None, b'UNSUBSCRIBE Contabilit&AOA-', (b"OK UNSUBSCRIBE completed", None)),  # as for a missing name
    (None, b'GETQUOTAROOT Contabilit&AOA-', (b"NO [NONEXISTENT] No such folder", "l")),
    # FETCH: without s the body is fetched with PEEK, so the PEC stays unread for everybody
    (b'INBOX', b'FETCH 1 (FLAGS BODY[])', (RELAY, b'FETCH 1 (FLAGS BODY[])')),
    (b'Lettura', b'FETCH 1 (FLAGS BODY[])', (RELAY, b'FETCH 1 (FLAGS BODY.PEEK[])')),
    (b'Flag', b'UID FETCH 1:* (BODY[HEADER] BODY[1.2]<0.100>)',
     (RELAY, b'UID FETCH 1:* (BODY.PEEK[HEADER] BODY.PEEK[1.2]<0.100>)')),
    (b'Lettura', b'FETCH 1 RFC822', (RELAY, b'FETCH 1 BODY.PEEK[]')),
    (b'Lettura', b'FETCH 1 (RFC822.TEXT RFC822.SIZE RFC822.HEADER)',
     (RELAY, b'FETCH 1 (BODY.PEEK[TEXT] RFC822.SIZE RFC822.HEADER)')),
    (b'Lettura', b'FETCH 1 (BODY.PEEK[HEADER.FIELDS (RFC822)] ENVELOPE)',
     (RELAY, b'FETCH 1 (BODY.PEEK[HEADER.FIELDS (RFC822)] ENVELOPE)')),
    (None, b'FETCH 1 FLAGS', (b"BAD No mailbox selected", None)),
    # SEARCH needs r, which SELECT already needed
    (b'Lettura', b'UID SEARCH UNSEEN', (RELAY, b'UID SEARCH UNSEEN')),
    # STORE: \Seen needs s, \Deleted needs t, other flags w; FLAGS (replace) needs all three
    (b'INBOX', b'STORE 1 +FLAGS (\\Seen)', (RELAY, b'STORE 1 +FLAGS (\\Seen)')),
    (b'Lettura', b'STORE 1 +FLAGS (\\Seen)', (b"NO [NOPERM] STORE needs the 's' right for these flags", "s")),
    (b'Flag', b'UID STORE 1 -FLAGS.SILENT \\Seen', (b"NO [NOPERM] UID STORE needs the 's' right for these flags", "s")),
    (b'Flag', b'STORE 1 +FLAGS ($Inoltrato \\Flagged)', (RELAY, b'STORE 1 +FLAGS ($Inoltrato \\Flagged)')),
    (b'INBOX', b'STORE 1 +FLAGS (\\Flagged)', (b"NO [NOPERM] STORE needs the 'w' right for these flags", "w")),
    (b'INBOX', b'STORE 1 +FLAGS (\\Deleted)', (b"NO [NOPERM] STORE needs the 't' right for these flags", "t")),
    (b'Lavoro', b'STORE 1 (UNCHANGEDSINCE 9) +FLAGS (\\Deleted)', (RELAY, b'STORE 1 (UNCHANGEDSINCE 9) +FLAGS (\\Deleted)')),
    (b'INBOX', b'STORE 1 FLAGS (\\Seen)', (b"NO [NOPERM] STORE needs the 'wt' right for these flags", "wt")),
    (b'Lavoro', b'STORE 1 FLAGS (\\Seen)', (RELAY, b'STORE 1 FLAGS (\\Seen)')),
    # EXPUNGE and CLOSE need e; CLOSE without e becomes UNSELECT (nothing expunged)
    (b'INBOX', b'EXPUNGE', (b"NO [NOPERM] EXPUNGE needs the 'e' right on this folder", "e")),
    (b'INBOX', b'UID EXPUNGE 1:3', (b"NO [NOPERM] UID EXPUNGE needs the 'e' right on this folder", "e")),
    (b'Lavoro', b'UID EXPUNGE 1:3', (RELAY, b'UID EXPUNGE 1:3')),
    # with e, CLOSE is the gateway's own UID EXPUNGE of what is marked \Deleted, then UNSELECT
    # (gateway/imap_proxy/expunge_plan.py: so the audit rows name what left)
    (b'Lavoro', b'CLOSE', (RELAY, b'UNSELECT')),
    (b'INBOX', b'CLOSE', (RELAY, b'UNSELECT')),
    (b'Lettura', b'CLOSE', (RELAY, b'CLOSE')),  # opened as EXAMINE: CLOSE expunges nothing
    (b'INBOX', b'UNSELECT', (RELAY, b'UNSELECT')),
    # COPY / MOVE: r on the source, l+i on the destination; MOVE also t and e on the source
    (b'INBOX', b'COPY 1 Lavoro', (RELAY, b'COPY 1 Lavoro')),
    (b'INBOX', b'UID COPY 1 Lettura', (b"NO [NOPERM] UID COPY needs the 'i' right on this folder", "i")),
    (b'INBOX', b'COPY 1 Contabilit&AOA-', (b"NO [TRYCREATE] No such folder", "l")),
    (b'INBOX', b'MOVE 1 Lavoro', (b"NO [NOPERM] MOVE needs the 'te' right on the source folder", "te")),
    (b'Lavoro', b'UID MOVE 1 "Lavoro/Archivio"', (RELAY, b'UID MOVE 1 "Lavoro/Archivio"')),
    (b'Lavoro', b'MOVE 1 Lettura', (b"NO [NOPERM] MOVE needs the 'i' right on this folder", "i")),
    # APPEND: l+i, and the flags' rights
    (None, b'APPEND Lavoro (\\Seen \\Deleted) {3+}\r\nabc', (RELAY, b'APPEND Lavoro (\\Seen \\Deleted) {3}')),
    (None, b'APPEND "Solo Inserimento" {3+}\r\nabc', (RELAY, b'APPEND "Solo Inserimento" {3}')),
    (None, b'APPEND "Solo Inserimento" (\\Seen) {3+}\r\nabc',
     (b"NO [NOPERM] APPEND needs the 's' right for these flags", "s")),
    (None, b'APPEND Lettura {3+}\r\nabc', (b"NO [NOPERM] APPEND needs the 'i' right on this folder", "i")),
    (None, b'APPEND Contabilit&AOA- {3+}\r\nabc', (b"NO [TRYCREATE] No such folder", "l")),
    # CREATE / DELETE / RENAME
    (None, b'CREATE Lavoro/Nuova', (RELAY, b'CREATE Lavoro/Nuova')),
    (None, b'CREATE Lavoro/Nuova/', (RELAY, b'CREATE Lavoro/Nuova/')),
    (None, b'CREATE Lettura/Nuova', (b"NO [NOPERM] CREATE needs the 'k' right on the parent folder", "k")),
    (None, b'CREATE Nuova', (b"NO [NOPERM] CREATE needs the 'k' right on this name", "k")),
    (None, b'DELETE Lavoro/Vecchia', (RELAY, b'DELETE Lavoro/Vecchia')),
    (None, b'DELETE Lavoro', (b"NO [NOPERM] DELETE needs the 'x' right on this folder", "x")),
    (None, b'DELETE INBOX', (b"NO [NOPERM] DELETE needs the 'x' right on this folder", "x")),
    (None, b'DELETE Contabilit&AOA-', (b"NO [NONEXISTENT] No such folder", "l")),
    (None, b'RENAME Lavoro/A Lavoro/B', (RELAY, b'RENAME Lavoro/A Lavoro/B')),  # after listing subfolders
    (None, b'RENAME Lavoro Lavoro2', (b"NO [NOPERM] RENAME needs the 'x' right on this folder", "x")),
    (None, b'RENAME Lavoro/A Lettura/B', (b"NO [NOPERM] RENAME needs the 'k' right on the parent folder", "k")),
    (None, b'RENAME Contabilit&AOA- Lavoro/C', (b"NO [NONEXISTENT] No such folder", "l")),
    # ACL commands: answered from the policy, never relayed
    (None, b'MYRIGHTS Lettura', (b"OK MYRIGHTS completed", None)),
    (None, b'MYRIGHTS Contabilit&AOA-', (b"NO [NONEXISTENT] No such folder", "l")),
    (None, b'GETACL Lettura', (b"NO [NOPERM] GETACL needs the 'a' right on this folder", "a")),
    (None, b'GETACL Amministrazione', (b"OK GETACL completed", None)),
    (None, b'LISTRIGHTS Lettura legale', (b"NO [NOPERM] LISTRIGHTS needs the 'a' right on this folder", "a")),
    (None, b'SETACL Amministrazione bruno lrswi',
     (b"NO [NOPERM] Access rights are set in the gateway's policy file, not by IMAP", "a")),
    (None, b'DELETEACL Lettura bruno',
     (b"NO [NOPERM] Access rights are set in the gateway's policy file, not by IMAP", "a")),
]


def _id(row) -> str:
    select, command, _ = row
    return f"{select.decode() if select else '-'}|{command.decode(errors='replace')[:40]}"


@pytest.mark.parametrize("select,command,expected", TABLE, ids=[_id(r) for r in TABLE])
def test_command_table(select, command, expected):
    s = session(select)
    out = s.client_data(b"t1 " + command + b"\r\n")
    upstream = sent(out, act.SendToUpstream)
    client = sent(out)
    if upstream.startswith(b"PECGW.r1 LIST"):  # RENAME: its subfolders are listed first (none here)
        out = s.upstream_data(b"PECGW.r1 OK List completed\r\n")
        upstream = sent(out, act.SendToUpstream)
    if upstream == b"PECGW.n1 NOOP\r\n":  # UID EXPUNGE: a NOOP first, then the command as it came
        upstream = sent(s.upstream_data(b"PECGW.n1 OK done\r\n"), act.SendToUpstream)
    if upstream.startswith(b"PECGW.n1 NOOP\r\nPECGW.x1 SEARCH DELETED"):  # an expunge asks what is marked first
        out = s.upstream_data(b"* SEARCH 4 5\r\nPECGW.x1 OK Search completed\r\n")
        assert sent(out, act.SendToUpstream).startswith(b"PECGW.x2 FETCH 4:5 (UID ")  # and which UIDs
        out = s.upstream_data(b"* 4 FETCH (UID 14)\r\n* 5 FETCH (UID 15)\r\nPECGW.x2 OK Fetch completed\r\n")
        own, _, upstream = sent(out, act.SendToUpstream).partition(b"\r\n")
        assert own == b"PECGW.e3 UID EXPUNGE 14:15"
    if expected[0] == RELAY:
        assert upstream == b"t1 " + expected[1] + b"\r\n"
        assert not audits(out)
        return
    status, missing = expected
    assert upstream == b"", "a refused or gateway-answered command must never reach the provider"
    assert client.endswith(b"t1 " + status + b"\r\n")
    events = audits(out)
    if missing is None:
        assert not events
        return
    (event,) = events
    assert (event.action, event.decision, event.person) == ("denied", "deny", "alice")
    assert event.detail["missing"] == missing and event.detail["command"] in command.decode().upper()
    assert event.detail["rules"], "a denial names the rule (or default) that decided"


def test_denial_names_the_rule_that_decided():
    s = session(b"INBOX")
    (event,) = audits(s.client_data(b"t1 STORE 1 +FLAGS (\\Deleted)\r\n"))
    assert event.folder == "INBOX" and event.reason == "noperm"
    assert event.detail == {"command": "STORE", "missing": "t", "rules": [rule_key("INBOX")]}


def test_hidden_folder_is_not_named_in_the_audit_row_reply_or_text():
    s = session(None)
    out = s.client_data(b"t1 SELECT Contabilit&AOA-\r\n")
    assert b"Contabilit" not in sent(out)
    (event,) = audits(out)
    assert event.folder is None and event.reason == "nonexistent"


def test_myrights_and_getacl_answers():
    s = session(None)
    assert sent(s.client_data(b"t1 MYRIGHTS Lettura\r\n")) == b'* MYRIGHTS "Lettura" lr\r\nt1 OK MYRIGHTS completed\r\n'
    out = sent(s.client_data(b"t2 GETACL Amministrazione\r\n"))
    assert out == b'* ACL "Amministrazione" "legale" lra\r\nt2 OK GETACL completed\r\n'
    out = sent(s.client_data(b'''t3 LISTRIGHTS Amministrazione "acquisti"\r\n'''))
    assert out == (b'* LISTRIGHTS "Amministrazione" "acquisti" "" l r s w i p k x t e a\r\n'
                   b"t3 OK LISTRIGHTS completed\r\n")


def test_capabilities_after_login_announce_acl():
    s = logged_in(upstream_caps=CAPS, policy=POLICY)
    s.client_data(b"c1 CAPABILITY\r\n")
    out = sent(s.upstream_data(b"* CAPABILITY IMAP4rev1 ACL IDLE\r\nc1 OK done\r\n"))
    assert out == b"* CAPABILITY IMAP4rev1 LITERAL+ IDLE ACL RIGHTS=texk\r\nc1 OK done\r\n"


def test_close_without_unselect_capability_expunges_nothing():
    s = session(b"INBOX", caps=UPSTREAM_CAPS)
    out = s.client_data(b"t1 CLOSE\r\nt2 FETCH 1 FLAGS\r\n")
    # the provider leaves the folder through a SELECT that fails (RFC 3501 §6.3.1), never CLOSE
    assert sent(out, act.SendToUpstream) == b'PECGW.d1 EXAMINE "PECGW no such folder 1"\r\n'
    assert sent(out) == (b"t1 OK CLOSE completed; nothing expunged (no 'e' right)\r\n"
                         b"t2 BAD No mailbox selected\r\n")
    # the provider's answer to the gateway's own command is not shown to the client
    assert sent(s.upstream_data(b"PECGW.d1 NO [NONEXISTENT] Mailbox doesn't exist\r\n")) == b""


def test_refused_select_leaves_the_provider_unselected_too():
    s = session(b"INBOX")
    out = s.client_data(b"t1 SELECT Contabilit&AOA-\r\nt2 STORE 1 +FLAGS (\\Seen)\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.d1 UNSELECT\r\n"
    assert sent(out) == b"t1 NO [NONEXISTENT] No such folder\r\nt2 BAD No mailbox selected\r\n"


def test_failed_select_at_the_provider_unselects():
    s = session(b"INBOX")
    s.client_data(b"t1 SELECT Lavoro/Manca\r\n")
    out = s.upstream_data(b"t1 NO [NONEXISTENT] Mailbox doesn't exist: Lavoro/Manca (0.001 + 0.000 secs).\r\n")
    assert sent(out) == b"t1 NO [NONEXISTENT] No such folder\r\n", "same text as a hidden folder"
    assert sent(s.client_data(b"t2 FETCH 1 FLAGS\r\n")) == b"t2 BAD No mailbox selected\r\n"


def test_provider_trycreate_gets_the_uniform_text():
    s = session(b"INBOX")
    s.client_data(b"t1 COPY 1 Lavoro/Manca\r\n")
    out = s.upstream_data(b"t1 NO [TRYCREATE] Mailbox doesn't exist: Lavoro/Manca\r\n")
    assert sent(out) == b"t1 NO [TRYCREATE] No such folder\r\n"


def test_pipelined_denial_keeps_reply_order():
    s = session(b"INBOX")
    out = s.client_data(b"A1 FETCH 1 (FLAGS)\r\nA2 STORE 1 +FLAGS (\\Deleted)\r\nA3 NOOP\r\n")
    assert sent(out) == b""  # A2's refusal must wait for A1's reply
    assert sent(out, act.SendToUpstream) == b"A1 FETCH 1 (FLAGS)\r\nA3 NOOP\r\n"
    out = s.upstream_data(b"* 1 FETCH (FLAGS ())\r\nA1 OK done\r\nA3 OK done\r\n")
    assert sent(out) == (b"* 1 FETCH (FLAGS ())\r\nA1 OK done\r\n"
                         b"A2 NO [NOPERM] STORE needs the 't' right for these flags\r\nA3 OK done\r\n")


def test_commands_pipelined_after_select_are_judged_by_the_new_folder():
    s = session(b"Lavoro")
    out = s.client_data(b"A1 SELECT INBOX\r\nA2 EXPUNGE\r\n")
    assert sent(out, act.SendToUpstream) == b"A1 SELECT INBOX\r\n"
    out = s.upstream_data(b"A1 OK [READ-WRITE] done\r\n")
    assert sent(out) == b"A1 OK [READ-WRITE] done\r\nA2 NO [NOPERM] EXPUNGE needs the 'e' right on this folder\r\n"


def test_append_refused_before_the_client_uploads():
    s = session(None)
    out = s.client_data(b"A1 APPEND Lettura (\\Seen) {2000}\r\n")
    assert sent(out) == b"A1 NO [NOPERM] APPEND needs the 'i' right on this folder\r\n"  # no "+"
    assert sent(out, act.SendToUpstream) == b""
    # the client does not send the literal; its next command is read as a command
    out = s.client_data(b"A2 NOOP\r\n")
    assert sent(out, act.SendToUpstream) == b"A2 NOOP\r\n"


def test_append_allowed_gets_the_continuation_and_is_relayed():
    s = session(None)
    assert sent(s.client_data(b"A1 APPEND Lavoro {3}\r\n")) == b"+ Ready for literal data\r\n"
    out = s.client_data(b"abc\r\n")
    # even with LITERAL+ at the provider, the literal waits for its "+": a provider that refuses
    # the command first must never get the octets (it would read them as commands)
    assert sent(out, act.SendToUpstream) == b"A1 APPEND Lavoro {3}\r\n"
    assert sent(s.upstream_data(b"+ OK\r\n"), act.SendToUpstream) == b"abc\r\n"


def test_a_command_the_provider_refuses_before_its_literal_never_gets_the_literal():
    smuggled = b"x1 SELECT Contabilit&AOA-\r\nx2 EXPUNGE\r\n"
    s = session(b"Lavoro")
    out = s.client_data(b'a1 APPEND Lavoro "garbage" {%d+}\r\n' % len(smuggled) + smuggled + b"\r\n")
    assert sent(out, act.SendToUpstream) == b'a1 APPEND Lavoro "garbage" {%d}\r\n' % len(smuggled)
    out = s.upstream_data(b"a1 BAD Error in IMAP command APPEND: Invalid internal date\r\n")
    assert sent(out, act.SendToUpstream) == b""
    assert sent(s.client_data(b"n1 NOOP\r\n"), act.SendToUpstream) == b"n1 NOOP\r\n"


def test_fetch_rfc822_response_keeps_the_name_the_client_asked_for():
    s = session(b"Lettura")
    s.client_data(b"f1 FETCH 1 (UID RFC822)\r\n")
    out = s.upstream_data(b'* 1 FETCH (UID 7 BODY[] {5}\r\nhello)\r\nf1 OK done\r\n')
    assert sent(out) == b"* 1 FETCH (UID 7 RFC822 {5}\r\nhello)\r\nf1 OK done\r\n"
    answer_lookups(s, out)  # the gateway asks who message 7 is, for the audit row
    # once that FETCH is done, BODY[] answers are relayed untouched again
    s.client_data(b"f2 FETCH 1 BODY.PEEK[]\r\n")
    out = s.upstream_data(b"* 1 FETCH (BODY[] {5}\r\nhello)\r\nf2 OK done\r\n")
    assert sent(out) == b"* 1 FETCH (BODY[] {5}\r\nhello)\r\nf2 OK done\r\n"


@pytest.mark.parametrize("name", [b'"Contabilit&AOA-/"', b'"Contabilit&AOA-//"', b'"/Contabilit&AOA-"',
                                  b'"Lavoro/../Contabilit&AOA-"', b'"Lavoro//x"', b'"Lavoro/./x"', b'"/"'])
def test_odd_spellings_of_a_name_get_no_rights(name):
    """A trailing delimiter names the folder itself; empty or dot components are never guessed at."""
    s = session(None)
    out = s.client_data(b"t1 SELECT %s\r\n" % name)
    assert sent(out, act.SendToUpstream) == b""
    assert sent(out) == b"t1 NO [NONEXISTENT] No such folder\r\n"


def test_a_trailing_delimiter_is_judged_as_the_folder_itself():
    s = session(None)
    assert sent(s.client_data(b"t1 SELECT Lettura/\r\n"), act.SendToUpstream) == b"t1 EXAMINE Lettura/\r\n"
    s.upstream_data(b"t1 OK [READ-ONLY] done\r\n")
    out = s.client_data(b"t2 DELETE Lavoro/\r\n")
    assert sent(out) == b"t2 NO [NOPERM] DELETE needs the 'x' right on this folder\r\n"


# -- spellings a provider reads differently: refused, never guessed at ---------------------------
@pytest.mark.parametrize("select,command,reply", [
    (b"Flag", b"STORE 1 +FLAGS (\\Seen) $X", b"BAD STORE takes one flag list, or flags without parentheses"),
    (b"Flag", b"STORE 1 +FLAGS ($X (\\Seen))", b"BAD Flags must be atoms"),
    (b"Flag", b'STORE 1 +FLAGS ("\\\\Seen")', b"BAD Flags must be atoms"),
    (None, b'APPEND Lavoro ("\\\\Deleted") {3+}\r\nabc', b"BAD Flags must be atoms"),
    (b"Lettura", b"FETCH 5 (BODY.PEEK[HEADER.FIELDS (X[)] BODY[] BODY.PEEK[HEADER.FIELDS (])])",
     b"BAD FETCH sections may not contain quotes, brackets or literals through the gateway"),
    (b"INBOX", b'FETCH 1 (BODY.PEEK[HEADER.FIELDS ("From")])',
     b"BAD FETCH sections may not contain quotes, brackets or literals through the gateway"),
    (b"INBOX", b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (From {4+}\r\nDate)])", b"BAD unbalanced '['"),
    (b"INBOX", b"SELECT Ricevute \xc3\xa0", b"BAD control or 8-bit character in atom"),
])
def test_ambiguous_spellings_are_refused(select, command, reply):
    s = session(select)
    out = s.client_data(b"t1 " + command + b"\r\n")
    assert sent(out, act.SendToUpstream) == b""
    assert sent(out) == b"t1 " + reply + b"\r\n"


def test_the_providers_own_missing_folder_text_is_made_uniform():
    """Dovecot answers a missing folder with no response code: the same text as a hidden one."""
    s = session(None)
    s.client_data(b"t1 STATUS Lavoro/Manca (MESSAGES)\r\nt2 SUBSCRIBE Lavoro/Manca\r\nt3 APPEND Lavoro/Manca {1+}\r\nx\r\n")
    out = s.upstream_data(b"t1 NO Mailbox doesn't exist: Lavoro/Manca\r\n"
                          b"t2 NO Mailbox doesn't exist: Lavoro/Manca\r\n"
                          b"t3 NO [TRYCREATE] Mailbox doesn't exist: Lavoro/Manca\r\n")
    assert sent(out) == (b"t1 NO [NONEXISTENT] No such folder\r\nt2 NO [NONEXISTENT] No such folder\r\n"
                         b"t3 NO [TRYCREATE] No such folder\r\n")
    s.client_data(b"t4 CREATE Lavoro/Nuova\r\n")
    out = s.upstream_data(b"t4 NO [ALREADYEXISTS] Mailbox already exists\r\n")
    assert sent(out) == b"t4 NO [ALREADYEXISTS] Mailbox already exists\r\n"  # other refusals as they are


def test_a_select_the_provider_rejects_leaves_both_sides_unselected():
    s = session(b"INBOX")
    s.client_data(b"t1 SELECT Lavoro (BOGUS)\r\n")
    out = s.upstream_data(b"t1 BAD Invalid arguments\r\n")  # a BAD may leave the old folder selected (Dovecot 2.3: for SELECT ~{8})
    assert sent(out, act.SendToUpstream) == b"PECGW.d1 UNSELECT\r\n"
    assert sent(s.client_data(b"t2 STORE 1 +FLAGS (\\Seen)\r\n")) == b"t2 BAD No mailbox selected\r\n"


# -- RENAME moves the subtree: the gateway lists the subfolders before relaying ----------------
RENAME_POLICY = fixed_policy({"protocollo": {"rules": [
    {"office": "legale", "folders": f, "rights": r} for f, r in
    [("Lavoro", "lrk"), ("Lavoro/*", "lrswikx"), ("Lavoro/A/Segreto", ""), ("INBOX", "lr")]]}})


def rename_session():
    return logged_in(upstream_caps=CAPS, policy=RENAME_POLICY)


def test_rename_is_relayed_once_every_subfolder_may_move():
    s = rename_session()
    out = s.client_data(b'r1 RENAME Lavoro/B Lavoro/C\r\nn1 NOOP\r\n')
    assert sent(out, act.SendToUpstream) == b'PECGW.r1 LIST "" "Lavoro/B/*"\r\n'  # NOOP waits, unread
    out = s.upstream_data(b'* LIST () "/" Lavoro/B/x\r\n* LIST () "/" "Lavoro/B/x/y"\r\nPECGW.r1 OK done\r\n')
    assert sent(out) == b""  # the gateway's LIST replies are its own
    assert sent(out, act.SendToUpstream) == b"r1 RENAME Lavoro/B Lavoro/C\r\nn1 NOOP\r\n"
    assert sent(s.upstream_data(b"r1 OK done\r\nn1 OK done\r\n")) == b"r1 OK done\r\nn1 OK done\r\n"


def test_rename_that_would_move_a_hidden_subfolder_is_refused():
    s = rename_session()
    s.client_data(b'r1 RENAME Lavoro/A Lavoro/B\r\n')
    out = s.upstream_data(b'* LIST () "/" Lavoro/A/Segreto\r\nPECGW.r1 OK done\r\n')
    assert sent(out, act.SendToUpstream) == b""
    assert sent(out) == b"r1 NO [NOPERM] RENAME would also move subfolders you may not move\r\n"
    assert b"Segreto" not in sent(out)
    (event,) = audits(out)
    assert event.action == "denied" and event.detail["missing"] == "x"


def test_rename_waits_for_earlier_replies_and_keeps_their_list_lines():
    s = rename_session()
    out = s.client_data(b'l1 LIST "" "*"\r\nr1 RENAME Lavoro/B Lavoro/C\r\n')
    # the gateway's LIST goes only when nothing else runs (Dovecot runs LISTs alongside a SEARCH)
    assert sent(out, act.SendToUpstream) == b'l1 LIST "" "*"\r\n'
    out = s.upstream_data(b'* LIST () "/" Lavoro\r\n* LIST () "/" Lavoro/B/x\r\nl1 OK done\r\n')
    assert sent(out) == b'* LIST () "/" Lavoro\r\n* LIST () "/" Lavoro/B/x\r\nl1 OK done\r\n'
    assert sent(out, act.SendToUpstream) == b'PECGW.r1 LIST "" "Lavoro/B/*"\r\n'
    out = s.upstream_data(b'* LIST () "/" Lavoro/B/x\r\nPECGW.r1 OK done\r\n')
    assert sent(out) == b""
    assert sent(out, act.SendToUpstream) == b"r1 RENAME Lavoro/B Lavoro/C\r\n"


def test_rename_behind_a_slow_search_lists_only_when_the_search_is_done():
    s = rename_session()
    s.client_data(b"s0 SELECT INBOX\r\n")
    s.upstream_data(b"s0 OK [READ-ONLY] done\r\n")
    out = s.client_data(b"f1 SEARCH BODY zzzz\r\nr1 RENAME Lavoro/A Lavoro/B\r\n")
    assert sent(out, act.SendToUpstream) == b"f1 SEARCH BODY zzzz\r\n"
    out = s.upstream_data(b"* SEARCH\r\nf1 OK Search completed\r\n")
    assert sent(out, act.SendToUpstream) == b'PECGW.r1 LIST "" "Lavoro/A/*"\r\n'
    out = s.upstream_data(b'* LIST () "/" Lavoro/A/Segreto\r\nPECGW.r1 OK done\r\n')
    assert sent(out) == b"r1 NO [NOPERM] RENAME would also move subfolders you may not move\r\n"


def test_rename_is_refused_when_the_subfolders_cannot_be_listed():
    s = rename_session()
    s.client_data(b'r1 RENAME Lavoro/B Lavoro/C\r\n')
    out = s.upstream_data(b"PECGW.r1 NO Internal error\r\n")
    assert sent(out) == b"r1 NO [UNAVAILABLE] The subfolders could not be listed; nothing was renamed\r\n"
    assert sent(out, act.SendToUpstream) == b""
