"""Folder names in the provider's replies, and policy reloads, through the pure session.

Folders without ``l`` are removed from LIST, LSUB, STATUS (LIST-STATUS) and NAMESPACE replies
whatever form their name takes on the wire: atom, quoted string, literal, modified UTF-7.
"""

from __future__ import annotations

from gateway.imap_proxy import actions as act
from gateway.live_policy import LivePolicy
from policy import parse_policy
from tests.unit.transcript import UPSTREAM_CAPS, audits, closes, logged_in, sent

CAPS = [*UPSTREAM_CAPS, "UNSELECT"]
OFFICES = {"legale": {"groups": ["legale"]}, "acquisti": {"groups": ["acquisti"]}}


def policy(rules: list[tuple[str, str]], source: str = "<test policy>"):
    return parse_policy({"offices": OFFICES, "mailboxes": {"protocollo": {"rules": [
        {"office": "legale", "folders": f, "rights": r} for f, r in rules]}}}, source)


LEGALE = policy([("INBOX", "lrs"), ("Società", "lr"), ("Società/*", "lr"), ("Pratiche", "lr"),
                 ("Contabilità", ""), ("Riservato", "")])


def session(p=LEGALE):
    return logged_in(upstream_caps=CAPS, policy=LivePolicy.fixed(p))


def test_list_keeps_only_visible_folders_in_every_name_form():
    s = session()
    s.client_data(b'L1 LIST "" "*"\r\n')
    reply = (b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
             b'* LIST (\\HasChildren) "/" "Societ&AOA-"\r\n'  # Società: visible
             b'* LIST (\\HasNoChildren) "/" {19}\r\nSociet&AOA-/Clienti\r\n'  # literal, visible
             b'* LIST (\\HasNoChildren) "/" "Contabilit&AOA-"\r\n'  # hidden
             b'* LIST (\\HasNoChildren) "/" {9}\r\nRiservato\r\n'  # hidden, literal
             b'* LIST (\\HasNoChildren) "/" Pratiche\r\n'
             b'* LIST (\\HasNoChildren) "/" "Archivio \\"vecchio\\""\r\n'  # no rule: hidden
             b'* LIST (\\HasNoChildren) "/" "Bad&-Name&AOk"\r\n'  # not modified UTF-7: hidden
             b'L1 OK LIST completed\r\n')
    assert sent(s.upstream_data(reply)) == (
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
        b'* LIST (\\HasChildren) "/" "Societ&AOA-"\r\n'
        b'* LIST (\\HasNoChildren) "/" {19}\r\nSociet&AOA-/Clienti\r\n'
        b'* LIST (\\HasNoChildren) "/" Pratiche\r\n'
        b'L1 OK LIST completed\r\n')


def test_list_filtering_works_when_the_reply_arrives_byte_by_byte():
    s = session()
    s.client_data(b'L1 LIST "" "%"\r\n')
    reply = b'* LIST () "/" {9}\r\nRiservato\r\n* LIST () "/" {8}\r\nPratiche\r\nL1 OK done\r\n'
    out = []
    for i in range(len(reply)):
        out += s.upstream_data(reply[i:i + 1])
    assert sent(out) == b'* LIST () "/" {8}\r\nPratiche\r\nL1 OK done\r\n'


def test_lsub_extended_list_and_list_status_are_filtered():
    s = session()
    s.client_data(b'L2 LIST (SUBSCRIBED) "" "*" RETURN (STATUS (MESSAGES))\r\n')
    reply = (b'* LIST (\\Subscribed) "/" "Contabilit&AOA-"\r\n'
             b'* STATUS "Contabilit&AOA-" (MESSAGES 3)\r\n'
             b'* LIST (\\Subscribed) "/" Pratiche ("CHILDINFO" ("SUBSCRIBED"))\r\n'
             b'* STATUS Pratiche (MESSAGES 5)\r\n'
             b'* LSUB () "/" Riservato\r\n'
             b'* LSUB () "/" INBOX\r\n'
             b'L2 OK done\r\n')
    assert sent(s.upstream_data(reply)) == (
        b'* LIST (\\Subscribed) "/" Pratiche ("CHILDINFO" ("SUBSCRIBED"))\r\n'
        b'* STATUS Pratiche (MESSAGES 5)\r\n'
        b'* LSUB () "/" INBOX\r\n'
        b'L2 OK done\r\n')


def test_namespace_drops_namespaces_with_nothing_visible():
    s = session()
    s.client_data(b"N1 NAMESPACE\r\n")
    out = s.upstream_data(b'* NAMESPACE (("" "/")) (("Utenti/" "/")) (("Condivise/" "/"))\r\nN1 OK done\r\n')
    assert sent(out) == b'* NAMESPACE (("" "/")) NIL NIL\r\nN1 OK done\r\n'
    s.client_data(b"N2 NAMESPACE\r\n")
    out = s.upstream_data(b'* NAMESPACE (("" "/")) NIL NIL\r\nN2 OK done\r\n')
    assert sent(out) == b'* NAMESPACE (("" "/")) NIL NIL\r\nN2 OK done\r\n'


def live_session(folder: bytes):
    """A session under a reloadable policy (LEGALE for now) with ``folder`` selected."""
    live = LivePolicy.fixed(LEGALE)
    s = logged_in(upstream_caps=CAPS, policy=live)
    s.client_data(b"s1 SELECT %s\r\n" % folder)
    s.upstream_data(b"s1 OK done\r\n")
    return s, live


def test_reload_hiding_the_selected_folder_closes_it():
    s, live = live_session(b"Pratiche")
    assert sent(s.client_data(b"f1 FETCH 1 FLAGS\r\n"), act.SendToUpstream) == b"f1 FETCH 1 FLAGS\r\n"
    s.upstream_data(b"f1 OK done\r\n")
    live.current = policy([("INBOX", "lrs"), ("Pratiche", "")], "<reloaded>")  # what a SIGHUP does
    out = s.client_data(b"f2 FETCH 1 FLAGS\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.d1 UNSELECT\r\n"
    assert sent(out) == (b"* OK [CLOSED] Access to the selected folder was withdrawn\r\n"
                         b"f2 BAD No mailbox selected\r\n")
    (event,) = audits(out)
    assert (event.action, event.folder, event.reason) == ("folder_withdrawn", "Pratiche", "policy_reload")
    # the rest of the mailbox works under the new policy
    assert sent(s.client_data(b"s2 SELECT INBOX\r\n"), act.SendToUpstream) == b"s2 SELECT INBOX\r\n"


def test_reload_changes_rights_at_the_next_command():
    s, live = live_session(b"INBOX")
    assert sent(s.client_data(b"f1 FETCH 1 BODY[]\r\n"), act.SendToUpstream) == b"f1 FETCH 1 BODY[]\r\n"
    s.upstream_data(b"f1 OK done\r\n")
    live.current = policy([("INBOX", "lr")], "<reloaded>")
    assert sent(s.client_data(b"f2 FETCH 1 BODY[]\r\n"), act.SendToUpstream) == b"f2 FETCH 1 BODY.PEEK[]\r\n"


def test_reload_taking_away_the_mailbox_ends_the_session():
    live = LivePolicy.fixed(LEGALE)
    s = logged_in(upstream_caps=CAPS, policy=live)
    live.current = parse_policy({"offices": OFFICES, "mailboxes": {"protocollo": {"rules": [
        {"office": "acquisti", "folders": "*", "rights": "lr"}]}}}, "<reloaded>")
    out = s.client_data(b"n1 NOOP\r\n")
    assert sent(out) == b"* BYE Your access to this PEC mailbox was withdrawn\r\n"
    assert sent(out, act.SendToUpstream) == b""
    assert [e.action for e in audits(out)] == ["access_withdrawn", "logout"] and closes(out)


def test_offices_are_derived_again_on_reload():
    """An office's groups changed in the policy: the person's offices follow at the next command."""
    live = LivePolicy.fixed(LEGALE)
    s = logged_in(upstream_caps=CAPS, policy=live, groups=("acquisti",), person="bruno")
    assert sent(s.client_data(b"t1 SELECT INBOX\r\n")).startswith(b"t1 NO [NONEXISTENT]")  # bruno is no legale
    assert s.offices == ("acquisti",)
    live.current = parse_policy({"offices": {"legale": {"groups": ["legale", "acquisti"]}},
                                 "mailboxes": {"protocollo": {"rules": [
                                     {"office": "legale", "folders": "INBOX", "rights": "lr"}]}}}, "<reloaded>")
    assert sent(s.client_data(b"t2 SELECT INBOX\r\n"), act.SendToUpstream) == b"t2 EXAMINE INBOX\r\n"
    assert s.offices == ("legale",)


def test_append_announced_right_after_a_reload_is_judged_in_order():
    """The reload's folder closing must not be skipped by the early APPEND check."""
    s, live = live_session(b"Pratiche")
    live.current = policy([("INBOX", "lrsi"), ("Pratiche", "")], "<reloaded>")
    assert sent(s.client_data(b"a1 APPEND INBOX {3}\r\n")) == b"+ Ready for literal data\r\n"
    out = s.client_data(b"abc\r\n")
    assert sent(out, act.SendToUpstream) == b"PECGW.d1 UNSELECT\r\na1 APPEND INBOX {3}\r\n"
    assert [e.action for e in audits(out)] == ["folder_withdrawn"]


def test_list_of_the_hierarchy_delimiter_is_relayed():
    s = session()
    s.client_data(b'D1 LIST "" ""\r\n')
    out = s.upstream_data(b'* LIST (\\Noselect) "/" ""\r\nD1 OK done\r\n')
    assert sent(out) == b'* LIST (\\Noselect) "/" ""\r\nD1 OK done\r\n'


def test_has_children_only_where_the_policy_could_show_a_child():
    s = session()  # LEGALE: "Società/*" visible, nothing under "Pratiche" can be
    s.client_data(b'L1 LIST "" "%"\r\n')
    out = s.upstream_data(b'* LIST (\\HasChildren) "/" Pratiche\r\n'
                          b'* LIST (\\HasChildren \\Marked) "/" {11}\r\nSociet&AOA-\r\n'
                          b'L1 OK done\r\n')
    assert sent(out) == (b'* LIST (\\HasNoChildren) "/" Pratiche\r\n'
                         b'* LIST (\\HasChildren \\Marked) "/" {11}\r\nSociet&AOA-\r\n'
                         b'L1 OK done\r\n')
